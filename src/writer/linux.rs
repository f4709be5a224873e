//! Writers for Linux user space.
//!
//! Both keep the page's protection: on arm64, text of an object built for
//! BTI is mapped with `PROT_BTI`, and the page stays guarded after an
//! update.
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

/// Protection bits beyond read+execute that the text at `addr` was mapped
/// with and that a writer must ask for again when it re-protects or
/// replaces the page: `PROT_BTI` on arm64 (see [`super::bti`]). Without it,
/// every function on the page would lose its BTI guard after an update.
#[cfg(target_arch = "aarch64")]
fn kept_protection(addr: usize) -> libc::c_int {
    use core::ffi::{c_int, c_void};
    /// `HWCAP2_BTI`: the CPU and kernel support BTI.
    const HWCAP2_BTI: libc::c_ulong = 1 << 17;
    /// `PT_GNU_PROPERTY`: the segment of the GNU property note.
    const PT_GNU_PROPERTY: u32 = 0x6474_e553;
    struct Query {
        addr: usize,
        bti: bool,
    }
    /// Visits one loaded object: if one of its executable segments holds
    /// the address, records whether its notes ask for BTI and stops.
    ///
    /// # Safety
    ///
    /// Called by `dl_iterate_phdr` with a valid `info` and our `Query`.
    unsafe extern "C" fn visit(
        info: *mut libc::dl_phdr_info,
        _size: usize,
        data: *mut c_void,
    ) -> c_int {
        // SAFETY: per the contract: `info` describes a loaded object whose
        // program headers are mapped; `data` is the caller's `Query`.
        let (info, query) = unsafe { (&*info, &mut *data.cast::<Query>()) };
        // SAFETY: `dlpi_phdr` points to `dlpi_phnum` program headers.
        let phdrs = unsafe { core::slice::from_raw_parts(info.dlpi_phdr, info.dlpi_phnum.into()) };
        let base = info.dlpi_addr as usize;
        let holds = phdrs.iter().any(|p| {
            let start = base.wrapping_add(p.p_vaddr as usize);
            p.p_type == libc::PT_LOAD
                && p.p_flags & libc::PF_X != 0
                && (start..start.wrapping_add(p.p_memsz as usize)).contains(&query.addr)
        });
        if !holds {
            return 0;
        }
        query.bti = phdrs
            .iter()
            .filter(|p| p.p_type == libc::PT_NOTE || p.p_type == PT_GNU_PROPERTY)
            .any(|p| {
                // SAFETY: note segments lie inside a loaded, readable
                // segment of the object, `p_filesz` bytes long.
                let notes = unsafe {
                    core::slice::from_raw_parts(
                        base.wrapping_add(p.p_vaddr as usize) as *const u8,
                        p.p_filesz as usize,
                    )
                };
                super::bti::marked(notes, p.p_align as usize)
            });
        1
    }
    // SAFETY: getauxval has no preconditions.
    if unsafe { libc::getauxval(libc::AT_HWCAP2) } & HWCAP2_BTI == 0 {
        return 0;
    }
    let mut query = Query { addr, bti: false };
    // SAFETY: `visit` keeps dl_iterate_phdr's callback contract, and
    // `query` outlives the call.
    unsafe { libc::dl_iterate_phdr(Some(visit), (&raw mut query).cast()) };
    if query.bti { libc::PROT_BTI } else { 0 }
}

/// No other architecture has protection bits a writer must keep.
#[cfg(not(target_arch = "aarch64"))]
fn kept_protection(_addr: usize) -> libc::c_int {
    0
}

/// The pages that hold `addr..addr + len`.
fn page_span(addr: usize, len: usize) -> (usize, usize) {
    let page = page_size();
    let start = addr & !(page - 1);
    let end = (addr + len).next_multiple_of(page);
    (start, end - start)
}

/// What [`Error::RestoreFailed`] says when the text pages may be unmapped.
const UNMAPPED: &str = "the text page is not mapped: mremap to its address unmapped it and \
    failed, and mapping the original back failed too (or an earlier failure left it so); \
    nothing more is written there, and a call into it faults";

/// Whether every page of `start..start + len` is mapped: `None` when the
/// kernel cannot say.
fn mapped(start: usize, len: usize) -> Option<bool> {
    // One byte per page: a write spans at most two, a batch's copy at most
    // RUN_MAX.
    let mut residency = [0u8; RUN_MAX + 2];
    if len / page_size() > residency.len() {
        return None;
    }
    // SAFETY: mincore reads the page tables of our own range and writes
    // one byte per page into `residency`, which has room for them.
    let rc = unsafe { libc::mincore(start as *mut _, len, residency.as_mut_ptr()) };
    match rc {
        0 => Some(true),
        _ if errno() == libc::ENOMEM => Some(false),
        _ => None,
    }
}

/// Moves the `len` bytes of our mapping at `from` over `to` with one
/// `mremap`; the errno on failure.
///
/// # Safety
///
/// `from..from + len` is our own mapping; `to..to + len` text the caller
/// may patch, with the patch lock held.
unsafe fn move_over(from: usize, to: usize, len: usize) -> Result<(), i32> {
    if let Some(fault) = __test_hooks::next_fault() {
        if fault == __test_hooks::MoveFault::Unmapped {
            // What the kernel does before the steps that can still fail.
            // SAFETY: the test that asked for this fault promises nothing
            // runs the page meanwhile.
            unsafe { libc::munmap(to as *mut _, len) };
        }
        return Err(libc::ENOMEM);
    }
    // SAFETY: per this function's contract.
    let moved = unsafe {
        libc::mremap(
            from as *mut _,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            to as *mut libc::c_void,
        )
    };
    if moved == libc::MAP_FAILED {
        Err(errno())
    } else {
        Ok(())
    }
}

/// What backs the copy [`Remap`] made of the last text page it wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// No page has been written yet.
    Nothing,
    /// A private mapping of the file the page maps, at the same offset:
    /// `/proc/self/maps` still names the file for the page, `perf`
    /// symbolises it and uprobes find it through the file.
    File,
    /// Anonymous memory, and why the file could not be used.
    Anonymous(&'static str),
}

/// [`Backing`] of the last page copy, encoded: 0 nothing, 1 file, 2 + the
/// index of the reason in [`ANONYMOUS_REASONS`].
static LAST_BACKING: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Why a page copy is anonymous memory.
const ANONYMOUS_REASONS: [&str; 5] = [
    "the page maps no file that can be opened again (anonymous memory, a deleted file, \
     or a /proc/self/maps line that could not be read)",
    "opening the mapped file failed",
    "the file at the mapped path is no longer the mapped one (device or inode differ)",
    "mapping the file privately failed",
    "the kernel refused to make a written private file mapping executable (SELinux \
     execmod, say)",
];

fn note_backing(file: Result<(), usize>) {
    let v = match file {
        Ok(()) => 1,
        Err(reason) => 2 + reason as u8,
    };
    LAST_BACKING.store(v, Ordering::Relaxed);
}

/// What backs the copy [`Remap`] made of the last text page it wrote: the
/// page's own file where it can be (so profilers and probes keep working),
/// else anonymous memory, with the reason.
///
/// ```
/// use static_call::writer::linux::{Backing, Remap, last_backing};
/// static_call::static_call! { static OP: fn(u32) -> u32 = inc; }
/// fn inc(x: u32) -> u32 { x + 1 }
/// fn dec(x: u32) -> u32 { x - 1 }
/// # fn main() {
/// use static_call::arch::{Backend, active::Active};
/// OP.update_with(dec, &Remap).unwrap();
/// if Active::WRITES_TEXT {
///     // A program's own text maps its executable.
///     assert_eq!(last_backing(), Backing::File);
/// }
/// # }
/// ```
pub fn last_backing() -> Backing {
    match LAST_BACKING.load(Ordering::Relaxed) {
        0 => Backing::Nothing,
        1 => Backing::File,
        v => Backing::Anonymous(ANONYMOUS_REASONS[usize::from(v - 2)]),
    }
}

/// A fresh anonymous read-write mapping of `len` bytes.
fn anonymous(len: usize) -> Result<usize, Error> {
    // SAFETY: an anonymous private mapping with no address hint.
    let at = unsafe {
        libc::mmap(
            core::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if at == libc::MAP_FAILED {
        Err(Error::WriterFailed {
            what: "map a copy of the text page",
            errno: errno(),
        })
    } else {
        Ok(at as usize)
    }
}

/// What the page copies of one write or batch look up once:
/// `/proc/self/maps` (opened at the first copy) and the file the last copy
/// mapped, kept open for the next page of the same file. Both are closed
/// when the batch ends: a library that kept descriptors open between
/// updates would be surprised by a program that closes or reuses them.
#[derive(Default)]
struct Lookup {
    maps: Option<Option<super::maps::Maps>>,
    file: Option<OpenFile>,
}

/// A mapped file opened again, with its device and inode.
struct OpenFile {
    fd: libc::c_int,
    dev: (u32, u32),
    inode: u64,
}

impl Drop for OpenFile {
    fn drop(&mut self) {
        // SAFETY: our own descriptor (a mapping keeps the file open).
        unsafe { libc::close(self.fd) };
    }
}

/// Opens `path` and checks it is the file `dev`/`inode`; the index of the
/// reason in [`ANONYMOUS_REASONS`] if it cannot be opened or is another.
fn open_same(path: &[u8], dev: (u32, u32), inode: u64) -> Result<OpenFile, usize> {
    let mut buf = [0u8; 1025];
    buf.get_mut(..path.len())
        .ok_or(0usize)?
        .copy_from_slice(path);
    // SAFETY: `buf` is NUL-terminated (zeroed beyond the copy, which is at
    // most 1024 bytes); the descriptor is closed when the result drops.
    let fd = unsafe { libc::open(buf.as_ptr().cast(), libc::O_RDONLY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(1);
    }
    // SAFETY: `st` is plain data that fstat fills in.
    let mut st: libc::stat = unsafe { core::mem::zeroed() };
    // SAFETY: our descriptor, our buffer.
    let same = unsafe { libc::fstat(fd, &mut st) } == 0
        && st.st_ino == inode
        && st.st_dev == libc::makedev(dev.0, dev.1);
    let file = OpenFile { fd, dev, inode };
    if same { Ok(file) } else { Err(2) }
}

/// A private read-write mapping of the file that backs `start..start +
/// len`, at the offset those pages map, checked to be the same file
/// (device and inode); the index of the reason in [`ANONYMOUS_REASONS`]
/// where there is none.
fn file_copy(start: usize, len: usize, lookup: &mut Lookup) -> Result<(usize, Backed), usize> {
    let Lookup { maps, file } = lookup;
    let Some(maps) = maps.get_or_insert_with(super::maps::Maps::open) else {
        return Err(0);
    };
    maps.with_line_of(start, |line| {
        let l = line
            .filter(|l| l.is_file() && start + len <= l.end)
            .ok_or(0usize)?;
        let offset = l.offset + (start - l.start) as u64;
        let fd = match file {
            Some(f) if (f.dev, f.inode) == (l.dev, l.inode) => f.fd,
            _ => file.insert(open_same(l.path, l.dev, l.inode)?).fd,
        };
        // SAFETY: a private mapping of our descriptor, no address hint.
        let mapped = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE,
                fd,
                offset as libc::off_t,
            )
        };
        if mapped == libc::MAP_FAILED {
            return Err(3);
        }
        let backed = Backed {
            checked_end: l.end.min(start + RUN_MAX * page_size()),
            dev: l.dev,
            inode: l.inode,
            offset,
            prot: l.prot,
        };
        Ok((mapped as usize, backed))
    })
}

/// What a file-backed copy maps.
#[derive(Clone, Copy)]
struct Backed {
    /// Where the text known to map the file on from the copy's start, at
    /// the copy's offsets and with its protection, ends.
    checked_end: usize,
    dev: (u32, u32),
    inode: u64,
    /// The file offset of the copy's start.
    offset: u64,
    /// The text's protection ([`super::maps::MapsLine::prot`]).
    prot: u8,
}

impl Backed {
    /// Extends `checked_end` to `end` if the text up to there maps the same
    /// file at the copy's offsets with the same protection (mappings split
    /// by earlier updates); whether it now reaches `end`.
    fn check_up_to(&mut self, end: usize, start: usize, maps: &super::maps::Maps) -> bool {
        while self.checked_end < end {
            let at = self.checked_end;
            let next = maps.with_line_of(at, |l| {
                let l = l?;
                let same = l.is_file()
                    && (l.dev, l.inode, l.prot) == (self.dev, self.inode, self.prot)
                    && l.offset + (at - l.start) as u64 == self.offset + (at - start) as u64;
                same.then_some(l.end)
            });
            match next {
                Some(e) => self.checked_end = e.min(start + RUN_MAX * page_size()),
                None => return false,
            }
        }
        true
    }
}

/// The most bytes, in pages, one copy of a batch spans: pages that are
/// patched, or lie between such pages, in one mapping are copied, patched
/// and moved over the text together, with one `mmap`, `mprotect` and
/// `mremap` however many they are.
const RUN_MAX: usize = 64;

/// The most pages that need no patch a copy takes in to reach a later
/// page that does: copying them costs less than a copy of its own.
const GAP_MAX: usize = 2;

/// Set once an update left a text page unmapped ([`UNMAPPED`]): from then
/// on every copy first checks that its pages are mapped, since reading an
/// unmapped one would fault.
static LEFT_UNMAPPED: AtomicBool = AtomicBool::new(false);

/// [`Error::RestoreFailed`] for pages left unmapped, noted in
/// [`LEFT_UNMAPPED`].
fn left_unmapped(addr: usize) -> Error {
    LEFT_UNMAPPED.store(true, Ordering::Relaxed);
    Error::RestoreFailed {
        addr,
        state: UNMAPPED,
    }
}

/// A private read-write copy of text pages, patched and then moved over
/// the originals in one `mremap` ([`Remap`]'s one step).
///
/// The patched copy is a private mapping of the file the pages map, at
/// their offset, where that file can be opened again and is the same
/// (device and inode): the mapping that lands is then file-backed with the
/// right offset, as after an `mprotect` write, so `/proc/self/maps` keeps
/// naming the file. Elsewhere it is anonymous memory ([`last_backing`]
/// says which, and why).
///
/// A single write also keeps a pristine copy, to map back should the
/// `mremap` fail after the kernel unmapped the originals (so that its
/// error means nothing was stored). A batch needs none: its error allows
/// each patch to be stored or not, and the patched copy itself is moved in
/// on a second try.
struct PageCopy {
    start: usize,
    /// The bytes copied, patched and to be moved over the text.
    len: usize,
    /// The length of the copy's mapping: more than `len` once a batch has
    /// grown it to extend the copy to following pages of the same file.
    reserved: usize,
    /// What the copy maps, if a file: how far it may be extended.
    backed: Option<Backed>,
    /// The patched copy.
    copy: usize,
    /// The pristine copy (anonymous), for a single write.
    pristine: Option<usize>,
    rx: libc::c_int,
}

impl PageCopy {
    /// Copies the text pages `start..start + len` (after checking they are
    /// mapped, if an earlier failure left a page unmapped: reading it would
    /// fault), and a pristine copy too if `pristine`.
    ///
    /// # Safety
    ///
    /// `start..start + len` must be text pages the caller may patch.
    unsafe fn new(
        start: usize,
        len: usize,
        lookup: &mut Lookup,
        pristine: bool,
    ) -> Result<Self, Error> {
        ensure_membarrier()?;
        if LEFT_UNMAPPED.load(Ordering::Relaxed) && mapped(start, len) != Some(true) {
            return Err(left_unmapped(start));
        }
        let rx = libc::PROT_READ | libc::PROT_EXEC | kept_protection(start);
        let file = file_copy(start, len, lookup);
        let (copy, backed) = match file {
            Ok((at, backed)) => (at, Some(backed)),
            Err(_) => (anonymous(len)?, None),
        };
        let reserved = len;
        let pristine = match pristine.then(|| anonymous(len)).transpose() {
            Ok(at) => at,
            Err(e) => {
                // SAFETY: our own mapping.
                unsafe { libc::munmap(copy as *mut _, reserved) };
                return Err(e);
            }
        };
        note_backing(file.map(|_| ()));
        // SAFETY: `start..start + len` is mapped text (readable: it was
        // checked, or no update ever unmapped a page); `copy` and
        // `pristine` fresh writable mappings of its size. The file copy is
        // overwritten whole (its pages become private copies): the text
        // may differ from the file already.
        unsafe {
            core::ptr::copy_nonoverlapping(start as *const u8, copy as *mut u8, len);
            if let Some(p) = pristine {
                core::ptr::copy_nonoverlapping(start as *const u8, p as *mut u8, len);
            }
        }
        Ok(PageCopy {
            start,
            len,
            reserved,
            backed,
            copy,
            pristine,
            rx,
        })
    }

    /// Stores `bytes` where `addr` of the text lies in the copy.
    ///
    /// # Safety
    ///
    /// `addr..addr + bytes.len()` must lie in the copied pages.
    unsafe fn store(&self, addr: usize, bytes: &[u8]) {
        // SAFETY: inside our writable copy, per the caller.
        unsafe { store(self.copy + (addr - self.start), bytes) };
    }

    /// Extends the copy to the text up to `end` (a page boundary), copying
    /// the pages between; `false` (nothing done) where the copy would span
    /// more than [`RUN_MAX`] pages, the text there is not the same file's
    /// at the copy's offsets, more than [`GAP_MAX`] pages that need no
    /// patch would be copied, or the copy's mapping cannot grow. The
    /// mapping grows (`mremap`, to `RUN_MAX` pages at once) the first time
    /// a copy is extended: a copy that never is costs nothing more.
    ///
    /// # Safety
    ///
    /// `end` must lie in or after a page the caller may patch (a patch's).
    unsafe fn extend(&mut self, end: usize, lookup: &Lookup) -> bool {
        let from = self.start + self.len;
        if end <= from {
            return true;
        }
        let (Some(backed), Some(Some(maps))) = (&mut self.backed, &lookup.maps) else {
            return false;
        };
        let most = RUN_MAX * page_size();
        if end > self.start + most
            || end - from > (GAP_MAX + 1) * page_size()
            || !backed.check_up_to(end, self.start, maps)
            || LEFT_UNMAPPED.load(Ordering::Relaxed) && mapped(from, end - from) != Some(true)
        {
            return false;
        }
        if end > self.start + self.reserved {
            // SAFETY: grows (and may move) our own mapping; a private file
            // mapping grows over the file's following pages, and what was
            // written so far moves with it.
            let grown = unsafe {
                libc::mremap(
                    self.copy as *mut _,
                    self.reserved,
                    most,
                    libc::MREMAP_MAYMOVE,
                )
            };
            if grown == libc::MAP_FAILED {
                return false;
            }
            (self.copy, self.reserved) = (grown as usize, most);
        }
        // SAFETY: mapped text (as in `new`): pages of the same file as the
        // copy's first ones, at the same offsets and protection, checked
        // above, so text of the same object; copied into the copy's
        // reserved, writable tail.
        unsafe {
            core::ptr::copy_nonoverlapping(
                from as *const u8,
                (self.copy + self.len) as *mut u8,
                end - from,
            );
        }
        self.len = end - self.start;
        true
    }

    /// Makes the patched copy read+execute. A written private file mapping
    /// that the kernel refuses to make executable (SELinux's execmod) is
    /// replaced by an anonymous one with the same bytes.
    fn protect(&mut self) -> Result<(), i32> {
        if self.reserved > self.len {
            // SAFETY: the unused tail of our own mapping.
            unsafe { libc::munmap((self.copy + self.len) as *mut _, self.reserved - self.len) };
            self.reserved = self.len;
        }
        // SAFETY: changes the protection of our own mapping only.
        if unsafe { libc::mprotect(self.copy as *mut _, self.len, self.rx) } == 0 {
            return Ok(());
        }
        let refused = errno();
        if self.backed.is_none() {
            return Err(refused);
        }
        let Ok(anon) = anonymous(self.len) else {
            return Err(refused);
        };
        // SAFETY: both are our own mappings of `len` bytes; the file copy
        // is then dropped for the anonymous one.
        unsafe {
            core::ptr::copy_nonoverlapping(self.copy as *const u8, anon as *mut u8, self.len);
            libc::munmap(self.copy as *mut _, self.len);
        }
        (self.copy, self.backed) = (anon, None);
        note_backing(Err(4));
        // SAFETY: as above.
        if unsafe { libc::mprotect(self.copy as *mut _, self.len, self.rx) } == 0 {
            Ok(())
        } else {
            Err(errno())
        }
    }

    /// Makes the copy read+execute and moves it over the text. On failure
    /// the text is as it was, or the error is [`Error::RestoreFailed`].
    ///
    /// # Safety
    ///
    /// The copied pages must be text the caller may patch, with the patch
    /// lock held.
    unsafe fn commit(mut self) -> Result<(), Error> {
        let (len, pristine) = (self.len, self.pristine);
        let unmap = |at: usize| {
            // SAFETY: `at..at + len` is (what is left of) our own mapping.
            unsafe { libc::munmap(at as *mut libc::c_void, len) };
        };
        if let Err(errno) = self.protect() {
            // SAFETY: the whole of our own mapping (if `protect` failed
            // before it trimmed the tail).
            unsafe { libc::munmap(self.copy as *mut _, self.reserved) };
            pristine.map(unmap);
            return Err(Error::WriterFailed {
                what: "make the patched copy read+execute",
                errno,
            });
        }
        // SAFETY: moves our mapping over the caller's text pages.
        let Err(errno) = (unsafe { move_over(self.copy, self.start, len) }) else {
            pristine.map(unmap);
            return Ok(());
        };
        // `mremap` to a fixed address unmaps the destination first and can
        // still fail after that, leaving nothing there; user space cannot
        // tell which from the errno, so look. Still mapped: the kernel
        // refused before touching it, and the text is as it was.
        let what = "mremap the patched copy over the text page";
        match mapped(self.start, len) {
            Some(true) => {
                unmap(self.copy);
                pristine.map(unmap);
                return Err(Error::WriterFailed { what, errno });
            }
            Some(false) => {}
            None => {
                unmap(self.copy);
                pristine.map(unmap);
                return Err(left_unmapped(self.start));
            }
        }
        // Gone: the pristine copy (a single write) or the patched one (a
        // batch) takes its place, so the text holds what it held, or that
        // with this page's patches stored whole (a thread that ran the
        // page while it was missing has faulted; nothing can undo that).
        let (back_with, left, what) = match pristine {
            Some(p) => (
                p,
                Some(self.copy),
                "mremap the patched copy over the text page (the kernel unmapped the page \
                 and failed; the original was mapped back)",
            ),
            None => (
                self.copy,
                None,
                "mremap the patched copy over the text page (the kernel unmapped the page \
                 and failed; a second move put the patched copy there: this page's patches \
                 are stored, the batch's later ones are not)",
            ),
        };
        // SAFETY: our own mapping, then moved over the caller's text.
        let back = unsafe { libc::mprotect(back_with as *mut _, len, self.rx) } == 0
            && unsafe { move_over(back_with, self.start, len) }.is_ok();
        left.map(unmap);
        if back {
            Err(Error::WriterFailed { what, errno })
        } else {
            unmap(back_with);
            Err(left_unmapped(self.start))
        }
    }
}

/// Failure injection for [`Remap`]'s move step, for tests of the paths the
/// kernel rarely takes. Not part of the API.
#[doc(hidden)]
pub mod __test_hooks {
    use core::sync::atomic::{AtomicU8, AtomicUsize, Ordering};

    /// How an injected `mremap` failure behaves.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum MoveFault {
        /// The kernel refuses before changing anything.
        Refused,
        /// The kernel unmaps the destination, then fails.
        Unmapped,
    }

    static FAULT: AtomicU8 = AtomicU8::new(0);
    static SKIP: AtomicUsize = AtomicUsize::new(0);
    static LEFT: AtomicUsize = AtomicUsize::new(0);

    /// Lets the next `skip` moves of [`Remap`](super::Remap) succeed, then
    /// makes `count` fail as `fault` says (0: none).
    ///
    /// # Safety
    ///
    /// With [`MoveFault::Unmapped`], the page being written is unmapped
    /// for a while, and for good if `count` is 2 or more: nothing may run
    /// or read it but the writer and the update it serves.
    pub unsafe fn fail_moves(fault: MoveFault, skip: usize, count: usize) {
        FAULT.store(fault as u8, Ordering::SeqCst);
        SKIP.store(skip, Ordering::SeqCst);
        LEFT.store(count, Ordering::SeqCst);
    }

    /// The fault the next move has, if any.
    pub(super) fn next_fault() -> Option<MoveFault> {
        if LEFT.load(Ordering::SeqCst) == 0 {
            return None;
        }
        if SKIP
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return None;
        }
        LEFT.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .ok()?;
        Some(match FAULT.load(Ordering::SeqCst) {
            0 => MoveFault::Refused,
            _ => MoveFault::Unmapped,
        })
    }
}

/// W^X-safe writer: copies the text page into a fresh read-write mapping,
/// patches the copy, makes the copy read+execute, and `mremap`s it over the
/// original in one step. A thread running that page meanwhile sees the old
/// page or the new one, and never needs it writable.
///
/// The copy is a private mapping of the file the page maps, at the same
/// offset, where that file can be opened again and is the same one
/// (checked by device and inode): the page that lands is then a
/// copy-on-write page of a file-backed mapping, as after an `mprotect`
/// write, so `/proc/self/maps` still names the file, `perf` symbolises
/// the code and a uprobe registered through the file finds the page. Where
/// the file cannot be used the copy is anonymous memory, which loses all
/// of that ([`last_backing`] says which, and why). Either way the page no
/// longer shares the file's page cache. The page may hold other code next
/// to the trampolines and sites: a change something else makes to it while
/// an update runs without the [patch lock](super::patch_lock) (a
/// debugger's breakpoint, a uprobe being inserted) can be lost.
///
/// If the `mremap` fails, the page is checked: still mapped, the kernel
/// refused before touching it and the text is as it was. But `mremap` to a
/// fixed address unmaps the destination first and can fail after that
/// (running out of memory for page tables, say); the page is then gone.
/// A single `write` has made a pristine copy beside the patched one and
/// moves it in, so its error still means nothing changed; a batch moves
/// its patched copy in on a second try, so its error means each patch is
/// stored whole or not at all, as the contract allows (a thread that ran
/// the page in that moment has faulted, which nothing can undo). Only if
/// that move fails too is the error [`Error::RestoreFailed`]: the page is
/// unmapped, and no later write reads it.
///
/// A batch opens `/proc/self/maps` and each mapped file once. Its patches
/// come in address order, and those within a few pages of each other in
/// the same file (at the file's consecutive offsets, with the same
/// protection) share one copy: one `mmap`, `mprotect` and `mremap` for the
/// run (and one `mremap` growing the copy when the run first extends), one
/// mapping lookup for it (the `PROCMAP_QUERY` ioctl of Linux
/// 6.11, else a read of the file's text) and one more for each mapping
/// boundary inside it. Pages of a run that need no patch are replaced by
/// identical copies; like the patched ones they lose what a new mapping
/// does not inherit (`mlock` without `MCL_FUTURE`, `madvise` hints,
/// protection keys).
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
// page at once, so a reader sees the old or the new value. A failed mremap
// leaves the original in place (checked: still mapped) or puts the
// pristine copy (a write) or the whole patched copy (a batch) where the
// kernel unmapped it; only if that fails too is the error `RestoreFailed`,
// and no later write reads an unmapped page.
unsafe impl TextWriter for Remap {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        let (start, len) = page_span(addr, bytes.len());
        // SAFETY: the caller's contract: `addr..addr + bytes.len()` is
        // text it may patch, inside `start..start + len`.
        let copy = unsafe { PageCopy::new(start, len, &mut Lookup::default(), true) }?;
        // SAFETY: inside the copy.
        unsafe { copy.store(addr, bytes) };
        // SAFETY: the copy is of the caller's text pages.
        unsafe { copy.commit() }
    }

    /// Each page once per batch: the patches come sorted by address, so
    /// the ones of a page are consecutive; their page is copied once,
    /// patched, and moved over the text in one `mremap`.
    unsafe fn write_batch(
        &self,
        patches: &mut dyn Iterator<Item = super::TextPatch>,
    ) -> Result<(), Error> {
        // SAFETY: forwarded from the caller.
        unsafe { write_pages(patches, &mut Lookup::default()) }
    }

    fn sync_cores(&self) -> Result<(), Error> {
        membarrier_sync_core()
    }

    /// Every page is patched in a private copy and swapped in whole.
    fn publishes_pages(&self) -> bool {
        true
    }
}

/// [`Remap::write_batch`] with `lookup`.
///
/// # Safety
///
/// As for [`TextWriter::write_batch`].
unsafe fn write_pages(
    patches: &mut dyn Iterator<Item = super::TextPatch>,
    lookup: &mut Lookup,
) -> Result<(), Error> {
    let mut open: Option<PageCopy> = None;
    for p in patches {
        let (start, len) = page_span(p.addr, p.bytes().len());
        // The patches come in address order: one that lies in or shortly
        // after the open copy extends it, others start a copy.
        let extends = |c: &mut PageCopy| {
            // SAFETY: `start + len` ends a page of a patch, which the
            // caller may patch; `extend` checks that the pages between are
            // the same file's text as the copy's.
            start >= c.start && unsafe { c.extend(start + len, lookup) }
        };
        if let Some(copy) = open.take_if(|c| !extends(c)) {
            // SAFETY: the copy is of the caller's text pages.
            unsafe { copy.commit() }?;
        }
        let copy = match open.take() {
            Some(c) => c,
            // SAFETY: the caller's contract, as for `write`.
            None => unsafe { PageCopy::new(start, len, lookup, false) }?,
        };
        // SAFETY: inside the copy.
        unsafe { copy.store(p.addr, p.bytes()) };
        open = Some(copy);
    }
    match open {
        // SAFETY: as above.
        Some(copy) => unsafe { copy.commit() },
        None => Ok(()),
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
// up to 8); the protection change is undone before returning, and if that
// fails the old bytes are stored back before the error is returned.
unsafe impl TextWriter for Mprotect {
    unsafe fn write(&self, addr: usize, bytes: &[u8]) -> Result<(), Error> {
        // The old bytes are kept to be put back if the page cannot be made
        // read+execute again; backends write 8 bytes at most.
        let mut old = [0u8; 16];
        let Some(old) = old.get_mut(..bytes.len()) else {
            return Err(Error::WriterFailed {
                what: "write more than 16 bytes at once (Mprotect's limit)",
                errno: 0,
            });
        };
        ensure_membarrier()?;
        let (start, len) = page_span(addr, bytes.len());
        let rx = libc::PROT_READ | libc::PROT_EXEC | kept_protection(addr);
        // SAFETY: changes the protection of mapped text pages we patch.
        if unsafe { libc::mprotect(start as *mut _, len, rx | libc::PROT_WRITE) } != 0 {
            return Err(Error::WriterFailed {
                what: "make the text page writable",
                errno: errno(),
            });
        }
        // SAFETY: the page is now writable; the caller owns these bytes.
        unsafe {
            core::ptr::copy_nonoverlapping(addr as *const u8, old.as_mut_ptr(), old.len());
            store(addr, bytes);
        }
        // SAFETY: as above, restoring read+execute.
        if unsafe { libc::mprotect(start as *mut _, len, rx) } != 0 {
            let errno = errno();
            // An error must mean nothing was stored: put the old bytes back
            // while the page is still writable. Every byte a backend writes
            // is a valid state on both sides, so a CPU that ran the new
            // bytes meanwhile did no harm.
            // SAFETY: the page is still writable (restoring failed).
            unsafe { store(addr, old) };
            return Err(Error::WriterFailed {
                what: "restore the text page to read+execute (the old bytes were put back; \
                       the page is left writable)",
                errno,
            });
        }
        Ok(())
    }

    fn sync_cores(&self) -> Result<(), Error> {
        membarrier_sync_core()
    }
}
