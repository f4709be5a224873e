//! What an `extern "C"` key's call can pass: each argument, and the return
//! value, in one integer register.
//!
//! The call of an `extern "C"` key is an instruction this crate emits itself
//! (`asm!` with the trampoline as a `sym` operand), so it is a direct
//! `call`/`bl` in every relocation model, with or without retpolines. The
//! `asm!` places arguments in the C ABI's integer argument registers
//! (x86-64: `rdi, rsi, rdx, rcx, r8, r9`, then the stack; arm64: `x0`..`x7`)
//! and reads the result from `rax`/`x0`. These traits say which Rust types
//! travel that way unchanged: integers up to 64 bits, `bool`, thin
//! pointers and references. Floating-point values (vector registers),
//! 128-bit integers (register pairs) and aggregates are refused at compile
//! time; pass them behind a pointer, or use a Rust-ABI key.

/// A type the C ABI passes in one integer register, as an argument of an
/// `extern "C"` static call.
///
/// ```
/// fn passes<T: static_call::RegisterArg>() {}
/// passes::<u8>();
/// passes::<&'static u64>();
/// passes::<*mut [u8; 16]>();
/// ```
///
/// ```compile_fail
/// fn passes<T: static_call::RegisterArg>() {}
/// passes::<f64>(); // passed in a vector register
/// ```
///
/// ```compile_fail
/// fn passes<T: static_call::RegisterArg>() {}
/// passes::<&'static str>(); // a wide pointer: two registers
/// ```
///
/// # Safety
///
/// [`into_register`](Self::into_register) must return the value exactly
/// as the C ABI passes it in a 64-bit integer register (narrower integers
/// zero- or sign-extended by their signedness), so that an `extern "C"`
/// function taking `Self` receives `self`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be an argument of an `extern \"C\"` static call",
    label = "not passed in one integer register",
    note = "the call is emitted with asm! and passes each argument in one integer register: \
            integers up to 64 bits, bool, thin pointers and references; pass floats, \
            128-bit integers and structs behind a pointer, or use a Rust-ABI key (`fn(..)`)"
)]
pub unsafe trait RegisterArg: Sized {
    /// The register's value for this argument.
    fn into_register(self) -> u64;
}

/// A type the C ABI returns in one integer register (`rax` / `x0`), as the
/// result of an `extern "C"` static call; `()` for calls returning nothing.
///
/// # Safety
///
/// [`from_register`](Self::from_register) must turn the register an
/// `extern "C"` function returning `Self` leaves behind into that value,
/// reading only the bits the ABI defines for `Self`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the return type of an `extern \"C\"` static call",
    label = "not returned in one integer register",
    note = "the call is emitted with asm! and reads the result from one integer register: \
            integers up to 64 bits, bool, thin pointers, references, or `()`; return \
            floats, 128-bit integers and structs through an out-pointer, or use a Rust-ABI key"
)]
pub unsafe trait RegisterReturn: Sized {
    /// The value of `Self` in `register`.
    ///
    /// # Safety
    ///
    /// `register` must be what an `extern "C"` function whose return type
    /// is `Self` left in the return register.
    unsafe fn from_register(register: u64) -> Self;
}

macro_rules! integers {
    ($($t:ty => $wide:ty),* $(,)?) => { $(
        // SAFETY: the value is extended from its own width by its own
        // signedness (`as $wide` then to 64 bits), which is how the C ABI
        // passes it.
        unsafe impl RegisterArg for $t {
            #[inline(always)]
            fn into_register(self) -> u64 {
                self as $wide as u64
            }
        }
        // SAFETY: the ABI defines the low bits of the width of `$t`; the
        // truncating cast reads exactly those, and every bit pattern is a
        // valid integer.
        unsafe impl RegisterReturn for $t {
            #[inline(always)]
            unsafe fn from_register(register: u64) -> Self {
                register as $t
            }
        }
    )* };
}
integers!(
    u8 => u64, u16 => u64, u32 => u64, u64 => u64, usize => u64,
    i8 => i64, i16 => i64, i32 => i64, i64 => i64, isize => i64,
);

// SAFETY: `bool` is passed as the integer 0 or 1.
unsafe impl RegisterArg for bool {
    #[inline(always)]
    fn into_register(self) -> u64 {
        u64::from(self)
    }
}
// SAFETY: a function returning `bool` leaves 0 or 1 in the low byte; any
// non-zero byte is read as `true`, so no invalid `bool` is ever made.
unsafe impl RegisterReturn for bool {
    #[inline(always)]
    unsafe fn from_register(register: u64) -> Self {
        register as u8 != 0
    }
}

// SAFETY: nothing is passed for `()`; nothing is read.
unsafe impl RegisterReturn for () {
    #[inline(always)]
    unsafe fn from_register(_: u64) -> Self {}
}

macro_rules! pointers {
    ($($(#[$doc:meta])* [$($g:tt)*] $t:ty => |$r:ident| $from:expr;)*) => { $(
        // SAFETY: a thin pointer is passed as its address.
        unsafe impl<$($g)*> RegisterArg for $t {
            #[inline(always)]
            fn into_register(self) -> u64 {
                // The address, as the ABI passes a pointer.
                #[allow(clippy::transmutes_expressible_as_ptr_casts)]
                // SAFETY: `$t` is a thin pointer type, the size of a u64
                // on the 64-bit targets that emit calls.
                unsafe { core::mem::transmute_copy::<$t, usize>(&self) as u64 }
            }
        }
        // SAFETY: the register holds an address returned by a function of
        // return type `$t` (the caller's contract), so it is a valid `$t`.
        unsafe impl<$($g)*> RegisterReturn for $t {
            #[inline(always)]
            unsafe fn from_register($r: u64) -> Self {
                $from
            }
        }
    )* };
}
pointers! {
    [T] *const T => |r| r as usize as *const T;
    [T] *mut T => |r| r as usize as *mut T;
    ['a, T] &'a T => |r| {
        // SAFETY: the caller's contract: a reference returned by the callee.
        unsafe { &*(r as usize as *const T) }
    };
    ['a, T] &'a mut T => |r| {
        // SAFETY: the caller's contract: a reference returned by the callee.
        unsafe { &mut *(r as usize as *mut T) }
    };
    ['a, T] Option<&'a T> => |r| {
        // SAFETY: the caller's contract: null or a reference from the callee.
        unsafe { (r as usize as *const T).as_ref() }
    };
    ['a, T] Option<&'a mut T> => |r| {
        // SAFETY: the caller's contract: null or a reference from the callee.
        unsafe { (r as usize as *mut T).as_mut() }
    };
    [T] core::ptr::NonNull<T> => |r| {
        // SAFETY: the caller's contract: a non-null pointer from the callee.
        unsafe { core::ptr::NonNull::new_unchecked(r as usize as *mut T) }
    };
    [T] Option<core::ptr::NonNull<T>> => |r| core::ptr::NonNull::new(r as usize as *mut T);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn narrow_integers_are_extended_by_signedness() {
        assert_eq!((-1i8).into_register(), u64::MAX);
        assert_eq!(0xffu8.into_register(), 0xff);
        assert_eq!((-2i32).into_register(), (-2i64) as u64);
        assert_eq!(u32::MAX.into_register(), 0xffff_ffff);
        assert_eq!(true.into_register(), 1);
    }

    #[test]
    fn returns_read_only_the_defined_bits() {
        // SAFETY: every value below is one a callee may leave behind, with
        // garbage above the defined width.
        unsafe {
            assert_eq!(u8::from_register(0xdead_beef_0000_0142), 0x42);
            assert_eq!(i16::from_register(0x1234_ffff), -1);
            assert!(bool::from_register(0xff00_0001));
            assert!(!bool::from_register(0xff00_0000));
        }
    }

    #[test]
    fn pointers_round_trip() {
        let x = 7u32;
        let r = (&x).into_register();
        assert_eq!(r, &x as *const u32 as u64);
        // SAFETY: `r` is the address of the live `x`.
        let back: &u32 = unsafe { <&u32>::from_register(r) };
        assert_eq!(*back, 7);
        // SAFETY: 0 is a valid `Option<&T>` (None).
        assert!(unsafe { Option::<&u32>::from_register(0) }.is_none());
        // SAFETY: 0 is a valid `Option<NonNull<T>>` (None).
        assert!(unsafe { Option::<core::ptr::NonNull<u8>>::from_register(0) }.is_none());
    }
}
