//! `ConnectionCtx`: one connection, from accept to close, as in the C++ original.
//!
//! It owns the socket, the read buffer, the output area and the protocol's
//! per-connection state, hands the input to the [`Protocol`], sends what it
//! answers, and tells the connection engine ([`crate::engine`]) what happens
//! next; the engine carries that out with the loop, the pool and the workers.
//!
//! Public for one reason: the socket is a type parameter ([`Socket`], an
//! [`OwnedFd`] in the server), so that the fuzz target `conn` and the unit tests
//! can drive the state machine with a scripted socket (EAGAIN, EINTR, partial
//! sends, resets at any point) that a real socket cannot produce on demand.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use super::deadline::{Linked, Links};
use super::protocol::{After, Buffer, DropReason, Label, Output, Protocol, Step};
use crate::metrics::{AcceptMetrics, MAX_KINDS};
use crate::net;

/// Where a connection is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum State {
    /// In the pool's free list.
    #[default]
    Free,
    /// Reading a request, or waiting between two (idle).
    Reading,
    /// A worker has its job; watching only for the client leaving early.
    Delegated,
    /// Sending a response.
    Writing,
    /// The client left while its job was out: the socket is closed, the slot
    /// waits for the worker to give the job back.
    Abandoned,
    /// The response went out whole, but bytes the request left unread may
    /// still be in the socket (closing it now would reset the connection and
    /// destroy the response): the write side is shut, and what arrives is read
    /// and thrown away until the client's EOF.
    Lingering,
}

/// What the engine must do next for a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next<R> {
    /// Wait until the socket is readable, a request under way (the read
    /// deadline runs).
    Read,
    /// Wait until the socket is readable, between requests (the idle timeout
    /// runs).
    Idle,
    /// Wait until the socket is writable.
    Write,
    /// Give the job to the workers (and watch for the client leaving).
    Delegate,
    /// The response went out whole: close.
    Finished,
    /// The response went out whole, but unread bytes may remain: linger (see
    /// [`State::Lingering`]) until the client's EOF, or a short bound.
    Linger,
    /// Close without counting anything (a lingering close is over, an idle
    /// client left, or the protocol closed).
    Close,
    /// Bad input, a misbehaving or vanished client, or a socket error: close
    /// without a response.
    Drop(DropReason<R>),
}

/// What becomes of a slot when its connection closes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// Free now.
    Now,
    /// A worker still runs the connection's job: `Abandoned` until it is back.
    AfterTask,
}

/// Reads per readable event while lingering (of up to a buffer each).
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
    /// Sends bytes of a connection that goes on (no `SIGPIPE`), as `send(2)`.
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        self.send_final(buf)
    }
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
    #[inline]
    fn send(&self, buf: &[u8]) -> io::Result<usize> {
        net::send(self.as_fd(), buf)
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

/// Which of the engine's deadline lists the connection waits in (a slot is in
/// one at most: its links are shared).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Waits {
    /// None.
    #[default]
    Nothing,
    /// The read deadline of a request.
    Request,
    /// The idle timeout between requests.
    Idle,
    /// The end of a lingering close.
    Linger,
}

/// What a sent output leaves to do.
enum Sent<R> {
    /// Tell the engine.
    Next(Next<R>),
    /// Hand the protocol the input that is left (pipelined requests).
    Input,
}

/// What one step of the protocol asks of the connection.
enum Then {
    /// Call the protocol again on the rest of the input.
    Continue,
    /// Send the output.
    Send,
    /// Tell the engine.
    Engine,
}

/// One connection (the C++ `ConnectionCtx`), living in a pool slot.
pub struct ConnectionCtx<P: Protocol, S: Socket = OwnedFd> {
    fd: Option<S>,
    gen: u32,
    state: State,
    /// The input read and not yet consumed is `buf[start..filled]`.
    start: usize,
    filled: usize,
    /// The response being sent: `area[..out_len]`, or `fixed` when not empty.
    out_len: usize,
    fixed: &'static [u8],
    /// Bytes of it sent.
    sent: usize,
    /// What follows once it is sent.
    after: After,
    /// Responses in the output, not yet counted, by kind (and which kinds).
    unsent: [u32; MAX_KINDS],
    unsent_kinds: u16,
    /// A request is under way (else the connection is between requests).
    begun: bool,
    /// A response went out and the connection goes on: the request under way
    /// now, if any, is a new one (its read deadline starts afresh).
    answered: bool,
    /// The job the protocol offloaded, until the engine takes it.
    job: Option<P::Job>,
    pub(crate) waits: Waits,
    links: Links,
    /// Loop time at which the job left for a worker (the slow-task
    /// histogram's start); written only then, so accepting never touches it.
    delegated_at: f64,
    proto: P::Conn,
    buf: P::ReadBuffer,
    area: P::WriteBuffer,
}

impl<P: Protocol, S: Socket> fmt::Debug for ConnectionCtx<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionCtx")
            .field("fd", &self.fd())
            .field("gen", &self.gen)
            .field("state", &self.state)
            .field("input", &(self.start..self.filled))
            .field("begun", &self.begun)
            .field("proto", &self.proto)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol, S: Socket> Default for ConnectionCtx<P, S> {
    fn default() -> Self {
        ConnectionCtx {
            fd: None,
            gen: 0,
            state: State::Free,
            start: 0,
            filled: 0,
            out_len: 0,
            fixed: &[],
            sent: 0,
            after: After::Close,
            unsent: [0; MAX_KINDS],
            unsent_kinds: 0,
            begun: false,
            answered: false,
            job: None,
            waits: Waits::Nothing,
            links: Links::default(),
            delegated_at: 0.0,
            proto: P::Conn::default(),
            buf: P::ReadBuffer::zeroed(),
            area: P::WriteBuffer::zeroed(),
        }
    }
}

impl<P: Protocol, S: Socket> Linked for ConnectionCtx<P, S> {
    fn links(&self) -> &Links {
        &self.links
    }
    fn links_mut(&mut self) -> &mut Links {
        &mut self.links
    }
}

impl<P: Protocol, S: Socket> ConnectionCtx<P, S> {
    const GONE: Next<P::Reason> = Next::Drop(DropReason::ClientGone);

    /// Starts a new connection in this slot; a new generation tells it apart
    /// from the slot's earlier connections. A request is under way from the
    /// accept on (its read deadline runs from there).
    pub fn open(&mut self, proto: &P, fd: S) {
        debug_assert!(self.fd.is_none() && self.state == State::Free);
        self.fd = Some(fd);
        self.gen = self.gen.wrapping_add(1);
        self.state = State::Reading;
        self.start = 0;
        self.filled = 0;
        self.out_len = 0;
        self.fixed = &[];
        self.sent = 0;
        self.begun = true;
        self.answered = false;
        proto.open(&mut self.proto);
    }

    /// Starts a connection taken over from another loop with its offloaded
    /// `job` (`--delegate loop`): it waits for the job, as if it had just
    /// offloaded it.
    pub fn adopt(&mut self, proto: &P, fd: S, job: P::Job) {
        self.open(proto, fd);
        self.job = Some(job);
        self.state = State::Delegated;
    }

    /// The socket, or -1 once closed.
    pub fn fd(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, S::raw_fd)
    }

    /// The protocol's state of this connection.
    pub fn protocol(&self) -> &P::Conn {
        &self.proto
    }

    /// Takes the job the protocol offloaded ([`Next::Delegate`]).
    pub fn take_job(&mut self) -> Option<P::Job> {
        self.job.take()
    }

    /// Notes that the job left for a worker at loop time `now`.
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

    /// Whether a response went out since the last call (see `answered`).
    pub(crate) fn take_answered(&mut self) -> bool {
        std::mem::take(&mut self.answered)
    }

    /// Whether it waits between two requests (no request under way).
    pub fn is_idle(&self) -> bool {
        self.state == State::Reading && !self.begun
    }

    /// The socket is readable (or at EOF, or in error).
    ///
    /// Reads once: the listener defers accept until data is there, so a request
    /// usually arrives whole in the first read; otherwise the loop calls again.
    #[inline(always)]
    pub fn on_readable(&mut self, proto: &P, m: &AcceptMetrics) -> Next<P::Reason> {
        match self.state {
            State::Reading => self.read_input(proto, m),
            // Bytes or EOF while a job is out: the client is misbehaving or
            // gone (docs/protocol.md rule 7).
            State::Delegated => Self::GONE,
            State::Writing => Next::Write,
            State::Lingering => self.discard(),
            State::Free | State::Abandoned => Self::GONE,
        }
    }

    /// Reads and throws away what the client sends after the response, until
    /// its EOF (or an error): then the connection can close without a reset.
    #[cold]
    #[inline(never)]
    fn discard(&mut self) -> Next<P::Reason> {
        let Some(fd) = self.fd.as_ref() else {
            return Next::Close;
        };
        // A bound per event, so that a client streaming bytes cannot hold the loop.
        for _ in 0..DISCARD_READS {
            match fd.recv(self.buf.bytes_mut()) {
                Ok(0) => return Next::Close,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if net::is_transient(&e) => return Next::Read,
                Err(_) => return Next::Close,
            }
        }
        Next::Read
    }

    /// The client left: a drop if a request was under way, else a plain close.
    fn gone(&self) -> Next<P::Reason> {
        if self.begun {
            Self::GONE
        } else {
            Next::Close
        }
    }

    #[inline(always)]
    fn read_input(&mut self, proto: &P, m: &AcceptMetrics) -> Next<P::Reason> {
        let Some(fd) = self.fd.as_ref() else {
            return Self::GONE;
        };
        let buf = self.buf.bytes_mut();
        if self.filled == buf.len() {
            if self.start == 0 {
                // The protocol asked for more input with a full buffer: it
                // cannot get any.
                return Self::GONE;
            }
            buf.copy_within(self.start..self.filled, 0);
            self.filled -= self.start;
            self.start = 0;
        }
        match fd.recv(&mut buf[self.filled..]) {
            Ok(0) => self.gone(),
            Ok(n) => {
                self.filled += n;
                self.process(proto, m)
            }
            Err(e) if net::is_transient(&e) => self.wait_input(),
            Err(_) => self.gone(),
        }
    }

    /// What a connection reading waits for.
    #[inline]
    fn wait_input(&self) -> Next<P::Reason> {
        if self.begun {
            Next::Read
        } else {
            Next::Idle
        }
    }

    /// Hands the unconsumed input to the protocol until it asks for more, or
    /// the connection stops reading.
    #[inline(always)]
    fn process(&mut self, proto: &P, m: &AcceptMetrics) -> Next<P::Reason> {
        loop {
            let mut out = Output::new(self.area.bytes_mut(), &mut self.out_len, &mut self.fixed);
            let input = &self.buf.bytes()[self.start..self.filled];
            let step = proto.on_input(&mut self.proto, input, &mut out);
            if let Step::Respond { kind, after, .. } = step {
                if matches!(after, After::Close | After::Linger) && self.unsent_kinds == 0 {
                    return self.send_last(m, kind, after);
                }
            }
            match self.take(step) {
                (Then::Continue, _) => {}
                (Then::Send, _) => match self.send(proto, m) {
                    Sent::Next(next) => return next,
                    Sent::Input => {}
                },
                (Then::Engine, next) => return next,
            }
        }
    }

    /// [`process`](Self::process) out of line, for the paths other than a read.
    #[inline(never)]
    fn process_rest(&mut self, proto: &P, m: &AcceptMetrics) -> Next<P::Reason> {
        self.process(proto, m)
    }

    /// Sends the output; then the input left, if the protocol goes on.
    #[inline(never)]
    fn send_then_process(&mut self, proto: &P, m: &AcceptMetrics) -> Next<P::Reason> {
        match self.send(proto, m) {
            Sent::Next(next) => next,
            Sent::Input => self.process(proto, m),
        }
    }

    /// Records what `step` says; returns what to do with it.
    #[inline(always)]
    fn take(&mut self, step: Step<P>) -> (Then, Next<P::Reason>) {
        let consumed = match &step {
            Step::More { consumed, .. }
            | Step::Respond { consumed, .. }
            | Step::Offload { consumed, .. }
            | Step::Drop { consumed, .. }
            | Step::Close { consumed } => *consumed,
        };
        debug_assert!(
            consumed <= self.filled - self.start,
            "consumed past the input"
        );
        self.start = (self.start + consumed).min(self.filled);
        if self.start == self.filled {
            self.start = 0;
            self.filled = 0;
        }
        let pending = self.out_len > 0 || !self.fixed.is_empty();
        match step {
            Step::More { begun, .. } => {
                self.begun = begun;
                self.state = State::Reading;
                if pending {
                    // Answers to pipelined requests: out they go first.
                    self.after = After::KeepAlive;
                    return (Then::Send, Next::Read);
                }
                (Then::Engine, self.wait_input())
            }
            Step::Respond { kind, after, .. } => {
                if after != After::MoreOutput {
                    let k = kind.index();
                    self.unsent[k] += 1;
                    self.unsent_kinds |= 1 << k;
                }
                self.after = after;
                self.begun = after == After::MoreOutput;
                let batch = after == After::KeepAlive
                    && self.filled > self.start
                    && self.fixed.is_empty()
                    && self.out_len < self.area.bytes().len();
                if batch {
                    (Then::Continue, Next::Read)
                } else {
                    (Then::Send, Next::Read)
                }
            }
            Step::Offload { job, .. } => {
                self.job = Some(job);
                if pending {
                    self.after = After::KeepAlive;
                    return (Then::Send, Next::Read);
                }
                self.state = State::Delegated;
                (Then::Engine, Next::Delegate)
            }
            Step::Drop { reason, .. } => (Then::Engine, Next::Drop(DropReason::Protocol(reason))),
            Step::Close { .. } => {
                if pending {
                    self.after = After::Close;
                    return (Then::Send, Next::Read);
                }
                (Then::Engine, Next::Close)
            }
        }
    }

    /// The socket is writable again: send the rest of the response.
    pub fn on_writable(&mut self, proto: &P, m: &AcceptMetrics) -> Next<P::Reason> {
        match self.state {
            State::Writing => self.send_then_process(proto, m),
            State::Lingering => Next::Close,
            _ => Self::GONE,
        }
    }

    /// The worker finished this connection's job.
    pub fn on_job_done(&mut self, proto: &P, m: &AcceptMetrics, job: P::Job) -> Next<P::Reason> {
        if self.state != State::Delegated {
            return Self::GONE;
        }
        let mut out = Output::new(self.area.bytes_mut(), &mut self.out_len, &mut self.fixed);
        let step = proto.on_job_done(&mut self.proto, job, &mut out);
        self.state = State::Reading;
        match self.take(step) {
            (Then::Continue, _) => self.process_rest(proto, m),
            (Then::Send, _) => self.send_then_process(proto, m),
            (Then::Engine, next) => next,
        }
    }

    /// Sends as much of the response as the socket takes, at once (no wait for a
    /// writable event first: a fresh socket's buffer has room), then carries on
    /// with what follows it.
    #[inline(always)]
    fn send(&mut self, proto: &P, m: &AcceptMetrics) -> Sent<P::Reason> {
        self.state = State::Writing;
        loop {
            let Some(fd) = self.fd.as_ref() else {
                return Sent::Next(Self::GONE);
            };
            let last = matches!(self.after, After::Close | After::Linger) && self.job.is_none();
            let bytes = if self.fixed.is_empty() {
                &self.area.bytes()[..self.out_len]
            } else {
                self.fixed
            };
            while self.sent < bytes.len() {
                let res = if last {
                    fd.send_final(&bytes[self.sent..])
                } else {
                    fd.send(&bytes[self.sent..])
                };
                match res {
                    Ok(n) => self.sent += n,
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(e) if net::is_transient(&e) => return Sent::Next(Next::Write),
                    Err(_) => return Sent::Next(Self::GONE),
                }
            }
            self.sent = 0;
            self.out_len = 0;
            self.fixed = &[];
            self.count_sent(m);
            match self.after {
                After::MoreOutput => {
                    let mut out =
                        Output::new(self.area.bytes_mut(), &mut self.out_len, &mut self.fixed);
                    let step = proto.on_sent(&mut self.proto, &mut out);
                    match self.take(step) {
                        (Then::Send, _) => {}
                        (Then::Continue, _) => return Sent::Input,
                        (Then::Engine, next) => return Sent::Next(next),
                    }
                }
                After::KeepAlive => {
                    if self.job.is_some() {
                        self.state = State::Delegated;
                        return Sent::Next(Next::Delegate);
                    }
                    self.state = State::Reading;
                    if self.filled > self.start {
                        return Sent::Input;
                    }
                    return Sent::Next(self.wait_input());
                }
                After::Linger => return Sent::Next(self.linger()),
                After::Close => return Sent::Next(Next::Finished),
            }
        }
    }

    /// Sends the one response of a connection that ends with it, nothing
    /// batched before it: the common case of a protocol of one request per
    /// connection, without a batch's bookkeeping. A partial send is resumed
    /// by [`send`](Self::send), which counts the response then.
    #[inline(always)]
    fn send_last(&mut self, m: &AcceptMetrics, kind: P::Kind, after: After) -> Next<P::Reason> {
        self.state = State::Writing;
        self.after = after;
        let Some(fd) = self.fd.as_ref() else {
            return Self::GONE;
        };
        let bytes = if self.fixed.is_empty() {
            &self.area.bytes()[..self.out_len]
        } else {
            self.fixed
        };
        while self.sent < bytes.len() {
            match fd.send_final(&bytes[self.sent..]) {
                Ok(n) => self.sent += n,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(e) if net::is_transient(&e) => {
                    let k = kind.index();
                    self.unsent[k] = 1;
                    self.unsent_kinds = 1 << k;
                    return Next::Write;
                }
                Err(_) => return Self::GONE,
            }
        }
        m.responded(kind.index(), 1);
        // The slot's next `open` resets the output.
        if after == After::Linger {
            self.linger()
        } else {
            Next::Finished
        }
    }

    /// Counts the responses just sent.
    #[inline(always)]
    fn count_sent(&mut self, m: &AcceptMetrics) {
        let mut kinds = self.unsent_kinds;
        self.answered |= kinds != 0;
        while kinds != 0 {
            let k = kinds.trailing_zeros() as usize;
            kinds &= kinds - 1;
            m.responded(k, u64::from(self.unsent[k]));
            self.unsent[k] = 0;
        }
        self.unsent_kinds = 0;
    }

    /// Shuts the write side and lingers (see [`State::Lingering`]).
    #[cold]
    #[inline(never)]
    fn linger(&mut self) -> Next<P::Reason> {
        if let Some(fd) = self.fd.as_ref() {
            // If it fails the peer is gone, and lingering ends at its first read.
            let _ = fd.shutdown_write();
        }
        self.state = State::Lingering;
        Next::Linger
    }

    /// Gives up the socket (and the job) of a connection whose job is
    /// offloaded to whoever answers it now (`--delegate socket|loop`); the slot
    /// is free again.
    pub fn hand_over(&mut self, proto: &P) -> Option<(S, P::Job)> {
        self.state = State::Free;
        proto.close(&mut self.proto);
        let fd = self.fd.take()?;
        match self.job.take() {
            Some(job) => Some((fd, job)),
            None => {
                fd.close();
                None
            }
        }
    }

    /// Closes the socket. The slot is free again, or `Abandoned` until its task
    /// comes back (see [`Release`]).
    pub fn close(&mut self, proto: &P, release: Release) {
        if let Some(fd) = self.fd.take() {
            fd.close();
            proto.close(&mut self.proto);
        }
        self.job = None;
        if self.unsent_kinds != 0 {
            // Never sent: not counted.
            self.unsent_kinds = 0;
            self.unsent = [0; MAX_KINDS];
        }
        self.state = match release {
            Release::Now => State::Free,
            Release::AfterTask => State::Abandoned,
        };
    }
}
