//! `cargo xtask`: the project's build, test and demo harness.
//!
//! - `cargo xtask setup`: install what is missing (Debian packages, an aarch64
//!   standard library).
//! - `cargo xtask test`: setup, then every test suite, then a summary table.
//! - `cargo xtask demo`: setup, then boot the arm64 demo kernel on QEMU.
//! - `cargo xtask bench`: setup, then the benchmarks and their report.

mod bench;
mod callsites;
mod cmd;
mod pc;
mod qemu;
mod setup;
mod suites;
mod unwind;

use std::path::PathBuf;
use std::process::ExitCode;

/// Errors are messages for a person: what failed and what to do about it.
pub type Result<T> = std::result::Result<T, String>;

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  setup   install what is missing: QEMU (arm64 and x86-64), the aarch64 cross
          toolchain, and an aarch64 core/std (a precompiled rustup target, or
          Debian's rust-src)
  test [SUITE...]
          setup, then run every test suite (or only those named) and print
          a summary table; suites: host, host-generic, host-asan,
          host-lint, call-sites, unwind, aarch64-linux, aarch64-none,
          riscv64-linux, riscv64-none, virt-el1, virt-el2, virt-negative,
          x86-kernel, x86-negative
  demo    setup, then boot the arm64 demo kernel on the QEMU virt board
  bench   setup, then time calls and updates against the alternatives and
          write target/bench/results.json, benches/BENCHMARKS.md and
          benches/chart.svg
  bench arm64
          setup, then only count the arm64 instructions (both bare-metal
          targets) and print them; writes nothing";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let root = repo_root();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["setup"] => report(setup::run().map(|_| ExitCode::SUCCESS)),
        ["test", only @ ..] => test(&root, only),
        ["demo"] => report(setup::run().and_then(|_| qemu::demo(&root))),
        ["bench"] => report(
            setup::run()
                .and_then(|_| bench::run(&root))
                .map(|()| ExitCode::SUCCESS),
        ),
        ["bench", "arm64"] => report(
            setup::run()
                .and_then(|_| bench::arm64_instructions(&root))
                .map(|counts| {
                    for (row, n) in counts {
                        println!("arm64 {row} {n}");
                    }
                    ExitCode::SUCCESS
                }),
        ),
        ["help" | "-h" | "--help"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn test(root: &std::path::Path, only: &[&str]) -> ExitCode {
    let known = suites::names();
    if let Some(unknown) = only.iter().find(|name| !known.contains(name)) {
        eprintln!("xtask: no suite `{unknown}`; suites: {}", known.join(", "));
        return ExitCode::from(2);
    }
    let only: Vec<String> = only.iter().map(|s| s.to_string()).collect();
    let toolchain = match setup::run() {
        Ok(tc) => tc,
        Err(e) => {
            eprintln!("xtask: setup failed: {e}");
            println!("xtask: 0 passed, 1 failed");
            return ExitCode::FAILURE;
        }
    };
    let outcomes = suites::run_all(root, &toolchain, &only);
    suites::print_table(&outcomes);
    let totals = suites::totals(&outcomes);
    println!("xtask: {} passed, {} failed", totals.passed, totals.failed);
    if totals.all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn report(result: Result<ExitCode>) -> ExitCode {
    result.unwrap_or_else(|e| {
        eprintln!("xtask: {e}");
        ExitCode::FAILURE
    })
}

/// The repository root: the parent of this crate's directory.
fn repo_root() -> PathBuf {
    let manifest_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest_dir
        .parent()
        .expect("xtask lives one level below the repository root")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    #[test]
    fn usage_lists_every_suite() {
        for name in crate::suites::names() {
            assert!(super::USAGE.contains(name), "USAGE does not mention {name}");
        }
    }
}
