//! The x86-kernel suite: static-call on bare-metal x86-64 with 4 CPUs.

#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

extern crate alloc;

use core::sync::atomic::Ordering;

use x86_kernel::runner::{self, TestResult};
use x86_kernel::{MAX_CPUS, check, check_eq, paging, smp};

/// CPUs the suite runs on.
pub const CPUS: usize = MAX_CPUS;

fn smp_all_cpus_online() -> TestResult {
    check_eq!(smp::ONLINE.load(Ordering::SeqCst), CPUS);
    Ok(())
}

fn text_is_read_only() -> TestResult {
    check!(paging::write_protect_on(), "CR0.WP is clear");
    Ok(())
}

/// The suite's entry, called by the library once every CPU is up.
#[unsafe(no_mangle)]
pub fn x86_kernel_main() -> ! {
    runner::run(x86_kernel::tests![smp_all_cpus_online, text_is_read_only])
}
