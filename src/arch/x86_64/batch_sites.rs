//! The inline sites of the keys of one x86-64 update: the words each may
//! hold, the checks before anything is written, and the sweeps that write
//! them (the int3 protocol's phases, the one-store strategy's single
//! stores, and putting them back).

use super::insn::INT3;
use super::live::{lost, store_all_back};
use super::protocol::Store;
use super::{Slot, site};
use crate::arch::BatchItem;
use crate::{Error, TextWriter};
use core::sync::atomic::{AtomicU64, Ordering};

/// One inline site of an update, with the words it may hold.
#[derive(Debug, Clone, Copy)]
pub(super) struct SiteWords {
    pub(super) at: usize,
    /// The trampoline's call (a declaration's site as assembled).
    pub(super) home: [u8; 8],
    /// The word for the key's target before the update.
    pub(super) old: [u8; 8],
    /// The word for its target after.
    pub(super) new: [u8; 8],
}

impl SiteWords {
    /// What the site holds now: one aligned 8-byte load.
    pub(super) fn now(&self) -> [u8; 8] {
        // SAFETY: a site of the table: an aligned 8-byte word of
        // mapped text (sites of freed text are forgotten first), only
        // ever written by single aligned stores.
        unsafe { (*(self.at as *const AtomicU64)).load(Ordering::Acquire) }.to_le_bytes()
    }

    /// Whether the site behaves as before the update: its old word or
    /// the trampoline's call (which follows the trampoline).
    pub(super) fn behaves_as_before(&self, now: &[u8; 8]) -> bool {
        *now == self.old || *now == self.home
    }
}

/// The inline sites of the keys of an update, in address order.
pub(super) struct BatchSites<'a, 'b> {
    n: usize,
    item: &'a dyn Fn(usize) -> BatchItem<'b, Slot>,
    table: crate::site::table::Records<'static>,
}

impl<'a, 'b> BatchSites<'a, 'b> {
    /// The sites of keys `0..n`, each checked before anything is
    /// written: it holds its trampoline's call or its key's current
    /// word, and can take the new target.
    pub(super) fn of(
        n: usize,
        item: &'a dyn Fn(usize) -> BatchItem<'b, Slot>,
    ) -> Result<Self, (usize, Error)> {
        let table = crate::site::table::live::locked().map_err(|e| (0, e))?;
        let sites = BatchSites { n, item, table };
        for (i, at) in sites.keyed() {
            let it = item(i);
            let (tramp, old) = (
                it.tramp as u64,
                it.slot.target.load(Ordering::Relaxed) as u64,
            );
            let now = unsafe_free_read(at);
            if it.slot.is_unfinished() {
                site::check_unfinished(at as u64, &now).map_err(|e| (i, e))?;
            } else {
                site::check(at as u64, &now, tramp, old, it.slot.never_updated())
                    .map_err(|e| (i, e))?;
            }
            site::plan(at as u64, tramp, it.target as u64).map_err(|e| (i, e))?;
        }
        Ok(sites)
    }

    /// `(key index, site)` for every site of the batch's keys.
    pub(super) fn keyed(&self) -> impl Iterator<Item = (usize, usize)> + Clone + '_ {
        self.table.all().filter_map(move |(at, tramp)| {
            (0..self.n)
                .find(|&i| (self.item)(i).tramp == tramp)
                .map(|i| (i, at))
        })
    }

    pub(super) fn words(&self, i: usize, at: usize) -> SiteWords {
        let it = (self.item)(i);
        let (s, t) = (at as u64, it.tramp as u64);
        let old = it.slot.target.load(Ordering::Relaxed) as u64;
        // Checked in `of`: every site reaches its trampoline.
        let word = |target| site::plan(s, t, target).unwrap_or(site::NOP8);
        SiteWords {
            at,
            home: site::home(s, t).unwrap_or(site::NOP8),
            old: word(old),
            new: word(it.target as u64),
        }
    }

    pub(super) fn all(&self) -> impl Iterator<Item = SiteWords> + Clone + '_ {
        self.keyed().map(|(i, at)| self.words(i, at))
    }

    /// Whether the batch's keys have any site.
    pub(super) fn any(&self) -> bool {
        self.keyed().next().is_some()
    }

    pub(super) fn of_key(&self, key: usize) -> impl Iterator<Item = SiteWords> + '_ {
        self.keyed()
            .filter(move |&(i, _)| i == key)
            .map(|(i, at)| self.words(i, at))
    }

    /// One step over every site: the stores `step` asks for, handed to
    /// the writer as one batch in address order, then every site read
    /// back against `done`. Whether anything was stored.
    pub(super) fn sweep(
        &self,
        writer: &dyn TextWriter,
        step: impl Fn(&SiteWords) -> Option<Store>,
        done: impl Fn(&SiteWords) -> bool,
    ) -> Result<bool, Error> {
        let any = core::cell::Cell::new(false);
        let mut patches = self.all().filter_map(|s| {
            let store = step(&s)?;
            any.set(true);
            let (bytes, len) = store.bytes();
            Some(crate::writer::TextPatch::new(s.at, &bytes[..len]))
        });
        // SAFETY: each patch is one site of a key being updated (its
        // first byte, or its whole aligned word), with the patch lock
        // held (the callers' contract).
        unsafe { writer.write_batch(&mut patches) }?;
        match self.all().find(|s| !done(s)) {
            Some(s) => Err(Error::VerifyFailed { addr: s.at }),
            None => Ok(any.get()),
        }
    }

    /// Puts every site that does not behave as before back to its
    /// trampoline's call (which does, once the trampoline is back),
    /// with the int3 protocol's three steps, each followed by a sync.
    ///
    /// # Safety
    ///
    /// The patch lock is held; the sites' keys are armed.
    pub(super) unsafe fn revert(&self, writer: &dyn TextWriter) -> Result<(), Error> {
        let failed = |at| Error::RestoreFailed {
            addr: at,
            state: "an inline site may hold its new call, an int3 (steered through the \
                    key's literal) or the trampoline's call; the key's next update, with \
                    a writer that works, completes it",
        };
        let unsynced = || failed(self.first_changed());
        // The update may have failed between storing `int3`s and the
        // sync after them: every CPU must see them before any tail
        // changes, or one could pair a stale first byte with a new
        // tail (as Linux syncs after every int3 write). Without an
        // armed site there is nothing to make seen.
        if self.all().any(|s| s.now()[0] == INT3) {
            writer.sync_cores().map_err(|_| unsynced())?;
        }
        for phase in 1..=3 {
            let stored = self
                .sweep(
                    writer,
                    |s| {
                        let now = s.now();
                        if phase == 1 && s.behaves_as_before(&now) {
                            return None;
                        }
                        site::breakpoint_step(phase, &now, &s.home)
                    },
                    |s| {
                        let now = s.now();
                        s.behaves_as_before(&now) || site::breakpoint_done(phase, &now, &s.home)
                    },
                )
                .map_err(|e| match e {
                    Error::VerifyFailed { addr } => failed(addr),
                    Error::RestoreFailed { .. } => e,
                    _ => unsynced(),
                })?;
            if stored {
                writer.sync_cores().map_err(|_| unsynced())?;
            }
        }
        Ok(())
    }

    /// The first site that does not behave as before the update (or,
    /// if all do, the first site): what a failed restore names.
    pub(super) fn first_changed(&self) -> usize {
        self.all()
            .find(|s| !s.behaves_as_before(&s.now()))
            .or_else(|| self.all().next())
            .map_or(0, |s| s.at)
    }

    /// The one-store strategy's sites: each changed site's whole word
    /// in one aligned 8-byte store (the caller syncs once after). On
    /// failure every site is put back the same way and synced.
    ///
    /// # Safety
    ///
    /// The patch lock is held.
    pub(super) unsafe fn store_all(&self, writer: &dyn TextWriter) -> Result<bool, Error> {
        let swept = self.sweep(
            writer,
            |s| (s.now() != s.new).then_some(Store::Entry(s.new)),
            |s| s.now() == s.new,
        );
        let Err(e) = swept else { return swept };
        if let Some(e) = lost(e) {
            return Err(e);
        }
        // SAFETY: the caller's contract.
        unsafe { store_all_back(self, writer) }.map_err(|e| {
            lost(e).unwrap_or_else(|| Error::RestoreFailed {
                addr: self.first_changed(),
                state: "an inline site may hold its new call or the trampoline's call; \
                        the key's next update, with a writer that works, completes it",
            })
        })?;
        Err(e)
    }
}

/// A site's word before the batch's checks have run (same load as
/// [`SiteWords::now`]).
pub(super) fn unsafe_free_read(at: usize) -> [u8; 8] {
    SiteWords {
        at,
        home: [0; 8],
        old: [0; 8],
        new: [0; 8],
    }
    .now()
}
