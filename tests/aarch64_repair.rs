//! Keys left behind by `RestoreFailed` on arm64: a writer whose writes or
//! syncs stop working at some step of an update (so the undo fails too),
//! then an update with a writer that works. Whatever the failure left (a
//! literal that disagrees with the `b`, sites with the new call or the
//! old), `query()` agrees with where a call of the trampoline goes, and the
//! working update completes the key: every call reaches the new target and
//! `query()` says so. Near, far and NULL targets; a key with inline sites.
#![cfg(all(
    target_arch = "aarch64",
    target_os = "linux",
    not(feature = "force-generic")
))]

mod common;
#[path = "common/repair.rs"]
mod repair;
use repair::*;
use static_call::arch::aarch64 as a64;
use static_call::writer::linux::Remap;
use static_call::{Error, UpdateError};

/// The trampoline's 32 bytes, from its literal.
fn window(tramp: usize) -> [u8; 32] {
    // SAFETY: a live trampoline: its window starts 8 bytes before it.
    unsafe { *((tramp - 8) as *const [u8; 32]) }
}

/// A completed key: its window decodes, with the literal and branch an
/// update to `target` writes, and every site holds its word for `target`.
fn assert_clean(what: &str, tramp: usize, sites: &[usize], target: usize) {
    let w = window(tramp);
    let t = a64::decode(tramp, &w).unwrap_or_else(|e| panic!("{what}: window {w:x?}: {e}"));
    let want = a64::plan(tramp as u64, target as u64).unwrap();
    assert_eq!(t.patch(), want, "{what}");
    for &s in sites {
        // SAFETY: an inline site: an aligned instruction word of text.
        let word = unsafe { *(s as *const u32) };
        let plan = a64::site::plan(s as u64, tramp as u64, target as u64).unwrap();
        assert_eq!(word, plan, "{what}: site {s:#x}");
    }
}

/// The protocol's size for `from -> to`: (writes, syncs).
fn measure(
    set: &dyn Fn(To, &dyn static_call::arch::UpdateWriter) -> Result<(), UpdateError>,
    from: To,
    to: To,
) -> (usize, usize) {
    set(from, &Remap).unwrap();
    let probe = BreaksAt::never();
    set(to, &probe).unwrap();
    set(from, &Remap).unwrap();
    probe.counts()
}

/// A trampoline-only key: every transition between near, far and NULL,
/// broken at every write and every sync, then completed.
#[test]
fn a_key_left_by_restore_failed_is_completed_by_the_next_update() {
    let _serial = serial();
    let tramp = TRAMP_ONLY.trampoline_addr();
    let mut restore_failed = 0;
    for (from, to) in transitions() {
        let (writes, syncs) = measure(&set_rust, from, to);
        for (how, broken) in BreaksAt::every(writes, syncs) {
            let what = format!("{from:?}->{to:?}, {how}");
            set_rust(from, &Remap).unwrap();
            let err = set_rust(to, &broken).unwrap_err();
            if matches!(err.error, Error::RestoreFailed { .. }) {
                restore_failed += 1;
            }
            let q = assert_left_rust(&what, &err, from, to, window(tramp));
            assert_clean_failure_rust(&what, q, to, |w| set_rust(to, w), || window(tramp));
            // A working writer completes the key.
            set_rust(to, &Remap).unwrap_or_else(|e| panic!("{what}: repair: {e}"));
            assert_completed_rust(&what, to);
            assert_clean(&what, tramp, &[], rust_fn(to).map_or(0, |f| f as usize));
        }
    }
    set_rust(To::A, &Remap).unwrap();
    assert!(restore_failed > 0, "no update was left unfinished");
    println!("trampoline-only key: {restore_failed} updates left RestoreFailed, all completed");
}

/// A key with inline sites: the trampoline and its sites in one protocol
/// (int3) or the trampoline then every site (one store each), broken
/// anywhere, then completed.
#[test]
fn a_key_with_inline_sites_left_by_restore_failed_is_completed() {
    let _serial = serial();
    let tramp = WITH_SITES.trampoline_addr();
    let sites = sites_of(&WITH_SITES);
    assert!(sites.len() >= 2, "sites: {sites:x?}");
    let mut restore_failed = 0;
    for (from, to) in transitions() {
        let (writes, syncs) = measure(&set_c, from, to);
        for (how, broken) in BreaksAt::every(writes, syncs) {
            let what = format!("{from:?}->{to:?}, {how}");
            set_c(from, &Remap).unwrap();
            let err = set_c(to, &broken).unwrap_err();
            // A RestoreFailed names this key's trampoline or a site.
            if assert_left_c(&what, &err, from, to, tramp - 8..tramp + 24, &sites) {
                restore_failed += 1;
            }
            set_c(to, &Remap).unwrap_or_else(|e| panic!("{what}: repair: {e}"));
            assert_completed_c(&what, to);
            assert_clean(&what, tramp, &sites, c_fn(to).map_or(0, |f| f as usize));
        }
    }
    set_c(To::A, &Remap).unwrap();
    assert!(restore_failed > 0, "no update was left unfinished");
    println!("key with inline sites: {restore_failed} updates left RestoreFailed, all completed");
}
