//! `ConnectionCtx`: one connection of an accept thread, from accept to close, as in
//! the C++ original (the context is also the request: one request per connection).
//!
//! It owns the socket, the 4096-byte request buffer and the parser, and decides
//! what happens next; the connection engine ([`crate::engine`]) carries that out
//! with the loop, the pool and the workers.
//!
//! Public for one reason: the socket is a type parameter ([`Socket`], an
//! [`OwnedFd`] in the server), so that the fuzz target `conn` and the unit tests
//! can drive the state machine with a scripted socket (EAGAIN, EINTR, partial
//! sends, resets at any point) that a real socket cannot produce on demand.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use crate::engine::deadline::{Linked, Links};
use crate::net;

pub use crate::metrics::DropReason;
use crate::proto::parser::{ReqParser, Verdict, REQUEST_MAX};

/// The only response: 57 bytes, then the server closes.
pub const RESPONSE: &[u8; 57] =
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum State {
    /// In the pool's free list.
    #[default]
    Free,
    /// Reading the request.
    Reading,
    /// A worker has its slow task; watching only for the client leaving early.
    Delegated,
    /// Sending the response.
    Writing,
    /// The client left while its task was out: the socket is closed, the slot
    /// waits for the worker to give the task back.
    Abandoned,
    /// The response went out whole, but bytes the request left unread may
    /// still be in the socket (closing it now would reset the connection and
    /// destroy the response): the write side is shut, and what arrives is read
    /// and thrown away until the client's EOF.
    Lingering,
}

/// What the engine must do next for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Wait until the socket is readable.
    Read,
    /// Wait until the socket is writable.
    Write,
    /// Give the slow task to a worker (and watch for the client leaving).
    Delegate,
    /// The response went out whole: close.
    Finished,
    /// The response went out whole, but unread bytes may remain: linger (see
    /// [`State::Lingering`]) until the client's EOF, or a short bound.
    Linger,
    /// The lingering is over: close (the response was counted already).
    Close,
    /// Bad input, a misbehaving or vanished client, or a socket error: close
    /// without a response.
    Drop(DropReason),
}

/// What a complete `/test/slow` gets: chosen once per server (`-w`), kept by
/// each connection from its `open`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SlowRequests {
    /// Its task goes to a worker ([`Next::Delegate`]).
    #[default]
    Delegate,
    /// There are no workers (`-w 0`): answered at once, like a fast one.
    Inline,
}

/// What becomes of a slot when its connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Free now.
    Now,
    /// A worker still runs the connection's task: `Abandoned` until it is back.
    AfterTask,
}

const GONE: Next = Next::Drop(DropReason::ClientGone);

/// Reads per readable event while lingering (of up to `REQUEST_MAX` bytes each).
const DISCARD_READS: usize = 16;

/// The socket calls a connection makes, one per method.
///
/// The server's socket is an [`OwnedFd`]; `ConnectionCtx` is generic over this
/// trait, so the server's code is monomorphised for it and costs what direct calls
/// cost. Errors follow the system calls': `EAGAIN` and `EINTR` say "not now".
pub trait Socket {
    /// Reads into `buf`, as `recv(2)`: `Ok(0)` is end of stream.
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize>;
    /// Queues the last bytes the connection will ever send (no `SIGPIPE`), as
    /// `send(2)`; returns how many were taken.
    fn send_final(&self, buf: &[u8]) -> io::Result<usize>;
    /// Shuts the sending side down (`shutdown(SHUT_WR)`): the peer reads EOF
    /// after the response.
    fn shutdown_write(&self) -> io::Result<()>;
    /// The descriptor the event loop watches.
    fn raw_fd(&self) -> RawFd;
    /// Closes the socket.
    fn close(self);
}

impl Socket for OwnedFd {
    #[inline]
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        net::recv(self.as_fd(), buf)
    }
    #[inline]
    fn send_final(&self, buf: &[u8]) -> io::Result<usize> {
        net::send_final(self.as_fd(), buf)
    }
    fn shutdown_write(&self) -> io::Result<()> {
        socket2::SockRef::from(self).shutdown(std::net::Shutdown::Write)
    }
    #[inline]
    fn raw_fd(&self) -> RawFd {
        self.as_raw_fd()
    }
    #[inline]
    fn close(self) {
        net::close(self)
    }
}

/// One connection (the C++ `ConnectionCtx`), living in a pool slot.
#[derive(Debug)]
pub struct ConnectionCtx<S: Socket = OwnedFd> {
    fd: Option<S>,
    gen: u32,
    state: State,
    slow: SlowRequests,
    parser: ReqParser,
    filled: usize,
    sent: usize,
    links: Links,
    /// Loop time at which the slow task left for a worker (the slow-task
    /// histogram's start); written only then, so accepting never touches it.
    delegated_at: f64,
    buf: [u8; REQUEST_MAX],
}

impl<S: Socket> Default for ConnectionCtx<S> {
    fn default() -> Self {
        ConnectionCtx {
            fd: None,
            gen: 0,
            state: State::Free,
            slow: SlowRequests::Delegate,
            parser: ReqParser::new(),
            filled: 0,
            sent: 0,
            links: Links::default(),
            delegated_at: 0.0,
            buf: [0; REQUEST_MAX],
        }
    }
}

impl<S: Socket> Linked for ConnectionCtx<S> {
    fn links(&self) -> &Links {
        &self.links
    }
    fn links_mut(&mut self) -> &mut Links {
        &mut self.links
    }
}

impl<S: Socket> ConnectionCtx<S> {
    /// Starts a new connection in this slot, answering a slow request as
    /// `slow` says; a new generation tells it apart from the slot's earlier
    /// connections.
    pub fn open(&mut self, fd: S, slow: SlowRequests) {
        debug_assert!(self.fd.is_none() && self.state == State::Free);
        self.fd = Some(fd);
        self.slow = slow;
        self.gen = self.gen.wrapping_add(1);
        self.state = State::Reading;
        self.parser = ReqParser::new();
        self.filled = 0;
        self.sent = 0;
    }

    /// The socket, or -1 once closed.
    pub fn fd(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, S::raw_fd)
    }

    /// Whether the request is a complete `/test/slow` (the metrics' `kind`).
    pub fn is_slow(&self) -> bool {
        self.parser.verdict() == Verdict::Slow
    }

    /// Notes that the slow task left for a worker at loop time `now`.
    pub fn note_delegated(&mut self, now: f64) {
        self.delegated_at = now;
    }

    /// Seconds from [`note_delegated`](Self::note_delegated) to loop time `now`.
    pub fn task_seconds(&self, now: f64) -> f64 {
        now - self.delegated_at
    }

    /// Which connection of this slot this is.
    pub fn gen(&self) -> u32 {
        self.gen
    }

    /// Where the connection is in its life.
    pub fn state(&self) -> State {
        self.state
    }

    /// The socket is readable (or at EOF, or in error).
    ///
    /// Reads once: the listener defers accept until data is there, so a request
    /// usually arrives whole in the first read; otherwise the loop calls again.
    #[inline(always)]
    pub fn on_readable(&mut self) -> Next {
        match self.state {
            State::Reading => self.read_request(),
            // Bytes or EOF after a complete request, before the response: the
            // client is misbehaving or gone (docs/protocol.md rule 7).
            State::Delegated => GONE,
            State::Writing => Next::Write,
            State::Lingering => self.discard(),
            State::Free | State::Abandoned => GONE,
        }
    }

    /// Reads and throws away what the client sends after the response, until
    /// its EOF (or an error): then the connection can close without a reset.
    #[cold]
    #[inline(never)]
    fn discard(&mut self) -> Next {
        let Some(fd) = self.fd.as_ref() else {
            return Next::Close;
        };
        // A bound per event, so that a client streaming bytes cannot hold the loop.
        for _ in 0..DISCARD_READS {
            match fd.recv(&mut self.buf) {
                Ok(0) => return Next::Close,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if net::is_transient(&e) => return Next::Read,
                Err(_) => return Next::Close,
            }
        }
        Next::Read
    }

    fn read_request(&mut self) -> Next {
        let Some(fd) = self.fd.as_ref() else {
            return GONE;
        };
        match fd.recv(&mut self.buf[self.filled..]) {
            Ok(0) => GONE,
            Ok(n) => {
                self.filled += n;
                match self.parser.parse(&self.buf[..self.filled]) {
                    Verdict::Incomplete => Next::Read,
                    Verdict::Invalid => Next::Drop(DropReason::Invalid),
                    Verdict::TooLarge => Next::Drop(DropReason::TooLarge),
                    Verdict::Fast => self.respond(),
                    Verdict::Slow if self.slow == SlowRequests::Inline => self.respond(),
                    Verdict::Slow => {
                        self.state = State::Delegated;
                        Next::Delegate
                    }
                }
            }
            Err(e) if net::is_transient(&e) => Next::Read,
            Err(_) => GONE,
        }
    }

    /// The socket is writable again: send the rest of the response.
    pub fn on_writable(&mut self) -> Next {
        match self.state {
            State::Writing => self.respond(),
            State::Lingering => Next::Close,
            _ => GONE,
        }
    }

    /// The worker finished this connection's slow task.
    pub fn on_task_done(&mut self) -> Next {
        match self.state {
            State::Delegated => self.respond(),
            _ => GONE,
        }
    }

    /// Sends as much of the response as the socket takes, at once (no wait for a
    /// writable event first: a fresh socket's buffer has room).
    fn respond(&mut self) -> Next {
        self.state = State::Writing;
        let Some(fd) = self.fd.as_ref() else {
            return GONE;
        };
        while self.sent < RESPONSE.len() {
            match fd.send_final(&RESPONSE[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if net::is_transient(&e) => return Next::Write,
                Err(_) => return GONE,
            }
        }
        // A full buffer: the read that filled it may have left bytes behind.
        if self.filled == REQUEST_MAX {
            return self.linger();
        }
        Next::Finished
    }

    /// Shuts the write side and lingers (see [`State::Lingering`]).
    #[cold]
    #[inline(never)]
    fn linger(&mut self) -> Next {
        if let Some(fd) = self.fd.as_ref() {
            // If it fails the peer is gone, and lingering ends at its first read.
            let _ = fd.shutdown_write();
        }
        self.state = State::Lingering;
        Next::Linger
    }

    /// Gives up the socket of a complete request to whoever answers it now
    /// (`--delegate socket|loop`); the slot is free again.
    pub fn hand_over(&mut self) -> Option<S> {
        self.state = State::Free;
        self.fd.take()
    }

    /// Closes the socket. The slot is free again, or `Abandoned` until its task
    /// comes back (see [`Release`]).
    pub fn close(&mut self, release: Release) {
        if let Some(fd) = self.fd.take() {
            fd.close();
        }
        self.state = match release {
            Release::Now => State::Free,
            Release::AfterTask => State::Abandoned,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// A connection on one end of a socket pair; the test plays the client.
    fn open() -> (ConnectionCtx, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        let mut ctx = ConnectionCtx::<OwnedFd>::default();
        ctx.open(server.into(), SlowRequests::Delegate);
        (ctx, client)
    }

    fn received(client: &mut UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn whole_fast_request_is_answered_at_once() {
        let (mut ctx, mut client) = open();
        client
            .write_all(b"GET /test/fast HTTP/1.0\r\n\r\n")
            .unwrap();
        assert_eq!(ctx.on_readable(), Next::Finished);
        ctx.close(Release::Now);
        assert_eq!(received(&mut client), RESPONSE);
        assert_eq!(ctx.state(), State::Free);
    }

    #[test]
    fn incomplete_request_waits_then_completes() {
        let (mut ctx, mut client) = open();
        assert_eq!(ctx.on_readable(), Next::Read, "nothing there yet");
        client.write_all(b"GET /test/fast\r\n").unwrap();
        assert_eq!(ctx.on_readable(), Next::Read);
        client.write_all(b"\r\n").unwrap();
        assert_eq!(ctx.on_readable(), Next::Finished);
        assert_eq!(received(&mut client), RESPONSE);
    }

    #[test]
    fn invalid_request_and_eof_drop_without_a_byte() {
        let (mut ctx, mut client) = open();
        client.write_all(b"PUT /test/fast\r\n\r\n").unwrap();
        assert_eq!(ctx.on_readable(), Next::Drop(DropReason::Invalid));
        ctx.close(Release::Now);
        assert_eq!(received(&mut client), b"");

        let (mut ctx, client) = open();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(ctx.on_readable(), GONE);
    }

    #[test]
    fn slow_request_is_delegated_and_answered_when_done() {
        let (mut ctx, mut client) = open();
        client.write_all(b"GET /test/slow\r\n\r\n").unwrap();
        assert_eq!(ctx.on_readable(), Next::Delegate);
        assert_eq!(ctx.state(), State::Delegated);
        assert_eq!(ctx.on_task_done(), Next::Finished);
        assert_eq!(received(&mut client), RESPONSE);
        // Without workers a slow request is answered like a fast one.
        let (server, mut client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        let mut ctx = ConnectionCtx::<OwnedFd>::default();
        ctx.open(server.into(), SlowRequests::Inline);
        client.write_all(b"GET /test/slow\r\n\r\n").unwrap();
        assert_eq!(ctx.on_readable(), Next::Finished);
        assert_eq!(received(&mut client), RESPONSE);
    }

    #[test]
    fn bytes_during_a_slow_task_drop_the_connection_and_abandon_the_slot() {
        let (mut ctx, mut client) = open();
        client.write_all(b"GET /test/slow\r\n\r\n").unwrap();
        assert_eq!(ctx.on_readable(), Next::Delegate);
        client.write_all(b"more").unwrap();
        assert_eq!(ctx.on_readable(), GONE);
        ctx.close(Release::AfterTask);
        assert_eq!(ctx.state(), State::Abandoned);
        assert_eq!(ctx.fd(), -1);
        // The task coming back later finds nothing to answer.
        assert_eq!(ctx.on_task_done(), GONE);
        assert_eq!(received(&mut client), b"");
    }

    /// A socket whose every call's result the test scripts: errors a real socket
    /// cannot be made to return on demand (EINTR, a short send).
    #[derive(Default)]
    struct Scripted {
        recvs: std::cell::RefCell<std::collections::VecDeque<io::Result<&'static [u8]>>>,
        sends: std::cell::RefCell<std::collections::VecDeque<io::Result<usize>>>,
        out: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
    }

    impl Socket for Scripted {
        fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            let bytes = self
                .recvs
                .borrow_mut()
                .pop_front()
                .expect("recv scripted")?;
            buf[..bytes.len()].copy_from_slice(bytes);
            Ok(bytes.len())
        }
        fn send_final(&self, buf: &[u8]) -> io::Result<usize> {
            let n = match self.sends.borrow_mut().pop_front() {
                Some(res) => res?.min(buf.len()),
                None => buf.len(),
            };
            self.out.borrow_mut().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn shutdown_write(&self) -> io::Result<()> {
            self.out.borrow_mut().extend_from_slice(b"<FIN>");
            Ok(())
        }
        fn raw_fd(&self) -> RawFd {
            0
        }
        fn close(self) {}
    }

    fn errno(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn interrupted_and_short_calls_resume_where_they_left_off() {
        let sock = Scripted::default();
        sock.recvs.borrow_mut().extend([
            Err(errno(libc::EINTR)),
            Ok(&b"GET /test/fast\r\n"[..]),
            Err(errno(libc::EAGAIN)),
            Ok(&b"\r\n"[..]),
        ]);
        sock.sends.borrow_mut().extend([
            Ok(10),
            Err(errno(libc::EINTR)),
            Ok(1),
            Err(errno(libc::EAGAIN)),
        ]);
        let out = std::rc::Rc::clone(&sock.out);
        let mut ctx = ConnectionCtx::<Scripted>::default();
        ctx.open(sock, SlowRequests::Delegate);
        for _ in 0..3 {
            assert_eq!(ctx.on_readable(), Next::Read);
        }
        // EINTR on send is retried at once; EAGAIN waits for writability.
        assert_eq!(ctx.on_readable(), Next::Write);
        assert_eq!(out.borrow().len(), 11);
        assert_eq!(ctx.on_writable(), Next::Finished);
        assert_eq!(&out.borrow()[..], RESPONSE);
    }

    #[test]
    fn a_reset_or_a_failed_send_drops_the_connection() {
        let sock = Scripted::default();
        sock.recvs
            .borrow_mut()
            .push_back(Err(errno(libc::ECONNRESET)));
        let mut ctx = ConnectionCtx::<Scripted>::default();
        ctx.open(sock, SlowRequests::Delegate);
        assert_eq!(ctx.on_readable(), GONE);

        let sock = Scripted::default();
        sock.recvs
            .borrow_mut()
            .push_back(Ok(&b"GET /test/fast\r\n\r\n"[..]));
        sock.sends.borrow_mut().push_back(Err(errno(libc::EPIPE)));
        ctx.close(Release::Now);
        ctx.open(sock, SlowRequests::Delegate);
        assert_eq!(ctx.on_readable(), GONE);
    }

    #[test]
    fn a_request_that_filled_the_buffer_lingers_after_its_response() {
        let (mut ctx, mut client) = open();
        let mut bytes = b"GET /test/fast HTTP/1.1\r\nContent-Length: 5120\r\n\r\n".to_vec();
        bytes.resize(bytes.len() + 5120, b'b');
        client.write_all(&bytes).unwrap();
        assert_eq!(
            ctx.on_readable(),
            Next::Linger,
            "4096 bytes read: more may wait"
        );
        assert_eq!(ctx.state(), State::Lingering);
        // The response, then EOF: the write side is shut.
        assert_eq!(received(&mut client), RESPONSE);
        // The rest of the body is thrown away; the client's EOF ends it.
        assert_eq!(ctx.on_readable(), Next::Read);
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(ctx.on_readable(), Next::Close);
    }

    #[test]
    fn a_request_that_did_not_fill_the_buffer_does_not_linger() {
        let (mut ctx, mut client) = open();
        let mut bytes = b"GET /test/fast\r\n\r\n".to_vec();
        bytes.resize(REQUEST_MAX - 1, b'b');
        client.write_all(&bytes).unwrap();
        assert_eq!(ctx.on_readable(), Next::Finished);
    }

    #[test]
    fn a_full_send_buffer_waits_for_writability_and_resumes() {
        let (mut ctx, mut client) = open();
        // Fill the server side's send buffer so the response cannot go out.
        let fd = ctx.fd.as_ref().unwrap().as_fd();
        let junk = [b'j'; 4096];
        while net::send_final(fd, &junk).is_ok() {}
        client.write_all(b"GET /test/fast\r\n\r\n").unwrap();
        assert_eq!(ctx.on_readable(), Next::Write);
        assert_eq!(ctx.state(), State::Writing);
        // The client reads; the rest of the response then goes out whole.
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match client.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => match ctx.on_writable() {
                    Next::Finished => break,
                    Next::Write => continue,
                    other => panic!("{other:?}"),
                },
            }
        }
        ctx.close(Release::Now);
        got.extend(received(&mut client));
        assert!(
            got.ends_with(RESPONSE),
            "response intact after a partial send"
        );
    }
}
