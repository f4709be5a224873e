//! The demo kernel: brings every CPU up and prints the board's features that
//! matter to static calls.

#![no_std]
#![no_main]

use core::sync::atomic::Ordering;

use virt_kernel::cpu::{self, CacheGeometry};
use virt_kernel::{println, smp};

const CPUS: usize = 4;

// `entry!` expands to itself unqualified, so it must be in scope.
use aarch64_rt::entry;

entry!(main);

fn main(_x0: u64, _x1: u64, _x2: u64, _x3: u64) -> ! {
    virt_kernel::init();
    println!(
        "demo: static-call on QEMU virt, boot cpu{} at EL{}",
        cpu::id(),
        cpu::current_el()
    );
    smp::start_secondaries(CPUS);
    if !smp::wait_online(CPUS, 1000) {
        println!(
            "demo: only {} of {CPUS} CPUs came online",
            smp::ONLINE.load(Ordering::SeqCst)
        );
        virt_kernel::exit(1);
    }
    println!("demo: all {CPUS} CPUs online");

    let g = CacheGeometry::read();
    println!("demo: CTR_EL0 = {:#010x}", g.raw);
    println!(
        "demo:   I-cache minimum line (IminLine): {} bytes",
        g.i_line
    );
    println!(
        "demo:   D-cache minimum line (DminLine): {} bytes",
        g.d_line
    );
    println!(
        "demo:   IDC = {}: {}",
        g.idc as u8,
        if g.idc {
            "data-to-instruction coherence needs no D-cache clean"
        } else {
            "patched code needs DC CVAU per line before the I-side sees it"
        }
    );
    println!(
        "demo:   DIC = {}: {}",
        g.dic as u8,
        if g.dic {
            "instruction fetch is coherent, no IC IVAU needed"
        } else {
            "patched code needs IC IVAU per line"
        }
    );
    let bt = cpu::bti_field();
    println!(
        "demo: BTI (ID_AA64PFR1_EL1.BT = {bt}): {}",
        if bt >= 1 {
            "implemented"
        } else {
            "not implemented"
        }
    );
    println!("demo: done");
    virt_kernel::exit(0)
}
