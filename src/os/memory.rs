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
