//! Inline call sites on x86-64: the instruction an update leaves at each
//! site, and checking what is there before anything is written. Pure
//! functions, unit-tested on every host.
//!
//! A site is one aligned 8-byte word (`asm/x86_64/call_site.S`):
//!
//! ```text
//! call: 2e 2e 2e e8 rel32             cs cs cs call target (or the trampoline)
//! NULL: 0f 1f 84 00 00 00 00 00       nopl 0x0(%rax,%rax,1)
//! ```
//!
//! Its rel32 is 4-byte aligned and the word never crosses a cache line, so
//! every change is one aligned 8-byte store (the one-store strategy) or the
//! int3 protocol's three steps, exactly as for a trampoline's entry word.

use super::insn::INT3;
use crate::Error;

/// Bytes of a site, and its alignment.
pub const SITE_LEN: usize = 8;

/// The prefixes that pad a site's call to 8 bytes.
pub const CALL_PREFIXES: [u8; 3] = [0x2e, 0x2e, 0x2e];

/// `call rel32`.
pub const CALL_REL32: u8 = 0xe8;

/// A NULL site: one 8-byte no-op.
pub const NOP8: [u8; SITE_LEN] = [0x0f, 0x1f, 0x84, 0, 0, 0, 0, 0];

/// `cs cs cs call target` placed at `site`, or `None` beyond rel32 reach.
///
/// ```
/// use static_call::arch::x86_64::site::encode_call;
/// assert_eq!(
///     encode_call(0x1000, 0x1010),
///     Some([0x2e, 0x2e, 0x2e, 0xe8, 0x08, 0, 0, 0])
/// );
/// assert_eq!(encode_call(0x1000, 0x1000 + (3 << 30)), None);
/// ```
pub fn encode_call(site: u64, target: u64) -> Option<[u8; SITE_LEN]> {
    let end = site.wrapping_add(SITE_LEN as u64);
    let rel = i32::try_from(target.wrapping_sub(end) as i64).ok()?;
    let mut word = [0; SITE_LEN];
    word[..3].copy_from_slice(&CALL_PREFIXES);
    word[3] = CALL_REL32;
    word[4..].copy_from_slice(&rel.to_le_bytes());
    Some(word)
}

/// Where a site's call goes, `None` for the NULL no-op; `Err(())` if the
/// bytes are neither.
pub fn decode(site: u64, word: &[u8; SITE_LEN]) -> Result<Option<u64>, ()> {
    if *word == NOP8 {
        return Ok(None);
    }
    if word[..3] != CALL_PREFIXES || word[3] != CALL_REL32 {
        return Err(());
    }
    let rel = i32::from_le_bytes([word[4], word[5], word[6], word[7]]);
    Ok(Some(
        site.wrapping_add(SITE_LEN as u64)
            .wrapping_add_signed(i64::from(rel)),
    ))
}

/// The word a site of the key whose trampoline is `tramp` holds once the
/// key targets `target` (0 for NULL): a call of the target where rel32
/// reaches it, else a call of the trampoline (which reaches it through its
/// literal), and the no-op for NULL.
///
/// ```
/// use static_call::arch::x86_64::site::{NOP8, home, plan};
/// let (site, tramp) = (0x5555_0000_1000, 0x5555_0000_8000);
/// assert_eq!(plan(site, tramp, 0), Ok(NOP8));
/// let far = 0x7fff_0000_0000;
/// assert_eq!(plan(site, tramp, far), home(site, tramp));
/// ```
pub fn plan(site: u64, tramp: u64, target: u64) -> Result<[u8; SITE_LEN], Error> {
    if target == 0 {
        return Ok(NOP8);
    }
    match encode_call(site, target) {
        Some(word) => Ok(word),
        None => home(site, tramp),
    }
}

/// The call of the trampoline, as the site was assembled: what it holds
/// before any update, and what a failed update puts back (it behaves as
/// any call of the key's current target).
pub fn home(site: u64, tramp: u64) -> Result<[u8; SITE_LEN], Error> {
    encode_call(site, tramp).ok_or(Error::UnreachableTarget {
        tramp: tramp as usize,
        target: tramp as usize,
    })
}

/// Checks, before anything is written, that the site holds what it may
/// hold for a key whose current target is `current` (0 for NULL): its
/// trampoline's call, or [`plan`]'s word for `current`.
pub fn check(site: u64, word: &[u8; SITE_LEN], tramp: u64, current: u64) -> Result<(), Error> {
    if !site.is_multiple_of(SITE_LEN as u64) {
        return Err(Error::UnrecognisedCallSite {
            site: site as usize,
            found: u64::from_le_bytes(*word),
        });
    }
    let ok = [home(site, tramp), plan(site, tramp, current)]
        .iter()
        .any(|w| w.as_ref() == Ok(word));
    if ok {
        Ok(())
    } else {
        Err(Error::UnrecognisedCallSite {
            site: site as usize,
            found: u64::from_le_bytes(*word),
        })
    }
}

/// A site's word with its first byte replaced by `int3`: the armed state
/// of the int3 protocol.
pub fn armed(word: &[u8; SITE_LEN]) -> [u8; SITE_LEN] {
    let mut w = *word;
    w[0] = INT3;
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_round_trip_and_keep_their_rel32_aligned() {
        for site in [0x1_0000_1000u64, 0x7fff_ffff_f000, 0x10_0000_0008] {
            for target in [site + 8, site - 0x1000, site + 0x7fff_0000, site - 0x8000_0000 + 8] {
                let w = encode_call(site, target).unwrap();
                assert_eq!(decode(site, &w), Ok(Some(target)));
                assert_eq!(w[..4], [0x2e, 0x2e, 0x2e, 0xe8]);
            }
        }
        assert_eq!(decode(0x1000, &NOP8), Ok(None));
        assert_eq!(decode(0x1000, &[0xcc; 8]), Err(()));
        assert_eq!(decode(0x1000, &[0x90, 0x2e, 0x2e, 0xe8, 0, 0, 0, 0]), Err(()));
    }

    #[test]
    fn reach_is_measured_from_the_end_of_the_site() {
        let site = 0x4_0000_0000u64;
        let end = site + 8;
        assert!(encode_call(site, end + 0x7fff_ffff).is_some());
        assert!(encode_call(site, end + 0x8000_0000).is_none());
        assert!(encode_call(site, end - 0x8000_0000).is_some());
        assert!(encode_call(site, end - 0x8000_0001).is_none());
    }

    #[test]
    fn checks_accept_exactly_home_and_the_current_plan() {
        let (site, tramp) = (0x5555_0000_1000u64, 0x5555_0000_9000u64);
        let (f, g) = (0x5555_0000_3000u64, 0x5555_0000_4000u64);
        let home = home(site, tramp).unwrap();
        assert_eq!(check(site, &home, tramp, f), Ok(()));
        assert_eq!(check(site, &home, tramp, 0), Ok(()));
        let to_f = plan(site, tramp, f).unwrap();
        assert_eq!(check(site, &to_f, tramp, f), Ok(()));
        // A call of another target, a nop while the key is not NULL, an
        // armed site, a misaligned site: all refused, with what was found.
        for (s, w, cur) in [
            (site, plan(site, tramp, g).unwrap(), f),
            (site, NOP8, f),
            (site, armed(&to_f), f),
            (site + 4, to_f, f),
        ] {
            assert_eq!(
                check(s, &w, tramp, cur),
                Err(Error::UnrecognisedCallSite {
                    site: s as usize,
                    found: u64::from_le_bytes(w)
                })
            );
        }
        assert_eq!(check(site, &NOP8, tramp, 0), Ok(()));
    }
}
