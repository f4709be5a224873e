//! A user's crate calling static-call keys: `cargo xtask test call-sites`
//! builds it per target, relocation model and profile, disassembles the
//! functions below and checks the instruction each key's call is.
//!
//! Each `site_*` function calls one key once and in a loop, as users do;
//! they are `#[unsafe(no_mangle)]` so the harness finds them by name.
#![cfg_attr(target_os = "none", no_std, no_main)]

use core::hint::black_box;

static_call::static_call! {
    /// A Rust-ABI key: the compiler emits its call.
    pub static RUST_KEY: fn(u64) -> u64 = triple;
    /// An `extern "C"` key: `call` is the cheaper call for the target,
    /// `call_inline` the crate's inline site, `call_trampoline` the
    /// compiler's call of the trampoline.
    pub static C_KEY: extern "C" fn(u64) -> u64 = c_triple;
    /// Eight arguments: on x86-64 two of them go on the stack.
    pub static C8_KEY: extern "C" fn(u64, u64, u64, u64, u64, u64, u64, u64) -> u64 = c_sum8;
}

fn triple(x: u64) -> u64 {
    x.wrapping_mul(3)
}

extern "C" fn c_triple(x: u64) -> u64 {
    x.wrapping_mul(3)
}

#[allow(clippy::too_many_arguments)]
extern "C" fn c_sum8(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64) -> u64 {
    a.wrapping_add(b ^ c ^ d ^ e ^ f ^ g ^ h)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub fn site_rust_once(x: u64) -> u64 {
    RUST_KEY.call(x)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub fn site_rust_loop(n: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(RUST_KEY.call(i));
    }
    sum
}

#[unsafe(no_mangle)]
#[inline(never)]
pub fn site_c_once(x: u64) -> u64 {
    C_KEY.call(x)
}

#[unsafe(no_mangle)]
#[inline(never)]
pub fn site_c_loop(n: u64) -> u64 {
    let mut sum = 0u64;
    for i in 0..n {
        sum = sum.wrapping_add(C_KEY.call(i));
    }
    sum
}

#[unsafe(no_mangle)]
#[inline(never)]
pub fn site_c_inline_once(x: u64) -> u64 {
    // Arguments unlike `site_c_once`'s, so release builds do not merge
    // the functions where their code is the same.
    C_KEY.call_inline(x.wrapping_add(1))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub fn site_c_tramp_once(x: u64) -> u64 {
    C_KEY.call_trampoline(x.wrapping_add(2))
}

#[unsafe(no_mangle)]
#[inline(never)]
pub fn site_c8_once(x: u64) -> u64 {
    C8_KEY.call(x, 1, 2, 3, 4, 5, 6, 7)
}

fn run() -> u64 {
    let n = black_box(10);
    site_rust_once(n)
        ^ site_rust_loop(n)
        ^ site_c_once(n)
        ^ site_c_loop(n)
        ^ site_c_inline_once(n)
        ^ site_c_tramp_once(n)
        ^ site_c8_once(n)
}

#[cfg(not(target_os = "none"))]
fn main() {
    // 3 * 10 twice and 3 * (0 + .. + 9) twice: the XOR of equal pairs;
    // then 3 * 11, 3 * 12, and 10 + (1 ^ 2 ^ .. ^ 7) = 10.
    assert_eq!(run(), 33 ^ 36 ^ 10);
}

#[cfg(target_os = "none")]
#[unsafe(no_mangle)]
pub extern "C" fn _start() -> ! {
    black_box(run());
    loop {
        core::hint::spin_loop();
    }
}

#[cfg(target_os = "none")]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
