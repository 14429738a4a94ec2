//! `poll(2)`: the signal thread's two-fd wait, and the metrics thread's.

use std::io;
use std::os::fd::RawFd;
use std::time::Duration;

/// Waits until `a` or `b` is readable (or hung up), at most `timeout`; returns
/// which were.
pub fn poll2(a: RawFd, b: Option<RawFd>, timeout: Option<Duration>) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: two valid pollfds; a negative fd is ignored by poll.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if rc == -1 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok((false, false))
        } else {
            Err(err)
        };
    }
    Ok((fds[0].revents != 0, fds[1].revents != 0))
}

/// `poll(2)` over `fds` for at most `timeout` (`None`: no bound); the number of
/// fds with events, 0 on timeout or when a signal interrupted the wait.
pub fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) -> io::Result<usize> {
    let ms = timeout.map_or(-1, |t| {
        // Rounded up, so that a deadline 0.4 ms away is not a busy loop.
        let ms = t.as_micros().div_ceil(1000);
        ms.min(i32::MAX as u128) as libc::c_int
    });
    // SAFETY: a valid slice of pollfds and its true length.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
    if rc == -1 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok(0)
        } else {
            Err(err)
        };
    }
    Ok(rc as usize)
}
