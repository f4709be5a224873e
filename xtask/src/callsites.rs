//! `call-sites`: what a key's call compiles to in a user's crate.
//!
//! Builds `tests/call-sites` (a program calling a Rust-ABI key and
//! `extern "C"` keys, once and in a loop, by default, by inline site and by
//! trampoline call) in the configurations users build with, debug and
//! release, disassembles each call and checks it against the table below:
//! an inline site (a direct call recorded in the program's call-site
//! table), the compiler's direct call of the trampoline, or an indirect or
//! retpoline call. The rows pin what each call is, so a change either way
//! is noticed (the README explains them). On arm64 the default call must
//! also leave `d8`-`d15` alone (no saves: the reason it is not an inline
//! site where the ABI has FP/SIMD registers).

use std::path::Path;

use crate::setup::{BARE, BARE_SOFTFLOAT, LINUX, Toolchain, X86_BARE};
use crate::{Result, cmd};

/// What a call instruction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// An inline site: `call`/`bl <__SCT__K>` recorded in the call-site
    /// table (`static_call_sites`).
    Site,
    /// `call <__SCT__K>` / `bl <__SCT__K>` (or the tail call `jmp`/`b`)
    /// that the compiler emitted: not in the call-site table.
    Direct,
    /// `call *%reg`, `call *mem`, `blr`: through a register or the GOT.
    Indirect,
    /// A call of a retpoline thunk.
    Retpoline,
}

impl Call {
    fn name(self) -> &'static str {
        match self {
            Call::Site => "site",
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
    /// What a Rust-ABI key's call is here, and so the compiler's call of
    /// any trampoline (`call_trampoline`).
    rust_abi: Call,
    /// What an `extern "C"` key's default `call` is: one argument, and
    /// eight (on x86-64 two of them on the stack).
    c_default: Call,
    c8_default: Call,
}

const X86_LINUX: &str = "x86_64-unknown-linux-gnu";

const CONFIGS: &[Config] = &[
    Config {
        name: "x86_64 Linux, default (PIE)",
        target: X86_LINUX,
        rustflags: "",
        rust_abi: Call::Indirect,
        c_default: Call::Site,
        c8_default: Call::Indirect,
    },
    Config {
        name: "x86_64 Linux, -Zretpoline",
        target: X86_LINUX,
        rustflags: "-Zretpoline -Cunsafe-allow-abi-mismatch=retpoline",
        rust_abi: Call::Retpoline,
        c_default: Call::Site,
        c8_default: Call::Retpoline,
    },
    Config {
        name: "x86_64 Linux, relocation-model=static",
        target: X86_LINUX,
        rustflags: "-Crelocation-model=static",
        rust_abi: Call::Direct,
        c_default: Call::Site,
        c8_default: Call::Direct,
    },
    Config {
        name: "x86_64-unknown-none (static PIE)",
        target: X86_BARE,
        rustflags: "",
        rust_abi: Call::Indirect,
        c_default: Call::Site,
        c8_default: Call::Indirect,
    },
    Config {
        name: "aarch64 Linux, default (PIE)",
        target: LINUX,
        rustflags: "",
        rust_abi: Call::Direct,
        c_default: Call::Direct,
        c8_default: Call::Direct,
    },
    Config {
        name: "aarch64-unknown-none (FP/SIMD)",
        target: BARE,
        rustflags: "",
        rust_abi: Call::Direct,
        c_default: Call::Direct,
        c8_default: Call::Direct,
    },
    Config {
        name: "aarch64-unknown-none-softfloat",
        target: BARE_SOFTFLOAT,
        rustflags: "",
        rust_abi: Call::Direct,
        c_default: Call::Site,
        c8_default: Call::Site,
    },
];

/// How a function of `tests/call-sites` calls its key.
#[derive(Clone, Copy)]
enum How {
    /// A Rust-ABI key's `call`, or an `extern "C"` key's `call_trampoline`.
    Compiler,
    /// An `extern "C"` key's `call` (one argument).
    Default,
    /// An eight-argument `extern "C"` key's `call`.
    Default8,
    /// `call_inline`.
    Inline,
}

/// The functions of `tests/call-sites`, the key each one calls and how,
/// and the table's column.
const SITES: &[(&str, &str, How, &str)] = &[
    ("site_rust_once", "RUST_KEY", How::Compiler, "rust once"),
    ("site_rust_loop", "RUST_KEY", How::Compiler, "rust loop"),
    ("site_c_once", "C_KEY", How::Default, "C once"),
    ("site_c_loop", "C_KEY", How::Default, "C loop"),
    ("site_c_inline_once", "C_KEY", How::Inline, "C inline"),
    ("site_c_tramp_once", "C_KEY", How::Compiler, "C tramp"),
    ("site_c8_once", "C8_KEY", How::Default8, "C 8 args"),
];

/// The addresses of the inline sites recorded in the program's call-site
/// table, from `objdump -s -j static_call_sites`: each record is two
/// 32-bit offsets, the first from itself to its site.
pub fn recorded_sites(dump: &str) -> Result<Vec<u64>> {
    let mut bytes = Vec::new();
    let mut start = None;
    for line in dump.lines() {
        // ` ADDR WORD WORD WORD WORD  ascii`: the hex part ends at the first
        // double space (a short last line is padded with spaces).
        let hex = line.trim_start().split("  ").next().unwrap_or("");
        let mut fields = hex.split(' ');
        let Some(addr) = fields.next().and_then(|a| u64::from_str_radix(a, 16).ok()) else {
            continue;
        };
        let words: Vec<&str> = fields.filter(|w| !w.is_empty()).collect();
        if words.is_empty() {
            continue;
        }
        start.get_or_insert(addr);
        for w in words {
            for i in (0..w.len()).step_by(2) {
                bytes.push(u8::from_str_radix(&w[i..i + 2], 16).map_err(|e| e.to_string())?);
            }
        }
    }
    let start = start.ok_or("no static_call_sites section in the program")?;
    Ok(bytes
        .chunks_exact(8)
        .enumerate()
        .map(|(i, record)| {
            let offset = i32::from_le_bytes(record[..4].try_into().unwrap());
            (start + 8 * i as u64).wrapping_add_signed(i64::from(offset))
        })
        .collect())
}

/// Whether `function` touches `d8`-`d15` (saves them, on arm64).
pub fn touches_d8_to_d15(disassembly: &str, function: &str) -> bool {
    function_lines(disassembly, function).any(|l| {
        let insn = l.split('\t').skip(2).collect::<Vec<_>>().join(" ");
        insn.split(|c: char| !c.is_ascii_alphanumeric())
            .any(|w| matches!(w.strip_prefix('d').map(str::parse::<u8>), Some(Ok(8..=15))))
    })
}

fn function_lines<'a>(disassembly: &'a str, function: &str) -> impl Iterator<Item = &'a str> {
    let header = format!("<{function}>:");
    let mut lines = disassembly
        .lines()
        .skip_while(move |l| !l.ends_with(&header));
    lines.next();
    lines.take_while(|l| !l.trim().is_empty())
}

/// The call instructions in `function`'s disassembly (objdump -d output);
/// a direct call (or, for a NULL key, the no-op) at one of `sites` is an
/// inline site, whatever it calls: the defining crate's sites call the
/// key's initial target until the first update, a declaration's call the
/// trampoline.
pub fn calls_in(disassembly: &str, function: &str, key: &str, sites: &[u64]) -> Vec<Call> {
    function_lines(disassembly, function)
        .filter_map(|l| {
            let addr = l.trim_start().split(':').next()?;
            let at = u64::from_str_radix(addr, 16).ok()?;
            // The recorded site may follow padding prefixes that belong
            // to the same instruction (x86-64), so the instruction holds
            // the site rather than starts at it.
            let len = instruction_len(l);
            if sites.iter().any(|&s| (at..at + len).contains(&s)) && is_site_instruction(l) {
                return Some(Call::Site);
            }
            classify(l, key)
        })
        .collect()
}

/// The length of a disassembled instruction from its bytes (the listing
/// must have them all on its line: `--insn-width=16`); arm64 shows one
/// 8-digit word.
fn instruction_len(line: &str) -> u64 {
    let bytes = line.split('\t').nth(1).unwrap_or("");
    bytes.split_whitespace().map(|b| b.len() as u64 / 2).sum()
}

/// Whether a disassembled line holds what an inline site may hold: a
/// direct `call`/`bl` or a no-op.
fn is_site_instruction(line: &str) -> bool {
    let insn = line.split('\t').skip(2).collect::<Vec<_>>().join(" ");
    let mut words = insn.split_whitespace().skip_while(|w| *w == "cs");
    match words.next() {
        Some("call" | "callq" | "bl") => !words.next().unwrap_or("*").starts_with('*'),
        Some(m) => m.starts_with("nop"),
        None => false,
    }
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
            let (disassembly, sites) = match build_and_disassemble(root, tc, config, release) {
                Ok(d) => d,
                Err(e) => {
                    failed += 1;
                    problems.push(format!("{} ({profile}): {e}", config.name));
                    continue;
                }
            };
            let mut row = Vec::new();
            for &(function, key, how, _) in SITES {
                let want = match how {
                    How::Compiler => config.rust_abi,
                    How::Default => config.c_default,
                    How::Default8 => config.c8_default,
                    How::Inline => Call::Site,
                };
                let got = calls_in(&disassembly, function, key, &sites);
                // The compiler's calls and the soft-float sites need no
                // FP/SIMD saves; a hard-float site does (why it is no
                // default there).
                let fp_saves = touches_d8_to_d15(&disassembly, function);
                let fp_ok = !config.target.starts_with("aarch64")
                    || matches!(how, How::Inline)
                    || !fp_saves;
                row.push(match got.as_slice() {
                    [one] if fp_saves => format!("{}+d8-15", one.name()),
                    [one] => one.name().to_string(),
                    [] => "none".to_string(),
                    _ => "several".to_string(),
                });
                if got.len() == 1 && got[0] == want && fp_ok {
                    passed += 1;
                } else {
                    failed += 1;
                    let fp = if fp_ok { "" } else { ", saving d8-d15" };
                    problems.push(format!(
                        "{} ({profile}): {function} calls {key} as {got:?}{fp}, expected [{want:?}]",
                        config.name
                    ));
                }
            }
            table.push((config.name, profile, row));
        }
    }
    println!(
        "\ncall sites (function: instruction of the key's call; site = recorded inline \
         site, direct = the compiler's call; +d8-15: the function saves d8-d15):"
    );
    print!("{:<40} {:<8}", "configuration", "profile");
    for (.., column) in SITES {
        print!(" {column:<13}");
    }
    println!();
    for (name, profile, row) in &table {
        print!("{name:<40} {profile:<8}");
        for cell in row {
            print!(" {cell:<13}");
        }
        println!();
    }
    (passed, failed, problems)
}

/// The program's disassembly and the addresses of its recorded sites.
fn build_and_disassemble(
    root: &Path,
    tc: &Toolchain,
    config: &Config,
    release: bool,
) -> Result<(String, Vec<u64>)> {
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
        BARE | BARE_SOFTFLOAT if tc.needs_build_std(config.target) => Some("-Zbuild-std=core"),
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
    let disassembly = cmd::output(
        objdump,
        &[
            std::ffi::OsStr::new("-d"),
            std::ffi::OsStr::new("--insn-width=16"),
            exe.as_os_str(),
        ],
    )?;
    let table = cmd::output(
        objdump,
        &[
            std::ffi::OsStr::new("-s"),
            std::ffi::OsStr::new("-j"),
            std::ffi::OsStr::new("static_call_sites"),
            exe.as_os_str(),
        ],
    )?;
    Ok((disassembly, recorded_sites(&table)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86: &str = "\
0000000000013f80 <site_c_loop>:
   13f80:\t2e 2e 2e e8 57 f4 03 00 \tcs cs cs call 513e0 <__SCT__C_KEY>
   13f89:\tc3                   \tret

0000000000014000 <site_rust_loop>:
   14002:\t4c 8b 3d 97 f2 03 00 \tmov    0x3f297(%rip),%r15        # 52b70 <_DYNAMIC+0x228>
   14014:\t41 ff d7             \tcall   *%r15
   14020:\te8 00 00 00 00       \tcall   14100 <core::panicking::panic>

0000000000014100 <site_rust_once>:
   14104:\te8 00 00 00 00       \tcall   14200 <__llvm_retpoline_r11>

0000000000014300 <site_c_inline_once>:
   14308:\t2e 2e 2e e8 f3 01 00 00 \tcs cs cs call 14500 <c_triple>
   14310:\te8 00 00 00 00       \tcall   14600 <core::panicking::panic>

0000000000014400 <site_c_padded>:
   14403:\t2e 2e 2e 2e 2e 2e 2e 2e e8 f3 01 00 00 \tcs cs cs cs cs cs cs cs call 14500 <c_triple>
   14410:\t0f 1f 84 00 00 00 00 00 \tnopl   0x0(%rax,%rax,1)
";

    const A64: &str = "\
0000000000013f80 <site_c_once>:
   13f84:\t94000010 \tbl\t13fc4 <__SCT__C_KEY>
   13f88:\td63f0200 \tblr\tx16
";

    #[test]
    fn calls_are_classified_per_function() {
        assert_eq!(calls_in(X86, "site_c_loop", "C_KEY", &[]), [Call::Direct]);
        assert_eq!(
            calls_in(X86, "site_c_loop", "C_KEY", &[0x13f80]),
            [Call::Site]
        );
        // The panic call is no call of the key.
        assert_eq!(
            calls_in(X86, "site_rust_loop", "RUST_KEY", &[0x14014]),
            [Call::Indirect]
        );
        assert_eq!(
            calls_in(X86, "site_rust_once", "RUST_KEY", &[]),
            [Call::Retpoline]
        );
        assert_eq!(
            calls_in(A64, "site_c_once", "C_KEY", &[0x13f84]),
            [Call::Site, Call::Indirect]
        );
        assert!(calls_in(X86, "site_missing", "C_KEY", &[]).is_empty());
        // A recorded site calls the key's initial target until the first
        // update; the same call, unrecorded, is no call of the key.
        assert_eq!(
            calls_in(X86, "site_c_inline_once", "C_KEY", &[0x14308]),
            [Call::Site]
        );
        assert!(calls_in(X86, "site_c_inline_once", "C_KEY", &[]).is_empty());
        // Alignment padding is prefixes of the site's own instruction: the
        // instruction at 0x14403 holds the site recorded at 0x14408; the
        // no-op after it holds no recorded site.
        assert_eq!(
            calls_in(X86, "site_c_padded", "C_KEY", &[0x14408]),
            [Call::Site]
        );
        assert_eq!(
            calls_in(X86, "site_c_padded", "C_KEY", &[0x14410]),
            [Call::Site]
        );
        assert!(calls_in(X86, "site_c_padded", "C_KEY", &[0x14418]).is_empty());
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
    fn the_site_table_gives_each_records_site() {
        let dump = "\
call-sites:     file format elf64-littleaarch64

Contents of section static_call_sites:
 5a3d8 a8bcfbff 00710000 b0bcfbff f8700000  .....q.......p..
 5a3e8 10000000 f0700000                    .....p..
";
        assert_eq!(
            recorded_sites(dump).unwrap(),
            [0x5a3d8 - 0x44358, 0x5a3e0 - 0x44350, 0x5a3e8 + 0x10]
        );
        assert!(recorded_sites("no section here").is_err());
    }

    #[test]
    fn d8_to_d15_saves_are_found() {
        let dis = "\
0000000000013f80 <saves>:
   13f80:\t6dbb3bef \tstp\td15, d14, [sp, #-80]!
   13f84:\t94000010 \tbl\t13fc4 <__SCT__C_KEY>

0000000000013f90 <clean>:
   13f90:\tf81f0ffe \tstr\tx30, [sp, #-16]!
   13f94:\t1e602000 \tfcmp\td0, d1
";
        assert!(touches_d8_to_d15(dis, "saves"));
        assert!(!touches_d8_to_d15(dis, "clean"));
    }

    #[test]
    fn a_direct_call_of_another_key_is_not_this_keys() {
        let line = "   13f84:\te8 57 f4 03 00\tcall   513e0 <__SCT__OTHER>";
        assert_eq!(classify(line, "C_KEY"), None);
        assert_eq!(classify(line, "OTHER"), Some(Call::Direct));
    }
}
