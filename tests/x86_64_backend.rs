//! The x86-64 backend on real trampolines, natively: shape, every
//! transition for both strategies, the seed-000 race, trap-handler
//! chaining, bad input, and every core calling during updates.
#![cfg(all(
    target_arch = "x86_64",
    target_os = "linux",
    not(feature = "force-generic")
))]

mod common;
use static_call::arch::x86_64::Strategy;
use static_call::arch::x86_64::{
    self as x86, __test_hooks as hooks, BreakpointFrame, Form, Image, NULL_ENTRY, Slot, X86_64,
    insn,
};
use static_call::arch::{Backend, UpdateWriter};
use static_call::writer::{TextWriter, linux::Remap};
use static_call::{Error, StaticCall};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

const NEAR: u64 = 1000;
const NEAR2: u64 = 1500;
const FAR: u64 = 2000;
const FAR2: u64 = 2500;
const UNTOUCHED: u64 = u64::MAX;
/// Every strategy; `Remap` (the writer these tests use) publishes whole
/// pages, so the page swap runs too.
const STRATEGIES: [Strategy; 3] = [
    Strategy::Breakpoint,
    Strategy::AtomicStore,
    Strategy::PageSwap,
];

/// The strategies that store in place, for the tests that count or fail
/// single stores through a recording writer (which publishes no pages;
/// the page swap's failures are tested in tests/inline_sites.rs and
/// tests/remap_failure.rs).
const IN_PLACE: [Strategy; 2] = [Strategy::Breakpoint, Strategy::AtomicStore];

fn near_value(x: u32) -> u64 {
    u64::from(x) + NEAR
}
fn far_value(x: u32) -> u64 {
    u64::from(x) + FAR
}

/// # Safety
///
/// `out` must be valid for writes.
unsafe fn effect(out: *mut u64, v: u64) {
    // SAFETY: per the contract, which every caller here keeps.
    unsafe { out.write_volatile(v) };
}
fn near_effect(out: *mut u64, v: u64) {
    // SAFETY: callers pass a pointer to a live local.
    unsafe { effect(out, v + NEAR) }
}
fn near2_effect(out: *mut u64, v: u64) {
    // SAFETY: as above.
    unsafe { effect(out, v + NEAR2) }
}
fn far_effect(out: *mut u64, v: u64) {
    // SAFETY: as above.
    unsafe { effect(out, v + FAR) }
}
fn far2_effect(out: *mut u64, v: u64) {
    // SAFETY: as above.
    unsafe { effect(out, v + FAR2) }
}

static_call::static_call! {
    static VALUE: fn(u32) -> u64 = near_value;
    static EFFECT: fn(*mut u64, u64) = near_effect;
    static STRESS: fn(*mut u64, u64) = near_effect;
    static PARK: fn(u32) -> u64 = park_a;
    static OTHER: fn(u32) -> u64 = park_a;
    static BAD: fn(u32) -> u64 = near_value;
    static NULL_KEY: fn(*mut u64, u64) = NULL;
    static RET0_KEY: fn(u32) -> u64 = RET0;
    static CHAIN: fn(u32) -> u64 = near_value;
    static BLOCKED: fn(u32) -> u64 = near_value;
    static C_VALUE: extern "C" fn(u32) -> u64 = c_near_value;
    static FIRST: fn(u32) -> u64 = near_value;
}

extern "C" fn c_near_value(x: u32) -> u64 {
    near_value(x)
}

type EffectKey = StaticCall<fn(*mut u64, u64)>;

/// Tests that update a shared key, or watch one (the race, the stress),
/// run one at a time, so each sees only its own updates and its timing and
/// counts mean something.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Hand-encoded thunks mapped more than 2 GiB from all text, so no
/// `jmp rel32` in a trampoline can reach them: each is `movabs $f, %r11;
/// jmp *%r11` to a Rust function (r11 carries no argument in any calling
/// convention, so the thunk forwards the call untouched).
struct FarCode {
    effect: fn(*mut u64, u64),
    effect2: fn(*mut u64, u64),
    value: fn(u32) -> u64,
}

fn far_code() -> &'static FarCode {
    static FAR_CODE: OnceLock<FarCode> = OnceLock::new();
    FAR_CODE.get_or_init(|| {
        let targets = [
            far_effect as fn(*mut u64, u64) as usize,
            far2_effect as fn(*mut u64, u64) as usize,
            far_value as fn(u32) -> u64 as usize,
        ];
        let thunks: Vec<Vec<u8>> = targets
            .iter()
            .map(|&t| insn::encode_movabs_r11_jmp(t as u64).to_vec())
            .collect();
        let at = common::map_far_code(EFFECT.trampoline_addr(), &thunks);
        let page = at[0];
        for key in [&*EFFECT, &*STRESS] {
            let d = page.abs_diff(key.trampoline_addr());
            assert!(d > 4 << 30, "far code only {d:#x} from a trampoline");
        }
        // SAFETY: each thunk forwards to a function of this signature.
        unsafe {
            FarCode {
                effect: std::mem::transmute::<usize, fn(*mut u64, u64)>(page),
                effect2: std::mem::transmute::<usize, fn(*mut u64, u64)>(page + 32),
                value: std::mem::transmute::<usize, fn(u32) -> u64>(page + 64),
            }
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum State {
    Near,
    Near2,
    Far,
    Far2,
    Null,
    Ret0,
}
use State::*;
const STATES: [State; 6] = [Near, Near2, Far, Far2, Null, Ret0];

/// A walk through `STATES` that takes every ordered pair of distinct states
/// exactly once (an Eulerian circuit of the complete digraph; 31 states,
/// starting and ending at `Near`).
fn tour() -> Vec<State> {
    let n = STATES.len();
    let mut out: Vec<Vec<usize>> = (0..n)
        .map(|a| (0..n).filter(|&b| b != a).rev().collect())
        .collect();
    let (mut stack, mut walk) = (vec![0], vec![]);
    while let Some(&v) = stack.last() {
        match out[v].pop() {
            Some(w) => stack.push(w),
            None => walk.push(stack.pop().unwrap()),
        }
    }
    walk.reverse();
    walk.into_iter().map(|i| STATES[i]).collect()
}

fn set_effect(
    key: &EffectKey,
    s: State,
    strategy: Strategy,
) -> Result<(), static_call::UpdateError> {
    update_to(key, s, &strategy.with(&Remap))
}

/// Updates `key` to state `s` through `w`.
fn update_to(
    key: &EffectKey,
    s: State,
    w: &dyn UpdateWriter,
) -> Result<(), static_call::UpdateError> {
    match s {
        Near => key.update_with(near_effect, w),
        Near2 => key.update_with(near2_effect, w),
        Far => key.update_with(far_code().effect, w),
        Far2 => key.update_with(far_code().effect2, w),
        Null => key.update_null_with(w),
        Ret0 => key.update_ret0_with(w),
    }
}

fn effect_of(s: State, v: u64) -> u64 {
    match s {
        Near => v + NEAR,
        Near2 => v + NEAR2,
        Far => v + FAR,
        Far2 => v + FAR2,
        Null | Ret0 => UNTOUCHED,
    }
}

fn call_effect(key: &EffectKey, v: u64) -> u64 {
    let mut cell = UNTOUCHED;
    key.trampoline()(&mut cell, v);
    cell
}

fn addr<F: static_call::FnPtr>(f: F) -> u64 {
    f.addr() as u64
}

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

fn decoded(tramp: usize) -> x86::Trampoline {
    x86::decode(tramp as u64, &image(tramp), x86::null_stub_addr()).unwrap()
}

/// The key's return-zero function, as RET0 installs it.
fn ret0_addr<F: static_call::FnPtr>(key: &StaticCall<F>, set: impl Fn()) -> u64 {
    set();
    let t = decoded(key.trampoline_addr());
    match t.form {
        Form::Near(a) => a,
        f => panic!("RET0 is not a near jump: {f:?}"),
    }
}

#[test]
fn calls_are_direct_jumps_through_the_trampoline() {
    let _serial = serial();
    assert_eq!(VALUE.call(5), 1005);
    assert_eq!(VALUE.trampoline()(6), 1006);
    // A Rust-ABI key starts out jumping to its init shim, which calls the
    // target (see `static_call!`); an `extern "C"` key to the target.
    unsafe extern "Rust" {
        #[link_name = "__SCI__VALUE"]
        safe fn value_init_shim(x: u32) -> u64;
    }
    let t = decoded(VALUE.trampoline_addr());
    assert_eq!(t.form, Form::Near(addr(value_init_shim as fn(u32) -> u64)));
    assert_eq!(VALUE.trampoline_addr() % 16, 0);
    // The function pointer is the entry for indirect calls: `endbr64`.
    let pointer = VALUE.trampoline() as usize;
    assert_ne!(pointer, VALUE.trampoline_addr());
    // SAFETY: the entry is 4 readable bytes of text.
    assert_eq!(
        unsafe { *(pointer as *const [u8; 4]) },
        [0xf3, 0x0f, 0x1e, 0xfa]
    );
    assert_eq!(C_VALUE.call(5), 1005);
    assert_eq!(C_VALUE.trampoline()(5), 1005);
    let t = decoded(C_VALUE.trampoline_addr());
    assert_eq!(
        t.form,
        Form::Near(addr(c_near_value as extern "C" fn(u32) -> u64))
    );
}

#[test]
fn null_and_ret0_keys_start_as_declared() {
    let t = decoded(NULL_KEY.trampoline_addr());
    assert_eq!(t.form, Form::Null);
    assert_eq!(t.image.entry, NULL_ENTRY);
    assert_eq!(call_effect(&NULL_KEY, 3), UNTOUCHED);
    assert!(NULL_KEY.query().is_none());
    assert_eq!(RET0_KEY.call(9), 0);
    assert!(RET0_KEY.is_ret0());
    assert!(matches!(
        decoded(RET0_KEY.trampoline_addr()).form,
        Form::Near(_)
    ));
}

/// Every trampoline in the binary, as binutils disassembles it, has exactly
/// the designed shape in `.static_call.text`: 16-byte aligned, `jmp` rel32
/// (5 bytes) or `ret` + 4 x `int3`, then `ud1 %esp,%ecx`, then the literal.
#[test]
fn trampolines_disassemble_to_the_expected_shape() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("objdump")
        .args(["-d", "-z", "-j", ".static_call.text"])
        .arg(&exe)
        .output()
        .expect("objdump (binutils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (mut found, mut indirect) = (0, 0);
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        let Some(header) = line.strip_suffix(">:") else {
            continue;
        };
        let Some((addr, name)) = header.split_once(" <") else {
            continue;
        };
        if !name.starts_with("__SCT__") {
            continue;
        }
        if let Some(key) = name.strip_suffix(".indirect") {
            // The entry for indirect calls: a CET landing pad, then a jump
            // to the trampoline it belongs to.
            let body: Vec<&str> = lines
                .by_ref()
                .take_while(|l| !l.trim().is_empty())
                .filter(|l| !l.contains("\tnop"))
                .collect();
            assert_eq!(body.len(), 2, "{name}: {body:?}");
            assert!(
                body[0].contains("f3 0f 1e fa") && body[0].ends_with("endbr64"),
                "{name}"
            );
            assert!(
                body[1].contains("jmp") && body[1].ends_with(&format!("<{key}>")),
                "{name}: {body:?}"
            );
            indirect += 1;
            continue;
        }
        let tramp = u64::from_str_radix(addr, 16).unwrap();
        assert_eq!(tramp % 16, 0, "{name}: not 16-byte aligned");
        let insns: Vec<(Vec<u8>, String)> = lines
            .by_ref()
            .take_while(|l| !l.trim().is_empty())
            .map(|l| {
                let cols: Vec<&str> = l.split('\t').collect();
                let bytes = cols[1]
                    .split_whitespace()
                    .map(|b| u8::from_str_radix(b, 16).unwrap())
                    .collect();
                (bytes, cols.get(2).copied().unwrap_or("").trim().to_string())
            })
            .collect();
        let asm: Vec<&str> = insns.iter().map(|(_, a)| a.as_str()).collect();
        let (first, rest) = insns.split_first().unwrap();
        let sig_at = if first.1.starts_with("jmp") {
            assert_eq!(first.0.len(), 5, "{name}: jmp is not jmp.d32: {asm:?}");
            assert_eq!(first.0[0], 0xe9, "{name}");
            0
        } else {
            assert_eq!(&asm[..5], ["ret", "int3", "int3", "int3", "int3"], "{name}");
            4
        };
        assert!(rest[sig_at].1.starts_with("ud1"), "{name}: {asm:?}");
        assert_eq!(rest[sig_at].0, [0x0f, 0xb9, 0xcc], "{name}");
        // The literal: 8 more bytes (0 as assembled, or an updated target).
        let total: usize = insns.iter().map(|(b, _)| b.len()).sum();
        assert_eq!(total, 16, "{name}: {asm:?}");
        found += 1;
    }
    assert_eq!(found, 12, "expected every key's trampoline:\n{text}");
    assert_eq!(indirect, 12, "expected every key's indirect entry:\n{text}");
}

/// Position independence is kept: the assembler writes no absolute address
/// into text (the literal starts at 0), so the executable is a PIE without
/// text relocations.
#[test]
fn the_binary_is_a_pie_without_text_relocations() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("readelf")
        .args(["-h", "-d"])
        .arg(&exe)
        .output()
        .expect("readelf (binutils)");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("DYN ("), "not position-independent:\n{text}");
    assert!(!text.contains("TEXTREL"), "text relocations:\n{text}");
}

#[test]
fn every_transition_in_both_directions_calls_the_right_target() {
    let _serial = serial();
    let tour = tour();
    assert_eq!(tour.len(), 31);
    let ret0 = ret0_addr(&EFFECT, || EFFECT.update_ret0().unwrap());
    let far = far_code();
    for strategy in STRATEGIES {
        let mut pairs = std::collections::HashSet::new();
        set_effect(&EFFECT, tour[0], strategy).unwrap();
        for step in tour.windows(2) {
            let (from, to) = (step[0], step[1]);
            assert_eq!(call_effect(&EFFECT, 11), effect_of(from, 11));
            set_effect(&EFFECT, to, strategy).unwrap();
            assert_eq!(
                call_effect(&EFFECT, 11),
                effect_of(to, 11),
                "{strategy:?}: {from:?} -> {to:?}"
            );
            let t = decoded(EFFECT.trampoline_addr());
            let expected = match to {
                Near => Form::Near(addr(near_effect as fn(*mut u64, u64))),
                Near2 => Form::Near(addr(near2_effect as fn(*mut u64, u64))),
                Far | Far2 => Form::Far,
                Null => Form::Null,
                Ret0 => Form::Near(ret0),
            };
            assert_eq!(t.form, expected, "{strategy:?}: {from:?} -> {to:?}");
            match to {
                Far => assert_eq!(t.image.literal, addr(far.effect)),
                Far2 => assert_eq!(t.image.literal, addr(far.effect2)),
                Null => assert_eq!(t.image.literal, x86::null_stub_addr()),
                _ => assert_eq!(Form::Near(t.image.literal), t.form),
            }
            // query agrees, and the key reports RET0 exactly when it is.
            let q = EFFECT.query().map(addr).unwrap_or(0);
            assert_eq!(q, t.target());
            assert_eq!(EFFECT.is_ret0(), to == Ret0);
            pairs.insert((from, to));
        }
        assert_eq!(pairs.len(), 30, "every ordered pair of distinct states");
    }

    // The value key: near, far and RET0 (NULL is refused at compile time
    // for a non-() return type), both strategies, both directions.
    for strategy in STRATEGIES {
        let w = strategy.with(&Remap);
        for (f, expect) in [
            (far.value, 2005),
            (near_value as fn(u32) -> u64, 1005),
            (far.value, 2005),
        ] {
            VALUE.update_with(f, &w).unwrap();
            assert_eq!(VALUE.call(5), expect);
            VALUE.update_ret0_with(&w).unwrap();
            assert_eq!(VALUE.call(5), 0);
            assert!(VALUE.is_ret0());
        }
        VALUE.update_with(near_value, &w).unwrap();
        assert_eq!(VALUE.query().map(|f| f(1)), Some(1001));
    }
}

/// A far-to-far retarget writes only the literal (data): the entry word is
/// not touched, whatever the strategy, and no int3 is ever placed.
#[test]
fn far_to_far_writes_only_the_literal() {
    let _serial = serial();
    let far = far_code();
    for strategy in IN_PLACE {
        EFFECT
            .update_with(far.effect, &strategy.with(&Remap))
            .unwrap();
        let rec = Recorder::new(usize::MAX);
        EFFECT
            .update_with(far.effect2, &strategy.with(&rec))
            .unwrap();
        assert_eq!(
            rec.writes(),
            [(EFFECT.trampoline_addr() + 8, 8)],
            "{strategy:?}"
        );
        assert_eq!(call_effect(&EFFECT, 1), 1 + FAR2);
    }
    EFFECT.update(near_effect).unwrap();
}

/// A writer that forwards to `Remap`, records every write, and can fail one
/// chosen write (by index), lie about one (report success without writing),
/// or corrupt one (write other bytes), fail a chosen sync, or fail every
/// write or every sync from a chosen one on (so that undoing fails too).
struct Recorder {
    log: Mutex<Vec<(usize, usize)>>,
    count: AtomicUsize,
    syncs: AtomicUsize,
    fail_at: usize,
    mode: Fault,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Fail,
    Lie,
    Corrupt,
    FailSync,
    WritesFailFrom,
    SyncsFailFrom,
}

impl Recorder {
    fn new(fail_at: usize) -> Self {
        Self::with(fail_at, Fault::Fail)
    }
    fn with(fail_at: usize, mode: Fault) -> Self {
        Recorder {
            log: Mutex::new(Vec::new()),
            count: AtomicUsize::new(0),
            syncs: AtomicUsize::new(0),
            fail_at,
            mode,
        }
    }
    fn writes(&self) -> Vec<(usize, usize)> {
        self.log.lock().unwrap().clone()
    }
}

// SAFETY: forwards to Remap, except that the chosen write either stores
// nothing and fails (as the contract allows), or is a deliberately broken
// writer for testing the read-back check.
unsafe impl TextWriter for Recorder {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        let n = self.count.fetch_add(1, Ordering::SeqCst);
        self.log.lock().unwrap().push((addr, bytes.len()));
        if self.mode == Fault::WritesFailFrom && n >= self.fail_at {
            return Err(Error::WriterFailed {
                what: "test failure (and every later write)",
                errno: 0,
            });
        }
        if n == self.fail_at {
            match self.mode {
                Fault::Fail => {
                    return Err(Error::WriterFailed {
                        what: "test failure",
                        errno: 0,
                    });
                }
                Fault::Lie => return Ok(()),
                Fault::Corrupt => {
                    let mut wrong = bytes.to_vec();
                    wrong[0] ^= 0x40;
                    // SAFETY: the caller's contract is Remap's.
                    return unsafe { Remap.write(addr, &wrong) };
                }
                Fault::FailSync | Fault::WritesFailFrom | Fault::SyncsFailFrom => {}
            }
        }
        // SAFETY: the caller's contract is Remap's.
        unsafe { Remap.write(addr, bytes) }
    }
    fn sync_cores(&self) -> Result<(), Error> {
        let n = self.syncs.fetch_add(1, Ordering::SeqCst);
        let fails = match self.mode {
            Fault::FailSync => n == self.fail_at,
            Fault::SyncsFailFrom => n >= self.fail_at,
            _ => false,
        };
        if fails {
            return Err(Error::WriterFailed {
                what: "test sync failure",
                errno: 0,
            });
        }
        Remap.sync_cores()
    }
}

/// Writes 16 bytes over a trampoline by hand, under the patch lock.
fn write_raw(tramp: usize, image: Image) {
    let _lock = static_call::writer::patch_lock();
    // SAFETY: the trampoline belongs to a test key only this test touches.
    unsafe {
        Remap
            .write(tramp + 8, &image.literal.to_le_bytes())
            .unwrap();
        Remap.write(tramp, &image.entry).unwrap();
        Remap.sync_cores().unwrap();
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let _serial = serial();
    let tramp = BAD.trampoline_addr();
    let far = far_code();
    let w = Strategy::Breakpoint.with(&Remap);
    BAD.update_with(near_value, &w).unwrap();
    let good = image(tramp);

    // Misaligned trampolines: refused before anything is read or written.
    static SLOT: Slot = Slot::new(std::ptr::null_mut());
    for off in [1, 2, 4, 7] {
        for strategy in STRATEGIES {
            // SAFETY: the address is refused before it is dereferenced.
            let err = unsafe {
                <X86_64 as Backend>::retarget(
                    tramp + off,
                    &SLOT,
                    far_value as fn(u32) -> u64 as usize,
                    &Remap,
                    strategy,
                )
            };
            assert_eq!(
                err,
                Err(Error::MisalignedTrampoline {
                    addr: tramp + off,
                    align: 8
                })
            );
        }
        // SAFETY: as above.
        assert!(matches!(
            unsafe { <X86_64 as Backend>::query(tramp + off, &SLOT) },
            Err(Error::MisalignedTrampoline { .. })
        ));
    }
    assert_eq!(image(tramp), good);

    // Corrupted bytes: every byte of the entry word and the literal. The
    // rel32 bytes of a near jump are caught through the literal.
    for offset in 0..16 {
        let mut bad = good;
        if offset < 8 {
            bad.entry[offset] ^= 0x01;
        } else {
            bad.literal ^= 1 << (8 * (offset - 8));
        }
        write_raw(tramp, bad);
        for strategy in STRATEGIES {
            let err = BAD
                .update_with(far.value, &strategy.with(&Remap))
                .unwrap_err()
                .error;
            let want = if (1..5).contains(&offset) {
                8
            } else {
                offset.min(8)
            };
            assert!(
                matches!(err, Error::UnrecognisedTrampoline { addr, offset: o, .. }
                    if addr == tramp && o == want),
                "byte {offset}, {strategy:?}: {err}"
            );
            assert_eq!(image(tramp), bad, "byte {offset}: the refusal wrote");
        }
    }
    // A foreign int3 at the entry is not ours to complete.
    let mut armed = good;
    armed.entry[0] = insn::INT3;
    write_raw(tramp, armed);
    let refused = BAD.update_with(far.value, &w).unwrap_err();
    assert!(matches!(
        refused.error,
        Error::UnrecognisedTrampoline { offset: 0, .. }
    ));
    // The error names the key.
    assert_eq!(refused.key, "BAD");
    assert!(
        refused
            .to_string()
            .starts_with("static call BAD: bytes at "),
        "{refused}"
    );
    assert_eq!(image(tramp), armed);
    write_raw(tramp, good);
    assert_eq!(BAD.call(1), 1001);

    // Writers that fail, lie, corrupt or fail to sync at each step of each
    // transition: an error, and the 16 bytes exactly as before.
    let set = |to: &str, w: &dyn UpdateWriter| match to {
        "near" => BAD.update_with(near_value, w),
        "far" => BAD.update_with(far.value, w),
        _ => BAD.update_ret0_with(w),
    };
    let result_of = |of: &str, x: u32| match of {
        "near" => near_value(x),
        "far" => far_value(x),
        _ => 0,
    };
    for strategy in IN_PLACE {
        for from in ["near", "far", "ret0"] {
            for to in ["near", "far", "ret0"] {
                if from == to {
                    continue;
                }
                set(from, &strategy.with(&Remap)).unwrap();
                let before = image(tramp);
                let probe = Recorder::new(usize::MAX);
                set(to, &strategy.with(&probe)).unwrap();
                let steps = probe.writes().len();
                assert!(steps >= 2, "{from}->{to}: {steps} writes");
                set(from, &strategy.with(&Remap)).unwrap();
                assert_eq!(image(tramp), before);
                for mode in [Fault::Fail, Fault::Lie, Fault::Corrupt, Fault::FailSync] {
                    for k in 0..steps {
                        let rec = Recorder::with(k, mode);
                        let err = set(to, &strategy.with(&rec)).unwrap_err().error;
                        let what = format!("{strategy:?} {from}->{to} {mode:?} at {k}");
                        match mode {
                            Fault::Fail | Fault::FailSync => {
                                assert!(matches!(err, Error::WriterFailed { .. }), "{what}: {err}")
                            }
                            Fault::Lie | Fault::Corrupt => {
                                assert!(matches!(err, Error::VerifyFailed { .. }), "{what}: {err}")
                            }
                            Fault::WritesFailFrom | Fault::SyncsFailFrom => unreachable!(),
                        }
                        assert_eq!(image(tramp), before, "{what}: bytes changed");
                        assert_eq!(BAD.call(2), result_of(from, 2), "{what}");
                    }
                }
                // Writers that stop working for good at step k: the undo
                // fails too. Unless nothing was written (the very first
                // write failed), the error says the restore failed, and
                // what is left is a state of the protocol that still calls
                // the old or the new target, the one query() names; the
                // next update with a working writer completes it.
                let target_of = |of: &str| match of {
                    "near" => near_value as fn(u32) -> u64 as usize,
                    "far" => far.value as usize,
                    _ => ret0_addr(&BAD, || BAD.update_ret0_with(&Remap).unwrap()) as usize,
                };
                let ret0 = target_of("ret0");
                set(from, &strategy.with(&Remap)).unwrap();
                let named = |q: Option<usize>| {
                    ["near", "far", "ret0"]
                        .into_iter()
                        .find(|&n| Some(if n == "ret0" { ret0 } else { target_of(n) }) == q)
                };
                for mode in [Fault::WritesFailFrom, Fault::SyncsFailFrom] {
                    for k in 0..steps {
                        let rec = Recorder::with(k, mode);
                        let err = set(to, &strategy.with(&rec)).unwrap_err().error;
                        let what = format!("{strategy:?} {from}->{to} {mode:?} at {k}");
                        if mode == Fault::WritesFailFrom && k == 0 {
                            assert!(matches!(err, Error::WriterFailed { .. }), "{what}: {err}");
                            assert_eq!(image(tramp), before, "{what}: bytes changed");
                        } else {
                            assert!(matches!(err, Error::RestoreFailed { .. }), "{what}: {err}");
                        }
                        let v = BAD.call(2);
                        assert!(
                            v == result_of(from, 2) || v == result_of(to, 2),
                            "{what}: a call returned {v}"
                        );
                        let q = named(BAD.query().map(|f| f as usize));
                        assert!(q == Some(from) || q == Some(to), "{what}: query() {q:?}");
                        assert_eq!(v, result_of(q.unwrap(), 2), "{what}: query() {q:?}");
                        set(from, &strategy.with(&Remap)).unwrap();
                        assert_eq!(image(tramp), before, "{what}: repaired");
                        assert_eq!(BAD.call(2), result_of(from, 2), "{what}: repaired");
                    }
                }
            }
        }
    }
    BAD.update_with(near_value, &w).unwrap();
}

// ---------------------------------------------------------------------
// The seed-000 race: a call parked inside the trap handler while further
// updates run.

#[path = "common/parking.rs"]
mod parking;
use parking::{PARKING, park_a, park_b, park_c, unicorn};

/// Arms [`PARKING`] for a call through `tramp` parked at `point`, the next
/// int3 update of `tramp` held until it has trapped.
fn arm_parking(tramp: usize, point: hooks::TrapPoint) {
    PARKING.reset(tramp, point);
    // SAFETY: the hook does not unwind: it runs outside signal context
    // and only touches statics and spins.
    unsafe { hooks::set_after_store(Some(parking::hold_after_int3)) };
}

/// Spins until `flag` is set; async-signal-safe (atomics and sched_yield).
fn wait_for(flag: &AtomicBool) {
    let start = Instant::now();
    while !flag.load(Ordering::SeqCst) {
        // SAFETY: sched_yield has no preconditions.
        unsafe { libc::sched_yield() };
        if start.elapsed() > Duration::from_secs(20) {
            // SAFETY: abort is async-signal-safe; a hang must not pass.
            unsafe { libc::abort() };
        }
    }
}

/// Runs one parked-call scenario and returns (what the parked call
/// returned, the destination the handler had read when it parked).
fn parked_call(park_at: hooks::TrapPoint) -> (u64, usize) {
    let steered = x86::traps_steered();
    let bp = Strategy::Breakpoint.with(&Remap);
    PARK.update_with(park_a, &bp).unwrap();
    OTHER.update_with(park_a, &bp).unwrap();
    arm_parking(PARK.trampoline_addr(), park_at);

    // The first update stops right after its int3 is in place (and synced)
    // until a call has trapped on it.
    let first = std::thread::spawn(move || {
        PARK.update_with(park_b, &Strategy::Breakpoint.with(&Remap))
            .unwrap()
    });
    let caller = std::thread::spawn(|| {
        wait_for(&PARKING.armed);
        PARK.call(1)
    });
    wait_for(&PARKING.in_handler);
    first.join().unwrap();
    // The first update completed while the call is parked. Now more updates
    // of this key and of another key (seed 000: another site's update
    // rewrote the global the parked CPU would read), then a final one.
    // SAFETY: removing a hook.
    unsafe { hooks::set_after_store(None) };
    PARK.update_with(park_c, &bp).unwrap();
    OTHER.update_with(unicorn, &bp).unwrap();
    PARK.update_ret0_with(&bp).unwrap();
    OTHER
        .update_with(unicorn, &Strategy::AtomicStore.with(&Remap))
        .unwrap();
    PARK.update_with(park_c, &Strategy::AtomicStore.with(&Remap))
        .unwrap();
    assert_eq!(PARK.call(1), 31);
    assert_eq!(OTHER.call(1), 667);
    PARKING.release.store(true, Ordering::SeqCst);
    let result = caller.join().expect("the parked call faulted");
    // SAFETY: removing a hook.
    unsafe { hooks::set_on_trap(None) };
    assert!(x86::traps_steered() > steered, "the call never trapped");
    (result, PARKING.dest.load(Ordering::SeqCst))
}

/// The rule: a call that traps continues at the literal of the trampoline
/// it trapped on, as read in the handler; the literal is published before
/// the int3 and only ever holds that key's targets. So a call parked after
/// reading reaches the target of the update it trapped in (park_b), and a
/// call parked before reading reaches a newer one (park_c); never another
/// key's target (unicorn), a stub or garbage.
#[test]
fn seed_000_a_call_parked_in_the_trap_handler_reaches_a_target_valid_for_it() {
    let _serial = serial();
    let (result, dest) = parked_call(hooks::TrapPoint::Steering);
    assert_eq!(
        dest, park_b as fn(u32) -> u64 as usize,
        "steered to the new target"
    );
    assert_eq!(
        result, 21,
        "parked after reading: the target it trapped into"
    );

    let (result, dest) = parked_call(hooks::TrapPoint::Recognised);
    assert_eq!(dest, 0, "parked before reading the literal");
    assert_eq!(result, 31, "parked before reading: the newest target");

    // The kernel-side hook steers the same way, through the literal.
    let tramp = PARK.trampoline_addr();
    let mut frame = BreakpointFrame {
        rip: tramp as u64 + 1,
        rsp: 0x7000,
    };
    // SAFETY: a trampoline's trap only edits RIP; nothing is stored below
    // the made-up RSP.
    assert!(unsafe { x86::handle_breakpoint(&mut frame) });
    assert_eq!(frame.rip, addr(park_c as fn(u32) -> u64));
    assert_eq!(frame.rsp, 0x7000);
    let mut frame = BreakpointFrame {
        rip: tramp as u64 + 2,
        rsp: 0,
    };
    // SAFETY: a valid frame.
    assert!(!unsafe { x86::static_call_handle_breakpoint(&mut frame) });
    assert_eq!(frame.rip, tramp as u64 + 2);
    PARK.update_with(park_a, &Strategy::Breakpoint.with(&Remap))
        .unwrap();
}

// ---------------------------------------------------------------------
// Trap-handler installation and chaining, in child processes (a signal
// disposition is process-wide).

static FOREIGN_TRAPS: AtomicUsize = AtomicUsize::new(0);

extern "C" fn count_foreign(_sig: libc::c_int) {
    FOREIGN_TRAPS.fetch_add(1, Ordering::SeqCst);
}

static ARMED_CALL: AtomicU64 = AtomicU64::new(0);

fn call_while_armed(tramp: usize, _index: usize, store: x86::protocol::Store) {
    if tramp == CHAIN.trampoline_addr() && store == x86::protocol::Store::First(insn::INT3) {
        ARMED_CALL.store(CHAIN.call(1), Ordering::SeqCst);
    }
}

fn run_child(name: &str) -> std::process::Output {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            name,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("STATIC_CALL_CHILD", "1")
        .output()
        .unwrap()
}

/// Child: a SIGTRAP handler installed before the first int3 update keeps
/// getting the traps that are not at trampolines; replacing ours makes the
/// next int3 update fail before it writes.
#[test]
#[ignore = "run as a child process by trap_handler_chains_and_is_checked"]
fn child_chain() {
    if std::env::var_os("STATIC_CALL_CHILD").is_none() {
        return;
    }
    // SAFETY: installs a trivial handler with signal().
    unsafe {
        libc::signal(
            libc::SIGTRAP,
            count_foreign as extern "C" fn(libc::c_int) as usize,
        )
    };
    CHAIN
        .update_with(far_value, &Strategy::Breakpoint.with(&Remap))
        .unwrap();
    // A foreign int3 goes to the previous handler and execution continues.
    // SAFETY: int3 traps; the chained handler returns past it.
    unsafe { std::arch::asm!("int3") };
    assert_eq!(FOREIGN_TRAPS.load(Ordering::SeqCst), 1);
    // A real trap at an armed trampoline is steered by ours, not passed
    // on: this thread calls the key while its own update has the int3 in
    // place (from the after-store hook, lock held).
    // SAFETY: the hook does not unwind: it runs outside signal context
    // and only calls keys and touches statics.
    unsafe { hooks::set_after_store(Some(call_while_armed)) };
    CHAIN
        .update_with(near_value, &Strategy::Breakpoint.with(&Remap))
        .unwrap();
    // SAFETY: removing a hook.
    unsafe { hooks::set_after_store(None) };
    assert_eq!(
        ARMED_CALL.load(Ordering::SeqCst),
        1001,
        "steered to the new target"
    );
    assert_eq!(FOREIGN_TRAPS.load(Ordering::SeqCst), 1);
    assert!(x86::traps_steered() >= 1);
    CHAIN
        .update_with(far_value, &Strategy::Breakpoint.with(&Remap))
        .unwrap();
    assert_eq!(CHAIN.call(1), 2001);
    // Someone replaces our handler: int3 updates refuse, atomic ones work.
    // SAFETY: as above.
    unsafe {
        libc::signal(
            libc::SIGTRAP,
            count_foreign as extern "C" fn(libc::c_int) as usize,
        )
    };
    let before = image(CHAIN.trampoline_addr());
    let err = CHAIN
        .update_with(near_value, &Strategy::Breakpoint.with(&Remap))
        .unwrap_err()
        .error;
    assert!(matches!(err, Error::WriterFailed { errno: 0, .. }), "{err}");
    assert_eq!(image(CHAIN.trampoline_addr()), before);
    CHAIN
        .update_with(near_value, &Strategy::AtomicStore.with(&Remap))
        .unwrap();
    assert_eq!(CHAIN.call(1), 1001);
    println!("child_chain: ok");
}

/// Child: with no handler before ours, a foreign int3 still ends the
/// process with SIGTRAP, as it would have without us.
#[test]
#[ignore = "run as a child process by trap_handler_chains_and_is_checked"]
fn child_default() {
    if std::env::var_os("STATIC_CALL_CHILD").is_none() {
        return;
    }
    CHAIN
        .update_with(far_value, &Strategy::Breakpoint.with(&Remap))
        .unwrap();
    // SAFETY: int3 traps; the default action ends the process.
    unsafe { std::arch::asm!("int3") };
    println!("child_default: survived a foreign int3");
}

/// The mask a chained handler of [`child_chain_mask`] ran with: bit 0
/// SIGUSR1 blocked, bit 1 SIGTRAP blocked; 4 once it has run.
static CHAINED_MASK: AtomicUsize = AtomicUsize::new(0);

extern "C" fn record_mask(_sig: libc::c_int) {
    // SAFETY: reads this thread's mask into a local.
    let mask = unsafe {
        let mut cur: libc::sigset_t = core::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_BLOCK, core::ptr::null(), &mut cur);
        cur
    };
    // SAFETY: `mask` is a valid set.
    let (usr1, trap) = unsafe {
        (
            libc::sigismember(&mask, libc::SIGUSR1) == 1,
            libc::sigismember(&mask, libc::SIGTRAP) == 1,
        )
    };
    CHAINED_MASK.store(
        4 | usize::from(usr1) | usize::from(trap) << 1,
        Ordering::SeqCst,
    );
}

/// Child: the handler ours replaces was installed with `sa_mask` {SIGUSR1},
/// without `SA_NODEFER`, and with `SA_RESETHAND`. A foreign trap reaches it
/// with SIGUSR1 and SIGTRAP blocked, as the kernel would have run it; the
/// second foreign trap finds it spent and takes the default action.
#[test]
#[ignore = "run as a child process by trap_handler_chains_and_is_checked"]
fn child_chain_mask() {
    if std::env::var_os("STATIC_CALL_CHILD").is_none() {
        return;
    }
    // SAFETY: a valid action with a plain handler, built from zero.
    unsafe {
        let mut act: libc::sigaction = core::mem::zeroed();
        act.sa_sigaction = record_mask as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaddset(&mut act.sa_mask, libc::SIGUSR1);
        act.sa_flags = libc::SA_RESETHAND;
        assert_eq!(
            libc::sigaction(libc::SIGTRAP, &act, core::ptr::null_mut()),
            0
        );
    }
    CHAIN
        .update_with(far_value, &Strategy::Breakpoint.with(&Remap))
        .unwrap();
    // SAFETY: int3 traps; the chained handler returns past it.
    unsafe { std::arch::asm!("int3") };
    println!("chained mask: {}", CHAINED_MASK.load(Ordering::SeqCst));
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    // SAFETY: as above; this time the default action ends the process.
    unsafe { std::arch::asm!("int3") };
    println!("child_chain_mask: survived a second foreign int3");
}

#[test]
fn trap_handler_chains_and_is_checked() {
    use std::os::unix::process::ExitStatusExt;
    let out = run_child("child_chain");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child_chain: ok"),
        "{}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run_child("child_default");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGTRAP),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    let out = run_child("child_chain_mask");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("chained mask: 7"),
        "the chained handler must run with its sa_mask and SIGTRAP blocked \
         (mask 7): {stdout}"
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGTRAP),
        "SA_RESETHAND: the second foreign trap takes the default action: {}\n{stdout}",
        out.status
    );
}

/// Calls the worker of [`child_blocked_sigtrap`] has made.
static BLOCKED_CALLS: AtomicU64 = AtomicU64::new(0);

/// After each store of an update, waits until the worker has made more
/// calls, so it runs every intermediate state (an `int3` among them, if the
/// strategy places one).
fn wait_for_blocked_worker(tramp: usize, _index: usize, _store: x86::protocol::Store) {
    if tramp != BLOCKED.trampoline_addr() {
        return;
    }
    let start = BLOCKED_CALLS.load(Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(2);
    while BLOCKED_CALLS.load(Ordering::SeqCst) < start + 100 && Instant::now() < deadline {
        std::hint::spin_loop();
    }
}

/// Child: a worker thread blocks every signal (as thread pools commonly
/// do) and calls a key while the main thread updates it with the strategy
/// named by `STATIC_CALL_STRATEGY` (`default` or `breakpoint`). Each update
/// waits after every store until the worker has called through that state.
#[test]
#[ignore = "run as a child process by updates_never_kill_a_thread_that_blocks_sigtrap"]
fn child_blocked_sigtrap() {
    let Some(strategy) = std::env::var_os("STATIC_CALL_STRATEGY") else {
        return;
    };
    let explicit = match strategy.to_str() {
        Some("default") => None,
        Some("breakpoint") => Some(Strategy::Breakpoint),
        other => panic!("unknown strategy {other:?}"),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let worker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            // SAFETY: a full set, built by sigfillset, blocked for this
            // thread only.
            unsafe {
                let mut all: libc::sigset_t = core::mem::zeroed();
                libc::sigfillset(&mut all);
                assert_eq!(
                    libc::pthread_sigmask(libc::SIG_BLOCK, &all, core::ptr::null_mut()),
                    0
                );
            }
            while !stop.load(Ordering::SeqCst) {
                let v = BLOCKED.call(1);
                assert!(v == 1 + NEAR || v == 1 + FAR, "a call returned {v}");
                BLOCKED_CALLS.fetch_add(1, Ordering::SeqCst);
            }
        })
    };
    // SAFETY: the hook does not unwind: it runs outside signal context
    // and only calls keys and touches statics.
    unsafe { hooks::set_after_store(Some(wait_for_blocked_worker)) };
    const UPDATES: u32 = 2000;
    for i in 0..UPDATES {
        let f: fn(u32) -> u64 = if i % 2 == 0 { far_value } else { near_value };
        match explicit {
            None => BLOCKED.update(f).unwrap(),
            Some(s) => BLOCKED.update_with(f, &s.with(&Remap)).unwrap(),
        }
    }
    // SAFETY: removing a hook.
    unsafe { hooks::set_after_store(None) };
    stop.store(true, Ordering::SeqCst);
    worker.join().unwrap();
    println!(
        "child_blocked_sigtrap: {UPDATES} updates, {} calls, ok",
        BLOCKED_CALLS.load(Ordering::SeqCst)
    );
}

/// Issue: a thread that blocks SIGTRAP and calls a key during an int3
/// update is killed by the kernel, and the whole process with it. The
/// default strategy in Linux user space never places an `int3`, so such a
/// program survives every update; the int3 protocol, asked for explicitly,
/// still shows the hazard it is documented to have.
#[test]
fn updates_never_kill_a_thread_that_blocks_sigtrap() {
    use std::os::unix::process::ExitStatusExt;
    let run = |strategy: &str| {
        Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child_blocked_sigtrap",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("STATIC_CALL_STRATEGY", strategy)
            .output()
            .unwrap()
    };
    let out = run("default");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("updates") && stdout.contains("ok"),
        "default strategy: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run("breakpoint");
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGTRAP),
        "the int3 protocol with SIGTRAP blocked in a calling thread: {}",
        out.status
    );
}

// ---------------------------------------------------------------------
// Concurrency stress.

/// Calls per strategy the callers must make at least (they keep calling
/// until both this and the update count are reached).
const STRESS_CALLS: u64 = 50_000_000;
/// Updates per strategy.
const STRESS_UPDATES: u64 = 50_000;

/// Prints a summary line even when libtest captures output (it captures the
/// print macros, not the stderr handle), so the counts show in every run.
fn report(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

struct StressReport {
    updates: u64,
    calls: u64,
    wrong: u64,
    traps: u64,
    elapsed: Duration,
}

/// Every core calls `STRESS` continuously while this thread walks it
/// through the tour (every ordered pair of {near, near2, far, far2, NULL,
/// RET0}) with `strategy`. Each call is checked against the update
/// generations around it: its effect must be that of a state installed at
/// some point during the call (the state of the generation read before it,
/// of any generation up to the one read after it, or the one being
/// installed then).
fn stress(strategy: Strategy) -> StressReport {
    let callers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let tour = Arc::new(tour());
    let cycle = tour.len() - 1; // the tour ends where it starts
    let state_at = move |tour: &[State], g: u64| tour[(g as usize) % cycle];
    set_effect(&STRESS, tour[0], strategy).unwrap();
    let generation = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let total_calls = Arc::new(AtomicU64::new(0));
    let traps = x86::traps_steered();
    let start = Instant::now();

    let threads: Vec<_> = (0..callers)
        .map(|id| {
            let (generation, stop, tour, total) = (
                generation.clone(),
                stop.clone(),
                tour.clone(),
                total_calls.clone(),
            );
            std::thread::spawn(move || {
                let (mut calls, mut wrong) = (0u64, 0u64);
                let mut v = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    // A tight batch between checks of `stop`.
                    for _ in 0..4096 {
                        v = if v == 996 { 0 } else { v + 1 };
                        let before = generation.load(Ordering::Acquire);
                        let mut cell = UNTOUCHED;
                        STRESS.call(&mut cell, v);
                        if cell != effect_of(state_at(&tour, before), v) {
                            let after = generation.load(Ordering::Acquire);
                            let ok = (before..=after + 1)
                                .any(|g| effect_of(state_at(&tour, g), v) == cell);
                            if !ok {
                                wrong += 1;
                                eprintln!(
                                    "caller {id}: v={v} got {cell:#x} between \
                                     generations {before}..={after}"
                                );
                            }
                        }
                    }
                    calls += 4096;
                    total.fetch_add(4096, Ordering::Relaxed);
                }
                (calls, wrong)
            })
        })
        .collect();

    let mut g = 0;
    while g < STRESS_UPDATES || total_calls.load(Ordering::Relaxed) < STRESS_CALLS {
        g += 1;
        set_effect(&STRESS, state_at(&tour, g), strategy).unwrap();
        generation.store(g, Ordering::Release);
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "stress too slow: {g} updates, {} calls",
            total_calls.load(Ordering::Relaxed)
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (mut calls, mut wrong) = (0, 0);
    for t in threads {
        let (n, bad) = t.join().expect("a caller faulted");
        assert!(n > 0, "a caller never ran");
        calls += n;
        wrong += bad;
    }
    StressReport {
        updates: g,
        calls,
        wrong,
        traps: x86::traps_steered() - traps,
        elapsed: start.elapsed(),
    }
}

/// Every destination the trap handler produced for `STRESS` during the
/// stress, checked in the handler itself (async-signal-safe: atomics only).
static STRESS_ALLOWED: [AtomicUsize; 6] = [const { AtomicUsize::new(0) }; 6];
static STRESS_TRAPS: AtomicU64 = AtomicU64::new(0);
static STRESS_BAD_DEST: AtomicU64 = AtomicU64::new(0);

fn check_stress_dest(point: hooks::TrapPoint, tramp: usize, dest: usize) {
    if point != hooks::TrapPoint::Steering || tramp != STRESS.trampoline_addr() {
        return;
    }
    STRESS_TRAPS.fetch_add(1, Ordering::Relaxed);
    if !STRESS_ALLOWED
        .iter()
        .any(|a| a.load(Ordering::Relaxed) == dest)
    {
        STRESS_BAD_DEST.fetch_add(1, Ordering::Relaxed);
    }
}

/// Seeds 000 and 001 under load: every one of the calls that trapped during
/// the int3 stress was sent straight to one of the key's own targets or to
/// the static NULL stub (a `ret` that is never written, freed or reused):
/// there are no per-update stubs for a preempted CPU to be left in.
#[test]
fn every_core_calls_while_another_thread_retargets() {
    let _serial = serial();
    let ret0 = ret0_addr(&STRESS, || STRESS.update_ret0().unwrap());
    for (slot, a) in STRESS_ALLOWED.iter().zip([
        addr(near_effect as fn(*mut u64, u64)),
        addr(near2_effect as fn(*mut u64, u64)),
        addr(far_code().effect),
        addr(far_code().effect2),
        x86::null_stub_addr(),
        ret0,
    ]) {
        slot.store(a as usize, Ordering::Relaxed);
    }
    // SAFETY: the hook does not unwind, and is
    // async-signal-safe (atomics and spinning only).
    unsafe { hooks::set_on_trap(Some(check_stress_dest)) };
    let callers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut totals = (0, 0, 0);
    for strategy in STRATEGIES {
        let r = stress(strategy);
        report(format_args!(
            "x86_64 stress {strategy:?}: {callers} callers, {} updates, {} calls, \
             {} wrong, 0 faults, {} calls steered by the int3 handler, {:.1?}",
            r.updates, r.calls, r.wrong, r.traps, r.elapsed
        ));
        assert_eq!(r.wrong, 0, "{strategy:?}: wrong results");
        assert!(r.updates >= STRESS_UPDATES && r.calls >= STRESS_CALLS);
        if strategy != Strategy::Breakpoint {
            assert_eq!(r.traps, 0, "{strategy:?} never arms an int3");
        }
        totals = (totals.0 + r.updates, totals.1 + r.calls, totals.2 + r.wrong);
    }
    // SAFETY: removing a hook.
    unsafe { hooks::set_on_trap(None) };
    let (traps, bad) = (
        STRESS_TRAPS.load(Ordering::Relaxed),
        STRESS_BAD_DEST.load(Ordering::Relaxed),
    );
    report(format_args!(
        "x86_64 stress total: {} updates, {} calls, {} wrong, 0 faults; \
         {traps} trapped calls steered, {bad} to anything but the key's targets",
        totals.0, totals.1, totals.2
    ));
    assert!(
        traps > 0,
        "no call ever trapped: the int3 path was not exercised"
    );
    assert_eq!(
        bad, 0,
        "the handler sent a call somewhere other than a target"
    );
    set_effect(&STRESS, Near, Strategy::Breakpoint).unwrap();
}

/// Seed 001 at a NULL transition: a call parked in the handler while its
/// key becomes NULL is sent to the static NULL stub, which returns to the
/// caller, however many updates run before it resumes.
#[test]
fn seed_001_a_call_parked_on_a_null_update_returns_through_the_static_stub() {
    let _serial = serial();
    let bp = Strategy::Breakpoint.with(&Remap);
    EFFECT.update_with(near_effect, &bp).unwrap();
    arm_parking(EFFECT.trampoline_addr(), hooks::TrapPoint::Steering);
    let first = std::thread::spawn(|| {
        EFFECT
            .update_null_with(&Strategy::Breakpoint.with(&Remap))
            .unwrap()
    });
    let caller = std::thread::spawn(|| {
        wait_for(&PARKING.armed);
        call_effect(&EFFECT, 5)
    });
    wait_for(&PARKING.in_handler);
    first.join().unwrap();
    // SAFETY: removing a hook.
    unsafe { hooks::set_after_store(None) };
    // Reuse everything a stub-based design would reuse.
    for to in [Near2, Null, Far, Ret0, Null] {
        set_effect(&EFFECT, to, Strategy::Breakpoint).unwrap();
    }
    PARKING.release.store(true, Ordering::SeqCst);
    assert_eq!(caller.join().expect("the parked call faulted"), UNTOUCHED);
    // SAFETY: removing a hook.
    unsafe { hooks::set_on_trap(None) };
    assert_eq!(
        PARKING.dest.load(Ordering::SeqCst) as u64,
        x86::null_stub_addr()
    );
    // The stub is a landing pad and a `ret` in ordinary text, never written.
    let stub = x86::null_stub_addr() as *const [u8; 6];
    // SAFETY: the stub is six readable bytes of text.
    assert_eq!(
        unsafe { stub.read() },
        [0xf3, 0x0f, 0x1e, 0xfa, insn::RET, insn::INT3]
    );
    EFFECT.update(near_effect).unwrap();
}

/// Seed 002 (Josh Poimboeuf's v3): the atomic strategy changes code with
/// exactly one store, of the 8-byte aligned entry word (so it never spans a
/// cache line), after the literal; it relies on instruction fetch seeing
/// that store whole, which the SDM does not promise (see `Strategy`). The
/// stress above runs it against every core.
#[test]
fn seed_002_the_atomic_strategy_is_one_aligned_8_byte_code_store() {
    let _serial = serial();
    let tramp = EFFECT.trampoline_addr();
    let tour = tour();
    set_effect(&EFFECT, tour[0], Strategy::AtomicStore).unwrap();
    for &to in &tour[1..] {
        let rec = Recorder::new(usize::MAX);
        let w = Strategy::AtomicStore.with(&rec);
        update_to(&EFFECT, to, &w).unwrap();
        let code: Vec<_> = rec.writes().into_iter().filter(|w| w.0 == tramp).collect();
        assert!(code.len() <= 1, "{to:?}: {code:?}");
        assert!(code.iter().all(|&(_, len)| len == 8), "{to:?}: {code:?}");
        assert_eq!(call_effect(&EFFECT, 1), effect_of(to, 1));
    }
    assert_eq!(tramp % 8, 0);
    EFFECT.update(near_effect).unwrap();
}

/// Seed 004 (patching call sites that may cross a cache line): nothing but
/// the trampoline's own 16 bytes is ever written, never a call site (calls
/// are the compiler's `call __SCT__X`, left alone), and every store is one
/// byte or an aligned 8 that cannot cross a cache line; the first byte is
/// the only one the int3 protocol changes alone.
#[test]
fn seed_004_only_aligned_stores_to_the_trampoline_window_are_made() {
    let _serial = serial();
    let tramp = EFFECT.trampoline_addr();
    let tour = tour();
    for strategy in IN_PLACE {
        let rec = Recorder::new(usize::MAX);
        let w = strategy.with(&rec);
        set_effect(&EFFECT, tour[0], strategy).unwrap();
        for &to in &tour[1..] {
            update_to(&EFFECT, to, &w).unwrap();
        }
        let writes = rec.writes();
        assert!(writes.len() >= tour.len(), "{strategy:?}: {writes:?}");
        for (a, len) in writes {
            assert!(
                (a, len) == (tramp, 1) || ((a == tramp || a == tramp + 8) && len == 8),
                "{strategy:?}: wrote {len} bytes at {a:#x} (trampoline {tramp:#x})"
            );
            assert_eq!(a / 64, (a + len - 1) / 64, "crosses a cache line");
        }
    }
    EFFECT.update(near_effect).unwrap();
}

/// A first update that fails at any store leaves a literal a far entry
/// could use: the one the entry agrees with (its jump's destination), or 0
/// only if nothing was stored at all. Restoring the assembler's 0 under a
/// far entry a CPU had already fetched would send that CPU to address 0.
#[test]
fn a_failed_first_update_never_leaves_a_zero_literal_behind() {
    let far = far_code();
    let tramp = FIRST.trampoline_addr();
    let start = image(tramp);
    assert_eq!(start.literal, 0, "FIRST starts never updated");
    // To a far target (the far entry reads the literal), failing each
    // store in turn, with each strategy.
    for strategy in IN_PLACE {
        write_raw(tramp, start);
        let probe = Recorder::new(usize::MAX);
        FIRST
            .update_with(far.value, &strategy.with(&probe))
            .unwrap();
        let steps = probe.writes().len();
        for k in 0..steps {
            write_raw(tramp, start);
            let rec = Recorder::new(k);
            let err = FIRST
                .update_with(far.value, &strategy.with(&rec))
                .unwrap_err();
            let now = image(tramp);
            let what = format!("{strategy:?}, write {k} of {steps} failing: {err}");
            assert_eq!(now.entry, start.entry, "{what}: the entry is as assembled");
            if now.literal == 0 {
                assert_eq!(k, 0, "{what}: a literal of 0 after a store");
            } else {
                let form = x86::decode(tramp as u64, &now, x86::null_stub_addr()).map(|t| t.form);
                assert!(
                    matches!(form, Ok(Form::Near(d)) if d == now.literal),
                    "{what}: literal {:#x} beside {form:?}",
                    now.literal
                );
            }
            assert_eq!(FIRST.call(1), near_value(1), "{what}: calls as before");
        }
    }
    // And the key still updates.
    FIRST.update_with(far.value, &Remap).unwrap();
    assert_eq!(FIRST.call(1), far_value(1));
    FIRST.update_with(near_value, &Remap).unwrap();
}
