//! `extern "C"` keys from the caller's side: the call the crate emits with
//! `asm!` passes every argument and result as the C ABI does, keeps the
//! caller's live values, reaches every state a key can be in (near, far,
//! NULL, RET0), and stays correct while another thread retargets the key.
//!
//! Runs natively on x86-64, under qemu-aarch64 and qemu-riscv64 (threads
//! are host threads), and on the generic backend (`--features
//! force-generic`, and riscv64, which has no backend of its own).
#![cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64"
    )
))]

mod common;

use std::hint::black_box;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use static_call::StaticCall;

const NEAR: u64 = 1000;
const FAR: u64 = 2000;
const NEAR2: u64 = 3000;
const UNTOUCHED: u64 = u64::MAX;

extern "C" fn near_value(x: u32) -> u64 {
    u64::from(x) + NEAR
}
extern "C" fn near2_value(x: u32) -> u64 {
    u64::from(x) + NEAR2
}
extern "C" fn far_value_target(x: u32) -> u64 {
    u64::from(x) + FAR
}

/// # Safety
///
/// `out` must be valid for writes.
unsafe fn write_effect(out: *mut u64, v: u64) {
    // SAFETY: per the contract, which every caller here keeps.
    unsafe { out.write_volatile(v) }
}
extern "C" fn near_effect(out: *mut u64, v: u64) {
    // SAFETY: callers pass a pointer to a live local.
    unsafe { write_effect(out, v + NEAR) }
}
extern "C" fn near2_effect(out: *mut u64, v: u64) {
    // SAFETY: as above.
    unsafe { write_effect(out, v + NEAR2) }
}
extern "C" fn far_effect_target(out: *mut u64, v: u64) {
    // SAFETY: as above.
    unsafe { write_effect(out, v + FAR) }
}

static_call::static_call! {
    static VALUE: extern "C" fn(u32) -> u64 = near_value;
    static EFFECT: extern "C" fn(*mut u64, u64) = near_effect;
    static STRESS_VALUE: extern "C" fn(u32) -> u64 = near_value;
    static STRESS_EFFECT: extern "C" fn(*mut u64, u64) = NULL;
}

/// Tests that update keys run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------
// The ABI: every argument position, every supported type, every result.
// ---------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
extern "C" fn mix8(a: u8, b: i8, c: u16, d: i16, e: u32, f: i32, g: u64, h: i64) -> i64 {
    // Floating point in the callee clobbers vector registers the caller
    // may hold live values in.
    let scale = black_box(1.5f64);
    let weighted = (f64::from(a) * scale) as i64;
    weighted
        .wrapping_add(i64::from(b) << 8)
        .wrapping_add(i64::from(c) << 16)
        .wrapping_add(i64::from(d) << 24)
        .wrapping_add(i64::from(e).wrapping_mul(3))
        .wrapping_add(i64::from(f).wrapping_mul(5))
        .wrapping_add((g as i64).wrapping_mul(7))
        .wrapping_add(h.wrapping_mul(11))
}

extern "C" fn mix7(
    a: bool,
    b: u16,
    c: *const u8,
    d: &'static u64,
    e: Option<&'static u64>,
    f: usize,
    g: isize,
) -> u64 {
    u64::from(a)
        .wrapping_add(u64::from(b) << 1)
        .wrapping_add((c as u64).wrapping_mul(3))
        .wrapping_add(d.wrapping_mul(5))
        .wrapping_add(e.map_or(17, |v| v.wrapping_mul(7)))
        .wrapping_add((f as u64).wrapping_mul(13))
        .wrapping_add((g as u64).wrapping_mul(19))
}

extern "C" fn count0() -> u64 {
    0x5eed
}
extern "C" fn odd(x: u32) -> bool {
    x % 2 == 1
}
extern "C" fn low_byte(x: i32) -> i8 {
    x as i8
}
static TABLE: [u64; 4] = [10, 20, 30, 40];
extern "C" fn entry(i: u32) -> &'static u64 {
    &TABLE[i as usize % TABLE.len()]
}
extern "C" fn maybe_entry(i: u32) -> Option<&'static u64> {
    TABLE.get(i as usize)
}

static_call::static_call! {
    static MIX8: extern "C" fn(u8, i8, u16, i16, u32, i32, u64, i64) -> i64 = mix8;
    static MIX7: extern "C" fn(bool, u16, *const u8, &'static u64, Option<&'static u64>, usize, isize) -> u64 = mix7;
    static COUNT0: extern "C" fn() -> u64 = count0;
    static ODD: extern "C" fn(u32) -> bool = odd;
    static LOW_BYTE: extern "C" fn(i32) -> i8 = low_byte;
    static ENTRY: extern "C" fn(u32) -> &'static u64 = entry;
    static MAYBE_ENTRY: extern "C" fn(u32) -> Option<&'static u64> = maybe_entry;
}

/// A small deterministic generator, so failures reproduce.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 ^ (self.0 >> 29)
    }
}

#[test]
fn every_argument_and_result_arrives_as_the_compiler_passes_it() {
    let mut rng = Lcg(42);
    let edges = [
        0u64,
        1,
        0x7f,
        0x80,
        0xff,
        0x8000,
        0xffff_ffff,
        1 << 63,
        u64::MAX,
    ];
    for i in 0..2000 {
        let r = |rng: &mut Lcg| {
            if i < edges.len() * 8 {
                edges[(rng.next() as usize) % edges.len()]
            } else {
                rng.next()
            }
        };
        let a = [r(&mut rng), r(&mut rng), r(&mut rng), r(&mut rng)];
        let b = [r(&mut rng), r(&mut rng), r(&mut rng), r(&mut rng)];
        // Values the caller keeps live across the call, in integer and
        // vector registers: a wrong clobber list corrupts them.
        let live_int = black_box(a[0] ^ b[3]);
        let live_float = black_box((a[1] >> 11) as f64 * 0.5);
        let args8 = (
            a[0] as u8,
            a[1] as i8,
            a[2] as u16,
            a[3] as i16,
            b[0] as u32,
            b[1] as i32,
            b[2],
            b[3] as i64,
        );
        let via_key = MIX8.call(
            args8.0, args8.1, args8.2, args8.3, args8.4, args8.5, args8.6, args8.7,
        );
        let via_compiler = black_box(mix8 as extern "C" fn(_, _, _, _, _, _, _, _) -> i64)(
            args8.0, args8.1, args8.2, args8.3, args8.4, args8.5, args8.6, args8.7,
        );
        assert_eq!(via_key, via_compiler, "mix8{args8:?}");

        let c = a[0] as u16;
        let ptr = a[1] as usize as *const u8;
        let e = if a[2] % 2 == 0 { Some(&TABLE[1]) } else { None };
        let via_key = MIX7.call(
            a[3] % 2 == 1,
            c,
            ptr,
            &TABLE[2],
            e,
            b[0] as usize,
            b[1] as isize,
        );
        let via_compiler = black_box(mix7 as extern "C" fn(_, _, _, _, _, _, _) -> u64)(
            a[3] % 2 == 1,
            c,
            ptr,
            &TABLE[2],
            e,
            b[0] as usize,
            b[1] as isize,
        );
        assert_eq!(via_key, via_compiler);

        let x = b[2] as u32;
        assert_eq!(COUNT0.call(), 0x5eed);
        assert_eq!(ODD.call(x), odd(x));
        assert_eq!(LOW_BYTE.call(x as i32), low_byte(x as i32));
        assert!(std::ptr::eq(ENTRY.call(x), entry(x)));
        assert_eq!(MAYBE_ENTRY.call(x % 6), maybe_entry(x % 6));

        assert_eq!(live_int, a[0] ^ b[3]);
        assert_eq!(live_float, (a[1] >> 11) as f64 * 0.5);
    }
}

// ---------------------------------------------------------------------
// Every state and transition, through the crate-emitted call.
// ---------------------------------------------------------------------

/// Code mapped far from all text (beyond a `jmp rel32` / `b`), forwarding
/// to a Rust `extern "C"` function: the far state of a key.
struct FarCode {
    value: extern "C" fn(u32) -> u64,
    effect: extern "C" fn(*mut u64, u64),
}

/// A forwarding thunk: x86-64 `movabs $target, %r11; jmp *%r11` (r11
/// carries no argument); arm64 `bti c; ldr x16, target; br x16` (x16 is
/// the intra-procedure-call scratch register); riscv64 `auipc t0, 0;
/// ld t0, 16(t0); jr t0` (t0 is the alternate link register, free here).
fn thunk(target: usize) -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    {
        static_call::arch::x86_64::insn::encode_movabs_r11_jmp(target as u64).to_vec()
    }
    #[cfg(target_arch = "aarch64")]
    {
        use static_call::arch::aarch64::insn;
        let words = [
            insn::BTI_C,
            insn::encode_ldr_literal_x(16, 12).unwrap(),
            insn::BR_X16,
            insn::NOP,
        ];
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.extend_from_slice(&(target as u64).to_le_bytes());
        bytes
    }
    #[cfg(target_arch = "riscv64")]
    {
        let words: [u32; 4] = [
            0x0000_0297, // auipc t0, 0
            0x0102_b283, // ld t0, 16(t0)
            0x0002_8067, // jr t0
            0x0000_0013, // nop (the literal is 8-byte aligned at 16)
        ];
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.extend_from_slice(&(target as u64).to_le_bytes());
        bytes
    }
}

fn far_code() -> &'static FarCode {
    static FAR: std::sync::OnceLock<FarCode> = std::sync::OnceLock::new();
    FAR.get_or_init(|| {
        let targets = [
            far_value_target as extern "C" fn(u32) -> u64 as usize,
            far_effect_target as extern "C" fn(*mut u64, u64) as usize,
        ];
        let thunks: Vec<Vec<u8>> = targets.iter().map(|&t| thunk(t)).collect();
        let at = common::map_far_code(VALUE.trampoline_addr(), &thunks);
        // SAFETY: each thunk forwards to a function of this signature.
        unsafe {
            FarCode {
                value: std::mem::transmute::<usize, extern "C" fn(u32) -> u64>(at[0]),
                effect: std::mem::transmute::<usize, extern "C" fn(*mut u64, u64)>(at[1]),
            }
        }
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Near,
    Near2,
    Far,
    Null,
    Ret0,
}
use State::*;

type ValueKey = StaticCall<extern "C" fn(u32) -> u64>;
type EffectKey = StaticCall<extern "C" fn(*mut u64, u64)>;

fn set_value(key: &ValueKey, s: State) {
    match s {
        Near => key.update(near_value),
        Near2 => key.update(near2_value),
        Far => key.update(far_code().value),
        Ret0 => key.update_ret0(),
        Null => unreachable!("a value key cannot be NULL"),
    }
    .unwrap_or_else(|e| panic!("{} -> {s:?}: {e}", key.name()));
}

fn set_effect(key: &EffectKey, s: State) {
    match s {
        Near => key.update(near_effect),
        Near2 => key.update(near2_effect),
        Far => key.update(far_code().effect),
        Null => key.update_null(),
        Ret0 => key.update_ret0(),
    }
    .unwrap_or_else(|e| panic!("{} -> {s:?}: {e}", key.name()));
}

fn value_of(s: State, x: u32) -> u64 {
    match s {
        Near => u64::from(x) + NEAR,
        Near2 => u64::from(x) + NEAR2,
        Far => u64::from(x) + FAR,
        Ret0 => 0,
        Null => unreachable!(),
    }
}

fn effect_of(s: State, v: u64) -> u64 {
    match s {
        Near => v + NEAR,
        Near2 => v + NEAR2,
        Far => v + FAR,
        Null | Ret0 => UNTOUCHED,
    }
}

fn value_target(s: State) -> Option<usize> {
    match s {
        Near => Some(near_value as extern "C" fn(u32) -> u64 as usize),
        Near2 => Some(near2_value as extern "C" fn(u32) -> u64 as usize),
        Far => Some(far_code().value as usize),
        Ret0 | Null => None,
    }
}

fn effect_target(s: State) -> Option<usize> {
    match s {
        Near => Some(near_effect as extern "C" fn(*mut u64, u64) as usize),
        Near2 => Some(near2_effect as extern "C" fn(*mut u64, u64) as usize),
        Far => Some(far_code().effect as usize),
        Ret0 | Null => None,
    }
}

fn call_effect(key: &EffectKey, v: u64) -> u64 {
    let mut cell = UNTOUCHED;
    key.trampoline()(&mut cell, v);
    cell
}

fn check_value_key(s: State) {
    for x in [0, 1, 77, u32::MAX] {
        assert_eq!(VALUE.call(x), value_of(s, x), "VALUE in {s:?}: call");
        assert_eq!(
            VALUE.trampoline()(x),
            value_of(s, x),
            "VALUE in {s:?}: pointer"
        );
    }
    assert_eq!(VALUE.is_ret0(), s == Ret0, "VALUE in {s:?}");
    if let Some(t) = value_target(s) {
        assert_eq!(VALUE.query().map(|f| f as usize), Some(t), "VALUE in {s:?}");
    }
}

fn check_effect_key(s: State) {
    for v in [0, 5, 1 << 40] {
        let mut cell = UNTOUCHED;
        EFFECT.call(&mut cell, v);
        assert_eq!(cell, effect_of(s, v), "EFFECT in {s:?}: call");
        assert_eq!(
            call_effect(&EFFECT, v),
            effect_of(s, v),
            "EFFECT in {s:?}: pointer"
        );
    }
    assert_eq!(EFFECT.query().is_none(), s == Null, "EFFECT in {s:?}");
    assert_eq!(EFFECT.is_ret0(), s == Ret0, "EFFECT in {s:?}");
    if let Some(t) = effect_target(s) {
        assert_eq!(
            EFFECT.query().map(|f| f as usize),
            Some(t),
            "EFFECT in {s:?}"
        );
    }
}

/// Takes the key through every ordered pair of distinct states, checking
/// the state after each update.
fn every_pair(states: &[State], set: impl Fn(State), check: impl Fn(State)) -> usize {
    let mut transitions = 0;
    for &from in states {
        for &to in states.iter().filter(|&&to| to != from) {
            set(from);
            check(from);
            set(to);
            check(to);
            transitions += 1;
        }
    }
    transitions
}

#[test]
fn every_transition_in_both_directions_calls_the_right_target() {
    let _serial = serial();
    check_value_key(Near);
    check_effect_key(Near);
    let value = every_pair(
        &[Near, Near2, Far, Ret0],
        |s| set_value(&VALUE, s),
        check_value_key,
    );
    let effect = every_pair(
        &[Near, Near2, Far, Null, Ret0],
        |s| set_effect(&EFFECT, s),
        check_effect_key,
    );
    assert_eq!((value, effect), (4 * 3, 5 * 4));
    set_value(&VALUE, Near);
    set_effect(&EFFECT, Near);
}

// ---------------------------------------------------------------------
// Concurrency: calls racing with updates.
// ---------------------------------------------------------------------

/// The state the stress keys are in after update `g` (0 = as defined).
fn stress_state(g: usize) -> (State, State) {
    const VALUE_CYCLE: [State; 4] = [Near, Far, Ret0, Near2];
    const EFFECT_CYCLE: [State; 4] = [Null, Near, Far, Near2];
    (VALUE_CYCLE[g % 4], EFFECT_CYCLE[g % 4])
}

/// Callers on every core call both keys through the emitted call while the
/// main thread retargets them. Every result must belong to a state the key
/// was in during the call: the one published before it started, or a later
/// one up to the update in flight when it ended. An update that has
/// returned is never undone: a call that starts after it sees it.
#[test]
fn calls_racing_with_updates_see_the_old_or_the_new_target() {
    let _serial = serial();
    let updates = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let callers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let deadline = Instant::now() + Duration::from_secs(3);
    let calls = AtomicUsize::new(0);
    thread::scope(|scope| {
        for id in 0..callers {
            let (updates, stop, calls) = (&updates, &stop, &calls);
            scope.spawn(move || {
                let mut n = 0usize;
                let mut x = id as u32;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_add(7) % 1_000_000;
                    let before = updates.load(Ordering::Acquire);
                    let value = STRESS_VALUE.call(x);
                    let mut cell = UNTOUCHED;
                    STRESS_EFFECT.call(&mut cell, u64::from(x));
                    let after = updates.load(Ordering::Acquire);
                    let ok = |f: &dyn Fn(usize) -> bool| (before..=after + 1).any(f);
                    assert!(
                        ok(&|g| value_of(stress_state(g).0, x) == value),
                        "value {value} for x={x} not in states {before}..={}",
                        after + 1
                    );
                    assert!(
                        ok(&|g| effect_of(stress_state(g).1, u64::from(x)) == cell),
                        "effect {cell} for x={x} not in states {before}..={}",
                        after + 1
                    );
                    n += 1;
                }
                calls.fetch_add(n, Ordering::Relaxed);
            });
        }
        let mut g = 0;
        while Instant::now() < deadline || g < 200 {
            g += 1;
            let (v, e) = stress_state(g);
            set_value(&STRESS_VALUE, v);
            set_effect(&STRESS_EFFECT, e);
            updates.store(g, Ordering::Release);
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (g, n) = (updates.into_inner(), calls.into_inner());
    // Past libtest's capture, so CI logs show the figures.
    eprintln!("extern \"C\" stress: {callers} callers, {n} checked calls, {g} updates of each key");
    assert!(
        g >= 200 && n > 0,
        "the stress did not run: {g} updates, {n} calls"
    );
}

/// The stack pointer's misalignment at entry, as the callee sees it: 0
/// when the caller kept the ABI's 16-byte alignment at the call.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
extern "C" fn entry_misalignment(_: u64, _: u64, _: u64, _: u64, _: u64, _: u64, _: u64) -> u64 {
    // At entry the return address is at rsp, so rsp + 8 is the caller's
    // stack pointer at the call, which must be 16-byte aligned.
    core::arch::naked_asm!("lea rax, [rsp + 8]", "and eax, 15", "ret")
}

#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[unsafe(naked)]
extern "C" fn entry_misalignment8(
    _: u64,
    _: u64,
    _: u64,
    _: u64,
    _: u64,
    _: u64,
    _: u64,
    _: u64,
) -> u64 {
    core::arch::naked_asm!("lea rax, [rsp + 8]", "and eax, 15", "ret")
}

#[cfg(target_arch = "x86_64")]
static_call::static_call! {
    static ALIGN7: extern "C" fn(u64, u64, u64, u64, u64, u64, u64) -> u64 = entry_misalignment;
    static ALIGN8: extern "C" fn(u64, u64, u64, u64, u64, u64, u64, u64) -> u64 = entry_misalignment8;
}

/// Arguments past the sixth go on the stack; the emitted call keeps the
/// stack 16-byte aligned at the call however many it pushes.
#[cfg(target_arch = "x86_64")]
#[test]
fn stack_arguments_keep_the_call_aligned() {
    for depth in 0..4 {
        fn nest(depth: u32) -> (u64, u64) {
            if depth == 0 {
                (
                    ALIGN7.call(1, 2, 3, 4, 5, 6, 7),
                    ALIGN8.call(1, 2, 3, 4, 5, 6, 7, 8),
                )
            } else {
                let pad = black_box([depth; 3]);
                let r = nest(depth - 1);
                black_box(pad);
                r
            }
        }
        assert_eq!(nest(depth), (0, 0), "depth {depth}");
    }
}

/// An `extern "C"` function linked 512 MiB from the rest of the text
/// (`build.rs`), out of a `b`'s reach.
#[cfg(all(target_arch = "aarch64", not(feature = "force-generic")))]
#[unsafe(link_section = ".far_text")]
extern "C" fn far_initial(x: u32) -> u64 {
    u64::from(x) + FAR
}

#[cfg(all(target_arch = "aarch64", not(feature = "force-generic")))]
static_call::static_call! {
    /// Assembled with a `b` the linker must route through a veneer.
    static FAR_INIT: extern "C" fn(u32) -> u64 = far_initial;
}

/// A key whose initial target is out of branch range, in a default PIE:
/// the assembled `b` leads to a linker veneer, `query` reports the
/// function itself, calls reach it, and updates work both ways.
#[cfg(all(target_arch = "aarch64", not(feature = "force-generic")))]
#[test]
fn an_initial_target_out_of_branch_range_works_and_updates_both_ways() {
    use static_call::arch::aarch64::{self as a64, Branch, insn};
    let _serial = serial();
    let tramp = FAR_INIT.trampoline_addr();
    let far = far_initial as extern "C" fn(u32) -> u64 as usize;
    // SAFETY: the trampoline's 32 bytes from its literal are readable text.
    let bytes = unsafe { std::ptr::read_volatile((tramp - 8) as *const [u8; a64::TRAMPOLINE_LEN]) };
    let t = a64::decode(tramp, &bytes).unwrap();
    assert!(t.never_updated(), "{t:?}");
    assert!(
        insn::encode_b(tramp as u64 + 4, far as u64).is_none(),
        "not far: {far:#x}"
    );
    assert!(
        matches!(t.branch, Branch::B(dest) if dest != far as u64),
        "{t:?}"
    );
    assert_eq!(FAR_INIT.query().map(|f| f as usize), Some(far));
    assert_eq!(FAR_INIT.call(5), 5 + FAR);
    assert_eq!(FAR_INIT.trampoline()(5), 5 + FAR);
    FAR_INIT.update(near_value).unwrap();
    assert_eq!(FAR_INIT.call(5), 5 + NEAR);
    FAR_INIT.update(far_initial).unwrap();
    assert_eq!(FAR_INIT.query().map(|f| f as usize), Some(far));
    assert_eq!(FAR_INIT.call(5), 5 + FAR);
    FAR_INIT.update(near_value).unwrap();
    assert_eq!(FAR_INIT.call(6), 6 + NEAR);
}
