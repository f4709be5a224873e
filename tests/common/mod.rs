//! Helpers shared by the integration tests (not a test target itself).

/// Maps `thunks` (each at most 32 bytes of code) into one fresh page more
/// than 4 GiB from `near`, makes it read+execute, and returns each thunk's
/// address: code no `jmp rel32` or `b` near the text can reach.
#[cfg(target_os = "linux")]
#[allow(dead_code)]
pub fn map_far_code(near: usize, thunks: &[Vec<u8>]) -> Vec<usize> {
    assert!(thunks.len() <= 4096 / 32 && thunks.iter().all(|t| t.len() <= 32));
    let mut page = libc::MAP_FAILED;
    for hint in [near + (64 << 30), near.wrapping_sub(64 << 30)] {
        // SAFETY: a fresh anonymous mapping where nothing is mapped
        // (MAP_FIXED_NOREPLACE never replaces a mapping).
        page = unsafe {
            libc::mmap(
                (hint & !0xffff) as *mut _,
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
                -1,
                0,
            )
        };
        if page != libc::MAP_FAILED {
            break;
        }
    }
    assert_ne!(page, libc::MAP_FAILED, "mapping far code");
    let page = page as usize;
    assert!(page.abs_diff(near) > 4 << 30, "far code is not far");
    for (i, code) in thunks.iter().enumerate() {
        // SAFETY: the page is ours and writable; 32 bytes per thunk.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), (page + 32 * i) as *mut u8, code.len())
        };
    }
    #[cfg(target_arch = "aarch64")]
    static_call::arch::aarch64::flush_icache_range(page, 32 * thunks.len());
    // riscv64: instruction fetch sees stores only after a FENCE.I on each
    // hart, which Linux does for every thread with riscv_flush_icache.
    #[cfg(target_arch = "riscv64")]
    {
        /// `__NR_riscv_flush_icache`.
        const SYS_RISCV_FLUSH_ICACHE: libc::c_long = 259;
        // SAFETY: takes an address range and flags, dereferences nothing.
        let rc =
            unsafe { libc::syscall(SYS_RISCV_FLUSH_ICACHE, page, page + 32 * thunks.len(), 0) };
        assert_eq!(rc, 0, "riscv_flush_icache");
    }
    // SAFETY: our own mapping, now complete.
    let rc = unsafe { libc::mprotect(page as *mut _, 4096, libc::PROT_READ | libc::PROT_EXEC) };
    assert_eq!(rc, 0);
    (0..thunks.len()).map(|i| page + 32 * i).collect()
}
