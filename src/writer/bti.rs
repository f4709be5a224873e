//! Whether an ELF object asks for BTI: its `NT_GNU_PROPERTY_TYPE_0` note
//! carrying `GNU_PROPERTY_AARCH64_FEATURE_1_AND` with the BTI bit. The
//! loader (the kernel for the executable, `ld.so` for libraries) maps such
//! an object's text with `PROT_BTI`, so a writer that replaces or
//! re-protects one of its pages must ask for `PROT_BTI` again.
//!
//! Pure parsing of the note bytes, tested on every host; the Linux writers
//! feed it the note segments of the object that holds the page.

/// `NT_GNU_PROPERTY_TYPE_0`.
const NT_GNU_PROPERTY_TYPE_0: u32 = 5;
/// `GNU_PROPERTY_AARCH64_FEATURE_1_AND`.
const GNU_PROPERTY_AARCH64_FEATURE_1_AND: u32 = 0xc000_0000;
/// Its BTI bit.
const GNU_PROPERTY_AARCH64_FEATURE_1_BTI: u32 = 1;

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let word = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes(word.try_into().ok()?))
}

/// Whether the notes in `segment` (a `PT_NOTE` or `PT_GNU_PROPERTY`
/// segment whose notes are aligned to `align` bytes) mark the object as
/// BTI-compatible. Malformed notes end the walk with `false` for what
/// remains; nothing is read outside `segment`.
pub(crate) fn marked(segment: &[u8], align: usize) -> bool {
    let align = align.max(4);
    let mut at = 0;
    while let (Some(namesz), Some(descsz), Some(kind)) = (
        u32_at(segment, at),
        u32_at(segment, at + 4),
        u32_at(segment, at + 8),
    ) {
        let (namesz, descsz) = (namesz as usize, descsz as usize);
        let name_at = at + 12;
        let Some(desc_at) = name_at
            .checked_add(namesz)
            .map(|n| n.next_multiple_of(align))
        else {
            return false;
        };
        let Some(desc) = desc_at
            .checked_add(descsz)
            .and_then(|end| segment.get(desc_at..end))
        else {
            return false;
        };
        let name = segment.get(name_at..name_at + namesz);
        if kind == NT_GNU_PROPERTY_TYPE_0 && name == Some(b"GNU\0") && properties_mark_bti(desc) {
            return true;
        }
        at = desc_at + descsz.next_multiple_of(align);
    }
    false
}

/// Whether a property list (the descriptor of a GNU property note) holds
/// `AARCH64_FEATURE_1_AND` with the BTI bit. Properties are 8-byte aligned
/// on 64-bit objects.
fn properties_mark_bti(desc: &[u8]) -> bool {
    let mut at = 0;
    while let (Some(kind), Some(size)) = (u32_at(desc, at), u32_at(desc, at + 4)) {
        let data_at = at + 8;
        let Some(data) = data_at
            .checked_add(size as usize)
            .and_then(|end| desc.get(data_at..end))
        else {
            return false;
        };
        if kind == GNU_PROPERTY_AARCH64_FEATURE_1_AND {
            return u32_at(data, 0)
                .is_some_and(|bits| bits & GNU_PROPERTY_AARCH64_FEATURE_1_BTI != 0);
        }
        at = (data_at + data.len()).next_multiple_of(8);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn note(kind: u32, name: &[u8], desc: &[u32]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend((name.len() as u32).to_ne_bytes());
        out.extend(((desc.len() * 4) as u32).to_ne_bytes());
        out.extend(kind.to_ne_bytes());
        out.extend(name);
        while out.len() % 8 != 0 {
            out.push(0);
        }
        out.extend(desc.iter().flat_map(|w| w.to_ne_bytes()));
        while out.len() % 8 != 0 {
            out.push(0);
        }
        out
    }

    #[test]
    fn the_bti_property_is_found_after_other_notes_and_properties() {
        let build_id = note(3, b"GNU\0", &[0xdead_beef, 0x1234_5678, 7]);
        // An x86 property first (type 0xc0000002, 4 bytes, padded), then
        // AARCH64_FEATURE_1_AND with BTI|PAC.
        let props = note(5, b"GNU\0", &[0xc000_0002, 4, 3, 0, 0xc000_0000, 4, 3, 0]);
        let segment = [build_id, props].concat();
        assert!(marked(&segment, 8));
    }

    #[test]
    fn pac_alone_or_another_owner_is_not_bti() {
        assert!(!marked(&note(5, b"GNU\0", &[0xc000_0000, 4, 2, 0]), 8));
        assert!(!marked(&note(5, b"XYZ\0", &[0xc000_0000, 4, 1, 0]), 8));
        assert!(!marked(&note(4, b"GNU\0", &[0xc000_0000, 4, 1, 0]), 8));
    }

    #[test]
    fn truncated_or_huge_sizes_read_nothing_outside() {
        let good = note(5, b"GNU\0", &[0xc000_0000, 4, 1, 0]);
        for cut in 0..good.len() {
            assert!(!marked(&good[..cut], 8), "cut at {cut}");
        }
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(!marked(&huge, 8));
        let mut huge_prop = good;
        huge_prop[20..24].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(!marked(&huge_prop, 8));
    }
}
