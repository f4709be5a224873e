//! The x86-kernel suite: static-call on bare-metal x86-64 with 4 CPUs.

#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

extern crate alloc;

use core::sync::atomic::Ordering;

use alloc::string::String;
use alloc::vec::Vec;
use x86_kernel::runner::{self, TestResult};
use x86_kernel::{MAX_CPUS, check, check_eq, cpu, paging, smp};

#[path = "tests/keys.rs"]
mod keys;
#[path = "tests/transitions.rs"]
mod transitions;
#[path = "tests/traps.rs"]
mod traps;

use transitions::static_call_transitions;
use traps::{
    bp_entry_on_ist_stack, bp_entry_with_gap, bp_entry_without_gap_corrupts_the_frame,
    cpu_parked_in_bp_handler_across_updates, nmi_calling_a_key_inside_the_bp_handler,
};

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

/// Runs `f(cpu)` on every CPU (the others first, one at a time, then this
/// one) and returns the results in CPU order.
pub fn on_every_cpu<R: Send>(f: impl Fn(usize) -> R + Sync) -> Result<Vec<R>, String> {
    let mut results = Vec::new();
    let me = cpu::id();
    for c in 0..CPUS {
        if c == me {
            results.push(f(c));
        } else {
            let r =
                smp::run_on(c, 5000, || f(c)).ok_or_else(|| alloc::format!("cpu{c} is busy"))?;
            results.push(r);
        }
    }
    Ok(results)
}

/// The suite's entry, called by the library once every CPU is up.
#[unsafe(no_mangle)]
pub fn x86_kernel_main() -> ! {
    runner::run(x86_kernel::tests![
        smp_all_cpus_online,
        text_is_read_only,
        static_call_transitions,
        bp_entry_with_gap,
        bp_entry_without_gap_corrupts_the_frame,
        bp_entry_on_ist_stack,
        nmi_calling_a_key_inside_the_bp_handler,
        cpu_parked_in_bp_handler_across_updates,
    ])
}
