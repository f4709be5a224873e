//! Static calls for Rust: calls whose target is a direct branch that is
//! retargeted at run time, in the manner of the Linux kernel's
//! `static_call()`.
//!
//! A key is defined with [`static_call!`]; every call goes through the key's
//! trampoline, a few instructions emitted with `global_asm!` that branch
//! straight to the current target. [`StaticCall::update`] rewrites the
//! trampoline in place, so switching implementations costs nothing on the
//! calling side: no load of a function pointer, no indirect branch, no
//! retpoline.
//!
//! ```
//! static_call::static_call! {
//!     /// How the scheduler reads the clock.
//!     pub static CLOCK: fn(u32) -> u64 = coarse_clock;
//! }
//!
//! fn coarse_clock(scale: u32) -> u64 { u64::from(scale) * 1000 }
//! fn fine_clock(scale: u32) -> u64 { u64::from(scale) * 1000 + 7 }
//!
//! # fn main() {
//! assert_eq!(CLOCK.call(2), 2000);
//! # if static_call::DEFAULT_WRITER_AVAILABLE {
//! CLOCK.update(fine_clock).unwrap();
//! assert_eq!(CLOCK.call(2), 2007);
//! # }
//! # }
//! ```
//!
//! # Backends
//!
//! | target | trampoline | retarget |
//! | --- | --- | --- |
//! | `aarch64` | literal at `tramp - 8`, `BTI C`, `B target`/`NOP`, `ldr x16`, `cbz`, `br x16` | two aligned 64-bit stores, then cache maintenance |
//! | `x86_64` | `jmp.d32 target` + `ud1` signature (`ret` for NULL, `jmp *literal(%rip)` beyond ±2 GiB), literal beside it | `int3` protocol (trapped calls steered to the new target) or one atomic 8-byte store; see [`arch::x86_64::Strategy`] |
//! | others | a Rust function calling through an atomic pointer | atomic store |
//!
//! The instruction encoders, layout checks and patch plans of every backend
//! are plain functions compiled on every host, so they are unit-tested
//! anywhere; only the code that touches real text is limited to its target.
#![no_std]
#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]
#![warn(missing_docs)]

#[cfg(test)]
extern crate std;

// The macro expanding to the active backend's trampoline source in `asm/`.
include!(concat!(env!("OUT_DIR"), "/asm_sources.rs"));

mod abi;
pub mod arch;
mod error;
mod fnptr;
mod key;
pub mod ops;
mod site;
pub mod writer;

pub use abi::{RegisterArg, RegisterReturn};
pub use error::{Error, UpdateError};
pub use fnptr::{FnPtr, Ret0Safe};
pub use key::{NullSafe, StaticCall};
pub use site::forget_call_sites;
pub use writer::{TextPatch, TextWriter, set_default_writer};

/// Whether this target has a text writer installed by default, so that
/// [`StaticCall::update`] works without [`set_default_writer`] (Linux user
/// space). Bare-metal users install their own writer.
///
/// ```
/// assert_eq!(static_call::DEFAULT_WRITER_AVAILABLE, cfg!(target_os = "linux"));
/// ```
pub const DEFAULT_WRITER_AVAILABLE: bool = writer::PLATFORM_DEFAULT_AVAILABLE;

/// Items the macros expand to. Not part of the public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::abi::{RegisterArg, RegisterReturn};
    pub use crate::arch::active::Slot;
    pub use crate::key::{assert_null_safe, assert_ret0_safe};
    #[cfg(static_call_backend = "x86_64")]
    pub use crate::site::x86_64::NoInlineSiteForStackArgs;
    pub use crate::site::{assert_register_arg, assert_register_return};
    pub use core;
    pub use core::ops::Deref;
}

/// The README's examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeExamples;
