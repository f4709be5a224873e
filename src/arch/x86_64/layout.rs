//! The trampoline's bytes: its three forms, checking its shape, and
//! planning what a retarget should leave there. Pure functions, unit-tested
//! on every host.
//!
//! ```text
//! tramp + 0:  entry word (8 bytes, 8-byte aligned; the only code patched)
//!               near: e9 rel32          0f b9 cc   jmp.d32 target; ud1
//!               NULL: c3 cc cc cc cc    0f b9 cc   ret; int3 x4;   ud1
//!               far:  ff 25 02 00 00 00 cc cc      jmp *8(%rip) -> literal; int3 x2
//! tramp + 8:  literal (8 bytes): the current target, or the NULL stub
//! ```

use super::insn::{self, INT3, JMP_REL32, RET, UD1_ESP_ECX};
use crate::Error;

/// Alignment the trampoline's entry word (and so its literal) needs: each
/// is patched with one aligned 8-byte store.
pub const TRAMPOLINE_ALIGN: usize = 8;
/// Bytes from the entry through the end of the literal.
pub const TRAMPOLINE_LEN: usize = 16;
/// Offset of the literal from the entry.
pub const LITERAL_OFFSET: usize = 8;

/// Offset of the `ud1` signature in the near and NULL forms.
const SIGNATURE_OFFSET: usize = 5;

/// The NULL form: `ret`, padding, signature.
pub const NULL_ENTRY: [u8; 8] = [RET, INT3, INT3, INT3, INT3, 0x0f, 0xb9, 0xcc];
/// The far form: `jmp *2(%rip)` (the literal, 2 bytes past the end of the
/// 6-byte instruction), then `int3` padding as a speculation stop. It is
/// the same at every trampoline, so it is its own signature.
pub const FAR_ENTRY: [u8; 8] = [0xff, 0x25, 2, 0, 0, 0, INT3, INT3];

/// The 16 bytes a trampoline is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Image {
    /// The entry word, in memory order.
    pub entry: [u8; 8],
    /// The literal: the current (or, during an update, the incoming) target;
    /// the NULL stub for NULL; 0 only in a trampoline never updated.
    pub literal: u64,
}

impl Image {
    /// An image from the two little-endian words as loaded from memory.
    pub fn from_words(entry: u64, literal: u64) -> Self {
        Image {
            entry: entry.to_le_bytes(),
            literal,
        }
    }

    /// The entry word as a little-endian integer (what an 8-byte load sees).
    pub fn entry_word(&self) -> u64 {
        u64::from_le_bytes(self.entry)
    }
}

/// What the entry word does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `jmp.d32 target`: the direct fast path.
    Near(u64),
    /// `jmp *literal`: a target beyond the ±2 GiB reach of `rel32`.
    Far,
    /// `ret`: a NULL key.
    Null,
}

/// A decoded, well-formed trampoline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trampoline {
    /// What the entry word does.
    pub form: Form,
    /// The bytes it was decoded from.
    pub image: Image,
}

impl Trampoline {
    /// Where a call goes: the target's address, 0 for NULL.
    pub fn target(&self) -> u64 {
        match self.form {
            Form::Near(t) => t,
            Form::Far => self.image.literal,
            Form::Null => 0,
        }
    }
}

/// Refuses a trampoline address whose entry word and literal could not be
/// patched with aligned stores.
pub fn check_alignment(tramp: usize) -> Result<(), Error> {
    if tramp.is_multiple_of(TRAMPOLINE_ALIGN) {
        Ok(())
    } else {
        Err(Error::MisalignedTrampoline {
            addr: tramp,
            align: TRAMPOLINE_ALIGN,
        })
    }
}

fn first_difference(found: &[u8; 8], expected: &[u8; 8]) -> usize {
    found
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(0)
}

/// Checks that `image` (read at `tramp`) is a trampoline of exactly one of
/// the three forms, with a literal that agrees, and decodes it. `null_stub`
/// is the address of the shared `ret` the literal holds for NULL.
///
/// A literal of 0 is accepted for the near and NULL forms: the assembler
/// cannot store an absolute address in text without a text relocation, so
/// a trampoline that was never updated has none. Every update writes it.
///
/// An `int3` first byte is refused: under the patch lock no update is in
/// flight, so it is not a trampoline this crate left behind.
pub fn decode(tramp: u64, image: &Image, null_stub: u64) -> Result<Trampoline, Error> {
    let entry = &image.entry;
    let unrecognised = |offset: usize, found: u64| Error::UnrecognisedTrampoline {
        addr: tramp as usize,
        offset,
        found,
    };
    let bad_entry = |offset: usize| unrecognised(offset, u64::from(image.entry[offset]));
    let bad_literal = || unrecognised(LITERAL_OFFSET, image.literal);
    let form = match entry[0] {
        JMP_REL32 => {
            if entry[SIGNATURE_OFFSET..] != UD1_ESP_ECX {
                let found: &[u8; 3] = entry[SIGNATURE_OFFSET..].try_into().unwrap_or(&[0; 3]);
                let at = found.iter().zip(&UD1_ESP_ECX).position(|(a, b)| a != b);
                return Err(bad_entry(SIGNATURE_OFFSET + at.unwrap_or(0)));
            }
            let jmp: &[u8; 5] = entry[..5].try_into().unwrap_or(&[0; 5]);
            let target = insn::decode_jmp_rel32(tramp, jmp).unwrap_or(0);
            if image.literal != 0 && image.literal != target {
                return Err(bad_literal());
            }
            Form::Near(target)
        }
        RET => {
            if *entry != NULL_ENTRY {
                return Err(bad_entry(first_difference(entry, &NULL_ENTRY)));
            }
            if image.literal != 0 && image.literal != null_stub {
                return Err(bad_literal());
            }
            Form::Null
        }
        b if b == FAR_ENTRY[0] => {
            if *entry != FAR_ENTRY {
                return Err(bad_entry(first_difference(entry, &FAR_ENTRY)));
            }
            if image.literal == 0 || image.literal == null_stub {
                return Err(bad_literal());
            }
            Form::Far
        }
        _ => return Err(bad_entry(0)),
    };
    Ok(Trampoline {
        form,
        image: *image,
    })
}

/// The target a call entering the trampoline now reaches (0 for NULL), for
/// a reader that takes no lock and so may see an update half done.
///
/// The literal is written before anything else in an update, and the entry
/// word only with single aligned stores, so: an `int3` first byte means an
/// update is in flight and the literal already holds its target; otherwise
/// the entry word says where calls go (near and NULL without the literal,
/// which may already be ahead of it).
pub fn current_target(tramp: u64, image: &Image, null_stub: u64) -> Result<u64, Error> {
    let literal_target = |literal: u64| match literal {
        0 => Err(Error::UnrecognisedTrampoline {
            addr: tramp as usize,
            offset: LITERAL_OFFSET,
            found: 0,
        }),
        l if l == null_stub => Ok(0),
        l => Ok(l),
    };
    let entry = &image.entry;
    if entry[0] == INT3 {
        let rest_ok = entry[SIGNATURE_OFFSET..] == UD1_ESP_ECX || entry[1..] == FAR_ENTRY[1..];
        if !rest_ok {
            return Err(Error::UnrecognisedTrampoline {
                addr: tramp as usize,
                offset: 1,
                found: u64::from(entry[1]),
            });
        }
        return literal_target(image.literal);
    }
    // Decode the entry alone; the literal may legitimately be ahead of it.
    let entry_only = Image {
        entry: image.entry,
        literal: 0,
    };
    match entry[0] {
        b if b == FAR_ENTRY[0] => {
            if *entry != FAR_ENTRY {
                let offset = first_difference(entry, &FAR_ENTRY);
                return Err(Error::UnrecognisedTrampoline {
                    addr: tramp as usize,
                    offset,
                    found: u64::from(entry[offset]),
                });
            }
            literal_target(image.literal)
        }
        _ => decode(tramp, &entry_only, null_stub).map(|t| t.target()),
    }
}

/// Checks, before an update writes anything, that `image` is a state this
/// crate can leave at the trampoline at `tramp`, and returns where a call
/// entering it goes (0 for NULL).
///
/// A key whose last update succeeded (or undid itself) holds one of the
/// three forms with a literal that agrees ([`decode`]). One whose last
/// update returned [`Error::RestoreFailed`] (`unfinished`) may also hold
/// any state the protocols pass through: an `int3` over the first byte of
/// any form's tail (steered through the literal), or a literal already
/// naming another target beside the entry. Anything else gets `decode`'s
/// error, so a foreign `int3` at a finished key is still refused.
///
/// ```
/// use static_call::arch::x86_64::{plan, recognise};
/// let (tramp, stub) = (0x5555_0000_1000, 0x5555_0000_2000);
/// let mut left = plan(tramp, tramp + 0x100, stub);
/// left.entry[0] = 0xcc; // an update stopped with its int3 in place
/// left.literal = tramp + 0x200; // steered to the target it was writing
/// assert!(recognise(tramp, &left, stub, false).is_err());
/// assert_eq!(recognise(tramp, &left, stub, true), Ok(tramp + 0x200));
/// ```
pub fn recognise(
    tramp: u64,
    image: &Image,
    null_stub: u64,
    unfinished: bool,
) -> Result<u64, Error> {
    match decode(tramp, image, null_stub) {
        Ok(t) => Ok(t.target()),
        // Every state an update leaves has a literal: it is published
        // before anything else is written, and never put back to 0.
        Err(e) if unfinished && image.literal != 0 => {
            current_target(tramp, image, null_stub).map_err(|_| e)
        }
        Err(e) => Err(e),
    }
}

/// What a retarget of the trampoline at `tramp` to `target` (0 for NULL)
/// should leave there: `jmp.d32 target` when `rel32` reaches, else the far
/// form; `ret` for NULL. The literal is always the target (the NULL stub
/// for NULL), so the trap handler and the far form can read it.
///
/// Every target is reachable on x86-64 (the far form reaches anything), and
/// instructions have no alignment, so no target is refused.
///
/// ```
/// use static_call::arch::x86_64::{FAR_ENTRY, Form, NULL_ENTRY, decode, plan};
/// let (tramp, stub) = (0x5555_0000_1000, 0x5555_0000_2000);
/// let near = plan(tramp, tramp + 0x100, stub);
/// assert_eq!(near.entry, [0xe9, 0xfb, 0, 0, 0, 0x0f, 0xb9, 0xcc]);
/// assert_eq!(decode(tramp, &near, stub).unwrap().form, Form::Near(tramp + 0x100));
/// let far = plan(tramp, tramp + (8 << 30), stub);
/// assert_eq!((far.entry, far.literal), (FAR_ENTRY, tramp + (8 << 30)));
/// assert_eq!(plan(tramp, 0, stub).entry, NULL_ENTRY);
/// ```
pub fn plan(tramp: u64, target: u64, null_stub: u64) -> Image {
    if target == 0 {
        return Image {
            entry: NULL_ENTRY,
            literal: null_stub,
        };
    }
    let entry = match insn::encode_jmp_rel32(tramp, target) {
        Some(jmp) => {
            let mut e = [0u8; 8];
            e[..5].copy_from_slice(&jmp);
            e[SIGNATURE_OFFSET..].copy_from_slice(&UD1_ESP_ECX);
            e
        }
        None => FAR_ENTRY,
    };
    Image {
        entry,
        literal: target,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TRAMP: u64 = 0x5555_5555_1000;
    const STUB: u64 = 0x5555_5555_2000;

    #[test]
    fn far_entry_is_a_rip_relative_jump_through_the_literal() {
        let slot = insn::decode_jmp_rip_indirect(TRAMP, &FAR_ENTRY[..6].try_into().unwrap());
        assert_eq!(slot, Some(TRAMP + LITERAL_OFFSET as u64));
    }

    #[test]
    fn near_target_gets_a_direct_jump_and_the_literal() {
        let target = TRAMP - 0x4000;
        let image = plan(TRAMP, target, STUB);
        assert_eq!(image.entry[0], JMP_REL32);
        assert_eq!(image.entry[5..], UD1_ESP_ECX);
        assert_eq!(image.literal, target);
        let t = decode(TRAMP, &image, STUB).unwrap();
        assert_eq!((t.form, t.target()), (Form::Near(target), target));
        assert_eq!(current_target(TRAMP, &image, STUB), Ok(target));
    }

    #[test]
    fn far_target_gets_the_indirect_jump() {
        let far = TRAMP + (8 << 30);
        let image = plan(TRAMP, far, STUB);
        assert_eq!((image.entry, image.literal), (FAR_ENTRY, far));
        let t = decode(TRAMP, &image, STUB).unwrap();
        assert_eq!((t.form, t.target()), (Form::Far, far));
        assert_eq!(current_target(TRAMP, &image, STUB), Ok(far));
    }

    #[test]
    fn null_gets_ret_and_the_stub() {
        let image = plan(TRAMP, 0, STUB);
        assert_eq!((image.entry, image.literal), (NULL_ENTRY, STUB));
        let t = decode(TRAMP, &image, STUB).unwrap();
        assert_eq!((t.form, t.target()), (Form::Null, 0));
        assert_eq!(current_target(TRAMP, &image, STUB), Ok(0));
    }

    #[test]
    fn reach_boundary_is_exact() {
        let end = TRAMP + 5;
        for (target, near) in [
            (end + (1 << 31) - 1, true),
            (end + (1 << 31), false),
            (end - (1 << 31), true),
            (end - (1 << 31) - 1, false),
        ] {
            let form = decode(TRAMP, &plan(TRAMP, target, STUB), STUB)
                .unwrap()
                .form;
            assert_eq!(form == Form::Far, !near, "{target:#x}");
        }
    }

    #[test]
    fn as_assembled_trampolines_have_no_literal_yet() {
        let mut near = plan(TRAMP, TRAMP + 64, STUB);
        near.literal = 0;
        assert_eq!(decode(TRAMP, &near, STUB).unwrap().target(), TRAMP + 64);
        let null = Image {
            entry: NULL_ENTRY,
            literal: 0,
        };
        assert_eq!(decode(TRAMP, &null, STUB).unwrap().form, Form::Null);
        // The far form only exists once an update wrote the literal.
        let far = Image {
            entry: FAR_ENTRY,
            literal: 0,
        };
        assert!(matches!(
            decode(TRAMP, &far, STUB),
            Err(Error::UnrecognisedTrampoline { offset: 8, .. })
        ));
    }

    #[test]
    fn every_corrupted_byte_is_refused_with_its_offset() {
        for good in [
            plan(TRAMP, TRAMP + 64, STUB),
            plan(TRAMP, 0, STUB),
            plan(TRAMP, TRAMP + (8 << 30), STUB),
        ] {
            let is_near = good.entry[0] == JMP_REL32;
            for offset in 0..8 {
                // The rel32 of a near jump is the target: any value is a
                // jump, and it is checked against the literal instead.
                let literal_caught = is_near && (1..5).contains(&offset);
                let mut bad = good;
                bad.entry[offset] ^= 0x01;
                let err = decode(TRAMP, &bad, STUB).unwrap_err();
                let want = if literal_caught { 8 } else { offset };
                assert!(
                    matches!(err, Error::UnrecognisedTrampoline { offset: o, .. } if o == want),
                    "{good:?} byte {offset}: {err:?}"
                );
                // What was found is the byte (or the literal), not the word.
                let found = if literal_caught {
                    bad.literal
                } else {
                    u64::from(bad.entry[offset])
                };
                assert!(
                    matches!(err, Error::UnrecognisedTrampoline { found: f, .. } if f == found),
                    "{good:?} byte {offset}: {err:?}"
                );
            }
            // A far literal is any target; the others must agree with
            // the entry word.
            let mut bad = good;
            bad.literal ^= 0x10;
            assert_eq!(
                matches!(
                    decode(TRAMP, &bad, STUB),
                    Err(Error::UnrecognisedTrampoline { offset: 8, .. })
                ),
                good.entry != FAR_ENTRY
            );
        }
    }

    #[test]
    fn an_int3_is_refused_by_decode_but_read_through_by_current_target() {
        let mut image = plan(TRAMP, TRAMP + 64, STUB);
        image.entry[0] = INT3;
        assert!(matches!(
            decode(TRAMP, &image, STUB),
            Err(Error::UnrecognisedTrampoline { offset: 0, .. })
        ));
        image.literal = TRAMP + 128;
        assert_eq!(current_target(TRAMP, &image, STUB), Ok(TRAMP + 128));
        image.literal = STUB;
        assert_eq!(current_target(TRAMP, &image, STUB), Ok(0));
        let mut far = plan(TRAMP, TRAMP + (8 << 30), STUB);
        far.entry[0] = INT3;
        assert_eq!(current_target(TRAMP, &far, STUB), Ok(TRAMP + (8 << 30)));
        far.entry[7] = 0x90;
        assert!(current_target(TRAMP, &far, STUB).is_err());
    }

    #[test]
    fn misaligned_trampolines_are_refused() {
        assert!(check_alignment(0x1000).is_ok());
        assert!(check_alignment(0x1008).is_ok());
        for bad in [0x1001, 0x1004, 0x100c, 0x1007] {
            assert!(matches!(
                check_alignment(bad),
                Err(Error::MisalignedTrampoline { align: 8, .. })
            ));
        }
    }
}
