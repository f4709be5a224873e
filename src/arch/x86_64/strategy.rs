//! How the x86-64 backend patches: the page swap, the int3 protocol or one
//! atomic store, chosen per update or per program (by default, from the
//! writer).

use core::sync::atomic::{AtomicU8, Ordering};

#[cfg(doc)]
use crate::arch::Backend;
use crate::{Error, TextWriter};

/// How the x86-64 backend retargets: its [`Backend::Options`].
///
/// Chosen, most specific first: per update by passing a [`WithStrategy`]
/// writer to `update_with`; per program with [`set_default_strategy`]. There
/// is deliberately no Cargo feature for it: features are unified across the
/// dependency graph, so any library could flip the final program's (or
/// kernel's) choice; only the program itself decides, at run time.
///
/// The initial default is [`Auto`](Strategy::Auto): the strategy follows
/// from the writer. A writer that publishes whole pages
/// ([`TextWriter::publishes_pages`], the default Linux writer
/// `writer::linux::Remap`) gets [`PageSwap`](Strategy::PageSwap):
/// no CPU ever fetches bytes being written, so there is no cross-modifying
/// code to guard. A writer that stores in place (`Mprotect`, `Alias`,
/// `Direct`) gets [`Breakpoint`](Strategy::Breakpoint), the protocol the
/// Intel SDM documents for code other CPUs may be running (Vol. 3A §9.1.3,
/// "Handling Self- and Cross-Modifying Code"). [`AtomicStore`](Strategy::AtomicStore)
/// is used only where a program asks for it.
///
/// What each needs:
///
/// | strategy | needs |
/// | --- | --- |
/// | `PageSwap` | a writer that publishes whole pages; refused ([`Error::NeedsPageWriter`]) with any other |
/// | `Breakpoint` | every `int3` reaching [`handle_breakpoint`](super::handle_breakpoint): in Linux user space no thread may call a key with SIGTRAP blocked or ignored, and no debugger may stop on SIGTRAP; a writer whose `sync_cores` reaches every CPU |
/// | `AtomicStore` | with an in-place writer, instruction fetch seeing an aligned 8-byte store whole while it changes the opcode (8-byte NOP and `call`, `jmp` and `ret`): unsynchronised cross-modifying code, which §9.1.3 does not sanction, Intel's specification updates list as the erratum "Unsynchronized Cross-Modifying Code Operations Can Cause Unexpected Instruction Execution Results" (for example W108 of the Celeron processor's, workaround: §9.1.3's algorithm), and Linux never does (it always uses `text_poke_bp`); with a page-publishing writer, nothing (but three swaps and syncs where `PageSwap` needs one) |
/// | `Auto` | whatever the strategy it picks needs |
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
    /// and trap-free, but with an in-place writer it relies on instruction
    /// fetch never seeing half of an aligned 8-byte store, which the Intel
    /// SDM does not promise (§9.1.3) and Intel's errata titled
    /// "Unsynchronized Cross-Modifying Code Operations Can Cause
    /// Unexpected Instruction Execution Results" say can fail.
    AtomicStore,
    /// The whole update in one step of a writer that publishes whole
    /// pages: every trampoline's entry word and literal and every inline
    /// site of every key in the update written into private copies of
    /// their pages in one batch, each page swapped in once, then one sync.
    /// The text a CPU may be running is never modified (it runs the old
    /// page or the new one), so no `int3`, no trap handler and no
    /// intermediate state are involved, and every call reaches the old
    /// target or the new one: each trampoline and site is old or new, and a
    /// site that calls its trampoline follows it.
    PageSwap,
    /// [`PageSwap`](Strategy::PageSwap) where the writer publishes whole
    /// pages, else [`Breakpoint`](Strategy::Breakpoint): the initial
    /// default.
    Auto,
}

impl Strategy {
    /// `writer`, asking for this strategy: shorthand for
    /// [`WithStrategy::new`].
    pub const fn with<'a>(self, writer: &'a dyn TextWriter) -> WithStrategy<'a> {
        WithStrategy::new(self, writer)
    }

    /// The strategy an update with `writer` uses: [`Auto`](Strategy::Auto)
    /// resolved by the writer; [`PageSwap`](Strategy::PageSwap) refused
    /// ([`Error::NeedsPageWriter`]) with a writer that stores in place.
    ///
    /// ```
    /// use static_call::{Error, arch::x86_64::Strategy, writer::Direct};
    /// // SAFETY: never asked to write.
    /// let direct = unsafe { Direct::new() };
    /// assert_eq!(Strategy::Auto.for_writer(&direct), Ok(Strategy::Breakpoint));
    /// assert_eq!(Strategy::PageSwap.for_writer(&direct), Err(Error::NeedsPageWriter));
    /// # #[cfg(target_os = "linux")]
    /// assert_eq!(
    ///     Strategy::Auto.for_writer(&static_call::writer::linux::Remap),
    ///     Ok(Strategy::PageSwap)
    /// );
    /// ```
    pub fn for_writer(self, writer: &dyn TextWriter) -> Result<Strategy, Error> {
        match (self, writer.publishes_pages()) {
            (Strategy::Auto, true) => Ok(Strategy::PageSwap),
            (Strategy::Auto, false) => Ok(Strategy::Breakpoint),
            (Strategy::PageSwap, false) => Err(Error::NeedsPageWriter),
            (s, _) => Ok(s),
        }
    }
}

const BREAKPOINT: u8 = 0;
const ATOMIC_STORE: u8 = 1;
const PAGE_SWAP: u8 = 2;
const AUTO: u8 = 3;

static DEFAULT_STRATEGY: AtomicU8 = AtomicU8::new(AUTO);

/// The strategy updates use when their writer does not ask for one:
/// initially [`Auto`](Strategy::Auto) (the strategy follows from the
/// writer), unless changed with [`set_default_strategy`].
///
/// ```
/// use static_call::arch::x86_64::{Strategy, default_strategy};
/// assert_eq!(default_strategy(), Strategy::Auto);
/// ```
pub fn default_strategy() -> Strategy {
    match DEFAULT_STRATEGY.load(Ordering::Relaxed) {
        ATOMIC_STORE => Strategy::AtomicStore,
        PAGE_SWAP => Strategy::PageSwap,
        AUTO => Strategy::Auto,
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
        Strategy::PageSwap => PAGE_SWAP,
        Strategy::Auto => AUTO,
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
        for s in [
            Strategy::Breakpoint,
            Strategy::AtomicStore,
            Strategy::PageSwap,
            Strategy::Auto,
        ] {
            let w = s.with(&direct);
            assert_eq!(w.strategy(), s);
            assert!(core::ptr::addr_eq(w.writer(), &direct as &dyn TextWriter));
        }
    }

    #[test]
    fn the_default_strategy_round_trips() {
        let initial = default_strategy();
        assert_eq!(initial, Strategy::Auto);
        for s in [
            Strategy::AtomicStore,
            Strategy::Breakpoint,
            Strategy::PageSwap,
            Strategy::Auto,
        ] {
            set_default_strategy(s);
            assert_eq!(default_strategy(), s);
        }
        set_default_strategy(initial);
    }
}
