//! The typed key API: [`StaticCall`], and the macros that define and
//! declare keys.

use crate::arch::Backend;
use crate::arch::active::{Active, Slot};
use crate::fnptr::{FnPtr, Ret0Safe};
use crate::{Error, TextWriter, writer};

/// A static call key for functions of type `F`.
///
/// Keys are made by [`static_call!`](crate::static_call) (or brought in
/// from another crate by [`declare_static_call!`](crate::declare_static_call));
/// each key dereferences to its `StaticCall`. Calls never take a lock;
/// updates are serialized by the crate's patch lock.
///
/// ```
/// static_call::static_call! {
///     pub static LOG: fn(&'static str) = quiet;
/// }
/// fn quiet(_: &str) {}
///
/// # fn main() {
/// LOG.call("hello");
/// assert_eq!(LOG.name(), "LOG");
/// # }
/// ```
pub struct StaticCall<F: FnPtr> {
    tramp: F,
    ret0: F,
    slot: &'static Slot,
    name: &'static str,
}

impl<F: FnPtr> StaticCall<F> {
    #[doc(hidden)]
    /// # Safety
    ///
    /// `tramp`, `ret0` and `slot` must be the key's trampoline, return-zero
    /// function and slot as emitted by `static_call!`.
    pub const unsafe fn __new(tramp: F, ret0: F, slot: &'static Slot, name: &'static str) -> Self {
        StaticCall {
            tramp,
            ret0,
            slot,
            name,
        }
    }

    /// The key's name as written in the macro.
    ///
    /// ```
    /// static_call::static_call! { static HOOK: fn() = NULL; }
    /// # fn main() {
    /// assert_eq!(HOOK.name(), "HOOK");
    /// # }
    /// ```
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The trampoline as an ordinary function pointer: calling it is a call
    /// through the key, so it always reaches the current target. Use it
    /// where a `fn` value is needed (a vtable, a callback registry).
    ///
    /// ```
    /// static_call::static_call! { static DOUBLE: fn(u32) -> u32 = double; }
    /// fn double(x: u32) -> u32 { x * 2 }
    ///
    /// # fn main() {
    /// let f: fn(u32) -> u32 = DOUBLE.trampoline();
    /// assert_eq!(f(21), 42);
    /// # }
    /// ```
    pub fn trampoline(&self) -> F {
        self.tramp
    }

    /// The address of the trampoline's entry.
    ///
    /// ```
    /// static_call::static_call! { static HOOK: fn() = NULL; }
    /// # fn main() {
    /// assert_ne!(HOOK.trampoline_addr(), 0);
    /// # }
    /// ```
    pub fn trampoline_addr(&self) -> usize {
        self.tramp.addr()
    }

    /// The current target, `None` for a NULL key. A RET0 key answers its
    /// return-zero function (see [`is_ret0`](Self::is_ret0)).
    ///
    /// # Panics
    ///
    /// If the trampoline's bytes are no longer a trampoline (something other
    /// than this crate wrote over them).
    ///
    /// ```
    /// static_call::static_call! { static OP: fn(u32) -> u32 = inc; }
    /// fn inc(x: u32) -> u32 { x + 1 }
    ///
    /// # fn main() {
    /// let f = OP.query().unwrap();
    /// assert_eq!(f(1), 2);
    /// assert_eq!(f as usize, inc as fn(u32) -> u32 as usize);
    /// # }
    /// ```
    pub fn query(&self) -> Option<F> {
        // SAFETY: the trampoline and slot are this key's (constructor
        // contract).
        let addr = unsafe { Active::query(self.tramp.addr(), self.slot) }
            .unwrap_or_else(|e| panic!("static call {}: {e}", self.name));
        // SAFETY: a key only ever targets functions of type `F` (updates
        // are typed) or its own return-zero function, which has type `F`.
        (addr != 0).then(|| unsafe { F::from_addr(addr) })
    }

    /// Whether the key currently returns zero without calling anything.
    ///
    /// ```
    /// static_call::static_call! { static COUNT: fn() -> u64 = RET0; }
    /// # fn main() {
    /// assert!(COUNT.is_ret0());
    /// assert_eq!(COUNT.call(), 0);
    /// # }
    /// ```
    pub fn is_ret0(&self) -> bool {
        self.query().is_some_and(|f| f.addr() == self.ret0.addr())
    }

    /// Retargets the key to `f`, using the installed text writer (see
    /// [`set_default_writer`](crate::set_default_writer)).
    ///
    /// When it returns `Ok`, the new target is in place and visible to
    /// instruction fetch on every CPU (cache maintenance done); if the
    /// writer synchronizes CPUs (the Linux writers do), no call that enters
    /// the trampoline afterwards reaches the old target. Calls racing with
    /// the update reach the old or the new target, never anything else.
    /// Data the new target reads should be published before `update`.
    ///
    /// On `Err` nothing was written.
    ///
    /// ```
    /// static_call::static_call! { static OP: fn(u32) -> u32 = inc; }
    /// fn inc(x: u32) -> u32 { x + 1 }
    /// fn dec(x: u32) -> u32 { x - 1 }
    ///
    /// # fn main() {
    /// # if static_call::DEFAULT_WRITER_AVAILABLE {
    /// OP.update(dec).unwrap();
    /// assert_eq!(OP.call(5), 4);
    /// # }
    /// # }
    /// ```
    pub fn update(&self, f: F) -> Result<(), Error> {
        self.retarget(f.addr(), None)
    }

    /// As [`update`](Self::update), through `writer`.
    ///
    /// ```
    /// static_call::static_call! { static OP: fn(u32) -> u32 = inc; }
    /// fn inc(x: u32) -> u32 { x + 1 }
    /// fn dec(x: u32) -> u32 { x - 1 }
    ///
    /// # fn main() {
    /// # #[cfg(target_os = "linux")] {
    /// OP.update_with(dec, &static_call::writer::linux::Remap).unwrap();
    /// assert_eq!(OP.call(5), 4);
    /// # }
    /// # }
    /// ```
    pub fn update_with(&self, f: F, writer: &dyn TextWriter) -> Result<(), Error> {
        self.retarget(f.addr(), Some(writer))
    }

    fn retarget(&self, target: usize, writer: Option<&dyn TextWriter>) -> Result<(), Error> {
        let writer = match (writer, Active::WRITES_TEXT) {
            (w, true) => w,
            (_, false) => Some(&writer::Direct as &dyn TextWriter),
        };
        writer::with_patch_lock(writer, |w| {
            // SAFETY: the trampoline and slot are this key's; `target` is a
            // function of type `F`, this key's return-zero function, or 0
            // for a key whose return type allows NULL; the lock is held.
            unsafe { Active::retarget(self.tramp.addr(), self.slot, target, w) }
        })
    }
}

impl<F: FnPtr> StaticCall<F>
where
    F::Output: NullSafe,
{
    /// Makes the key NULL: a call does nothing and returns. Only for keys
    /// whose functions return `()`.
    ///
    /// ```
    /// static_call::static_call! { static HOOK: fn(u32) = log; }
    /// fn log(_: u32) {}
    ///
    /// # fn main() {
    /// # if static_call::DEFAULT_WRITER_AVAILABLE {
    /// HOOK.update_null().unwrap();
    /// HOOK.call(1); // returns at once
    /// assert!(HOOK.query().is_none());
    /// # }
    /// # }
    /// ```
    pub fn update_null(&self) -> Result<(), Error> {
        self.retarget(0, None)
    }

    /// As [`update_null`](Self::update_null), through `writer`.
    ///
    /// ```
    /// static_call::static_call! { static HOOK: fn(u32) = log; }
    /// fn log(_: u32) {}
    ///
    /// # fn main() {
    /// # #[cfg(target_os = "linux")] {
    /// HOOK.update_null_with(&static_call::writer::linux::Remap).unwrap();
    /// assert!(HOOK.query().is_none());
    /// # }
    /// # }
    /// ```
    pub fn update_null_with(&self, writer: &dyn TextWriter) -> Result<(), Error> {
        self.retarget(0, Some(writer))
    }
}

impl<F: FnPtr> StaticCall<F>
where
    F::Output: Ret0Safe,
{
    /// Makes the key RET0: a call returns zero (of the return type) without
    /// calling anything. Only where all-zero is a valid return value.
    ///
    /// Unlike C's "return 0 whatever the type", the target is a real
    /// function of exactly this key's signature, emitted per key.
    ///
    /// ```
    /// static_call::static_call! { static COUNT: fn() -> u64 = one; }
    /// fn one() -> u64 { 1 }
    ///
    /// # fn main() {
    /// # if static_call::DEFAULT_WRITER_AVAILABLE {
    /// COUNT.update_ret0().unwrap();
    /// assert_eq!(COUNT.call(), 0);
    /// # }
    /// # }
    /// ```
    pub fn update_ret0(&self) -> Result<(), Error> {
        self.retarget(self.ret0.addr(), None)
    }

    /// As [`update_ret0`](Self::update_ret0), through `writer`.
    ///
    /// ```
    /// static_call::static_call! { static COUNT: fn() -> u64 = one; }
    /// fn one() -> u64 { 1 }
    ///
    /// # fn main() {
    /// # #[cfg(target_os = "linux")] {
    /// COUNT.update_ret0_with(&static_call::writer::linux::Remap).unwrap();
    /// assert_eq!(COUNT.call(), 0);
    /// # }
    /// # }
    /// ```
    pub fn update_ret0_with(&self, writer: &dyn TextWriter) -> Result<(), Error> {
        self.retarget(self.ret0.addr(), Some(writer))
    }
}

impl<F: FnPtr> core::fmt::Debug for StaticCall<F> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("StaticCall")
            .field("name", &self.name)
            .field("trampoline", &(self.tramp.addr() as *const ()))
            .finish()
    }
}

/// Return types a NULL key may have: only `()`, since a NULL call returns
/// without producing a value.
///
/// ```
/// fn null_ok<T: static_call::NullSafe>() {}
/// null_ok::<()>();
/// ```
#[diagnostic::on_unimplemented(
    message = "a NULL static call must return `()`, not `{Self}`",
    label = "NULL keys need a `()` return type; use RET0 for a zero result"
)]
pub trait NullSafe {}
impl NullSafe for () {}

#[doc(hidden)]
pub const fn assert_null_safe<F: FnPtr>()
where
    F::Output: NullSafe,
{
}

#[doc(hidden)]
pub const fn assert_ret0_safe<F: FnPtr>()
where
    F::Output: Ret0Safe,
{
}

/// Defines static call keys.
///
/// ```
/// static_call::static_call! {
///     /// Reads the timer.
///     pub static TICK: fn(u32) -> u64 = default_tick;
///     /// An optional hook: calls do nothing until it is set.
///     pub static ON_IDLE: fn(u32) = NULL;
///     /// A counter source that reads 0 until one is installed.
///     pub static EVENTS: fn() -> u64 = RET0;
/// }
/// fn default_tick(scale: u32) -> u64 { u64::from(scale) }
///
/// # fn main() {
/// assert_eq!(TICK.call(3), 3);
/// ON_IDLE.call(1);
/// assert_eq!(EVENTS.call(), 0);
/// # }
/// ```
///
/// Each key is a `static` with a `call` method taking the signature's
/// arguments; `call` is a direct call of the key's trampoline. The key
/// dereferences to [`StaticCall`] for `update`, `query` and `trampoline`.
/// Signatures are Rust-ABI `fn` types with up to eight arguments, without
/// elided lifetimes: `fn(&str)` is higher-ranked (`for<'a> fn(&'a str)`)
/// and not supported, so pass `&'static` references, raw pointers or owned
/// values. Keys are module-level items (their trampoline is module-level
/// assembly), not statements inside a function body. `NULL`
/// keys need a `()` return type and `RET0` keys a [`Ret0Safe`] one; both
/// are checked at compile time.
///
/// A NULL key that would have to return a value does not compile:
///
/// ```compile_fail
/// static_call::static_call! { static BAD: fn() -> u64 = NULL; }
/// # fn main() {}
/// ```
///
/// nor does a RET0 key whose return type has no zero value:
///
/// ```compile_fail
/// static_call::static_call! { static BAD: fn() -> &'static u8 = RET0; }
/// # fn main() {}
/// ```
///
/// Key names are link-level symbols, as in Linux: two keys of the same name
/// in one program fail to link. Another crate may call a key through
/// [`declare_static_call!`](crate::declare_static_call).
#[macro_export]
macro_rules! static_call {
    () => {};
    ($(#[$attr:meta])* $vis:vis static $name:ident : fn($($arg:ty),* $(,)?) $(-> $ret:ty)? = NULL; $($rest:tt)*) => {
        $crate::__static_call_key! { define [$(#[$attr])*] [$vis] $name [$($arg),*] [$($ret)?] null }
        $crate::static_call! { $($rest)* }
    };
    ($(#[$attr:meta])* $vis:vis static $name:ident : fn($($arg:ty),* $(,)?) $(-> $ret:ty)? = RET0; $($rest:tt)*) => {
        $crate::__static_call_key! { define [$(#[$attr])*] [$vis] $name [$($arg),*] [$($ret)?] ret0 }
        $crate::static_call! { $($rest)* }
    };
    ($(#[$attr:meta])* $vis:vis static $name:ident : fn($($arg:ty),* $(,)?) $(-> $ret:ty)? = $init:path; $($rest:tt)*) => {
        $crate::__static_call_key! { define [$(#[$attr])*] [$vis] $name [$($arg),*] [$($ret)?] func $init }
        $crate::static_call! { $($rest)* }
    };
}

/// Declares a static call key defined in another crate, so this crate can
/// call and update it without depending on the defining crate (Linux's
/// `DECLARE_STATIC_CALL`).
///
/// The signature is part of the key's link name, so a declaration whose
/// signature is spelled differently from the definition fails to link
/// rather than calling with the wrong types.
///
/// A declaration is a promise that the program defines the key: to make the
/// signature check happen even where the declaring crate only calls the key,
/// every program that links a declaring crate must define the key (with
/// `= NULL` for a hook nobody installs), or it fails to link.
///
/// ```
/// // In the crate that owns the key (often a platform crate):
/// static_call::static_call! { pub static IRQ_HOOK: fn(u32) -> u32 = ack; }
/// fn ack(irq: u32) -> u32 { irq }
///
/// // In a crate that cannot depend on it (often the core kernel):
/// mod core_kernel {
///     static_call::declare_static_call! { pub static IRQ_HOOK: fn(u32) -> u32; }
///     pub fn handle(irq: u32) -> u32 { IRQ_HOOK.call(irq) }
/// }
/// # fn main() {
/// assert_eq!(core_kernel::handle(7), 7);
/// # }
/// ```
///
/// A declaration with another signature does not link:
///
/// ```compile_fail
/// static_call::static_call! { pub static IRQ_HOOK: fn(u32) -> u32 = ack; }
/// fn ack(irq: u32) -> u32 { irq }
/// mod core_kernel {
///     static_call::declare_static_call! { pub static IRQ_HOOK: fn(u64) -> u32; }
///     pub fn handle(irq: u64) -> u32 { IRQ_HOOK.call(irq) }
/// }
/// fn main() { core_kernel::handle(7); }
/// ```
#[macro_export]
macro_rules! declare_static_call {
    () => {};
    ($(#[$attr:meta])* $vis:vis static $name:ident : fn($($arg:ty),* $(,)?) $(-> $ret:ty)?; $($rest:tt)*) => {
        $crate::__static_call_key! { declare [$(#[$attr])*] [$vis] $name [$($arg),*] [$($ret)?] declared }
        $crate::declare_static_call! { $($rest)* }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_key {
    // Name the arguments a0, a1, ... so `call` can forward them.
    (@zip [$($named:tt)*] [$t:ty $(, $rest:ty)*] [$id:ident $($ids:ident)*] $($tail:tt)*) => {
        $crate::__static_call_key! { @zip [$($named)* ($id: $t)] [$($rest),*] [$($ids)*] $($tail)* }
    };
    (@zip [$($named:tt)*] [] [$($ids:ident)*] $($tail:tt)*) => {
        $crate::__static_call_key! { @emit [$($named)*] $($tail)* }
    };
    (@zip [$($named:tt)*] [$($t:ty),+] [] $($tail:tt)*) => {
        ::core::compile_error!("static_call! supports at most eight arguments");
    };
    ($mode:ident [$($attr:tt)*] [$vis:vis] $name:ident [$($arg:ty),*] [$($ret:ty)?] $kind:ident $($init:path)?) => {
        $crate::__static_call_key! {
            @zip [] [$($arg),*] [a0 a1 a2 a3 a4 a5 a6 a7]
            $mode [$($attr)*] [$vis] $name [$($arg),*] [$($ret)?] $kind $($init)?
        }
    };
    (@emit [$(($id:ident: $t:ty))*] $mode:ident [$($attr:tt)*] [$vis:vis] $name:ident [$($arg:ty),*] [$($ret:ty)?] $kind:ident $($init:path)?) => {
        #[allow(non_camel_case_types)]
        #[doc = ::core::concat!(
            "Static call key `", ::core::stringify!($name), "`: call it with `",
            ::core::stringify!($name), ".call(..)`; it dereferences to its [`StaticCall`](",
            "$crate::StaticCall) for `update` and `query`."
        )]
        $vis struct $name {
            _private: (),
        }

        $($attr)*
        $vis static $name: $name = $name { _private: () };

        $crate::__static_call_key! { @module $mode $kind $name $($init)? }

        const _: () = {
            type __Fn = fn($($arg),*) $(-> $ret)?;

            $crate::__static_call_key! { @$mode $kind $name [$(($id: $t))*] [$($arg),*] [$($ret)?] $($init)? }

            impl $name {
                /// Calls the key's current target (a direct call of the
                /// key's trampoline).
                #[inline(always)]
                #[allow(dead_code)]
                $vis fn call(&self, $($id: $t),*) $(-> $ret)? {
                    __tramp($($id),*)
                }
            }

            impl $crate::__private::Deref for $name {
                type Target = $crate::StaticCall<__Fn>;
                #[inline(always)]
                fn deref(&self) -> &Self::Target {
                    &__KEY
                }
            }
        };
    };
    // Items that must sit at module level (`global_asm!`); their names are
    // link-level symbols derived from the key's name.
    (@module define $kind:ident $name:ident $($init:path)?) => {
        $crate::__static_call_trampoline_asm! { $name $kind $($init)? }
    };
    (@module declare $($tail:tt)*) => {};
    (@define $kind:ident $name:ident [$(($id:ident: $t:ty))*] [$($arg:ty),*] [$($ret:ty)?] $($init:path)?) => {
        /// The key's return-zero target: a function of exactly the key's
        /// signature, installed only when the return type is `Ret0Safe`.
        #[allow(invalid_value, unused_variables)]
        #[unsafe(export_name = ::core::concat!("__SCR__", ::core::stringify!($name)))]
        fn __ret0($($id: $t),*) $(-> $ret)? {
            // SAFETY: only reachable through a RET0 update or a RET0
            // definition, both of which require the return type to be
            // `Ret0Safe` (all-zero is a valid value).
            unsafe { $crate::__private::core::mem::zeroed() }
        }

        $crate::__static_call_key! { @check $kind __Fn }

        static __SLOT: $crate::__private::Slot = $crate::__private::Slot::new(
            $crate::__static_call_key!(@initial $kind __Fn, $($init)?)
        );

        $crate::__static_call_trampoline! {
            $name [$(($id: $t))*] [$($ret)?] $kind $($init)?
        }

        #[unsafe(export_name = $crate::__static_call_key!(@key_symbol $name [$($arg),*] [$($ret)?]))]
        static __KEY: $crate::StaticCall<__Fn> =
            // SAFETY: the trampoline, return-zero function and slot are
            // this key's own, emitted just above.
            unsafe { $crate::StaticCall::__new(__tramp, __ret0, &__SLOT, ::core::stringify!($name)) };
    };
    (@declare declared $name:ident [$(($id:ident: $t:ty))*] [$($arg:ty),*] [$($ret:ty)?]) => {
        // SAFETY: both symbols are defined by `static_call!` for a key of
        // this name; the key symbol carries the signature, so a declaration
        // with another signature fails to link instead of mistyping.
        unsafe extern "Rust" {
            #[link_name = $crate::__static_call_key!(@key_symbol $name [$($arg),*] [$($ret)?])]
            safe static __KEY: $crate::StaticCall<__Fn>;
            #[link_name = ::core::concat!("__SCT__", ::core::stringify!($name))]
            safe fn __tramp($($id: $t),*) $(-> $ret)?;
        }
        // Referencing the key makes the signature check happen at link
        // time even if this crate only calls the key.
        #[used]
        static __SIGNATURE_CHECK: &$crate::StaticCall<__Fn> = &__KEY;
    };
    (@key_symbol $name:ident [$($arg:ty),*] [$($ret:ty)?]) => {
        ::core::concat!(
            "__SCK__", ::core::stringify!($name), "$fn(",
            $(::core::stringify!($arg), ",",)* ")->", $(::core::stringify!($ret))?
        )
    };
    (@check null $f:ty) => { const _: () = $crate::__private::assert_null_safe::<$f>(); };
    (@check ret0 $f:ty) => { const _: () = $crate::__private::assert_ret0_safe::<$f>(); };
    (@check func $f:ty) => {};
    (@initial null $f:ty,) => { $crate::__private::core::ptr::null_mut() };
    (@initial ret0 $f:ty,) => { __ret0 as $f as *mut () };
    (@initial func $f:ty, $init:path) => { $init as $f as *mut () };
}
