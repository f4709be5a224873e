//! How `Remap` groups a batch's pages: nearby pages of the same file, at
//! the file's consecutive offsets and with the same protection, share one
//! copy and one `mremap`; a page between them that maps something else
//! (anonymous memory, another part of the file) ends the run, and is never
//! replaced.
//!
//! The "text" is a file this test writes and maps read+execute
//! (tests/common/mapped_file.rs).
#![cfg(target_os = "linux")]

use static_call::writer::linux::{Backing, Remap, last_backing};
use static_call::writer::{TextPatch, TextWriter};

#[path = "common/mapped_file.rs"]
mod mapped_file;
use mapped_file::{PAGE, byte, mapped_file};

/// The mappings of `/proc/self/maps` that overlap `start..end`:
/// (start, end, perms, offset, path).
fn lines(start: usize, end: usize) -> Vec<(usize, usize, String, u64, String)> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (a, b) = f.next()?.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            let perms = f.next()?.to_string();
            let offset = u64::from_str_radix(f.next()?, 16).ok()?;
            let path = f.nth(2).unwrap_or("").to_string();
            (a < end && b > start).then_some((a, b, perms, offset, path))
        })
        .collect()
}

/// Patches on pages 0 and 2 of one file mapping: one copy spans pages
/// 0-2 (the gap page copied unchanged) and lands as one mapping of the
/// file at its offsets.
#[test]
fn nearby_pages_of_one_file_share_one_copy() {
    let (path, at) = mapped_file("remap-runs-one", 4);
    let patches = [
        TextPatch::new(at + 8, &[0xaa; 8]),
        TextPatch::new(at + 2 * PAGE + 16, &[0xbb; 4]),
    ];
    // SAFETY: this test's own mapping, which nothing runs.
    unsafe { Remap.write_batch(&mut patches.into_iter()) }.unwrap();
    assert_eq!(last_backing(), Backing::File);
    assert_eq!(byte(at + 8), 0xaa);
    assert_eq!(byte(at + 2 * PAGE + 16), 0xbb);
    assert_eq!(byte(at + PAGE), 2, "the gap page keeps its bytes");
    assert_eq!(byte(at + 2 * PAGE), 3);
    let now = lines(at, at + 3 * PAGE);
    let name = path.to_str().unwrap();
    assert_eq!(
        now.first().map(|l| (l.0, l.1, l.3, l.4.as_str())),
        Some((at, at + 3 * PAGE, 0, name)),
        "pages 0-2 are one mapping of the file from offset 0: {now:?}"
    );
    assert_eq!(now[0].2, "r-xp");
    std::fs::remove_file(path).unwrap();
}

/// A page between two patched ones that maps anonymous memory, or
/// another part of the file, ends the run: each patched page is copied
/// on its own and the page between is left as it was.
#[test]
fn a_page_that_maps_something_else_ends_the_run() {
    for other in ["anonymous", "another offset"] {
        let (path, at) = mapped_file("remap-runs-split", 4);
        let middle = at + PAGE;
        let (flags, fd_file, offset) = match other {
            "anonymous" => (libc::MAP_ANONYMOUS, None, 0),
            _ => (0, Some(std::fs::File::open(&path).unwrap()), 3 * PAGE),
        };
        let fd = fd_file.as_ref().map_or(-1, std::os::fd::AsRawFd::as_raw_fd);
        // SAFETY: replaces a page of this test's own mapping.
        let m = unsafe {
            libc::mmap(
                middle as *mut _,
                PAGE,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_FIXED | flags,
                fd,
                offset as libc::off_t,
            )
        };
        assert_eq!(m as usize, middle);
        let middle_was = lines(middle, middle + PAGE);
        let middle_byte = byte(middle);
        let patches = [
            TextPatch::new(at + 8, &[0xaa; 8]),
            TextPatch::new(at + 2 * PAGE + 16, &[0xbb; 4]),
        ];
        // SAFETY: this test's own mappings, which nothing runs.
        unsafe { Remap.write_batch(&mut patches.into_iter()) }.unwrap();
        assert_eq!(byte(at + 8), 0xaa, "{other}");
        assert_eq!(byte(at + 2 * PAGE + 16), 0xbb, "{other}");
        assert_eq!(byte(middle), middle_byte, "{other}");
        assert_eq!(
            lines(middle, middle + PAGE),
            middle_was,
            "{other}: the page between was replaced"
        );
        let name = path.to_str().unwrap();
        for (page, offset) in [(at, 0), (at + 2 * PAGE, 2 * PAGE as u64)] {
            let l = &lines(page, page + PAGE)[0];
            assert_eq!(
                (l.4.as_str(), l.3 + (page - l.0) as u64),
                (name, offset),
                "{other}: page {page:#x} maps {l:?}"
            );
        }
        std::fs::remove_file(path).unwrap();
    }
}
