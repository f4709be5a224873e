//! `call-sites`: what a key's call compiles to in a user's crate.
//!
//! Builds `tests/call-sites` (a program calling a Rust-ABI key and an
//! `extern "C"` key, once and in a loop) in the configurations users build
//! with, debug and release, disassembles each call site and checks the
//! instruction against the table below. Every `extern "C"` call must be a
//! direct call everywhere; the Rust-ABI rows pin what the compiler does,
//! so a change either way is noticed (the README explains them).

use std::path::Path;

use crate::setup::{BARE, LINUX, Toolchain};
use crate::{Result, cmd};

/// What a call instruction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `call <__SCT__K>` / `bl <__SCT__K>`.
    Direct,
    /// `call *%reg`, `call *mem`, `blr`: through a register or the GOT.
    Indirect,
    /// A call of a retpoline thunk.
    Retpoline,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Direct => "direct",
            Call::Indirect => "indirect",
            Call::Retpoline => "retpoline",
        }
    }
}

/// One way users build.
struct Config {
    name: &'static str,
    target: &'static str,
    rustflags: &'static str,
    /// What a Rust-ABI key's call is here (an `extern "C"` key's is always
    /// direct).
    rust_abi: Call,
}

const X86_LINUX: &str = "x86_64-unknown-linux-gnu";
const X86_BARE: &str = "x86_64-unknown-none";

const CONFIGS: &[Config] = &[
    Config {
        name: "x86_64 Linux, default (PIE)",
        target: X86_LINUX,
        rustflags: "",
        rust_abi: Call::Indirect,
    },
    Config {
        name: "x86_64 Linux, -Zretpoline",
        target: X86_LINUX,
        rustflags: "-Zretpoline -Cunsafe-allow-abi-mismatch=retpoline",
        rust_abi: Call::Retpoline,
    },
    Config {
        name: "x86_64 Linux, relocation-model=static",
        target: X86_LINUX,
        rustflags: "-Crelocation-model=static",
        rust_abi: Call::Direct,
    },
    Config {
        name: "x86_64-unknown-none (static PIE)",
        target: X86_BARE,
        rustflags: "",
        rust_abi: Call::Indirect,
    },
    Config {
        name: "aarch64 Linux, default (PIE)",
        target: LINUX,
        rustflags: "",
        rust_abi: Call::Direct,
    },
    Config {
        name: "aarch64-unknown-none",
        target: BARE,
        rustflags: "",
        rust_abi: Call::Direct,
    },
];

/// The functions of `tests/call-sites` and the key each one calls.
const SITES: &[(&str, &str)] = &[
    ("site_rust_once", "RUST_KEY"),
    ("site_rust_loop", "RUST_KEY"),
    ("site_c_once", "C_KEY"),
    ("site_c_loop", "C_KEY"),
];

/// The call instructions in `function`'s disassembly (objdump -d output).
pub fn calls_in(disassembly: &str, function: &str, key: &str) -> Vec<Call> {
    let header = format!("<{function}>:");
    let mut lines = disassembly.lines().skip_while(|l| !l.ends_with(&header));
    lines.next();
    lines
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| classify(l, key))
        .collect()
}

/// The call a disassembled instruction line is, if it is one.
pub fn classify(line: &str, key: &str) -> Option<Call> {
    // `address:<TAB>bytes<TAB>instruction` (arm64: a tab after the mnemonic
    // too).
    let insn = line.split('\t').skip(2).collect::<Vec<_>>().join(" ");
    // An inline site's call carries `cs` prefixes (one aligned 8-byte word).
    let mut words = insn.split_whitespace().skip_while(|w| *w == "cs");
    let mnemonic = words.next()?;
    let operand = words.collect::<Vec<_>>().join(" ");
    // Tail calls (`jmp`/`b`) count too; other jumps are the function's own.
    let tail = matches!(mnemonic, "jmp" | "jmpq" | "b");
    if tail && !(operand.starts_with('*') || operand.contains('<') && !operand.contains('+')) {
        return None;
    }
    match mnemonic {
        "call" | "callq" | "bl" | "jmp" | "jmpq" | "b" => Some(if operand.starts_with('*') {
            Call::Indirect
        } else if operand.contains("retpoline") || operand.contains("indirect_thunk") {
            Call::Retpoline
        } else if operand.contains(&format!("<__SCT__{key}>")) {
            Call::Direct
        } else {
            // A direct call of something else (a helper): not the key's.
            return None;
        }),
        "blr" | "br" => Some(Call::Indirect),
        _ => None,
    }
}

/// Runs the suite: every configuration, debug and release.
pub fn run(root: &Path, tc: &Toolchain) -> (u32, u32, Vec<String>) {
    let (mut passed, mut failed, mut problems) = (0, 0, Vec::new());
    let mut table = Vec::new();
    for config in CONFIGS {
        for release in [false, true] {
            let profile = if release { "release" } else { "debug" };
            let disassembly = match build_and_disassemble(root, tc, config, release) {
                Ok(d) => d,
                Err(e) => {
                    failed += 1;
                    problems.push(format!("{} ({profile}): {e}", config.name));
                    continue;
                }
            };
            let mut row = Vec::new();
            for &(function, key) in SITES {
                let want = if key == "C_KEY" {
                    Call::Direct
                } else {
                    config.rust_abi
                };
                let got = calls_in(&disassembly, function, key);
                row.push(match got.as_slice() {
                    [one] => one.name(),
                    [] => "none",
                    _ => "several",
                });
                if got.len() == 1 && got[0] == want {
                    passed += 1;
                } else {
                    failed += 1;
                    problems.push(format!(
                        "{} ({profile}): {function} calls {key} as {got:?}, expected [{want:?}]",
                        config.name
                    ));
                }
            }
            table.push((config.name, profile, row));
        }
    }
    println!("\ncall sites (function: instruction of the key's call):");
    println!(
        "{:<40} {:<8} {:<12} {:<12} {:<12} {:<12}",
        "configuration", "profile", "rust once", "rust loop", "C once", "C loop"
    );
    for (name, profile, row) in &table {
        println!(
            "{name:<40} {profile:<8} {:<12} {:<12} {:<12} {:<12}",
            row[0], row[1], row[2], row[3]
        );
    }
    (passed, failed, problems)
}

fn build_and_disassemble(
    root: &Path,
    tc: &Toolchain,
    config: &Config,
    release: bool,
) -> Result<String> {
    let dir = root.join("tests/call-sites");
    let slug: String = config
        .name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let target_dir = cmd::target_base(root).join("call-sites").join(slug);
    let mut cargo = cmd::cargo();
    cargo
        .current_dir(&dir)
        .env("CARGO_TARGET_DIR", &target_dir)
        .env("RUSTFLAGS", config.rustflags)
        .args(["build", "--target", config.target]);
    if release {
        cargo.arg("--release");
    }
    let build_std = match config.target {
        X86_BARE => Some("-Zbuild-std=core"),
        BARE if tc.needs_build_std(BARE) => Some("-Zbuild-std=core"),
        LINUX if tc.needs_build_std(LINUX) => Some("-Zbuild-std=std,panic_abort"),
        _ => None,
    };
    if let Some(flag) = build_std {
        cargo.arg(flag);
    }
    if build_std.is_some() || config.rustflags.contains("-Z") {
        cargo.env("RUSTC_BOOTSTRAP", "1");
    }
    cmd::run(&mut cargo)?;
    let exe = target_dir
        .join(config.target)
        .join(if release { "release" } else { "debug" })
        .join("call-sites");
    let objdump = if config.target.starts_with("aarch64") {
        "aarch64-linux-gnu-objdump"
    } else {
        "objdump"
    };
    cmd::output(objdump, &[std::ffi::OsStr::new("-d"), exe.as_os_str()])
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "\
0000000000013f80 <site_c_loop>:
   13f80:\t2e 2e 2e e8 57 f4 03 \tcs cs cs call 513e0 <__SCT__C_KEY>
   13f87:\t00 
   13f89:\tc3                   \tret

0000000000014000 <site_rust_loop>:
   14002:\t4c 8b 3d 97 f2 03 00 \tmov    0x3f297(%rip),%r15        # 52b70 <_DYNAMIC+0x228>
   14014:\t41 ff d7             \tcall   *%r15
   14020:\te8 00 00 00 00       \tcall   14100 <core::panicking::panic>

0000000000014100 <site_rust_once>:
   14104:\te8 00 00 00 00       \tcall   14200 <__llvm_retpoline_r11>
";

    const A64: &str = "\
0000000000013f80 <site_c_once>:
   13f84:\t94000010 \tbl\t13fc4 <__SCT__C_KEY>
   13f88:\td63f0200 \tblr\tx16
";

    #[test]
    fn calls_are_classified_per_function() {
        assert_eq!(calls_in(X86, "site_c_loop", "C_KEY"), [Call::Direct]);
        // The panic call is no call of the key.
        assert_eq!(
            calls_in(X86, "site_rust_loop", "RUST_KEY"),
            [Call::Indirect]
        );
        assert_eq!(
            calls_in(X86, "site_rust_once", "RUST_KEY"),
            [Call::Retpoline]
        );
        assert_eq!(
            calls_in(A64, "site_c_once", "C_KEY"),
            [Call::Direct, Call::Indirect]
        );
        assert!(calls_in(X86, "site_missing", "C_KEY").is_empty());
    }

    #[test]
    fn tail_calls_count_and_local_jumps_do_not() {
        let jmp = |insn: &str| format!("   14000:\te9 00 00 00 00\t{insn}");
        assert_eq!(
            classify(&jmp("jmp    513e0 <__SCT__K>"), "K"),
            Some(Call::Direct)
        );
        assert_eq!(classify(&jmp("jmp    *%rax"), "K"), Some(Call::Indirect));
        assert_eq!(classify(&jmp("jmp    14010 <site_c_loop+0x10>"), "K"), None);
        assert_eq!(
            classify("   13f84:\t14000010 \tb\t13fc4 <__SCT__K>", "K"),
            Some(Call::Direct)
        );
    }

    #[test]
    fn a_direct_call_of_another_key_is_not_this_keys() {
        let line = "   13f84:\te8 57 f4 03 00\tcall   513e0 <__SCT__OTHER>";
        assert_eq!(classify(line, "C_KEY"), None);
        assert_eq!(classify(line, "OTHER"), Some(Call::Direct));
    }
}
