//! A minimal arm64 kernel using static-call, for QEMU's virt board.
//!
//! It boots (through aarch64-rt) with the MMU off, updates keys of both
//! kinds while text is writable where it runs (`writer::Direct`), turns the
//! MMU on with read-only text and a writable alias of it, updates them again
//! through the alias (`writer::Alias`), and finally checks that `Direct`
//! now faults. It prints one `test NAME ... ok` line per check on the UART
//! and ends QEMU through semihosting: status 0 only if every check passed.
//!
//! Build and run (see README.md; `cargo xtask example` does both):
//!
//! ```text
//! cargo build --release --target aarch64-unknown-none
//! qemu-system-aarch64 -M virt -cpu max -nographic -semihosting -nic none \
//!     -kernel target/aarch64-unknown-none/release/minimal-kernel
//! ```
//!
//! `-M virt,virtualization=on` boots it at EL2; the
//! `aarch64-unknown-none-softfloat` target works the same way.

#![no_std]
#![no_main]

mod mmu;
mod uart;

use aarch64_cpu::registers::{CurrentEL, ESR_EL1, ESR_EL2, FAR_EL1, FAR_EL2, Readable};
use aarch64_rt::{ExceptionHandlers, RegisterStateRef, entry, exception_handlers};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use qemu_exit::QEMUExit;
use static_call::writer::{self, Alias, Direct};
use static_call::{Error, static_call};

static_call! {
    /// A Rust-ABI key: each call goes to its trampoline, which branches to
    /// the current target.
    static GREETING: fn(u64) -> u64 = hello;
    /// `extern "C"` keys: every `call` is an inline call site that an
    /// update rewrites into a direct `bl` of the new target.
    static TICK: extern "C" fn(u64) -> u64 = add_one;
    /// NULL: a call does nothing until a target is installed.
    static ON_IDLE: extern "C" fn(u64) = NULL;
    /// RET0: a call returns 0 until a target is installed.
    static EVENTS: extern "C" fn() -> u64 = RET0;
}

fn hello(x: u64) -> u64 {
    x + 100
}
fn bonjour(x: u64) -> u64 {
    x + 200
}
fn hallo(x: u64) -> u64 {
    x + 300
}
extern "C" fn add_one(x: u64) -> u64 {
    x + 1
}
extern "C" fn add_two(x: u64) -> u64 {
    x + 2
}
extern "C" fn add_three(x: u64) -> u64 {
    x + 3
}
extern "C" fn count_idle(n: u64) {
    // Loads and stores only, never a read-modify-write: with the MMU off
    // memory is Device memory, where exclusives may not work.
    IDLE.store(IDLE.load(Ordering::Relaxed) + n, Ordering::Relaxed);
}
extern "C" fn forty_two() -> u64 {
    42
}

static IDLE: AtomicU64 = AtomicU64::new(0);

/// With the MMU off, text is writable where it executes.
// SAFETY: used while the MMU is off, when every address is writable. The
// final check breaks that promise on purpose: its first store faults, and
// the exception handler ends the run, so nothing runs after it.
static BOOT_WRITER: Direct = unsafe { Direct::new() };

/// Once the MMU is on: the image's 2 MiB, written through the alias.
// SAFETY: `mmu::enable` maps IMAGE_START..IMAGE_END read-write at
// ALIAS_OFFSET above, onto the same memory, for good, and this writer is
// installed only after that.
static MAPPED_WRITER: Alias = unsafe {
    Alias::new(
        mmu::IMAGE_START,
        mmu::IMAGE_START + mmu::ALIAS_OFFSET,
        mmu::IMAGE_END - mmu::IMAGE_START,
    )
};

static PASSED: AtomicU32 = AtomicU32::new(0);
static FAILED: AtomicU32 = AtomicU32::new(0);

/// Prints one check's result and counts it.
fn check(name: &str, ok: bool, detail: core::fmt::Arguments) {
    let counter = if ok { &PASSED } else { &FAILED };
    counter.store(counter.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    if ok {
        println!("test {name} ... ok");
    } else {
        println!("test {name} ... FAILED: {detail}");
    }
}

/// Checks every key's current behaviour against the expected targets.
fn check_calls(step: &str, greeting: u64, tick: u64, idle: u64, events: u64) {
    // `call_inline` asks for an inline call site, which every update
    // rewrites; `call` would be one on soft-float arm64 too, but with
    // FP/SIMD registers it is the compiler's call of the trampoline
    // (cheaper there; see `StaticCall`). Both reach the same target.
    let got = (GREETING.call(1), TICK.call_inline(1));
    IDLE.store(0, Ordering::Relaxed);
    ON_IDLE.call_inline(5);
    let got = (
        got.0,
        got.1,
        IDLE.load(Ordering::Relaxed),
        EVENTS.call_inline(),
    );
    let want = (greeting, tick, idle, events);
    check(
        step,
        got == want,
        format_args!("got {got:?}, want {want:?}"),
    );
}

fn current_el() -> u64 {
    CurrentEL.read(CurrentEL::EL)
}

entry!(main);
fn main(_: u64, _: u64, _: u64, _: u64) -> ! {
    let el = current_el();
    let float = if cfg!(target_feature = "neon") {
        "hard"
    } else {
        "soft"
    };
    println!("boot: EL{el}, {float}-float, MMU off");

    // The trampolines must lie inside the text the kernel maps executable.
    let text = mmu::text();
    let tramp = GREETING.trampoline() as usize;
    check(
        "trampolines_inside_text",
        text.contains(&tramp),
        format_args!("trampoline {tramp:#x} outside text {text:#x?}"),
    );
    check_calls("calls_as_linked", 101, 2, 0, 0);

    // 1. MMU off. The patch lock is a spin lock whose atomics need Normal
    //    memory; until the kernel promises that one CPU updates, the crate
    //    refuses rather than use them on Device memory.
    let refused = GREETING.update_with(bonjour, &BOOT_WRITER);
    if let Err(e) = refused {
        println!("  refused as it should be: {e}");
    }
    check(
        "mmu_off_update_refused_without_promise",
        matches!(refused, Err(e) if matches!(e.error, Error::MmuOff { .. }))
            && GREETING.call(1) == 101,
        format_args!("{refused:?}"),
    );
    // SAFETY: only this CPU runs until the MMU is on.
    unsafe { writer::allow_updates_with_mmu_off() };
    static_call::set_default_writer(&BOOT_WRITER);
    // Each `extern "C"` key's calls are recorded in the call-site table.
    let sites = [
        TICK.inline_sites(),
        ON_IDLE.inline_sites(),
        EVENTS.inline_sites(),
    ];
    check(
        "inline_sites_recorded",
        sites.iter().all(|&n| n >= 1),
        format_args!("sites per key: {sites:?}"),
    );
    let updated = (|| {
        GREETING.update(bonjour)?;
        TICK.update(add_two)?;
        ON_IDLE.update(count_idle)?;
        EVENTS.update(forty_two)
    })();
    check(
        "mmu_off_updates",
        updated.is_ok(),
        format_args!("{updated:?}"),
    );
    check_calls("calls_after_mmu_off_updates", 201, 3, 5, 42);

    // 2. MMU on: text read-only and executable, a writable alias of it.
    // SAFETY: the MMU is off, this CPU alone runs, `el` is the current EL.
    unsafe { mmu::enable(el) };
    println!("boot: MMU on, text {text:#x?} read-only");
    // Replaces the boot writer: every update from now on writes through
    // the alias.
    static_call::set_default_writer(&MAPPED_WRITER);
    let updated = (|| {
        GREETING.update(hallo)?;
        TICK.update(add_three)?;
        ON_IDLE.update_null()?;
        EVENTS.update_ret0()
    })();
    check(
        "alias_updates",
        updated.is_ok(),
        format_args!("{updated:?}"),
    );
    check_calls("calls_after_alias_updates", 301, 4, 0, 0);

    // 3. Writing text in place must now fault: the first store of this
    //    update takes a permission fault, and `sync_current` below ends
    //    the run.
    EXPECT_WRITE_FAULT.store(true, Ordering::Relaxed);
    let result = GREETING.update_with(hello, &BOOT_WRITER);
    check(
        "direct_write_faults_once_text_is_read_only",
        false,
        format_args!("the update returned {result:?}"),
    );
    finish()
}

/// Prints the summary and ends the run: status 0 only if nothing failed.
fn finish() -> ! {
    let (passed, failed) = (
        PASSED.load(Ordering::Relaxed),
        FAILED.load(Ordering::Relaxed),
    );
    println!("kernel: {passed} passed, {failed} failed");
    let qemu = qemu_exit::AArch64::new();
    if failed == 0 {
        qemu.exit_success()
    } else {
        qemu.exit_failure()
    }
}

static EXPECT_WRITE_FAULT: AtomicBool = AtomicBool::new(false);

struct Exceptions;

impl ExceptionHandlers for Exceptions {
    extern "C" fn sync_current(_state: RegisterStateRef) {
        let (esr, far) = if current_el() == 2 {
            (ESR_EL2.get(), FAR_EL2.get() as usize)
        } else {
            (ESR_EL1.get(), FAR_EL1.get() as usize)
        };
        // A data abort at this EL (EC 0x25), a write (WnR), a permission
        // fault (DFSC 0b0011xx), inside the text.
        let class = esr >> 26;
        let write = esr & (1 << 6) != 0;
        let permission = esr & 0b11_1100 == 0b00_1100;
        let expected = EXPECT_WRITE_FAULT.load(Ordering::Relaxed)
            && class == 0x25
            && write
            && permission
            && mmu::text().contains(&far);
        check(
            "direct_write_faults_once_text_is_read_only",
            expected,
            format_args!("unexpected exception: ESR {esr:#x}, FAR {far:#x}"),
        );
        if expected {
            println!("  (a write to {far:#x} took a permission fault, as it should)");
        }
        finish()
    }
}

exception_handlers!(Exceptions);

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    println!("test panic ... FAILED: {info}");
    FAILED.store(FAILED.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
    finish()
}
