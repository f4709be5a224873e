//! Inline call sites on arm64: the instruction an update leaves at each
//! site, and checking what is there before anything is written. Pure
//! functions, unit-tested on every host.
//!
//! A site is one `bl` (`asm/aarch64/call_site.S`); an update leaves
//! `bl target` where the target is in `bl` reach, `bl trampoline` where it
//! is not (the trampoline reaches it through its literal), and `nop` for
//! NULL. `BL` and `NOP` are both in the ARM ARM's list of instructions
//! that may be modified while other CPUs execute them, and each site is
//! written with one aligned 32-bit store, so a concurrent call runs the old
//! instruction or the new one.

use super::insn::{self, NOP};
use crate::Error;

/// `bl target` placed at `pc`, or `None` beyond its ±128 MiB reach.
///
/// ```
/// use static_call::arch::aarch64::site::{decode_bl, encode_bl};
/// assert_eq!(encode_bl(0x1000, 0x1008), Some(0x9400_0002));
/// assert_eq!(decode_bl(0x1000, 0x9400_0002), Some(0x1008));
/// assert_eq!(encode_bl(0x1000, 0x1000 + (128 << 20)), None);
/// ```
pub fn encode_bl(pc: u64, target: u64) -> Option<u32> {
    insn::encode_b(pc, target).map(|b| b | BL_BIT)
}

/// The target of a `bl` at `pc`, or `None` if `word` is not a `bl`.
pub fn decode_bl(pc: u64, word: u32) -> Option<u64> {
    if word & BL_BIT == 0 {
        return None;
    }
    insn::decode_b(pc, word & !BL_BIT)
}

/// Bit 31: what makes `B` a `BL`.
const BL_BIT: u32 = 0x8000_0000;

/// The word a site of the key whose trampoline is `tramp` holds once the
/// key targets `target` (0 for NULL).
///
/// ```
/// use static_call::arch::aarch64::{insn::NOP, site::{encode_bl, plan}};
/// let (site, tramp) = (0x4000_1000, 0x4000_8000);
/// assert_eq!(plan(site, tramp, 0), Ok(NOP));
/// assert_eq!(plan(site, tramp, 0x4000_2000), Ok(encode_bl(site, 0x4000_2000).unwrap()));
/// // Out of reach: through the trampoline.
/// assert_eq!(plan(site, tramp, 0x8000_0000_0000), Ok(encode_bl(site, tramp).unwrap()));
/// ```
pub fn plan(site: u64, tramp: u64, target: u64) -> Result<u32, Error> {
    if target == 0 {
        return Ok(NOP);
    }
    match encode_bl(site, target) {
        Some(word) => Ok(word),
        None => home(site, tramp),
    }
}

/// The call of the trampoline: what a site compiled against a declaration
/// holds before the key's first update (one in the defining crate calls
/// the initial target directly), and what a failed update puts back (it behaves as a
/// call of the key's current target).
pub fn home(site: u64, tramp: u64) -> Result<u32, Error> {
    encode_bl(site, tramp).ok_or(Error::UnreachableTarget {
        tramp: tramp as usize,
        target: tramp as usize,
    })
}

/// [`check`] for a key whose last update returned
/// [`Error::RestoreFailed`]: the site may hold any word the crate puts at
/// a site (a `bl`, its trampoline's included, or the `nop`), which the
/// next update completes. Anything else is refused, naming what was found.
///
/// ```
/// use static_call::arch::aarch64::{insn::NOP, site::{check_unfinished, encode_bl}};
/// let bl = encode_bl(0x1000, 0x2000).unwrap();
/// assert_eq!(check_unfinished(0x1000, bl), Ok(()));
/// assert_eq!(check_unfinished(0x1000, NOP), Ok(()));
/// assert!(check_unfinished(0x1000, 0xd65f_03c0).is_err()); // ret
/// ```
pub fn check_unfinished(site: u64, word: u32) -> Result<(), Error> {
    if site.is_multiple_of(4) && (word == NOP || decode_bl(site, word).is_some()) {
        Ok(())
    } else {
        Err(Error::UnrecognisedCallSite {
            site: site as usize,
            found: u64::from(word),
        })
    }
}

/// Checks, before anything is written, that the site holds what it may
/// hold for a key whose current target is `current` (0 for NULL): its
/// trampoline's call (a site compiled against a declaration) or
/// [`plan`]'s word for `current`; or, while the key has never been
/// updated (`never_updated`), any `bl`: the defining crate assembles its
/// sites as direct calls of the initial target, which the compiler may
/// have copied per codegen unit or the linker routed through a veneer,
/// so the `bl` a site was linked with need not lead to the address the
/// key reports. The `nop` is accepted only for a NULL key. A site the
/// linker routed through a veneer to its trampoline (more than 128 MiB
/// away) is refused once the key has been updated: its `bl` leads to
/// neither.
pub fn check(
    site: u64,
    word: u32,
    tramp: u64,
    current: u64,
    never_updated: bool,
) -> Result<(), Error> {
    let refused = Error::UnrecognisedCallSite {
        site: site as usize,
        found: u64::from(word),
    };
    if !site.is_multiple_of(4) {
        return Err(refused);
    }
    let as_assembled = never_updated && decode_bl(site, word).is_some();
    if as_assembled || [home(site, tramp), plan(site, tramp, current)].contains(&Ok(word)) {
        Ok(())
    } else {
        Err(refused)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bl_round_trips_across_its_range_and_is_not_b() {
        let pc = 0x1_0000_0000u64;
        for off in [-(1i64 << 27), -4, 4, (1 << 27) - 4] {
            let t = pc.wrapping_add_signed(off);
            let w = encode_bl(pc, t).unwrap();
            assert_eq!(decode_bl(pc, w), Some(t));
            assert_eq!(insn::decode_b(pc, w), None, "a bl is not a b");
            assert_eq!(decode_bl(pc, insn::encode_b(pc, t).unwrap()), None);
        }
        assert_eq!(encode_bl(pc, pc + (1 << 27)), None);
        assert_eq!(encode_bl(pc, pc + 2), None);
        assert_eq!(decode_bl(pc, NOP), None);
    }

    #[test]
    fn checks_accept_exactly_home_and_the_current_plan() {
        let (site, tramp) = (0x4000_1000u64, 0x4000_9000u64);
        let (f, g) = (0x4000_3000u64, 0x4000_4000u64);
        let home = home(site, tramp).unwrap();
        assert_eq!(check(site, home, tramp, f, false), Ok(()));
        assert_eq!(check(site, home, tramp, 0, false), Ok(()));
        assert_eq!(
            check(site, plan(site, tramp, f).unwrap(), tramp, f, false),
            Ok(())
        );
        assert_eq!(check(site, NOP, tramp, 0, false), Ok(()));
        for (s, w, cur) in [
            (site, plan(site, tramp, g).unwrap(), f),
            (site, NOP, f),
            (site, insn::encode_b(site, f).unwrap(), f),
            (site + 2, home, f),
        ] {
            assert_eq!(
                check(s, w, tramp, cur, false),
                Err(Error::UnrecognisedCallSite {
                    site: s as usize,
                    found: u64::from(w)
                })
            );
        }
    }

    #[test]
    fn a_never_updated_site_may_call_the_initial_target_as_linked() {
        let (site, tramp) = (0x4000_1000u64, 0x4000_9000u64);
        let (f, copy) = (0x4000_3000u64, 0x4000_3800u64);
        let linked = encode_bl(site, copy).unwrap();
        assert_eq!(check(site, linked, tramp, f, true), Ok(()));
        assert_eq!(check(site, NOP, tramp, 0, true), Ok(()));
        assert!(check(site, linked, tramp, f, false).is_err());
        assert!(check(site, NOP, tramp, f, true).is_err());
        assert!(check(site, insn::encode_b(site, f).unwrap(), tramp, f, true).is_err());
        assert!(check(site + 2, linked, tramp, f, true).is_err());
    }
}
