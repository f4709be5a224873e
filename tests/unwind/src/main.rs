//! Unwinding through the call of an `extern "C"` key: a backtrace captured
//! inside the target must find the function that called the key, and a
//! panic inside the target must end in the clean abort of a panic that
//! cannot unwind out of an `extern "C"` function (SIGABRT), not a crash of
//! the unwinder. Keys with 6 arguments (all in registers), 7 and 8 (on
//! x86-64 the last ones go on the stack), called by `call` and by
//! `call_trampoline`.
//!
//! `cargo xtask test unwind` builds this program debug and release, with
//! and without `-C force-frame-pointers=yes`, and runs it. Without
//! arguments it runs every case as a child process of itself
//! (`unwind CASE`) and prints `unwind CASE ok` or `unwind CASE FAILED: ..`
//! for each.

use std::backtrace::Backtrace;
use std::process::{Command, ExitCode};
use std::sync::Mutex;

/// What a target does: capture a backtrace, or panic.
static MODE: Mutex<Mode> = Mutex::new(Mode::Backtrace);
/// The last backtrace a target captured.
static CAPTURED: Mutex<String> = Mutex::new(String::new());

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Backtrace,
    Panic,
}

fn target_body(sum: u64) -> u64 {
    let mode = *MODE.lock().unwrap();
    match mode {
        Mode::Backtrace => {
            *CAPTURED.lock().unwrap() = Backtrace::force_capture().to_string();
            sum
        }
        Mode::Panic => panic!("a panic inside a key's target ({sum})"),
    }
}

extern "C" fn target6(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> u64 {
    target_body(a + b + c + d + e + f)
}

#[allow(clippy::too_many_arguments)]
extern "C" fn target7(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64) -> u64 {
    target_body(a + b + c + d + e + f + g)
}

#[allow(clippy::too_many_arguments)]
extern "C" fn target8(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64) -> u64 {
    target_body(a + b + c + d + e + f + g + h)
}

static_call::static_call! {
    static KEY6: extern "C" fn(u64, u64, u64, u64, u64, u64) -> u64 = target6;
    static KEY7: extern "C" fn(u64, u64, u64, u64, u64, u64, u64) -> u64 = target7;
    static KEY8: extern "C" fn(u64, u64, u64, u64, u64, u64, u64, u64) -> u64 = target8;
}

// The callers a backtrace must show. `black_box` keeps the arguments
// computed at run time and the calls from being folded away.
use std::hint::black_box;

#[inline(never)]
fn unwind_caller_6_call(x: u64) -> u64 {
    KEY6.call(x, 2, 3, 4, 5, 6) + black_box(1)
}

#[inline(never)]
fn unwind_caller_7_call(x: u64) -> u64 {
    KEY7.call(x, 2, 3, 4, 5, 6, 7) + black_box(1)
}

#[inline(never)]
fn unwind_caller_8_call(x: u64) -> u64 {
    KEY8.call(x, 2, 3, 4, 5, 6, 7, 8) + black_box(1)
}

#[inline(never)]
fn unwind_caller_7_trampoline(x: u64) -> u64 {
    // Adds 2, not 1: a body like `unwind_caller_7_call`'s (where `call`
    // is the trampoline call too) would be merged with it in release.
    KEY7.call_trampoline(x, 2, 3, 4, 5, 6, 7) + black_box(2)
}

#[inline(never)]
fn unwind_caller_8_trampoline(x: u64) -> u64 {
    KEY8.call_trampoline(x, 2, 3, 4, 5, 6, 7, 8) + black_box(2)
}

/// Each caller by name, with the result it returns for 1 when the target
/// returns.
const CALLERS: &[(&str, fn(u64) -> u64, u64)] = &[
    ("unwind_caller_6_call", unwind_caller_6_call, 22),
    ("unwind_caller_7_call", unwind_caller_7_call, 29),
    ("unwind_caller_8_call", unwind_caller_8_call, 37),
    ("unwind_caller_7_trampoline", unwind_caller_7_trampoline, 30),
    ("unwind_caller_8_trampoline", unwind_caller_8_trampoline, 38),
];

/// The child: runs one case and reports through its exit status.
fn child(mode: &str, caller: &str) -> ExitCode {
    let Some(&(name, f, want)) = CALLERS.iter().find(|(n, ..)| *n == caller) else {
        eprintln!("unwind: no caller {caller}");
        return ExitCode::from(2);
    };
    match mode {
        "backtrace" => {
            *MODE.lock().unwrap() = Mode::Backtrace;
            let got = f(black_box(1));
            let trace = CAPTURED.lock().unwrap().clone();
            if got != want {
                eprintln!("{name} returned {got}, expected {want}");
                return ExitCode::FAILURE;
            }
            if !trace.contains(name) {
                eprintln!("the backtrace does not show {name}:\n{trace}");
                return ExitCode::FAILURE;
            }
            ExitCode::SUCCESS
        }
        "panic" => {
            *MODE.lock().unwrap() = Mode::Panic;
            f(black_box(1));
            eprintln!("the target's panic returned");
            ExitCode::FAILURE
        }
        _ => ExitCode::from(2),
    }
}

/// Runs `mode caller` as a child process and says what went wrong, if
/// anything.
fn check(mode: &str, caller: &str) -> Result<(), String> {
    use std::os::unix::process::ExitStatusExt;
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let out = Command::new(exe)
        .args([mode, caller])
        // The abort path prints a backtrace whatever this says; keep the
        // captured one free of the environment's choice.
        .env("RUST_BACKTRACE", "0")
        .output()
        .map_err(|e| e.to_string())?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stderr.lines().rev().take(3).collect::<Vec<_>>().join(" | ");
    match (mode, out.status.code(), out.status.signal()) {
        ("backtrace", Some(0), _) => Ok(()),
        ("panic", _, Some(signal)) if signal == SIGABRT => {
            if stderr.contains("panic in a function that cannot unwind") {
                Ok(())
            } else {
                Err(format!("aborted without the cannot-unwind message: {last}"))
            }
        }
        (_, code, signal) => Err(format!(
            "exit code {code:?}, signal {signal:?}; stderr ends: {last}"
        )),
    }
}

/// The signal of `abort()` on Linux.
const SIGABRT: i32 = 6;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, caller] = args.as_slice() {
        return child(mode, caller);
    }
    let mut failed = 0;
    for mode in ["backtrace", "panic"] {
        for &(caller, ..) in CALLERS {
            match check(mode, caller) {
                Ok(()) => println!("unwind {mode}:{caller} ok"),
                Err(e) => {
                    failed += 1;
                    println!("unwind {mode}:{caller} FAILED: {e}");
                }
            }
        }
    }
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
