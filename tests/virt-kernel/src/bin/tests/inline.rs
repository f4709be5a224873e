//! Inline call sites on the board: every `K.call_inline(..)` of an `extern "C"`
//! key is a `bl` of its own (the crate's `asm!`), recorded in the call-site
//! table, and every update rewrites it along with the trampoline: `bl
//! target` in reach, `bl trampoline` out of it, `nop` for NULL.
//!
//! What the words at the sites are is decoded here with the library's pure
//! `site` helpers and checked against what each state must leave (the
//! destination the test expects, not only what `site::plan` says), and
//! every site is called, on every CPU. The sites live in `#[inline(never)]`
//! functions without loops, each call its own `asm!` block, so the number
//! of sites in the binary is the number in the source.

use core::hint::black_box;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering, fence};

use aarch64_cpu::registers::{CNTFRQ_EL0, CNTVCT_EL0, Readable};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use static_call::arch::aarch64::insn::NOP;
use static_call::arch::aarch64::{self as a64, site};
use static_call::writer::TextPatch;
use static_call::{Error, StaticCall, TextWriter};
use virt_kernel::exceptions::{self, MAX_CPUS, Recovery};
use virt_kernel::runner::TestResult;
use virt_kernel::{check, check_eq, cpu, gic, mmu, patching, println, smp};

use crate::CPUS;
use crate::static_calls::{describe, on_cpu, write_text};

type ValueFn = extern "C" fn(u64) -> u64;
type EffectFn = extern "C" fn(u64);

/// Added by the targets: which one ran is read off the result (value
/// keys) or off the cell it wrote (effect keys).
const F_ADD: u64 = 1000;
const G_ADD: u64 = 3000;
const FAR_ADD: u64 = 2000;

/// Per CPU, one cell per site index: what an effect target wrote for the
/// argument `cpu << 16 | index`; 0 when none ran (NULL).
const CELLS_PER_CPU: usize = 1024;
static CELLS: [[AtomicU64; CELLS_PER_CPU]; MAX_CPUS] =
    [const { [const { AtomicU64::new(0) }; CELLS_PER_CPU] }; MAX_CPUS];

/// The argument of an effect call from `cpu` for site index `k`.
fn effect_arg(cpu: usize, k: usize) -> u64 {
    (cpu as u64) << 16 | k as u64
}

/// The cell an effect call with `x` writes. Masked, not bounds-checked:
/// the far targets must not call a panic handler 192 MiB away.
#[inline(always)]
fn cell(x: u64) -> &'static AtomicU64 {
    &CELLS[(x >> 16) as usize % MAX_CPUS][x as usize % CELLS_PER_CPU]
}

// The targets, exported under one symbol each so that `f as usize` is the
// same everywhere (Rust may otherwise emit a copy per codegen unit). The
// far ones sit in `.far_text`, 192 MiB away: out of a `bl`'s reach, so a
// site reaches them through the trampoline.

#[unsafe(no_mangle)]
extern "C" fn il_value_f(x: u64) -> u64 {
    x.wrapping_add(F_ADD)
}

#[unsafe(no_mangle)]
extern "C" fn il_value_g(x: u64) -> u64 {
    x.wrapping_add(G_ADD)
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".far_text.il_value_far")]
extern "C" fn il_value_far(x: u64) -> u64 {
    x.wrapping_add(FAR_ADD)
}

#[unsafe(no_mangle)]
extern "C" fn il_effect_f(x: u64) {
    cell(x).store(x.wrapping_add(F_ADD), Ordering::Relaxed);
}

#[unsafe(no_mangle)]
extern "C" fn il_effect_g(x: u64) {
    cell(x).store(x.wrapping_add(G_ADD), Ordering::Relaxed);
}

#[unsafe(no_mangle)]
#[unsafe(link_section = ".far_text.il_effect_far")]
extern "C" fn il_effect_far(x: u64) {
    cell(x).store(x.wrapping_add(FAR_ADD), Ordering::Relaxed);
}

/// A Rust-ABI target, for a key whose calls are the compiler's.
fn il_rust_f(x: u64) -> u64 {
    x + F_ADD
}

static_call::static_call! {
    /// One site (`cnt_one`).
    static CNT_ONE: extern "C" fn(u64) -> u64 = il_value_f;
    /// Three sites in two functions (`cnt_three_a`, `cnt_three_b`).
    static CNT_THREE: extern "C" fn(u64) -> u64 = il_value_f;
    /// Never called: no site.
    static CNT_NONE: extern "C" fn(u64) -> u64 = il_value_f;
    /// Called, but Rust-ABI: the compiler's call of the trampoline, no site.
    static CNT_RUST: fn(u64) -> u64 = il_rust_f;
    /// Four sites (`tv_one`, `tv_three`), walked f -> g -> RET0 -> far -> f.
    static TV: extern "C" fn(u64) -> u64 = il_value_f;
    /// Three sites (`tn_one`, `tn_two`), walked f -> NULL -> far -> NULL -> f.
    static TN: extern "C" fn(u64) = il_effect_f;
    /// A thousand sites (`BIG_V_FNS`), timed through every transition and
    /// raced in the SMP stress.
    static BIG_V: extern "C" fn(u64) -> u64 = il_value_f;
    /// A thousand sites (`BIG_N_FNS`), NULL-able.
    static BIG_N: extern "C" fn(u64) = il_effect_f;
    /// One site (`torn_v_site`), written by hand with every torn state.
    static TORN_V: extern "C" fn(u64) -> u64 = il_value_f;
    /// One site (`torn_n_site`), as `TORN_V` for an effect key.
    static TORN_N: extern "C" fn(u64) = il_effect_f;
    /// Three sites (`bad_sites`): corrupted, and offered failing writers.
    static BAD_SITES: extern "C" fn(u64) -> u64 = il_value_f;
}

// The site-holding functions. `#[inline(never)]` and no loops: one site per
// call in the source.

#[inline(never)]
fn cnt_one(x: u64) -> u64 {
    CNT_ONE.call_inline(x)
}

#[inline(never)]
fn cnt_three_a(x: u64) -> u64 {
    CNT_THREE.call_inline(x)
}

#[inline(never)]
fn cnt_three_b(x: u64) -> [u64; 2] {
    [CNT_THREE.call_inline(x), CNT_THREE.call_inline(x + 1)]
}

#[inline(never)]
fn cnt_rust(x: u64) -> u64 {
    CNT_RUST.call(x)
}

#[inline(never)]
fn tv_one(x: u64) -> u64 {
    TV.call_inline(x)
}

#[inline(never)]
fn tv_three(x: u64) -> [u64; 3] {
    [
        TV.call_inline(x),
        TV.call_inline(x + 1),
        TV.call_inline(x + 2),
    ]
}

/// TV's four sites' results for `x`, `x + 1`, ...
fn tv_all(x: u64) -> [u64; 4] {
    let [a, b, c] = tv_three(x + 1);
    [tv_one(x), a, b, c]
}

#[inline(never)]
fn tn_one(x: u64) {
    TN.call_inline(x)
}

#[inline(never)]
fn tn_two(x: u64) {
    TN.call_inline(x);
    TN.call_inline(x + 1);
}

/// Calls TN's three sites from `cpu` for site indexes 0..3.
fn tn_all(cpu: usize) {
    tn_one(effect_arg(cpu, 0));
    tn_two(effect_arg(cpu, 1));
}

#[inline(never)]
fn torn_v_site(x: u64) -> u64 {
    TORN_V.call_inline(x)
}

#[inline(never)]
fn torn_n_site(x: u64) {
    TORN_N.call_inline(x)
}

#[inline(never)]
fn bad_sites(x: u64) -> [u64; 3] {
    [
        BAD_SITES.call_inline(x),
        BAD_SITES.call_inline(x + 1),
        BAD_SITES.call_inline(x + 2),
    ]
}

/// Repeats its body ten times.
macro_rules! ten {
    ($($t:tt)*) => { $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* $($t)* };
}

/// Sites per function of the thousand.
const PER_FN: usize = 100;
/// The functions that hold them.
const FNS: usize = 10;
const BIG: usize = PER_FN * FNS;

/// For each `value effect base`: a function with `PER_FN` sites of `BIG_V`
/// (site `i` called with `arg + base + i`, its result in `out[i]`) and one
/// with as many of `BIG_N`; each returns its number of calls. The `base`
/// keeps the functions distinct, so none is merged with another.
macro_rules! hundred_sites {
    ($($value:ident $effect:ident $base:literal),* $(,)?) => {
        $(
            #[inline(never)]
            fn $value(arg: u64, out: &mut [u64; PER_FN]) -> usize {
                let mut i = 0;
                ten! { ten! { out[i] = BIG_V.call_inline(arg + $base + i as u64); i += 1; } }
                i
            }

            #[inline(never)]
            fn $effect(arg: u64) -> usize {
                let mut i = 0;
                ten! { ten! { BIG_N.call_inline(arg + $base + i as u64); i += 1; } }
                i
            }
        )*
        const BIG_V_FNS: [fn(u64, &mut [u64; PER_FN]) -> usize; FNS] = [$($value),*];
        const BIG_N_FNS: [fn(u64) -> usize; FNS] = [$($effect),*];
    };
}

hundred_sites!(
    big_v_0 big_n_0 0,
    big_v_1 big_n_1 100,
    big_v_2 big_n_2 200,
    big_v_3 big_n_3 300,
    big_v_4 big_n_4 400,
    big_v_5 big_n_5 500,
    big_v_6 big_n_6 600,
    big_v_7 big_n_7 700,
    big_v_8 big_n_8 800,
    big_v_9 big_n_9 900,
);

/// The states a key is walked through. A value key is never NULL and an
/// effect key here never RET0, so what a call did names its state alone:
/// NULL and RET0 are never on the same key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum S {
    /// A near function (`bl f` at the sites).
    F,
    /// Another near function.
    G,
    /// A function in `.far_text` (`bl trampoline`).
    Far,
    /// The key's return-zero function (`bl` to it).
    Ret0,
    /// No target (`nop`).
    Null,
}
use S::*;

const VALUE_STATES: [S; 4] = [F, G, Far, Ret0];
const EFFECT_STATES: [S; 4] = [F, G, Far, Null];

/// Through every ordered pair of distinct states of four (an Euler circuit
/// of the complete digraph), by index into `VALUE_STATES`/`EFFECT_STATES`,
/// back to the first.
const TOUR: [usize; 13] = [0, 1, 2, 3, 0, 2, 1, 3, 1, 0, 3, 2, 0];

/// A key of either kind, with its own return-zero function.
#[derive(Clone, Copy)]
enum Key {
    Value(&'static StaticCall<ValueFn>, u64),
    Effect(&'static StaticCall<EffectFn>),
}

impl Key {
    fn name(self) -> &'static str {
        match self {
            Key::Value(k, _) => k.name(),
            Key::Effect(k) => k.name(),
        }
    }

    fn tramp(self) -> u64 {
        match self {
            Key::Value(k, _) => k.trampoline_addr() as u64,
            Key::Effect(k) => k.trampoline_addr() as u64,
        }
    }

    /// The target of state `s` (0 for NULL).
    fn target(self, s: S) -> u64 {
        let addr = |f: usize| f as u64;
        match (self, s) {
            (_, Null) => 0,
            (Key::Value(_, ret0), Ret0) => ret0,
            (Key::Effect(_), Ret0) => unreachable!("effect keys are not walked to RET0"),
            (Key::Value(..), F) => addr(il_value_f as ValueFn as usize),
            (Key::Value(..), G) => addr(il_value_g as ValueFn as usize),
            (Key::Value(..), Far) => addr(il_value_far as ValueFn as usize),
            (Key::Effect(_), F) => addr(il_effect_f as EffectFn as usize),
            (Key::Effect(_), G) => addr(il_effect_g as EffectFn as usize),
            (Key::Effect(_), Far) => addr(il_effect_far as EffectFn as usize),
        }
    }

    /// Moves the key to `s` through `w`.
    fn set(self, s: S, w: &dyn TextWriter) -> Result<(), Error> {
        let result = match (self, s) {
            (Key::Value(k, _), F) => k.update_with(il_value_f, w),
            (Key::Value(k, _), G) => k.update_with(il_value_g, w),
            (Key::Value(k, _), Far) => k.update_with(il_value_far, w),
            (Key::Value(k, _), Ret0) => k.update_ret0_with(w),
            (Key::Effect(k), F) => k.update_with(il_effect_f, w),
            (Key::Effect(k), G) => k.update_with(il_effect_g, w),
            (Key::Effect(k), Far) => k.update_with(il_effect_far, w),
            (Key::Effect(k), Null) => k.update_null_with(w),
            (key, s) => unreachable!("{} is not walked to {s:?}", key.name()),
        };
        result.map_err(Error::from)
    }

    fn sites(self) -> Vec<usize> {
        let mut sites = Vec::new();
        match self {
            Key::Value(k, _) => k.each_inline_site(|s| sites.push(s)),
            Key::Effect(k) => k.each_inline_site(|s| sites.push(s)),
        }
        sites
    }

    /// The state whose target is `dest` (`None` for NULL), if any.
    fn state_of(self, dest: Option<u64>, states: &[S]) -> Option<S> {
        let dest = dest.unwrap_or(0);
        states.iter().copied().find(|&s| self.target(s) == dest)
    }
}

/// A value key with its return-zero function, learnt by moving it to RET0
/// and back to f.
fn value_key(key: &'static StaticCall<ValueFn>) -> Result<Key, String> {
    let w = patching::writer();
    key.update_ret0_with(w)
        .map_err(|e| format!("update_ret0: {e}"))?;
    check!(
        key.is_ret0(),
        "{} is not RET0 after update_ret0",
        key.name()
    );
    let ret0 = key.query().map_or(0, |f| f as usize as u64);
    key.update_with(il_value_f, w)
        .map_err(|e| format!("update: {e}"))?;
    check!(
        mmu::layout().text.contains(&(ret0 as usize)),
        "{}: RET0 target {ret0:#x} not in the kernel's text",
        key.name()
    );
    Ok(Key::Value(key, ret0))
}

/// An effect key, moved to NULL and back to f first, so that its sites
/// hold f's `bl` rather than the trampoline's as assembled.
fn effect_key(key: &'static StaticCall<EffectFn>) -> Result<Key, String> {
    let w = patching::writer();
    key.update_null_with(w)
        .map_err(|e| format!("update_null: {e}"))?;
    key.update_with(il_effect_f, w)
        .map_err(|e| format!("update: {e}"))?;
    Ok(Key::Effect(key))
}

/// What a value call with `x` returns in state `s`.
fn value_of(s: S, x: u64) -> u64 {
    match s {
        F => x + F_ADD,
        G => x + G_ADD,
        Far => x + FAR_ADD,
        Ret0 | Null => 0,
    }
}

/// What an effect call with `x` leaves in its cell in state `s`.
fn effect_of(s: S, x: u64) -> u64 {
    match s {
        F => x + F_ADD,
        G => x + G_ADD,
        Far => x + FAR_ADD,
        Ret0 | Null => 0,
    }
}

/// The state a value call with `x` reached, by its result.
fn value_seen(r: u64, x: u64) -> Option<S> {
    VALUE_STATES.into_iter().find(|&s| value_of(s, x) == r)
}

/// The state an effect call with `x` reached, by its cell.
fn effect_seen(c: u64, x: u64) -> Option<S> {
    EFFECT_STATES.into_iter().find(|&s| effect_of(s, x) == c)
}

/// The instruction word at a site (or any text address).
fn word_at(addr: usize) -> u32 {
    // SAFETY: `addr` is an aligned instruction word of the kernel's text,
    // which is mapped readable and only written with aligned 32-bit (sites)
    // or 64-bit (trampolines) stores.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

/// A site's word in assembler syntax.
fn show(site: usize, word: u32) -> String {
    match site::decode_bl(site as u64, word) {
        Some(dest) => format!("bl {dest:#x}"),
        None if word == NOP => "nop".into(),
        None => format!(".word {word:#010x}"),
    }
}

/// Checks every site of `key` for state `s`: `nop` for NULL, `bl
/// trampoline` for the far target (which must be out of a `bl`'s reach
/// from the site), else `bl` straight to the target (within reach); and
/// exactly what `site::plan` says. Returns the number of sites.
fn check_sites(key: Key, s: S, what: &str) -> Result<usize, String> {
    let tramp = key.tramp();
    let target = key.target(s);
    let sites = key.sites();
    for &site in &sites {
        let word = word_at(site);
        let pc = site as u64;
        let ok = match s {
            Null => word == NOP,
            Far => {
                check!(
                    site::encode_bl(pc, target).is_none(),
                    "{what}: far target {target:#x} is within bl reach of the site at {site:#x}"
                );
                site::decode_bl(pc, word) == Some(tramp)
            }
            _ => site::decode_bl(pc, word) == Some(target),
        };
        check!(
            ok,
            "{what}: {} site at {site:#x} holds {} ({word:#010x}) in state {s:?} (target {target:#x}, trampoline {tramp:#x})",
            key.name(),
            show(site, word)
        );
        let plan = site::plan(pc, tramp, target).map_err(|e| format!("{what}: plan: {e}"))?;
        check!(
            word == plan,
            "{what}: site at {site:#x} holds {word:#010x}, site::plan says {plan:#010x}"
        );
    }
    Ok(sites.len())
}

/// Runs `f` with faults caught (a site gone wrong must fail the test, not
/// end the run): every target is a leaf, so a fault leaves `x30` at the
/// site and the call returns there.
fn caught<R>(f: impl FnOnce() -> R) -> Result<R, String> {
    let mut result = None;
    let fault = exceptions::catch_fault(Recovery::ReturnToLink, || result = Some(f()));
    match (fault, result) {
        (None, Some(r)) => Ok(r),
        (Some(f), _) => Err(describe(&f)),
        (None, None) => Err("the call did not return".into()),
    }
}

/// Clears this CPU's first `n` cells.
fn clear_cells(cpu: usize, n: usize) {
    for c in &CELLS[cpu][..n] {
        c.store(0, Ordering::Relaxed);
    }
}

/// Calls TV's and TN's sites (and each trampoline through its pointer) on
/// `cpus` and checks each result; returns the number of calls.
fn check_tv(s: S, x: u64) -> Result<usize, String> {
    let mut calls = 0;
    for c in 0..CPUS {
        let got = on_cpu(c, || caught(|| (tv_all(x), black_box(TV.trampoline())(x))))?;
        let want = core::array::from_fn::<u64, 4, _>(|i| value_of(s, x + i as u64));
        check!(
            got == (want, value_of(s, x)),
            "cpu{c}: TV in {s:?}: sites gave {:?}, the trampoline {}, expected {want:?} and {}",
            got.0,
            got.1,
            value_of(s, x)
        );
        calls += 5;
    }
    Ok(calls)
}

// `c` names the CPU the closure runs on as well as its cells.
#[allow(clippy::needless_range_loop)]
fn check_tn(s: S) -> Result<usize, String> {
    let mut calls = 0;
    for c in 0..CPUS {
        let got = on_cpu(c, || {
            clear_cells(c, 4);
            caught(|| {
                tn_all(c);
                black_box(TN.trampoline())(effect_arg(c, 3));
            })?;
            Ok(core::array::from_fn::<u64, 4, _>(|k| {
                CELLS[c][k].load(Ordering::Relaxed)
            }))
        })?;
        let want = core::array::from_fn::<u64, 4, _>(|k| effect_of(s, effect_arg(c, k)));
        check!(
            got == want,
            "cpu{c}: TN in {s:?}: sites 0..3 and the trampoline left {got:x?}, expected {want:x?}"
        );
        calls += 4;
    }
    Ok(calls)
}

/// Exact site counts: one, three (in two functions), none for a key never
/// called and none for a Rust-ABI key; each site an aligned word of the
/// kernel's text holding its trampoline's `bl` as assembled, and the calls
/// reaching the initial target.
pub(crate) fn inline_site_counts() -> TestResult {
    check_eq!(cnt_one(black_box(1)), 1 + F_ADD);
    check_eq!(cnt_three_a(black_box(2)), 2 + F_ADD);
    check_eq!(cnt_three_b(black_box(3)), [3 + F_ADD, 4 + F_ADD]);
    check_eq!(cnt_rust(black_box(4)), 4 + F_ADD);
    let counts = [
        CNT_ONE.inline_sites(),
        CNT_THREE.inline_sites(),
        CNT_NONE.inline_sites(),
        CNT_RUST.inline_sites(),
    ];
    println!("inline counts: CNT_ONE/CNT_THREE/CNT_NONE/CNT_RUST {counts:?} sites");
    check_eq!(counts, [1, 3, 0, 0]);
    let text = mmu::layout().text;
    let mut seen = 0;
    for key in [&*CNT_ONE, &*CNT_THREE] {
        let tramp = key.trampoline_addr();
        let mut sites = Vec::new();
        key.each_inline_site(|s| sites.push(s));
        check_eq!(sites.len(), key.inline_sites());
        check!(
            sites.windows(2).all(|w| w[0] < w[1]),
            "{}: sites not in address order: {sites:x?}",
            key.name()
        );
        for &s in &sites {
            let word = word_at(s);
            check!(
                text.contains(&s) && s % 4 == 0,
                "{}: site {s:#x} is not an instruction of the kernel's text",
                key.name()
            );
            // As the defining crate assembles it, a site calls the initial
            // target directly (the compiler may give a small target a copy
            // of its own, so the address is not checked here: the calls
            // above reached the initial target).
            let called = site::decode_bl(s as u64, word);
            check!(
                called.is_some_and(|t| t != tramp as u64),
                "{}: site {s:#x} holds {} before any update, not a direct bl of the initial target",
                key.name(),
                show(s, word)
            );
            seen += 1;
        }
    }
    // CNT_ONE's site is in `cnt_one`, near its start: it is a call of that
    // function, not of a copy elsewhere.
    let mut one = 0;
    CNT_ONE.each_inline_site(|s| one = s);
    let f = cnt_one as fn(u64) -> u64 as usize;
    check!(
        (f..f + 64).contains(&one),
        "CNT_ONE's site {one:#x} is not within 64 bytes of cnt_one at {f:#x}"
    );
    check_eq!(seen, 4);
    Ok(())
}

/// TV (four sites) through f -> g -> RET0 -> far -> f and TN (three sites)
/// through f -> NULL -> far -> NULL -> f. After each update: one sync, every
/// site decoded and exactly what the state asks, and every site (and the
/// trampoline through its pointer) called on every CPU with the new result.
pub(crate) fn inline_site_transitions() -> TestResult {
    let tv = value_key(&TV)?;
    let tn = effect_key(&TN)?;
    check_eq!((TV.inline_sites(), TN.inline_sites()), (4, 3));
    let mut calls = check_tv(F, 10)?;
    calls += check_tn(F)?;
    let (mut updates, mut decoded) = (0, 0);
    let plans: [(Key, &[S]); 2] = [(tv, &[F, G, Ret0, Far, F]), (tn, &[F, Null, Far, Null, F])];
    for (key, walk) in plans {
        for (step, pair) in walk.windows(2).enumerate() {
            let what = format!("{} {:?} -> {:?}", key.name(), pair[0], pair[1]);
            let s = pair[1];
            let syncs = gic::sync_count();
            key.set(s, patching::writer())
                .map_err(|e| format!("{what}: {e}"))?;
            let synced = gic::sync_count() - syncs;
            check!(synced == 1, "{what}: {synced} syncs, expected 1");
            updates += 1;
            decoded += check_sites(key, s, &what)?;
            calls += match key {
                Key::Value(..) => check_tv(s, 20 + 10 * step as u64),
                Key::Effect(_) => check_tn(s),
            }
            .map_err(|e| format!("{what}: {e}"))?;
        }
    }
    println!(
        "inline transitions: TV f -> g -> RET0 -> far -> f, TN f -> NULL -> far -> NULL -> f: {updates} updates, one sync each; {decoded} site words decoded as planned; {calls} calls on {CPUS} CPUs through the sites and trampolines, all as expected"
    );
    Ok(())
}

/// The kernel's writer, counting what it is asked to do, and timing its
/// batches and syncs.
#[derive(Default)]
struct Counting {
    writes: AtomicUsize,
    batches: AtomicUsize,
    stores: AtomicUsize,
    syncs: AtomicUsize,
    /// Counter ticks spent in `write_batch` and in `sync_cores`.
    batch_ticks: AtomicU64,
    sync_ticks: AtomicU64,
}

impl Counting {
    fn take(&self) -> [usize; 4] {
        [&self.writes, &self.batches, &self.stores, &self.syncs]
            .map(|c| c.swap(0, Ordering::Relaxed))
    }

    /// The ticks spent in batches and in syncs since the last call.
    fn take_ticks(&self) -> [u64; 2] {
        [&self.batch_ticks, &self.sync_ticks].map(|c| c.swap(0, Ordering::Relaxed))
    }

    /// Runs `f`, adding the ticks it took to `to`.
    fn timed<R>(to: &AtomicU64, f: impl FnOnce() -> R) -> R {
        let start = CNTVCT_EL0.get();
        let r = f();
        to.fetch_add(CNTVCT_EL0.get() - start, Ordering::Relaxed);
        r
    }
}

// SAFETY: forwards every write, batch and sync to the kernel's writer,
// which keeps the contract; counting changes nothing.
unsafe impl TextWriter for Counting {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { patching::writer().write(addr, bytes) }
    }

    unsafe fn write_batch(
        &self,
        patches: &mut dyn Iterator<Item = TextPatch>,
    ) -> Result<(), Error> {
        self.batches.fetch_add(1, Ordering::Relaxed);
        let mut counted = patches.inspect(|_| {
            self.stores.fetch_add(1, Ordering::Relaxed);
        });
        Self::timed(&self.batch_ticks, || {
            // SAFETY: the caller's contract, passed on.
            unsafe { patching::writer().write_batch(&mut counted) }
        })
    }

    fn sync_cores(&self) -> Result<(), Error> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Self::timed(&self.sync_ticks, || patching::writer().sync_cores())
    }
}

/// Calls BIG_V's thousand sites from this CPU with `arg + k` at site `k`;
/// the results, by site index.
fn big_v_all(arg: u64) -> [u64; BIG] {
    let mut out = [0; BIG];
    for (f, chunk) in BIG_V_FNS.iter().zip(out.chunks_exact_mut(PER_FN)) {
        let chunk: &mut [u64; PER_FN] = chunk.try_into().expect("PER_FN results");
        f(arg, chunk);
    }
    out
}

/// Calls BIG_N's thousand sites from this CPU; what they left in its cells.
fn big_n_all(cpu: usize) -> [u64; BIG] {
    clear_cells(cpu, BIG);
    for f in BIG_N_FNS {
        f(effect_arg(cpu, 0));
    }
    core::array::from_fn(|k| CELLS[cpu][k].load(Ordering::Relaxed))
}

/// Calls every site of `key` on every CPU and checks each result for state
/// `s`; returns the number of calls.
fn check_big(key: Key, s: S, x: u64) -> Result<usize, String> {
    for c in 0..CPUS {
        let bad = on_cpu(c, || {
            Ok(match key {
                Key::Value(..) => {
                    let got = caught(|| big_v_all(x))?;
                    (0..BIG)
                        .find(|&k| got[k] != value_of(s, x + k as u64))
                        .map(|k| (k, got[k]))
                }
                Key::Effect(_) => {
                    let got = caught(|| big_n_all(c))?;
                    (0..BIG)
                        .find(|&k| got[k] != effect_of(s, effect_arg(c, k)))
                        .map(|k| (k, got[k]))
                }
            })
        })?;
        if let Some((k, got)) = bad {
            return Err(format!(
                "cpu{c}: {} site {k} in {s:?} gave {got:#x}",
                key.name()
            ));
        }
    }
    Ok(CPUS * BIG)
}

/// Microseconds of the virtual counter.
fn us(ticks: u64) -> u64 {
    ticks * 1_000_000 / CNTFRQ_EL0.get().max(1)
}

/// BIG_V and BIG_N, a thousand sites each, through every transition of
/// their four states and back. Each update goes to the kernel's writer
/// through a counting one: the two trampoline words, the thousand sites in
/// one batch, exactly one sync. After each: every site's word checked, and
/// every site called on every CPU. The updates' wall time is reported.
pub(crate) fn inline_sites_1000() -> TestResult {
    let v = value_key(&BIG_V)?;
    let n = effect_key(&BIG_N)?;
    let counting = Counting::default();
    let mut report = Vec::new();
    let mut calls = 0;
    for (key, states) in [(v, VALUE_STATES), (n, EFFECT_STATES)] {
        check_eq!(check_sites(key, F, "initially")?, BIG);
        calls += check_big(key, F, 7)?;
        counting.take();
        counting.take_ticks();
        let (mut total, mut worst, mut updates) = (0, 0, 0);
        let (mut in_batch, mut in_sync) = (0, 0);
        let mut pairs = [[false; 4]; 4];
        for (step, pair) in TOUR.windows(2).enumerate() {
            let s = states[pair[1]];
            let what = format!("{} {:?} -> {s:?}", key.name(), states[pair[0]]);
            let syncs = gic::sync_count();
            let start = CNTVCT_EL0.get();
            key.set(s, &counting).map_err(|e| format!("{what}: {e}"))?;
            let ticks = CNTVCT_EL0.get() - start;
            let [writes, batches, stores, synced] = counting.take();
            check!(
                (writes, batches, stores, synced) == (2, 1, BIG, 1),
                "{what}: {writes} writes, {batches} batches of {stores} stores, {synced} syncs; expected the 2 trampoline words, 1 batch of {BIG} and 1 sync"
            );
            check_eq!(gic::sync_count() - syncs, 1);
            let [batch, sync] = counting.take_ticks();
            in_batch += batch;
            in_sync += sync;
            total += ticks;
            worst = worst.max(ticks);
            updates += 1;
            check_sites(key, s, &what)?;
            calls += check_big(key, s, 100 * step as u64).map_err(|e| format!("{what}: {e}"))?;
            pairs[pair[0]][pair[1]] = true;
        }
        check_eq!(pairs.iter().flatten().filter(|&&p| p).count(), 12);
        report.push(format!(
            "{} {updates} updates, {} us each on average ({} us storing the sites, {} us in the sync and its replay), {} at most",
            key.name(),
            us(total) / updates,
            us(in_batch) / updates,
            us(in_sync) / updates,
            us(worst)
        ));
    }
    println!(
        "inline: {BIG} sites, 1 sync per update, {}; {calls} calls through the sites on {CPUS} CPUs as expected",
        report.join("; ")
    );
    Ok(())
}

/// The kernel's writer, failing the first `write_batch` after storing
/// `fail_after` of its patches (or, with `lie`, storing none of them and
/// reporting success); later batches (the rollback) and every other write
/// and sync are the kernel writer's.
struct FailingBatch {
    fail_after: usize,
    lie: bool,
    batches: AtomicUsize,
    writes: AtomicUsize,
}

impl FailingBatch {
    fn new(fail_after: usize, lie: bool) -> Self {
        FailingBatch {
            fail_after,
            lie,
            batches: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
        }
    }
}

/// What [`FailingBatch`] fails with.
const BATCH_FAILED: Error = Error::WriterFailed {
    what: "write a batch (test writer failing on purpose)",
    errno: 78,
};

// SAFETY: not a sound writer when `lie` is set, on purpose: its first
// batch then reports success without storing, which the library's read-back
// must catch; it is only given to BAD_SITES, which nothing else calls.
// Otherwise every store it reports is the kernel writer's, a failed batch
// stores its first `fail_after` patches whole and nothing else, as the
// trait allows.
unsafe impl TextWriter for FailingBatch {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { patching::writer().write(addr, bytes) }
    }

    unsafe fn write_batch(
        &self,
        patches: &mut dyn Iterator<Item = TextPatch>,
    ) -> Result<(), Error> {
        let w = patching::writer();
        if self.batches.fetch_add(1, Ordering::Relaxed) > 0 {
            // SAFETY: the caller's contract, passed on.
            return unsafe { w.write_batch(patches) };
        }
        if self.lie {
            return Ok(());
        }
        // SAFETY: as above, for the first `fail_after` patches.
        unsafe { w.write_batch(&mut patches.take(self.fail_after)) }?;
        Err(BATCH_FAILED)
    }

    fn sync_cores(&self) -> Result<(), Error> {
        patching::writer().sync_cores()
    }
}

/// The trampoline's 32 bytes (literal through `ret`).
fn window_bytes(tramp: u64) -> [u8; a64::TRAMPOLINE_LEN] {
    // SAFETY: the 32 bytes from a trampoline's literal are mapped readable
    // text, written only with aligned stores.
    unsafe { core::ptr::read_volatile((tramp as usize - 8) as *const [u8; a64::TRAMPOLINE_LEN]) }
}

/// Bad input at sites is refused, and failed site writes are rolled back:
/// (a) a site holding neither its trampoline's `bl` nor the current
/// target's word (the key never updated, so its trampoline is as
/// assembled): the update fails with `UnrecognisedCallSite` for that site
/// before anything is written (no write reaches the writer), the
/// trampoline's 32 bytes and the other sites unchanged; (b) a writer whose
/// batch fails after 0, 1 or 2 of the 3 site stores: `WriterFailed`, the
/// trampoline's bytes as before, each site that took the new word given
/// the trampoline's `bl`, the others as they were, and the calls reaching
/// the old target on every CPU; (c) a batch that reports success without
/// storing: `VerifyFailed` at the first site, the same rollback. Then an
/// update takes the key from there.
pub(crate) fn inline_site_bad_input() -> TestResult {
    let key = Key::Value(&BAD_SITES, 0);
    let tramp = key.tramp();
    check_eq!(bad_sites(black_box(5)), [5 + F_ADD, 6 + F_ADD, 7 + F_ADD]);
    let sites = key.sites();
    check_eq!(sites.len(), 3);
    let words = |sites: &[usize]| sites.iter().map(|&s| word_at(s)).collect::<Vec<_>>();
    // Until a key's first update its sites may hold any call of their shape
    // (as assembled they call the initial target, or a per-unit copy of
    // it); from then on an update accepts only the words it wrote. So the
    // key is updated once, to the target it has, before the bad words.
    key.set(F, patching::writer())
        .map_err(|e| format!("first update to f: {e}"))?;
    let home: Vec<u32> = sites
        .iter()
        .map(|&s| site::encode_bl(s as u64, key.target(F)).unwrap_or(0))
        .collect();
    check_eq!(words(&sites), home);
    let pristine = window_bytes(tramp);
    let last = sites[2];
    let f = key.target(F);
    let bad_words = [
        ("nop", NOP),
        (
            "bl g",
            site::encode_bl(last as u64, key.target(G)).unwrap_or(0),
        ),
        (
            "b trampoline",
            a64::insn::encode_b(last as u64, tramp).unwrap_or(0),
        ),
        (
            "bl trampoline + 4",
            site::encode_bl(last as u64, tramp + 4).unwrap_or(0),
        ),
        ("brk #0", 0xd420_0000),
    ];
    for (name, bad) in bad_words {
        // SAFETY: BAD_SITES's site, which only this test calls (not until
        // the word is put back).
        unsafe { write_text(&[(last, &bad.to_le_bytes())]) }?;
        let counting = Counting::default();
        let err = key.set(G, &counting);
        let expected = Error::UnrecognisedCallSite {
            site: last,
            found: u64::from(bad),
        };
        let [writes, batches, stores, syncs] = counting.take();
        check!(
            err == Err(expected),
            "site holding {name}: update returned {err:?}, expected Err({expected})"
        );
        check!(
            (writes, batches, stores, syncs) == (0, 0, 0, 0),
            "site holding {name}: the refused update wrote: {writes} writes, {batches} batches of {stores} stores, {syncs} syncs"
        );
        check!(
            window_bytes(tramp) == pristine,
            "site holding {name}: the refused update changed the trampoline's bytes"
        );
        check_eq!(words(&sites[..2]), home[..2]);
        // SAFETY: as above; puts the assembled word back.
        unsafe { write_text(&[(last, &home[2].to_le_bytes())]) }?;
    }
    // From here on the key is updated (the literal holds its target).
    key.set(F, patching::writer())
        .map_err(|e| format!("update to f: {e}"))?;
    check_sites(key, F, "after the bad words")?;
    let before = window_bytes(tramp);
    let at_f: Vec<u32> = sites
        .iter()
        .map(|&s| site::encode_bl(s as u64, f).unwrap_or(0))
        .collect();
    let mut cases = Vec::new();
    for (fail_after, lie) in [(0, false), (1, false), (2, false), (0, true)] {
        let what = format!("batch failing after {fail_after} stores (lying: {lie})");
        let writer = FailingBatch::new(fail_after, lie);
        let err = key.set(G, &writer);
        let expected = if lie {
            Error::VerifyFailed { addr: sites[0] }
        } else {
            BATCH_FAILED
        };
        check!(
            err == Err(expected),
            "{what}: update returned {err:?}, expected Err({expected})"
        );
        check_eq!(writer.batches.load(Ordering::Relaxed), 2);
        check!(
            window_bytes(tramp) == before,
            "{what}: the trampoline's bytes are not as before"
        );
        // The sites that took `bl g` hold the trampoline's `bl`, the others
        // `bl f` still.
        let expect: Vec<u32> = (0..3)
            .map(|i| {
                if i < fail_after {
                    site::home(sites[i] as u64, tramp).unwrap_or(0)
                } else {
                    at_f[i]
                }
            })
            .collect();
        check!(
            words(&sites) == expect,
            "{what}: sites hold {:x?}, expected {expect:x?}",
            words(&sites)
        );
        check_eq!(BAD_SITES.query().map(|f| f as usize as u64), Some(f));
        for c in 0..CPUS {
            let got = on_cpu(c, || caught(|| bad_sites(10)))?;
            check!(
                got == [10 + F_ADD, 11 + F_ADD, 12 + F_ADD],
                "{what}: cpu{c}: the sites gave {got:?}, expected f's results"
            );
        }
        cases.push(format!(
            "{fail_after}{}: {expected}",
            if lie { " (lying)" } else { "" }
        ));
        // Back to every site at f for the next case, through the library.
        key.set(F, patching::writer())
            .map_err(|e| format!("{what}: update back to f: {e}"))?;
        check_eq!(words(&sites), at_f);
    }
    key.set(G, patching::writer())
        .map_err(|e| format!("final update: {e}"))?;
    check_sites(key, G, "final update")?;
    for c in 0..CPUS {
        let got = on_cpu(c, || caught(|| bad_sites(10)))?;
        check_eq!(got, [10 + G_ADD, 11 + G_ADD, 12 + G_ADD]);
    }
    println!(
        "inline bad input: {} corrupted site words refused as UnrecognisedCallSite before any write, the trampoline's 32 bytes unchanged; batches failing after n of 3 site stores rolled back (n: error): {}; the key then updated to g",
        bad_words.len(),
        cases.join(", ")
    );
    Ok(())
}

/// What a site with `word` executes given the trampoline's window as its
/// bytes read now: `nop` is NULL, `bl` to the trampoline is what the
/// trampoline does (its `b`, else its literal, NULL when 0), `bl`
/// elsewhere goes there. Decoded from the bytes, independently of how they
/// were written.
fn site_executes(key: Key, site: usize, states: &[S]) -> Result<S, String> {
    let word = word_at(site);
    let tramp = key.tramp();
    let dest = if word == NOP {
        None
    } else {
        let dest = site::decode_bl(site as u64, word)
            .ok_or_else(|| format!("the site holds {word:#010x}, neither bl nor nop"))?;
        if dest == tramp {
            trampoline_dest(tramp as usize)?
        } else {
            Some(dest)
        }
    };
    key.state_of(dest, states).ok_or_else(|| {
        format!(
            "the site ({}) reaches {:#x}, the target of no state",
            show(site, word),
            dest.unwrap_or(0)
        )
    })
}

/// Where the trampoline at `tramp` goes, from its bytes: the `b` after
/// `bti c`, else the literal (`None` for 0).
fn trampoline_dest(tramp: usize) -> Result<Option<u64>, String> {
    let (literal, entry) = (tramp - 8, tramp + 4);
    // SAFETY: the literal of a trampoline window: an aligned word of mapped
    // text, written only with aligned 64-bit stores.
    let literal = unsafe { core::ptr::read_volatile(literal as *const u64) };
    let (bti, branch) = (word_at(tramp), word_at(entry));
    check!(
        bti == a64::insn::BTI_C,
        "the trampoline starts with {bti:#010x}, not bti c"
    );
    if branch == NOP {
        return Ok((literal != 0).then_some(literal));
    }
    a64::insn::decode_b(entry as u64, branch)
        .map(Some)
        .ok_or_else(|| format!("the trampoline's branch word {branch:#010x} is neither b nor nop"))
}

/// Tally of the torn-state walk.
#[derive(Default)]
struct Torn {
    states: usize,
    ran_old: usize,
    ran_new: usize,
    calls: usize,
}

/// For every ordered pair (old, new) of `states`, each word an update can
/// leave at `key`'s one site (old, new, and the trampoline's `bl` that a
/// failed update restores), with each of the four (old/new literal,
/// old/new branch) windows the trampoline may show meanwhile: written by
/// hand, decoded ([`site_executes`]): the old or the new state, the one
/// the model predicts (a site word of a state runs that state, the
/// trampoline's `bl` runs what the trampoline's `b` or else its literal
/// says); then `call(runs, n, cpu)` calls through the site on CPU 0 and
/// `cpu` and checks the result.
///
/// # Safety
///
/// The key's site and window belong to the calling test, and nothing else
/// calls the key meanwhile.
unsafe fn walk_site(
    torn: &mut Torn,
    key: Key,
    states: &[S],
    mut call: impl FnMut(S, usize, usize) -> Result<usize, String>,
) -> TestResult {
    let sites = key.sites();
    check_eq!(sites.len(), 1);
    let s = sites[0];
    let (tramp, pc) = (key.tramp(), sites[0] as u64);
    let home = site::home(pc, tramp).map_err(|e| format!("home: {e}"))?;
    let word_of = |st: S| site::plan(pc, tramp, key.target(st)).map_err(|e| format!("plan: {e}"));
    let window_of = |st: S| a64::plan(tramp, key.target(st)).map_err(|e| format!("plan: {e}"));
    for &old in states {
        for &new in states.iter().filter(|&&st| st != old) {
            // The far state's word is the trampoline's `bl` itself.
            let mut words = Vec::new();
            for word in [word_of(old)?, word_of(new)?, home] {
                if !words.contains(&word) {
                    words.push(word);
                }
            }
            for &word in &words {
                for (literal_of, branch_of) in [(old, old), (new, old), (old, new), (new, new)] {
                    let what = format!(
                        "{} {old:?} -> {new:?}: site {}, literal of {literal_of:?}, branch of {branch_of:?}",
                        key.name(),
                        show(s, word)
                    );
                    let (lit, br) = (window_of(literal_of)?, window_of(branch_of)?);
                    let window = tramp as usize - 8;
                    // SAFETY: per this function's contract: the site and
                    // the window are the key's, which only this test calls.
                    unsafe {
                        write_text(&[
                            (s, &word.to_le_bytes()),
                            (window, &lit.literal.to_le_bytes()),
                            (window + 8, &br.entry.to_le_bytes()),
                        ])
                    }
                    .map_err(|e| format!("{what}: {e}"))?;
                    check_eq!(word_at(s), word);
                    let runs = site_executes(key, s, states).map_err(|e| format!("{what}: {e}"))?;
                    check!(
                        runs == old || runs == new,
                        "{what}: executes {runs:?}, neither the old nor the new state"
                    );
                    let predicted = if word != home {
                        states.iter().copied().find(|&st| word_of(st) == Ok(word))
                    } else if br.branch_word() == NOP {
                        Some(literal_of)
                    } else {
                        Some(branch_of)
                    };
                    check!(
                        Some(runs) == predicted,
                        "{what}: executes {runs:?}, the model predicts {predicted:?}"
                    );
                    let n = torn.states;
                    torn.calls +=
                        call(runs, n, 1 + n % (CPUS - 1)).map_err(|e| format!("{what}: {e}"))?;
                    torn.states += 1;
                    if runs == old {
                        torn.ran_old += 1;
                    } else {
                        torn.ran_new += 1;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Puts `key`'s one site and window back to state `st` (the key's slot
/// never changed during the walk), then checks the library takes it from
/// there: updates to g and back, with the site as planned and calls right.
///
/// # Safety
///
/// As for [`walk_site`].
unsafe fn restore_site(key: Key, st: S) -> TestResult {
    let s = key.sites()[0];
    let tramp = key.tramp();
    let word = site::plan(s as u64, tramp, key.target(st)).map_err(|e| format!("plan: {e}"))?;
    let window = a64::plan(tramp, key.target(st)).map_err(|e| format!("plan: {e}"))?;
    let w = tramp as usize - 8;
    // SAFETY: per this function's contract.
    unsafe {
        write_text(&[
            (s, &word.to_le_bytes()),
            (w, &window.literal.to_le_bytes()),
            (w + 8, &window.entry.to_le_bytes()),
        ])
    }?;
    for next in [G, st] {
        key.set(next, patching::writer())
            .map_err(|e| format!("{}: update to {next:?} after the walk: {e}", key.name()))?;
        check_sites(key, next, "after the walk")?;
    }
    Ok(())
}

/// The arm64 claim for sites: an update leaves the old or the new
/// instruction at each site (one aligned 32-bit store of a BL or NOP), and
/// a failed one the trampoline's `bl`; whatever the trampoline shows
/// meanwhile, each of those words calls the old or the new target. Walked
/// for a value key (f, g, far, RET0) and an effect key (f, g, far, NULL),
/// every ordered pair, every such word with every torn window, each
/// executed on CPU 0 and a secondary.
pub(crate) fn inline_site_torn_states() -> TestResult {
    let mut torn = Torn::default();
    let v = value_key(&TORN_V)?;
    let value_call = |runs, n: usize, cpu| {
        let x = 100 + n as u64;
        let mut calls = 0;
        for c in [0, cpu] {
            let got = on_cpu(c, || caught(|| torn_v_site(x)))?;
            check!(
                got == value_of(runs, x),
                "cpu{c}: the site returned {got:#x}, {runs:?} returns {:#x}",
                value_of(runs, x)
            );
            calls += 1;
        }
        Ok(calls)
    };
    // SAFETY: TORN_V's site and window belong to this test; nothing else
    // calls TORN_V.
    unsafe { walk_site(&mut torn, v, &VALUE_STATES, value_call) }?;
    let value_states = torn.states;
    // SAFETY: as above.
    unsafe { restore_site(v, F) }?;
    torn.calls += value_call(F, 0, 1)?;

    let n = effect_key(&TORN_N)?;
    let effect_call = |runs, k: usize, cpu| {
        let mut calls = 0;
        for c in [0, cpu] {
            let x = effect_arg(c, k % CELLS_PER_CPU);
            let got = on_cpu(c, || {
                cell(x).store(0, Ordering::Relaxed);
                caught(|| torn_n_site(x))?;
                Ok(cell(x).load(Ordering::Relaxed))
            })?;
            check!(
                got == effect_of(runs, x),
                "cpu{c}: the site left {got:#x}, {runs:?} leaves {:#x}",
                effect_of(runs, x)
            );
            calls += 1;
        }
        Ok(calls)
    };
    // SAFETY: TORN_N's site and window belong to this test; nothing else
    // calls TORN_N.
    unsafe { walk_site(&mut torn, n, &EFFECT_STATES, effect_call) }?;
    // SAFETY: as above.
    unsafe { restore_site(n, F) }?;
    torn.calls += effect_call(F, 0, 1)?;
    // Per key: 6 pairs with the far state (its word is the trampoline's
    // `bl`: 2 words) and 6 without (3 words), times 4 windows.
    check_eq!((value_states, torn.states - value_states), (120, 120));
    println!(
        "inline torn: {} (site word, literal, branch) states of TORN_V (f/g/far/RET0) and TORN_N (f/g/far/NULL) written by hand and decoded; {} executed the old target, {} the new, none anything else; {} calls through the site on cpu0 and cpu1..{}, 0 faults",
        torn.states,
        torn.ran_old,
        torn.ran_new,
        torn.calls,
        CPUS - 1
    );
    Ok(())
}

// The SMP stress through the thousand sites of BIG_V and BIG_N.

/// The step CPU 0 last completed (both updates returned).
static GENERATION: AtomicUsize = AtomicUsize::new(0);
/// The step CPU 0 is installing or last installed: stored before its
/// first write.
static STARTED: AtomicUsize = AtomicUsize::new(0);
static STOP: AtomicBool = AtomicBool::new(false);
static WORKERS_DONE: AtomicUsize = AtomicUsize::new(0);

/// Per-CPU counts of a stress run.
struct Counts {
    calls: [AtomicU64; MAX_CPUS],
    /// BIG_V calls by the state they reached (`VALUE_STATES` index).
    value: [[AtomicU64; 4]; MAX_CPUS],
    /// BIG_N calls by the state they reached (`EFFECT_STATES` index).
    effect: [[AtomicU64; 4]; MAX_CPUS],
    /// Calls made while an update was in progress (`g0 < s1`): evidence
    /// that calls and updates really overlapped.
    during: [AtomicU64; MAX_CPUS],
    /// Passes over a hundred sites that saw two states: sites patched
    /// while this CPU ran through them.
    mixed: [AtomicU64; MAX_CPUS],
    /// Calls that reached the state of no step in `g0..=s1`.
    stale: [AtomicU64; MAX_CPUS],
    /// Calls whose result or cell matches no state.
    wrong: [AtomicU64; MAX_CPUS],
    /// The first stale or wrong call: `key << 60 | site << 40 | g0 << 20 | s1`.
    first: [AtomicU64; MAX_CPUS],
}

static COUNTS: Counts = Counts {
    calls: [const { AtomicU64::new(0) }; MAX_CPUS],
    value: [const { [const { AtomicU64::new(0) }; 4] }; MAX_CPUS],
    effect: [const { [const { AtomicU64::new(0) }; 4] }; MAX_CPUS],
    during: [const { AtomicU64::new(0) }; MAX_CPUS],
    mixed: [const { AtomicU64::new(0) }; MAX_CPUS],
    stale: [const { AtomicU64::new(0) }; MAX_CPUS],
    wrong: [const { AtomicU64::new(0) }; MAX_CPUS],
    first: [const { AtomicU64::new(u64::MAX) }; MAX_CPUS],
};

/// The stress's cycle, by state index (`VALUE_STATES`/`EFFECT_STATES`),
/// indexed by step modulo its length: consecutive entries, wrapping
/// around, take all 12 ordered pairs of distinct states.
const CYCLE: [usize; 12] = [0, 1, 2, 3, 0, 2, 1, 3, 1, 0, 3, 2];

fn state_of_step(step: usize) -> usize {
    CYCLE[step % CYCLE.len()]
}

/// Whether a call between generation `g0` and announced step `s1` may have
/// reached state index `seen`.
fn allowed(seen: usize, g0: usize, s1: usize) -> bool {
    (g0..=s1).any(|step| state_of_step(step) == seen)
}

/// Records a stale or wrong call (the first one, for the report).
fn note(counter: &AtomicU64, cpu: usize, key: u64, site: usize, g0: usize, s1: usize) {
    counter.fetch_add(1, Ordering::Relaxed);
    let packed =
        key << 60 | (site as u64) << 40 | (g0 as u64 & 0xf_ffff) << 20 | s1 as u64 & 0xf_ffff;
    let _ =
        COUNTS.first[cpu].compare_exchange(u64::MAX, packed, Ordering::Relaxed, Ordering::Relaxed);
}

/// A worker: calls through all the sites of BIG_V and BIG_N, a hundred
/// at a time, and checks every result against the steps the calls
/// overlapped, until [`STOP`].
fn stress_worker(cpu: usize) {
    let c = &COUNTS;
    let mut out = [0u64; PER_FN];
    let mut round: u64 = 1;
    while !STOP.load(Ordering::Relaxed) {
        for f in 0..FNS {
            // Site k's arguments: the round, the CPU and k, so a result
            // names the call that made it.
            let arg = (round & 0xfff) << 20 | (cpu as u64) << 16;
            for cell in &CELLS[cpu][f * PER_FN..(f + 1) * PER_FN] {
                cell.store(0, Ordering::Relaxed);
            }
            let g0 = GENERATION.load(Ordering::Acquire);
            BIG_V_FNS[f](arg, &mut out);
            BIG_N_FNS[f](arg);
            // Order what the calls read and wrote before the read of the
            // announced step (see `static_call_smp_stress`'s worker).
            fence(Ordering::SeqCst);
            let s1 = STARTED.load(Ordering::Acquire);
            let mut seen_here = [0u8; 2];
            for (i, &got) in out.iter().enumerate() {
                let k = f * PER_FN + i;
                let x = arg + k as u64;
                let value = value_seen(got, x);
                let effect = effect_seen(CELLS[cpu][k].load(Ordering::Relaxed), x);
                for (key, seen) in [
                    (
                        0u64,
                        value.map(|s| VALUE_STATES.iter().position(|&t| t == s)),
                    ),
                    (
                        1,
                        effect.map(|s| EFFECT_STATES.iter().position(|&t| t == s)),
                    ),
                ] {
                    let Some(Some(seen)) = seen else {
                        note(&c.wrong[cpu], cpu, key, k, g0, s1);
                        continue;
                    };
                    let counts = if key == 0 {
                        &c.value[cpu]
                    } else {
                        &c.effect[cpu]
                    };
                    counts[seen].fetch_add(1, Ordering::Relaxed);
                    seen_here[key as usize] |= 1 << seen;
                    if !allowed(seen, g0, s1) {
                        note(&c.stale[cpu], cpu, key, k, g0, s1);
                    }
                }
            }
            if seen_here.iter().any(|m| m.count_ones() > 1) {
                c.mixed[cpu].fetch_add(1, Ordering::Relaxed);
            }
            if g0 < s1 {
                c.during[cpu].fetch_add(2 * PER_FN as u64, Ordering::Relaxed);
            }
            c.calls[cpu].fetch_add(2 * PER_FN as u64, Ordering::Relaxed);
        }
        round += 1;
    }
    WORKERS_DONE.fetch_add(1, Ordering::SeqCst);
}

/// CPUs 1..3 call through the thousand sites of BIG_V (f/g/far/RET0) and
/// of BIG_N (f/g/far/NULL) in a loop, checking every result, while CPU 0
/// retargets both through all 12 transitions of each, again and again
/// (every site rewritten by every update). Every call must reach the old
/// or the new state of the step in progress, or the one state between
/// steps: none a state replaced before it started, none anything else.
/// Calls made while updates ran, and passes over a hundred sites that saw
/// two states, show that calls and patching really overlapped.
pub(crate) fn inline_sites_smp_stress() -> TestResult {
    // Each step rewrites 2000 sites, about a third of a second under
    // emulation while the workers run: 240 updates at EL1 cross each of the
    // 12 transitions of each key 10 times; EL2 (and the deliberate-failure
    // build) only need to show it runs there.
    let steps: usize = if cfg!(feature = "deliberate-failure") {
        12
    } else if cpu::current_el() == 1 {
        120
    } else {
        60
    };
    let v = value_key(&BIG_V)?;
    let n = effect_key(&BIG_N)?;
    let w = patching::writer();
    let set = |step: usize| -> Result<(), Error> {
        let s = state_of_step(step);
        v.set(VALUE_STATES[s], w)?;
        n.set(EFFECT_STATES[s], w)
    };
    set(0).map_err(|e| format!("initial update: {e}"))?;
    STOP.store(false, Ordering::SeqCst);
    WORKERS_DONE.store(0, Ordering::SeqCst);
    STARTED.store(0, Ordering::SeqCst);
    GENERATION.store(0, Ordering::SeqCst);
    for cpu in 1..CPUS {
        check!(smp::post(cpu, stress_worker), "cpu{cpu} is busy");
    }
    let faults_before = exceptions::faults_caught();
    let syncs_before = gic::sync_count();
    let start = CNTVCT_EL0.get();
    let mut result = Ok(());
    for step in 1..=steps {
        STARTED.store(step, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if let Err(e) = set(step) {
            result = Err(format!("step {step}: update failed: {e}"));
            break;
        }
        GENERATION.store(step, Ordering::Release);
        // Let every worker make a round of calls under the new state
        // before the next update (a round is all 2000 sites).
        let base: [u64; MAX_CPUS] =
            core::array::from_fn(|c| COUNTS.calls[c].load(Ordering::Relaxed));
        let progressed = cpu::spin_until(10_000, || {
            (1..CPUS).all(|c| COUNTS.calls[c].load(Ordering::Relaxed) >= base[c] + 2 * BIG as u64)
        });
        if !progressed {
            result = Err(format!(
                "step {step}: a worker made no round of calls in 10 s"
            ));
            break;
        }
    }
    STOP.store(true, Ordering::SeqCst);
    let stopped = cpu::spin_until(5000, || WORKERS_DONE.load(Ordering::SeqCst) >= CPUS - 1);
    let elapsed = us(CNTVCT_EL0.get() - start) / 1000;
    result?;
    check!(stopped, "the workers did not stop");
    let syncs = gic::sync_count() - syncs_before;
    let faults =
        exceptions::faults_caught() - faults_before + exceptions::UNEXPECTED.load(Ordering::SeqCst);
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    let (mut total, mut during, mut mixed) = (0, 0, 0);
    for c in 1..CPUS {
        let calls = load(&COUNTS.calls[c]);
        let value = COUNTS.value[c].each_ref().map(load);
        let effect = COUNTS.effect[c].each_ref().map(load);
        let (stale, wrong) = (load(&COUNTS.stale[c]), load(&COUNTS.wrong[c]));
        let (d, m) = (load(&COUNTS.during[c]), load(&COUNTS.mixed[c]));
        total += calls;
        during += d;
        mixed += m;
        println!(
            "inline stress: cpu{c}: {calls} calls ({d} during updates, {m} passes of 100 sites saw two states); BIG_V f/g/far/RET0 {}/{}/{}/{}; BIG_N f/g/far/NULL {}/{}/{}/{}; stale {stale}; wrong {wrong}",
            value[0], value[1], value[2], value[3], effect[0], effect[1], effect[2], effect[3]
        );
        if stale + wrong > 0 {
            let f = load(&COUNTS.first[c]);
            return Err(format!(
                "cpu{c}: {stale} stale and {wrong} wrong calls; the first: {} site {} in steps {}..={}",
                if f >> 60 == 0 { "BIG_V" } else { "BIG_N" },
                (f >> 40) & 0xf_ffff,
                (f >> 20) & 0xf_ffff,
                f & 0xf_ffff
            ));
        }
        check!(
            value.iter().chain(&effect).all(|&n| n > 0),
            "cpu{c} did not see every state: BIG_V {value:?}, BIG_N {effect:?}"
        );
    }
    println!(
        "inline stress: {} updates of {BIG} sites ({steps} steps x 2 keys), {syncs} sync IPIs, {total} calls on {} CPUs in {elapsed} ms ({during} during updates, {mixed} mixed passes), faults {faults}",
        2 * steps,
        CPUS - 1
    );
    check_eq!(faults, 0);
    check_eq!(syncs, 2 * steps as u64);
    check!(
        during > 0 && mixed > 0,
        "no call overlapped an update: the stress did not run concurrently"
    );
    Ok(())
}
