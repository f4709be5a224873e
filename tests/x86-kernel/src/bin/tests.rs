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

#[path = "tests/failures.rs"]
mod failures;
#[path = "tests/inline.rs"]
mod inline;
#[path = "tests/keys.rs"]
mod keys;
#[path = "tests/portable.rs"]
mod portable;
#[path = "tests/stress.rs"]
mod stress;
#[path = "tests/transitions.rs"]
mod transitions;
#[path = "tests/traps.rs"]
mod traps;

use failures::failed_updates_change_nothing;
use inline::{callers_in_every_phase_of_the_batched_protocol, inline_sites_1000};
use portable::portable_kernel_on_the_pc;
use stress::static_call_smp_stress;
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

/// CR0.WP on every CPU, and the text's pages mapped read-only in the
/// page tables every CPU uses (walked from CR3).
fn text_is_read_only() -> TestResult {
    let wp = on_every_cpu(|_| paging::write_protect_on())?;
    check!(wp.iter().all(|&on| on), "CR0.WP per CPU: {wp:?}");
    let (begin, end) = paging::text();
    for page in (begin..end).step_by(4096) {
        let flags = paging::leaf_flags(page).ok_or_else(|| alloc::format!("{page:#x} unmapped"))?;
        check!(
            flags & 2 == 0,
            "text page {page:#x} is writable ({flags:#x})"
        );
        check!(
            flags & (1 << 63) == 0,
            "text page {page:#x} is not executable"
        );
    }
    Ok(())
}

/// The alias maps the text: every trampoline reads the same through both.
fn text_alias_maps_the_text() -> TestResult {
    let (begin, end) = paging::text();
    for at in (begin..end).step_by(509) {
        // SAFETY: both addresses are mapped and readable (paging.rs).
        let (exec, alias) = unsafe {
            (
                core::ptr::read_volatile(at as *const u8),
                core::ptr::read_volatile((paging::ALIAS_BASE + at) as *const u8),
            )
        };
        check!(
            exec == alias,
            "{at:#x}: {exec:#x} through the text, {alias:#x} through the alias"
        );
    }
    let flags = paging::leaf_flags(paging::ALIAS_BASE + begin).ok_or("alias unmapped")?;
    check!(flags & 2 != 0, "the alias is read-only ({flags:#x})");
    Ok(())
}

/// The far targets are beyond a rel32's reach of every trampoline.
fn far_text_is_out_of_rel32_range() -> TestResult {
    let far = keys::far_value() as usize;
    for key in keys::KEYS {
        let d = far.abs_diff(key.tramp());
        check!(
            d > 1 << 31,
            "{} is only {d:#x} from the far text",
            key.name()
        );
    }
    Ok(())
}

/// Fails on purpose (feature `deliberate-failure`): the harness's negative
/// control checks that a failing kernel test fails the run.
#[cfg(feature = "deliberate-failure")]
fn deliberate_failure() -> TestResult {
    check_eq!(keys::Key::CVal.call(1), 0);
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
        text_alias_maps_the_text,
        far_text_is_out_of_rel32_range,
        static_call_transitions,
        inline_sites_1000,
        callers_in_every_phase_of_the_batched_protocol,
        bp_entry_with_gap,
        bp_entry_without_gap_corrupts_the_frame,
        bp_entry_on_ist_stack,
        nmi_calling_a_key_inside_the_bp_handler,
        cpu_parked_in_bp_handler_across_updates,
        failed_updates_change_nothing,
        portable_kernel_on_the_pc,
        static_call_smp_stress,
        #[cfg(feature = "deliberate-failure")]
        deliberate_failure,
    ])
}
