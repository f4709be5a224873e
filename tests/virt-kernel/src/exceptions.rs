//! Exception handling: aarch64-rt's vector table calls these handlers.
//!
//! Unexpected exceptions end the run through a panic with the syndrome. A test
//! may instead *expect* a fault (for example the BTI negative control) with
//! [`catch_fault`]: the handler records the syndrome and resumes the code as
//! the caller asked.

use core::arch::asm;
use core::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};

use aarch64_rt::{ExceptionHandlers, RegisterStateRef, exception_handlers};

use crate::cpu;

/// Most CPUs the virt board is run with here.
pub const MAX_CPUS: usize = 4;

/// How to resume after an expected fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Recovery {
    /// Nothing armed: a fault is unexpected.
    None = 0,
    /// Resume at the saved link register (x30), as if the function that was
    /// branched to had returned at once. For faults on a branch target's
    /// first instruction (BTI), where `ELR` is the target.
    ReturnToLink = 1,
    /// Resume after the faulting instruction (for example a store that hit a
    /// read-only page).
    SkipInstruction = 2,
}

/// A fault taken while [`catch_fault`] was armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The exception syndrome (ESR_ELx).
    pub esr: u64,
    /// The faulting instruction's address (ELR_ELx).
    pub elr: u64,
    /// The fault address (FAR_ELx), meaningful for aborts.
    pub far: u64,
}

impl Fault {
    /// ESR exception class.
    pub fn class(&self) -> u64 {
        (self.esr >> 26) & 0x3f
    }
}

/// ESR exception class of a Branch Target exception (FEAT_BTI).
pub const EC_BRANCH_TARGET: u64 = 0x0d;
/// ESR exception class of a data abort taken without a change of EL.
pub const EC_DATA_ABORT_SAME_EL: u64 = 0x25;
/// ESR exception class of an instruction abort taken without a change of EL.
pub const EC_INSN_ABORT_SAME_EL: u64 = 0x21;

static ARMED: [AtomicU8; MAX_CPUS] = [const { AtomicU8::new(0) }; MAX_CPUS];
static CAUGHT_ESR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static CAUGHT_ELR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static CAUGHT_FAR: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
static CAUGHT: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

/// Unexpected synchronous exceptions taken so far (the run ends at the first,
/// so this is 0 in any report that is printed).
pub static UNEXPECTED: AtomicUsize = AtomicUsize::new(0);

/// Runs `f` on this CPU with fault catching armed; returns the first fault
/// taken meanwhile, if any (later ones are counted in [`faults_caught`]).
pub fn catch_fault(recovery: Recovery, f: impl FnOnce()) -> Option<Fault> {
    let cpu = cpu::id();
    let before = CAUGHT[cpu].load(Ordering::SeqCst);
    ARMED[cpu].store(recovery as u8, Ordering::SeqCst);
    f();
    ARMED[cpu].store(Recovery::None as u8, Ordering::SeqCst);
    (CAUGHT[cpu].load(Ordering::SeqCst) != before).then(|| Fault {
        esr: CAUGHT_ESR[cpu].load(Ordering::SeqCst),
        elr: CAUGHT_ELR[cpu].load(Ordering::SeqCst),
        far: CAUGHT_FAR[cpu].load(Ordering::SeqCst),
    })
}

/// Expected faults caught on all CPUs so far.
pub fn faults_caught() -> usize {
    CAUGHT.iter().map(|c| c.load(Ordering::Relaxed)).sum()
}

fn syndrome() -> (u64, u64) {
    let (esr, far): (u64, u64);
    if cpu::current_el() == 2 {
        // SAFETY: reading the EL2 syndrome registers at EL2 has no side effects.
        unsafe {
            asm!("mrs {}, esr_el2", "mrs {}, far_el2", out(reg) esr, out(reg) far,
                 options(nomem, nostack, preserves_flags))
        };
    } else {
        // SAFETY: reading the EL1 syndrome registers at EL1 has no side effects.
        unsafe {
            asm!("mrs {}, esr_el1", "mrs {}, far_el1", out(reg) esr, out(reg) far,
                 options(nomem, nostack, preserves_flags))
        };
    }
    (esr, far)
}

struct Handlers;

impl ExceptionHandlers for Handlers {
    extern "C" fn irq_current(_state: RegisterStateRef) {
        crate::gic::handle_irq();
    }

    extern "C" fn sync_current(mut state: RegisterStateRef) {
        let (esr, far) = syndrome();
        let cpu = cpu::id();
        let elr = state.elr as u64;
        let armed = ARMED.get(cpu).map_or(0, |a| a.load(Ordering::SeqCst));
        let resume = if armed == Recovery::ReturnToLink as u8 {
            // The saved x30 sits in the slot aarch64-rt names `sp`.
            state.sp as usize
        } else if armed == Recovery::SkipInstruction as u8 {
            state.elr + 4
        } else {
            UNEXPECTED.fetch_add(1, Ordering::SeqCst);
            panic!(
                "unexpected synchronous exception at EL{}: ESR={esr:#x} (EC={:#x}) ELR={elr:#x} FAR={far:#x}",
                cpu::current_el(),
                (esr >> 26) & 0x3f,
            );
        };
        CAUGHT_ESR[cpu].store(esr, Ordering::SeqCst);
        CAUGHT_ELR[cpu].store(elr, Ordering::SeqCst);
        CAUGHT_FAR[cpu].store(far, Ordering::SeqCst);
        CAUGHT[cpu].fetch_add(1, Ordering::SeqCst);
        // SAFETY: the code that armed catching asked to be resumed this way:
        // either at its own return address (the faulting function is treated
        // as having returned; x0 is unspecified, callers ignore it) or just
        // after the faulting instruction, which it expects to have no effect.
        let regs = unsafe { state.get_mut() };
        regs.elr = resume;
        // An exception return clears PSTATE.BTYPE from SPSR; clear it so that
        // resuming is not itself checked as a branch (SPSR.BTYPE = bits 11:10).
        regs.spsr &= !(0b11 << 10);
    }
}

exception_handlers!(Handlers);
