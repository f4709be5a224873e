//! Each secondary CPU's mailbox: one `fn(cpu)` at a time, posted by any
//! CPU and run by the secondary's idle loop. Shared by the test kernels,
//! each of which includes this file with `#[path = ...] mod mailbox;`
//! inside its `smp` module, which provides `MAX_CPUS` and `wake(cpu)` (an
//! interrupt that ends the secondary's wait), and whose idle loop sleeps
//! while [`pending`] is 0 and then calls [`run`].

use core::sync::atomic::{AtomicUsize, Ordering};

use super::{MAX_CPUS, wake};

/// Per CPU: the `fn(usize)` it is to run, as an address; 0 when idle.
static WORK: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

/// Hands `f` to secondary `cpu`; `false` if it is still busy with earlier
/// work.
pub fn post(cpu: usize, f: fn(usize)) -> bool {
    assert!((1..MAX_CPUS).contains(&cpu), "no secondary cpu{cpu}");
    let posted = WORK[cpu]
        .compare_exchange(0, f as usize, Ordering::AcqRel, Ordering::Acquire)
        .is_ok();
    if posted {
        wake(cpu);
    }
    posted
}

/// Whether secondary `cpu` has finished its posted work.
pub fn idle(cpu: usize) -> bool {
    WORK[cpu].load(Ordering::Acquire) == 0
}

/// The work posted to `cpu` (0: none), for its idle loop.
pub fn pending(cpu: usize) -> usize {
    WORK[cpu].load(Ordering::Acquire)
}

/// Runs `work` (what [`pending`] returned, not 0) on `cpu`, then marks the
/// CPU idle.
pub fn run(cpu: usize, work: usize) {
    // SAFETY: only `post` stores non-zero values, each the address of a
    // `fn(usize)`.
    let f = unsafe { core::mem::transmute::<usize, fn(usize)>(work) };
    f(cpu);
    WORK[cpu].store(0, Ordering::Release);
}
