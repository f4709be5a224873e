//! The `#BP` path as a kernel runs it: calls that trap on an update's
//! `int3`, steered by `handle_breakpoint` from the kernel's handler, with
//! each of the three entries ([`BpEntry`]); an NMI whose handler calls a
//! key while this CPU is inside the `#BP` handler; and a CPU parked inside
//! the handler across later updates (the seed races 000 and 001).

use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use alloc::format;
use alloc::string::String;
use static_call::arch::x86_64::__test_hooks as hooks;
use static_call::arch::x86_64::{Strategy, traps_steered};
use x86_kernel::interrupts::{self, BpEntry, COUNTS, NMIS_DONE};
use x86_kernel::runner::TestResult;
use x86_kernel::{apic, check, check_eq, cpu, patching, println, smp};

use crate::keys::{C_VAL, Key, NEAR2, Near, Near2, UNTOUCHED};

/// What the hooks do during one trapped update (the updater's own CPU).
static SCENARIO: AtomicUsize = AtomicUsize::new(0);
const PLAIN: usize = 1;
const WITH_NMI: usize = 2;
/// What the trapped calls returned: at the inline site, through the
/// trampoline, and from the NMI handler.
static SITE_RESULT: AtomicU64 = AtomicU64::new(0);
static POINTER_RESULT: AtomicU64 = AtomicU64::new(0);
static NMI_RESULT: AtomicU64 = AtomicU64::new(0);
/// Set to have the trap hook send this CPU one NMI (once).
static SEND_NMI: AtomicBool = AtomicBool::new(false);

/// After phase 1 of the batched protocol (`int3` on the trampoline and
/// every site, synced): call the key at its inline site and through its
/// pointer, from the updating CPU. Both trap.
fn call_in_phase_1(phase: usize) {
    if phase != 1 || SCENARIO.load(Ordering::SeqCst) == 0 {
        return;
    }
    if SCENARIO.load(Ordering::SeqCst) == WITH_NMI {
        SEND_NMI.store(true, Ordering::SeqCst);
    }
    SITE_RESULT.store(Key::CVal.call(7), Ordering::SeqCst);
    POINTER_RESULT.store(Key::CVal.call_pointer(7), Ordering::SeqCst);
}

/// Inside the `#BP` handler, before it reads the destination: send this
/// CPU an NMI and wait until its handler has run.
fn nmi_from_handler(point: hooks::TrapPoint, _tramp: usize, _dest: usize) {
    if point != hooks::TrapPoint::Recognised || !SEND_NMI.swap(false, Ordering::SeqCst) {
        return;
    }
    let me = cpu::id();
    let done = NMIS_DONE[me].load(Ordering::SeqCst);
    apic::send_nmi(me);
    if !cpu::spin_until(2000, || NMIS_DONE[me].load(Ordering::SeqCst) > done) {
        x86_kernel::fatal(format_args!("the self-NMI never ran"));
    }
}

/// The NMI handler's work: call the key at its inline site (it traps
/// while the update is in progress).
fn nmi_calls_key(_cpu: usize) {
    NMI_RESULT.store(Key::CVal.call(9), Ordering::SeqCst);
}

/// Per-CPU counters of this CPU, read before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Snapshot {
    steered: [u64; 4],
    clobbered: u64,
    ist_overwritten: u64,
    nmis_in_bp: u64,
}

fn snapshot() -> Snapshot {
    let c = &COUNTS[cpu::id()];
    Snapshot {
        steered: core::array::from_fn(|i| c.steered[i].load(Ordering::SeqCst)),
        clobbered: c.frame_clobbered.load(Ordering::SeqCst),
        ist_overwritten: c.ist_overwritten.load(Ordering::SeqCst),
        nmis_in_bp: c.nmis_in_breakpoint.load(Ordering::SeqCst),
    }
}

/// One int3 update of `C_VAL` (Near -> Near2 or back) with `entry` as the
/// `#BP` entry and calls trapping in phase 1; returns the counters' change.
fn trapped_update(entry: BpEntry, scenario: usize) -> Result<Snapshot, String> {
    let w = patching::writer();
    let bp = Strategy::Breakpoint.with(w);
    Key::CVal.set(Near, &bp).map_err(|e| format!("{e}"))?;
    interrupts::set_breakpoint_entry(entry);
    for r in [&SITE_RESULT, &POINTER_RESULT, &NMI_RESULT] {
        r.store(0, Ordering::SeqCst);
    }
    let before = snapshot();
    SCENARIO.store(scenario, Ordering::SeqCst);
    interrupts::set_nmi_action(Some(nmi_calls_key));
    // SAFETY: the hooks neither unwind nor block for long: they call keys
    // and wait (bounded) for this CPU's own NMI.
    unsafe {
        hooks::set_after_site_phase(Some(call_in_phase_1));
        hooks::set_on_trap(Some(nmi_from_handler));
    }
    let updated = Key::CVal.set(Near2, &bp);
    // SAFETY: removing the hooks.
    unsafe {
        hooks::set_after_site_phase(None);
        hooks::set_on_trap(None);
    }
    interrupts::set_nmi_action(None);
    SCENARIO.store(0, Ordering::SeqCst);
    interrupts::set_breakpoint_entry(BpEntry::Gap);
    updated.map_err(|e| format!("{e}"))?;
    let after = snapshot();
    // The trapped calls reached the new target (the literal, written before
    // the int3).
    check_eq!(SITE_RESULT.load(Ordering::SeqCst), 7 + NEAR2);
    check_eq!(POINTER_RESULT.load(Ordering::SeqCst), 7 + NEAR2);
    if scenario == WITH_NMI {
        check_eq!(NMI_RESULT.load(Ordering::SeqCst), 9 + NEAR2);
    }
    Ok(Snapshot {
        steered: core::array::from_fn(|i| after.steered[i] - before.steered[i]),
        clobbered: after.clobbered - before.clobbered,
        ist_overwritten: after.ist_overwritten - before.ist_overwritten,
        nmis_in_bp: after.nmis_in_bp - before.nmis_in_bp,
    })
}

/// With the gap (the default entry, as Linux's): the emulated call's
/// store lands below the frame, which is intact. The site trap and the
/// trampoline trap are both steered.
pub(crate) fn bp_entry_with_gap() -> TestResult {
    let d = trapped_update(BpEntry::Gap, PLAIN)?;
    check_eq!(d.steered, [2, 0, 0, 0]);
    check_eq!(d.clobbered, 0);
    println!("bp: gap entry: 2 traps steered (site and trampoline), exception frame intact");
    Ok(())
}

/// With no gap and no stack switch: the store of the emulated call
/// overwrites the saved SS of the live exception frame (the trapped RSP was
/// 16-byte aligned, as at every call, so the CPU put SS right below it).
/// Caught by comparing the frame before and after; the entry then returns
/// through a rebuilt frame so the run goes on. Without that, `iretq` would
/// load the return address as SS.
pub(crate) fn bp_entry_without_gap_corrupts_the_frame() -> TestResult {
    let d = trapped_update(BpEntry::NoGap, PLAIN)?;
    check_eq!(d.steered, [0, 2, 0, 0]);
    // Only the site trap stores (the trampoline trap only sets RIP).
    check_eq!(d.clobbered, 1);
    let with = COUNTS[cpu::id()].clobbered_with.load(Ordering::SeqCst);
    let mut site_ret = false;
    C_VAL.each_inline_site(|s| site_ret |= with == (s + 8) as u64);
    check!(
        site_ret,
        "the saved SS became {with:#x}, not the return address after a C_VAL site"
    );
    println!(
        "bp: no-gap entry: the emulated call's return address {with:#x} overwrote the exception frame's saved SS (caught: 1 of 2 traps)"
    );
    Ok(())
}

/// On an IST stack, alone: steered, frame intact.
pub(crate) fn bp_entry_on_ist_stack() -> TestResult {
    let d = trapped_update(BpEntry::Ist, PLAIN)?;
    check_eq!(d.steered, [0, 0, 2, 0]);
    check_eq!(d.ist_overwritten, 0);
    println!("bp: IST entry: 2 traps steered, frame intact");
    Ok(())
}

/// An NMI arrives while this CPU is in the `#BP` handler, and the NMI
/// handler calls the key mid-update, so it traps again. With the gap entry
/// the nested `#BP` runs on the NMI's stack below its frame: every call
/// reaches the new target, no frame is touched. On the IST stack the
/// nested `#BP` restarts at the IST top and writes its frame over the
/// outer handler's live frame: the outer handler finds its frame changed
/// (counted; the test puts it back so the run can go on). This is why the
/// IST is unsafe for `#BP` when anything that can interrupt the handler
/// (NMI, machine check, a nested `#BP`) calls a key.
pub(crate) fn nmi_calling_a_key_inside_the_bp_handler() -> TestResult {
    let gap = trapped_update(BpEntry::Gap, WITH_NMI)?;
    check_eq!(gap.steered, [3, 0, 0, 0]);
    check_eq!(gap.nmis_in_bp, 1);
    check_eq!(gap.ist_overwritten, 0);
    let ist = trapped_update(BpEntry::Ist, WITH_NMI)?;
    check_eq!(ist.steered, [0, 0, 2, 1]);
    check_eq!(ist.nmis_in_bp, 1);
    check_eq!(ist.ist_overwritten, 1);
    let c = &COUNTS[cpu::id()];
    let (rsp_before, rsp_after) = (
        c.ist_rsp_before.load(Ordering::SeqCst),
        c.ist_rsp_after.load(Ordering::SeqCst),
    );
    // The outer frame now says "return to the NMI handler's stack".
    let nmi_stack = interrupts::ist_stack(cpu::id(), interrupts::IST_NMI);
    check!(
        !nmi_stack.contains(&rsp_before) && nmi_stack.contains(&rsp_after),
        "the overwritten frame's RSP went {rsp_before:#x} -> {rsp_after:#x}, expected the NMI stack {nmi_stack:#x?}"
    );
    println!(
        "bp: NMI calling a key inside the #BP handler: gap entry: 3 traps steered, nothing overwritten; IST entry: the nested #BP overwrote the live #BP frame (its saved RSP {rsp_before:#x} became the NMI stack's {rsp_after:#x}), caught"
    );
    Ok(())
}

// ---------------------------------------------------------------------
// A CPU parked inside the handler across later updates.

fn park_effect(out: *mut u64, v: u64) {
    // SAFETY: callers pass a pointer to a live cell.
    unsafe { out.write_volatile(v + 10) }
}

extern "C" fn site_a(x: u64) -> u64 {
    x + 10
}
extern "C" fn site_b(x: u64) -> u64 {
    x + 20
}
extern "C" fn site_c(x: u64) -> u64 {
    x + 30
}

static_call::static_call! {
    static PARK: fn(u32) -> u64 = park_a;
    static PARK_SITE: extern "C" fn(u64) -> u64 = site_a;
    static OTHER: fn(u32) -> u64 = park_a;
    static PARK_NULL: fn(*mut u64, u64) = park_effect;
}

#[path = "../../../../common/parking.rs"]
mod parking;
use parking::{PARKING, park_a, park_b, park_c, unicorn};

fn wait_for(flag: &AtomicBool) {
    if !cpu::spin_until(10_000, || flag.load(Ordering::SeqCst)) {
        x86_kernel::fatal(format_args!("parking: a flag was never set"));
    }
}

/// Phase hook on the updater (keys with inline sites): once phase 1 has
/// put an `int3` on every site (synced), wait until the caller has trapped
/// on one; phases 2 and 3 then run while it stays parked.
fn hold_in_phase_1(phase: usize) {
    let p = &PARKING;
    if phase == 1 && !p.armed.swap(true, Ordering::SeqCst) {
        wait_for(&p.in_handler);
    }
}

fn parked_caller(_cpu: usize) {
    wait_for(&PARKING.armed);
    let tramp = PARKING.tramp.load(Ordering::SeqCst);
    let r = if tramp == PARK_NULL.trampoline_addr() {
        let mut cell = UNTOUCHED;
        PARK_NULL.call(&mut cell, 1);
        cell
    } else if tramp == PARK_SITE.trampoline_addr() {
        PARK_SITE.call(1) // an inline site
    } else {
        PARK.call(1)
    };
    PARKING.result.store(r, Ordering::SeqCst);
}

/// Parks a call of `tramp`'s key on CPU 1 inside the handler at `point`
/// during `first`, runs `later` while it stays parked, releases it and
/// returns (its result, the destination it had read when it parked).
fn parked_call(
    tramp: usize,
    point: hooks::TrapPoint,
    first: impl FnOnce() -> Result<(), static_call::UpdateError>,
    later: impl FnOnce() -> TestResult,
) -> Result<(u64, usize), String> {
    let p = &PARKING;
    p.reset(tramp, point);
    let steered = traps_steered();
    // SAFETY: the hooks do not unwind; they wait with a timeout.
    unsafe {
        if tramp == PARK_SITE.trampoline_addr() {
            hooks::set_after_site_phase(Some(hold_in_phase_1));
        } else {
            hooks::set_after_store(Some(parking::hold_after_int3));
        }
    }
    check!(smp::post(1, parked_caller), "cpu1 is busy");
    let done = first();
    // SAFETY: removing the hooks.
    unsafe {
        hooks::set_after_store(None);
        hooks::set_after_site_phase(None);
    }
    done.map_err(|e| format!("first update: {e}"))?;
    check!(p.in_handler.load(Ordering::SeqCst), "the call never parked");
    let later = later();
    p.release.store(true, Ordering::SeqCst);
    let finished = cpu::spin_until(5000, || smp::idle(1));
    // SAFETY: removing a hook.
    unsafe { hooks::set_on_trap(None) };
    later?;
    check!(finished, "the parked call never returned");
    check!(traps_steered() > steered, "the call never trapped");
    Ok((
        p.result.load(Ordering::SeqCst),
        p.dest.load(Ordering::SeqCst),
    ))
}

/// Seed 000: a call parked in the `#BP` handler (on CPU 1, answering sync
/// IPIs meanwhile) while CPU 0 completes the update and then updates this
/// key and another one several times. Parked after reading the destination
/// it reaches the target of the update it trapped in; parked before, the
/// newest: never another key's target or a stale stub.
pub(crate) fn cpu_parked_in_bp_handler_across_updates() -> TestResult {
    let w = patching::writer();
    let bp = Strategy::Breakpoint.with(w);
    let atomic = Strategy::AtomicStore.with(w);
    for (point, want_result, want_dest) in [
        (
            hooks::TrapPoint::Steering,
            21,
            park_b as fn(u32) -> u64 as usize,
        ),
        (hooks::TrapPoint::Recognised, 31, 0),
    ] {
        PARK.update_with(park_a, &bp).map_err(|e| format!("{e}"))?;
        OTHER.update_with(park_a, &bp).map_err(|e| format!("{e}"))?;
        let (result, dest) = parked_call(
            PARK.trampoline_addr(),
            point,
            || PARK.update_with(park_b, &bp),
            || {
                let e = |e| format!("{e}");
                PARK.update_with(park_c, &bp).map_err(e)?;
                OTHER.update_with(unicorn, &bp).map_err(e)?;
                PARK.update_ret0_with(&bp).map_err(e)?;
                OTHER.update_with(unicorn, &atomic).map_err(e)?;
                PARK.update_with(park_c, &atomic).map_err(e)?;
                check_eq!(PARK.call(1), 31);
                check_eq!(OTHER.call(1), 667);
                Ok(())
            },
        )?;
        check_eq!(dest, want_dest);
        check_eq!(result, want_result);
    }
    // Seed 001: parked after reading a NULL update's destination (the
    // static NULL stub), across later updates: it returns through the
    // stub, which nothing frees or reuses.
    PARK_NULL
        .update_with(park_effect, &bp)
        .map_err(|e| format!("{e}"))?;
    let (result, dest) = parked_call(
        PARK_NULL.trampoline_addr(),
        hooks::TrapPoint::Steering,
        || PARK_NULL.update_null_with(&bp),
        || {
            let e = |e| format!("{e}");
            PARK_NULL.update_with(park_effect, &bp).map_err(e)?;
            PARK_NULL.update_null_with(&atomic).map_err(e)?;
            PARK_NULL.update_with(park_effect, &bp).map_err(e)?;
            Ok(())
        },
    )?;
    check_eq!(dest as u64, static_call::arch::x86_64::null_stub_addr());
    check_eq!(result, UNTOUCHED);
    // An inline site parked in phase 1 of the batched protocol, across
    // phases 2 and 3 and later updates: its emulated call reaches the
    // target of the update it trapped in (read before parking) or the
    // newest (read after), and returns after its own site.
    let mut sites = 0;
    for (point, want_result, want_dest) in [
        (
            hooks::TrapPoint::Steering,
            21,
            site_b as extern "C" fn(u64) -> u64 as usize,
        ),
        (hooks::TrapPoint::Recognised, 31, 0),
    ] {
        PARK_SITE
            .update_with(site_a, &bp)
            .map_err(|e| format!("{e}"))?;
        let (result, dest) = parked_call(
            PARK_SITE.trampoline_addr(),
            point,
            || PARK_SITE.update_with(site_b, &bp),
            || {
                let e = |e| format!("{e}");
                PARK_SITE.update_ret0_with(&bp).map_err(e)?;
                PARK_SITE.update_with(site_c, &atomic).map_err(e)?;
                check_eq!(PARK_SITE.call(1), 31);
                Ok(())
            },
        )?;
        check_eq!(dest, want_dest);
        check_eq!(result, want_result);
        sites += 1;
    }
    check_eq!(sites, 2);
    println!(
        "bp: calls parked in the #BP handler on cpu1 across later updates reached park_b (parked after reading), park_c (before), the NULL stub (seed 001); an inline site parked in phase 1 across phases 2, 3 and 2 later updates reached site_b (after reading), site_c (before)"
    );
    Ok(())
}
