//! A minimal test runner speaking the harness's UART protocol:
//!
//! ```text
//! test <name> ... ok
//! test <name> ... FAILED: <reason>
//! kernel: N passed, M failed
//! ```
//!
//! then the kernel's `exit` with status 0 when nothing failed, 1 otherwise.
//!
//! Shared by the test kernels, each of which includes this file with
//! `#[path = ...] pub mod runner;` and provides `println!` and `exit`.

use alloc::string::String;

use crate::println;

/// What a test returns: `Err` carries the reason printed after `FAILED:`.
pub type TestResult = Result<(), String>;

/// A named test.
pub struct Test {
    /// Name printed in the protocol line.
    pub name: &'static str,
    /// The test body.
    pub run: fn() -> TestResult,
}

/// A slice of [`Test`]s named after their functions; attributes such as
/// `#[cfg(...)]` may precede each name.
#[macro_export]
macro_rules! tests {
    ($($(#[$attr:meta])* $name:ident),* $(,)?) => {
        &[$($(#[$attr])* $crate::runner::Test { name: stringify!($name), run: $name }),*]
    };
}

/// Fails the current test with a formatted reason unless `cond` holds.
#[macro_export]
macro_rules! check {
    ($cond:expr, $($reason:tt)+) => {
        if !$cond {
            return Err(alloc::format!($($reason)+));
        }
    };
}

/// Fails the current test unless both values are equal.
#[macro_export]
macro_rules! check_eq {
    ($left:expr, $right:expr $(,)?) => {{
        let (left, right) = (&$left, &$right);
        if left != right {
            return Err(alloc::format!(
                "{} == {:?}, expected {:?}",
                stringify!($left),
                left,
                right
            ));
        }
    }};
}

/// Runs the tests in order, prints one protocol line each and the summary,
/// then ends the run. A test's own output comes before its result line.
pub fn run(tests: &[Test]) -> ! {
    let mut passed = 0;
    let mut failed = 0;
    for test in tests {
        match (test.run)() {
            Ok(()) => {
                passed += 1;
                println!("test {} ... ok", test.name);
            }
            Err(reason) => {
                failed += 1;
                // The reason must stay on the protocol line.
                let reason = reason.replace('\n', " | ");
                println!("test {} ... FAILED: {reason}", test.name);
            }
        }
    }
    println!("kernel: {passed} passed, {failed} failed");
    crate::exit(if failed == 0 { 0 } else { 1 })
}
