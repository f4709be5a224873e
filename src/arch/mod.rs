//! Architecture backends behind the key API.
//!
//! Every backend's pure logic (instruction encoding, shape checks, patch
//! plans) is compiled on every host so it is unit-tested anywhere; only the
//! code that reads or writes live text and does cache maintenance is limited
//! to its own target. [`active`] names the backend keys use on this target.

// Each architecture's module compiles everywhere (its pure functions are
// tested on every host), but its documentation is for its own targets: it
// names items that exist only there.
#[cfg_attr(not(target_arch = "aarch64"), doc(hidden))]
pub mod aarch64;
pub mod generic;
#[cfg_attr(not(target_arch = "x86_64"), doc(hidden))]
pub mod x86_64;

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
/// NULL) at every instant of a retarget, on every CPU, and when they return
/// an error other than [`Error::RestoreFailed`] the key must behave exactly
/// as before (its bytes may differ only where that changes no behaviour,
/// such as a never-updated trampoline's literal, published first).
pub unsafe trait Backend {
    /// Short name for messages, e.g. `"aarch64"`.
    const NAME: &'static str;

    /// Whether retargeting writes text (and so needs a [`TextWriter`]).
    const WRITES_TEXT: bool;

    /// Per-key storage beside the trampoline (a unit type for backends
    /// whose state lives in the trampoline itself).
    type Slot: Sync;

    /// What an update may choose about how this backend patches (x86-64:
    /// its [`Strategy`](x86_64::Strategy)); `()` where there is no choice.
    type Options: Copy + core::fmt::Debug + PartialEq;

    /// The options of an update whose writer asks for none, read once as
    /// the update starts (with the patch lock held).
    fn default_options() -> Self::Options;

    /// The key's current target address, 0 for NULL.
    ///
    /// # Safety
    ///
    /// `tramp` and `slot` must be a key's trampoline and slot as emitted by
    /// [`static_call!`](crate::static_call) for this backend.
    unsafe fn query(tramp: usize, slot: &Self::Slot) -> Result<usize, Error>;

    /// Points the key at `target` (0 for NULL), writing through `writer`,
    /// patching as `options` say.
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
        options: Self::Options,
    ) -> Result<(), Error>;

    /// Whether a batch of retargets made with `options` may leave
    /// synchronising the CPUs to one `sync_cores` after its last store:
    /// true where every state the protocol's stores pass through is valid
    /// without a synchronisation between them (the default), false where a
    /// step relies on the one before having reached every CPU.
    fn syncs_can_be_deferred(_options: Self::Options) -> bool {
        true
    }

    /// Retargets `n` keys (`item(i)` for `i` in `0..n`) in one batched
    /// protocol, where the backend has one for `options` and `n` (x86-64's
    /// batched int3 protocol); `None` where it has not, and the caller
    /// retargets them one by one. On `Err((i, e))` every key behaves as
    /// before (unless `e` is [`Error::RestoreFailed`]); `i` is the key the
    /// error concerns.
    ///
    /// # Safety
    ///
    /// As for [`retarget`](Backend::retarget), for every item.
    unsafe fn retarget_batch(
        _n: usize,
        _item: &dyn Fn(usize) -> BatchItem<'static, Self::Slot>,
        _writer: &dyn TextWriter,
        _options: Self::Options,
    ) -> Option<Result<(), (usize, Error)>> {
        None
    }
}

/// One key of a [`Backend::retarget_batch`].
#[derive(Debug)]
pub struct BatchItem<'a, S> {
    /// The key's trampoline.
    pub tramp: usize,
    /// The key's slot.
    pub slot: &'a S,
    /// The new target (0 for NULL).
    pub target: usize,
}

/// Emits a key's trampoline from the active backend's
/// `asm/<arch>/trampoline.S` (a GNU assembler macro, `.purgem`ed after use
/// because a crate's `global_asm!` blocks are assembled as one file). Used by
/// `static_call!` at module level (`global_asm!` cannot sit in a block).
///
/// The initial branch goes to the target itself for `extern "C"` keys, and
/// to the key's init shim (`__SCI__NAME`) for Rust-ABI keys (see
/// `static_call!`'s `@init_fn`).
#[cfg(any(static_call_backend = "aarch64", static_call_backend = "x86_64"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_trampoline_asm {
    ($name:ident $abi:ident null) => {
        $crate::__static_call_trampoline_asm! { @emit $name 1 "0" }
    };
    ($name:ident $abi:ident ret0) => {
        $crate::__static_call_trampoline_asm! {
            @emit $name 0 ::core::concat!("__SCR__", ::core::stringify!($name))
        }
    };
    ($name:ident rust func $init:path) => {
        $crate::__static_call_trampoline_asm! {
            @emit $name 0 ::core::concat!("__SCI__", ::core::stringify!($name))
        }
    };
    ($name:ident c func $init:path) => {
        $crate::__static_call_global_asm!(
            $crate::__static_call_asm_trampoline!(),
            ::core::concat!(
                "static_call_trampoline __SCT__", ::core::stringify!($name), ", 0, {target}"
            ),
            ".purgem static_call_trampoline",
            target = sym $init
        );
    };
    (@emit $name:ident $null:literal $target:expr) => {
        $crate::__static_call_global_asm!(
            $crate::__static_call_asm_trampoline!(),
            ::core::concat!(
                "static_call_trampoline __SCT__", ::core::stringify!($name), ", ",
                ::core::stringify!($null), ", ", $target
            ),
            ".purgem static_call_trampoline"
        );
    };
}

/// Declares a key's assembly trampoline as `__tramp`, and on x86-64 its
/// entry for indirect calls as `__tramp_indirect`. Used by `static_call!`.
#[cfg(static_call_backend = "x86_64")]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_trampoline {
    ($abi:ident $name:ident [$($named:tt)*] [$($ret:ty)?] $kind:ident $($init:path)?) => {
        $crate::__static_call_key! { @extern_trampoline $abi $name [$($named)*] [$($ret)?] }
        $crate::__static_call_key! { @extern_indirect $abi $name [$($named)*] [$($ret)?] }
    };
}

/// See the x86-64 version.
#[cfg(static_call_backend = "aarch64")]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_trampoline {
    ($abi:ident $name:ident [$($named:tt)*] [$($ret:ty)?] $kind:ident $($init:path)?) => {
        $crate::__static_call_key! { @extern_trampoline $abi $name [$($named)*] [$($ret)?] }
    };
}

/// The key's entry for indirect calls: a separate `endbr64` entry on
/// x86-64 (CET indirect branch tracking); the trampoline itself elsewhere
/// (arm64's starts with `bti c`). Used by `static_call!`.
#[doc(hidden)]
#[macro_export]
#[cfg(static_call_backend = "x86_64")]
macro_rules! __static_call_indirect_entry {
    () => {
        __tramp_indirect
    };
}

/// See the x86-64 version.
#[doc(hidden)]
#[macro_export]
#[cfg(not(static_call_backend = "x86_64"))]
macro_rules! __static_call_indirect_entry {
    () => {
        __tramp
    };
}

/// The backend keys use on this target.
pub mod active {
    #[cfg(static_call_backend = "aarch64")]
    pub use super::aarch64::{Aarch64 as Active, Slot};
    #[cfg(static_call_backend = "generic")]
    pub use super::generic::{Generic as Active, Slot};
    #[cfg(static_call_backend = "x86_64")]
    pub use super::x86_64::{Slot, X86_64 as Active};

    /// The active backend's per-update options.
    pub type Options = <Active as super::Backend>::Options;
}

/// A text writer for one update, with the [`Backend::Options`] of the
/// active backend it asks for.
///
/// Every [`TextWriter`] is one, asking for nothing: the update then takes
/// the backend's [`default_options`](Backend::default_options) when it
/// starts. An architecture with choices of its own offers a wrapper that
/// asks for them (x86-64: [`x86_64::WithStrategy`]).
pub trait UpdateWriter {
    /// Where the update's stores and synchronisations go.
    fn text_writer(&self) -> &dyn TextWriter;
    /// The options this writer asks for, if any.
    fn options(&self) -> Option<active::Options>;
}

impl<W: TextWriter> UpdateWriter for W {
    fn text_writer(&self) -> &dyn TextWriter {
        self
    }

    fn options(&self) -> Option<active::Options> {
        None
    }
}

impl UpdateWriter for dyn TextWriter + '_ {
    fn text_writer(&self) -> &dyn TextWriter {
        self
    }

    fn options(&self) -> Option<active::Options> {
        None
    }
}
