//! SMP stress of static calls: CPUs 1.. call two keys in a loop while CPU 0
//! retargets them through every transition among near, far, NULL and RET0
//! ([`CYCLE`]), again and again. Shared by the test suite (which checks the counters) and the demo
//! (which prints them).
//!
//! The ordering check uses update generations: CPU 0 publishes step `s` in
//! [`generation`] only after both updates of step `s` have returned (and so
//! after the writer's sync IPI). A worker reads the generation `g0` before a
//! call and `g1` after it; the target that ran must belong to a step in
//! `g0..=g1 + 1` (`g1 + 1`: an update in progress may already be visible).
//! A call that started after step `s` was published but reached an older
//! target counts as *stale*; the test demands none.

use core::arch::asm;
use core::fmt;
use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use crate::exceptions::MAX_CPUS;
use crate::{cpu, smp};

static_call::static_call! {
    /// A hook without a result, walked through [`CYCLE`]. Its
    /// targets report which of them ran (and with which argument) in
    /// `LAST_HOOK`.
    pub static HOOK: fn(u32) = hook_near;
    /// A call with a result: near -> far -> RET0 -> RET0 -> near (a key
    /// with a result cannot be NULL). The result says which target ran.
    pub static TICK: fn(u32) -> u64 = tick_near;
}

/// Which target ran, as a worker observes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Seen {
    /// The near target (in the kernel's text, reached by `B`).
    Near = 0,
    /// The far target (192 MiB away, reached through the literal).
    Far = 1,
    /// No target: a NULL or RET0 key.
    Nothing = 2,
}

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

    /// What a call observes in this state.
    pub fn seen(self) -> Seen {
        match self {
            State::Near => Seen::Near,
            State::Far => Seen::Far,
            State::Null | State::Ret0 => Seen::Nothing,
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
fn hook_near(x: u32) {
    LAST_HOOK[this_cpu()].store(NEAR_TAG | u64::from(x), Ordering::Relaxed);
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".far_text.hook_far")]
fn hook_far(x: u32) {
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
        ("hook_near", hook_near as fn(u32) as usize),
        ("hook_far", hook_far as fn(u32) as usize),
        ("tick_near", tick_near as fn(u32) -> u64 as usize),
        ("tick_far", tick_far as fn(u32) -> u64 as usize),
    ]
}

/// Per-CPU counters, all zero before a run.
pub struct Counters {
    /// Calls made (each iteration calls both keys; counted once).
    pub calls: [AtomicU64; MAX_CPUS],
    /// `HOOK` calls by what ran, per CPU.
    pub hook_seen: [[AtomicU64; 3]; MAX_CPUS],
    /// `TICK` calls by what ran, per CPU.
    pub tick_seen: [[AtomicU64; 3]; MAX_CPUS],
    /// Calls that reached a target older than the generation read before.
    pub stale: [AtomicU64; MAX_CPUS],
    /// Calls whose target reported a wrong argument or result.
    pub wrong: [AtomicU64; MAX_CPUS],
}

/// The counters of the current run.
pub static COUNTERS: Counters = Counters {
    calls: [const { AtomicU64::new(0) }; MAX_CPUS],
    hook_seen: [const { [const { AtomicU64::new(0) }; 3] }; MAX_CPUS],
    tick_seen: [const { [const { AtomicU64::new(0) }; 3] }; MAX_CPUS],
    stale: [const { AtomicU64::new(0) }; MAX_CPUS],
    wrong: [const { AtomicU64::new(0) }; MAX_CPUS],
};

/// Per CPU: the first stale call, packed as g0 << 32 | g1 << 8 | seen << 4 |
/// tag (for diagnosis).
pub static FIRST_STALE: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// The step CPU 0 last completed (updates returned).
static GENERATION: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
static WORKERS_DONE: AtomicUsize = AtomicUsize::new(0);

/// The last step CPU 0 has completed.
pub fn generation() -> usize {
    GENERATION.load(Ordering::Acquire)
}

fn allowed(seen: Seen, g0: usize, g1: usize) -> bool {
    (g0..=g1 + 1).any(|step| State::of_step(step).seen() == seen)
}

fn classify(value: u64, x: u32) -> Option<Seen> {
    match value {
        0 => Some(Seen::Nothing),
        v if v == NEAR_TAG | u64::from(x) => Some(Seen::Near),
        v if v == FAR_TAG | u64::from(x) => Some(Seen::Far),
        _ => None,
    }
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
        if indirect {
            black_box(HOOK.trampoline())(x);
        } else {
            HOOK.call(x);
        }
        let hook = LAST_HOOK[cpu].load(Ordering::Relaxed);
        let tick = if indirect {
            black_box(TICK.trampoline())(x)
        } else {
            TICK.call(x)
        };
        let g1 = GENERATION.load(Ordering::Acquire);
        for (value, seen_counts) in [(hook, &c.hook_seen[cpu]), (tick, &c.tick_seen[cpu])] {
            match classify(value, x) {
                Some(seen) => {
                    seen_counts[seen as usize].fetch_add(1, Ordering::Relaxed);
                    // A stale call: count it, keep the first one for diagnosis.
                    if !allowed(seen, g0, g1) && c.stale[cpu].fetch_add(1, Ordering::Relaxed) == 0 {
                        FIRST_STALE[cpu].store(
                            (g0 as u64) << 32
                                | (g1 as u64) << 8
                                | (seen as u64) << 4
                                | (value >> 32),
                            Ordering::Relaxed,
                        );
                    }
                }
                None => {
                    c.wrong[cpu].fetch_add(1, Ordering::Relaxed);
                }
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
    apply(State::Near).map_err(|e| alloc::format!("initial update: {e}"))?;
    GENERATION.store(0, Ordering::Release);
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
                Some(hook_near as fn(u32) as usize),
                tick_near as fn(u32) -> u64 as usize,
            ),
            State::Far => (
                Some(hook_far as fn(u32) as usize),
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
