//! The local APIC (xAPIC, memory-mapped at its reset address): this CPU's
//! number, end of interrupt, and interprocessor interrupts (fixed vectors,
//! NMI, INIT and SIPI).

use core::ptr::{read_volatile, write_volatile};

/// The local APIC's registers (mapped uncached by [`crate::paging`]).
const BASE: usize = 0xfee0_0000;
const ID: usize = 0x20;
const EOI: usize = 0xb0;
const SVR: usize = 0xf0;
const ICR_LOW: usize = 0x300;
const ICR_HIGH: usize = 0x310;

/// ICR delivery status: the previous IPI is still being sent.
const ICR_PENDING: u32 = 1 << 12;
/// ICR: level assert (required for INIT and harmless elsewhere).
const ICR_ASSERT: u32 = 1 << 14;
const DELIVERY_NMI: u32 = 4 << 8;
const DELIVERY_INIT: u32 = 5 << 8;
const DELIVERY_STARTUP: u32 = 6 << 8;
/// Destination shorthand: every CPU but this one.
const ALL_BUT_SELF: u32 = 3 << 18;

/// The spurious-interrupt vector (its handler does nothing).
pub const SPURIOUS_VECTOR: u8 = 0xff;

fn read(reg: usize) -> u32 {
    // SAFETY: an aligned 32-bit register of the local APIC, mapped by the
    // kernel's page tables on every CPU.
    unsafe { read_volatile((BASE + reg) as *const u32) }
}

fn write(reg: usize, value: u32) {
    // SAFETY: as in `read`; every write below is one the SDM defines.
    unsafe { write_volatile((BASE + reg) as *mut u32, value) }
}

/// Masks every line of the legacy 8259 PICs, which the firmware left
/// delivering the timer on vector 8 (the double-fault vector in long mode).
pub fn mask_legacy_pic() {
    use x86_64::instructions::port::Port;
    // SAFETY: 0x21 and 0xa1 are the PICs' interrupt mask registers;
    // all-ones masks every line and touches nothing else.
    unsafe {
        Port::<u8>::new(0x21).write(0xff);
        Port::<u8>::new(0xa1).write(0xff);
    }
}

/// Enables this CPU's local APIC.
pub fn enable() {
    write(SVR, 0x100 | u32::from(SPURIOUS_VECTOR));
}

/// This CPU's number: its APIC ID (QEMU numbers CPUs 0..n).
pub fn id() -> usize {
    (read(ID) >> 24) as usize
}

/// Ends the interrupt being handled.
pub fn eoi() {
    write(EOI, 0);
}

fn send(dest: usize, low: u32) {
    while read(ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
    write(ICR_HIGH, (dest as u32) << 24);
    write(ICR_LOW, low | ICR_ASSERT);
    while read(ICR_LOW) & ICR_PENDING != 0 {
        core::hint::spin_loop();
    }
}

/// Sends fixed `vector` to CPU `dest`.
pub fn send_fixed(dest: usize, vector: u8) {
    send(dest, u32::from(vector));
}

/// Sends fixed `vector` to every other CPU.
pub fn send_all_but_self(vector: u8) {
    send(0, ALL_BUT_SELF | u32::from(vector));
}

/// Sends an NMI to CPU `dest` (this CPU's own number for a self-NMI).
pub fn send_nmi(dest: usize) {
    send(dest, DELIVERY_NMI);
}

/// INIT, then STARTUP at the page `page` (below 1 MiB): starts CPU `dest`.
pub fn send_init(dest: usize) {
    send(dest, DELIVERY_INIT);
}

/// A STARTUP IPI (SIPI) with the start page `page`.
pub fn send_startup(dest: usize, page: usize) {
    send(dest, DELIVERY_STARTUP | (page >> 12) as u32);
}
