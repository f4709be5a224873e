//! Page tables and turning the MMU on, at EL1 or EL2.
//!
//! 4 KiB pages, 39-bit virtual addresses (the walk starts at level 1, where
//! one entry covers 1 GiB), identity-mapped except for the alias:
//!
//! | virtual address            | maps                        | as                          |
//! | -------------------------- | --------------------------- | --------------------------- |
//! | `0x0000_0000` (1 GiB)      | devices (the UART)          | Device, never executable    |
//! | `0x4000_0000` (2 MiB)      | RAM holding the image       | page by page, see below     |
//! | `0x4020_0000` (1022 MiB)   | the rest of RAM             | read-write, not executable  |
//! | `0x8000_0000` (1 GiB)      | RAM again: the text alias   | read-write, not executable  |
//!
//! In the image, `text_begin..text_end` (which holds `.static_call.text`,
//! see memory.ld) is read-only and executable, `.rodata` read-only, and
//! everything else read-write and not executable. Text is never writable
//! where it executes; static-call writes it through the alias
//! (`writer::Alias`), at `ALIAS_OFFSET` above.

use aarch64_cpu::asm::barrier;
use aarch64_cpu::registers::{
    MAIR_EL1, MAIR_EL2, ReadWriteable, Readable, SCTLR_EL1, SCTLR_EL2, TCR_EL1, TCR_EL2, TTBR0_EL1,
    TTBR0_EL2, Writeable,
};
use core::arch::asm;
use core::cell::UnsafeCell;

/// Where the image may lie: the 2 MiB of RAM mapped page by page (memory.ld
/// keeps the image inside).
pub const IMAGE_START: usize = 0x4000_0000;
pub const IMAGE_END: usize = 0x4020_0000;
/// The alias maps RAM read-write this far above its identity mapping.
pub const ALIAS_OFFSET: usize = 0x4000_0000;

const PAGE: usize = 4096;

// Descriptor bits (Arm ARM, "VMSAv8-64 translation table format").
const BLOCK: u64 = 0b01; // a level 1 or 2 entry mapping 1 GiB or 2 MiB
const TABLE_OR_PAGE: u64 = 0b11; // the next level's table, or a level 3 page
const ATTR_DEVICE: u64 = 0 << 2; // MAIR index 0
const ATTR_NORMAL: u64 = 1 << 2; // MAIR index 1
const AP_READ_ONLY: u64 = 1 << 7; // AP[2]
const AP_1: u64 = 1 << 6; // AP[1]: EL0 access at EL1; RES1 in EL2's tables
const INNER_SHAREABLE: u64 = 0b11 << 8;
const ACCESSED: u64 = 1 << 10;
const PXN: u64 = 1 << 53; // not executable at EL1 (RES0 in EL2's tables)
const XN: u64 = 1 << 54; // UXN at EL1 (EL0 never executes); XN at EL2

/// MAIR: index 0 Device-nGnRnE (0x00), index 1 Normal write-back
/// cacheable (0xff).
const MAIR: u64 = 0xff << 8;

#[repr(C, align(4096))]
struct Table([u64; 512]);

struct Tables {
    l1: Table,
    /// 0x4000_0000..0x8000_0000 in 2 MiB blocks, the first through `l3`.
    l2: Table,
    /// 0x4000_0000..0x4020_0000, page by page.
    l3: Table,
}

struct TablesCell(UnsafeCell<Tables>);

// SAFETY: only `enable` touches the tables, once, with one CPU running.
unsafe impl Sync for TablesCell {}

static TABLES: TablesCell = TablesCell(UnsafeCell::new(Tables {
    l1: Table([0; 512]),
    l2: Table([0; 512]),
    l3: Table([0; 512]),
}));

// Section bounds defined by aarch64-rt's image.ld.
unsafe extern "C" {
    static text_begin: u8;
    static text_end: u8;
    static rodata_begin: u8;
    static rodata_end: u8;
}

/// The executable text: `text_begin..text_end`.
pub fn text() -> core::ops::Range<usize> {
    (&raw const text_begin) as usize..(&raw const text_end) as usize
}

fn rodata() -> core::ops::Range<usize> {
    (&raw const rodata_begin) as usize..(&raw const rodata_end) as usize
}

/// Builds the tables and turns the MMU and caches on at exception level
/// `el` (1 or 2).
///
/// # Safety
///
/// The MMU must be off, only this CPU running, and `el` the current level.
pub unsafe fn enable(el: u64) {
    // EL2's tables have one privilege level: no PXN, AP[1] RES1.
    let (exec_never, privileged) = if el == 2 { (XN, AP_1) } else { (PXN | XN, 0) };
    let normal = ATTR_NORMAL | INNER_SHAREABLE | ACCESSED | privileged;
    let read_write = normal | exec_never;
    let read_only = normal | AP_READ_ONLY | exec_never;
    let text_page = normal | AP_READ_ONLY | if el == 2 { 0 } else { XN };
    let device = ATTR_DEVICE | ACCESSED | privileged | exec_never;

    // SAFETY: the MMU is off and one CPU runs (the caller's promise), so
    // nothing else reads or writes the tables.
    let t = unsafe { &mut *TABLES.0.get() };
    let (text, rodata) = (text(), rodata());
    for (i, entry) in t.l3.0.iter_mut().enumerate() {
        let page = IMAGE_START + i * PAGE;
        let attrs = if page >= text.start && page < text.end {
            text_page
        } else if page >= rodata.start && page < rodata.end {
            read_only
        } else {
            read_write
        };
        *entry = page as u64 | attrs | TABLE_OR_PAGE;
    }
    t.l2.0[0] = (&raw const t.l3) as u64 | TABLE_OR_PAGE;
    for (i, entry) in t.l2.0.iter_mut().enumerate().skip(1) {
        *entry = (IMAGE_START + (i << 21)) as u64 | read_write | BLOCK;
    }
    t.l1.0[0] = device | BLOCK;
    t.l1.0[1] = (&raw const t.l2) as u64 | TABLE_OR_PAGE;
    t.l1.0[2] = (IMAGE_START as u64) | read_write | BLOCK; // the alias
    let root = (&raw const t.l1) as u64;

    // The tables were written with the MMU off, straight to memory: drop
    // any stale cached copy before the walker (which reads through the
    // cache) sees them. QEMU has no caches; real cores do.
    let tables = TABLES.0.get() as usize;
    for line in (tables..tables + size_of::<Tables>()).step_by(64) {
        // SAFETY: cleaning and invalidating a line of our own tables.
        unsafe { asm!("dc civac, {}", in(reg) line) };
    }
    barrier::dsb(barrier::SY);

    // TCR: 39-bit addresses (T0SZ 25), 4 KiB granule, walks cacheable and
    // inner shareable, 40-bit physical addresses.
    // SAFETY: the tables map everything this kernel touches (its image,
    // stack, the UART) at the same address, so execution goes on when the
    // MMU comes on.
    unsafe {
        if el == 2 {
            MAIR_EL2.set(MAIR);
            TCR_EL2.write(
                TCR_EL2::T0SZ.val(25)
                    + TCR_EL2::TG0::KiB_4
                    + TCR_EL2::SH0::Inner
                    + TCR_EL2::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
                    + TCR_EL2::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
                    + TCR_EL2::PS::Bits_40,
            );
            // TCR_EL2 bits 31 and 23 are RES1.
            TCR_EL2.set(TCR_EL2.get() | (1 << 31) | (1 << 23));
            TTBR0_EL2.set_baddr(root);
            barrier::isb(barrier::SY);
            asm!("tlbi alle2", "dsb nsh", "ic iallu", "dsb nsh", "isb");
            SCTLR_EL2
                .modify(SCTLR_EL2::M::Enable + SCTLR_EL2::C::Cacheable + SCTLR_EL2::I::Cacheable);
        } else {
            MAIR_EL1.set(MAIR);
            TCR_EL1.write(
                TCR_EL1::T0SZ.val(25)
                    + TCR_EL1::TG0::KiB_4
                    + TCR_EL1::SH0::Inner
                    + TCR_EL1::ORGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
                    + TCR_EL1::IRGN0::WriteBack_ReadAlloc_WriteAlloc_Cacheable
                    + TCR_EL1::EPD1::DisableTTBR1Walks
                    + TCR_EL1::IPS::Bits_40,
            );
            TTBR0_EL1.set_baddr(root);
            barrier::isb(barrier::SY);
            asm!("tlbi vmalle1", "dsb nsh", "ic iallu", "dsb nsh", "isb");
            SCTLR_EL1
                .modify(SCTLR_EL1::M::Enable + SCTLR_EL1::C::Cacheable + SCTLR_EL1::I::Cacheable);
        }
        barrier::isb(barrier::SY);
    }
}
