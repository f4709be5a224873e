//! CPU identification and feature registers.
//!
//! `aarch64-cpu` provides most system registers, but (as of 11.2) neither
//! `CTR_EL0` nor the BT field of `ID_AA64PFR1_EL1`. `CTR_EL0` comes from
//! static-call's own reader, the one its cache maintenance uses, so the tests
//! check the values that code really works with; `ID_AA64PFR1_EL1` is read
//! here with a plain `mrs`.

use core::arch::asm;
use core::fmt;

use aarch64_cpu::registers::{CNTFRQ_EL0, CNTPCT_EL0, CurrentEL, MPIDR_EL1, Readable};
use static_call::arch::aarch64::ctr::CacheType;

/// The exception level this CPU runs at (1 or 2 on the virt board).
pub fn current_el() -> u8 {
    CurrentEL.read(CurrentEL::EL) as u8
}

/// This CPU's number: affinity level 0 of MPIDR_EL1, which QEMU's virt board
/// numbers 0..n for up to 8 CPUs.
pub fn id() -> usize {
    (MPIDR_EL1.get() & 0xff) as usize
}

/// Raw `ID_AA64PFR1_EL1`.
pub fn read_id_aa64pfr1_el1() -> u64 {
    let value: u64;
    // SAFETY: ID registers are read-only and side-effect free at EL1 and above.
    unsafe {
        asm!("mrs {}, id_aa64pfr1_el1", out(reg) value, options(nomem, nostack, preserves_flags))
    };
    value
}

/// `ID_AA64PFR1_EL1.BT`: 1 when FEAT_BTI is implemented.
pub fn bti_field() -> u64 {
    read_id_aa64pfr1_el1() & 0xf
}

/// The cache geometry that matters for patching code, decoded from `CTR_EL0`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheGeometry {
    /// The raw register value.
    pub raw: u64,
    /// Smallest instruction-cache line, in bytes (IminLine).
    pub i_line: usize,
    /// Smallest data-cache line, in bytes (DminLine).
    pub d_line: usize,
    /// IDC: cleaning the D-cache to the point of unification is not needed
    /// for instruction-to-data coherence.
    pub idc: bool,
    /// DIC: invalidating the I-cache to the point of unification is not
    /// needed for instruction-to-data coherence.
    pub dic: bool,
}

impl CacheGeometry {
    /// Decodes a `CTR_EL0` value with static-call's decoder.
    pub fn from_ctr(raw: u64) -> Self {
        Self::from(CacheType::new(raw))
    }

    /// This CPU's geometry, read by static-call.
    pub fn read() -> Self {
        Self::from(static_call::arch::aarch64::read_ctr_el0())
    }
}

impl From<CacheType> for CacheGeometry {
    fn from(ctr: CacheType) -> Self {
        Self {
            raw: ctr.raw(),
            i_line: ctr.icache_line(),
            d_line: ctr.dcache_line(),
            idc: ctr.clean_not_required(),
            dic: ctr.invalidate_not_required(),
        }
    }
}

impl fmt::Display for CacheGeometry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "CTR_EL0={:#x}: IminLine {} bytes, DminLine {} bytes, IDC={} ({}), DIC={} ({})",
            self.raw,
            self.i_line,
            self.d_line,
            self.idc as u8,
            if self.idc {
                "no D-cache clean needed before executing written code"
            } else {
                "D-cache clean to PoU needed"
            },
            self.dic as u8,
            if self.dic {
                "no I-cache invalidate needed"
            } else {
                "I-cache invalidate to PoU needed"
            },
        )
    }
}

/// Spins until `done()` holds or `timeout_ms` milliseconds of the generic
/// timer have passed. Returns whether `done()` held.
pub fn spin_until(timeout_ms: u64, mut done: impl FnMut() -> bool) -> bool {
    let freq = CNTFRQ_EL0.get().max(1);
    let start = CNTPCT_EL0.get();
    let ticks = freq.saturating_mul(timeout_ms) / 1000;
    loop {
        if done() {
            return true;
        }
        if CNTPCT_EL0.get().wrapping_sub(start) > ticks {
            return done();
        }
        core::hint::spin_loop();
    }
}

/// Runs `f` with IRQs masked on this CPU, then restores the mask as it was.
/// A pending IRQ still ends a `WFI` inside `f` (the architecture wakes on it
/// whatever PSTATE.I says) and is taken once the mask is restored.
pub fn with_irqs_masked<T>(f: impl FnOnce() -> T) -> T {
    let daif: u64;
    // SAFETY: saving DAIF and masking IRQs only delays interrupts on this
    // CPU; DAIF is restored below.
    unsafe { asm!("mrs {}, daif", "msr daifset, #2", out(reg) daif, options(nomem, nostack)) };
    let result = f();
    // SAFETY: restores the interrupt mask saved above.
    unsafe { asm!("msr daif, {}", in(reg) daif, options(nomem, nostack)) };
    result
}

/// Milliseconds on the generic timer since an arbitrary origin.
pub fn now_ms() -> u64 {
    CNTPCT_EL0.get() * 1000 / CNTFRQ_EL0.get().max(1)
}
