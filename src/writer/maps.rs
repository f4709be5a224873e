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

/// Parses one line (without its newline): `start-end perms offset
/// maj:min inode [path]`, numbers in hex but the inode.
///
/// ```
/// use static_call::writer::maps::parse_line;
/// let l = parse_line(b"5555a000-5555c000 r-xp 00002000 fd:01 1234   /usr/bin/prog").unwrap();
/// assert_eq!((l.start, l.end, l.offset), (0x5555_a000, 0x5555_c000, 0x2000));
/// assert_eq!((l.dev, l.inode, l.path), ((0xfd, 1), 1234, &b"/usr/bin/prog"[..]));
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
    let _perms = field()?;
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

/// Calls `f` with the line of `/proc/self/maps` that holds `addr` (and a
/// buffer holding it), or `None` if none does or the file cannot be read.
#[cfg(target_os = "linux")]
pub(crate) fn with_line_of<R>(addr: usize, f: impl FnOnce(Option<&MapsLine<'_>>) -> R) -> R {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let fd = unsafe {
        libc::open(
            c"/proc/self/maps".as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
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
    // SAFETY: our own descriptor.
    unsafe { libc::close(fd) };
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
}
