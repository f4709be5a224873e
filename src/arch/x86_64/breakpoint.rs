//! The batched int3 protocol (Linux's `text_poke_bp_batch`) over a batch
//! of trampolines and all their inline sites.

use super::batch_sites::BatchSites;
use super::insn::INT3;
use super::layout::{self, Image};
use super::live::{PARTLY_RESTORED, conclude, lost, publish_literal, read_image, store};
use super::protocol::{self, Plan, Store};
use super::{Slot, null_stub_addr, site, trap};
use crate::arch::BatchItem;
use crate::writer::Watched;
use crate::{Error, TextWriter};

/// The most trampolines one batched int3 protocol takes (its state
/// lives on the stack); larger batches go one by one.
pub const BATCH_MAX: usize = 32;

/// The batched int3 protocol over `n` trampolines: the phases of
/// [`protocol::PHASES`], each followed by one sync of all CPUs, so at
/// most four syncs whatever `n`. Each trampoline goes through exactly
/// the states of its own [`protocol::breakpoint`] plan, in order, with
/// every CPU synchronised between two of them, so the single-trampoline
/// proof covers every state a CPU can see. On failure the phases done
/// are undone in reverse, each followed by a sync; a failed undo is
/// [`Error::RestoreFailed`].
///
/// # Safety
///
/// Every item is a key's live trampoline and slot, its target one of
/// the key's type (or 0 where NULL is allowed), and the caller holds
/// the patch lock.
pub(super) unsafe fn breakpoint_batch<'b>(
    n: usize,
    item: &dyn Fn(usize) -> BatchItem<'b, Slot>,
    writer: &dyn TextWriter,
) -> Result<(), (usize, Error)> {
    let writer = Watched::new(writer);
    // SAFETY: forwarded from the caller.
    let result = unsafe { breakpoint_steps(n, item, &writer) };
    let outcome = result.map_err(|(_, e)| e);
    for i in 0..n {
        let it = item(i);
        // SAFETY: the caller's live trampolines; the lock is held.
        unsafe { conclude(it.tramp, it.slot, it.target, &writer, &outcome) };
    }
    result
}

/// [`breakpoint_batch`]'s stores, syncs and undo, leaving the slots to
/// it.
///
/// # Safety
///
/// As for [`breakpoint_batch`].
unsafe fn breakpoint_steps<'b>(
    n: usize,
    item: &dyn Fn(usize) -> BatchItem<'b, Slot>,
    writer: &dyn TextWriter,
) -> Result<(), (usize, Error)> {
    for i in 0..n {
        let it = item(i);
        it.slot.check_text_kept(it.tramp).map_err(|e| (i, e))?;
    }
    let stub = null_stub_addr();
    let sites = BatchSites::of(n, item)?;
    let mut olds = [Image::from_words(0, 0); BATCH_MAX];
    let mut plans = [protocol::breakpoint(&olds[0], &olds[0]); BATCH_MAX];
    let mut arms = false;
    for (i, old) in olds.iter_mut().enumerate().take(n) {
        let it = item(i);
        layout::check_alignment(it.tramp).map_err(|e| (i, e))?;
        // SAFETY: the caller passes live, aligned trampolines.
        *old = unsafe { read_image(it.tramp) };
        let unfinished = it.slot.is_unfinished();
        layout::recognise(it.tramp as u64, old, stub, unfinished).map_err(|e| (i, e))?;
    }
    let plan_of = |i: usize, old: &Image| {
        let it = item(i);
        protocol::breakpoint(old, &layout::plan(it.tramp as u64, it.target as u64, stub))
    };
    for (i, plan) in plans.iter_mut().enumerate().take(n) {
        *plan = plan_of(i, &olds[i]);
        arms |= plan.stores().contains(&Store::First(INT3));
    }
    let sites_arm = |i: usize| sites.of_key(i).any(|s| s.now() != s.new);
    arms |= (0..n).any(sites_arm);
    // A missing trap handler is refused before anything is written.
    if arms {
        trap::ensure_handler().map_err(|e| (0, e))?;
        for (i, plan) in plans.iter().enumerate().take(n) {
            if plan.stores().contains(&Store::First(INT3)) || sites_arm(i) {
                let it = item(i);
                // SAFETY: the key's static slot; the lock is held.
                unsafe { trap::arm(it.tramp, it.slot) };
            }
        }
    }
    // A key left unfinished may hold an int3 whose sync failed: every
    // CPU sees it (and what else was left) before anything changes, as
    // the protocol's own step would have made them.
    if (0..n).any(|i| item(i).slot.is_unfinished()) {
        writer.sync_cores().map_err(|e| (0, e))?;
    }
    // Every trampoline is recognised; now the literals of those never
    // updated, and the plans from there (whether they arm does not
    // depend on the literal). One that fails stops the batch; those
    // published before it keep their literal, which behaves exactly as
    // before.
    for (i, old) in olds.iter_mut().enumerate().take(n) {
        // SAFETY: recognised above; the caller's, with the lock held.
        *old = unsafe { publish_literal(item(i).tramp, *old, stub, writer) }.map_err(|e| (i, e))?;
        plans[i] = plan_of(i, old);
    }
    // `images[i]`: trampoline i as written so far.
    let mut images = olds;
    for phase in 0..protocol::PHASES {
        let mut stored = false;
        for i in 0..n {
            let Some(&s) = plans[i]
                .stores()
                .iter()
                .find(|s| protocol::phase(**s) == phase)
            else {
                continue;
            };
            let tramp = item(i).tramp;
            // SAFETY: the caller's trampoline; lock held.
            let written = unsafe { store(tramp, s, writer) }.and_then(|()| {
                // SAFETY: aligned and readable.
                if unsafe { read_image(tramp) } == s.apply(images[i]) {
                    Ok(())
                } else {
                    Err(Error::VerifyFailed {
                        addr: tramp + s.offset(),
                    })
                }
            });
            if let Err(e) = written {
                // A store that read back wrong stands in `images` as
                // made, so the rollback writes it back too.
                if matches!(e, Error::VerifyFailed { .. }) {
                    images[i] = s.apply(images[i]);
                }
                if let Some(e) = lost(e) {
                    return Err((i, e));
                }
                // SAFETY: as for this function.
                return unsafe { sites.revert(writer) }
                    .and_then(|()| unsafe {
                        unwind(n, item, &olds, &plans, &images, phase, writer)
                    })
                    .map_err(|r| (i, r))
                    .and(Err((i, e)));
            }
            images[i] = s.apply(images[i]);
            stored = true;
            trap::hooks::after_store(tramp, phase, s);
        }
        // Sites have no literal: they join from the int3 phase on.
        let swept = if phase == 0 {
            Ok(false)
        } else {
            sites.sweep(
                writer,
                |s| site::breakpoint_step(phase, &s.now(), &s.new),
                |s| site::breakpoint_done(phase, &s.now(), &s.new),
            )
        };
        let sites_stored = matches!(swept, Ok(true));
        match swept {
            Ok(any) => stored |= any,
            Err(e) => {
                if let Some(e) = lost(e) {
                    return Err((0, e));
                }
                // SAFETY: as for this function.
                return unsafe { sites.revert(writer) }
                    .and_then(|()| unsafe {
                        unwind(n, item, &olds, &plans, &images, phase, writer)
                    })
                    .map_err(|r| (0, r))
                    .and(Err((0, e)));
            }
        }
        if stored && let Err(e) = writer.sync_cores() {
            if let Some(e) = lost(e) {
                return Err((0, e));
            }
            // SAFETY: as for this function.
            return unsafe { sites.revert(writer) }
                .and_then(|()| unsafe { unwind(n, item, &olds, &plans, &images, phase, writer) })
                .map_err(|r| (0, r))
                .and(Err((0, e)));
        }
        if sites_stored {
            trap::hooks::after_site_phase(phase);
        }
    }
    Ok(())
}

/// Undoes a batch from the phase `last` (possibly partly made) down to
/// the first: in each phase, every trampoline whose image holds that
/// phase's store gets back what it overwrote; then one sync. Any
/// failure stops it (`execute`'s rollback explains why).
///
/// # Safety
///
/// As for [`breakpoint_batch`].
unsafe fn unwind<'b>(
    n: usize,
    item: &dyn Fn(usize) -> BatchItem<'b, Slot>,
    olds: &[Image; BATCH_MAX],
    plans: &[Plan; BATCH_MAX],
    images: &[Image; BATCH_MAX],
    last: usize,
    writer: &dyn TextWriter,
) -> Result<(), Error> {
    let mut now = *images;
    for phase in (0..=last).rev() {
        let mut undone = false;
        for i in 0..n {
            // The image before this trampoline's store of this phase.
            let mut before = olds[i];
            let mut this = None;
            for &s in plans[i].stores() {
                if protocol::phase(s) == phase {
                    this = Some(s);
                    break;
                }
                before = s.apply(before);
            }
            let Some(s) = this else { continue };
            if now[i] != s.apply(before) {
                continue; // not made (the batch stopped before it)
            }
            let tramp = item(i).tramp;
            let failed = Error::RestoreFailed {
                addr: tramp + s.offset(),
                state: PARTLY_RESTORED,
            };
            // SAFETY: as for this function.
            if let Err(e) = unsafe { store(tramp, s.undo(&before), writer) } {
                return Err(lost(e).unwrap_or(failed));
            }
            // SAFETY: aligned and readable.
            if unsafe { read_image(tramp) } != before {
                return Err(failed);
            }
            now[i] = before;
            undone = true;
        }
        if undone && writer.sync_cores().is_err() {
            return Err(Error::RestoreFailed {
                addr: item(0).tramp,
                state: PARTLY_RESTORED,
            });
        }
    }
    Ok(())
}
