// x86-64: a 7- or 8-argument key has no inline site (its stack arguments
// would break unwinding); `call` and `call_trampoline` work.
static_call::static_call! {
    static EIGHT: extern "C" fn(u64, u64, u64, u64, u64, u64, u64, u64) -> u64 = sum8;
}

extern "C" fn sum8(a: u64, b: u64, c: u64, d: u64, e: u64, f: u64, g: u64, h: u64) -> u64 {
    a + b + c + d + e + f + g + h
}

fn main() {
    let _ = EIGHT.call(1, 2, 3, 4, 5, 6, 7, 8);
    let _ = EIGHT.call_trampoline(1, 2, 3, 4, 5, 6, 7, 8);
    let _ = EIGHT.call_inline(1, 2, 3, 4, 5, 6, 7u64, 8);
}
