//! Failure injection: an update whose writer fails at its n-th write, or
//! its n-th sync, for every n until the update succeeds, with both
//! strategies, for a trampoline-only key and a key with inline sites.
//! After each `Err` the key must behave exactly as before: the trampoline's
//! 16 bytes unchanged, `query` unchanged, calls on every CPU as before, and
//! every inline site either unchanged or put back to a call of the
//! trampoline (what the crate's undo writes: it behaves as the old target,
//! through the unchanged trampoline).

use core::sync::atomic::{AtomicUsize, Ordering};

use alloc::format;
use alloc::vec::Vec;
use static_call::arch::x86_64::{Image, Strategy, site};
use static_call::{Error, TextWriter};
use x86_kernel::runner::TestResult;
use x86_kernel::{check, check_eq, patching, println};

use crate::keys::{Far, Key, Near, Near2, Null, Ret0, State, image, site_word};
use crate::transitions::{check_calls, check_state};

/// The kernel's writer, failing its `fail_write`-th write or its
/// `fail_sync`-th sync (0-based) without storing anything then.
struct Failing {
    fail_write: usize,
    fail_sync: usize,
    writes: AtomicUsize,
    syncs: AtomicUsize,
}

impl Failing {
    fn new(fail_write: usize, fail_sync: usize) -> Self {
        Failing {
            fail_write,
            fail_sync,
            writes: AtomicUsize::new(0),
            syncs: AtomicUsize::new(0),
        }
    }
}

// SAFETY: forwards to the kernel's writer, except the chosen write, which
// stores nothing and fails, as the contract allows.
unsafe impl TextWriter for Failing {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        if self.writes.fetch_add(1, Ordering::SeqCst) == self.fail_write {
            return Err(Error::WriterFailed {
                what: "injected write failure",
                errno: 0,
            });
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { patching::writer().write(addr, bytes) }
    }
    fn sync_cores(&self) -> Result<(), Error> {
        if self.syncs.fetch_add(1, Ordering::SeqCst) == self.fail_sync {
            return Err(Error::WriterFailed {
                what: "injected sync failure",
                errno: 0,
            });
        }
        patching::writer().sync_cores()
    }
}

/// What an update may change: the trampoline and every site.
fn snapshot(key: Key) -> (Image, Vec<[u8; 8]>) {
    (
        image(key.tramp()),
        key.sites().into_iter().map(site_word).collect(),
    )
}

const PAIRS: &[(State, State)] = &[
    (Near, Near2),
    (Near2, Far),
    (Far, Null),
    (Null, Ret0),
    (Ret0, Near),
    (Far, Near),
];

pub(crate) fn failed_updates_change_nothing() -> TestResult {
    crate::keys::learn_ret0().map_err(|e| format!("RET0: {e}"))?;
    let w = patching::writer();
    let (mut failures, mut calls, mut undone_to_trampoline) = (0u64, 0u64, 0u64);
    for key in [Key::Eff, Key::CEff] {
        for strategy in [Strategy::Breakpoint, Strategy::AtomicStore] {
            for &(from, to) in PAIRS {
                for syncs in [false, true] {
                    for n in 0.. {
                        let what = format!(
                            "{} {strategy:?} {from:?} -> {to:?}, {} {n} failing",
                            key.name(),
                            if syncs { "sync" } else { "write" }
                        );
                        key.set(from, w)
                            .map_err(|e| format!("{what}: setup: {e}"))?;
                        let before = snapshot(key);
                        let failing = if syncs {
                            Failing::new(usize::MAX, n)
                        } else {
                            Failing::new(n, usize::MAX)
                        };
                        match key.set(to, &strategy.with(&failing)) {
                            Ok(()) => {
                                check_state(key, to).map_err(|e| format!("{what}: {e}"))?;
                                break;
                            }
                            Err(Error::RestoreFailed { .. }) => {
                                return Err(format!("{what}: the rollback failed"));
                            }
                            Err(_) => {}
                        }
                        failures += 1;
                        let after = snapshot(key);
                        check!(
                            after.0 == before.0,
                            "{what}: the trampoline changed: {:x?} -> {:x?}",
                            before.0,
                            after.0
                        );
                        for ((at, old), new) in key.sites().into_iter().zip(&before.1).zip(&after.1)
                        {
                            let home = site::home(at as u64, key.tramp() as u64)
                                .map_err(|e| format!("{what}: {e}"))?;
                            if new != old {
                                undone_to_trampoline += 1;
                            }
                            check!(
                                new == old || *new == home,
                                "{what}: site {at:#x} went {old:x?} -> {new:x?}"
                            );
                        }
                        check_eq!(key.query(), key.target(from));
                        check_eq!(key.is_ret0(), from == Ret0);
                        calls += check_calls(key, from, 3).map_err(|e| format!("{what}: {e}"))?;
                        check!(n < 64, "{what}: still failing");
                    }
                }
            }
        }
        key.set(Near, w)
            .map_err(|e| format!("{}: {e}", key.name()))?;
    }
    println!(
        "failures: {failures} updates failed at an injected write or sync, each left the key behaving as before ({calls} calls on 4 CPUs; {undone_to_trampoline} site(s) put back to a call of the trampoline)"
    );
    Ok(())
}
