//! A global allocator that counts allocations, for the tests that prove no heap
//! allocation happens while a connection is handled.
//!
//! A test binary declares `#[global_allocator] static GLOBAL: Counting = ...;`
//! with the threads it counts: every thread but those that opt out (the server
//! runs in the test's own process, its clients opt out), or only the threads
//! that opt in (one server thread, or one window of one thread). Counts are
//! process-wide: `allocations()` sums every counted thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Forwards to the system allocator and counts each allocation (not frees) made
/// by a counted thread.
pub struct Counting {
    /// Whether a thread that never called `count_this_thread` is counted.
    by_default: bool,
}

impl Counting {
    /// Counts every thread, but those that call `count_this_thread(false)`.
    pub const fn every_thread() -> Counting {
        Counting { by_default: true }
    }

    /// Counts only the threads that call `count_this_thread(true)`, while they
    /// are so marked.
    pub const fn opted_in_threads() -> Counting {
        Counting { by_default: false }
    }

    fn count(&self) {
        if COUNTED.with(|c| c.get()).unwrap_or(self.by_default) {
            ALLOCATIONS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's choice, if it made one. `const` and without a destructor:
    /// usable from the allocator at any point of the thread's life.
    static COUNTED: Cell<Option<bool>> = const { Cell::new(None) };
}

/// Marks the calling thread as counted or not, from now on.
pub fn count_this_thread(counted: bool) {
    COUNTED.with(|c| c.set(Some(counted)));
}

/// How many allocations the counted threads have made since the process began.
pub fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::SeqCst)
}

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.count();
        // SAFETY: same contract as ours.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        self.count();
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}
