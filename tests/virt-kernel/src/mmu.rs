//! The kernel's real page tables, built with `aarch64-paging` once the boot
//! CPU runs Rust, and switched to on every CPU.
//!
//! aarch64-rt's initial identity map is coarse (1 GiB blocks, everything
//! read-write-execute, unguarded). This one is what static calls must cope
//! with in a hardened kernel:
//!
//! | range | mapping |
//! | --- | --- |
//! | kernel text (`text_begin..text_end`, trampolines included) | read-only, executable, BTI-guarded |
//! | far text (`.far_text`, 192 MiB above) | read-only, executable, BTI-guarded |
//! | rodata | read-only, never executable |
//! | rest of RAM (data, bss, stacks, heap) | read-write, never executable |
//! | first GiB (UART, GIC) | device, never executable |
//! | text alias at `text + ALIAS_OFFSET` | read-write, never executable |
//!
//! The alias is the only way to write the text, as Linux's fixmap
//! `text_poke` does: the executable mapping never becomes writable.

use core::arch::asm;
use core::ops::Range;
use core::sync::atomic::{AtomicUsize, Ordering};

use aarch64_paging::descriptor::{El1Attributes, El23Attributes, PhysicalAddress};
use aarch64_paging::idmap::IdTranslation;
use aarch64_paging::paging::{Constraints, El1And0, El2, MemoryRegion, TranslationRegime, VaRange};
use aarch64_paging::{MapError, Mapping};
use alloc::boxed::Box;

use crate::cpu;

/// Where RAM ends: the harness boots the board with `-m 256M`.
pub const RAM: Range<usize> = 0x4000_0000..0x5000_0000;
/// The text alias lives at the text's physical address plus this (32 GiB):
/// far from anything else and inside the 39-bit address space aarch64-rt's
/// TCR sets up.
pub const ALIAS_OFFSET: usize = 0x8_0000_0000;
/// SCTLR_ELx.BT (bit 36; BT1 in SCTLR_EL1). Set as Linux does: a PACIASP
/// is then no landing pad for a BR through a register other than x16/x17.
/// BTI itself is enforced by the GP bit of the text pages.
const SCTLR_BT: u64 = 1 << 36;

unsafe extern "C" {
    static text_begin: u8;
    static text_end: u8;
    static rodata_begin: u8;
    static rodata_end: u8;
    static far_text_begin: u8;
    static far_text_end: u8;
}

/// Address ranges of the image, page-aligned.
#[derive(Clone, Debug)]
pub struct Layout {
    /// Kernel text, static-call trampolines included.
    pub text: Range<usize>,
    /// Read-only data.
    pub rodata: Range<usize>,
    /// The far text section.
    pub far_text: Range<usize>,
}

const PAGE: usize = 4096;

/// The linker's section boundaries.
pub fn layout() -> Layout {
    let text = (&raw const text_begin) as usize..(&raw const text_end) as usize;
    let rodata = (&raw const rodata_begin) as usize..(&raw const rodata_end) as usize;
    let far = (&raw const far_text_begin) as usize..(&raw const far_text_end) as usize;
    let page = |r: Range<usize>| r.start & !(PAGE - 1)..r.end.next_multiple_of(PAGE);
    Layout {
        text: page(text),
        rodata: page(rodata),
        far_text: page(far),
    }
}

/// What a range is used for; the attributes follow from it per regime.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Text,
    ReadOnly,
    Data,
    Device,
}

fn el1_attributes(kind: Kind) -> El1Attributes {
    let normal = El1Attributes::VALID
        | El1Attributes::ATTRIBUTE_INDEX_1
        | El1Attributes::INNER_SHAREABLE
        | El1Attributes::ACCESSED;
    match kind {
        Kind::Text => normal | El1Attributes::READ_ONLY | El1Attributes::UXN | El1Attributes::GP,
        Kind::ReadOnly => {
            normal | El1Attributes::READ_ONLY | El1Attributes::UXN | El1Attributes::PXN
        }
        Kind::Data => normal | El1Attributes::UXN | El1Attributes::PXN,
        Kind::Device => {
            El1Attributes::VALID
                | El1Attributes::ATTRIBUTE_INDEX_0
                | El1Attributes::ACCESSED
                | El1Attributes::UXN
                | El1Attributes::PXN
        }
    }
}

fn el2_attributes(kind: Kind) -> El23Attributes {
    let normal = El23Attributes::VALID
        | El23Attributes::ATTRIBUTE_INDEX_1
        | El23Attributes::INNER_SHAREABLE
        | El23Attributes::ACCESSED;
    match kind {
        Kind::Text => normal | El23Attributes::READ_ONLY | El23Attributes::GP,
        Kind::ReadOnly => normal | El23Attributes::READ_ONLY | El23Attributes::XN,
        Kind::Data => normal | El23Attributes::XN,
        Kind::Device => {
            El23Attributes::VALID
                | El23Attributes::ATTRIBUTE_INDEX_0
                | El23Attributes::ACCESSED
                | El23Attributes::XN
        }
    }
}

fn populate<R: TranslationRegime>(
    map: &mut Mapping<IdTranslation<R::Attributes>, R>,
    attributes: fn(Kind) -> R::Attributes,
) -> Result<(), MapError> {
    let l = layout();
    let mut id = |range: Range<usize>, kind: Kind| {
        map.map_range(
            &MemoryRegion::new(range.start, range.end),
            PhysicalAddress(range.start),
            attributes(kind),
            Constraints::empty(),
        )
    };
    // Later ranges override earlier ones (the tables are not live yet).
    id(0..RAM.start, Kind::Device)?;
    id(RAM, Kind::Data)?;
    id(l.rodata.clone(), Kind::ReadOnly)?;
    id(l.text.clone(), Kind::Text)?;
    id(l.far_text.clone(), Kind::Text)?;
    map.map_range(
        &MemoryRegion::new(l.text.start + ALIAS_OFFSET, l.text.end + ALIAS_OFFSET),
        PhysicalAddress(l.text.start),
        attributes(Kind::Data),
        Constraints::empty(),
    )
}

/// TTBR value of the kernel's tables, 0 until [`init`] has built them.
static TTBR: AtomicUsize = AtomicUsize::new(0);

/// Builds the page tables (boot CPU, once) and switches this CPU to them.
pub fn init() {
    assert_eq!(TTBR.load(Ordering::SeqCst), 0, "mmu::init called twice");
    let root = if cpu::current_el() == 2 {
        let mut map = Mapping::new(IdTranslation::new(), 1, El2);
        populate(&mut map, el2_attributes).expect("building the EL2 page tables");
        // Every CPU uses these tables until the end of the run, so they are
        // never dropped.
        let map = Box::leak(Box::new(map));
        map.mark_active();
        map.root_address().0
    } else {
        let mut map =
            Mapping::with_asid_and_va_range(IdTranslation::new(), 0, 1, El1And0, VaRange::Lower);
        populate(&mut map, el1_attributes).expect("building the EL1 page tables");
        let map = Box::leak(Box::new(map));
        map.mark_active();
        map.root_address().0
    };
    TTBR.store(root, Ordering::SeqCst);
    switch_this_cpu();
}

/// Switches this CPU to the kernel's tables (built by [`init`]) and turns
/// BTI checking on (SCTLR_ELx.BT; the tables' GP bits do the guarding).
pub fn switch_this_cpu() {
    let ttbr = TTBR.load(Ordering::SeqCst);
    assert_ne!(ttbr, 0, "page tables not built yet");
    // SAFETY: the new tables map everything the kernel uses at the same
    // addresses as the initial map, with the same memory types; only
    // permissions and granularity differ. To change granularity without
    // break-before-make violations, translation is off (SCTLR.M = 0) while
    // TTBR0 changes and the TLB is flushed; the code is identity-mapped and
    // makes no memory access in between. With M = 0 the walker is idle, and
    // the tables were written with cacheable stores, which the walker
    // (TCR: inner write-back) sees once `dsb ish` has completed them.
    unsafe {
        if cpu::current_el() == 2 {
            asm!(
                "dsb ish",
                "mrs {sctlr}, sctlr_el2",
                "bic {off}, {sctlr}, #1",
                "orr {sctlr}, {sctlr}, {bt}",
                "msr sctlr_el2, {off}",
                "isb",
                "msr ttbr0_el2, {ttbr}",
                "isb",
                "tlbi alle2",
                "dsb nsh",
                "isb",
                "msr sctlr_el2, {sctlr}",
                "isb",
                ttbr = in(reg) ttbr,
                bt = in(reg) SCTLR_BT,
                sctlr = out(reg) _,
                off = out(reg) _,
                options(nostack),
            );
        } else {
            asm!(
                "dsb ish",
                "mrs {sctlr}, sctlr_el1",
                "bic {off}, {sctlr}, #1",
                "orr {sctlr}, {sctlr}, {bt}",
                "msr sctlr_el1, {off}",
                "isb",
                "msr ttbr0_el1, {ttbr}",
                "isb",
                "tlbi vmalle1",
                "dsb nsh",
                "isb",
                "msr sctlr_el1, {sctlr}",
                "isb",
                ttbr = in(reg) ttbr,
                bt = in(reg) SCTLR_BT,
                sctlr = out(reg) _,
                off = out(reg) _,
                options(nostack),
            );
        }
    }
}

/// Whether this CPU runs on the kernel's tables.
pub fn active_on_this_cpu() -> bool {
    let ttbr: usize;
    // SAFETY: reading TTBR0 of the current EL has no side effects.
    unsafe {
        if cpu::current_el() == 2 {
            asm!("mrs {}, ttbr0_el2", out(reg) ttbr, options(nomem, nostack, preserves_flags));
        } else {
            asm!("mrs {}, ttbr0_el1", out(reg) ttbr, options(nomem, nostack, preserves_flags));
        }
    }
    let ours = TTBR.load(Ordering::SeqCst);
    ours != 0 && ttbr & 0x0000_ffff_ffff_fffe == ours
}

/// SCTLR_ELx of this CPU.
pub fn sctlr() -> u64 {
    let value: u64;
    // SAFETY: reading SCTLR of the current EL has no side effects.
    unsafe {
        if cpu::current_el() == 2 {
            asm!("mrs {}, sctlr_el2", out(reg) value, options(nomem, nostack, preserves_flags));
        } else {
            asm!("mrs {}, sctlr_el1", out(reg) value, options(nomem, nostack, preserves_flags));
        }
    }
    value
}

/// The writable alias of a text address, if it is in the kernel's text.
pub fn text_alias(addr: usize) -> Option<usize> {
    layout().text.contains(&addr).then_some(addr + ALIAS_OFFSET)
}

/// Translates `va` for a data read with the current tables (`AT S1E1R` /
/// `AT S1E2R`): the physical address, or `None` when it faults.
pub fn translate_read(va: usize) -> Option<usize> {
    let par: u64;
    // SAFETY: an address translation instruction only writes PAR_EL1.
    unsafe {
        if cpu::current_el() == 2 {
            asm!("at s1e2r, {va}", "isb", "mrs {par}, par_el1", va = in(reg) va, par = out(reg) par,
                 options(nostack, preserves_flags));
        } else {
            asm!("at s1e1r, {va}", "isb", "mrs {par}, par_el1", va = in(reg) va, par = out(reg) par,
                 options(nostack, preserves_flags));
        }
    }
    (par & 1 == 0).then_some((par as usize & 0x0000_ffff_ffff_f000) | (va & 0xfff))
}
