//! The patch lock in Linux user space: a mutex whose waiters sleep on a
//! futex, and which knows which thread holds it.
//!
//! A waiter that spun with `sched_yield` (as this lock once did) livelocked
//! a holder that shared its CPU when the waiter had a real-time priority:
//! `sched_yield` only gives the CPU to threads of the same priority, so the
//! holder never ran again (or, with real-time throttling, ran a few
//! percent of the time). A waiter here sleeps in the kernel until the
//! holder wakes it, so the holder runs whatever the priorities.
//!
//! Knowing the holder lets a thread that already holds the lock be refused
//! instead of waiting forever for itself (an update from inside
//! `each_inline_site`'s closure or from a text writer), and lets `fork`
//! hand a consistent lock to the child (see `writer::fork`).

use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicI32, AtomicU32, Ordering};

/// Free.
const UNLOCKED: u32 = 0;
/// Held, nobody asleep waiting.
const LOCKED: u32 = 1;
/// Held, and a waiter may be asleep: the release must wake one.
const CONTENDED: u32 = 2;

/// The calling thread's id (never 0).
pub(super) fn this_thread() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail. (The raw call,
    // since glibc only has a wrapper from 2.30.)
    unsafe { libc::syscall(libc::SYS_gettid) as i32 }
}

/// A mutex whose waiters sleep on a futex (Ulrich Drepper's three-state
/// design, "Futexes Are Tricky").
pub(super) struct FutexMutex<T> {
    state: AtomicU32,
    /// The holder's thread id, 0 when free. Only the holder stores it, so
    /// a thread that reads its own id here holds the lock.
    owner: AtomicI32,
    value: UnsafeCell<T>,
}

// SAFETY: the value is only reached through a guard, which exists on one
// thread at a time (the lock's holder).
unsafe impl<T: Send> Sync for FutexMutex<T> {}

/// The lock was not taken: the calling thread already holds it.
#[derive(Debug)]
pub(super) struct HeldByThisThread;

impl<T> FutexMutex<T> {
    pub(super) const fn new(value: T) -> Self {
        FutexMutex {
            state: AtomicU32::new(UNLOCKED),
            owner: AtomicI32::new(0),
            value: UnsafeCell::new(value),
        }
    }

    /// Whether the calling thread holds the lock.
    pub(super) fn held_by_this_thread(&self) -> bool {
        self.owner.load(Ordering::Relaxed) == this_thread()
    }

    /// Takes the lock, sleeping while another thread holds it; refused if
    /// this thread holds it already.
    pub(super) fn lock(&self) -> Result<FutexGuard<'_, T>, HeldByThisThread> {
        let me = this_thread();
        if self.owner.load(Ordering::Relaxed) == me {
            return Err(HeldByThisThread);
        }
        self.acquire(me);
        Ok(FutexGuard { lock: self })
    }

    fn acquire(&self, me: i32) {
        if self
            .state
            .compare_exchange(UNLOCKED, LOCKED, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            // Mark the lock contended before sleeping, so the holder's
            // release wakes us; whoever finds it free takes it as
            // contended (there may be other sleepers).
            while self.state.swap(CONTENDED, Ordering::Acquire) != UNLOCKED {
                futex_op(&self.state, libc::FUTEX_WAIT, CONTENDED);
            }
        }
        self.owner.store(me, Ordering::Relaxed);
    }

    fn release(&self) {
        self.owner.store(0, Ordering::Relaxed);
        if self.state.swap(UNLOCKED, Ordering::Release) == CONTENDED {
            futex_op(&self.state, libc::FUTEX_WAKE, 1);
        }
    }

    /// Takes the lock without a guard, for `fork`'s prepare handler; the
    /// parent handler releases it with [`unlock_raw`](Self::unlock_raw).
    /// The caller must not hold it.
    pub(super) fn lock_raw(&self) {
        self.acquire(this_thread());
    }

    /// Releases a lock taken with [`lock_raw`](Self::lock_raw).
    pub(super) fn unlock_raw(&self) {
        self.release();
    }

    /// In a child of `fork`, the only thread: frees a lock the forking
    /// thread took with [`lock_raw`](Self::lock_raw) (nobody can be
    /// asleep on it here).
    pub(super) fn reset_in_child(&self) {
        self.owner.store(0, Ordering::Relaxed);
        self.state.store(UNLOCKED, Ordering::Release);
    }

    /// In a child of `fork` made while the forking thread held the lock
    /// through a guard: the child's thread is that holder now (its guard
    /// releases it), under its new thread id.
    pub(super) fn adopt_in_child(&self) {
        self.owner.store(this_thread(), Ordering::Relaxed);
    }
}

/// One futex operation on `word` (private to this process).
pub(super) fn futex_op(word: &AtomicU32, op: libc::c_int, val: u32) {
    // SAFETY: `word` is a live, aligned 32-bit atomic; FUTEX_WAIT only
    // sleeps while it still holds `val` (no timeout), FUTEX_WAKE wakes up
    // to `val` sleepers. Errors (EAGAIN when the word changed, EINTR)
    // send the caller round its loop again.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            op | libc::FUTEX_PRIVATE_FLAG,
            val,
            core::ptr::null::<libc::timespec>(),
        );
    }
}

/// The lock, held; releases it when dropped.
pub(super) struct FutexGuard<'a, T> {
    lock: &'a FutexMutex<T>,
}

impl<T> Deref for FutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard's existence means this thread holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for FutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as above, and the guard is borrowed mutably.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for FutexGuard<'_, T> {
    fn drop(&mut self) {
        self.lock.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_holder_is_refused_and_others_wait_their_turn() {
        let lock = Arc::new(FutexMutex::new(0u64));
        let guard = lock.lock().unwrap();
        assert!(lock.held_by_this_thread());
        assert!(
            lock.lock().is_err(),
            "a second lock on one thread must be refused"
        );
        drop(guard);
        assert!(!lock.held_by_this_thread());
        let threads: std::vec::Vec<_> = (0..4)
            .map(|_| {
                let lock = Arc::clone(&lock);
                std::thread::spawn(move || {
                    for _ in 0..20_000 {
                        let mut g = lock.lock().unwrap();
                        // A non-atomic read-modify-write: lost updates
                        // would show a lock that let two holders in.
                        let v = *g;
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock().unwrap(), 80_000);
    }
}
