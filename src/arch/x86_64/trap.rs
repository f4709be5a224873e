//! Steering a CPU that hits a trampoline's `int3` during an update.
//!
//! # The rule
//!
//! A call that traps on the `int3` at a trampoline continues at the value
//! the trampoline's own literal holds when the handler reads it. Every
//! update writes the literal before it puts an `int3` in place (a new
//! target's literal with a sync of all CPUs; a never-updated trampoline's
//! first literal, which names where its entry already goes, without one), the literal only ever holds targets of that key (or the
//! shared NULL stub), it lives in the trampoline and is never freed or
//! reused, and the handler keeps nothing after it returns: it only edits
//! the trapped context's RIP. So a call parked anywhere inside the handler,
//! for however long and across however many later updates, reaches the
//! target of the update it trapped in or of a later one of the same key:
//! a target that was valid for it, exactly as if it had run the new `jmp`.
//!
//! This is what makes the two historical races impossible:
//! - seed 000 (Peter Zijlstra, 2018): the handler sent the CPU to a shared
//!   stub that read a *global* destination after the handler returned; a
//!   later update of another site rewrote the global before the stub ran.
//!   Here there is no global destination and no stub: the destination is
//!   read from the trapped trampoline and put straight into RIP.
//! - seed 001 (Linus Torvalds, 2019): per-call stubs generated for the
//!   handler to return to could be freed or reused while a preempted CPU was
//!   still in one. Here the handler returns to the target itself, and the
//!   only memory it reads (the trampoline, the list of armed slots) is
//!   static.
//!
//! The trampolines only ever `jmp` or `ret`, so at a trampoline the
//! handler emulates by setting RIP alone: the new target, or the NULL stub
//! (a `ret`), reached with the caller's return address still on the stack.
//! At an inline call site it emulates a call: it pushes the address after
//! the site and continues at the same literal's value (the NULL stub
//! returns at once, as the no-op would have done nothing). Seed 001's race
//! stays impossible for sites too: nothing is generated for the CPU to
//! return to; it returns into the unchanged code after its own site.
//!
//! A trap is recognised as ours only if the address before the trapped RIP
//! is a trampoline this crate has armed (an intrusive, append-only list
//! through the keys' static slots) or an inline call site, found in the
//! call-site table, of a key so armed; any other SIGTRAP goes to the
//! handler that was installed before ours.

use super::Slot;
use super::layout::LITERAL_OFFSET;
use crate::Error;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

/// Newest slot whose trampoline has had an `int3` written; each slot links
/// to the one armed before it. Append-only: slots are statics.
static ARMED: AtomicPtr<Slot> = AtomicPtr::new(ptr::null_mut());

/// How many traps have been steered (for tests and diagnostics).
static STEERED: AtomicU64 = AtomicU64::new(0);

/// Whether the environment routes breakpoints to `handle_breakpoint`
/// itself (a kernel's #BP handler, or a process's own SIGTRAP handler).
static ROUTED_BY_USER: AtomicBool = AtomicBool::new(false);

/// Adds the slot of the trampoline at `tramp` to the armed list, once, so
/// the handler recognises traps there. Must happen before the first `int3`
/// is written at `tramp`.
///
/// # Safety
///
/// `slot` must be the `'static` slot of the trampoline at `tramp`, and the
/// caller must hold the patch lock (the list has one writer at a time).
pub(super) unsafe fn arm(tramp: usize, slot: &Slot) {
    if slot.tramp.load(Ordering::Relaxed) == tramp {
        return;
    }
    debug_assert_eq!(
        slot.tramp.load(Ordering::Relaxed),
        0,
        "slot of two trampolines"
    );
    slot.next
        .store(ARMED.load(Ordering::Relaxed), Ordering::Relaxed);
    slot.tramp.store(tramp, Ordering::Relaxed);
    // Release: a handler that finds this slot sees its fields.
    ARMED.store(ptr::from_ref(slot).cast_mut(), Ordering::Release);
}

/// Whether `tramp` is an armed trampoline. Async-signal-safe: atomic loads
/// of static memory only.
fn is_armed(tramp: usize) -> bool {
    let mut node = ARMED.load(Ordering::Acquire);
    while !node.is_null() {
        // SAFETY: every node is a `'static` slot put there by `arm`.
        let slot = unsafe { &*node };
        if slot.tramp.load(Ordering::Relaxed) == tramp {
            return true;
        }
        node = slot.next.load(Ordering::Acquire);
    }
    false
}

/// What a trapped CPU does instead of the instruction under the `int3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Steer {
    /// At a trampoline: continue at `0` (the trampolines only `jmp` or
    /// `ret`, so the caller's return address is already on the stack).
    Jump(usize),
    /// At an inline call site: the call the site is being patched to,
    /// emulated: push `ret` (the address after the 8-byte site), continue
    /// at `dest`.
    Call {
        /// Where the call goes.
        dest: usize,
        /// The return address to push.
        ret: usize,
    },
}

/// The destination a trapped call of the key at `tramp` continues at: the
/// trampoline's literal (see the rule in the module documentation).
fn literal_of(tramp: usize) -> usize {
    // SAFETY: an armed trampoline's literal is an aligned u64 of static
    // text, only ever written by single aligned stores.
    let literal =
        unsafe { (*((tramp + LITERAL_OFFSET) as *const AtomicU64)).load(Ordering::Acquire) };
    // A literal of 0 was never written. The first literal is stored before
    // the first int3, but without a sync when it names where the entry
    // already goes; a CPU that somehow still reads 0 runs the trampoline
    // itself, which goes where the entry says or traps until the update
    // completes: a target of the key either way.
    if literal == 0 {
        tramp
    } else {
        literal as usize
    }
}

/// What a CPU that trapped with `rip` (the address after the `int3`) does
/// instead, or `None` if the trap is not at an armed trampoline or at an
/// inline site of an armed key. Async-signal-safe: atomic loads of static
/// memory, a binary search of the call-site table, no lock.
pub(super) fn steer(rip: usize) -> Option<Steer> {
    let at = rip.wrapping_sub(1);
    let (tramp, steer) = if is_armed(at) {
        hooks::on_trap(hooks::TrapPoint::Recognised, at, 0);
        (at, Steer::Jump(literal_of(at)))
    } else {
        let tramp = crate::site::table::live::published()?.find(at)?;
        if !is_armed(tramp) {
            return None;
        }
        hooks::on_trap(hooks::TrapPoint::Recognised, tramp, 0);
        let dest = literal_of(tramp);
        let ret = at + super::site::SITE_LEN;
        (tramp, Steer::Call { dest, ret })
    };
    let (Steer::Jump(dest) | Steer::Call { dest, .. }) = steer;
    hooks::on_trap(hooks::TrapPoint::Steering, tramp, dest);
    STEERED.fetch_add(1, Ordering::Relaxed);
    Some(steer)
}

/// How many calls have trapped on an `int3` and been steered since the
/// program started: a measure of how often updates race with calls.
///
/// A call made while an int3 update has its breakpoint in place is one of
/// them (here from the update's own thread, through the hidden test hook
/// that runs after each store):
///
/// ```
/// # #[cfg(all(target_os = "linux", not(feature = "force-generic")))]
/// # mod demo {
/// use static_call::arch::x86_64::{__test_hooks as hooks, protocol::Store, traps_steered};
/// use static_call::arch::x86_64::Strategy;
/// use static_call::writer::linux::Remap;
///
/// static_call::static_call! { static OP: fn(u32) -> u32 = inc; }
/// fn inc(x: u32) -> u32 { x + 1 }
/// fn dec(x: u32) -> u32 { x - 1 }
///
/// fn call_while_armed(_tramp: usize, _index: usize, store: Store) {
///     if store == Store::First(0xcc) {
///         assert_eq!(OP.call(5), 4); // trapped, steered to `dec`
///     }
/// }
///
/// pub fn run() {
///     let before = traps_steered();
///     // SAFETY: the hook neither unwinds nor blocks.
///     unsafe { hooks::set_after_store(Some(call_while_armed)) };
///     OP.update_with(dec, &Strategy::Breakpoint.with(&Remap)).unwrap();
///     // SAFETY: removing the hook.
///     unsafe { hooks::set_after_store(None) };
///     assert_eq!(traps_steered(), before + 1);
/// }
/// # }
/// # fn main() {
/// # #[cfg(all(target_os = "linux", not(feature = "force-generic")))]
/// # demo::run();
/// # }
/// ```
pub fn traps_steered() -> u64 {
    STEERED.load(Ordering::Relaxed)
}

/// See [`super::declare_breakpoint_hook`].
pub(super) fn declare_routed() {
    ROUTED_BY_USER.store(true, Ordering::Release);
}

/// Makes sure a trap at an armed trampoline will reach [`steer`]: on Linux
/// by installing the SIGTRAP handler (once), elsewhere by the declaration
/// of the kernel. The caller holds the patch lock.
pub(super) fn ensure_handler() -> Result<(), Error> {
    if ROUTED_BY_USER.load(Ordering::Acquire) {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        sigtrap::ensure_installed()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(Error::WriterFailed {
            what: "use the int3 protocol: the kernel must call \
                   arch::x86_64::handle_breakpoint from its #BP handler and say so \
                   with declare_breakpoint_hook (or use Strategy::AtomicStore)",
            errno: 0,
        })
    }
}

#[cfg(target_os = "linux")]
mod sigtrap {
    use super::{Steer, steer};
    use crate::Error;
    use core::cell::UnsafeCell;
    use core::ffi::{c_int, c_void};
    use core::mem::MaybeUninit;
    use core::sync::atomic::{AtomicBool, Ordering};

    static INSTALLED: AtomicBool = AtomicBool::new(false);
    /// Set once [`PREVIOUS`] holds the action ours replaced.
    static PREVIOUS_READY: AtomicBool = AtomicBool::new(false);
    /// Set once a previous action with `SA_RESETHAND` has had its one
    /// signal: the kernel would have reset it to the default then.
    static PREVIOUS_SPENT: AtomicBool = AtomicBool::new(false);

    /// The SIGTRAP action that was in place before ours, for traps that are
    /// not at a trampoline. Written once, right after ours replaced it.
    struct Previous(UnsafeCell<MaybeUninit<libc::sigaction>>);
    // SAFETY: written once under the patch lock, before PREVIOUS_READY is
    // set (Release); read only after PREVIOUS_READY is seen (Acquire).
    unsafe impl Sync for Previous {}
    static PREVIOUS: Previous = Previous(UnsafeCell::new(MaybeUninit::uninit()));

    fn errno() -> i32 {
        // SAFETY: `__errno_location` returns the calling thread's errno slot.
        unsafe { *libc::__errno_location() }
    }

    fn current() -> Result<libc::sigaction, Error> {
        // SAFETY: all-zero is a valid `sigaction` to be overwritten.
        let mut cur: libc::sigaction = unsafe { core::mem::zeroed() };
        // SAFETY: reads the disposition into our local.
        if unsafe { libc::sigaction(libc::SIGTRAP, core::ptr::null(), &mut cur) } != 0 {
            return Err(Error::WriterFailed {
                what: "read the SIGTRAP disposition",
                errno: errno(),
            });
        }
        Ok(cur)
    }

    /// Installs the handler once, chaining to the action it replaces;
    /// afterwards checks it is still installed, so that an update never
    /// arms an `int3` nobody would steer.
    ///
    /// The install and the read of the previous action are one `sigaction`
    /// call, so a handler installed by another thread meanwhile is either
    /// replaced and chained to, or found by the next check: never lost.
    pub(super) fn ensure_installed() -> Result<(), Error> {
        let ours = on_sigtrap as extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void) as usize;
        if INSTALLED.load(Ordering::Acquire) {
            let cur = current()?;
            return if cur.sa_sigaction == ours {
                Ok(())
            } else {
                Err(Error::WriterFailed {
                    what: "use the int3 protocol: another SIGTRAP handler replaced ours \
                           (install yours first, or call handle_breakpoint from it and \
                           declare_breakpoint_hook, or use Strategy::AtomicStore)",
                    errno: 0,
                })
            };
        }
        // SAFETY: all-zero is a valid `sigaction` to fill in.
        let mut act: libc::sigaction = unsafe { core::mem::zeroed() };
        act.sa_sigaction = ours;
        // SIGINFO for the context; NODEFER so a static call made from
        // another SIGTRAP handler can trap too. See `handler_mask` for why
        // there is no SA_ONSTACK.
        act.sa_flags = libc::SA_SIGINFO | libc::SA_NODEFER | libc::SA_RESTART;
        act.sa_mask = handler_mask();
        // SAFETY: all-zero is a valid `sigaction` to be overwritten.
        let mut previous: libc::sigaction = unsafe { core::mem::zeroed() };
        // A foreign SIGTRAP in another thread before PREVIOUS is written
        // waits for it in the handler; this thread must not take one until
        // then (it would wait for itself), so SIGTRAP is blocked here. It
        // runs no int3 meanwhile, so no trap can be forced on it.
        // SAFETY: sigset_t operations on locals; pthread_sigmask changes
        // this thread's mask only, and the old one is put back below.
        let unblocked = unsafe {
            let mut trap: libc::sigset_t = core::mem::zeroed();
            libc::sigemptyset(&mut trap);
            libc::sigaddset(&mut trap, libc::SIGTRAP);
            let mut old: libc::sigset_t = core::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, &trap, &mut old);
            old
        };
        // SAFETY: `act` is a valid action whose handler is async-signal-safe;
        // the previous action is written into our local.
        let installed = unsafe { libc::sigaction(libc::SIGTRAP, &act, &mut previous) } == 0;
        let install_errno = errno();
        if installed {
            // SAFETY: nothing reads PREVIOUS before PREVIOUS_READY is set;
            // the patch lock excludes other writers, and INSTALLED makes
            // this the only write.
            unsafe { (*PREVIOUS.0.get()).write(previous) };
            PREVIOUS_READY.store(true, Ordering::Release);
        }
        // SAFETY: puts back the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &unblocked, core::ptr::null_mut()) };
        if !installed {
            return Err(Error::WriterFailed {
                what: "install the SIGTRAP handler",
                errno: install_errno,
            });
        }
        INSTALLED.store(true, Ordering::Release);
        Ok(())
    }

    /// The signals held off while the SIGTRAP handler runs: every
    /// asynchronous one. Together with running on the stack of the call
    /// that trapped (no `SA_ONSTACK`), this bounds what one trap costs.
    ///
    /// The trap is synchronous, at a call, on a stack that is about to be
    /// used by the callee anyway, so it needs no alternate stack. Rust's
    /// runtime gives every thread a small one (`SIGSTKSZ`, 8 KiB on many
    /// machines) for its stack-overflow handler; with `SA_ONSTACK` every
    /// trap was handled there, an asynchronous signal arriving meanwhile
    /// was delivered on top of it, and if that handler called a key that
    /// trapped again, the kernel ran out of room for the next frame and
    /// killed the process with SIGSEGV. Now an asynchronous handler can
    /// run before or after the steering, never inside it, and a trap
    /// takes one frame on the stack it happened on. (A handler the
    /// program put on its alternate stack that calls a key still needs
    /// room there for one more signal frame while an update is in
    /// progress: the kernel places the trap's frame on the stack in use.
    /// Likewise a call that traps with less than a signal frame of its
    /// stack left ends with SIGSEGV, where its callee would most likely
    /// have overflowed the stack anyway.)
    ///
    /// The synchronous fault signals stay deliverable: the kernel kills a
    /// thread that faults with them blocked.
    fn handler_mask() -> libc::sigset_t {
        crate::writer::asynchronous_signals()
    }

    /// The SIGTRAP handler: steers traps at armed trampolines by editing
    /// the saved RIP, and passes every other trap on.
    extern "C" fn on_sigtrap(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
        // SAFETY: the kernel passes a valid siginfo and ucontext to an
        // SA_SIGINFO handler.
        unsafe {
            // An int3 is reported with si_code SI_KERNEL; signals sent by
            // kill/tgkill, or traps of other kinds, say nothing about RIP.
            if (*info).si_code == libc::SI_KERNEL {
                let uc = ctx.cast::<libc::ucontext_t>();
                let gregs = &mut (*uc).uc_mcontext.gregs;
                match steer(gregs[libc::REG_RIP as usize] as usize) {
                    Some(Steer::Jump(dest)) => {
                        gregs[libc::REG_RIP as usize] = dest as i64;
                        return;
                    }
                    Some(Steer::Call { dest, ret }) => {
                        // Push the return address on the trapped thread's
                        // stack: the site is in an `asm!` block without
                        // `nostack`, so nothing lives below its stack
                        // pointer, and the kernel put this signal frame
                        // below the red zone.
                        let rsp = gregs[libc::REG_RSP as usize] as usize - 8;
                        (rsp as *mut usize).write(ret);
                        gregs[libc::REG_RSP as usize] = rsp as i64;
                        gregs[libc::REG_RIP as usize] = dest as i64;
                        return;
                    }
                    None => {}
                }
            }
            chain(sig, info, ctx);
        }
    }

    /// What the previous action does with a signal that is not ours.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub(super) enum Chained {
        /// The default action: end the process with SIGTRAP.
        Default,
        /// Nothing.
        Ignore,
        /// Call the handler.
        Handler,
    }

    /// Decides as the kernel would have without our handler: an ignored
    /// SIGTRAP is still fatal when it comes from a trap (the kernel forces
    /// a synchronous signal it cannot deliver), and a handler installed
    /// with `SA_RESETHAND` gets one signal, after which the default holds.
    pub(super) fn chained(handler: usize, flags: c_int, synchronous: bool, spent: bool) -> Chained {
        match handler {
            libc::SIG_DFL => Chained::Default,
            libc::SIG_IGN if synchronous => Chained::Default,
            libc::SIG_IGN => Chained::Ignore,
            _ if flags & libc::SA_RESETHAND != 0 && spent => Chained::Default,
            _ => Chained::Handler,
        }
    }

    /// Hands a trap that is not ours to the action installed before ours,
    /// with the signal mask that action asked for.
    ///
    /// # Safety
    ///
    /// Called from the SIGTRAP handler with its arguments.
    unsafe fn chain(sig: c_int, info: *mut libc::siginfo_t, ctx: *mut c_void) {
        // The install stores PREVIOUS right after replacing the action; a
        // signal that arrives in between waits for it.
        while !PREVIOUS_READY.load(Ordering::Acquire) {
            core::hint::spin_loop();
        }
        // SAFETY: written before PREVIOUS_READY was set, never again.
        let prev = unsafe { (*PREVIOUS.0.get()).assume_init_ref() };
        // SAFETY: the kernel passes a valid siginfo.
        let synchronous = unsafe { (*info).si_code } == libc::SI_KERNEL;
        let resets = prev.sa_flags & libc::SA_RESETHAND != 0;
        let spent = resets && PREVIOUS_SPENT.swap(true, Ordering::AcqRel);
        match chained(prev.sa_sigaction, prev.sa_flags, synchronous, spent) {
            Chained::Ignore => {}
            Chained::Default => {
                // Reinstate the default action and raise again, so the
                // process ends as it would have without us.
                // SAFETY: all-zero with SIG_DFL (= 0) is the default action;
                // sigaction and raise are async-signal-safe.
                unsafe {
                    let dfl: libc::sigaction = core::mem::zeroed();
                    libc::sigaction(libc::SIGTRAP, &dfl, core::ptr::null_mut());
                    libc::raise(libc::SIGTRAP);
                }
            }
            Chained::Handler => {
                // The mask the kernel would have applied for that action:
                // the mask at the trap, its sa_mask, plus SIGTRAP itself
                // unless SA_NODEFER (not ours, which holds off every
                // asynchronous signal only while it steers).
                // SAFETY: the kernel passes a valid ucontext; sigset_t
                // operations on locals and the previous action's mask;
                // pthread_sigmask is async-signal-safe and only affects
                // this thread, and the old mask is put back.
                let saved = unsafe {
                    let at_trap = &(*ctx.cast::<libc::ucontext_t>()).uc_sigmask;
                    let mut mask: libc::sigset_t = core::mem::zeroed();
                    libc::sigemptyset(&mut mask);
                    for sig in 1..=libc::SIGRTMAX() {
                        if libc::sigismember(at_trap, sig) == 1
                            || libc::sigismember(&prev.sa_mask, sig) == 1
                        {
                            libc::sigaddset(&mut mask, sig);
                        }
                    }
                    if prev.sa_flags & libc::SA_NODEFER == 0 {
                        libc::sigaddset(&mut mask, libc::SIGTRAP);
                    }
                    let mut saved: libc::sigset_t = core::mem::zeroed();
                    libc::pthread_sigmask(libc::SIG_SETMASK, &mask, &mut saved);
                    saved
                };
                if prev.sa_flags & libc::SA_SIGINFO != 0 {
                    // SAFETY: with SA_SIGINFO the handler has this signature.
                    let f = unsafe {
                        core::mem::transmute::<
                            usize,
                            extern "C" fn(c_int, *mut libc::siginfo_t, *mut c_void),
                        >(prev.sa_sigaction)
                    };
                    f(sig, info, ctx);
                } else {
                    // SAFETY: without SA_SIGINFO the handler has this
                    // signature.
                    let f = unsafe {
                        core::mem::transmute::<usize, extern "C" fn(c_int)>(prev.sa_sigaction)
                    };
                    f(sig);
                }
                // SAFETY: restores this thread's mask saved above.
                unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &saved, core::ptr::null_mut()) };
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::{Chained, chained};

        #[test]
        fn foreign_traps_get_what_the_kernel_would_have_given_them() {
            let handler = 0x1234;
            let dfl = libc::SIG_DFL;
            let ign = libc::SIG_IGN;
            assert_eq!(chained(dfl, 0, true, false), Chained::Default);
            assert_eq!(chained(ign, 0, true, false), Chained::Default);
            assert_eq!(chained(ign, 0, false, false), Chained::Ignore);
            assert_eq!(chained(handler, 0, true, true), Chained::Handler);
            let reset = libc::SA_RESETHAND;
            assert_eq!(chained(handler, reset, true, false), Chained::Handler);
            assert_eq!(chained(handler, reset, true, true), Chained::Default);
        }
    }
}

/// Test hooks: let a test park a trapped call inside the handler, or an
/// update between two stores. Not part of the API.
#[doc(hidden)]
pub mod hooks {
    use super::super::protocol::Store;
    use core::sync::atomic::{AtomicPtr, Ordering};

    /// Where in the handler [`set_on_trap`]'s hook runs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum TrapPoint {
        /// The trap is at an armed trampoline; the literal is not read yet.
        Recognised,
        /// The destination is read and about to be put in RIP.
        Steering,
    }

    /// A hook run inside the trap handler: (where, trampoline, destination).
    pub type TrapHook = fn(TrapPoint, usize, usize);
    /// A hook run by an update after each store and sync: (trampoline,
    /// index of the store in the plan, store).
    pub type StoreHook = fn(usize, usize, Store);

    /// A hook run by a batched int3 update after each phase that stored
    /// at inline sites, once that phase is synced: (phase, 1 to 3).
    pub type PhaseHook = fn(usize);

    static ON_TRAP: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
    static AFTER_STORE: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());
    static AFTER_SITE_PHASE: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

    /// Installs (or with `None` removes) the after-site-phase hook. It runs
    /// with the patch lock held.
    ///
    /// # Safety
    ///
    /// The hook must not unwind (a panic would leave an update half done,
    /// an `int3` in place, with the patch lock's signal mask still held):
    /// it runs in the middle of the patching protocol.
    pub unsafe fn set_after_site_phase(hook: Option<PhaseHook>) {
        AFTER_SITE_PHASE.store(
            hook.map_or(core::ptr::null_mut(), |h| h as *mut ()),
            Ordering::SeqCst,
        );
    }

    pub(in super::super) fn after_site_phase(phase: usize) {
        let h = AFTER_SITE_PHASE.load(Ordering::SeqCst);
        if !h.is_null() {
            // SAFETY: only `set_after_site_phase` stores here, from a
            // `PhaseHook`.
            let h = unsafe { core::mem::transmute::<*mut (), PhaseHook>(h) };
            h(phase);
        }
    }

    /// Installs (or with `None` removes) the trap hook. It runs in signal
    /// context.
    ///
    /// # Safety
    ///
    /// The hook must be async-signal-safe and must not unwind: it runs
    /// inside the SIGTRAP handler, and unwinding out of a signal frame is
    /// undefined behaviour.
    pub unsafe fn set_on_trap(hook: Option<TrapHook>) {
        ON_TRAP.store(
            hook.map_or(core::ptr::null_mut(), |h| h as *mut ()),
            Ordering::SeqCst,
        );
    }

    /// Installs (or with `None` removes) the after-store hook. It runs with
    /// the patch lock held.
    ///
    /// # Safety
    ///
    /// The hook must not unwind (a panic would leave an update half done,
    /// an `int3` in place, with the patch lock's signal mask still held):
    /// it runs in the middle of the patching protocol.
    pub unsafe fn set_after_store(hook: Option<StoreHook>) {
        AFTER_STORE.store(
            hook.map_or(core::ptr::null_mut(), |h| h as *mut ()),
            Ordering::SeqCst,
        );
    }

    pub(in super::super) fn on_trap(point: TrapPoint, tramp: usize, dest: usize) {
        let h = ON_TRAP.load(Ordering::SeqCst);
        if !h.is_null() {
            // SAFETY: only `set_on_trap` stores here, from a `TrapHook`.
            let h = unsafe { core::mem::transmute::<*mut (), TrapHook>(h) };
            h(point, tramp, dest);
        }
    }

    pub(in super::super) fn after_store(tramp: usize, index: usize, store: Store) {
        let h = AFTER_STORE.load(Ordering::SeqCst);
        if !h.is_null() {
            // SAFETY: only `set_after_store` stores here, from a `StoreHook`.
            let h = unsafe { core::mem::transmute::<*mut (), StoreHook>(h) };
            h(tramp, index, store);
        }
    }
}
