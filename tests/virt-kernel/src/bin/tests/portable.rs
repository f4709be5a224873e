//! The portable kernel core (`tests/portable`, shared with the Linux tests)
//! on the virt board: the arm64 platform installed in one update with one
//! synchronisation of every CPU, and installs racing with calls on every
//! CPU (tests/kernel-common/portable_race.rs, shared with the x86-64
//! kernel).

#[path = "../../../../portable/mod.rs"]
mod core_kernel;
#[path = "../../../../kernel-common/portable_race.rs"]
mod race;

use core::sync::atomic::{AtomicUsize, Ordering};

use aarch64_cpu::registers::{CNTFRQ_EL0, CNTPCT_EL0, Readable};
use static_call::writer::TextPatch;
use static_call::{Error, TextWriter};
use virt_kernel::runner::TestResult;
use virt_kernel::{check, check_eq, cpu, patching, println, smp};

use crate::CPUS;
use core_kernel::{Arch, platform};

/// The board's clock: the generic timer's physical counter.
fn clock_ticks() -> u64 {
    CNTPCT_EL0.get()
}

fn clock_hz() -> u64 {
    CNTFRQ_EL0.get()
}

const ARCH: Arch = Arch::Aarch64;

/// The kernel's writer, counting its syncs.
struct Counting {
    syncs: AtomicUsize,
}

// SAFETY: forwards every write to the kernel's writer, which keeps the
// contract.
unsafe impl TextWriter for Counting {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        // SAFETY: the caller's contract, passed on.
        unsafe { patching::writer().write(addr, bytes) }
    }
    // Forwarded as one batch: the kernel's writer replays batched stores
    // (the operations' inline call sites) from a list of their own, which
    // one-by-one writes would overflow.
    unsafe fn write_batch(
        &self,
        patches: &mut dyn Iterator<Item = TextPatch>,
    ) -> Result<(), Error> {
        // SAFETY: the caller's contract, passed on.
        unsafe { patching::writer().write_batch(patches) }
    }
    fn sync_cores(&self) -> Result<(), Error> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        patching::writer().sync_cores()
    }
}

pub(crate) fn portable_kernel_on_the_board() -> TestResult {
    // Before boot code installs the board, the stand-in answers.
    check_eq!(core_kernel::arch(), Some(Arch::Unbooted));
    check_eq!(core_kernel::uptime_ns(), 0);

    // One install: every operation, one synchronisation of all CPUs.
    let counting = Counting {
        syncs: AtomicUsize::new(0),
    };
    platform::install_with::<race::Clock>(&counting).map_err(|e| alloc::format!("{e}"))?;
    let syncs = counting.syncs.load(Ordering::Relaxed);
    println!("portable: install of 4 operations: {syncs} sync(s)");
    check_eq!(syncs, 1);
    for cpu in 1..CPUS {
        let arch = smp::run_on(cpu, 2000, core_kernel::arch).ok_or("cpu busy")?;
        check!(
            arch == Some(Arch::Aarch64),
            "cpu{cpu} sees {arch:?} after the install"
        );
    }
    race::delay_relaxes()?;
    race::installs_race_calls(200, CPUS)
}
