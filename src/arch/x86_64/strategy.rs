//! How the x86-64 backend patches: the int3 protocol or one atomic store,
//! chosen per update or per program.

use core::sync::atomic::{AtomicU8, Ordering};

use crate::TextWriter;
#[cfg(doc)]
use crate::arch::Backend;

/// How the x86-64 backend retargets: its [`Backend::Options`].
///
/// Chosen, most specific first: per update by passing a [`WithStrategy`]
/// writer to `update_with`; per program with [`set_default_strategy`]. There
/// is deliberately no Cargo feature for it: features are unified across the
/// dependency graph, so any library could flip the final program's (or
/// kernel's) choice; only the program itself decides, at run time.
///
/// The initial default depends on where the program
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
/// | `Breakpoint` | every `int3` reaching [`handle_breakpoint`](super::handle_breakpoint): in Linux user space no thread may call a key with SIGTRAP blocked or ignored, and no debugger may stop on SIGTRAP; a writer whose `sync_cores` reaches every CPU |
/// | `AtomicStore` | instruction fetch seeing an aligned 8-byte store whole (what CPUs do, the SDM does not promise); nothing else |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// The breakpoint protocol (x86-64: Linux's `text_poke_bp`, `int3`
    /// over the first byte, CPUs synchronized between stores, trapped
    /// calls steered to the new target). The protocol CPU vendors document
    /// for modifying code other CPUs may be running. Needs a trap handler:
    /// installed automatically in Linux user space; see
    /// [`declare_breakpoint_hook`](super::declare_breakpoint_hook) for kernels.
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
const INITIAL_STRATEGY: u8 = if cfg!(target_os = "linux") {
    ATOMIC_STORE
} else {
    BREAKPOINT
};

static DEFAULT_STRATEGY: AtomicU8 = AtomicU8::new(INITIAL_STRATEGY);

/// The strategy updates use when their writer does not ask for one:
/// initially `AtomicStore` in Linux user space (an update can never make a
/// thread trap there) and `Breakpoint` elsewhere, unless changed with
/// [`set_default_strategy`].
///
/// ```
/// use static_call::arch::x86_64::{Strategy, default_strategy};
/// let expected = if cfg!(target_os = "linux") {
///     Strategy::AtomicStore
/// } else {
///     Strategy::Breakpoint
/// };
/// assert_eq!(default_strategy(), expected);
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
/// use static_call::arch::x86_64::{Strategy, set_default_strategy};
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
/// # #[cfg(all(target_os = "linux", target_arch = "x86_64"))] {
/// use static_call::arch::x86_64::Strategy;
/// use static_call::writer::linux::Remap;
/// OP.update_with(dec, &Strategy::AtomicStore.with(&Remap)).unwrap();
/// assert_eq!(OP.call(5), 4);
/// OP.update_with(inc, &Strategy::Breakpoint.with(&Remap)).unwrap();
/// assert_eq!(OP.call(5), 6);
/// # }
/// # }
/// ```
///
/// To make a strategy the program's, use [`set_default_strategy`].
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

    /// The strategy it asks for.
    pub const fn strategy(&self) -> Strategy {
        self.strategy
    }

    /// The writer its stores and syncs go to.
    pub fn writer(&self) -> &'a dyn TextWriter {
        self.writer
    }
}

impl core::fmt::Debug for WithStrategy<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("WithStrategy")
            .field("strategy", &self.strategy)
            .finish_non_exhaustive()
    }
}

/// On the x86-64 backend it asks for its strategy; on any other (the
/// generic fallback forced on x86-64, say) there is nothing to choose and
/// it is its writer.
impl crate::arch::UpdateWriter for WithStrategy<'_> {
    fn text_writer(&self) -> &dyn TextWriter {
        self.writer
    }

    #[cfg(static_call_backend = "x86_64")]
    fn options(&self) -> Option<Strategy> {
        Some(self.strategy)
    }

    #[cfg(not(static_call_backend = "x86_64"))]
    fn options(&self) -> Option<crate::arch::active::Options> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::writer::Direct;

    #[test]
    fn a_wrapper_asks_for_its_strategy_and_writes_through_its_writer() {
        // SAFETY: these writers are never asked to write.
        let direct = unsafe { Direct::new() };
        for s in [Strategy::Breakpoint, Strategy::AtomicStore] {
            let w = s.with(&direct);
            assert_eq!(w.strategy(), s);
            assert!(core::ptr::addr_eq(w.writer(), &direct as &dyn TextWriter));
        }
    }

    #[test]
    fn the_default_strategy_round_trips() {
        let initial = default_strategy();
        let expected = if cfg!(target_os = "linux") {
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
}
