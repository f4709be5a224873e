//! Hooks the core kernel calls but a platform crate defines, as Linux's core
//! code calls static calls that architecture or platform code defines.
//!
//! This crate only *declares* [`PLATFORM_CLOCK`] (`declare_static_call!`); the
//! binary that links it defines the key with `static_call!` and its initial
//! target. The link ties the two together by the key's symbols, which carry
//! the signature: a binary that defines it with another signature does not
//! link. Every binary built from this crate that calls [`read_clock`] must
//! define `PLATFORM_CLOCK`.

static_call::declare_static_call! {
    /// The platform's clock: a timestamp scaled by its argument. Defined by
    /// the platform (the `tests` binary).
    // SAFETY: the `tests` binary defines it as `fn(u32) -> u64`, with these
    // very types.
    pub unsafe static PLATFORM_CLOCK: fn(u32) -> u64;
}

/// The core kernel's use of the hook: a direct call of its trampoline.
/// Not inlined, so the call is made from this crate's code.
#[inline(never)]
pub fn read_clock(scale: u32) -> u64 {
    PLATFORM_CLOCK.call(scale)
}
