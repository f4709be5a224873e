//! Every ordered pair of states of four keys (Rust-ABI and `extern "C"`,
//! value and effect), with both x86-64 strategies, through the kernel's
//! writer (read-only text written through its alias, sync by IPI). After
//! each update: the trampoline decoded, every inline site decoded, `query`
//! and `is_ret0`, and calls (as emitted and through the function pointer)
//! on all four CPUs.

use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use static_call::arch::x86_64::{Form, Strategy, site};
use x86_kernel::patching::Counting;
use x86_kernel::runner::TestResult;
use x86_kernel::{check, check_eq, println};

use crate::keys::{self, Far, KEYS, Key, Near, Null, State, decoded, form_of, site_word};
use crate::on_every_cpu;

/// A walk through `states` that takes every ordered pair of distinct
/// states once (an Eulerian circuit of the complete digraph), from and back
/// to the first.
pub fn tour(states: &[State]) -> Vec<State> {
    let n = states.len();
    let mut out: Vec<Vec<usize>> = (0..n)
        .map(|a| (0..n).filter(|&b| b != a).rev().collect())
        .collect();
    let (mut stack, mut walk) = (alloc::vec![0], Vec::new());
    while let Some(&v) = stack.last() {
        match out[v].pop() {
            Some(w) => stack.push(w),
            None => walk.push(stack.pop().unwrap_or(0)),
        }
    }
    walk.reverse();
    walk.into_iter().map(|i| states[i]).collect()
}

/// Checks the key's trampoline, sites and `query` against state `s`.
pub fn check_state(key: Key, s: State) -> Result<(), String> {
    let tramp = key.tramp();
    let t = decoded(tramp).map_err(|e| format!("{}: trampoline: {e}", key.name()))?;
    check_eq!(t.form, form_of(key, s));
    match s {
        Far => check_eq!(t.image.literal as usize, key.target(Far)),
        Null => check_eq!(t.image.literal, static_call::arch::x86_64::null_stub_addr()),
        _ => check_eq!(Form::Near(t.image.literal), t.form),
    }
    check_eq!(key.query(), key.target(s));
    check_eq!(key.is_ret0(), s == State::Ret0);
    for at in key.sites() {
        let dest = site::decode(at as u64, &site_word(at))
            .map_err(|e| format!("{}: site {at:#x}: {e}", key.name()))?;
        let want = match s {
            Null => None,
            Far => Some(tramp as u64),
            _ => Some(key.target(s) as u64),
        };
        check!(
            dest == want,
            "{} in {s:?}: site {at:#x} calls {dest:x?}, expected {want:x?}",
            key.name()
        );
    }
    Ok(())
}

/// Calls `key` on every CPU, as emitted and through its pointer, and
/// checks each observation against state `s`. Returns the calls made.
pub fn check_calls(key: Key, s: State, v: u64) -> Result<u64, String> {
    let results = on_every_cpu(move |cpu| {
        let arg = v + cpu as u64;
        (arg, key.call(arg), key.call_pointer(arg))
    })?;
    for (cpu, (arg, direct, pointer)) in results.into_iter().enumerate() {
        let want = key.expect(s, arg);
        check!(
            direct == want && pointer == want,
            "{} in {s:?} on cpu{cpu}: call gave {direct:#x}, pointer {pointer:#x}, expected {want:#x}",
            key.name()
        );
    }
    Ok(8)
}

pub(crate) fn static_call_transitions() -> TestResult {
    keys::learn_ret0().map_err(|e| format!("RET0: {e}"))?;
    let counting = Counting::new();
    let mut report = Vec::new();
    for strategy in [Strategy::Breakpoint, Strategy::AtomicStore] {
        let w = strategy.with(&counting);
        let (mut updates, mut calls) = (0u64, 0u64);
        let syncs_before = counting.syncs.load(core::sync::atomic::Ordering::Relaxed);
        for key in KEYS {
            let walk = tour(key.states());
            let n = key.states().len();
            check_eq!(walk.len(), n * (n - 1) + 1);
            key.set(walk[0], &w)
                .map_err(|e| format!("{}: {e}", key.name()))?;
            for pair in walk.windows(2) {
                let (from, to) = (pair[0], pair[1]);
                let what = format!("{strategy:?} {} {from:?} -> {to:?}", key.name());
                key.set(to, &w).map_err(|e| format!("{what}: {e}"))?;
                updates += 1;
                check_state(key, to).map_err(|e| format!("{what}: {e}"))?;
                calls += check_calls(key, to, 40).map_err(|e| format!("{what}: {e}"))?;
            }
            key.set(Near, &w)
                .map_err(|e| format!("{}: {e}", key.name()))?;
        }
        let syncs = counting.syncs.load(core::sync::atomic::Ordering::Relaxed) - syncs_before;
        report.push(format!(
            "{strategy:?}: {updates} transitions, {syncs} syncs, {calls} calls on 4 CPUs"
        ));
    }
    let sites: usize = KEYS.iter().map(|k| k.sites().len()).sum();
    println!("transitions: {} ({sites} inline sites)", report.join("; "));
    check!(sites > 0, "the extern \"C\" keys have no inline sites");
    Ok(())
}
