//! The socket calls of the connection path, each a thin `io::Result` wrapper over
//! one system call (mio's `syscall!` style), and the listener set-up.
#![allow(unsafe_code)]

use std::io;
use std::mem::size_of;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use socket2::{Domain, Protocol, Socket, Type};

/// Calls a libc function and turns its `-1` into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: each use passes valid fds and buffers with their true lengths.
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// A raw system call by number, for the four calls of the connection path.
///
/// glibc's wrappers of accept4/recv/send/close are thread-cancellation points:
/// in a multi-threaded process each call also runs
/// `__pthread_{enable,disable}_asynccancel`, about 130 instructions per request
/// in all (callgrind). We never cancel threads, so we skip them.
macro_rules! raw_syscall {
    ($nr:ident $(, $arg:expr)* $(,)?) => {{
        // SAFETY: each use passes valid fds and buffers with their true lengths, with the argument types the kernel expects for that call.
        let res = unsafe { libc::syscall(libc::$nr $(, $arg)*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// Accepts one connection, already non-blocking and close-on-exec (`accept4`:
/// one syscall, no `fcntl`s).
pub fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let fd = raw_syscall!(
        SYS_accept4,
        listener.as_raw_fd(),
        std::ptr::null_mut::<libc::sockaddr>(),
        std::ptr::null_mut::<libc::socklen_t>(),
        libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
    )?;
    // SAFETY: accept4 returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Reads into `buf`; `Ok(0)` is end of stream.
pub fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    raw_syscall!(
        SYS_recvfrom,
        fd.as_raw_fd(),
        buf.as_mut_ptr(),
        buf.len(),
        0,
        std::ptr::null_mut::<libc::sockaddr>(),
        std::ptr::null_mut::<libc::socklen_t>(),
    )
    .map(|n| n as usize)
}

/// Writes the last bytes a connection will ever send, without raising SIGPIPE.
///
/// `MSG_MORE` holds them back until [`close`] follows: the kernel then puts the
/// FIN in the same segment as the response, one packet instead of two through
/// the loopback (less kernel time on both ends). Use it only when the socket is
/// closed right after the last byte is queued.
#[inline]
pub fn send_final(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    raw_syscall!(
        SYS_sendto,
        fd.as_raw_fd(),
        buf.as_ptr(),
        buf.len(),
        libc::MSG_NOSIGNAL | libc::MSG_MORE,
        std::ptr::null::<libc::sockaddr>(),
        0 as libc::socklen_t,
    )
    .map(|n| n as usize)
}

/// Sends bytes of a connection that goes on, as `send(2)` (no `SIGPIPE`).
pub fn send(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    raw_syscall!(
        SYS_sendto,
        fd.as_raw_fd(),
        buf.as_ptr(),
        buf.len(),
        libc::MSG_NOSIGNAL,
        std::ptr::null::<libc::sockaddr>(),
        0 as libc::socklen_t,
    )
    .map(|n| n as usize)
}

/// Closes a connection's socket (errors are of no use after a close).
pub fn close(fd: OwnedFd) {
    let _ = raw_syscall!(SYS_close, fd.into_raw_fd());
}

/// Waits up to `timeout_ms` milliseconds (0: not at all) for `events` (`POLLIN`,
/// `POLLOUT`, ...) on `fd`, as `poll(2)`; returns the events that occurred, 0 on
/// timeout. The blocking workers of `--delegate socket` use it to bound a wait.
pub fn poll_one(fd: BorrowedFd<'_>, events: i16, timeout_ms: i32) -> io::Result<i16> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    syscall!(poll(&mut pfd, 1, timeout_ms))?;
    Ok(pfd.revents)
}

/// Errors that say "not now", not "this connection is broken".
pub fn is_transient(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR))
}

/// `accept` errors that mean the process or system is out of a resource: pause the
/// listener and retry later instead of spinning on a listener that stays readable.
pub fn is_resource_exhaustion(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

/// The first listener on `addr`, claimed in one step: `EADDRINUSE` if anything
/// already listens on (or holds) it, else a listening socket that later
/// [`listener`]s of ours can join.
///
/// `SO_REUSEPORT` on the first socket would let us silently join another
/// server's group and steal half its connections, as the reference does; and a
/// free-port probe followed by the `SO_REUSEPORT` bind is two steps that two
/// instances started at once can both pass. So the socket binds and listens
/// without `SO_REUSEPORT` (the kernel lets only one socket reach `listen` on an
/// address then: of two that bound it meanwhile, thanks to `SO_REUSEADDR`, the
/// second's `listen` fails), and sets `SO_REUSEPORT` only once it listens, for
/// our other threads' sockets to join it. `SO_REUSEADDR` keeps our own
/// TIME_WAIT connections from a previous run from counting.
pub fn exclusive_listener(
    addr: SocketAddr,
    ty: Type,
    backlog: i32,
    defer_secs: u32,
) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.bind(&addr.into())?;
    defer_accept(&sock, defer_secs)?;
    sock.listen(backlog)?;
    sock.set_reuse_port(true)?;
    Ok(sock)
}

/// One accept thread's listener on `addr`: `SO_REUSEPORT` (the kernel spreads
/// connections across the threads' listeners), non-blocking, backlog
/// `SOMAXCONN`, and `IPV6_V6ONLY` for IPv6, so that `[::]` and `0.0.0.0` can
/// both be given. It joins the group an [`exclusive_listener`] opened (or an
/// inherited socket's).
pub fn listener(addr: SocketAddr, defer_secs: u32) -> io::Result<Socket> {
    let sock = bound_reuseport(addr, Type::STREAM.nonblocking().cloexec())?;
    defer_accept(&sock, defer_secs)?;
    sock.listen(libc::SOMAXCONN)?;
    Ok(sock)
}

/// A TCP socket of type `ty` bound to `addr`, not yet listening: `SO_REUSEADDR`,
/// `SO_REUSEPORT`, and `IPV6_V6ONLY` for IPv6.
pub fn bound_reuseport(addr: SocketAddr, ty: Type) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(addr), ty, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_reuse_address(true)?;
    sock.set_reuse_port(true)?;
    sock.bind(&addr.into())?;
    Ok(sock)
}

/// `TCP_DEFER_ACCEPT`: a connection is accepted once its first bytes are there,
/// so the request can usually be read right after `accept4`.
fn defer_accept(sock: &Socket, defer_secs: u32) -> io::Result<()> {
    if defer_secs == 0 {
        return Ok(());
    }
    set_int_opt(
        sock.as_raw_fd(),
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        defer_secs as i32,
    )
}

/// Why an inherited socket cannot be served.
#[derive(Debug)]
pub enum AdoptError {
    /// It is not a listening TCP socket (a file, a UDP socket, one not
    /// listening, ...).
    NotAListener {
        /// The fd.
        fd: RawFd,
    },
    /// Setting it up for serving failed.
    Setup {
        /// The fd.
        fd: RawFd,
        /// Its address.
        addr: SocketAddr,
        /// What failed.
        cause: io::Error,
    },
}

impl std::fmt::Display for AdoptError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AdoptError::NotAListener { fd } => {
                write!(f, "inherited fd {fd} is not a listening TCP socket")
            }
            AdoptError::Setup { fd, addr, cause } => {
                write!(f, "inherited fd {fd} ({addr}): {cause}")
            }
        }
    }
}

impl std::error::Error for AdoptError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            AdoptError::NotAListener { .. } => None,
            AdoptError::Setup { cause, .. } => Some(cause),
        }
    }
}

/// Takes over an inherited listening socket (socket activation or an upgrade):
/// checks that it is a listening TCP socket, makes it non-blocking and
/// close-on-exec, sets `TCP_DEFER_ACCEPT`, and returns it with its address.
pub fn adopt_listener(fd: OwnedFd, defer_secs: u32) -> Result<(Socket, SocketAddr), AdoptError> {
    let fd_num = fd.as_raw_fd();
    let sock = Socket::from(fd);
    let tcp = sock.r#type().is_ok_and(|t| t == Type::STREAM)
        && sock.protocol().is_ok_and(|p| p == Some(Protocol::TCP));
    let addr = sock.local_addr().ok().and_then(|a| a.as_socket());
    let (true, Some(addr), Ok(true)) = (tcp, addr, sock.is_listener()) else {
        return Err(AdoptError::NotAListener { fd: fd_num });
    };
    sock.set_nonblocking(true)
        .and_then(|()| sock.set_cloexec(true))
        .and_then(|()| defer_accept(&sock, defer_secs))
        .map_err(|cause| AdoptError::Setup {
            fd: fd_num,
            addr,
            cause,
        })?;
    Ok((sock, addr))
}

fn set_int_opt(fd: RawFd, level: i32, name: i32, value: i32) -> io::Result<()> {
    syscall!(setsockopt(
        fd,
        level,
        name,
        (&value as *const i32).cast(),
        size_of::<i32>() as libc::socklen_t,
    ))
    .map(drop)
}

/// Raises the soft open-files limit to the hard one; returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    syscall!(getrlimit(libc::RLIMIT_NOFILE, &mut lim))?;
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        syscall!(setrlimit(libc::RLIMIT_NOFILE, &lim))?;
    }
    Ok(lim.rlim_cur)
}
