//! The function-pointer types a key can carry, and which of them may be NULL
//! or return-zero.

/// A function-pointer type a static call can target: `fn(A, B, ..) -> R`
/// (Rust or `extern "C"` ABI, up to eight arguments).
///
/// ```
/// use static_call::FnPtr;
/// fn add_one(x: u32) -> u32 { x + 1 }
/// let f: fn(u32) -> u32 = add_one;
/// // SAFETY: the address came from a function of this very type.
/// let g = unsafe { <fn(u32) -> u32>::from_addr(f.addr()) };
/// assert_eq!(g(1), 2);
/// ```
///
/// # Safety
///
/// Implementors must be plain function-pointer types: `Copy`, the size of a
/// `usize`, never null, and callable through their address.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the type of a static call",
    note = "keys take `fn(..)` or `extern \"C\" fn(..)` with up to eight arguments and no \
            elided lifetimes: `fn(&str)` means `for<'a> fn(&'a str)`; write `&'static str`, \
            a raw pointer or an owned value"
)]
pub unsafe trait FnPtr: Copy + Send + Sync + 'static {
    /// What a call returns.
    type Output;

    /// The function's address.
    fn addr(self) -> usize;

    /// The function pointer at `addr`.
    ///
    /// # Safety
    ///
    /// `addr` must be non-zero and the address of a function that may be
    /// called with this type's signature and ABI.
    unsafe fn from_addr(addr: usize) -> Self;
}

/// Return types for which the all-zero value is valid, so a key of this
/// return type may be a RET0 key (a call returns zero without calling the
/// previous target).
///
/// ```
/// fn zero_ok<T: static_call::Ret0Safe>() {}
/// zero_ok::<u64>();
/// zero_ok::<Option<&'static u8>>();
/// zero_ok::<*const u8>();
/// ```
///
/// # Safety
///
/// The all-zero bit pattern must be a valid value of the type.
#[diagnostic::on_unimplemented(
    message = "a RET0 static call must return a type whose all-zero value is valid, not `{Self}`",
    label = "RET0 returns all-zero bits, which are not a `{Self}`",
    note = "return an integer, `bool`, a raw pointer, `Option<&T>` or `Option<NonNull<T>>`"
)]
pub unsafe trait Ret0Safe {}

macro_rules! ret0_safe {
    ($($t:ty),* $(,)?) => { $(
        // SAFETY: zero is a valid value of every primitive number type, of
        // `bool` (false), `char` ('\0') and `()`.
        unsafe impl Ret0Safe for $t {}
    )* };
}
ret0_safe!(
    (),
    bool,
    char,
    u8,
    u16,
    u32,
    u64,
    u128,
    usize,
    i8,
    i16,
    i32,
    i64,
    i128,
    isize,
    f32,
    f64
);
// SAFETY: a null raw pointer is a valid raw pointer.
unsafe impl<T> Ret0Safe for *const T {}
// SAFETY: a null raw pointer is a valid raw pointer.
unsafe impl<T> Ret0Safe for *mut T {}
// SAFETY: the null-pointer optimisation makes all-zero `None`.
unsafe impl<T> Ret0Safe for Option<&T> {}
// SAFETY: the null-pointer optimisation makes all-zero `None`.
unsafe impl<T> Ret0Safe for Option<&mut T> {}
// SAFETY: the null-pointer optimisation makes all-zero `None`.
unsafe impl<T> Ret0Safe for Option<core::ptr::NonNull<T>> {}

macro_rules! fn_ptr_impls {
    ($($arg:ident),*) => {
        // SAFETY: a Rust-ABI function pointer is a non-null code address.
        unsafe impl<R: 'static, $($arg: 'static),*> FnPtr for fn($($arg),*) -> R {
            type Output = R;
            #[inline(always)]
            fn addr(self) -> usize {
                self as usize
            }
            #[inline(always)]
            unsafe fn from_addr(addr: usize) -> Self {
                // SAFETY: the caller guarantees `addr` is a function of this
                // signature; function pointers and usize have the same size.
                unsafe { core::mem::transmute::<usize, Self>(addr) }
            }
        }
        // SAFETY: a C-ABI function pointer is a non-null code address.
        unsafe impl<R: 'static, $($arg: 'static),*> FnPtr for extern "C" fn($($arg),*) -> R {
            type Output = R;
            #[inline(always)]
            fn addr(self) -> usize {
                self as usize
            }
            #[inline(always)]
            unsafe fn from_addr(addr: usize) -> Self {
                // SAFETY: as above.
                unsafe { core::mem::transmute::<usize, Self>(addr) }
            }
        }
    };
}
fn_ptr_impls!();
fn_ptr_impls!(A0);
fn_ptr_impls!(A0, A1);
fn_ptr_impls!(A0, A1, A2);
fn_ptr_impls!(A0, A1, A2, A3);
fn_ptr_impls!(A0, A1, A2, A3, A4);
fn_ptr_impls!(A0, A1, A2, A3, A4, A5);
fn_ptr_impls!(A0, A1, A2, A3, A4, A5, A6);
fn_ptr_impls!(A0, A1, A2, A3, A4, A5, A6, A7);

#[cfg(test)]
mod tests {
    use super::*;

    fn seven(x: u32) -> u64 {
        u64::from(x) + 7
    }

    #[test]
    fn address_round_trip_calls_the_same_function() {
        let f: fn(u32) -> u64 = seven;
        let addr = f.addr();
        assert_ne!(addr, 0);
        // SAFETY: `addr` came from a `fn(u32) -> u64`.
        let g = unsafe { <fn(u32) -> u64 as FnPtr>::from_addr(addr) };
        assert_eq!(g(3), 10);
    }
}
