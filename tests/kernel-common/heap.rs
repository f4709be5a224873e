//! A bump allocator for the few heap objects the kernel makes (failure
//! messages, page tables). Nothing is ever freed: a test kernel runs once and
//! allocates a bounded amount, so a real allocator would only add code.
//!
//! Shared by the test kernels, each of which includes this file with
//! `#[path = ...] pub mod heap;`.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::UnsafeCell;
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

const HEAP_SIZE: usize = 4 << 20;

#[repr(C, align(4096))]
struct Arena(UnsafeCell<[u8; HEAP_SIZE]>);

// SAFETY: disjoint pieces of the arena are handed out through an atomic
// cursor, so no two users ever get the same bytes.
unsafe impl Sync for Arena {}

static ARENA: Arena = Arena(UnsafeCell::new([0; HEAP_SIZE]));

struct Bump {
    next: AtomicUsize,
}

// SAFETY: `alloc` returns blocks that are in bounds, correctly aligned and
// never handed out twice (compare-exchange on the cursor); `dealloc` does
// nothing, which is allowed (memory is leaked, not reused).
unsafe impl GlobalAlloc for Bump {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let base = ARENA.0.get() as usize;
        let mut offset = self.next.load(Ordering::Relaxed);
        loop {
            let start = (base + offset).next_multiple_of(layout.align()) - base;
            let Some(end) = start.checked_add(layout.size()) else {
                return ptr::null_mut();
            };
            if end > HEAP_SIZE {
                return ptr::null_mut();
            }
            match self
                .next
                .compare_exchange_weak(offset, end, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return ARENA.0.get().cast::<u8>().wrapping_add(start),
                Err(current) => offset = current,
            }
        }
    }

    unsafe fn dealloc(&self, _ptr: *mut u8, _layout: Layout) {}
}

#[global_allocator]
static ALLOCATOR: Bump = Bump {
    next: AtomicUsize::new(0),
};

/// Bytes handed out so far.
pub fn used() -> usize {
    ALLOCATOR.next.load(Ordering::Relaxed)
}
