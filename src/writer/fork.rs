//! `fork` while another thread updates keys, in Linux user space.
//!
//! A child of `fork` has one thread, the one that called it. Had another
//! thread held the patch lock at that moment, the child would inherit the
//! lock held by a thread that does not exist there (every update in the
//! child would wait forever) and text in the middle of an update. Handlers
//! registered with `pthread_atfork` before the lock is first taken make
//! `fork` wait for the update in progress instead: the prepare handler
//! takes the lock (holding off the forking thread's asynchronous signals,
//! as every holder does), the parent's handler releases it, and the
//! child's frees its copy.
//!
//! What this does not cover:
//! - a raw `clone` system call, or `vfork` (which runs no handlers; its
//!   child may only `exec` or `_exit`, which is safe);
//! - `fork` from the thread that holds the lock (from a text writer, a
//!   hook, or `each_inline_site`'s closure): the child then continues that
//!   update or listing on its own thread, whose guard releases the lock
//!   when it is done, and its text is mid-update until then, as the
//!   parent's is.

use super::futex::futex_op;
use super::{PATCH, SignalsHeld};
use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicBool, AtomicU32, Ordering};

const UNREGISTERED: u32 = 0;
const REGISTERING: u32 = 1;
const REGISTERED: u32 = 2;

/// Whether the handlers are registered (or being registered).
static STATE: AtomicU32 = AtomicU32::new(UNREGISTERED);

/// Whether the prepare handler took the lock (rather than finding it
/// held by the forking thread itself). Written and read by the thread
/// that forks, between its prepare and its parent or child handler.
static TOOK: AtomicBool = AtomicBool::new(false);

/// The forking thread's signal mask, held off by the prepare handler.
struct Held(UnsafeCell<MaybeUninit<SignalsHeld>>);
// SAFETY: written by the prepare handler with the patch lock held, and
// taken by the parent or child handler of that same fork before it
// releases the lock.
unsafe impl Sync for Held {}
static SIGNALS: Held = Held(UnsafeCell::new(MaybeUninit::uninit()));

/// Registers the handlers, once, before the patch lock is first taken. A
/// thread that finds another registering them waits until it is done (it
/// sleeps: a spinning waiter could starve the registering thread).
///
/// If `pthread_atfork` fails (out of memory), `fork` behaves as it would
/// without this crate's handlers.
pub(super) fn ensure_handlers() {
    loop {
        match STATE.compare_exchange(
            UNREGISTERED,
            REGISTERING,
            Ordering::Acquire,
            Ordering::Acquire,
        ) {
            Ok(_) => {
                // SAFETY: the three handlers are `extern "C"` functions
                // that take no arguments, as pthread_atfork wants.
                unsafe { libc::pthread_atfork(Some(prepare), Some(parent), Some(child)) };
                STATE.store(REGISTERED, Ordering::Release);
                futex_op(&STATE, libc::FUTEX_WAKE, u32::MAX >> 1);
                return;
            }
            Err(REGISTERED) => return,
            Err(_) => futex_op(&STATE, libc::FUTEX_WAIT, REGISTERING),
        }
    }
}

/// Before `fork`: waits for any update in progress and holds the lock
/// across the fork.
unsafe extern "C" fn prepare() {
    if PATCH.held_by_this_thread() {
        TOOK.store(false, Ordering::Relaxed);
        return;
    }
    let signals = SignalsHeld::hold();
    PATCH.lock_raw();
    // SAFETY: we hold the lock, which serializes forks through here; the
    // parent or child handler takes the value back.
    unsafe { (*SIGNALS.0.get()).write(signals) };
    TOOK.store(true, Ordering::Relaxed);
}

/// After `fork`, in the parent: releases what prepare took.
unsafe extern "C" fn parent() {
    if TOOK.load(Ordering::Relaxed) {
        // SAFETY: prepare wrote it, and we still hold the lock.
        let signals = unsafe { (*SIGNALS.0.get()).assume_init_read() };
        PATCH.unlock_raw();
        drop(signals);
    }
}

/// After `fork`, in the child: frees the lock prepare took, or makes the
/// child's thread the holder if the forking thread held it.
unsafe extern "C" fn child() {
    if TOOK.load(Ordering::Relaxed) {
        // SAFETY: prepare wrote it before the fork; the child is the only
        // thread.
        let signals = unsafe { (*SIGNALS.0.get()).assume_init_read() };
        PATCH.reset_in_child();
        drop(signals);
    } else {
        PATCH.adopt_in_child();
    }
}
