//! The kernel's page tables, switched to on every CPU after boot:
//!
//! - the first 8 MiB in 4 KiB pages: the kernel's text read-only and
//!   executable, everything else writable and never executable, page 0
//!   unmapped;
//! - the rest of the first 4 GiB in 2 MiB pages, writable, never
//!   executable (uncached from 3 GiB up: the local APIC and other MMIO);
//! - `.far_text` at 4 GiB (loaded at 16 MiB), read-only and executable,
//!   out of rel32 reach of the text;
//! - [`ALIAS_BASE`] + the first 8 MiB, writable and never executable: the
//!   alias through which static-call patches the read-only text (like
//!   Linux's `text_poke` mapping).
//!
//! CR0.WP is set by the boot code, so the kernel itself cannot store to
//! read-only pages.

use core::ptr::addr_of;

use crate::BootCell;
use crate::boot::Table;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const WRITE_THROUGH: u64 = 1 << 3;
const NO_CACHE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;
const NO_EXECUTE: u64 = 1 << 63;

/// The writable alias of the first 8 MiB (PML4 slot 1).
pub const ALIAS_BASE: usize = 0x80_0000_0000;
/// How much the 4 KiB tables and the alias cover.
const LOW: usize = 8 << 20;
/// Where `.far_text` runs, and where it is loaded (kernel.ld).
pub const FAR_VIRT: usize = 0x1_0000_0000;
const FAR_PHYS: u64 = 0x100_0000;

static PML4: BootCell<Table> = BootCell::new(Table([0; 512]));
static PDPT_LOW: BootCell<Table> = BootCell::new(Table([0; 512]));
static PD_LOW: BootCell<[Table; 4]> = BootCell::new([const { Table([0; 512]) }; 4]);
static PT_LOW: BootCell<[Table; 4]> = BootCell::new([const { Table([0; 512]) }; 4]);
static PD_FAR: BootCell<Table> = BootCell::new(Table([0; 512]));
static PDPT_ALIAS: BootCell<Table> = BootCell::new(Table([0; 512]));
static PD_ALIAS: BootCell<Table> = BootCell::new(Table([0; 512]));

unsafe extern "C" {
    static text_begin: u8;
    static text_end: u8;
    static image_end: u8;
    /// The far text's end, as a 64-bit word (4 GiB is out of reach of the
    /// 32-bit absolute and PC-relative relocations code would use).
    static far_text_end_addr: u64;
}

core::arch::global_asm!(
    ".pushsection .rodata.far_text_end_addr, \"a\"",
    ".balign 8",
    "far_text_end_addr: .quad far_text_end",
    ".popsection"
);

/// The kernel's text: `(begin, end)`, page aligned (kernel.ld).
pub fn text() -> (usize, usize) {
    // Linker-defined symbols: only their addresses are taken.
    (addr_of!(text_begin) as usize, addr_of!(text_end) as usize)
}

fn table_addr(t: *const Table) -> u64 {
    t as u64
}

fn far_end() -> usize {
    // SAFETY: a word of read-only data, written by the assembler.
    unsafe { far_text_end_addr as usize }
}

/// Builds the tables (boot CPU, once, before other CPUs start) and returns
/// the CR3 value.
pub fn build() -> u64 {
    let (tb, te) = text();
    let (end, far_end) = (addr_of!(image_end) as usize, far_end());
    assert!(
        end <= LOW,
        "kernel image ends at {end:#x}, past the 4 KiB-mapped {LOW:#x}"
    );
    assert!(
        far_end - FAR_VIRT <= 2 << 20,
        "far text larger than its 2 MiB page"
    );
    // SAFETY: runs once on the boot CPU before any other CPU starts and
    // before any CPU uses these tables.
    unsafe {
        let pml4 = &mut *PML4.get();
        let pdpt = &mut *PDPT_LOW.get();
        let pds = &mut *PD_LOW.get();
        let pts = &mut *PT_LOW.get();
        for (i, pt) in pts.iter_mut().enumerate() {
            for (j, entry) in pt.0.iter_mut().enumerate() {
                let addr = (i * 512 + j) * 4096;
                *entry = if addr == 0 {
                    0
                } else if (tb..te).contains(&addr) {
                    addr as u64 | PRESENT
                } else {
                    addr as u64 | PRESENT | WRITABLE | NO_EXECUTE
                };
            }
        }
        for (i, pd) in pds.iter_mut().enumerate() {
            for (j, entry) in pd.0.iter_mut().enumerate() {
                let addr = ((i * 512 + j) as u64) << 21;
                *entry = if i == 0 && j < 4 {
                    table_addr(&pts[j]) | PRESENT | WRITABLE
                } else if i == 3 {
                    addr | PRESENT | WRITABLE | HUGE | NO_EXECUTE | NO_CACHE | WRITE_THROUGH
                } else {
                    addr | PRESENT | WRITABLE | HUGE | NO_EXECUTE
                };
            }
            pdpt.0[i] = table_addr(pd) | PRESENT | WRITABLE;
        }
        let far = &mut *PD_FAR.get();
        far.0[0] = FAR_PHYS | PRESENT | HUGE;
        pdpt.0[FAR_VIRT >> 30] = table_addr(far) | PRESENT | WRITABLE;
        pml4.0[0] = table_addr(pdpt) | PRESENT | WRITABLE;

        let alias_pd = &mut *PD_ALIAS.get();
        for (j, entry) in alias_pd.0.iter_mut().take(LOW >> 21).enumerate() {
            *entry = ((j as u64) << 21) | PRESENT | WRITABLE | HUGE | NO_EXECUTE;
        }
        let alias_pdpt = &mut *PDPT_ALIAS.get();
        alias_pdpt.0[0] = table_addr(alias_pd) | PRESENT | WRITABLE;
        pml4.0[ALIAS_BASE >> 39] = table_addr(alias_pdpt) | PRESENT | WRITABLE;
        table_addr(pml4)
    }
}

/// Switches this CPU to the tables [`build`] returned.
pub fn switch_this_cpu(cr3: u64) {
    // SAFETY: the tables map everything the kernel uses at the same
    // addresses as the boot tables, with the text still executable.
    unsafe { core::arch::asm!("mov cr3, {}", in(reg) cr3, options(nostack)) };
}

/// Whether CR0.WP is set on this CPU (read-only pages bind the kernel).
pub fn write_protect_on() -> bool {
    x86_64::registers::control::Cr0::read()
        .contains(x86_64::registers::control::Cr0Flags::WRITE_PROTECT)
}

/// The flags of the page-table entry that maps `addr` in the current
/// tables (the leaf: a 4 KiB, 2 MiB or 1 GiB page), or `None` if unmapped.
pub fn leaf_flags(addr: usize) -> Option<u64> {
    let (frame, _) = x86_64::registers::control::Cr3::read_raw();
    let mut table = frame.start_address().as_u64();
    for level in (0..4).rev() {
        let index = (addr >> (12 + 9 * level)) & 511;
        // SAFETY: page tables live in the identity-mapped first 8 MiB.
        let entry = unsafe { core::ptr::read_volatile((table as *const u64).add(index)) };
        if entry & PRESENT == 0 {
            return None;
        }
        if level == 0 || entry & HUGE != 0 {
            return Some(entry & !0x000f_ffff_ffff_f000);
        }
        table = entry & 0x000f_ffff_ffff_f000;
    }
    None
}
