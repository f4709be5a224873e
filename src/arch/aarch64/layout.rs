//! The trampoline's bytes: checking its shape and planning a patch.
//! Pure functions, unit-tested on every host.

use super::insn::{self, BR_X16, BTI_C, NOP, RET};
use crate::Error;

/// Alignment of the patch window (literal + first two instructions).
pub const WINDOW_ALIGN: usize = 16;
/// Bytes from the literal through the final `ret`.
pub const TRAMPOLINE_LEN: usize = 32;

/// Offsets of each field from the start of the window (the literal).
const BRANCH_OFFSET: usize = 12;
/// `ldr x16, <literal>` as it sits at `tramp + 8`: 16 bytes back.
const LDR_X16_LITERAL: u32 = 0x58ff_ff90;
/// `cbz x16, <ret>` as it sits at `tramp + 12`: 8 bytes forward.
const CBZ_X16_RET: u32 = 0xb400_0050;

/// The words a retarget writes: the literal, and `[bti c | branch]` as
/// one little-endian 64-bit word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Patch {
    /// The target address, 0 for NULL.
    pub literal: u64,
    /// `bti c` in the low half, the `b`/`nop` in the high half.
    pub entry: u64,
}

impl Patch {
    /// The branch instruction (`b` or `nop`) this patch installs.
    pub fn branch_word(&self) -> u32 {
        (self.entry >> 32) as u32
    }
}

/// The patched instruction of a trampoline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Branch {
    /// `b target`: the direct fast path.
    B(u64),
    /// `nop`: fall through to the literal (far target, or NULL).
    Nop,
}

/// A decoded, well-formed trampoline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trampoline {
    /// The literal: the current target, 0 for NULL; also 0 (with a `B`)
    /// in a trampoline never updated.
    pub target: u64,
    /// The patched instruction.
    pub branch: Branch,
    /// The raw branch word.
    pub branch_word: u32,
}

impl Trampoline {
    /// Whether this is a trampoline as assembled, never updated: literal 0
    /// and a `B` (which may lead to a veneer or an init shim).
    pub fn never_updated(&self) -> bool {
        self.target == 0 && matches!(self.branch, Branch::B(_))
    }

    /// The window as a patch (what is there now).
    pub fn patch(&self) -> Patch {
        Patch {
            literal: self.target,
            entry: u64::from(BTI_C) | u64::from(self.branch_word) << 32,
        }
    }
}

/// The start of the patch window of the trampoline entered at `tramp`.
pub fn window_of(tramp: usize) -> Result<usize, Error> {
    let window = tramp.wrapping_sub(8);
    if !window.is_multiple_of(WINDOW_ALIGN) {
        return Err(Error::MisalignedTrampoline {
            addr: tramp,
            align: WINDOW_ALIGN,
        });
    }
    Ok(window)
}

fn word(bytes: &[u8; TRAMPOLINE_LEN], offset: usize) -> u32 {
    u32::from_le_bytes([
        bytes[offset],
        bytes[offset + 1],
        bytes[offset + 2],
        bytes[offset + 3],
    ])
}

/// The patch currently in the window `bytes` (first 16 bytes).
pub fn patch_of(bytes: &[u8; TRAMPOLINE_LEN]) -> Patch {
    let mut lit = [0u8; 8];
    let mut entry = [0u8; 8];
    lit.copy_from_slice(&bytes[..8]);
    entry.copy_from_slice(&bytes[8..16]);
    Patch {
        literal: u64::from_le_bytes(lit),
        entry: u64::from_le_bytes(entry),
    }
}

/// Checks that `bytes` (read at `tramp - 8`) are a trampoline of exactly
/// the expected shape, and decodes it. An error names the window (the
/// literal, 8 bytes before the entry) and the offset of the bad word in it.
///
/// Once updated, a `b` points where the literal does: the two always agree
/// in a trampoline this crate wrote, so a mismatch means foreign bytes. A
/// trampoline never updated has a literal of 0 (the assembler writes no
/// absolute address, see `asm/aarch64/trampoline.S`) and its `b` may lead
/// anywhere: to the target, to a linker veneer when the target is out of
/// reach, or to a key's init shim. A `nop` sends calls through the
/// literal, which must then be 0 or an instruction address.
///
/// ```
/// use static_call::{Error, arch::aarch64::decode};
/// let zeros = [0u8; 32];
/// assert!(matches!(
///     decode(0x1008, &zeros),
///     Err(Error::UnrecognisedTrampoline { addr: 0x1000, offset: 8, .. })
/// ));
/// ```
pub fn decode(tramp: usize, bytes: &[u8; TRAMPOLINE_LEN]) -> Result<Trampoline, Error> {
    let unrecognised = |offset: usize, found: u32| Error::UnrecognisedTrampoline {
        addr: tramp.wrapping_sub(8),
        offset,
        found: u64::from(found),
    };
    for (offset, expected) in [
        (8, BTI_C),
        (16, LDR_X16_LITERAL),
        (20, CBZ_X16_RET),
        (24, BR_X16),
        (28, RET),
    ] {
        let found = word(bytes, offset);
        if found != expected {
            return Err(unrecognised(offset, found));
        }
    }
    let target = patch_of(bytes).literal;
    let branch_word = word(bytes, BRANCH_OFFSET);
    let branch = if branch_word == NOP {
        // The `nop` sends calls through the literal: it must be an
        // instruction address (or 0, NULL), as every plan writes it.
        if !target.is_multiple_of(4) {
            return Err(Error::UnrecognisedTrampoline {
                addr: tramp.wrapping_sub(8),
                offset: 0,
                found: target,
            });
        }
        Branch::Nop
    } else {
        match insn::decode_b(tramp as u64 + 4, branch_word) {
            Some(dest) if dest == target || target == 0 => Branch::B(dest),
            _ => return Err(unrecognised(BRANCH_OFFSET, branch_word)),
        }
    };
    Ok(Trampoline {
        target,
        branch,
        branch_word,
    })
}

/// Plans retargeting the trampoline at `tramp` to `target` (0 for NULL):
/// `b target` when it is within reach of the branch, else `nop` so the
/// literal is used; the literal is always the target.
///
/// ```
/// use static_call::arch::aarch64::{insn, plan};
/// let tramp = 0x4008_0008;
/// let near = plan(tramp, 0x4010_0000).unwrap();
/// assert_eq!(insn::decode_b(tramp + 4, near.branch_word()), Some(0x4010_0000));
/// let far = plan(tramp, 0x8_0000_0000).unwrap();
/// assert_eq!((far.literal, far.branch_word()), (0x8_0000_0000, insn::NOP));
/// ```
pub fn plan(tramp: u64, target: u64) -> Result<Patch, Error> {
    if !target.is_multiple_of(4) {
        return Err(Error::MisalignedTarget {
            target: target as usize,
        });
    }
    let branch = if target == 0 {
        NOP
    } else {
        insn::encode_b(tramp + 4, target).unwrap_or(NOP)
    };
    Ok(Patch {
        literal: target,
        entry: u64::from(BTI_C) | u64::from(branch) << 32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRAMP: u64 = 0x4008_1008;

    /// The bytes the assembler emits for a trampoline with this patch.
    fn image(patch: Patch) -> [u8; TRAMPOLINE_LEN] {
        let mut b = [0u8; TRAMPOLINE_LEN];
        b[..8].copy_from_slice(&patch.literal.to_le_bytes());
        b[8..16].copy_from_slice(&patch.entry.to_le_bytes());
        for (i, w) in [LDR_X16_LITERAL, CBZ_X16_RET, BR_X16, RET]
            .iter()
            .enumerate()
        {
            b[16 + 4 * i..20 + 4 * i].copy_from_slice(&w.to_le_bytes());
        }
        b
    }

    #[test]
    fn near_target_gets_a_direct_branch() {
        let target = TRAMP + 0x1000;
        let p = plan(TRAMP, target).unwrap();
        assert_eq!(p.literal, target);
        assert_eq!(insn::decode_b(TRAMP + 4, p.branch_word()), Some(target));
        let t = decode(TRAMP as usize, &image(p)).unwrap();
        assert_eq!(t.branch, Branch::B(target));
        assert_eq!(t.patch(), p);
    }

    #[test]
    fn far_and_null_targets_get_a_nop_and_the_literal() {
        let far = TRAMP + (1 << 30);
        let p = plan(TRAMP, far).unwrap();
        assert_eq!((p.literal, p.branch_word()), (far, NOP));
        assert_eq!(
            decode(TRAMP as usize, &image(p)).unwrap().branch,
            Branch::Nop
        );
        let null = plan(TRAMP, 0).unwrap();
        assert_eq!((null.literal, null.branch_word()), (0, NOP));
        assert_eq!(decode(TRAMP as usize, &image(null)).unwrap().target, 0);
    }

    #[test]
    fn reach_boundary_is_exact() {
        let edge = TRAMP + 4 + (1 << 27) - 4;
        assert_ne!(plan(TRAMP, edge).unwrap().branch_word(), NOP);
        assert_eq!(plan(TRAMP, edge + 4).unwrap().branch_word(), NOP);
        let low = TRAMP + 4 - (1 << 27);
        assert_ne!(plan(TRAMP, low).unwrap().branch_word(), NOP);
        assert_eq!(plan(TRAMP, low - 4).unwrap().branch_word(), NOP);
    }

    #[test]
    fn every_corrupted_word_is_refused_with_its_offset() {
        let good = image(plan(TRAMP, TRAMP + 64).unwrap());
        for offset in (8..TRAMPOLINE_LEN).step_by(4) {
            let mut bad = good;
            bad[offset] ^= 0x01;
            let err = decode(TRAMP as usize, &bad).unwrap_err();
            assert!(
                matches!(err, Error::UnrecognisedTrampoline { offset: o, .. } if o == offset),
                "offset {offset}: {err:?}"
            );
        }
    }

    #[test]
    fn a_never_updated_trampoline_may_branch_anywhere() {
        // As assembled: literal 0, `b` to the target, a veneer or a shim.
        for dest in [TRAMP + 64, TRAMP + 4 - (1 << 27), TRAMP + (1 << 26)] {
            let mut p = plan(TRAMP, dest).unwrap();
            p.literal = 0;
            let t = decode(TRAMP as usize, &image(p)).unwrap();
            assert_eq!((t.target, t.branch), (0, Branch::B(dest)));
        }
    }

    /// What a call entering the window does, given the branch word it
    /// fetched and the literal it loaded (possibly from different
    /// moments): `Some(address)` it branches to, `None` it returns.
    fn run(branch_word: u32, literal: u64, shim_behaves_as: u64, shim: u64) -> Option<u64> {
        match insn::decode_b(TRAMP + 4, branch_word) {
            Some(dest) if dest == shim => Some(shim_behaves_as),
            Some(dest) => Some(dest),
            None if literal == 0 => None,
            None => Some(literal),
        }
    }

    /// The first update of a never-updated trampoline: literal 0 and a `b`
    /// to a shim (or veneer) that behaves as the initial target. The
    /// update first publishes the initial target in the literal (with
    /// cache maintenance, so every later literal load sees it), then
    /// writes the new literal and branch. A CPU running the new branch
    /// word with a literal from any moment after publication, or the old
    /// `b`, reaches the old or the new target. Without publication, a
    /// `nop` with the as-assembled literal 0 would return: the race the
    /// publication step exists for.
    #[test]
    fn the_first_update_publishes_the_literal_before_anything_else() {
        let (old, shim) = (TRAMP + 0x400, TRAMP + 0x800);
        let assembled = insn::encode_b(TRAMP + 4, shim).unwrap();
        for new in [TRAMP + 64, TRAMP + (1 << 30), 0, TRAMP - 0x1000] {
            let new_word = plan(TRAMP, new).unwrap().branch_word();
            let expect_new = (new != 0).then_some(new);
            // Branch words a CPU can run: the assembled one, or the new.
            // Literals it can load once it runs the new word: the
            // published old target, or the new one.
            for word in [assembled, new_word] {
                for literal in [old, new] {
                    let got = run(word, literal, old, shim);
                    assert!(
                        got == Some(old) || got == expect_new,
                        "{new:#x}: word {word:#x} literal {literal:#x} -> {got:?}"
                    );
                }
            }
            // The stale literal 0 is what publication rules out.
            if new_word == NOP && new != 0 {
                assert_eq!(run(new_word, 0, old, shim), None);
            }
        }
    }

    #[test]
    fn a_branch_that_disagrees_with_the_literal_is_refused() {
        let mut p = plan(TRAMP, TRAMP + 64).unwrap();
        p.literal += 4;
        assert!(matches!(
            decode(TRAMP as usize, &image(p)),
            Err(Error::UnrecognisedTrampoline { offset: 12, .. })
        ));
    }

    #[test]
    fn misaligned_windows_and_targets_are_refused() {
        assert!(window_of(0x1008).is_ok());
        for bad in [0x1000, 0x1004, 0x100c, 0x1009] {
            assert!(matches!(
                window_of(bad),
                Err(Error::MisalignedTrampoline { align: 16, .. })
            ));
        }
        assert!(matches!(
            plan(TRAMP, TRAMP + 2),
            Err(Error::MisalignedTarget { .. })
        ));
    }
}
