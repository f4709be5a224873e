//! Writers for Linux user space.
//!
//! [`Remap`] keeps text W^X: it never makes a page writable and executable
//! at once. [`Mprotect`] briefly maps the page read-write-execute, which is
//! simpler but refused by hardened kernels; it exists for comparison and for
//! systems without `mremap`. Both call `membarrier(SYNC_CORE)` as their
//! "synchronize all CPUs" step.

use super::TextWriter;
use super::bare::store;
use crate::Error;
use core::sync::atomic::{AtomicBool, Ordering};

const MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_long = 1 << 5;
const MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE: libc::c_long = 1 << 6;

static MEMBARRIER_REGISTERED: AtomicBool = AtomicBool::new(false);

fn errno() -> i32 {
    // SAFETY: `__errno_location` returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as usize } else { 4096 }
}

/// Registers this process for `membarrier(PRIVATE_EXPEDITED_SYNC_CORE)`.
/// Done before the first write, so that a kernel without it makes the
/// update fail before anything changed.
fn ensure_membarrier() -> Result<(), Error> {
    if MEMBARRIER_REGISTERED.load(Ordering::Acquire) {
        return Ok(());
    }
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE,
            0,
            0,
        )
    };
    if rc != 0 {
        return Err(Error::WriterFailed {
            what: "register for membarrier(PRIVATE_EXPEDITED_SYNC_CORE)",
            errno: errno(),
        });
    }
    MEMBARRIER_REGISTERED.store(true, Ordering::Release);
    Ok(())
}

fn membarrier_sync_core() -> Result<(), Error> {
    // SAFETY: membarrier takes no pointers.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_membarrier,
            MEMBARRIER_CMD_PRIVATE_EXPEDITED_SYNC_CORE,
            0,
            0,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(Error::WriterFailed {
            what: "membarrier(PRIVATE_EXPEDITED_SYNC_CORE)",
            errno: errno(),
        })
    }
}

/// The pages that hold `addr..addr + len`.
fn page_span(addr: usize, len: usize) -> (usize, usize) {
    let page = page_size();
    let start = addr & !(page - 1);
    let end = (addr + len).next_multiple_of(page);
    (start, end - start)
}

/// W^X-safe writer: copies the text page into a fresh read-write mapping,
/// patches the copy, makes the copy read+execute, and `mremap`s it over the
/// original in one step. A thread running that page meanwhile sees the old
/// page or the new one, and never needs it writable.
///
/// The page becomes anonymous memory (it no longer shares the executable
/// file's page cache), exactly as a copy-on-write text relocation would.
/// Text that something else patches without the
/// [patch lock](super::patch_lock) must not share its page with a key.
///
/// ```
/// static_call::static_call! { static OP: fn(u32) -> u32 = inc; }
/// fn inc(x: u32) -> u32 { x + 1 }
/// fn dec(x: u32) -> u32 { x - 1 }
/// # fn main() {
/// OP.update_with(dec, &static_call::writer::linux::Remap).unwrap();
/// assert_eq!(OP.call(1), 0);
/// # }
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct Remap;

// SAFETY: the copy receives exactly `bytes` at the right offset through
// `store` (atomic for aligned sizes up to 8), and the mremap swaps the whole
// page at once, so a reader sees the old or the new value. Every failure
// path unmaps the copy before touching the original.
unsafe impl TextWriter for Remap {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        ensure_membarrier()?;
        let (start, len) = page_span(addr, bytes.len());
        // SAFETY: an anonymous private mapping with no address hint.
        let copy = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if copy == libc::MAP_FAILED {
            return Err(Error::WriterFailed {
                what: "map a copy of the text page",
                errno: errno(),
            });
        }
        let copy = copy as usize;
        let fail = |what| {
            let errno = errno();
            // SAFETY: `copy` is the mapping made above, of `len` bytes.
            unsafe { libc::munmap(copy as *mut libc::c_void, len) };
            Err(Error::WriterFailed { what, errno })
        };
        // SAFETY: `start..start + len` is mapped text (readable), `copy` is
        // a fresh writable mapping of the same size; they do not overlap.
        unsafe {
            core::ptr::copy_nonoverlapping(start as *const u8, copy as *mut u8, len);
            store(copy + (addr - start), bytes);
        }
        // SAFETY: changes the protection of our own mapping only.
        if unsafe { libc::mprotect(copy as *mut _, len, libc::PROT_READ | libc::PROT_EXEC) } != 0 {
            return fail("make the patched copy read+execute");
        }
        // SAFETY: moves our mapping over the text pages; on failure the
        // original mapping is untouched.
        let moved = unsafe {
            libc::mremap(
                copy as *mut _,
                len,
                len,
                libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
                start as *mut libc::c_void,
            )
        };
        if moved == libc::MAP_FAILED {
            return fail("mremap the patched copy over the text page");
        }
        Ok(())
    }

    fn sync_cores(&self) -> Result<(), Error> {
        membarrier_sync_core()
    }
}

/// Writer that makes the text page read-write-execute for the duration of
/// the store, then read+execute again. Simpler than [`Remap`] and keeps the
/// page file-backed, but it briefly breaks W^X, which hardened kernels
/// (PaX, SELinux `execmod`) refuse: such a refusal is returned as an error.
///
/// ```
/// static_call::static_call! { static OP: fn(u32) -> u32 = inc; }
/// fn inc(x: u32) -> u32 { x + 1 }
/// fn dec(x: u32) -> u32 { x - 1 }
/// # fn main() {
/// OP.update_with(dec, &static_call::writer::linux::Mprotect).unwrap();
/// assert_eq!(OP.call(1), 0);
/// # }
/// ```
#[derive(Debug, Default, Clone, Copy)]
pub struct Mprotect;

// SAFETY: `store` writes exactly `bytes` in place (atomic for aligned sizes
// up to 8); the protection change is undone before returning.
unsafe impl TextWriter for Mprotect {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        ensure_membarrier()?;
        let (start, len) = page_span(addr, bytes.len());
        let rx = libc::PROT_READ | libc::PROT_EXEC;
        // SAFETY: changes the protection of mapped text pages we patch.
        if unsafe { libc::mprotect(start as *mut _, len, rx | libc::PROT_WRITE) } != 0 {
            return Err(Error::WriterFailed {
                what: "make the text page writable",
                errno: errno(),
            });
        }
        // SAFETY: the page is now writable; the caller owns these bytes.
        unsafe { store(addr, bytes) };
        // SAFETY: as above, restoring read+execute.
        if unsafe { libc::mprotect(start as *mut _, len, rx) } != 0 {
            return Err(Error::WriterFailed {
                what: "restore the text page to read+execute",
                errno: errno(),
            });
        }
        Ok(())
    }

    fn sync_cores(&self) -> Result<(), Error> {
        membarrier_sync_core()
    }
}
