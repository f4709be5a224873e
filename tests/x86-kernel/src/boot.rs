//! From QEMU's PVH entry (32-bit protected mode, paging off) and from the
//! INIT/SIPI start of the other CPUs (16-bit real mode) into long mode and
//! [`crate::kernel_entry`].
//!
//! - The boot CPU enters at `pvh_start`, named by the `.note.Xen` note that
//!   QEMU's `-kernel` loader looks for in an ELF (`XEN_ELFNOTE_PHYS32_ENTRY`).
//!   It identity-maps the first GiB with 2 MiB pages (writable: the boot
//!   tables only live until [`crate::paging`] switches to the real ones).
//! - Another CPU starts at `ap_boot_begin`, copied by [`crate::smp`] to
//!   [`AP_BOOT_PAGE`] (a SIPI vector names a page below 1 MiB). That code is
//!   position-independent: it loads the boot GDT and jumps into the image
//!   in 32-bit mode, where it loads the kernel's final page tables
//!   ([`AP_CR3`]).
//! - Both then enable PAE, long mode and no-execute, turn on paging with
//!   CR0.WP (so read-only pages are read-only for the kernel too), and
//!   continue in 64-bit code on the stack in [`BOOT_RSP`] as CPU
//!   [`BOOT_CPU`].

use core::sync::atomic::{AtomicU32, AtomicU64};

/// Where the other CPUs' 16-bit start code is copied: the SIPI vector is
/// this page's number.
pub const AP_BOOT_PAGE: usize = 0x8000;

/// A page table, as the boot code fills it.
#[repr(C, align(4096))]
pub struct Table(pub [u64; 512]);

/// Boot page tables: PML4 -> PDPT -> one PD of 2 MiB pages.
#[unsafe(no_mangle)]
static mut BOOT_PML4: Table = Table([0; 512]);
#[unsafe(no_mangle)]
static mut BOOT_PDPT: Table = Table([0; 512]);
#[unsafe(no_mangle)]
static mut BOOT_PD: Table = Table([0; 512]);

/// The stack top the next CPU to reach 64-bit code starts on; the boot
/// CPU's own until [`crate::smp`] sets it for each CPU it starts.
#[unsafe(no_mangle)]
pub static BOOT_RSP: AtomicU64 = AtomicU64::new(0);
/// The index the next CPU to reach 64-bit code gets.
#[unsafe(no_mangle)]
pub static BOOT_CPU: AtomicU32 = AtomicU32::new(0);
/// The page tables the other CPUs load (the kernel's final ones).
#[unsafe(no_mangle)]
pub static AP_CR3: AtomicU32 = AtomicU32::new(0);

/// The boot CPU's stack.
#[repr(C, align(16))]
struct Stack([u8; 64 * 1024]);
#[unsafe(no_mangle)]
static mut BSP_STACK: Stack = Stack([0; 64 * 1024]);

unsafe extern "C" {
    /// First byte of the other CPUs' start code (to copy to [`AP_BOOT_PAGE`]).
    pub static ap_boot_begin: u8;
    /// One past its last byte.
    pub static ap_boot_end: u8;
}

core::arch::global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4                         // name size ("Xen\0")
    .long 8                         // descriptor size
    .long 18                        // XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .balign 4
    .quad pvh_start                 // QEMU reads 8 bytes
    .popsection

    .pushsection .boot32, "ax"
    .code32
    .global pvh_start
pvh_start:
    cli
    cld
    // The boot CPU's stack (BOOT_RSP is 0 until now).
    mov $(BSP_STACK + {stack_size}), %eax
    mov %eax, BOOT_RSP
    movl $0, BOOT_RSP + 4
    // PML4[0] -> PDPT, PDPT[0] -> PD, PD[i] -> i * 2 MiB (present, writable, large).
    mov $BOOT_PDPT, %eax
    or $3, %eax
    mov %eax, BOOT_PML4
    mov $BOOT_PD, %eax
    or $3, %eax
    mov %eax, BOOT_PDPT
    xor %ecx, %ecx
1:  mov %ecx, %eax
    shl $21, %eax
    or $0x83, %eax
    mov %eax, BOOT_PD(,%ecx,8)
    movl $0, BOOT_PD + 4(,%ecx,8)
    inc %ecx
    cmp $512, %ecx
    jb 1b
    mov $BOOT_PML4, %eax
    mov %eax, %cr3
    jmp enter_long

    // Another CPU, after its 16-bit start code: flat segments, then the
    // kernel's final page tables.
ap_start32:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    mov AP_CR3, %eax
    mov %eax, %cr3

enter_long:
    lgdt boot_gdtr
    mov %cr4, %eax
    or $(1 << 5), %eax              // PAE
    mov %eax, %cr4
    mov $0xC0000080, %ecx           // EFER
    rdmsr
    or $((1 << 8) | (1 << 11)), %eax // LME, NXE
    wrmsr
    mov %cr0, %eax
    or $((1 << 31) | (1 << 16) | 1), %eax // PG, WP, PE
    mov %eax, %cr0
    ljmp $0x18, $long_entry

    .code64
long_entry:
    mov $0x10, %ax
    mov %ax, %ds
    mov %ax, %es
    mov %ax, %ss
    xor %eax, %eax
    mov %ax, %fs
    mov %ax, %gs
    mov BOOT_RSP(%rip), %rsp
    mov BOOT_CPU(%rip), %edi
    xor %ebp, %ebp
    call kernel_entry
    ud2

    // null, 32-bit code (0x08), data (0x10), 64-bit code (0x18)
    .balign 16
boot_gdt:
    .quad 0
    .quad 0x00cf9a000000ffff
    .quad 0x00cf92000000ffff
    .quad 0x00af9a000000ffff
boot_gdt_end:
    .balign 8
boot_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt

    // The other CPUs' start code, copied to AP_BOOT_PAGE and entered in
    // real mode with CS = AP_BOOT_PAGE >> 4, IP = 0: everything it
    // addresses is relative to CS until it jumps into the image.
    .code16
    .global ap_boot_begin, ap_boot_end
ap_boot_begin:
    cli
    lgdtl %cs:(ap_gdtr - ap_boot_begin)
    mov %cr0, %eax
    or $1, %eax
    mov %eax, %cr0
    ljmpl $0x08, $ap_start32
    .balign 8
ap_gdtr:
    .word boot_gdt_end - boot_gdt - 1
    .long boot_gdt
ap_boot_end:
    .code64
    .popsection
    "#,
    stack_size = const 64 * 1024,
    options(att_syntax)
);
