//! Keys left behind by `RestoreFailed` on x86-64: a writer whose writes or
//! syncs stop working at some step of an update (so the undo fails too),
//! then an update with a writer that works. Whatever state the failure
//! left (an `int3` at the trampoline or at sites, a half-written tail, a
//! literal ahead of its entry, near, far and NULL forms), `query()` agrees
//! with where a call of the trampoline goes, and the working update
//! completes the key: every call reaches the new target and `query()` says
//! so. For both strategies, single updates, keys with inline sites, and
//! `static_call_ops!` installs.
#![cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "force-generic")
))]

mod common;
#[path = "common/repair.rs"]
mod repair;
use repair::*;
use static_call::arch::x86_64::{self as x86, Image, Strategy, insn::INT3, site};
use static_call::writer::linux::Remap;
use static_call::{Error, UpdateError};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

const STRATEGIES: [Strategy; 2] = [Strategy::Breakpoint, Strategy::AtomicStore];

fn image(tramp: usize) -> Image {
    // SAFETY: a live trampoline: 16 readable, aligned bytes.
    let (entry, literal) = unsafe {
        (
            (*(tramp as *const AtomicU64)).load(Ordering::Acquire),
            (*((tramp + 8) as *const AtomicU64)).load(Ordering::Acquire),
        )
    };
    Image::from_words(entry, literal)
}

fn site_word(at: usize) -> [u8; 8] {
    // SAFETY: an inline site: 8 readable, aligned bytes of text.
    unsafe { (*(at as *const AtomicU64)).load(Ordering::Acquire) }.to_le_bytes()
}

/// What every later check of a completed key asks: its trampoline decodes
/// as one of the three forms, for `target`, with no `int3` left, and
/// every site holds what an update to `target` puts there.
fn assert_clean(what: &str, tramp: usize, sites: &[usize], target: usize) {
    let stub = x86::null_stub_addr();
    let img = image(tramp);
    let t = x86::decode(tramp as u64, &img, stub)
        .unwrap_or_else(|e| panic!("{what}: trampoline left {img:x?}: {e}"));
    assert_eq!(t.target(), target as u64, "{what}: trampoline target");
    assert_eq!(img, x86::plan(tramp as u64, target as u64, stub), "{what}");
    for &s in sites {
        let w = site_word(s);
        assert_ne!(w[0], INT3, "{what}: int3 left at site {s:#x}");
        let want = site::plan(s as u64, tramp as u64, target as u64).unwrap();
        assert_eq!(w, want, "{what}: site {s:#x}");
    }
}

/// The protocol's size for `from -> to` with `strategy`: (writes, syncs).
fn measure(
    set: &dyn Fn(To, &dyn static_call::arch::UpdateWriter) -> Result<(), UpdateError>,
    from: To,
    to: To,
    strategy: Strategy,
) -> (usize, usize) {
    set(from, &strategy.with(&Remap)).unwrap();
    let probe = BreaksAt::never();
    set(to, &strategy.with(&probe)).unwrap();
    set(from, &strategy.with(&Remap)).unwrap();
    probe.counts()
}

/// A trampoline-only key: every transition between near, far and NULL,
/// broken at every write and every sync, then completed.
#[test]
fn a_key_left_by_restore_failed_is_completed_by_the_next_update() {
    let _serial = serial();
    let tramp = TRAMP_ONLY.trampoline_addr();
    let mut restore_failed = 0;
    for strategy in STRATEGIES {
        for (from, to) in transitions() {
            let (writes, syncs) = measure(&set_rust, from, to, strategy);
            for (how, broken) in BreaksAt::every(writes, syncs) {
                let what = format!("{strategy:?} {from:?}->{to:?}, {how}");
                set_rust(from, &strategy.with(&Remap)).unwrap();
                let err = set_rust(to, &strategy.with(&broken)).unwrap_err();
                if matches!(err.error, Error::RestoreFailed { .. }) {
                    restore_failed += 1;
                }
                let q = assert_left_rust(&what, &err, from, to, image(tramp));
                assert_clean_failure_rust(
                    &what,
                    q,
                    to,
                    |w| set_rust(to, &strategy.with(w)),
                    || image(tramp),
                );
                // A working writer completes the key, with the
                // strategy given and with the other one.
                for s in STRATEGIES {
                    set_rust(to, &s.with(&Remap))
                        .unwrap_or_else(|e| panic!("{what}: repair with {s:?}: {e}"));
                    assert_completed_rust(&what, to);
                    assert_clean(&what, tramp, &[], rust_fn(to).map_or(0, |f| f as usize));
                }
            }
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
    for strategy in STRATEGIES {
        for (from, to) in transitions() {
            let (writes, syncs) = measure(&set_c, from, to, strategy);
            for (how, broken) in BreaksAt::every(writes, syncs) {
                let what = format!("{strategy:?} {from:?}->{to:?}, {how}");
                set_c(from, &strategy.with(&Remap)).unwrap();
                let err = set_c(to, &strategy.with(&broken)).unwrap_err();
                // A RestoreFailed names this key's trampoline or a site.
                if assert_left_c(&what, &err, from, to, tramp..tramp + 16, &sites) {
                    restore_failed += 1;
                }
                for s in STRATEGIES {
                    set_c(to, &s.with(&Remap))
                        .unwrap_or_else(|e| panic!("{what}: repair with {s:?}: {e}"));
                    assert_completed_c(&what, to);
                    assert_clean(&what, tramp, &sites, c_fn(to).map_or(0, |f| f as usize));
                }
            }
        }
    }
    set_c(To::A, &Remap).unwrap();
    assert!(restore_failed > 0, "no update was left unfinished");
    println!("key with inline sites: {restore_failed} updates left RestoreFailed, all completed");
}

// ---------------------------------------------------------------------
// Batches: `static_call_ops!` installs (with int3: one batched protocol
// over every key and site).

static_call::static_call_ops! {
    /// A device's operations.
    pub trait Dev in dev {
        /// Reads a register.
        static DEV_READ: fn read(reg: u32) -> u64;
        /// Writes the value it was given, plus the device's id.
        static DEV_WRITE: fn write(out: *mut u64, v: u64);
        /// Optional: resets the device.
        static DEV_RESET: optional fn reset(out: *mut u64) = NULL;
    }
    default = DevA;
}

struct DevA;
impl Dev for DevA {
    fn read(reg: u32) -> u64 {
        u64::from(reg) + NEAR_A
    }
    fn write(out: *mut u64, v: u64) {
        // SAFETY: callers pass a live local.
        unsafe { put(out, v + NEAR_A) }
    }
}

struct DevB;
impl Dev for DevB {
    fn read(reg: u32) -> u64 {
        u64::from(reg) + NEAR_B
    }
    fn write(out: *mut u64, v: u64) {
        // SAFETY: as above.
        unsafe { put(out, v + NEAR_B) }
    }
    const DEV_RESET: Option<fn(*mut u64)> = Some(Self::reset);
}
impl DevB {
    fn reset(out: *mut u64) {
        // SAFETY: as above.
        unsafe { put(out, 42) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    A,
    B,
}

fn install(i: Impl, w: &dyn static_call::arch::UpdateWriter) -> Result<(), UpdateError> {
    match i {
        Impl::A => dev::install_with::<DevA>(w),
        Impl::B => dev::install_with::<DevB>(w),
    }
}

/// What each operation returns under `i`, at its inline sites: (read,
/// write, reset).
fn expected(i: Impl) -> (u64, u64, u64) {
    match i {
        Impl::A => (3 + NEAR_A, 4 + NEAR_A, UNTOUCHED),
        Impl::B => (3 + NEAR_B, 4 + NEAR_B, 42),
    }
}

#[inline(never)]
fn at_sites_dev() -> (u64, u64, u64) {
    let (mut w, mut r) = (UNTOUCHED, UNTOUCHED);
    dev::write(&mut w, 4);
    dev::reset(&mut r);
    (dev::read(3), w, r)
}

/// Each operation through its trampoline, and which implementation its
/// `query()` names.
fn through_trampolines_dev() -> [(u64, Impl); 3] {
    let (mut w, mut r) = (UNTOUCHED, UNTOUCHED);
    let read = dev::DEV_READ.trampoline()(3);
    dev::DEV_WRITE.trampoline()(&mut w, 4);
    dev::DEV_RESET.trampoline()(&mut r);
    let which = |q: Option<usize>, a: Option<usize>, b: Option<usize>| {
        if q == a {
            Impl::A
        } else if q == b {
            Impl::B
        } else {
            panic!("query() named {q:x?}")
        }
    };
    let read_q = which(
        dev::DEV_READ.query().map(|f| f as usize),
        dev_fn_read(Impl::A),
        dev_fn_read(Impl::B),
    );
    let write_q = which(
        dev::DEV_WRITE.query().map(|f| f as usize),
        dev_fn_write(Impl::A),
        dev_fn_write(Impl::B),
    );
    let reset_q = which(
        dev::DEV_RESET.query().map(|f| f as usize),
        None,
        dev_fn_reset(Impl::B),
    );
    [(read, read_q), (w, write_q), (r, reset_q)]
}

/// The functions `install` points the keys at, as `query()` names them:
/// installed once each and read back.
fn dev_targets() -> &'static [[Option<usize>; 3]; 2] {
    static TARGETS: OnceLock<[[Option<usize>; 3]; 2]> = OnceLock::new();
    TARGETS.get_or_init(|| {
        let read = |i| {
            install(i, &Remap).unwrap();
            [
                dev::DEV_READ.query().map(|f| f as usize),
                dev::DEV_WRITE.query().map(|f| f as usize),
                dev::DEV_RESET.query().map(|f| f as usize),
            ]
        };
        [read(Impl::A), read(Impl::B)]
    })
}
fn dev_fn_read(i: Impl) -> Option<usize> {
    dev_targets()[i as usize][0]
}
fn dev_fn_write(i: Impl) -> Option<usize> {
    dev_targets()[i as usize][1]
}
fn dev_fn_reset(i: Impl) -> Option<usize> {
    dev_targets()[i as usize][2]
}

/// Calls its argument with each inline site of one key.
type EachSite<'a> = &'a dyn Fn(&mut dyn FnMut(usize));

/// Each operation's trampoline and inline sites.
fn dev_keys() -> [(usize, Vec<usize>); 3] {
    let sites = |f: EachSite| {
        let mut v = Vec::new();
        f(&mut |s| v.push(s));
        v
    };
    [
        (
            dev::DEV_READ.trampoline_addr(),
            sites(&|f| dev::DEV_READ.each_inline_site(f)),
        ),
        (
            dev::DEV_WRITE.trampoline_addr(),
            sites(&|f| dev::DEV_WRITE.each_inline_site(f)),
        ),
        (
            dev::DEV_RESET.trampoline_addr(),
            sites(&|f| dev::DEV_RESET.each_inline_site(f)),
        ),
    ]
}

#[test]
fn an_install_left_by_restore_failed_is_completed_by_the_next_install() {
    let _serial = serial();
    let _ = dev_targets();
    let keys = dev_keys();
    assert!(keys.iter().all(|(_, s)| !s.is_empty()), "{keys:x?}");
    let mut restore_failed = 0;
    for strategy in STRATEGIES {
        for (from, to) in [(Impl::A, Impl::B), (Impl::B, Impl::A)] {
            install(from, &strategy.with(&Remap)).unwrap();
            let probe = BreaksAt::never();
            install(to, &strategy.with(&probe)).unwrap();
            let (writes, syncs) = probe.counts();
            for (how, broken) in BreaksAt::every(writes, syncs) {
                let what = format!("{strategy:?} {from:?}->{to:?}, {how}");
                install(from, &strategy.with(&Remap)).unwrap();
                let err = install(to, &strategy.with(&broken)).unwrap_err();
                if let Error::RestoreFailed { addr, .. } = err.error {
                    restore_failed += 1;
                    assert!(
                        keys.iter()
                            .any(|(t, s)| (*t..*t + 16).contains(&addr) || s.contains(&addr)),
                        "{what}: RestoreFailed names {addr:#x}"
                    );
                }
                // Each operation's trampoline agrees with its query().
                let (er, ew) = (expected(from), expected(to));
                for (k, (got, q)) in through_trampolines_dev().into_iter().enumerate() {
                    let e = expected(q);
                    let want = [e.0, e.1, e.2][k];
                    assert_eq!(got, want, "{what} ({err}): operation {k} vs query() {q:?}");
                }
                let (r, w, x) = at_sites_dev();
                assert!(r == er.0 || r == ew.0, "{what}: read {r}");
                assert!(w == er.1 || w == ew.1, "{what}: write {w}");
                assert!(x == er.2 || x == ew.2, "{what}: reset {x}");
                for s in STRATEGIES {
                    install(to, &s.with(&Remap))
                        .unwrap_or_else(|e| panic!("{what}: repair with {s:?}: {e}"));
                    assert_eq!(at_sites_dev(), expected(to), "{what}");
                    for (got, q) in through_trampolines_dev() {
                        assert_eq!(q, to, "{what}: query() after repair ({got})");
                    }
                    let targets = &dev_targets()[to as usize];
                    for ((tramp, sites), t) in keys.iter().zip(targets) {
                        assert_clean(&what, *tramp, sites, t.unwrap_or(0));
                    }
                }
            }
        }
    }
    install(Impl::A, &Remap).unwrap();
    assert!(restore_failed > 0, "no install was left unfinished");
    println!(
        "static_call_ops! install: {restore_failed} installs left RestoreFailed, all completed"
    );
}
