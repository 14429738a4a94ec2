//! Fds and pids: counting this process's open fds without allocating, copying
//! an fd, whether a process exists.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// Number of open file descriptors of this process: the entries of
/// `/proc/self/fd`, read with `getdents64` into a stack buffer, since
/// `std::fs::read_dir` allocates per entry (the metrics scrape must not).
pub fn open_fds() -> io::Result<u64> {
    #[repr(C, align(8))]
    struct Buf([u8; 4096]);

    let dir = std::fs::File::open("/proc/self/fd")?;
    let mut buf = Buf([0; 4096]);
    let mut count: u64 = 0;
    loop {
        // SAFETY: getdents64 writes at most the given length into our buffer, which is aligned for `linux_dirent64`; the fd is an open directory.
        let got = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.0.as_mut_ptr(),
                buf.0.len(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        if got == 0 {
            break;
        }
        let mut at = 0;
        let end = got as usize;
        // linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name.
        while at + 19 < end {
            let reclen = usize::from(u16::from_ne_bytes([buf.0[at + 16], buf.0[at + 17]]));
            let name = &buf.0[at + 19..(at + reclen).min(end)];
            if name.first() != Some(&b'.') {
                count += 1;
            }
            if reclen == 0 {
                break;
            }
            at += reclen;
        }
    }
    // Not counting the directory we had open to count.
    Ok(count.saturating_sub(1))
}

/// A close-on-exec copy of `fd` (numbered 3 or above), owned by the caller.
pub fn dup(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on any number is harmless; it fails for a closed fd.
    let copy = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if copy == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fcntl returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(copy) })
}

/// Whether `pid` exists (a zombie included: reap a child first).
pub fn alive(pid: libc::pid_t) -> bool {
    // SAFETY: kill with signal 0 sends nothing and has no memory preconditions.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}
