//! Property tests of the instruction encoders and the trampoline decoders of
//! both architecture backends, through the public API. They are pure
//! functions, compiled on every host, so these run everywhere.
//!
//! - Every encoder: decoding what it encodes gives back its input over the
//!   whole valid range, and the edges of that range are exact.
//! - Every decoder: decoding and re-encoding gives back the bytes.
//! - The trampoline decoders accept an image exactly when it has one of the
//!   shapes a trampoline can have (checked against an independent statement
//!   of those shapes, on images that are mostly right but have random words
//!   or bytes), and what they accept re-plans to the same bytes or, where
//!   it does not, still sends a call where the decoder says it goes.
//! - Every planned trampoline decodes back to the target it was planned for.
//!
//! (rustfmt leaves the bodies inside `proptest!` alone: they are wrapped by
//! hand.)

use proptest::prelude::*;
use static_call::Error;

/// A call's destination: `Some(address)`, or `None` when it returns (NULL).
type Dest = Option<u64>;

/// An offset of any magnitude, each bit length as likely as another (so
/// offsets in and out of a branch's reach are both common).
fn any_scale() -> impl Strategy<Value = i64> {
    (any::<i64>(), 0..64u32).prop_map(|(x, shift)| x >> shift)
}

mod aarch64 {
    use super::*;
    use static_call::arch::aarch64::insn::{self, BR_X16, BTI_C, NOP, RET};
    use static_call::arch::aarch64::{Branch, Patch, TRAMPOLINE_LEN, WINDOW_ALIGN};
    use static_call::arch::aarch64::{decode, plan, window_of};

    /// `B`'s reach in bytes: a signed 26-bit count of words.
    const B_MAX: i64 = (1 << 27) - 4;
    const B_MIN: i64 = -(1 << 27);
    /// Load literal and `cbz` reach in bytes: a signed 19-bit count of words.
    const IMM19_MAX: i64 = (1 << 20) - 4;
    const IMM19_MIN: i64 = -(1 << 20);

    fn aligned_pc() -> impl Strategy<Value = u64> {
        any::<u64>().prop_map(|x| x & !3)
    }

    /// An entry address whose window (8 bytes before it) is aligned.
    fn tramp() -> impl Strategy<Value = u64> {
        any::<u64>().prop_map(|x| (x & !(WINDOW_ALIGN as u64 - 1)) | 8)
    }

    /// Reads the signed imm19 field of a load literal or `cbz` as a byte
    /// offset.
    fn imm19_offset(word: u32) -> i64 {
        i64::from(((((word >> 5) & 0x7_ffff) << 13) as i32) >> 13) * 4
    }

    /// `ldr x16, <literal>` and `cbz x16, <ret>` as they sit in a
    /// trampoline: the literal is 16 bytes back, the `ret` 8 bytes forward.
    fn ldr_x16() -> u32 {
        insn::encode_ldr_literal_x(16, -16).unwrap()
    }
    fn cbz_x16() -> u32 {
        insn::encode_cbz_x(16, 8).unwrap()
    }

    /// The 32 bytes of a trampoline window: the literal, then six words
    /// (`bti c`, the branch, `ldr`, `cbz`, `br`, `ret` when well formed).
    fn window(literal: u64, words: [u32; 6]) -> [u8; TRAMPOLINE_LEN] {
        let mut b = [0u8; TRAMPOLINE_LEN];
        b[..8].copy_from_slice(&literal.to_le_bytes());
        for (i, w) in words.iter().enumerate() {
            b[8 + 4 * i..12 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    /// The window a patch leaves, with the trampoline's fixed code.
    fn image(p: Patch) -> [u8; TRAMPOLINE_LEN] {
        let words = [
            p.entry as u32,
            p.branch_word(),
            ldr_x16(),
            cbz_x16(),
            BR_X16,
            RET,
        ];
        window(p.literal, words)
    }

    /// Where a call entering the window goes, by the instruction semantics:
    /// `b` to its destination; otherwise `nop`, load the literal, return if
    /// it is 0, branch to it if not.
    fn run(tramp: u64, bytes: &[u8; TRAMPOLINE_LEN]) -> Dest {
        let branch = u32::from_le_bytes(bytes[12..16].try_into().unwrap());
        let literal = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        match insn::decode_b(tramp + 4, branch) {
            Some(dest) => Some(dest),
            None => (literal != 0).then_some(literal),
        }
    }

    /// The shapes a trampoline window may have, stated independently of the
    /// decoder: fixed code everywhere but the branch word; the branch word a
    /// `nop` (with a literal that is 0 or an instruction address), or a `b`
    /// that agrees with the literal (or any `b` with a literal of 0, as
    /// assembled). `Err(offset)`: the word that breaks the shape, checking
    /// the fixed code first (offset 0: the literal).
    fn shape(tramp: u64, literal: u64, words: &[u32; 6]) -> Result<(), usize> {
        let fixed = [
            (0, BTI_C),
            (2, ldr_x16()),
            (3, cbz_x16()),
            (4, BR_X16),
            (5, RET),
        ];
        if let Some(&(i, _)) = fixed.iter().find(|&&(i, w)| words[i] != w) {
            return Err(8 + 4 * i);
        }
        let branch = words[1];
        let agrees = match insn::decode_b(tramp + 4, branch) {
            Some(dest) => literal == 0 || dest == literal,
            None if branch == NOP && !literal.is_multiple_of(4) => return Err(0),
            None => branch == NOP,
        };
        if agrees { Ok(()) } else { Err(12) }
    }

    /// The refusal `decode` must give for a window that breaks the shape at
    /// `offset`: the window's address, the offset and the word found there.
    fn refusal(tramp: u64, literal: u64, words: &[u32; 6], offset: usize) -> Error {
        Error::UnrecognisedTrampoline {
            addr: tramp as usize - 8,
            offset,
            found: match offset {
                0 => literal,
                _ => u64::from(words[(offset - 8) / 4]),
            },
        }
    }

    /// A trampoline window that is mostly right: each fixed word is
    /// sometimes replaced, and the branch word and literal are drawn from
    /// the values that matter (a `nop`, a `b` anywhere, any word; a literal
    /// of 0, the `b`'s destination, an address in its reach, anything).
    fn near_miss() -> impl Strategy<Value = (u64, u64, [u32; 6])> {
        let word = |good: u32| {
            prop_oneof![12 => Just(good), 1 => any::<u32>(), 1 => Just(good ^ 1)].boxed()
        };
        let fixed = (
            word(BTI_C),
            word(ldr_x16()),
            word(cbz_x16()),
            word(BR_X16),
            word(RET),
        );
        let kinds = (0..4u8, 0..4u8);
        (tramp(), kinds, any::<u32>(), any::<u64>(), fixed).prop_map(
            |(tramp, (branch_kind, literal_kind), imm, rand, (bti, ldr, cbz, br, ret))| {
                let branch = match branch_kind {
                    0 => NOP,
                    1 | 2 => 0x1400_0000 | (imm & 0x03ff_ffff),
                    _ => imm,
                };
                let dest = insn::decode_b(tramp + 4, branch);
                // An aligned address in the branch's reach.
                let near = (tramp + 4).wrapping_add(((rand as i64) >> 36 << 2) as u64);
                let literal = match (literal_kind, dest) {
                    (0, _) => 0,
                    (1, Some(dest)) => dest,
                    (1 | 2, _) => near,
                    _ => rand,
                };
                (tramp, literal, [bti, branch, ldr, cbz, br, ret])
            },
        )
    }

    proptest! {
        #[test]
        fn b_round_trips_over_its_whole_reach(
            pc in aligned_pc(),
            words in (B_MIN / 4)..=(B_MAX / 4),
        ) {
            let target = pc.wrapping_add((words * 4) as u64);
            let word = insn::encode_b(pc, target);
            prop_assert!(word.is_some(), "{pc:#x} -> {target:#x} refused");
            let word = word.unwrap();
            prop_assert_eq!(word >> 26, 0b000101, "not a B: {:#x}", word);
            prop_assert_eq!(insn::decode_b(pc, word), Some(target));
        }

        #[test]
        fn every_b_word_re_encodes_to_itself(pc in aligned_pc(), imm26 in 0..(1u32 << 26)) {
            let word = 0x1400_0000 | imm26;
            let target = insn::decode_b(pc, word).unwrap();
            prop_assert_eq!(target % 4, 0);
            prop_assert_eq!(insn::encode_b(pc, target), Some(word));
        }

        #[test]
        fn only_b_words_decode_as_b(pc in aligned_pc(), word in any::<u32>()) {
            prop_assert_eq!(insn::decode_b(pc, word).is_some(), word >> 26 == 0b000101);
        }

        #[test]
        fn b_reach_ends_exactly_at_128_mib(pc in aligned_pc()) {
            let at = |offset: i64| insn::encode_b(pc, pc.wrapping_add(offset as u64));
            prop_assert!(at(B_MAX).is_some());
            prop_assert_eq!(at(B_MAX + 4), None);
            prop_assert!(at(B_MIN).is_some());
            prop_assert_eq!(at(B_MIN - 4), None);
        }

        #[test]
        fn b_refuses_every_target_out_of_reach(pc in aligned_pc(), offset in any_scale()) {
            let offset = offset & !3;
            let in_reach = (B_MIN..=B_MAX).contains(&offset);
            let target = pc.wrapping_add(offset as u64);
            prop_assert_eq!(insn::encode_b(pc, target).is_some(), in_reach);
        }

        #[test]
        fn b_refuses_misaligned_addresses(
            pc in aligned_pc(),
            words in -1000i64..1000,
            skew in 1..4u64,
        ) {
            let target = pc.wrapping_add((words * 4) as u64);
            prop_assert_eq!(insn::encode_b(pc, target.wrapping_add(skew)), None);
            prop_assert_eq!(insn::encode_b(pc.wrapping_add(skew), target), None);
        }

        #[test]
        fn imm19_forms_round_trip_over_their_reach(
            rt in 0..32u32,
            words in (IMM19_MIN / 4)..=(IMM19_MAX / 4),
        ) {
            let offset = words * 4;
            let ldr = insn::encode_ldr_literal_x(rt, offset).unwrap();
            let cbz = insn::encode_cbz_x(rt, offset).unwrap();
            for (word, opcode) in [(ldr, 0x58), (cbz, 0xb4)] {
                prop_assert_eq!(word >> 24, opcode, "{:#x}", word);
                prop_assert_eq!(word & 31, rt);
                prop_assert_eq!(imm19_offset(word), offset);
            }
        }

        #[test]
        fn imm19_forms_refuse_what_they_cannot_encode(
            rt in 0..64u32,
            offset in prop_oneof![
                -(1i64 << 22)..(1i64 << 22),
                (-8i64..8).prop_map(|d| IMM19_MAX + d),
                (-8i64..8).prop_map(|d| IMM19_MIN + d),
            ],
        ) {
            let encodable =
                rt < 32 && offset % 4 == 0 && (IMM19_MIN..=IMM19_MAX).contains(&offset);
            prop_assert_eq!(insn::encode_ldr_literal_x(rt, offset).is_some(), encodable);
            prop_assert_eq!(insn::encode_cbz_x(rt, offset).is_some(), encodable);
        }

        #[test]
        fn register_forms_keep_their_fields_apart(
            rd in 0..32u32,
            rn in 0..32u32,
            rm in 0..32u32,
            imm16 in any::<u16>(),
            shift in 0..4u32,
        ) {
            for (word, opcode) in [
                (insn::encode_movz_x(rd, imm16, shift), 0xd280_0000),
                (insn::encode_movk_x(rd, imm16, shift), 0xf280_0000),
            ] {
                prop_assert_eq!(word & 0xff80_0000, opcode, "{:#x}", word);
                prop_assert_eq!((word >> 21) & 3, shift);
                prop_assert_eq!((word >> 5) & 0xffff, u32::from(imm16));
                prop_assert_eq!(word & 31, rd);
            }
            for (word, fixed) in [
                (insn::encode_add_x_uxtw(rd, rn, rm), 0x8b20_4000),
                (insn::encode_add_x(rd, rn, rm), 0x8b00_0000),
            ] {
                prop_assert_eq!(word & 0xffe0_fc00, fixed, "{:#x}", word);
                let fields = ((word >> 16) & 31, (word >> 5) & 31, word & 31);
                prop_assert_eq!(fields, (rm, rn, rd));
            }
            let str_x = insn::encode_str_x(rd, rn);
            prop_assert_eq!(str_x & 0xffff_fc00, 0xf900_0000);
            prop_assert_eq!(((str_x >> 5) & 31, str_x & 31), (rn, rd));
        }

        #[test]
        fn windows_must_be_16_byte_aligned(tramp in any::<usize>()) {
            let window = tramp.wrapping_sub(8);
            let expected = if window % WINDOW_ALIGN == 0 {
                Ok(window)
            } else {
                Err(Error::MisalignedTrampoline { addr: tramp, align: WINDOW_ALIGN })
            };
            prop_assert_eq!(window_of(tramp), expected);
        }

        #[test]
        fn every_plan_decodes_back_to_its_target(
            tramp in tramp(),
            offset in any_scale(),
            null in prop::bool::weighted(0.1),
        ) {
            let target = if null { 0 } else { (tramp + 4).wrapping_add(offset as u64 & !3) };
            let patch = plan(tramp, target).unwrap();
            let bytes = image(patch);
            let t = decode(tramp as usize, &bytes).unwrap();
            prop_assert_eq!(t.target, target);
            prop_assert_eq!(t.patch(), patch);
            let near = target != 0 && insn::encode_b(tramp + 4, target).is_some();
            prop_assert_eq!(t.branch, if near { Branch::B(target) } else { Branch::Nop });
            // And a call goes there (returns, for NULL).
            prop_assert_eq!(run(tramp, &bytes), (target != 0).then_some(target));
        }

        #[test]
        fn plans_around_the_reach_and_for_null_decode_back(
            tramp in tramp(),
            words in prop_oneof![
                (B_MIN / 4 - 8)..=(B_MIN / 4 + 8),
                (B_MAX / 4 - 8)..=(B_MAX / 4 + 8),
                (B_MIN / 4 - 8)..=(B_MAX / 4 + 8),
            ],
            null in prop::bool::weighted(0.1),
        ) {
            let target = if null { 0 } else { (tramp + 4).wrapping_add((words * 4) as u64) };
            let t = decode(tramp as usize, &image(plan(tramp, target).unwrap())).unwrap();
            prop_assert_eq!(t.target, target);
            let near = target != 0 && (B_MIN..=B_MAX).contains(&(words * 4));
            prop_assert_eq!(t.branch == Branch::Nop, !near);
        }

        #[test]
        fn plan_reach_ends_exactly_at_the_branch_reach(tramp in tramp()) {
            let branch = |offset: i64| {
                plan(tramp, (tramp + 4).wrapping_add(offset as u64)).unwrap().branch_word()
            };
            prop_assert_ne!(branch(B_MAX), NOP);
            prop_assert_eq!(branch(B_MAX + 4), NOP);
            prop_assert_ne!(branch(B_MIN), NOP);
            prop_assert_eq!(branch(B_MIN - 4), NOP);
        }

        #[test]
        fn plan_refuses_misaligned_targets(
            tramp in tramp(),
            target in aligned_pc(),
            skew in 1..4u64,
        ) {
            let target = target | skew;
            let refused = Err(Error::MisalignedTarget { target: target as usize });
            prop_assert_eq!(plan(tramp, target), refused);
        }

        #[test]
        fn decode_accepts_exactly_the_trampoline_shapes((tramp, literal, words) in near_miss()) {
            let bytes = window(literal, words);
            let decoded = decode(tramp as usize, &bytes);
            if let Err(offset) = shape(tramp, literal, &words) {
                prop_assert_eq!(decoded, Err(refusal(tramp, literal, &words, offset)));
                return Ok(());
            }
            prop_assert!(decoded.is_ok(), "{:?}", decoded);
            let t = decoded.unwrap();
            prop_assert_eq!(t.target, literal);
            prop_assert_eq!(t.branch_word, words[1]);
            // Decoding loses nothing: the patch rebuilds the bytes.
            prop_assert_eq!(image(t.patch()), bytes);
            let goes_to_target = (t.target != 0).then_some(t.target);
            match plan(tramp, t.target) {
                _ if t.never_updated() => {
                    // As assembled: the `b` leads anywhere (a veneer, a
                    // shim) and the literal is not written yet.
                    let Branch::B(dest) = t.branch else { unreachable!() };
                    prop_assert_eq!(run(tramp, &bytes), Some(dest));
                }
                Ok(replanned) if t.branch == Branch::Nop && replanned.branch_word() != NOP => {
                    // A `nop` with a literal in the branch's reach: not what
                    // a plan writes, but a call goes to the same place,
                    // through the literal.
                    prop_assert_eq!(run(tramp, &bytes), goes_to_target);
                }
                Ok(replanned) => {
                    prop_assert_eq!(replanned, t.patch());
                    prop_assert_eq!(run(tramp, &bytes), goes_to_target);
                }
                Err(e) => {
                    // Every accepted window re-plans: a `nop` with a
                    // misaligned literal is refused by the decoder.
                    prop_assert!(false, "accepted {:?}, which does not re-plan: {:?}", t, e);
                }
            }
        }

        #[test]
        fn random_bytes_are_not_a_trampoline(
            tramp in tramp(),
            bytes in any::<[u8; TRAMPOLINE_LEN]>(),
        ) {
            let words: [u32; 6] = core::array::from_fn(|i| {
                u32::from_le_bytes(bytes[8 + 4 * i..12 + 4 * i].try_into().unwrap())
            });
            let literal = u64::from_le_bytes(bytes[..8].try_into().unwrap());
            // 160 bits of fixed code: random bytes never have them all.
            let offset = shape(tramp, literal, &words).unwrap_err();
            let decoded = decode(tramp as usize, &bytes);
            prop_assert_eq!(decoded, Err(refusal(tramp, literal, &words, offset)));
        }
    }
}

mod x86_64 {
    use super::*;
    use static_call::arch::x86_64::insn::{self, INT3, JMP_REL32, RET, UD1_ESP_ECX};
    use static_call::arch::x86_64::{FAR_ENTRY, Form, Image, LITERAL_OFFSET, NULL_ENTRY};
    use static_call::arch::x86_64::{TRAMPOLINE_ALIGN, check_alignment, current_target};
    use static_call::arch::x86_64::{decode, plan};

    /// `rel32`'s reach, from the end of the 5-byte jump.
    const REL_MAX: i64 = i32::MAX as i64;
    const REL_MIN: i64 = i32::MIN as i64;

    /// A trampoline and the NULL stub, which is in the same text.
    fn tramp_and_stub() -> impl Strategy<Value = (u64, u64)> {
        (any::<u64>(), -(1i64 << 24)..(1i64 << 24))
            .prop_map(|(t, d)| (t & !7, (t & !7).wrapping_add(d as u64)))
    }

    /// Where a call entering the trampoline goes, by the instruction
    /// semantics of the three forms; `Err` for anything else.
    fn run(tramp: u64, image: &Image) -> Result<Dest, ()> {
        let e = &image.entry;
        if e[0] == RET {
            return Ok(None);
        }
        if let Some(dest) = insn::decode_jmp_rel32(tramp, e[..5].try_into().unwrap()) {
            return Ok(Some(dest));
        }
        let literal_at = tramp.wrapping_add(LITERAL_OFFSET as u64);
        match insn::decode_jmp_rip_indirect(tramp, e[..6].try_into().unwrap()) {
            Some(slot) if slot == literal_at => Ok(Some(image.literal)),
            _ => Err(()),
        }
    }

    /// The shapes a trampoline may have, stated independently of the
    /// decoder: the near form (a `jmp rel32`, the `ud1` signature, a
    /// literal of 0 or its destination), the NULL form (a literal of 0 or
    /// the stub) or the far form (a literal that is neither).
    /// `Err(offset)`: the offset of the first byte or field that breaks it.
    fn shape(tramp: u64, image: &Image, stub: u64) -> Result<(), usize> {
        let (e, literal) = (&image.entry, image.literal);
        let first_difference = |want: &[u8; 8]| (0..8).find(|&i| e[i] != want[i]);
        match e[0] {
            JMP_REL32 => {
                if let Some(i) = (0..3).find(|&i| e[5 + i] != UD1_ESP_ECX[i]) {
                    return Err(5 + i);
                }
                let rel = i32::from_le_bytes(e[1..5].try_into().unwrap());
                let dest = tramp.wrapping_add(5).wrapping_add(i64::from(rel) as u64);
                if literal != 0 && literal != dest {
                    return Err(LITERAL_OFFSET);
                }
            }
            RET => {
                if let Some(i) = first_difference(&NULL_ENTRY) {
                    return Err(i);
                }
                if literal != 0 && literal != stub {
                    return Err(LITERAL_OFFSET);
                }
            }
            0xff => {
                if let Some(i) = first_difference(&FAR_ENTRY) {
                    return Err(i);
                }
                if literal == 0 || literal == stub {
                    return Err(LITERAL_OFFSET);
                }
            }
            _ => return Err(0),
        }
        Ok(())
    }

    /// The refusal `decode` must give for an image that breaks the shape at
    /// `offset`: the trampoline's address, the offset and the byte (or the
    /// literal) found there.
    fn refusal(tramp: u64, image: &Image, offset: usize) -> Error {
        let found = if offset == LITERAL_OFFSET {
            image.literal
        } else {
            u64::from(image.entry[offset])
        };
        Error::UnrecognisedTrampoline {
            addr: tramp as usize,
            offset,
            found,
        }
    }

    /// An image that is mostly right: one of the three forms (a near jump
    /// anywhere) or random bytes, sometimes with an `int3` over the first
    /// byte or another byte replaced; and a literal of 0, the stub, the near
    /// jump's destination, an address in its reach, or anything.
    fn near_miss() -> impl Strategy<Value = (u64, u64, Image)> {
        let near = |d: [u8; 4]| [JMP_REL32, d[0], d[1], d[2], d[3], 0x0f, 0xb9, 0xcc];
        let entry = prop_oneof![
            3 => any::<[u8; 4]>().prop_map(near),
            2 => Just(NULL_ENTRY),
            2 => Just(FAR_ENTRY),
            1 => any::<[u8; 8]>(),
        ];
        let flips = prop::collection::vec((0..8usize, any::<u8>()), 0..2);
        let int3 = prop::bool::weighted(0.125);
        let literal_kind = 0..5u8;
        let corruption = (int3, flips, literal_kind, any::<u64>());
        (tramp_and_stub(), entry, corruption).prop_map(
            |((tramp, stub), mut entry, (int3, flips, literal_kind, rand))| {
                if int3 {
                    entry[0] = INT3;
                }
                for (i, b) in flips {
                    entry[i] = b;
                }
                let dest = insn::decode_jmp_rel32(tramp, entry[..5].try_into().unwrap());
                // An address in `rel32`'s reach.
                let near = tramp.wrapping_add(5).wrapping_add(rand as i32 as u64);
                let literal = match (literal_kind, dest) {
                    (0, _) => 0,
                    (1, _) => stub,
                    (2, Some(dest)) => dest,
                    (2 | 3, _) => near,
                    _ => rand,
                };
                (tramp, stub, Image { entry, literal })
            },
        )
    }

    /// Targets: NULL, any address (mostly far), any address in reach, and
    /// around the edges of `rel32`'s reach.
    fn target_for(tramp: u64) -> impl Strategy<Value = u64> {
        let end = tramp.wrapping_add(5);
        let at = move |rel: i64| end.wrapping_add(rel as u64);
        prop_oneof![
            Just(0),
            any::<u64>(),
            any::<i32>().prop_map(move |rel| at(rel.into())),
            (-8i64..8).prop_map(move |d| at(REL_MAX + d)),
            (-8i64..8).prop_map(move |d| at(REL_MIN + d)),
        ]
    }

    fn tramp_stub_target() -> impl Strategy<Value = (u64, u64, u64)> {
        tramp_and_stub().prop_flat_map(|(tramp, stub)| {
            target_for(tramp).prop_map(move |target| (tramp, stub, target))
        })
    }

    proptest! {
        #[test]
        fn jmp_rel32_round_trips_over_its_whole_reach(pc in any::<u64>(), rel in any::<i32>()) {
            let target = pc.wrapping_add(5).wrapping_add(i64::from(rel) as u64);
            let bytes = insn::encode_jmp_rel32(pc, target);
            let d = rel.to_le_bytes();
            prop_assert_eq!(bytes, Some([JMP_REL32, d[0], d[1], d[2], d[3]]));
            prop_assert_eq!(insn::decode_jmp_rel32(pc, &bytes.unwrap()), Some(target));
            prop_assert!(insn::reaches(pc, target));
        }

        #[test]
        fn every_jmp_rel32_re_encodes_to_itself(pc in any::<u64>(), rel in any::<[u8; 4]>()) {
            let bytes = [JMP_REL32, rel[0], rel[1], rel[2], rel[3]];
            let target = insn::decode_jmp_rel32(pc, &bytes).unwrap();
            prop_assert_eq!(insn::encode_jmp_rel32(pc, target), Some(bytes));
        }

        #[test]
        fn only_e9_decodes_as_jmp_rel32(pc in any::<u64>(), bytes in any::<[u8; 5]>()) {
            let decoded = insn::decode_jmp_rel32(pc, &bytes);
            prop_assert_eq!(decoded.is_some(), bytes[0] == JMP_REL32);
        }

        #[test]
        fn jmp_rel32_reach_ends_exactly_at_2_gib(pc in any::<u64>()) {
            let at = |rel: i64| pc.wrapping_add(5).wrapping_add(rel as u64);
            prop_assert!(insn::encode_jmp_rel32(pc, at(REL_MAX)).is_some());
            prop_assert_eq!(insn::encode_jmp_rel32(pc, at(REL_MAX + 1)), None);
            prop_assert!(insn::encode_jmp_rel32(pc, at(REL_MIN)).is_some());
            prop_assert_eq!(insn::encode_jmp_rel32(pc, at(REL_MIN - 1)), None);
            prop_assert!(!insn::reaches(pc, at(REL_MAX + 1)));
            prop_assert!(!insn::reaches(pc, at(REL_MIN - 1)));
        }

        #[test]
        fn jmp_rel32_refuses_every_target_out_of_reach(pc in any::<u64>(), rel in any_scale()) {
            let target = pc.wrapping_add(5).wrapping_add(rel as u64);
            let in_reach = (REL_MIN..=REL_MAX).contains(&rel);
            prop_assert_eq!(insn::encode_jmp_rel32(pc, target).is_some(), in_reach);
            prop_assert_eq!(insn::reaches(pc, target), in_reach);
        }

        #[test]
        fn jmp_rip_indirect_round_trips(
            pc in any::<u64>(),
            rel in any::<i32>(),
            bytes in any::<[u8; 6]>(),
        ) {
            let slot = pc.wrapping_add(6).wrapping_add(i64::from(rel) as u64);
            let jmp = insn::encode_jmp_rip_indirect(pc, slot).unwrap();
            prop_assert_eq!(&jmp[..2], &[0xff, 0x25]);
            prop_assert_eq!(insn::decode_jmp_rip_indirect(pc, &jmp), Some(slot));
            // 4 GiB further in the same direction: out of reach.
            let beyond = if rel < 0 {
                slot.wrapping_sub(1 << 32)
            } else {
                slot.wrapping_add(1 << 32)
            };
            prop_assert_eq!(insn::encode_jmp_rip_indirect(pc, beyond), None);
            // Decoding random bytes and re-encoding gives them back.
            match insn::decode_jmp_rip_indirect(pc, &bytes) {
                Some(slot) => {
                    prop_assert_eq!(insn::encode_jmp_rip_indirect(pc, slot), Some(bytes))
                }
                None => prop_assert_ne!(&bytes[..2], &[0xff, 0x25]),
            }
        }

        #[test]
        fn movabs_r11_jmp_carries_its_target(target in any::<u64>()) {
            let code = insn::encode_movabs_r11_jmp(target);
            prop_assert_eq!(&code[..2], &[0x49, 0xbb]);
            prop_assert_eq!(u64::from_le_bytes(code[2..10].try_into().unwrap()), target);
            prop_assert_eq!(&code[10..], &[0x41, 0xff, 0xe3]);
        }

        #[test]
        fn trampolines_must_be_8_byte_aligned(tramp in any::<usize>()) {
            let expected = if tramp % TRAMPOLINE_ALIGN == 0 {
                Ok(())
            } else {
                Err(Error::MisalignedTrampoline { addr: tramp, align: TRAMPOLINE_ALIGN })
            };
            prop_assert_eq!(check_alignment(tramp), expected);
        }

        #[test]
        fn every_plan_decodes_back_to_its_target((tramp, stub, target) in tramp_stub_target()) {
            // A function is never the NULL stub.
            prop_assume!(target != stub);
            let image = plan(tramp, target, stub);
            let t = decode(tramp, &image, stub);
            prop_assert!(t.is_ok(), "{target:#x}: {t:?}");
            let t = t.unwrap();
            prop_assert_eq!(t.target(), target);
            prop_assert_eq!(t.image, image);
            let form = match target {
                0 => Form::Null,
                t if insn::reaches(tramp, t) => Form::Near(t),
                _ => Form::Far,
            };
            prop_assert_eq!(t.form, form);
            prop_assert_eq!(image.literal, if target == 0 { stub } else { target });
            prop_assert_eq!(current_target(tramp, &image, stub), Ok(target));
            // And a call goes there (returns, for NULL).
            prop_assert_eq!(run(tramp, &image), Ok((target != 0).then_some(target)));
        }

        #[test]
        fn an_update_in_flight_reads_through_the_literal(
            (tramp, stub, target) in tramp_stub_target(),
        ) {
            prop_assume!(target != stub);
            let mut image = plan(tramp, target, stub);
            image.entry[0] = INT3;
            prop_assert_eq!(current_target(tramp, &image, stub), Ok(target));
            prop_assert_eq!(decode(tramp, &image, stub), Err(refusal(tramp, &image, 0)));
        }

        #[test]
        fn plan_reach_ends_exactly_at_2_gib((tramp, stub) in tramp_and_stub()) {
            let at = |rel: i64| tramp.wrapping_add(5).wrapping_add(rel as u64);
            let edges = [
                (REL_MAX, true),
                (REL_MAX + 1, false),
                (REL_MIN, true),
                (REL_MIN - 1, false),
            ];
            for (rel, near) in edges {
                let target = at(rel);
                prop_assume!(target != 0 && target != stub);
                let entry = plan(tramp, target, stub).entry;
                prop_assert_eq!(entry == FAR_ENTRY, !near, "rel {:#x}", rel);
            }
        }

        #[test]
        fn decode_accepts_exactly_the_trampoline_shapes((tramp, stub, image) in near_miss()) {
            let decoded = decode(tramp, &image, stub);
            if let Err(offset) = shape(tramp, &image, stub) {
                prop_assert_eq!(decoded, Err(refusal(tramp, &image, offset)));
                return Ok(());
            }
            prop_assert!(decoded.is_ok(), "{:?}", decoded);
            let t = decoded.unwrap();
            prop_assert_eq!(t.image, image);
            prop_assert_eq!(current_target(tramp, &image, stub), Ok(t.target()));
            let goes_to_target = (t.target() != 0).then_some(t.target());
            prop_assert_eq!(run(tramp, &image), Ok(goes_to_target));
            let replanned = plan(tramp, t.target(), stub);
            if image.literal == 0 {
                // As assembled: the same, once the literal is written.
                prop_assert_eq!(Image { literal: replanned.literal, ..image }, replanned);
            } else if t.form == Form::Far && insn::reaches(tramp, t.target()) {
                // The far form with a literal in `rel32`'s reach: not what a
                // plan writes (it writes the near form), but a call goes to
                // the same place, through the literal.
                prop_assert_ne!(replanned.entry, FAR_ENTRY);
            } else {
                prop_assert_eq!(replanned, image);
            }
        }

        #[test]
        fn random_bytes_are_not_a_trampoline(
            tramp in any::<u64>(),
            stub in any::<u64>(),
            entry in any::<[u8; 8]>(),
            literal in any::<u64>(),
        ) {
            let image = Image { entry, literal };
            let decoded = decode(tramp, &image, stub);
            match shape(tramp, &image, stub) {
                Ok(()) => prop_assert_eq!(decoded.map(|t| t.image), Ok(image)),
                Err(offset) => prop_assert_eq!(decoded, Err(refusal(tramp, &image, offset))),
            }
            // Bytes that do not start as one of the three forms are refused
            // whatever the literal.
            if entry != NULL_ENTRY && entry != FAR_ENTRY && entry[0] != JMP_REL32 {
                prop_assert!(decode(tramp, &image, stub).is_err());
            }
        }
    }
}
