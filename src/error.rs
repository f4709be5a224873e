//! Errors of retargeting. Every error but one means the key behaves exactly
//! as before, on every CPU.

use core::fmt;

/// Why a retarget was refused.
///
/// The contract: when an update returns an error other than
/// [`RestoreFailed`](Error::RestoreFailed), the key behaves exactly as
/// before on every CPU. Most errors are found before anything is written;
/// one that happens while writing or synchronising makes the update put the
/// previous bytes back (with cache maintenance and a synchronisation) before
/// returning it. Only when that restore fails too is `RestoreFailed`
/// returned, naming what may be in place.
///
/// ```
/// use static_call::Error;
/// let e = Error::MisalignedTarget { target: 0x1002 };
/// assert_eq!(e.to_string(), "target 0x1002 is not an instruction address");
/// ```
///
/// `Debug` prints addresses and found values in hexadecimal:
///
/// ```
/// use static_call::Error;
/// let e = Error::UnreachableTarget { tramp: 0x4008_0000, target: 0x8_0000_0000 };
/// assert_eq!(
///     format!("{e:?}"),
///     "UnreachableTarget { tramp: 0x40080000, target: 0x800000000 }"
/// );
/// assert_eq!(
///     Error::WriterFailed { what: "map the page", errno: 0 }.to_string(),
///     "text writer failed to map the page"
/// );
/// ```
#[derive(Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// The trampoline address does not have the alignment its backend needs.
    MisalignedTrampoline {
        /// Address of the trampoline.
        addr: usize,
        /// Required alignment in bytes.
        align: usize,
    },
    /// The bytes at the trampoline are not a trampoline of the expected shape.
    UnrecognisedTrampoline {
        /// Address of the bytes checked: the entry on x86-64; the window
        /// (the literal, 8 bytes before the entry) on arm64.
        addr: usize,
        /// Offset in bytes from `addr` of the first unexpected instruction
        /// or field.
        offset: usize,
        /// What was found there: the instruction word (arm64), the byte
        /// (x86-64 code) or the literal.
        found: u64,
    },
    /// An inline call site of the key does not hold one of the
    /// instructions the crate puts there (a call of the trampoline, a call
    /// of the key's current target, or a no-op for NULL): something else
    /// wrote it, the linker routed it through a veneer, or the call-site
    /// table is corrupt. Nothing was written.
    UnrecognisedCallSite {
        /// Address of the site.
        site: usize,
        /// The instruction found there (the 4-byte word on arm64, the
        /// 8 bytes as a little-endian integer on x86-64).
        found: u64,
    },
    /// The new target cannot be an instruction address (for example it is
    /// not aligned to the instruction size).
    MisalignedTarget {
        /// The refused target.
        target: usize,
    },
    /// The new target cannot be reached from the trampoline by any form the
    /// backend supports.
    UnreachableTarget {
        /// Address of the trampoline.
        tramp: usize,
        /// The refused target.
        target: usize,
    },
    /// No text writer was given and none is installed for this platform.
    NoTextWriter,
    /// The text writer could not make text writable or could not write.
    WriterFailed {
        /// What the writer was doing.
        what: &'static str,
        /// An OS error number where one exists, else 0.
        errno: i32,
    },
    /// An update failed, and putting the previous bytes back failed too:
    /// the key is not known to behave as before everywhere. `state` says
    /// what may be in place. Each call still reaches the old or the new
    /// target; `query()` names where a call of the trampoline now goes,
    /// and the key's next update (with a writer that works) recognises
    /// what was left (an `int3` on x86-64 included) and completes it.
    RestoreFailed {
        /// Address of the text that could not be restored.
        addr: usize,
        /// What the text and the CPUs may hold.
        state: &'static str,
    },
    /// One batch of updates names the same key twice. Nothing was written:
    /// a batch gives each key one new target.
    DuplicateKey {
        /// Address of the key's trampoline.
        tramp: usize,
    },
    /// The writer wrote, but reading back found other bytes (text that is
    /// not really writable, or a writer that is not coherent with
    /// execution). The previous bytes were restored where possible.
    VerifyFailed {
        /// Address that read back wrong.
        addr: usize,
    },
    /// The new target is the key's own trampoline (or its entry for
    /// indirect calls, what [`trampoline`](crate::StaticCall::trampoline)
    /// returns): every call would jump to itself forever. Nothing was
    /// written.
    SelfTarget {
        /// Address of the key's trampoline.
        tramp: usize,
    },
    /// The update was started on a thread that already holds the patch
    /// lock: from a text writer, or from the closure of
    /// [`each_inline_site`](crate::StaticCall::each_inline_site). It would
    /// wait forever for itself. Nothing was written. (Detected in Linux
    /// user space; on bare metal such an update waits forever.)
    LockHeldByThisThread,
    /// The patch lock cannot be taken because the MMU is off (arm64 bare
    /// metal), where its atomics are not reliable: see
    /// [`writer::allow_updates_with_mmu_off`](crate::writer::allow_updates_with_mmu_off).
    /// Nothing was written.
    MmuOff {
        /// Why, and what to do.
        what: &'static str,
    },
    /// The update asked for a strategy that relies on its writer
    /// publishing whole pages (x86-64's
    /// [`Strategy::PageSwap`](crate::arch::x86_64::Strategy::PageSwap)),
    /// and the writer stores in place
    /// ([`TextWriter::publishes_pages`](crate::TextWriter::publishes_pages)
    /// is `false`). Nothing was written.
    NeedsPageWriter,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::MisalignedTrampoline { addr, align } => {
                write!(f, "trampoline at {addr:#x} is not {align}-byte aligned")
            }
            Error::UnrecognisedTrampoline {
                addr,
                offset,
                found,
            } => write!(
                f,
                "bytes at {addr:#x} are not a static-call trampoline \
                 (unexpected {found:#x} at offset {offset})"
            ),
            Error::UnrecognisedCallSite { site, found } => write!(
                f,
                "call site at {site:#x} holds {found:#x}, not a static call the crate placed there"
            ),
            Error::MisalignedTarget { target } => {
                write!(f, "target {target:#x} is not an instruction address")
            }
            Error::UnreachableTarget { tramp, target } => write!(
                f,
                "target {target:#x} is out of reach of the trampoline at {tramp:#x}"
            ),
            Error::NoTextWriter => f.write_str(
                "no text writer: pass one to update_with or install one with set_default_writer",
            ),
            Error::WriterFailed { what, errno: 0 } => {
                write!(f, "text writer failed to {what}")
            }
            Error::WriterFailed { what, errno } => {
                write!(f, "text writer failed to {what} (errno {errno})")
            }
            Error::DuplicateKey { tramp } => write!(
                f,
                "the key whose trampoline is at {tramp:#x} appears twice in one batch"
            ),
            Error::VerifyFailed { addr } => {
                write!(f, "text at {addr:#x} did not read back as written")
            }
            Error::RestoreFailed { addr, state } => write!(
                f,
                "an update failed and restoring the text at {addr:#x} failed too: {state}"
            ),
            Error::SelfTarget { tramp } => write!(
                f,
                "the target is the key's own trampoline at {tramp:#x}: every call would \
                 jump to itself forever"
            ),
            Error::LockHeldByThisThread => f.write_str(
                "this thread already holds the patch lock (an update from a text writer \
                 or from each_inline_site's closure would wait for itself)",
            ),
            Error::MmuOff { what } => write!(f, "the MMU is off: {what}"),
            Error::NeedsPageWriter => f.write_str(
                "the page-swap strategy needs a writer that publishes whole pages (such as \
                 Remap); this writer stores in place, where only the int3 protocol or single \
                 stores apply",
            ),
        }
    }
}

/// An address or raw value, printed in hexadecimal by `Debug`.
struct Hex(u64);

impl fmt::Debug for Hex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let hex = |v: usize| Hex(v as u64);
        match *self {
            Error::MisalignedTrampoline { addr, align } => f
                .debug_struct("MisalignedTrampoline")
                .field("addr", &hex(addr))
                .field("align", &align)
                .finish(),
            Error::UnrecognisedTrampoline {
                addr,
                offset,
                found,
            } => f
                .debug_struct("UnrecognisedTrampoline")
                .field("addr", &hex(addr))
                .field("offset", &offset)
                .field("found", &Hex(found))
                .finish(),
            Error::UnrecognisedCallSite { site, found } => f
                .debug_struct("UnrecognisedCallSite")
                .field("site", &hex(site))
                .field("found", &Hex(found))
                .finish(),
            Error::MisalignedTarget { target } => f
                .debug_struct("MisalignedTarget")
                .field("target", &hex(target))
                .finish(),
            Error::UnreachableTarget { tramp, target } => f
                .debug_struct("UnreachableTarget")
                .field("tramp", &hex(tramp))
                .field("target", &hex(target))
                .finish(),
            Error::NoTextWriter => f.write_str("NoTextWriter"),
            Error::WriterFailed { what, errno } => f
                .debug_struct("WriterFailed")
                .field("what", &what)
                .field("errno", &errno)
                .finish(),
            Error::DuplicateKey { tramp } => f
                .debug_struct("DuplicateKey")
                .field("tramp", &hex(tramp))
                .finish(),
            Error::VerifyFailed { addr } => f
                .debug_struct("VerifyFailed")
                .field("addr", &hex(addr))
                .finish(),
            Error::RestoreFailed { addr, state } => f
                .debug_struct("RestoreFailed")
                .field("addr", &hex(addr))
                .field("state", &state)
                .finish(),
            Error::SelfTarget { tramp } => f
                .debug_struct("SelfTarget")
                .field("tramp", &hex(tramp))
                .finish(),
            Error::LockHeldByThisThread => f.write_str("LockHeldByThisThread"),
            Error::MmuOff { what } => f.debug_struct("MmuOff").field("what", &what).finish(),
            Error::NeedsPageWriter => f.write_str("NeedsPageWriter"),
        }
    }
}

impl core::error::Error for Error {}

/// A refused update: the key it was for, and why.
///
/// Its `Display` names the key; [`error`](Self::error) is the reason, with
/// the same contract as every [`Error`]: unless it is
/// [`RestoreFailed`](Error::RestoreFailed), the key behaves as before.
///
/// ```
/// use static_call::{Error, UpdateError};
/// let e = UpdateError::new("HOOK", Error::MisalignedTarget { target: 0x1002 });
/// assert_eq!(e.to_string(), "static call HOOK: target 0x1002 is not an instruction address");
/// assert_eq!(e, Error::MisalignedTarget { target: 0x1002 });
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct UpdateError {
    /// The key's name, as written in its macro.
    pub key: &'static str,
    /// Why the update was refused.
    pub error: Error,
}

impl UpdateError {
    /// An update of `key` refused for `error`.
    pub const fn new(key: &'static str, error: Error) -> Self {
        UpdateError { key, error }
    }
}

impl fmt::Display for UpdateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "static call {}: {}", self.key, self.error)
    }
}

impl PartialEq<Error> for UpdateError {
    fn eq(&self, other: &Error) -> bool {
        self.error == *other
    }
}

impl From<UpdateError> for Error {
    fn from(e: UpdateError) -> Error {
        e.error
    }
}

impl core::error::Error for UpdateError {
    fn source(&self) -> Option<&(dyn core::error::Error + 'static)> {
        Some(&self.error)
    }
}
