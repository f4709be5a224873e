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

    let (empty, _) = measure!([]);
    let pointer = bench_callee as extern "C" fn(u64) -> u64 as usize;
    let kcfi = bench_callee_kcfi as unsafe extern "C" fn(u64) -> u64 as usize;
    let rows: [(&str, (u64, u64), u64); 7] = [
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
    virt_kernel::exit(if ok { 0 } else { 1 });
}
