//! A key with a thousand inline sites: every update rewrites all of them in
//! one batch (the int3 protocol's phases are batched, as Linux's
//! `text_poke_bp_batch`), with at most four syncs. Checked site by site,
//! called site by site on every CPU; and with three CPUs calling every
//! site during each phase of the batched protocol (the updater waits in
//! each phase until each caller has made two full passes), every result
//! must be the old or the new target's.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;
use static_call::arch::x86_64::__test_hooks as hooks;
use static_call::arch::x86_64::{Strategy, site, traps_steered};
use x86_kernel::patching::Counting;
use x86_kernel::runner::TestResult;
use x86_kernel::{MAX_CPUS, check, check_eq, cpu, patching, println, smp};

use crate::CPUS;
use crate::keys::{FAR, NEAR, NEAR2, State, far_c_value};
use crate::on_every_cpu;

extern "C" fn big_near(x: u64) -> u64 {
    x + NEAR
}
extern "C" fn big_near2(x: u64) -> u64 {
    x + NEAR2
}

static_call::static_call! {
    /// A thousand sites (`BIG_FNS`).
    static BIG: extern "C" fn(u64) -> u64 = big_near;
}

macro_rules! ten {
    ($($t:tt)*) => { $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* };
}

/// Sites per function, and functions.
const PER_FN: usize = 100;
const FNS: usize = 10;
const SITES: usize = PER_FN * FNS;

/// For each `name base`: a function with `PER_FN` sites of `BIG`, site
/// `i` called with `arg + base + i`, its result in `out[i]`. The `base`
/// keeps the functions distinct, so none is merged with another.
macro_rules! hundred_sites {
    ($($name:ident $base:literal),* $(,)?) => {
        $(
            #[inline(never)]
            fn $name(arg: u64, out: &mut [u64; PER_FN]) {
                let mut i = 0;
                ten! { ten! { out[i] = BIG.call(arg + $base + i as u64); i += 1; } }
                let _ = i;
            }
        )*
        const BIG_FNS: [fn(u64, &mut [u64; PER_FN]); FNS] = [$($name),*];
    };
}

hundred_sites!(
    big_0 0, big_1 100, big_2 200, big_3 300, big_4 400,
    big_5 500, big_6 600, big_7 700, big_8 800, big_9 900,
);

/// Calls every site with `arg`; results in site order of the functions
/// (on the stack: the callers loop, and the kernel's heap never frees).
fn call_all(arg: u64) -> [u64; SITES] {
    let mut out = [0; SITES];
    for (f, chunk) in BIG_FNS.iter().zip(out.chunks_exact_mut(PER_FN)) {
        if let Ok(chunk) = <&mut [u64; PER_FN]>::try_from(chunk) {
            f(arg, chunk);
        }
    }
    out
}

fn tag(s: State) -> Option<u64> {
    match s {
        State::Near => Some(NEAR),
        State::Near2 => Some(NEAR2),
        State::Far => Some(FAR),
        State::Ret0 | State::Null => None,
    }
}

/// What site `k` returns for `arg` in state `s`.
fn expect(s: State, arg: u64, k: usize) -> u64 {
    tag(s).map_or(0, |t| arg + k as u64 + t)
}

fn set(s: State, w: &dyn static_call::arch::UpdateWriter) -> Result<(), String> {
    match s {
        State::Near => BIG.update_with(big_near, w),
        State::Near2 => BIG.update_with(big_near2, w),
        State::Far => BIG.update_with(far_c_value(), w),
        State::Ret0 => BIG.update_ret0_with(w),
        State::Null => unreachable!("a value key"),
    }
    .map_err(|e| format!("BIG -> {s:?}: {e}"))
}

const WALK: [State; 5] = [
    State::Near2,
    State::Far,
    State::Ret0,
    State::Near,
    State::Far,
];

/// Every update of the thousand-site key: at most four syncs (int3) or
/// three (one store), every site decoded, every site called on every CPU.
pub(crate) fn inline_sites_1000() -> TestResult {
    let mut sites = Vec::new();
    BIG.each_inline_site(|s| sites.push(s));
    check_eq!(sites.len(), SITES);
    check_eq!(BIG.inline_sites(), SITES);
    let counting = Counting::new();
    let mut report = Vec::new();
    for strategy in [Strategy::Breakpoint, Strategy::AtomicStore] {
        let w = strategy.with(&counting);
        set(State::Near, &w)?;
        let (mut most, mut calls) = (0, 0);
        for s in WALK {
            let before = counting.syncs.load(Ordering::SeqCst);
            set(s, &w)?;
            let syncs = counting.syncs.load(Ordering::SeqCst) - before;
            most = most.max(syncs);
            let limit = if strategy == Strategy::Breakpoint {
                4
            } else {
                3
            };
            check!(syncs <= limit, "{strategy:?} -> {s:?}: {syncs} syncs");
            let want = match s {
                State::Far => Some(BIG.trampoline_addr() as u64),
                _ => Some(BIG.query().map_or(0, |f| f as usize as u64)),
            };
            for &at in &sites {
                let word = crate::keys::site_word(at);
                let dest = site::decode(at as u64, &word).map_err(|e| format!("{at:#x}: {e}"))?;
                check!(
                    dest == want,
                    "{strategy:?} {s:?}: site {at:#x} calls {dest:x?}"
                );
            }
            // Each CPU judges its own calls: (calls, first wrong site).
            let results = on_every_cpu(|c| {
                let arg = (c as u64) << 20;
                let out = call_all(arg);
                let wrong = (0..SITES).find(|&k| out[k] != expect(s, arg, k));
                (out.len(), wrong.map(|k| (k, out[k])))
            })?;
            for (c, (n, wrong)) in results.into_iter().enumerate() {
                check!(
                    wrong.is_none(),
                    "{strategy:?} {s:?}: cpu{c} (site, result) {wrong:x?}"
                );
                calls += n;
            }
        }
        report.push(format!("{strategy:?} at most {most} syncs per update"));
        let _ = calls;
    }
    set(State::Near, patching::writer())?;
    println!(
        "inline: {SITES} sites, {} updates per strategy, {}; every site called on {CPUS} CPUs after each",
        WALK.len(),
        report.join(", ")
    );
    Ok(())
}

// ---------------------------------------------------------------------
// Callers in every phase of the batched protocol.

static OLD: AtomicUsize = AtomicUsize::new(0);
static NEW: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
static PASSES: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static BAD: AtomicU64 = AtomicU64::new(0);
/// Passes made while the updater waited in phase 1, 2, 3 (0: between
/// updates).
static IN_PHASE: [AtomicU64; 4] = [const { AtomicU64::new(0) }; 4];

fn state(i: usize) -> State {
    [State::Near, State::Near2, State::Far, State::Ret0][i]
}

fn index(s: State) -> usize {
    match s {
        State::Near => 0,
        State::Near2 => 1,
        State::Far => 2,
        _ => 3,
    }
}

fn phase_caller(c: usize) {
    let arg = (c as u64) << 20;
    while !STOP.load(Ordering::Acquire) {
        let (old, new) = (
            state(OLD.load(Ordering::SeqCst)),
            state(NEW.load(Ordering::SeqCst)),
        );
        let out = call_all(arg);
        let bad = out
            .iter()
            .enumerate()
            .filter(|&(k, &r)| r != expect(old, arg, k) && r != expect(new, arg, k))
            .count();
        BAD.fetch_add(bad as u64, Ordering::Relaxed);
        PASSES[c].fetch_add(1, Ordering::SeqCst);
    }
}

/// In each phase (int3 everywhere; tails written; first bytes written,
/// each synced): wait until every caller has made two more full passes.
fn wait_for_callers(phase: usize) {
    let start: Vec<u64> = (0..CPUS)
        .map(|c| PASSES[c].load(Ordering::SeqCst))
        .collect();
    let done = cpu::spin_until(20_000, || {
        (1..CPUS).all(|c| PASSES[c].load(Ordering::SeqCst) >= start[c] + 2)
    });
    if !done {
        x86_kernel::fatal(format_args!("callers made no progress in phase {phase}"));
    }
    let made: u64 = (1..CPUS)
        .map(|c| PASSES[c].load(Ordering::SeqCst) - start[c])
        .sum();
    IN_PHASE[phase].fetch_add(made, Ordering::SeqCst);
}

pub(crate) fn callers_in_every_phase_of_the_batched_protocol() -> TestResult {
    let w = patching::writer();
    let bp = Strategy::Breakpoint.with(w);
    set(State::Near, &bp)?;
    OLD.store(0, Ordering::SeqCst);
    NEW.store(0, Ordering::SeqCst);
    BAD.store(0, Ordering::SeqCst);
    for p in &IN_PHASE {
        p.store(0, Ordering::SeqCst);
    }
    STOP.store(false, Ordering::SeqCst);
    for c in 1..CPUS {
        check!(smp::post(c, phase_caller), "cpu{c} is busy");
    }
    let steered = traps_steered();
    // SAFETY: the hook does not unwind; it waits with a timeout.
    unsafe { hooks::set_after_site_phase(Some(wait_for_callers)) };
    let mut result = Ok(());
    for pair in [
        State::Near,
        State::Near2,
        State::Far,
        State::Ret0,
        State::Near,
    ]
    .windows(2)
    {
        OLD.store(index(pair[0]), Ordering::SeqCst);
        NEW.store(index(pair[1]), Ordering::SeqCst);
        // Every caller judges against this pair before the update begins.
        wait_for_callers(0);
        result = set(pair[1], &bp);
        if result.is_err() {
            break;
        }
        OLD.store(index(pair[1]), Ordering::SeqCst);
        // No caller's pass may span two updates (it judges against one
        // pair of states).
        wait_for_callers(0);
    }
    // SAFETY: removing the hook.
    unsafe { hooks::set_after_site_phase(None) };
    STOP.store(true, Ordering::SeqCst);
    let stopped = cpu::spin_until(10_000, || (1..CPUS).all(smp::idle));
    result?;
    check!(stopped, "a caller did not stop");
    let bad = BAD.load(Ordering::SeqCst);
    let phases: Vec<u64> = IN_PHASE[1..]
        .iter()
        .map(|p| p.load(Ordering::SeqCst))
        .collect();
    let steered = traps_steered() - steered;
    println!(
        "inline: 4 updates of {SITES} sites with 3 CPUs calling every site: passes in phases 1/2/3: {phases:?}, {steered} traps steered, bad {bad}"
    );
    check_eq!(bad, 0);
    check!(
        phases.iter().all(|&p| p >= 2 * (CPUS as u64 - 1) * 4),
        "a phase ran without callers: {phases:?}"
    );
    check!(steered > 0, "no call trapped");
    Ok(())
}
