//! The portable kernel core (`tests/portable`) on Linux: each architecture
//! installs its own platform and the same core code runs on it.
#![cfg(target_os = "linux")]

mod portable;

use portable::{Arch, Platform, platform};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Linux user space: the monotonic clock in nanoseconds.
struct LinuxPlatform;

static RELAXED: AtomicU64 = AtomicU64::new(0);

impl Platform for LinuxPlatform {
    fn ticks() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: writes the current time into our local.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }
    fn tick_hz() -> u64 {
        1_000_000_000
    }
    fn arch() -> u32 {
        (if cfg!(target_arch = "x86_64") {
            Arch::X86_64
        } else if cfg!(target_arch = "aarch64") {
            Arch::Aarch64
        } else {
            Arch::Riscv64
        }) as u32
    }
    const PLATFORM_RELAX: Option<fn()> = Some(relax);
}

fn relax() {
    RELAXED.fetch_add(1, Ordering::Relaxed);
    std::hint::spin_loop();
}

#[test]
fn each_architecture_installs_its_platform_and_the_core_runs_on_it() {
    // Before boot: the stand-in platform, whose clock stands still.
    assert_eq!(portable::arch(), Some(Arch::Unbooted));
    assert_eq!(portable::uptime_ns(), 0);
    assert_eq!(portable::delay_us(1000), 0, "a stopped clock never waits");

    platform::install::<LinuxPlatform>().unwrap();
    let expected = if cfg!(target_arch = "x86_64") {
        Arch::X86_64
    } else if cfg!(target_arch = "aarch64") {
        Arch::Aarch64
    } else {
        Arch::Riscv64
    };
    assert_eq!(portable::arch(), Some(expected));
    let start = Instant::now();
    // A caller preempted between reading the clock and its first check
    // finds the delay already over and relaxes 0 times (seen on a loaded
    // host); such a try touches nothing, so retry until one relaxes.
    let relaxed = (0..100)
        .map(|_| portable::delay_us(2000))
        .find(|&n| n > 0)
        .unwrap_or(0);
    assert!(start.elapsed() >= Duration::from_millis(2));
    assert!(relaxed > 0);
    assert_eq!(RELAXED.load(Ordering::Relaxed), relaxed);
    assert!(portable::uptime_ns() > 0);

    // Back to the stand-in: every operation follows.
    platform::install::<portable::Unbooted>().unwrap();
    assert_eq!(platform::arch(), Arch::Unbooted as u32);
    assert!(platform::PLATFORM_RELAX.query().is_none());
}
