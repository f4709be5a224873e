//! `cargo xtask setup`: installs what the other commands need.
//!
//! 1. Debian packages: QEMU (system mode for arm64 and x86-64, user mode)
//!    and the aarch64 cross compiler, C library and binutils.
//! 2. An aarch64 `core`/`std`. A precompiled rustup target is used when it is
//!    installed. Otherwise the standard library is built from source with
//!    `-Zbuild-std`, which needs the library sources of exactly the running
//!    `rustc`'s version; they are taken from rustup's `rust-src` component or
//!    else Debian's `rust-src` package, fetched through a private apt
//!    configuration that leaves the system's package sources untouched. The
//!    sources are always needed: the test kernel rebuilds `core` with BTI.
//!
//! Every step is idempotent and prints what it found or did.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{Result, cmd};

/// The bare-metal target (the library and the virt-board kernel).
pub const BARE: &str = "aarch64-unknown-none";
/// The soft-float bare-metal target (no FP/SIMD registers), which most arm64
/// kernels and hypervisors build for: library checks and the example kernel.
pub const BARE_SOFTFLOAT: &str = "aarch64-unknown-none-softfloat";
/// The Linux user-space target (tests under qemu-aarch64).
pub const LINUX: &str = "aarch64-unknown-linux-gnu";
/// riscv64 Linux (the generic backend's tests under qemu-riscv64).
pub const RISCV_LINUX: &str = "riscv64gc-unknown-linux-gnu";
/// Bare-metal x86-64 (the x86-64 test kernel).
pub const X86_BARE: &str = "x86_64-unknown-none";
/// Bare-metal riscv64 (the library builds and is lint-clean).
pub const RISCV_BARE: &str = "riscv64gc-unknown-none-elf";

/// What must be present (a command on `PATH`, or a file), and the Debian
/// package that provides it.
const PACKAGES: &[(&str, &str)] = &[
    ("qemu-system-aarch64", "qemu-system-arm"),
    ("qemu-system-x86_64", "qemu-system-x86"),
    ("qemu-aarch64", "qemu-user"),
    ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
    ("/usr/aarch64-linux-gnu/lib/crt1.o", "libc6-dev-arm64-cross"),
    ("aarch64-linux-gnu-objdump", "binutils-aarch64-linux-gnu"),
    ("qemu-riscv64", "qemu-user"),
    ("riscv64-linux-gnu-gcc", "gcc-riscv64-linux-gnu"),
    (
        "/usr/riscv64-linux-gnu/lib/crt1.o",
        "libc6-dev-riscv64-cross",
    ),
];

/// Debian suites searched, in order, for a `rust-src` of `rustc`'s version.
const RUST_SRC_SUITES: &[&str] = &["trixie-backports", "sid"];

/// The keyring that verifies Debian's archive, when the system's apt sources
/// do not name one.
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// Written beside the library sources that setup installed: its first line
/// is the `rustc -V` they match.
const STAMP: &str = "xtask-rust-src.stamp";

/// What setup found out about the aarch64 standard library.
#[derive(Debug, Clone)]
pub struct Toolchain {
    bare_precompiled: bool,
    linux_precompiled: bool,
}

impl Toolchain {
    /// Whether `target`'s standard library must be built with `-Zbuild-std`.
    pub fn needs_build_std(&self, target: &str) -> bool {
        match target {
            BARE => !self.bare_precompiled,
            LINUX => !self.linux_precompiled,
            other => !precompiled(other).unwrap_or(false),
        }
    }
}

pub fn run() -> Result<Toolchain> {
    let start = Instant::now();
    packages()?;
    let toolchain = standard_library()?;
    println!("[setup] done in {:.1} s", start.elapsed().as_secs_f64());
    Ok(toolchain)
}

fn is_root() -> bool {
    // /proc/self belongs to the process's effective user.
    fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

fn packages() -> Result<()> {
    let mut missing: Vec<&str> = PACKAGES
        .iter()
        .filter(|(probe, _)| !cmd::exists(probe))
        .map(|&(_, package)| package)
        .collect();
    // One package can provide several probes (qemu-user).
    missing.sort_unstable();
    missing.dedup();
    if missing.is_empty() {
        let mut all: Vec<&str> = PACKAGES.iter().map(|&(_, p)| p).collect();
        all.sort_unstable();
        all.dedup();
        println!("[setup] Debian packages present: {}", all.join(", "));
        return Ok(());
    }
    println!("[setup] Debian packages missing: {}", missing.join(", "));
    let install = format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
        missing.join(" ")
    );
    if !cmd::exists("apt-get") {
        return Err(format!(
            "apt-get not found: this harness installs Debian packages; install the \
             equivalents of {} by hand",
            missing.join(", ")
        ));
    }
    if !is_root() {
        return Err(format!(
            "installing packages needs root; run these, then retry:\n  \
             sudo apt-get update\n  sudo env {install}"
        ));
    }
    cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    let still: Vec<&str> = PACKAGES
        .iter()
        .filter(|(probe, _)| !cmd::exists(probe))
        .map(|&(probe, _)| probe)
        .collect();
    if !still.is_empty() {
        return Err(format!(
            "still missing after `{install}`: {}",
            still.join(", ")
        ));
    }
    Ok(())
}

fn standard_library() -> Result<Toolchain> {
    let toolchain = Toolchain {
        bare_precompiled: precompiled(BARE)?,
        linux_precompiled: precompiled(LINUX)?,
    };
    for target in [BARE, LINUX] {
        if toolchain.needs_build_std(target) {
            println!("[setup] {target}: no precompiled core/std; will build it with -Zbuild-std");
        } else {
            println!("[setup] {target}: precompiled core/std installed");
        }
    }
    // Needed even with both targets precompiled: the test kernel rebuilds
    // `core` with `-Zbranch-protection=bti` (see `qemu::build_kernel`).
    rust_src()?;
    Ok(toolchain)
}

/// Whether rustup installed `target`'s precompiled standard library.
fn precompiled(target: &str) -> Result<bool> {
    let dir = cmd::output("rustc", &["--print", "target-libdir", "--target", target])?;
    let has_core = fs::read_dir(dir.trim())
        .map(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.starts_with("libcore-") && name.ends_with(".rlib")
            })
        })
        .unwrap_or(false);
    Ok(has_core)
}

/// Makes sure `<sysroot>/lib/rustlib/src/rust/library` holds the library
/// sources of exactly the running `rustc`'s version.
fn rust_src() -> Result<()> {
    let rustc_v = cmd::output("rustc", &["-V"])?.trim().to_string();
    let sysroot = PathBuf::from(cmd::output("rustc", &["--print", "sysroot"])?.trim());
    let src_root = sysroot.join("lib/rustlib/src/rust");
    let library = src_root.join("library");
    if library.is_dir() {
        if rustup_has_component(&sysroot, "rust-src") {
            println!("[setup] rust-src: rustup component installed");
            return Ok(());
        }
        let stamp = fs::read_to_string(src_root.join(STAMP)).unwrap_or_default();
        if stamp.lines().next() == Some(rustc_v.as_str()) {
            let from = stamp.lines().nth(1).unwrap_or("");
            println!("[setup] rust-src for {rustc_v} present ({from})");
            return Ok(());
        }
        println!(
            "[setup] rust-src at {} was not installed by this harness for {rustc_v}; replacing it",
            library.display()
        );
    }
    let Some(release) = rustc_release(&rustc_v) else {
        return Err(format!(
            "{rustc_v} is not a release build, so no Debian rust-src matches it; \
             install the sources with `rustup component add rust-src`"
        ));
    };
    fetch_rust_src(&rustc_v, release, &src_root)
}

fn rustup_has_component(sysroot: &Path, component: &str) -> bool {
    fs::read_to_string(sysroot.join("lib/rustlib/components"))
        .map(|list| list.lines().any(|l| l.starts_with(component)))
        .unwrap_or(false)
}

/// Downloads Debian's `rust-src` of version `release` and installs its
/// `library` directory under `src_root`.
fn fetch_rust_src(rustc_v: &str, release: &str, src_root: &Path) -> Result<()> {
    let work = std::env::temp_dir().join(format!("static-call-xtask-{}", std::process::id()));
    let result = fetch_rust_src_in(&work, rustc_v, release, src_root);
    let _ = fs::remove_dir_all(&work);
    result
}

fn fetch_rust_src_in(work: &Path, rustc_v: &str, release: &str, src_root: &Path) -> Result<()> {
    let (uri, keyring) = debian_archive()?;
    let io = |e: std::io::Error| format!("preparing {}: {e}", work.display());
    fs::create_dir_all(work.join("lists/partial")).map_err(io)?;
    fs::create_dir_all(work.join("cache/archives/partial")).map_err(io)?;
    let sources = work.join("sources.list");
    let mut options = vec![
        format!("Dir::Etc::SourceList={}", sources.display()),
        "Dir::Etc::SourceParts=/dev/null".to_string(),
        format!("Dir::State::Lists={}", work.join("lists").display()),
        format!("Dir::Cache={}", work.join("cache").display()),
    ];
    if is_root() {
        // The private directories are not readable by apt's sandbox user.
        options.push("APT::Sandbox::User=root".to_string());
    }
    let apt_options: Vec<String> = options
        .iter()
        .flat_map(|o| ["-o".to_string(), o.clone()])
        .collect();
    let apt_get = || {
        let mut c = Command::new("apt-get");
        c.args(&apt_options).arg("-q");
        c
    };
    let mut seen = Vec::new();
    for suite in RUST_SRC_SUITES {
        println!("[setup] looking for rust-src {release} in Debian {suite} (private apt lists)");
        fs::write(
            &sources,
            format!("deb [signed-by={keyring}] {uri} {suite} main\n"),
        )
        .map_err(io)?;
        if let Err(e) = cmd::run(apt_get().arg("update")) {
            println!("[setup] {suite}: {e}");
            continue;
        }
        let madison_args = [&apt_options[..], &["madison".into(), "rust-src".into()]].concat();
        let madison = cmd::output("apt-cache", &madison_args)?;
        let versions = madison_versions(&madison);
        let Some(version) = matching_version(&versions, release).map(String::from) else {
            println!(
                "[setup] {suite} has rust-src {}; none is {release}",
                if versions.is_empty() {
                    "(none)".to_string()
                } else {
                    versions.join(", ")
                }
            );
            seen.extend(versions);
            continue;
        };
        cmd::run(
            apt_get()
                .current_dir(work)
                .args(["download", &format!("rust-src={version}")]),
        )?;
        install_deb(work, release, src_root)?;
        let stamp = format!("{rustc_v}\nDebian rust-src {version} from {suite}\n");
        fs::write(src_root.join(STAMP), stamp)
            .map_err(|e| format!("writing {}: {e}", src_root.join(STAMP).display()))?;
        println!(
            "[setup] installed rust-src {version} into {}",
            src_root.join("library").display()
        );
        return Ok(());
    }
    Err(format!(
        "no Debian rust-src matches {rustc_v} (searched {}; found {}). Install the \
         precompiled targets instead: `rustup target add {BARE} {LINUX}`",
        RUST_SRC_SUITES.join(", "),
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    ))
}

/// Unpacks the downloaded `.deb` in `work` and moves its library sources to
/// `src_root/library`, replacing what was there.
fn install_deb(work: &Path, release: &str, src_root: &Path) -> Result<()> {
    let deb = fs::read_dir(work)
        .map_err(|e| format!("reading {}: {e}", work.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or("apt-get download produced no .deb")?;
    let io = |e: std::io::Error| format!("installing rust-src into {}: {e}", src_root.display());
    fs::create_dir_all(src_root).map_err(io)?;
    // Unpack on the same file system as the destination so the final step
    // is a rename.
    let staging = src_root.join(".xtask-staging");
    let _ = fs::remove_dir_all(&staging);
    cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&staging))?;
    let unpacked = staging.join(format!("usr/src/rustc-{release}/library"));
    if !unpacked.is_dir() {
        return Err(format!(
            "{} does not contain usr/src/rustc-{release}/library",
            deb.display()
        ));
    }
    let library = src_root.join("library");
    if library.exists() {
        fs::remove_dir_all(&library).map_err(io)?;
    }
    fs::rename(&unpacked, &library).map_err(io)?;
    fs::remove_dir_all(&staging).map_err(io)?;
    Ok(())
}

/// The Debian archive's URI and keyring, read from the machine's own apt
/// configuration (so no host name is written into the repository).
fn debian_archive() -> Result<(String, String)> {
    let deb822 = fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    let one_line = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    archive_from_deb822(&deb822)
        .or_else(|| archive_from_one_line(&one_line))
        .map(|(uri, keyring)| (uri, keyring.unwrap_or_else(|| DEFAULT_KEYRING.to_string())))
        .ok_or_else(|| {
            "no Debian archive found in /etc/apt/sources.list.d/debian.sources or \
             /etc/apt/sources.list"
                .to_string()
        })
}

/// The first non-security `deb` archive of a deb822 sources file, with its
/// keyring when `Signed-By` names a file.
fn archive_from_deb822(text: &str) -> Option<(String, Option<String>)> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.trim().to_string())
            })
        };
        let types = field("Types").unwrap_or_default();
        let suites = field("Suites").unwrap_or_default();
        if !types.split_whitespace().any(|t| t == "deb") || suites.contains("security") {
            continue;
        }
        let Some(uri) = field("URIs").and_then(|u| u.split_whitespace().next().map(String::from))
        else {
            continue;
        };
        let keyring = field("Signed-By").filter(|k| k.starts_with('/'));
        return Some((uri, keyring));
    }
    None
}

/// The first non-security `deb` line of a one-line-style sources.list.
fn archive_from_one_line(text: &str) -> Option<(String, Option<String>)> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("deb ")?;
        let mut keyring = None;
        let rest = match rest.trim_start().strip_prefix('[') {
            Some(options) => {
                let (options, after) = options.split_once(']')?;
                keyring = options
                    .split_whitespace()
                    .find_map(|o| o.strip_prefix("signed-by="))
                    .map(String::from);
                after
            }
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let uri = words.next()?;
        let suite = words.next()?;
        (!suite.contains("security")).then(|| (uri.to_string(), keyring))
    })
}

/// The release version of a `rustc -V` line (`rustc 1.95.0 (hash date)` ->
/// `1.95.0`); `None` for nightly and beta builds, whose sources no Debian
/// package carries.
fn rustc_release(rustc_v: &str) -> Option<&str> {
    let version = rustc_v.split_whitespace().nth(1)?;
    let numeric = version.split('.').count() == 3
        && version
            .split('.')
            .all(|part| !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()));
    numeric.then_some(version)
}

/// The upstream part of a Debian version: `1:1.95.0+dfsg1-2~bpo13+1` ->
/// `1.95.0` (epoch, Debian revision and repack suffix removed).
fn upstream_version(debian: &str) -> &str {
    let no_epoch = debian.split_once(':').map_or(debian, |(_, rest)| rest);
    let no_revision = no_epoch.rsplit_once('-').map_or(no_epoch, |(up, _)| up);
    no_revision.split(['+', '~']).next().unwrap_or(no_revision)
}

/// The first of `versions` (Debian version strings) whose upstream version
/// is exactly `release`.
fn matching_version<'a, S: AsRef<str>>(versions: &'a [S], release: &str) -> Option<&'a str> {
    versions
        .iter()
        .map(AsRef::as_ref)
        .find(|v| upstream_version(v) == release)
}

/// The versions listed by `apt-cache madison` (`pkg | version | source`).
fn madison_versions(madison: &str) -> Vec<String> {
    let mut versions: Vec<String> = Vec::new();
    for line in madison.lines() {
        if let Some(version) = line.split('|').nth(1).map(str::trim)
            && !version.is_empty()
            && !versions.iter().any(|v| v == version)
        {
            versions.push(version.to_string());
        }
    }
    versions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rustc_release_accepts_only_releases() {
        assert_eq!(
            rustc_release("rustc 1.95.0 (59807616e 2026-04-14)"),
            Some("1.95.0")
        );
        assert_eq!(rustc_release("rustc 1.97.0-nightly (abc 2026-05-01)"), None);
        assert_eq!(rustc_release("rustc 1.96.0-beta.3 (abc 2026-05-01)"), None);
        assert_eq!(rustc_release("garbage"), None);
    }

    #[test]
    fn upstream_version_strips_epoch_revision_and_repack() {
        assert_eq!(upstream_version("1.95.0+dfsg1-2~bpo13+1"), "1.95.0");
        assert_eq!(upstream_version("1:1.95.0+dfsg1-1"), "1.95.0");
        assert_eq!(upstream_version("1.63.0+dfsg1-2"), "1.63.0");
        assert_eq!(upstream_version("1.95.0-1"), "1.95.0");
        assert_eq!(upstream_version("1.95.0~rc1-1"), "1.95.0");
    }

    #[test]
    fn version_matching_is_exact() {
        let listed = [
            "1.96.1+dfsg1-1~bpo13+1",
            "1.95.0+dfsg1-2~bpo13+1",
            "1.9.0-1",
        ];
        assert_eq!(
            matching_version(&listed, "1.95.0"),
            Some("1.95.0+dfsg1-2~bpo13+1")
        );
        assert_eq!(matching_version(&listed, "1.95.1"), None);
        assert_eq!(matching_version(&listed, "1.9.5"), None);
        assert_eq!(matching_version(&listed, "1.96"), None);
    }

    #[test]
    fn madison_output_is_parsed() {
        let text = "  rust-src | 1.96.1+dfsg1-1~bpo13+1 | http://archive/debian trixie-backports/main all Packages\n\
                    \x20 rust-src | 1.95.0+dfsg1-2~bpo13+1 | http://archive/debian trixie-backports/main all Packages\n";
        assert_eq!(
            madison_versions(text),
            ["1.96.1+dfsg1-1~bpo13+1", "1.95.0+dfsg1-2~bpo13+1"]
        );
        assert!(madison_versions("").is_empty());
    }

    #[test]
    fn deb822_archive_skips_security() {
        let text = "Types: deb\n# comment\nURIs: http://security.example/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n\n\
                    Types: deb\nURIs: http://archive.example/debian\nSuites: bookworm bookworm-updates\n\
                    Components: main\nSigned-By: /usr/share/keyrings/k.gpg\n";
        assert_eq!(
            archive_from_deb822(text),
            Some((
                "http://archive.example/debian".to_string(),
                Some("/usr/share/keyrings/k.gpg".to_string())
            ))
        );
        assert_eq!(archive_from_deb822(""), None);
    }

    #[test]
    fn one_line_archive_is_parsed() {
        let text = "# x\ndeb http://s.example/debian-security bookworm-security main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://a.example/debian bookworm main\n";
        assert_eq!(
            archive_from_one_line(text),
            Some((
                "http://a.example/debian".to_string(),
                Some("/k.gpg".to_string())
            ))
        );
    }
}
