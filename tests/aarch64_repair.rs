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

use static_call::arch::aarch64::{self as a64, insn};
use static_call::writer::{TextWriter, linux::Remap};
use static_call::{Error, StaticCall, UpdateError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

const UNTOUCHED: u64 = u64::MAX;
/// Tests here update shared keys: one at a time.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A writer that forwards to `Remap` until a chosen write or sync, from
/// which on every write (or every sync) fails: an update that fails there
/// cannot undo itself either.
struct BreaksAt {
    writes: AtomicUsize,
    syncs: AtomicUsize,
    writes_fail_from: usize,
    syncs_fail_from: usize,
}

impl BreaksAt {
    fn never() -> Self {
        Self::at(usize::MAX, usize::MAX)
    }
    fn at(writes_fail_from: usize, syncs_fail_from: usize) -> Self {
        BreaksAt {
            writes: AtomicUsize::new(0),
            syncs: AtomicUsize::new(0),
            writes_fail_from,
            syncs_fail_from,
        }
    }
    /// Every way of breaking an update that made `writes` writes and
    /// `syncs` syncs: writes failing from each write on, syncs from each
    /// sync on.
    fn every(writes: usize, syncs: usize) -> Vec<(String, BreaksAt)> {
        let w = (0..writes).map(|k| (format!("writes fail from {k}"), Self::at(k, usize::MAX)));
        let s = (0..syncs).map(|k| (format!("syncs fail from {k}"), Self::at(usize::MAX, k)));
        w.chain(s).collect()
    }
    fn counts(&self) -> (usize, usize) {
        (
            self.writes.load(Ordering::SeqCst),
            self.syncs.load(Ordering::SeqCst),
        )
    }
}

// SAFETY: forwards to Remap; a failing write stores nothing.
unsafe impl TextWriter for BreaksAt {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        if self.writes.fetch_add(1, Ordering::SeqCst) >= self.writes_fail_from {
            return Err(Error::WriterFailed {
                what: "write (broken by the test from here on)",
                errno: 0,
            });
        }
        // SAFETY: the caller's contract is Remap's.
        unsafe { Remap.write(addr, bytes) }
    }
    fn sync_cores(&self) -> Result<(), Error> {
        if self.syncs.fetch_add(1, Ordering::SeqCst) >= self.syncs_fail_from {
            return Err(Error::WriterFailed {
                what: "sync (broken by the test from here on)",
                errno: 0,
            });
        }
        Remap.sync_cores()
    }
}

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

// ---------------------------------------------------------------------
// Targets: two near functions, one far (a thunk mapped beyond rel32
// reach), NULL.

const NEAR_A: u64 = 1000;
const NEAR_B: u64 = 2000;
const FAR: u64 = 3000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum To {
    A,
    B,
    Far,
    Null,
}
const TARGETS: [To; 4] = [To::A, To::B, To::Far, To::Null];

fn effect_of(t: To, v: u64) -> u64 {
    match t {
        To::A => v + NEAR_A,
        To::B => v + NEAR_B,
        To::Far => v + FAR,
        To::Null => UNTOUCHED,
    }
}

/// # Safety
///
/// `out` must be valid for writes.
unsafe fn put(out: *mut u64, v: u64) {
    // SAFETY: per the contract.
    unsafe { out.write_volatile(v) }
}
fn rust_a(out: *mut u64, v: u64) {
    // SAFETY: callers pass a live local.
    unsafe { put(out, v + NEAR_A) }
}
fn rust_b(out: *mut u64, v: u64) {
    // SAFETY: as above.
    unsafe { put(out, v + NEAR_B) }
}
extern "C" fn c_a(out: *mut u64, v: u64) {
    // SAFETY: as above.
    unsafe { put(out, v + NEAR_A) }
}
extern "C" fn c_b(out: *mut u64, v: u64) {
    // SAFETY: as above.
    unsafe { put(out, v + NEAR_B) }
}

type RustKey = StaticCall<fn(*mut u64, u64)>;
type CKey = StaticCall<extern "C" fn(*mut u64, u64)>;

static_call::static_call! {
    /// A Rust-ABI key: calls go through its trampoline only.
    static TRAMP_ONLY: fn(*mut u64, u64) = rust_a;
    /// An `extern "C"` key: its calls are inline sites.
    static WITH_SITES: extern "C" fn(*mut u64, u64) = c_a;
}

/// Hand-assembled functions mapped more than 128 MiB from the text, so no
/// `b` or `bl` reaches them: `*out = v + FAR`, for each ABI.
struct Far {
    rust: fn(*mut u64, u64),
    c: extern "C" fn(*mut u64, u64),
}

fn far() -> &'static Far {
    static FAR_CODE: OnceLock<Far> = OnceLock::new();
    FAR_CODE.get_or_init(|| {
        let text = rust_a as fn(*mut u64, u64) as usize;
        let hint = (text + (4 << 30)) & !0xffff;
        // SAFETY: a fresh anonymous mapping where nothing is mapped.
        let page = unsafe {
            libc::mmap(
                hint as *mut _,
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        assert_ne!(page, libc::MAP_FAILED, "mapping far code");
        let page = page as usize;
        let words: [u32; 5] = [
            insn::BTI_C,
            insn::encode_movz_x(2, FAR as u16, 0),
            insn::encode_add_x(2, 2, 1),
            insn::encode_str_x(2, 0),
            insn::RET,
        ];
        // SAFETY: the page is ours and writable; then it becomes R+X.
        unsafe {
            core::ptr::copy_nonoverlapping(words.as_ptr(), page as *mut u32, words.len());
            a64::flush_icache_range(page, words.len() * 4);
            let rx = libc::PROT_READ | libc::PROT_EXEC;
            assert_eq!(libc::mprotect(page as *mut _, 4096, rx), 0);
        }
        // SAFETY: the words implement `*out = v + FAR` for both ABIs (x0,
        // x1 are the arguments of each).
        unsafe {
            Far {
                rust: core::mem::transmute::<usize, fn(*mut u64, u64)>(page),
                c: core::mem::transmute::<usize, extern "C" fn(*mut u64, u64)>(page),
            }
        }
    })
}

fn rust_fn(t: To) -> Option<fn(*mut u64, u64)> {
    match t {
        To::A => Some(rust_a),
        To::B => Some(rust_b),
        To::Far => Some(far().rust),
        To::Null => None,
    }
}

fn c_fn(t: To) -> Option<extern "C" fn(*mut u64, u64)> {
    match t {
        To::A => Some(c_a),
        To::B => Some(c_b),
        To::Far => Some(far().c),
        To::Null => None,
    }
}

fn set_rust(t: To, w: &dyn static_call::arch::UpdateWriter) -> Result<(), UpdateError> {
    match rust_fn(t) {
        Some(f) => TRAMP_ONLY.update_with(f, w),
        None => TRAMP_ONLY.update_null_with(w),
    }
}

fn set_c(t: To, w: &dyn static_call::arch::UpdateWriter) -> Result<(), UpdateError> {
    match c_fn(t) {
        Some(f) => WITH_SITES.update_with(f, w),
        None => WITH_SITES.update_null_with(w),
    }
}

/// Which target `query()` names.
fn queried_rust(key: &RustKey) -> To {
    let q = key.query().map(|f| f as usize);
    *TARGETS
        .iter()
        .find(|&&t| rust_fn(t).map(|f| f as usize) == q)
        .unwrap_or_else(|| panic!("query() named {q:x?}, no target of the test"))
}

fn queried_c(key: &CKey) -> To {
    let q = key.query().map(|f| f as usize);
    *TARGETS
        .iter()
        .find(|&&t| c_fn(t).map(|f| f as usize) == q)
        .unwrap_or_else(|| panic!("query() named {q:x?}, no target of the test"))
}

fn through_trampoline_rust(v: u64) -> u64 {
    let mut cell = UNTOUCHED;
    TRAMP_ONLY.trampoline()(&mut cell, v);
    cell
}

fn through_trampoline_c(v: u64) -> u64 {
    let mut cell = UNTOUCHED;
    WITH_SITES.trampoline()(&mut cell, v);
    cell
}

/// Two inline sites of `WITH_SITES`.
#[inline(never)]
fn at_sites_c(v: u64) -> [u64; 2] {
    let (mut a, mut b) = (UNTOUCHED, UNTOUCHED);
    WITH_SITES.call_inline(&mut a, v);
    WITH_SITES.call_inline(&mut b, v);
    [a, b]
}

/// The protocol's size for `from -> to` with `strategy`: (writes, syncs).
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
    {
        for from in TARGETS {
            for to in TARGETS {
                if from == to {
                    continue;
                }
                let (writes, syncs) = measure(&set_rust, from, to);
                for (how, broken) in BreaksAt::every(writes, syncs) {
                    let what = format!("{from:?}->{to:?}, {how}");
                    set_rust(from, &Remap).unwrap();
                    let err = set_rust(to, &broken).unwrap_err();
                    if matches!(err.error, Error::RestoreFailed { .. }) {
                        restore_failed += 1;
                    }
                    // Whatever is left, query() names where calls go.
                    let q = queried_rust(&TRAMP_ONLY);
                    assert!(q == from || q == to, "{what}: query() {q:?}");
                    assert_eq!(
                        through_trampoline_rust(5),
                        effect_of(q, 5),
                        "{what} ({err}): a call disagrees with query() {q:?}, bytes {:x?}",
                        window(tramp)
                    );
                    // An update whose writer fails at once leaves it as it
                    // was (or succeeds without writing: what was left
                    // already is the new target's bytes).
                    let left = window(tramp);
                    let clean = BreaksAt::at(0, usize::MAX);
                    match set_rust(to, &clean) {
                        Ok(()) => {
                            assert_eq!(clean.counts().0, 0, "{what}: wrote");
                            assert_eq!(q, to, "{what}: completed without writing");
                        }
                        Err(e) => {
                            assert!(matches!(e.error, Error::WriterFailed { .. }), "{what}: {e}");
                            assert_eq!(queried_rust(&TRAMP_ONLY), q, "{what}");
                        }
                    }
                    assert_eq!(window(tramp), left, "{what}: a clean failure wrote");
                    // A working writer completes the key, with the
                    // strategy given and with the other one.
                    set_rust(to, &Remap).unwrap_or_else(|e| panic!("{what}: repair: {e}"));
                    assert_eq!(queried_rust(&TRAMP_ONLY), to, "{what}");
                    assert_eq!(through_trampoline_rust(7), effect_of(to, 7), "{what}");
                    assert_clean(&what, tramp, &[], rust_fn(to).map_or(0, |f| f as usize));
                }
            }
        }
    }
    set_rust(To::A, &Remap).unwrap();
    assert!(restore_failed > 0, "no update was left unfinished");
    println!("trampoline-only key: {restore_failed} updates left RestoreFailed, all completed");
}

fn sites_of(key: &CKey) -> Vec<usize> {
    let mut sites = Vec::new();
    key.each_inline_site(|s| sites.push(s));
    sites
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
    {
        for from in TARGETS {
            for to in TARGETS {
                if from == to {
                    continue;
                }
                let (writes, syncs) = measure(&set_c, from, to);
                for (how, broken) in BreaksAt::every(writes, syncs) {
                    let what = format!("{from:?}->{to:?}, {how}");
                    set_c(from, &Remap).unwrap();
                    let err = set_c(to, &broken).unwrap_err();
                    if matches!(err.error, Error::RestoreFailed { .. }) {
                        restore_failed += 1;
                        // It names an address of this key: its trampoline
                        // or one of its sites.
                        let Error::RestoreFailed { addr, .. } = err.error else {
                            unreachable!()
                        };
                        assert!(
                            (tramp - 8..tramp + 24).contains(&addr) || sites.contains(&addr),
                            "{what}: RestoreFailed names {addr:#x}"
                        );
                    }
                    let q = queried_c(&WITH_SITES);
                    assert!(q == from || q == to, "{what}: query() {q:?}");
                    assert_eq!(
                        through_trampoline_c(5),
                        effect_of(q, 5),
                        "{what} ({err}): the trampoline disagrees with query() {q:?}"
                    );
                    for v in at_sites_c(5) {
                        assert!(
                            v == effect_of(from, 5) || v == effect_of(to, 5),
                            "{what}: a site returned {v}"
                        );
                    }
                    set_c(to, &Remap).unwrap_or_else(|e| panic!("{what}: repair: {e}"));
                    assert_eq!(queried_c(&WITH_SITES), to, "{what}");
                    assert_eq!(through_trampoline_c(7), effect_of(to, 7), "{what}");
                    assert_eq!(at_sites_c(7), [effect_of(to, 7); 2], "{what}");
                    assert_clean(&what, tramp, &sites, c_fn(to).map_or(0, |f| f as usize));
                }
            }
        }
    }
    set_c(To::A, &Remap).unwrap();
    assert!(restore_failed > 0, "no update was left unfinished");
    println!("key with inline sites: {restore_failed} updates left RestoreFailed, all completed");
}
