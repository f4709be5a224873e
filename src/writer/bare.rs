//! Writers for kernels: storing through the executable mapping itself, or
//! through a writable alias of it.

use super::TextWriter;
use crate::Error;
use core::sync::atomic::{AtomicU8, AtomicU16, AtomicU32, AtomicU64, Ordering};

/// Stores straight to the executable address. For text that is writable
/// where it runs: MMU off, or a kernel that maps its text read-write.
///
/// It has no `sync_cores` step; wrap it if your kernel can interrupt other
/// CPUs.
///
/// Building one is `unsafe`: it stores wherever a backend asks, so the
/// text must really be writable at its executable address. In a Linux
/// process it is not (text is read-only), and a store through `Direct`
/// would fault: use `writer::linux::Remap` there.
///
/// ```no_run
/// use static_call::writer::Direct;
/// // SAFETY: this kernel runs with the MMU off, so its text is writable
/// // where it executes.
/// static WRITER: Direct = unsafe { Direct::new() };
/// static_call::set_default_writer(&WRITER);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Direct {
    _promise: (),
}

impl Direct {
    /// A writer that stores to text in place.
    ///
    /// # Safety
    ///
    /// Every trampoline and call site this writer is used for must be
    /// writable at its executable address (MMU off, or text mapped
    /// read-write) for as long as the writer is used.
    pub const unsafe fn new() -> Self {
        Direct { _promise: () }
    }

    /// For the generic backend, which never calls a writer: no store can
    /// happen through it.
    pub(crate) const UNUSED: Direct = Direct { _promise: () };
}

// SAFETY: `store` performs exactly the requested stores, single-copy atomic
// for aligned power-of-two sizes up to 8.
unsafe impl TextWriter for Direct {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        // SAFETY: the caller owns `addr..addr + len` for patching and it is
        // writable at this address, as this writer's contract requires.
        unsafe { store(addr, bytes) };
        Ok(())
    }
}

/// Stores through a writable alias of the text: the executable range
/// `exec_base..exec_base + len` is also mapped read-write at `alias_base`.
///
/// This is how a kernel keeps its text read-only and still patches it: the
/// executable mapping never becomes writable, and the alias need not be
/// executable.
///
/// ```
/// use static_call::writer::Alias;
/// // SAFETY (of this sketch): the kernel maps its 2 MiB of text at
/// // 0x4008_0000 read-write at 0xffff_0000_4008_0000 too, for good.
/// let writer = unsafe { Alias::new(0x4008_0000, 0xffff_0000_4008_0000, 0x20_0000) };
/// assert_eq!(writer.translate(0x4008_0010, 8), Some(0xffff_0000_4008_0010));
/// assert_eq!(writer.translate(0x4028_0000, 8), None);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct Alias {
    exec_base: usize,
    alias_base: usize,
    len: usize,
    sync: Option<fn() -> Result<(), Error>>,
}

impl Alias {
    /// An alias writer for `len` bytes of text at `exec_base`, writable at
    /// `alias_base`.
    ///
    /// # Safety
    ///
    /// For as long as the writer is used, `alias_base..alias_base + len`
    /// must be mapped writable onto the same memory as
    /// `exec_base..exec_base + len`, and nothing else may live there: the
    /// writer stores through the alias wherever a backend asks inside the
    /// range.
    pub const unsafe fn new(exec_base: usize, alias_base: usize, len: usize) -> Self {
        Alias {
            exec_base,
            alias_base,
            len,
            sync: None,
        }
    }

    /// The same writer with a "synchronize all CPUs" hook, called after
    /// cache maintenance (for example: send an IPI and wait until every
    /// other CPU has executed an `ISB`).
    pub const fn with_sync(mut self, sync: fn() -> Result<(), Error>) -> Self {
        self.sync = Some(sync);
        self
    }

    /// The alias address of `len` bytes at `addr`, or `None` if they are
    /// not all inside the aliased range.
    pub fn translate(&self, addr: usize, len: usize) -> Option<usize> {
        let offset = addr.checked_sub(self.exec_base)?;
        let end = offset.checked_add(len)?;
        (end <= self.len).then(|| self.alias_base + offset)
    }
}

// SAFETY: `store` performs exactly the requested stores through the alias
// (which maps the same memory), single-copy atomic for aligned sizes up to 8;
// an out-of-range request stores nothing.
unsafe impl TextWriter for Alias {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        let Some(alias) = self.translate(addr, bytes.len()) else {
            return Err(Error::WriterFailed {
                what: "map the address through the alias (outside the aliased range)",
                errno: 0,
            });
        };
        // SAFETY: the alias maps the same memory read-write, and the caller
        // owns that memory for patching.
        unsafe { store(alias, bytes) };
        Ok(())
    }

    fn sync_cores(&self) -> Result<(), Error> {
        self.sync.map_or(Ok(()), |sync| sync())
    }
}

/// Stores `bytes` at `addr`, as one atomic store when the size and
/// alignment allow it.
///
/// # Safety
///
/// `addr..addr + bytes.len()` must be writable memory the caller owns.
pub(crate) unsafe fn store(addr: usize, bytes: &[u8]) {
    // The atomics are only used for their single-copy-atomic store; the
    // ordering with cache maintenance comes from the backend's barriers.
    // SAFETY: the caller guarantees the range is writable, and each arm
    // checks the alignment its atomic type needs.
    unsafe {
        match bytes.len() {
            1 => (*(addr as *const AtomicU8)).store(bytes[0], Ordering::Relaxed),
            2 if addr.is_multiple_of(2) => (*(addr as *const AtomicU16))
                .store(u16::from_ne_bytes([bytes[0], bytes[1]]), Ordering::Relaxed),
            4 if addr.is_multiple_of(4) => (*(addr as *const AtomicU32)).store(
                u32::from_ne_bytes(bytes.try_into().unwrap_or_default()),
                Ordering::Relaxed,
            ),
            8 if addr.is_multiple_of(8) => (*(addr as *const AtomicU64)).store(
                u64::from_ne_bytes(bytes.try_into().unwrap_or_default()),
                Ordering::Relaxed,
            ),
            _ => {
                for (i, b) in bytes.iter().enumerate() {
                    core::ptr::write_volatile((addr + i) as *mut u8, *b);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alias_translates_only_inside_its_range() {
        // SAFETY: only `translate` is used; nothing is written.
        let w = unsafe { Alias::new(0x1000, 0x9000, 0x100) };
        assert_eq!(w.translate(0x1000, 8), Some(0x9000));
        assert_eq!(w.translate(0x10f8, 8), Some(0x90f8));
        assert_eq!(w.translate(0x10f9, 8), None);
        assert_eq!(w.translate(0xff8, 8), None);
        assert_eq!(w.translate(usize::MAX, 8), None);
    }

    #[test]
    fn alias_writes_through_the_alias_and_refuses_outside() {
        let mut exec = [0u64; 4];
        let mut alias = [0u64; 4];
        // SAFETY: a stand-in: `alias` plays the writable view of `exec`;
        // both are live, writable 32-byte buffers.
        let w = unsafe { Alias::new(exec.as_mut_ptr() as usize, alias.as_mut_ptr() as usize, 32) };
        // SAFETY: both buffers are live, writable and 8-byte aligned.
        unsafe {
            w.write(
                exec.as_ptr() as usize + 8,
                &0x1122_3344_5566_7788u64.to_ne_bytes(),
            )
            .unwrap();
            assert!(w.write(exec.as_ptr() as usize + 32, &[1]).is_err());
        }
        assert_eq!(alias, [0, 0x1122_3344_5566_7788, 0, 0]);
        assert_eq!(exec, [0; 4]);
    }

    #[test]
    fn direct_store_handles_every_width() {
        let mut buf = [0u64; 2];
        let base = buf.as_mut_ptr() as usize;
        // SAFETY: `buf` is live, writable and aligned.
        unsafe {
            let direct = Direct::new();
            direct.write(base, &[0xaa]).unwrap();
            direct.write(base + 2, &[0xbb, 0xcc]).unwrap();
            direct.write(base + 4, &[1, 2, 3, 4]).unwrap();
            direct.write(base + 8, &[9, 8, 7]).unwrap();
        }
        let bytes: std::vec::Vec<u8> = buf.iter().flat_map(|w| w.to_ne_bytes()).collect();
        assert_eq!(&bytes[..11], &[0xaa, 0, 0xbb, 0xcc, 1, 2, 3, 4, 9, 8, 7]);
    }
}
