//! `futex(2)` on an atomic word: sleep while it holds a value, wake sleepers.
//! What a counting semaphore needs underneath (`task::Permits`), with no lock
//! that a descheduled thread could hold.

use std::sync::atomic::AtomicU32;

/// Sleeps while `word` holds `expected` (returns at once if it does not), until
/// a [`futex_wake`] on it, a signal, or a spurious wake-up: the caller re-checks
/// its condition in a loop.
pub fn futex_wait(word: &AtomicU32, expected: u32) {
    // Its errors (EAGAIN: the value changed; EINTR) all mean "look again".
    // SAFETY: `word` is a live aligned 32-bit atomic for the call; a private futex without timeout only reads it.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
            expected,
            std::ptr::null::<libc::timespec>(),
        );
    }
}

/// Wakes up to `n` threads sleeping in [`futex_wait`] on `word`.
pub fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a live aligned 32-bit atomic; a wake only reads its address to find sleepers.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
            n,
        );
    }
}
