//! Operations tables: a trait whose operations are dispatched through static
//! calls, so portable code calls an implementation chosen at run time with
//! direct calls, and one call installs a whole implementation.
//!
//! This is what Linux does by hand for `x86_pmu` or the paravirt
//! operations: one static call per operation, all retargeted from a table
//! of function pointers when an implementation is chosen. Here the table
//! is a trait, so the compiler checks that an implementation provides
//! exactly the trait's operations with exactly their signatures.

/// Declares a trait whose operations are static calls.
///
/// ```
/// static_call::static_call_ops! {
///     /// A clock source, chosen at boot.
///     pub trait Clock in clock {
///         /// Reads the counter.
///         static CLOCK_READ: fn read(&self) -> u64;
///         /// Ticks per second.
///         static CLOCK_RATE: fn rate_hz() -> u64;
///         /// Stops the counter for suspend, where the hardware can.
///         static CLOCK_SUSPEND: optional fn suspend(&self) = NULL;
///         /// Drift in parts per billion, where the hardware knows it.
///         static CLOCK_DRIFT: optional fn drift_ppb(&self) -> i64 = RET0;
///     }
///     default = BootClock;
/// }
///
/// /// What runs before any clock is installed.
/// struct BootClock;
/// static BOOT_CLOCK: BootClock = BootClock;
/// impl Clock for BootClock {
///     fn instance() -> &'static Self { &BOOT_CLOCK }
///     fn read(&self) -> u64 { 0 }
///     fn rate_hz() -> u64 { 1 }
/// }
///
/// struct Tsc { base: u64 }
/// static TSC: Tsc = Tsc { base: 100 };
/// impl Clock for Tsc {
///     fn instance() -> &'static Self { &TSC }
///     fn read(&self) -> u64 { self.base + 1 }
///     fn rate_hz() -> u64 { 1_000_000_000 }
///     const CLOCK_DRIFT: Option<fn(&Self) -> i64> = Some(Self::drift);
/// }
/// impl Tsc {
///     fn drift(&self) -> i64 { -3 }
/// }
///
/// # fn main() {
/// // Portable code calls the operations as functions: direct calls.
/// assert_eq!((clock::read(), clock::rate_hz(), clock::drift_ppb()), (0, 1, 0));
/// # if static_call::DEFAULT_WRITER_AVAILABLE {
/// clock::install::<Tsc>().unwrap();
/// assert_eq!((clock::read(), clock::rate_hz(), clock::drift_ppb()), (101, 1_000_000_000, -3));
/// clock::suspend(); // left out by `Tsc`: NULL, returns at once
/// assert!(clock::CLOCK_SUSPEND.query().is_none());
/// # }
/// # }
/// ```
///
/// Each operation names its key (`static NAME:`, a link-level symbol as in
/// [`static_call!`](crate::static_call)), its signature, and whether it is
/// required or `optional`. The macro defines:
///
/// - the trait, with a method per required operation, an associated
///   `const NAME: Option<fn(..)>` per optional one (`None` unless an
///   implementation provides it), and, when any operation takes `&self`,
///   `fn instance() -> &'static Self`: the object `&self` operations run
///   on. Implementations are checked by the compiler like any trait impl.
/// - the module (`in MODULE`), holding one `extern "C"` key per operation
///   (so each call is a direct `call`/`bl`; arguments and results follow
///   the rules of `extern "C"` keys), a function per operation that calls
///   it, and `install::<T>()`, which points every key at `T`'s operations.
///   Before any install, the `default` implementation's operations run.
///
/// Each key points at a small function generic over the implementation
/// (`T::read(T::instance())`), which the compiler usually reduces to the
/// implementation itself; an optional operation an implementation leaves
/// out becomes NULL (returns at once) or RET0 (returns zero).
///
/// `install` retargets the keys one after the other. A call racing with it
/// runs each operation's old or new implementation; operations are not
/// switched together. On `Err`, the keys already switched are put back, so
/// every operation behaves as before.
///
/// An implementation must provide every required operation with its exact
/// signature:
///
/// ```compile_fail
/// static_call::static_call_ops! {
///     pub trait Clock in clock {
///         static CLOCK_READ: fn read(&self) -> u64;
///         static CLOCK_RATE: fn rate_hz() -> u64;
///     }
///     default = Boot;
/// }
/// struct Boot;
/// static BOOT: Boot = Boot;
/// impl Clock for Boot {
///     fn instance() -> &'static Self { &BOOT }
///     fn read(&self) -> u64 { 0 } // rate_hz is missing
/// }
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! static_call_ops {
    (
        $(#[$attr:meta])*
        $vis:vis trait $trait_name:ident in $module:ident {
            $($ops:tt)*
        }
        default = $default:ty;
    ) => {
        $crate::__static_call_ops! {
            @parse [[$(#[$attr])*] [$vis] $trait_name $module [$default]] [] [] $($ops)*
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_ops {
    // Each operation becomes
    // `{ [attrs] KEY op [self|static] [required|null|ret0] [(arg: Ty)...] [Ret] }`;
    // the second list collects a marker per `&self` operation.
    (@parse $head:tt [$($done:tt)*] [$($has_self:tt)*]
        $(#[$a:meta])* static $key:ident : fn $op:ident (&self $(, $arg:ident : $t:ty)* $(,)?) $(-> $ret:ty)?;
        $($rest:tt)*
    ) => {
        $crate::__static_call_ops! { @parse $head
            [$($done)* { [$(#[$a])*] $key $op [self] [required] [$(($arg: $t))*] [$($ret)?] }]
            [$($has_self)* self] $($rest)*
        }
    };
    (@parse $head:tt [$($done:tt)*] [$($has_self:tt)*]
        $(#[$a:meta])* static $key:ident : fn $op:ident ($($arg:ident : $t:ty),* $(,)?) $(-> $ret:ty)?;
        $($rest:tt)*
    ) => {
        $crate::__static_call_ops! { @parse $head
            [$($done)* { [$(#[$a])*] $key $op [static] [required] [$(($arg: $t))*] [$($ret)?] }]
            [$($has_self)*] $($rest)*
        }
    };
    (@parse $head:tt [$($done:tt)*] [$($has_self:tt)*]
        $(#[$a:meta])* static $key:ident : optional fn $op:ident (&self $(, $arg:ident : $t:ty)* $(,)?) $(-> $ret:ty)? = $absent:ident;
        $($rest:tt)*
    ) => {
        $crate::__static_call_ops! { @parse $head
            [$($done)* { [$(#[$a])*] $key $op [self] [$absent] [$(($arg: $t))*] [$($ret)?] }]
            [$($has_self)* self] $($rest)*
        }
    };
    (@parse $head:tt [$($done:tt)*] [$($has_self:tt)*]
        $(#[$a:meta])* static $key:ident : optional fn $op:ident ($($arg:ident : $t:ty),* $(,)?) $(-> $ret:ty)? = $absent:ident;
        $($rest:tt)*
    ) => {
        $crate::__static_call_ops! { @parse $head
            [$($done)* { [$(#[$a])*] $key $op [static] [$absent] [$(($arg: $t))*] [$($ret)?] }]
            [$($has_self)*] $($rest)*
        }
    };
    (@parse $head:tt [$($done:tt)*] [$($has_self:tt)*] $($other:tt)+) => {
        ::core::compile_error!(::core::concat!(
            "static_call_ops!: expected `static KEY: fn op(&self, arg: Type, ..) -> Ret;` or ",
            "`static KEY: optional fn op(..) -> Ret = NULL;` (or `= RET0;`), found: ",
            ::core::stringify!($($other)+)
        ));
    };
    (@parse [[$($attr:tt)*] [$vis:vis] $trait_name:ident $module:ident [$default:ty]]
        [$({ [$($a:tt)*] $key:ident $op:ident [$recv:ident] [$kind:ident] [$(($arg:ident: $t:ty))*] [$($ret:ty)?] })*]
        [$($has_self:tt)*]
    ) => {
        $($attr)*
        $vis trait $trait_name: ::core::marker::Sync + 'static {
            $crate::__static_call_ops! { @instance [$($has_self)*] }
            $(
                $crate::__static_call_ops! {
                    @trait_item [$($a)*] $key $op [$recv] [$kind] [$(($arg: $t))*] [$($ret)?]
                }
            )*
        }

        #[doc = ::core::concat!(
            "The operations of [`", ::core::stringify!($trait_name), "`]: one static call per ",
            "operation, a function calling each, and `install`."
        )]
        $vis mod $module {
            #[allow(unused_imports)]
            use super::*;

            /// The generic functions the keys point at: each runs one
            /// operation of an implementation `T`.
            #[allow(non_snake_case)]
            mod __ops {
                #[allow(unused_imports)]
                use super::*;
                $(
                    $crate::__static_call_ops! {
                        @shim $trait_name $key $op [$recv] [$kind] [$(($arg: $t))*] [$($ret)?]
                    }
                )*
            }

            $(
                $crate::static_call! {
                    $($a)*
                    pub static $key: extern "C" fn($($t),*) $(-> $ret)? = __ops::$key::<$default>;
                }

                $($a)*
                #[inline(always)]
                pub fn $op($($arg: $t),*) $(-> $ret)? {
                    $key.call($($arg),*)
                }
            )*

            #[doc = ::core::concat!(
                "Points every operation of [`", ::core::stringify!($trait_name),
                "`] at `T`'s implementation. On `Err`, every operation behaves as before."
            )]
            pub fn install<T: $trait_name>() -> ::core::result::Result<(), $crate::UpdateError> {
                let keys: &[&dyn $crate::ops::Retarget] = &[$(
                    &$crate::__static_call_ops!(@target $key [$kind] T)
                ),*];
                $crate::ops::retarget_all(keys)
            }

            /// As `install`, writing through `writer`.
            pub fn install_with<T: $trait_name>(
                writer: &(impl $crate::arch::UpdateWriter + ?::core::marker::Sized),
            ) -> ::core::result::Result<(), $crate::UpdateError> {
                let keys: &[&dyn $crate::ops::Retarget] = &[$(
                    &$crate::__static_call_ops!(@target $key [$kind] T)
                ),*];
                $crate::ops::retarget_all_with(keys, writer)
            }
        }
    };
    (@instance []) => {};
    (@instance [$($has_self:tt)+]) => {
        /// The object `&self` operations run on when this implementation
        /// is installed.
        fn instance() -> &'static Self
        where
            Self: Sized;
    };
    (@trait_item [$($a:tt)*] $key:ident $op:ident [self] [required] [$(($arg:ident: $t:ty))*] [$($ret:ty)?]) => {
        $($a)*
        fn $op(&self $(, $arg: $t)*) $(-> $ret)?;
    };
    (@trait_item [$($a:tt)*] $key:ident $op:ident [static] [required] [$(($arg:ident: $t:ty))*] [$($ret:ty)?]) => {
        $($a)*
        fn $op($($arg: $t),*) $(-> $ret)?;
    };
    (@trait_item [$($a:tt)*] $key:ident $op:ident [self] [$absent:ident] [$(($arg:ident: $t:ty))*] [$($ret:ty)?]) => {
        $($a)*
        #[doc = ""]
        #[doc = ::core::concat!(
            "Optional: `None` (the default) leaves `", ::core::stringify!($op), "` ",
            ::core::stringify!($absent), "."
        )]
        const $key: ::core::option::Option<fn(&Self $(, $t)*) $(-> $ret)?> = None;
    };
    (@trait_item [$($a:tt)*] $key:ident $op:ident [static] [$absent:ident] [$(($arg:ident: $t:ty))*] [$($ret:ty)?]) => {
        $($a)*
        #[doc = ""]
        #[doc = ::core::concat!(
            "Optional: `None` (the default) leaves `", ::core::stringify!($op), "` ",
            ::core::stringify!($absent), "."
        )]
        const $key: ::core::option::Option<fn($($t),*) $(-> $ret)?> = None;
    };
    (@shim $trait_name:ident $key:ident $op:ident [self] [required] [$(($arg:ident: $t:ty))*] [$($ret:ty)?]) => {
        pub extern "C" fn $key<T: $trait_name>($($arg: $t),*) $(-> $ret)? {
            T::$op(T::instance() $(, $arg)*)
        }
    };
    (@shim $trait_name:ident $key:ident $op:ident [static] [required] [$(($arg:ident: $t:ty))*] [$($ret:ty)?]) => {
        pub extern "C" fn $key<T: $trait_name>($($arg: $t),*) $(-> $ret)? {
            T::$op($($arg),*)
        }
    };
    // An optional operation's function runs the implementation's if it has
    // one; `install` makes the key NULL or RET0 instead when it has none, so
    // the fallback arm only runs for the default before the first install.
    (@shim $trait_name:ident $key:ident $op:ident [self] [$absent:ident] [$(($arg:ident: $t:ty))*] [$($ret:ty)?]) => {
        $crate::__static_call_ops! { @absent_check $absent [$($ret)?] }
        pub extern "C" fn $key<T: $trait_name>($($arg: $t),*) $(-> $ret)? {
            match T::$key {
                ::core::option::Option::Some(f) => f(T::instance() $(, $arg)*),
                ::core::option::Option::None => $crate::__static_call_ops!(@absent $absent),
            }
        }
    };
    (@shim $trait_name:ident $key:ident $op:ident [static] [$absent:ident] [$(($arg:ident: $t:ty))*] [$($ret:ty)?]) => {
        $crate::__static_call_ops! { @absent_check $absent [$($ret)?] }
        pub extern "C" fn $key<T: $trait_name>($($arg: $t),*) $(-> $ret)? {
            match T::$key {
                ::core::option::Option::Some(f) => f($($arg),*),
                ::core::option::Option::None => $crate::__static_call_ops!(@absent $absent),
            }
        }
    };
    (@absent_check NULL [$($ret:ty)?]) => {
        const _: () = $crate::__private::assert_null_safe::<
            fn() $(-> $ret)?
        >();
    };
    (@absent_check RET0 [$($ret:ty)?]) => {
        const _: () = $crate::__private::assert_ret0_safe::<
            fn() $(-> $ret)?
        >();
    };
    (@absent_check $other:ident [$($ret:ty)?]) => {
        ::core::compile_error!(::core::concat!(
            "static_call_ops!: an optional operation is `= NULL` or `= RET0`, not `= ",
            ::core::stringify!($other), "`"
        ));
    };
    (@absent NULL) => {
        ()
    };
    (@absent RET0) => {
        // SAFETY: the return type is `Ret0Safe` (checked above).
        unsafe { $crate::__private::core::mem::zeroed() }
    };
    (@target $key:ident [required] $impl_ty:ident) => {
        $crate::ops::To::function(&*$key, __ops::$key::<$impl_ty>)
    };
    (@target $key:ident [NULL] $impl_ty:ident) => {
        match $impl_ty::$key {
            ::core::option::Option::Some(_) => $crate::ops::To::function(&*$key, __ops::$key::<$impl_ty>),
            ::core::option::Option::None => $crate::ops::To::null(&*$key),
        }
    };
    (@target $key:ident [RET0] $impl_ty:ident) => {
        match $impl_ty::$key {
            ::core::option::Option::Some(_) => $crate::ops::To::function(&*$key, __ops::$key::<$impl_ty>),
            ::core::option::Option::None => $crate::ops::To::ret0(&*$key),
        }
    };
}

use crate::arch::active::{Active, Options};
use crate::arch::{Backend, UpdateWriter};
use crate::fnptr::{FnPtr, Ret0Safe};
use crate::{Error, NullSafe, StaticCall, TextWriter, UpdateError};
use core::cell::Cell;

/// Where [`static_call_ops!`](crate::static_call_ops)'s `install` points one
/// key: a function of the key's type, NULL or RET0 (each only where the
/// key's type allows it).
pub struct To<'a, F: FnPtr> {
    key: &'a StaticCall<F>,
    target: Target<F>,
    /// The key's target before `install` retargeted it, for undoing.
    before: Cell<Option<usize>>,
}

enum Target<F> {
    Function(F),
    Null,
    Ret0,
}

impl<'a, F: FnPtr> To<'a, F> {
    /// `key` to the function `f`.
    pub fn function(key: &'a StaticCall<F>, f: F) -> Self {
        Self::new(key, Target::Function(f))
    }

    fn new(key: &'a StaticCall<F>, target: Target<F>) -> Self {
        To {
            key,
            target,
            before: Cell::new(None),
        }
    }
}

impl<'a, F: FnPtr> To<'a, F>
where
    F::Output: NullSafe,
{
    /// `key` to NULL.
    pub fn null(key: &'a StaticCall<F>) -> Self {
        Self::new(key, Target::Null)
    }
}

impl<'a, F: FnPtr> To<'a, F>
where
    F::Output: Ret0Safe,
{
    /// `key` to RET0.
    pub fn ret0(key: &'a StaticCall<F>) -> Self {
        Self::new(key, Target::Ret0)
    }
}

/// One key's part of an install, whatever the key's type. Its methods run
/// inside [`retarget_all`], which holds the patch lock.
///
/// Sealed: [`To`] is its only implementation. `retarget_all` trusts what an
/// implementation reports (its trampoline, slot and target go straight to
/// the backend's patching protocol), so an implementation outside the
/// crate could make it write anywhere.
pub trait Retarget: sealed::Sealed {
    /// Retargets the key through the batch's writer, remembering its
    /// previous target.
    fn apply(&self, batch: &Batch<'_>) -> Result<(), UpdateError>;
    /// Puts back the target [`apply`](Self::apply) replaced.
    fn undo(&self, batch: &Batch<'_>) -> Result<(), UpdateError>;
    /// The key's name, for errors that are not any one update's.
    fn key_name(&self) -> &'static str;
    /// The key's part of a backend's batched protocol.
    fn batch_item(&self) -> crate::arch::BatchItem<'static, crate::arch::active::Slot>;
    /// The key's trampoline, for errors that name what could not be put
    /// back.
    fn trampoline_addr(&self) -> usize;
    /// Refuses a target the key cannot take whatever else is in the batch
    /// (its own trampoline), before anything is written.
    fn check(&self) -> Result<(), UpdateError>;
}

/// A batch of updates in progress: the patch lock is held, and the writer
/// to use is chosen. Only [`retarget_all`] makes one.
pub struct Batch<'a> {
    writer: &'a dyn TextWriter,
    options: Options,
}

impl<F: FnPtr> To<'_, F> {
    fn target_addr(&self) -> usize {
        match self.target {
            Target::Function(f) => f.addr(),
            Target::Null => 0,
            Target::Ret0 => self.key.ret0_addr(),
        }
    }
}

mod sealed {
    /// Only the crate's own [`To`](super::To) is a [`Retarget`](super::Retarget).
    #[diagnostic::on_unimplemented(
        message = "`Retarget` is sealed: build a batch from `static_call::ops::To` values",
        label = "`{Self}` is not a `To`"
    )]
    pub trait Sealed {}
    impl<F: crate::FnPtr> Sealed for super::To<'_, F> {}
}

// `Options` is `()` on backends with nothing to choose.
#[allow(clippy::unit_arg)]
impl<F: FnPtr> Retarget for To<'_, F> {
    fn batch_item(&self) -> crate::arch::BatchItem<'static, crate::arch::active::Slot> {
        self.key.batch_item(self.target_addr())
    }

    fn apply(&self, batch: &Batch<'_>) -> Result<(), UpdateError> {
        self.before.set(Some(self.key.current_target()));
        let target = self.target_addr();
        // SAFETY: `target` is a function of type `F`, NULL only where the
        // constructor required `NullSafe`, RET0 only where it required
        // `Ret0Safe`; a `Batch` exists only while the patch lock is held.
        unsafe {
            self.key
                .retarget_locked(target, batch.writer, batch.options)
        }
    }

    fn undo(&self, batch: &Batch<'_>) -> Result<(), UpdateError> {
        match self.before.take() {
            // SAFETY: the key's own previous target, which had its type;
            // the lock is held, as above.
            Some(before) => unsafe {
                self.key
                    .retarget_locked(before, batch.writer, batch.options)
            },
            None => Ok(()),
        }
    }

    fn key_name(&self) -> &'static str {
        self.key.name()
    }

    fn trampoline_addr(&self) -> usize {
        self.key.trampoline_addr()
    }

    fn check(&self) -> Result<(), UpdateError> {
        self.key.check_target(self.target_addr())
    }
}

/// A writer that defers synchronisation: its `sync_cores` does nothing, so
/// a batch synchronises every CPU once, at its end, through the real
/// writer. Only used where the backend says its protocol needs no
/// synchronisation between its own stores (see
/// [`Backend::syncs_can_be_deferred`](crate::arch::Backend::syncs_can_be_deferred)).
struct Deferred<'a> {
    inner: &'a dyn TextWriter,
}

// SAFETY: every write is forwarded unchanged to a writer that keeps the
// contract; only the synchronisation is left to the batch.
unsafe impl TextWriter for Deferred<'_> {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.write(addr, bytes) }
    }

    unsafe fn write_batch(
        &self,
        patches: &mut dyn Iterator<Item = crate::writer::TextPatch>,
    ) -> Result<(), Error> {
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.write_batch(patches) }
    }

    fn sync_cores(&self) -> Result<(), Error> {
        Ok(())
    }

    fn publishes_pages(&self) -> bool {
        self.inner.publishes_pages()
    }
}

/// What a failed undo leaves, for [`Error::RestoreFailed`].
const NOT_PUT_BACK: &str = "an install failed and putting this key back failed too: it may keep \
                            its new target";

/// Refuses a batch that names a key twice ([`Error::DuplicateKey`]) or
/// points a key at its own trampoline ([`Error::SelfTarget`]), before
/// anything is written. Otherwise applies every retarget in order, under
/// one hold of the patch lock; on
/// the first error, undoes the ones already applied (newest first) and
/// returns it, naming its key, so every key behaves as before. If an undo
/// fails too, the error is [`Error::RestoreFailed`] naming the key that
/// could not be put back (which may keep its new target; the keys after it
/// in `keys` were put back, those before it were not tried).
///
/// Where the backend allows it (arm64; x86-64 with the one-store
/// strategy), the writer synchronises every CPU once for the whole batch,
/// after the last key is written (each key's cache maintenance is still
/// done as it is written), instead of once or more per key. With x86-64's
/// page swap (the default with a writer that publishes whole pages), up
/// to 32 keys and all their sites are written in one batch, each page
/// swapped once, then one sync. With x86-64's
/// int3 protocol, up to 32 keys go through one batched protocol: at most
/// four syncs for all of them.
pub fn retarget_all(keys: &[&dyn Retarget]) -> Result<(), UpdateError> {
    retarget_batch(keys, None, None)
}

/// As [`retarget_all`], writing through `writer` (and with the backend
/// options it asks for, such as x86-64's
/// [`WithStrategy`](crate::arch::x86_64::WithStrategy)).
pub fn retarget_all_with(
    keys: &[&dyn Retarget],
    writer: &(impl UpdateWriter + ?Sized),
) -> Result<(), UpdateError> {
    retarget_batch(keys, Some(writer.text_writer()), writer.options())
}

/// [`retarget_all`] and [`retarget_all_with`].
fn retarget_batch(
    keys: &[&dyn Retarget],
    writer: Option<&dyn TextWriter>,
    options: Option<Options>,
) -> Result<(), UpdateError> {
    let first = keys.first().map_or("", |k| k.key_name());
    let writer = match (writer, Active::WRITES_TEXT) {
        (w, true) => w,
        (_, false) => Some(&crate::writer::Direct::UNUSED as &dyn TextWriter),
    };
    if let Some(dup) = first_duplicate(keys) {
        return Err(UpdateError::new(
            dup.key_name(),
            Error::DuplicateKey {
                tramp: dup.trampoline_addr(),
            },
        ));
    }
    for key in keys {
        key.check()?;
    }
    #[allow(clippy::let_unit_value)] // `()` on backends with nothing to choose
    let outcome = crate::writer::with_patch_lock(writer, |w| {
        // The options are fixed once, with the lock held: whether syncs may
        // be deferred and how each key is then patched must agree, even if
        // another thread changes the defaults meanwhile.
        let options = options.unwrap_or_else(Active::default_options);
        Ok(install_locked(keys, w, options))
    });
    outcome.unwrap_or_else(|e| Err(UpdateError::new(first, e)))
}

/// The first key that `keys` names a second time (by trampoline), if any.
fn first_duplicate<'k>(keys: &[&'k dyn Retarget]) -> Option<&'k dyn Retarget> {
    keys.iter().enumerate().find_map(|(i, key)| {
        let tramp = key.trampoline_addr();
        keys[..i]
            .iter()
            .any(|earlier| earlier.trampoline_addr() == tramp)
            .then_some(*key)
    })
}

/// [`retarget_all`] with the patch lock held and the writer and options
/// chosen.
fn install_locked(
    keys: &[&dyn Retarget],
    w: &dyn TextWriter,
    options: Options,
) -> Result<(), UpdateError> {
    let deferred = Deferred { inner: w };
    let defer = Active::syncs_can_be_deferred(options);
    let batch = Batch {
        writer: if defer { &deferred } else { w },
        options,
    };
    let restore_failed = |key: &dyn Retarget, addr: usize| {
        UpdateError::new(
            key.key_name(),
            Error::RestoreFailed {
                addr,
                state: NOT_PUT_BACK,
            },
        )
    };
    // The one synchronisation of a deferred batch.
    let sync = || if defer { w.sync_cores() } else { Ok(()) };
    let undo_all = |done: &[&dyn Retarget]| -> Result<(), UpdateError> {
        for key in done.iter().rev() {
            let undone = key.undo(&batch).map_err(|undo| match undo.error {
                Error::RestoreFailed { addr, .. } => restore_failed(*key, addr),
                _ => restore_failed(*key, key.trampoline_addr()),
            });
            if undone.is_err() {
                // The keys already put back are made visible anyway (a
                // best effort: the error stands whatever it does).
                let _ = sync();
                return undone;
            }
        }
        Ok(())
    };
    if !defer {
        // SAFETY: every item is a key's trampoline and slot and a target
        // its `To` constructor checked; the lock is held.
        let batched =
            unsafe { Active::retarget_batch(keys.len(), &|i| keys[i].batch_item(), w, options) };
        if let Some(result) = batched {
            return result.map_err(|(i, e)| UpdateError::new(keys[i].key_name(), e));
        }
    }
    for (i, key) in keys.iter().enumerate() {
        if let Err(e) = key.apply(&batch) {
            undo_all(&keys[..i])?;
            // Making the restored state visible everywhere is part of the
            // restore.
            sync().map_err(|_| restore_failed(*key, key.trampoline_addr()))?;
            return Err(e);
        }
    }
    let Some(last) = keys.last() else {
        return Ok(());
    };
    if let Err(e) = sync() {
        undo_all(keys)?;
        sync().map_err(|_| restore_failed(*last, last.trampoline_addr()))?;
        return Err(UpdateError::new(last.key_name(), e));
    }
    Ok(())
}
