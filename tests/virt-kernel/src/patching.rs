//! The kernel's static-call text writer: static-call's `Alias` writer over
//! the text alias that `mmu` maps, with the GIC sync IPI as its "synchronize
//! all CPUs" step.
//!
//! QEMU workaround (no effect on real hardware): QEMU 7.2's multi-threaded
//! TCG can keep executing the *old* bytes of a patched trampoline on every
//! vCPU, indefinitely, after the write, the cache maintenance and the sync
//! IPI. The stress test saw this: memory read back new, yet 100,000 further
//! calls on each worker still ran the old target. QEMU does no I-cache
//! emulation; it drops translated code when the page is written, and a
//! translation that was in flight during the write is evidently kept with the
//! old bytes. So after the IPI (when no vCPU can still be translating from
//! before the write: each has since taken an interrupt) the writer stores
//! the same bytes again, which makes QEMU drop that stale translation. The
//! architectural state does not change, so no second sync is needed.
//! A fresh alias translation per store (a local TLBI of the alias page, or
//! a fixmap page mapped and unmapped around it) does not help: measured,
//! 10 of 10 runs failed at EL1 and at EL2, as with no workaround, against
//! 0 of 10 with this re-write.
//!
//! The replay list holds [`REPLAY`] writes of at most [`REPLAY_BYTES`]
//! bytes; the stores of `write_batch` (an update's inline call sites, one
//! word each) go to a list of their own, of [`REPLAY_BATCHED`] stores, as
//! an update of a key with a thousand sites makes a thousand of them. A
//! write neither list can hold (full, or too long) is not dropped
//! silently: the next `sync_cores` still synchronizes and replays what it
//! has, then fails with [`REPLAY_OVERFLOW`], so the update that relied on
//! the record fails and says why ([`ReplayStats`] counts it). The replayed
//! bytes get the same cache maintenance as any write to text (static-call's
//! `flush_icache_range`, or `flush_icache_words` for the batched stores:
//! `DC CVAU`, `DSB`, `IC IVAU`, `DSB`, `ISB`), so after a replay the CPUs
//! execute what a real one would.

use core::sync::atomic::{AtomicPtr, AtomicU64, Ordering};

use alloc::boxed::Box;
use alloc::vec;

use spin::mutex::SpinMutex;
use static_call::arch::aarch64::{flush_icache_range, flush_icache_words};
use static_call::writer::{Alias, TextPatch};
use static_call::{Error, TextWriter};

use crate::{gic, mmu};

/// How long a sync waits for every CPU to take the IPI.
const SYNC_TIMEOUT_MS: u64 = 2000;

/// At most this many writes are replayed per sync (an update writes two
/// words of its trampoline this way).
pub const REPLAY: usize = 8;

/// At most this many batched stores are replayed per sync: two updates'
/// worth (one that fails and its rollback) of the test kernel's largest
/// key, 1000 inline sites, with room to spare.
pub const REPLAY_BATCHED: usize = 4096;

/// The longest write the replay can hold (static-call writes 8 bytes).
pub const REPLAY_BYTES: usize = 16;

/// What `sync_cores` fails with when writes since the last sync were not
/// recorded for replay.
pub const REPLAY_OVERFLOW: Error = Error::WriterFailed {
    what: "replay every write since the last sync (the replay list overflowed: \
           a write was not recorded; see virt_kernel::patching)",
    errno: 0,
};

/// The writes recorded since the last sync.
struct Record {
    list: [(usize, usize); REPLAY],
    len: usize,
    /// The stores of `write_batch` calls, `batched_len` of them in use.
    batched: Box<[(usize, usize)]>,
    batched_len: usize,
    /// Writes since the last sync that could not be recorded.
    missed: usize,
}

impl Record {
    /// Counts a write that cannot be replayed.
    fn miss(&mut self) {
        self.missed += 1;
        MISSED.fetch_add(1, Ordering::SeqCst);
    }
}

/// Counts of the writer's replays since boot.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplayStats {
    /// Writes replayed (each followed by its cache maintenance).
    pub replayed: u64,
    /// Writes that could not be recorded for replay.
    pub missed: u64,
    /// Syncs that failed with [`REPLAY_OVERFLOW`].
    pub overflows: u64,
}

static REPLAYED: AtomicU64 = AtomicU64::new(0);
static MISSED: AtomicU64 = AtomicU64::new(0);
static OVERFLOWS: AtomicU64 = AtomicU64::new(0);

/// The replay counts since boot.
pub fn replay_stats() -> ReplayStats {
    ReplayStats {
        replayed: REPLAYED.load(Ordering::SeqCst),
        missed: MISSED.load(Ordering::SeqCst),
        overflows: OVERFLOWS.load(Ordering::SeqCst),
    }
}

/// `Alias` plus the replay of the writes since the last sync.
pub struct KernelWriter {
    alias: Alias,
    written: SpinMutex<Record>,
}

// SAFETY: `write` and each store of `write_batch` delegate to
// `Alias::write`, which keeps the trait's promises; the replay in
// `sync_cores` stores, through the same alias, the bytes that the
// executable mapping already holds at that moment, so it changes nothing
// anyone can observe.
unsafe impl TextWriter for KernelWriter {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { self.alias.write(addr, bytes) }?;
        let mut r = self.written.lock();
        // A range already listed is replayed anyway. This keeps the list
        // short when updates fail before their sync (the bad-input tests):
        // their writes (literal, then its rollback) stay listed until the
        // next sync, and must not crowd out that update's own writes.
        let entry = (addr, bytes.len());
        if r.list[..r.len].contains(&entry) {
            return Ok(());
        }
        if r.len < REPLAY && bytes.len() <= REPLAY_BYTES {
            let n = r.len;
            r.list[n] = entry;
            r.len += 1;
        } else {
            r.miss();
        }
        Ok(())
    }

    unsafe fn write_batch(
        &self,
        patches: &mut dyn Iterator<Item = TextPatch>,
    ) -> Result<(), Error> {
        let mut r = self.written.lock();
        for p in patches {
            // SAFETY: the caller's contract, for each patch, passed on.
            unsafe { self.alias.write(p.addr, p.bytes()) }?;
            // Not deduplicated: a batch names each site once, and a failed
            // update's rollback at most doubles that (REPLAY_BATCHED allows).
            if r.batched_len < r.batched.len() {
                let n = r.batched_len;
                r.batched[n] = (p.addr, p.bytes().len());
                r.batched_len += 1;
            } else {
                r.miss();
            }
        }
        Ok(())
    }

    fn sync_cores(&self) -> Result<(), Error> {
        gic::sync_all_cpus(SYNC_TIMEOUT_MS).map_err(|_| Error::WriterFailed {
            what: "synchronize all CPUs (a CPU did not take the sync IPI in time)",
            errno: 0,
        })?;
        let mut r = self.written.lock();
        let Record {
            list,
            len,
            batched,
            batched_len,
            missed,
        } = &mut *r;
        // Puts back the bytes text holds now, as one store for an aligned
        // word (what the update stored).
        let rewrite = |addr: usize, n: usize| -> Result<(), Error> {
            let mut buf = [0u8; REPLAY_BYTES];
            for (i, b) in buf[..n].iter_mut().enumerate() {
                // SAFETY: `addr..addr + n` was just written by this writer,
                // so it is mapped (readable) text.
                *b = unsafe { core::ptr::read_volatile((addr + i) as *const u8) };
            }
            // SAFETY: the same range, the same bytes: the patch lock is still
            // held by our caller (sync_cores runs inside the update).
            unsafe { self.alias.write(addr, &buf[..n]) }?;
            REPLAYED.fetch_add(1, Ordering::SeqCst);
            Ok(())
        };
        for &(addr, n) in &list[..*len] {
            rewrite(addr, n)?;
            // As after any write to text: make it what instruction fetch
            // sees.
            flush_icache_range(addr, n);
        }
        let batch = &batched[..*batched_len];
        for &(addr, n) in batch {
            rewrite(addr, n)?;
        }
        // One pass of maintenance for the batch, as the library does it; a
        // store's first and last byte name every line it touches.
        if !batch.is_empty() {
            flush_icache_words(batch.iter().flat_map(|&(a, n)| [a, a + n - 1]));
        }
        let (replayed, not_recorded) = (*len + *batched_len, *missed);
        *len = 0;
        *batched_len = 0;
        *missed = 0;
        drop(r);
        if not_recorded > 0 {
            OVERFLOWS.fetch_add(1, Ordering::SeqCst);
            // The error's text is fixed; the log says how many. (An update
            // whose rollback overflows too reports `RestoreFailed`.)
            crate::println!(
                "patching: sync fails: {not_recorded} write(s) since the last sync not recorded for replay ({replayed} replayed; the record holds {REPLAY} writes of up to {REPLAY_BYTES} bytes each and {REPLAY_BATCHED} batched stores)"
            );
            return Err(REPLAY_OVERFLOW);
        }
        Ok(())
    }
}

/// The installed writer; null until [`install`].
static WRITER: AtomicPtr<KernelWriter> = AtomicPtr::new(core::ptr::null_mut());

/// Builds the writer for the kernel's text and installs it as static-call's
/// default. Call after `mmu::init`.
pub fn install() -> &'static KernelWriter {
    let text = mmu::layout().text;
    // SAFETY: `mmu::init` maps the whole text read-write at
    // `ALIAS_OFFSET` above itself, for good.
    let alias = unsafe { Alias::new(text.start, text.start + mmu::ALIAS_OFFSET, text.len()) };
    let writer: &'static KernelWriter = Box::leak(Box::new(KernelWriter {
        alias,
        written: SpinMutex::new(Record {
            list: [(0, 0); REPLAY],
            len: 0,
            batched: vec![(0, 0); REPLAY_BATCHED].into_boxed_slice(),
            batched_len: 0,
            missed: 0,
        }),
    }));
    static_call::set_default_writer(writer);
    WRITER.store(core::ptr::from_ref(writer).cast_mut(), Ordering::Release);
    writer
}

/// The writer [`install`] made (for `update_with` and for writing text by
/// hand under `static_call::writer::patch_lock`).
///
/// # Panics
///
/// Before [`install`] (that is, before `virt_kernel::init`).
pub fn writer() -> &'static KernelWriter {
    let writer = WRITER.load(Ordering::Acquire);
    assert!(!writer.is_null(), "patching::install has not run");
    // SAFETY: non-null only once `install` has stored a leaked, never
    // freed `KernelWriter`, which is only ever accessed by shared reference.
    unsafe { &*writer }
}
