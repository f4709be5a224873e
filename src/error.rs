//! Errors of retargeting. Every error means nothing was written.

use core::fmt;

/// Why a retarget was refused. When an update returns an error, the text it
/// would have patched is unchanged.
///
/// ```
/// use static_call::Error;
/// let e = Error::MisalignedTarget { target: 0x1002 };
/// assert_eq!(e.to_string(), "target 0x1002 is not an instruction address");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
        /// Address of the trampoline.
        addr: usize,
        /// Offset in bytes (from the start of the patch window) of the first
        /// unexpected instruction or field.
        offset: usize,
        /// The word found there.
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
    /// The writer wrote, but reading back found other bytes (text that is
    /// not really writable, or a writer that is not coherent with
    /// execution). The previous bytes were restored where possible.
    VerifyFailed {
        /// Address that read back wrong.
        addr: usize,
    },
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
                 (unexpected {found:#x} at window offset {offset})"
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
            Error::WriterFailed { what, errno } => {
                write!(f, "text writer failed to {what} (errno {errno})")
            }
            Error::VerifyFailed { addr } => {
                write!(f, "text at {addr:#x} did not read back as written")
            }
        }
    }
}

impl core::error::Error for Error {}
