//! A key called from 1000 inline call sites: ten functions of 100 calls
//! each. One definition for the host tests, the host benchmark and the
//! virt-board benchmark kernel, each of which includes this file with
//! `#[macro_use] #[path = ...] mod`.

/// The wrapping sum of ten copies of `$e`: each copy is a call site of its
/// own.
macro_rules! ten {
    ($e:expr) => {
        $e.wrapping_add($e)
            .wrapping_add($e)
            .wrapping_add($e)
            .wrapping_add($e)
            .wrapping_add($e)
            .wrapping_add($e)
            .wrapping_add($e)
            .wrapping_add($e)
            .wrapping_add($e)
    };
}

/// Defines the functions `$name..`, each making 100 calls of `$key` with
/// its argument and returning the wrapping sum of the results xor its
/// `$index` (so no two are identical and none is folded into another), and
/// the array `$fns` of them in order. `wide_result` undoes the xor.
macro_rules! wide_fns {
    ($key:ident, $fns:ident: $($name:ident $index:literal)*) => {
        $(
            #[inline(never)]
            fn $name(x: u64) -> u64 {
                ten!(ten!($key.call_inline(core::hint::black_box(x)))) ^ $index
            }
        )*
        /// The functions holding the key's 1000 sites.
        const $fns: &[fn(u64) -> u64] = &[$($name),*];
    };
}

/// What function `index` of a `wide_fns!` array returns when every one of
/// its 100 calls returned `each`.
#[allow(dead_code)]
pub const fn wide_result(index: usize, each: u64) -> u64 {
    each.wrapping_mul(100) ^ index as u64
}
