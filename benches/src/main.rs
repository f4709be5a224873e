//! The cost of one call through each way of reaching a trivial function,
//! and of one update, measured side by side in one process.
//!
//! Run by `cargo xtask bench`, which builds this crate the way users build
//! (default flags, then `-Zretpoline`), checks by disassembly that every
//! measured loop makes the call it claims, and writes the results. Each
//! line of output this program prints that starts with `result` is one
//! measurement: `result <group> <row> <value> <unit>`.
//!
//! Timing: every row's loop runs `CALLS` calls per sample; rounds visit the
//! rows in a rotating order so drift in the machine hits all rows alike;
//! each row's figure is its median over the rounds, and ratios divide
//! medians taken in the same run.

#[cfg(not(target_arch = "x86_64"))]
compile_error!("the host benchmark measures x86-64; arm64 is measured on the virt board");

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use static_call::arch::x86_64::Strategy;
use static_call::writer::TextWriter;
use static_call::writer::linux::{Mprotect, Remap};
use static_keys::{define_static_key_false, static_branch_unlikely};

/// Calls per sample.
const CALLS: u64 = 1 << 16;
/// Samples per row (rounds).
const ROUNDS: usize = 101;
/// Updates timed per strategy and writer.
const UPDATES: usize = 201;
/// Updates of the 1000-site key timed per strategy and writer.
const UPDATES_1000: usize = 51;

// The callees: trivial, never inlined, one per ABI.
#[inline(never)]
fn add_one(x: u64) -> u64 {
    x.wrapping_add(1)
}
#[inline(never)]
fn add_two(x: u64) -> u64 {
    x.wrapping_add(2)
}
#[inline(never)]
extern "C" fn add_one_c(x: u64) -> u64 {
    x.wrapping_add(1)
}
#[inline(never)]
extern "C" fn add_two_c(x: u64) -> u64 {
    x.wrapping_add(2)
}

static_call::static_call! {
    static RUST_KEY: fn(u64) -> u64 = add_one;
    /// Called only at its inline site in `loop_inline`.
    static C_KEY: extern "C" fn(u64) -> u64 = add_one_c;
    /// Called only at its inline site in `loop_inline_never_updated`, and
    /// never updated: the site calls the initial target as linked.
    static NEVER_UPDATED: extern "C" fn(u64) -> u64 = add_one_c;
    /// Never called inline: `loop_trampoline` calls its trampoline.
    static TRAMP_KEY: extern "C" fn(u64) -> u64 = add_one_c;
    /// Updated by the one-site update benchmark (its one inline site is
    /// the check in `update_cost`).
    static UPDATED: extern "C" fn(u64) -> u64 = add_one_c;
    /// Called from 1000 inline sites (`wide_*`).
    static WIDE: extern "C" fn(u64) -> u64 = add_one_c;
}

#[macro_use]
#[path = "../../tests/common/wide_sites.rs"]
mod wide_sites;

wide_fns!(WIDE, WIDE_FNS: wide_0 0 wide_1 1 wide_2 2 wide_3 3 wide_4 4 wide_5 5 wide_6 6 wide_7 7 wide_8 8 wide_9 9);

define_static_key_false!(USE_TWO);

trait Op {
    fn op(&self, x: u64) -> u64;
}
struct One;
impl Op for One {
    #[inline(never)]
    fn op(&self, x: u64) -> u64 {
        x.wrapping_add(1)
    }
}

// A retpoline thunk in the style of Linux's `__x86_indirect_thunk_rax`
// (the target is in %rax), and hand-written trampolines: a bare `jmp.d32`
// to the callee, which is what a static call's trampoline is at best, the
// same followed by the trampoline's `ud1`, and the same placed in the
// trampolines' section.
std::arch::global_asm!(
    ".text",
    ".balign 16",
    ".globl bench_retpoline_rax",
    "bench_retpoline_rax:",
    "    call 2f",
    "1:  pause",
    "    lfence",
    "    jmp 1b",
    "2:  mov [rsp], rax",
    "    ret",
    ".balign 16",
    ".globl bench_bare_jmp",
    "bench_bare_jmp:",
    "    jmp {callee}",
    ".balign 16",
    ".globl bench_jmp_ud1",
    "bench_jmp_ud1:",
    "    jmp {callee}",
    "    ud1 esp, ecx",
    // The same bare jump placed among the trampolines, to tell the cost
    // of the trampoline's shape from the cost of where the linker puts it.
    ".pushsection .static_call.text, \"ax\"",
    ".balign 16",
    ".globl bench_jmp_in_section",
    "bench_jmp_in_section:",
    "    jmp {callee}",
    ".popsection",
    callee = sym add_one_c,
);

unsafe extern "C" {
    /// `TRAMP_KEY`'s trampoline, called by name as a kernel's indirect-free
    /// callers of a Rust-ABI key reach it.
    #[link_name = "__SCT__TRAMP_KEY"]
    safe fn tramp_key_entry(x: u64) -> u64;
    fn bench_retpoline_rax();
    fn bench_bare_jmp();
    fn bench_jmp_ud1();
    fn bench_jmp_in_section();
}

/// The loops' opaque starting value, returned in a register: a local
/// whose address went to `black_box` would have to be kept in memory
/// around every `asm!` block (which may read memory) but not around a
/// call the compiler has proved reads none, which would bias the rows.
#[inline(never)]
fn start() -> u64 {
    black_box(0)
}

// The measured loops, one per row: `CALLS` dependent calls each (every
// call takes the previous result), never inlined so each is one function
// the harness can disassemble.

#[inline(never)]
fn loop_direct(n: u64) -> u64 {
    let mut acc = start();
    for _ in 0..n {
        acc = add_one(acc);
    }
    acc
}

#[inline(never)]
fn loop_rust_key(n: u64) -> u64 {
    let mut acc = start();
    for _ in 0..n {
        acc = RUST_KEY.call(acc);
    }
    acc
}

#[inline(never)]
fn loop_inline(n: u64) -> u64 {
    let mut acc = start();
    for _ in 0..n {
        acc = C_KEY.call(acc);
    }
    acc
}

#[inline(never)]
fn loop_inline_never_updated(n: u64) -> u64 {
    let mut acc = start();
    for _ in 0..n {
        acc = NEVER_UPDATED.call(acc);
    }
    acc
}

#[inline(never)]
fn loop_fn_pointer(n: u64, f: fn(u64) -> u64) -> u64 {
    let mut acc = start();
    for _ in 0..n {
        acc = f(acc);
    }
    acc
}

#[inline(never)]
fn loop_dyn_trait(n: u64, op: &dyn Op) -> u64 {
    let mut acc = start();
    for _ in 0..n {
        acc = op.op(acc);
    }
    acc
}

#[inline(never)]
fn loop_retpoline(n: u64) -> u64 {
    let mut acc: u64 = start();
    let target = black_box(add_one_c as extern "C" fn(u64) -> u64);
    for _ in 0..n {
        let out: u64;
        // SAFETY: the thunk jumps to `target` (in rax), an `extern "C"`
        // function of this signature, with the C ABI's registers.
        unsafe {
            std::arch::asm!(
                "call {thunk}",
                thunk = sym bench_retpoline_rax,
                in("rdi") acc,
                inout("rax") target => out,
                clobber_abi("C"),
            );
        }
        acc = out;
    }
    acc
}

/// A loop of direct calls of a stub that jumps to `add_one_c`: a
/// hand-written one, or a key's trampoline that targets it.
macro_rules! stub_loop {
    ($name:ident, $stub:ident) => {
        #[inline(never)]
        fn $name(n: u64) -> u64 {
            let mut acc: u64 = start();
            for _ in 0..n {
                let out: u64;
                // SAFETY: the stub only jumps to `add_one_c` (a key's
                // trampoline: `main` set it there), an `extern "C"`
                // function of this signature.
                unsafe {
                    std::arch::asm!(
                        "call {stub}",
                        stub = sym $stub,
                        in("rdi") acc,
                        out("rax") out,
                        clobber_abi("C"),
                    );
                }
                acc = out;
            }
            acc
        }
    };
}

stub_loop!(loop_trampoline, tramp_key_entry);
stub_loop!(loop_bare_jmp, bench_bare_jmp);
stub_loop!(loop_jmp_ud1, bench_jmp_ud1);
stub_loop!(loop_jmp_in_section, bench_jmp_in_section);

#[inline(never)]
fn loop_static_key(n: u64) -> u64 {
    let mut acc = start();
    for _ in 0..n {
        acc = if static_branch_unlikely!(USE_TWO) {
            add_two(acc)
        } else {
            add_one(acc)
        };
    }
    acc
}

/// One row: its name in `results.json` and its loop.
struct Row {
    name: &'static str,
    run: fn(u64) -> u64,
}

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "direct",
            run: loop_direct,
        },
        Row {
            name: "inline",
            run: loop_inline,
        },
        Row {
            name: "inline_never_updated",
            run: loop_inline_never_updated,
        },
        Row {
            name: "trampoline",
            run: loop_trampoline,
        },
        Row {
            name: "trampoline_rust_abi",
            run: loop_rust_key,
        },
        Row {
            name: "bare_call_jmp",
            run: loop_bare_jmp,
        },
        Row {
            name: "bare_call_jmp_ud1",
            run: loop_jmp_ud1,
        },
        Row {
            name: "bare_call_jmp_in_trampoline_section",
            run: loop_jmp_in_section,
        },
        Row {
            name: "fn_pointer",
            run: |n| loop_fn_pointer(n, black_box(add_one)),
        },
        Row {
            name: "dyn_trait",
            run: |n| loop_dyn_trait(n, black_box(&One)),
        },
        Row {
            name: "retpoline",
            run: loop_retpoline,
        },
        Row {
            name: "static_key_branch",
            run: loop_static_key,
        },
    ]
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Nanoseconds per call of every row, medians over interleaved rounds.
fn calls() -> Vec<(&'static str, f64)> {
    let rows = rows();
    // Every row computes the same thing: CALLS additions of one.
    for row in &rows {
        assert_eq!(
            (row.run)(1000),
            1000,
            "{} computes something else",
            row.name
        );
    }
    let mut samples = vec![Vec::with_capacity(ROUNDS); rows.len()];
    for round in 0..ROUNDS {
        for k in 0..rows.len() {
            let i = (round + k) % rows.len();
            let start = Instant::now();
            black_box((rows[i].run)(CALLS));
            samples[i].push(start.elapsed().as_nanos() as f64 / CALLS as f64);
        }
    }
    rows.iter()
        .zip(&mut samples)
        .map(|(row, s)| (row.name, median(s)))
        .collect()
}

/// Forwards to a writer (batches and whether it publishes whole pages
/// included, so the writer does what it does for a user) and counts its
/// syncs.
struct Counting<'a> {
    inner: &'a dyn TextWriter,
    syncs: AtomicUsize,
}

// SAFETY: forwards every write unchanged to a writer that keeps the
// contract.
unsafe impl TextWriter for Counting<'_> {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), static_call::Error> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.write(addr, bytes) }
    }
    unsafe fn write_batch(
        &self,
        patches: &mut dyn Iterator<Item = static_call::writer::TextPatch>,
    ) -> Result<(), static_call::Error> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.write_batch(patches) }
    }
    fn sync_cores(&self) -> Result<(), static_call::Error> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.inner.sync_cores()
    }
    fn publishes_pages(&self) -> bool {
        self.inner.publishes_pages()
    }
}

/// Median microseconds and syncs per update of `key`, for one strategy
/// (`None`: the default, which follows from the writer) and writer;
/// `check` says whether every call site now reaches `x + 2` (`two`) or
/// `x + 1`.
fn update_cost(
    key: &static_call::StaticCall<extern "C" fn(u64) -> u64>,
    updates: usize,
    check: fn(bool) -> bool,
    strategy: Option<Strategy>,
    writer: &dyn TextWriter,
) -> (f64, f64) {
    let counting = Counting {
        inner: writer,
        syncs: AtomicUsize::new(0),
    };
    let with = strategy.map(|s| s.with(&counting));
    let w: &dyn static_call::arch::UpdateWriter = match &with {
        Some(w) => w,
        None => &counting,
    };
    let mut times = Vec::with_capacity(updates);
    for i in 0..updates {
        let two = i % 2 == 0;
        let f: extern "C" fn(u64) -> u64 = if two { add_two_c } else { add_one_c };
        let start = Instant::now();
        key.update_with(f, w).expect("update");
        times.push(start.elapsed().as_secs_f64() * 1e6);
        assert!(check(two), "{}: a call site missed update {i}", key.name());
    }
    let syncs = counting.syncs.load(Ordering::Relaxed) as f64 / updates as f64;
    (median(&mut times), syncs)
}

/// What every one of `key`'s inline sites calls now, checked against
/// `want`; prints the shape for the report.
fn check_sites(
    row: &str,
    key: &static_call::StaticCall<extern "C" fn(u64) -> u64>,
    want: usize,
    when: &str,
) {
    use static_call::arch::x86_64::site;
    let mut sites = Vec::new();
    key.each_inline_site(|s| sites.push(s));
    assert!(!sites.is_empty(), "{}: no inline site", key.name());
    for &s in &sites {
        // SAFETY: a site of the table: 8 readable, aligned bytes of text.
        let word = unsafe { (s as *const [u8; 8]).read_volatile() };
        let to = site::decode(s as u64, &word);
        assert_eq!(
            to,
            Ok(Some(want as u64)),
            "{}: site {s:#x} holds {word:02x?}",
            key.name()
        );
    }
    println!(
        "shape {row} {} site(s), each `cs cs cs call {want:#x}` (the target itself) {when}",
        sites.len()
    );
}

fn main() {
    static_keys::global_init();
    // Keys as a kernel has them after boot: updated once (until its first
    // update a Rust-ABI key's trampoline leads through its init shim);
    // `NEVER_UPDATED` keeps its initial target, which its site calls as
    // linked.
    RUST_KEY.update(add_one).expect("update");
    C_KEY.update(add_one_c).expect("update");
    TRAMP_KEY.update(add_one_c).expect("update");
    let add_one_c_addr = add_one_c as extern "C" fn(u64) -> u64 as usize;
    check_sites("inline", &C_KEY, add_one_c_addr, "after the update");
    check_sites(
        "inline_never_updated",
        &NEVER_UPDATED,
        add_one_c_addr,
        "as linked, never updated",
    );
    let build = std::env::args().nth(1).unwrap_or_else(|| "default".into());
    let calls = calls();
    let direct = calls[0].1;
    for (name, ns) in &calls {
        println!("result calls_ns_{build} {name} {ns:.4} ns");
        println!("result ratio_{build} {name} {:.4} x", ns / direct);
    }
    // `calls`: only the call rows (the harness measures them in several
    // processes and the updates in one).
    let calls_only = std::env::args().nth(2).as_deref() == Some("calls");
    if build == "default" && !calls_only {
        let one_site = |two: bool| UPDATED.call(1) == if two { 3 } else { 2 };
        let wide = |two: bool| {
            let each = if two { 3 } else { 2 };
            WIDE_FNS
                .iter()
                .enumerate()
                .all(|(i, f)| f(1) == wide_sites::wide_result(i, each))
        };
        let mut wide_sites = 0;
        WIDE.each_inline_site(|_| wide_sites += 1);
        assert_eq!(wide_sites, 1000, "WIDE's inline sites");
        for (sname, strategy) in [
            ("atomic_store", Some(Strategy::AtomicStore)),
            ("breakpoint", Some(Strategy::Breakpoint)),
            ("page_swap", Some(Strategy::PageSwap)),
            ("default", None),
        ] {
            for (wname, writer) in [
                ("remap", &Remap as &dyn TextWriter),
                ("mprotect", &Mprotect),
            ] {
                if strategy == Some(Strategy::PageSwap) && !writer.publishes_pages() {
                    continue; // refused: Mprotect stores in place
                }
                let (us, syncs) = update_cost(&UPDATED, UPDATES, one_site, strategy, writer);
                println!("result update_us {sname}_{wname} {us:.2} us");
                println!("result update_syncs {sname}_{wname} {syncs:.2} syncs");
                let (us, syncs) = update_cost(&WIDE, UPDATES_1000, wide, strategy, writer);
                println!("result update_1000_us {sname}_{wname} {us:.2} us");
                println!("result update_1000_syncs {sname}_{wname} {syncs:.2} syncs");
            }
        }
    }
}
