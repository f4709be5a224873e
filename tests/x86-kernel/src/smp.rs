//! Starting the other CPUs (INIT, then STARTUP IPIs, one CPU at a time) and
//! handing them work.

use core::sync::atomic::{AtomicUsize, Ordering};

use crate::boot::{AP_BOOT_PAGE, AP_CR3, BOOT_CPU, BOOT_RSP, ap_boot_begin, ap_boot_end};
use crate::interrupts::WAKE_VECTOR;
use crate::{MAX_CPUS, apic, cpu, println};

const STACK_SIZE: usize = 64 * 1024;

#[repr(C, align(16))]
struct Stack([u8; STACK_SIZE]);

static mut STACKS: [Stack; MAX_CPUS - 1] = [const { Stack([0; STACK_SIZE]) }; MAX_CPUS - 1];

/// CPUs that have come online (the boot CPU included).
pub static ONLINE: AtomicUsize = AtomicUsize::new(1);

/// Starts CPUs `1..cpus`, each on its own stack, on the page tables `cr3`.
/// Returns how many came online.
pub fn start_secondaries(cpus: usize, cr3: u64) -> usize {
    // SAFETY: the start code is position-independent and fits in a page;
    // AP_BOOT_PAGE is conventional memory below 1 MiB that nothing else
    // uses, mapped writable.
    unsafe {
        let begin = &raw const ap_boot_begin;
        let len = (&raw const ap_boot_end).offset_from(begin) as usize;
        assert!(len <= 4096);
        core::ptr::copy_nonoverlapping(begin, AP_BOOT_PAGE as *mut u8, len);
    }
    AP_CR3.store(cr3 as u32, Ordering::SeqCst);
    for cpu in 1..cpus.min(MAX_CPUS) {
        // SAFETY: only the address of this CPU's stack is taken.
        let top = unsafe { (&raw const STACKS[cpu - 1]) as u64 } + STACK_SIZE as u64;
        BOOT_RSP.store(top, Ordering::SeqCst);
        BOOT_CPU.store(cpu as u32, Ordering::SeqCst);
        let before = ONLINE.load(Ordering::SeqCst);
        apic::send_init(cpu);
        cpu::spin_until(10, || false);
        for _ in 0..2 {
            apic::send_startup(cpu, AP_BOOT_PAGE);
            if cpu::spin_until(1000, || ONLINE.load(Ordering::SeqCst) > before) {
                break;
            }
        }
        if ONLINE.load(Ordering::SeqCst) == before {
            println!("smp: cpu{cpu} did not start");
        }
    }
    ONLINE.load(Ordering::SeqCst)
}

/// A started CPU's loop: sleep until given work, run it, repeat.
pub fn secondary_loop(cpu: usize) -> ! {
    loop {
        x86_64::instructions::interrupts::disable();
        let work = mailbox::pending(cpu);
        if work == 0 {
            // STI's one-instruction shadow: a wake IPI cannot slip in
            // between the check and HLT.
            x86_64::instructions::interrupts::enable_and_hlt();
            continue;
        }
        x86_64::instructions::interrupts::enable();
        mailbox::run(cpu, work);
    }
}

/// Ends `cpu`'s `hlt` in its idle loop.
fn wake(cpu: usize) {
    apic::send_fixed(cpu, WAKE_VECTOR);
}

#[path = "../../kernel-common/mailbox.rs"]
mod mailbox;
pub use mailbox::{idle, post};

#[path = "../../kernel-common/run_on.rs"]
mod run_on;
pub use run_on::run_on;
