//! Boot and platform support for the static-call test kernel on QEMU's arm64
//! `virt` board.
//!
//! The binaries (`tests`, `demo`) mark their entry with [`aarch64_rt::entry!`]
//! and call [`init`] first. This crate provides what they share: the PL011
//! console, exception handling, PSCI `CPU_ON` bring-up of the secondary CPUs,
//! CPU feature reads, a small test runner printing the harness's UART protocol,
//! and the semihosting exit.

#![no_std]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

pub mod console;
pub mod cpu;
pub mod exceptions;
pub mod gic;
#[path = "../../kernel-common/heap.rs"]
pub mod heap;
pub mod hooks;
pub mod mmu;
pub mod patching;
#[path = "../../kernel-common/runner.rs"]
pub mod runner;
pub mod smp;
pub mod stress;

use core::panic::PanicInfo;

// The `initial_pagetable!` arms expand to the macro unqualified.
use aarch64_rt::{InitialPagetable, initial_pagetable};
use qemu_exit::QEMUExit;

/// Descriptor bits shared by both initial mappings: a valid 1 GiB level-1
/// block, access flag set (no access-flag faults).
const BLOCK: usize = 1 << 0 | 1 << 10;
/// MAIR index 0 (device nGnRE), execute-never (bit 54: UXN at EL1, XN at EL2).
const DEVICE_BLOCK: usize = BLOCK | 1 << 54;
/// MAIR index 1 (normal write-back), inner shareable: RAM, shared by all CPUs.
const RAM_BLOCK: usize = BLOCK | 1 << 2 | 3 << 8;

// The identity map aarch64-rt installs before any Rust code runs, on every
// CPU: the first GiB (UART, GIC, ...) as device memory, the second (RAM at
// 0x4000_0000) as normal memory. Read-write and executable, unguarded: later
// the kernel switches to its own finer page tables (aarch64-rt's secondary
// entry reaches Rust through `br x20`, which a `bti c` landing pad in a
// guarded page would refuse).
initial_pagetable!({
    let mut table = [0; 512];
    table[0] = DEVICE_BLOCK;
    table[1] = RAM_BLOCK | 0x4000_0000;
    InitialPagetable(table)
});

/// Common start-up for the boot CPU: console first, so everything after can
/// report, then the kernel's own page tables (read-only text, BTI guarded).
/// Call before [`smp::start_secondaries`]: secondaries switch to the same
/// tables as they come up.
pub fn init() {
    console::init();
    mmu::init();
    gic::init_this_cpu();
    patching::install();
}

/// Ends the QEMU run with `code` as its exit status (semihosting `SYS_EXIT`).
pub fn exit(code: u32) -> ! {
    qemu_exit::AArch64::new().exit(code)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    console::panic_print(format_args!("panic: cpu{}: {}\n", cpu::id(), info));
    exit(101)
}
