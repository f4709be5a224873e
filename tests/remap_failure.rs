//! `Remap` when its `mremap` fails: refused before the kernel touched the
//! page (the text is as it was), or after the kernel unmapped it (a single
//! write's pristine copy, or a batch's patched copy, goes back in its
//! place; if that fails too the error is
//! `RestoreFailed`, and nothing reads the unmapped page afterwards, neither
//! the writer nor the x86-64 backend's rollback).
//!
//! The failures are injected through `Remap`'s hidden hook, on scratch
//! pages this test maps itself, so no code anyone runs is ever unmapped.
//! The hook is process-wide: the tests here run one at a time, and no
//! other test binary shares this process.
#![cfg(target_os = "linux")]

use static_call::Error;
use static_call::writer::linux::{
    __test_hooks::{MoveFault, fail_moves},
    Remap,
};
use static_call::writer::{TextPatch, TextWriter};
use std::sync::{Mutex, MutexGuard};

#[path = "common/mapped_file.rs"]
mod mapped_file;

fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const PAGE: usize = 4096;

/// A fresh read+execute page holding `fill`, standing in for text.
fn scratch_page(fill: impl Fn(usize) -> u8) -> usize {
    // SAFETY: a fresh anonymous mapping, filled, then made read+execute.
    unsafe {
        let page = libc::mmap(
            std::ptr::null_mut(),
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        assert_ne!(page, libc::MAP_FAILED);
        for i in 0..PAGE {
            *page.cast::<u8>().add(i) = fill(i);
        }
        assert_eq!(
            libc::mprotect(page, PAGE, libc::PROT_READ | libc::PROT_EXEC),
            0
        );
        page as usize
    }
}

fn is_mapped(page: usize) -> bool {
    let mut v = [0u8; 1];
    // SAFETY: mincore only reads our page tables.
    unsafe { libc::mincore(page as *mut _, PAGE, v.as_mut_ptr()) == 0 }
}

fn bytes(page: usize) -> Vec<u8> {
    // SAFETY: a mapped, readable page of ours.
    unsafe { std::slice::from_raw_parts(page as *const u8, PAGE).to_vec() }
}

/// The protection of the mapping at `page`, as `/proc/self/maps` shows it.
fn protection(page: usize) -> String {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    maps.lines()
        .find_map(|l| {
            let (range, rest) = l.split_once(' ')?;
            let (a, b) = range.split_once('-')?;
            let (a, b) = (
                usize::from_str_radix(a, 16).ok()?,
                usize::from_str_radix(b, 16).ok()?,
            );
            (a..b).contains(&page).then(|| rest[..4].to_string())
        })
        .unwrap_or_else(|| "unmapped".into())
}

fn mappings() -> usize {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap()
        .lines()
        .count()
}

fn no_faults() {
    // SAFETY: disarms the hook.
    unsafe { fail_moves(MoveFault::Refused, 0, 0) };
}

#[test]
fn a_refused_mremap_leaves_the_text_as_it_was() {
    let _serial = serial();
    let page = scratch_page(|i| i as u8);
    let before = bytes(page);
    // SAFETY: the next write fails before the kernel touches the page.
    unsafe { fail_moves(MoveFault::Refused, 0, 1) };
    // SAFETY: our own scratch page stands in for text.
    let err = unsafe { Remap.write(page + 8, &[0xaa; 8]) }.unwrap_err();
    no_faults();
    assert!(matches!(err, Error::WriterFailed { .. }), "{err}");
    assert_eq!(bytes(page), before);
    assert_eq!(protection(page), "r-xp");
}

/// A write's page is put back as it was; a batch's page holds the
/// batch's patches whole.
#[test]
fn a_page_the_kernel_unmapped_is_put_back_as_it_was() {
    let _serial = serial();
    let page = scratch_page(|i| (i * 7) as u8);
    let before = bytes(page);
    for batch in [false, true] {
        // SAFETY: nothing runs our scratch page.
        unsafe { fail_moves(MoveFault::Unmapped, 0, 1) };
        let err = if batch {
            let patches = [
                TextPatch::new(page + 16, &[1; 8]),
                TextPatch::new(page + 64, &[2]),
            ];
            // SAFETY: as above.
            unsafe { Remap.write_batch(&mut patches.into_iter()) }
        } else {
            // SAFETY: as above.
            unsafe { Remap.write(page + 8, &[0xaa; 8]) }
        }
        .unwrap_err();
        no_faults();
        assert!(is_mapped(page), "batch {batch}");
        assert_eq!(protection(page), "r-xp", "batch {batch}");
        if batch {
            // A batch's error lets each patch be stored or not: the
            // patched copy itself is moved in on the second try, its
            // patches stored whole.
            assert!(
                matches!(err, Error::WriterFailed { what, .. } if what.contains("patches are stored")),
                "{err}"
            );
            let mut want = before.clone();
            want[16..24].fill(1);
            want[64] = 2;
            assert_eq!(bytes(page), want);
            // Put back as a backend's rollback would.
            let undo = [
                TextPatch::new(page + 16, &before[16..24]),
                TextPatch::new(page + 64, &before[64..65]),
            ];
            // SAFETY: as above.
            unsafe { Remap.write_batch(&mut undo.into_iter()) }.unwrap();
        } else {
            assert!(
                matches!(err, Error::WriterFailed { what, .. } if what.contains("mapped back")),
                "{err}"
            );
        }
        assert_eq!(bytes(page), before, "batch {batch}");
    }
    // And it is written normally afterwards.
    // SAFETY: as above.
    unsafe { Remap.write(page + 8, &[0xbb; 8]) }.unwrap();
    assert_eq!(bytes(page)[8..16], [0xbb; 8]);
}

#[test]
fn a_page_that_cannot_be_put_back_is_restore_failed_and_never_read_again() {
    let _serial = serial();
    let page = scratch_page(|_| 0x90);
    // SAFETY: nothing runs or reads our scratch page but the writer.
    unsafe { fail_moves(MoveFault::Unmapped, 0, 2) };
    // SAFETY: as above.
    let err = unsafe { Remap.write(page + 8, &[0xaa; 8]) }.unwrap_err();
    no_faults();
    assert_eq!(
        err,
        Error::RestoreFailed {
            addr: page,
            state: match err {
                Error::RestoreFailed { state, .. } => state,
                _ => unreachable!(),
            }
        },
        "{err}"
    );
    assert!(!is_mapped(page));
    // A later write or batch is refused without reading the page (which
    // would fault).
    // SAFETY: as above.
    let again = unsafe { Remap.write(page + 8, &[0xbb; 8]) }.unwrap_err();
    assert!(
        matches!(again, Error::RestoreFailed { addr, .. } if addr == page),
        "{again}"
    );
    let patches = [TextPatch::new(page + 16, &[1; 8])];
    // SAFETY: as above.
    let again = unsafe { Remap.write_batch(&mut patches.into_iter()) }.unwrap_err();
    assert!(matches!(again, Error::RestoreFailed { .. }), "{again}");
    assert!(!is_mapped(page));
}

/// Every write maps a patched copy and a pristine one: neither is left
/// behind, whether the write succeeds or fails. (Other test threads may
/// map a few things meanwhile; a leak would be one mapping per write.)
#[test]
fn no_copy_is_left_mapped() {
    let _serial = serial();
    let page = scratch_page(|_| 0);
    let start = mappings();
    for i in 0..100u8 {
        // SAFETY: our own scratch page stands in for text.
        unsafe { Remap.write(page + 8 * usize::from(i % 8), &[i; 8]) }.unwrap();
        let fault = [MoveFault::Refused, MoveFault::Unmapped][usize::from(i % 2)];
        // SAFETY: nothing runs our scratch page.
        unsafe { fail_moves(fault, 0, 1) };
        // SAFETY: as above.
        let _ = unsafe { Remap.write(page, &[0xcc; 8]) }.unwrap_err();
        no_faults();
    }
    let end = mappings();
    assert!(
        end <= start + 4,
        "mappings: {start} before 200 writes, {end} after"
    );
}

/// The x86-64 backend on a trampoline built in a scratch page: a move
/// that fails at any step of any update leaves it exactly as it was when
/// the page can be put back, and when it cannot, the update returns the
/// writer's `RestoreFailed`, reads nothing of the lost page (it would
/// fault), and refuses the key's later updates without reading either.
#[cfg(all(target_arch = "x86_64", not(feature = "force-generic")))]
#[test]
fn the_x86_64_rollback_never_reads_a_lost_page() {
    use static_call::arch::Backend;
    use static_call::arch::x86_64::{Image, Slot, Strategy, X86_64, null_stub_addr, plan};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let _serial = serial();
    let stub = null_stub_addr();
    // A trampoline at offset 64 of a scratch page, near, to a made-up
    // target in the page (nothing executes it), with a slot of its own
    // (statics: a slot armed for the int3 protocol is never freed).
    static SLOTS: [Slot; 40] = [const { Slot::new(std::ptr::null_mut()) }; 40];
    let next_slot = AtomicUsize::new(0);
    let fresh = || {
        // SAFETY: a fresh anonymous mapping, written, then made read+execute.
        let page = unsafe {
            let page = libc::mmap(
                std::ptr::null_mut(),
                PAGE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(page, libc::MAP_FAILED);
            let page = page as usize;
            let image = plan(page as u64 + 64, page as u64 + 0x800, stub);
            std::ptr::write_bytes(page as *mut u8, 0xcc, PAGE);
            std::ptr::write((page + 64) as *mut [u8; 8], image.entry);
            std::ptr::write((page + 72) as *mut u64, image.literal);
            let rx = libc::PROT_READ | libc::PROT_EXEC;
            assert_eq!(libc::mprotect(page as *mut _, PAGE, rx), 0);
            page
        };
        let slot = &SLOTS[next_slot.fetch_add(1, Ordering::Relaxed)];
        (page, page + 64, slot)
    };
    let image = |tramp: usize| {
        // SAFETY: a mapped scratch trampoline: 16 aligned bytes.
        unsafe { Image::from_words(*(tramp as *const u64), *((tramp + 8) as *const u64)) }
    };
    let mut cases = 0;
    for strategy in [Strategy::Breakpoint, Strategy::AtomicStore] {
        for to in [0x300usize, 0x900, 0] {
            for k in 0..5 {
                let (page, tramp, slot) = fresh();
                let target = if to == 0 { 0 } else { page + to };
                let before = image(tramp);
                // SAFETY: nothing runs the scratch page.
                unsafe { fail_moves(MoveFault::Unmapped, k, 1) };
                // SAFETY: a well-formed trampoline in our own page that
                // nothing executes, with its own slot.
                let r = unsafe { X86_64::retarget(tramp, slot, target, &Remap, strategy) };
                no_faults();
                let what = format!("{strategy:?} to {to:#x}, move {k} fails: {r:?}");
                assert!(is_mapped(page), "{what}");
                if r.is_ok() {
                    assert_ne!(image(tramp), before, "{what}");
                } else {
                    // Put back: the trampoline is as it was.
                    cases += 1;
                    assert!(!matches!(r, Err(Error::RestoreFailed { .. })), "{what}");
                    assert_eq!(image(tramp), before, "{what}");
                }
                // SAFETY: our page; nothing uses it again.
                unsafe { libc::munmap(page as *mut _, PAGE) };
            }
        }
        // Lost for good at the first move: the writer's error comes back
        // as it is, and nothing reads the page.
        let (page, tramp, slot) = fresh();
        // SAFETY: nothing runs or reads the scratch page.
        unsafe { fail_moves(MoveFault::Unmapped, 0, 2) };
        // SAFETY: as above.
        let r = unsafe { X86_64::retarget(tramp, slot, page + 0x300, &Remap, strategy) };
        no_faults();
        assert!(
            matches!(r, Err(Error::RestoreFailed { addr, .. }) if addr == page),
            "{strategy:?}: {r:?}"
        );
        assert!(!is_mapped(page));
        // SAFETY: query reads the slot only.
        assert_eq!(unsafe { X86_64::query(tramp, slot) }, Ok(0));
        // SAFETY: refused before anything is read.
        let again = unsafe { X86_64::retarget(tramp, slot, 0, &Remap, strategy) };
        assert!(
            matches!(again, Err(Error::RestoreFailed { addr, .. }) if addr == tramp),
            "{again:?}"
        );
    }
    assert!(cases >= 8, "{cases} failed updates put back");
}

/// A batch's copy spans up to 64 pages of one file: a refused move of a
/// long run leaves the text as it was (and is no `RestoreFailed`), and a
/// move after which the kernel unmapped the run puts the whole patched run
/// back on the second try.
#[test]
fn a_long_run_is_checked_and_put_back_whole() {
    use mapped_file::{PAGE, byte, mapped_file};
    let _serial = serial();
    let pages = 9;
    for fault in [MoveFault::Refused, MoveFault::Unmapped] {
        let (path, at) = mapped_file("remap-long-run", pages);
        let batch: Vec<TextPatch> = (0..pages)
            .step_by(2)
            .map(|p| TextPatch::new(at + p * PAGE + 8, &[0xee; 4]))
            .collect();
        // SAFETY: nothing runs this test's own mapping.
        unsafe { fail_moves(fault, 0, 1) };
        // SAFETY: as above.
        let err = unsafe { Remap.write_batch(&mut batch.into_iter()) }.unwrap_err();
        no_faults();
        assert!(
            matches!(err, Error::WriterFailed { .. }),
            "{fault:?}: {err}"
        );
        for p in 0..pages {
            assert!(is_mapped(at + p * PAGE), "{fault:?}: page {p} unmapped");
            let want = match fault {
                MoveFault::Unmapped if p % 2 == 0 => 0xee,
                _ => (p + 1) as u8,
            };
            assert_eq!(byte(at + p * PAGE + 8), want, "{fault:?}: page {p}");
            assert_eq!(byte(at + p * PAGE), (p + 1) as u8, "{fault:?}: page {p}");
        }
        std::fs::remove_file(path).unwrap();
    }
}
