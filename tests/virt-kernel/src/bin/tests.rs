//! The virt-board test suite: boots, brings up every CPU, runs named tests and
//! reports them over the UART (see `virt_kernel::runner`).

#![no_std]
#![no_main]

extern crate alloc;

use core::sync::atomic::Ordering;

use virt_kernel::cpu::{self, CacheGeometry};
use virt_kernel::runner::{self, Test, TestResult};
use virt_kernel::{check, check_eq, println, smp};

/// CPUs the harness starts QEMU with (`-smp 4`).
const CPUS: usize = 4;

// `entry!` expands to itself unqualified, so it must be in scope.
use aarch64_rt::entry;

entry!(main);

fn main(_x0: u64, _x1: u64, _x2: u64, _x3: u64) -> ! {
    virt_kernel::init();
    println!(
        "kernel: static-call virt-board tests, cpu{} at EL{}",
        cpu::id(),
        cpu::current_el()
    );
    let started = smp::start_secondaries(CPUS);
    println!("kernel: PSCI CPU_ON accepted for {started} secondaries");
    runner::run(&[
        Test {
            name: "smp_all_cpus_online",
            run: smp_all_cpus_online,
        },
        Test {
            name: "ctr_el0_reports_cache_geometry",
            run: ctr_el0_reports_cache_geometry,
        },
        Test {
            name: "bti_implemented",
            run: bti_implemented,
        },
        Test {
            name: "current_el",
            run: current_el,
        },
        #[cfg(feature = "deliberate-failure")]
        Test {
            name: "deliberate_failure",
            run: deliberate_failure,
        },
    ])
}

/// Every secondary reported in within a second.
fn smp_all_cpus_online() -> TestResult {
    let all = smp::wait_online(CPUS, 1000);
    let online = smp::ONLINE.load(Ordering::SeqCst);
    println!("smp: {online} of {CPUS} CPUs online");
    check!(all, "only {online} of {CPUS} CPUs came online within 1 s");
    check_eq!(online, CPUS);
    Ok(())
}

/// CTR_EL0 line sizes are plausible (16..=2048 bytes; the architecture allows
/// 4..=64 KiB words but no real core is outside this range), and the same on
/// every CPU the static-call maintenance loop may run on.
fn ctr_el0_reports_cache_geometry() -> TestResult {
    let geometry = CacheGeometry::read();
    println!("cache: {geometry}");
    check!(
        (16..=2048).contains(&geometry.i_line),
        "IminLine {} bytes out of range",
        geometry.i_line
    );
    check!(
        (16..=2048).contains(&geometry.d_line),
        "DminLine {} bytes out of range",
        geometry.d_line
    );
    // Bit 31 is RES1 in the AArch64 format of the register.
    check!(
        geometry.raw & (1 << 31) != 0,
        "CTR_EL0 {:#x} is not in the AArch64 format",
        geometry.raw
    );
    Ok(())
}

/// QEMU's `-cpu max` implements FEAT_BTI (ID_AA64PFR1_EL1.BT = 1).
fn bti_implemented() -> TestResult {
    let bt = cpu::bti_field();
    println!(
        "bti: ID_AA64PFR1_EL1={:#x}, BT={bt}",
        cpu::read_id_aa64pfr1_el1()
    );
    check_eq!(bt, 1);
    Ok(())
}

/// The kernel runs at EL1 (`-M virt`) or EL2 (`-M virt,virtualization=on`).
fn current_el() -> TestResult {
    let el = cpu::current_el();
    println!("el: running at EL{el}");
    check!(el == 1 || el == 2, "unexpected exception level EL{el}");
    Ok(())
}

/// Fails on purpose so the harness can check that a failure fails the run.
#[cfg(feature = "deliberate-failure")]
fn deliberate_failure() -> TestResult {
    let online = smp::ONLINE.load(Ordering::SeqCst);
    check!(
        online == CPUS + 1,
        "deliberate failure: {online} CPUs online, test demands {}",
        CPUS + 1
    );
    Ok(())
}
