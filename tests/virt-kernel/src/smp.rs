//! Secondary CPU bring-up (PSCI `CPU_ON` through aarch64-rt's `start_core`)
//! and a mailbox for running work on a given CPU: [`post`] for a plain
//! function that runs on its own, [`run_on`] for a closure whose result the
//! caller waits for.

use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use aarch64_rt::{Stack, start_core};
use smccc::{Hvc, Smc};

use crate::cpu;
use crate::exceptions::MAX_CPUS;
use crate::println;

/// Pages of stack per secondary CPU.
const STACK_PAGES: usize = 16;

static mut SECONDARY_STACKS: [Stack<STACK_PAGES>; MAX_CPUS - 1] =
    [const { Stack::new() }; MAX_CPUS - 1];

/// CPUs that have come up, the boot CPU included once [`start_secondaries`]
/// has run.
pub static ONLINE: AtomicUsize = AtomicUsize::new(0);

/// Per CPU, as it came up: whether it runs on the kernel's page tables.
pub static MMU_ON: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];
/// Per CPU, as it came up: its SCTLR_ELx.
pub static SCTLR: [AtomicUsize; MAX_CPUS] = [const { AtomicUsize::new(0) }; MAX_CPUS];

/// Which SMCCC conduit reaches PSCI. QEMU's virt board implements PSCI itself
/// and takes it by HVC when the guest runs at EL1, but by SMC when it
/// emulates EL2 (`virtualization=on`), since an HVC at EL2 would trap to
/// itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conduit {
    /// `hvc #0`
    Hvc,
    /// `smc #0`
    Smc,
}

/// The PSCI conduit for the exception level we run at.
pub fn conduit() -> Conduit {
    if cpu::current_el() >= 2 {
        Conduit::Smc
    } else {
        Conduit::Hvc
    }
}

/// Starts CPUs 1..`cpus` with PSCI `CPU_ON`. Each prints `cpuN: online`,
/// counts itself in [`ONLINE`] and waits for work. Returns how many `CPU_ON`
/// calls PSCI accepted; errors are printed.
pub fn start_secondaries(cpus: usize) -> usize {
    ONLINE.fetch_add(1, Ordering::SeqCst);
    MMU_ON[0].store(crate::mmu::active_on_this_cpu(), Ordering::SeqCst);
    SCTLR[0].store(crate::mmu::sctlr() as usize, Ordering::SeqCst);
    let mut started = 0;
    for cpu in 1..cpus.min(MAX_CPUS) {
        // SAFETY: each secondary gets its own stack, used by nothing else and
        // never freed (a static); the initial page table maps it with the
        // same attributes for both CPUs. `start_core` is called at most once
        // per CPU (this loop runs once, from `main`).
        let stack = unsafe { (&raw mut SECONDARY_STACKS[cpu - 1]).cast::<Stack<STACK_PAGES>>() };
        let entry = move || secondary_main(cpu);
        // QEMU's virt board: MPIDR affinity 0 is the CPU number.
        let mpidr = cpu as u64;
        // SAFETY: see above.
        let result = unsafe {
            match conduit() {
                Conduit::Hvc => start_core::<Hvc, _, STACK_PAGES>(mpidr, stack, entry),
                Conduit::Smc => start_core::<Smc, _, STACK_PAGES>(mpidr, stack, entry),
            }
        };
        match result {
            Ok(()) => started += 1,
            Err(e) => println!("smp: CPU_ON for cpu{cpu} failed: {e:?}"),
        }
    }
    started
}

fn secondary_main(cpu: usize) -> ! {
    let actual = cpu::id();
    assert_eq!(
        actual, cpu,
        "started as cpu{cpu} but MPIDR says cpu{actual}"
    );
    // aarch64-rt started us on its initial identity map.
    crate::mmu::switch_this_cpu();
    MMU_ON[cpu].store(crate::mmu::active_on_this_cpu(), Ordering::SeqCst);
    SCTLR[cpu].store(crate::mmu::sctlr() as usize, Ordering::SeqCst);
    crate::gic::init_this_cpu();
    println!("cpu{cpu}: online");
    ONLINE.fetch_add(1, Ordering::SeqCst);
    loop {
        // Sleep until an interrupt: `post` sends one after storing work. IRQs
        // stay masked from the check through the WFI: were they open, the
        // wake-up SGI could be taken (and acknowledged) between a load that
        // saw no work and the WFI, which would then sleep until some later
        // interrupt. Masked, the SGI stays pending, ends the WFI at once,
        // and is taken when the mask is lifted. A sleeping vCPU leaves the
        // host's cores to the others.
        let work = cpu::with_irqs_masked(|| {
            let work = mailbox::pending(cpu);
            if work == 0 {
                aarch64_cpu::asm::wfi();
            }
            work
        });
        if work == 0 {
            continue;
        }
        mailbox::run(cpu, work);
    }
}

use crate::gic::wake;

#[path = "../../kernel-common/mailbox.rs"]
mod mailbox;
pub use mailbox::{idle, post};

/// Waits up to `timeout_ms` for [`ONLINE`] to reach `cpus`.
pub fn wait_online(cpus: usize, timeout_ms: u64) -> bool {
    cpu::spin_until(timeout_ms, || ONLINE.load(Ordering::SeqCst) >= cpus)
}

#[path = "../../kernel-common/run_on.rs"]
mod run_on;
pub use run_on::run_on;
