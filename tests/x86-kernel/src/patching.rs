//! The kernel's static-call writer: `writer::Alias` over the writable alias
//! of the text ([`crate::paging::ALIAS_BASE`]), with a sync IPI as its
//! `sync_cores`, installed as the default writer; and the `#BP` hook
//! declared, since the `#BP` handler calls `handle_breakpoint` first.

use core::sync::atomic::{AtomicU64, Ordering};

use spin::Once;
use static_call::writer::Alias;
use static_call::{Error, TextWriter};

use crate::interrupts::{SYNC_ANSWERED, SYNC_REQUESTED, SYNC_VECTOR};
use crate::{apic, cpu, paging, smp};

static WRITER: Once<Alias> = Once::new();

/// Syncs done (all CPUs answered).
pub static SYNCS: AtomicU64 = AtomicU64::new(0);

/// How long a sync waits for the other CPUs.
const SYNC_TIMEOUT_MS: u64 = 5000;

/// Interrupts every other online CPU and waits until each has executed a
/// serialising instruction in the handler (and so will fetch any text
/// written before the call afresh); serialises this CPU too. What the
/// int3 protocol asks between its steps.
pub fn sync_all_cpus() -> Result<(), Error> {
    let request = SYNC_REQUESTED.fetch_add(1, Ordering::SeqCst) + 1;
    let me = cpu::id();
    let online = smp::ONLINE.load(Ordering::SeqCst);
    if online > 1 {
        apic::send_all_but_self(SYNC_VECTOR);
    }
    for other in (0..online).filter(|&c| c != me) {
        if !cpu::spin_until(SYNC_TIMEOUT_MS, || {
            SYNC_ANSWERED[other].load(Ordering::SeqCst) >= request
        }) {
            return Err(Error::WriterFailed {
                what: "synchronise every CPU (one did not answer the IPI)",
                errno: 0,
            });
        }
    }
    cpu::serialize();
    SYNCS.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// The kernel's writer.
pub fn writer() -> &'static Alias {
    WRITER.call_once(|| {
        let (begin, end) = paging::text();
        // SAFETY: paging.rs maps ALIAS_BASE + x writable onto physical x for
        // the first 8 MiB, and the text is identity-mapped there, so the
        // alias maps exactly this text, for good.
        unsafe { Alias::new(begin, paging::ALIAS_BASE + begin, end - begin) }
            .with_sync(sync_all_cpus)
    })
}

/// Installs the writer as static-call's default, and declares the `#BP`
/// hook (the kernel's `#BP` handler calls `handle_breakpoint` first).
pub fn install() {
    static_call::set_default_writer(writer());
    // SAFETY: interrupts.rs's `#BP` handler offers every int3 to
    // handle_breakpoint before anything else, on every CPU.
    unsafe { static_call::arch::x86_64::declare_breakpoint_hook() };
}

/// A writer that forwards to the kernel's and counts its syncs.
pub struct Counting {
    /// Syncs asked for.
    pub syncs: AtomicU64,
}

impl Counting {
    /// A counter at 0.
    pub const fn new() -> Self {
        Counting {
            syncs: AtomicU64::new(0),
        }
    }
}

impl Default for Counting {
    fn default() -> Self {
        Self::new()
    }
}

// SAFETY: forwards every write to the kernel's writer, which keeps the
// contract.
unsafe impl TextWriter for Counting {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        // SAFETY: the caller's contract, passed on.
        unsafe { writer().write(addr, bytes) }
    }
    fn sync_cores(&self) -> Result<(), Error> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        writer().sync_cores()
    }
}
