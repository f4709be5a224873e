//! The benchmark kernel: exact instructions per call on the virt board.
//!
//! Booted by `cargo xtask bench` with `-icount shift=0`, under which the
//! PMU's INST_RETIRED event counts exactly. Each row is one call measured
//! in assembly, from the call instruction to the callee's return, with the
//! measurement's own overhead (an empty measurement) subtracted. Every
//! callee is `bti c; add x0, x0, #1; ret`. The kernel prints one line per
//! row, `bench arm64 <row> <instructions>`, then checks that every callee
//! really ran (each row adds one to its argument).

#![no_std]
#![no_main]

extern crate alloc;

use core::arch::{asm, global_asm};

use aarch64_rt::entry;
use virt_kernel::println;

// The platform hook `virt_kernel::hooks` declares (every binary defines it).
static_call::static_call! {
    pub static PLATFORM_CLOCK: fn(u32) -> u64 = RET0;
}

// The callees, and the comparators written the way their designs are:
// a kCFI-checked callee (its type hash in the word before its entry), and
// the trampoline shape of Linux mainline since 2026 (`adrp`/`ldr` of a
// literal in rodata, then `br x16`).
/// The callee of most rows.
#[unsafe(naked)]
#[unsafe(no_mangle)]
extern "C" fn bench_callee(_x: u64) -> u64 {
    core::arch::naked_asm!("bti c", "add x0, x0, #1", "ret")
}

/// The same, out of `b` range of the trampolines: the far key's target.
#[unsafe(naked)]
#[unsafe(link_section = ".far_text.bench")]
extern "C" fn bench_far_callee(_x: u64) -> u64 {
    core::arch::naked_asm!("bti c", "add x0, x0, #1", "ret")
}

global_asm!(
    ".text",
    ".balign 16",
    "    .word 0x5a5a1234",
    ".globl bench_callee_kcfi",
    "bench_callee_kcfi:",
    "    bti c",
    "    add x0, x0, #1",
    "    ret",
    ".balign 16",
    ".globl bench_mainline_tramp",
    "bench_mainline_tramp:",
    "    bti c",
    "    adrp x16, bench_mainline_literal",
    "    ldr x16, [x16, :lo12:bench_mainline_literal]",
    "    br x16",
    ".pushsection .rodata.bench_mainline_literal, \"a\"",
    ".balign 8",
    "bench_mainline_literal:",
    "    .quad bench_callee",
    ".popsection",
);

unsafe extern "C" {
    fn bench_callee_kcfi(x: u64) -> u64;
    fn bench_mainline_tramp(x: u64) -> u64;
    // The keys' trampolines, called from the measuring assembly by name.
    fn __SCT__NEAR_KEY();
    fn __SCT__FAR_KEY();
    fn __SCT__NULL_KEY();
}

static_call::static_call! {
    static NEAR_KEY: extern "C" fn(u64) -> u64 = bench_callee;
    static FAR_KEY: extern "C" fn(u64) -> u64 = bench_callee;
    static NULL_KEY: extern "C" fn(u64) = NULL;
    /// Called at one inline site (`inline_row`).
    static INLINE_KEY: extern "C" fn(u64) -> u64 = bench_far_callee;
    /// Called at one inline site (`null_inline_row`), updated to NULL.
    static NULL_INLINE_KEY: extern "C" fn(u64) = bench_noop;
    /// Called from 1000 inline sites (`wide_*`).
    static WIDE: extern "C" fn(u64) -> u64 = bench_callee;
}

/// A callee without a result, the NULL key's first target.
extern "C" fn bench_noop(_x: u64) {}

/// The PMU's instruction counter.
#[inline(always)]
fn instructions() -> u64 {
    let n: u64;
    // SAFETY: reads this CPU's PMU counter 0; no memory, no side effect.
    // Not `nomem`: the read must stay where it is relative to the call.
    unsafe { asm!("mrs {n}, pmevcntr0_el0", n = out(reg) n, options(nostack)) };
    n
}

/// Counts a call made from Rust (`$call`), the same way for every row of
/// this kind, so rows compare: (instructions between the two counter
/// reads, the call's result).
macro_rules! measure_rust {
    ($call:expr) => {{
        let before = instructions();
        let result = $call;
        let after = instructions();
        (after - before, result)
    }};
}

/// A function around one direct call, counted whole (call, prologue,
/// epilogue): to compare with the `bench_fn_key_*` functions.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn bench_fn_direct(x: u64) -> u64 {
    bench_callee(x).wrapping_add(1)
}

/// The same function calling a key at an inline site. The site's `asm!`
/// declares `clobber_abi("C")`, which where the ABI has FP/SIMD registers
/// counts v8-v15 as clobbered whole (asm cannot say that only their upper
/// halves are lost), so the function saves and restores d8-d15 itself: a
/// cost per function entry that the call alone does not show. Soft-float
/// builds have no such registers.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn bench_fn_inline(x: u64) -> u64 {
    INLINE_KEY.call_inline(x).wrapping_add(1)
}

/// The same function calling the key by default (`call`): the trampoline
/// call with FP/SIMD registers, the inline site without.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn bench_fn_key_default(x: u64) -> u64 {
    INLINE_KEY.call(x).wrapping_add(1)
}

/// The same function calling the key's trampoline (`call_trampoline`).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn bench_fn_key_trampoline(x: u64) -> u64 {
    INLINE_KEY.call_trampoline(x).wrapping_add(1)
}

/// Functions making four dependent calls, counted whole: where inline
/// sites win despite the FP/SIMD saves (paid once per entry).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn bench_four_direct(x: u64) -> u64 {
    bench_callee(bench_callee(bench_callee(bench_callee(x)))).wrapping_add(1)
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn bench_four_default(x: u64) -> u64 {
    let k = &INLINE_KEY;
    k.call(k.call(k.call(k.call(x)))).wrapping_add(1)
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn bench_four_inline(x: u64) -> u64 {
    let k = &INLINE_KEY;
    k.call_inline(k.call_inline(k.call_inline(k.call_inline(x))))
        .wrapping_add(1)
}

#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn bench_four_trampoline(x: u64) -> u64 {
    let k = &INLINE_KEY;
    k.call_trampoline(k.call_trampoline(k.call_trampoline(k.call_trampoline(x))))
        .wrapping_add(1)
}

#[inline(never)]
fn direct_row(x: u64) -> (u64, u64) {
    measure_rust!(bench_callee(x))
}

#[inline(never)]
fn inline_row(x: u64) -> (u64, u64) {
    measure_rust!(INLINE_KEY.call_inline(x))
}

#[inline(never)]
fn null_inline_row(x: u64) -> (u64, u64) {
    measure_rust!({
        NULL_INLINE_KEY.call_inline(x);
        x
    })
}

#[macro_use]
#[path = "../../../common/wide_sites.rs"]
mod wide_sites;

wide_fns!(WIDE, WIDE_FNS: wide_0 0 wide_1 1 wide_2 2 wide_3 3 wide_4 4 wide_5 5 wide_6 6 wide_7 7 wide_8 8 wide_9 9);

/// Syncs per update of the 1000-site key, averaged over its updates
/// (near, far, NULL-free), each checked through every site.
fn wide_update_syncs() -> Result<f64, alloc::string::String> {
    let mut sites = 0;
    WIDE.each_inline_site(|_| sites += 1);
    if sites != 1000 {
        return Err(alloc::format!("WIDE has {sites} inline sites, not 1000"));
    }
    let updates = [
        bench_far_callee,
        bench_callee,
        bench_far_callee,
        bench_callee,
    ];
    let before = virt_kernel::gic::sync_count();
    for f in updates {
        WIDE.update(f).map_err(|e| alloc::format!("{e}"))?;
        if let Some(bad) = WIDE_FNS
            .iter()
            .enumerate()
            .position(|(i, w)| w(1) != wide_sites::wide_result(i, 2))
        {
            return Err(alloc::format!("wide_{bad} missed an update"));
        }
    }
    let syncs = virt_kernel::gic::sync_count() - before;
    Ok(syncs as f64 / updates.len() as f64)
}

/// Starts the PMU's counter 0 on INST_RETIRED (event 0x08), counting at
/// EL1 and EL0.
fn start_counter() {
    // SAFETY: PMU configuration registers of this CPU; nothing else uses
    // the PMU in this kernel.
    unsafe {
        asm!(
            "msr pmevtyper0_el0, {event}",
            "msr pmcntenset_el0, {one}",
            "msr pmcr_el0, {pmcr}",
            "isb",
            event = in(reg) 0x08u64,
            one = in(reg) 1u64,
            pmcr = in(reg) 0x7u64,
        );
    }
}

/// Counts the instructions of `$body` (assembly making one call with x0
/// as argument and result), with its arguments as further operands.
/// Returns (instructions, x0 after the call).
macro_rules! measure {
    ([$($body:literal),*] $(, $($operands:tt)*)?) => {{
        let (before, after, result): (u64, u64, u64);
        // `before` stays in a callee-saved register across the call.
        // SAFETY: the body calls one of this file's callees or a key's
        // trampoline with the C ABI; every C-ABI register is declared
        // clobbered.
        unsafe {
            asm!(
                "mrs x20, pmevcntr0_el0",
                $($body,)*
                "mrs x21, pmevcntr0_el0",
                out("x20") before,
                out("x21") after,
                inout("x0") 1u64 => result,
                $($($operands)*,)?
                clobber_abi("C"),
            );
        }
        (after - before, result)
    }};
}

entry!(main);

fn main(_x0: u64, _x1: u64, _x2: u64, _x3: u64) -> ! {
    virt_kernel::init();
    start_counter();
    // The far key is updated out of branch range (its `b` becomes a NOP,
    // the literal is taken); the near key is updated once, as after boot.
    NEAR_KEY.update(bench_callee).expect("near update");
    FAR_KEY.update(bench_far_callee).expect("far update");
    // The inline keys start out of range and are updated into it: each
    // site becomes `bl bench_callee`, or `nop` for NULL.
    INLINE_KEY.update(bench_callee).expect("inline update");
    NULL_INLINE_KEY.update_null().expect("inline NULL update");

    let (empty, _) = measure!([]);
    let pointer = bench_callee as extern "C" fn(u64) -> u64 as usize;
    let kcfi = bench_callee_kcfi as unsafe extern "C" fn(u64) -> u64 as usize;
    let rows: [(&str, (u64, u64), u64); 16] = [
        ("direct", measure!(["bl {f}"], f = sym bench_callee), 2),
        (
            "trampoline_near",
            measure!(["bl {f}"], f = sym __SCT__NEAR_KEY),
            2,
        ),
        (
            "trampoline_far",
            measure!(["bl {f}"], f = sym __SCT__FAR_KEY),
            2,
        ),
        // NULL: the call returns without calling; x0 is untouched.
        (
            "null_trampoline",
            measure!(["bl {f}"], f = sym __SCT__NULL_KEY),
            1,
        ),
        ("fn_pointer", measure!(["blr x9"], in("x9") pointer), 2),
        (
            "fn_pointer_kcfi",
            measure!(
                [
                    "ldur w16, [x9, #-4]",
                    "movz w17, #0x1234",
                    "movk w17, #0x5a5a, lsl #16",
                    "cmp w16, w17",
                    "b.eq 2f",
                    "brk #0x8228",
                    "2: blr x9"
                ],
                in("x9") kcfi
            ),
            2,
        ),
        (
            "mainline_2026",
            measure!(["bl {f}"], f = sym bench_mainline_tramp),
            2,
        ),
        (
            "direct_in_function",
            measure!(["bl {f}"], f = sym bench_fn_direct),
            3,
        ),
        (
            "inline_in_function",
            measure!(["bl {f}"], f = sym bench_fn_inline),
            3,
        ),
        (
            "key_in_function_default",
            measure!(["bl {f}"], f = sym bench_fn_key_default),
            3,
        ),
        (
            "key_in_function_inline",
            measure!(["bl {f}"], f = sym bench_fn_inline),
            3,
        ),
        (
            "key_in_function_trampoline",
            measure!(["bl {f}"], f = sym bench_fn_key_trampoline),
            3,
        ),
        (
            "four_calls_direct",
            measure!(["bl {f}"], f = sym bench_four_direct),
            6,
        ),
        (
            "four_calls_default",
            measure!(["bl {f}"], f = sym bench_four_default),
            6,
        ),
        (
            "four_calls_inline",
            measure!(["bl {f}"], f = sym bench_four_inline),
            6,
        ),
        (
            "four_calls_trampoline",
            measure!(["bl {f}"], f = sym bench_four_trampoline),
            6,
        ),
    ];
    let mut ok = true;
    for (name, (count, result), expected) in rows {
        println!("bench arm64 {name} {}", count - empty);
        if result != expected {
            println!("bench: {name} returned {result}, expected {expected}");
            ok = false;
        }
    }
    println!("bench arm64 measurement_overhead {empty}");
    // Calls made from Rust, each row counted the same way: the inline site
    // against the direct call.
    let x = core::hint::black_box(1);
    let rust_rows = [
        ("direct_from_rust", direct_row(x), 2),
        ("inline", inline_row(x), 2),
        ("null_inline", null_inline_row(x), 1),
    ];
    for (name, (count, result), expected) in rust_rows {
        // The second counter read retires too: the same overhead as above.
        println!("bench arm64 {name} {}", count - empty);
        if result != expected {
            println!("bench: {name} returned {result}, expected {expected}");
            ok = false;
        }
    }
    match wide_update_syncs() {
        Ok(syncs) => println!("bench arm64 update_1000_sites_syncs {syncs}"),
        Err(e) => {
            println!("bench: 1000 sites: {e}");
            ok = false;
        }
    }
    virt_kernel::exit(if ok { 0 } else { 1 });
}
