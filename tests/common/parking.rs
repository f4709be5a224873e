//! The seed-000/001 race on x86-64: one call parked inside the int3
//! handler while further updates run. Shared by the Linux backend tests
//! (tests/x86_64_backend.rs, a thread parked in the SIGTRAP handler) and
//! the x86-64 test kernel (a CPU parked in its `#BP` handler); included
//! with `#[path]`. The includer provides `wait_for(&AtomicBool)`, which
//! spins with a timeout and must be safe in the trap handler.

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use static_call::arch::x86_64::__test_hooks as hooks;
use static_call::arch::x86_64::{insn, protocol::Store};

use super::wait_for;

/// The targets the parked key and another key move between: the parked
/// call's result says which one it reached.
pub fn park_a(x: u32) -> u64 {
    u64::from(x) + 10
}
pub fn park_b(x: u32) -> u64 {
    u64::from(x) + 20
}
pub fn park_c(x: u32) -> u64 {
    u64::from(x) + 30
}
pub fn unicorn(x: u32) -> u64 {
    u64::from(x) + 666
}

/// One call parked inside the trap handler while updates run. The tests
/// that use it run one at a time, so one instance serves them all.
pub struct Parking {
    /// The trampoline whose trapped call parks.
    pub tramp: AtomicUsize,
    /// Park after the handler read the destination (steering) or before.
    pub at_steering: AtomicBool,
    /// The update has placed its int3 and waits for a call to trap on it.
    pub armed: AtomicBool,
    /// A call is parked in the handler.
    pub in_handler: AtomicBool,
    /// Lets the parked call go on.
    pub release: AtomicBool,
    /// Where the handler was sending the parked call.
    pub dest: AtomicUsize,
    /// What the parked call returned, where its caller records it.
    pub result: AtomicU64,
}

pub static PARKING: Parking = Parking {
    tramp: AtomicUsize::new(0),
    at_steering: AtomicBool::new(false),
    armed: AtomicBool::new(false),
    in_handler: AtomicBool::new(false),
    release: AtomicBool::new(false),
    dest: AtomicUsize::new(0),
    result: AtomicU64::new(0),
};

impl Parking {
    /// Resets it for a call through `tramp` that parks at `point`, and
    /// installs the trap hook that parks it. The includer installs the
    /// hook that holds the update ([`hold_after_int3`], or a phase hook).
    pub fn reset(&self, tramp: usize, point: hooks::TrapPoint) {
        for f in [&self.armed, &self.in_handler, &self.release] {
            f.store(false, Ordering::SeqCst);
        }
        self.dest.store(0, Ordering::SeqCst);
        self.result.store(0, Ordering::SeqCst);
        self.tramp.store(tramp, Ordering::SeqCst);
        self.at_steering
            .store(point == hooks::TrapPoint::Steering, Ordering::SeqCst);
        // SAFETY: the hook does not unwind, and only touches atomics and
        // spins (with a timeout): safe in a signal or `#BP` handler.
        unsafe { hooks::set_on_trap(Some(park_in_handler)) };
    }
}

/// Trap hook on the caller: park at the chosen point until released. (In
/// the kernel interrupts stay enabled, the `#BP` gate being a trap gate,
/// so the parked CPU answers every sync IPI of the updates meanwhile.)
pub fn park_in_handler(point: hooks::TrapPoint, tramp: usize, dest: usize) {
    let p = &PARKING;
    let want = if p.at_steering.load(Ordering::SeqCst) {
        hooks::TrapPoint::Steering
    } else {
        hooks::TrapPoint::Recognised
    };
    if tramp != p.tramp.load(Ordering::SeqCst)
        || point != want
        || p.in_handler.load(Ordering::SeqCst)
    {
        return;
    }
    p.dest.store(dest, Ordering::SeqCst);
    p.in_handler.store(true, Ordering::SeqCst);
    wait_for(&p.release);
}

/// Store hook on the updater: once the int3 is in place (and synced), wait
/// until the caller has trapped on it.
pub fn hold_after_int3(tramp: usize, _index: usize, store: Store) {
    let p = &PARKING;
    if tramp == p.tramp.load(Ordering::SeqCst)
        && store == Store::First(insn::INT3)
        && !p.armed.swap(true, Ordering::SeqCst)
    {
        wait_for(&p.in_handler);
    }
}
