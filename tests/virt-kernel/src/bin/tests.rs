//! The virt-board test suite: boots, brings up every CPU, runs named tests and
//! reports them over the UART (see `virt_kernel::runner`).

#![no_std]
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]

extern crate alloc;

// Beside this file, in a directory of its own: a file in src/bin would be
// taken for another binary.
#[path = "tests/inline.rs"]
mod inline;
#[path = "tests/portable.rs"]
mod portable;
#[path = "tests/static_calls.rs"]
mod static_calls;

use core::sync::atomic::Ordering;

use core::arch::global_asm;

use virt_kernel::cpu::{self, CacheGeometry};
use virt_kernel::exceptions::{self, Recovery};
use virt_kernel::runner::{self, TestResult};
use virt_kernel::{check, check_eq, println, smp, tests};
use virt_kernel::{gic, mmu};

use inline::{
    inline_site_bad_input, inline_site_counts, inline_site_torn_states, inline_site_transitions,
    inline_sites_1000, inline_sites_smp_stress,
};
use portable::portable_kernel_on_the_board;
use static_calls::{
    static_call_bad_input, static_call_declared_across_crates, static_call_far_initial_target,
    static_call_replay_record, static_call_torn_states, static_call_transitions,
};

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
    runner::run(tests![
        smp_all_cpus_online,
        smp_no_wake_up_is_lost,
        ctr_el0_reports_cache_geometry,
        bti_implemented,
        current_el,
        mmu_on_every_cpu_with_bti,
        text_is_read_only,
        text_alias_writes_reach_text,
        bti_landing_pad_accepted,
        bti_blocks_branch_to_non_landing_pad,
        far_text_is_out_of_branch_range,
        sync_all_cpus_ipi,
        static_call_transitions,
        static_call_torn_states,
        static_call_bad_input,
        static_call_far_initial_target,
        static_call_declared_across_crates,
        static_call_replay_record,
        static_call_smp_stress,
        portable_kernel_on_the_board,
        inline_site_counts,
        inline_site_transitions,
        inline_sites_1000,
        inline_site_torn_states,
        inline_site_bad_input,
        inline_sites_smp_stress,
        #[cfg(feature = "deliberate-failure")]
        deliberate_failure,
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

/// Every piece of work posted to a sleeping secondary wakes it: rounds of
/// posting to every secondary at once and waiting until each has run it.
/// A wake-up SGI taken between a secondary's "no work" check and its WFI
/// would leave it asleep with work pending (CI saw exactly that once, as a
/// `run_on` timeout); each round gives every CPU that window again.
fn smp_no_wake_up_is_lost() -> TestResult {
    use core::sync::atomic::AtomicU64;
    const ROUNDS: u64 = 3000;
    static RAN: [AtomicU64; CPUS] = [const { AtomicU64::new(0) }; CPUS];
    fn ran(cpu: usize) {
        RAN[cpu].fetch_add(1, Ordering::SeqCst);
    }
    let start = cpu::now_ms();
    for round in 0..ROUNDS {
        for c in 1..CPUS {
            check!(smp::post(c, ran), "cpu{c} still busy in round {round}");
        }
        for c in 1..CPUS {
            // `ran` borrows nothing, so a CPU that never wakes is reported
            // rather than waited for.
            check!(
                cpu::spin_until(1000, || smp::idle(c)),
                "cpu{c} slept through its wake-up in round {round} of {ROUNDS}"
            );
        }
    }
    for (c, ran) in RAN.iter().enumerate().skip(1) {
        let ran = ran.load(Ordering::SeqCst);
        check!(ran == ROUNDS, "cpu{c} ran {ran} of {ROUNDS} posted jobs");
    }
    println!(
        "smp: {ROUNDS} rounds of work posted to {} sleeping CPUs, every one woke, in {} ms",
        CPUS - 1,
        cpu::now_ms() - start
    );
    Ok(())
}

/// CTR_EL0 line sizes are plausible (16..=2048 bytes; the architecture allows
/// 4..=64 KiB words but no real core is outside this range), static-call's
/// decoding (the one its cache maintenance uses) agrees with the fields
/// taken by hand, and the value is the same on every CPU the maintenance
/// loop may run on.
fn ctr_el0_reports_cache_geometry() -> TestResult {
    let geometry = CacheGeometry::read();
    println!("cache: {geometry}");
    let raw = geometry.raw;
    check_eq!(
        (geometry.i_line, geometry.d_line, geometry.idc, geometry.dic),
        (
            4usize << (raw & 0xf),
            4usize << ((raw >> 16) & 0xf),
            raw & (1 << 28) != 0,
            raw & (1 << 29) != 0
        )
    );
    for c in 1..CPUS {
        let theirs = smp::run_on(c, 1000, CacheGeometry::read).ok_or("cpu busy")?;
        check!(
            theirs == geometry,
            "cpu{c} reads CTR_EL0 {:#x}, cpu0 {raw:#x}",
            theirs.raw
        );
    }
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

// Probes for the MMU and BTI tests, in the kernel's text:
// - `probe_bti`: a proper landing pad, returns 0x42.
// - `probe_no_bti`: the same without the landing pad; an indirect call to it
//   must take a Branch Target exception.
// - `probe_patch`: `mov x0, #1` that the alias test rewrites to `mov x0, #2`.
global_asm!(
    ".pushsection .text.vk_probes, \"ax\", %progbits",
    ".balign 16",
    ".globl probe_bti",
    "probe_bti:",
    "    bti c",
    "    mov x0, #0x42",
    "    ret",
    ".balign 16",
    ".globl probe_no_bti",
    "probe_no_bti:",
    "    mov x0, #0x42",
    "    ret",
    ".balign 16",
    ".globl probe_patch",
    "probe_patch:",
    "    bti c",
    "    mov x0, #1",
    "    ret",
    ".popsection",
);

unsafe extern "C" {
    safe fn probe_bti() -> u64;
    safe fn probe_no_bti() -> u64;
    safe fn probe_patch() -> u64;
}

/// `mov x0, #1` and `mov x0, #2`.
const MOV_X0_1: u32 = 0xd280_0020;
const MOV_X0_2: u32 = 0xd280_0040;

/// Calls `f` through a pointer the compiler cannot see through, so the call
/// is a real `blr` (BTI-checked), not a direct `bl`.
fn call_indirect(f: extern "C" fn() -> u64) -> u64 {
    core::hint::black_box(f)()
}

/// Every CPU switched to the kernel's tables and has SCTLR_ELx.BT set.
fn mmu_on_every_cpu_with_bti() -> TestResult {
    let l = mmu::layout();
    println!(
        "mmu: text {:#x}..{:#x} RX+GP, rodata {:#x}..{:#x} RO, far text {:#x}..{:#x} RX+GP, alias +{:#x} RW",
        l.text.start,
        l.text.end,
        l.rodata.start,
        l.rodata.end,
        l.far_text.start,
        l.far_text.end,
        mmu::ALIAS_OFFSET
    );
    for c in 0..CPUS {
        let on = smp::MMU_ON[c].load(Ordering::SeqCst);
        let sctlr = smp::SCTLR[c].load(Ordering::SeqCst) as u64;
        check!(on, "cpu{c} does not run on the kernel's page tables");
        check!(sctlr & 1 != 0, "cpu{c}: MMU off (SCTLR={sctlr:#x})");
        check!(
            sctlr & (1 << 36) != 0,
            "cpu{c}: SCTLR.BT clear (SCTLR={sctlr:#x})"
        );
    }
    Ok(())
}

/// A store to the executable mapping faults (permission fault) and changes
/// nothing.
fn text_is_read_only() -> TestResult {
    let addr = probe_patch as *const () as usize + 4;
    // SAFETY: reading kernel text is allowed (it is mapped readable).
    let before = unsafe { core::ptr::read_volatile(addr as *const u32) };
    let fault = exceptions::catch_fault(Recovery::SkipInstruction, || {
        // SAFETY: not safe in general: this store must fault, which the
        // test checks; the handler then skips it.
        unsafe { core::ptr::write_volatile(addr as *mut u32, MOV_X0_2) };
    });
    // SAFETY: as above.
    let after = unsafe { core::ptr::read_volatile(addr as *const u32) };
    let Some(fault) = fault else {
        return Err(alloc::format!("store to text at {addr:#x} did not fault"));
    };
    println!(
        "mmu: store to text {addr:#x} faulted: ESR={:#x} (EC={:#x}, DFSC={:#x}) FAR={:#x}",
        fault.esr,
        fault.class(),
        fault.esr & 0x3f,
        fault.far
    );
    check_eq!(fault.class(), exceptions::EC_DATA_ABORT_SAME_EL);
    // DFSC 0b0011xx: permission fault.
    check!(
        fault.esr & 0x3c == 0x0c,
        "not a permission fault: ESR={:#x}",
        fault.esr
    );
    check_eq!(fault.far as usize, addr);
    check_eq!(after, before);
    Ok(())
}

/// Writing through the alias, then the cache maintenance the library does,
/// changes what the executable mapping runs.
fn text_alias_writes_reach_text() -> TestResult {
    let insn = probe_patch as *const () as usize + 4;
    let alias = mmu::text_alias(insn).ok_or("probe not in text")?;
    check_eq!(mmu::translate_read(alias), mmu::translate_read(insn));
    check_eq!(call_indirect(probe_patch), 1);
    let patch = |word: u32| {
        // SAFETY: `alias` maps `insn` writable; nothing else runs or patches
        // `probe_patch` meanwhile (this test is its only user).
        unsafe { core::ptr::write_volatile(alias as *mut u32, word) };
        sync_icache(insn);
    };
    patch(MOV_X0_2);
    let patched = call_indirect(probe_patch);
    patch(MOV_X0_1);
    let restored = call_indirect(probe_patch);
    println!("mmu: probe via alias {alias:#x}: 1 -> {patched} -> {restored}");
    check_eq!(patched, 2);
    check_eq!(restored, 1);
    Ok(())
}

/// Cache maintenance after writing code: clean the line to the point of
/// unification, invalidate it from the I-cache, synchronize this CPU.
fn sync_icache(addr: usize) {
    // SAFETY: cache maintenance by VA on a mapped address has no effect on
    // memory contents.
    unsafe {
        core::arch::asm!(
            "dc cvau, {a}", "dsb ish", "ic ivau, {a}", "dsb ish", "isb",
            a = in(reg) addr, options(nostack, preserves_flags)
        )
    };
}

/// Positive control: an indirect call to a `bti c` landing pad works.
fn bti_landing_pad_accepted() -> TestResult {
    let mut value = 0;
    let fault = exceptions::catch_fault(Recovery::ReturnToLink, || {
        value = call_indirect(probe_bti);
    });
    check!(
        fault.is_none(),
        "call to a BTI landing pad faulted: {fault:x?}"
    );
    check_eq!(value, 0x42);
    Ok(())
}

/// Negative control: an indirect call to code without a landing pad in a
/// guarded page takes a Branch Target exception (EC 0x0d) at the target.
fn bti_blocks_branch_to_non_landing_pad() -> TestResult {
    let fault = exceptions::catch_fault(Recovery::ReturnToLink, || {
        call_indirect(probe_no_bti);
    });
    let Some(fault) = fault else {
        return Err("indirect call to a non-BTI target did not fault: BTI not enforced".into());
    };
    println!(
        "bti: blr to non-landing-pad {:#x} faulted: ESR={:#x} (EC={:#x}, BTYPE={}) ELR={:#x}",
        probe_no_bti as *const () as usize,
        fault.esr,
        fault.class(),
        fault.esr & 0b11,
        fault.elr
    );
    check_eq!(fault.class(), exceptions::EC_BRANCH_TARGET);
    check_eq!(fault.elr as usize, probe_no_bti as *const () as usize);
    // A direct call needs no landing pad.
    check_eq!(probe_no_bti(), 0x42);
    Ok(())
}

/// Code in the far section is more than 128 MiB (B/BL range) from the kernel
/// text and runs, through a pointer, under BTI.
fn far_text_is_out_of_branch_range() -> TestResult {
    let far = far_probe as *const () as usize;
    let l = mmu::layout();
    check!(
        l.far_text.contains(&far),
        "far_probe at {far:#x} is not in the far section"
    );
    let distance = far - l.text.start;
    println!(
        "mmu: far_probe at {far:#x}, {} MiB above text",
        distance >> 20
    );
    check!(
        distance > 128 << 20,
        "far text only {distance:#x} bytes from text"
    );
    let fault = exceptions::catch_fault(Recovery::ReturnToLink, || {
        check_eq_far(call_indirect(far_probe));
    });
    check!(fault.is_none(), "calling far text faulted: {fault:x?}");
    Ok(())
}

/// The "synchronize all CPUs" IPI reaches every other CPU, every time.
fn sync_all_cpus_ipi() -> TestResult {
    check_eq!(gic::ready_cpus(), CPUS);
    const ROUNDS: u64 = 200;
    let start = cpu::now_ms();
    for round in 0..ROUNDS {
        if let Err(e) = gic::sync_all_cpus(1000) {
            return Err(alloc::format!(
                "round {round}: cpu{} did not answer the sync IPI",
                e.cpu
            ));
        }
    }
    let elapsed = cpu::now_ms() - start;
    let generation = gic::sync_count();
    for c in 1..CPUS {
        check!(
            gic::acked(c) >= generation,
            "cpu{c} answered up to {} of {generation}",
            gic::acked(c)
        );
    }
    println!(
        "sync: GICv{} SGI {ROUNDS} rounds to {} CPUs in {elapsed} ms",
        gic::version(),
        CPUS - 1
    );
    Ok(())
}

/// CPUs 1..3 call two keys (directly and through the trampoline pointer)
/// while CPU 0 retargets them through every transition among near, far,
/// NULL and RET0 (over 10^4 retargets at EL1; fewer at EL2 and in the
/// deliberate-failure build, which only need to show it runs there):
/// every result must be right, every call must reach the old or the new
/// state of the transition in progress (NULL and RET0 told apart, see
/// `virt_kernel::stress`), and so none that starts after an update has
/// returned may reach the previous target.
fn static_call_smp_stress() -> TestResult {
    use virt_kernel::stress::{self, COUNTERS};
    // Each update costs an IPI round to every CPU (about 10 ms under
    // emulation on two host cores), so the long run is done once per suite.
    let steps: usize = if cfg!(feature = "deliberate-failure") {
        100
    } else if cpu::current_el() == 1 {
        // 5500 steps: just over 10^4 updates that change the trampoline
        // (TICK has no NULL, so some of its steps are RET0 -> RET0).
        5500
    } else {
        1000
    };
    let replays_before = virt_kernel::patching::replay_stats();
    let faults_before = exceptions::faults_caught();
    let syncs_before = gic::sync_count();
    let start = cpu::now_ms();
    stress::run(CPUS, steps, 20, 10_000, |_| {})?;
    let elapsed = cpu::now_ms() - start;
    let syncs = gic::sync_count() - syncs_before;
    let faults =
        exceptions::faults_caught() - faults_before + exceptions::UNEXPECTED.load(Ordering::SeqCst);
    let load = |a: &core::sync::atomic::AtomicU64| a.load(Ordering::SeqCst);
    let mut total_calls = 0;
    for c in 1..CPUS {
        let calls = load(&COUNTERS.calls[c]);
        total_calls += calls;
        let hook = COUNTERS.hook_seen[c].each_ref().map(load);
        let tick = COUNTERS.tick_seen[c].each_ref().map(load);
        let stale = load(&COUNTERS.stale[c]);
        let wrong = load(&COUNTERS.wrong[c]);
        println!(
            "stress: cpu{c}: {calls} calls; HOOK near/far/null/ret0 {}/{}/{}/{}; TICK near/far/ret0 {}/{}/{}; stale {stale}; wrong {wrong}",
            hook[0], hook[1], hook[2], hook[3], tick[0], tick[1], tick[3]
        );
        if let Some(first) = stress::first_stale(c) {
            return Err(alloc::format!(
                "cpu{c}: {stale} stale calls; the first: {first}"
            ));
        }
        check_eq!(wrong, 0);
        // HOOK tells all four states apart; TICK has no NULL.
        let null = stress::Seen::Null as usize;
        check!(
            hook.iter().all(|&n| n > 0)
                && tick[null] == 0
                && tick.iter().enumerate().all(|(i, &n)| i == null || n > 0),
            "cpu{c} did not see every target: near/far/null/ret0 HOOK {hook:?}, TICK {tick:?}"
        );
    }
    println!(
        "stress: {} updates ({steps} steps x 2 keys), {syncs} sync IPIs, {total_calls} calls on {} CPUs in {elapsed} ms, faults {faults}",
        2 * steps,
        CPUS - 1
    );
    check_eq!(faults, 0);
    // Every write was recorded and replayed (an overflow would have failed
    // its update already; this says so if it did not).
    let replays = virt_kernel::patching::replay_stats();
    check_eq!(replays.missed, replays_before.missed);
    check!(
        replays.replayed - replays_before.replayed >= 2 * syncs,
        "{} writes replayed for {syncs} syncs",
        replays.replayed - replays_before.replayed
    );
    check!(
        syncs >= steps as u64,
        "only {syncs} sync IPIs for {steps} steps"
    );
    Ok(())
}

fn check_eq_far(value: u64) {
    assert_eq!(value, 0xfa5, "far_probe returned {value:#x}");
}

#[unsafe(link_section = ".far_text.probe")]
extern "C" fn far_probe() -> u64 {
    0xfa5
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
