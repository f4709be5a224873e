//! Operations tables (`static_call_ops!`): a trait's operations as static
//! calls, installed with one call, racing with calls, and failing whole.
#![cfg(target_os = "linux")]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use static_call::arch::{Backend, UpdateWriter, active::Active};
use static_call::writer::linux::Remap;
use static_call::{Error, TextWriter};

static_call::static_call_ops! {
    /// A timer a portable kernel programs, chosen per board.
    pub trait Timer in timer {
        /// Reads the counter, scaled.
        static TIMER_READ: fn read(&self, scale: u32) -> u64;
        /// The board's timer frequency.
        static TIMER_FREQ: fn frequency() -> u64;
        /// Arms the next event: writes the deadline the timer was given.
        static TIMER_ARM: optional fn arm(&self, out: *mut u64, deadline: u64) = NULL;
        /// Events missed since boot.
        static TIMER_MISSED: optional fn missed(&self) -> u64 = RET0;
    }
    default = BootTimer;
}

/// Before any board code runs.
struct BootTimer;
static BOOT_TIMER: BootTimer = BootTimer;
impl Timer for BootTimer {
    fn instance() -> &'static Self {
        &BOOT_TIMER
    }
    fn read(&self, _scale: u32) -> u64 {
        0
    }
    fn frequency() -> u64 {
        1
    }
}

/// A timer that provides every operation; `id` tells them apart.
struct Full {
    id: u64,
}
static FULL: Full = Full { id: 1000 };
impl Timer for Full {
    fn instance() -> &'static Self {
        &FULL
    }
    fn read(&self, scale: u32) -> u64 {
        self.id + u64::from(scale)
    }
    fn frequency() -> u64 {
        1_000_000
    }
    const TIMER_ARM: Option<fn(&Self, *mut u64, u64)> = Some(Self::arm);
    const TIMER_MISSED: Option<fn(&Self) -> u64> = Some(Self::missed);
}
impl Full {
    fn arm(&self, out: *mut u64, deadline: u64) {
        // SAFETY: callers pass a pointer to a live local.
        unsafe { out.write_volatile(self.id + deadline) }
    }
    fn missed(&self) -> u64 {
        self.id + 7
    }
}

/// A timer that leaves the optional operations out.
struct Bare {
    id: u64,
}
static BARE: Bare = Bare { id: 2000 };
impl Timer for Bare {
    fn instance() -> &'static Self {
        &BARE
    }
    fn read(&self, scale: u32) -> u64 {
        self.id + u64::from(scale)
    }
    fn frequency() -> u64 {
        2_000_000
    }
}

const UNTOUCHED: u64 = u64::MAX;

/// Which implementation each operation behaves as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Impl {
    Boot,
    Full,
    Bare,
}

fn read_of(i: Impl, scale: u32) -> u64 {
    match i {
        Impl::Boot => 0,
        Impl::Full => 1000 + u64::from(scale),
        Impl::Bare => 2000 + u64::from(scale),
    }
}
fn frequency_of(i: Impl) -> u64 {
    match i {
        Impl::Boot => 1,
        Impl::Full => 1_000_000,
        Impl::Bare => 2_000_000,
    }
}
fn arm_of(i: Impl, deadline: u64) -> u64 {
    match i {
        Impl::Full => 1000 + deadline,
        Impl::Boot | Impl::Bare => UNTOUCHED,
    }
}
fn missed_of(i: Impl) -> u64 {
    match i {
        Impl::Full => 1007,
        Impl::Boot | Impl::Bare => 0,
    }
}

fn arm(deadline: u64) -> u64 {
    let mut cell = UNTOUCHED;
    timer::arm(&mut cell, deadline);
    cell
}

fn check(i: Impl) {
    for scale in [0, 3, u32::MAX] {
        assert_eq!(timer::read(scale), read_of(i, scale), "read as {i:?}");
    }
    assert_eq!(timer::frequency(), frequency_of(i), "frequency as {i:?}");
    assert_eq!(arm(40), arm_of(i, 40), "arm as {i:?}");
    assert_eq!(timer::missed(), missed_of(i), "missed as {i:?}");
}

fn install(i: Impl) -> Result<(), static_call::UpdateError> {
    match i {
        Impl::Boot => timer::install::<BootTimer>(),
        Impl::Full => timer::install::<Full>(),
        Impl::Bare => timer::install::<Bare>(),
    }
}

fn install_with(i: Impl, w: &dyn UpdateWriter) -> Result<(), static_call::UpdateError> {
    match i {
        Impl::Boot => timer::install_with::<BootTimer>(w),
        Impl::Full => timer::install_with::<Full>(w),
        Impl::Bare => timer::install_with::<Bare>(w),
    }
}

/// The writers the stress alternates between: the default and, on
/// x86-64, the int3 protocol (the batched one).
fn stress_writers() -> Vec<Option<&'static dyn UpdateWriter>> {
    #[cfg(all(target_arch = "x86_64", not(feature = "force-generic")))]
    {
        use static_call::arch::x86_64::{Strategy, WithStrategy};
        static INT3: WithStrategy<'static> = WithStrategy::new(Strategy::Breakpoint, &Remap);
        vec![None, Some(&INT3)]
    }
    #[cfg(not(all(target_arch = "x86_64", not(feature = "force-generic"))))]
    {
        vec![None]
    }
}

/// Tests that install run one at a time.
fn serial() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Before any install the default runs (the doc example shows it in a
/// fresh process); every install switches every operation.
#[test]
fn installs_switch_every_operation() {
    let _serial = serial();
    for i in [
        Impl::Full,
        Impl::Bare,
        Impl::Full,
        Impl::Boot,
        Impl::Bare,
        Impl::Boot,
    ] {
        install(i).unwrap();
        check(i);
        // Optional operations left out are really NULL / RET0 keys.
        let absent = i != Impl::Full;
        assert_eq!(timer::TIMER_ARM.query().is_none(), absent, "{i:?}");
        assert_eq!(timer::TIMER_MISSED.is_ret0(), absent, "{i:?}");
    }
}

/// A writer that fails its `fail_at`-th write (counting from 0), storing
/// nothing, and passes every other write to `Remap`; it counts its syncs
/// and fails those from `fail_syncs_from` on.
struct FailingWriter {
    writes: AtomicUsize,
    fail_at: usize,
    syncs: AtomicUsize,
    fail_syncs_from: usize,
}

impl FailingWriter {
    fn failing_write(fail_at: usize) -> Self {
        FailingWriter {
            writes: AtomicUsize::new(0),
            fail_at,
            syncs: AtomicUsize::new(0),
            fail_syncs_from: usize::MAX,
        }
    }
}

// SAFETY: every write it does not refuse is `Remap`'s, which keeps the
// trait's promises; a refused write stores nothing.
unsafe impl TextWriter for FailingWriter {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        if self.writes.fetch_add(1, Ordering::Relaxed) == self.fail_at {
            return Err(Error::WriterFailed {
                what: "write (refused by the test)",
                errno: 0,
            });
        }
        // SAFETY: the caller's contract is Remap's.
        unsafe { Remap.write(addr, bytes) }
    }

    fn sync_cores(&self) -> Result<(), Error> {
        if self.syncs.fetch_add(1, Ordering::Relaxed) >= self.fail_syncs_from {
            return Err(Error::WriterFailed {
                what: "sync (refused by the test)",
                errno: 0,
            });
        }
        Remap.sync_cores()
    }

    /// Each write is `Remap`'s: a page swapped in whole.
    fn publishes_pages(&self) -> bool {
        Remap.publishes_pages()
    }
}

#[test]
fn an_install_that_fails_anywhere_leaves_every_operation_as_it_was() {
    let _serial = serial();
    install(Impl::Full).unwrap();
    // Count the writes a whole install of `Bare` over `Full` makes, then
    // make each one of them fail in turn.
    let counting = FailingWriter::failing_write(usize::MAX);
    timer::install_with::<Bare>(&counting).unwrap();
    let total = counting.writes.load(Ordering::Relaxed);
    if !<Active as Backend>::WRITES_TEXT {
        // The generic backend stores a pointer: nothing can fail.
        assert_eq!(total, 0);
        install(Impl::Boot).unwrap();
        return;
    }
    assert!(
        total >= 3,
        "an install of three changed keys made {total} writes"
    );
    install(Impl::Full).unwrap();
    for fail_at in 0..total {
        let failing = FailingWriter::failing_write(fail_at);
        let result = timer::install_with::<Bare>(&failing);
        assert!(
            matches!(result.map_err(|e| e.error), Err(Error::WriterFailed { .. })),
            "write {fail_at} of {total} failed, install returned {result:?}"
        );
        // The error names the key whose update failed: one of the three.
        let key = result.unwrap_err().key;
        assert!(key.starts_with("TIMER_"), "{key}");
        check(Impl::Full);
        assert!(timer::TIMER_ARM.query().is_some());
    }
    install(Impl::Boot).unwrap();
}

/// Issue 11: an install writes every key, then synchronises every CPU
/// once (the default strategies on arm64 and, with a writer that
/// publishes whole pages, x86-64 need no synchronisation between their
/// own stores). If that one sync fails, every
/// key is put back and synchronised again; if that fails too, the error
/// says the restore failed.
#[test]
fn an_install_synchronises_every_cpu_once() {
    let _serial = serial();
    install(Impl::Full).unwrap();
    let counting = FailingWriter::failing_write(usize::MAX);
    timer::install_with::<Bare>(&counting).unwrap();
    let (writes, syncs) = (
        counting.writes.load(Ordering::Relaxed),
        counting.syncs.load(Ordering::Relaxed),
    );
    report(format_args!(
        "install of 3 changed keys: {writes} writes, {syncs} sync(s)"
    ));
    if !<Active as Backend>::WRITES_TEXT {
        // The generic backend stores pointers: nothing to synchronise.
        assert_eq!((writes, syncs), (0, 0));
        install(Impl::Boot).unwrap();
        return;
    }
    assert_eq!(syncs, 1, "one sync for the whole install ({writes} writes)");
    check(Impl::Bare);
    // Every sync fails: the keys are put back, but that cannot be made
    // visible everywhere either, and the error says so.
    install(Impl::Full).unwrap();
    let failing = FailingWriter {
        fail_syncs_from: 0,
        ..FailingWriter::failing_write(usize::MAX)
    };
    let result = timer::install_with::<Bare>(&failing).unwrap_err();
    assert!(
        matches!(result.error, Error::RestoreFailed { .. }),
        "{result}"
    );
    // Only the one sync fails: every key goes back, synchronised again,
    // and the install's error is the sync's.
    install(Impl::Full).unwrap();
    let first_only = FirstSyncFails(FailingWriter::failing_write(usize::MAX));
    let result = timer::install_with::<Bare>(&first_only).unwrap_err();
    assert!(
        matches!(result.error, Error::WriterFailed { .. }),
        "{result}"
    );
    assert_eq!(first_only.0.syncs.load(Ordering::Relaxed), 2);
    check(Impl::Full);
    install(Impl::Boot).unwrap();
}

/// x86-64's int3 protocol over an install: one batched protocol (literals,
/// `int3`s, tails, first bytes, a sync after each phase), so at most four
/// syncs for all the keys; a write or sync that fails at any point leaves
/// every operation as it was.
#[cfg(all(target_arch = "x86_64", not(feature = "force-generic")))]
#[test]
fn an_int3_install_is_one_batched_protocol() {
    use static_call::arch::x86_64::Strategy;
    let _serial = serial();
    install(Impl::Full).unwrap();
    let counting = FailingWriter::failing_write(usize::MAX);
    install_with(Impl::Bare, &Strategy::Breakpoint.with(&counting)).unwrap();
    let (writes, syncs) = (
        counting.writes.load(Ordering::Relaxed),
        counting.syncs.load(Ordering::Relaxed),
    );
    report(format_args!(
        "int3 install of 3 changed keys: {writes} writes, {syncs} syncs"
    ));
    assert!(syncs <= 4, "{syncs} syncs for one install");
    assert!(writes >= 3 * 3, "{writes} writes");
    check(Impl::Bare);
    for fail_at in 0..writes {
        install(Impl::Full).unwrap();
        let failing = FailingWriter::failing_write(fail_at);
        let err = install_with(Impl::Bare, &Strategy::Breakpoint.with(&failing)).unwrap_err();
        assert!(
            matches!(err.error, Error::WriterFailed { .. }),
            "write {fail_at}: {err}"
        );
        check(Impl::Full);
    }
    for first_failing in 0..syncs {
        install(Impl::Full).unwrap();
        let failing = FailingWriter {
            fail_syncs_from: first_failing,
            ..FailingWriter::failing_write(usize::MAX)
        };
        let err = install_with(Impl::Bare, &Strategy::Breakpoint.with(&failing)).unwrap_err();
        // Every sync from then on fails, so the undo cannot be made
        // visible: the error must say so, unless nothing was left to
        // undo.
        assert!(
            matches!(err.error, Error::RestoreFailed { .. }),
            "syncs failing from {first_failing}: {err}"
        );
        // Calls still run the old or the new implementation; the next
        // install with a writer that works completes the keys.
        install(Impl::Full).unwrap();
        check(Impl::Full);
    }
    install(Impl::Boot).unwrap();
}

/// Every operation's trampoline address and its 16 bytes, then each of
/// its inline call sites and its 8 bytes.
#[cfg(all(target_arch = "x86_64", not(feature = "force-generic")))]
fn trampolines() -> Vec<(usize, Vec<u8>)> {
    type EachSite<'a> = &'a dyn Fn(&mut dyn FnMut(usize));
    let keys: [(usize, EachSite); 4] = [
        (timer::TIMER_READ.trampoline_addr(), &|f| {
            timer::TIMER_READ.each_inline_site(f)
        }),
        (timer::TIMER_FREQ.trampoline_addr(), &|f| {
            timer::TIMER_FREQ.each_inline_site(f)
        }),
        (timer::TIMER_ARM.trampoline_addr(), &|f| {
            timer::TIMER_ARM.each_inline_site(f)
        }),
        (timer::TIMER_MISSED.trampoline_addr(), &|f| {
            timer::TIMER_MISSED.each_inline_site(f)
        }),
    ];
    // SAFETY: a trampoline is 16 readable bytes, a site 8.
    let read = |at: usize, len: usize| unsafe {
        std::slice::from_raw_parts(at as *const u8, len).to_vec()
    };
    let mut saved: Vec<_> = keys.iter().map(|&(t, _)| (t, read(t, 16))).collect();
    for (_, sites) in keys {
        sites(&mut |s| saved.push((s, read(s, 8))));
    }
    saved
}

/// Fails only the first sync of the writer it wraps.
struct FirstSyncFails(FailingWriter);

// SAFETY: forwards every write to a writer that keeps the contract.
unsafe impl TextWriter for FirstSyncFails {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.0.write(addr, bytes) }
    }
    fn sync_cores(&self) -> Result<(), Error> {
        if self.0.syncs.fetch_add(1, Ordering::Relaxed) == 0 {
            return Err(Error::WriterFailed {
                what: "sync (refused by the test)",
                errno: 0,
            });
        }
        Remap.sync_cores()
    }
    fn publishes_pages(&self) -> bool {
        self.0.publishes_pages()
    }
}

/// Prints a line even when libtest captures output.
fn report(line: std::fmt::Arguments) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Callers on every core use every operation while the main thread
/// installs `Full` and `Bare` in turn: each operation behaves as one of
/// the two implementations (its old or its new one), never anything else.
#[test]
fn calls_racing_with_installs_see_each_operations_old_or_new_implementation() {
    let _serial = serial();
    install(Impl::Full).unwrap();
    let stop = AtomicBool::new(false);
    let calls = AtomicUsize::new(0);
    let callers = thread::available_parallelism()
        .map_or(2, |n| n.get())
        .max(2);
    let mut installs = 0;
    thread::scope(|scope| {
        for id in 0..callers {
            let (stop, calls) = (&stop, &calls);
            scope.spawn(move || {
                let mut n = 0;
                let both = [Impl::Full, Impl::Bare];
                let mut scale = id as u32;
                while !stop.load(Ordering::Relaxed) {
                    scale = scale.wrapping_add(13) % 500;
                    let r = timer::read(scale);
                    assert!(both.iter().any(|&i| read_of(i, scale) == r), "read {r}");
                    let f = timer::frequency();
                    assert!(both.iter().any(|&i| frequency_of(i) == f), "freq {f}");
                    let a = arm(u64::from(scale));
                    assert!(
                        both.iter().any(|&i| arm_of(i, u64::from(scale)) == a),
                        "arm {a}"
                    );
                    let m = timer::missed();
                    assert!(both.iter().any(|&i| missed_of(i) == m), "missed {m}");
                    n += 1;
                }
                calls.fetch_add(n, Ordering::Relaxed);
            });
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        let writers = stress_writers();
        while Instant::now() < deadline || installs < 100 {
            let i = if installs % 2 == 0 {
                Impl::Bare
            } else {
                Impl::Full
            };
            match writers[(installs / 2) % writers.len()] {
                None => install(i).unwrap(),
                Some(w) => install_with(i, w).unwrap(),
            }
            installs += 1;
        }
        stop.store(true, Ordering::Relaxed);
    });
    let n = calls.into_inner();
    eprintln!(
        "ops stress: {callers} callers, {n} checked rounds of 4 operations, {installs} installs"
    );
    assert!(n > 0 && installs >= 100);
    install(Impl::Boot).unwrap();
}

/// A batch that names a key twice is refused before anything is written:
/// it would have no single new target for that key, and its undo would
/// put back a target the batch itself wrote.
#[test]
fn a_batch_naming_a_key_twice_is_refused_and_changes_nothing() {
    use static_call::ops::{To, retarget_all, retarget_all_with};
    extern "C" fn fast() -> u64 {
        7
    }
    let _serial = serial();
    install(Impl::Full).unwrap();
    #[cfg(all(target_arch = "x86_64", not(feature = "force-generic")))]
    let before = trampolines();
    let to_fast = To::function(&timer::TIMER_FREQ, fast);
    let to_ret0 = To::ret0(&timer::TIMER_MISSED);
    let to_ret0_again = To::ret0(&timer::TIMER_MISSED);
    for with_writer in [false, true] {
        let keys: [&dyn static_call::ops::Retarget; 3] = [&to_fast, &to_ret0, &to_ret0_again];
        let err = if with_writer {
            retarget_all_with(&keys, &Remap)
        } else {
            retarget_all(&keys)
        }
        .unwrap_err();
        assert_eq!(err.key, "TIMER_MISSED");
        assert_eq!(
            err.error,
            Error::DuplicateKey {
                tramp: timer::TIMER_MISSED.trampoline_addr()
            }
        );
        #[cfg(all(target_arch = "x86_64", not(feature = "force-generic")))]
        assert_eq!(trampolines(), before, "nothing was written");
        check(Impl::Full);
    }
    // The same keys, each once, go through.
    retarget_all(&[&to_fast, &to_ret0]).unwrap();
    assert_eq!(timer::frequency(), 7);
    assert_eq!(timer::missed(), 0);
    install(Impl::Boot).unwrap();
}

/// An install decides once which strategy it runs: a default changed by
/// another thread in the middle of it (here, by its own first write) must
/// not turn the rest into the int3 protocol without its syncs.
#[cfg(all(target_arch = "x86_64", not(feature = "force-generic")))]
#[test]
fn an_install_keeps_the_strategy_it_started_with() {
    use static_call::arch::x86_64::{Strategy, default_strategy, set_default_strategy};
    /// Counts like `FailingWriter`; its first write changes the default
    /// strategy, and it notes every `int3` it is asked to store.
    struct SwitchesDefault {
        inner: FailingWriter,
        int3s: AtomicUsize,
    }
    // SAFETY: every write is `FailingWriter`'s (that is, `Remap`'s).
    unsafe impl TextWriter for SwitchesDefault {
        unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
            if self.inner.writes.load(Ordering::Relaxed) == 0 {
                set_default_strategy(Strategy::Breakpoint);
            }
            if bytes.first() == Some(&0xcc) {
                self.int3s.fetch_add(1, Ordering::Relaxed);
            }
            // SAFETY: the caller's contract, passed on.
            unsafe { self.inner.write(addr, bytes) }
        }
        fn sync_cores(&self) -> Result<(), Error> {
            self.inner.sync_cores()
        }
    }
    let _serial = serial();
    let initial = default_strategy();
    set_default_strategy(Strategy::AtomicStore);
    install(Impl::Full).unwrap();
    let writer = SwitchesDefault {
        inner: FailingWriter::failing_write(usize::MAX),
        int3s: AtomicUsize::new(0),
    };
    let result = timer::install_with::<Bare>(&writer);
    set_default_strategy(initial);
    result.unwrap();
    assert_eq!(writer.int3s.load(Ordering::Relaxed), 0, "no int3 stored");
    assert_eq!(writer.inner.syncs.load(Ordering::Relaxed), 1, "one sync");
    check(Impl::Bare);
    install(Impl::Boot).unwrap();
}
