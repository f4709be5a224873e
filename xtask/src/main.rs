//! `cargo xtask`: the project's build, test and demo harness.
//!
//! - `cargo xtask setup`: install what is missing (Debian packages, an aarch64
//!   standard library).
//! - `cargo xtask test`: setup, then every test suite, then a summary table.
//! - `cargo xtask demo`: setup, then boot the arm64 demo kernel on QEMU.
//! - `cargo xtask example`: setup, then boot the minimal example kernel.
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
          host-lint, package, call-sites, unwind, aarch64-linux, aarch64-none,
          riscv64-linux, riscv64-none, virt-el1, virt-el2, virt-negative,
          x86-kernel, x86-negative, example-el1, example-el2,
          example-el1-softfloat, example-el2-softfloat
  demo    setup, then boot the arm64 demo kernel on the QEMU virt board
  example [--el2] [--softfloat]
          setup, then build and boot examples/minimal-kernel, the small
          kernel to copy, at EL1 (--el2: EL2) for aarch64-unknown-none
          (--softfloat: aarch64-unknown-none-softfloat)
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
        ["example", options @ ..] => match example_options(options) {
            Some((target, machine)) => {
                report(setup::run().and_then(|tc| qemu::example(&root, &tc, target, machine)))
            }
            None => {
                eprintln!("{USAGE}");
                ExitCode::from(2)
            }
        },
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

/// `cargo xtask example`'s options: the target and the QEMU machine, or
/// `None` for an unknown or repeated option.
fn example_options(options: &[&str]) -> Option<(&'static str, &'static str)> {
    let (mut target, mut machine) = (setup::BARE, qemu::MACHINE_EL1);
    let mut seen: Vec<&str> = Vec::new();
    for &option in options {
        if seen.contains(&option) {
            return None;
        }
        seen.push(option);
        match option {
            "--el2" => machine = qemu::MACHINE_EL2,
            "--softfloat" => target = setup::BARE_SOFTFLOAT,
            _ => return None,
        }
    }
    Some((target, machine))
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
    fn example_options_choose_target_and_level() {
        use super::example_options;
        use crate::{qemu, setup};
        assert_eq!(example_options(&[]), Some((setup::BARE, qemu::MACHINE_EL1)));
        assert_eq!(
            example_options(&["--softfloat", "--el2"]),
            Some((setup::BARE_SOFTFLOAT, qemu::MACHINE_EL2))
        );
        assert_eq!(example_options(&["--el3"]), None);
        assert_eq!(example_options(&["--el2", "--el2"]), None);
    }

    #[test]
    fn usage_lists_every_suite() {
        for name in crate::suites::names() {
            assert!(super::USAGE.contains(name), "USAGE does not mention {name}");
        }
    }
}
