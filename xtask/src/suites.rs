//! `cargo xtask test`: every test suite, and the summary table.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use crate::qemu::{self, MACHINE_EL1, MACHINE_EL2};
use crate::setup::{BARE, BARE_SOFTFLOAT, LINUX, RISCV_BARE, RISCV_LINUX, Toolchain, X86_BARE};
use crate::{Result, cmd};

/// One suite's result, as a row of the summary table.
#[derive(Debug)]
pub struct Outcome {
    pub suite: &'static str,
    pub target: String,
    pub passed: u32,
    pub failed: u32,
    pub seconds: f64,
    pub verdict: Verdict,
}

#[derive(Debug, PartialEq)]
pub enum Verdict {
    Ok,
    /// Why the suite failed: its failed tests, or what else went wrong.
    Failed(String),
}

/// Tests counted by a suite, and what went wrong besides.
#[derive(Debug, Default, PartialEq)]
struct Counts {
    passed: u32,
    failed: u32,
    problems: Vec<String>,
}

impl Counts {
    /// One check (a lint, a build) that passed or failed.
    fn check(&mut self, result: Result<()>) {
        match result {
            Ok(()) => self.passed += 1,
            Err(e) => {
                self.failed += 1;
                self.problems.push(e);
            }
        }
    }
}

/// Which test kernel a suite boots.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Board {
    /// `tests/virt-kernel` on QEMU's arm64 virt board (`machine`).
    Virt,
    /// `tests/x86-kernel` on QEMU's x86-64 PC.
    Pc,
}

/// A test-kernel suite: one kernel build booted on one machine.
struct VirtSuite {
    name: &'static str,
    board: Board,
    /// QEMU's `-M` option.
    machine: &'static str,
    features: &'static [&'static str],
    /// `true`: the run must fail (a harness self-check).
    expect_failure: bool,
}

/// The kernel's `tests` binary boots at EL1 and, with `virtualization=on`,
/// at EL2 (it detects its exception level at run time).
const VIRT_SUITES: &[VirtSuite] = &[
    VirtSuite {
        name: "virt-el1",
        board: Board::Virt,
        machine: MACHINE_EL1,
        features: &[],
        expect_failure: false,
    },
    VirtSuite {
        name: "virt-el2",
        board: Board::Virt,
        machine: MACHINE_EL2,
        features: &[],
        expect_failure: false,
    },
    // Last, so the two runs above share one kernel build.
    VirtSuite {
        name: "virt-negative",
        board: Board::Virt,
        machine: MACHINE_EL1,
        features: &["deliberate-failure"],
        expect_failure: true,
    },
    VirtSuite {
        name: "x86-kernel",
        board: Board::Pc,
        machine: "pc",
        features: &[],
        expect_failure: false,
    },
    VirtSuite {
        name: "x86-negative",
        board: Board::Pc,
        machine: "pc",
        features: &["deliberate-failure"],
        expect_failure: true,
    },
];

/// An example-kernel suite: the minimal kernel built for one target and
/// booted at one exception level.
struct ExampleSuite {
    name: &'static str,
    target: &'static str,
    /// QEMU's `-M` option.
    machine: &'static str,
}

/// The example kernel in all four combinations users meet: EL1 and EL2,
/// hard- and soft-float. Each target is built once.
const EXAMPLE_SUITES: &[ExampleSuite] = &[
    ExampleSuite {
        name: "example-el1",
        target: BARE,
        machine: MACHINE_EL1,
    },
    ExampleSuite {
        name: "example-el2",
        target: BARE,
        machine: MACHINE_EL2,
    },
    ExampleSuite {
        name: "example-el1-softfloat",
        target: BARE_SOFTFLOAT,
        machine: MACHINE_EL1,
    },
    ExampleSuite {
        name: "example-el2-softfloat",
        target: BARE_SOFTFLOAT,
        machine: MACHINE_EL2,
    },
];

/// The suites that are not virt-board runs, in the order they run.
const HOST_SUITES: &[&str] = &[
    "host",
    "host-generic",
    "host-asan",
    "host-lint",
    "package",
    "call-sites",
    "unwind",
    "aarch64-linux",
    "aarch64-none",
    "riscv64-linux",
    "riscv64-none",
];

/// Every suite's name, in the order they run.
pub fn names() -> Vec<&'static str> {
    let virt = VIRT_SUITES.iter().map(|s| s.name);
    let example = EXAMPLE_SUITES.iter().map(|s| s.name);
    HOST_SUITES
        .iter()
        .copied()
        .chain(virt)
        .chain(example)
        .collect()
}

/// Runs the suites named in `only` (every suite when it is empty).
pub fn run_all(root: &Path, tc: &Toolchain, only: &[String]) -> Vec<Outcome> {
    let wanted = |name: &str| only.is_empty() || only.iter().any(|o| o == name);
    let host = host_triple();
    let mut outcomes = Vec::new();
    for &name in HOST_SUITES.iter().filter(|n| wanted(n)) {
        outcomes.push(match name {
            "host" => timed(name, &host, || host_tests(root)),
            "host-generic" => timed(name, &host, || generic_tests(root)),
            "host-asan" => timed(name, &host, || asan_tests(root, &host)),
            "host-lint" => timed(name, &host, || host_lint(root)),
            "package" => timed(name, "crates.io, docs.rs", || package(root, tc)),
            "call-sites" => timed(name, "7 configurations", || call_sites(root, tc)),
            "unwind" => timed(name, &host, || unwind(root)),
            "aarch64-linux" => timed(name, LINUX, || linux_tests(root, tc)),
            "riscv64-linux" => timed(name, RISCV_LINUX, || riscv_linux_tests(root, tc)),
            "riscv64-none" => timed(name, RISCV_BARE, || riscv_bare_checks(root, tc)),
            _ => timed(name, "aarch64-unknown-none{,-softfloat}", || {
                bare_checks(root, tc)
            }),
        });
    }
    for suite in VIRT_SUITES.iter().filter(|s| wanted(s.name)) {
        let target = match suite.board {
            Board::Virt => BARE,
            Board::Pc => X86_BARE,
        };
        outcomes.push(timed(suite.name, target, || virt(root, tc, suite)));
    }
    for suite in EXAMPLE_SUITES.iter().filter(|s| wanted(s.name)) {
        outcomes.push(timed(suite.name, suite.target, || example(root, tc, suite)));
    }
    outcomes
}

fn timed(suite: &'static str, target: &str, run: impl FnOnce() -> Counts) -> Outcome {
    println!("\n==> {suite} ({target})");
    let start = Instant::now();
    let counts = run();
    let seconds = start.elapsed().as_secs_f64();
    let mut problems = counts.problems;
    if counts.passed + counts.failed == 0 && problems.is_empty() {
        problems.push("ran no tests".to_string());
    }
    let verdict = if problems.is_empty() && counts.failed == 0 {
        Verdict::Ok
    } else {
        if problems.is_empty() {
            problems.push(format!("{} failed", counts.failed));
        }
        for p in &problems {
            println!("{suite}: {p}");
        }
        Verdict::Failed(problems.join("; "))
    };
    Outcome {
        suite,
        target: target.to_string(),
        passed: counts.passed,
        failed: counts.failed,
        seconds,
        verdict,
    }
}

fn host_triple() -> String {
    cmd::output("rustc", &["-vV"])
        .ok()
        .and_then(|v| {
            v.lines()
                .find_map(|l| l.strip_prefix("host: ").map(String::from))
        })
        .unwrap_or_else(|| "host".to_string())
}

/// Unit, integration and doc tests of the whole workspace on the host.
fn host_tests(root: &Path) -> Counts {
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(root)
        .args(["test", "--workspace", "--no-fail-fast"]);
    libtest_suite(&mut cargo)
}

/// The library's tests with the generic fallback forced, so the backend of
/// targets without one of their own is tested on this host too.
fn generic_tests(root: &Path) -> Counts {
    let mut cargo = cmd::cargo();
    cargo.current_dir(root).args([
        "test",
        "--package",
        "static-call",
        "--features",
        "force-generic",
        "--no-fail-fast",
    ]);
    libtest_suite(&mut cargo)
}

/// Integration test targets the AddressSanitizer run leaves out, and why.
const NOT_UNDER_ASAN: &[(&str, &str)] = &[(
    "compile_errors",
    "compile-time messages only: trybuild drops RUSTFLAGS for its nested \
     cargo, so nothing would be sanitized; it would repeat the host suite",
)];

/// The library's unit, integration and doc tests on the host under
/// AddressSanitizer (`-Zsanitizer=address`, unstable: RUSTC_BOOTSTRAP is set
/// for these commands only), in their own target directory. The explicit
/// `--target` keeps RUSTFLAGS off build scripts and proc macros, which run
/// in the compiler. The xtask crate is left out: it is the harness.
fn asan_tests(root: &Path, host: &str) -> Counts {
    let flags = "-Zsanitizer=address";
    let asan = |cargo: &mut Command| {
        cargo
            .current_dir(root)
            .env("RUSTC_BOOTSTRAP", "1")
            .env("RUSTFLAGS", flags)
            .env("RUSTDOCFLAGS", flags)
            .env("CARGO_TARGET_DIR", cmd::target_base(root).join("asan"))
            .args(["test", "--package", "static-call", "--no-fail-fast"])
            .args(["--target", host]);
    };
    let tests = match integration_tests(root) {
        Ok(tests) => tests,
        Err(e) => {
            return Counts {
                problems: vec![e],
                ..Counts::default()
            };
        }
    };
    for (name, why) in NOT_UNDER_ASAN {
        println!("  not under ASan: tests/{name}.rs ({why})");
    }
    let mut cargo = cmd::cargo();
    asan(&mut cargo);
    cargo.arg("--lib");
    for test in tests
        .iter()
        .filter(|t| NOT_UNDER_ASAN.iter().all(|(name, _)| name != t))
    {
        cargo.args(["--test", test]);
    }
    let mut counts = libtest_suite(&mut cargo);
    // Cargo runs doc tests only when no other target is selected.
    let mut doc = cmd::cargo();
    asan(&mut doc);
    doc.arg("--doc");
    let docs = libtest_suite(&mut doc);
    counts.passed += docs.passed;
    counts.failed += docs.failed;
    counts.problems.extend(docs.problems);
    counts
}

/// The integration test targets: the stems of `tests/*.rs`, sorted.
fn integration_tests(root: &Path) -> Result<Vec<String>> {
    let dir = root.join("tests");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut tests: Vec<String> = entries
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            if path.extension()? != "rs" || !path.is_file() {
                return None;
            }
            path.file_stem()?.to_str().map(String::from)
        })
        .collect();
    tests.sort();
    Ok(tests)
}

fn host_lint(root: &Path) -> Counts {
    let mut counts = Counts::default();
    counts.check(cmd::run(
        cmd::cargo()
            .current_dir(root)
            .args(["fmt", "--all", "--", "--check"]),
    ));
    // Broken intra-doc links and the like fail the suite.
    counts.check(cmd::run(
        cmd::cargo()
            .current_dir(root)
            .args(["doc", "--no-deps", "--package", "static-call"])
            .env("RUSTDOCFLAGS", "-D warnings"),
    ));
    // The kernels are their own workspaces, so `--all` above does not
    // reach them.
    for dir in [qemu::kernel::DIR, crate::pc::DIR, qemu::example::DIR] {
        counts.check(cmd::run(
            cmd::cargo()
                .current_dir(root.join(dir))
                .args(["fmt", "--all", "--", "--check"]),
        ));
    }
    counts.check(cmd::run(cmd::cargo().current_dir(root).args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])));
    counts
}

/// What publishing needs: `cargo publish --dry-run` (package, then build the
/// packaged crate), and warning-free docs for every target docs.rs builds.
fn package(root: &Path, tc: &Toolchain) -> Counts {
    let mut counts = Counts::default();
    // `--allow-dirty`: the suite runs on work in progress too; a clean
    // clone (CI) is not dirty anyway. The dry run stops before uploading.
    counts.check(cmd::run(cmd::cargo().current_dir(root).args([
        "publish",
        "--dry-run",
        "--allow-dirty",
        "--package",
        "static-call",
    ])));
    let targets = std::fs::read_to_string(root.join("Cargo.toml"))
        .map_err(|e| format!("Cargo.toml: {e}"))
        .and_then(|manifest| docs_rs_targets(&manifest));
    let targets = match targets {
        Ok(targets) => targets,
        Err(e) => {
            counts.check(Err(e));
            return counts;
        }
    };
    for target in &targets {
        let mut cargo = cmd::cargo();
        cargo
            .current_dir(root)
            .args(["doc", "--no-deps", "--package", "static-call", "--target"])
            .arg(target)
            // As docs.rs builds: broken links or other warnings fail.
            .env("RUSTDOCFLAGS", "-D warnings --cfg docsrs");
        if tc.needs_build_std(target) {
            cargo.arg("-Zbuild-std=core").env("RUSTC_BOOTSTRAP", "1");
        }
        counts.check(cmd::run(&mut cargo));
    }
    counts
}

/// The `targets` of `[package.metadata.docs.rs]` in a manifest.
fn docs_rs_targets(manifest: &str) -> Result<Vec<String>> {
    let section = manifest
        .split("\n[")
        .find(|s| s.starts_with("package.metadata.docs.rs]"))
        .ok_or("Cargo.toml has no [package.metadata.docs.rs]")?;
    let list = section
        .lines()
        .find_map(|l| l.trim().strip_prefix("targets"))
        .and_then(|rest| rest.trim().strip_prefix('='))
        .and_then(|rest| rest.trim().strip_prefix('['))
        .and_then(|rest| rest.split_once(']'))
        .map(|(list, _)| list)
        .ok_or("[package.metadata.docs.rs] has no one-line `targets = [..]`")?;
    let targets: Vec<String> = list
        .split(',')
        .map(|t| t.trim().trim_matches('"').to_string())
        .filter(|t| !t.is_empty())
        .collect();
    if targets.is_empty() {
        return Err("[package.metadata.docs.rs] lists no targets".to_string());
    }
    Ok(targets)
}

/// Each key's call site, disassembled in every configuration users build.
fn call_sites(root: &Path, tc: &Toolchain) -> Counts {
    let (passed, failed, problems) = crate::callsites::run(root, tc);
    Counts {
        passed,
        failed,
        problems,
    }
}

/// Backtraces and panics inside keys' targets, in both frame-pointer
/// modes, debug and release.
fn unwind(root: &Path) -> Counts {
    let (passed, failed, problems) = crate::unwind::run(root);
    Counts {
        passed,
        failed,
        problems,
    }
}

/// The library's tests on aarch64 Linux, run by qemu-aarch64 (the runner in
/// `.cargo/config.toml`).
fn linux_tests(root: &Path, tc: &Toolchain) -> Counts {
    let mut cargo = cross_test(root, tc, LINUX);
    let bti_library = cmd::target_base(root).join("bti_guarded.so");
    let built = assemble_bti_library(root, &bti_library);
    cargo.env("STATIC_CALL_BTI_LIBRARY", &bti_library);
    let mut counts = libtest_suite(&mut cargo);
    counts.check(built);
    counts
}

/// `cargo test` of the library for a Linux `target` whose runner (in
/// `.cargo/config.toml`) is a QEMU user-mode emulator, building its
/// standard library when none is installed.
fn cross_test(root: &Path, tc: &Toolchain, target: &str) -> Command {
    let mut cargo = cmd::cargo();
    cargo.current_dir(root).args([
        "test",
        "--package",
        "static-call",
        "--no-fail-fast",
        "--target",
        target,
    ]);
    if tc.needs_build_std(target) {
        cargo
            .arg("-Zbuild-std=std,panic_unwind")
            .env("RUSTC_BOOTSTRAP", "1");
    }
    cargo
}

/// Assembles `tests/data/bti_guarded.S` into the BTI-marked shared library
/// the aarch64 Linux tests load (to check that writers keep `PROT_BTI`).
fn assemble_bti_library(root: &Path, out: &Path) -> Result<()> {
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    cmd::run(
        Command::new("aarch64-linux-gnu-gcc")
            .current_dir(root)
            .args(["-shared", "-nostdlib", "-o"])
            .arg(out)
            .arg("tests/data/bti_guarded.S"),
    )
}

/// The library builds and is clippy-clean for bare metal, hard- and
/// soft-float, and so are the test kernel and the example kernel.
fn bare_checks(root: &Path, tc: &Toolchain) -> Counts {
    let mut counts = library_checks(root, tc, BARE);
    let soft = library_checks(root, tc, BARE_SOFTFLOAT);
    counts.passed += soft.passed;
    counts.failed += soft.failed;
    counts.problems.extend(soft.problems);
    // The test kernel, with its own flags (BTI), lint-clean too.
    counts.check(
        qemu::kernel_cargo(root, "clippy")
            .and_then(|mut cargo| cmd::run(cargo.args(["--all-targets", "--", "-D", "warnings"]))),
    );
    for target in qemu::example::TARGETS {
        counts.check(cmd::run(
            qemu::example_cargo(root, tc, "clippy", target).args(["--", "-D", "warnings"]),
        ));
    }
    counts
}

/// The library builds and is clippy-clean for bare-metal riscv64.
fn riscv_bare_checks(root: &Path, tc: &Toolchain) -> Counts {
    library_checks(root, tc, RISCV_BARE)
}

/// `cargo build` and `cargo clippy` of the library for a bare-metal
/// `target`, building `core` when none is installed.
fn library_checks(root: &Path, tc: &Toolchain, target: &str) -> Counts {
    let mut counts = Counts::default();
    for subcommand in ["build", "clippy"] {
        let mut cargo = cmd::cargo();
        cargo.current_dir(root).args([
            subcommand,
            "--package",
            "static-call",
            "--lib",
            "--target",
            target,
        ]);
        if tc.needs_build_std(target) {
            cargo.arg("-Zbuild-std=core").env("RUSTC_BOOTSTRAP", "1");
        }
        if subcommand == "clippy" {
            cargo.args(["--", "-D", "warnings"]);
        }
        counts.check(cmd::run(&mut cargo));
    }
    counts
}

/// The library's tests on riscv64 Linux, run by qemu-riscv64: the generic
/// backend on an architecture that has no backend of its own, threads and
/// all.
fn riscv_linux_tests(root: &Path, tc: &Toolchain) -> Counts {
    libtest_suite(&mut cross_test(root, tc, RISCV_LINUX))
}

/// Runs a `cargo test` and counts libtest's results.
fn libtest_suite(cargo: &mut Command) -> Counts {
    let (status, stdout) = match cmd::tee(cargo) {
        Ok(done) => done,
        Err(e) => {
            return Counts {
                problems: vec![e],
                ..Counts::default()
            };
        }
    };
    let mut counts = parse_libtest(&stdout);
    if !status.success() && counts.failed == 0 && counts.problems.is_empty() {
        counts.problems.push(format!(
            "cargo test failed ({status}) without a failing test: see above"
        ));
    }
    counts
}

/// Sums libtest's `test result: ok. N passed; M failed; ...` lines. A
/// `running N tests` without its result line is a test binary that stopped
/// (a crash, an AddressSanitizer report): its tests are in no count, so it is
/// a problem of its own.
fn parse_libtest(stdout: &str) -> Counts {
    let mut counts = Counts::default();
    let (mut started, mut finished) = (0, 0);
    for line in stdout.lines() {
        let mut words = line
            .trim()
            .strip_prefix("running ")
            .into_iter()
            .flat_map(str::split_whitespace);
        if let (Some(n), Some("test" | "tests")) = (words.next(), words.next())
            && n.parse::<u32>().is_ok()
        {
            started += 1;
        }
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            continue;
        };
        finished += 1;
        let Some((_, figures)) = rest.split_once(". ") else {
            continue;
        };
        for figure in figures.split("; ") {
            let mut words = figure.split_whitespace();
            let (Some(n), Some(what)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(n) = n.parse::<u32>() else { continue };
            match what {
                "passed" => counts.passed += n,
                "failed" => counts.failed += n,
                _ => {}
            }
        }
    }
    if started > finished {
        let stopped = match started - finished {
            1 => "1 test binary".to_string(),
            n => format!("{n} test binaries"),
        };
        counts.problems.push(format!(
            "{stopped} stopped without a result (a crash, or a sanitizer report): see above"
        ));
    }
    counts
}

fn virt(root: &Path, tc: &Toolchain, suite: &VirtSuite) -> Counts {
    let mut counts = Counts::default();
    let built = match suite.board {
        Board::Virt => qemu::build_kernel(root, "tests", suite.features),
        Board::Pc => crate::pc::build_kernel(root, tc, suite.features),
    };
    let elf = match built {
        Ok(elf) => elf,
        Err(e) => {
            counts.failed = 1;
            counts.problems.push(e);
            return counts;
        }
    };
    let booted = match suite.board {
        Board::Virt => qemu::boot(&elf, suite.machine, false, qemu::TIMEOUT),
        Board::Pc => crate::pc::boot(&elf, qemu::TIMEOUT),
    };
    let boot = match booted {
        Ok(boot) => boot,
        Err(e) => {
            counts.failed = 1;
            counts.problems.push(e);
            return counts;
        }
    };
    for line in boot.log.lines() {
        println!("  uart| {line}");
    }
    println!(
        "  QEMU: status {:?}{} after {:.1} s",
        boot.status,
        if boot.timed_out { " (timed out)" } else { "" },
        boot.seconds
    );
    let report = qemu::parse_uart(&boot.log);
    if suite.expect_failure {
        // A self-check: the deliberately failing test must fail the run.
        let mut problems = report.problems_for_failure(&boot);
        // And the verdict the passing suites apply must reject this run.
        if report.problems_for_pass(&boot).is_empty() {
            problems.push("the checks of a passing suite would have accepted this run".to_string());
        }
        counts.check(if problems.is_empty() {
            println!(
                "  as expected, the run failed: {} FAILED line(s), QEMU status {:?}",
                report.failed.len(),
                boot.status
            );
            Ok(())
        } else {
            Err(problems.join("; "))
        });
    } else {
        counts.passed = report.passed.len() as u32;
        counts.failed = report.failed.len() as u32;
        counts.problems = report.problems_for_pass(&boot);
    }
    if suite.board == Board::Pc && !suite.expect_failure {
        // The kernel is lint-clean too (its own workspace and target).
        counts.check(
            crate::pc::kernel_cargo(root, tc, "clippy").and_then(|mut cargo| {
                cmd::run(cargo.args(["--all-targets", "--", "-D", "warnings"]))
            }),
        );
    }
    counts
}

/// The example kernel: built for the suite's target, booted on one CPU;
/// each of its checks is a test, and it must end with status 0.
fn example(root: &Path, tc: &Toolchain, suite: &ExampleSuite) -> Counts {
    let mut counts = Counts::default();
    let boot = qemu::build_example(root, tc, suite.target)
        .and_then(|elf| qemu::boot_one_cpu(&elf, suite.machine, false, qemu::TIMEOUT));
    let boot = match boot {
        Ok(boot) => boot,
        Err(e) => {
            counts.problems.push(e);
            return counts;
        }
    };
    for line in boot.log.lines() {
        println!("  uart| {line}");
    }
    let report = qemu::parse_uart(&boot.log);
    counts.passed = report.passed.len() as u32;
    counts.failed = report.failed.len() as u32;
    counts.problems = report.problems_for_pass_on(&boot, 1);
    counts
}

pub fn print_table(outcomes: &[Outcome]) {
    println!();
    println!(
        "{:<22} {:<30} {:>7} {:>7} {:>8}  result",
        "suite", "target", "passed", "failed", "seconds"
    );
    for o in outcomes {
        let result = match &o.verdict {
            Verdict::Ok => "ok".to_string(),
            Verdict::Failed(why) => format!("FAILED: {why}"),
        };
        println!(
            "{:<22} {:<30} {:>7} {:>7} {:>8.1}  {result}",
            o.suite, o.target, o.passed, o.failed, o.seconds
        );
    }
}

pub struct Totals {
    pub passed: u32,
    pub failed: u32,
    pub all_ok: bool,
}

/// Test totals. A suite that failed without a failed test (a build error, a
/// hang, zero tests) counts as one failure, so the totals never read
/// "0 failed" for a failing run.
pub fn totals(outcomes: &[Outcome]) -> Totals {
    let mut totals = Totals {
        passed: 0,
        failed: 0,
        all_ok: true,
    };
    for o in outcomes {
        totals.passed += o.passed;
        totals.failed += o.failed;
        if let Verdict::Failed(_) = o.verdict {
            totals.all_ok = false;
            if o.failed == 0 {
                totals.failed += 1;
            }
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_results_are_summed() {
        let out = "\
running 3 tests
test a ... ok
test result: ok. 3 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

running 2 tests
test result: FAILED. 1 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.00s

test result: ok. 0 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.00s
";
        let counts = parse_libtest(out);
        assert_eq!((counts.passed, counts.failed), (4, 1));
        assert!(counts.problems.is_empty(), "{:?}", counts.problems);
        assert_eq!(parse_libtest("test x ... ok\n"), Counts::default());
    }

    #[test]
    fn a_test_binary_that_stops_without_a_result_is_a_problem() {
        let out = "\
running 2 tests
test result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.01s

running 1 test
";
        let counts = parse_libtest(out);
        assert_eq!((counts.passed, counts.failed), (2, 0));
        assert_eq!(counts.problems.len(), 1);
        assert!(
            counts.problems[0].starts_with("1 test binary"),
            "{:?}",
            counts.problems
        );
    }

    fn outcome(failed: u32, verdict: Verdict) -> Outcome {
        Outcome {
            suite: "s",
            target: "t".to_string(),
            passed: 2,
            failed,
            seconds: 0.0,
            verdict,
        }
    }

    #[test]
    fn a_failed_suite_without_failed_tests_still_counts_as_a_failure() {
        let t = totals(&[
            outcome(0, Verdict::Ok),
            outcome(0, Verdict::Failed("build".into())),
        ]);
        assert_eq!((t.passed, t.failed, t.all_ok), (4, 1, false));
        let t = totals(&[
            outcome(0, Verdict::Ok),
            outcome(3, Verdict::Failed("3 failed".into())),
        ]);
        assert_eq!((t.passed, t.failed, t.all_ok), (4, 3, false));
        assert!(totals(&[outcome(0, Verdict::Ok)]).all_ok);
    }

    #[test]
    fn asan_exclusions_name_integration_tests() {
        let tests = integration_tests(&crate::repo_root()).unwrap();
        assert!(tests.iter().any(|t| t == "properties"), "{tests:?}");
        for (name, _) in NOT_UNDER_ASAN {
            assert!(tests.iter().any(|t| t == name), "no tests/{name}.rs");
        }
    }

    #[test]
    fn docs_rs_targets_are_read_from_the_manifest() {
        let manifest = "[package]\nname = \"x\"\n\n[package.metadata.docs.rs]\n\
                        # why\ntargets = [\"a-b-c\", \"d-e-f\"]\n\n[dependencies]\n";
        assert_eq!(docs_rs_targets(manifest).unwrap(), ["a-b-c", "d-e-f"]);
        assert!(docs_rs_targets("[package]\n").is_err());
        assert!(docs_rs_targets("[package.metadata.docs.rs]\ntargets = []\n").is_err());
        let ours = std::fs::read_to_string(crate::repo_root().join("Cargo.toml")).unwrap();
        let ours = docs_rs_targets(&ours).unwrap();
        for target in [
            "x86_64-unknown-linux-gnu",
            "aarch64-unknown-none",
            "x86_64-unknown-none",
        ] {
            assert!(
                ours.iter().any(|t| t == target),
                "{target} missing from {ours:?}"
            );
        }
    }

    #[test]
    fn zero_tests_fail_a_suite() {
        let o = timed("empty", "t", Counts::default);
        assert!(matches!(o.verdict, Verdict::Failed(ref why) if why.contains("ran no tests")));
        let o = timed("one", "t", || Counts {
            passed: 1,
            ..Counts::default()
        });
        assert_eq!(o.verdict, Verdict::Ok);
    }
}
