//! The COM1 serial console (`uart_16550`), which QEMU's `-nographic` puts
//! on standard output.

use core::fmt::{self, Write};

use spin::mutex::SpinMutex;
use uart_16550::SerialPort;

/// COM1's I/O port base.
const COM1: u16 = 0x3f8;

static PORT: SpinMutex<Option<SerialPort>> = SpinMutex::new(None);

/// Initialises COM1. Call once, on the boot CPU, before printing.
pub fn init() {
    // SAFETY: 0x3f8 is COM1 on the PC QEMU emulates, used by nothing else.
    let mut port = unsafe { SerialPort::new(COM1) };
    port.init();
    *PORT.lock() = Some(port);
}

/// Prints under the console lock (not from NMI or #BP context: the lock
/// may be held by the code they interrupted).
pub fn print(args: fmt::Arguments) {
    if let Some(port) = PORT.lock().as_mut() {
        let _ = port.write_fmt(args);
    }
}

/// Prints without waiting for the lock (a panic or fault may have
/// interrupted a CPU holding it): output may interleave.
pub fn emergency_print(args: fmt::Arguments) {
    // SAFETY: as in `init`; a second handle on the same port only risks
    // interleaved characters, acceptable on the way to exit.
    let mut port = unsafe { SerialPort::new(COM1) };
    let _ = port.write_fmt(args);
}

/// `println!` on the serial console.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print(format_args!("{}\n", format_args!($($arg)*)))
    };
}
