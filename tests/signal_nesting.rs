//! Asynchronous signal handlers that call keys, under the int3 strategy.
//!
//! A worker thread calls keys in a loop (through inline sites, the
//! trampoline and the function pointer) while updates with
//! `Strategy::Breakpoint` keep putting `int3`s in its way, and another
//! thread interrupts it every ~200 us with two signals whose handlers call
//! the same keys: one handler on the thread's stack, one on its alternate
//! stack (`SA_ONSTACK`, where Rust's runtime gives every thread a small
//! one). A signal that lands while the worker is in the SIGTRAP handler
//! must not nest there (on a small alternate stack, nesting let the kernel
//! run out of room for the next frame and kill the process with SIGSEGV).
//! Every result is checked.
//!
//! The stress runs in a child process, so a crash is reported as a failed
//! test rather than ending the test binary; this binary has one test, so
//! no other thread holds a lock the child needs when it forks.
#![cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "force-generic")
))]

use static_call::arch::x86_64::{Strategy, traps_steered};
use static_call::writer::linux::Remap;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

extern "C" fn c_plus_one(x: u64) -> u64 {
    x + 1
}
extern "C" fn c_plus_two(x: u64) -> u64 {
    x + 2
}
fn plus_one(x: u64) -> u64 {
    x + 1
}
fn plus_two(x: u64) -> u64 {
    x + 2
}

static_call::static_call! {
    /// Called at inline sites (and through its trampoline and pointer).
    static HOT: extern "C" fn(u64) -> u64 = c_plus_one;
    /// Called through its trampoline and pointer.
    static OP: fn(u64) -> u64 = plus_one;
}

/// Results that were neither target's.
static WRONG: AtomicU64 = AtomicU64::new(0);
/// Calls made from the signal handlers.
static HANDLER_CALLS: AtomicU64 = AtomicU64::new(0);
static STOP: AtomicBool = AtomicBool::new(false);

/// Calls every key every way once, checking each result.
#[inline(never)]
fn call_all(x: u64) -> u64 {
    let hot_ptr = HOT.trampoline();
    let op_ptr = std::hint::black_box(OP.trampoline());
    let results = [
        HOT.call_inline(x),
        hot_ptr(x),
        OP.call(x),
        op_ptr(x),
        inline_site_elsewhere(x),
    ];
    for r in results {
        if r != x + 1 && r != x + 2 {
            WRONG.fetch_add(1, Ordering::Relaxed);
        }
    }
    results.len() as u64
}

/// A second inline site of `HOT`.
#[inline(never)]
fn inline_site_elsewhere(x: u64) -> u64 {
    HOT.call_inline(x)
}

/// Async-signal-safe: atomics and calls of keys only.
extern "C" fn call_keys_from_handler(_sig: libc::c_int) {
    let n = call_all(7);
    HANDLER_CALLS.fetch_add(n, Ordering::Relaxed);
}

/// Installs the handler for `sig`, on the alternate stack if `onstack`,
/// blocking `other` while it runs (so at most one of the two is on the
/// stack at once: nesting among a program's own handlers is its choice).
fn install(sig: libc::c_int, onstack: bool, other: libc::c_int) {
    // SAFETY: a valid action with a plain handler, built from zero; the
    // sigset calls fill in our local.
    unsafe {
        let mut act: libc::sigaction = core::mem::zeroed();
        act.sa_sigaction = call_keys_from_handler as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaddset(&mut act.sa_mask, other);
        act.sa_flags = libc::SA_RESTART | if onstack { libc::SA_ONSTACK } else { 0 };
        assert_eq!(libc::sigaction(sig, &act, core::ptr::null_mut()), 0);
    }
}

const BAD_RESULT: i32 = 20;
const NO_HANDLER_CALLS: i32 = 21;
const NO_TRAPS: i32 = 22;
const UPDATE_FAILED: i32 = 23;

/// The child's work; returns its exit code.
fn stress(duration: Duration) -> i32 {
    install(libc::SIGALRM, false, libc::SIGUSR1);
    install(libc::SIGUSR1, true, libc::SIGALRM);
    let traps_before = traps_steered();
    let worker = std::thread::spawn(|| {
        let mut x = 0u64;
        while !STOP.load(Ordering::Relaxed) {
            call_all(x);
            x = x.wrapping_add(1) & 0xffff;
        }
    });
    // SAFETY: the worker's pthread handle, valid until it is joined below.
    let target = std::os::unix::thread::JoinHandleExt::as_pthread_t(&worker);
    let signaller = std::thread::spawn(move || {
        let mut n = 0u32;
        while !STOP.load(Ordering::Relaxed) {
            let sig = if n.is_multiple_of(2) {
                libc::SIGALRM
            } else {
                libc::SIGUSR1
            };
            // SAFETY: the worker is joined only after this thread stops.
            unsafe { libc::pthread_kill(target, sig) };
            n = n.wrapping_add(1);
            std::thread::sleep(Duration::from_micros(200));
        }
    });
    let bp = Strategy::Breakpoint.with(&Remap);
    let deadline = Instant::now() + duration;
    let mut code = 0;
    let mut flip = false;
    while Instant::now() < deadline {
        flip = !flip;
        let (c, r): (extern "C" fn(u64) -> u64, fn(u64) -> u64) = if flip {
            (c_plus_two, plus_two)
        } else {
            (c_plus_one, plus_one)
        };
        if HOT.update_with(c, &bp).is_err() || OP.update_with(r, &bp).is_err() {
            code = UPDATE_FAILED;
            break;
        }
    }
    STOP.store(true, Ordering::Relaxed);
    signaller.join().unwrap();
    worker.join().unwrap();
    if code != 0 {
        return code;
    }
    if WRONG.load(Ordering::Relaxed) != 0 {
        return BAD_RESULT;
    }
    if HANDLER_CALLS.load(Ordering::Relaxed) == 0 {
        return NO_HANDLER_CALLS;
    }
    if traps_steered() == traps_before {
        return NO_TRAPS;
    }
    // Straight to stderr: the test harness's capture would drop it.
    let _ = writeln!(
        std::io::stderr(),
        "child: {} traps steered, {} calls from signal handlers",
        traps_steered() - traps_before,
        HANDLER_CALLS.load(Ordering::Relaxed)
    );
    0
}

#[test]
fn signal_handlers_that_call_keys_survive_int3_updates() {
    assert!(
        HOT.inline_sites() >= 2,
        "the inline sites were not recorded"
    );
    // SAFETY: this binary has one test, so no other thread holds a lock
    // the child needs; the child `_exit`s without returning.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        let code = stress(Duration::from_secs(4));
        // SAFETY: ends the child at once.
        unsafe { libc::_exit(code) };
    }
    assert!(pid > 0, "fork failed");
    let mut status = 0;
    // SAFETY: waits for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    if libc::WIFSIGNALED(status) {
        panic!(
            "the child was killed by signal {} while signal handlers called keys during \
             int3 updates",
            libc::WTERMSIG(status)
        );
    }
    let code = libc::WEXITSTATUS(status);
    let what = match code {
        0 => "ok",
        BAD_RESULT => "a call reached neither target",
        NO_HANDLER_CALLS => "no signal handler ran (the stress tested nothing)",
        NO_TRAPS => "no call trapped (the stress tested nothing)",
        UPDATE_FAILED => "an update failed",
        _ => "unexpected exit code",
    };
    assert_eq!(code, 0, "{what}");
}
