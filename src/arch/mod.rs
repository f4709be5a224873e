//! Architecture backends behind the key API.
//!
//! Every backend's pure logic (instruction encoding, shape checks, patch
//! plans) is compiled on every host so it is unit-tested anywhere; only the
//! code that reads or writes live text and does cache maintenance is limited
//! to its own target. [`active`] names the backend keys use on this target.

pub mod aarch64;
pub mod generic;

use crate::{Error, TextWriter};

/// What an architecture provides to the key API: how to read a key's
/// current target and how to retarget it.
///
/// Generic code over architectures names `static_call::arch::active::Active`.
///
/// ```
/// use static_call::arch::{Backend, active::Active};
/// println!("static calls on this target use the {} backend", Active::NAME);
/// ```
///
/// # Safety
///
/// Implementations must keep every call through the key's trampoline
/// reaching either the previous target or the new one (or returning, for
/// NULL) at every instant of a retarget, on every CPU, and must write
/// nothing when they return an error.
pub unsafe trait Backend {
    /// Short name for messages, e.g. `"aarch64"`.
    const NAME: &'static str;

    /// Whether retargeting writes text (and so needs a [`TextWriter`]).
    const WRITES_TEXT: bool;

    /// Per-key storage beside the trampoline (a unit type for backends
    /// whose state lives in the trampoline itself).
    type Slot: Sync;

    /// The key's current target address, 0 for NULL.
    ///
    /// # Safety
    ///
    /// `tramp` and `slot` must be a key's trampoline and slot as emitted by
    /// [`static_call!`](crate::static_call) for this backend.
    unsafe fn query(tramp: usize, slot: &Self::Slot) -> Result<usize, Error>;

    /// Points the key at `target` (0 for NULL), writing through `writer`.
    ///
    /// # Safety
    ///
    /// As for [`query`](Backend::query); in addition `target` is 0 or the
    /// address of a function of the key's signature, and the caller holds
    /// the patch lock.
    unsafe fn retarget(
        tramp: usize,
        slot: &Self::Slot,
        target: usize,
        writer: &dyn TextWriter,
    ) -> Result<(), Error>;
}

/// The backend keys use on this target.
pub mod active {
    #[cfg(target_arch = "aarch64")]
    pub use super::aarch64::{Aarch64 as Active, Slot};
    #[cfg(not(target_arch = "aarch64"))]
    pub use super::generic::{Generic as Active, Slot};
}
