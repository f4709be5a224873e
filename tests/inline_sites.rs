//! Inline call sites as a program gets them: every call of an `extern "C"`
//! key is a site the crate emitted and recorded, and every update rewrites
//! each site to call the target itself (x86-64 natively, arm64 under
//! qemu-aarch64). Counts, every site's instruction after every transition
//! of a 1000-site key (with the syncs counted and the time reported),
//! concurrent callers through the sites, and (x86-64) each intermediate
//! state of the batched int3 protocol run by a caller, including one
//! parked in the trap handler.
#![cfg(all(
    target_os = "linux",
    any(target_arch = "x86_64", target_arch = "aarch64"),
    not(feature = "force-generic")
))]

mod common;

use static_call::arch::UpdateWriter;
use static_call::writer::{TextPatch, linux::Remap};
use static_call::{Error, TextWriter};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

static_call::static_call! {
    /// Called from exactly four sites (see `counted_*`).
    static COUNTED: extern "C" fn(u64) -> u64 = add1;
    /// Called from 1000 sites (see `wide_*`).
    static WIDE: extern "C" fn(u64) -> u64 = add1;
    /// A hook that may be NULL, from two sites.
    static HOOK: extern "C" fn(u64) = note;
    /// Raced by concurrent callers.
    static RACED: extern "C" fn(u64) -> u64 = add1;
    /// Parked in the trap handler (x86-64).
    static PARKED: extern "C" fn(u64) -> u64 = add1;
    /// Two sites, one of them in text a "kernel" frees (`forgotten_*`).
    static FREED: extern "C" fn(u64) -> u64 = add1;
}

static_call::static_call! {
    /// Called from a site here and from one compiled against a
    /// declaration (`declaring`); first updated with the first writer.
    static MIXED_1: extern "C" fn(u64) -> u64 = add1;
    /// The same, first updated with the second writer (x86-64).
    static MIXED_2: extern "C" fn(u64) -> u64 = add1;
    /// The same, with the third (x86-64).
    static MIXED_3: extern "C" fn(u64) -> u64 = add1;
    /// The same, with the fourth (x86-64).
    static MIXED_4: extern "C" fn(u64) -> u64 = add1;
    /// NULL from the start: its sites are the no-op.
    static NULL_FROM_START: extern "C" fn(u64) = NULL;
    /// RET0 from the start: its sites call the return-zero function.
    static RET0_FROM_START: extern "C" fn(u64) -> u64 = RET0;
}

/// Calls of `MIXED_*` compiled against a declaration, which cannot name
/// the initial target: they call the trampoline until the first update.
mod declaring {
    static_call::declare_static_call! {
        // SAFETY: defined above with exactly this signature and types.
        pub unsafe static MIXED_1: extern "C" fn(u64) -> u64;
        // SAFETY: as above.
        pub unsafe static MIXED_2: extern "C" fn(u64) -> u64;
        // SAFETY: as above.
        pub unsafe static MIXED_3: extern "C" fn(u64) -> u64;
        // SAFETY: as above.
        pub unsafe static MIXED_4: extern "C" fn(u64) -> u64;
    }

    #[inline(never)]
    pub extern "C" fn mixed_3(x: u64) -> u64 {
        MIXED_3.call_inline(x)
    }

    #[inline(never)]
    pub extern "C" fn mixed_4(x: u64) -> u64 {
        MIXED_4.call_inline(x)
    }

    #[inline(never)]
    pub extern "C" fn mixed_1(x: u64) -> u64 {
        MIXED_1.call_inline(x)
    }

    #[inline(never)]
    pub extern "C" fn mixed_2(x: u64) -> u64 {
        MIXED_2.call_inline(x)
    }
}

#[inline(never)]
extern "C" fn mixed_1_defined(x: u64) -> u64 {
    MIXED_1.call_inline(x)
}

#[inline(never)]
extern "C" fn mixed_2_defined(x: u64) -> u64 {
    MIXED_2.call_inline(x)
}

#[inline(never)]
extern "C" fn mixed_3_defined(x: u64) -> u64 {
    MIXED_3.call_inline(x)
}

#[inline(never)]
extern "C" fn mixed_4_defined(x: u64) -> u64 {
    MIXED_4.call_inline(x)
}

#[inline(never)]
fn null_from_start(x: u64) {
    NULL_FROM_START.call_inline(x)
}

#[inline(never)]
fn ret0_from_start(x: u64) -> u64 {
    RET0_FROM_START.call_inline(x)
}

#[inline(never)]
fn freed_kept(x: u64) -> u64 {
    FREED.call_inline(x)
}

#[inline(never)]
fn freed_forgotten(x: u64) -> u64 {
    FREED.call_inline(x + 1)
}

extern "C" fn add1(x: u64) -> u64 {
    x + 1
}
extern "C" fn add2(x: u64) -> u64 {
    x + 2
}
extern "C" fn add3(x: u64) -> u64 {
    x + 3
}
/// Far targets return `x + FAR_ADD` (through a thunk out of reach).
extern "C" fn far_add(x: u64) -> u64 {
    x + FAR_ADD
}
const FAR_ADD: u64 = 7;

static NOTED: AtomicU64 = AtomicU64::new(0);
extern "C" fn note(x: u64) {
    NOTED.fetch_add(x, Ordering::SeqCst);
}

/// Updates are process-wide; tests that update keys take turns.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

#[inline(never)]
fn counted_one(x: u64) -> u64 {
    COUNTED.call_inline(x)
}

#[inline(never)]
fn counted_three(x: u64) -> u64 {
    COUNTED.call_inline(x) ^ COUNTED.call_inline(x + 10) ^ COUNTED.call_inline(x + 20)
}

#[inline(never)]
fn hook_twice(x: u64) {
    HOOK.call_inline(x);
    HOOK.call_inline(x);
}

#[macro_use]
#[path = "common/wide_sites.rs"]
mod wide_sites;

wide_fns!(WIDE, WIDE_FNS: wide_0 0 wide_1 1 wide_2 2 wide_3 3 wide_4 4 wide_5 5 wide_6 6 wide_7 7 wide_8 8 wide_9 9);

/// What a site holds, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Site {
    Call(usize),
    Nop,
}

fn decode(site: usize) -> Site {
    #[cfg(target_arch = "x86_64")]
    {
        use static_call::arch::x86_64::site;
        // SAFETY: a site of the table: 8 readable, aligned bytes of text.
        let word = unsafe { (site as *const [u8; 8]).read_volatile() };
        match site::decode(site as u64, &word) {
            Ok(Some(t)) => Site::Call(t as usize),
            Ok(None) => Site::Nop,
            Err(e) => panic!("{e}"),
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        use static_call::arch::aarch64::{insn::NOP, site};
        // SAFETY: a site of the table: a readable, aligned word of text.
        let word = unsafe { (site as *const u32).read_volatile() };
        match site::decode_bl(site as u64, word) {
            Some(t) => Site::Call(t as usize),
            None if word == NOP => Site::Nop,
            None => panic!("site {site:#x} holds {word:#010x}"),
        }
    }
}

/// Asserts that `site` holds what the defining crate assembled for a key
/// whose initial target is `add1`: a direct call, not of the trampoline,
/// of `add1` or (the compiler may give a small function one copy per
/// codegen unit) of code that behaves as it.
fn assert_calls_add1_directly(site: usize, tramp: usize) {
    match decode(site) {
        Site::Call(t) if t == add1 as extern "C" fn(u64) -> u64 as usize => {}
        Site::Call(t) if t != tramp => {
            // SAFETY: the site's own call leads there, with this key's
            // `extern "C" fn(u64) -> u64` signature.
            let f: extern "C" fn(u64) -> u64 = unsafe { std::mem::transmute(t) };
            assert_eq!(f(41), 42, "site {site:#x} calls {t:#x}, which is not add1");
        }
        other => panic!("site {site:#x}: {other:?}, not a direct call of add1"),
    }
}

/// The site inside `f` among `sites` (each function holds exactly one).
fn site_in(sites: &[usize], f: usize) -> usize {
    *sites.iter().filter(|&&s| s >= f).min().unwrap()
}

/// What a site of a key with trampoline `tramp` must hold once the key
/// targets `target` (0 for NULL): the call of the target where it is in
/// reach, else the trampoline's, and nothing for NULL.
fn expected(site: usize, tramp: usize, target: usize) -> Site {
    if target == 0 {
        return Site::Nop;
    }
    let reach: u64 = if cfg!(target_arch = "x86_64") {
        (1 << 31) - 16
    } else {
        (1 << 27) - 4
    };
    if (target as u64).abs_diff(site as u64) < reach {
        Site::Call(target)
    } else {
        Site::Call(tramp)
    }
}

fn sites_of(key: &static_call::StaticCall<extern "C" fn(u64) -> u64>) -> Vec<usize> {
    let mut v = Vec::new();
    key.each_inline_site(|s| v.push(s));
    v
}

/// Counts what an update asks of the writer, passing everything on to the
/// platform's writer.
struct Counting {
    syncs: AtomicUsize,
    writes: AtomicUsize,
    batches: AtomicUsize,
    patches: AtomicUsize,
}

impl Counting {
    const fn new() -> Self {
        Counting {
            syncs: AtomicUsize::new(0),
            writes: AtomicUsize::new(0),
            batches: AtomicUsize::new(0),
            patches: AtomicUsize::new(0),
        }
    }

    fn take(&self) -> [usize; 4] {
        [&self.syncs, &self.writes, &self.batches, &self.patches]
            .map(|c| c.swap(0, Ordering::SeqCst))
    }
}

// SAFETY: every write and sync is Remap's, unchanged.
unsafe impl TextWriter for Counting {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        // SAFETY: the caller's contract, passed on.
        unsafe { Remap.write(addr, bytes) }
    }

    unsafe fn write_batch(
        &self,
        patches: &mut dyn Iterator<Item = TextPatch>,
    ) -> Result<(), Error> {
        self.batches.fetch_add(1, Ordering::SeqCst);
        let mut counted = patches.inspect(|_| {
            self.patches.fetch_add(1, Ordering::SeqCst);
        });
        // SAFETY: the caller's contract, passed on.
        unsafe { Remap.write_batch(&mut counted) }
    }

    fn publishes_pages(&self) -> bool {
        Remap.publishes_pages()
    }

    fn sync_cores(&self) -> Result<(), Error> {
        self.syncs.fetch_add(1, Ordering::SeqCst);
        Remap.sync_cores()
    }
}

/// What every update made through [`writers`] asked of the writer.
static COUNTING: Counting = Counting::new();

/// The writers an update is made with on this architecture, all counted in
/// [`COUNTING`]: each x86-64 strategy, and arm64's one protocol. With each,
/// the most syncs an update may take whatever the number of sites.
fn writers() -> Vec<(&'static str, &'static dyn UpdateWriter, usize)> {
    #[cfg(target_arch = "x86_64")]
    {
        use static_call::arch::x86_64::{Strategy, WithStrategy};
        static INT3: WithStrategy<'static> = Strategy::Breakpoint.with(&COUNTING);
        static ONE_STORE: WithStrategy<'static> = Strategy::AtomicStore.with(&COUNTING);
        static PAGE_SWAP: WithStrategy<'static> = Strategy::PageSwap.with(&COUNTING);
        vec![
            ("int3", &INT3, 4),
            ("one-store", &ONE_STORE, 3),
            ("page-swap", &PAGE_SWAP, 1),
            // The default: the strategy follows from the writer.
            ("default", &COUNTING as &dyn UpdateWriter, 1),
        ]
    }
    #[cfg(target_arch = "aarch64")]
    {
        vec![("arm64", &COUNTING as &dyn UpdateWriter, 1)]
    }
}

fn far_target() -> usize {
    static FAR: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *FAR.get_or_init(|| {
        let f = far_add as extern "C" fn(u64) -> u64 as usize;
        #[cfg(target_arch = "x86_64")]
        let thunk = static_call::arch::x86_64::insn::encode_movabs_r11_jmp(f as u64).to_vec();
        #[cfg(target_arch = "aarch64")]
        let thunk = {
            use static_call::arch::aarch64::insn;
            let words = [
                insn::BTI_C,
                insn::encode_ldr_literal_x(16, 12).unwrap(),
                insn::BR_X16,
                insn::NOP,
            ];
            let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            bytes.extend_from_slice(&(f as u64).to_le_bytes());
            bytes
        };
        common::map_far_code(WIDE.trampoline_addr(), &[thunk])[0]
    })
}

/// What `f` gives for `x` for each of the targets tests use; `None` for
/// RET0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    Add1,
    Add2,
    Add3,
    Ret0,
    Far,
}

impl Target {
    fn value(self, x: u64) -> u64 {
        match self {
            Target::Add1 => x + 1,
            Target::Add2 => x + 2,
            Target::Add3 => x + 3,
            Target::Ret0 => 0,
            Target::Far => x + FAR_ADD,
        }
    }

    fn function(self) -> Option<extern "C" fn(u64) -> u64> {
        match self {
            Target::Add1 => Some(add1),
            Target::Add2 => Some(add2),
            Target::Add3 => Some(add3),
            Target::Ret0 => None,
            // SAFETY: the thunk forwards to `far_add`, of this type.
            Target::Far => Some(unsafe {
                std::mem::transmute::<usize, extern "C" fn(u64) -> u64>(far_target())
            }),
        }
    }

    fn update(
        self,
        key: &static_call::StaticCall<extern "C" fn(u64) -> u64>,
        w: &dyn UpdateWriter,
    ) -> Result<(), static_call::UpdateError> {
        match self.function() {
            Some(f) => key.update_with(f, w),
            None => key.update_ret0_with(w),
        }
    }

    /// The address a site calls for this target.
    fn addr(self, key: &static_call::StaticCall<extern "C" fn(u64) -> u64>) -> usize {
        match self.function() {
            Some(f) => f as usize,
            None => key.query().unwrap() as usize,
        }
    }
}

#[test]
fn every_call_of_an_extern_c_key_is_a_recorded_site() {
    assert_eq!(counted_one(1), 2);
    assert_eq!(counted_three(1), 2 ^ 12 ^ 22);
    hook_twice(0);
    assert_eq!(COUNTED.inline_sites(), 4);
    assert_eq!(HOOK.inline_sites(), 2);
    assert_eq!(WIDE.inline_sites(), 1000);
    assert_eq!(sites_of(&WIDE).len(), 1000);
    // Every site starts as the defining crate assembled it, a direct call
    // of the initial target, until an update of the key (other tests here
    // update it, in any order) rewrites all of them to call its current
    // target.
    let _serial = serial();
    let tramp = COUNTED.trampoline_addr();
    let current = COUNTED.query().map_or(0, |f| f as usize);
    let sites = sites_of(&COUNTED);
    if !sites
        .iter()
        .all(|&s| decode(s) == expected(s, tramp, current))
    {
        for &s in &sites {
            assert_calls_add1_directly(s, tramp);
        }
    }
}

/// Freed text: once a range is forgotten, no update touches the sites in
/// it (its bytes stay exactly as they were), the key reports one site
/// fewer, and the other site is still patched.
#[test]
fn forgotten_sites_are_never_written_again() {
    let _serial = serial();
    let sites = sites_of(&FREED);
    assert_eq!(sites.len(), 2);
    let tramp = FREED.trampoline_addr();
    // Which of the two sites is `freed_forgotten`'s: the first at or after
    // its entry (each function holds exactly one).
    let entry = freed_forgotten as fn(u64) -> u64 as usize;
    let gone = *sites.iter().filter(|&&s| s >= entry).min().unwrap();
    let kept = *sites.iter().find(|&&s| s != gone).unwrap();
    // SAFETY: `gone` is not updated from here on; its call keeps reaching
    // the trampoline, which this test keeps alive (it is static text).
    assert_eq!(unsafe { static_call::forget_call_sites(gone..gone + 1) }, 1);
    assert_eq!(FREED.inline_sites(), 1);
    // SAFETY: a site and what follows it: 8 readable bytes of text.
    let bytes = |s: usize| unsafe { (s as *const [u8; 8]).read_volatile() };
    let before = bytes(gone);
    for (f, add) in [(add2 as extern "C" fn(u64) -> u64, 2), (add3, 3)] {
        FREED.update_with(f, &Remap).unwrap();
        assert_eq!(bytes(gone), before, "a forgotten site was written");
        assert_calls_add1_directly(gone, tramp);
        assert_eq!(decode(kept), expected(kept, tramp, f as usize));
        // The forgotten site keeps the target it had when it was
        // forgotten: the initial one, which it calls directly.
        assert_eq!(freed_forgotten(1), 2 + 1);
        assert_eq!(freed_kept(1), 1 + add);
    }
    // Forgetting again finds nothing.
    // SAFETY: as above.
    assert_eq!(unsafe { static_call::forget_call_sites(gone..gone + 1) }, 0);
}

#[test]
fn a_key_with_1000_sites_takes_every_transition_with_a_bounded_number_of_syncs() {
    let _serial = serial();
    let sites = sites_of(&WIDE);
    assert_eq!(sites.len(), 1000);
    let tramp = WIDE.trampoline_addr();
    // As assembled (no update yet), every site calls the initial target.
    let check = |target: Target, label: &str| {
        for &s in &sites {
            match label {
                "as assembled" => assert_calls_add1_directly(s, tramp),
                _ => assert_eq!(
                    decode(s),
                    expected(s, tramp, target.addr(&WIDE)),
                    "{label}: site {s:#x}"
                ),
            }
        }
        for (i, f) in WIDE_FNS.iter().enumerate() {
            let x = 1000 + i as u64;
            assert_eq!(
                f(x),
                wide_sites::wide_result(i, target.value(x)),
                "{label}: wide_{i}"
            );
        }
    };
    // Another test in this file may have updated the key first (tests run
    // in any order); then each site calls its current target, or the
    // trampoline where an undo put that back.
    let current = WIDE.query().map_or(0, |f| f as usize);
    if current == add1 as extern "C" fn(u64) -> u64 as usize
        && sites.iter().all(|&s| decode(s) != Site::Call(tramp))
    {
        check(Target::Add1, "as assembled");
    } else {
        for &s in &sites {
            let site = decode(s);
            assert!(
                site == Site::Call(tramp) || site == expected(s, tramp, current),
                "after an earlier update: site {s:#x} is {site:?}"
            );
        }
    }
    for (name, writer, max_syncs) in writers() {
        let mut now = Target::Add1;
        for next in [
            Target::Add2,
            Target::Ret0,
            Target::Far,
            Target::Add3,
            Target::Add1,
        ] {
            COUNTING.take();
            let start = Instant::now();
            next.update(&WIDE, writer).unwrap();
            let took = start.elapsed();
            let [syncs, writes, batches, patches] = COUNTING.take();
            let label = format!("{name}: {now:?} -> {next:?}");
            check(next, &label);
            assert!(
                (1..=max_syncs).contains(&syncs),
                "{label}: {syncs} syncs, at most {max_syncs} whatever the number of sites"
            );
            eprintln!(
                "1000 sites, {label}: {syncs} syncs, {batches} site batches of {patches} \
                 stores, {writes} other writes, {} us",
                took.as_micros()
            );
            now = next;
        }
    }
}

/// A key's sites before its first update: the defining crate's call the
/// initial target directly, a declaration's call the trampoline; the first
/// update (with each writer) recognises both and takes both to the new
/// target, and later updates keep them there.
#[test]
fn sites_call_the_initial_target_directly_until_the_first_update() {
    let _serial = serial();
    type F = extern "C" fn(u64) -> u64;
    let keys: [(&static_call::StaticCall<F>, F, F); 4] = [
        (&MIXED_1, mixed_1_defined, declaring::mixed_1),
        (&MIXED_2, mixed_2_defined, declaring::mixed_2),
        (&MIXED_3, mixed_3_defined, declaring::mixed_3),
        (&MIXED_4, mixed_4_defined, declaring::mixed_4),
    ];
    let all = writers();
    for (i, (key, defined, declared)) in keys.into_iter().enumerate() {
        let (name, writer, _) = all[i % all.len()];
        let sites = sites_of(key);
        assert_eq!(sites.len(), 2, "{name}");
        let tramp = key.trampoline_addr();
        let (at_defined, at_declared) = (
            site_in(&sites, defined as usize),
            site_in(&sites, declared as usize),
        );
        assert_ne!(at_defined, at_declared);
        assert_calls_add1_directly(at_defined, tramp);
        assert_eq!(decode(at_declared), Site::Call(tramp), "{name}");
        assert_eq!((defined(1), declared(1)), (2, 2), "{name}");
        for (f, add) in [(add2 as F, 2), (add3, 3), (add1, 1)] {
            key.update_with(f, writer).unwrap();
            for s in [at_defined, at_declared] {
                assert_eq!(decode(s), expected(s, tramp, f as usize), "{name}");
            }
            assert_eq!((defined(1), declared(1)), (1 + add, 1 + add), "{name}");
        }
    }

    // NULL from the start: the no-op, until an update gives it a target.
    let mut sites = Vec::new();
    NULL_FROM_START.each_inline_site(|s| sites.push(s));
    assert_eq!(sites.len(), 1);
    assert_eq!(decode(sites[0]), Site::Nop);
    NOTED.store(0, Ordering::SeqCst);
    null_from_start(5);
    assert_eq!(NOTED.load(Ordering::SeqCst), 0);
    let (_, writer, _) = all[0];
    NULL_FROM_START.update_with(note, writer).unwrap();
    assert_eq!(
        decode(sites[0]),
        Site::Call(note as extern "C" fn(u64) as usize)
    );
    null_from_start(5);
    assert_eq!(NOTED.load(Ordering::SeqCst), 5);
    NULL_FROM_START.update_null_with(writer).unwrap();
    assert_eq!(decode(sites[0]), Site::Nop);

    // RET0 from the start: a direct call of the key's return-zero
    // function (one exported symbol, so exactly the address `query`
    // reports).
    let sites = sites_of(&RET0_FROM_START);
    assert_eq!(sites.len(), 1);
    let ret0 = RET0_FROM_START.query().unwrap() as usize;
    assert_ne!(ret0, RET0_FROM_START.trampoline_addr());
    assert_eq!(decode(sites[0]), Site::Call(ret0));
    assert_eq!(ret0_from_start(5), 0);
    RET0_FROM_START.update_with(add3, writer).unwrap();
    assert_eq!(decode(sites[0]), Site::Call(add3 as F as usize));
    assert_eq!(ret0_from_start(5), 8);
}

#[test]
fn a_null_key_leaves_no_call_at_its_sites() {
    let _serial = serial();
    let mut sites = Vec::new();
    HOOK.each_inline_site(|s| sites.push(s));
    assert_eq!(sites.len(), 2);
    for (name, writer, _) in writers() {
        NOTED.store(0, Ordering::SeqCst);
        HOOK.update_null_with(writer).unwrap();
        for &s in &sites {
            assert_eq!(decode(s), Site::Nop, "{name}");
        }
        hook_twice(5);
        assert_eq!(
            NOTED.load(Ordering::SeqCst),
            0,
            "{name}: a NULL site calls nothing"
        );
        HOOK.update_with(note, writer).unwrap();
        for &s in &sites {
            assert_eq!(
                decode(s),
                Site::Call(note as extern "C" fn(u64) as usize),
                "{name}"
            );
        }
        hook_twice(5);
        assert_eq!(NOTED.load(Ordering::SeqCst), 10, "{name}");
    }
}

/// Passes everything to Remap, except that the first batch of site stores
/// fails after storing half of its patches (each whole): a writer that
/// stops in the middle of an update.
struct FailsMidBatch {
    failed: AtomicBool,
    /// A sync came after the failed batch.
    synced_after: AtomicBool,
    /// Something was stored after the failed batch before any sync.
    stored_unsynced: AtomicBool,
}

impl FailsMidBatch {
    fn new() -> Self {
        FailsMidBatch {
            failed: AtomicBool::new(false),
            synced_after: AtomicBool::new(false),
            stored_unsynced: AtomicBool::new(false),
        }
    }

    fn note_store(&self) {
        if self.failed.load(Ordering::SeqCst) && !self.synced_after.load(Ordering::SeqCst) {
            self.stored_unsynced.store(true, Ordering::SeqCst);
        }
    }
}

// SAFETY: every store it makes is Remap's; a failed batch stored whole
// patches only, as the trait allows.
unsafe impl TextWriter for FailsMidBatch {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        self.note_store();
        // SAFETY: the caller's contract, passed on.
        unsafe { Remap.write(addr, bytes) }
    }

    unsafe fn write_batch(
        &self,
        patches: &mut dyn Iterator<Item = TextPatch>,
    ) -> Result<(), Error> {
        if self.failed.load(Ordering::SeqCst) {
            self.note_store();
            // SAFETY: the caller's contract, passed on.
            return unsafe { Remap.write_batch(patches) };
        }
        self.failed.store(true, Ordering::SeqCst);
        let all: Vec<TextPatch> = patches.collect();
        let mut half = all[..all.len() / 2].iter().copied();
        // SAFETY: the caller's contract, for the first half.
        unsafe { Remap.write_batch(&mut half) }?;
        Err(Error::WriterFailed {
            what: "finish the batch (test)",
            errno: 0,
        })
    }

    fn sync_cores(&self) -> Result<(), Error> {
        if self.failed.load(Ordering::SeqCst) {
            self.synced_after.store(true, Ordering::SeqCst);
        }
        Remap.sync_cores()
    }

    fn publishes_pages(&self) -> bool {
        Remap.publishes_pages()
    }
}

#[test]
fn an_update_that_fails_midway_leaves_every_site_calling_the_old_target() {
    let _serial = serial();
    #[cfg(target_arch = "x86_64")]
    let strategies = [
        Some(static_call::arch::x86_64::Strategy::Breakpoint),
        Some(static_call::arch::x86_64::Strategy::AtomicStore),
        Some(static_call::arch::x86_64::Strategy::PageSwap),
    ];
    #[cfg(target_arch = "aarch64")]
    let strategies: [Option<()>; 1] = [None];
    let sites = sites_of(&WIDE);
    let tramp = WIDE.trampoline_addr();
    for strategy in strategies {
        WIDE.update_with(add2, &Remap).unwrap();
        let failing = FailsMidBatch::new();
        #[cfg(target_arch = "x86_64")]
        let with = strategy.map(|s| s.with(&failing));
        #[cfg(target_arch = "x86_64")]
        let writer: &dyn UpdateWriter = with.as_ref().unwrap();
        #[cfg(target_arch = "aarch64")]
        let writer: &dyn UpdateWriter = {
            let _ = strategy;
            &failing
        };
        let e = WIDE.update_with(add3, writer).unwrap_err();
        assert_eq!(
            e.error,
            Error::WriterFailed {
                what: "finish the batch (test)",
                errno: 0
            },
            "{strategy:?}"
        );
        assert!(
            failing.failed.load(Ordering::SeqCst),
            "the sites were written"
        );
        // Under the int3 protocol, half the sites hold an `int3` no CPU was
        // made to see: every CPU must be synced before any tail is put
        // back, or one could pair a stale first byte with a new tail.
        #[cfg(target_arch = "x86_64")]
        if strategy == Some(static_call::arch::x86_64::Strategy::Breakpoint) {
            assert!(
                !failing.stored_unsynced.load(Ordering::SeqCst),
                "the undo stored before syncing the int3s"
            );
        }
        assert_eq!(
            WIDE.query().map(|f| f as usize),
            Some(Target::Add2.addr(&WIDE))
        );
        for &s in &sites {
            // Its old call, or the trampoline's (which calls the old target).
            let d = decode(s);
            assert!(
                d == expected(s, tramp, Target::Add2.addr(&WIDE)) || d == Site::Call(tramp),
                "{strategy:?}: site {s:#x} holds {d:x?}"
            );
        }
        for (i, f) in WIDE_FNS.iter().enumerate() {
            assert_eq!(
                f(i as u64),
                wide_sites::wide_result(i, i as u64 + 2),
                "{strategy:?}"
            );
        }
        // The next update finds every site in a state it accepts.
        WIDE.update_with(add1, &Remap).unwrap();
        for &s in &sites {
            assert_eq!(decode(s), expected(s, tramp, Target::Add1.addr(&WIDE)));
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        // A target that is no instruction address is refused up front.
        let before: Vec<_> = sites.iter().map(|&s| decode(s)).collect();
        // SAFETY: never called: the update is refused.
        let bad = unsafe {
            std::mem::transmute::<usize, extern "C" fn(u64) -> u64>(
                (add3 as extern "C" fn(u64) -> u64 as usize) + 2,
            )
        };
        assert_eq!(
            WIDE.update_with(bad, &Remap).unwrap_err().error,
            Error::MisalignedTarget {
                target: (add3 as extern "C" fn(u64) -> u64 as usize) + 2
            }
        );
        assert_eq!(before, sites.iter().map(|&s| decode(s)).collect::<Vec<_>>());
    }
}

/// Values a call made between the starts of updates `g0` and `g1` may
/// return: the target of any update from the one before `g0` to `g1`.
fn allowed(seq: &[Target], g0: usize, g1: usize, x: u64) -> Vec<u64> {
    (g0.saturating_sub(1)..=g1)
        .map(|g| seq[g % seq.len()].value(x))
        .collect()
}

#[inline(never)]
fn raced_sites(x: u64) -> [u64; 4] {
    [
        RACED.call_inline(x),
        RACED.call_inline(x + 1),
        RACED.call_inline(x + 2),
        RACED.call_inline(x + 3),
    ]
}

#[test]
fn calls_racing_updates_reach_the_old_or_the_new_target_at_every_site() {
    let _serial = serial();
    // Update g is in progress while GEN == g, and done once GEN > g.
    static GEN: AtomicUsize = AtomicUsize::new(0);
    static STOP: AtomicBool = AtomicBool::new(false);
    let seq = [Target::Add1, Target::Add2, Target::Ret0, Target::Add3];
    RACED.update_with(add1, &Remap).unwrap();
    GEN.store(0, Ordering::SeqCst);
    STOP.store(false, Ordering::SeqCst);
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 4);
    let callers: Vec<_> = (0..threads)
        .map(|t| {
            std::thread::spawn(move || {
                let (mut calls, mut x) = (0u64, t as u64 * 1_000_000);
                while !STOP.load(Ordering::SeqCst) {
                    let g0 = GEN.load(Ordering::SeqCst);
                    let got = raced_sites(x);
                    let g1 = GEN.load(Ordering::SeqCst);
                    for (i, v) in got.iter().enumerate() {
                        let arg = x + i as u64;
                        let ok = allowed(&seq, g0, g1, arg);
                        assert!(
                            ok.contains(v),
                            "site {i}: {v} for {arg}, updates {g0}..={g1}"
                        );
                    }
                    calls += 4;
                    x += 4;
                }
                calls
            })
        })
        .collect();
    let mut updates = 0;
    let deadline = Instant::now() + Duration::from_secs(4);
    for (_, writer, _) in writers() {
        let until = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < until && Instant::now() < deadline {
            let g = GEN.load(Ordering::SeqCst) + 1;
            GEN.store(g, Ordering::SeqCst);
            seq[g % seq.len()].update(&RACED, writer).unwrap();
            updates += 1;
        }
    }
    // Leave the key where GEN says it is, then stop.
    STOP.store(true, Ordering::SeqCst);
    let calls: u64 = callers.into_iter().map(|c| c.join().unwrap()).sum();
    eprintln!("{threads} threads, {calls} calls through 4 inline sites, {updates} updates");
    assert!(
        updates >= 10 && calls >= 1000,
        "{updates} updates, {calls} calls"
    );
    RACED.update_with(add1, &Remap).unwrap();
}

/// x86-64's batched int3 protocol, one intermediate state at a time: after
/// each phase (synced), a call through every site runs what the sites hold
/// then (int3: trapped and steered, the call emulated), and must reach the
/// old or the new target.
#[cfg(target_arch = "x86_64")]
mod int3 {
    use super::*;
    use static_call::arch::x86_64::Strategy;
    use static_call::arch::x86_64::{__test_hooks as hooks, traps_steered};

    /// What a call made in a phase saw: (phase, results, the first site's bytes).
    type Seen = (usize, [u64; 3], [u8; 8]);
    static SEEN: Mutex<Vec<Seen>> = Mutex::new(Vec::new());

    /// `COUNTED`'s first site, read before the update: the hook runs with
    /// the patch lock held, so it cannot ask the table itself.
    static FIRST_SITE: AtomicUsize = AtomicUsize::new(0);

    fn call_every_site(phase: usize) {
        let first = FIRST_SITE.load(Ordering::SeqCst);
        // SAFETY: a site: 8 readable bytes of text.
        let bytes = unsafe { (first as *const [u8; 8]).read_volatile() };
        let got = [counted_one(1), counted_three(1), counted_three(2)];
        SEEN.lock().unwrap().push((phase, got, bytes));
    }

    #[test]
    fn every_intermediate_state_of_the_batched_protocol_calls_old_or_new() {
        let _serial = serial();
        COUNTED.update_with(add1, &Remap).unwrap();
        FIRST_SITE.store(sites_of(&COUNTED)[0], Ordering::SeqCst);
        for (from, to) in [
            (Target::Add1, Target::Add2),
            (Target::Add2, Target::Ret0),
            (Target::Ret0, Target::Add1),
        ] {
            SEEN.lock().unwrap().clear();
            let steered = traps_steered();
            // SAFETY: the hook does not unwind: it runs outside signal context
            // and only calls keys and touches statics.
            unsafe { hooks::set_after_site_phase(Some(call_every_site)) };
            let done = to.update(&COUNTED, &Strategy::Breakpoint.with(&Remap));
            // SAFETY: removing a hook.
            unsafe { hooks::set_after_site_phase(None) };
            done.unwrap();
            let seen = SEEN.lock().unwrap().clone();
            assert_eq!(
                seen.iter().map(|s| s.0).collect::<Vec<_>>(),
                [1, 2, 3],
                "{from:?} -> {to:?}: one call per phase"
            );
            let value = |t: Target, x: u64| t.value(x);
            for (phase, got, bytes) in &seen {
                let ok =
                    |which: &dyn Fn(Target) -> u64| got[0] == which(from) || got[0] == which(to);
                assert!(ok(&|t| value(t, 1)), "phase {phase}: {got:?}");
                for (g, want) in [(got[1], [1u64, 11, 21]), (got[2], [2, 12, 22])] {
                    // Each of the three sites reaches the old or the new
                    // target; the xor of their results is one of the 8
                    // mixes.
                    let mixes: Vec<u64> = (0..8)
                        .map(|m| {
                            (0..3)
                                .map(|i| {
                                    if m & (1 << i) != 0 {
                                        to.value(want[i])
                                    } else {
                                        from.value(want[i])
                                    }
                                })
                                .fold(0, |a, v| a ^ v)
                        })
                        .collect();
                    assert!(mixes.contains(&g), "phase {phase}: {g} from {bytes:02x?}");
                }
                if *phase < 3 {
                    assert_eq!(bytes[0], 0xcc, "phase {phase}: the site is armed");
                }
            }
            assert!(
                traps_steered() >= steered + 2 * 4,
                "the calls in phases 1 and 2 trapped at all four sites and were steered"
            );
        }
    }

    // A call parked in the trap handler at a site while updates go on
    // (seed 000 for sites): it continues at a target valid for the key.
    static ARMED: AtomicBool = AtomicBool::new(false);
    static IN_HANDLER: AtomicBool = AtomicBool::new(false);
    static RELEASE: AtomicBool = AtomicBool::new(false);
    static DEST: AtomicUsize = AtomicUsize::new(0);

    fn wait_for(flag: &AtomicBool) {
        let start = Instant::now();
        while !flag.load(Ordering::SeqCst) {
            // SAFETY: sched_yield has no preconditions.
            unsafe { libc::sched_yield() };
            if start.elapsed() > Duration::from_secs(20) {
                // SAFETY: abort is async-signal-safe; a hang must not pass.
                unsafe { libc::abort() };
            }
        }
    }

    fn park(point: hooks::TrapPoint, tramp: usize, dest: usize) {
        if tramp == PARKED.trampoline_addr()
            && point == hooks::TrapPoint::Steering
            && !IN_HANDLER.load(Ordering::SeqCst)
        {
            DEST.store(dest, Ordering::SeqCst);
            IN_HANDLER.store(true, Ordering::SeqCst);
            wait_for(&RELEASE);
        }
    }

    fn hold_until_parked(phase: usize) {
        if phase == 1 && !ARMED.swap(true, Ordering::SeqCst) {
            wait_for(&IN_HANDLER);
        }
    }

    #[inline(never)]
    fn parked_site(x: u64) -> u64 {
        PARKED.call_inline(x)
    }

    #[test]
    fn a_call_parked_in_the_handler_at_a_site_reaches_a_target_of_its_key() {
        let _serial = serial();
        let bp = Strategy::Breakpoint.with(&Remap);
        PARKED.update_with(add1, &bp).unwrap();
        COUNTED.update_with(add1, &bp).unwrap();
        for f in [&ARMED, &IN_HANDLER, &RELEASE] {
            f.store(false, Ordering::SeqCst);
        }
        // SAFETY: the hook does not unwind, and is
        // async-signal-safe (atomics and spinning only).
        unsafe { hooks::set_on_trap(Some(park)) };
        // SAFETY: the hook does not unwind: it runs outside signal context
        // and only calls keys and touches statics.
        unsafe { hooks::set_after_site_phase(Some(hold_until_parked)) };
        let first = std::thread::spawn(|| {
            PARKED
                .update_with(add2, &Strategy::Breakpoint.with(&Remap))
                .unwrap()
        });
        let caller = std::thread::spawn(|| {
            wait_for(&ARMED);
            parked_site(100)
        });
        wait_for(&IN_HANDLER);
        first.join().unwrap();
        // SAFETY: removing a hook.
        unsafe { hooks::set_after_site_phase(None) };
        // More updates of this key and another while the call is parked.
        PARKED.update_with(add3, &bp).unwrap();
        COUNTED.update_with(add2, &bp).unwrap();
        PARKED
            .update_ret0_with(&Strategy::AtomicStore.with(&Remap))
            .unwrap();
        PARKED.update_with(add3, &bp).unwrap();
        RELEASE.store(true, Ordering::SeqCst);
        let got = caller.join().expect("the parked call faulted");
        // SAFETY: removing a hook.
        unsafe { hooks::set_on_trap(None) };
        assert_eq!(
            DEST.load(Ordering::SeqCst),
            add2 as extern "C" fn(u64) -> u64 as usize
        );
        assert_eq!(
            got, 102,
            "the target it trapped into, returning to its own site"
        );
        assert_eq!(parked_site(100), 103);
        COUNTED.update_with(add1, &bp).unwrap();
    }

    #[test]
    fn the_kernel_hook_emulates_a_site_call_on_the_interrupted_stack() {
        use static_call::arch::x86_64::{BreakpointFrame, handle_breakpoint};
        let _serial = serial();
        let bp = Strategy::Breakpoint.with(&Remap);
        PARKED.update_with(add2, &bp).unwrap();
        let site = {
            let mut v = Vec::new();
            PARKED.each_inline_site(|s| v.push(s));
            v[0]
        };
        let mut stack = [0u64; 4];
        let top = stack.as_mut_ptr() as u64 + 32;
        let mut frame = BreakpointFrame {
            rip: site as u64 + 1,
            rsp: top,
        };
        // SAFETY: `frame.rsp` is the top of `stack`, whose last word is free
        // for the emulated call's return address.
        assert!(unsafe { handle_breakpoint(&mut frame) });
        assert_eq!(
            frame.rip as usize, add2 as extern "C" fn(u64) -> u64 as usize,
            "the key's literal"
        );
        assert_eq!(frame.rsp, top - 8);
        assert_eq!(
            stack[3],
            site as u64 + 8,
            "the return address: after the site"
        );
        // One byte further is no site.
        let mut frame = BreakpointFrame {
            rip: site as u64 + 2,
            rsp: top,
        };
        // SAFETY: as above; no site there, so nothing is written.
        assert!(!unsafe { handle_breakpoint(&mut frame) });
        assert_eq!(
            frame,
            BreakpointFrame {
                rip: site as u64 + 2,
                rsp: top
            }
        );
    }
}

/// The line of `/proc/self/maps` that holds `addr`.
fn maps_line(addr: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .find(|l| {
            let range = l.split(' ').next().unwrap();
            let (a, b) = range.split_once('-').unwrap();
            let (a, b) = (
                usize::from_str_radix(a, 16).unwrap(),
                usize::from_str_radix(b, 16).unwrap(),
            );
            (a..b).contains(&addr)
        })
        .unwrap_or_else(|| panic!("no mapping holds {addr:#x}"))
        .to_string()
}

/// Issue 19: after updates with the default writer, every page an update
/// wrote (the trampoline's and those of all 1000 sites) still maps the
/// program's file at its offset, so profilers symbolise it and uprobes
/// find it; and the code still runs as updated.
#[test]
fn patched_pages_keep_mapping_their_file() {
    use static_call::writer::linux::{Backing, last_backing};
    let _serial = serial();
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let exe = exe.to_str().unwrap();
    let page = |a: usize| a & !4095;
    let mut pages: Vec<usize> = sites_of(&WIDE).into_iter().map(page).collect();
    pages.push(page(WIDE.trampoline_addr()));
    pages.sort_unstable();
    pages.dedup();
    let before: Vec<String> = pages.iter().map(|&p| maps_line(p)).collect();
    for (f, add) in [(add2 as extern "C" fn(u64) -> u64, 2), (add1, 1)] {
        WIDE.update_with(f, &Remap).unwrap();
        assert_eq!(last_backing(), Backing::File);
        for (&p, was) in pages.iter().zip(&before) {
            let now = maps_line(p);
            assert!(
                now.ends_with(exe),
                "page {p:#x} lost its file:\n before: {was}\n after:  {now}"
            );
            // The same offset into the file as before the update.
            let offset = |l: &str, start: usize| {
                let mut f = l.split_whitespace();
                let range = f.next().unwrap();
                let off = u64::from_str_radix(f.nth(1).unwrap(), 16).unwrap();
                let first = usize::from_str_radix(range.split('-').next().unwrap(), 16).unwrap();
                off + (start - first) as u64
            };
            assert_eq!(offset(&now, p), offset(was, p), "{was}\n{now}");
        }
        for (i, g) in WIDE_FNS.iter().enumerate() {
            assert_eq!(g(1), wide_sites::wide_result(i, 1 + add));
        }
    }
    eprintln!(
        "maps of the first patched page, before: {}\n                              after:  {}",
        before[0],
        maps_line(pages[0])
    );
}
