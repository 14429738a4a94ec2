//! Memory shared by the generations of an upgrade lineage: a memfd mapped
//! `MAP_SHARED`, which an upgrade hands to the new process like a listener.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// Words of 64 bits in shared memory that other processes (the lineage's
/// other generations) read and write at the same time, through atomics only.
#[derive(Debug)]
pub struct SharedWords {
    fd: OwnedFd,
    ptr: NonNull<AtomicU64>,
    len: usize,
}

// SAFETY: the mapping is only ever accessed through `AtomicU64`s, which any
// thread (or process) may use at once; it lives as long as the value.
unsafe impl Send for SharedWords {}
// SAFETY: as above: `&SharedWords` gives out only `&[AtomicU64]`.
unsafe impl Sync for SharedWords {}

const NAME: &CStr = c"conn-daemon-counters";

impl SharedWords {
    /// `len` new zeroed words in a new memfd (close-on-exec: an upgrade hands
    /// it over on purpose).
    pub fn create(len: usize) -> io::Result<SharedWords> {
        // SAFETY: a valid NUL-terminated name.
        let fd = unsafe { libc::memfd_create(NAME.as_ptr(), libc::MFD_CLOEXEC) };
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let bytes = len
            .checked_mul(8)
            .and_then(|b| libc::off_t::try_from(b).ok())
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: ftruncate on our own fd.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), bytes) } == -1 {
            return Err(io::Error::last_os_error());
        }
        SharedWords::map(fd, len)
    }

    /// The words of an inherited memfd (its size decides how many).
    pub fn attach(fd: OwnedFd) -> io::Result<SharedWords> {
        // SAFETY: stat is plain data; all-zero is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid out-pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == -1 {
            return Err(io::Error::last_os_error());
        }
        let len = usize::try_from(st.st_size).unwrap_or(0) / 8;
        SharedWords::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> io::Result<SharedWords> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        // SAFETY: a new shared mapping of our own fd, no address hint.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len * 8,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr =
            NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        Ok(SharedWords { fd, ptr, len })
    }

    /// The words.
    pub fn words(&self) -> &[AtomicU64] {
        // SAFETY: `len` page-aligned (so 8-aligned) words mapped for as long
        // as `self`; AtomicU64 has u64's layout, and every access is atomic.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The memfd, to hand over.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl Drop for SharedWords {
    fn drop(&mut self) {
        // SAFETY: our own mapping, of this length; no reference outlives self.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len * 8) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::Ordering;

    #[test]
    fn two_mappings_of_one_memfd_see_each_other() {
        let a = SharedWords::create(1000).unwrap();
        let dup = a.fd().try_clone().unwrap();
        let b = SharedWords::attach(dup).unwrap();
        assert_eq!(b.words().len(), 1000);
        a.words()[999].store(42, Ordering::Relaxed);
        assert_eq!(b.words()[999].load(Ordering::Relaxed), 42);
        assert_eq!(b.words()[0].load(Ordering::Relaxed), 0);
    }
}
