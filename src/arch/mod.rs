//! Architecture backends behind the key API.
//!
//! Every backend's pure logic (instruction encoding, shape checks, patch
//! plans) is compiled on every host so it is unit-tested anywhere; only the
//! code that reads or writes live text and does cache maintenance is limited
//! to its own target. [`active`] names the backend keys use on this target.

pub mod aarch64;
pub mod generic;
pub mod x86_64;

use crate::{Error, TextWriter};
use core::sync::atomic::{AtomicU8, Ordering};

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

    /// Whether a batch of retargets through `writer` may leave
    /// synchronising the CPUs to one `sync_cores` after its last store:
    /// true where every state the protocol's stores pass through is valid
    /// without a synchronisation between them (the default), false where a
    /// step relies on the one before having reached every CPU.
    fn syncs_can_be_deferred(_writer: &dyn TextWriter) -> bool {
        true
    }

    /// Retargets `n` keys (`item(i)` for `i` in `0..n`) in one batched
    /// protocol, where the backend has one for `writer` and `n` (x86-64's
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
}

/// How a backend that has more than one patch protocol retargets. Only
/// x86-64 has a choice today; other backends ignore it.
///
/// Chosen, most specific first: per update by passing a [`WithStrategy`]
/// writer to `update_with`; per program with [`set_default_strategy`]; per
/// build with the `strategy-atomic-store` cargo feature, which makes
/// [`AtomicStore`](Strategy::AtomicStore) the initial default everywhere.
///
/// Without the feature the initial default depends on where the program
/// runs (see [`default_strategy`]): [`AtomicStore`](Strategy::AtomicStore)
/// in Linux user space, where a trap arrives as a signal that a thread may
/// block (and a blocked SIGTRAP kills the process, a debugger stops on it),
/// and [`Breakpoint`](Strategy::Breakpoint) on bare metal, where a kernel's
/// #BP handler cannot be masked.
///
/// What each needs:
///
/// | strategy | needs |
/// | --- | --- |
/// | `Breakpoint` | every `int3` reaching [`x86_64::handle_breakpoint`]: in Linux user space no thread may call a key with SIGTRAP blocked or ignored, and no debugger may stop on SIGTRAP; a writer whose `sync_cores` reaches every CPU |
/// | `AtomicStore` | instruction fetch seeing an aligned 8-byte store whole (what CPUs do, the SDM does not promise); nothing else |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The breakpoint protocol (x86-64: Linux's `text_poke_bp`, `int3`
    /// over the first byte, CPUs synchronized between stores, trapped
    /// calls steered to the new target). The protocol CPU vendors document
    /// for modifying code other CPUs may be running. Needs a trap handler:
    /// installed automatically in Linux user space; see
    /// [`x86_64::declare_breakpoint_hook`] for kernels.
    Breakpoint,
    /// One aligned single-copy-atomic store of the patched word. Simpler
    /// and trap-free, but on x86-64 it relies on instruction fetch never
    /// seeing half of an aligned 8-byte store, which CPUs do in practice and
    /// the Intel SDM does not promise.
    AtomicStore,
}

impl Strategy {
    /// `writer`, asking for this strategy: shorthand for
    /// [`WithStrategy::new`].
    pub const fn with<'a>(self, writer: &'a dyn TextWriter) -> WithStrategy<'a> {
        WithStrategy::new(self, writer)
    }
}

const BREAKPOINT: u8 = 0;
const ATOMIC_STORE: u8 = 1;

/// The initial default: see [`Strategy`].
const INITIAL_STRATEGY: u8 = if cfg!(any(feature = "strategy-atomic-store", target_os = "linux")) {
    ATOMIC_STORE
} else {
    BREAKPOINT
};

static DEFAULT_STRATEGY: AtomicU8 = AtomicU8::new(INITIAL_STRATEGY);

/// The strategy updates use when their writer does not ask for one:
/// initially `AtomicStore` in Linux user space (an update can never make a
/// thread trap there) and `Breakpoint` elsewhere, unless changed with
/// [`set_default_strategy`] or the `strategy-atomic-store` feature.
///
/// ```
/// use static_call::arch::{Strategy, default_strategy};
/// # if !cfg!(feature = "strategy-atomic-store") {
/// let expected = if cfg!(target_os = "linux") {
///     Strategy::AtomicStore
/// } else {
///     Strategy::Breakpoint
/// };
/// assert_eq!(default_strategy(), expected);
/// # }
/// ```
pub fn default_strategy() -> Strategy {
    match DEFAULT_STRATEGY.load(Ordering::Relaxed) {
        ATOMIC_STORE => Strategy::AtomicStore,
        _ => Strategy::Breakpoint,
    }
}

/// Sets the strategy updates use when their writer does not ask for one.
/// Takes effect for updates that start afterwards.
///
/// ```no_run
/// use static_call::arch::{Strategy, set_default_strategy};
/// // This program never blocks SIGTRAP in a thread that calls a key and
/// // runs without a debugger: it asks for the protocol the SDM documents.
/// set_default_strategy(Strategy::Breakpoint);
/// ```
pub fn set_default_strategy(strategy: Strategy) {
    let v = match strategy {
        Strategy::Breakpoint => BREAKPOINT,
        Strategy::AtomicStore => ATOMIC_STORE,
    };
    DEFAULT_STRATEGY.store(v, Ordering::Relaxed);
}

/// A writer that asks for a [`Strategy`]: pass it to `update_with` (and
/// the other `_with` methods) to choose the strategy for that update only.
/// Writes and syncs go to the wrapped writer.
///
/// ```
/// static_call::static_call! { static OP: fn(u32) -> u32 = inc; }
/// fn inc(x: u32) -> u32 { x + 1 }
/// fn dec(x: u32) -> u32 { x - 1 }
///
/// # fn main() {
/// # #[cfg(target_os = "linux")] {
/// use static_call::arch::Strategy;
/// use static_call::writer::linux::Remap;
/// OP.update_with(dec, &Strategy::AtomicStore.with(&Remap)).unwrap();
/// assert_eq!(OP.call(5), 4);
/// OP.update_with(inc, &Strategy::Breakpoint.with(&Remap)).unwrap();
/// assert_eq!(OP.call(5), 6);
/// # }
/// # }
/// ```
///
/// It can also be installed as the default writer, making its strategy
/// the program's:
///
/// ```
/// # #[cfg(target_os = "linux")] {
/// use static_call::arch::{Strategy, WithStrategy};
/// use static_call::writer::linux::Remap;
/// static WRITER: WithStrategy<'static> = WithStrategy::new(Strategy::AtomicStore, &Remap);
/// static_call::set_default_writer(&WRITER);
/// # }
/// ```
#[derive(Clone, Copy)]
pub struct WithStrategy<'a> {
    strategy: Strategy,
    writer: &'a dyn TextWriter,
}

impl<'a> WithStrategy<'a> {
    /// `writer`, asking for `strategy`.
    pub const fn new(strategy: Strategy, writer: &'a dyn TextWriter) -> Self {
        WithStrategy { strategy, writer }
    }
}

impl core::fmt::Debug for WithStrategy<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WithStrategy")
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

// SAFETY: every write and sync is the wrapped writer's, which keeps the
// trait's promises.
unsafe impl TextWriter for WithStrategy<'_> {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        // SAFETY: the caller's contract is the wrapped writer's.
        unsafe { self.writer.write(addr, bytes) }
    }

    unsafe fn write_batch(
        &self,
        patches: &mut dyn Iterator<Item = crate::writer::TextPatch>,
    ) -> Result<(), Error> {
        // SAFETY: the caller's contract is the wrapped writer's.
        unsafe { self.writer.write_batch(patches) }
    }

    fn sync_cores(&self) -> Result<(), Error> {
        self.writer.sync_cores()
    }

    fn strategy(&self) -> Option<Strategy> {
        Some(self.strategy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::Direct;

    #[test]
    fn writers_ask_for_no_strategy_unless_wrapped() {
        // SAFETY: these writers are never asked to write.
        let direct = unsafe { Direct::new() };
        assert_eq!(direct.strategy(), None);
        for s in [Strategy::Breakpoint, Strategy::AtomicStore] {
            let w = s.with(&direct);
            assert_eq!(w.strategy(), Some(s));
            // Wrapping again: the outermost request wins.
            let other = match s {
                Strategy::Breakpoint => Strategy::AtomicStore,
                Strategy::AtomicStore => Strategy::Breakpoint,
            };
            assert_eq!(WithStrategy::new(other, &w).strategy(), Some(other));
        }
    }

    #[test]
    fn the_default_strategy_round_trips() {
        let initial = default_strategy();
        let expected = if cfg!(any(feature = "strategy-atomic-store", target_os = "linux")) {
            Strategy::AtomicStore
        } else {
            Strategy::Breakpoint
        };
        assert_eq!(initial, expected);
        for s in [Strategy::AtomicStore, Strategy::Breakpoint] {
            set_default_strategy(s);
            assert_eq!(default_strategy(), s);
        }
        set_default_strategy(initial);
    }

    #[test]
    fn wrapped_writes_reach_the_inner_writer() {
        let mut buf = [0u64; 1];
        // SAFETY: it writes to `buf` only, which is live and writable.
        let direct = unsafe { Direct::new() };
        let w = Strategy::AtomicStore.with(&direct);
        // SAFETY: `buf` is live, writable and aligned.
        unsafe { w.write(buf.as_mut_ptr() as usize, &7u64.to_ne_bytes()) }.unwrap();
        w.sync_cores().unwrap();
        assert_eq!(buf, [7]);
    }
}
