//! The x86-64 call of an `extern "C"` key: the inline call site of
//! `asm/x86_64/call_site.S` (`cs cs cs call __SCT__NAME`, one aligned
//! 8-byte word, recorded in the call-site table), arguments in
//! `rdi, rsi, rdx, rcx, r8, r9`; and which call an `extern "C"` key's
//! `call` is.
//!
//! A key with 7 or 8 arguments has no inline site here: the ABI passes the
//! 7th and 8th on the stack, and an `asm!` block that pushes them moves
//! `%rsp` where the compiler's unwind information does not know it. A
//! `.cfi_adjust_cfa_offset` would be right only while the enclosing
//! function's CFA is `%rsp`-based; with frame pointers (or dynamic stack
//! allocation) it is `%rbp`-based, and the asm cannot tell which. So the
//! compiler calls the trampoline for such keys (it places stack arguments
//! and describes them itself), and `call_inline` refuses them at compile
//! time.

/// An `extern "C"` key's default `call` on x86-64: the inline site (it
/// costs nothing over a direct call, unlike the compiler's call in PIE,
/// which goes through the GOT), except for 7 or 8 arguments, where it is
/// the compiler's call of the trampoline (see the module docs).
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_c_default_call {
    ($tramp:path, $site:tt, $ret:ty; $a0:ident, $a1:ident, $a2:ident, $a3:ident, $a4:ident, $a5:ident, $a6:ident $(, $a7:ident)? $(,)?) => {
        $crate::__static_call_c_tramp_call!($tramp, $ret; $a0, $a1, $a2, $a3, $a4, $a5, $a6 $(, $a7)?)
    };
    ($tramp:path, $site:tt, $ret:ty; $($arg:ident),* $(,)?) => {
        $crate::__static_call_c_call!($tramp, $site, $ret; $($arg),*)
    };
}

/// The `call_inline` method of an `extern "C"` key on x86-64: an inline
/// site for up to six arguments; for 7 or 8, a method that no call
/// compiles against, whose error says why and what to call instead.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_inline_method {
    ($vis:vis [($i0:ident: $t0:ty) ($i1:ident: $t1:ty) ($i2:ident: $t2:ty) ($i3:ident: $t3:ty) ($i4:ident: $t4:ty) ($i5:ident: $t5:ty) ($i6:ident: $t6:ty) $(($i7:ident: $t7:ty))?] [$($ret:ty)?] $site:tt) => {
        /// Refused on x86-64 for keys with 7 or 8 arguments: their stack
        /// arguments cannot be pushed by an inline site without breaking
        /// unwinding. Use `call` or `call_trampoline`.
        #[inline(always)]
        #[allow(dead_code, clippy::too_many_arguments)]
        $vis fn call_inline<A: $crate::__private::NoInlineSiteForStackArgs>(
            &self, $i0: $t0, $i1: $t1, $i2: $t2, $i3: $t3, $i4: $t4, $i5: $t5, $i6: A $(, $i7: $t7)?
        ) $(-> $ret)? {
            let _ = ($i0, $i1, $i2, $i3, $i4, $i5 $(, $i7)?);
            match $crate::__private::NoInlineSiteForStackArgs::refused($i6) {}
        }
    };
    ($($tail:tt)*) => {
        $crate::__static_call_inline_method_site! { $($tail)* }
    };
}

/// Implemented by no type: the bound of `call_inline` for a key with 7 or
/// 8 arguments on x86-64, so calling it is a compile-time error that says
/// why (see the module docs).
#[diagnostic::on_unimplemented(
    message = "`call_inline` is refused on x86-64 for `extern \"C\"` keys with 7 or 8 arguments",
    label = "the 7th and 8th arguments go on the stack, and an inline site that pushes them \
             would break backtraces, panics and profilers (no unwind info for the moved `%rsp`)",
    note = "use `call` or `call_trampoline`: the compiler's own call of the key's trampoline, \
            with correct unwind information"
)]
pub trait NoInlineSiteForStackArgs: sealed::Never {
    /// Never called: no type implements the trait.
    fn refused(self) -> core::convert::Infallible;
}

pub mod sealed {
    /// Implemented by no type, so neither is `NoInlineSiteForStackArgs`.
    pub trait Never {}
}

/// An inline site of the key whose trampoline is `$tramp` (a `sym` path),
/// assembled to call `$target` (its initial target where the definition is
/// visible, else the trampoline; the no-op where `$null` is 1, see
/// `asm/x86_64/call_site.S`), with the C ABI: the
/// arguments (each a [`RegisterArg`](crate::RegisterArg)) in the integer
/// argument registers, the result read as `$ret` (a
/// [`RegisterReturn`](crate::RegisterReturn)) from `rax`. Up to six
/// arguments: the registers' worth (see the module docs). Used by
/// `static_call!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_c_call {
    ($tramp:path, $site:tt, $ret:ty; $($arg:expr),* $(,)?) => {
        $crate::__static_call_zip_registers!(
            __static_call_c_call ($tramp, $site, $ret) [] [$($arg),*] ["rdi" "rsi" "rdx" "rcx" "r8" "r9"]
        )
    };
    (@emit $tramp:path, [$target:path, $null:expr], $ret:ty; [$(($r:tt, $a:expr))*] []) => {{
        let ret: u64;
        // SAFETY: the site calls the key's initial target, its
        // trampoline (which jumps to a function of the key's `extern "C"`
        // type, or returns for NULL) or nothing (NULL), and every update
        // leaves one of those; the callee receives the
        // arguments in the registers the C ABI assigns them; the compiler
        // is told every register the callee may clobber, and keeps the
        // stack aligned for the call (no `nostack`).
        unsafe {
            $crate::__private::core::arch::asm!(
                $crate::__static_call_asm_call_site!(),
                tramp = sym $tramp,
                target = sym $target,
                null = const $null,
                $(in($r) $crate::__private::RegisterArg::into_register($a),)*
                lateout("rax") ret,
                clobber_abi("C"),
                options(att_syntax),
            );
            <$ret as $crate::__private::RegisterReturn>::from_register(ret)
        }
    }};
}
