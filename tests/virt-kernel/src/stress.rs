//! SMP stress of static calls: CPUs 1.. call two keys in a loop while CPU 0
//! retargets them through every transition among near, far, NULL and RET0
//! ([`CYCLE`]), again and again. Shared by the test suite (which checks the counters) and the demo
//! (which prints them).
//!
//! Every call's observation tells the four states apart ([`Seen`]): the near
//! and far targets tag a per-CPU cell (`HOOK`) or their result (`TICK`); a
//! `HOOK` call that reached no target is told apart by `x16`, which the
//! worker sets to [`X16_MARK`] before the call and reads back after it: the
//! trampoline's NULL path (`ldr x16, literal; cbz x16, ret`) leaves 0 there,
//! RET0 (`b` to the return-zero function, which only returns) leaves the
//! mark, or the return-zero function's address when reached through the
//! literal. `TICK` has a result and so no NULL: its RET0 returns 0.
//!
//! The ordering check uses update steps: CPU 0 announces step `s` in
//! `STARTED` before its first write, and publishes it in [`generation`] only
//! after both updates of step `s` have returned (and so after the writer's
//! sync IPI). A worker reads the generation `g0` before a call and `STARTED`
//! (`s1`) after it; what the call reached must be the state of a step in
//! `g0..=s1`: between updates that is the one current state, and while
//! step `g0 + 1` is being installed, the old and the new state of that
//! transition. Anything else counts as *stale* (an older state: the call
//! started after its replacement was published); the test demands none.
//! Consecutive states of [`CYCLE`] differ in what each call observes, so
//! every one of the 12 transitions can show a stale call. (While an update
//! is in progress the state before the old one is accepted too when it is
//! the new one; in [`CYCLE`] that happens once, far -> RET0 -> far, since no
//! cycle through all 12 transitions avoids it; between updates it is not.)

use core::arch::asm;
use core::fmt;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};

use crate::exceptions::MAX_CPUS;
use crate::{cpu, smp};

static_call::static_call! {
    /// A hook without a result, walked through [`CYCLE`]. Its targets
    /// report which of them ran (and with which argument) in `LAST_HOOK`.
    /// `extern "C"`, so the worker's own `bl`/`blr` to its trampoline (which
    /// read `x16` back) are calls of a C-ABI function.
    pub static HOOK: extern "C" fn(u32) = hook_near;
    /// A call with a result: near -> far -> RET0 -> RET0 -> near (a key
    /// with a result cannot be NULL). The result says which target ran.
    pub static TICK: fn(u32) -> u64 = tick_near;
}

// HOOK's trampoline as a symbol, for the worker's `bl`.
// SAFETY: `static_call!` emits a key's trampoline as the global symbol
// `__SCT__<key>`, which branches to an `extern "C" fn(u32)` of HOOK's or
// returns (`run` checks that it is `HOOK.trampoline_addr()`).
unsafe extern "C" {
    #[link_name = "__SCT__HOOK"]
    safe fn hook_trampoline(x: u32);
}

/// What `x16` holds when a worker's `HOOK` call starts.
pub const X16_MARK: u64 = 0x5a5a_0000_0000_a5a5;

/// What a call reached, as a worker observes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Seen {
    /// The near target (in the kernel's text, reached by `B`).
    Near = 0,
    /// The far target (192 MiB away, reached through the literal).
    Far = 1,
    /// No target: the trampoline's NULL path (`HOOK` only).
    Null = 2,
    /// The key's return-zero function.
    Ret0 = 3,
}

/// The number of [`Seen`] values (the counters' width).
pub const SEEN: usize = 4;

/// The states CPU 0 cycles through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Both keys on their near target.
    Near,
    /// Both keys on their far target.
    Far,
    /// `HOOK` NULL, `TICK` RET0.
    Null,
    /// Both keys RET0.
    Ret0,
}

/// The cycle, indexed by step modulo its length; step 0 is the initial
/// state. Consecutive entries (wrapping around) take every ordered pair of
/// distinct states once, so the stress crosses all 12 transitions.
pub const CYCLE: [State; 12] = [
    State::Near,
    State::Far,
    State::Null,
    State::Ret0,
    State::Near,
    State::Null,
    State::Far,
    State::Ret0,
    State::Far,
    State::Near,
    State::Ret0,
    State::Null,
];

impl State {
    fn of_step(step: usize) -> State {
        CYCLE[step % CYCLE.len()]
    }

    /// What a `HOOK` call observes in this state: each state its own.
    pub fn hook(self) -> Seen {
        match self {
            State::Near => Seen::Near,
            State::Far => Seen::Far,
            State::Null => Seen::Null,
            State::Ret0 => Seen::Ret0,
        }
    }

    /// What a `TICK` call observes in this state (RET0 for NULL: `TICK`
    /// has a result).
    pub fn tick(self) -> Seen {
        match self {
            State::Near => Seen::Near,
            State::Far => Seen::Far,
            State::Null | State::Ret0 => Seen::Ret0,
        }
    }
}

const NEAR_TAG: u64 = 0x1_0000_0000;
const FAR_TAG: u64 = 0x2_0000_0000;

/// Per CPU: what the last `HOOK` target that ran on it reported.
static LAST_HOOK: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// This CPU's number without calling into the kernel's text, so the far
/// targets stay self-contained (a call from there would need a veneer).
#[inline(always)]
fn this_cpu() -> usize {
    let mpidr: u64;
    // SAFETY: reading MPIDR_EL1 has no side effects.
    unsafe { asm!("mrs {}, mpidr_el1", out(reg) mpidr, options(nomem, nostack, preserves_flags)) };
    (mpidr & 0xff) as usize % MAX_CPUS
}

// Exported under one symbol: Rust may otherwise emit a local copy of a small
// function per codegen unit, and then two `hook_near as usize` differ.
#[unsafe(no_mangle)]
extern "C" fn hook_near(x: u32) {
    LAST_HOOK[this_cpu()].store(NEAR_TAG | u64::from(x), Ordering::Relaxed);
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".far_text.hook_far")]
extern "C" fn hook_far(x: u32) {
    LAST_HOOK[this_cpu()].store(FAR_TAG | u64::from(x), Ordering::Relaxed);
}

// Exported under one symbol: Rust may otherwise emit a local copy of a small
// function per codegen unit, and then two `tick_near as usize` differ.
#[unsafe(no_mangle)]
fn tick_near(x: u32) -> u64 {
    NEAR_TAG | u64::from(x)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".far_text.tick_far")]
fn tick_far(x: u32) -> u64 {
    FAR_TAG | u64::from(x)
}

/// Addresses of the targets, for reports.
pub fn targets() -> [(&'static str, usize); 4] {
    [
        ("hook_near", hook_near as extern "C" fn(u32) as usize),
        ("hook_far", hook_far as extern "C" fn(u32) as usize),
        ("tick_near", tick_near as fn(u32) -> u64 as usize),
        ("tick_far", tick_far as fn(u32) -> u64 as usize),
    ]
}

/// Per-CPU counters, all zero before a run.
pub struct Counters {
    /// Calls made (each iteration calls both keys; counted once).
    pub calls: [AtomicU64; MAX_CPUS],
    /// `HOOK` calls by what they reached ([`Seen`] as index), per CPU.
    pub hook_seen: [[AtomicU64; SEEN]; MAX_CPUS],
    /// `TICK` calls by what they reached, per CPU.
    pub tick_seen: [[AtomicU64; SEEN]; MAX_CPUS],
    /// Calls that reached the state of no step in `g0..=s1` (see the module
    /// docs): a state replaced before the call started.
    pub stale: [AtomicU64; MAX_CPUS],
    /// Calls whose target reported a wrong argument or result, or that
    /// left `x16` neither 0, the mark nor the return-zero function.
    pub wrong: [AtomicU64; MAX_CPUS],
}

/// The counters of the current run.
pub static COUNTERS: Counters = Counters {
    calls: [const { AtomicU64::new(0) }; MAX_CPUS],
    hook_seen: [const { [const { AtomicU64::new(0) }; SEEN] }; MAX_CPUS],
    tick_seen: [const { [const { AtomicU64::new(0) }; SEEN] }; MAX_CPUS],
    stale: [const { AtomicU64::new(0) }; MAX_CPUS],
    wrong: [const { AtomicU64::new(0) }; MAX_CPUS],
};

/// A stale call, for diagnosis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleCall {
    /// `"HOOK"` or `"TICK"`.
    pub key: &'static str,
    /// The generation read before the call.
    pub g0: usize,
    /// The step announced when the call had returned.
    pub s1: usize,
    /// What the call reached.
    pub seen: Seen,
}

impl fmt::Display for StaleCall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (key, g0, s1) = (self.key, self.g0, self.s1);
        let expect = |step: usize| match key {
            "HOOK" => State::of_step(step).hook(),
            _ => State::of_step(step).tick(),
        };
        write!(
            f,
            "{key} reached {:?} in steps {g0}..={s1}, where it may only reach {:?}",
            self.seen,
            (g0..=s1.min(g0 + 3))
                .map(expect)
                .collect::<alloc::vec::Vec<_>>()
        )?;
        if g0 > 0 {
            let before = State::of_step(g0 - 1);
            write!(
                f,
                " (step {g0} is {:?} -> {:?})",
                before,
                State::of_step(g0)
            )?;
        }
        Ok(())
    }
}

/// Per CPU: the first stale call, packed as `g0 << 32 | s1 << 8 | seen << 4
/// | key` (key 0 = `HOOK`, 1 = `TICK`); read with [`first_stale`].
static FIRST_STALE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// The first stale call `cpu` made in the last run, if any.
pub fn first_stale(cpu: usize) -> Option<StaleCall> {
    if COUNTERS.stale[cpu].load(Ordering::SeqCst) == 0 {
        return None;
    }
    let f = FIRST_STALE[cpu].load(Ordering::SeqCst);
    let seen = match (f >> 4) & 0xf {
        0 => Seen::Near,
        1 => Seen::Far,
        2 => Seen::Null,
        _ => Seen::Ret0,
    };
    Some(StaleCall {
        key: if f & 0xf == 0 { "HOOK" } else { "TICK" },
        g0: (f >> 32) as usize,
        s1: ((f >> 8) & 0xff_ffff) as usize,
        seen,
    })
}

/// The step CPU 0 last completed (updates returned).
static GENERATION: AtomicUsize = AtomicUsize::new(0);
/// The step CPU 0 is installing or last installed: stored before its
/// first write.
static STARTED: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
static WORKERS_DONE: AtomicUsize = AtomicUsize::new(0);
/// The address of `HOOK`'s return-zero function (`x16` after a RET0 call
/// through the literal), set by `run`.
static HOOK_RET0: AtomicUsize = AtomicUsize::new(0);

/// The last step CPU 0 has completed.
pub fn generation() -> usize {
    GENERATION.load(Ordering::Acquire)
}

/// Whether a call that started at generation `g0` and returned with step
/// `s1` announced may have reached `seen`, `expect` mapping a state to what
/// the key's call observes in it.
fn allowed(seen: Seen, g0: usize, s1: usize, expect: fn(State) -> Seen) -> bool {
    (g0..=s1).any(|step| expect(State::of_step(step)) == seen)
}

/// What a `HOOK` call reached: its targets tag `LAST_HOOK`; if it stayed 0,
/// `x16` says NULL (0) or RET0 (the mark, or the return-zero function when
/// reached through the literal).
fn classify_hook(last: u64, x16: u64, x: u32) -> Option<Seen> {
    match last {
        0 if x16 == 0 => Some(Seen::Null),
        0 if x16 == X16_MARK || x16 == HOOK_RET0.load(Ordering::Relaxed) as u64 => Some(Seen::Ret0),
        v if v == NEAR_TAG | u64::from(x) => Some(Seen::Near),
        v if v == FAR_TAG | u64::from(x) => Some(Seen::Far),
        _ => None,
    }
}

/// What a `TICK` call reached, by its result.
fn classify_tick(value: u64, x: u32) -> Option<Seen> {
    match value {
        0 => Some(Seen::Ret0),
        v if v == NEAR_TAG | u64::from(x) => Some(Seen::Near),
        v if v == FAR_TAG | u64::from(x) => Some(Seen::Far),
        _ => None,
    }
}

/// Calls `HOOK` with `x`, by `bl` to its trampoline or (`indirect`) by a
/// BTI-checked `blr` to the trampoline's address, with `x16` set to
/// [`X16_MARK`]; returns `x16` after the call.
#[inline(always)]
fn call_hook(x: u32, indirect: bool) -> u64 {
    let x16: u64;
    if indirect {
        let f = black_box(HOOK.trampoline()) as usize;
        // SAFETY: `f` is HOOK's trampoline, which branches to an
        // `extern "C" fn(u32)` or returns; the argument is in `x0` as the C
        // ABI puts it, and `clobber_abi("C")` declares every register the
        // callee may change (including `x30`, set by `blr`), except `x16`,
        // which is an explicit output.
        unsafe {
            asm!(
                "blr {f}",
                f = in(reg) f,
                inout("x0") u64::from(x) => _,
                inout("x16") X16_MARK => x16,
                clobber_abi("C"),
            )
        };
    } else {
        // SAFETY: as above, with a direct `bl` to the same trampoline
        // (checked in `run` to be `HOOK.trampoline_addr()`).
        unsafe {
            asm!(
                "bl {t}",
                t = sym hook_trampoline,
                inout("x0") u64::from(x) => _,
                inout("x16") X16_MARK => x16,
                clobber_abi("C"),
            )
        };
    }
    x16
}

/// The loop each worker CPU runs until [`stop`].
fn worker(cpu: usize) {
    let c = &COUNTERS;
    let mut x: u32 = cpu as u32;
    let mut i: u64 = 0;
    while !STOP.load(Ordering::Relaxed) {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345) & 0xffff;
        // Half the calls go through the trampoline's address as a plain fn
        // pointer (a BTI-checked BLR to its `bti c`), half are direct calls.
        let indirect = i % 2 == 1;
        let g0 = GENERATION.load(Ordering::Acquire);
        LAST_HOOK[cpu].store(0, Ordering::Relaxed);
        let x16 = call_hook(x, indirect);
        let hook = LAST_HOOK[cpu].load(Ordering::Relaxed);
        let tick = if indirect {
            black_box(TICK.trampoline())(x)
        } else {
            TICK.call(x)
        };
        // Order what the calls read (the literals, `LAST_HOOK`) before the
        // read of the announced step: CPU 0 announces step `s` (then a
        // barrier) before writing its targets, so a call that reached one
        // of them reads `s` or later here.
        fence(Ordering::SeqCst);
        let s1 = STARTED.load(Ordering::Acquire);
        let observations = [
            (
                0,
                classify_hook(hook, x16, x),
                State::hook as fn(State) -> Seen,
            ),
            (1, classify_tick(tick, x), State::tick),
        ];
        for (key, seen, expect) in observations {
            let Some(seen) = seen else {
                c.wrong[cpu].fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let counts = if key == 0 {
                &c.hook_seen[cpu]
            } else {
                &c.tick_seen[cpu]
            };
            counts[seen as usize].fetch_add(1, Ordering::Relaxed);
            // A stale call: count it, keep the first one for diagnosis.
            if !allowed(seen, g0, s1, expect) && c.stale[cpu].fetch_add(1, Ordering::Relaxed) == 0 {
                FIRST_STALE[cpu].store(
                    (g0 as u64) << 32 | (s1 as u64 & 0xff_ffff) << 8 | (seen as u64) << 4 | key,
                    Ordering::Relaxed,
                );
            }
        }
        c.calls[cpu].fetch_add(1, Ordering::Relaxed);
        i += 1;
    }
    WORKERS_DONE.fetch_add(1, Ordering::SeqCst);
}

/// A trampoline's patchable words, read from its executable mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrampolineView {
    /// The trampoline's entry address.
    pub entry: usize,
    /// The literal at `entry - 8`: always the current target (0 = NULL).
    pub literal: u64,
    /// The word after `bti c`.
    pub word: u32,
}

/// Encoding of NOP.
const NOP: u32 = 0xd503_201f;

impl TrampolineView {
    /// Reads the trampoline at `entry`.
    pub fn read(entry: usize) -> Self {
        // SAFETY: `entry` is a trampoline in the kernel's text, which is
        // mapped readable; the literal and the word are naturally aligned
        // and only ever written with single-copy-atomic stores.
        unsafe {
            TrampolineView {
                entry,
                literal: core::ptr::read_volatile((entry - 8) as *const u64),
                word: core::ptr::read_volatile((entry + 4) as *const u32),
            }
        }
    }

    /// The direct branch's destination, if the word is a `B`.
    pub fn branch(&self) -> Option<usize> {
        if self.word & 0xfc00_0000 != 0x1400_0000 {
            return None;
        }
        // imm26, sign-extended, in words, relative to the B itself.
        let offset = (((self.word & 0x03ff_ffff) << 6) as i32 >> 6) as isize * 4;
        Some((self.entry as isize + 4 + offset) as usize)
    }

    /// Whether the word is a NOP (the call goes through the literal).
    pub fn is_nop(&self) -> bool {
        self.word == NOP
    }
}

impl fmt::Display for TrampolineView {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[literal {:#x}] bti c; ", self.literal)?;
        match self.branch() {
            Some(dest) => write!(f, "b {dest:#x}")?,
            None if self.is_nop() => write!(f, "nop")?,
            None => write!(f, ".word {:#010x}", self.word)?,
        }
        let path = if self.literal == 0 {
            "NULL: cbz -> ret"
        } else if self.is_nop() {
            "via literal: ldr x16; br x16"
        } else {
            "direct branch"
        };
        write!(f, "; ldr x16; cbz; br x16; ret  ({path})")
    }
}

/// One step CPU 0 performed, for reports.
pub struct Step {
    /// The step number (1-based).
    pub step: usize,
    /// The state it moved to.
    pub state: State,
    /// `HOOK`'s trampoline before and after.
    pub hook: (TrampolineView, TrampolineView),
    /// `TICK`'s trampoline before and after.
    pub tick: (TrampolineView, TrampolineView),
}

/// Problems found while driving the stress run.
pub type StressResult = Result<(), alloc::string::String>;

fn apply(state: State) -> Result<(), static_call::UpdateError> {
    match state {
        State::Near => {
            HOOK.update(hook_near)?;
            TICK.update(tick_near)
        }
        State::Far => {
            HOOK.update(hook_far)?;
            TICK.update(tick_far)
        }
        State::Null => {
            HOOK.update_null()?;
            TICK.update_ret0()
        }
        State::Ret0 => {
            HOOK.update_ret0()?;
            TICK.update_ret0()
        }
    }
}

/// Checks a key's trampoline after an update to `expect` (`None` = NULL):
/// the literal always holds the target; the word is `B target` when in
/// reach and a NOP otherwise.
fn check_trampoline(name: &str, view: &TrampolineView, expect: Option<usize>) -> StressResult {
    let expect = expect.unwrap_or(0);
    if view.literal as usize != expect {
        return Err(alloc::format!(
            "{name}: literal {:#x}, expected {expect:#x}",
            view.literal
        ));
    }
    let reach = 128 << 20;
    let in_reach = expect != 0 && expect.abs_diff(view.entry + 4) < reach;
    match (in_reach, view.branch()) {
        (true, Some(dest)) if dest == expect => Ok(()),
        (false, None) if view.is_nop() => Ok(()),
        _ => Err(alloc::format!("{name}: unexpected trampoline {view}")),
    }
}

/// Runs the stress: starts the workers on CPUs `1..cpus`, performs `steps`
/// retargets of both keys (waiting after each until every worker has made
/// `calls_per_step` more calls, at most `step_timeout_ms`), reports each
/// step to `report`, then stops the workers.
pub fn run(
    cpus: usize,
    steps: usize,
    calls_per_step: u64,
    step_timeout_ms: u64,
    mut report: impl FnMut(&Step),
) -> StressResult {
    STOP.store(false, Ordering::SeqCst);
    WORKERS_DONE.store(0, Ordering::SeqCst);
    let direct = hook_trampoline as extern "C" fn(u32) as usize;
    if direct != HOOK.trampoline_addr() {
        return Err(alloc::format!(
            "__SCT__HOOK is at {direct:#x}, HOOK's trampoline at {:#x}",
            HOOK.trampoline_addr()
        ));
    }
    // HOOK's return-zero function: what `x16` holds after a RET0 call
    // through the literal.
    HOOK.update_ret0()
        .map_err(|e| alloc::format!("initial update_ret0: {e}"))?;
    let ret0 = HOOK.query().map_or(0, |f| f as usize);
    HOOK_RET0.store(ret0, Ordering::SeqCst);
    if ret0 == 0 || ret0 as u64 == X16_MARK {
        return Err(alloc::format!(
            "HOOK's return-zero function is at {ret0:#x}"
        ));
    }
    apply(State::Near).map_err(|e| alloc::format!("initial update: {e}"))?;
    STARTED.store(0, Ordering::SeqCst);
    GENERATION.store(0, Ordering::SeqCst);
    for cpu in 1..cpus {
        if !smp::post(cpu, worker) {
            return Err(alloc::format!("cpu{cpu} is busy"));
        }
    }
    let mut result = Ok(());
    for step in 1..=steps {
        let state = State::of_step(step);
        let before = (
            TrampolineView::read(HOOK.trampoline_addr()),
            TrampolineView::read(TICK.trampoline_addr()),
        );
        // Announce the step before its first write: a worker that reaches
        // the new target then reads the step (see `worker`).
        STARTED.store(step, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if let Err(e) = apply(state) {
            result = Err(alloc::format!(
                "step {step} ({state:?}): update failed: {e}"
            ));
            break;
        }
        GENERATION.store(step, Ordering::Release);
        let after = (
            TrampolineView::read(HOOK.trampoline_addr()),
            TrampolineView::read(TICK.trampoline_addr()),
        );
        let (hook_target, tick_target) = match state {
            State::Near => (
                Some(hook_near as extern "C" fn(u32) as usize),
                tick_near as fn(u32) -> u64 as usize,
            ),
            State::Far => (
                Some(hook_far as extern "C" fn(u32) as usize),
                tick_far as fn(u32) -> u64 as usize,
            ),
            State::Null => (None, TICK.query().map_or(0, |f| f as usize)),
            State::Ret0 => (
                HOOK.query().map(|f| f as usize),
                TICK.query().map_or(0, |f| f as usize),
            ),
        };
        let checks = [
            check_trampoline("HOOK", &after.0, hook_target),
            check_trampoline("TICK", &after.1, Some(tick_target)),
            match state {
                State::Null if HOOK.query().is_some() => {
                    Err("HOOK.query() is not None after update_null".into())
                }
                State::Null | State::Ret0 if !TICK.is_ret0() => Err("TICK is not RET0".into()),
                State::Ret0 if !HOOK.is_ret0() => Err("HOOK is not RET0".into()),
                _ => Ok(()),
            },
        ];
        if let Some(Err(e)) = checks.into_iter().find(|c| c.is_err()) {
            result = Err(alloc::format!("step {step} ({state:?}): {e}"));
            break;
        }
        let base: [u64; MAX_CPUS] =
            core::array::from_fn(|c| COUNTERS.calls[c].load(Ordering::Relaxed));
        let progressed = cpu::spin_until(step_timeout_ms, || {
            (1..cpus).all(|c| COUNTERS.calls[c].load(Ordering::Relaxed) >= base[c] + calls_per_step)
        });
        report(&Step {
            step,
            state,
            hook: (before.0, after.0),
            tick: (before.1, after.1),
        });
        if !progressed {
            result = Err(alloc::format!(
                "step {step}: workers made fewer than {calls_per_step} calls in {step_timeout_ms} ms"
            ));
            break;
        }
    }
    STOP.store(true, Ordering::SeqCst);
    let stopped = cpu::spin_until(2000, || WORKERS_DONE.load(Ordering::SeqCst) >= cpus - 1);
    result?;
    if !stopped {
        return Err("workers did not stop".into());
    }
    Ok(())
}
