//! `unwind`: backtraces and panics inside the targets of `extern "C"`
//! keys with 6, 7 and 8 arguments.
//!
//! Builds `tests/unwind` for the host, debug and release, with and without
//! `-C force-frame-pointers=yes` (the enclosing function's unwind rule is
//! `%rsp`-based in one mode and `%rbp`-based in the other, which a call
//! that moves the stack pointer must get right in both), runs it, and
//! counts its `unwind CASE ok` / `unwind CASE FAILED: ..` lines. The
//! program runs each case in a child process, so a crash of the unwinder
//! is a failed case, not a failed suite.

use std::path::Path;

use crate::cmd;

/// The frame-pointer modes, as RUSTFLAGS.
const FLAGS: &[(&str, &str)] = &[
    ("no frame pointers", ""),
    ("frame pointers", "-C force-frame-pointers=yes"),
];

/// Runs the suite: (passed, failed, problems).
pub fn run(root: &Path) -> (u32, u32, Vec<String>) {
    let (mut passed, mut failed, mut problems) = (0, 0, Vec::new());
    for release in [false, true] {
        let profile = if release { "release" } else { "debug" };
        for &(mode, flags) in FLAGS {
            let config = format!("{profile}, {mode}");
            let target_dir = cmd::target_base(root)
                .join("unwind")
                .join(if flags.is_empty() { "plain" } else { "fp" });
            let mut cargo = cmd::cargo();
            cargo
                .current_dir(root.join("tests/unwind"))
                .env("CARGO_TARGET_DIR", &target_dir)
                .env("RUSTFLAGS", flags)
                .args(["build", "--quiet"]);
            if release {
                cargo.arg("--release");
            }
            if let Err(e) = cmd::run(&mut cargo) {
                failed += 1;
                problems.push(format!("{config}: build failed: {e}"));
                continue;
            }
            let exe = target_dir.join(profile).join("unwind");
            // The program's own exit status repeats its lines' verdicts.
            let out = match std::process::Command::new(&exe).output() {
                Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
                Err(e) => {
                    failed += 1;
                    problems.push(format!("{config}: cannot run {}: {e}", exe.display()));
                    continue;
                }
            };
            let (p, f, mut lines) = tally(&out);
            if p + f == 0 {
                failed += 1;
                problems.push(format!("{config}: the program reported no cases"));
            }
            println!("unwind ({config}): {p} passed, {f} failed");
            passed += p;
            failed += f;
            problems.extend(lines.drain(..).map(|l| format!("{config}: {l}")));
        }
    }
    (passed, failed, problems)
}

/// Counts the program's `unwind CASE ok` and `unwind CASE FAILED: ..`
/// lines; returns the failed lines too.
fn tally(stdout: &str) -> (u32, u32, Vec<String>) {
    let (mut passed, mut failed, mut failures) = (0, 0, Vec::new());
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("unwind ") else {
            continue;
        };
        if rest.ends_with(" ok") {
            passed += 1;
        } else if rest.contains(" FAILED") {
            failed += 1;
            failures.push(rest.to_string());
        }
    }
    (passed, failed, failures)
}

#[cfg(test)]
mod tests {
    #[test]
    fn cases_are_counted_and_failures_kept() {
        let out = "\
unwind backtrace:unwind_caller_6_call ok
unwind panic:unwind_caller_8_call FAILED: exit code None, signal Some(11)
something else ok
";
        let (passed, failed, failures) = super::tally(out);
        assert_eq!((passed, failed), (1, 1));
        assert_eq!(
            failures,
            ["panic:unwind_caller_8_call FAILED: exit code None, signal Some(11)"]
        );
    }
}
