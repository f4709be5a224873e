//! A regression test for a bug Linux shipped (commit 2aebf5ee, "Fix int3
//! handling failure from broken text_poke array"): a single poke made
//! while a batch was queued replaced the array the `int3` handler
//! binary-searched, so a CPU trapping in that moment found no entry (or
//! the wrong one) for the instruction it hit.
//!
//! Here the handler's table is the call-site table, sorted once before any
//! update and never reordered, and the append-only list of armed
//! trampolines; each trapped call is steered through its own key's
//! literal. The test shows it holds: callers on every core call every key
//! of a `static_call_ops!` table, at inline sites and through the
//! trampolines, while this thread alternates int3 installs of the whole
//! table (one batched protocol) with single int3 updates of one key.
//! Every result is checked against the states published around the call,
//! and every trap is checked inside the handler: the key it was steered
//! for is one of the table's, and the destination one of that key's
//! targets.
#![cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "force-generic")
))]

use static_call::arch::x86_64::{__test_hooks as hooks, Strategy, traps_steered};
use static_call::writer::linux::Remap;
use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const A: u64 = 1000;
const B: u64 = 2000;
const C: u64 = 3000;
const UNTOUCHED: u64 = u64::MAX;

static_call::static_call_ops! {
    /// A device's operations.
    pub trait Dev in dev {
        /// Reads a register.
        static TT_READ: fn read(reg: u32) -> u64;
        /// Writes the value it was given, plus the implementation's base.
        static TT_WRITE: fn write(out: *mut u64, v: u64);
        /// Optional: resets the device (NULL when left out).
        static TT_RESET: optional fn reset(out: *mut u64) = NULL;
    }
    default = DevA;
}

/// # Safety
///
/// `out` must be valid for writes.
unsafe fn put(out: *mut u64, v: u64) {
    // SAFETY: per the contract.
    unsafe { out.write_volatile(v) }
}

struct DevA;
impl Dev for DevA {
    fn read(reg: u32) -> u64 {
        u64::from(reg) + A
    }
    fn write(out: *mut u64, v: u64) {
        // SAFETY: callers pass a live local.
        unsafe { put(out, v + A) }
    }
}

struct DevB;
impl Dev for DevB {
    fn read(reg: u32) -> u64 {
        u64::from(reg) + B
    }
    fn write(out: *mut u64, v: u64) {
        // SAFETY: as above.
        unsafe { put(out, v + B) }
    }
    const TT_RESET: Option<fn(*mut u64)> = Some(Self::reset);
}
impl DevB {
    fn reset(out: *mut u64) {
        // SAFETY: as above.
        unsafe { put(out, B) }
    }
}

/// The targets of single updates.
extern "C" fn read_c(reg: u32) -> u64 {
    u64::from(reg) + C
}
extern "C" fn write_c(out: *mut u64, v: u64) {
    // SAFETY: as above.
    unsafe { put(out, v + C) }
}
extern "C" fn reset_c(out: *mut u64) {
    // SAFETY: as above.
    unsafe { put(out, C) }
}

/// What each key does in a state: A, B or C, per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    InstallA,
    InstallB,
    /// One key (0 read, 1 write, 2 reset) to its C target, alone.
    Single(usize),
}

/// One cycle of steps: installs of the whole table alternate with single
/// updates, each single update following a batch.
const CYCLE: [Op; 6] = [
    Op::InstallA,
    Op::Single(0),
    Op::InstallB,
    Op::Single(1),
    Op::InstallA,
    Op::Single(2),
];

/// The implementation (A, B, C) each key has after every step of the
/// cycle.
fn states() -> [[u64; 3]; 6] {
    let mut now = [A; 3];
    let mut out = [[0; 3]; 6];
    // Twice round, so the first steps see the end of the previous cycle.
    for round in 0..2 {
        for (i, op) in CYCLE.iter().enumerate() {
            match op {
                Op::InstallA => now = [A; 3],
                Op::InstallB => now = [B; 3],
                Op::Single(k) => now[*k] = C,
            }
            if round == 1 {
                out[i] = now;
            }
        }
    }
    out
}

/// What key `k` returns (at a site or through the trampoline) under
/// implementation `imp`: read(3), write(.., 4), reset().
fn result(k: usize, imp: u64) -> u64 {
    match k {
        0 => 3 + imp,
        1 => 4 + imp,
        _ if imp == A => UNTOUCHED, // DevA leaves reset out: NULL
        _ => imp,
    }
}

fn step(op: Op) {
    let w = Strategy::Breakpoint.with(&Remap);
    match op {
        Op::InstallA => dev::install_with::<DevA>(&w).unwrap(),
        Op::InstallB => dev::install_with::<DevB>(&w).unwrap(),
        Op::Single(0) => dev::TT_READ.update_with(read_c, &w).unwrap(),
        Op::Single(1) => dev::TT_WRITE.update_with(write_c, &w).unwrap(),
        Op::Single(_) => dev::TT_RESET.update_with(reset_c, &w).unwrap(),
    }
}

/// Each key's calls, at its inline sites and through its trampoline.
#[inline(never)]
fn call(k: usize, through_trampoline: bool) -> u64 {
    let mut cell = UNTOUCHED;
    match (k, through_trampoline) {
        (0, false) => return dev::read(3),
        (0, true) => return dev::TT_READ.trampoline()(3),
        (1, false) => dev::write(&mut cell, 4),
        (1, true) => dev::TT_WRITE.trampoline()(&mut cell, 4),
        (_, false) => dev::reset(&mut cell),
        (_, true) => dev::TT_RESET.trampoline()(&mut cell),
    }
    cell
}

/// The keys' trampolines and every target each may have, for the check
/// inside the handler (atomics only: it runs in signal context).
static TRAMPS: [AtomicUsize; 3] = [const { AtomicUsize::new(0) }; 3];
static ALLOWED: [[AtomicUsize; 4]; 3] = [const { [const { AtomicUsize::new(0) }; 4] }; 3];
static STEERED: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
static BAD_TRAPS: AtomicU64 = AtomicU64::new(0);
/// Traps steered while a caller was at an inline site (found by the
/// binary search) and at a trampoline (the armed list).
static AT_SITES: AtomicU64 = AtomicU64::new(0);
static AT_TRAMPOLINES: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Whether this thread's current call goes through the trampoline:
    /// read by the trap hook, which runs on the trapped thread.
    static THROUGH_TRAMPOLINE: Cell<bool> = const { Cell::new(false) };
}

fn check_trap(point: hooks::TrapPoint, tramp: usize, dest: usize) {
    if point != hooks::TrapPoint::Steering {
        return;
    }
    let Some(k) = TRAMPS
        .iter()
        .position(|t| t.load(Ordering::Relaxed) == tramp)
    else {
        BAD_TRAPS.fetch_add(1, Ordering::Relaxed);
        return;
    };
    STEERED[k].fetch_add(1, Ordering::Relaxed);
    if THROUGH_TRAMPOLINE.with(Cell::get) {
        AT_TRAMPOLINES.fetch_add(1, Ordering::Relaxed);
    } else {
        AT_SITES.fetch_add(1, Ordering::Relaxed);
    }
    if !ALLOWED[k].iter().any(|a| a.load(Ordering::Relaxed) == dest) {
        BAD_TRAPS.fetch_add(1, Ordering::Relaxed);
    }
}

/// Records every target each key can have (its A, B and C functions and
/// the NULL stub), by installing them once.
fn record_targets() {
    let tramps = [
        dev::TT_READ.trampoline_addr(),
        dev::TT_WRITE.trampoline_addr(),
        dev::TT_RESET.trampoline_addr(),
    ];
    for (t, &addr) in TRAMPS.iter().zip(&tramps) {
        t.store(addr, Ordering::Relaxed);
    }
    let literal = |tramp: usize| {
        // SAFETY: a live trampoline's literal: 8 aligned, readable bytes.
        unsafe { (*((tramp + 8) as *const AtomicU64)).load(Ordering::Acquire) as usize }
    };
    for (slot, op) in [Op::InstallA, Op::InstallB, Op::Single(0)]
        .into_iter()
        .enumerate()
    {
        step(op);
        if op == Op::Single(0) {
            step(Op::Single(1));
            step(Op::Single(2));
        }
        for (k, &tramp) in tramps.iter().enumerate() {
            ALLOWED[k][slot].store(literal(tramp), Ordering::Relaxed);
        }
    }
    // The NULL stub (DevA's reset), as a literal holds it.
    ALLOWED[2][3].store(
        static_call::arch::x86_64::null_stub_addr() as usize,
        Ordering::Relaxed,
    );
}

#[test]
fn every_trap_during_batches_and_single_updates_is_steered_by_a_consistent_table() {
    record_targets();
    let states = states();
    step(CYCLE[0]);
    let started = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    // SAFETY: the hook only touches atomics and neither blocks nor unwinds.
    unsafe { hooks::set_on_trap(Some(check_trap)) };
    let traps_before = traps_steered();
    let callers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let threads: Vec<_> = (0..callers)
        .map(|id| {
            let (started, done, stop) = (started.clone(), done.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut calls, mut wrong) = (0u64, 0u64);
                let mut i = id;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let (k, tramp) = (i % 3, (i / 3) % 2 == 1);
                    // Steps `lo..=hi` were in place at some point of the
                    // call: `lo` had completed before it, `hi` had
                    // started by its end.
                    let lo = done.load(Ordering::SeqCst);
                    THROUGH_TRAMPOLINE.with(|t| t.set(tramp));
                    let got = call(k, tramp);
                    let hi = started.load(Ordering::SeqCst);
                    let ok =
                        (lo..=hi).any(|s| result(k, states[(s as usize) % CYCLE.len()][k]) == got);
                    if !ok {
                        wrong += 1;
                        if wrong < 5 {
                            eprintln!(
                                "caller {id}: key {k} (trampoline: {tramp}) returned \
                                 {got:#x} between steps {lo}..={hi}"
                            );
                        }
                    }
                    calls += 1;
                }
                (calls, wrong)
            })
        })
        .collect();
    let start = Instant::now();
    let mut s = 0u64;
    while s < 3000 || start.elapsed() < Duration::from_secs(2) {
        s += 1;
        started.store(s, Ordering::SeqCst);
        step(CYCLE[(s as usize) % CYCLE.len()]);
        done.store(s, Ordering::SeqCst);
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "too slow: {s} steps"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (mut calls, mut wrong) = (0, 0);
    for t in threads {
        let (n, bad) = t.join().expect("a caller died");
        calls += n;
        wrong += bad;
    }
    // SAFETY: removing the hook.
    unsafe { hooks::set_on_trap(None) };
    let traps = traps_steered() - traps_before;
    let per_key: Vec<u64> = STEERED.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let bad = BAD_TRAPS.load(Ordering::Relaxed);
    let (sites, tramps) = (
        AT_SITES.load(Ordering::Relaxed),
        AT_TRAMPOLINES.load(Ordering::Relaxed),
    );
    eprintln!(
        "{s} steps ({} installs of 3 keys, {} single updates), {calls} calls checked, \
         {traps} traps steered (per key {per_key:?}; {sites} at inline sites, {tramps} at \
         trampolines), {wrong} wrong results, {bad} bad traps",
        s.div_ceil(2),
        s / 2
    );
    assert_eq!(wrong, 0, "calls reached a target not in place around them");
    assert_eq!(
        bad, 0,
        "traps steered for an unknown key or to a foreign target"
    );
    assert!(calls > 10_000, "only {calls} calls");
    assert!(
        sites > 0 && tramps > 0,
        "{sites} traps at sites, {tramps} at trampolines"
    );
    assert!(
        per_key.iter().all(|&n| n > 0),
        "some key never trapped: {per_key:?} (the test checked nothing there)"
    );
}
