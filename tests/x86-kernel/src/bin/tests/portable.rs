//! The portable kernel core (`tests/portable`, shared with the Linux tests
//! and the arm64 virt kernel) on this x86-64 kernel: the PC platform
//! installed with one `install`, then installs racing with calls on every
//! other CPU (tests/kernel-common/portable_race.rs, shared with the virt
//! kernel).

#[path = "../../../../portable/mod.rs"]
mod core_kernel;
#[path = "../../../../kernel-common/portable_race.rs"]
mod race;

use core::sync::atomic::Ordering;

use x86_kernel::patching::Counting;
use x86_kernel::runner::TestResult;
use x86_kernel::{check, check_eq, cpu, println, smp};

use core_kernel::{Arch, platform};

/// The PC's clock: the TSC, at the rate measured against the PIT at boot.
fn clock_ticks() -> u64 {
    cpu::ticks()
}

fn clock_hz() -> u64 {
    cpu::tsc_per_ms() * 1000
}

const ARCH: Arch = Arch::X86_64;

pub(crate) fn portable_kernel_on_the_pc() -> TestResult {
    check_eq!(core_kernel::arch(), Some(Arch::Unbooted));
    check_eq!(core_kernel::uptime_ns(), 0);

    // One install of every operation: one batched int3 protocol (the
    // bare-metal default strategy), at most four syncs for all of them.
    let counting = Counting::new();
    platform::install_with::<race::Clock>(&counting).map_err(|e| alloc::format!("{e}"))?;
    let syncs = counting.syncs.load(Ordering::Relaxed);
    println!("portable: install of 4 operations: {syncs} sync(s)");
    check!((1..=4).contains(&syncs), "{syncs} syncs for one install");
    let seen = crate::on_every_cpu(|_| core_kernel::arch())?;
    check!(
        seen.iter().all(|a| *a == Some(Arch::X86_64)),
        "after the install the CPUs see {seen:?}"
    );
    race::delay_relaxes()?;
    race::installs_race_calls(100, crate::CPUS)
}
