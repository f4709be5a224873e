//! The QEMU virt board: building the bare-metal kernel, booting it, and
//! reading its UART protocol.
//!
//! The kernel (`tests/virt-kernel`, its own cargo workspace) reports over the
//! PL011 UART:
//!
//! - `test <name> ... ok` or `test <name> ... FAILED: <reason>`, one per test;
//! - `cpuN: online` when secondary CPU N comes up;
//! - free-form lines;
//! - a final `kernel: N passed, M failed`,
//!
//! and then leaves QEMU through semihosting with status 0 only if every test
//! passed.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use crate::setup::{BARE, Toolchain};
use crate::{Result, cmd};

/// How the kernel is built, in one place.
pub mod kernel {
    /// The kernel crate, relative to the repository root. Cargo runs there so
    /// that the kernel's own `.cargo/config.toml` applies.
    pub const DIR: &str = "tests/virt-kernel";
    /// Extra rustflags for the kernel (for example `-Zbranch-protection=bti`).
    /// They are passed as `--config target.aarch64-unknown-none.rustflags=[..]`,
    /// which cargo appends to the kernel's own `target.aarch64-unknown-none`
    /// rustflags.
    pub const RUSTFLAGS: &[&str] = &[];
    /// How the kernel's standard library is built (always from source).
    pub const BUILD_STD: &[&str] = &[
        "-Zbuild-std=core,alloc",
        "-Zbuild-std-features=compiler-builtins-mem",
    ];
}

/// The board's CPU count; the kernel must bring up CPUs 1..SMP.
pub const SMP: u32 = 4;
/// A boot that has not finished by then is killed and reported as failed.
pub const TIMEOUT: Duration = Duration::from_secs(600);
/// The EL1 machine.
pub const MACHINE_EL1: &str = "virt";
/// The same board with EL2 (virtualization extensions): kernels start there.
pub const MACHINE_EL2: &str = "virt,virtualization=on";

/// A cargo command for the kernel crate: `subcommand` for the bare-metal
/// target, run in the kernel's directory (so its `.cargo/config.toml`
/// applies), with the standard library always built from source: the
/// kernel builds with `-Zbranch-protection=bti`, and `core` must be built
/// the same way to land on `bti c`, even where a precompiled target exists.
pub fn kernel_cargo(root: &Path, subcommand: &str) -> Result<Command> {
    kernel_cargo_for(root, subcommand, BARE)
}

/// `cargo <subcommand> --release --target <target>` run in the kernel crate
/// at `dir`, so that the kernel's own `.cargo/config.toml` applies; an
/// error when `dir` holds no crate.
pub fn release_cargo_in(dir: &Path, subcommand: &str, target: &str) -> Result<Command> {
    if !dir.join("Cargo.toml").is_file() {
        return Err(format!(
            "kernel crate missing: {} has no Cargo.toml",
            dir.display()
        ));
    }
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(dir)
        .args([subcommand, "--release", "--target", target]);
    Ok(cargo)
}

/// As [`kernel_cargo`], for another bare-metal arm64 `target` (the
/// benchmark kernel is also built for `aarch64-unknown-none-softfloat`).
pub fn kernel_cargo_for(root: &Path, subcommand: &str, target: &str) -> Result<Command> {
    let mut cargo = release_cargo_in(&root.join(kernel::DIR), subcommand, target)?;
    cargo.args(kernel::BUILD_STD).env("RUSTC_BOOTSTRAP", "1");
    if !kernel::RUSTFLAGS.is_empty() {
        let quoted: Vec<String> = kernel::RUSTFLAGS.iter().map(|f| format!("{f:?}")).collect();
        cargo
            .arg("--config")
            .arg(format!("target.{target}.rustflags=[{}]", quoted.join(", ")));
    }
    Ok(cargo)
}

/// Builds one of the kernel's binaries (`tests` or `demo`) and returns the
/// ELF's path.
pub fn build_kernel(root: &Path, bin: &str, features: &[&str]) -> Result<PathBuf> {
    build_kernel_for(root, bin, features, BARE)
}

/// As [`build_kernel`], for another bare-metal arm64 `target`.
pub fn build_kernel_for(
    root: &Path,
    bin: &str,
    features: &[&str],
    target: &str,
) -> Result<PathBuf> {
    let mut cargo = kernel_cargo_for(root, "build", target)?;
    cargo.args(["--bin", bin]);
    if !features.is_empty() {
        cargo.args(["--features", &features.join(",")]);
    }
    build_executable(cargo, bin)
}

/// Runs a `cargo build` of `bin` and returns the ELF's path.
pub fn build_executable(mut cargo: Command, bin: &str) -> Result<PathBuf> {
    cargo.arg("--message-format=json-render-diagnostics");
    println!("$ {}", cmd::describe(&cargo));
    let out = cargo
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !out.status.success() {
        return Err(format!("build of {bin} failed ({})", out.status));
    }
    let json = String::from_utf8_lossy(&out.stdout);
    json.lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\""))
        .filter_map(executable_of)
        .next_back()
        .map(PathBuf::from)
        .ok_or_else(|| format!("cargo reported no executable for --bin {bin}"))
}

/// The minimal example kernel (`examples/minimal-kernel`, its own cargo
/// workspace): what a newcomer copies. It checks itself on one CPU and
/// reports with the same UART protocol as the test kernel.
pub mod example {
    /// The crate, relative to the repository root.
    pub const DIR: &str = "examples/minimal-kernel";
    pub const BIN: &str = "minimal-kernel";
    /// The targets it is built for: hard- and soft-float.
    pub const TARGETS: &[&str] = &[super::BARE, crate::setup::BARE_SOFTFLOAT];
}

/// A cargo command for the example kernel: `subcommand` for `target`, in
/// the example's directory (so its `.cargo/config.toml` applies), building
/// `core` from source only when no precompiled target is installed (the
/// example needs no special flags, unlike the test kernel).
pub fn example_cargo(root: &Path, tc: &Toolchain, subcommand: &str, target: &str) -> Command {
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(root.join(example::DIR))
        .args([subcommand, "--release", "--target", target]);
    if tc.needs_build_std(target) {
        cargo
            .args([
                "-Zbuild-std=core",
                "-Zbuild-std-features=compiler-builtins-mem",
            ])
            .env("RUSTC_BOOTSTRAP", "1");
    }
    cargo
}

/// Builds the example kernel for `target` and returns the ELF's path.
pub fn build_example(root: &Path, tc: &Toolchain, target: &str) -> Result<PathBuf> {
    let mut cargo = example_cargo(root, tc, "build", target);
    cargo.args(["--bin", example::BIN]);
    build_executable(cargo, example::BIN)
}

/// `cargo xtask example`: builds the example kernel for `target`, boots it
/// on one CPU of `machine` with the UART on our output, and exits with
/// QEMU's status.
pub fn example(root: &Path, tc: &Toolchain, target: &str, machine: &str) -> Result<ExitCode> {
    let elf = build_example(root, tc, target)?;
    let boot = boot_one_cpu(&elf, machine, true, TIMEOUT)?;
    exit_code("example", &boot)
}

/// Boots `elf` on one CPU of `machine` (the example kernel).
pub fn boot_one_cpu(elf: &Path, machine: &str, echo: bool, timeout: Duration) -> Result<Boot> {
    boot_with(elf, machine, 1, &[], echo, timeout)
}

/// The `"executable"` path of one line of cargo's JSON messages, if any.
pub fn executable_of(line: &str) -> Option<String> {
    let start = line.find("\"executable\":\"")? + "\"executable\":\"".len();
    let mut path = String::new();
    let mut chars = line[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(path),
            '\\' => path.push(chars.next()?),
            c => path.push(c),
        }
    }
    None
}

/// How a boot ended.
#[derive(Debug)]
pub struct Boot {
    /// QEMU's exit status; `None` if it was killed (timeout or signal).
    pub status: Option<i32>,
    pub timed_out: bool,
    /// Everything QEMU printed (UART first, then QEMU's own standard error).
    pub log: String,
    pub seconds: f64,
}

/// Boots `elf` on the virt board, killing QEMU after `timeout`. With `echo`,
/// the UART is streamed to our standard output as it arrives.
pub fn boot(elf: &Path, machine: &str, echo: bool, timeout: Duration) -> Result<Boot> {
    boot_with(elf, machine, SMP, &[], echo, timeout)
}

/// Boots one CPU with `-icount shift=0`, under which the PMU's
/// INST_RETIRED counts exactly (the benchmark kernel).
pub fn boot_counting(elf: &Path, echo: bool, timeout: Duration) -> Result<Boot> {
    boot_with(elf, MACHINE_EL1, 1, &["-icount", "shift=0"], echo, timeout)
}

fn boot_with(
    elf: &Path,
    machine: &str,
    cpus: u32,
    extra: &[&str],
    echo: bool,
    timeout: Duration,
) -> Result<Boot> {
    let mut qemu = Command::new("qemu-system-aarch64");
    qemu.args([
        "-M",
        machine,
        "-cpu",
        "max",
        "-smp",
        &cpus.to_string(),
        "-m",
        "256M",
    ])
    .args(extra)
    .args(["-nographic", "-semihosting", "-nic", "none", "-kernel"])
    .arg(elf);
    run(qemu, echo, timeout)
}

/// Runs a QEMU command line (the guest's console on its standard output),
/// killing it after `timeout`. With `echo`, the console is streamed to our
/// standard output as it arrives.
pub fn run(mut qemu: Command, echo: bool, timeout: Duration) -> Result<Boot> {
    println!("$ {}", cmd::describe(&qemu));
    let start = Instant::now();
    let program = qemu.get_program().to_string_lossy().into_owned();
    let mut child = qemu
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {program}: {e}"))?;
    let uart = reader(child.stdout.take().expect("piped"), echo);
    let stderr = reader(child.stderr.take().expect("piped"), false);
    let deadline = start + timeout;
    let mut timed_out = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().map_err(|e| format!("waiting for QEMU: {e}"))?;
            }
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(format!("waiting for QEMU: {e}")),
        }
    };
    let mut log = uart.recv().unwrap_or_default();
    let stderr = stderr.recv().unwrap_or_default();
    if !stderr.is_empty() {
        log.push_str("\n[qemu stderr]\n");
        log.push_str(&stderr);
    }
    Ok(Boot {
        status: status.code(),
        timed_out,
        log,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Reads a pipe to its end on a thread (so a full pipe never stalls QEMU),
/// optionally echoing it; the channel yields the text once the pipe closes.
fn reader(mut pipe: impl Read + Send + 'static, echo: bool) -> mpsc::Receiver<String> {
    let (send, recv) = mpsc::channel();
    thread::spawn(move || {
        let bytes = if echo {
            cmd::copy_through(&mut pipe, &mut std::io::stdout())
        } else {
            let mut all = Vec::new();
            let _ = pipe.read_to_end(&mut all);
            all
        };
        let _ = send.send(String::from_utf8_lossy(&bytes).into_owned());
    });
    recv
}

/// What the kernel reported over the UART.
#[derive(Debug, Default, PartialEq)]
pub struct Report {
    pub passed: Vec<String>,
    /// Failed tests with their reasons.
    pub failed: Vec<(String, String)>,
    /// The final `kernel: N passed, M failed` line.
    pub summary: Option<(u32, u32)>,
    /// Secondary CPUs that printed `cpuN: online`.
    pub online: Vec<u32>,
}

pub fn parse_uart(log: &str) -> Report {
    let mut report = Report::default();
    for line in log.lines() {
        let line = line.trim_end();
        if let Some(rest) = line.strip_prefix("test ")
            && let Some((name, outcome)) = rest.split_once(" ... ")
        {
            if outcome == "ok" {
                report.passed.push(name.to_string());
            } else if let Some(reason) = outcome.strip_prefix("FAILED") {
                let reason = reason.trim_start_matches(':').trim();
                report.failed.push((name.to_string(), reason.to_string()));
            }
        } else if let Some(rest) = line.strip_prefix("kernel: ") {
            report.summary = parse_summary(rest).or(report.summary);
        } else if let Some(n) = line
            .strip_prefix("cpu")
            .and_then(|r| r.strip_suffix(": online"))
            .and_then(|n| n.parse().ok())
            && !report.online.contains(&n)
        {
            report.online.push(n);
        }
    }
    report
}

/// `N passed, M failed` -> `(N, M)`.
fn parse_summary(text: &str) -> Option<(u32, u32)> {
    let (passed, failed) = text.split_once(", ")?;
    let passed = passed.strip_suffix(" passed")?.parse().ok()?;
    let failed = failed.strip_suffix(" failed")?.parse().ok()?;
    Some((passed, failed))
}

impl Report {
    /// Why a run of the test kernel (on SMP CPUs) that should have passed
    /// did not; empty if it passed.
    pub fn problems_for_pass(&self, boot: &Boot) -> Vec<String> {
        self.problems_for_pass_on(boot, SMP)
    }

    /// Why a run on `cpus` CPUs that should have passed did not; empty if
    /// it passed.
    pub fn problems_for_pass_on(&self, boot: &Boot, cpus: u32) -> Vec<String> {
        let mut problems = Vec::new();
        if boot.timed_out {
            problems.push(format!("killed after {} s timeout", TIMEOUT.as_secs()));
        } else if boot.status != Some(0) {
            problems.push(format!("QEMU exited with status {:?}", boot.status));
        }
        let counted = (self.passed.len() as u32, self.failed.len() as u32);
        match self.summary {
            None => problems.push("no `kernel: N passed, M failed` line".to_string()),
            Some(summary) if summary != counted => problems.push(format!(
                "summary says {} passed, {} failed but the UART listed {} passed, {} failed",
                summary.0, summary.1, counted.0, counted.1
            )),
            Some(_) => {}
        }
        for (name, reason) in &self.failed {
            problems.push(format!("test {name} failed: {reason}"));
        }
        for cpu in 1..cpus {
            if !self.online.contains(&cpu) {
                problems.push(format!("cpu{cpu} never reported `cpu{cpu}: online`"));
            }
        }
        if self.passed.is_empty() {
            problems.push("ran no tests".to_string());
        }
        problems
    }

    /// Why a run that should have failed (a deliberately failing test) did
    /// not fail properly; empty if it failed the way it should.
    pub fn problems_for_failure(&self, boot: &Boot) -> Vec<String> {
        let mut problems = Vec::new();
        if boot.timed_out {
            problems.push(format!("killed after {} s timeout", TIMEOUT.as_secs()));
        } else if boot.status == Some(0) {
            problems.push("QEMU exited with status 0 despite a failing test".to_string());
        } else if boot.status.is_none() {
            problems.push("QEMU was killed by a signal".to_string());
        }
        if self.failed.is_empty() {
            problems.push("no `test ... FAILED` line".to_string());
        }
        problems
    }
}

/// `cargo xtask demo`: boots the demo kernel with the UART on our output and
/// exits with QEMU's status.
pub fn demo(root: &Path) -> Result<ExitCode> {
    let elf = build_kernel(root, "demo", &[])?;
    let boot = boot(&elf, MACHINE_EL1, true, TIMEOUT)?;
    exit_code("demo", &boot)
}

/// Our exit status for a boot whose UART was shown: QEMU's.
fn exit_code(what: &str, boot: &Boot) -> Result<ExitCode> {
    if boot.timed_out {
        return Err(format!(
            "{what} killed after {} s timeout",
            TIMEOUT.as_secs()
        ));
    }
    match boot.status {
        Some(0) => Ok(ExitCode::SUCCESS),
        Some(code) => {
            eprintln!("xtask: {what} exited with status {code}");
            Ok(ExitCode::from(u8::try_from(code).unwrap_or(1).max(1)))
        }
        None => Err("QEMU was killed by a signal".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSING: &str = "\
boot: EL1\r
cpu1: online\r
cpu3: online\r
cpu2: online\r
test trampoline_layout ... ok\r
test update_under_load ... ok\r
CTR_EL0 = 0x80038003\r
kernel: 2 passed, 0 failed\r
";

    fn boot_with(status: Option<i32>, timed_out: bool) -> Boot {
        Boot {
            status,
            timed_out,
            log: String::new(),
            seconds: 0.0,
        }
    }

    #[test]
    fn parses_a_passing_run() {
        let report = parse_uart(PASSING);
        assert_eq!(report.passed, ["trampoline_layout", "update_under_load"]);
        assert!(report.failed.is_empty());
        assert_eq!(report.summary, Some((2, 0)));
        assert_eq!(report.online, [1, 3, 2]);
        assert!(
            report
                .problems_for_pass(&boot_with(Some(0), false))
                .is_empty()
        );
    }

    #[test]
    fn parses_failures_with_reasons() {
        let log =
            "test a ... ok\ntest b ... FAILED: expected 3, got 4\nkernel: 1 passed, 1 failed\n";
        let report = parse_uart(log);
        assert_eq!(
            report.failed,
            [("b".to_string(), "expected 3, got 4".to_string())]
        );
        let problems = report.problems_for_pass(&boot_with(Some(1), false));
        assert!(problems.iter().any(|p| p.contains("status Some(1)")));
        assert!(problems.iter().any(|p| p.contains("test b failed")));
        assert!(problems.iter().any(|p| p.contains("cpu1")));
        assert!(
            report
                .problems_for_failure(&boot_with(Some(1), false))
                .is_empty()
        );
    }

    #[test]
    fn missing_cpu_summary_mismatch_and_timeout_are_problems() {
        let log = PASSING.replace("cpu2: online", "cpu2: offline");
        let problems = parse_uart(&log).problems_for_pass(&boot_with(Some(0), false));
        assert_eq!(problems, ["cpu2 never reported `cpu2: online`"]);

        let log = PASSING.replace("kernel: 2 passed", "kernel: 3 passed");
        let problems = parse_uart(&log).problems_for_pass(&boot_with(Some(0), false));
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("summary says 3 passed"));

        let problems = parse_uart("cpu1: online\n").problems_for_pass(&boot_with(None, true));
        assert!(problems[0].contains("timeout"));
        assert!(problems.iter().any(|p| p.contains("no `kernel:")));
        assert!(problems.iter().any(|p| p == "ran no tests"));
    }

    #[test]
    fn a_one_cpu_run_needs_no_secondaries() {
        let log = "boot: EL2\ntest a ... ok\nkernel: 1 passed, 0 failed\n";
        let report = parse_uart(log);
        let boot = boot_with(Some(0), false);
        assert!(report.problems_for_pass_on(&boot, 1).is_empty());
        // The test kernel's verdict still wants its secondaries.
        assert_eq!(report.problems_for_pass(&boot).len(), (SMP - 1) as usize);
    }

    #[test]
    fn a_passing_run_is_not_a_proper_failure() {
        let report = parse_uart(PASSING);
        let problems = report.problems_for_failure(&boot_with(Some(0), false));
        assert_eq!(problems.len(), 2);
        // A hang is not a proper failure either.
        let log = "test x ... FAILED: boom\n";
        assert!(
            !parse_uart(log)
                .problems_for_failure(&boot_with(None, true))
                .is_empty()
        );
    }

    #[test]
    fn lines_that_merely_look_alike_are_ignored() {
        let log = "the test foo ... ok\ntest bar ... running\ncpuX: online\nkernel: ready\n";
        assert_eq!(parse_uart(log), Report::default());
    }

    /// Writes a raw arm64 image (QEMU loads a file that is not an ELF as a
    /// raw kernel image and jumps to its start).
    fn raw_image(name: &str, words: &[u32], data: &[u64]) -> PathBuf {
        let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        bytes.extend(data.iter().flat_map(|d| d.to_le_bytes()));
        let path = std::env::temp_dir().join(format!("xtask-{}-{name}.bin", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn require_qemu() {
        assert!(
            cmd::exists("qemu-system-aarch64"),
            "qemu-system-aarch64 is not installed: run `cargo xtask setup` first"
        );
    }

    #[test]
    fn a_hung_boot_is_killed_at_the_timeout() {
        require_qemu();
        let image = raw_image("hang", &[0x1400_0000 /* b . */], &[]);
        let boot = boot(&image, MACHINE_EL1, false, Duration::from_secs(1)).unwrap();
        let _ = std::fs::remove_file(&image);
        assert!(boot.timed_out);
        assert_eq!(boot.status, None);
        assert!((1.0..30.0).contains(&boot.seconds), "{}", boot.seconds);
    }

    #[test]
    fn the_semihosting_exit_status_is_qemus_status() {
        require_qemu();
        let image = raw_image(
            "exit3",
            &[
                0xd280_0300, // mov x0, #0x18 (SYS_EXIT)
                0x1000_0061, // adr x1, block (12 bytes on)
                0xd45e_0000, // hlt #0xf000
                0x1400_0000, // b .
            ],
            // block: ADP_Stopped_ApplicationExit, exit code 3
            &[0x20026, 3],
        );
        let boot = boot(&image, MACHINE_EL1, false, TIMEOUT).unwrap();
        let _ = std::fs::remove_file(&image);
        assert!(!boot.timed_out);
        assert_eq!(boot.status, Some(3));
    }

    #[test]
    fn executable_path_is_read_from_cargo_json() {
        let line = r#"{"reason":"compiler-artifact","target":{"name":"tests"},"executable":"/t/aarch64-unknown-none/release/tests","fresh":true}"#;
        assert_eq!(
            executable_of(line).as_deref(),
            Some("/t/aarch64-unknown-none/release/tests")
        );
        assert_eq!(executable_of(r#"{"executable":null}"#), None);
        assert_eq!(
            executable_of(r#"{"executable":"a\\b\"c"}"#).as_deref(),
            Some("a\\b\"c")
        );
    }
}
