//! Running a closure on a given secondary CPU and waiting for its result,
//! on top of the kernel's `smp::post` mailbox. Shared by the test kernels,
//! each of which includes this file with `#[path = ...] mod run_on;` inside
//! its `smp` module, which provides `post`, `idle` and `MAX_CPUS`.

use spin::mutex::SpinMutex;

use super::{MAX_CPUS, idle, post};
use crate::cpu;

/// A closure handed to [`run_on`], type-erased: `call(data)` runs it once.
struct Job {
    call: unsafe fn(*mut ()),
    data: *mut (),
}

// SAFETY: a `Job` only points into the stack frame of the `run_on` call
// that made it, whose closure and result are `Send`; that frame waits until
// the job has run before it returns.
unsafe impl Send for Job {}

/// Per CPU: the job [`run_on`] posted, until the CPU takes it.
static JOBS: [SpinMutex<Option<Job>>; MAX_CPUS] = [const { SpinMutex::new(None) }; MAX_CPUS];

/// What [`post`]s for [`run_on`]: takes this CPU's job and runs it.
fn run_job(cpu: usize) {
    let job = JOBS[cpu].lock().take();
    if let Some(job) = job {
        // SAFETY: `run_on` stored this job with a `call` matching `data`,
        // and keeps `data` alive until this CPU is idle again.
        unsafe { (job.call)(job.data) };
    }
}

/// Runs `f` on secondary `cpu` and waits for its result. `None` if the CPU
/// is busy with other work.
///
/// # Panics
///
/// If `cpu` has not finished `f` after `timeout_ms`: `f` borrows this
/// stack frame, so the call cannot return while `f` may still run.
pub fn run_on<R: Send, F: FnOnce() -> R + Send>(cpu: usize, timeout_ms: u64, f: F) -> Option<R> {
    /// Runs the closure in `data` and leaves its result there.
    ///
    /// # Safety
    ///
    /// `data` must point to a live `(Option<F>, Option<R>)` that nothing
    /// else touches meanwhile.
    unsafe fn call<R, F: FnOnce() -> R>(data: *mut ()) {
        // SAFETY: per this function's contract.
        let slot = unsafe { &mut *data.cast::<(Option<F>, Option<R>)>() };
        if let Some(f) = slot.0.take() {
            slot.1 = Some(f());
        }
    }
    let mut slot: (Option<F>, Option<R>) = (Some(f), None);
    *JOBS[cpu].lock() = Some(Job {
        call: call::<R, F>,
        data: (&raw mut slot).cast(),
    });
    if !post(cpu, run_job) {
        JOBS[cpu].lock().take();
        return None;
    }
    // `idle` reads WORK with Acquire after the secondary's Release store, so
    // the result written by `call` is visible here.
    if !cpu::spin_until(timeout_ms, || idle(cpu)) {
        // Which of the two it is tells a lost wake-up from a hang in `f`.
        let taken = JOBS[cpu].try_lock().map(|job| job.is_none());
        let state = match taken {
            Some(true) => "it took the work and is still running it",
            Some(false) => "it never took the work: asleep, or stuck before its mailbox",
            None => "its mailbox is locked",
        };
        panic!("cpu{cpu} did not finish the work run_on gave it within {timeout_ms} ms: {state}");
    }
    slot.1.take()
}
