//! Output on the virt board's PL011 UART: transmit only, as left set up by
//! QEMU (firmware does the same on real boards).

use core::fmt;
use core::ptr::{read_volatile, write_volatile};

/// The virt board's first PL011.
const BASE: usize = 0x0900_0000;
/// Data register: a write sends one byte.
const DR: *mut u32 = BASE as *mut u32;
/// Flag register; bit 5 (TXFF) is set while the transmit FIFO is full.
const FR: *const u32 = (BASE + 0x18) as *const u32;
const TXFF: u32 = 1 << 5;

/// A handle on the UART; `write!` and `writeln!` print through it.
pub struct Uart;

impl fmt::Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for byte in s.bytes() {
            // SAFETY: the PL011's registers are at BASE, identity-mapped as
            // Device memory (or reached with the MMU off), and this kernel
            // runs on one CPU, so nothing else drives the UART meanwhile.
            unsafe {
                while read_volatile(FR) & TXFF != 0 {}
                write_volatile(DR, u32::from(byte));
            }
        }
        Ok(())
    }
}

/// `println!` for the kernel: formats to the UART.
#[macro_export]
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        let _ = writeln!($crate::uart::Uart, $($arg)*);
    }};
}
