//! Service-manager notification (`sd_notify`).

use std::os::unix::ffi::OsStrExt;

/// Sends one datagram to the service manager (`sd_notify`): nothing when
/// `NOTIFY_SOCKET` is unset. A leading `@` is Linux's abstract namespace.
pub fn sd_notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.is_empty() || path.len() >= addr.sun_path.len() {
        return;
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(path) {
        *dst = src as libc::c_char;
    }
    if path[0] == b'@' {
        addr.sun_path[0] = 0;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.len();
    // SAFETY: a new datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd == -1 {
        return;
    }
    // SAFETY: valid buffer and address of the lengths given.
    unsafe {
        libc::sendto(
            fd,
            message.as_ptr().cast(),
            message.len(),
            libc::MSG_NOSIGNAL,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        );
        libc::close(fd);
    }
}

/// Microseconds on CLOCK_MONOTONIC, as `RELOADING=1` wants in `MONOTONIC_USEC`.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}
