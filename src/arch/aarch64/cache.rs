//! Instruction-cache maintenance after writing code through the data side.

use super::ctr::{CacheType, line_starts};
use aarch64_cpu::asm::barrier;
use core::arch::asm;

/// Reads CTR_EL0 (readable at EL0 on Linux, which sets SCTLR_EL1.UCT).
/// `aarch64-cpu` has no CTR_EL0, so the read is an `mrs` here and the
/// fields are decoded with `tock-registers` in [`super::ctr`].
pub fn read_ctr_el0() -> CacheType {
    let raw: u64;
    // SAFETY: reading CTR_EL0 has no side effects.
    unsafe { asm!("mrs {}, ctr_el0", out(reg) raw, options(nomem, nostack, preserves_flags)) };
    CacheType::new(raw)
}

/// Makes instructions written to `start..start + len` through the data side
/// visible to instruction fetch on every CPU in the inner-shareable domain:
/// `DC CVAU` per data line (skipped when CTR_EL0.IDC), `DSB ISH`, `IC IVAU`
/// per instruction line (skipped when CTR_EL0.DIC), `DSB ISH`, `ISB`.
///
/// The leading `DSB ISH` completes stores made through another mapping (a
/// writable alias) before maintenance by this address. Other CPUs still
/// need a context synchronization event to drop instructions they already
/// fetched; that is the text writer's `sync_cores`.
pub fn flush_icache_range(start: usize, len: usize) {
    let ctr = read_ctr_el0();
    barrier::dsb(barrier::ISH);
    if !ctr.clean_not_required() {
        for addr in line_starts(start, len, ctr.dcache_line()) {
            // SAFETY: cleaning a data cache line by address has no effect
            // on memory contents; `addr` is in the caller's mapped range.
            unsafe { asm!("dc cvau, {}", in(reg) addr, options(nostack, preserves_flags)) };
        }
        barrier::dsb(barrier::ISH);
    }
    if !ctr.invalidate_not_required() {
        for addr in line_starts(start, len, ctr.icache_line()) {
            // SAFETY: invalidating instruction cache lines has no effect on
            // memory contents; `addr` is in the caller's mapped range.
            unsafe { asm!("ic ivau, {}", in(reg) addr, options(nostack, preserves_flags)) };
        }
        barrier::dsb(barrier::ISH);
    }
    barrier::isb(barrier::SY);
}

/// [`flush_icache_range`] for many single instruction words at once (the
/// inline call sites of an update): one `DC CVAU` and one `IC IVAU` per
/// word's line, with the barriers once for all of them.
pub fn flush_icache_words(words: impl Iterator<Item = usize> + Clone) {
    let ctr = read_ctr_el0();
    let line = |addr: usize, size: usize| addr & !(size - 1);
    barrier::dsb(barrier::ISH);
    if !ctr.clean_not_required() {
        for addr in words.clone() {
            // SAFETY: as in `flush_icache_range`: maintenance by address
            // of a mapped line changes no memory contents.
            unsafe {
                asm!("dc cvau, {}", in(reg) line(addr, ctr.dcache_line()), options(nostack, preserves_flags))
            };
        }
        barrier::dsb(barrier::ISH);
    }
    if !ctr.invalidate_not_required() {
        for addr in words {
            // SAFETY: as above.
            unsafe {
                asm!("ic ivau, {}", in(reg) line(addr, ctr.icache_line()), options(nostack, preserves_flags))
            };
        }
        barrier::dsb(barrier::ISH);
    }
    barrier::isb(barrier::SY);
}
