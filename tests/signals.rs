//! Updates and signal handlers, in Linux user space: a handler that
//! updates a key can never run on a thread that holds the patch lock (it
//! would wait forever for its own thread), because the lock holds off the
//! thread's asynchronous signals while it is held.
//!
//! One test in its own binary: it forks, and no other test thread may hold
//! the patch lock at that moment.
#![cfg(target_os = "linux")]

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn one(x: u32) -> u32 {
    x + 1
}
fn two(x: u32) -> u32 {
    x + 2
}

static_call::static_call! {
    static KEY: fn(u32) -> u32 = one;
}

static HANDLER_RAN: AtomicBool = AtomicBool::new(false);
static HANDLER_UPDATED: AtomicBool = AtomicBool::new(false);

extern "C" fn update_from_handler(_sig: libc::c_int) {
    HANDLER_UPDATED.store(KEY.update(two).is_ok(), Ordering::SeqCst);
    HANDLER_RAN.store(true, Ordering::SeqCst);
}

const RAN_UNDER_LOCK: i32 = 10;
const NEVER_RAN: i32 = 11;
const UPDATE_FAILED: i32 = 12;
const WRONG_TARGET: i32 = 13;

/// The child's work: a signal whose handler updates a key arrives while
/// this thread holds the patch lock. Returns the exit code.
fn signal_while_holding_the_lock() -> i32 {
    // SAFETY: a valid action with a plain handler, built from zero.
    unsafe {
        let mut act: libc::sigaction = core::mem::zeroed();
        act.sa_sigaction = update_from_handler as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGUSR2, &act, core::ptr::null_mut());
    }
    let lock = static_call::writer::patch_lock();
    // SAFETY: signals this thread.
    unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGUSR2) };
    std::thread::sleep(Duration::from_millis(50));
    if HANDLER_RAN.load(Ordering::SeqCst) {
        return RAN_UNDER_LOCK;
    }
    drop(lock);
    // The held signal is delivered as soon as the lock is released.
    if !HANDLER_RAN.load(Ordering::SeqCst) {
        return NEVER_RAN;
    }
    if !HANDLER_UPDATED.load(Ordering::SeqCst) {
        return UPDATE_FAILED;
    }
    if KEY.call(1) != 3 {
        return WRONG_TARGET;
    }
    0
}

#[test]
fn a_handler_that_updates_never_runs_under_the_patch_lock() {
    assert_eq!(KEY.call(1), 2);
    // SAFETY: this binary has one test, so no other thread holds a lock
    // the child needs; the child `_exit`s without returning.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = signal_while_holding_the_lock();
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    assert!(pid > 0, "fork failed");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut status = 0;
    loop {
        // SAFETY: polls our own child.
        let done = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if done == pid {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("deadlock: the handler's update waited for the lock its own thread held");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(libc::WIFEXITED(status), "child died: status {status:#x}");
    let code = libc::WEXITSTATUS(status);
    let what = match code {
        0 => "ok",
        RAN_UNDER_LOCK => "the handler ran while the lock was held",
        NEVER_RAN => "the held signal was not delivered after the lock was released",
        UPDATE_FAILED => "the handler's update failed",
        WRONG_TARGET => "the key did not call the new target",
        _ => "unexpected exit code",
    };
    assert_eq!(code, 0, "{what}");
}
