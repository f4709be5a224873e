//! Call sites: the instruction a key's `call` compiles to.
//!
//! A Rust-ABI key's `call` is an ordinary call of the trampoline, declared
//! as an external function; how the compiler emits it depends on the
//! relocation model (on x86-64 PIE it loads the address from the GOT, see
//! the README). An `extern "C"` key's inline site (`call_inline`, and
//! `call` where the site is the cheaper call, see each backend's
//! `__static_call_c_default_call`) is emitted here, with `asm!`
//! and the trampoline as a `sym` operand, so it is a direct `call`/`bl` in
//! every relocation model and with retpolines: arguments go in the C ABI's
//! integer registers ([`RegisterArg`](crate::RegisterArg)), the result
//! comes back in the return register ([`RegisterReturn`](crate::RegisterReturn)),
//! and `clobber_abi("C")` tells the compiler what the callee may change.
//! Without `options(nostack)` the compiler keeps the stack aligned for the
//! call and keeps nothing in a red zone below the stack pointer.

/// Pairs a call's arguments with the ABI's argument registers, in order,
/// and hands `[(register, argument)..] [arguments past the registers..]` to
/// the architecture's `$emit!(@emit ..)`. Used by `__static_call_c_call!`.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_zip_registers {
    ($emit:ident ($($head:tt)*) [$($done:tt)*] [$a:expr $(, $rest:expr)*] [$r:tt $($regs:tt)*]) => {
        $crate::__static_call_zip_registers!(
            $emit ($($head)*) [$($done)* ($r, $a)] [$($rest),*] [$($regs)*]
        )
    };
    ($emit:ident ($($head:tt)*) [$($done:tt)*] [$($rest:expr),*] [$($regs:tt)*]) => {
        $crate::$emit!(@emit $($head)*; [$($done)*] [$($rest),*])
    };
}

pub(crate) mod table;

#[cfg(static_call_backend = "aarch64")]
mod aarch64;
#[cfg(static_call_backend = "x86_64")]
pub(crate) mod x86_64;

/// The compiler's own call of an `extern "C"` key's trampoline `$tramp`
/// (declared as an external `extern "C"` function): a direct `bl` on
/// arm64, a `call` (through the GOT in x86-64 PIE) or a tail call on
/// x86-64; on the generic backend, a call of the Rust trampoline that
/// calls through the key's atomic pointer. The arguments are held to the
/// rules of the inline site, so a key that builds with one call kind
/// builds with every other, on every target. Used by `call_trampoline`
/// and, where it is the cheaper call, by `call`.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_c_tramp_call {
    ($tramp:path, $ret:ty; $($arg:ident),* $(,)?) => {{
        $($crate::__private::assert_register_arg(&$arg);)*
        $crate::__private::assert_register_return::<$ret>();
        $tramp($($arg),*)
    }};
}

/// The generic backend has no inline site: its `call_inline` is the call
/// of its trampoline.
#[cfg(static_call_backend = "generic")]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_c_call {
    ($tramp:path, $site:tt, $ret:ty; $($arg:ident),* $(,)?) => {
        $crate::__static_call_c_tramp_call!($tramp, $ret; $($arg),*)
    };
}

/// An `extern "C"` key's default `call` on the generic backend: its
/// trampoline, the only call there is.
#[cfg(static_call_backend = "generic")]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_c_default_call {
    ($tramp:path, $site:tt, $ret:ty; $($arg:ident),* $(,)?) => {
        $crate::__static_call_c_tramp_call!($tramp, $ret; $($arg),*)
    };
}

/// The `call_inline` method of an `extern "C"` key, where the backend
/// emits an inline site for every arity. Used by `static_call!`.
#[cfg(not(static_call_backend = "x86_64"))]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_inline_method {
    ($($tail:tt)*) => {
        $crate::__static_call_inline_method_site! { $($tail)* }
    };
}

/// A `call_inline` method that emits the backend's inline site.
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_inline_method_site {
    ($vis:vis [$(($id:ident: $t:ty))*] [$($ret:ty)?] $site:tt) => {
        /// Calls the key's current target through an inline call site: a
        /// `call`/`bl` instruction the crate emits and records, which
        /// every update rewrites to call the target directly. See the
        /// key's documentation for when it beats the default `call`.
        #[inline(always)]
        #[allow(dead_code, clippy::too_many_arguments)]
        $vis fn call_inline(&self, $($id: $t),*) $(-> $ret)? {
            $crate::__static_call_c_call!(
                __tramp, $site, $crate::__static_call_key!(@ret_type $($ret)?); $($id),*
            )
        }
    };
}

/// Holds a generic backend's `extern "C"` key to the argument rule.
#[doc(hidden)]
#[inline(always)]
pub fn assert_register_arg<T: crate::RegisterArg>(_: &T) {}

/// Holds a generic backend's `extern "C"` key to the return-type rule.
#[doc(hidden)]
#[inline(always)]
pub fn assert_register_return<T: crate::RegisterReturn>() {}

/// How many inline call sites the key whose trampoline is at `tramp` has
/// in this program's call-site table (0 on the generic backend, whose
/// calls go through a pointer, and for Rust-ABI keys, whose calls the
/// compiler emits). Takes the patch lock only to prepare the table on
/// first use: once prepared it is read with atomic loads, as the trap
/// handler reads it, so counting works anywhere, including inside
/// [`each_of`]'s closure. (A count racing with `forget_call_sites` may
/// see part of the range forgotten.)
pub(crate) fn count_of(tramp: usize) -> usize {
    #[cfg(any(static_call_backend = "aarch64", static_call_backend = "x86_64"))]
    {
        if let Some(t) = table::live::published() {
            return t.sites_of(tramp).count();
        }
        crate::writer::reading_under_patch_lock(|| {
            table::live::locked().map_or(0, |t| t.sites_of(tramp).count())
        })
    }
    #[cfg(static_call_backend = "generic")]
    {
        let _ = tramp;
        0
    }
}

/// Calls `f` with the address of each inline call site of the key whose
/// trampoline is at `tramp`, in address order, with the patch lock held
/// (so no update runs meanwhile; an update `f` starts is refused in Linux
/// user space, see `writer::reading_under_patch_lock`).
pub(crate) fn each_of(tramp: usize, f: &mut dyn FnMut(usize)) {
    #[cfg(any(static_call_backend = "aarch64", static_call_backend = "x86_64"))]
    {
        crate::writer::reading_under_patch_lock(|| {
            if let Ok(t) = table::live::locked() {
                t.sites_of(tramp).for_each(f);
            }
        })
    }
    #[cfg(static_call_backend = "generic")]
    {
        let _ = (tramp, f);
    }
}

/// Forgets the inline call sites in `text`: no update touches them again.
/// A kernel calls it before it frees or unmaps text (init text, say) that
/// holds calls of keys; returns how many sites were forgotten.
///
/// ```
/// static_call::static_call! { static K: extern "C" fn() = NULL; }
/// #[inline(never)]
/// fn caller() { K.call() }
/// # fn main() {
/// caller();
/// let sites = K.inline_sites();
/// // A range that holds no site forgets nothing.
/// // SAFETY: no site in the range runs again (there is none).
/// assert_eq!(unsafe { static_call::forget_call_sites(0..1) }, 0);
/// assert_eq!(K.inline_sites(), sites);
/// # }
/// ```
///
/// # Safety
///
/// No call site in `text` may run again: its calls would keep the target
/// they had when it was forgotten, which later updates may free. No CPU
/// may be executing one of them, or be stopped on a breakpoint at one
/// (x86-64: a trap there that reaches the handler after the site is
/// forgotten is no longer recognised, and goes to whatever handled traps
/// before this crate).
pub unsafe fn forget_call_sites(text: core::ops::Range<usize>) -> usize {
    #[cfg(any(static_call_backend = "aarch64", static_call_backend = "x86_64"))]
    {
        let _lock = crate::writer::patch_lock();
        table::live::locked().map_or(0, |t| t.forget(text))
    }
    #[cfg(static_call_backend = "generic")]
    {
        let _ = text;
        0
    }
}
