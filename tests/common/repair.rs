//! What the `RestoreFailed` repair tests of both backends share: a writer
//! that breaks at a chosen step, and two keys (a trampoline-only Rust-ABI
//! key, an `extern "C"` key with inline sites) with near, far and NULL
//! targets. Included by each with `#[path = ...] mod`, next to `mod common`
//! (not part of `common` itself, whose other users must not get these keys
//! and their inline sites).

use static_call::arch::UpdateWriter;
use static_call::writer::{TextWriter, linux::Remap};
use static_call::{Error, StaticCall, UpdateError};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// What a call that reached no function leaves in its output cell.
pub const UNTOUCHED: u64 = u64::MAX;

/// Tests here update shared keys: one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A writer that forwards to `Remap` until a chosen write or sync, from
/// which on every write (or every sync) fails: an update that fails there
/// cannot undo itself either.
pub struct BreaksAt {
    writes: AtomicUsize,
    syncs: AtomicUsize,
    writes_fail_from: usize,
    syncs_fail_from: usize,
}

impl BreaksAt {
    pub fn never() -> Self {
        Self::at(usize::MAX, usize::MAX)
    }
    pub fn at(writes_fail_from: usize, syncs_fail_from: usize) -> Self {
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
    pub fn every(writes: usize, syncs: usize) -> Vec<(String, BreaksAt)> {
        let w = (0..writes).map(|k| (format!("writes fail from {k}"), Self::at(k, usize::MAX)));
        let s = (0..syncs).map(|k| (format!("syncs fail from {k}"), Self::at(usize::MAX, k)));
        w.chain(s).collect()
    }
    pub fn counts(&self) -> (usize, usize) {
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

// ---------------------------------------------------------------------
// Targets: two near functions, one far (code mapped beyond the reach of a
// direct branch), NULL.

pub const NEAR_A: u64 = 1000;
pub const NEAR_B: u64 = 2000;
pub const FAR: u64 = 3000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum To {
    A,
    B,
    Far,
    Null,
}
pub const TARGETS: [To; 4] = [To::A, To::B, To::Far, To::Null];

/// Every update from one target to another: (from, to).
pub fn transitions() -> impl Iterator<Item = (To, To)> {
    TARGETS
        .into_iter()
        .flat_map(|from| TARGETS.into_iter().map(move |to| (from, to)))
        .filter(|(from, to)| from != to)
}

/// What a call `f(&mut cell, v)` leaves in `cell` when it reaches `t`.
pub fn effect_of(t: To, v: u64) -> u64 {
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
pub unsafe fn put(out: *mut u64, v: u64) {
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

pub type RustKey = StaticCall<fn(*mut u64, u64)>;
pub type CKey = StaticCall<extern "C" fn(*mut u64, u64)>;

static_call::static_call! {
    /// A Rust-ABI key: calls go through its trampoline only.
    pub static TRAMP_ONLY: fn(*mut u64, u64) = rust_a;
    /// An `extern "C"` key: its calls are inline sites.
    pub static WITH_SITES: extern "C" fn(*mut u64, u64) = c_a;
}

/// `*out = v + FAR`, for each ABI, mapped once far from the text.
struct Far {
    rust: fn(*mut u64, u64),
    c: extern "C" fn(*mut u64, u64),
}

/// x86-64: thunks (`movabs $f, %r11; jmp *%r11`) beyond rel32 reach, to
/// functions in the text.
#[cfg(target_arch = "x86_64")]
fn far() -> &'static Far {
    fn rust_far(out: *mut u64, v: u64) {
        // SAFETY: callers pass a live local.
        unsafe { put(out, v + FAR) }
    }
    extern "C" fn c_far(out: *mut u64, v: u64) {
        // SAFETY: as above.
        unsafe { put(out, v + FAR) }
    }
    static FAR_CODE: OnceLock<Far> = OnceLock::new();
    FAR_CODE.get_or_init(|| {
        let thunks: Vec<Vec<u8>> = [
            rust_far as fn(*mut u64, u64) as usize,
            c_far as extern "C" fn(*mut u64, u64) as usize,
        ]
        .iter()
        .map(|&t| static_call::arch::x86_64::insn::encode_movabs_r11_jmp(t as u64).to_vec())
        .collect();
        let at = crate::common::map_far_code(TRAMP_ONLY.trampoline_addr(), &thunks);
        // SAFETY: each thunk forwards to a function of this signature.
        unsafe {
            Far {
                rust: std::mem::transmute::<usize, fn(*mut u64, u64)>(at[0]),
                c: std::mem::transmute::<usize, extern "C" fn(*mut u64, u64)>(at[1]),
            }
        }
    })
}

/// arm64: one hand-assembled function beyond the reach of `b` and `bl`,
/// which serves both ABIs (x0, x1 are the arguments of each).
#[cfg(target_arch = "aarch64")]
fn far() -> &'static Far {
    use static_call::arch::aarch64::insn;
    static FAR_CODE: OnceLock<Far> = OnceLock::new();
    FAR_CODE.get_or_init(|| {
        let words = [
            insn::BTI_C,
            insn::encode_movz_x(2, FAR as u16, 0),
            insn::encode_add_x(2, 2, 1),
            insn::encode_str_x(2, 0),
            insn::RET,
        ];
        let code: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let at = crate::common::map_far_code(TRAMP_ONLY.trampoline_addr(), &[code])[0];
        // SAFETY: the words implement `*out = v + FAR` for both ABIs.
        unsafe {
            Far {
                rust: std::mem::transmute::<usize, fn(*mut u64, u64)>(at),
                c: std::mem::transmute::<usize, extern "C" fn(*mut u64, u64)>(at),
            }
        }
    })
}

pub fn rust_fn(t: To) -> Option<fn(*mut u64, u64)> {
    match t {
        To::A => Some(rust_a),
        To::B => Some(rust_b),
        To::Far => Some(far().rust),
        To::Null => None,
    }
}

pub fn c_fn(t: To) -> Option<extern "C" fn(*mut u64, u64)> {
    match t {
        To::A => Some(c_a),
        To::B => Some(c_b),
        To::Far => Some(far().c),
        To::Null => None,
    }
}

pub fn set_rust(t: To, w: &dyn UpdateWriter) -> Result<(), UpdateError> {
    match rust_fn(t) {
        Some(f) => TRAMP_ONLY.update_with(f, w),
        None => TRAMP_ONLY.update_null_with(w),
    }
}

pub fn set_c(t: To, w: &dyn UpdateWriter) -> Result<(), UpdateError> {
    match c_fn(t) {
        Some(f) => WITH_SITES.update_with(f, w),
        None => WITH_SITES.update_null_with(w),
    }
}

/// Which target `query()` names.
pub fn queried_rust(key: &RustKey) -> To {
    let q = key.query().map(|f| f as usize);
    *TARGETS
        .iter()
        .find(|&&t| rust_fn(t).map(|f| f as usize) == q)
        .unwrap_or_else(|| panic!("query() named {q:x?}, no target of the test"))
}

pub fn queried_c(key: &CKey) -> To {
    let q = key.query().map(|f| f as usize);
    *TARGETS
        .iter()
        .find(|&&t| c_fn(t).map(|f| f as usize) == q)
        .unwrap_or_else(|| panic!("query() named {q:x?}, no target of the test"))
}

pub fn through_trampoline_rust(v: u64) -> u64 {
    let mut cell = UNTOUCHED;
    TRAMP_ONLY.trampoline()(&mut cell, v);
    cell
}

pub fn through_trampoline_c(v: u64) -> u64 {
    let mut cell = UNTOUCHED;
    WITH_SITES.trampoline()(&mut cell, v);
    cell
}

/// Two inline sites of `WITH_SITES`.
#[inline(never)]
pub fn at_sites_c(v: u64) -> [u64; 2] {
    let (mut a, mut b) = (UNTOUCHED, UNTOUCHED);
    WITH_SITES.call_inline(&mut a, v);
    WITH_SITES.call_inline(&mut b, v);
    [a, b]
}

pub fn sites_of(key: &CKey) -> Vec<usize> {
    let mut sites = Vec::new();
    key.each_inline_site(|s| sites.push(s));
    sites
}

// ---------------------------------------------------------------------
// Checks after an update that failed, and after the one that repairs it.

/// Whatever a failed update `from -> to` of `TRAMP_ONLY` left, `query()`
/// names one of the two and a call of the trampoline goes where it says;
/// `bytes` (the trampoline's) are shown if not. Returns what `query()`
/// names.
pub fn assert_left_rust(
    what: &str,
    err: &UpdateError,
    from: To,
    to: To,
    bytes: impl std::fmt::Debug,
) -> To {
    let q = queried_rust(&TRAMP_ONLY);
    assert!(q == from || q == to, "{what}: query() {q:?}");
    assert_eq!(
        through_trampoline_rust(5),
        effect_of(q, 5),
        "{what} ({err}): a call disagrees with query() {q:?}, bytes {bytes:x?}"
    );
    q
}

/// An update of `TRAMP_ONLY` to `to` (run by `set` with the writer it is
/// given) whose writer fails at once leaves the trampoline as `snapshot`
/// shows it now, with `query()` still naming `q` (or succeeds without
/// writing: what was left already is the new target's bytes).
pub fn assert_clean_failure_rust<S: PartialEq + std::fmt::Debug>(
    what: &str,
    q: To,
    to: To,
    set: impl Fn(&BreaksAt) -> Result<(), UpdateError>,
    snapshot: impl Fn() -> S,
) {
    let left = snapshot();
    let clean = BreaksAt::at(0, usize::MAX);
    match set(&clean) {
        Ok(()) => {
            assert_eq!(clean.counts().0, 0, "{what}: wrote");
            assert_eq!(q, to, "{what}: completed without writing");
        }
        Err(e) => {
            assert!(matches!(e.error, Error::WriterFailed { .. }), "{what}: {e}");
            assert_eq!(queried_rust(&TRAMP_ONLY), q, "{what}");
        }
    }
    assert_eq!(snapshot(), left, "{what}: a clean failure wrote");
}

/// Whatever a failed update `from -> to` of `WITH_SITES` left: a
/// `RestoreFailed` names an address of this key (in `tramp_bytes`, or one
/// of `sites`), `query()` names `from` or `to` and the trampoline goes
/// there, and each site calls `from` or `to`. Returns whether the update
/// was left `RestoreFailed`.
pub fn assert_left_c(
    what: &str,
    err: &UpdateError,
    from: To,
    to: To,
    tramp_bytes: std::ops::Range<usize>,
    sites: &[usize],
) -> bool {
    let restore_failed = if let Error::RestoreFailed { addr, .. } = err.error {
        assert!(
            tramp_bytes.contains(&addr) || sites.contains(&addr),
            "{what}: RestoreFailed names {addr:#x}"
        );
        true
    } else {
        false
    };
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
    restore_failed
}

/// After an update of `TRAMP_ONLY` to `to` that worked: `query()` names it
/// and a call of the trampoline reaches it.
pub fn assert_completed_rust(what: &str, to: To) {
    assert_eq!(queried_rust(&TRAMP_ONLY), to, "{what}");
    assert_eq!(through_trampoline_rust(7), effect_of(to, 7), "{what}");
}

/// After an update of `WITH_SITES` to `to` that worked: `query()` names it
/// and calls of the trampoline and of every site reach it.
pub fn assert_completed_c(what: &str, to: To) {
    assert_eq!(queried_c(&WITH_SITES), to, "{what}");
    assert_eq!(through_trampoline_c(7), effect_of(to, 7), "{what}");
    assert_eq!(at_sites_c(7), [effect_of(to, 7); 2], "{what}");
}
