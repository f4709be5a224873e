//! The generic fallback (a Rust trampoline calling through an atomic
//! pointer), which targets without a backend use. On hosts that have one,
//! run with `--features force-generic`.
#![cfg(any(
    feature = "force-generic",
    not(any(target_arch = "aarch64", target_arch = "x86_64"))
))]

use static_call::arch::{Backend, active::Active};
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

fn one(x: u32) -> u64 {
    u64::from(x) + 1
}
fn two(x: u32) -> u64 {
    u64::from(x) + 2
}
fn note(out: *mut u64, v: u64) {
    // SAFETY: callers pass a pointer to a live local.
    unsafe { out.write(v) };
}

static_call::static_call! {
    static VALUE: fn(u32) -> u64 = one;
    static HOOK: fn(*mut u64, u64) = NULL;
    static STRESS: fn(u32) -> u64 = one;
}

#[test]
fn the_generic_backend_is_the_active_one() {
    assert_eq!(Active::NAME, "generic");
}

#[test]
fn transitions_between_functions_null_and_ret0() {
    assert_eq!(VALUE.call(1), 2);
    VALUE.update(two).unwrap();
    assert_eq!((VALUE.call(1), VALUE.trampoline()(1)), (3, 3));
    VALUE.update_ret0().unwrap();
    assert!(VALUE.is_ret0());
    assert_eq!(VALUE.call(1), 0);
    VALUE.update(one).unwrap();
    assert_eq!(VALUE.query().map(|f| f(1)), Some(2));

    let mut cell = 0;
    HOOK.call(&mut cell, 5);
    assert_eq!(cell, 0, "a NULL key does nothing");
    HOOK.update(note).unwrap();
    HOOK.call(&mut cell, 5);
    assert_eq!(cell, 5);
    HOOK.update_ret0().unwrap();
    HOOK.call(&mut cell, 6);
    assert_eq!(cell, 5);
    HOOK.update_null().unwrap();
    assert!(HOOK.query().is_none());
}

#[test]
fn concurrent_calls_see_the_old_or_the_new_target() {
    let stop = Arc::new(AtomicBool::new(false));
    let generation = Arc::new(AtomicU64::new(0));
    let started = Arc::new(std::sync::Barrier::new(3));
    let expect = |g: u64, x: u32| match g % 3 {
        0 => one(x),
        1 => two(x),
        _ => 0,
    };
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (stop, generation, started) = (stop.clone(), generation.clone(), started.clone());
            std::thread::spawn(move || {
                let (mut calls, mut wrong) = (0u64, 0u64);
                started.wait();
                while !stop.load(Ordering::Relaxed) {
                    let x = (calls % 1000) as u32;
                    let before = generation.load(Ordering::Acquire);
                    let got = STRESS.call(x);
                    let after = generation.load(Ordering::Acquire);
                    if !(before..=after + 1).any(|g| expect(g, x) == got) {
                        wrong += 1;
                    }
                    calls += 1;
                }
                (calls, wrong)
            })
        })
        .collect();
    started.wait();
    for g in 1..=30_000u64 {
        match g % 3 {
            0 => STRESS.update(one),
            1 => STRESS.update(two),
            _ => STRESS.update_ret0(),
        }
        .unwrap();
        generation.store(g, Ordering::Release);
    }
    stop.store(true, Ordering::Relaxed);
    let (calls, wrong) = callers
        .into_iter()
        .map(|c| c.join().unwrap())
        .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
    // Straight to stderr, past libtest's capture, so CI logs show the figures.
    let _ = writeln!(
        std::io::stderr(),
        "generic stress: 30000 updates, {calls} calls, {wrong} wrong"
    );
    assert_eq!(wrong, 0);
    assert!(calls > 0);
}
