//! The x86-64 call of an `extern "C"` key: the inline call site of
//! `asm/x86_64/call_site.S` (`cs cs cs call __SCT__NAME`, one aligned
//! 8-byte word, recorded in the call-site table), arguments in
//! `rdi, rsi, rdx, rcx, r8, r9`, then on the stack.

/// Calls the trampoline `$tramp` (a `sym` path) with the C ABI: the
/// arguments (each a [`RegisterArg`](crate::RegisterArg)) in the integer
/// argument registers, the result read as `$ret` (a
/// [`RegisterReturn`](crate::RegisterReturn)) from `rax`. Used by
/// `static_call!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_c_call {
    ($tramp:path, $ret:ty; $($arg:expr),* $(,)?) => {
        $crate::__static_call_zip_registers!(
            __static_call_c_call ($tramp, $ret) [] [$($arg),*] ["rdi" "rsi" "rdx" "rcx" "r8" "r9"]
        )
    };
    // Up to six arguments: all in registers.
    (@emit $tramp:path, $ret:ty; [$(($r:tt, $a:expr))*] []) => {{
        let ret: u64;
        // SAFETY: the trampoline jumps to a function of the key's
        // `extern "C"` type (or returns, for NULL), which receives the
        // arguments in the registers the C ABI assigns them; the compiler
        // is told every register the callee may clobber, and keeps the
        // stack aligned for the call (no `nostack`).
        unsafe {
            $crate::__private::core::arch::asm!(
                $crate::__static_call_asm_call_site!(),
                tramp = sym $tramp,
                $(in($r) $crate::__private::RegisterArg::into_register($a),)*
                lateout("rax") ret,
                clobber_abi("C"),
                options(att_syntax),
            );
            <$ret as $crate::__private::RegisterReturn>::from_register(ret)
        }
    }};
    // Seven arguments: the seventh on the stack, with 8 bytes of padding
    // so the stack stays 16-byte aligned at the call.
    (@emit $tramp:path, $ret:ty; [$(($r:tt, $a:expr))*] [$a6:expr]) => {{
        let ret: u64;
        // SAFETY: as for the register-only form; the seventh argument is
        // at the stack pointer when the call is made, as the ABI places it,
        // and the pushes are undone before the block ends.
        unsafe {
            $crate::__private::core::arch::asm!(
                "sub $8, %rsp",
                "push {a6}",
                $crate::__static_call_asm_call_site!(),
                "add $16, %rsp",
                tramp = sym $tramp,
                a6 = in(reg) $crate::__private::RegisterArg::into_register($a6),
                $(in($r) $crate::__private::RegisterArg::into_register($a),)*
                lateout("rax") ret,
                clobber_abi("C"),
                options(att_syntax),
            );
            <$ret as $crate::__private::RegisterReturn>::from_register(ret)
        }
    }};
    // Eight arguments: the seventh and eighth on the stack.
    (@emit $tramp:path, $ret:ty; [$(($r:tt, $a:expr))*] [$a6:expr, $a7:expr]) => {{
        let ret: u64;
        // SAFETY: as for the seven-argument form, with the eighth argument
        // above the seventh.
        unsafe {
            $crate::__private::core::arch::asm!(
                "push {a7}",
                "push {a6}",
                $crate::__static_call_asm_call_site!(),
                "add $16, %rsp",
                tramp = sym $tramp,
                a6 = in(reg) $crate::__private::RegisterArg::into_register($a6),
                a7 = in(reg) $crate::__private::RegisterArg::into_register($a7),
                $(in($r) $crate::__private::RegisterArg::into_register($a),)*
                lateout("rax") ret,
                clobber_abi("C"),
                options(att_syntax),
            );
            <$ret as $crate::__private::RegisterReturn>::from_register(ret)
        }
    }};
}
