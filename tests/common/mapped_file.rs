//! A file a test writes and maps privately read+execute, standing in for
//! text: the mappings are exactly as the test arranges them, and nothing
//! runs them. Included with `#[path = ...] mod` by the `Remap` tests.

use std::path::PathBuf;

pub const PAGE: usize = 4096;

/// A file of `pages` pages, page `i` filled with `i + 1`, and a private
/// read+execute mapping of all of it.
pub fn mapped_file(name: &str, pages: usize) -> (PathBuf, usize) {
    let path = std::env::temp_dir().join(format!("{name}-{}", std::process::id()));
    let data: Vec<u8> = (0..pages * PAGE).map(|i| (i / PAGE + 1) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let file = std::fs::File::open(&path).unwrap();
    // SAFETY: a fresh private mapping of our own file, no address hint.
    let at = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            pages * PAGE,
            libc::PROT_READ | libc::PROT_EXEC,
            libc::MAP_PRIVATE,
            std::os::fd::AsRawFd::as_raw_fd(&file),
            0,
        )
    };
    assert_ne!(at, libc::MAP_FAILED);
    (path, at as usize)
}

/// The byte at `addr` of a test's mapping.
pub fn byte(addr: usize) -> u8 {
    // SAFETY: a mapped, readable byte of the test's mappings.
    unsafe { (addr as *const u8).read_volatile() }
}
