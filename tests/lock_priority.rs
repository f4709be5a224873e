//! The patch lock with a real-time waiter on the holder's CPU, in Linux
//! user space.
//!
//! A holder at `SCHED_FIFO` priority 1 takes the lock and works; a waiter
//! at priority 2, pinned to the same CPU, then asks for it. A waiter that
//! kept its CPU (spinning, even with `sched_yield`, which only yields to
//! its own priority) would never let the holder run again: a livelock
//! that real-time throttling does not end, since the holder is real-time
//! too. A waiter that sleeps lets the holder finish and then gets the lock.
//!
//! Needs permission to use `SCHED_FIFO` (root, or `CAP_SYS_NICE`, or an
//! `RLIMIT_RTPRIO`); where it is refused the test says so and passes.
//! One test in its own binary, so that nothing else takes the lock.
#![cfg(target_os = "linux")]

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Steps of work the holder does with the lock held.
const STEPS: u64 = 2_000;

static HELD: AtomicBool = AtomicBool::new(false);
static PROGRESS: AtomicU64 = AtomicU64::new(0);
static HOLDER_DONE: AtomicBool = AtomicBool::new(false);
static WAITER_GOT_IT: AtomicBool = AtomicBool::new(false);
static WAITER_READY: AtomicBool = AtomicBool::new(false);
static WAITER_TID: AtomicI32 = AtomicI32::new(0);
/// Why real-time scheduling was refused, if it was (an errno).
static REFUSED: AtomicI32 = AtomicI32::new(0);

fn tid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// Pins the calling thread to `cpu` and gives it `SCHED_FIFO` at
/// `priority`; false (with REFUSED set) if either is refused.
fn pin_and_raise(cpu: usize, priority: i32) -> bool {
    // SAFETY: cpu_set_t is plain data, edited with CPU_ZERO/CPU_SET; the
    // calls affect the calling thread only (tid 0).
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, core::mem::size_of_val(&set), &set) != 0 {
            REFUSED.store(*libc::__errno_location(), Ordering::SeqCst);
            return false;
        }
        let param = libc::sched_param {
            sched_priority: priority,
        };
        if libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) != 0 {
            REFUSED.store(*libc::__errno_location(), Ordering::SeqCst);
            return false;
        }
    }
    true
}

/// The first CPU this thread may run on.
fn some_cpu() -> usize {
    // SAFETY: as above; reads this thread's affinity into a local.
    unsafe {
        let mut set: libc::cpu_set_t = core::mem::zeroed();
        libc::sched_getaffinity(0, core::mem::size_of_val(&set), &mut set);
        (0..libc::CPU_SETSIZE as usize)
            .find(|&c| libc::CPU_ISSET(c, &set))
            .unwrap_or(0)
    }
}

/// Puts the thread `tid` back to ordinary scheduling.
fn demote(tid: i32) {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: changes another thread of this process's policy only.
    unsafe { libc::sched_setscheduler(tid, libc::SCHED_OTHER, &param) };
}

#[test]
fn a_realtime_waiter_does_not_starve_the_holder_on_its_cpu() {
    let cpu = some_cpu();
    let holder = std::thread::spawn(move || {
        if !pin_and_raise(cpu, 1) {
            HELD.store(true, Ordering::SeqCst);
            return;
        }
        let lock = static_call::writer::patch_lock();
        HELD.store(true, Ordering::SeqCst);
        // The waiter, once at its priority on this CPU, runs straight into
        // the lock before this thread runs again.
        while !WAITER_READY.load(Ordering::SeqCst) && REFUSED.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        for step in 1..=STEPS {
            // Some work the waiter would have to let run.
            std::hint::black_box((0..1_000u64).fold(step, |a, b| a.wrapping_mul(31) ^ b));
            PROGRESS.store(step, Ordering::SeqCst);
        }
        drop(lock);
        HOLDER_DONE.store(true, Ordering::SeqCst);
        demote(tid());
    });
    while !HELD.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    if REFUSED.load(Ordering::SeqCst) != 0 {
        holder.join().unwrap();
        let _ = writeln!(
            std::io::stderr(),
            "skipped: real-time scheduling or CPU pinning refused (errno {})",
            REFUSED.load(Ordering::SeqCst)
        );
        return;
    }
    let waiter = std::thread::spawn(move || {
        WAITER_TID.store(tid(), Ordering::SeqCst);
        if !pin_and_raise(cpu, 2) {
            return;
        }
        WAITER_READY.store(true, Ordering::SeqCst);
        let lock = static_call::writer::patch_lock();
        WAITER_GOT_IT.store(true, Ordering::SeqCst);
        drop(lock);
        demote(tid());
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(HOLDER_DONE.load(Ordering::SeqCst) && WAITER_GOT_IT.load(Ordering::SeqCst))
        && REFUSED.load(Ordering::SeqCst) == 0
        && Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(5));
    }
    let finished = HOLDER_DONE.load(Ordering::SeqCst);
    let stalled_at = PROGRESS.load(Ordering::SeqCst);
    if !finished {
        // Let the holder run again, so both threads can end.
        demote(WAITER_TID.load(Ordering::SeqCst));
    }
    holder.join().unwrap();
    waiter.join().unwrap();
    if REFUSED.load(Ordering::SeqCst) != 0 {
        let _ = writeln!(
            std::io::stderr(),
            "skipped: real-time scheduling refused for the waiter (errno {})",
            REFUSED.load(Ordering::SeqCst)
        );
        return;
    }
    assert!(
        finished,
        "livelock: with a SCHED_FIFO waiter on its CPU, the holder made {stalled_at} of \
         {STEPS} steps in 10 s"
    );
    assert!(WAITER_GOT_IT.load(Ordering::SeqCst));
}
