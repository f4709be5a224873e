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
use super::protocol::Store;
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

/// Where a site's call goes, `None` for the NULL no-op; an
/// [`Error::UnrecognisedCallSite`] naming what was found if the bytes are
/// neither.
pub fn decode(site: u64, word: &[u8; SITE_LEN]) -> Result<Option<u64>, Error> {
    if *word == NOP8 {
        return Ok(None);
    }
    if word[..3] != CALL_PREFIXES || word[3] != CALL_REL32 {
        return Err(Error::UnrecognisedCallSite {
            site: site as usize,
            found: u64::from_le_bytes(*word),
        });
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

/// The call of the trampoline: what a site compiled against a declaration
/// holds before the key's first update (one in the defining crate calls
/// the initial target directly), and what a failed update puts back (it behaves as
/// any call of the key's current target).
pub fn home(site: u64, tramp: u64) -> Result<[u8; SITE_LEN], Error> {
    encode_call(site, tramp).ok_or(Error::UnreachableTarget {
        tramp: tramp as usize,
        target: tramp as usize,
    })
}

/// Checks, before anything is written, that the site holds what it may
/// hold for a key whose current target is `current` (0 for NULL): its
/// trampoline's call (a site compiled against a declaration), or
/// [`plan`]'s word for `current`; or, while the key has never been updated
/// (`never_updated`), any call of the site's shape: the defining crate
/// assembles its sites as direct calls of the initial target, and the
/// compiler may give a small function one copy per codegen unit, so the
/// call a site was linked with need not lead to the address the key
/// reports. The no-op is accepted only for a NULL key.
///
/// ```
/// use static_call::arch::x86_64::site::{NOP8, check, encode_call, home};
/// let (site, tramp, f) = (0x1000, 0x9000, 0x3000);
/// let linked = encode_call(site, 0x3800).unwrap(); // another copy of f
/// assert_eq!(check(site, &linked, tramp, f, true), Ok(()));
/// assert!(check(site, &linked, tramp, f, false).is_err());
/// assert!(check(site, &NOP8, tramp, f, true).is_err());
/// assert_eq!(check(site, &home(site, tramp).unwrap(), tramp, f, false), Ok(()));
/// ```
pub fn check(
    site: u64,
    word: &[u8; SITE_LEN],
    tramp: u64,
    current: u64,
    never_updated: bool,
) -> Result<(), Error> {
    let as_assembled = never_updated && matches!(decode(site, word), Ok(Some(_)));
    let ok = as_assembled
        || [home(site, tramp), plan(site, tramp, current)]
            .iter()
            .any(|w| w.as_ref() == Ok(word));
    if ok && site.is_multiple_of(SITE_LEN as u64) {
        Ok(())
    } else {
        Err(Error::UnrecognisedCallSite {
            site: site as usize,
            found: u64::from_le_bytes(*word),
        })
    }
}

/// [`check`] for a key whose last update returned
/// [`Error::RestoreFailed`]: the site may hold any word the crate puts at a
/// site (a call, the no-op, its trampoline's call), or one with an `int3`
/// over its first byte, which the next update completes. Anything else is
/// refused, naming what was found.
///
/// ```
/// use static_call::arch::x86_64::site::{NOP8, armed, check_unfinished, encode_call};
/// let call = encode_call(0x1000, 0x2000).unwrap();
/// assert_eq!(check_unfinished(0x1000, &armed(&call)), Ok(()));
/// assert_eq!(check_unfinished(0x1000, &armed(&NOP8)), Ok(()));
/// assert!(check_unfinished(0x1000, &[0xcc; 8]).is_err());
/// ```
pub fn check_unfinished(site: u64, word: &[u8; SITE_LEN]) -> Result<(), Error> {
    let firsts = if word[0] == INT3 {
        [CALL_PREFIXES[0], NOP8[0]]
    } else {
        [word[0]; 2]
    };
    let known = firsts.iter().any(|&first| {
        let mut w = *word;
        w[0] = first;
        decode(site, &w).is_ok()
    });
    if known && site.is_multiple_of(SITE_LEN as u64) {
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

/// The store the batched int3 protocol makes at a site in `phase` (1:
/// `int3`, 2: the tail, 3: the first byte; [`protocol::phase`]'s numbers),
/// given the word `now` it holds and the word `to` it is going to; `None`
/// where the site has nothing to do in that phase. It needs no memory of
/// earlier phases: a site holds an `int3` exactly when phase 1 armed it
/// (its check refused one before), so sites need no per-update state.
///
/// ```
/// use static_call::arch::x86_64::{protocol::Store, site::{NOP8, breakpoint_step, encode_call}};
/// let call = encode_call(0x1000, 0x2000).unwrap();
/// assert_eq!(breakpoint_step(1, &call, &NOP8), Some(Store::First(0xcc)));
/// let mut armed = call;
/// armed[0] = 0xcc;
/// let mut tail = NOP8;
/// tail[0] = 0xcc;
/// assert_eq!(breakpoint_step(2, &armed, &NOP8), Some(Store::Entry(tail)));
/// assert_eq!(breakpoint_step(3, &tail, &NOP8), Some(Store::First(0x0f)));
/// assert_eq!(breakpoint_step(1, &NOP8, &NOP8), None);
/// ```
///
/// [`protocol::phase`]: super::protocol::phase
pub fn breakpoint_step(phase: usize, now: &[u8; SITE_LEN], to: &[u8; SITE_LEN]) -> Option<Store> {
    let is_armed = now[0] == INT3;
    match phase {
        1 if now != to && !is_armed => Some(Store::First(INT3)),
        2 if is_armed && now[1..] != to[1..] => Some(Store::Entry(armed(to))),
        3 if is_armed => Some(Store::First(to[0])),
        _ => None,
    }
}

/// Whether a site holds a state that `phase` of the int3 protocol towards
/// `to` may leave: what an update reads back after the phase.
pub fn breakpoint_done(phase: usize, now: &[u8; SITE_LEN], to: &[u8; SITE_LEN]) -> bool {
    match phase {
        1 => now == to || now[0] == INT3,
        2 => now == to || *now == armed(to),
        _ => now == to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_round_trip_and_keep_their_rel32_aligned() {
        for site in [0x1_0000_1000u64, 0x7fff_ffff_f000, 0x10_0000_0008] {
            for target in [
                site + 8,
                site - 0x1000,
                site + 0x7fff_0000,
                site - 0x8000_0000 + 8,
            ] {
                let w = encode_call(site, target).unwrap();
                assert_eq!(decode(site, &w), Ok(Some(target)));
                assert_eq!(w[..4], [0x2e, 0x2e, 0x2e, 0xe8]);
            }
        }
        assert_eq!(decode(0x1000, &NOP8), Ok(None));
        assert!(decode(0x1000, &[0xcc; 8]).is_err());
        assert!(decode(0x1000, &[0x90, 0x2e, 0x2e, 0xe8, 0, 0, 0, 0]).is_err());
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
        assert_eq!(check(site, &home, tramp, f, false), Ok(()));
        assert_eq!(check(site, &home, tramp, 0, false), Ok(()));
        let to_f = plan(site, tramp, f).unwrap();
        assert_eq!(check(site, &to_f, tramp, f, false), Ok(()));
        // A call of another target, a nop while the key is not NULL, an
        // armed site, a misaligned site: all refused, with what was found.
        for (s, w, cur) in [
            (site, plan(site, tramp, g).unwrap(), f),
            (site, NOP8, f),
            (site, armed(&to_f), f),
            (site + 4, to_f, f),
        ] {
            assert_eq!(
                check(s, &w, tramp, cur, false),
                Err(Error::UnrecognisedCallSite {
                    site: s as usize,
                    found: u64::from_le_bytes(w)
                })
            );
        }
        assert_eq!(check(site, &NOP8, tramp, 0, false), Ok(()));
    }

    #[test]
    fn a_never_updated_site_may_call_the_initial_target_as_linked() {
        let (site, tramp) = (0x5555_0000_1000u64, 0x5555_0000_9000u64);
        // `f` as the key reports it; `copy`, another codegen unit's copy
        // of it, which a site of the defining crate may have been linked
        // to call.
        let (f, copy) = (0x5555_0000_3000u64, 0x5555_0000_3800u64);
        let linked = plan(site, tramp, copy).unwrap();
        assert_eq!(check(site, &linked, tramp, f, true), Ok(()));
        assert_eq!(
            check(site, &plan(site, tramp, f).unwrap(), tramp, f, true),
            Ok(())
        );
        assert_eq!(check(site, &NOP8, tramp, 0, true), Ok(()));
        // Once the key has been updated, only home and the current plan.
        assert!(check(site, &linked, tramp, f, false).is_err());
        // Never the no-op for a key that is not NULL, nor anything that
        // is not a site's call, nor a misaligned site.
        assert!(check(site, &NOP8, tramp, f, true).is_err());
        assert!(check(site, &armed(&linked), tramp, f, true).is_err());
        assert!(check(site, &[0x90; 8], tramp, f, true).is_err());
        assert!(check(site + 4, &linked, tramp, f, true).is_err());
    }

    /// What a CPU does on running a site's bytes: calls `Some(target)`,
    /// runs the no-op (`None`), or traps and is steered to the key's
    /// literal (which holds the new target before any `int3` is placed).
    fn run(site: u64, now: &[u8; 8], literal: u64) -> Option<u64> {
        if now[0] == INT3 {
            return Some(literal);
        }
        decode(site, now).expect("a state no instruction boundary allows")
    }

    #[test]
    fn every_state_of_the_batched_protocol_calls_old_or_new() {
        let (site, tramp) = (0x5555_0000_1000u64, 0x5555_0000_9000u64);
        let targets = [0, 0x5555_0000_3000, 0x5555_0000_4000, 0x7fff_0000_0000];
        let mut checked = 0;
        for &old in &targets {
            for start in [home(site, tramp).unwrap(), plan(site, tramp, old).unwrap()] {
                for &new in &targets {
                    let to = plan(site, tramp, new).unwrap();
                    // What each word does for the key: the trampoline's
                    // call runs whatever the trampoline holds, old or new.
                    let behaves = |t: Option<u64>, key: u64| match t {
                        None => key == 0,
                        Some(t) if t == tramp => true,
                        Some(t) => t == key,
                    };
                    let mut now = start;
                    for phase in 1..=3 {
                        if let Some(store) = breakpoint_step(phase, &now, &to) {
                            now = store.apply_to_word(now);
                        }
                        assert!(breakpoint_done(phase, &now, &to));
                        let ran = run(site, &now, if new == 0 { 0 } else { new });
                        assert!(
                            behaves(ran, old) || behaves(ran, new),
                            "{old:#x} -> {new:#x}, phase {phase}: {now:x?}"
                        );
                        checked += 1;
                    }
                    assert_eq!(now, to);
                }
            }
        }
        assert_eq!(checked, 4 * 2 * 4 * 3);
    }
}
