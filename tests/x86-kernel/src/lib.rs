//! Boot and platform support for the static-call test kernel on QEMU's
//! x86-64 PC (`qemu-system-x86_64 -smp 4`, TCG).
//!
//! QEMU's `-kernel` enters at the PVH note's 32-bit entry ([`boot`]); every
//! CPU reaches [`kernel_entry`] in long mode. The boot CPU sets up the
//! console, the kernel's page tables (read-only text, a writable alias),
//! the IDT, the static-call writer, starts the other CPUs and calls the
//! binary's `x86_kernel_main`; the others wait for work ([`smp`]).

#![no_std]
#![deny(clippy::undocumented_unsafe_blocks, unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

extern crate alloc;

pub mod apic;
pub mod boot;
pub mod console;
pub mod cpu;
#[path = "../../kernel-common/heap.rs"]
pub mod heap;
pub mod interrupts;
pub mod paging;
pub mod patching;
#[path = "../../kernel-common/runner.rs"]
pub mod runner;
pub mod smp;

use core::fmt;
use core::panic::PanicInfo;
use core::sync::atomic::{AtomicU64, Ordering};

use qemu_exit::QEMUExit;

/// A static the kernel initialises at a point where nothing else can
/// touch it (the boot CPU before the others start, or one CPU's own
/// entry), then only reads: hands out a raw pointer, and each use says
/// why it is alone.
pub struct BootCell<T>(core::cell::UnsafeCell<T>);

// SAFETY: every access goes through `get` in an `unsafe` block whose
// caller ensures no other CPU accesses the value at the same time (see
// the type's documentation).
unsafe impl<T> Sync for BootCell<T> {}

impl<T> BootCell<T> {
    /// A cell holding `value`.
    pub const fn new(value: T) -> Self {
        BootCell(core::cell::UnsafeCell::new(value))
    }

    /// The value's address.
    pub const fn get(&self) -> *mut T {
        self.0.get()
    }
}

/// CPUs the kernel supports (QEMU runs it with `-smp 4`).
pub const MAX_CPUS: usize = 4;

/// The page tables every CPU switches to.
static CR3: AtomicU64 = AtomicU64::new(0);

/// The isa-debug-exit device (`-device isa-debug-exit,iobase=0xf4,iosize=4`).
/// QEMU exits with `(value << 1) | 1`: 0 is impossible, so success is 33
/// and the harness reads 33 as 0 and `2n + 1` as `n`.
pub const EXIT_PORT: u16 = 0xf4;
/// QEMU's exit status for success.
pub const EXIT_SUCCESS: u32 = 33;

unsafe extern "Rust" {
    /// The binary's main function, on the boot CPU once everything is up.
    safe fn x86_kernel_main() -> !;
}

/// Where every CPU arrives in long mode (from boot.rs), as CPU `cpu`.
#[unsafe(no_mangle)]
extern "C" fn kernel_entry(cpu: u32) -> ! {
    let cpu = cpu as usize;
    if cpu == 0 {
        console::init();
        let cr3 = paging::build();
        CR3.store(cr3, Ordering::SeqCst);
        paging::switch_this_cpu(cr3);
        interrupts::init_this_cpu(0);
        apic::mask_legacy_pic();
        apic::enable();
        cpu::calibrate_tsc();
        patching::install();
        let (text_begin, text_end) = paging::text();
        println!(
            "boot: cpu0 in long mode, text {text_begin:#x}..{text_end:#x} read-only, TSC {} MHz",
            cpu::tsc_per_ms() / 1000
        );
        smp::start_secondaries(MAX_CPUS, cr3);
        x86_64::instructions::interrupts::enable();
        x86_kernel_main()
    } else {
        // The boot code already loaded the final page tables (AP_CR3).
        interrupts::init_this_cpu(cpu);
        apic::enable();
        let actual = apic::id();
        if actual != cpu {
            fatal(format_args!(
                "started as cpu{cpu} but the APIC says {actual}"
            ));
        }
        println!("cpu{cpu}: online");
        smp::ONLINE.fetch_add(1, Ordering::SeqCst);
        smp::secondary_loop(cpu)
    }
}

/// Ends the QEMU run: `code` 0 as success, others as failures (see
/// [`EXIT_SUCCESS`]).
pub fn exit(code: u32) -> ! {
    // SAFETY: the harness starts QEMU with isa-debug-exit at EXIT_PORT.
    let exit = unsafe { qemu_exit::X86::new(EXIT_PORT, EXIT_SUCCESS) };
    if code == 0 {
        exit.exit_success()
    } else {
        exit.exit(code)
    }
}

/// Reports an unrecoverable condition (a fault, a foreign int3) and ends
/// the run with status 101, like a panic.
pub fn fatal(args: fmt::Arguments) -> ! {
    console::emergency_print(format_args!("panic: cpu{}: {}\n", apic::id(), args));
    exit(101)
}

#[panic_handler]
fn panic(info: &PanicInfo) -> ! {
    fatal(format_args!("{info}"))
}
