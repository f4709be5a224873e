//! Text writers: how a retarget gets its bytes into executable memory.
//!
//! Backends never store to text themselves. They hand each store to a
//! [`TextWriter`], so the same patching code serves a kernel with text mapped
//! read-only (a writable alias, as Linux's `text_poke` uses), a kernel with
//! the MMU off, and a Linux process that must stay W^X.

mod bare;
#[cfg(any(test, all(target_os = "linux", target_arch = "aarch64")))]
mod bti;
#[cfg(target_os = "linux")]
mod fork;
#[cfg(target_os = "linux")]
mod futex;
#[cfg(target_os = "linux")]
pub mod linux;
pub mod maps;
mod mmu_off;

pub use bare::{Alias, Direct};
pub use mmu_off::allow_updates_with_mmu_off;

use crate::Error;
use core::marker::PhantomData;
#[cfg(not(target_os = "linux"))]
use spin::mutex::SpinMutex;

/// Writes to executable memory on behalf of a backend, and optionally makes
/// every CPU see the result.
///
/// All calls happen with the crate's patch lock held, so a writer never sees
/// two writes at once.
///
/// A kernel's writer typically maps the page through a temporary writable
/// alias, stores, and unmaps (Linux's `text_poke`); its `sync_cores`
/// interrupts the other CPUs:
///
/// ```
/// use static_call::{Error, TextWriter};
///
/// struct KernelWriter;
///
/// // SAFETY: `write` stores exactly `bytes`, atomically for aligned
/// // 1/2/4/8-byte writes (it delegates to `Direct` in this sketch).
/// unsafe impl TextWriter for KernelWriter {
///     unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
///         // map_alias(addr); ...
///         // SAFETY: forwarded from the caller; this kernel's text is
///         // writable where it runs.
///         unsafe { static_call::writer::Direct::new().write(addr, bytes) }
///     }
///     fn sync_cores(&self) -> Result<(), Error> {
///         // send_ipi_to_all_and_wait();
///         Ok(())
///     }
/// }
/// ```
///
/// # Safety
///
/// Implementors promise that [`write`](TextWriter::write), when it returns
/// `Ok`, has stored exactly `bytes` into the memory that executes at
/// `addr..addr + bytes.len()` and nothing else, and that when `bytes.len()`
/// is 1, 2, 4 or 8 and `addr` is aligned to it, the store is a single
/// single-copy-atomic store, so a concurrent instruction fetch or load sees
/// either the old or the new value, never a mix. When it returns `Err` it
/// must have stored nothing, with one exception: an
/// [`Error::RestoreFailed`] says the writer cannot tell, or could not put
/// back, what the text holds (a Linux writer whose page a failed `mremap`
/// left unmapped). Backends then return that error as it is and read or
/// write nothing more of that text in the update.
pub unsafe trait TextWriter: Sync {
    /// Stores `bytes` into the text that executes at `addr`.
    ///
    /// # Safety
    ///
    /// `addr..addr + bytes.len()` must be text the caller owns for patching
    /// (a trampoline or call site), and the caller must hold the patch lock.
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error>;

    /// Stores every patch of `patches`, in order, as [`write`](Self::write)
    /// would one by one (each aligned 1/2/4/8-byte patch single-copy
    /// atomic). Updates of keys with inline call sites hand all the stores
    /// of one step to one call, sorted by address, so a writer can map or
    /// copy each page once per step rather than once per site; the default
    /// writes them one by one.
    ///
    /// On `Err`, each patch has been stored whole or not at all (the
    /// caller reads back to learn which).
    ///
    /// # Safety
    ///
    /// As for [`write`](Self::write), for every patch.
    unsafe fn write_batch(
        &self,
        patches: &mut dyn Iterator<Item = TextPatch>,
    ) -> Result<(), Error> {
        for p in patches {
            // SAFETY: the caller's contract, for each patch.
            unsafe { self.write(p.addr, p.bytes()) }?;
        }
        Ok(())
    }

    /// Makes every CPU that may run the patched text discard instructions it
    /// fetched before the last write (a context synchronization event on
    /// each: `membarrier(SYNC_CORE)` in Linux user space, an IPI in a
    /// kernel). Called after the backend's own cache maintenance.
    ///
    /// The default does nothing: other CPUs then pick up a change at their
    /// next context synchronization event, and meanwhile run either the old
    /// or the new instruction, which every backend's patch protocol allows.
    fn sync_cores(&self) -> Result<(), Error> {
        Ok(())
    }
    /// Whether the writer publishes whole pages: every write (and every
    /// page of a [`write_batch`](Self::write_batch)) goes into a private
    /// copy of the page that then replaces the page in one atomic swap, so
    /// no CPU ever fetches bytes while they are being written and the
    /// text a CPU ran before the swap is never modified (`linux::Remap`).
    /// Backends then write a whole update, trampolines and call sites, in
    /// one batch followed by one [`sync_cores`](Self::sync_cores), with no
    /// intermediate states to protect (x86-64's
    /// [`Strategy::PageSwap`](crate::arch::x86_64::Strategy::PageSwap)).
    ///
    /// The default, `false`, is right for every writer that stores in
    /// place; a writer that wraps another forwards its answer. Part of the
    /// trait's safety contract: a writer that says `true` and stores in
    /// place exposes other CPUs to cross-modifying code no protocol
    /// guards.
    fn publishes_pages(&self) -> bool {
        false
    }
}

/// The writer of one update, noting whether it ever returned
/// [`Error::RestoreFailed`]: the writer lost the text (see [`TextWriter`]),
/// so the update reads none of it to learn what calls reach.
#[cfg_attr(
    not(any(target_arch = "aarch64", target_arch = "x86_64")),
    allow(dead_code)
)]
pub(crate) struct Watched<'a> {
    inner: &'a dyn TextWriter,
    lost: core::sync::atomic::AtomicBool,
}

#[cfg_attr(
    not(any(target_arch = "aarch64", target_arch = "x86_64")),
    allow(dead_code)
)]
impl<'a> Watched<'a> {
    pub(crate) fn new(inner: &'a dyn TextWriter) -> Self {
        Watched {
            inner,
            lost: core::sync::atomic::AtomicBool::new(false),
        }
    }

    fn note<T>(&self, r: Result<T, Error>) -> Result<T, Error> {
        if let Err(Error::RestoreFailed { .. }) = r {
            self.lost.store(true, core::sync::atomic::Ordering::Relaxed);
        }
        r
    }

    /// Whether the writer returned [`Error::RestoreFailed`].
    pub(crate) fn lost(&self) -> bool {
        self.lost.load(core::sync::atomic::Ordering::Relaxed)
    }
}

// SAFETY: forwards every write unchanged to a writer that keeps the
// contract.
unsafe impl TextWriter for Watched<'_> {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        // SAFETY: the caller's contract, passed on.
        self.note(unsafe { self.inner.write(addr, bytes) })
    }

    unsafe fn write_batch(
        &self,
        patches: &mut dyn Iterator<Item = TextPatch>,
    ) -> Result<(), Error> {
        // SAFETY: the caller's contract, passed on.
        self.note(unsafe { self.inner.write_batch(patches) })
    }

    fn sync_cores(&self) -> Result<(), Error> {
        self.note(self.inner.sync_cores())
    }
    fn publishes_pages(&self) -> bool {
        self.inner.publishes_pages()
    }
}

/// One store of a [`TextWriter::write_batch`]: up to 8 bytes at `addr`.
///
/// ```
/// use static_call::writer::TextPatch;
/// let p = TextPatch::new(0x1000, &[0xd5, 0x03, 0x20, 0x1f]);
/// assert_eq!((p.addr, p.bytes()), (0x1000, &[0xd5, 0x03, 0x20, 0x1f][..]));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextPatch {
    /// Where the bytes go.
    pub addr: usize,
    bytes: [u8; 8],
    len: u8,
}

impl TextPatch {
    /// A patch of `bytes` (at most 8) at `addr`.
    ///
    /// # Panics
    ///
    /// If `bytes` is longer than 8.
    pub fn new(addr: usize, bytes: &[u8]) -> Self {
        let mut b = [0; 8];
        b[..bytes.len()].copy_from_slice(bytes);
        TextPatch {
            addr,
            bytes: b,
            len: bytes.len() as u8,
        }
    }

    /// The bytes stored.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

/// The patch lock, holding the default writer. Every retarget takes it, so
/// patches of the same text never interleave; calls never take it.
///
/// In Linux user space a waiter sleeps on a futex (see [`futex`]): the
/// holder may be preempted in the middle of its `mmap`/`mremap`/`membarrier`
/// calls, and a waiter that kept its CPU could starve it.
#[cfg(target_os = "linux")]
static PATCH: futex::FutexMutex<Option<&'static dyn TextWriter>> = futex::FutexMutex::new(None);

/// On bare metal the holder runs on another CPU (or this CPU's interrupt
/// handler was masked around it), and a waiter spins.
#[cfg(not(target_os = "linux"))]
static PATCH: SpinMutex<Option<&'static dyn TextWriter>, Relax> = SpinMutex::new(None);

#[cfg(target_os = "linux")]
type Guard = futex::FutexGuard<'static, Option<&'static dyn TextWriter>>;
#[cfg(not(target_os = "linux"))]
type Guard = mmu_off::Guard<'static, Option<&'static dyn TextWriter>, Relax>;

/// How a thread waits for the patch lock on bare metal.
#[cfg(not(target_os = "linux"))]
struct Relax;

#[cfg(not(target_os = "linux"))]
impl spin::relax::RelaxStrategy for Relax {
    fn relax() {
        core::hint::spin_loop();
    }
}

/// Takes the patch lock, or refuses if this thread holds it already (in
/// Linux user space; on bare metal there is no thread to tell apart, and
/// taking it twice waits forever), or, on arm64 bare metal with the MMU
/// off, takes it the way `mmu_off` allows or refuses.
fn acquire() -> Result<Guard, Error> {
    #[cfg(target_os = "linux")]
    {
        // Before the lock is ever held: from then on, `fork` waits for it.
        fork::ensure_handlers();
        PATCH.lock().map_err(|_| Error::LockHeldByThisThread)
    }
    #[cfg(not(target_os = "linux"))]
    {
        mmu_off::lock(&PATCH)
    }
}

/// Every signal but the synchronous fault ones (`SIGTRAP`, `SIGSEGV`,
/// `SIGBUS`, `SIGILL`, `SIGFPE`): what can be held off on a thread. The
/// fault signals cannot be deferred: the kernel kills a thread that faults
/// with them blocked, and a call must still be able to trap on an `int3`.
#[cfg(target_os = "linux")]
pub(crate) fn asynchronous_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, filled in by sigfillset and edited
    // with sigdelset, all on a local.
    unsafe {
        let mut set: libc::sigset_t = core::mem::zeroed();
        libc::sigfillset(&mut set);
        for sync in [
            libc::SIGTRAP,
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
        ] {
            libc::sigdelset(&mut set, sync);
        }
        set
    }
}

/// Signals held off while this thread holds the patch lock, so that no
/// signal handler can run on the thread that holds it: one that updated a
/// key would otherwise wait forever for a lock its own thread holds. The
/// synchronous fault signals stay deliverable: they cannot be deferred (the
/// kernel kills a thread that faults with them blocked), and a call made
/// under the lock must still be able to trap on an `int3`.
///
/// Bare metal has nothing to hold off here: a kernel that updates keys
/// from an interrupt handler masks that interrupt around its own updates.
struct SignalsHeld {
    #[cfg(target_os = "linux")]
    previous: libc::sigset_t,
}

impl SignalsHeld {
    fn hold() -> Self {
        #[cfg(target_os = "linux")]
        {
            let held = asynchronous_signals();
            // SAFETY: sigset_t is plain data; pthread_sigmask only changes
            // this thread's mask and writes the previous one into our local.
            unsafe {
                let mut previous: libc::sigset_t = core::mem::zeroed();
                libc::pthread_sigmask(libc::SIG_BLOCK, &held, &mut previous);
                SignalsHeld { previous }
            }
        }
        #[cfg(not(target_os = "linux"))]
        SignalsHeld {}
    }
}

impl Drop for SignalsHeld {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: puts back the mask `hold` saved, for this thread only.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.previous, core::ptr::null_mut());
        }
    }
}

/// Whether [`default_writer`] has a platform writer to fall back to.
pub(crate) const PLATFORM_DEFAULT_AVAILABLE: bool = cfg!(target_os = "linux");

/// Installs the writer that [`crate::StaticCall::update`] uses, replacing
/// the one installed before (if any).
///
/// The writer is replaced under the patch lock, so an update that is
/// running finishes with the writer it started with, and every update that
/// takes the lock afterwards uses the new one. A kernel typically calls it
/// twice: at boot with [`Direct`] while the MMU is off, then with an
/// [`Alias`] once its text is mapped read-only:
///
/// ```no_run
/// use static_call::writer::{self, Alias, Direct};
/// // SAFETY: text is writable where it runs until the MMU is on.
/// static BOOT: Direct = unsafe { Direct::new() };
/// // SAFETY (of this sketch): once the MMU is on, the 2 MiB of text at
/// // 0x4008_0000 is also mapped read-write at 0x8008_0000, for good.
/// static MAPPED: Alias = unsafe { Alias::new(0x4008_0000, 0x8008_0000, 0x20_0000) };
/// # fn enable_mmu() {}
/// # fn boot() {
/// // SAFETY: the boot CPU alone runs until the MMU is on.
/// unsafe { writer::allow_updates_with_mmu_off() };
/// static_call::set_default_writer(&BOOT);
/// // ... updates with the MMU off ...
/// enable_mmu(); // text read-only from here on
/// static_call::set_default_writer(&MAPPED);
/// # }
/// ```
///
/// # Panics
///
/// In Linux user space, if this thread holds the patch lock (see
/// [`patch_lock`]). On arm64 bare metal with the MMU off, unless
/// [`allow_updates_with_mmu_off`] was called (see there), as
/// [`patch_lock`] does.
pub fn set_default_writer(writer: &'static dyn TextWriter) {
    let mut lock = patch_lock();
    *lock._guard = Some(writer);
}

/// The patch lock, held: no static call is retargeted while it lives.
///
/// Kernels that patch other text of their own (or tests that write
/// trampolines by hand) take it so their writes never interleave with a
/// retarget, in particular with a page-copying writer such as
/// `writer::linux::Remap` working on the same page.
///
/// ```
/// let guard = static_call::writer::patch_lock();
/// // ... write text ...
/// drop(guard);
/// ```
///
/// While it is held, the thread's asynchronous signals are held off (see
/// [`StaticCall::update`](crate::StaticCall::update) on signal handlers).
///
/// It stays on the thread that took it (`!Send`): dropping it elsewhere
/// would restore the taking thread's signal mask on the wrong thread.
///
/// In Linux user space a `fork` made by another thread while it is held
/// waits until it is released, so a child never inherits it held.
pub struct PatchLock {
    // Fields drop in order: the lock is released before signals return.
    _guard: Guard,
    _signals: SignalsHeld,
    _not_send: PhantomData<*mut ()>,
}

/// Takes the patch lock (waiting while an update holds it).
///
/// # Panics
///
/// In Linux user space, if this thread holds it already (from inside a
/// text writer, or [`each_inline_site`](crate::StaticCall::each_inline_site)'s
/// closure): it would wait for itself. Updates made there return
/// [`Error::LockHeldByThisThread`] instead. On bare metal taking it twice
/// on one CPU waits forever, except on arm64 with the MMU off: there it
/// panics unless [`allow_updates_with_mmu_off`] was called, and then if
/// the lock is already held (see there), since the spin lock's exclusives
/// are not reliable on Device memory.
pub fn patch_lock() -> PatchLock {
    try_patch_lock().unwrap_or_else(|e| panic!("static_call::writer::patch_lock: {e}"))
}

/// Takes the patch lock, or refuses if this thread holds it already.
fn try_patch_lock() -> Result<PatchLock, Error> {
    let signals = SignalsHeld::hold();
    Ok(PatchLock {
        _guard: acquire()?,
        _signals: signals,
        _not_send: PhantomData,
    })
}

/// Runs `f` with the patch lock held, for reading what it protects: if
/// this thread holds it already (in Linux user space), `f` runs under that
/// hold, since nothing can change meanwhile either way.
/// (The generic backend has no call-site table to read.)
#[cfg_attr(static_call_backend = "generic", allow(dead_code))]
pub(crate) fn reading_under_patch_lock<T>(f: impl FnOnce() -> T) -> T {
    #[cfg(target_os = "linux")]
    if PATCH.held_by_this_thread() {
        return f();
    }
    let _lock = patch_lock();
    f()
}

/// Runs `f` with the patch lock held and the writer to use: `explicit` if
/// given, else the installed default, else the platform's own.
pub(crate) fn with_patch_lock<T>(
    explicit: Option<&dyn TextWriter>,
    f: impl FnOnce(&dyn TextWriter) -> Result<T, Error>,
) -> Result<T, Error> {
    let lock = try_patch_lock()?;
    let writer: &dyn TextWriter = match (explicit, *lock._guard) {
        (Some(w), _) => w,
        (None, Some(w)) => w,
        (None, None) => platform_default().ok_or(Error::NoTextWriter)?,
    };
    f(writer)
}

#[cfg(target_os = "linux")]
fn platform_default() -> Option<&'static dyn TextWriter> {
    Some(&linux::Remap)
}

#[cfg(not(target_os = "linux"))]
fn platform_default() -> Option<&'static dyn TextWriter> {
    None
}
