//! Static calls on the board, one key state at a time: every transition,
//! every torn (literal, branch) state, bad input, and a key declared across
//! crates. Every call is made directly (`KEY.call`, a `bl` to the trampoline)
//! and through the trampoline as a function pointer (a BTI-checked `blr` to
//! its `bti c`), on CPU 0 and on the secondaries, with faults caught and
//! reported instead of ending the run.

use core::hint::black_box;
use core::ops::Deref;
use core::sync::atomic::{AtomicUsize, Ordering};

use alloc::format;
use alloc::string::String;

use static_call::arch::Backend;
use static_call::arch::aarch64::{self as a64, Aarch64, Branch, Patch, Slot, TRAMPOLINE_LEN, insn};
use static_call::writer::{Alias, patch_lock};
use static_call::{Error, FnPtr, Ret0Safe, StaticCall, TextWriter};
use virt_kernel::exceptions::{self, Recovery};
use virt_kernel::runner::TestResult;
use virt_kernel::{check, check_eq, gic, hooks, mmu, patching, println, smp};

use crate::CPUS;

/// How long a secondary may take to run one batch of calls.
const CPU_TIMEOUT_MS: u64 = 2000;

/// Added by the near targets.
const NEAR: u64 = 1000;
/// Added by the far targets.
const FAR: u64 = 2000;
/// A cell no target wrote (the key was NULL or RET0).
const UNTOUCHED: u64 = u64::MAX;

type EffectFn = fn(*mut u64, u64);
type ValueFn = fn(u32) -> u64;

// The targets. Exported under one symbol each: Rust may otherwise emit a
// local copy of a small function per codegen unit, and then two `f as usize`
// of the same function differ. The far ones sit in `.far_text`, 191 MiB
// from the trampolines (out of B range), and call nothing: a call from there
// back to the kernel's text would need a veneer.

#[unsafe(no_mangle)]
fn sc_near_effect(out: *mut u64, v: u64) {
    // SAFETY: every caller passes a pointer to a live local `u64`.
    unsafe { out.write_volatile(v + NEAR) };
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".far_text.sc_far_effect")]
fn sc_far_effect(out: *mut u64, v: u64) {
    // SAFETY: every caller passes a pointer to a live local `u64`.
    unsafe { out.write_volatile(v + FAR) };
}

#[unsafe(no_mangle)]
fn sc_near_value(x: u32) -> u64 {
    u64::from(x) + NEAR
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".far_text.sc_far_value")]
fn sc_far_value(x: u32) -> u64 {
    u64::from(x) + FAR
}

/// An `extern "C"` function in `.far_text`, out of a `B`'s reach.
#[unsafe(no_mangle)]
#[unsafe(link_section = ".far_text.sc_c_far_value")]
extern "C" fn sc_c_far_value(x: u32) -> u64 {
    u64::from(x) + FAR
}

/// Its near twin.
extern "C" fn sc_c_near_value(x: u32) -> u64 {
    u64::from(x) + NEAR
}

static_call::static_call! {
    /// An `extern "C"` key (its call is the crate's own `bl`) whose initial
    /// target is out of branch range: the linker gives its `b` a veneer.
    static C_FAR_INIT: extern "C" fn(u32) -> u64 = sc_c_far_value;
}

static_call::static_call! {
    /// Walked through every transition among near, far, NULL and RET0.
    static TRANS_EFFECT: fn(*mut u64, u64) = sc_near_effect;
    /// Walked through every transition among near, far and RET0.
    static TRANS_VALUE: fn(u32) -> u64 = sc_near_value;
    /// Written by hand with every torn (literal, branch) pair.
    static TORN_EFFECT: fn(*mut u64, u64) = sc_near_effect;
    /// As `TORN_EFFECT`, for a key with a result.
    static TORN_VALUE: fn(u32) -> u64 = sc_near_value;
    /// Corrupted and offered failing writers.
    static BAD: fn(u32) -> u64 = sc_near_value;
    /// Rewritten by hand (with its own bytes) to fill the writer's replay
    /// record.
    static REPLAYED: fn(u32) -> u64 = sc_near_value;
    /// The platform's definition of the hook `virt_kernel::hooks` declares
    /// (this binary plays the platform crate).
    pub static PLATFORM_CLOCK: fn(u32) -> u64 = sc_clock_coarse;
}

/// A key of the effect signature; `direct` is its own `call`.
trait EffectKey: Deref<Target = StaticCall<EffectFn>> + Sync {
    fn direct(&self, out: *mut u64, v: u64);
}

/// A key of the value signature; `direct` is its own `call`.
trait ValueKey: Deref<Target = StaticCall<ValueFn>> + Sync {
    fn direct(&self, x: u32) -> u64;
}

macro_rules! effect_keys {
    ($($key:ident),*) => {$(
        impl EffectKey for $key {
            fn direct(&self, out: *mut u64, v: u64) {
                self.call(out, v)
            }
        }
    )*};
}

macro_rules! value_keys {
    ($($key:ident),*) => {$(
        impl ValueKey for $key {
            fn direct(&self, x: u32) -> u64 {
                self.call(x)
            }
        }
    )*};
}

effect_keys!(TRANS_EFFECT, TORN_EFFECT);
value_keys!(TRANS_VALUE, TORN_VALUE, BAD, REPLAYED);

/// The states a key can be in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// A function in the kernel's text: `b target`.
    Near,
    /// A function in `.far_text`: `nop`, then the literal.
    Far,
    /// No target (literal 0): the call returns.
    Null,
    /// The key's return-zero function (in the kernel's text: `b`).
    Ret0,
}
use State::*;

const STATES: [State; 4] = [Near, Far, Null, Ret0];
/// Takes every ordered pair of distinct states exactly once (an Euler
/// circuit of the complete digraph on the four states).
const TOUR: [State; 13] = [
    Near, Far, Null, Ret0, Near, Null, Far, Ret0, Far, Near, Ret0, Null, Near,
];
/// The same for a key with a result, which cannot be NULL.
const VALUE_STATES: [State; 3] = [Near, Far, Ret0];
const VALUE_TOUR: [State; 7] = [Near, Far, Ret0, Near, Ret0, Far, Near];

/// What an effect call with `v` leaves in its cell in state `s`.
fn effect_of(s: State, v: u64) -> u64 {
    match s {
        Near => v + NEAR,
        Far => v + FAR,
        Null | Ret0 => UNTOUCHED,
    }
}

/// What a value call with `x` returns in state `s` (never NULL).
fn value_of(s: State, x: u32) -> u64 {
    match s {
        Near => u64::from(x) + NEAR,
        Far => u64::from(x) + FAR,
        Null | Ret0 => 0,
    }
}

fn addr<F: FnPtr>(f: F) -> u64 {
    f.addr() as u64
}

/// Where a key of each signature points in each state; `ret0` is the key's
/// own return-zero function.
fn effect_target(s: State, ret0: u64) -> u64 {
    match s {
        Near => addr(sc_near_effect as EffectFn),
        Far => addr(sc_far_effect as EffectFn),
        Null => 0,
        Ret0 => ret0,
    }
}

fn value_target(s: State, ret0: u64) -> u64 {
    match s {
        Near => addr(sc_near_value as ValueFn),
        Far => addr(sc_far_value as ValueFn),
        Null => 0,
        Ret0 => ret0,
    }
}

/// Moves an effect key to `s`, through the kernel's writer given explicitly
/// (`update_with` and friends) when `with` is set, else the default writer.
fn set_effect<K: EffectKey>(key: &K, s: State, with: bool) -> Result<(), Error> {
    let w = patching::writer();
    let result = match (s, with) {
        (Near, false) => key.update(sc_near_effect),
        (Near, true) => key.update_with(sc_near_effect, w),
        (Far, false) => key.update(sc_far_effect),
        (Far, true) => key.update_with(sc_far_effect, w),
        (Null, false) => key.update_null(),
        (Null, true) => key.update_null_with(w),
        (Ret0, false) => key.update_ret0(),
        (Ret0, true) => key.update_ret0_with(w),
    };
    // The key is named by the caller's message; compare reasons.
    result.map_err(Error::from)
}

/// As [`set_effect`] for a value key (never NULL).
fn set_value<K: ValueKey>(key: &K, s: State, with: bool) -> Result<(), Error> {
    let w = patching::writer();
    let result = match (s, with) {
        (Near, false) => key.update(sc_near_value),
        (Near, true) => key.update_with(sc_near_value, w),
        (Far, false) => key.update(sc_far_value),
        (Far, true) => key.update_with(sc_far_value, w),
        (Null, _) => unreachable!("a key with a result cannot be NULL"),
        (Ret0, false) => key.update_ret0(),
        (Ret0, true) => key.update_ret0_with(w),
    };
    // The key is named by the caller's message; compare reasons.
    result.map_err(Error::from)
}

pub(crate) fn describe(fault: &exceptions::Fault) -> String {
    format!(
        "cpu{}: call faulted: ESR={:#x} (EC={:#x}) ELR={:#x} FAR={:#x}",
        virt_kernel::cpu::id(),
        fault.esr,
        fault.class(),
        fault.elr,
        fault.far
    )
}

/// Calls an effect key with `v` on this CPU, directly and through the
/// trampoline pointer: what each call left in its cell.
fn effect_here<K: EffectKey>(key: &K, v: u64) -> Result<[u64; 2], String> {
    let (mut direct, mut indirect) = (UNTOUCHED, UNTOUCHED);
    // Every target here is a leaf and the trampoline tail-calls, so a fault
    // in either leaves x30 at the caller: return there.
    let fault = exceptions::catch_fault(Recovery::ReturnToLink, || {
        key.direct(&raw mut direct, v);
        black_box(key.trampoline())(&raw mut indirect, v);
    });
    match fault {
        Some(f) => Err(describe(&f)),
        None => Ok([direct, indirect]),
    }
}

/// Calls a value key with `x` on this CPU, directly and through the
/// trampoline pointer.
fn value_here<K: ValueKey>(key: &K, x: u32) -> Result<[u64; 2], String> {
    let mut got = [0; 2];
    let fault = exceptions::catch_fault(Recovery::ReturnToLink, || {
        got[0] = key.direct(x);
        got[1] = black_box(key.trampoline())(x);
    });
    match fault {
        Some(f) => Err(describe(&f)),
        None => Ok(got),
    }
}

/// Runs `f` on `cpu` (here for CPU 0, the CPU the tests run on).
pub(crate) fn on_cpu<R: Send>(
    cpu: usize,
    f: impl FnOnce() -> Result<R, String> + Send,
) -> Result<R, String> {
    if cpu == 0 {
        return f();
    }
    let run = || {
        let here = virt_kernel::cpu::id();
        check!(here == cpu, "work for cpu{cpu} ran on cpu{here}");
        f()
    };
    smp::run_on(cpu, CPU_TIMEOUT_MS, run).unwrap_or_else(|| Err(format!("cpu{cpu} is busy")))
}

/// Checks that effect calls with `v` have `expect`'s effect on `cpus`.
fn check_effect<K: EffectKey>(
    key: &K,
    v: u64,
    expect: u64,
    cpus: impl IntoIterator<Item = usize>,
) -> Result<usize, String> {
    let what = format!("{} with {v}", key.name());
    check_calls(&what, expect, cpus, || effect_here(key, v))
}

/// Checks that value calls with `x` return `expect` on `cpus`.
fn check_value<K: ValueKey>(
    key: &K,
    x: u32,
    expect: u64,
    cpus: impl IntoIterator<Item = usize>,
) -> Result<usize, String> {
    let what = format!("{}({x})", key.name());
    check_calls(&what, expect, cpus, || value_here(key, x))
}

/// Runs `call` (a direct call and a call via the pointer) on each of
/// `cpus` and checks both give `expect`; returns the number of calls.
fn check_calls(
    what: &str,
    expect: u64,
    cpus: impl IntoIterator<Item = usize>,
    call: impl Fn() -> Result<[u64; 2], String> + Sync,
) -> Result<usize, String> {
    let mut calls = 0;
    for cpu in cpus {
        let got = on_cpu(cpu, &call)?;
        check!(
            got == [expect; 2],
            "cpu{cpu}: {what}: direct call gave {}, call via pointer {}, expected {}",
            got[0],
            got[1],
            expect
        );
        calls += 2;
    }
    Ok(calls)
}

/// The trampoline's 32 bytes (literal through `ret`), from its executable
/// mapping.
fn window_bytes(tramp: usize) -> [u8; TRAMPOLINE_LEN] {
    // SAFETY: `tramp` is a key's trampoline entry: the 32 bytes from its
    // literal are mapped readable text, written only by aligned stores.
    unsafe { core::ptr::read_volatile((tramp - 8) as *const [u8; TRAMPOLINE_LEN]) }
}

/// A branch in assembler syntax (addresses in hex).
fn show(branch: Branch) -> String {
    match branch {
        Branch::B(dest) => format!("b {dest:#x}"),
        Branch::Nop => "nop".into(),
    }
}

/// An update's outcome for messages (`Error`'s Display has hex addresses).
fn outcome(r: &Result<(), Error>) -> String {
    match r {
        Ok(()) => "Ok".into(),
        Err(e) => format!("Err({e})"),
    }
}

fn decoded(tramp: usize) -> Result<a64::Trampoline, String> {
    a64::decode(tramp, &window_bytes(tramp))
        .map_err(|e| format!("trampoline at {tramp:#x} does not decode: {e}"))
}

/// Checks the decoded trampoline: the literal is `target`, the branch a `B`
/// to it when `direct`, else a NOP (far target, or NULL).
fn check_shape(name: &str, tramp: usize, target: u64, direct: bool) -> TestResult {
    let t = decoded(tramp)?;
    let branch = if direct {
        Branch::B(target)
    } else {
        Branch::Nop
    };
    check!(
        t.target == target && t.branch == branch,
        "{name}: trampoline has literal {:#x} and {}, expected {target:#x} and {}",
        t.target,
        show(t.branch),
        show(branch)
    );
    Ok(())
}

/// The expected shape of a key in state `s`.
fn check_state_shape(name: &str, tramp: usize, s: State, target: u64) -> TestResult {
    check_shape(name, tramp, target, matches!(s, Near | Ret0))
}

/// A far target must really be out of a `B`'s reach from the trampoline,
/// a near one within it, and both must start with the `bti c` that a
/// `br x16` (far) or a `blr` needs.
fn check_targets(tramp: usize, near: u64, far: u64) -> TestResult {
    let pc = tramp as u64 + 4;
    check!(
        insn::encode_b(pc, near).is_some(),
        "near target {near:#x} out of B range of {tramp:#x}"
    );
    check!(
        insn::encode_b(pc, far).is_none(),
        "far target {far:#x} within B range of {tramp:#x}"
    );
    for f in [near, far] {
        // SAFETY: `f` is a function's address in mapped text.
        let first = unsafe { core::ptr::read_volatile(f as *const u32) };
        check!(
            first == insn::BTI_C,
            "target {f:#x} starts with {first:#010x}, not bti c"
        );
    }
    Ok(())
}

/// Writes each `(addr, bytes)` into text by hand, the way an update does:
/// the kernel's writer (through the alias) under the patch lock, then cache
/// maintenance and the kernel's sync of all CPUs (whose replay also drops
/// QEMU's stale translations, see `virt_kernel::patching`).
///
/// # Safety
///
/// Every range must lie in the trampoline window of a key that only the
/// calling test uses, and nothing may call that key meanwhile.
pub(crate) unsafe fn write_text(writes: &[(usize, &[u8])]) -> TestResult {
    let w = patching::writer();
    let _lock = patch_lock();
    for &(addr, bytes) in writes {
        // SAFETY: per this function's contract; the patch lock is held.
        unsafe { w.write(addr, bytes) }.map_err(|e| format!("writing {addr:#x}: {e}"))?;
        a64::flush_icache_range(addr, bytes.len());
    }
    w.sync_cores().map_err(|e| format!("sync: {e}"))
}

/// Writes `patch` into the window of the trampoline at `tramp` (literal,
/// then `[bti c | branch]`) and checks it reads back.
///
/// # Safety
///
/// As for [`write_text`], for the window of `tramp`.
unsafe fn write_window(tramp: usize, patch: Patch) -> TestResult {
    let window = tramp - 8;
    let (literal, entry) = (patch.literal.to_le_bytes(), patch.entry.to_le_bytes());
    // SAFETY: per this function's contract.
    unsafe { write_text(&[(window, &literal), (window + 8, &entry)]) }?;
    let bytes = window_bytes(tramp);
    let now = Patch {
        literal: u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes")),
        entry: u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes")),
    };
    check_eq!(now, patch);
    Ok(())
}

/// The key's return-zero function, learnt by moving it to RET0 and back.
fn ret0_of<F: FnPtr>(key: &StaticCall<F>) -> Result<u64, String>
where
    F::Output: Ret0Safe,
{
    let before = key.query().ok_or("key is NULL")?;
    key.update_ret0().map_err(|e| format!("update_ret0: {e}"))?;
    let ret0 = key.query().ok_or("RET0 key is NULL")?.addr() as u64;
    check!(
        key.is_ret0(),
        "{} is not RET0 after update_ret0",
        key.name()
    );
    key.update(before).map_err(|e| format!("update: {e}"))?;
    check!(!key.is_ret0(), "{} still RET0 after update", key.name());
    check!(
        mmu::layout().text.contains(&(ret0 as usize)),
        "RET0 target {ret0:#x} not in the kernel's text"
    );
    Ok(ret0)
}

/// Every ordered pair of distinct states, for a key without a result (near,
/// far, NULL, RET0: 12 transitions) and one with a result (near, far, RET0:
/// 6). After each update: the trampoline decodes to the expected `B`/`NOP`
/// and literal, the writer synchronized the CPUs once, and every CPU's
/// calls, direct and through the pointer, reach the new state.
pub(crate) fn static_call_transitions() -> TestResult {
    let (mut updates, mut updates_with, mut calls) = (0, 0, 0);
    let mut update = |what: &str, f: &mut dyn FnMut(bool) -> Result<(), Error>| -> TestResult {
        let with = updates % 2 == 1;
        let syncs = gic::sync_count();
        f(with).map_err(|e| format!("{what}: update failed: {e}"))?;
        let synced = gic::sync_count() - syncs;
        check!(
            synced == 1,
            "{what}: the writer synchronized the CPUs {synced} times, expected once"
        );
        updates += 1;
        updates_with += usize::from(with);
        Ok(())
    };

    // The key without a result.
    let tramp = TRANS_EFFECT.trampoline_addr();
    let near = effect_target(Near, 0);
    let far = effect_target(Far, 0);
    check_targets(tramp, near, far)?;
    set_effect(&TRANS_EFFECT, TOUR[0], false).map_err(|e| format!("initial update: {e}"))?;
    let mut ret0 = None;
    let mut pairs = [[false; 4]; 4];
    for (step, pair) in TOUR.windows(2).enumerate() {
        let (from, to) = (pair[0], pair[1]);
        let what = format!("TRANS_EFFECT {from:?} -> {to:?}");
        update(&what, &mut |with| set_effect(&TRANS_EFFECT, to, with))?;
        let target = match to {
            Ret0 => {
                check!(TRANS_EFFECT.is_ret0(), "{what}: key is not RET0");
                let r = TRANS_EFFECT.query().ok_or("RET0 key is NULL")?.addr() as u64;
                // Each visit to RET0 must land on the same function.
                let r = *ret0.get_or_insert(r);
                check!(
                    mmu::layout().text.contains(&(r as usize)) && r != near,
                    "{what}: RET0 target {r:#x} is not a separate function in text"
                );
                r
            }
            s => effect_target(s, 0),
        };
        check_state_shape(&what, tramp, to, target)?;
        let query = TRANS_EFFECT.query().map_or(0, addr);
        check!(
            query == target,
            "{what}: query() says {query:#x}, expected {target:#x}"
        );
        let v = 11 + step as u64;
        calls += check_effect(&TRANS_EFFECT, v, effect_of(to, v), 0..CPUS)
            .map_err(|e| format!("{what}: {e}"))?;
        pairs[from as usize][to as usize] = true;
    }
    let covered = pairs.iter().flatten().filter(|&&p| p).count();
    check_eq!(covered, 12);

    // The key with a result.
    let vtramp = TRANS_VALUE.trampoline_addr();
    let vnear = value_target(Near, 0);
    let vfar = value_target(Far, 0);
    check_targets(vtramp, vnear, vfar)?;
    let vret0 = ret0_of(&TRANS_VALUE)?;
    set_value(&TRANS_VALUE, VALUE_TOUR[0], false).map_err(|e| format!("initial update: {e}"))?;
    let mut vpairs = 0;
    for (step, pair) in VALUE_TOUR.windows(2).enumerate() {
        let (from, to) = (pair[0], pair[1]);
        let what = format!("TRANS_VALUE {from:?} -> {to:?}");
        update(&what, &mut |with| set_value(&TRANS_VALUE, to, with))?;
        check!(
            TRANS_VALUE.is_ret0() == (to == Ret0),
            "{what}: is_ret0() is {}",
            TRANS_VALUE.is_ret0()
        );
        check_state_shape(&what, vtramp, to, value_target(to, vret0))?;
        let x = 21 + step as u32;
        calls += check_value(&TRANS_VALUE, x, value_of(to, x), 0..CPUS)
            .map_err(|e| format!("{what}: {e}"))?;
        vpairs += 1;
    }
    check_eq!(vpairs, VALUE_STATES.len() * (VALUE_STATES.len() - 1));

    println!(
        "transitions: TRANS_EFFECT {covered} (near/far/NULL/RET0), TRANS_VALUE {vpairs} (near/far/RET0); {updates} updates ({updates_with} through update_with), one sync each; {calls} calls on {CPUS} CPUs, direct and via pointer, all as expected"
    );
    println!(
        "transitions: near {near:#x} (b), far {far:#x} (nop + literal, {} MiB away), RET0 {:#x} (b)",
        (far as usize - tramp) >> 20,
        ret0.unwrap_or(0)
    );
    Ok(())
}

/// What a call does in a torn window, as the walk models it: a `B` goes
/// where it points, a NOP falls through to the literal (`ret` for NULL).
fn torn_runs(literal_of: State, branch_of: State, branch: Patch) -> State {
    if branch.branch_word() == insn::NOP {
        literal_of
    } else {
        branch_of
    }
}

/// What a call executes with the trampoline at `tramp` as its bytes read
/// now, found independently of how they were written: the destination of
/// the `B` after `bti c`, else (a NOP) the literal's, NULL when it is 0;
/// named by the state of `states` whose target (`target_of`) it is. (Not
/// `a64::decode`: it refuses a `B` that disagrees with the literal, which
/// is what a torn window is.)
fn executes(
    tramp: usize,
    states: &[State],
    target_of: impl Fn(State) -> u64,
) -> Result<State, String> {
    let bytes = window_bytes(tramp);
    let literal = u64::from_le_bytes(bytes[..8].try_into().expect("8 bytes"));
    let word =
        |offset: usize| u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
    check!(
        word(8) == insn::BTI_C,
        "the trampoline's entry holds {:#010x}, not bti c",
        word(8)
    );
    let branch = word(12);
    let (dest, via) = if branch == insn::NOP {
        if literal == 0 {
            return Ok(Null);
        }
        (literal, "nop + literal")
    } else {
        let dest = insn::decode_b(tramp as u64 + 4, branch)
            .ok_or_else(|| format!("the branch word {branch:#010x} is neither b nor nop"))?;
        (dest, "b")
    };
    states
        .iter()
        .copied()
        .find(|&s| s != Null && target_of(s) == dest)
        .ok_or_else(|| format!("the trampoline reaches {dest:#x} ({via}), the target of no state"))
}

/// Tally of torn-state calls.
#[derive(Default)]
struct Torn {
    combinations: usize,
    ran_old: usize,
    ran_new: usize,
    calls: usize,
}

impl Torn {
    /// For every ordered pair of distinct `states`, writes the four (old/new
    /// literal, old/new branch) windows into the trampoline at `tramp` and
    /// checks what the written bytes execute ([`executes`], with
    /// `target_of` naming the targets): the old or the new state, and the
    /// one the walk's model ([`torn_runs`]) predicts. Then it runs
    /// `call(runs, n, cpu)`: it calls the key on CPU 0 and `cpu` expecting
    /// the state `runs` and returns how many calls it made; `n` numbers the
    /// window.
    ///
    /// # Safety
    ///
    /// `tramp`'s window must belong to the calling test, and nothing else
    /// may call its key meanwhile.
    unsafe fn walk(
        &mut self,
        name: &str,
        tramp: usize,
        states: &[State],
        target_of: impl Fn(State) -> u64,
        plan_of: impl Fn(State) -> Result<Patch, Error>,
        mut call: impl FnMut(State, usize, usize) -> Result<usize, String>,
    ) -> TestResult {
        let plan = |s| plan_of(s).map_err(|e| format!("plan: {e}"));
        for &old in states {
            for &new in states.iter().filter(|&&s| s != old) {
                for (literal_of, branch_of) in [(old, old), (new, old), (old, new), (new, new)] {
                    let what = format!(
                        "{name} {old:?} -> {new:?}, literal of {literal_of:?}, branch of {branch_of:?}"
                    );
                    let (lit, br) = (plan(literal_of)?, plan(branch_of)?);
                    let window = Patch {
                        literal: lit.literal,
                        entry: br.entry,
                    };
                    // SAFETY: per this function's contract.
                    unsafe { write_window(tramp, window) }?;
                    let runs =
                        executes(tramp, states, &target_of).map_err(|e| format!("{what}: {e}"))?;
                    check!(
                        runs == old || runs == new,
                        "{what}: the window executes {runs:?}, neither the old nor the new state"
                    );
                    let predicted = torn_runs(literal_of, branch_of, br);
                    check!(
                        runs == predicted,
                        "{what}: the window executes {runs:?}, the walk predicts {predicted:?}"
                    );
                    let n = self.combinations;
                    let cpu = 1 + n % (CPUS - 1);
                    self.calls += call(runs, n, cpu).map_err(|e| format!("{what}: {e}"))?;
                    self.combinations += 1;
                    if runs == old {
                        self.ran_old += 1;
                    } else {
                        self.ran_new += 1;
                    }
                }
            }
        }
        Ok(())
    }
}

/// For every ordered pair of distinct states, each of the four (old/new
/// literal, old/new branch) windows a CPU may see while an update
/// propagates, written by hand: the bytes, decoded, execute the old or the
/// new state, the one a `B` or else the literal selects; calls (direct and
/// via pointer, on CPU 0 and on a secondary) have that state's effect and
/// never fault.
pub(crate) fn static_call_torn_states() -> TestResult {
    let mut torn = Torn::default();

    // The key without a result: 12 pairs x 4 = 48 windows.
    let tramp = TORN_EFFECT.trampoline_addr();
    let ret0 = ret0_of(&TORN_EFFECT)?;
    let target_of = |s: State| effect_target(s, ret0);
    let plan_of = |s: State| a64::plan(tramp as u64, target_of(s));
    let effect_call = |runs, n: usize, cpu| {
        let v = 5 + n as u64;
        check_effect(&TORN_EFFECT, v, effect_of(runs, v), [0, cpu])
    };
    // SAFETY: TORN_EFFECT's window belongs to this test, and nothing else
    // calls the key.
    unsafe {
        torn.walk(
            "TORN_EFFECT",
            tramp,
            &STATES,
            target_of,
            plan_of,
            effect_call,
        )
    }?;
    check_eq!(torn.combinations, 48);
    // Back to a consistent state, and the library agrees it is one.
    // SAFETY: as above.
    unsafe { write_window(tramp, plan_of(Near).map_err(|e| format!("plan: {e}"))?) }?;
    check_state_shape("TORN_EFFECT restored", tramp, Near, effect_target(Near, 0))?;
    set_effect(&TORN_EFFECT, Far, false).map_err(|e| format!("update after restore: {e}"))?;
    torn.calls += check_effect(&TORN_EFFECT, 3, effect_of(Far, 3), [0, 1])?;
    set_effect(&TORN_EFFECT, Near, false).map_err(|e| format!("update after restore: {e}"))?;
    torn.calls += check_effect(&TORN_EFFECT, 3, effect_of(Near, 3), [0, 1])?;
    let effect_windows = torn.combinations;

    // The key with a result: 6 pairs x 4 = 24 windows.
    let vtramp = TORN_VALUE.trampoline_addr();
    let vret0 = ret0_of(&TORN_VALUE)?;
    let vtarget_of = |s: State| value_target(s, vret0);
    let vplan_of = |s: State| a64::plan(vtramp as u64, vtarget_of(s));
    let value_call = |runs, n: usize, cpu| {
        let x = 7 + n as u32;
        check_value(&TORN_VALUE, x, value_of(runs, x), [0, cpu])
    };
    // SAFETY: TORN_VALUE's window belongs to this test, and nothing else
    // calls the key.
    unsafe {
        torn.walk(
            "TORN_VALUE",
            vtramp,
            &VALUE_STATES,
            vtarget_of,
            vplan_of,
            value_call,
        )
    }?;
    check_eq!(torn.combinations - effect_windows, 24);
    // SAFETY: as above, for TORN_VALUE.
    unsafe { write_window(vtramp, vplan_of(Near).map_err(|e| format!("plan: {e}"))?) }?;
    check_state_shape("TORN_VALUE restored", vtramp, Near, value_target(Near, 0))?;
    set_value(&TORN_VALUE, Far, true).map_err(|e| format!("update after restore: {e}"))?;
    torn.calls += check_value(&TORN_VALUE, 3, value_of(Far, 3), [0, 1])?;
    set_value(&TORN_VALUE, Near, true).map_err(|e| format!("update after restore: {e}"))?;
    torn.calls += check_value(&TORN_VALUE, 3, value_of(Near, 3), [0, 1])?;

    println!(
        "torn: {effect_windows} TORN_EFFECT + {} TORN_VALUE (literal, branch) windows written by hand and decoded; {} executed the old target, {} the new, none anything else; {} calls on cpu0 and cpu1..{}, 0 faults",
        torn.combinations - effect_windows,
        torn.ran_old,
        torn.ran_new,
        torn.calls,
        CPUS - 1
    );
    Ok(())
}

/// The error [`Faulty`] fails with.
const FAULTY: Error = Error::WriterFailed {
    what: "write (test writer failing on purpose)",
    errno: 77,
};

/// Wraps the kernel's writer: fails its `fail_at`-th write (from 0), and
/// with `lie` reports success for the others without writing.
struct Faulty {
    fail_at: usize,
    lie: bool,
    writes: AtomicUsize,
}

impl Faulty {
    fn new(fail_at: usize, lie: bool) -> Self {
        Faulty {
            fail_at,
            lie,
            writes: AtomicUsize::new(0),
        }
    }
}

// SAFETY: not a sound writer when `lie` is set, on purpose: it then reports
// success without storing, breaking the trait's promise, which the library's
// read-back must catch; it is only given to `BAD`, which nothing calls while
// it is in use. Otherwise it stores nothing on failure and delegates every
// write to the kernel's writer, which keeps the promise.
unsafe impl TextWriter for Faulty {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        if self.writes.fetch_add(1, Ordering::Relaxed) == self.fail_at {
            return Err(FAULTY);
        }
        if self.lie {
            return Ok(());
        }
        // SAFETY: the caller's contract is passed on unchanged.
        unsafe { patching::writer().write(addr, bytes) }
    }

    fn sync_cores(&self) -> Result<(), Error> {
        patching::writer().sync_cores()
    }
}

/// Bad input is refused and leaves the trampoline's 32 bytes as they were:
/// corrupted instruction words (with the offset of the bad word), writers
/// failing on the literal or on the branch store (the literal is rolled
/// back), a writer that does not write (read-back), an alias writer that
/// does not cover the trampoline, a misaligned trampoline or target.
pub(crate) fn static_call_bad_input() -> TestResult {
    let tramp = BAD.trampoline_addr();
    let window = tramp - 8;
    let pristine = window_bytes(tramp);
    let near = value_target(Near, 0);
    let far = value_target(Far, 0);
    // As assembled: no literal yet, a `b` to the key's init shim, and the
    // slot reporting the function itself.
    let t = decoded(tramp)?;
    check!(
        t.never_updated() && BAD.query().map(|f| f as usize as u64) == Some(near),
        "BAD as assembled: {t:?}, query {:?}",
        BAD.query().map(|f| f as usize as u64)
    );
    let unchanged = |what: &str| -> TestResult {
        let now = window_bytes(tramp);
        check!(
            now == pristine,
            "{what}: trampoline bytes changed: {now:02x?}, were {pristine:02x?}"
        );
        Ok(())
    };
    // After a first update that failed once it had published its literal:
    // as assembled but for the literal, which holds the current target
    // (and behaves the same: the `b` is taken). Checked, then put back to
    // 0 by hand for the next case.
    let mut published = pristine;
    published[..8].copy_from_slice(&near.to_le_bytes());
    let published_then_reset = |what: &str| -> TestResult {
        let now = window_bytes(tramp);
        check!(
            now == published,
            "{what}: expected the published literal {near:#x} beside the assembled bytes, found {now:02x?}"
        );
        check!(
            BAD.call(7) == value_of(Near, 7),
            "{what}: BAD does not call its near target"
        );
        // SAFETY: BAD's window belongs to this test; nothing calls BAD
        // meanwhile, and its `b` does not read the literal.
        unsafe { write_text(&[(window, &[0; 8])]) }?;
        unchanged(&format!("{what}, reset"))
    };

    // (a) Each instruction word corrupted in turn, by two different bits:
    // bit 31 turns the `b` into a `bl`.
    let mut corrupted = 0;
    for offset in (8..TRAMPOLINE_LEN).step_by(4) {
        let word = u32::from_le_bytes(pristine[offset..offset + 4].try_into().expect("4 bytes"));
        for bit in [0, 31] {
            let bad = word ^ (1 << bit);
            // SAFETY: BAD's window belongs to this test; nothing calls BAD
            // until the word is restored below.
            unsafe { write_text(&[(window + offset, &bad.to_le_bytes())]) }?;
            let before = window_bytes(tramp);
            let err = BAD.update(sc_far_value).map_err(Error::from);
            let expected = Error::UnrecognisedTrampoline {
                addr: window,
                offset,
                found: u64::from(bad),
            };
            check!(
                err == Err(expected),
                "word at offset {offset} with bit {bit} flipped ({bad:#010x}): update returned {}, expected Err({expected})",
                outcome(&err)
            );
            check!(
                window_bytes(tramp) == before,
                "the refused update (offset {offset}) wrote to the trampoline"
            );
            // SAFETY: as above; puts the original word back.
            unsafe { write_text(&[(window + offset, &word.to_le_bytes())]) }?;
            unchanged("restoring a corrupted word")?;
            corrupted += 1;
        }
    }

    // BAD was never updated, so an update first publishes its current
    // target in the literal (write 0), then writes the new literal (1) and
    // branch word (2).
    // (b) A writer failing on the publication (nothing written); one
    // failing on the new literal (two writes); one failing on the branch
    // word (the library writes the published literal back: four writes).
    // The published literal stays: a CPU shown the update's `nop` may be
    // about to load it.
    // (c) A writer that reports success without writing: the publication
    // does not read back, and nothing else is written.
    let mut writer_errors = [None; 4];
    for (i, (fail_at, lie, expected, writes)) in [
        (0, false, FAULTY, 1),
        (1, false, FAULTY, 2),
        (2, false, FAULTY, 4),
        (usize::MAX, true, Error::VerifyFailed { addr: window }, 1),
    ]
    .into_iter()
    .enumerate()
    {
        let w = Faulty::new(fail_at, lie);
        let err = BAD.update_with(sc_far_value, &w).map_err(Error::from);
        check!(
            err == Err(expected),
            "writer failing at write {fail_at} (lying: {lie}): update_with returned {}, expected Err({expected})",
            outcome(&err)
        );
        let made = w.writes.load(Ordering::Relaxed);
        check!(
            made == writes,
            "writer failing at write {fail_at} (lying: {lie}): {made} writes, expected {writes}"
        );
        let what = format!("writer failing at write {fail_at} (lying: {lie})");
        if fail_at == 0 || lie {
            unchanged(&what)?;
        } else {
            published_then_reset(&what)?;
        }
        writer_errors[i] = Some(expected);
    }

    // (d) Alias writers over part of the text only: one ending below the
    // window (the publication fails), one ending inside it (the literals
    // are written, the branch store fails, the published literal is
    // written back).
    let text = mmu::layout().text;
    for (covered, end) in [
        ("up to the window", window),
        ("the literal only", window + 8),
    ] {
        // SAFETY: the text's writable alias covers all of it, so this
        // prefix of it is mapped read-write at the same offset.
        let alias =
            unsafe { Alias::new(text.start, text.start + mmu::ALIAS_OFFSET, end - text.start) };
        let err = BAD.update_with(sc_far_value, &alias).map_err(Error::from);
        check!(
            matches!(err, Err(Error::WriterFailed { .. })),
            "Alias over the text {covered}: update_with returned {}, expected WriterFailed",
            outcome(&err)
        );
        let what = format!("Alias over the text {covered}");
        if end == window {
            unchanged(&what)?;
        } else {
            published_then_reset(&what)?;
        }
    }

    // (e) The backend itself, with a misaligned trampoline or target.
    let w = patching::writer();
    let mut misaligned = 0;
    for bad_tramp in [tramp + 2, tramp + 4, tramp + 12] {
        let _lock = patch_lock();
        // SAFETY: not a trampoline address, on purpose: the backend refuses
        // it by its alignment before reading or writing anything.
        let err = unsafe {
            Aarch64::retarget(
                bad_tramp,
                &Slot::new(core::ptr::null_mut()),
                far as usize,
                w,
                (),
            )
        };
        let expected = Error::MisalignedTrampoline {
            addr: bad_tramp,
            align: a64::WINDOW_ALIGN,
        };
        check!(
            err == Err(expected),
            "retarget of {bad_tramp:#x}: {}, expected Err({expected})",
            outcome(&err)
        );
        misaligned += 1;
    }
    for bad_target in [near + 2, far + 1, far + 3] {
        let _lock = patch_lock();
        // SAFETY: BAD's trampoline, with the patch lock held; the target is
        // no function, on purpose: it is refused before anything is written.
        let err = unsafe {
            Aarch64::retarget(
                tramp,
                &Slot::new(core::ptr::null_mut()),
                bad_target as usize,
                w,
                (),
            )
        };
        let expected = Error::MisalignedTarget {
            target: bad_target as usize,
        };
        check!(
            err == Err(expected),
            "retarget to {bad_target:#x}: {}, expected Err({expected})",
            outcome(&err)
        );
        misaligned += 1;
    }
    unchanged("misaligned retargets")?;

    // After all that, the key still works, on every CPU.
    BAD.update(sc_far_value)
        .map_err(|e| format!("final update: {e}"))?;
    check_value(&BAD, 9, value_of(Far, 9), 0..CPUS)?;
    BAD.update(sc_near_value)
        .map_err(|e| format!("final update: {e}"))?;
    check_value(&BAD, 9, value_of(Near, 9), 0..CPUS)?;
    // Once updated, the window holds the target in its literal and a `b`
    // straight to it (no longer the init shim).
    check_shape("BAD after updates", tramp, near, true)?;

    println!(
        "bad input: {corrupted} corrupted words refused as UnrecognisedTrampoline at their offset; writers failing on the publication, the literal, the branch, not writing: {}; Alias not covering the trampoline: WriterFailed x2; {misaligned} misaligned trampolines/targets refused; the 32 bytes unchanged every time but for a published literal",
        writer_errors
            .iter()
            .map(|e| match e {
                Some(Error::WriterFailed { .. }) => "WriterFailed",
                Some(Error::VerifyFailed { .. }) => "VerifyFailed",
                _ => "?",
            })
            .collect::<alloc::vec::Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// The kernel writer's replay record (`virt_kernel::patching`): an update's
/// two writes are replayed at its one sync; `REPLAY` writes between two
/// syncs are replayed too, but one more, or one longer than the record
/// holds, makes that sync fail with `REPLAY_OVERFLOW` (after synchronizing
/// and replaying what it has) instead of replaying part of them silently;
/// the next sync is clean. Every write puts back the bytes already there,
/// and the key works on every CPU afterwards.
pub(crate) fn static_call_replay_record() -> TestResult {
    use patching::{REPLAY, REPLAY_BYTES, REPLAY_OVERFLOW, replay_stats};
    let tramp = REPLAYED.trampoline_addr();
    let window = tramp - 8;
    let w = patching::writer();
    let delta = |before: patching::ReplayStats| {
        let now = replay_stats();
        (
            now.replayed - before.replayed,
            now.missed - before.missed,
            now.overflows - before.overflows,
        )
    };

    // An update replays its two writes (literal, branch word).
    let before = replay_stats();
    REPLAYED
        .update(sc_far_value)
        .map_err(|e| format!("update: {e}"))?;
    check!(
        delta(before) == (2, 0, 0),
        "an update: replayed/missed/overflows went up by {:?}, expected (2, 0, 0)",
        delta(before)
    );
    let calls = check_value(&REPLAYED, 4, value_of(Far, 4), 0..CPUS)?;

    // Aligned ranges of the window (distinct, so none is deduplicated),
    // each rewritten with the bytes it holds.
    let pristine = window_bytes(tramp);
    let ranges: alloc::vec::Vec<(usize, usize)> = [4, 8, 2, 1]
        .into_iter()
        .flat_map(|len| (0..TRAMPOLINE_LEN).step_by(len).map(move |o| (o, len)))
        .take(REPLAY + 1)
        .collect();
    check!(
        ranges.len() == REPLAY + 1 && TRAMPOLINE_LEN > REPLAY_BYTES,
        "cannot fill the record from one window: {} ranges, REPLAY_BYTES {REPLAY_BYTES}",
        ranges.len()
    );
    let rewrite = |ranges: &[(usize, usize)]| -> Result<(), Error> {
        let _lock = patch_lock();
        for &(offset, len) in ranges {
            // SAFETY: REPLAYED's window belongs to this test and nothing
            // calls the key meanwhile; the bytes are the ones already there.
            unsafe { w.write(window + offset, &pristine[offset..offset + len]) }?;
            a64::flush_icache_range(window + offset, len);
        }
        w.sync_cores()
    };
    let mut cases = alloc::vec::Vec::new();
    for (what, ranges, expect, replayed, missed) in [
        ("REPLAY writes", &ranges[..REPLAY], Ok(()), REPLAY, 0),
        (
            "REPLAY + 1 writes",
            &ranges[..],
            Err(REPLAY_OVERFLOW),
            REPLAY,
            1,
        ),
        (
            "one write of the whole window",
            &[(0, TRAMPOLINE_LEN)][..],
            Err(REPLAY_OVERFLOW),
            0,
            1,
        ),
        ("one write after the overflows", &ranges[..1], Ok(()), 1, 0),
    ] {
        let before = replay_stats();
        let got = rewrite(ranges);
        check!(
            got == expect,
            "{what} then sync: {}, expected {}",
            outcome(&got),
            outcome(&expect)
        );
        let overflows = usize::from(expect.is_err());
        check!(
            delta(before) == (replayed as u64, missed as u64, overflows as u64),
            "{what}: replayed/missed/overflows went up by {:?}, expected {:?}",
            delta(before),
            (replayed, missed, overflows)
        );
        check!(
            window_bytes(tramp) == pristine,
            "{what}: the trampoline's bytes changed"
        );
        cases.push(format!("{what}: {}", outcome(&got)));
    }
    let calls = calls + check_value(&REPLAYED, 5, value_of(Far, 5), 0..CPUS)?;
    REPLAYED
        .update(sc_near_value)
        .map_err(|e| format!("update back: {e}"))?;
    let calls = calls + check_value(&REPLAYED, 6, value_of(Near, 6), 0..CPUS)?;
    println!(
        "replay: an update's 2 writes replayed; {}; {calls} calls on {CPUS} CPUs as expected",
        cases.join("; ")
    );
    Ok(())
}

// The platform's clock implementations.
#[unsafe(no_mangle)]
fn sc_clock_coarse(scale: u32) -> u64 {
    u64::from(scale) * 1000
}

#[unsafe(no_mangle)]
fn sc_clock_fine(scale: u32) -> u64 {
    u64::from(scale) * 1000 + 7
}

/// `PLATFORM_CLOCK` is defined here and declared in `virt_kernel::hooks`
/// (the core kernel, which cannot depend on this crate). Updates through
/// the declaration are what the definition sees, and the reverse; the core
/// kernel's calls follow, on every CPU.
/// A key whose initial target is more than 128 MiB away: its assembled
/// `b` goes to a linker veneer, yet `query` reports the function, calls
/// reach it on every CPU, and updates work both ways (near, then far, then
/// near again). The key is `extern "C"`, so every call here is the crate's
/// own `bl` as well as a call through the key's pointer.
pub(crate) fn static_call_far_initial_target() -> TestResult {
    let tramp = C_FAR_INIT.trampoline_addr();
    let far = sc_c_far_value as extern "C" fn(u32) -> u64 as usize as u64;
    let near = sc_c_near_value as extern "C" fn(u32) -> u64 as usize as u64;
    let t = decoded(tramp)?;
    let veneer = match t.branch {
        Branch::B(dest) => dest,
        Branch::Nop => return Err("C_FAR_INIT: assembled without a b".into()),
    };
    check!(
        t.never_updated() && veneer != far && insn::encode_b(tramp as u64 + 4, far).is_none(),
        "C_FAR_INIT as assembled: {t:?}, far target {far:#x}"
    );
    check_eq!(C_FAR_INIT.query().map(|f| f as usize as u64), Some(far));
    let check = |what: &str, expect_add: u64| -> Result<usize, String> {
        check_calls(what, 5 + expect_add, 0..CPUS, || {
            Ok([C_FAR_INIT.call(5), C_FAR_INIT.trampoline()(5)])
        })
    };
    let mut calls = check("C_FAR_INIT(5) through the veneer", FAR)?;
    C_FAR_INIT
        .update(sc_c_near_value)
        .map_err(|e| format!("to near: {e}"))?;
    check_shape("C_FAR_INIT near", tramp, near, true)?;
    calls += check("C_FAR_INIT(5) near", NEAR)?;
    C_FAR_INIT
        .update(sc_c_far_value)
        .map_err(|e| format!("to far: {e}"))?;
    check_shape("C_FAR_INIT far", tramp, far, false)?;
    check_eq!(C_FAR_INIT.query().map(|f| f as usize as u64), Some(far));
    calls += check("C_FAR_INIT(5) far", FAR)?;
    C_FAR_INIT
        .update(sc_c_near_value)
        .map_err(|e| format!("back to near: {e}"))?;
    calls += check("C_FAR_INIT(5) near again", NEAR)?;
    println!(
        "far initial target: b to a veneer at {veneer:#x} for {far:#x}; query reports the function; \
         veneer -> near -> far -> near, {calls} calls on {CPUS} CPUs"
    );
    Ok(())
}

pub(crate) fn static_call_declared_across_crates() -> TestResult {
    let declared: &StaticCall<ValueFn> = &hooks::PLATFORM_CLOCK;
    let defined: &StaticCall<ValueFn> = &PLATFORM_CLOCK;
    check!(
        core::ptr::eq(declared, defined),
        "the declaration names another key object ({:p}) than the definition ({:p})",
        declared,
        defined
    );
    check_eq!(declared.trampoline_addr(), defined.trampoline_addr());
    check_eq!(declared.name(), "PLATFORM_CLOCK");
    let tramp = defined.trampoline_addr();
    let coarse = addr(sc_clock_coarse as ValueFn);
    let fine = addr(sc_clock_fine as ValueFn);
    let far = addr(sc_far_value as ValueFn);

    // Every CPU: the core kernel's call, a call through the declaration and
    // one through the definition all return `expect(x)`.
    let all_calls = |what: &str, expect: fn(u32) -> u64| -> TestResult {
        for cpu in 0..CPUS {
            let x = 3 + cpu as u32;
            let got = on_cpu(cpu, || {
                Ok([
                    hooks::read_clock(x),
                    hooks::PLATFORM_CLOCK.call(x),
                    black_box(hooks::PLATFORM_CLOCK.trampoline())(x),
                    PLATFORM_CLOCK.call(x),
                ])
            })?;
            check!(
                got == [expect(x); 4],
                "{what}: cpu{cpu}: hooks::read_clock, declared call, declared pointer, defined call returned {got:?}, expected {}",
                expect(x)
            );
        }
        Ok(())
    };
    all_calls("initially", sc_clock_coarse)?;

    // Through the declaration, to another near target and to a far one.
    hooks::PLATFORM_CLOCK
        .update(sc_clock_fine)
        .map_err(|e| format!("update through the declaration: {e}"))?;
    check!(
        PLATFORM_CLOCK.query().map(addr) == Some(fine),
        "the definition does not see the declaration's update"
    );
    check_shape("PLATFORM_CLOCK (fine)", tramp, fine, true)?;
    all_calls(
        "after update to sc_clock_fine through the declaration",
        sc_clock_fine,
    )?;
    hooks::PLATFORM_CLOCK
        .update_with(sc_far_value, patching::writer())
        .map_err(|e| format!("update_with through the declaration: {e}"))?;
    check!(
        PLATFORM_CLOCK.query().map(addr) == Some(far),
        "the definition does not see the declaration's far update"
    );
    check_shape("PLATFORM_CLOCK (far)", tramp, far, false)?;
    all_calls(
        "after update to the far target through the declaration",
        |x| value_of(Far, x),
    )?;

    // RET0 through the declaration uses the definition's return-zero function.
    hooks::PLATFORM_CLOCK
        .update_ret0()
        .map_err(|e| format!("update_ret0 through the declaration: {e}"))?;
    check!(
        PLATFORM_CLOCK.is_ret0(),
        "the definition is not RET0 after update_ret0 through the declaration"
    );
    all_calls("RET0", |_| 0)?;

    // Back through the definition: the declaration sees it.
    PLATFORM_CLOCK
        .update(sc_clock_coarse)
        .map_err(|e| format!("update through the definition: {e}"))?;
    check!(
        hooks::PLATFORM_CLOCK.query().map(addr) == Some(coarse),
        "the declaration does not see the definition's update"
    );
    check_shape("PLATFORM_CLOCK (coarse)", tramp, coarse, true)?;
    all_calls("after update back through the definition", sc_clock_coarse)?;
    println!(
        "cross-crate: PLATFORM_CLOCK defined in the tests binary, declared in virt_kernel::hooks, one key at {tramp:#x}: coarse -> fine -> far -> RET0 -> coarse, updates from either side seen by the other on {CPUS} CPUs"
    );
    Ok(())
}
