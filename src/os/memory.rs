//! Address space reserved at start-up.

use std::io;
use std::ptr::{self, NonNull};

/// Reserves `len` bytes of zeroed, page-aligned, read-write address space
/// (an anonymous private `mmap`). The kernel commits a page only when it is
/// first touched, and `MAP_NORESERVE` keeps untouched pages out of the commit
/// limit: a reservation sized for the worst case costs nothing until used.
/// Release it with `munmap`, or keep it for the life of the process.
pub fn reserve(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous mapping with no address hint has no preconditions.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// The `ENOMEM` of a start-up allocation that could not be had.
fn no_memory(_: std::collections::TryReserveError) -> io::Error {
    io::Error::from_raw_os_error(libc::ENOMEM)
}

/// An empty vector with room for `n`, or `ENOMEM`. Start-up's vectors are
/// sized by `-C` and `-A`: under an address-space limit (`ulimit -v`) one can
/// fail where the pools beside it fit, and the allocator would abort the
/// process with a backtrace where a pool that cannot be reserved is one line
/// and exit status 10.
pub fn vec_with_room<T>(n: usize) -> io::Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(no_memory)?;
    Ok(v)
}

/// [`vec_with_room`] for a `VecDeque`.
pub fn deque_with_room<T>(n: usize) -> io::Result<std::collections::VecDeque<T>> {
    let mut v = std::collections::VecDeque::new();
    v.try_reserve_exact(n).map_err(no_memory)?;
    Ok(v)
}

/// A lock-free queue of `n` slots, or `ENOMEM` (see [`vec_with_room`]).
/// `ArrayQueue::new` has no fallible form, so an allocation of the same size
/// is tried and given back first: at start-up, before the threads that could
/// take the room in between exist, the queue's own then succeeds.
pub fn array_queue<T>(n: usize) -> io::Result<crossbeam_queue::ArrayQueue<T>> {
    // A slot is the value beside a stamp (a usize).
    drop(vec_with_room::<(usize, T)>(n)?);
    Ok(crossbeam_queue::ArrayQueue::new(n))
}
