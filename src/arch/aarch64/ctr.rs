//! CTR_EL0, the cache type register: line sizes and whether cache
//! maintenance may be skipped. Field decoding is pure and host-tested; the
//! register read is in the target-only `cache` module.

use tock_registers::LocalRegisterCopy;

pub use fields::CTR_EL0;

#[allow(missing_docs)]
mod fields {
    tock_registers::register_bitfields! {u64,
    /// Cache Type Register fields used for instruction-cache maintenance.
    pub CTR_EL0 [
        /// Instruction cache invalidation to the PoU is not required.
        DIC OFFSET(29) NUMBITS(1) [],
        /// Data cache clean to the PoU is not required.
        IDC OFFSET(28) NUMBITS(1) [],
        /// log2 of the words in the smallest data cache line.
        DminLine OFFSET(16) NUMBITS(4) [],
        /// log2 of the words in the smallest instruction cache line.
        IminLine OFFSET(0) NUMBITS(4) []
    ]
    }
}

/// A decoded CTR_EL0 value.
///
/// ```
/// use static_call::arch::aarch64::ctr::CacheType;
/// let ctr = CacheType::new(0x8444_c004);
/// assert_eq!((ctr.dcache_line(), ctr.icache_line()), (64, 64));
/// ```
#[derive(Clone, Copy)]
pub struct CacheType(LocalRegisterCopy<u64, CTR_EL0::Register>);

impl CacheType {
    /// Decodes a raw CTR_EL0 value.
    pub fn new(raw: u64) -> Self {
        CacheType(LocalRegisterCopy::new(raw))
    }

    /// The raw register value.
    pub fn raw(&self) -> u64 {
        self.0.get()
    }

    /// Smallest data cache line, in bytes.
    pub fn dcache_line(&self) -> usize {
        4 << self.0.read(CTR_EL0::DminLine)
    }

    /// Smallest instruction cache line, in bytes.
    pub fn icache_line(&self) -> usize {
        4 << self.0.read(CTR_EL0::IminLine)
    }

    /// Whether `DC CVAU` may be skipped (CTR_EL0.IDC).
    pub fn clean_not_required(&self) -> bool {
        self.0.is_set(CTR_EL0::IDC)
    }

    /// Whether `IC IVAU` may be skipped (CTR_EL0.DIC).
    pub fn invalidate_not_required(&self) -> bool {
        self.0.is_set(CTR_EL0::DIC)
    }
}

/// The start of every `line`-byte cache line that `start..start + len`
/// touches: the addresses cache maintenance by VA must visit.
///
/// ```
/// use static_call::arch::aarch64::ctr::line_starts;
/// let lines: Vec<usize> = line_starts(0x1038, 16, 64).collect();
/// assert_eq!(lines, [0x1000, 0x1040]);
/// ```
pub fn line_starts(start: usize, len: usize, line: usize) -> impl Iterator<Item = usize> {
    let end = start + len;
    (start & !(line - 1)..end).step_by(line)
}

impl core::fmt::Debug for CacheType {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("CacheType")
            .field("raw", &format_args!("{:#x}", self.raw()))
            .field("dcache_line", &self.dcache_line())
            .field("icache_line", &self.icache_line())
            .field("idc", &self.clean_not_required())
            .field("dic", &self.invalidate_not_required())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_value_qemu_user_reports() {
        // Read with `mrs ctr_el0` at EL0 under qemu-aarch64.
        let c = CacheType::new(0x8003_8003);
        assert_eq!((c.dcache_line(), c.icache_line()), (32, 32));
        assert!(!c.clean_not_required() && !c.invalidate_not_required());
    }

    #[test]
    fn line_starts_cover_exactly_the_touched_lines() {
        let lines = |s, l, line| line_starts(s, l, line).collect::<std::vec::Vec<_>>();
        // The 16-byte window never straddles a line of 16 bytes or more.
        assert_eq!(lines(0x4008_1000, 16, 64), [0x4008_1000]);
        assert_eq!(lines(0x4008_1030, 16, 64), [0x4008_1000]);
        assert_eq!(lines(0x4008_1030, 16, 16), [0x4008_1030]);
        assert_eq!(
            lines(0x4008_1030, 16, 4),
            [0x4008_1030, 0x4008_1034, 0x4008_1038, 0x4008_103c]
        );
        assert_eq!(lines(0x103c, 8, 32), [0x1020, 0x1040]);
        assert!(lines(0x1000, 0, 64).is_empty());
    }

    #[test]
    fn decodes_idc_dic_and_line_sizes() {
        let c = CacheType::new(1 << 29 | 1 << 28 | 4 << 16 | 4);
        assert_eq!((c.dcache_line(), c.icache_line()), (64, 64));
        assert!(c.clean_not_required() && c.invalidate_not_required());
    }
}
