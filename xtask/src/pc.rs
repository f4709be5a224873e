//! The x86-64 test kernel (`tests/x86-kernel`, its own cargo workspace):
//! building it and booting it on QEMU's PC with 4 CPUs.
//!
//! It speaks the same UART protocol as the arm64 kernel (see `qemu.rs`),
//! on COM1, and ends the run through QEMU's `isa-debug-exit` device, which
//! exits with `2 * value + 1`: the kernel writes 16 for success (status
//! 33) and its status `n` otherwise (`2n + 1`). [`boot`] turns that back
//! into the kernel's status, so 0 means every test passed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::Result;
use crate::qemu::{self, Boot};
use crate::setup::{Toolchain, X86_BARE};

/// The kernel crate, relative to the repository root. Cargo runs there so
/// that the kernel's own `.cargo/config.toml` (linker script, static
/// relocation model) applies.
pub const DIR: &str = "tests/x86-kernel";
/// QEMU's status when the kernel reports success.
const EXIT_SUCCESS: i32 = 33;

/// A cargo command for the kernel crate, building `core` and `alloc` from
/// source when no precompiled `x86_64-unknown-none` is installed.
pub fn kernel_cargo(root: &Path, tc: &Toolchain, subcommand: &str) -> Result<Command> {
    let mut cargo = qemu::release_cargo_in(&root.join(DIR), subcommand, X86_BARE)?;
    if tc.needs_build_std(X86_BARE) {
        cargo
            .args([
                "-Zbuild-std=core,alloc",
                "-Zbuild-std-features=compiler-builtins-mem",
            ])
            .env("RUSTC_BOOTSTRAP", "1");
    }
    Ok(cargo)
}

/// Builds the kernel's `tests` binary and returns the ELF's path.
pub fn build_kernel(root: &Path, tc: &Toolchain, features: &[&str]) -> Result<PathBuf> {
    let mut cargo = kernel_cargo(root, tc, "build")?;
    cargo.args(["--bin", "tests"]);
    if !features.is_empty() {
        cargo.args(["--features", &features.join(",")]);
    }
    qemu::build_executable(cargo, "tests")
}

/// Boots `elf` on QEMU's PC (TCG, `-smp 4`, no `-icount`), the kernel's
/// status as [`Boot::status`].
pub fn boot(elf: &Path, timeout: Duration) -> Result<Boot> {
    let mut qemu = Command::new("qemu-system-x86_64");
    qemu.args(["-M", "pc", "-cpu", "max", "-smp"])
        .arg(qemu::SMP.to_string())
        .args(["-m", "256M", "-nographic", "-no-reboot", "-net", "none"])
        .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel"])
        .arg(elf);
    let mut boot = qemu::run(qemu, false, timeout)?;
    boot.status = boot.status.map(kernel_status);
    Ok(boot)
}

/// The kernel's status from QEMU's: 33 is success (0); `2n + 1` is `n`.
/// QEMU's own failures (status 1, which the kernel never causes: it never
/// writes 0) and a triple fault's reset under `-no-reboot` (status 0)
/// become -1; anything else is passed on. Never 0 but for success.
fn kernel_status(qemu: i32) -> i32 {
    match qemu {
        EXIT_SUCCESS => 0,
        0 | 1 => -1,
        n if n % 2 == 1 => (n - 1) / 2,
        n => n,
    }
}

#[cfg(test)]
mod tests {
    use super::kernel_status;

    #[test]
    fn isa_debug_exit_statuses_map_back_to_the_kernel_s() {
        assert_eq!(kernel_status(33), 0);
        assert_eq!(kernel_status(3), 1);
        assert_eq!(kernel_status(203), 101);
        // A reset (triple fault) under -no-reboot exits QEMU with 0: never
        // a pass.
        assert_eq!(kernel_status(0), -1);
        assert_eq!(kernel_status(1), -1);
        assert_eq!(kernel_status(2), 2);
    }
}
