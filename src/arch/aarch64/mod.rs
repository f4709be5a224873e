//! The arm64 backend: Ard Biesheuvel's literal-pool trampoline (LKML, 2021).
//!
//! ```text
//!         .balign 16
//! 0:      .quad   target        // literal, at tramp - 8
//! tramp:  bti     c             // hint #34
//!         b       target        // or nop: the only word ever patched
//!         ldr     x16, 0b
//!         cbz     x16, 1f       // NULL literal: return
//!         br      x16
//! 1:      ret
//! ```
//!
//! The literal and the `[bti c | b/nop]` word share one 16-byte aligned
//! window, written as two aligned 64-bit stores: literal first, then the
//! branch word. The literal always holds the current target, so whatever
//! a CPU fetches while the change propagates is a correct old or new
//! behaviour:
//!
//! | branch word seen | literal seen | the call goes to |
//! | --- | --- | --- |
//! | old `b old` | any | old target |
//! | new `b new` | any | new target |
//! | `nop` | old | old target (or `ret` if old was NULL) |
//! | `nop` | new | new target (or `ret` if new is NULL) |
//!
//! Instruction fetch and data loads are not coherent on arm64, so a CPU may
//! see a stale branch with a fresh literal or the reverse; the table covers
//! every such pairing, and the `cbz` makes a NULL literal a return rather
//! than a branch to address 0. Only `B` and `NOP` are ever exchanged, both in
//! the ARM ARM's list of instructions that may be modified while other CPUs
//! execute them; `RET` is never written.

pub mod insn;
mod layout;

#[cfg(target_arch = "aarch64")]
mod cache;
pub mod ctr;

pub use layout::{
    Branch, Patch, TRAMPOLINE_LEN, Trampoline, WINDOW_ALIGN, decode, plan, window_of,
};

#[cfg(target_arch = "aarch64")]
pub use cache::{flush_icache_range, read_ctr_el0};

#[cfg(target_arch = "aarch64")]
use super::Backend;
#[cfg(target_arch = "aarch64")]
use crate::{Error, TextWriter};
#[cfg(target_arch = "aarch64")]
use core::sync::atomic::{AtomicU64, Ordering};

/// The arm64 backend (implements [`Backend`](super::Backend) on arm64
/// targets; elsewhere only its pure functions are used).
#[derive(Debug)]
pub enum Aarch64 {}

/// arm64 keys keep their whole state in the trampoline.
#[derive(Debug)]
pub struct Slot;

impl Slot {
    /// The (empty) slot; the initial target lives in the trampoline.
    pub const fn new(_target: *mut ()) -> Self {
        Slot
    }
}

/// Reads the trampoline's bytes (literal window through `ret`).
///
/// # Safety
///
/// `window..window + TRAMPOLINE_LEN` must be readable.
#[cfg(target_arch = "aarch64")]
unsafe fn read_trampoline(window: usize) -> [u8; TRAMPOLINE_LEN] {
    // SAFETY: readable per the caller; volatile because the text changes
    // behind the compiler's back.
    unsafe { core::ptr::read_volatile(window as *const [u8; TRAMPOLINE_LEN]) }
}

// SAFETY: `retarget` follows the protocol in the module documentation:
// it checks the shape before writing, writes the literal then the branch
// word (each one aligned 64-bit store), rolls the literal back if the second
// store fails, and finishes with cache maintenance to the point of
// unification before the writer's CPU synchronization.
#[cfg(target_arch = "aarch64")]
unsafe impl Backend for Aarch64 {
    const NAME: &'static str = "aarch64";
    const WRITES_TEXT: bool = true;
    type Slot = Slot;

    unsafe fn query(tramp: usize, _slot: &Slot) -> Result<usize, Error> {
        // The literal alone is the current target, and it is written first;
        // query takes no lock, so it must not insist that the branch word
        // already agrees.
        let window = layout::window_of(tramp)?;
        // SAFETY: the caller passes a live trampoline, whose literal is an
        // aligned u64 at `window`, only ever written by atomic stores.
        let literal = unsafe { (*(window as *const AtomicU64)).load(Ordering::Acquire) };
        Ok(literal as usize)
    }

    unsafe fn retarget(
        tramp: usize,
        _slot: &Slot,
        target: usize,
        writer: &dyn TextWriter,
    ) -> Result<(), Error> {
        let window = layout::window_of(tramp)?;
        // SAFETY: the caller passes a live trampoline.
        let before = unsafe { read_trampoline(window) };
        let current = decode(tramp, &before)?;
        let patch = plan(tramp as u64, target as u64)?;
        if patch == current.patch() {
            return Ok(());
        }
        // SAFETY: the window is this key's trampoline and the caller holds
        // the patch lock.
        unsafe { write_patch(window, current.patch(), patch, writer) }
    }
}

/// Writes `patch` over `old` in the window at `window` (literal first),
/// checks it reads back, and makes it visible to instruction fetch.
///
/// # Safety
///
/// `window` must be a trampoline window this caller may patch, holding
/// `old`, with the patch lock held.
#[cfg(target_arch = "aarch64")]
pub unsafe fn write_patch(
    window: usize,
    old: Patch,
    patch: Patch,
    writer: &dyn TextWriter,
) -> Result<(), Error> {
    // SAFETY: both writes target this window, per this function's contract.
    unsafe {
        writer.write(window, &patch.literal.to_le_bytes())?;
        if let Err(e) = writer.write(window + 8, &patch.entry.to_le_bytes()) {
            // Put the literal back so the key is exactly as it was. Even if
            // this fails, (new literal, old branch) is a valid state.
            let _ = writer.write(window, &old.literal.to_le_bytes());
            flush_icache_range(window, 16);
            return Err(e);
        }
    }
    // SAFETY: the window is readable.
    let now = unsafe { read_trampoline(window) };
    flush_icache_range(window, 16);
    if layout::patch_of(&now) != patch {
        return Err(Error::VerifyFailed { addr: window });
    }
    writer.sync_cores()
}

/// `global_asm!` with this target's options (the default syntax). Used by
/// `__static_call_trampoline_asm!`.
#[cfg(static_call_backend = "aarch64")]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_global_asm {
    ($($args:tt)*) => {
        $crate::__private::core::arch::global_asm!($($args)*);
    };
}
