//! A64 instruction words the trampoline uses: encoders and decoders.
//!
//! Pure functions over `u32` words, so they are unit-tested on any host.

/// `hint #34`: BTI C, the landing pad for calls and `br x16`/`br x17`.
pub const BTI_C: u32 = 0xd503_245f;
/// `nop` (`hint #0`).
pub const NOP: u32 = 0xd503_201f;
/// `br x16`.
pub const BR_X16: u32 = 0xd61f_0200;
/// `ret` (through x30).
pub const RET: u32 = 0xd65f_03c0;

const B_OPCODE: u32 = 0x1400_0000;
const B_MASK: u32 = 0xfc00_0000;
const IMM26_MASK: u32 = 0x03ff_ffff;

/// How far a `B` reaches: its offset is a signed 26-bit count of words.
pub const B_RANGE: core::ops::RangeInclusive<i64> = -(1 << 27)..=((1 << 27) - 4);

/// Encodes `b target` placed at `pc`, or `None` when the target is out of the
/// branch's ±128 MiB reach or either address is not word aligned.
///
/// ```
/// use static_call::arch::aarch64::insn::encode_b;
/// assert_eq!(encode_b(0x1000, 0x1008), Some(0x1400_0002));
/// assert_eq!(encode_b(0x1000, 0x1000 + (128 << 20)), None);
/// ```
pub fn encode_b(pc: u64, target: u64) -> Option<u32> {
    if !pc.is_multiple_of(4) || !target.is_multiple_of(4) {
        return None;
    }
    let offset = target.wrapping_sub(pc) as i64;
    if !B_RANGE.contains(&offset) {
        return None;
    }
    Some(B_OPCODE | ((offset >> 2) as u32 & IMM26_MASK))
}

/// Decodes a `B` at `pc` into its target, or `None` if `word` is not a `B`.
pub fn decode_b(pc: u64, word: u32) -> Option<u64> {
    if word & B_MASK != B_OPCODE {
        return None;
    }
    // Sign-extend imm26 (bits 0..26) and scale by the word size.
    let offset = (((word & IMM26_MASK) << 6) as i32 >> 6) as i64 * 4;
    Some(pc.wrapping_add(offset as u64))
}

/// Encodes `ldr x<rt>, <pc + offset>` (load literal, 64-bit).
pub fn encode_ldr_literal_x(rt: u32, offset: i64) -> Option<u32> {
    encode_imm19(0x5800_0000, rt, offset)
}

/// Encodes `cbz x<rt>, <pc + offset>`.
pub fn encode_cbz_x(rt: u32, offset: i64) -> Option<u32> {
    encode_imm19(0xb400_0000, rt, offset)
}

/// Encodes `movz x<rd>, #imm16, lsl #(16 * shift)`.
pub fn encode_movz_x(rd: u32, imm16: u16, shift: u32) -> u32 {
    0xd280_0000 | (shift & 3) << 21 | u32::from(imm16) << 5 | (rd & 31)
}

/// Encodes `movk x<rd>, #imm16, lsl #(16 * shift)`.
pub fn encode_movk_x(rd: u32, imm16: u16, shift: u32) -> u32 {
    0xf280_0000 | (shift & 3) << 21 | u32::from(imm16) << 5 | (rd & 31)
}

/// Encodes `add x<rd>, x<rn>, w<rm>, uxtw` (adds a zero-extended 32-bit argument).
pub fn encode_add_x_uxtw(rd: u32, rn: u32, rm: u32) -> u32 {
    0x8b20_4000 | (rm & 31) << 16 | (rn & 31) << 5 | (rd & 31)
}

/// Encodes `add x<rd>, x<rn>, x<rm>`.
pub fn encode_add_x(rd: u32, rn: u32, rm: u32) -> u32 {
    0x8b00_0000 | (rm & 31) << 16 | (rn & 31) << 5 | (rd & 31)
}

/// Encodes `str x<rt>, [x<rn>]`.
pub fn encode_str_x(rt: u32, rn: u32) -> u32 {
    0xf900_0000 | (rn & 31) << 5 | (rt & 31)
}

fn encode_imm19(opcode: u32, rt: u32, offset: i64) -> Option<u32> {
    if offset % 4 != 0 || !(-(1 << 20)..(1 << 20)).contains(&offset) || rt > 31 {
        return None;
    }
    Some(opcode | (((offset >> 2) as u32) & 0x7_ffff) << 5 | rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b_round_trips_across_its_whole_range() {
        let pc = 0x4008_0000_u64;
        for offset in [0_i64, 4, -4, 1 << 20, -(1 << 20), (1 << 27) - 4, -(1 << 27)] {
            let target = pc.wrapping_add(offset as u64);
            let word = encode_b(pc, target).expect("in range");
            assert_eq!(word & B_MASK, B_OPCODE);
            assert_eq!(decode_b(pc, word), Some(target), "offset {offset}");
        }
    }

    #[test]
    fn b_refuses_targets_out_of_reach_or_misaligned() {
        let pc = 0x4008_0000_u64;
        assert_eq!(encode_b(pc, pc + (1 << 27)), None);
        assert_eq!(encode_b(pc, pc.wrapping_sub((1 << 27) + 4)), None);
        assert_eq!(encode_b(pc, pc + 2), None);
        assert_eq!(encode_b(pc + 1, pc + 8), None);
        assert_eq!(encode_b(0, u64::MAX - 3), Some(B_OPCODE | IMM26_MASK));
    }

    #[test]
    fn known_encodings_match_the_assembler() {
        // Words as GNU as encodes them (checked against objdump output).
        assert_eq!(encode_b(0x1000, 0x1000), Some(0x1400_0000));
        assert_eq!(encode_b(0x1000, 0x0ffc), Some(0x17ff_ffff));
        assert_eq!(encode_ldr_literal_x(16, -16), Some(0x58ff_ff90));
        assert_eq!(encode_cbz_x(16, 8), Some(0xb400_0050));
        assert_eq!(encode_movz_x(0, 0x1234, 0), 0xd282_4680);
        assert_eq!(encode_movk_x(1, 0xbeef, 1), 0xf2b7_dde1);
        assert_eq!(encode_add_x_uxtw(0, 1, 0), 0x8b20_4020);
        assert_eq!(encode_add_x(2, 2, 1), 0x8b01_0042);
        assert_eq!(encode_str_x(2, 0), 0xf900_0002);
        assert_eq!(decode_b(0x1000, NOP), None);
    }

    #[test]
    fn imm19_forms_reject_unencodable_offsets() {
        assert_eq!(encode_cbz_x(16, 2), None);
        assert_eq!(encode_cbz_x(16, 1 << 20), None);
        assert_eq!(encode_ldr_literal_x(32, 8), None);
        assert!(encode_ldr_literal_x(16, -(1 << 20)).is_some());
    }
}
