//! GDT, TSS and IDT (the `x86_64` crate's structures), the entry code in
//! assembly, and the kernel's `#BP`, NMI, IPI and fault handlers.
//!
//! # The three `#BP` entries
//!
//! static-call's [`handle_breakpoint`] emulates a `call` at an inline site
//! by storing the return address at the trapped RSP - 8. Where that lands
//! depends on how the kernel takes `#BP` ([`set_breakpoint_entry`]):
//!
//! - [`BpEntry::Gap`] (the default; what Linux's int3 entry does): no stack
//!   switch, and the entry code first copies the CPU's 5-word exception
//!   frame 40 bytes lower and works on the copy, so the words just below
//!   the trapped RSP are dead and the store hits nothing live.
//! - [`BpEntry::NoGap`]: no stack switch and no copy, the mistake the crate
//!   documents: the CPU pushed the frame right below the trapped RSP, and
//!   the store overwrites its saved SS. The handler detects it (the frame
//!   differs after the call) and rebuilds a frame below, so the test can
//!   count it and go on.
//! - [`BpEntry::Ist`]: `#BP` on its own IST stack. The store goes to the
//!   trapped stack, but every `#BP` restarts at the IST top: one taken
//!   while a `#BP` handler runs (an NMI handler calling a key mid-update)
//!   writes its frame over the live one. The entry keeps a nesting depth
//!   above the IST top; a nested entry moves itself 16 KiB lower (so the
//!   outer handler's stack survives) and the outer handler compares its
//!   frame before and after, counts the overwrite and puts it back.

use core::ptr::{addr_of, read_volatile, write_volatile};
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

use static_call::arch::x86_64::{BreakpointFrame, handle_breakpoint};
use x86_64::VirtAddr;
use x86_64::instructions::segmentation::{CS, DS, ES, SS, Segment};
use x86_64::instructions::tables::load_tss;
use x86_64::structures::gdt::{Descriptor, GlobalDescriptorTable};
use x86_64::structures::idt::InterruptDescriptorTable;
use x86_64::structures::tss::TaskStateSegment;

use crate::{BootCell, MAX_CPUS, apic, cpu};

/// The "synchronise this CPU" IPI ([`crate::patching::sync_all_cpus`]).
pub const SYNC_VECTOR: u8 = 0xf0;
/// The IPI that wakes an idle CPU (its handler only ends the interrupt).
pub const WAKE_VECTOR: u8 = 0xf1;

/// IST slots (1-based in the IDT, 0-based in the TSS).
const IST_BREAKPOINT: u16 = 0;
/// The NMI's IST slot.
pub const IST_NMI: u16 = 1;
const IST_DOUBLE_FAULT: u16 = 2;
const IST_SIZE: usize = 32 * 1024;
/// Bytes kept above each IST top: the `#BP` entry's nesting depth.
const IST_RESERVED: usize = 64;

#[repr(C, align(16))]
struct IstStack([u8; IST_SIZE]);

static mut IST_STACKS: [[IstStack; 3]; MAX_CPUS] =
    [const { [const { IstStack([0; IST_SIZE]) }; 3] }; MAX_CPUS];
static TSS: [BootCell<TaskStateSegment>; MAX_CPUS] =
    [const { BootCell::new(TaskStateSegment::new()) }; MAX_CPUS];
static GDT: [BootCell<GlobalDescriptorTable>; MAX_CPUS] =
    [const { BootCell::new(GlobalDescriptorTable::new()) }; MAX_CPUS];
static IDT: BootCell<InterruptDescriptorTable> = BootCell::new(InterruptDescriptorTable::new());

/// How the kernel takes `#BP` (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum BpEntry {
    /// On the interrupted stack, frame copied below a gap (Linux's way).
    Gap = 0,
    /// On the interrupted stack, no gap: the documented mistake.
    NoGap = 1,
    /// On an IST stack.
    Ist = 2,
}

/// The mode the IST entry passes for a nested `#BP`.
const MODE_IST_NESTED: u64 = 3;

/// The CPU's exception frame (no error code).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IretFrame {
    /// Where the interrupted code continues.
    pub rip: u64,
    /// Its code segment.
    pub cs: u64,
    /// Its flags.
    pub rflags: u64,
    /// Its stack pointer.
    pub rsp: u64,
    /// Its stack segment.
    pub ss: u64,
}

/// Counts kept by the handlers, per CPU.
pub struct Counts {
    /// Traps steered by `handle_breakpoint`, by entry (gap, no gap, IST,
    /// IST nested).
    pub steered: [AtomicU64; 4],
    /// No-gap traps whose store landed in the live frame.
    pub frame_clobbered: AtomicU64,
    /// The value found in the saved SS slot after the last clobber.
    pub clobbered_with: AtomicU64,
    /// IST traps whose frame a nested `#BP` overwrote.
    pub ist_overwritten: AtomicU64,
    /// The last overwritten frame's saved RSP before and after.
    pub ist_rsp_before: AtomicU64,
    /// See `ist_rsp_before`.
    pub ist_rsp_after: AtomicU64,
    /// `#BP` handlers running on this CPU now.
    pub in_breakpoint: AtomicU64,
    /// NMIs taken, and those taken while a `#BP` handler ran.
    pub nmis: AtomicU64,
    /// See `nmis`.
    pub nmis_in_breakpoint: AtomicU64,
}

/// The handlers' counts, per CPU.
pub static COUNTS: [Counts; MAX_CPUS] = [const {
    Counts {
        steered: [const { AtomicU64::new(0) }; 4],
        frame_clobbered: AtomicU64::new(0),
        clobbered_with: AtomicU64::new(0),
        ist_overwritten: AtomicU64::new(0),
        ist_rsp_before: AtomicU64::new(0),
        ist_rsp_after: AtomicU64::new(0),
        in_breakpoint: AtomicU64::new(0),
        nmis: AtomicU64::new(0),
        nmis_in_breakpoint: AtomicU64::new(0),
    }
}; MAX_CPUS];

/// Highest sync request, and per CPU the highest one it has answered.
pub static SYNC_REQUESTED: AtomicU64 = AtomicU64::new(0);
/// See [`SYNC_REQUESTED`].
pub static SYNC_ANSWERED: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];

/// What the NMI handler runs (a test's `fn(cpu)`), or null.
static NMI_ACTION: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
/// NMIs whose handler has finished, per CPU (senders wait for it before
/// the next one: an `iretq` inside the NMI handler, the nested `#BP`'s,
/// unblocks NMIs, and a second NMI on the NMI IST stack would overwrite
/// the first's frame).
pub static NMIS_DONE: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

/// Makes the NMI handler run `action` (or nothing).
pub fn set_nmi_action(action: Option<fn(usize)>) {
    NMI_ACTION.store(
        action.map_or(core::ptr::null_mut(), |f| f as *mut ()),
        Ordering::SeqCst,
    );
}

unsafe extern "C" {
    fn bp_entry_gap();
    fn bp_entry_nogap();
    fn bp_entry_ist();
    fn nmi_entry();
    fn sync_entry();
    fn wake_entry();
    fn spurious_entry();
    fn fault_entry_0();
    fn fault_entry_6();
    fn fault_entry_8();
    fn fault_entry_13();
    fn fault_entry_14();
}

core::arch::global_asm!(
    r#"
    .macro SAVE
    push %rax
    push %rcx
    push %rdx
    push %rsi
    push %rdi
    push %r8
    push %r9
    push %r10
    push %r11
    .endm
    .macro RESTORE
    pop %r11
    pop %r10
    pop %r9
    pop %r8
    pop %rdi
    pop %rsi
    pop %rdx
    pop %rcx
    pop %rax
    .endm

    // The CPU aligned RSP to 16 and pushed 5 words: RSP = 16n - 40.

    .global bp_entry_gap
bp_entry_gap:
    // Copy the frame 40 bytes lower (as Linux's int3 entry does, with its
    // error-code slot) and return through the copy: the words below the
    // trapped RSP, where the emulated call stores, are dead from here on.
    .rept 5
    pushq 32(%rsp)
    .endr
    cld
    SAVE
    lea 72(%rsp), %rdi
    mov ${gap}, %esi
    sub $8, %rsp
    call x86_kernel_breakpoint
    add $8, %rsp
    RESTORE
    iretq

    .global bp_entry_nogap
bp_entry_nogap:
    cld
    SAVE
    lea 72(%rsp), %rdi
    mov ${nogap}, %esi
    call x86_kernel_breakpoint
    test %rax, %rax
    jnz 2f
    RESTORE
    iretq
2:  // The handler's store overwrote this frame's saved SS (RAX holds the
    // value it had). Return through a rebuilt frame below: what the gap
    // would have given.
    pushq %rax
    pushq 104(%rsp)
    pushq 104(%rsp)
    pushq 104(%rsp)
    pushq 104(%rsp)
    mov 40(%rsp), %r11
    mov 48(%rsp), %r10
    mov 56(%rsp), %r9
    mov 64(%rsp), %r8
    mov 72(%rsp), %rdi
    mov 80(%rsp), %rsi
    mov 88(%rsp), %rdx
    mov 96(%rsp), %rcx
    mov 104(%rsp), %rax
    iretq

    .global bp_entry_ist
bp_entry_ist:
    // Nesting depth, in the word just above the IST top.
    incq 40(%rsp)
    cmpq $1, 40(%rsp)
    jne 3f
    cld
    SAVE
    lea 72(%rsp), %rdi
    mov ${ist}, %esi
    call x86_kernel_breakpoint
    RESTORE
    decq 40(%rsp)
    iretq
3:  // Nested: the CPU has just written this frame over the outer #BP's.
    // Run 16 KiB lower, on a copy, so the outer handler's stack survives.
    lea -16384(%rsp), %rsp
    .rept 5
    pushq (16384 + 32)(%rsp)
    .endr
    cld
    SAVE
    lea 72(%rsp), %rdi
    mov ${nested}, %esi
    sub $8, %rsp
    call x86_kernel_breakpoint
    add $8, %rsp
    RESTORE
    decq (16384 + 80)(%rsp)
    iretq

    .global nmi_entry
nmi_entry:
    cld
    SAVE
    call x86_kernel_nmi
    RESTORE
    iretq

    .global sync_entry
sync_entry:
    cld
    SAVE
    call x86_kernel_sync_ipi
    RESTORE
    iretq

    .global wake_entry
wake_entry:
    cld
    SAVE
    call x86_kernel_wake_ipi
    RESTORE
    iretq

    .global spurious_entry
spurious_entry:
    iretq

    // Faults end the run: push the vector (and 0 where the CPU pushes no
    // error code) and report.
    .macro FAULT vector, has_error
    .global fault_entry_\vector
fault_entry_\vector:
    .if \has_error == 0
    pushq $0
    .endif
    pushq $\vector
    cld
    SAVE
    lea 72(%rsp), %rdi
    call x86_kernel_fault
    ud2
    .endm
    FAULT 0, 0
    FAULT 6, 0
    FAULT 8, 1
    FAULT 13, 1
    FAULT 14, 1
    "#,
    gap = const BpEntry::Gap as u64,
    nogap = const BpEntry::NoGap as u64,
    ist = const BpEntry::Ist as u64,
    nested = const MODE_IST_NESTED,
    options(att_syntax)
);

/// An entry stub's address.
fn addr(stub: unsafe extern "C" fn()) -> u64 {
    stub as *const () as u64
}

/// The address range of CPU `cpu`'s IST stack `slot`.
pub fn ist_stack(cpu: usize, slot: u16) -> core::ops::Range<u64> {
    let top = ist_top(cpu, slot);
    top + IST_RESERVED as u64 - IST_SIZE as u64..top
}

fn ist_top(cpu: usize, slot: u16) -> u64 {
    // SAFETY: only the address of the static is taken.
    let base = unsafe { addr_of!(IST_STACKS[cpu][usize::from(slot)]) } as u64;
    base + (IST_SIZE - IST_RESERVED) as u64
}

/// Builds the shared IDT (boot CPU, once, after loading its GDT: a gate
/// takes the current code segment, before any CPU loads it).
fn build_idt() {
    // SAFETY: runs once on the boot CPU before any CPU loads the IDT; the
    // handler addresses are the entry stubs above, each ending in `iretq`
    // (or never returning), with the IST slots every CPU's TSS sets up.
    unsafe {
        let idt = &mut *IDT.get();
        idt.divide_error
            .set_handler_addr(VirtAddr::new(addr(fault_entry_0)));
        idt.invalid_opcode
            .set_handler_addr(VirtAddr::new(addr(fault_entry_6)));
        idt.double_fault
            .set_handler_addr(VirtAddr::new(addr(fault_entry_8)))
            .set_stack_index(IST_DOUBLE_FAULT);
        idt.general_protection_fault
            .set_handler_addr(VirtAddr::new(addr(fault_entry_13)));
        idt.page_fault
            .set_handler_addr(VirtAddr::new(addr(fault_entry_14)));
        idt.non_maskable_interrupt
            .set_handler_addr(VirtAddr::new(addr(nmi_entry)))
            .set_stack_index(IST_NMI);
        idt[SYNC_VECTOR].set_handler_addr(VirtAddr::new(addr(sync_entry)));
        idt[WAKE_VECTOR].set_handler_addr(VirtAddr::new(addr(wake_entry)));
        idt[apic::SPURIOUS_VECTOR].set_handler_addr(VirtAddr::new(addr(spurious_entry)));
    }
    set_breakpoint_entry(BpEntry::Gap);
}

/// Points the `#BP` vector at one of the three entries. Only while no CPU
/// can trap (no int3 update in progress): the 16-byte gate is not written
/// atomically.
pub fn set_breakpoint_entry(entry: BpEntry) {
    let (stub, ist) = match entry {
        BpEntry::Gap => (addr(bp_entry_gap), None),
        BpEntry::NoGap => (addr(bp_entry_nogap), None),
        BpEntry::Ist => (addr(bp_entry_ist), Some(IST_BREAKPOINT)),
    };
    // SAFETY: the stub is one of the `#BP` entries above; the IST slot is
    // set in every CPU's TSS. A trap gate: interrupts stay as they were,
    // so a CPU inside the handler still answers sync IPIs.
    unsafe {
        let idt = &mut *IDT.get();
        let options = idt.breakpoint.set_handler_addr(VirtAddr::new(stub));
        options.disable_interrupts(false);
        if let Some(slot) = ist {
            options.set_stack_index(slot);
        }
    }
}

/// Loads this CPU's GDT and TSS and the shared IDT (the boot CPU builds
/// it first).
pub fn init_this_cpu(cpu: usize) {
    // SAFETY: each CPU touches only its own TSS and GDT, once, before
    // loading them; they are statics, so `'static` as the CPU requires.
    unsafe {
        let tss = &mut *TSS[cpu].get();
        for slot in [IST_BREAKPOINT, IST_NMI, IST_DOUBLE_FAULT] {
            tss.interrupt_stack_table[usize::from(slot)] = VirtAddr::new(ist_top(cpu, slot));
        }
        let gdt = &mut *GDT[cpu].get();
        let code = gdt.append(Descriptor::kernel_code_segment());
        let data = gdt.append(Descriptor::kernel_data_segment());
        let tss_sel = gdt.append(Descriptor::tss_segment(&*TSS[cpu].get()));
        (*GDT[cpu].get()).load();
        CS::set_reg(code);
        SS::set_reg(data);
        DS::set_reg(data);
        ES::set_reg(data);
        load_tss(tss_sel);
    }
    if cpu == 0 {
        build_idt();
    }
    // SAFETY: the IDT is a static, built by the boot CPU before any other
    // CPU starts.
    unsafe {
        (*IDT.get()).load();
    }
}

/// The `#BP` handler: offers the trap to static-call first.
///
/// # Safety
///
/// Called only by the `#BP` entries, with `frame` the exception frame they
/// pass and `mode` saying which entry it is.
#[unsafe(no_mangle)]
unsafe extern "C" fn x86_kernel_breakpoint(frame: *mut IretFrame, mode: u64) -> u64 {
    let counts = &COUNTS[cpu::id()];
    counts.in_breakpoint.fetch_add(1, Ordering::SeqCst);
    // The frame is read and written with volatile accesses: in the no-gap
    // and IST cases something else (the handler's own store, a nested
    // #BP) writes it behind our back, which is what is being measured.
    // SAFETY: the entry passes its live exception frame.
    let entry = unsafe { read_volatile(frame) };
    let mut bp = BreakpointFrame {
        rip: entry.rip,
        rsp: entry.rsp,
    };
    // SAFETY: `frame` is a real trapped context (the CPU built it for an
    // int3). With the gap and the IST entries the 8 bytes below the
    // trapped RSP are free, as the function requires. With the no-gap
    // entry they are this very frame's SS slot, which this handler owns
    // and rebuilds below: the demonstration of the mistake, kept in
    // memory the handler controls.
    let ours = unsafe { handle_breakpoint(&mut bp) };
    if !ours {
        crate::fatal(format_args!(
            "int3 at {:#x} that static-call does not own",
            entry.rip - 1
        ));
    }
    // SAFETY: as above.
    let now = unsafe { read_volatile(frame) };
    let mut restore_ss = 0;
    match mode {
        m if m == BpEntry::NoGap as u64 && now.ss != entry.ss => {
            counts.frame_clobbered.fetch_add(1, Ordering::SeqCst);
            counts.clobbered_with.store(now.ss, Ordering::SeqCst);
            restore_ss = entry.ss;
        }
        m if m == BpEntry::Ist as u64 && now != entry => {
            counts.ist_overwritten.fetch_add(1, Ordering::SeqCst);
            counts.ist_rsp_before.store(entry.rsp, Ordering::SeqCst);
            counts.ist_rsp_after.store(now.rsp, Ordering::SeqCst);
            // SAFETY: our own frame; put back what the CPU saved for us.
            unsafe { write_volatile(frame, entry) };
        }
        _ => {}
    }
    counts.steered[mode as usize].fetch_add(1, Ordering::Relaxed);
    // SAFETY: our own frame: continue where static-call steered.
    unsafe {
        write_volatile(&raw mut (*frame).rip, bp.rip);
        write_volatile(&raw mut (*frame).rsp, bp.rsp);
    }
    counts.in_breakpoint.fetch_sub(1, Ordering::SeqCst);
    restore_ss
}

/// The NMI handler: counts, and runs the test's action if one is set.
#[unsafe(no_mangle)]
extern "C" fn x86_kernel_nmi() {
    let cpu = cpu::id();
    let counts = &COUNTS[cpu];
    counts.nmis.fetch_add(1, Ordering::SeqCst);
    if counts.in_breakpoint.load(Ordering::SeqCst) > 0 {
        counts.nmis_in_breakpoint.fetch_add(1, Ordering::SeqCst);
    }
    let action = NMI_ACTION.load(Ordering::SeqCst);
    if !action.is_null() {
        // SAFETY: only `set_nmi_action` stores here, from a `fn(usize)`.
        let action = unsafe { core::mem::transmute::<*mut (), fn(usize)>(action) };
        action(cpu);
    }
    NMIS_DONE[cpu].fetch_add(1, Ordering::SeqCst);
}

/// The sync IPI: serialise, then say which request this CPU has answered.
#[unsafe(no_mangle)]
extern "C" fn x86_kernel_sync_ipi() {
    let request = SYNC_REQUESTED.load(Ordering::SeqCst);
    cpu::serialize();
    SYNC_ANSWERED[cpu::id()].fetch_max(request, Ordering::SeqCst);
    apic::eoi();
}

#[unsafe(no_mangle)]
extern "C" fn x86_kernel_wake_ipi() {
    apic::eoi();
}

/// A fault: report it and end the run.
///
/// # Safety
///
/// Called only by the fault entries, with their `[vector, error, frame]`.
#[unsafe(no_mangle)]
unsafe extern "C" fn x86_kernel_fault(info: *const [u64; 7]) -> ! {
    // SAFETY: the entry passes the words it pushed and the CPU's frame.
    let [vector, error, rip, _cs, rflags, rsp, _ss] = unsafe { *info };
    let cr2 = x86_64::registers::control::Cr2::read_raw();
    // The word at RSP: after a call or jump to a bad address, the return
    // address of the call that went there.
    let top = if (0x1000..(8 << 20)).contains(&rsp) {
        // SAFETY: inside the identity-mapped, writable first 8 MiB.
        unsafe { core::ptr::read_volatile(rsp as *const u64) }
    } else {
        0
    };
    crate::fatal(format_args!(
        "exception {vector} (error {error:#x}) at rip {rip:#x}, rsp {rsp:#x} (holding {top:#x}), rflags {rflags:#x}, cr2 {cr2:#x}"
    ))
}
