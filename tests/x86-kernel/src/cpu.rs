//! Small CPU helpers: time from the TSC, serialising, interrupt masking.

use core::arch::x86_64::{__cpuid, _rdtsc};
use core::sync::atomic::{AtomicU64, Ordering};

use x86_64::instructions::port::Port;

/// TSC ticks per millisecond, measured against the PIT at boot
/// ([`calibrate_tsc`]); until then a low guess, so early timeouts last at
/// least as long as they say.
static TSC_PER_MS: AtomicU64 = AtomicU64::new(1_000_000);

/// TSC ticks per millisecond.
pub fn tsc_per_ms() -> u64 {
    TSC_PER_MS.load(Ordering::Relaxed)
}

/// Measures the TSC against 10 ms of the PIT's channel 2 (1.193182 MHz,
/// gated through port 0x61, as Linux's `pit_calibrate_tsc` does). Boot CPU,
/// once.
pub fn calibrate_tsc() {
    const PIT_HZ: u64 = 1_193_182;
    const MS: u64 = 10;
    let count = (PIT_HZ * MS / 1000) as u16;
    let mut gate = Port::<u8>::new(0x61);
    let mut command = Port::<u8>::new(0x43);
    let mut channel2 = Port::<u8>::new(0x42);
    // SAFETY: the PC's PIT and its gate/speaker port: channel 2 counts
    // down once (mode 0) with the speaker off; nothing else uses it.
    let ticks = unsafe {
        let speaker = gate.read();
        gate.write((speaker & !0x02) | 0x01);
        command.write(0xb0);
        channel2.write(count as u8);
        channel2.write((count >> 8) as u8);
        let start = ticks();
        while gate.read() & 0x20 == 0 {
            core::hint::spin_loop();
        }
        ticks() - start
    };
    if ticks > MS {
        TSC_PER_MS.store(ticks / MS, Ordering::Relaxed);
    }
}

/// This CPU's number.
pub fn id() -> usize {
    crate::apic::id()
}

/// The time-stamp counter.
pub fn ticks() -> u64 {
    // SAFETY: RDTSC is unprivileged and always present on x86-64.
    unsafe { _rdtsc() }
}

/// Spins until `done` holds or `timeout_ms` passed;
/// returns whether `done` held.
pub fn spin_until(timeout_ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let end = ticks() + timeout_ms * tsc_per_ms();
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
