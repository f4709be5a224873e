//! The portable kernel core (`tests/portable`, shared with the Linux tests)
//! on the virt board: the arm64 platform installed in one update with one
//! synchronisation of every CPU, and installs racing with calls on every
//! CPU.

#[path = "../../../../portable/mod.rs"]
mod core_kernel;

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use aarch64_cpu::registers::{CNTFRQ_EL0, CNTPCT_EL0, Readable};
use static_call::writer::TextPatch;
use static_call::{Error, TextWriter};
use virt_kernel::runner::TestResult;
use virt_kernel::{check, check_eq, cpu, patching, println, smp};

use crate::CPUS;
use core_kernel::{Arch, Platform, platform};

/// The board: the generic timer's physical counter.
struct Board;

/// Calls of [`Board`]'s `relax`.
static RELAXED: AtomicU64 = AtomicU64::new(0);

fn relax() {
    RELAXED.fetch_add(1, Ordering::Relaxed);
    core::hint::spin_loop();
}

impl Platform for Board {
    fn ticks() -> u64 {
        CNTPCT_EL0.get()
    }
    fn tick_hz() -> u64 {
        CNTFRQ_EL0.get()
    }
    fn arch() -> u32 {
        Arch::Aarch64 as u32
    }
    const PLATFORM_RELAX: Option<fn()> = Some(relax);
}

/// The same clock at twice the rate (a board whose counter runs faster),
/// without `relax`: a second implementation for installs to alternate with.
struct FastBoard;

impl Platform for FastBoard {
    fn ticks() -> u64 {
        CNTPCT_EL0.get() * 2
    }
    fn tick_hz() -> u64 {
        CNTFRQ_EL0.get() * 2
    }
    fn arch() -> u32 {
        Arch::Aarch64 as u32
    }
}

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

/// Stops the racing callers.
static STOP: AtomicBool = AtomicBool::new(false);
/// Calls the racing callers made, and those that returned something
/// neither implementation returns.
static CALLS: AtomicU64 = AtomicU64::new(0);
static WRONG: AtomicU64 = AtomicU64::new(0);

/// A secondary's loop while installs run: every operation must answer as
/// `Board` or as `FastBoard`.
fn race(_cpu: usize) {
    let hz = CNTFRQ_EL0.get();
    while !STOP.load(Ordering::Acquire) {
        let rate = platform::tick_hz();
        let arch = platform::arch();
        platform::relax();
        if !(rate == hz || rate == 2 * hz) || arch != Arch::Aarch64 as u32 {
            WRONG.fetch_add(1, Ordering::Relaxed);
        }
        CALLS.fetch_add(1, Ordering::Relaxed);
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
    platform::install_with::<Board>(&counting).map_err(|e| alloc::format!("{e}"))?;
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
    // A caller preempted between reading the clock and its first check
    // finds the delay already over and relaxes 0 times (seen on a loaded
    // host); such a try touches nothing, so retry until one relaxes.
    let relaxed = (0..100)
        .map(|_| core_kernel::delay_us(200))
        .find(|&n| n > 0)
        .unwrap_or(0);
    check!(
        relaxed > 0 && RELAXED.load(Ordering::Relaxed) == relaxed,
        "delay_us(200) relaxed {relaxed} times"
    );
    check!(
        core_kernel::uptime_ns() > 0,
        "the board's clock stands still"
    );

    // Installs racing with calls on every other CPU.
    STOP.store(false, Ordering::Release);
    for cpu in 1..CPUS {
        check!(smp::post(cpu, race), "cpu{cpu} is busy");
    }
    let mut installs = 0;
    while installs < 200 {
        if installs % 2 == 0 {
            platform::install::<FastBoard>()
        } else {
            platform::install::<Board>()
        }
        .map_err(|e| alloc::format!("{e}"))?;
        installs += 1;
    }
    STOP.store(true, Ordering::Release);
    let all_idle = cpu::spin_until(2000, || (1..CPUS).all(smp::idle));
    check!(all_idle, "a racing caller did not stop");
    let (calls, wrong) = (CALLS.load(Ordering::Relaxed), WRONG.load(Ordering::Relaxed));
    println!(
        "portable: {installs} installs raced by {calls} calls on {} CPUs",
        CPUS - 1
    );
    check!(calls > 0, "the callers made no calls");
    check_eq!(wrong, 0);
    platform::install::<core_kernel::Unbooted>().map_err(|e| alloc::format!("{e}"))?;
    check_eq!(platform::arch(), Arch::Unbooted as u32);
    Ok(())
}
