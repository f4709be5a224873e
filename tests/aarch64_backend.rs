//! The arm64 backend on real trampolines, in Linux user space (run under
//! qemu-aarch64 on x86-64 hosts): shape, every transition, every torn
//! state, bad input, and concurrent calls during updates.
#![cfg(all(
    target_arch = "aarch64",
    target_os = "linux",
    not(feature = "force-generic")
))]

mod common;
use static_call::Error;
use static_call::arch::Backend;
use static_call::arch::aarch64::{self as a64, Aarch64, Branch, Patch, Slot, insn};
use static_call::writer::{TextWriter, linux::Remap};
use std::io::Write;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

const NEAR: u64 = 1000;
const FAR: u64 = 2000;
const UNTOUCHED: u64 = u64::MAX;

fn near_value(x: u32) -> u64 {
    u64::from(x) + NEAR
}

/// # Safety
///
/// `out` must be valid for writes.
unsafe fn near_effect_raw(out: *mut u64, v: u64) {
    // SAFETY: per the signature's contract, which every caller here keeps.
    unsafe { out.write_volatile(v + NEAR) };
}

fn near_effect(out: *mut u64, v: u64) {
    // SAFETY: callers pass a pointer to a live local.
    unsafe { near_effect_raw(out, v) }
}

static_call::static_call! {
    static VALUE: fn(u32) -> u64 = near_value;
    static EFFECT: fn(*mut u64, u64) = near_effect;
    static TORN_VALUE: fn(u32) -> u64 = near_value;
    static TORN_EFFECT: fn(*mut u64, u64) = near_effect;
    static STRESS: fn(*mut u64, u64) = near_effect;
    static BAD: fn(u32) -> u64 = near_value;
    static NULL_KEY: fn(*mut u64, u64) = NULL;
    static RET0_KEY: fn(u32) -> u64 = RET0;
    static UNTOUCHED_KEY: fn(u32) -> u64 = near_value;
}

/// Hand-assembled functions mapped more than 128 MiB from the text, so no
/// `B` can reach them and the trampoline must use its literal.
struct FarCode {
    value: fn(u32) -> u64,
    effect: fn(*mut u64, u64),
}

fn far_code() -> &'static FarCode {
    static FAR_CODE: OnceLock<FarCode> = OnceLock::new();
    FAR_CODE.get_or_init(|| {
        let value: [u32; 4] = [
            // value(x) = x + FAR
            insn::BTI_C,
            insn::encode_movz_x(1, FAR as u16, 0),
            insn::encode_add_x_uxtw(0, 1, 0),
            insn::RET,
        ];
        let effect: [u32; 5] = [
            // effect(out, v): *out = v + FAR
            insn::BTI_C,
            insn::encode_movz_x(2, FAR as u16, 0),
            insn::encode_add_x(2, 2, 1),
            insn::encode_str_x(2, 0),
            insn::RET,
        ];
        let bytes =
            |words: &[u32]| -> Vec<u8> { words.iter().flat_map(|w| w.to_le_bytes()).collect() };
        let text = near_value as fn(u32) -> u64 as usize;
        let at = common::map_far_code(text, &[bytes(&value), bytes(&effect)]);
        // SAFETY: the words above implement exactly these signatures.
        unsafe {
            FarCode {
                value: core::mem::transmute::<usize, fn(u32) -> u64>(at[0]),
                effect: core::mem::transmute::<usize, fn(*mut u64, u64)>(at[1]),
            }
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum State {
    Near,
    Far,
    Null,
    Ret0,
}
use State::*;

const STATES: [State; 4] = [Near, Far, Null, Ret0];

/// A walk through the four states that takes every ordered pair of
/// distinct states once (an Euler circuit of the complete digraph).
const TOUR: [State; 13] = [
    Near, Far, Null, Ret0, Near, Null, Far, Ret0, Far, Near, Ret0, Null, Near,
];

/// A function's address, as the trampoline stores it.
fn addr<F: static_call::FnPtr>(f: F) -> u64 {
    f.addr() as u64
}

type EffectKey = static_call::StaticCall<fn(*mut u64, u64)>;

fn set_effect(key: &EffectKey, s: State) {
    match s {
        Near => key.update(near_effect),
        Far => key.update(far_code().effect),
        Null => key.update_null(),
        Ret0 => key.update_ret0(),
    }
    .unwrap_or_else(|e| panic!("{} -> {s:?}: {e}", key.name()));
}

/// What a call with `v` does to a cell in state `s`.
fn effect_of(s: State, v: u64) -> u64 {
    match s {
        Near => v + NEAR,
        Far => v + FAR,
        Null | Ret0 => UNTOUCHED,
    }
}

fn call_effect(key: &EffectKey, v: u64) -> u64 {
    let mut cell = UNTOUCHED;
    key.trampoline()(&mut cell, v);
    cell
}

fn window(key_tramp: usize) -> [u8; a64::TRAMPOLINE_LEN] {
    // SAFETY: a live trampoline is readable.
    unsafe { core::ptr::read_volatile((key_tramp - 8) as *const [u8; a64::TRAMPOLINE_LEN]) }
}

fn decoded(tramp: usize) -> a64::Trampoline {
    a64::decode(tramp, &window(tramp)).expect("well-formed trampoline")
}

fn ret0_addr(key: &EffectKey) -> usize {
    let before = key.query();
    key.update_ret0().unwrap();
    let addr = key.query().unwrap() as usize;
    match before {
        Some(f) => key.update(f).unwrap(),
        None => key.update_null().unwrap(),
    }
    addr
}

#[test]
fn calls_are_direct_branches_to_the_trampoline() {
    assert_eq!(VALUE.call(5), 1005);
    assert_eq!(VALUE.trampoline()(6), 1006);
    // As assembled: no literal yet, and a Rust-ABI key's `b` leads to its
    // init shim; `query` answers the function itself.
    unsafe extern "Rust" {
        #[link_name = "__SCI__UNTOUCHED_KEY"]
        safe fn init_shim(x: u32) -> u64;
    }
    let t = decoded(UNTOUCHED_KEY.trampoline_addr());
    assert_eq!(t.branch, Branch::B(addr(init_shim as fn(u32) -> u64)));
    assert_eq!(t.target, 0);
    assert!(t.never_updated());
    assert_eq!(
        UNTOUCHED_KEY.query().map(addr),
        Some(addr(near_value as fn(u32) -> u64))
    );
    assert_eq!(UNTOUCHED_KEY.call(2), 1002);
}

#[test]
fn null_and_ret0_keys_start_as_declared() {
    let t = decoded(NULL_KEY.trampoline_addr());
    assert_eq!((t.target, t.branch), (0, Branch::Nop));
    assert_eq!(call_effect(&NULL_KEY, 3), UNTOUCHED);
    assert!(NULL_KEY.query().is_none());
    assert_eq!(RET0_KEY.call(9), 0);
    assert!(RET0_KEY.is_ret0());
    assert!(matches!(
        decoded(RET0_KEY.trampoline_addr()).branch,
        Branch::B(_)
    ));
}

/// Every trampoline in the binary, as disassembled by binutils, has exactly
/// the designed shape, sits in `.static_call.text` and has its literal in a
/// 16-byte aligned window just before the entry.
#[test]
fn trampolines_disassemble_to_the_expected_shape() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("aarch64-linux-gnu-objdump")
        .args(["-d", "-j", ".static_call.text"])
        .arg(&exe)
        .output()
        .expect("aarch64-linux-gnu-objdump (cargo xtask setup installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut found = 0;
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(header) = line.strip_suffix(">:") else {
            continue;
        };
        let Some((addr, name)) = header.split_once(" <") else {
            continue;
        };
        // `<__SCT__X-0x8>` labels the literal before the entry.
        if !name.starts_with("__SCT__") || name.contains(['-', '+']) {
            continue;
        }
        let tramp = u64::from_str_radix(addr, 16).unwrap();
        assert_eq!((tramp - 8) % 16, 0, "{name}: window not 16-byte aligned");
        let body: Vec<(u32, String)> = (0..6)
            .map(|_| {
                let l = lines.next().expect("instruction");
                let mut cols = l.split('\t');
                cols.next();
                let word = u32::from_str_radix(cols.next().unwrap().trim(), 16).unwrap();
                let asm = cols.collect::<Vec<_>>().join(" ");
                (word, asm)
            })
            .collect();
        let mnemonics: Vec<&str> = body
            .iter()
            .map(|(_, a)| a.split_whitespace().next().unwrap())
            .collect();
        assert_eq!(mnemonics[0], "bti", "{name}: {body:?}");
        assert!(
            mnemonics[1] == "b" || mnemonics[1] == "nop",
            "{name}: {body:?}"
        );
        assert_eq!(
            &mnemonics[2..],
            ["ldr", "cbz", "br", "ret"],
            "{name}: {body:?}"
        );
        assert!(
            body[2].1.contains(&format!("x16, {:x}", tramp - 8)),
            "{name}: ldr {:?}",
            body[2]
        );
        assert!(
            body[3].1.contains(&format!("x16, {:x}", tramp + 20)),
            "{name}: cbz {:?}",
            body[3]
        );
        assert!(body[4].1.contains("x16"), "{name}: br {:?}", body[4]);
        found += 1;
    }
    assert_eq!(found, 9, "expected every key's trampoline:\n{text}");
}

#[test]
fn every_transition_in_both_directions_calls_the_right_target() {
    let ret0 = ret0_addr(&EFFECT);
    let far = far_code().effect as usize;
    let mut pairs = std::collections::HashSet::new();
    set_effect(&EFFECT, TOUR[0]);
    for step in TOUR.windows(2) {
        let (from, to) = (step[0], step[1]);
        assert_eq!(call_effect(&EFFECT, 11), effect_of(from, 11));
        set_effect(&EFFECT, to);
        assert_eq!(
            call_effect(&EFFECT, 11),
            effect_of(to, 11),
            "{from:?} -> {to:?}"
        );
        let t = decoded(EFFECT.trampoline_addr());
        let expected = match to {
            Near => (
                addr(near_effect as fn(*mut u64, u64)),
                Branch::B(addr(near_effect as fn(*mut u64, u64))),
            ),
            Far => (far as u64, Branch::Nop),
            Null => (0, Branch::Nop),
            Ret0 => (ret0 as u64, Branch::B(ret0 as u64)),
        };
        assert_eq!((t.target, t.branch), expected, "{from:?} -> {to:?}");
        pairs.insert((from, to));
    }
    assert_eq!(pairs.len(), 12, "the tour covers every ordered pair");

    // The value key: near, far and RET0 (NULL is refused at compile time
    // for a non-() return type).
    for (f, expect) in [
        (far_code().value, 2005),
        (near_value as fn(u32) -> u64, 1005),
        (far_code().value, 2005),
    ] {
        VALUE.update(f).unwrap();
        assert_eq!(VALUE.call(5), expect);
        VALUE.update_ret0().unwrap();
        assert_eq!(VALUE.call(5), 0);
        assert!(VALUE.is_ret0());
    }
    VALUE.update(near_value).unwrap();
    assert_eq!(VALUE.query().map(|f| f(1)), Some(1001));
}

/// Writes a window by hand (under the patch lock) and syncs the I-cache.
fn write_raw(tramp: usize, p: Patch) {
    let _lock = static_call::writer::patch_lock();
    // SAFETY: the window belongs to a test key only this test touches.
    unsafe {
        Remap.write(tramp - 8, &p.literal.to_le_bytes()).unwrap();
        Remap.write(tramp, &p.entry.to_le_bytes()).unwrap();
    }
    a64::flush_icache_range(tramp - 8, 16);
}

/// The mixed-state argument, executed: for every transition, each of the
/// four (literal, branch) combinations a CPU might see while the two stores
/// propagate produces the old or the new behaviour.
#[test]
fn every_torn_state_behaves_as_old_or_new() {
    let tramp = TORN_EFFECT.trampoline_addr();
    let ret0 = ret0_addr(&TORN_EFFECT) as u64;
    let effect_targets = STATES.map(|s| {
        let target = match s {
            Near => addr(near_effect as fn(*mut u64, u64)),
            Far => addr(far_code().effect),
            Null => 0,
            Ret0 => ret0,
        };
        (target, effect_of(s, 5))
    });
    let checked = check_torn_states(tramp, &effect_targets, || call_effect(&TORN_EFFECT, 5));
    assert_eq!(checked, 48);

    // The value key, whose results tell near, far and RET0 apart.
    TORN_VALUE.update_ret0().unwrap();
    let value_targets = [
        (addr(near_value as fn(u32) -> u64), 1005),
        (addr(far_code().value), 2005),
        (addr(TORN_VALUE.query().unwrap()), 0),
    ];
    let checked = check_torn_states(TORN_VALUE.trampoline_addr(), &value_targets, || {
        TORN_VALUE.call(5)
    });
    assert_eq!(checked, 24);
    assert_eq!(TORN_VALUE.call(5), 1005);
}

/// For every ordered pair of `(target, expected result)` states, writes the
/// four (literal, branch) combinations into the trampoline and checks that
/// `call` gives the old or the new result. Leaves the first state in place.
/// Returns how many combinations were checked.
fn check_torn_states(tramp: usize, states: &[(u64, u64)], call: impl Fn() -> u64) -> usize {
    let plan = |target| a64::plan(tramp as u64, target).unwrap();
    let mut checked = 0;
    for &(old, old_result) in states {
        for &(new, new_result) in states {
            if old == new {
                continue;
            }
            let (po, pn) = (plan(old), plan(new));
            for (lit, entry) in [(po, po), (pn, po), (po, pn), (pn, pn)] {
                write_raw(
                    tramp,
                    Patch {
                        literal: lit.literal,
                        entry: entry.entry,
                    },
                );
                let got = call();
                assert!(
                    got == old_result || got == new_result,
                    "{old:#x} -> {new:#x}, literal {:#x}, branch {:#x}: got {got}",
                    lit.literal,
                    entry.branch_word(),
                );
                checked += 1;
            }
        }
    }
    write_raw(tramp, plan(states[0].0));
    checked
}

/// A writer that fails on its `fail_at`-th write (counting from 0), and
/// on every later one when `keep_failing`; or pretends to write and does
/// nothing; or fails its synchronisation.
#[derive(Default)]
struct Faulty {
    fail_at: usize,
    keep_failing: bool,
    writes: AtomicUsize,
    lie: bool,
    /// How many synchronisations fail before they succeed again.
    fail_syncs: AtomicUsize,
}

// SAFETY: on failure it stores nothing; otherwise it delegates to Remap
// (or, when lying, stores nothing, which `write_patch` must detect).
unsafe impl TextWriter for Faulty {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        let n = self.writes.fetch_add(1, Ordering::Relaxed);
        if n == self.fail_at || (self.keep_failing && n > self.fail_at) {
            return Err(Error::WriterFailed {
                what: "pretend to fail",
                errno: 13,
            });
        }
        if self.lie {
            return Ok(());
        }
        // SAFETY: forwarded contract.
        unsafe { Remap.write(addr, bytes) }
    }

    fn sync_cores(&self) -> Result<(), Error> {
        let failing = self.fail_syncs.load(Ordering::Relaxed);
        if failing > 0 {
            self.fail_syncs.store(failing - 1, Ordering::Relaxed);
            return Err(Error::WriterFailed {
                what: "pretend to fail to synchronise",
                errno: 0,
            });
        }
        Remap.sync_cores()
    }
}

#[test]
fn bad_input_is_refused_and_changes_nothing() {
    let tramp = BAD.trampoline_addr();
    let pristine = window(tramp);
    let far = far_code().value;

    // Puts the window back as it was, by hand, after a failed restore.
    let reset = || {
        {
            let _lock = static_call::writer::patch_lock();
            // SAFETY: BAD's window belongs to this test.
            unsafe {
                Remap.write(tramp - 8, &pristine[..8]).unwrap();
                Remap.write(tramp, &pristine[8..16]).unwrap();
            }
            a64::flush_icache_range(tramp - 8, 16);
        }
        assert_eq!(window(tramp), pristine);
    };
    // BAD was never updated: write 0 publishes its literal (its current
    // target), 1 and 2 are the new literal and branch word. A writer
    // failing at each step, or failing to synchronise after all of them:
    // the update is undone and the key calls its old target. The bytes are
    // as they were but for the published literal, which stays once the
    // update may have shown a CPU its `nop` (that CPU may be about to load
    // the literal: a 0 there would make its call return).
    let mut published = pristine;
    let current = BAD.query().map_or(0, |f| f as usize as u64);
    published[..8].copy_from_slice(&current.to_le_bytes());
    for fail_at in [0, 1, 2] {
        let w = Faulty {
            fail_at,
            ..Faulty::default()
        };
        let err = BAD.update_with(far, &w).unwrap_err().error;
        assert!(
            matches!(err, Error::WriterFailed { errno: 13, .. }),
            "{err}"
        );
        let expected = if fail_at == 0 { pristine } else { published };
        assert_eq!(window(tramp), expected, "fail_at {fail_at}");
        assert_eq!(BAD.call(1), 1001, "fail_at {fail_at}");
        reset();
    }
    let w = Faulty {
        fail_at: usize::MAX,
        fail_syncs: AtomicUsize::new(1),
        ..Faulty::default()
    };
    let err = BAD.update_with(far, &w).unwrap_err().error;
    assert!(matches!(err, Error::WriterFailed { errno: 0, .. }), "{err}");
    assert_eq!(window(tramp), published, "failed sync");
    assert_eq!(BAD.call(1), 1001);
    // A window left so is still recognised: the next update, with a writer
    // that can never synchronise, gets as far as its synchronisation, and
    // so cannot restore either.
    let w = Faulty {
        fail_at: usize::MAX,
        fail_syncs: AtomicUsize::new(usize::MAX),
        ..Faulty::default()
    };
    let err = BAD.update_with(far, &w).unwrap_err().error;
    assert!(matches!(err, Error::RestoreFailed { .. }), "{err}");
    assert_eq!(BAD.call(1), 1001);
    reset();
    // When putting the old bytes back fails too, the error says so.
    let w = Faulty {
        fail_at: 2,
        keep_failing: true,
        ..Faulty::default()
    };
    let err = BAD.update_with(far, &w).unwrap_err().error;
    assert!(matches!(err, Error::RestoreFailed { .. }), "{err}");
    // Whatever is left calls the old or the new target.
    let r = BAD.call(1);
    assert!(r == 1001 || r == FAR + 1, "{r}");
    reset();
    // A writer that reports success without writing (text not writable).
    let w = Faulty {
        lie: true,
        fail_at: usize::MAX,
        ..Faulty::default()
    };
    let refused = BAD.update_with(far, &w).unwrap_err();
    assert!(matches!(refused.error, Error::VerifyFailed { .. }));
    assert_eq!(refused.key, "BAD", "the error names the key");
    assert_eq!(window(tramp), pristine);

    // Corrupt each instruction word of the trampoline in turn.
    for offset in [8usize, 16, 20, 24, 28] {
        let mut bytes = pristine;
        bytes[offset] ^= 0x20;
        let word_at = (tramp - 8 + offset) & !7;
        let start = word_at - (tramp - 8);
        {
            let _lock = static_call::writer::patch_lock();
            // SAFETY: BAD's window belongs to this test.
            unsafe { Remap.write(word_at, &bytes[start..start + 8]).unwrap() };
        }
        let corrupted = window(tramp);
        let err = BAD.update(far).unwrap_err().error;
        assert!(
            matches!(err, Error::UnrecognisedTrampoline { offset: o, .. } if o == offset),
            "offset {offset}: {err}"
        );
        assert_eq!(window(tramp), corrupted, "refused update wrote something");
        let _lock = static_call::writer::patch_lock();
        // SAFETY: as above; restores the original word.
        unsafe { Remap.write(word_at, &pristine[start..start + 8]).unwrap() };
    }
    assert_eq!(window(tramp), pristine);

    // Misaligned trampoline and misaligned target, through the backend.
    let _lock = static_call::writer::patch_lock();
    // SAFETY: both calls are refused before reading or writing anything
    // but the live trampoline.
    unsafe {
        assert!(matches!(
            Aarch64::retarget(
                tramp + 4,
                &Slot::new(core::ptr::null_mut()),
                far as usize,
                &Remap,
                (),
            ),
            Err(Error::MisalignedTrampoline { align: 16, .. })
        ));
        assert!(matches!(
            Aarch64::retarget(
                tramp,
                &Slot::new(core::ptr::null_mut()),
                far as usize + 2,
                &Remap,
                (),
            ),
            Err(Error::MisalignedTarget { .. })
        ));
    }
    // Bytes that are not a trampoline at all.
    #[repr(align(16))]
    struct Fake([u8; 32]);
    let fake = Fake([0x5a; 32]);
    // SAFETY: the fake window is readable and is refused before any write.
    let err = unsafe {
        Aarch64::retarget(
            fake.0.as_ptr() as usize + 8,
            &Slot::new(core::ptr::null_mut()),
            far as usize,
            &Remap,
            (),
        )
    };
    assert!(
        matches!(err, Err(Error::UnrecognisedTrampoline { offset: 8, .. })),
        "{err:?}"
    );
    assert_eq!(fake.0, [0x5a; 32]);
    assert_eq!(window(tramp), pristine);
    assert_eq!(BAD.call(1), 1001);
}

/// Four threads call continuously while the main thread walks the key
/// through every transition. Each call is checked against the update
/// generations around it: it must have the effect of a state that was
/// installed at some point during the call, and (the writer synchronizes
/// all CPUs) never of a state replaced before the call began.
#[test]
fn concurrent_calls_during_updates_always_reach_a_valid_target() {
    const CALLERS: usize = 4;
    const UPDATES: usize = 12_000;
    let generation = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    set_effect(&STRESS, TOUR[0]);
    let state_at = |g: u64| TOUR[(g as usize) % (TOUR.len() - 1)];

    let callers: Vec<_> = (0..CALLERS)
        .map(|id| {
            let (generation, stop) = (generation.clone(), stop.clone());
            std::thread::spawn(move || {
                let (mut calls, mut wrong) = (0u64, 0u64);
                while !stop.load(Ordering::Relaxed) {
                    let v = calls % 997;
                    let before = generation.load(Ordering::Acquire);
                    let mut cell = UNTOUCHED;
                    STRESS.call(&mut cell, v);
                    let after = generation.load(Ordering::Acquire);
                    // Generation g's state was installed when the counter
                    // read g; a call may also see the state being
                    // installed (after + 1).
                    let ok = (before..=after + 1).any(|g| effect_of(state_at(g), v) == cell);
                    if !ok {
                        wrong += 1;
                        eprintln!(
                            "caller {id}: v={v} got {cell} between generations {before}..={after}"
                        );
                    }
                    calls += 1;
                }
                (calls, wrong)
            })
        })
        .collect();

    for g in 1..=UPDATES as u64 {
        set_effect(&STRESS, state_at(g));
        generation.store(g, Ordering::Release);
    }
    stop.store(true, Ordering::Relaxed);
    let (mut calls, mut wrong) = (0, 0);
    for c in callers {
        let (n, w) = c.join().expect("a caller faulted");
        assert!(n > 0, "a caller never ran");
        calls += n;
        wrong += w;
    }
    // Straight to stderr, past libtest's capture, so CI logs show the figures.
    let _ = writeln!(
        std::io::stderr(),
        "aarch64 stress: {CALLERS} callers, {UPDATES} updates, {calls} calls, {wrong} wrong, 0 faults"
    );
    assert_eq!(wrong, 0);
    assert!(calls >= UPDATES as u64, "callers barely ran: {calls} calls");
}

/// The test binary is a default (position-independent) executable, and no
/// relocation lands in text: the assembler leaves every literal 0 and the
/// initial `b` is PC-relative, so the loader never has to write text
/// (which hardened systems and lld by default refuse).
#[test]
fn the_binary_is_a_pie_without_text_relocations() {
    let exe = std::env::current_exe().unwrap();
    let header = Command::new("aarch64-linux-gnu-readelf")
        .arg("-h")
        .arg(&exe)
        .output()
        .expect("aarch64-linux-gnu-readelf (cargo xtask setup installs it)");
    let header = String::from_utf8(header.stdout).unwrap();
    assert!(
        header.contains("DYN (Position-Independent Executable file)"),
        "not a PIE:\n{header}"
    );
    let relocs = Command::new("aarch64-linux-gnu-readelf")
        .args(["-r", "-S", "-W"])
        .arg(&exe)
        .output()
        .unwrap();
    let relocs = String::from_utf8(relocs.stdout).unwrap();
    // No dynamic relocation's offset falls inside .static_call.text.
    let section = relocs
        .lines()
        .find(|l| l.contains(" .static_call.text "))
        .expect(".static_call.text");
    let cols: Vec<&str> = section.split_whitespace().collect();
    let at = cols.iter().position(|c| *c == ".static_call.text").unwrap();
    let start = u64::from_str_radix(cols[at + 2], 16).unwrap();
    let size = u64::from_str_radix(cols[at + 4], 16).unwrap();
    let inside: Vec<&str> = relocs
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .next()
                .and_then(|o| u64::from_str_radix(o, 16).ok())
                .is_some_and(|o| (start..start + size).contains(&o))
        })
        .collect();
    assert!(inside.is_empty(), "relocations in trampolines: {inside:?}");
    the_binary_has_no_text_relocations();
}

fn the_binary_has_no_text_relocations() {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("aarch64-linux-gnu-readelf")
        .arg("-d")
        .arg(&exe)
        .output()
        .expect("aarch64-linux-gnu-readelf (cargo xtask setup installs it)");
    assert!(out.status.success());
    let dynamic = String::from_utf8(out.stdout).unwrap();
    assert!(
        !dynamic.contains("TEXTREL"),
        "text relocations present:\n{dynamic}"
    );
}

// ---------------------------------------------------------------------
// BTI: a writer keeps the guard of the page it rewrites.

/// What a child of [`writers_keep_the_bti_guard_of_the_page_they_rewrite`]
/// reports by its exit code, if it is not killed first.
const BTI_WRONG_RESULT: i32 = 10;
const BTI_WRITE_FAILED: i32 = 11;
const BTI_NOT_WRITTEN: i32 = 12;
const BTI_UNGUARDED: i32 = 20;

/// Issue 12.7: `Remap` and `Mprotect` rewrite a whole page; on arm64 the
/// page of an object built for BTI is mapped with `PROT_BTI`, and the
/// writer must keep it, or every function on that page loses its guard.
///
/// A BTI-marked library (`tests/data/bti_guarded.S`) is loaded; a child
/// process rewrites a word of its text page through each writer, checks a
/// landing pad still works, and then calls a function without one through
/// a pointer: on a guarded page that raises SIGILL. A baseline child that
/// writes nothing shows BTI is enforced here at all.
#[test]
fn writers_keep_the_bti_guard_of_the_page_they_rewrite() {
    use static_call::writer::linux::Mprotect;
    let path = std::env::var("STATIC_CALL_BTI_LIBRARY").expect(
        "STATIC_CALL_BTI_LIBRARY: run through `cargo xtask test aarch64-linux`, which \
         assembles tests/data/bti_guarded.S",
    );
    let path = std::ffi::CString::new(path).unwrap();
    // Loaded (and looked up) before forking: the children only call and
    // write.
    // SAFETY: a library of three symbols and no initialisers.
    let lib = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW) };
    assert!(!lib.is_null(), "dlopen failed");
    let sym = |name: &std::ffi::CStr| {
        // SAFETY: `lib` is a live handle; `name` is NUL-terminated.
        let p = unsafe { libc::dlsym(lib, name.as_ptr()) };
        assert!(!p.is_null(), "{name:?} missing");
        p as usize
    };
    let (no_pad, with_pad, scratch) = (sym(c"no_pad"), sym(c"with_pad"), sym(c"scratch"));
    assert_eq!(no_pad & !0xfff, scratch & !0xfff, "one page");

    let writers: [(&str, Option<&dyn TextWriter>); 3] = [
        ("no writer", None),
        ("Remap", Some(&Remap)),
        ("Mprotect", Some(&Mprotect)),
    ];
    for (name, writer) in writers {
        // Held across the fork so that no other test thread holds it in
        // the child's copy of memory.
        let lock = static_call::writer::patch_lock();
        // SAFETY: the child only makes syscalls, calls the library's
        // functions and `_exit`s; it takes no lock another thread could
        // hold (the patch lock is held by this thread, copied as held).
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: all of the child's work; see above.
            unsafe {
                let no_core = libc::rlimit {
                    rlim_cur: 0,
                    rlim_max: 0,
                };
                libc::setrlimit(libc::RLIMIT_CORE, &no_core);
                if let Some(w) = writer {
                    // The lock is held (the parent's thread took it).
                    let word = 0x5a5a_5a5a_5a5a_5a5au64.to_le_bytes();
                    if w.write(scratch, &word).is_err() || w.sync_cores().is_err() {
                        libc::_exit(BTI_WRITE_FAILED);
                    }
                    if core::ptr::read_volatile(scratch as *const [u8; 8]) != word {
                        libc::_exit(BTI_NOT_WRITTEN);
                    }
                }
                let with_pad: extern "C" fn() -> u64 = core::mem::transmute(with_pad);
                if with_pad() != 2 {
                    libc::_exit(BTI_WRONG_RESULT);
                }
                let no_pad: extern "C" fn() -> u64 = core::mem::transmute(no_pad);
                core::hint::black_box(no_pad());
                libc::_exit(BTI_UNGUARDED);
            }
        }
        drop(lock);
        assert!(pid > 0, "fork failed");
        let mut status = 0;
        // SAFETY: waits for our own child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        let what = if libc::WIFSIGNALED(status) {
            format!("killed by signal {}", libc::WTERMSIG(status))
        } else {
            match libc::WEXITSTATUS(status) {
                BTI_UNGUARDED => "a call without a landing pad ran: the page lost PROT_BTI".into(),
                BTI_WRITE_FAILED => "the write failed".into(),
                BTI_NOT_WRITTEN => "the word did not read back".into(),
                BTI_WRONG_RESULT => "the landing pad returned a wrong value".into(),
                code => format!("exited with {code}"),
            }
        };
        assert!(
            libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGILL,
            "{name}: {what} (expected SIGILL from the unguarded call)"
        );
    }
}
