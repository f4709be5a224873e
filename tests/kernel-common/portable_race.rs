//! The part of the portable-kernel test both bare-metal kernels share: two
//! platforms over the kernel's clock (as it is, with `relax`, and at twice
//! the rate, without), the check that `delay_us` relaxes through the
//! installed platform, and installs racing with calls on every other CPU.
//!
//! Included with `#[path]` as a child of each kernel's `tests::portable`,
//! which provides, beside the kernel's `TestResult`, `check!`,
//! `check_eq!`, `println!`, `cpu` and `smp`: `core_kernel`
//! (tests/portable), `clock_ticks()`, `clock_hz()` and `ARCH`, the
//! kernel's architecture.

use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use super::core_kernel::{self, Arch, Platform, platform};
use super::{ARCH, TestResult, check, check_eq, clock_hz, clock_ticks, cpu, println, smp};

/// The kernel's clock, with `relax`.
pub(super) struct Clock;

/// Calls of [`Clock`]'s `relax`.
static RELAXED: AtomicU64 = AtomicU64::new(0);

fn relax() {
    RELAXED.fetch_add(1, Ordering::Relaxed);
    core::hint::spin_loop();
}

impl Platform for Clock {
    fn ticks() -> u64 {
        clock_ticks()
    }
    fn tick_hz() -> u64 {
        clock_hz()
    }
    fn arch() -> u32 {
        ARCH as u32
    }
    const PLATFORM_RELAX: Option<fn()> = Some(relax);
}

/// The same clock at twice the rate, without `relax`: a second
/// implementation for installs to alternate with.
struct FastClock;

impl Platform for FastClock {
    fn ticks() -> u64 {
        clock_ticks() * 2
    }
    fn tick_hz() -> u64 {
        clock_hz() * 2
    }
    fn arch() -> u32 {
        ARCH as u32
    }
}

/// That core code's `delay_us` relaxes through the installed [`Clock`]
/// and its clock runs.
pub(super) fn delay_relaxes() -> TestResult {
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
    check!(core_kernel::uptime_ns() > 0, "the clock stands still");
    Ok(())
}

static STOP: AtomicBool = AtomicBool::new(false);
static CALLS: AtomicU64 = AtomicU64::new(0);
static WRONG: AtomicU64 = AtomicU64::new(0);

/// A secondary's loop while installs run: every operation must answer as
/// [`Clock`] or as [`FastClock`].
fn race(_cpu: usize) {
    let hz = clock_hz();
    while !STOP.load(Ordering::Acquire) {
        let rate = platform::tick_hz();
        let arch = platform::arch();
        platform::relax();
        if !(rate == hz || rate == 2 * hz) || arch != ARCH as u32 {
            WRONG.fetch_add(1, Ordering::Relaxed);
        }
        CALLS.fetch_add(1, Ordering::Relaxed);
    }
}

/// `installs` installs alternating [`FastClock`] and [`Clock`] while CPUs
/// `1..cpus` call every operation and check each answer; then the
/// stand-in is installed back.
pub(super) fn installs_race_calls(installs: usize, cpus: usize) -> TestResult {
    STOP.store(false, Ordering::Release);
    CALLS.store(0, Ordering::Relaxed);
    for c in 1..cpus {
        check!(smp::post(c, race), "cpu{c} is busy");
    }
    for i in 0..installs {
        if i % 2 == 0 {
            platform::install::<FastClock>()
        } else {
            platform::install::<Clock>()
        }
        .map_err(|e| alloc::format!("{e}"))?;
    }
    STOP.store(true, Ordering::Release);
    let all_idle = cpu::spin_until(5000, || (1..cpus).all(smp::idle));
    check!(all_idle, "a racing caller did not stop");
    let (calls, wrong) = (CALLS.load(Ordering::Relaxed), WRONG.load(Ordering::Relaxed));
    println!(
        "portable: {installs} installs raced by {calls} calls on {} CPUs, wrong {wrong}",
        cpus - 1
    );
    check!(calls > 0, "the callers made no calls");
    check_eq!(wrong, 0);
    platform::install::<core_kernel::Unbooted>().map_err(|e| alloc::format!("{e}"))?;
    check_eq!(platform::arch(), Arch::Unbooted as u32);
    Ok(())
}
