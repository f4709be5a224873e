//! The x86-64 instructions a trampoline is made of: encoders and decoders.
//!
//! Pure functions over byte arrays, so they are unit-tested on any host.

/// `jmp rel32` opcode (`jmp.d32`): 5 bytes, `e9` + signed 32-bit offset from
/// the end of the instruction.
pub const JMP_REL32: u8 = 0xe9;
/// Length of `jmp rel32`.
pub const JMP_REL32_LEN: usize = 5;
/// `ret`.
pub const RET: u8 = 0xc3;
/// `int3`: the breakpoint the patch protocol puts over the first byte.
pub const INT3: u8 = 0xcc;
/// `ud1 %esp, %ecx`: an invalid opcode that stops straight-line speculation
/// past the `jmp`, and the signature the patcher checks before it writes
/// (as Linux's `__static_call_validate` does).
pub const UD1_ESP_ECX: [u8; 3] = [0x0f, 0xb9, 0xcc];
/// `jmp *disp32(%rip)` opcode and ModRM byte: 6 bytes with the displacement.
pub const JMP_RIP_INDIRECT: [u8; 2] = [0xff, 0x25];
/// Length of `jmp *disp32(%rip)`.
pub const JMP_RIP_INDIRECT_LEN: usize = 6;

/// The rel32 offset of a 5-byte relative branch at `pc` to `target`, or
/// `None` when `target` is beyond its ±2 GiB reach.
fn rel32(pc: u64, target: u64) -> Option<i32> {
    let offset = target.wrapping_sub(pc.wrapping_add(JMP_REL32_LEN as u64)) as i64;
    i32::try_from(offset).ok()
}

/// Whether a `jmp rel32` placed at `pc` can reach `target`.
pub fn reaches(pc: u64, target: u64) -> bool {
    rel32(pc, target).is_some()
}

/// Encodes `jmp rel32` placed at `pc`, or `None` when `target` is out of reach.
///
/// ```
/// use static_call::arch::x86_64::insn::{decode_jmp_rel32, encode_jmp_rel32};
/// let jmp = encode_jmp_rel32(0x1000, 0x1010).unwrap();
/// assert_eq!(jmp, [0xe9, 0x0b, 0, 0, 0]);
/// assert_eq!(decode_jmp_rel32(0x1000, &jmp), Some(0x1010));
/// assert_eq!(encode_jmp_rel32(0x1000, 0x1000 + (4 << 30)), None);
/// ```
pub fn encode_jmp_rel32(pc: u64, target: u64) -> Option<[u8; JMP_REL32_LEN]> {
    let d = rel32(pc, target)?.to_le_bytes();
    Some([JMP_REL32, d[0], d[1], d[2], d[3]])
}

/// Decodes a `jmp rel32` at `pc` into its target, or `None` if `bytes` is
/// not one.
pub fn decode_jmp_rel32(pc: u64, bytes: &[u8; JMP_REL32_LEN]) -> Option<u64> {
    if bytes[0] != JMP_REL32 {
        return None;
    }
    let d = i32::from_le_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Some(
        pc.wrapping_add(JMP_REL32_LEN as u64)
            .wrapping_add(i64::from(d) as u64),
    )
}

/// Encodes `jmp *slot(%rip)` placed at `pc` (a jump to the address stored
/// at `slot`), or `None` when `slot` is out of the displacement's reach.
pub fn encode_jmp_rip_indirect(pc: u64, slot: u64) -> Option<[u8; JMP_RIP_INDIRECT_LEN]> {
    let offset = slot.wrapping_sub(pc.wrapping_add(JMP_RIP_INDIRECT_LEN as u64)) as i64;
    let d = i32::try_from(offset).ok()?.to_le_bytes();
    Some([
        JMP_RIP_INDIRECT[0],
        JMP_RIP_INDIRECT[1],
        d[0],
        d[1],
        d[2],
        d[3],
    ])
}

/// Decodes a `jmp *disp32(%rip)` at `pc` into the address of the slot it
/// loads its target from, or `None` if `bytes` is not one.
pub fn decode_jmp_rip_indirect(pc: u64, bytes: &[u8; JMP_RIP_INDIRECT_LEN]) -> Option<u64> {
    if bytes[..2] != JMP_RIP_INDIRECT {
        return None;
    }
    let d = i32::from_le_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
    Some(
        pc.wrapping_add(JMP_RIP_INDIRECT_LEN as u64)
            .wrapping_add(i64::from(d) as u64),
    )
}

/// `movabs $imm, %r11; jmp *%r11`: a 13-byte absolute jump through a
/// scratch register that no calling convention passes arguments in. Tests
/// use it to build far thunks by hand.
pub fn encode_movabs_r11_jmp(target: u64) -> [u8; 13] {
    let t = target.to_le_bytes();
    [
        0x49, 0xbb, t[0], t[1], t[2], t[3], t[4], t[5], t[6], t[7], // movabs $t, %r11
        0x41, 0xff, 0xe3, // jmp *%r11
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jmp_rel32_round_trips_across_its_whole_range() {
        let pc = 0x5555_5555_0000_u64;
        for offset in [0_i64, 1, -1, -5, 1 << 20, i32::MAX as i64, i32::MIN as i64] {
            let target = (pc + 5).wrapping_add(offset as u64);
            let bytes = encode_jmp_rel32(pc, target).expect("in reach");
            assert_eq!(bytes[0], JMP_REL32);
            assert_eq!(decode_jmp_rel32(pc, &bytes), Some(target), "{offset}");
            assert!(reaches(pc, target));
        }
    }

    #[test]
    fn jmp_rel32_refuses_targets_beyond_2_gib() {
        let pc = 0x5555_5555_0000_u64;
        let end = pc + 5;
        assert_eq!(encode_jmp_rel32(pc, end + (1 << 31)), None);
        assert_eq!(encode_jmp_rel32(pc, end - (1 << 31) - 1), None);
        assert!(!reaches(pc, 0x7fff_0000_0000));
        // The boundary is exact on both sides.
        assert!(reaches(pc, end + (1 << 31) - 1));
        assert!(reaches(pc, end - (1 << 31)));
    }

    #[test]
    fn known_encodings_match_the_assembler() {
        // As GNU as encodes them (checked against objdump output).
        // jmp to the next instruction: e9 00 00 00 00.
        assert_eq!(encode_jmp_rel32(0x1000, 0x1005), Some([0xe9, 0, 0, 0, 0]));
        // jmp to itself: e9 fb ff ff ff.
        assert_eq!(
            encode_jmp_rel32(0x1000, 0x1000),
            Some([0xe9, 0xfb, 0xff, 0xff, 0xff])
        );
        // jmp *0x2(%rip): ff 25 02 00 00 00.
        assert_eq!(
            encode_jmp_rip_indirect(0x1000, 0x1008),
            Some([0xff, 0x25, 2, 0, 0, 0])
        );
        assert_eq!(
            decode_jmp_rip_indirect(0x1000, &[0xff, 0x25, 2, 0, 0, 0]),
            Some(0x1008)
        );
        assert_eq!(
            decode_jmp_rel32(0x1000, &[RET, INT3, INT3, INT3, INT3]),
            None
        );
        assert_eq!(
            decode_jmp_rip_indirect(0x1000, &[0xff, 0x15, 2, 0, 0, 0]),
            None
        );
        assert_eq!(
            encode_movabs_r11_jmp(0x1122_3344_5566_7788),
            [
                0x49, 0xbb, 0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0x41, 0xff, 0xe3
            ]
        );
    }
}
