//! `fork` while another thread updates keys: each child must be able to
//! update and call keys (it inherits neither a held patch lock nor text in
//! the middle of an update).
//!
//! One test in its own binary: it forks, so no other test may run threads
//! here.
#![cfg(target_os = "linux")]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

extern "C" fn c_plus_one(x: u64) -> u64 {
    x + 1
}
extern "C" fn c_plus_two(x: u64) -> u64 {
    x + 2
}
extern "C" fn c_plus_three(x: u64) -> u64 {
    x + 3
}
fn plus_one(x: u64) -> u64 {
    x + 1
}
fn plus_two(x: u64) -> u64 {
    x + 2
}
fn plus_three(x: u64) -> u64 {
    x + 3
}

static_call::static_call! {
    static OP: fn(u64) -> u64 = plus_one;
    static HOT: extern "C" fn(u64) -> u64 = c_plus_one;
}

#[inline(never)]
fn hot_site(x: u64) -> u64 {
    HOT.call_inline(x)
}

static STOP: AtomicBool = AtomicBool::new(false);
static UPDATES: AtomicU64 = AtomicU64::new(0);

/// Retargets both keys back and forth until told to stop (on x86-64
/// alternating the two strategies, so forks land in both protocols).
fn keep_updating() {
    let mut n = 0u64;
    while !STOP.load(Ordering::Relaxed) {
        let to_two = n.is_multiple_of(2);
        #[cfg(all(target_arch = "x86_64", not(feature = "force-generic")))]
        let result = {
            use static_call::arch::x86_64::Strategy;
            use static_call::writer::linux::Remap;
            let s = if n % 4 < 2 {
                Strategy::Breakpoint
            } else {
                Strategy::AtomicStore
            };
            let w = s.with(&Remap);
            if to_two {
                OP.update_with(plus_two, &w)
                    .and(HOT.update_with(c_plus_two, &w))
            } else {
                OP.update_with(plus_one, &w)
                    .and(HOT.update_with(c_plus_one, &w))
            }
        };
        #[cfg(not(all(target_arch = "x86_64", not(feature = "force-generic"))))]
        let result = if to_two {
            OP.update(plus_two).and(HOT.update(c_plus_two))
        } else {
            OP.update(plus_one).and(HOT.update(c_plus_one))
        };
        result.expect("update in the parent");
        n += 1;
        UPDATES.store(n, Ordering::Relaxed);
    }
}

const OLD_TARGET_WRONG: i32 = 30;
const UPDATE_FAILED: i32 = 31;
const NEW_TARGET_WRONG: i32 = 32;

/// The child's work: the keys call one of the parent's targets, and can be
/// updated and called. Returns the exit code.
fn child() -> i32 {
    for r in [OP.call(1), hot_site(1)] {
        if r != 2 && r != 3 {
            return OLD_TARGET_WRONG;
        }
    }
    if OP.update(plus_three).is_err() || HOT.update(c_plus_three).is_err() {
        return UPDATE_FAILED;
    }
    if OP.call(1) != 4 || hot_site(1) != 4 {
        return NEW_TARGET_WRONG;
    }
    0
}

#[test]
fn children_forked_during_updates_can_update_keys() {
    let forks = if cfg!(target_arch = "x86_64") {
        200
    } else {
        40
    };
    let updater = std::thread::spawn(keep_updating);
    while UPDATES.load(Ordering::Relaxed) < 2 {
        std::thread::yield_now();
    }
    let mut failure = None;
    for i in 0..forks {
        // SAFETY: the only other thread is the updater, which takes no lock
        // the child needs but the patch lock (handled by the crate's fork
        // handlers) and allocates nothing; the child `_exit`s.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let code = child();
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(code) };
        }
        assert!(pid > 0, "fork failed");
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut status = 0;
        loop {
            // SAFETY: polls our own child.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } == pid {
                break;
            }
            if Instant::now() > deadline {
                // SAFETY: our own child; reaped right after.
                unsafe {
                    libc::kill(pid, libc::SIGKILL);
                    libc::waitpid(pid, &mut status, 0);
                }
                failure = Some(format!(
                    "child {i} hung for 30 s: it inherited a held patch lock"
                ));
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if failure.is_some() {
            break;
        }
        let what = if libc::WIFSIGNALED(status) {
            Some(format!("killed by signal {}", libc::WTERMSIG(status)))
        } else {
            match libc::WEXITSTATUS(status) {
                0 => None,
                OLD_TARGET_WRONG => Some("a key called neither of the parent's targets".into()),
                UPDATE_FAILED => Some("an update failed".into()),
                NEW_TARGET_WRONG => Some("a key did not call its new target".into()),
                c => Some(format!("exit code {c}")),
            }
        };
        if let Some(what) = what {
            failure = Some(format!("child {i}: {what}"));
            break;
        }
    }
    STOP.store(true, Ordering::Relaxed);
    updater.join().unwrap();
    if let Some(f) = failure {
        panic!("{f}");
    }
    assert!(
        UPDATES.load(Ordering::Relaxed) > 2,
        "the parent did not keep updating"
    );
}
