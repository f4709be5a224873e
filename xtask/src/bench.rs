//! `cargo xtask bench`: the cost of a call and of an update, against the
//! alternatives, in the builds users make.
//!
//! Builds `benches/` (a crate depending on this one, as a user's would)
//! twice, with default flags and with `-Zretpoline` (loops aligned in both,
//! see [`BUILDS`]), checks by disassembly
//! that every measured loop makes the call its row claims, runs it, and
//! writes `target/bench/results.json`, `benches/BENCHMARKS.md` and the
//! chart `benches/chart.svg` the README shows.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

use crate::setup::{BARE, BARE_SOFTFLOAT};
use crate::{Result, cmd, qemu};

/// One way users build the host benchmark.
struct Build {
    /// Its name in the results (`default`, `hardened`).
    name: &'static str,
    /// What it is, for the report.
    what: &'static str,
    rustflags: &'static str,
}

/// Both builds align loops to 64 bytes (`-align-loops=64`, an LLVM
/// option that changes nothing but where loops start): every row's loop
/// then sits alike in the CPU's fetch windows, so a ratio measures the
/// call and not where the linker happened to put the loop.
const BUILDS: &[Build] = &[
    Build {
        name: "default",
        what: "x86_64-unknown-linux-gnu, release, default flags (PIE; loops aligned)",
        rustflags: "-Cllvm-args=-align-loops=64",
    },
    Build {
        name: "hardened",
        what: "the same with `-Zretpoline` (how Spectre-hardened kernels build; loops aligned)",
        rustflags: "-Zretpoline -Cunsafe-allow-abi-mismatch=retpoline -Cllvm-args=-align-loops=64",
    },
];

/// What a measured loop's call instruction must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// A direct `call` of the named symbol.
    Direct(&'static str),
    /// A direct `call` of one of the named symbols (one function the
    /// compiler may have merged with another).
    DirectOneOf(&'static [&'static str]),
    /// `call *…`: through a register or memory.
    Indirect,
    /// A call of a compiler retpoline thunk.
    Retpoline,
    /// Direct calls of both symbols (a static branch choosing between two).
    Branch(&'static str, &'static str),
}

/// One row: its key in `results.json`, its loop function in `benches/`, and
/// what its call is in each build.
struct Row {
    key: &'static str,
    label: &'static str,
    function: &'static str,
    default: Expect,
    hardened: Expect,
}

const ADD_ONE: &str = "static_call_bench::add_one>";
/// `add_one_c`, or `add_one` where the compiler merged the two identical
/// functions (it does in release builds): the same call either way.
const ADD_ONE_C: &[&str] = &["static_call_bench::add_one_c>", ADD_ONE];

const ROWS: &[Row] = &[
    Row {
        key: "direct",
        label: "direct call",
        function: "loop_direct",
        default: Expect::Direct(ADD_ONE),
        hardened: Expect::Direct(ADD_ONE),
    },
    // As linked, an inline site of the defining crate calls its key's
    // initial target; the benchmark checks at run time what it calls after
    // an update (its `shape inline` line) and for a key never updated
    // (`shape inline_never_updated`).
    Row {
        key: "inline",
        label: "static call, inline call site (extern \"C\" key), after an update",
        function: "loop_inline",
        default: Expect::DirectOneOf(ADD_ONE_C),
        hardened: Expect::DirectOneOf(ADD_ONE_C),
    },
    Row {
        key: "inline_never_updated",
        label: "static call, inline call site (extern \"C\" key), never updated",
        function: "loop_inline_never_updated",
        default: Expect::DirectOneOf(ADD_ONE_C),
        hardened: Expect::DirectOneOf(ADD_ONE_C),
    },
    Row {
        key: "trampoline",
        label: "static call through its trampoline (direct call + trampoline jmp)",
        function: "loop_trampoline",
        default: Expect::Direct("<__SCT__TRAMP_KEY>"),
        hardened: Expect::Direct("<__SCT__TRAMP_KEY>"),
    },
    Row {
        key: "trampoline_rust_abi",
        label: "static call, Rust-ABI key (call through the GOT + trampoline jmp)",
        function: "loop_rust_key",
        default: Expect::Indirect,
        hardened: Expect::Retpoline,
    },
    Row {
        key: "bare_call_jmp",
        label: "hand-written call + jmp.d32",
        function: "loop_bare_jmp",
        default: Expect::Direct("<bench_bare_jmp>"),
        hardened: Expect::Direct("<bench_bare_jmp>"),
    },
    Row {
        key: "bare_call_jmp_ud1",
        label: "hand-written call + jmp.d32 + ud1",
        function: "loop_jmp_ud1",
        default: Expect::Direct("<bench_jmp_ud1>"),
        hardened: Expect::Direct("<bench_jmp_ud1>"),
    },
    Row {
        key: "bare_call_jmp_in_trampoline_section",
        label: "hand-written call + jmp.d32, placed among the trampolines",
        function: "loop_jmp_in_section",
        default: Expect::Direct("<bench_jmp_in_section>"),
        hardened: Expect::Direct("<bench_jmp_in_section>"),
    },
    Row {
        key: "fn_pointer",
        label: "function pointer",
        function: "loop_fn_pointer",
        default: Expect::Indirect,
        hardened: Expect::Retpoline,
    },
    Row {
        key: "dyn_trait",
        label: "dyn Trait method",
        function: "loop_dyn_trait",
        default: Expect::Indirect,
        hardened: Expect::Retpoline,
    },
    Row {
        key: "retpoline",
        label: "retpoline thunk (hand-written, Linux style)",
        function: "loop_retpoline",
        default: Expect::Direct("<bench_retpoline_rax>"),
        hardened: Expect::Direct("<bench_retpoline_rax>"),
    },
    Row {
        key: "static_key_branch",
        label: "static-keys branch choosing between two direct calls",
        function: "loop_static_key",
        default: Expect::Branch(ADD_ONE, "static_call_bench::add_two>"),
        hardened: Expect::Branch(ADD_ONE, "static_call_bench::add_two>"),
    },
];

/// The operands of the `call` instructions of `function` in an
/// `objdump -d -C --no-show-raw-insn` listing.
fn calls_in(disassembly: &str, function: &str) -> Vec<String> {
    let header = format!("<static_call_bench::{function}>:");
    let mut lines = disassembly.lines().skip_while(|l| !l.ends_with(&header));
    lines.next();
    lines
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let mut insn = l.split('\t').nth(1)?.trim();
            // An inline site's call carries `cs` prefixes (8 bytes, aligned).
            while let Some(rest) = insn.strip_prefix("cs ") {
                insn = rest.trim_start();
            }
            let (mnemonic, operand) = insn.split_once(char::is_whitespace)?;
            let operand = operand.trim();
            // Every loop first calls `start` for its opaque starting value.
            let measured = !operand.ends_with("<static_call_bench::start>");
            (matches!(mnemonic, "call" | "callq") && measured).then(|| operand.to_string())
        })
        .collect()
}

/// Whether the calls found make the call a row claims.
fn matches(expect: Expect, calls: &[String]) -> bool {
    let direct_to = |sym: &str, c: &String| !c.starts_with('*') && c.ends_with(sym);
    match expect {
        Expect::Direct(sym) => matches!(calls, [c] if direct_to(sym, c)),
        Expect::DirectOneOf(syms) => {
            matches!(calls, [c] if syms.iter().any(|sym| direct_to(sym, c)))
        }
        Expect::Indirect => matches!(calls, [c] if c.starts_with('*')),
        Expect::Retpoline => matches!(calls, [c] if c.contains("retpoline")),
        Expect::Branch(a, b) => {
            calls.len() == 2
                && calls.iter().any(|c| direct_to(a, c))
                && calls.iter().any(|c| direct_to(b, c))
        }
    }
}

/// Measurements of one run: group -> row -> value.
type Measured = BTreeMap<String, BTreeMap<String, f64>>;

/// Parses the benchmark's `result <group> <row> <value> <unit>` lines.
fn parse(stdout: &str) -> Measured {
    let mut out = Measured::new();
    for line in stdout.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("result") {
            continue;
        }
        if let (Some(group), Some(row), Some(Ok(value))) =
            (words.next(), words.next(), words.next().map(str::parse))
        {
            out.entry(group.into())
                .or_default()
                .insert(row.into(), value);
        }
    }
    out
}

/// Builds the benchmark for `build`, checks its loops, runs it.
fn run_build(root: &Path, build: &Build) -> Result<(Measured, Vec<(String, String)>)> {
    let target_dir = cmd::target_base(root).join("bench").join(build.name);
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(root.join("benches"))
        .args(["build", "--release", "--target", "x86_64-unknown-linux-gnu"])
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", build.rustflags);
    if build.rustflags.contains("-Z") {
        cargo.env("RUSTC_BOOTSTRAP", "1");
    }
    cmd::run(&mut cargo)?;
    let exe = target_dir.join("x86_64-unknown-linux-gnu/release/static-call-bench");
    let disassembly = cmd::output(
        "objdump",
        &[
            std::ffi::OsStr::new("-d"),
            "-C".as_ref(),
            "--no-show-raw-insn".as_ref(),
            exe.as_os_str(),
        ],
    )?;
    let mut shapes = Vec::new();
    for row in ROWS {
        let expect = if build.name == "default" {
            row.default
        } else {
            row.hardened
        };
        let calls = calls_in(&disassembly, row.function);
        if !matches(expect, &calls) {
            return Err(format!(
                "{} build: {} ({}) makes the calls {calls:?}, not {expect:?}: the row \
                 would not measure what it claims",
                build.name, row.key, row.function
            ));
        }
        shapes.push((row.key.to_string(), format!("`call {}`", calls.join(" / "))));
    }
    // Each process lands at other addresses (ASLR), which moves a loop of
    // one call per cycle by a cycle now and then: the call rows are taken
    // from several processes, each figure the median of theirs. The first
    // process also times the updates.
    let mut runs = Vec::with_capacity(PROCESSES);
    for i in 0..PROCESSES {
        let mut bench = Command::new(&exe);
        bench.arg(build.name);
        if i > 0 {
            bench.arg("calls");
        }
        let out = bench
            .output()
            .map_err(|e| format!("{}: {e}", exe.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed: {}\n{}",
                exe.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        runs.push(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stdout = &runs[0];
    print!("{stdout}");
    // What the benchmark found at run time, after its updates.
    for line in stdout.lines() {
        if let Some((row, what)) = line.strip_prefix("shape ").and_then(|l| l.split_once(' '))
            && let Some(shape) = shapes.iter_mut().find(|(k, _)| k == row)
        {
            shape.1 = format!("{} as linked; at run time {what}", shape.1);
        }
    }
    let reported = |row: &str| {
        shapes
            .iter()
            .any(|(k, s)| k == row && s.contains("at run time"))
    };
    if !reported("inline") || !reported("inline_never_updated") {
        return Err(format!(
            "{} build: the benchmark did not report its inline sites",
            build.name
        ));
    }
    let mut measured = median_of(runs.iter().map(|r| parse(r)).collect());
    // Each ratio is that of the figures shown (medians over processes),
    // not a median of each process's ratios.
    let ns = measured.get(&format!("calls_ns_{}", build.name)).cloned();
    if let (Some(ns), Some(ratios)) = (ns, measured.get_mut(&format!("ratio_{}", build.name)))
        && let Some(&direct) = ns.get("direct")
    {
        for (row, r) in ratios.iter_mut() {
            if let Some(&t) = ns.get(row) {
                *r = t / direct;
            }
        }
    }
    Ok((measured, shapes))
}

/// Processes the call rows are measured in ([`run_build`]).
const PROCESSES: usize = 7;

/// Every figure of `runs` as the median of the runs that have it.
fn median_of(runs: Vec<Measured>) -> Measured {
    let mut all: BTreeMap<String, BTreeMap<String, Vec<f64>>> = BTreeMap::new();
    for run in runs {
        for (group, rows) in run {
            for (row, v) in rows {
                all.entry(group.clone())
                    .or_default()
                    .entry(row)
                    .or_default()
                    .push(v);
            }
        }
    }
    all.into_iter()
        .map(|(group, rows)| {
            let rows = rows
                .into_iter()
                .map(|(row, mut v)| {
                    v.sort_by(f64::total_cmp);
                    (row, v[v.len() / 2])
                })
                .collect();
            (group, rows)
        })
        .collect()
}

/// Everything one `cargo xtask bench` measured.
struct Report {
    ratios: BTreeMap<&'static str, BTreeMap<String, f64>>,
    ns: BTreeMap<&'static str, BTreeMap<String, f64>>,
    shapes: BTreeMap<&'static str, Vec<(String, String)>>,
    update_us: BTreeMap<String, f64>,
    update_syncs: BTreeMap<String, f64>,
    update_1000_us: BTreeMap<String, f64>,
    update_1000_syncs: BTreeMap<String, f64>,
    arm64: BTreeMap<String, f64>,
    machine: String,
}

/// The arm64 targets the benchmark kernel is built for, and the suffix of
/// their rows: with FP/SIMD registers in the ABI, and without.
const ARM64_TARGETS: &[(&str, &str)] = &[(BARE, ""), (BARE_SOFTFLOAT, "_softfloat")];

/// Instructions per call on arm64: boots the benchmark kernel, built for
/// each of [`ARM64_TARGETS`], on the virt board with `-icount shift=0` and
/// reads its `bench arm64 <row> <count>` lines (`<row><suffix>`).
pub fn arm64_instructions(root: &Path) -> Result<BTreeMap<String, f64>> {
    let mut counts = BTreeMap::new();
    for &(target, suffix) in ARM64_TARGETS {
        for (row, n) in arm64_instructions_for(root, target)? {
            counts.insert(format!("{row}{suffix}"), n);
        }
    }
    Ok(counts)
}

fn arm64_instructions_for(root: &Path, target: &str) -> Result<BTreeMap<String, f64>> {
    let elf = qemu::build_kernel_for(root, "bench", &[], target)?;
    let boot = qemu::boot_counting(&elf, false, qemu::TIMEOUT)?;
    print!("{}", boot.log);
    if boot.timed_out || boot.status != Some(0) {
        return Err(format!(
            "the benchmark kernel for {target} failed (status {:?}, timed out: {})",
            boot.status, boot.timed_out
        ));
    }
    let mut counts = BTreeMap::new();
    for line in boot.log.lines() {
        let mut words = line.split_whitespace();
        if let (Some("bench"), Some("arm64"), Some(row), Some(Ok(n))) = (
            words.next(),
            words.next(),
            words.next(),
            words.next().map(str::parse::<f64>),
        ) {
            counts.insert(row.to_string(), n);
        }
    }
    if counts.is_empty() {
        return Err(format!(
            "the benchmark kernel for {target} printed no counts"
        ));
    }
    Ok(counts)
}

/// `cargo xtask bench`.
pub fn run(root: &Path) -> Result<()> {
    let mut report = Report {
        ratios: BTreeMap::new(),
        ns: BTreeMap::new(),
        shapes: BTreeMap::new(),
        update_us: BTreeMap::new(),
        update_syncs: BTreeMap::new(),
        update_1000_us: BTreeMap::new(),
        update_1000_syncs: BTreeMap::new(),
        arm64: arm64_instructions(root)?,
        machine: machine(),
    };
    for build in BUILDS {
        let (mut measured, shapes) = run_build(root, build)?;
        let take = |m: &mut Measured, group: String| m.remove(&group).unwrap_or_default();
        report.ratios.insert(
            build.name,
            take(&mut measured, format!("ratio_{}", build.name)),
        );
        report.ns.insert(
            build.name,
            take(&mut measured, format!("calls_ns_{}", build.name)),
        );
        report.shapes.insert(build.name, shapes);
        if build.name == "default" {
            report.update_us = take(&mut measured, "update_us".into());
            report.update_syncs = take(&mut measured, "update_syncs".into());
            report.update_1000_us = take(&mut measured, "update_1000_us".into());
            report.update_1000_syncs = take(&mut measured, "update_1000_syncs".into());
        }
    }
    let dir = cmd::target_base(root).join("bench");
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let json = results_json(&report);
    let write = |path: &Path, text: &str| {
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
    };
    write(&dir.join("results.json"), &json)?;
    write(
        &root.join("benches/BENCHMARKS.md"),
        &markdown(&report, &json),
    )?;
    write(&root.join("benches/chart.svg"), &chart(&report))?;
    println!(
        "bench: wrote {}, benches/BENCHMARKS.md and benches/chart.svg",
        dir.join("results.json").display()
    );
    Ok(())
}

/// The machine, for the report: CPU model, cores, kernel.
fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = cmd::output("uname", &["-r"]).unwrap_or_default();
    let spectre = std::fs::read_to_string("/sys/devices/system/cpu/vulnerabilities/spectre_v2")
        .unwrap_or_default();
    format!(
        "{cpu}, {cores} cores, Linux {}; spectre_v2: {}",
        kernel.trim(),
        spectre.trim()
    )
}

fn json_number(v: Option<&f64>) -> String {
    v.map_or_else(|| "null".into(), |v| format!("{v:.4}"))
}

/// The keys the issue fixes, so results compare across versions; rows
/// that are not built yet are `null`.
fn results_json(r: &Report) -> String {
    let ratio_keys = [
        "trampoline",
        "inline",
        "inline_never_updated",
        "fn_pointer",
        "dyn_trait",
        "retpoline",
        "static_key_branch",
        "trampoline_rust_abi",
        "bare_call_jmp",
    ];
    let mut out = String::from("{\n");
    for (name, build) in [
        ("x86_64_ratio_to_direct", "default"),
        ("x86_64_hardened_ratio_to_direct", "hardened"),
    ] {
        let _ = writeln!(out, "  \"{name}\": {{");
        let fields: Vec<String> = ratio_keys
            .iter()
            .map(|k| format!("    \"{k}\": {}", json_number(r.ratios[build].get(*k))))
            .collect();
        let _ = writeln!(out, "{}\n  }},", fields.join(",\n"));
    }
    let arm64 = [
        "direct",
        "inline",
        "trampoline_near",
        "trampoline_far",
        "null_trampoline",
        "null_inline",
        "fn_pointer",
        "fn_pointer_kcfi",
        "mainline_2026",
        "direct_in_function",
        "inline_in_function",
        "key_in_function_default",
        "key_in_function_inline",
        "key_in_function_trampoline",
        "four_calls_direct",
        "four_calls_default",
        "four_calls_inline",
        "four_calls_trampoline",
        "direct_in_function_softfloat",
        "inline_in_function_softfloat",
        "key_in_function_default_softfloat",
        "key_in_function_inline_softfloat",
        "key_in_function_trampoline_softfloat",
        "four_calls_direct_softfloat",
        "four_calls_default_softfloat",
        "four_calls_inline_softfloat",
        "four_calls_trampoline_softfloat",
    ];
    let fields: Vec<String> = arm64
        .iter()
        .map(|k| format!("    \"{k}\": {}", json_number(r.arm64.get(*k))))
        .collect();
    let _ = writeln!(
        out,
        "  \"arm64_instructions\": {{\n{}\n  }},",
        fields.join(",\n")
    );
    // `x86_64_1_site_us` and its neighbours: the one-store strategy with
    // Remap (the default until the page swap), kept so results compare
    // across versions; `x86_64_default_*`: the default writer (Remap) with
    // the default strategy (which follows from it: the page swap).
    let _ = writeln!(
        out,
        "  \"update_cost\": {{\n    \"x86_64_1_site_us\": {},\n    \"x86_64_1_site_syncs\": {},\n    \
         \"x86_64_1000_sites_us\": {},\n    \"x86_64_1000_sites_syncs\": {},\n    \
         \"x86_64_int3_1000_sites_syncs\": {},\n    \
         \"x86_64_default_1_site_us\": {},\n    \"x86_64_default_1000_sites_us\": {},\n    \
         \"x86_64_default_1_site_syncs\": {},\n    \"x86_64_default_1000_sites_syncs\": {},\n    \
         \"arm64_1000_sites_syncs\": {}\n  }}",
        json_number(r.update_us.get("atomic_store_remap")),
        json_number(r.update_syncs.get("atomic_store_remap")),
        json_number(r.update_1000_us.get("atomic_store_remap")),
        json_number(r.update_1000_syncs.get("atomic_store_remap")),
        json_number(r.update_1000_syncs.get("breakpoint_remap")),
        json_number(r.update_us.get("default_remap")),
        json_number(r.update_1000_us.get("default_remap")),
        json_number(r.update_syncs.get("default_remap")),
        json_number(r.update_1000_syncs.get("default_remap")),
        json_number(r.arm64.get("update_1000_sites_syncs")),
    );
    out.push_str("}\n");
    out
}

/// `benches/BENCHMARKS.md`.
fn markdown(r: &Report, json: &str) -> String {
    let mut md = String::new();
    md.push_str(
        "# Benchmarks\n\n\
         Generated by `cargo xtask bench` (do not edit by hand). It builds `benches/`, a crate\n\
         that depends on static-call as a user's crate does, checks by disassembly that every\n\
         measured loop makes the call its row names, and times one call of a trivial\n\
         `#[inline(never)]` function (`x + 1`) through each row. Every loop makes dependent\n\
         calls (each takes the previous result); rounds visit the rows in rotating order; a\n\
         row's figure is its median over 101 rounds of 65536 calls in each of 7 processes,\n\
         then the median of those, and each ratio divides the two figures shown. Keys have\n\
         been updated once before timing, as after a kernel's boot.\n\n",
    );
    let _ = writeln!(md, "Machine: {}.\n", r.machine);
    md.push_str("![ratio to a direct call](chart.svg)\n\n");
    for build in BUILDS {
        let _ = writeln!(md, "## Calls: {}\n", build.what);
        md.push_str("| row | ns per call | ratio to direct | the measured call compiles to |\n");
        md.push_str("| --- | ---: | ---: | --- |\n");
        let shapes: BTreeMap<_, _> = r.shapes[build.name].iter().cloned().collect();
        for row in ROWS {
            let _ = writeln!(
                md,
                "| {} | {:.3} | {:.2} | {} |",
                row.label,
                r.ns[build.name].get(row.key).copied().unwrap_or(f64::NAN),
                r.ratios[build.name]
                    .get(row.key)
                    .copied()
                    .unwrap_or(f64::NAN),
                shapes.get(row.key).map_or("?", String::as_str)
            );
        }
        md.push('\n');
    }
    md.push_str(
        "## Updates: one key with 1 inline site, and one with 1000\n\n\
         Median wall time of one `update_with` (201 updates of the 1-site key, 51 of the\n\
         1000-site key), and `sync_cores` calls per update (each a `membarrier(SYNC_CORE)`),\n\
         by strategy and writer; every site is checked after every update. Each update\n\
         also rewrites the key's trampoline.\n\n\
         | strategy | writer | µs, 1 site | syncs, 1 site | µs, 1000 sites | syncs, 1000 sites |\n\
         | --- | --- | ---: | ---: | ---: | ---: |\n",
    );
    let get = |m: &BTreeMap<String, f64>, k: &str| m.get(k).copied().unwrap_or(f64::NAN);
    for (key, us) in &r.update_us {
        let (strategy, writer) = key.rsplit_once('_').unwrap_or((key, ""));
        let _ = writeln!(
            md,
            "| {strategy} | {writer} | {us:.1} | {:.0} | {:.1} | {:.0} |",
            get(&r.update_syncs, key),
            get(&r.update_1000_us, key),
            get(&r.update_1000_syncs, key),
        );
    }
    let _ = writeln!(
        md,
        "\narm64 (virt board, the benchmark kernel): {} sync(s) per update of a key with 1000 inline sites.",
        r.arm64
            .get("update_1000_sites_syncs")
            .map_or("-".into(), |n| format!("{n:.0}"))
    );
    md.push_str(
        "\n## arm64: instructions per call\n\n\
         The benchmark kernel (`tests/virt-kernel/src/bin/bench.rs`) on QEMU's virt board with\n\
         `-icount shift=0`, counting the PMU's INST_RETIRED from the call instruction through\n\
         the callee's return (the empty measurement's own count subtracted). Every callee is\n\
         `bti c; add x0, x0, #1; ret`. An inline site is a call the crate emits inside Rust\n\
         code, so it cannot sit in the measuring assembly: the rows marked \"from Rust\" read\n\
         the counter around a call written in Rust, the same way for each, and compare with\n\
         one another; where the compiler schedules a move of the result between the two reads\n\
         (it does for the direct call), that move is counted too. Built for\n\
         `aarch64-unknown-none`.\n\n\
         | call | instructions |\n| --- | ---: |\n",
    );
    for (key, label) in [
        ("direct", "direct `bl`"),
        (
            "trampoline_near",
            "static call, target in `b` range (`bti c; b`)",
        ),
        (
            "trampoline_far",
            "static call, target out of range (literal, `br x16`)",
        ),
        (
            "null_trampoline",
            "NULL static call (returns through `cbz`)",
        ),
        ("direct_from_rust", "direct call, from Rust"),
        ("inline", "inline call site, from Rust (`bl target`)"),
        ("null_inline", "NULL inline call site, from Rust (`nop`)"),
        ("fn_pointer", "function pointer (`blr`)"),
        ("fn_pointer_kcfi", "function pointer with a kCFI type check"),
        (
            "mainline_2026",
            "Linux mainline 2026 trampoline (`adrp; ldr; br`)",
        ),
    ] {
        let _ = writeln!(
            md,
            "| {label} | {} |",
            r.arm64.get(key).map_or("-".into(), |n| format!("{n:.0}"))
        );
    }
    md.push_str(
        "\n## arm64: a function calling a key, counted whole\n\n\
         The same kernel built for both bare-metal arm64 targets; each row counts a whole\n\
         `extern \"C\"` function, prologue and epilogue too, that calls the callee (or a key\n\
         whose target it is) and adds 1 to the result, so no call is a tail call. An inline\n\
         site's `asm!` declares `clobber_abi(\"C\")`, which where the ABI has FP/SIMD registers\n\
         counts v8-v15 as clobbered whole (asm cannot say that only their upper halves are\n\
         lost), so a function holding a site saves and restores d8-d15 itself, once per entry\n\
         (a loop of key calls pays it once). The trampoline call costs the trampoline's 2\n\
         instructions (`bti c; b target`) per call. `call` takes the trampoline where FP/SIMD\n\
         registers exist and the inline site where they do not.\n\n\
         | function | `aarch64-unknown-none` | `aarch64-unknown-none-softfloat` |\n\
         | --- | ---: | ---: |\n",
    );
    for (key, label) in [
        ("direct_in_function", "one direct call"),
        ("key_in_function_default", "one key call, `call` (default)"),
        ("key_in_function_inline", "one key call, `call_inline`"),
        (
            "key_in_function_trampoline",
            "one key call, `call_trampoline`",
        ),
        ("four_calls_direct", "four direct calls"),
        ("four_calls_default", "four key calls, `call`"),
        ("four_calls_inline", "four key calls, `call_inline`"),
        ("four_calls_trampoline", "four key calls, `call_trampoline`"),
    ] {
        let count = |k: String| r.arm64.get(&k).map_or("-".into(), |n| format!("{n:.0}"));
        let _ = writeln!(
            md,
            "| {label} | {} | {} |",
            count(key.to_string()),
            count(format!("{key}_softfloat"))
        );
    }
    md.push_str(
        "\n\
         ## Reading the numbers\n\n\
         - Each call figure is the median over 7 processes (each at other addresses: ASLR\n  \
         moves a loop's branches in the predictors) of a process's median; the updates are\n  \
         timed in the first process.\n\
         - A direct call here takes about one CPU cycle, so a ratio of 2 is one cycle more; a\n  \
         row's ratio can move by a few tenths between builds when code layout changes (the\n  \
         three hand-written `call` + `jmp` rows show how much layout alone does). Both builds\n  \
         align loops to 64 bytes (`-Cllvm-args=-align-loops=64`, which moves nothing but\n  \
         where loops start), so that every row's loop sits alike in the fetch windows.\n\
         - A well-predicted indirect call (function pointer, `dyn`) is a plain `call *reg` in\n  \
         the default build, whatever the kernel's own mitigation, and costs a few times a\n  \
         direct call; retpolined (the hardened build, as Spectre-hardened kernels are built)\n  \
         it costs tens of times one. An inline call site costs what a direct call costs in\n  \
         both builds, since it is one.\n\
         - The inline rows' loops are the direct row's loop instruction for instruction; only\n  \
         the call is longer (the site's `cs` prefixes, up to 15 bytes against 5), which moves\n  \
         where the loop falls in the CPU's fetch windows. Without the loop alignment, in a\n  \
         loop of about one call per cycle, that alone gave ratios from about 0.9 to 1.1\n  \
         between builds, in either direction.\n\n\
         ## Reproduce\n\n\
         ```sh\ncargo xtask bench\n```\n\n\
         ## results.json\n\n```json\n",
    );
    md.push_str(json);
    md.push_str("```\n");
    md
}

/// A horizontal bar chart of the ratios to a direct call, both builds.
fn chart(r: &Report) -> String {
    let rows: Vec<&Row> = ROWS.iter().filter(|row| row.key != "direct").collect();
    let max = BUILDS
        .iter()
        .flat_map(|b| r.ratios[b.name].values())
        .fold(1.0f64, |m, v| m.max(*v));
    let (label_w, bar_w, row_h, top) = (330.0, 420.0, 34.0, 40.0);
    let height = top + row_h * rows.len() as f64 + 30.0;
    let width = label_w + bar_w + 90.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"20\" font-size=\"14\">Time per call / direct call (x86-64; \
         grey: default build, dark: -Zretpoline)</text>\n"
    );
    for (i, row) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let _ = writeln!(
            svg,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
            label_w - 8.0,
            y + 16.0,
            row.label.replace('"', "&quot;")
        );
        for (j, build) in BUILDS.iter().enumerate() {
            let v = r.ratios[build.name].get(row.key).copied().unwrap_or(0.0);
            let w = bar_w * v / max;
            let fill = if j == 0 { "#9e9e9e" } else { "#37474f" };
            let by = y + 2.0 + 13.0 * j as f64;
            let _ = writeln!(
                svg,
                "<rect x=\"{label_w}\" y=\"{by}\" width=\"{w:.1}\" height=\"12\" fill=\"{fill}\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\">{v:.2}</text>",
                label_w + w + 4.0,
                by + 10.0
            );
        }
    }
    let x1 = label_w + bar_w / max;
    let _ = writeln!(
        svg,
        "<line x1=\"{x1:.1}\" y1=\"{top}\" x2=\"{x1:.1}\" y2=\"{:.1}\" stroke=\"#c62828\" \
         stroke-dasharray=\"4 3\"/><text x=\"{x1:.1}\" y=\"{:.1}\" fill=\"#c62828\" \
         font-size=\"10\">direct = 1</text>",
        height - 25.0,
        height - 12.0
    );
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = "\
0000000000019c20 <static_call_bench::loop_inline>:
   19c20:\tpush   %rbx
   19c24:\tcall   1cc40 <static_call_bench::start>
   19c43:\tcs cs cs call 60fa0 <__SCT__C_KEY>
   19c50:\tjne    19c40 <static_call_bench::loop_inline+0x20>
   19c57:\tret

0000000000019d20 <static_call_bench::loop_fn_pointer>:
   19d43:\tcall   *%r14
   19d57:\tret

0000000000019e20 <static_call_bench::loop_static_key>:
   19e43:\tcall   1b480 <static_call_bench::add_one>
   19e53:\tcall   1b490 <static_call_bench::add_two>
   19e57:\tret
";

    #[test]
    fn each_loop_is_checked_for_the_call_it_claims() {
        let c = calls_in(LISTING, "loop_inline");
        assert_eq!(c, ["60fa0 <__SCT__C_KEY>"]);
        assert!(matches(Expect::Direct("<__SCT__C_KEY>"), &c));
        assert!(!matches(Expect::Indirect, &c));
        assert!(!matches(Expect::Direct("<__SCT__OTHER>"), &c));
        let f = calls_in(LISTING, "loop_fn_pointer");
        assert!(matches(Expect::Indirect, &f));
        assert!(!matches(Expect::Direct(ADD_ONE), &f));
        let b = calls_in(LISTING, "loop_static_key");
        assert!(matches(
            Expect::Branch(ADD_ONE, "static_call_bench::add_two>"),
            &b
        ));
        assert!(!matches(Expect::Direct(ADD_ONE), &b));
        assert!(calls_in(LISTING, "loop_missing").is_empty());
    }

    #[test]
    fn figures_of_several_processes_are_their_medians() {
        let runs = [
            "result r a 1.0 x\nresult u b 7 us\n",
            "result r a 3.0 x\n",
            "result r a 2.0 x\n",
        ];
        let m = median_of(runs.iter().map(|r| parse(r)).collect());
        assert_eq!(m["r"]["a"], 2.0);
        assert_eq!(m["u"]["b"], 7.0, "a figure only the first process has");
    }

    #[test]
    fn results_lines_are_parsed_and_others_ignored() {
        let m = parse("noise\nresult ratio_default direct 1.0000 x\nresult update_us a_b 3.5 us\n");
        assert_eq!(m["ratio_default"]["direct"], 1.0);
        assert_eq!(m["update_us"]["a_b"], 3.5);
        assert_eq!(m.len(), 2);
    }
}
