//! Small CPU helpers: time from the TSC, serialising, interrupt masking.

use core::arch::x86_64::{__cpuid, _rdtsc};

/// TSC ticks per millisecond assumed for timeouts. Under TCG the TSC runs
/// at the host's rate (a few GHz), so timeouts last at least as long as
/// they say.
pub const TSC_PER_MS: u64 = 1_000_000;

/// This CPU's number.
pub fn id() -> usize {
    crate::apic::id()
}

/// The time-stamp counter.
pub fn ticks() -> u64 {
    // SAFETY: RDTSC is unprivileged and always present on x86-64.
    unsafe { _rdtsc() }
}

/// Spins until `done` holds or `timeout_ms` (at [`TSC_PER_MS`]) passed;
/// returns whether `done` held.
pub fn spin_until(timeout_ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let end = ticks() + timeout_ms * TSC_PER_MS;
    loop {
        if done() {
            return true;
        }
        if ticks() > end {
            return done();
        }
        core::hint::spin_loop();
    }
}

/// Executes a serialising instruction (CPUID): what the int3 protocol asks
/// of every CPU between its steps.
pub fn serialize() {
    // CPUID serialises instruction execution (SDM vol. 3, 9.3).
    let _ = __cpuid(0);
}

/// Runs `f` with interrupts masked on this CPU.
pub fn without_interrupts<R>(f: impl FnOnce() -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(f)
}
