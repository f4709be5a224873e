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

// The platform hook `virt_kernel::hooks` declares: every binary that links
// the kernel crate defines it (the declaration's link-time signature check
// needs a definition), though the demo never calls it.
static_call::static_call! {
    pub static PLATFORM_CLOCK: fn(u32) -> u64 = RET0;
}

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
    let code = live_retargeting();
    println!("demo: done");
    virt_kernel::exit(code)
}

/// CPUs 1..3 hammer `HOOK` (and `TICK`) while CPU 0 retargets them near ->
/// far -> NULL -> RET0 -> near; after each step, the trampoline before and
/// after and what each CPU's calls reached during the step.
fn live_retargeting() -> u32 {
    use virt_kernel::stress::{self, COUNTERS, State};

    println!(
        "demo: static call HOOK: fn(u32), trampoline at {:#x}",
        stress::HOOK.trampoline_addr()
    );
    for (name, addr) in stress::targets() {
        println!("demo:   target {name} at {addr:#x}");
    }
    let read = |c: usize| {
        COUNTERS.hook_seen[c]
            .each_ref()
            .map(|a| a.load(Ordering::SeqCst))
    };
    let mut previous: [[u64; stress::SEEN]; CPUS] = core::array::from_fn(read);
    let result = stress::run(CPUS, 4, 100_000, 10_000, |step| {
        let what = match step.state {
            State::Near => "near target (B, in range)",
            State::Far => "far target (192 MiB away: NOP + literal)",
            State::Null => "NULL (literal 0: cbz -> ret)",
            State::Ret0 => "RET0 (the key's return-zero function)",
        };
        println!("demo: step {}: HOOK -> {what}", step.step);
        println!("demo:   before: {}", step.hook.0);
        println!("demo:   after:  {}", step.hook.1);
        for (c, previous) in previous.iter_mut().enumerate().skip(1) {
            let now = read(c);
            println!(
                "demo:   cpu{c}: {} calls reached hook_near, {} hook_far, {} NULL, {} RET0",
                now[0] - previous[0],
                now[1] - previous[1],
                now[2] - previous[2],
                now[3] - previous[3]
            );
            *previous = now;
        }
    });
    let load = |a: &core::sync::atomic::AtomicU64| a.load(Ordering::SeqCst);
    let stale: u64 = COUNTERS.stale.iter().map(load).sum();
    let wrong: u64 = COUNTERS.wrong.iter().map(load).sum();
    let calls: u64 = COUNTERS.calls.iter().map(load).sum();
    println!(
        "demo: {calls} calls on {} CPUs, 8 updates, stale calls {stale}, wrong results {wrong}",
        CPUS - 1
    );
    match result {
        Ok(()) if stale == 0 && wrong == 0 => 0,
        Ok(()) => 1,
        Err(e) => {
            println!("demo: FAILED: {e}");
            1
        }
    }
}
