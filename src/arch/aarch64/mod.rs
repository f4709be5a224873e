//! The arm64 backend: Ard Biesheuvel's literal-pool trampoline (LKML, 2021).
//!
//! ```text
//!         .balign 16
//! 0:      .quad   target        // literal, at tramp - 8 (0 as assembled)
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
//! As assembled, the literal is 0 (an absolute address in text would be a
//! text relocation in a position-independent executable) and the `b` is
//! authoritative: it leads to the target, to a linker veneer when the target
//! is more than 128 MiB away, or to a Rust-ABI key's init shim. The key's
//! slot holds the target `query` reports. Before the first update writes
//! anything else, it publishes that target in the literal and does the
//! cache maintenance, so that the table above holds from then on: without
//! it, a CPU pairing a new `nop` with the literal 0 would return instead of
//! calling the old target.
//!
//! The second 64-bit store rewrites the `bti c` word with its own value.
//! That is no modification of `bti c` in the ARM ARM's sense: a concurrent
//! fetch of that word sees the same bits whichever copy it reads, so the
//! only instruction whose value changes is the `B`/`NOP` beside it, which is
//! in the list of instructions that may be modified while other CPUs run
//! them.
//!
//! Instruction fetch and data loads are not coherent on arm64, so a CPU may
//! see a stale branch with a fresh literal or the reverse; the table covers
//! every such pairing, and the `cbz` makes a NULL literal a return rather
//! than a branch to address 0. Only `B` and `NOP` are ever exchanged, both in
//! the ARM ARM's list of instructions that may be modified while other CPUs
//! execute them; `RET` is never written.

pub mod insn;
mod layout;
pub mod site;

#[cfg(target_arch = "aarch64")]
mod cache;
pub mod ctr;

pub use layout::{
    Branch, Patch, TRAMPOLINE_LEN, Trampoline, WINDOW_ALIGN, decode, plan, window_of,
};

#[cfg(target_arch = "aarch64")]
pub use cache::{flush_icache_range, flush_icache_words, read_ctr_el0};

#[cfg(target_arch = "aarch64")]
use super::Backend;
#[cfg(target_arch = "aarch64")]
use crate::{Error, TextWriter};
#[cfg(target_arch = "aarch64")]
use core::sync::atomic::Ordering;
use core::sync::atomic::{AtomicBool, AtomicPtr};

/// The arm64 backend (implements [`super::Backend`] on arm64
/// targets; elsewhere only its pure functions are used).
#[derive(Debug)]
pub enum Aarch64 {}

/// Per-key state: the key's current target as the API reports it.
///
/// It is kept here rather than read from the literal because a trampoline
/// as assembled has a literal of 0 (no absolute address in text) and a `b`
/// that may lead to a linker veneer or the key's init shim; `query` must
/// answer the function itself.
#[derive(Debug)]
pub struct Slot {
    /// The current target, 0 for NULL; written under the patch lock once
    /// an update has fully succeeded.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    target: AtomicPtr<()>,
    /// Where the assembled `b` leads (the target, or a Rust-ABI key's init
    /// shim), to recognise a never-updated trampoline; null if unknown.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    entry: *mut (),
    /// Some update of the key has succeeded: its window is never again
    /// one as assembled.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    updated: AtomicBool,
    /// The key's last update returned `RestoreFailed` (cleared by the next
    /// that succeeds): its window may hold a literal that disagrees with
    /// its `b`, and its sites any call, which the next update completes.
    #[cfg_attr(not(target_arch = "aarch64"), allow(dead_code))]
    unfinished: AtomicBool,
}

// SAFETY: `entry` is an address only compared, never dereferenced.
unsafe impl Sync for Slot {}

impl Slot {
    /// A slot for a key whose trampoline was assembled for `target` (null
    /// for NULL).
    pub const fn new(target: *mut ()) -> Self {
        Slot {
            target: AtomicPtr::new(target),
            entry: core::ptr::null_mut(),
            updated: AtomicBool::new(false),
            unfinished: AtomicBool::new(false),
        }
    }

    /// The same slot, recording where the assembled `b` leads, so that an
    /// update can check it before writing.
    pub const fn assembled_for(mut self, entry: *mut ()) -> Self {
        self.entry = entry;
        self
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
// it checks the shape before writing, publishes the current target in a
// never-updated trampoline's literal first (with cache maintenance), writes
// the literal then the branch word (each one aligned 64-bit store), and
// finishes with cache maintenance to the point of unification before the
// writer's CPU synchronization; on any failure it puts the old window back.
#[cfg(target_arch = "aarch64")]
unsafe impl Backend for Aarch64 {
    const NAME: &'static str = "aarch64";
    const WRITES_TEXT: bool = true;
    type Slot = Slot;
    /// Nothing to choose: one protocol.
    type Options = ();

    fn default_options() {}

    unsafe fn query(tramp: usize, slot: &Slot) -> Result<usize, Error> {
        layout::window_of(tramp)?;
        Ok(slot.target.load(Ordering::Acquire) as usize)
    }

    unsafe fn retarget(
        tramp: usize,
        slot: &Slot,
        target: usize,
        writer: &dyn TextWriter,
        (): (),
    ) -> Result<(), Error> {
        let window = layout::window_of(tramp)?;
        let writer = &crate::writer::Watched::new(writer);
        // SAFETY: forwarded from the caller.
        let result = unsafe { retarget_window(tramp, window, slot, target, writer) };
        match result {
            Ok(()) => {
                slot.target.store(target as *mut (), Ordering::Release);
                slot.updated.store(true, Ordering::Relaxed);
                slot.unfinished.store(false, Ordering::Relaxed);
            }
            Err(Error::RestoreFailed { .. }) => {
                slot.unfinished.store(true, Ordering::Relaxed);
                // `query` names where a call of the trampoline now goes:
                // the old target or this one. Unless the writer lost the
                // text, whose state is then unknown (and not read).
                if !writer.lost() {
                    // SAFETY: the caller's live trampoline.
                    let now = unsafe { read_trampoline(window) };
                    if reached(tramp, &now) == Some(target as u64) {
                        slot.target.store(target as *mut (), Ordering::Release);
                    }
                }
            }
            Err(_) => {}
        }
        result
    }
}

/// Where a call entering the window `bytes` of the trampoline at `tramp`
/// goes: its `b`'s destination, or with a `nop` the literal (0 for NULL);
/// `None` for bytes no update leaves.
#[cfg(target_arch = "aarch64")]
fn reached(tramp: usize, bytes: &[u8; TRAMPOLINE_LEN]) -> Option<u64> {
    let literal = layout::patch_of(bytes).literal;
    let mut assembled = *bytes;
    assembled[..8].fill(0);
    match decode(tramp, &assembled).ok()?.branch {
        Branch::B(dest) => Some(dest),
        Branch::Nop => Some(literal),
    }
}

/// [`Backend::retarget`] of an aligned window, leaving the slot to the
/// caller.
///
/// # Safety
///
/// As for [`Backend::retarget`].
#[cfg(target_arch = "aarch64")]
unsafe fn retarget_window(
    tramp: usize,
    window: usize,
    slot: &Slot,
    target: usize,
    writer: &dyn TextWriter,
) -> Result<(), Error> {
    {
        // SAFETY: the caller passes a live trampoline.
        let before = unsafe { read_trampoline(window) };
        let mut current = decode_own(tramp, &before, slot)?;
        let patch = plan(tramp as u64, target as u64)?;
        let unfinished = slot.unfinished.load(Ordering::Relaxed);
        if let (true, false, Branch::B(dest)) =
            (current.never_updated(), unfinished, current.branch)
        {
            // The assembled `b` must lead where the key was assembled to
            // go, or (only when that is out of reach) to a linker veneer.
            let entry = slot.entry as u64;
            let reachable = insn::encode_b(tramp as u64 + 4, entry).is_some();
            if entry != 0 && dest != entry && reachable {
                return Err(Error::UnrecognisedTrampoline {
                    addr: window,
                    offset: 12,
                    found: u64::from(current.branch_word),
                });
            }
        }
        // The sites are checked before anything is written (the literal's
        // publication included), so a refused site leaves every byte as it
        // was.
        let sites = Some(Sites {
            tramp: tramp as u64,
            old: slot.target.load(Ordering::Relaxed) as u64,
            never_updated: !slot.updated.load(Ordering::Relaxed),
            new: target as u64,
            table: crate::site::table::live::locked()?,
        });
        if let Some(s) = &sites {
            s.check(unfinished)?;
        }
        if unfinished {
            // What the failed update left reaches every CPU before
            // anything changes.
            writer.sync_cores()?;
        }
        if current.never_updated() {
            // A CPU may pair the new branch word with a stale literal, so
            // the literal must hold the current target before anything
            // else changes: with a literal of 0 a stale-literal `nop`
            // would return instead of calling the old target.
            let now = slot.target.load(Ordering::Relaxed) as u64;
            // SAFETY: the window is this key's, the lock is held.
            unsafe { write_words(window, &[(0, now)], writer) }?;
            flush_icache_range(window, 16);
            // SAFETY: the window is readable.
            let published = unsafe { read_trampoline(window) };
            if layout::patch_of(&published).literal != now {
                // Not written (a writer that cannot really write): the
                // window still behaves as before, its `b` is taken.
                return Err(Error::VerifyFailed { addr: window });
            }
            current.target = now;
        }
        if patch != current.patch() || sites.as_ref().is_some_and(Sites::any) {
            // SAFETY: the window is this key's trampoline, holding
            // `current`, the sites are its own, and the caller holds the
            // patch lock.
            let written =
                unsafe { write_patch_and_sites(window, current.patch(), patch, &sites, writer) };
            // On failure the window is as it was, but for a literal just
            // published, which stays: once a `nop` of this update may have
            // been executed, a CPU can be about to load the literal, and
            // putting 0 back would make its call return instead
            // (`decode_own` recognises the window as never updated).
            written?;
        }
        Ok(())
    }
}

/// [`decode`], also accepting a window never updated whose literal an
/// update has already published (the key's own current target) beside
/// the assembled `b`: an update that failed after publishing leaves it so.
/// It decodes as never updated. Only while no update of the key has
/// succeeded: after one, such bytes are foreign. After an update that
/// returned `RestoreFailed`, also any `b` beside any literal (the literal
/// written, the branch not, or not put back).
#[cfg(target_arch = "aarch64")]
fn decode_own(
    tramp: usize,
    bytes: &[u8; TRAMPOLINE_LEN],
    slot: &Slot,
) -> Result<Trampoline, Error> {
    let refused = match decode(tramp, bytes) {
        Ok(t) => return Ok(t),
        Err(e) => e,
    };
    let literal = layout::patch_of(bytes).literal;
    let mut assembled = *bytes;
    assembled[..8].fill(0);
    match decode(tramp, &assembled) {
        Ok(t) if slot.unfinished.load(Ordering::Relaxed) => Ok(Trampoline {
            target: literal,
            ..t
        }),
        Ok(t)
            if t.never_updated()
                && !slot.updated.load(Ordering::Relaxed)
                && literal == slot.target.load(Ordering::Relaxed) as u64 =>
        {
            Ok(t)
        }
        _ => Err(refused),
    }
}

/// Writes `(offset, word)` pairs into the window through `writer`, each one
/// aligned 64-bit store.
///
/// # Safety
///
/// `window` must be a trampoline window the caller may patch, with the
/// patch lock held.
#[cfg(target_arch = "aarch64")]
unsafe fn write_words(
    window: usize,
    words: &[(usize, u64)],
    writer: &dyn TextWriter,
) -> Result<(), Error> {
    for &(offset, word) in words {
        // SAFETY: per this function's contract.
        unsafe { writer.write(window + offset, &word.to_le_bytes()) }?;
    }
    Ok(())
}

/// The inline call sites of one key's update.
#[cfg(target_arch = "aarch64")]
struct Sites {
    tramp: u64,
    /// The key's target before the update (0 for NULL).
    old: u64,
    /// No update of the key has succeeded: the defining crate's sites may
    /// still hold the calls they were assembled with.
    never_updated: bool,
    /// Its target after.
    new: u64,
    table: crate::site::table::Records<'static>,
}

#[cfg(target_arch = "aarch64")]
impl Sites {
    /// No sites at all (a trampoline written on its own).
    fn none() -> Option<Self> {
        None
    }

    fn addrs(&self) -> impl Iterator<Item = usize> + Clone + 'static {
        self.table.sites_of(self.tramp as usize)
    }

    /// What a site holds now.
    fn read(site: usize) -> u32 {
        // SAFETY: a site of the table: an aligned instruction word of
        // mapped text (sites of freed text are forgotten first).
        unsafe { core::ptr::read_volatile(site as *const u32) }
    }

    /// Whether any site needs a store.
    fn any(&self) -> bool {
        self.addrs()
            .any(|s| site::plan(s as u64, self.tramp, self.new) != Ok(Self::read(s)))
    }

    /// Every site holds what it may hold, and can take the new target:
    /// checked before anything is written. After an update that returned
    /// `RestoreFailed` (`unfinished`), any call or the no-op.
    fn check(&self, unfinished: bool) -> Result<(), Error> {
        for s in self.addrs() {
            if unfinished {
                site::check_unfinished(s as u64, Self::read(s))?;
            } else {
                site::check(
                    s as u64,
                    Self::read(s),
                    self.tramp,
                    self.old,
                    self.never_updated,
                )?;
            }
            site::plan(s as u64, self.tramp, self.new)?;
        }
        Ok(())
    }

    /// The stores that take every site to `word(site)`, in address order.
    fn stores<'a>(
        &'a self,
        word: impl Fn(u64) -> u32 + 'a,
    ) -> impl Iterator<Item = crate::writer::TextPatch> + 'a {
        self.addrs().filter_map(move |s| {
            let w = word(s as u64);
            (Self::read(s) != w).then(|| crate::writer::TextPatch::new(s, &w.to_le_bytes()))
        })
    }

    /// The new word of a site (checked to exist by `check`).
    fn new_word(&self, s: u64) -> u32 {
        site::plan(s, self.tramp, self.new).unwrap_or(insn::NOP)
    }

    /// What a failed update puts back: a site that still holds an old
    /// word keeps it; one that took the new word gets the trampoline's
    /// call, which behaves as the old target once the trampoline is back.
    fn restored_word(&self, s: u64) -> u32 {
        let home = site::home(s, self.tramp).unwrap_or(insn::NOP);
        match Self::read(s as usize) {
            w if w == home || Ok(w) == site::plan(s, self.tramp, self.old) => w,
            _ => home,
        }
    }
}

/// Writes `patch` over `old` in the window at `window` (literal first),
/// checks it reads back, makes it visible to instruction fetch and has the
/// writer synchronise every CPU.
///
/// On any failure it writes `old` back, does the cache maintenance and
/// synchronises again, so the key behaves as before on every CPU, and
/// returns the first error; if putting `old` back fails too, it returns
/// [`Error::RestoreFailed`].
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
    // SAFETY: forwarded; no sites.
    unsafe { write_patch_and_sites(window, old, patch, &Sites::none(), writer) }
}

/// [`write_patch`], and the key's inline sites with it: the trampoline's
/// two words, then every site that changes (one aligned 32-bit store each,
/// handed to the writer as one batch), the cache maintenance of all of
/// them, and one synchronisation for the whole update.
///
/// Every combination of old and new words (trampoline words, sites) calls
/// the old or the new target, so there is no order to keep between them
/// and no synchronisation before the last. A failure puts back the
/// trampoline's old words and gives each site that took the new word the
/// trampoline's call, then synchronises.
///
/// # Safety
///
/// As for [`write_patch`]; the sites are the key's own.
#[cfg(target_arch = "aarch64")]
unsafe fn write_patch_and_sites(
    window: usize,
    old: Patch,
    patch: Patch,
    sites: &Option<Sites>,
    writer: &dyn TextWriter,
) -> Result<(), Error> {
    let new = if patch == old {
        &[][..]
    } else {
        &[(0, patch.literal), (8, patch.entry)][..]
    };
    let mut written = 0;
    // Not after a writer lost the text (`RestoreFailed`: its page may be
    // unmapped, and cache maintenance on it would fault).
    let flush_sites = |s: &Sites, stored: &Result<(), Error>| {
        if !matches!(stored, Err(Error::RestoreFailed { .. })) {
            flush_icache_words(s.addrs());
        }
    };
    let mut apply = || {
        for &(offset, word) in new {
            // SAFETY: per this function's contract.
            unsafe { writer.write(window + offset, &word.to_le_bytes()) }?;
            written += 1;
        }
        // SAFETY: the window is readable.
        let now = unsafe { read_trampoline(window) };
        flush_icache_range(window, 16);
        if layout::patch_of(&now) != patch {
            return Err(Error::VerifyFailed { addr: window });
        }
        if let Some(s) = sites {
            // SAFETY: the key's own sites; the lock is held.
            let stored = unsafe { writer.write_batch(&mut s.stores(|a| s.new_word(a))) };
            flush_sites(s, &stored);
            stored?;
            if let Some(bad) = s.addrs().find(|&a| Sites::read(a) != s.new_word(a as u64)) {
                return Err(Error::VerifyFailed { addr: bad });
            }
        }
        writer.sync_cores()
    };
    let Err(error) = apply() else {
        return Ok(());
    };
    if matches!(error, Error::RestoreFailed { .. }) {
        // The writer lost the text: nothing more of it is read or written.
        return Err(error);
    }
    // Every mix of old and new words is a valid state (module docs), so
    // putting back, in the same order, the words whose store succeeded (a
    // failed store stored nothing) returns the key to its old behaviour on
    // every CPU once they are synchronised.
    let restore_sites = || -> Result<(), Error> {
        let Some(s) = sites else { return Ok(()) };
        // SAFETY: as above.
        let stored = unsafe { writer.write_batch(&mut s.stores(|a| s.restored_word(a))) };
        flush_sites(s, &stored);
        stored?;
        match s
            .addrs()
            .find(|&a| Sites::read(a) != s.restored_word(a as u64))
        {
            Some(bad) => Err(Error::VerifyFailed { addr: bad }),
            None => Ok(()),
        }
    };
    let old_words = [(0, old.literal), (8, old.entry)];
    // SAFETY: per this function's contract.
    let restored = restore_sites()
        .and_then(|()| unsafe { write_words(window, &old_words[..written], writer) })
        .and_then(|()| {
            // SAFETY: the window is readable.
            let now = unsafe { read_trampoline(window) };
            flush_icache_range(window, 16);
            if layout::patch_of(&now) == old {
                writer.sync_cores()
            } else {
                Err(Error::VerifyFailed { addr: window })
            }
        });
    match restored {
        Ok(()) => Err(error),
        Err(e @ Error::RestoreFailed { .. }) => Err(e),
        Err(_) => Err(Error::RestoreFailed {
            addr: window,
            state: "the window may hold the old or the new literal and branch, and the \
                    key's inline sites the old or the new call or the trampoline's (each \
                    calls the old or the new target), and other CPUs may not have been \
                    synchronised; query() names where a call of the trampoline goes, and \
                    the key's next update, with a writer that works, completes it",
        }),
    }
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
