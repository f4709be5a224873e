//! The patch lock while the MMU is off (arm64 bare metal).
//!
//! With the MMU off (`SCTLR_ELx.M` = 0) every data access is to Device
//! memory, where load/store exclusives (`ldaxr`/`stxr`) and atomic
//! read-modify-write instructions are IMPLEMENTATION DEFINED: a core may
//! never complete them, or fault. QEMU accepts them; real cores need not.
//! The patch lock is a spin lock built on them, so while the MMU is off the
//! crate does not use it. It either refuses, or, once the kernel has
//! promised that a single CPU updates ([`allow_updates_with_mmu_off`]),
//! takes the lock as a flag read and written with plain loads and stores.
//!
//! Nothing else an update does is a read-modify-write: the call-site table
//! is prepared and the writer is installed with loads and stores under the
//! lock, and writers store with single stores.
//!
//! The choice is a plain function of three facts ([`how_to_take`]), tested
//! on every host; only reading `SCTLR_ELx` is arm64 bare-metal code.

// Linux user space takes the futex lock instead: there only the public
// promise (which changes nothing) and the unit tests of the logic use this.
#![cfg_attr(all(target_os = "linux", not(test)), allow(dead_code))]

use crate::Error;
use core::ops::{Deref, DerefMut};
use core::sync::atomic::{AtomicBool, Ordering};
use spin::mutex::{SpinMutex, SpinMutexGuard};
use spin::relax::RelaxStrategy;

/// Whether the kernel promised the single-CPU rule. Only ever loaded and
/// stored (never a read-modify-write), as everything here.
static ALLOWED: AtomicBool = AtomicBool::new(false);

/// Whether the plain (MMU-off) lock is held.
static PLAIN_HELD: AtomicBool = AtomicBool::new(false);

/// Lets keys be updated while the MMU is off (arm64 bare metal), under a
/// single-CPU rule.
///
/// With the MMU off every data access is to Device memory, where load/store
/// exclusives and atomic read-modify-write instructions are
/// IMPLEMENTATION DEFINED: a core may never complete them, or fault (QEMU
/// hides this). The patch lock is a spin lock built on them, so until this
/// is called the crate refuses to take it while `SCTLR_ELx.M` is 0 (at the
/// exception level `CurrentEL` names): updates return [`Error::MmuOff`],
/// and [`patch_lock`](super::patch_lock) and
/// [`set_default_writer`](super::set_default_writer) panic with that
/// message. Once it is called, with the MMU off the lock is a flag read and
/// written with plain loads and stores; with the MMU on it is the spin lock
/// as before. Taking the lock again while it is held with the MMU off (an
/// update from an interrupt handler that interrupted one) is refused the
/// same way rather than waiting forever.
///
/// On every other target (Linux, x86-64 kernels, architectures without a
/// backend) the crate never runs with the MMU off, and this does nothing.
///
/// ```no_run
/// use static_call::writer::{self, Direct};
/// // SAFETY: the kernel's text is writable where it runs (MMU off).
/// static BOOT: Direct = unsafe { Direct::new() };
/// # fn boot() {
/// // SAFETY: the boot CPU alone runs until the MMU is on.
/// unsafe { writer::allow_updates_with_mmu_off() };
/// static_call::set_default_writer(&BOOT);
/// # }
/// ```
///
/// # Safety
///
/// While any CPU runs with its MMU off, no two CPUs may hold the patch
/// lock at once: only one CPU updates keys, installs a writer, calls
/// [`patch_lock`](super::patch_lock), [`forget_call_sites`] or
/// `inline_sites`, until every CPU that does has its MMU on. (Before the
/// secondary CPUs are started, this holds by itself.)
///
/// [`forget_call_sites`]: crate::forget_call_sites
pub unsafe fn allow_updates_with_mmu_off() {
    ALLOWED.store(true, Ordering::Release);
}

/// How the patch lock is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// The spin lock (MMU on, or a target that never runs with it off).
    Spin,
    /// The plain flag: MMU off, single-CPU rule promised, lock free.
    Plain,
    /// Refused with this error.
    Refuse(Error),
}

/// How to take the lock: `mmu_on` as read from `SCTLR_ELx.M`, `allowed`
/// if the single-CPU rule was promised, `held` if the lock (either kind)
/// is held now.
pub(crate) fn how_to_take(mmu_on: bool, allowed: bool, held: bool) -> Take {
    match (mmu_on, allowed, held) {
        (true, _, _) => Take::Spin,
        (false, false, _) => Take::Refuse(Error::MmuOff {
            what: "updates with the MMU off need `writer::allow_updates_with_mmu_off` \
                   (one CPU only): the patch lock's atomics are not reliable on Device memory",
        }),
        (false, true, true) => Take::Refuse(Error::MmuOff {
            what: "the patch lock is already held (an update from an interrupt handler, \
                   or a second CPU against the single-CPU rule)",
        }),
        (false, true, false) => Take::Plain,
    }
}

/// The patch lock, held one way or the other.
pub(crate) enum Guard<'a, T: 'a, R: RelaxStrategy> {
    Spin(SpinMutexGuard<'a, T, R>),
    /// The lock's data, reached without its spin lock; released (the flag
    /// cleared) on drop.
    Plain(&'a SpinMutex<T, R>),
}

impl<T, R: RelaxStrategy> Deref for Guard<'_, T, R> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Guard::Spin(g) => g,
            // SAFETY: the plain flag is held, and under the single-CPU rule
            // no one else reaches the data (the spin lock was free when it
            // was taken, and nobody takes it while the MMU is off).
            Guard::Plain(m) => unsafe { &*m.as_mut_ptr() },
        }
    }
}

impl<T, R: RelaxStrategy> DerefMut for Guard<'_, T, R> {
    fn deref_mut(&mut self) -> &mut T {
        match self {
            Guard::Spin(g) => g,
            // SAFETY: as for `deref`; `&mut self` makes this the only
            // reference made through this guard.
            Guard::Plain(m) => unsafe { &mut *m.as_mut_ptr() },
        }
    }
}

impl<T, R: RelaxStrategy> Drop for Guard<'_, T, R> {
    fn drop(&mut self) {
        if let Guard::Plain(_) = self {
            // Release: the text and data written under the lock are
            // ordered before the next holder's accesses.
            PLAIN_HELD.store(false, Ordering::Release);
        }
    }
}

/// Takes `mutex`, the patch lock, the way [`how_to_take`] says for this
/// CPU's MMU state.
pub(crate) fn lock<T, R: RelaxStrategy>(mutex: &SpinMutex<T, R>) -> Result<Guard<'_, T, R>, Error> {
    let held = PLAIN_HELD.load(Ordering::Acquire) || mutex.is_locked();
    match how_to_take(mmu_on(), ALLOWED.load(Ordering::Acquire), held) {
        Take::Spin => Ok(Guard::Spin(mutex.lock())),
        Take::Plain => {
            PLAIN_HELD.store(true, Ordering::Relaxed);
            Ok(Guard::Plain(mutex))
        }
        Take::Refuse(e) => Err(e),
    }
}

/// Whether this CPU's stage 1 translation is on: `SCTLR_ELx.M` at the
/// exception level it runs at. Bare-metal code runs at EL1 or above, where
/// `CurrentEL` can be read.
#[cfg(all(target_arch = "aarch64", target_os = "none"))]
fn mmu_on() -> bool {
    use aarch64_cpu::registers::{CurrentEL, Readable, SCTLR_EL1, SCTLR_EL2, SCTLR_EL3};
    match CurrentEL.read(CurrentEL::EL) {
        1 => SCTLR_EL1.is_set(SCTLR_EL1::M),
        2 => SCTLR_EL2.is_set(SCTLR_EL2::M),
        3 => SCTLR_EL3.is_set(SCTLR_EL3::M),
        // EL0 cannot read CurrentEL (it would not get here); its MMU is on.
        _ => true,
    }
}

/// Elsewhere code never runs with the MMU off (or, on architectures
/// without a backend, its atomics work on any memory the kernel runs on).
#[cfg(not(all(target_arch = "aarch64", target_os = "none")))]
fn mmu_on() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::string::ToString;

    #[test]
    fn with_the_mmu_on_the_spin_lock_is_used_whatever_else_holds() {
        for allowed in [false, true] {
            for held in [false, true] {
                assert_eq!(how_to_take(true, allowed, held), Take::Spin);
            }
        }
    }

    #[test]
    fn with_the_mmu_off_the_lock_is_refused_unless_allowed() {
        for held in [false, true] {
            let Take::Refuse(e) = how_to_take(false, false, held) else {
                panic!("taken with the MMU off without the promise");
            };
            assert!(e.to_string().contains("allow_updates_with_mmu_off"), "{e}");
        }
    }

    #[test]
    fn with_the_mmu_off_and_allowed_a_held_lock_is_refused_not_waited_for() {
        assert_eq!(how_to_take(false, true, false), Take::Plain);
        let Take::Refuse(e) = how_to_take(false, true, true) else {
            panic!("a held lock was taken again");
        };
        assert!(e.to_string().contains("already held"), "{e}");
    }

    #[test]
    fn a_plain_guard_reaches_the_data_and_releases_the_flag() {
        // The host's MMU is on, so `lock` takes the spin lock; the plain
        // guard is built by hand, as `lock` does with the MMU off.
        let m: SpinMutex<u32> = SpinMutex::new(1);
        PLAIN_HELD.store(true, Ordering::Relaxed);
        {
            let mut g = Guard::Plain(&m);
            *g += 1;
            assert_eq!(*g, 2);
        }
        assert!(!PLAIN_HELD.load(Ordering::Relaxed));
        let g = lock(&m).unwrap();
        assert!(matches!(g, Guard::Spin(_)));
        assert_eq!(*g, 2);
        assert!(m.is_locked());
        drop(g);
        assert!(!m.is_locked());
    }
}
