//! The interrupt controller, used for one thing: a "synchronize all CPUs"
//! IPI, the bare-metal counterpart of Linux's `on_each_cpu(do_sync_core)`.
//!
//! QEMU's virt board has a GICv2 by default (distributor at 0x0800_0000, CPU
//! interface at 0x0801_0000), driven through `arm-gic`. [`sync_all_cpus`]
//! sends SGI 1 to every other CPU and waits until each has taken it: taking
//! and returning from an exception are context synchronization events, so
//! after that no CPU still runs instructions it fetched before the call.

use core::arch::asm;
use core::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use arm_gic::gicv2::{GicV2, SgiTarget, SgiTargetListFilter};
use arm_gic::{IntId, InterruptGroup};
use spin::mutex::SpinMutex;

use crate::cpu;
use crate::exceptions::MAX_CPUS;

const GICD_BASE: usize = 0x0800_0000;
const GICC_BASE: usize = 0x0801_0000;
/// GICD_PIDR2: bits 7:4 hold the architecture version.
const GICD_PIDR2: usize = GICD_BASE + 0xfe8;

/// The SGI that asks a CPU to synchronize.
pub const SYNC_SGI: IntId = IntId::sgi(1);

/// The SGI that wakes a CPU sleeping in WFI.
pub const WAKE_SGI: IntId = IntId::sgi(2);

/// The driver. GICC registers are banked per CPU, so one instance serves
/// every CPU; the lock is only taken with IRQs masked (see [`with_gic`]), so
/// the IRQ handler never waits for a lock its own CPU holds.
static GIC: SpinMutex<Option<GicV2<'static>>> = SpinMutex::new(None);

/// Sync requests issued so far.
static SYNC_GEN: AtomicU64 = AtomicU64::new(0);
/// Per CPU: the last sync request it has answered.
static SYNC_ACK: [AtomicU64; MAX_CPUS] = [const { AtomicU64::new(0) }; MAX_CPUS];
/// Per CPU: its CPU interface is on and it takes IRQs.
static READY: [AtomicBool; MAX_CPUS] = [const { AtomicBool::new(false) }; MAX_CPUS];

/// The GIC architecture version the distributor reports.
pub fn version() -> u32 {
    // SAFETY: GICD_PIDR2 is a read-only ID register of the distributor,
    // mapped as device memory; reading it has no side effects.
    let pidr2 = unsafe { core::ptr::read_volatile(GICD_PIDR2 as *const u32) };
    (pidr2 >> 4) & 0xf
}

/// Runs `f` on the driver with IRQs masked on this CPU.
fn with_gic<T>(f: impl FnOnce(&mut GicV2<'static>) -> T) -> T {
    cpu::with_irqs_masked(|| {
        let mut gic = GIC.lock();
        f(gic.as_mut().expect("gic::init_this_cpu has not run"))
    })
}

/// Turns on the distributor (first caller) and this CPU's interface, routes
/// IRQs to this exception level and unmasks them. Every CPU calls it once.
pub fn init_this_cpu() {
    {
        let mut gic = GIC.lock();
        if gic.is_none() {
            assert_eq!(version(), 2, "expected QEMU virt's default GICv2");
            // SAFETY: these are the GICv2 distributor and CPU interface of the
            // virt board, mapped as device memory; this is the only driver
            // instance (created once, under the lock).
            *gic = Some(unsafe { GicV2::new(GICD_BASE as *mut _, GICC_BASE as *mut _) });
        }
        let gic = gic.as_mut().expect("created above");
        // Distributor on (idempotent), interrupts in group 0 (banked for
        // SGIs/PPIs), this CPU's interface on, priority mask open.
        gic.setup();
        for sgi in [SYNC_SGI, WAKE_SGI] {
            gic.set_interrupt_priority(sgi, 0x80);
            gic.enable_interrupt(sgi, true)
                .expect("SGIs can always be enabled");
        }
    }
    if cpu::current_el() == 2 {
        // SAFETY: HCR_EL2.IMO/FMO route physical IRQs/FIQs to EL2; without
        // them an IRQ targets EL1 and is never taken while running at EL2.
        // Nothing else of HCR_EL2 matters to this kernel (no guests).
        unsafe {
            asm!(
                "mrs {t}, hcr_el2",
                "orr {t}, {t}, #(1 << 4)",
                "orr {t}, {t}, #(1 << 3)",
                "msr hcr_el2, {t}",
                "isb",
                t = out(reg) _,
                options(nomem, nostack),
            )
        };
    }
    READY[cpu::id()].store(true, Ordering::SeqCst);
    // SAFETY: the IRQ handler is installed (aarch64-rt's vector table calls
    // `handle_irq`), so taking IRQs from here on is expected.
    unsafe { asm!("msr daifclr, #2", options(nomem, nostack)) };
}

/// Called by the IRQ vector: answers a sync request (the exception entry and
/// return around this are what synchronizes), ignores anything else.
pub fn handle_irq() {
    let cpu = cpu::id();
    let mut gic = GIC.lock();
    let Some(gic) = gic.as_mut() else { return };
    while let Some(intid) = gic.get_and_acknowledge_interrupt(InterruptGroup::Group0) {
        if intid == SYNC_SGI {
            // Answer every request issued until now (SGIs may coalesce).
            SYNC_ACK[cpu].store(SYNC_GEN.load(Ordering::SeqCst), Ordering::SeqCst);
        }
        gic.end_interrupt(intid, InterruptGroup::Group0);
    }
}

/// Wakes `cpu` from WFI (an SGI it answers like any other).
pub fn wake(cpu: usize) {
    // SAFETY: a DSB only orders this CPU's memory accesses: the work it
    // posted is visible before the interrupt can be taken.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    with_gic(|gic| {
        gic.send_sgi(
            WAKE_SGI,
            SgiTarget::List {
                target_list_filter: SgiTargetListFilter::CPUTargetList,
                target_list: 1 << cpu,
            },
        )
    });
}

/// Why [`sync_all_cpus`] failed: the first CPU that did not answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncTimeout {
    /// The CPU that did not answer in time.
    pub cpu: usize,
}

/// Interrupts every other CPU that takes IRQs and waits (up to `timeout_ms`)
/// until each has taken the interrupt; synchronizes this CPU too.
pub fn sync_all_cpus(timeout_ms: u64) -> Result<(), SyncTimeout> {
    let me = cpu::id();
    // SAFETY: barriers only; the DSB completes this CPU's earlier stores and
    // cache maintenance before the SGI can be observed.
    unsafe { asm!("dsb ish", options(nostack, preserves_flags)) };
    let generation = SYNC_GEN.fetch_add(1, Ordering::SeqCst) + 1;
    with_gic(|gic| {
        gic.send_sgi(
            SYNC_SGI,
            SgiTarget::List {
                target_list_filter: SgiTargetListFilter::ForwardOthersOnly,
                target_list: 0,
            },
        )
    });
    for cpu in (0..MAX_CPUS).filter(|&c| c != me && READY[c].load(Ordering::SeqCst)) {
        let answered = crate::cpu::spin_until(timeout_ms, || {
            SYNC_ACK[cpu].load(Ordering::SeqCst) >= generation
        });
        if !answered {
            return Err(SyncTimeout { cpu });
        }
    }
    // SAFETY: an ISB only synchronizes this CPU's context.
    unsafe { asm!("isb", options(nostack, preserves_flags)) };
    Ok(())
}

/// Sync requests issued so far.
pub fn sync_count() -> u64 {
    SYNC_GEN.load(Ordering::SeqCst)
}

/// Sync requests `cpu` has answered.
pub fn acked(cpu: usize) -> u64 {
    SYNC_ACK[cpu].load(Ordering::SeqCst)
}

/// CPUs whose interface is on.
pub fn ready_cpus() -> usize {
    READY.iter().filter(|r| r.load(Ordering::SeqCst)).count()
}
