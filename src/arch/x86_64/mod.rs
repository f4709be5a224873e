//! The x86-64 backend: Linux's static-call trampoline, retargeted with a
//! page swap, the int3 protocol or one atomic store, with a literal for far
//! targets.
//!
//! ```text
//!         .balign 16                    // in .static_call.text
//! tramp:  jmp.d32 target                // e9 rel32   \ the entry word:
//!         ud1     %esp, %ecx            // 0f b9 cc   / the only code patched
//!         .quad   target                // the literal (0 until the first update)
//! ```
//!
//! The entry word takes one of three forms ([`Form`]):
//! `jmp.d32 target` + `ud1` (near), `ret` + `int3` padding + `ud1` (NULL),
//! or `jmp *literal(%rip)` + `int3` padding (far: a target beyond the
//! ±2 GiB reach of `rel32`, typically in a shared library). A RET0 key
//! jumps to its own return-zero function, a real function of the key's
//! signature. `ud1` stops straight-line speculation and is the signature
//! checked (with the rest of the shape) before anything is written.
//!
//! The literal always holds the current target (the shared NULL stub, a
//! lone `ret`, for NULL) and is written first in every update; the far form
//! jumps through it, and the int3 handler steers through it. The assembler
//! leaves it 0 (an absolute address in text would need a text relocation,
//! so executables stay position-independent); the first update fills it.
//!
//! # Strategies
//!
//! The backend's [`Options`](crate::arch::Backend::Options): chosen per
//! update with [`WithStrategy`] or per program with [`set_default_strategy`]
//! (no Cargo feature: a dependency must not choose for the program). The
//! default, [`Strategy::Auto`], follows from the writer (see [`Strategy`]
//! for what each needs):
//!
//! - [`Strategy::PageSwap`], for writers that publish whole pages (the
//!   default Linux writer, `Remap`): every store of the update written into
//!   private copies of the pages, each page swapped in once, one sync. No
//!   CPU ever fetches bytes being written, so there is no cross-modifying
//!   code (Intel SDM Vol. 3A §9.1.3, "Handling Self- and Cross-Modifying
//!   Code") and no trap ([`page_swap`]).
//! - [`Strategy::Breakpoint`], Linux's `text_poke_bp`, for writers that
//!   store in place (`Mprotect`, `Alias`, `Direct`): publish the literal;
//!   sync all CPUs; `int3` over the first byte; sync; the other seven
//!   bytes; sync; the new first byte; sync. A CPU
//!   that enters the trampoline meanwhile traps and is steered to the new
//!   target (see the rule in [`handle_breakpoint`]). Linux user space: a
//!   SIGTRAP handler, installed once, chaining to the one before it; sync is
//!   the writer's `membarrier(SYNC_CORE)`. Bare metal: the kernel calls
//!   [`handle_breakpoint`] from its #BP handler and supplies the sync.
//! - [`Strategy::AtomicStore`], only where a program asks for it: publish
//!   the literal; sync; one aligned 8-byte store of the entry word; sync.
//!   No trap, but with an in-place writer it is unsynchronised
//!   cross-modifying code that changes opcodes, which §9.1.3 does not
//!   sanction and Linux never does; it relies on instruction fetch never
//!   seeing half of an aligned 8-byte store.
//!
//! Far-to-far retargets change only the literal, which is data: no
//! instruction is modified.
//!
//! # Limits
//!
//! - The int3 protocol is only as strong as the writer's
//!   [`sync_cores`](crate::TextWriter::sync_cores): the Linux writers use
//!   `membarrier(SYNC_CORE)`; a kernel supplies an IPI (for example through
//!   [`Alias::with_sync`](crate::writer::Alias::with_sync)). A writer that
//!   does not synchronize (`Direct`) is fine on one CPU only.
//! - In Linux user space, with the int3 protocol (the default with an
//!   in-place writer such as `Mprotect`), a call that traps
//!   with SIGTRAP blocked (a worker thread that blocks every signal, a
//!   signal handler whose mask blocks everything) is killed by the kernel
//!   instead of being steered, and a debugger stops on the trap. The
//!   default writer, `Remap`, never traps (page swap); a program that
//!   writes in place and cannot rule both out asks for
//!   [`Strategy::AtomicStore`] explicitly.
//! - A SIGTRAP handler installed after ours must chain to it (or call
//!   [`handle_breakpoint`]); if ours is found replaced, int3 updates fail
//!   with [`Error::WriterFailed`] before
//!   writing anything.
//! - Calls of Rust-ABI keys are the compiler's `call __SCT__NAME` and are
//!   never written; calls of `extern "C"` keys are inline sites
//!   ([`site`]), patched with the trampoline in the same protocol.
//!
//! ```
//! static_call::static_call! { static OP: fn(u32) -> u32 = inc; }
//! fn inc(x: u32) -> u32 { x + 1 }
//! fn dec(x: u32) -> u32 { x - 1 }
//!
//! # fn main() {
//! # #[cfg(all(target_arch = "x86_64", target_os = "linux", not(feature = "force-generic")))] {
//! use static_call::arch::x86_64::{Form, decode, null_stub_addr};
//! OP.update(dec).unwrap(); // a page swap, unless configured otherwise
//! let tramp = OP.trampoline_addr();
//! // SAFETY: a live trampoline: 16 readable bytes, 8-byte aligned.
//! let bytes = unsafe { core::ptr::read_volatile(tramp as *const [u8; 16]) };
//! let image = static_call::arch::x86_64::Image {
//!     entry: bytes[..8].try_into().unwrap(),
//!     literal: u64::from_le_bytes(bytes[8..].try_into().unwrap()),
//! };
//! let t = decode(tramp as u64, &image, null_stub_addr()).unwrap();
//! assert_eq!(t.form, Form::Near(dec as fn(u32) -> u32 as u64));
//! assert_eq!(OP.call(5), 4);
//! # }
//! # }
//! ```

// Elsewhere this module is documentation-hidden (see `arch`), and its docs
// name the trap handler that only x86-64 builds have.
#![cfg_attr(not(target_arch = "x86_64"), allow(rustdoc::broken_intra_doc_links))]

#[cfg(target_arch = "x86_64")]
mod batch_sites;
#[cfg(target_arch = "x86_64")]
mod breakpoint;
pub mod insn;
mod layout;
pub mod page_swap;
pub mod protocol;
pub mod site;
mod strategy;
#[cfg(target_arch = "x86_64")]
mod trap;

pub use layout::{
    FAR_ENTRY, Form, Image, LITERAL_OFFSET, NULL_ENTRY, TRAMPOLINE_ALIGN, TRAMPOLINE_LEN,
    Trampoline, check_alignment, current_target, decode, plan, recognise,
};
pub use strategy::{Strategy, WithStrategy, default_strategy, set_default_strategy};
#[cfg(target_arch = "x86_64")]
pub use trap::{hooks as __test_hooks, traps_steered};

use crate::Error;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU8, AtomicUsize, Ordering};

/// The x86-64 backend (implements [`Backend`](super::Backend) on x86-64
/// targets; elsewhere only its pure functions are used).
///
/// ```
/// # #[cfg(target_arch = "x86_64")] {
/// use static_call::arch::{Backend, x86_64::X86_64};
/// assert_eq!(X86_64::NAME, "x86_64");
/// # }
/// ```
#[derive(Debug)]
pub enum X86_64 {}

/// Per-key state: the key's current target as the API reports it, and a
/// link in the list of trampolines that have had an `int3` written, so the
/// trap handler recognises them.
///
/// The target is kept here rather than decoded from the trampoline because
/// the trampoline's `jmp` may lead elsewhere first: a Rust-ABI key starts
/// at its init shim (see `static_call!`), and `query` must answer the
/// function itself.
#[derive(Debug)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
pub struct Slot {
    /// The current target, 0 for NULL; written under the patch lock once
    /// an update has fully succeeded, or after one that could not undo
    /// itself, where a call of the trampoline now goes.
    target: AtomicPtr<()>,
    /// The trampoline, once armed; 0 before.
    tramp: AtomicUsize,
    /// The slot armed before this one.
    next: AtomicPtr<Slot>,
    /// Some update of the key has succeeded: its sites no longer hold
    /// the calls they were assembled with.
    updated: AtomicBool,
    /// [`FINISHED`], or [`UNFINISHED`] after an update returned
    /// `RestoreFailed` (until one succeeds): the trampoline and sites may
    /// hold any state the protocols pass through (an `int3` included),
    /// which the next update recognises and completes; or [`TEXT_LOST`]
    /// when the writer could not even tell what the text holds.
    unfinished: AtomicU8,
}

impl Slot {
    /// A slot for a key whose trampoline was assembled for `target` (null
    /// for NULL); not yet armed.
    pub const fn new(target: *mut ()) -> Self {
        Slot {
            target: AtomicPtr::new(target),
            tramp: AtomicUsize::new(0),
            next: AtomicPtr::new(core::ptr::null_mut()),
            updated: AtomicBool::new(false),
            unfinished: AtomicU8::new(FINISHED),
        }
    }

    /// The same slot; x86-64 accepts any `jmp` in a never-updated
    /// trampoline (its literal is 0), so where it leads is not recorded.
    pub const fn assembled_for(self, _entry: *mut ()) -> Self {
        self
    }

    /// No update of the key has succeeded: the defining crate's inline
    /// sites may still hold the calls they were assembled with.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn never_updated(&self) -> bool {
        !self.updated.load(Ordering::Relaxed)
    }
}

/// [`Slot::unfinished`]: the key's last update succeeded or undid itself.
const FINISHED: u8 = 0;
/// [`Slot::unfinished`]: the key's last update could not undo itself.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const UNFINISHED: u8 = 1;
/// [`Slot::unfinished`]: the writer lost the key's text (a Linux writer
/// whose page a failed `mremap` unmapped): it is not read again.
const TEXT_LOST: u8 = 2;

impl Slot {
    /// Whether the key's last update returned `RestoreFailed`.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn is_unfinished(&self) -> bool {
        self.unfinished.load(Ordering::Relaxed) != FINISHED
    }

    /// Refuses, before anything is read, to update a key whose text the
    /// writer lost.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(super) fn check_text_kept(&self, tramp: usize) -> Result<(), Error> {
        if self.unfinished.load(Ordering::Relaxed) == TEXT_LOST {
            Err(Error::RestoreFailed {
                addr: tramp,
                state: "an earlier update of this key failed and its writer could not tell \
                        what the text holds (it may be unmapped); it is not read or written \
                        again",
            })
        } else {
            Ok(())
        }
    }
}

/// A trap frame as a kernel's #BP handler sees it, for
/// [`handle_breakpoint`].
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakpointFrame {
    /// The saved instruction pointer: the address after the `int3`.
    pub rip: u64,
    /// The saved stack pointer: unchanged at a trampoline (which only
    /// `jmp`s or `ret`s), lowered by 8 at an inline call site, whose call
    /// is emulated.
    pub rsp: u64,
}

/// The NULL stub: where a NULL trampoline's literal points, so a CPU
/// steered (or jumping through the literal) while a key becomes NULL
/// returns to its caller. It starts with `endbr64`: the far form reaches it
/// with an indirect jump, which CET indirect branch tracking checks.
#[cfg(target_arch = "x86_64")]
#[unsafe(naked)]
extern "C" fn null_stub() {
    core::arch::naked_asm!("endbr64", "ret", "int3")
}

/// The NULL stub's address: what a NULL trampoline's literal holds.
///
/// ```
/// let stub = static_call::arch::x86_64::null_stub_addr();
/// // SAFETY: the stub is six readable bytes of text.
/// let code = unsafe { *(stub as *const [u8; 6]) };
/// assert_eq!(code, [0xf3, 0x0f, 0x1e, 0xfa, 0xc3, 0xcc]); // endbr64; ret; int3
/// ```
#[cfg(target_arch = "x86_64")]
pub fn null_stub_addr() -> u64 {
    null_stub as extern "C" fn() as usize as u64
}

/// The #BP hook for kernels: call it first from the #BP (int3) handler with
/// the trap's saved RIP and RSP. If the trap is at a trampoline or an
/// inline call site this crate is patching (or has patched), it edits the
/// frame to where execution must continue and returns `true`: return from
/// the exception to the edited frame (restoring RSP too, as `iretq` does).
/// Otherwise it returns `false` and changes nothing.
///
/// At a trampoline it sets `frame.rip` alone. At an inline call site it
/// emulates the call being patched in: it pushes the return address,
/// storing it at `frame.rsp - 8` (the interrupted stack) and lowering
/// `frame.rsp`, and sets `frame.rip` to the key's target. The kernel's #BP
/// entry must therefore not keep its own exception frame just below the
/// interrupted RSP: take #BP on the interrupted stack and leave a gap, as
/// Linux's `int3` entry does (copy the CPU's frame at least 8 bytes lower
/// and return through the copy); otherwise the store overwrites the saved
/// SS of the live frame. Do not use an IST stack for #BP if anything that
/// can interrupt the #BP handler (an NMI, a machine check, #DB) may call a
/// key: every #BP on an IST stack starts at the same top, so one taken
/// while a #BP handler runs writes its frame over the live one (Linux
/// stopped using IST for #BP for this reason). `tests/x86-kernel` shows
/// both failures. Kernel shadow stacks are not supported for sites.
///
/// # The rule it guarantees
///
/// The destination is read from the trapped key's trampoline's literal,
/// which every update writes (and syncs) before it places an `int3`, which
/// only ever holds targets of that key, and which is never freed. So a CPU
/// that stalls anywhere in the handler, across any number of later updates
/// of this or other keys, continues at the target of the update it trapped
/// in or of a later one of the same key: never a stale stub, another key's
/// target, or freed memory (the races of seeds 000 and 001 cannot happen).
///
/// It is async-signal-safe and lock-free: it only reads static memory (a
/// binary search of the call-site table for sites).
///
/// # Safety
///
/// `frame` must be the saved state of a context that really trapped on an
/// `int3` (its RIP one byte past the breakpoint), and `frame.rsp` that
/// context's stack pointer, with the 8 bytes below it writable and not in
/// use by anything else (an inline site's emulated call stores its return
/// address there). A made-up frame would turn the handler into a store to
/// an arbitrary address.
///
/// ```
/// use static_call::arch::x86_64::{BreakpointFrame, handle_breakpoint};
/// // A breakpoint that is not at a trampoline is left to the kernel.
/// let mut frame = BreakpointFrame { rip: 0x1001, rsp: 0x8000 };
/// // SAFETY: 0x1000 is no trampoline or call site of this crate, so the
/// // handler only reads its tables and writes nothing.
/// assert!(!unsafe { handle_breakpoint(&mut frame) });
/// assert_eq!(frame, BreakpointFrame { rip: 0x1001, rsp: 0x8000 });
/// ```
#[cfg(target_arch = "x86_64")]
pub unsafe fn handle_breakpoint(frame: &mut BreakpointFrame) -> bool {
    match trap::steer(frame.rip as usize) {
        Some(trap::Steer::Jump(dest)) => {
            frame.rip = dest as u64;
            true
        }
        Some(trap::Steer::Call { dest, ret }) => {
            let rsp = frame.rsp - 8;
            // SAFETY: the caller promises `frame` is a real trapped context
            // whose 8 bytes below RSP are free: the trapped context was about
            // to run a call, which would have stored its return address at
            // `rsp` itself.
            unsafe { (rsp as *mut u64).write(ret as u64) };
            frame.rsp = rsp;
            frame.rip = dest as u64;
            true
        }
        None => false,
    }
}

/// [`handle_breakpoint`] with a C ABI and an unmangled name, for kernels
/// whose #BP handler is written in assembly or C.
///
/// # Safety
///
/// `frame` must point to a valid, writable [`BreakpointFrame`] that meets
/// [`handle_breakpoint`]'s requirements.
#[cfg(target_arch = "x86_64")]
#[unsafe(no_mangle)]
pub unsafe extern "C" fn static_call_handle_breakpoint(frame: *mut BreakpointFrame) -> bool {
    // SAFETY: the caller passes a valid frame of a real trapped context.
    unsafe { handle_breakpoint(&mut *frame) }
}

/// Declares that breakpoints reach [`handle_breakpoint`] without this
/// crate's help: a kernel's #BP handler calls it, or a process routes its
/// own SIGTRAP handler to it. Required for
/// [`Strategy::Breakpoint`] on bare
/// metal; on Linux it stops the crate from installing its SIGTRAP handler.
///
/// # Safety
///
/// From now on every `int3` trap must be offered to [`handle_breakpoint`]
/// (and its edited RIP honoured) before anything else handles it;
/// otherwise a CPU that enters a trampoline during an update traps with
/// nobody to steer it.
///
/// ```no_run
/// # fn boot() {
/// // In the kernel's #BP handler: `if handle_breakpoint(&mut frame) { return; }`
/// // SAFETY: our #BP handler calls handle_breakpoint first.
/// unsafe { static_call::arch::x86_64::declare_breakpoint_hook() };
/// # }
/// ```
#[cfg(target_arch = "x86_64")]
pub unsafe fn declare_breakpoint_hook() {
    trap::declare_routed();
}

#[cfg(target_arch = "x86_64")]
mod live {
    use super::batch_sites::BatchSites;
    use super::breakpoint::{BATCH_MAX, breakpoint_batch};
    use super::layout::{self, Form, Image, LITERAL_OFFSET};
    use super::protocol::{self, Plan, Store};
    use super::{FINISHED, Slot, TEXT_LOST, UNFINISHED, X86_64, insn::INT3, null_stub_addr, trap};
    use super::{Strategy, default_strategy, page_swap};
    use crate::arch::{Backend, BatchItem};
    use crate::writer::Watched;
    use crate::{Error, TextWriter};
    use core::sync::atomic::{AtomicU64, Ordering};

    /// Reads the trampoline's entry word and literal, each with one
    /// aligned 8-byte load (entry first).
    ///
    /// # Safety
    ///
    /// `tramp` must be an 8-byte aligned, readable trampoline.
    pub(super) unsafe fn read_image(tramp: usize) -> Image {
        // SAFETY: aligned and readable per the caller; the text changes
        // behind the compiler's back, only through single aligned stores.
        unsafe {
            let entry = (*(tramp as *const AtomicU64)).load(Ordering::Acquire);
            let literal = (*((tramp + LITERAL_OFFSET) as *const AtomicU64)).load(Ordering::Acquire);
            Image::from_words(entry, literal)
        }
    }

    /// Makes one store of a plan through the writer.
    ///
    /// # Safety
    ///
    /// The trampoline at `tramp` is the caller's to patch, lock held.
    pub(super) unsafe fn store(
        tramp: usize,
        s: Store,
        writer: &dyn TextWriter,
    ) -> Result<(), Error> {
        let (bytes, len) = s.bytes();
        // SAFETY: per this function's contract; the store is 1 byte or an
        // aligned 8, so the writer makes it single-copy atomic.
        unsafe { writer.write(tramp + s.offset(), &bytes[..len]) }
    }

    /// Gives a trampoline that was never updated (literal 0: the assembler
    /// writes no absolute address) the literal its entry agrees with, the
    /// near jump's destination or the NULL stub, before an update writes
    /// anything else; returns the image it then holds.
    ///
    /// Neither form reads the literal (only the trap handler does, and it
    /// then steers where the entry goes), so this needs no sync. From then
    /// on no image this crate writes, and no undo, puts a 0 literal back:
    /// an undo that restored 0 beneath a far entry a CPU had fetched
    /// (`jmp *literal(%rip)`) would send it to address 0.
    ///
    /// # Safety
    ///
    /// The trampoline at `tramp` holds `old` and is the caller's to patch,
    /// with the patch lock held.
    pub(super) unsafe fn publish_literal(
        tramp: usize,
        old: Image,
        stub: u64,
        writer: &dyn TextWriter,
    ) -> Result<Image, Error> {
        if old.literal != 0 {
            return Ok(old);
        }
        let literal = match layout::decode(tramp as u64, &old, stub)?.form {
            Form::Near(dest) => dest,
            Form::Null => stub,
            // `decode` refuses a far entry without a literal.
            Form::Far => return Ok(old),
        };
        let published = Image { literal, ..old };
        // SAFETY: per this function's contract.
        unsafe { store(tramp, Store::Literal(literal), writer) }?;
        // SAFETY: aligned and readable.
        if unsafe { read_image(tramp) } != published {
            // Not written as asked: put the 0 back (nothing reads it).
            // SAFETY: as above.
            let undone = unsafe { store(tramp, Store::Literal(0), writer) };
            // SAFETY: as above.
            return match undone.map(|()| unsafe { read_image(tramp) } == old) {
                Ok(true) => Err(Error::VerifyFailed {
                    addr: tramp + LITERAL_OFFSET,
                }),
                _ => Err(Error::RestoreFailed {
                    addr: tramp + LITERAL_OFFSET,
                    state: "the literal of a trampoline never updated holds neither 0 nor the \
                            target its entry jumps to; calls still go where the entry says",
                }),
            };
        }
        Ok(published)
    }

    /// Makes the plan's stores, each followed by a read-back and a sync of
    /// all CPUs. On any failure, undoes the stores made so far in reverse
    /// (each undo also read back and synced), so the trampoline is as it
    /// was; if an undo fails, returns [`Error::RestoreFailed`].
    ///
    /// # Safety
    ///
    /// The trampoline at `tramp` holds `start` and is the caller's to
    /// patch, with the patch lock held.
    unsafe fn execute(
        tramp: usize,
        start: Image,
        plan: &Plan,
        writer: &dyn TextWriter,
    ) -> Result<(), Error> {
        let mut done: [Option<(Store, Image)>; 4] = [None; 4];
        let mut image = start;
        for (i, &s) in plan.stores().iter().enumerate() {
            // SAFETY: per this function's contract.
            if let Err(e) = unsafe { store(tramp, s, writer) } {
                // The writer stored nothing.
                // SAFETY: as above.
                return unsafe { rollback(tramp, &done[..i], writer) }.and(Err(e));
            }
            done[i] = Some((s, image));
            image = s.apply(image);
            // SAFETY: the trampoline is aligned and readable.
            let verified = if unsafe { read_image(tramp) } == image {
                Ok(())
            } else {
                Err(Error::VerifyFailed {
                    addr: tramp + s.offset(),
                })
            };
            if let Err(e) = verified.and_then(|()| writer.sync_cores()) {
                // SAFETY: as above; includes this store.
                return unsafe { rollback(tramp, &done[..=i], writer) }.and(Err(e));
            }
            trap::hooks::after_store(tramp, i, s);
        }
        Ok(())
    }

    /// `e` if it is a writer's [`Error::RestoreFailed`]: the writer could
    /// not tell or put back what the text holds (a Linux writer whose page
    /// a failed `mremap` unmapped). It is returned as it is, and nothing
    /// more of that text is read (it may not be mapped).
    pub(super) fn lost(e: Error) -> Option<Error> {
        matches!(e, Error::RestoreFailed { .. }).then_some(e)
    }

    /// What [`Error::RestoreFailed`] reports when an undo fails.
    pub(super) const PARTLY_RESTORED: &str = "the trampoline holds an intermediate state of its update \
        protocol (every CPU runs the old target or the new one, an int3 in place being \
        steered through the literal); query() reports where a call of the trampoline now \
        goes, and the key's next update, with a writer that works, completes it";

    /// After an update of the key at `tramp` to `target` returned
    /// [`Error::RestoreFailed`]: marks the key unfinished, so that its next
    /// update recognises (and completes) whatever was left, and makes
    /// `query` name where a call of the trampoline now goes. That is the
    /// old target or `target` (each store moves the bytes one step of the
    /// protocol between them); it is `target` exactly when the bytes send
    /// calls there, and otherwise `query` keeps the old one, which may be
    /// reached through a never-updated key's init shim. A CPU that missed
    /// the failed sync may still run the instruction before the last store
    /// until its next serializing event.
    ///
    /// If the writer lost the text (`lost`), nothing is read and `query`
    /// keeps the old target.
    ///
    /// # Safety
    ///
    /// `tramp` is the key's live, aligned trampoline; the lock is held.
    unsafe fn settle(tramp: usize, slot: &Slot, target: usize, lost: bool) {
        if lost {
            slot.unfinished.store(TEXT_LOST, Ordering::Relaxed);
            return;
        }
        slot.unfinished.store(UNFINISHED, Ordering::Relaxed);
        // SAFETY: per this function's contract.
        let image = unsafe { read_image(tramp) };
        let reached = layout::current_target(tramp as u64, &image, null_stub_addr());
        if reached == Ok(target as u64) {
            slot.target.store(target as *mut (), Ordering::Release);
        }
    }

    /// Records the outcome of an update of one key: the new target once
    /// it succeeded, [`settle`] when it could not undo itself; after any
    /// other error the key is as before.
    ///
    /// # Safety
    ///
    /// As for [`settle`].
    pub(super) unsafe fn conclude(
        tramp: usize,
        slot: &Slot,
        target: usize,
        writer: &Watched,
        result: &Result<(), Error>,
    ) {
        match result {
            Ok(()) => {
                slot.target.store(target as *mut (), Ordering::Release);
                slot.updated.store(true, Ordering::Relaxed);
                slot.unfinished.store(FINISHED, Ordering::Relaxed);
            }
            // SAFETY: forwarded.
            Err(Error::RestoreFailed { .. }) => unsafe {
                settle(tramp, slot, target, writer.lost())
            },
            Err(_) => {}
        }
    }

    /// Writes back, newest first, what each store overwrote, reading each
    /// undo back and synchronizing all CPUs after it.
    ///
    /// The newest store is undone even if the sync after it failed: undoing
    /// it reverses one step of the protocol, so a CPU that still holds
    /// bytes from either side of that step runs the old or the new target.
    /// Any earlier undo relies on the sync after the previous one (without
    /// it, a CPU could combine bytes from two steps apart, such as a new
    /// opcode with a stale displacement), so the first failed undo write,
    /// read-back or sync stops the rollback where it is, and the error says
    /// so.
    ///
    /// # Safety
    ///
    /// As for [`execute`].
    unsafe fn rollback(
        tramp: usize,
        done: &[Option<(Store, Image)>],
        writer: &dyn TextWriter,
    ) -> Result<(), Error> {
        for (s, before) in done.iter().rev().flatten() {
            let failed = Err(Error::RestoreFailed {
                addr: tramp + s.offset(),
                state: PARTLY_RESTORED,
            });
            // SAFETY: per this function's contract.
            if let Err(e) = unsafe { store(tramp, s.undo(before), writer) } {
                return lost(e).map_or(failed, Err);
            }
            // SAFETY: the trampoline is aligned and readable.
            if unsafe { read_image(tramp) } != *before || writer.sync_cores().is_err() {
                return failed;
            }
        }
        Ok(())
    }

    // SAFETY: `retarget` checks alignment and the exact shape before
    // writing, and only makes the stores of a `protocol` plan, every one of
    // whose intermediate states runs the old or the new target (int3 traps
    // are steered through the literal, published first); on failure it
    // undoes what it wrote.
    unsafe impl Backend for X86_64 {
        const NAME: &'static str = "x86_64";
        const WRITES_TEXT: bool = true;
        type Slot = Slot;
        type Options = Strategy;

        fn default_options() -> Strategy {
            default_strategy()
        }

        unsafe fn query(tramp: usize, slot: &Slot) -> Result<usize, Error> {
            layout::check_alignment(tramp)?;
            Ok(slot.target.load(Ordering::Acquire) as usize)
        }

        /// The int3 protocol relies on every CPU having seen each step
        /// before the next; the one-store protocol's two stores (literal,
        /// then entry) are each a whole, valid state, and the entry reads
        /// the literal as data, which stores make visible in order.
        fn syncs_can_be_deferred(strategy: Strategy) -> bool {
            strategy == Strategy::AtomicStore
        }

        unsafe fn retarget_batch(
            n: usize,
            item: &dyn Fn(usize) -> BatchItem<'static, Slot>,
            writer: &dyn TextWriter,
            strategy: Strategy,
        ) -> Option<Result<(), (usize, Error)>> {
            let strategy = match strategy.for_writer(writer) {
                Ok(s) => s,
                Err(e) => return Some(Err((0, e))),
            };
            if n > BATCH_MAX {
                return None;
            }
            match strategy {
                // SAFETY: forwarded from the caller.
                Strategy::PageSwap => Some(unsafe { page_swap::batch(n, item, writer) }),
                // SAFETY: forwarded from the caller.
                Strategy::Breakpoint => Some(unsafe { breakpoint_batch(n, item, writer) }),
                _ => None,
            }
        }

        unsafe fn retarget(
            tramp: usize,
            slot: &Slot,
            target: usize,
            writer: &dyn TextWriter,
            strategy: Strategy,
        ) -> Result<(), Error> {
            layout::check_alignment(tramp)?;
            slot.check_text_kept(tramp)?;
            let strategy = strategy.for_writer(writer)?;
            let item = |_| BatchItem {
                tramp,
                slot,
                target,
            };
            if strategy == Strategy::PageSwap {
                // The trampoline and every site in one swap of each page.
                // SAFETY: forwarded from the caller.
                return unsafe { page_swap::batch(1, &item, writer) }.map_err(|(_, e)| e);
            }
            if strategy == Strategy::Breakpoint && BatchSites::of(1, &item).is_ok_and(|s| s.any()) {
                // The trampoline and every site in one int3 protocol.
                // SAFETY: forwarded from the caller.
                return unsafe { breakpoint_batch(1, &item, writer) }.map_err(|(_, e)| e);
            }
            let writer = Watched::new(writer);
            // SAFETY: forwarded from the caller.
            let result = unsafe { retarget_one(tramp, slot, target, &writer, strategy) };
            // SAFETY: the caller's live, aligned trampoline; lock held.
            unsafe { conclude(tramp, slot, target, &writer, &result) };
            result
        }
    }

    /// [`Backend::retarget`] without the int3 protocol's sites (which go
    /// through [`breakpoint_batch`]), leaving the slot to the caller.
    ///
    /// # Safety
    ///
    /// As for [`Backend::retarget`], with an aligned trampoline.
    unsafe fn retarget_one(
        tramp: usize,
        slot: &Slot,
        target: usize,
        writer: &dyn TextWriter,
        strategy: Strategy,
    ) -> Result<(), Error> {
        let item = |_| BatchItem {
            tramp,
            slot,
            target,
        };
        let sites = BatchSites::of(1, &item).map_err(|(_, e)| e)?;
        let has_sites = sites.any();
        let stub = null_stub_addr();
        // SAFETY: the caller passes a live, aligned trampoline.
        let old = unsafe { read_image(tramp) };
        let unfinished = slot.is_unfinished();
        layout::recognise(tramp as u64, &old, stub, unfinished)?;
        let new = layout::plan(tramp as u64, target as u64, stub);
        // `retarget` resolved `Auto` and took `PageSwap` itself.
        let plan_from = |old: &Image| match strategy {
            Strategy::Breakpoint => protocol::breakpoint(old, &new),
            _ => protocol::atomic_store(old, &new),
        };
        // A missing trap handler is refused before anything is written
        // (whether the plan arms does not depend on the literal).
        if plan_from(&old).stores().contains(&Store::First(INT3)) {
            trap::ensure_handler()?;
            // SAFETY: the slot is the key's static slot (the caller's
            // contract) and the patch lock is held.
            unsafe { trap::arm(tramp, slot) };
        }
        if unfinished {
            // What a failed update left (an int3 whose sync failed, say)
            // reaches every CPU before anything changes.
            writer.sync_cores()?;
        }
        // SAFETY: recognised; the caller's, with the lock held.
        let old = unsafe { publish_literal(tramp, old, stub, writer) }?;
        let plan = plan_from(&old);
        // SAFETY: the trampoline holds `old`; the lock is held.
        unsafe { execute(tramp, old, &plan, writer) }?;
        if has_sites {
            // The one-store strategy: the trampoline first, then every
            // site in one store each and one sync. Each site calls the
            // old or the new target whatever the trampoline holds.
            // SAFETY: the lock is held; the sites were checked.
            let stored = unsafe { sites.store_all(writer) }
                .and_then(|any| if any { writer.sync_cores() } else { Ok(()) });
            if let Err(e) = stored {
                if matches!(e, Error::RestoreFailed { .. }) {
                    return Err(e);
                }
                // SAFETY: as above; the trampoline holds `new`.
                let back = unsafe {
                    store_all_back(&sites, writer).and_then(|()| {
                        execute(tramp, new, &protocol::atomic_store(&new, &old), writer)
                    })
                };
                return back
                    .map_err(|e| {
                        lost(e).unwrap_or(Error::RestoreFailed {
                            addr: tramp,
                            state: PARTLY_RESTORED,
                        })
                    })
                    .and(Err(e));
            }
        }
        Ok(())
    }

    /// After a failed sync of the one-store strategy's sites: every site
    /// back to a word that behaves as before, then a sync.
    ///
    /// # Safety
    ///
    /// The patch lock is held.
    pub(super) unsafe fn store_all_back(
        sites: &BatchSites<'_, '_>,
        writer: &dyn TextWriter,
    ) -> Result<(), Error> {
        let any = sites.sweep(
            writer,
            |s| (!s.behaves_as_before(&s.now())).then_some(Store::Entry(s.home)),
            |s| s.behaves_as_before(&s.now()),
        )?;
        if any { writer.sync_cores() } else { Ok(()) }
    }
}

/// `global_asm!` with this target's options (AT&T syntax, as `asm/x86_64/trampoline.S` is written). Used by
/// `__static_call_trampoline_asm!`.
#[cfg(static_call_backend = "x86_64")]
#[doc(hidden)]
#[macro_export]
macro_rules! __static_call_global_asm {
    ($($args:tt)*) => {
        $crate::__private::core::arch::global_asm!($($args)*, options(att_syntax));
    };
}
