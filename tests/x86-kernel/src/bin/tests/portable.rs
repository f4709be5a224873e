//! The portable kernel core (`tests/portable`, shared with the Linux tests
//! and the arm64 virt kernel) on this x86-64 kernel: the PC platform
//! installed with one `install`, then installs racing with calls on every
//! other CPU.

#[path = "../../../../portable/mod.rs"]
mod core_kernel;

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use x86_kernel::patching::Counting;
use x86_kernel::runner::TestResult;
use x86_kernel::{check, check_eq, cpu, println, smp};

use crate::CPUS;
use core_kernel::{Arch, Platform, platform};

/// The PC: the TSC, at the rate measured against the PIT at boot.
struct Pc;

/// Calls of [`Pc`]'s `relax`.
static RELAXED: AtomicU64 = AtomicU64::new(0);

fn relax() {
    RELAXED.fetch_add(1, Ordering::Relaxed);
    core::hint::spin_loop();
}

impl Platform for Pc {
    fn ticks() -> u64 {
        cpu::ticks()
    }
    fn tick_hz() -> u64 {
        cpu::tsc_per_ms() * 1000
    }
    fn arch() -> u32 {
        Arch::X86_64 as u32
    }
    const PLATFORM_RELAX: Option<fn()> = Some(relax);
}

/// The same clock at twice the rate, without `relax`: a second
/// implementation for installs to alternate with.
struct FastPc;

impl Platform for FastPc {
    fn ticks() -> u64 {
        cpu::ticks() * 2
    }
    fn tick_hz() -> u64 {
        cpu::tsc_per_ms() * 2000
    }
    fn arch() -> u32 {
        Arch::X86_64 as u32
    }
}

static STOP: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicU64 = AtomicU64::new(0);
static WRONG: AtomicU64 = AtomicU64::new(0);

/// A secondary's loop while installs run: every operation must answer as
/// `Pc` or as `FastPc`.
fn race(_cpu: usize) {
    let hz = cpu::tsc_per_ms() * 1000;
    while !STOP.load(Ordering::Acquire) {
        let rate = platform::tick_hz();
        let arch = platform::arch();
        platform::relax();
        if !(rate == hz || rate == 2 * hz) || arch != Arch::X86_64 as u32 {
            WRONG.fetch_add(1, Ordering::Relaxed);
        }
        CALLS.fetch_add(1, Ordering::Relaxed);
    }
}

pub(crate) fn portable_kernel_on_the_pc() -> TestResult {
    check_eq!(core_kernel::arch(), Some(Arch::Unbooted));
    check_eq!(core_kernel::uptime_ns(), 0);

    // One install of every operation: one batched int3 protocol (the
    // bare-metal default strategy), at most four syncs for all of them.
    let counting = Counting::new();
    platform::install_with::<Pc>(&counting).map_err(|e| alloc::format!("{e}"))?;
    let syncs = counting.syncs.load(Ordering::Relaxed);
    println!("portable: install of 4 operations: {syncs} sync(s)");
    check!((1..=4).contains(&syncs), "{syncs} syncs for one install");
    let seen = crate::on_every_cpu(|_| core_kernel::arch())?;
    check!(
        seen.iter().all(|a| *a == Some(Arch::X86_64)),
        "after the install the CPUs see {seen:?}"
    );
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
    check!(core_kernel::uptime_ns() > 0, "the PC's clock stands still");

    STOP.store(false, Ordering::Release);
    CALLS.store(0, Ordering::Relaxed);
    for c in 1..CPUS {
        check!(smp::post(c, race), "cpu{c} is busy");
    }
    let mut installs = 0;
    while installs < 100 {
        if installs % 2 == 0 {
            platform::install::<FastPc>()
        } else {
            platform::install::<Pc>()
        }
        .map_err(|e| alloc::format!("{e}"))?;
        installs += 1;
    }
    STOP.store(true, Ordering::Release);
    let all_idle = cpu::spin_until(5000, || (1..CPUS).all(smp::idle));
    check!(all_idle, "a racing caller did not stop");
    let (calls, wrong) = (CALLS.load(Ordering::Relaxed), WRONG.load(Ordering::Relaxed));
    println!(
        "portable: {installs} installs raced by {calls} calls on {} CPUs, wrong {wrong}",
        CPUS - 1
    );
    check!(calls > 0, "the callers made no calls");
    check_eq!(wrong, 0);
    platform::install::<core_kernel::Unbooted>().map_err(|e| alloc::format!("{e}"))?;
    check_eq!(platform::arch(), Arch::Unbooted as u32);
    Ok(())
}
