//! The typed key API: [`StaticCall`], and the macros that define and
//! declare keys.

use crate::arch::active::{Active, Options, Slot};
use crate::arch::{Backend, UpdateWriter};
use crate::fnptr::{FnPtr, Ret0Safe};
use crate::{TextWriter, UpdateError, writer};

/// A static call key for functions of type `F`.
///
/// Keys are made by [`static_call!`](crate::static_call) (or brought in
/// from another crate by [`declare_static_call!`](crate::declare_static_call));
/// each key dereferences to its `StaticCall`. Calls never take a lock;
/// updates are serialized by the crate's patch lock.
///
/// # Calling a key
///
/// `KEY.call(args..)` is not a method of `StaticCall`: each key is a type
/// of its own, made by the macro, whose `call` takes exactly the key's
/// argument types and returns its return type (so no tuple of arguments
/// and no `Fn` trait is involved). What it compiles to depends on the
/// key's ABI:
///
/// - a `fn(..)` key's `call` is an ordinary call of the key's trampoline,
///   which branches to the current target;
/// - an `extern "C" fn(..)` key's `call` is an *inline call site*: the
///   crate emits the call instruction and records it, and every update
///   rewrites it into a direct call of the new target (or a no-op for
///   NULL). It is never a tail call.
///
/// Everything else (`update`, `query`, `trampoline`, ...) is on this type,
/// reached through the key by `Deref`. [`trampoline`](Self::trampoline)
/// gives a plain function pointer that also calls through the key.
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
///
/// # Calling a key
///
/// The methods that call a key belong to the key itself (each key is a
/// type of its own, with its signature's arguments), not to `StaticCall`:
///
/// - `KEY.call(..)`: every key. For a Rust-ABI key it is the compiler's
///   call of the key's trampoline. For an `extern "C"` key it is whichever
///   of the two calls below costs less on the target the calling crate is
///   built for:
///   - x86-64: the inline site (up to six arguments; with 7 or 8, whose
///     extra arguments go on the stack, the trampoline call);
///   - arm64 without FP/SIMD registers (`aarch64-unknown-none-softfloat`):
///     the inline site;
///   - arm64 with them (`aarch64-unknown-none`, Linux): the trampoline
///     call, because a function holding an inline site must save and
///     restore `d8`-`d15`, which costs more than the trampoline's two
///     instructions;
///   - the generic backend: its trampoline, the only call it has.
/// - `KEY.call_inline(..)` (`extern "C"` keys): always the inline site, a
///   `call`/`bl` the crate emits and records, which every update rewrites
///   to call the new target directly. Worth it where a function makes
///   several key calls per entry or calls in a loop. Refused at compile
///   time on x86-64 for keys with 7 or 8 arguments (it could not be
///   unwound through).
/// - `KEY.call_trampoline(..)` (`extern "C"` keys): always the compiler's
///   call of the trampoline, which can be a tail call.
///
/// All three take the same arguments with the same type checks, and every
/// update retargets all of them (inline sites are rewritten, trampoline
/// calls follow the trampoline). The README's "What it costs" has the
/// measured instruction counts.
///
/// ```
/// static_call::static_call! {
///     static HOT: extern "C" fn(u64) -> u64 = inc;
/// }
/// extern "C" fn inc(x: u64) -> u64 { x + 1 }
///
/// # fn main() {
/// assert_eq!(HOT.call(1), 2);
/// assert_eq!(HOT.call_inline(1), 2);
/// assert_eq!(HOT.call_trampoline(1), 2);
/// # }
/// ```
pub struct StaticCall<F: FnPtr> {
    tramp: F,
    indirect: F,
    ret0: F,
    slot: &'static Slot,
    name: &'static str,
}

impl<F: FnPtr> StaticCall<F> {
    #[doc(hidden)]
    /// # Safety
    ///
    /// `tramp`, `indirect`, `ret0` and `slot` must be the key's trampoline,
    /// its entry for indirect calls, return-zero function and slot as
    /// emitted by `static_call!`.
    pub const unsafe fn __new(
        tramp: F,
        indirect: F,
        ret0: F,
        slot: &'static Slot,
        name: &'static str,
    ) -> Self {
        StaticCall {
            tramp,
            indirect,
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
    /// On x86-64 this is a separate entry that starts with `endbr64`, so
    /// indirect calls are accepted under CET indirect branch tracking, and
    /// jumps to the trampoline; on arm64 the trampoline itself starts with
    /// `bti c`.
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
        self.indirect
    }

    /// The address of the trampoline's entry: the code direct calls run and
    /// updates patch.
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

    /// How many inline call sites the key has: calls of an `extern "C"`
    /// key that the crate emitted (each recorded in the program's call-site
    /// table), which every update rewrites along with the trampoline. 0
    /// for Rust-ABI keys (the compiler emits their calls; they all go
    /// through the trampoline) and on the generic backend.
    ///
    /// A function the compiler inlines or unrolls has one site per copy, so
    /// this counts the sites in the binary, not in the source.
    ///
    /// ```
    /// static_call::static_call! {
    ///     static HOT: extern "C" fn(u64) -> u64 = inc;
    ///     static COLD: fn(u64) -> u64 = dec;
    /// }
    /// extern "C" fn inc(x: u64) -> u64 { x + 1 }
    /// fn dec(x: u64) -> u64 { x - 1 }
    /// #[inline(never)]
    /// fn one_site(x: u64) -> u64 { HOT.call_inline(x) }
    ///
    /// # fn main() {
    /// assert_eq!(one_site(1), 2);
    /// assert_eq!(COLD.inline_sites(), 0);
    /// let inline = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"))
    ///     && !cfg!(feature = "force-generic");
    /// assert_eq!(HOT.inline_sites(), usize::from(inline));
    /// # }
    /// ```
    pub fn inline_sites(&self) -> usize {
        crate::site::count_of(self.tramp.addr())
    }

    /// Calls `f` with the address of each of the key's inline call sites,
    /// in address order: for diagnostics, and for tests that decode what
    /// an update left there. Holds the patch lock while it runs, so `f`
    /// sees no update in progress.
    ///
    /// Inside `f`, [`inline_sites`](Self::inline_sites) works (it needs no
    /// lock once the table is prepared, which this has done). In Linux user
    /// space `each_inline_site` works too, and an update (or an install)
    /// is refused with [`Error::LockHeldByThisThread`](crate::Error::LockHeldByThisThread).
    /// On bare metal, where there is no thread to tell apart, neither may
    /// be called from `f`: they would wait forever for the lock.
    ///
    /// ```
    /// static_call::static_call! { static HOT: extern "C" fn(u64) -> u64 = inc; }
    /// extern "C" fn inc(x: u64) -> u64 { x + 1 }
    /// #[inline(never)]
    /// fn one_site(x: u64) -> u64 { HOT.call_inline(x) }
    ///
    /// # fn main() {
    /// let mut sites = Vec::new();
    /// HOT.each_inline_site(|site| sites.push(site));
    /// assert_eq!(sites.len(), HOT.inline_sites());
    /// # let _ = one_site(1);
    /// # }
    /// ```
    pub fn each_inline_site(&self, mut f: impl FnMut(usize)) {
        crate::site::each_of(self.tramp.addr(), &mut f)
    }

    /// The current target, `None` for a NULL key. A RET0 key answers its
    /// return-zero function (see [`is_ret0`](Self::is_ret0)).
    ///
    /// It reads the key's slot, which every successful update sets, not the
    /// trampoline's bytes (whose branch may lead to a linker veneer or the
    /// key's init shim): it takes no lock and never fails, and during an
    /// update it answers the old target until the update has succeeded.
    /// Bytes that something else wrote over the trampoline are found by the
    /// next update, which refuses them.
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
    /// On `Err` the key behaves exactly as before on every CPU, except
    /// after [`Error::RestoreFailed`](crate::Error::RestoreFailed), which says what may be in place.
    ///
    /// The key's own [`trampoline`](Self::trampoline) is refused as a
    /// target ([`Error::SelfTarget`](crate::Error::SelfTarget)): every
    /// call would jump to itself forever. (Keys that target each other's
    /// trampolines in a cycle are not detected.)
    ///
    /// # Locking, signal handlers and interrupts
    ///
    /// Updates take the patch lock, which calls never take. A thread
    /// waiting for it sleeps in Linux user space (the holder may be
    /// preempted in a system call) and spins on bare metal.
    ///
    /// In Linux user space the lock holds off the holder's asynchronous
    /// signals, so a signal handler that updates a key never runs on a
    /// thread in the middle of an update (it would wait forever for its own
    /// thread); it waits like any other updater. A waiter sleeps (on a
    /// futex) rather than spinning, so a real-time waiter cannot starve a
    /// holder on its CPU. An update started on a thread that holds the lock
    /// already (from a text writer, or `each_inline_site`'s closure) is
    /// refused with [`Error::LockHeldByThisThread`](crate::Error::LockHeldByThisThread).
    /// A `fork` made while another thread updates waits for that update,
    /// so the child inherits neither a held lock nor half-written text
    /// (not a raw `clone` or `vfork`, whose child may only `exec` or exit).
    ///
    /// Updating from a handler of a synchronous fault signal (SIGSEGV,
    /// SIGBUS, SIGILL, SIGFPE, SIGTRAP) raised inside an update is not
    /// supported, and on arm64 an update consults the dynamic loader
    /// (`dl_iterate_phdr`, for BTI), so it must not interrupt
    /// `dlopen`/`dlclose` either.
    ///
    /// On bare metal nothing is masked for you: a kernel that updates keys
    /// from an interrupt handler masks that interrupt around its other
    /// updates.
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
    pub fn update(&self, f: F) -> Result<(), UpdateError> {
        self.retarget(f.addr(), None, None)
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
    pub fn update_with(
        &self,
        f: F,
        writer: &(impl UpdateWriter + ?Sized),
    ) -> Result<(), UpdateError> {
        self.retarget(f.addr(), Some(writer.text_writer()), writer.options())
    }

    /// The current target's address (0 for NULL), for putting it back.
    pub(crate) fn current_target(&self) -> usize {
        self.query().map_or(0, FnPtr::addr)
    }

    /// The key's return-zero function's address.
    pub(crate) fn ret0_addr(&self) -> usize {
        self.ret0.addr()
    }

    /// This key's part of a backend's batch, retargeting it to `target`.
    pub(crate) fn batch_item(&self, target: usize) -> crate::arch::BatchItem<'static, Slot> {
        crate::arch::BatchItem {
            tramp: self.tramp.addr(),
            slot: self.slot,
            target,
        }
    }

    /// Refuses a target that is the key itself: its trampoline, or its
    /// entry for indirect calls (what [`trampoline`](Self::trampoline)
    /// returns). Every call would loop forever (or, on the generic
    /// backend, recurse until the stack overflows).
    pub(crate) fn check_target(&self, target: usize) -> Result<(), UpdateError> {
        if target != 0 && (target == self.tramp.addr() || target == self.indirect.addr()) {
            return Err(UpdateError::new(
                self.name,
                crate::Error::SelfTarget {
                    tramp: self.tramp.addr(),
                },
            ));
        }
        Ok(())
    }

    /// Retargets with the patch lock already held, through `writer`, as
    /// `options` say.
    ///
    /// # Safety
    ///
    /// `target` is a function of type `F`, this key's return-zero function
    /// (only if `F::Output: Ret0Safe`) or 0 (only if `F::Output: NullSafe`),
    /// and the caller holds the patch lock.
    pub(crate) unsafe fn retarget_locked(
        &self,
        target: usize,
        writer: &dyn TextWriter,
        options: Options,
    ) -> Result<(), UpdateError> {
        self.check_target(target)?;
        // SAFETY: the trampoline and slot are this key's; `target` is as the
        // caller promises; the caller holds the lock.
        unsafe { Active::retarget(self.tramp.addr(), self.slot, target, writer, options) }
            .map_err(|error| UpdateError::new(self.name, error))
    }

    // `Options` is `()` on backends with nothing to choose.
    #[allow(clippy::let_unit_value)]
    fn retarget(
        &self,
        target: usize,
        writer: Option<&dyn TextWriter>,
        options: Option<Options>,
    ) -> Result<(), UpdateError> {
        self.check_target(target)?;
        let writer = match (writer, Active::WRITES_TEXT) {
            (w, true) => w,
            (_, false) => Some(&writer::Direct::UNUSED as &dyn TextWriter),
        };
        writer::with_patch_lock(writer, |w| {
            // The defaults are read once, with the lock held.
            let options = options.unwrap_or_else(Active::default_options);
            // SAFETY: the trampoline and slot are this key's; `target` is a
            // function of type `F`, this key's return-zero function, or 0
            // for a key whose return type allows NULL; the lock is held.
            unsafe { Active::retarget(self.tramp.addr(), self.slot, target, w, options) }
        })
        .map_err(|error| UpdateError::new(self.name, error))
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
    pub fn update_null(&self) -> Result<(), UpdateError> {
        self.retarget(0, None, None)
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
    pub fn update_null_with(
        &self,
        writer: &(impl UpdateWriter + ?Sized),
    ) -> Result<(), UpdateError> {
        self.retarget(0, Some(writer.text_writer()), writer.options())
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
    pub fn update_ret0(&self) -> Result<(), UpdateError> {
        self.retarget(self.ret0.addr(), None, None)
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
    pub fn update_ret0_with(
        &self,
        writer: &(impl UpdateWriter + ?Sized),
    ) -> Result<(), UpdateError> {
        self.retarget(
            self.ret0.addr(),
            Some(writer.text_writer()),
            writer.options(),
        )
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
///
/// The trait is sealed: a NULL call leaves the return registers as they
/// were, which is a value of no type but `()`.
#[diagnostic::on_unimplemented(
    message = "a NULL static call must return `()`, not `{Self}`",
    label = "NULL keys need a `()` return type; use RET0 for a zero result"
)]
pub trait NullSafe: sealed::Sealed {}
impl NullSafe for () {}

mod sealed {
    /// Only this crate decides which types a NULL call may return.
    #[diagnostic::on_unimplemented(
        message = "only `()` can be returned by a NULL static call: `NullSafe` is sealed",
        label = "a NULL call returns no value of `{Self}`"
    )]
    pub trait Sealed {}
    impl Sealed for () {}
}

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
///     /// A hot path: the call is an instruction the crate emits itself.
///     pub static SCHED_TICK: extern "C" fn(u64) -> u64 = sched_tick;
/// }
/// fn default_tick(scale: u32) -> u64 { u64::from(scale) }
/// extern "C" fn sched_tick(now: u64) -> u64 { now + 1 }
///
/// # fn main() {
/// assert_eq!(TICK.call(3), 3);
/// ON_IDLE.call(1);
/// assert_eq!(EVENTS.call(), 0);
/// assert_eq!(SCHED_TICK.call(41), 42);
/// # }
/// ```
///
/// Each key is a `static` with a `call` method taking the signature's
/// arguments. The key dereferences to [`StaticCall`] for `update`, `query`
/// and `trampoline`.
///
/// # Rust-ABI and `extern "C"` keys
///
/// - `fn(..)` keys: `call` is a call of the key's trampoline that the
///   compiler emits. Any argument and return types (without elided
///   lifetimes). On x86-64 the compiler emits that call through the GOT in
///   position-independent builds (the default), see the README.
/// - `extern "C" fn(..)` keys: `call_inline` is a `call`/`bl` instruction
///   of the trampoline that the crate emits with `asm!` and records (an
///   inline site), so it is a direct call in every relocation model and
///   with retpolines, rewritten by every update to call the target itself;
///   `call_trampoline` is the compiler's call of the trampoline; `call` is
///   whichever is cheaper on the target (the inline site on x86-64 and
///   soft-float arm64, the trampoline call on arm64 with FP/SIMD registers
///   and for 7 or 8 arguments on x86-64; see
///   [`StaticCall`](crate::StaticCall#calling-a-key)). Each argument and the
///   return value must travel in one integer register
///   ([`RegisterArg`](crate::RegisterArg),
///   [`RegisterReturn`](crate::RegisterReturn)); anything else is refused
///   at compile time. Prefer these keys where the call is hot.
///
/// # Rules, checked at compile time
///
/// - Up to eight arguments; no elided lifetimes (`fn(&str)` is
///   higher-ranked: pass `&'static` references, raw pointers or owned
///   values).
/// - The initial target is a function item (not a `static` or `const`
///   holding a function pointer), of exactly the key's type.
/// - `NULL` keys return `()`; `RET0` keys return a
///   [`Ret0Safe`] type.
/// - Keys are module-level items: their trampoline is module-level
///   assembly, which cannot be emitted inside a function body.
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
/// nor a key whose initial target is a function pointer rather than a
/// function:
///
/// ```compile_fail
/// fn f() {}
/// static PTR: fn() = f;
/// static_call::static_call! { static BAD: fn() = PTR; }
/// # fn main() {}
/// ```
///
/// nor an `extern "C"` key with an argument that needs a vector register:
///
/// ```compile_fail
/// static_call::static_call! { static BAD: extern "C" fn(f64) = NULL; }
/// # fn main() {}
/// ```
///
/// Key names are link-level symbols, as in Linux: two keys of the same name
/// in one program fail to link. Lower-case names, as Linux spells them, are
/// fine. Another crate may call a key through
/// [`declare_static_call!`](crate::declare_static_call).
#[macro_export]
macro_rules! static_call {
    () => {};
    ($(#[$attr:meta])* $vis:vis static $name:ident : $(extern $abi:tt)? fn($($arg:ty),* $(,)?) $(-> $ret:ty)? = NULL; $($rest:tt)*) => {
        $crate::__static_call_key! { @abi [$($abi)?] define [$(#[$attr])*] [$vis] $name [$($arg),*] [$($ret)?] null }
        $crate::static_call! { $($rest)* }
    };
    ($(#[$attr:meta])* $vis:vis static $name:ident : $(extern $abi:tt)? fn($($arg:ty),* $(,)?) $(-> $ret:ty)? = RET0; $($rest:tt)*) => {
        $crate::__static_call_key! { @abi [$($abi)?] define [$(#[$attr])*] [$vis] $name [$($arg),*] [$($ret)?] ret0 }
        $crate::static_call! { $($rest)* }
    };
    ($(#[$attr:meta])* $vis:vis static $name:ident : $(extern $abi:tt)? fn($($arg:ty),* $(,)?) $(-> $ret:ty)? = $init:path; $($rest:tt)*) => {
        $crate::__static_call_key! { @abi [$($abi)?] define [$(#[$attr])*] [$vis] $name [$($arg),*] [$($ret)?] func $init }
        $crate::static_call! { $($rest)* }
    };
    ($($other:tt)+) => {
        ::core::compile_error!(
            "static_call!: expected `[pub] static NAME: fn(ARGS) [-> RET] = TARGET;` or the same \
             with `extern \"C\" fn`, where TARGET is a function, NULL or RET0"
        );
    };
}

/// Declares a key that another crate defines with [`static_call!`], so
/// this crate can call it without depending on the defining crate.
///
/// Declarations are `unsafe static`: the declaration must spell the same
/// signature with the *same types* as the definition. The crate checks what
/// it can: a declaration whose signature is spelled differently fails to
/// link. It cannot see that two types spelled alike are the same (`Arg` may
/// be `&u64` in one crate and `usize` in another), which is the promise the
/// `unsafe` stands for, exactly as in an `unsafe extern` block.
///
/// As in Linux (`DECLARE_STATIC_CALL`), every program that links the
/// declaration must also link a definition of the key (if need be, with
/// `= NULL` for a hook nobody installs), or it fails to link.
///
/// ```
/// // In the crate that owns the key (often a platform crate):
/// static_call::static_call! { pub static IRQ_HOOK: fn(u32) -> u32 = ack; }
/// fn ack(irq: u32) -> u32 { irq }
///
/// // In a crate that cannot depend on it (often the core kernel):
/// mod core_kernel {
///     static_call::declare_static_call! {
///         // SAFETY: the definition has exactly this signature, with
///         // these very types.
///         pub unsafe static IRQ_HOOK: fn(u32) -> u32;
///     }
///     pub fn handle(irq: u32) -> u32 { IRQ_HOOK.call(irq) }
/// }
/// # fn main() {
/// assert_eq!(core_kernel::handle(7), 7);
/// # }
/// ```
///
/// `extern "C"` keys are declared the same way; the declaring crate's
/// calls are the crate's own direct `call`/`bl`:
///
/// ```
/// static_call::static_call! { pub static TIMER_ACK: extern "C" fn(u32) -> u32 = ack; }
/// extern "C" fn ack(irq: u32) -> u32 { irq + 1 }
/// extern "C" fn nack(irq: u32) -> u32 { irq }
///
/// mod core_kernel {
///     static_call::declare_static_call! {
///         // SAFETY: defined with exactly this signature and these types.
///         pub unsafe static TIMER_ACK: extern "C" fn(u32) -> u32;
///     }
///     pub fn ack(irq: u32) -> u32 { TIMER_ACK.call(irq) }
/// }
/// # fn main() {
/// assert_eq!(core_kernel::ack(7), 8);
/// # if static_call::DEFAULT_WRITER_AVAILABLE {
/// core_kernel::TIMER_ACK.update(nack).unwrap(); // updates through the declaration
/// assert_eq!(TIMER_ACK.call(7), 7);
/// # }
/// # }
/// ```
///
/// A declaration without `unsafe` does not compile:
///
/// ```compile_fail
/// static_call::static_call! { pub static IRQ_HOOK: fn(u32) -> u32 = ack; }
/// fn ack(irq: u32) -> u32 { irq }
/// mod core_kernel {
///     static_call::declare_static_call! { pub static IRQ_HOOK: fn(u32) -> u32; }
/// }
/// # fn main() {}
/// ```
///
/// A declaration with another signature does not link:
///
/// ```compile_fail
/// static_call::static_call! { pub static IRQ_HOOK: fn(u32) -> u32 = ack; }
/// fn ack(irq: u32) -> u32 { irq }
/// mod core_kernel {
///     static_call::declare_static_call! { pub unsafe static IRQ_HOOK: fn(u64) -> u32; }
///     pub fn handle(irq: u64) -> u32 { IRQ_HOOK.call(irq) }
/// }
/// fn main() { core_kernel::handle(7); }
/// ```
#[macro_export]
macro_rules! declare_static_call {
    () => {};
    ($(#[$attr:meta])* $vis:vis unsafe static $name:ident : $(extern $abi:tt)? fn($($arg:ty),* $(,)?) $(-> $ret:ty)?; $($rest:tt)*) => {
        $crate::__static_call_key! { @abi [$($abi)?] declare [$(#[$attr])*] [$vis] $name [$($arg),*] [$($ret)?] declared unsafe }
        $crate::declare_static_call! { $($rest)* }
    };
    ($(#[$attr:meta])* $vis:vis static $($other:tt)*) => {
        ::core::compile_error!(
            "declare_static_call!: write `unsafe static`: the types of the declared signature \
             must be the definition's very types, which the compiler cannot check across crates"
        );
    };
    ($($other:tt)+) => {
        ::core::compile_error!(
            "declare_static_call!: expected `[pub] unsafe static NAME: fn(ARGS) [-> RET];` \
             (or `extern \"C\" fn`)"
        );
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_key {
    // The ABI: Rust, or C (the call is emitted by the crate).
    (@abi [] $($tail:tt)*) => {
        $crate::__static_call_key! { rust $($tail)* }
    };
    (@abi ["C"] $($tail:tt)*) => {
        $crate::__static_call_key! { c $($tail)* }
    };
    (@abi [$abi:tt] $($tail:tt)*) => {
        ::core::compile_error!(::core::concat!(
            "static_call!: `extern ", ::core::stringify!($abi), " fn` keys are not supported; ",
            "use `fn(..)` (Rust ABI) or `extern \"C\" fn(..)`"
        ));
    };
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
    // `$init`: a define's target (a path), or a declaration's `unsafe`.
    ($abi:ident $mode:ident [$($attr:tt)*] [$vis:vis] $name:ident [$($arg:ty),*] [$($ret:ty)?] $kind:ident $($init:tt)?) => {
        $crate::__static_call_key! {
            @zip [] [$($arg),*] [a0 a1 a2 a3 a4 a5 a6 a7]
            $abi $mode [$($attr)*] [$vis] $name [$($arg),*] [$($ret)?] $kind $($init)?
        }
    };
    (@emit [$(($id:ident: $t:ty))*] $abi:ident $mode:ident [$($attr:tt)*] [$vis:vis] $name:ident [$($arg:ty),*] [$($ret:ty)?] $kind:ident $($init:tt)?) => {
        #[allow(non_camel_case_types)]
        #[doc = $crate::__static_call_key!(@struct_doc $abi $name)]
        $vis struct $name {
            _private: (),
        }

        $($attr)*
        #[allow(non_upper_case_globals)]
        $vis static $name: $name = $name { _private: () };

        $crate::__static_call_key! { @module $abi $mode $kind $name $($init)? }

        // Each argument type on its own, where an elided lifetime is an
        // error that says so ("missing lifetime specifier", suggesting
        // `'static`): in the key's `fn` type it would silently make the
        // type higher-ranked, which no key can have.
        $(const _: () = {
            #[allow(dead_code)]
            type __Arg = $arg;
        };)*

        const _: () = {
            type __Fn = $crate::__static_call_key!(@fn_type $abi [$($arg),*] [$($ret)?]);

            $crate::__static_call_key! { @$mode $abi $kind $name [$(($id: $t))*] [$($arg),*] [$($ret)?] $($init)? }

            impl $name {
                $crate::__static_call_key! {
                    @methods_for $mode $kind [$($init)?] $abi $vis [$(($id: $t))*] [$($ret)?]
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
    (@fn_type rust [$($arg:ty),*] [$($ret:ty)?]) => { fn($($arg),*) $(-> $ret)? };
    (@fn_type c [$($arg:ty),*] [$($ret:ty)?]) => { extern "C" fn($($arg),*) $(-> $ret)? };
    (@ret_type) => { () };
    (@ret_type $ret:ty) => { $ret };
    (@struct_doc rust $name:ident) => {
        ::core::concat!(
            "Static call key `", ::core::stringify!($name), "`: call it with `",
            ::core::stringify!($name), ".call(..)` (the compiler's call of the key's trampoline); ",
            "it dereferences to its [`StaticCall`]($crate::StaticCall) for `update` and `query`."
        )
    };
    (@struct_doc c $name:ident) => {
        ::core::concat!(
            "Static call key `", ::core::stringify!($name), "` (`extern \"C\"`): call it with `",
            ::core::stringify!($name), ".call(..)`, the cheaper call for the target, or choose ",
            "per call: `call_inline(..)` (an inline site the crate emits, rewritten by every ",
            "update) or `call_trampoline(..)` (the compiler's call of the trampoline, which can ",
            "be a tail call); see [`StaticCall`]($crate::StaticCall#calling-a-key). ",
            "It dereferences to its `StaticCall` for `update` and `query`."
        )
    };
    // What an inline site calls as assembled, `[target, null]` (see
    // `asm/<arch>/call_site.S`): where the definition is visible, the
    // initial target (the return-zero function for RET0, the no-op for
    // NULL), so a key that is never updated costs a direct call; through a
    // declaration, the trampoline, the one target it can name.
    (@methods_for define func [$init:path] $($rest:tt)*) => {
        $crate::__static_call_key! { @methods $($rest)* [$init, 0] }
    };
    (@methods_for define ret0 [] $($rest:tt)*) => {
        $crate::__static_call_key! { @methods $($rest)* [__ret0, 0] }
    };
    (@methods_for define null [] $($rest:tt)*) => {
        $crate::__static_call_key! { @methods $($rest)* [__tramp, 1] }
    };
    (@methods_for declare $kind:ident [$($init:tt)?] $($rest:tt)*) => {
        $crate::__static_call_key! { @methods $($rest)* [__tramp, 0] }
    };
    (@methods rust $vis:vis [$(($id:ident: $t:ty))*] [$($ret:ty)?] $site:tt) => {
        /// Calls the key's current target (the compiler's call of the
        /// key's trampoline).
        #[inline(always)]
        #[allow(dead_code, clippy::too_many_arguments)]
        $vis fn call(&self, $($id: $t),*) $(-> $ret)? {
            __tramp($($id),*)
        }
    };
    (@methods c $vis:vis [$(($id:ident: $t:ty))*] [$($ret:ty)?] $site:tt) => {
        /// Calls the key's current target with the call that is cheaper
        /// on the target this crate is built for: an inline call site on
        /// x86-64 (up to six arguments) and soft-float arm64, the
        /// compiler's call of the trampoline on arm64 with FP/SIMD
        /// registers and for 7 or 8 arguments on x86-64. See
        /// [`StaticCall`]($crate::StaticCall#calling-a-key).
        #[inline(always)]
        #[allow(dead_code, clippy::too_many_arguments)]
        $vis fn call(&self, $($id: $t),*) $(-> $ret)? {
            $crate::__static_call_c_default_call!(
                __tramp, $site, $crate::__static_call_key!(@ret_type $($ret)?); $($id),*
            )
        }

        $crate::__static_call_inline_method! { $vis [$(($id: $t))*] [$($ret)?] $site }

        /// Calls the key's current target through the compiler's own call
        /// of the key's trampoline (`bl`/`call`, or a tail call `b`/`jmp`),
        /// which every update retargets. On x86-64 in position-independent
        /// builds the compiler may load the trampoline's address from the
        /// GOT.
        #[inline(always)]
        #[allow(dead_code, clippy::too_many_arguments)]
        $vis fn call_trampoline(&self, $($id: $t),*) $(-> $ret)? {
            $crate::__static_call_c_tramp_call!(
                __tramp, $crate::__static_call_key!(@ret_type $($ret)?); $($id),*
            )
        }
    };
    // Items that must sit at module level (`global_asm!`); their names are
    // link-level symbols derived from the key's name.
    (@module $abi:ident define $kind:ident $name:ident $($init:path)?) => {
        $crate::__static_call_trampoline_asm! { $name $abi $kind $($init)? }
    };
    (@module $abi:ident declare $($tail:tt)*) => {};
    (@define $abi:ident $kind:ident $name:ident [$(($id:ident: $t:ty))*] [$($arg:ty),*] [$($ret:ty)?] $($init:path)?) => {
        $crate::__static_call_key! { @ret0_fn $abi $name [$(($id: $t))*] [$($ret)?] }
        $crate::__static_call_key! { @init_fn $abi $kind $name [$(($id: $t))*] [$($ret)?] $($init)? }
        $crate::__static_call_key! { @check $kind __Fn, $($init)? }

        static __SLOT: $crate::__private::Slot = $crate::__private::Slot::new(
            $crate::__static_call_key!(@initial $kind __Fn, $($init)?)
        )
        .assembled_for($crate::__static_call_key!(@assembled $abi $kind __Fn, $($init)?));

        $crate::__static_call_trampoline! {
            $abi $name [$(($id: $t))*] [$($ret)?] $kind $($init)?
        }

        #[unsafe(export_name = $crate::__static_call_key!(@key_symbol $abi $name [$($arg),*] [$($ret)?]))]
        static __KEY: $crate::StaticCall<__Fn> =
            // SAFETY: the trampoline, return-zero function and slot are
            // this key's own, emitted just above.
            unsafe {
                $crate::StaticCall::__new(
                    __tramp,
                    $crate::__static_call_indirect_entry!(),
                    __ret0,
                    &__SLOT,
                    ::core::stringify!($name),
                )
            };
    };
    // A declaration takes the caller's `unsafe` (`declare_static_call!`
    // demands it of its user), so this arm is no safe way around it.
    (@declare $abi:ident declared $name:ident [$(($id:ident: $t:ty))*] [$($arg:ty),*] [$($ret:ty)?] unsafe) => {
        // SAFETY: the key symbol is defined by `static_call!` for a key of
        // this name and signature (the signature is part of the symbol, so
        // a differently spelled declaration fails to link; the user's
        // `unsafe static` promises the types are the definition's).
        unsafe extern "Rust" {
            #[link_name = $crate::__static_call_key!(@key_symbol $abi $name [$($arg),*] [$($ret)?])]
            safe static __KEY: $crate::StaticCall<__Fn>;
        }
        $crate::__static_call_key! { @extern_trampoline $abi $name [$(($id: $t))*] [$($ret)?] }
        // Referencing the key makes the signature check happen at link
        // time even if this crate only calls the key.
        #[used]
        static __SIGNATURE_CHECK: &$crate::StaticCall<__Fn> = &__KEY;
    };
    // The trampoline as an external function, `__tramp`: the assembly one,
    // or (generic backend) another crate's Rust one.
    (@extern_trampoline rust $name:ident [$(($id:ident: $t:ty))*] [$($ret:ty)?]) => {
        // SAFETY: the trampoline `static_call!` emits for this key jumps to
        // a function of exactly this signature (or returns, for a NULL key,
        // whose return type is `()`).
        unsafe extern "Rust" {
            #[link_name = ::core::concat!("__SCT__", ::core::stringify!($name))]
            safe fn __tramp($($id: $t),*) $(-> $ret)?;
        }
    };
    (@extern_trampoline c $name:ident [$(($id:ident: $t:ty))*] [$($ret:ty)?]) => {
        // SAFETY: as for Rust-ABI keys, with the C ABI.
        unsafe extern "C" {
            #[link_name = ::core::concat!("__SCT__", ::core::stringify!($name))]
            safe fn __tramp($($id: $t),*) $(-> $ret)?;
        }
    };
    // The trampoline's entry for indirect calls, `__tramp_indirect`, where
    // the backend has one (`asm/x86_64/trampoline.S`).
    (@extern_indirect rust $name:ident [$(($id:ident: $t:ty))*] [$($ret:ty)?]) => {
        // SAFETY: `NAME.indirect` jumps to the trampoline `__tramp`.
        unsafe extern "Rust" {
            #[link_name = ::core::concat!("__SCT__", ::core::stringify!($name), ".indirect")]
            safe fn __tramp_indirect($($id: $t),*) $(-> $ret)?;
        }
    };
    (@extern_indirect c $name:ident [$(($id:ident: $t:ty))*] [$($ret:ty)?]) => {
        // SAFETY: `NAME.indirect` jumps to the trampoline `__tramp`.
        unsafe extern "C" {
            #[link_name = ::core::concat!("__SCT__", ::core::stringify!($name), ".indirect")]
            safe fn __tramp_indirect($($id: $t),*) $(-> $ret)?;
        }
    };
    // The key's return-zero target: a function of exactly the key's
    // signature, installed only when the return type is `Ret0Safe`.
    (@ret0_fn rust $name:ident [$(($id:ident: $t:ty))*] [$($ret:ty)?]) => {
        #[allow(invalid_value, unused_variables, clippy::too_many_arguments)]
        #[unsafe(export_name = ::core::concat!("__SCR__", ::core::stringify!($name)))]
        fn __ret0($($id: $t),*) $(-> $ret)? {
            // SAFETY: only reachable through a RET0 update or a RET0
            // definition, both of which require the return type to be
            // `Ret0Safe` (all-zero is a valid value).
            unsafe { $crate::__private::core::mem::zeroed() }
        }
    };
    (@ret0_fn c $name:ident [$(($id:ident: $t:ty))*] [$($ret:ty)?]) => {
        #[allow(invalid_value, unused_variables, clippy::too_many_arguments)]
        #[unsafe(export_name = ::core::concat!("__SCR__", ::core::stringify!($name)))]
        extern "C" fn __ret0($($id: $t),*) $(-> $ret)? {
            // SAFETY: as for Rust-ABI keys.
            unsafe { $crate::__private::core::mem::zeroed() }
        }
    };
    // A Rust-ABI key's trampoline starts out branching to this shim rather
    // than to the target itself: `sym` names a function's own code, which
    // for a `#[track_caller]` function expects a hidden location argument
    // that a call through the key would not pass. The shim is an ordinary
    // call, so the compiler passes whatever the target needs; after the
    // first update the trampoline branches to the target directly.
    // `extern "C"` functions cannot be `#[track_caller]`, so their keys
    // branch to the target from the start.
    (@init_fn rust func $name:ident [$(($id:ident: $t:ty))*] [$($ret:ty)?] $init:path) => {
        #[allow(clippy::too_many_arguments)]
        #[unsafe(export_name = ::core::concat!("__SCI__", ::core::stringify!($name)))]
        fn __init($($id: $t),*) $(-> $ret)? {
            $init($($id),*)
        }
    };
    (@init_fn $abi:ident $kind:ident $name:ident [$($named:tt)*] [$($ret:ty)?] $($init:path)?) => {};
    (@check null $f:ty,) => { const _: () = $crate::__private::assert_null_safe::<$f>(); };
    (@check ret0 $f:ty,) => { const _: () = $crate::__private::assert_ret0_safe::<$f>(); };
    (@check func $f:ty, $init:path) => {
        const _: () = {
            let item = $init;
            let _: $f = item;
            ::core::assert!(
                $crate::__private::core::mem::size_of_val(&item) == 0,
                "static_call!: the initial target must name a function, not a static or const \
                 holding a function pointer"
            );
        };
    };
    (@key_symbol $abi:ident $name:ident [$($arg:ty),*] [$($ret:ty)?]) => {
        ::core::concat!(
            "__SCK__", ::core::stringify!($name), "$", ::core::stringify!($abi), "$fn(",
            $(::core::stringify!($arg), ",",)* ")->", $(::core::stringify!($ret))?
        )
    };
    // Where the assembled branch leads: the init shim for Rust-ABI keys.
    (@assembled rust func $f:ty, $init:path) => { __init as $f as *mut () };
    (@assembled $abi:ident $kind:ident $f:ty, $($init:path)?) => {
        $crate::__static_call_key!(@initial $kind $f, $($init)?)
    };
    (@initial null $f:ty,) => { $crate::__private::core::ptr::null_mut() };
    (@initial ret0 $f:ty,) => { __ret0 as $f as *mut () };
    (@initial func $f:ty, $init:path) => { $init as $f as *mut () };
}
