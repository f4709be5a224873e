//! The PL011 UART console at 0x0900_0000 and the `print!`/`println!` macros.
//!
//! One lock guards the UART and is held for a whole `println!`, so lines from
//! different CPUs never interleave (the harness parses whole lines).

use core::fmt::{self, Write};
use core::ptr::NonNull;

use arm_pl011_uart::{PL011Registers, Uart, UniqueMmioPointer};
use spin::mutex::SpinMutex;

/// Base address of the first PL011 on QEMU's virt board.
const PL011_BASE: usize = 0x0900_0000;

static CONSOLE: SpinMutex<Option<Uart<'static>>> = SpinMutex::new(None);

/// Creates the console. QEMU's PL011 needs no baud-rate setup to transmit.
pub fn init() {
    let mut console = CONSOLE.lock();
    if console.is_none() {
        let base = NonNull::new(PL011_BASE as *mut PL011Registers).expect("non-null constant");
        // SAFETY: the PL011 registers live at this address on the virt board,
        // the initial page table maps it as device memory, and this is the only
        // place a pointer to it is created (guarded by `is_none`).
        let regs = unsafe { UniqueMmioPointer::new(base) };
        *console = Some(Uart::new(regs));
    }
}

/// Prints formatted text; used by the macros.
#[doc(hidden)]
pub fn _print(args: fmt::Arguments) {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        // The PL011 writer cannot fail.
        let _ = uart.write_fmt(args);
    }
}

/// Prints formatted text and a newline under one lock; used by `println!`.
#[doc(hidden)]
pub fn _println(args: fmt::Arguments) {
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = uart.write_fmt(args);
        let _ = uart.write_str("\n");
    }
}

/// Prints from the panic handler: the lock may be held by the CPU that
/// panicked (for example in an exception taken while printing), so wait only a
/// bounded time, then take the UART anyway. A garbled line beats a silent hang.
pub fn panic_print(args: fmt::Arguments) {
    for _ in 0..1_000_000 {
        if let Some(mut guard) = CONSOLE.try_lock() {
            if let Some(uart) = guard.as_mut() {
                let _ = uart.write_fmt(args);
            }
            return;
        }
        core::hint::spin_loop();
    }
    // SAFETY: we are about to end the run; whoever holds the lock is either
    // this CPU (re-entered) or a CPU stuck with it, and a second writer at
    // worst mixes characters on the line.
    unsafe { CONSOLE.force_unlock() };
    if let Some(uart) = CONSOLE.lock().as_mut() {
        let _ = uart.write_fmt(args);
    }
}

/// Prints to the UART console.
#[macro_export]
macro_rules! print {
    ($($arg:tt)*) => { $crate::console::_print(format_args!($($arg)*)) };
}

/// Prints a line to the UART console; the whole line is written under one lock.
#[macro_export]
macro_rules! println {
    () => { $crate::print!("\n") };
    ($($arg:tt)*) => { $crate::console::_println(format_args!($($arg)*)) };
}
