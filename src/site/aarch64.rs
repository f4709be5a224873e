//! The arm64 call of an `extern "C"` key: the inline call site of
//! `asm/aarch64/call_site.S` (`bl __SCT__NAME`, recorded in the call-site
//! table), arguments in `x0`..`x7`, the result in `x0`; and which call
//! an `extern "C"` key's `call` is.

/// An `extern "C"` key's default `call` on arm64: the cheaper of the two
/// calls for the target the caller is built for.
///
/// Where the ABI has FP/SIMD registers (`target_feature = "neon"`:
/// `aarch64-unknown-none`, Linux), an `asm!` call must declare `v8`-`v15`
/// clobbered whole (it cannot say "only their upper halves"), so every
/// function holding an inline site saves and restores `d8`-`d15`: about 8
/// instructions and 64 bytes of stack per entry, against the 2 the
/// trampoline adds (`bti c; b target`), and a site is never a tail call.
/// There the compiler's own call of the trampoline is cheaper: a direct
/// `bl` (or `b`) in every relocation model. Without FP/SIMD registers
/// (`aarch64-unknown-none-softfloat`) the site costs nothing extra and is
/// the default. The `cfg` is evaluated in the caller's crate.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_c_default_call {
    ($tramp:path, $site:tt, $ret:ty; $($arg:ident),* $(,)?) => {{
        #[cfg(target_feature = "neon")]
        #[allow(clippy::let_unit_value)]
        let ret = $crate::__static_call_c_tramp_call!($tramp, $ret; $($arg),*);
        #[cfg(not(target_feature = "neon"))]
        #[allow(clippy::let_unit_value)]
        let ret = $crate::__static_call_c_call!($tramp, $site, $ret; $($arg),*);
        ret
    }};
}

/// An inline site of the key whose trampoline is `$tramp` (a `sym` path),
/// assembled to call `$target` (its initial target where the definition is
/// visible, else the trampoline; `nop` where `$null` is 1, see
/// `asm/aarch64/call_site.S`), with the C ABI: the
/// arguments (each a [`RegisterArg`](crate::RegisterArg)) in `x0`..`x7`,
/// the result read as `$ret` (a [`RegisterReturn`](crate::RegisterReturn))
/// from `x0`. Used by `static_call!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_c_call {
    ($tramp:path, $site:tt, $ret:ty; $($arg:expr),* $(,)?) => {
        $crate::__static_call_zip_registers!(
            __static_call_c_call ($tramp, $site, $ret) []
            [$($arg),*] ["x0" "x1" "x2" "x3" "x4" "x5" "x6" "x7"]
        )
    };
    (@emit $tramp:path, [$target:path, $null:expr], $ret:ty; [$(($r:tt, $a:expr))*] []) => {{
        let ret: u64;
        // SAFETY: the site calls the key's initial target, its
        // trampoline (which branches to a function of the key's
        // `extern "C"` type, or returns for NULL) or nothing (NULL), and
        // every update leaves one of those; the callee receives the
        // arguments in the registers the C ABI assigns them; `bl` sets the
        // link register, which `clobber_abi("C")` declares clobbered along
        // with every register the callee may change.
        unsafe {
            $crate::__private::core::arch::asm!(
                $crate::__static_call_asm_call_site!(),
                tramp = sym $tramp,
                target = sym $target,
                null = const $null,
                $(in($r) $crate::__private::RegisterArg::into_register($a),)*
                lateout("x0") ret,
                clobber_abi("C"),
            );
            <$ret as $crate::__private::RegisterReturn>::from_register(ret)
        }
    }};
}
