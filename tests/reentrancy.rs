//! Calls of the key API from places that already hold the patch lock, and
//! keys pointed at their own trampolines: each works or is refused with an
//! error that changes nothing, never a deadlock or an endless jump.

use static_call::ops::{To, retarget_all, retarget_all_with};
use static_call::{Error, StaticCall};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::Duration;

extern "C" fn c_plus_one(x: u64) -> u64 {
    x + 1
}
#[cfg_attr(
    not(all(
        target_os = "linux",
        any(target_arch = "x86_64", target_arch = "aarch64"),
        not(feature = "force-generic")
    )),
    allow(dead_code, reason = "only the tests of the lock's holder use it")
)]
extern "C" fn c_plus_two(x: u64) -> u64 {
    x + 2
}
fn plus_one(x: u64) -> u64 {
    x + 1
}
fn plus_two(x: u64) -> u64 {
    x + 2
}

static_call::static_call! {
    /// A key with inline call sites.
    pub static HOT: extern "C" fn(u64) -> u64 = c_plus_one;
    /// A key called through its trampoline.
    pub static OP: fn(u64) -> u64 = plus_one;
}

/// `OP` and `HOT` as another crate would see them.
mod declared {
    static_call::declare_static_call! {
        // SAFETY: defined above with exactly these signatures.
        pub unsafe static OP: fn(u64) -> u64;
        // SAFETY: as above.
        pub unsafe static HOT: extern "C" fn(u64) -> u64;
    }
}

/// Two sites of `HOT`.
#[inline(never)]
fn hot_site_a(x: u64) -> u64 {
    HOT.call_inline(x)
}
#[inline(never)]
fn hot_site_b(x: u64) -> u64 {
    HOT.call_inline(x)
}

/// Tests that update the keys take turns.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` on another thread and fails (instead of hanging) if it has not
/// finished in a minute: a deadlock would never finish.
fn within_a_minute<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| panic!("deadlock: {what} did not return"))
}

#[test]
fn inline_sites_can_be_counted_inside_each_inline_site() {
    assert_eq!(hot_site_a(1) + hot_site_b(1), 4);
    let (outer, inner) = within_a_minute("inline_sites() inside each_inline_site", || {
        let mut outer = 0;
        let mut inner = Vec::new();
        HOT.each_inline_site(|_| {
            outer += 1;
            inner.push(HOT.inline_sites());
        });
        (outer, inner)
    });
    let inline = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
        && !cfg!(feature = "force-generic");
    if inline {
        assert!(outer >= 2, "the two sites were not recorded");
    }
    assert_eq!(inner, vec![outer; outer]);
    assert_eq!(HOT.inline_sites(), outer);
}

/// In Linux user space the patch lock knows its holder: nested listings
/// work, and an update from inside one is refused. (The generic backend,
/// the only one elsewhere, has no inline sites to list and writes no
/// text.)
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(feature = "force-generic")
))]
#[test]
fn inside_each_inline_site_listing_works_and_updates_are_refused() {
    let _serial = serial();
    let (nested, updates) = within_a_minute("a call inside each_inline_site", || {
        let mut nested = Vec::new();
        let mut updates = Vec::new();
        HOT.each_inline_site(|_| {
            let mut again = Vec::new();
            HOT.each_inline_site(|s| again.push(s));
            nested.push(again);
            updates.push(HOT.update(c_plus_two).map_err(|e| e.error));
            updates.push(OP.update(plus_two).map_err(|e| e.error));
            updates.push(retarget_all(&[&To::function(&OP, plus_two)]).map_err(|e| e.error));
        });
        (nested, updates)
    });
    let mut sites = Vec::new();
    HOT.each_inline_site(|s| sites.push(s));
    assert!(
        nested.iter().all(|n| *n == sites),
        "{nested:?} vs {sites:?}"
    );
    for u in &updates {
        assert_eq!(*u, Err(Error::LockHeldByThisThread));
    }
    assert_eq!(updates.len(), 3 * sites.len());
    // Nothing changed, and the lock is free again.
    assert_eq!(OP.call(1), 2);
    assert_eq!(hot_site_a(1), 2);
    OP.update(plus_two).unwrap();
    assert_eq!(OP.call(1), 3);
    OP.update(plus_one).unwrap();
}

/// A writer that tries to update a key from inside its own write.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(feature = "force-generic")
))]
struct UpdatingWriter {
    seen: Mutex<Vec<Result<(), Error>>>,
}

// SAFETY: every write goes to `Remap` unchanged.
#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(feature = "force-generic")
))]
unsafe impl static_call::TextWriter for UpdatingWriter {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        let nested = HOT.update(c_plus_two).map_err(|e| e.error);
        self.seen.lock().unwrap().push(nested);
        // SAFETY: the caller's contract, passed on.
        unsafe { static_call::writer::linux::Remap.write(addr, bytes) }
    }
    fn sync_cores(&self) -> Result<(), Error> {
        static_call::writer::linux::Remap.sync_cores()
    }
}

#[cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(feature = "force-generic")
))]
#[test]
fn an_update_from_inside_a_writer_is_refused() {
    let _serial = serial();
    let seen = within_a_minute("an update from inside a text writer", || {
        let w = UpdatingWriter {
            seen: Mutex::new(Vec::new()),
        };
        OP.update_with(plus_two, &w).unwrap();
        let seen = w.seen.into_inner().unwrap();
        (seen, OP.call(1), hot_site_a(1))
    });
    let (seen, op, hot) = seen;
    assert!(!seen.is_empty(), "the writer was not used");
    assert!(
        seen.iter().all(|r| *r == Err(Error::LockHeldByThisThread)),
        "{seen:?}"
    );
    assert_eq!((op, hot), (3, 2));
    OP.update(plus_one).unwrap();
}

/// Every way to point `key` at `target` (a trampoline of `key` itself) is
/// refused with `SelfTarget`, and the key still calls what it did.
fn self_targets_are_refused<F: static_call::FnPtr>(
    key: &StaticCall<F>,
    target: F,
    call: impl Fn() -> u64,
) {
    let before = (key.query().map(|f| f.addr()), call());
    let tramp = key.trampoline_addr();
    let refused = |r: Result<(), static_call::UpdateError>| {
        let e = r.expect_err("a key pointed at its own trampoline was accepted");
        assert_eq!(e.error, Error::SelfTarget { tramp });
        assert_eq!(e.key, key.name());
        assert!(e.to_string().contains("jump to itself"), "{e}");
    };
    refused(key.update(target));
    #[cfg(target_os = "linux")]
    {
        use static_call::writer::linux::{Mprotect, Remap};
        refused(key.update_with(target, &Remap));
        refused(key.update_with(target, &Mprotect));
        #[cfg(target_arch = "x86_64")]
        for s in [
            static_call::arch::x86_64::Strategy::Breakpoint,
            static_call::arch::x86_64::Strategy::AtomicStore,
        ] {
            refused(key.update_with(target, &s.with(&Remap)));
            refused(retarget_all_with(
                &[&To::function(key, target)],
                &s.with(&Remap),
            ));
        }
    }
    refused(retarget_all(&[&To::function(key, target)]));
    assert_eq!((key.query().map(|f| f.addr()), call()), before);
}

#[test]
fn a_key_cannot_target_its_own_trampoline() {
    let _serial = serial();
    self_targets_are_refused(&OP, OP.trampoline(), || OP.call(1));
    self_targets_are_refused(&HOT, HOT.trampoline(), || hot_site_a(1));
    // Through a declared key, either way round.
    self_targets_are_refused(&declared::OP, OP.trampoline(), || OP.call(1));
    self_targets_are_refused(&OP, declared::OP.trampoline(), || OP.call(1));
    self_targets_are_refused(&declared::HOT, HOT.trampoline(), || hot_site_a(1));
}

#[test]
fn a_batch_with_a_self_target_writes_nothing() {
    let _serial = serial();
    let before = (OP.call(1), hot_site_a(1));
    let to_op = To::function(&OP, plus_two);
    let to_self = To::function(&HOT, HOT.trampoline());
    let e = retarget_all(&[&to_op, &to_self]).unwrap_err();
    assert_eq!(
        e.error,
        Error::SelfTarget {
            tramp: HOT.trampoline_addr()
        }
    );
    assert_eq!(e.key, "HOT");
    assert_eq!((OP.call(1), hot_site_a(1)), before);
    assert_eq!(
        OP.query().map(|f| f as usize),
        Some(plus_one as fn(u64) -> u64 as usize)
    );
}
