//! Which file backs a text page, from `/proc/self/maps`: so that
//! `linux::Remap` can make its private copy of the page a
//! private mapping of that same file at the same offset. The page that
//! lands then still maps its file (`/proc/self/maps` names it, `perf`
//! symbolises it, a uprobe finds it through the file), as a page written
//! through `mprotect` does.
//!
//! The line parser is pure and unit-tested on every host.

/// One line of `/proc/self/maps`, as far as a text copy needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapsLine<'a> {
    /// The mapping's first byte.
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
    /// The file offset `start` maps.
    pub offset: u64,
    /// The file's device, major and minor.
    pub dev: (u32, u32),
    /// The file's inode; 0 for anonymous memory.
    pub inode: u64,
    /// The protection: [`READ`] | [`WRITE`] | [`EXEC`] | [`SHARED`].
    pub prot: u8,
    /// The path, or a pseudo-name such as `[vdso]`; empty for anonymous
    /// memory.
    pub path: &'a [u8],
}

impl MapsLine<'_> {
    /// Whether the mapping is of a file that can be opened again: a
    /// non-zero inode and an absolute path that was not deleted.
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.first() == Some(&b'/') && !self.path.ends_with(b" (deleted)")
    }
}

/// [`MapsLine::prot`]: readable.
pub const READ: u8 = 1;
/// [`MapsLine::prot`]: writable.
pub const WRITE: u8 = 2;
/// [`MapsLine::prot`]: executable.
pub const EXEC: u8 = 4;
/// [`MapsLine::prot`]: shared, not private.
pub const SHARED: u8 = 8;

/// Parses one line (without its newline): `start-end perms offset
/// maj:min inode [path]`, numbers in hex but the inode.
///
/// ```
/// use static_call::writer::maps::{self, parse_line};
/// let l = parse_line(b"5555a000-5555c000 r-xp 00002000 fd:01 1234   /usr/bin/prog").unwrap();
/// assert_eq!((l.start, l.end, l.offset), (0x5555_a000, 0x5555_c000, 0x2000));
/// assert_eq!((l.dev, l.inode, l.path), ((0xfd, 1), 1234, &b"/usr/bin/prog"[..]));
/// assert_eq!(l.prot, maps::READ | maps::EXEC);
/// assert!(l.is_file());
/// ```
pub fn parse_line(line: &[u8]) -> Option<MapsLine<'_>> {
    let mut rest = line;
    let mut field = || {
        let start = rest.iter().position(|&b| b != b' ')?;
        rest = &rest[start..];
        let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
        let (f, r) = rest.split_at(end);
        rest = r;
        Some(f)
    };
    let range = field()?;
    let perms = field()?;
    let offset = field()?;
    let dev = field()?;
    let inode = field()?;
    let dash = range.iter().position(|&b| b == b'-')?;
    let colon = dev.iter().position(|&b| b == b':')?;
    let path = {
        let start = rest.iter().position(|&b| b != b' ').unwrap_or(rest.len());
        &rest[start..]
    };
    Some(MapsLine {
        start: usize::try_from(hex(&range[..dash])?).ok()?,
        end: usize::try_from(hex(&range[dash + 1..])?).ok()?,
        offset: hex(offset)?,
        dev: (
            u32::try_from(hex(&dev[..colon])?).ok()?,
            u32::try_from(hex(&dev[colon + 1..])?).ok()?,
        ),
        inode: decimal(inode)?,
        prot: perms
            .iter()
            .zip([(b'r', READ), (b'w', WRITE), (b'x', EXEC), (b's', SHARED)])
            .filter(|(c, (set, _))| *c == set)
            .fold(0, |p, (_, (_, bit))| p | bit),
        path,
    })
}

fn hex(digits: &[u8]) -> Option<u64> {
    let s = core::str::from_utf8(digits).ok()?;
    u64::from_str_radix(s, 16).ok()
}

fn decimal(digits: &[u8]) -> Option<u64> {
    core::str::from_utf8(digits).ok()?.parse().ok()
}

/// The longest line read whole: longer lines (paths near `PATH_MAX`) are
/// skipped, and their pages copied as anonymous memory.
#[cfg(target_os = "linux")]
const LINE_MAX: usize = 1024;

/// `struct procmap_query` of `linux/fs.h` (Linux 6.11): one mapping of
/// the process, asked for by address with the `PROCMAP_QUERY` ioctl on
/// `/proc/self/maps`, without formatting and parsing the whole file.
#[cfg(target_os = "linux")]
#[repr(C)]
#[derive(Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

/// `_IOWR('f', 17, struct procmap_query)`.
#[cfg(target_os = "linux")]
const PROCMAP_QUERY: u64 =
    (3 << 30) | ((core::mem::size_of::<ProcmapQuery>() as u64) << 16) | ((b'f' as u64) << 8) | 17;

/// `/proc/self/maps`, open for a batch of lookups: each is one
/// `PROCMAP_QUERY` ioctl where the kernel has it, else a read of the text
/// from its start.
#[cfg(target_os = "linux")]
pub(crate) struct Maps {
    fd: libc::c_int,
    query: core::cell::Cell<bool>,
}

#[cfg(target_os = "linux")]
impl Maps {
    /// Opens `/proc/self/maps`; `None` if it cannot be.
    pub(crate) fn open() -> Option<Maps> {
        // SAFETY: a NUL-terminated path; the descriptor is closed on drop.
        let fd = unsafe {
            libc::open(
                c"/proc/self/maps".as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        Some(Maps {
            fd,
            query: core::cell::Cell::new(true),
        })
    }

    /// Calls `f` with the mapping that holds `addr`, or `None` if none
    /// does or the kernel cannot say.
    pub(crate) fn with_line_of<R>(
        &self,
        addr: usize,
        f: impl FnOnce(Option<&MapsLine<'_>>) -> R,
    ) -> R {
        if self.query.get() {
            let mut name = [0u8; LINE_MAX];
            let mut q = ProcmapQuery {
                size: core::mem::size_of::<ProcmapQuery>() as u64,
                query_addr: addr as u64,
                vma_name_size: LINE_MAX as u32,
                vma_name_addr: name.as_mut_ptr() as u64,
                ..ProcmapQuery::default()
            };
            // SAFETY: the ioctl reads `q` and writes `q` and at most
            // `vma_name_size` bytes of `name`, both ours.
            let rc = unsafe { libc::ioctl(self.fd, PROCMAP_QUERY as _, &raw mut q) };
            if rc == 0 {
                let len = (q.vma_name_size as usize).saturating_sub(1).min(LINE_MAX);
                let line = MapsLine {
                    start: q.vma_start as usize,
                    end: q.vma_end as usize,
                    offset: q.vma_offset,
                    dev: (q.dev_major, q.dev_minor),
                    inode: q.inode,
                    // The ioctl's flags are the same bits.
                    prot: (q.vma_flags & 0xf) as u8,
                    path: &name[..len],
                };
                return f(Some(&line));
            }
            match errno() {
                // No mapping there; a name too long to use.
                libc::ENOENT | libc::ENAMETOOLONG => return f(None),
                // A kernel without the ioctl: read the text from now on.
                _ => self.query.set(false),
            }
        }
        read_line_of(self.fd, addr, f)
    }
}

#[cfg(target_os = "linux")]
impl Drop for Maps {
    fn drop(&mut self) {
        // SAFETY: our own descriptor.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(target_os = "linux")]
fn errno() -> i32 {
    // SAFETY: `__errno_location` returns the calling thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Calls `f` with the line of `/proc/self/maps` that holds `addr`, or
/// `None` if none does or the file cannot be read.
#[cfg(all(test, target_os = "linux"))]
fn with_line_of<R>(addr: usize, f: impl FnOnce(Option<&MapsLine<'_>>) -> R) -> R {
    match Maps::open() {
        Some(maps) => maps.with_line_of(addr, f),
        None => f(None),
    }
}

/// The text of the maps file open at `fd`, read from its start, searched
/// for the line that holds `addr`.
#[cfg(target_os = "linux")]
fn read_line_of<R>(fd: libc::c_int, addr: usize, f: impl FnOnce(Option<&MapsLine<'_>>) -> R) -> R {
    // SAFETY: repositions our own descriptor.
    if unsafe { libc::lseek(fd, 0, libc::SEEK_SET) } != 0 {
        return f(None);
    }
    let mut chunk = [0u8; 4096];
    let mut line = [0u8; LINE_MAX];
    let (mut len, mut overlong) = (0usize, false);
    let mut found: Option<([u8; LINE_MAX], usize)> = None;
    'read: loop {
        // SAFETY: reads into our own buffer, at most its size.
        let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if n <= 0 {
            break;
        }
        for &b in &chunk[..n as usize] {
            if b != b'\n' {
                match line.get_mut(len) {
                    Some(slot) => *slot = b,
                    None => overlong = true,
                }
                len += 1;
                continue;
            }
            if !overlong
                && let Some(l) = parse_line(&line[..len])
                && (l.start..l.end).contains(&addr)
            {
                found = Some((line, len));
                break 'read;
            }
            (len, overlong) = (0, false);
        }
    }
    match &found {
        Some((buf, len)) => f(parse_line(&buf[..*len]).as_ref()),
        None => f(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_of_every_kind_parse() {
        let anon = parse_line(b"7f00a000-7f00b000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!((anon.inode, anon.path), (0, &b""[..]));
        assert!(!anon.is_file());
        let vdso = parse_line(b"7fff1000-7fff3000 r-xp 00000000 00:00 0    [vdso]").unwrap();
        assert!(!vdso.is_file());
        let spaced = parse_line(b"1000-2000 r-xp 00001000 08:02 99  /opt/my prog").unwrap();
        assert_eq!(spaced.prot, READ | EXEC);
        let shared = parse_line(b"1000-2000 rw-s 00001000 08:02 99  /dev/shm/x").unwrap();
        assert_eq!(shared.prot, READ | WRITE | SHARED);
        assert_eq!(spaced.path, b"/opt/my prog");
        assert!(spaced.is_file());
        let gone = parse_line(b"1000-2000 r-xp 0 08:02 99 /tmp/a.out (deleted)").unwrap();
        assert!(!gone.is_file());
        let big = parse_line(b"ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0 [vsyscall]");
        assert_eq!(big.map(|l| l.end), Some(0xffff_ffff_ff60_1000));
        assert_eq!(parse_line(b"garbage"), None);
        assert_eq!(parse_line(b"1000-2000 r-xp zz 08:02 1 /x"), None);
        assert_eq!(parse_line(b""), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_functions_page_maps_the_test_binary() {
        let here = lines_of_every_kind_parse as fn() as usize;
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        with_line_of(here, |l| {
            let l = l.expect("a line for our own text");
            assert!(l.is_file(), "{l:?}");
            assert_eq!(l.path, exe.as_os_str().as_encoded_bytes());
        });
        with_line_of(0, |l| assert!(l.is_none()));
    }

    /// The ioctl (where the kernel has it) and the text agree on every
    /// mapping of a few kinds: our text, our stack, the heap.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_query_and_the_text_agree() {
        let maps = Maps::open().unwrap();
        let local = 0u8;
        let heap = std::boxed::Box::new(0u8);
        for addr in [
            lines_of_every_kind_parse as fn() as usize,
            &raw const local as usize,
            &raw const *heap as usize,
        ] {
            let owned = |l: Option<&MapsLine<'_>>| {
                l.map(|l| {
                    (
                        l.start,
                        l.end,
                        l.offset,
                        l.dev,
                        l.inode,
                        l.prot,
                        l.path.to_vec(),
                    )
                })
            };
            let queried = maps.with_line_of(addr, owned);
            let read = read_line_of(maps.fd, addr, owned);
            assert!(queried.is_some(), "{addr:#x}");
            assert_eq!(queried, read, "{addr:#x}");
        }
        assert!(maps.with_line_of(0, |l| l.is_none()));
        // Linux 6.11 has the ioctl: there the text must not have been used
        // (natively: qemu-user does not pass the ioctl on, so the other
        // architectures' runs take the text).
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut v = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>());
        let (major, minor) = (v.next().unwrap().unwrap(), v.next().unwrap().unwrap());
        if cfg!(target_arch = "x86_64") && (major, minor) >= (6, 11) {
            assert!(maps.query.get(), "PROCMAP_QUERY failed on Linux {release}");
        }
    }
}
