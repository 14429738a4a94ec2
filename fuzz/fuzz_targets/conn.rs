//! Fuzzes `ConnectionCtx`'s state machine over a scripted socket: the input is a
//! script of what the client and the kernel do (bytes arriving in any chunks, EOF,
//! reset, EAGAIN and EINTR on recv, partial, refused and failed sends) and of what
//! the event loop delivers (readable, writable, the slow task's completion, the
//! read deadline, a shutdown), in any order.
//!
//! `Driver` carries out each `Next` the way `src/accept.rs` does (watchers,
//! deadline, delegation, close and slot release): it mirrors `AcceptTask::apply`,
//! `close`, `take_completions`, `expire_deadlines`, `begin_drain` and `end_drain`,
//! and must follow them when they change.
//!
//! Invariants, per connection: at most one response, only ever a prefix of the 57
//! bytes, all 57 exactly when the connection finishes, and only for a complete
//! valid request (the docs/protocol.md model's verdict on the bytes read) whose slow task, if
//! delegated, is done; no byte once the server could have seen EOF, a reset or
//! bytes after the request (docs/protocol.md rule 7); every drop has a cause the script gave;
//! and every path ends in one close of the socket and the slot released.
#![no_main]

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;

use conn_daemon::conn::{ConnectionCtx, DropReason, Next, Socket, State, RESPONSE};
use conn_daemon::parser::Verdict;
use conn_daemon_fuzz::model;
use libfuzzer_sys::fuzz_target;

/// Canned pieces, so that the fuzzer reaches complete requests quickly.
const SNIPPETS: [&[u8]; 6] = [
    b"GET /test/fast HTTP/1.1\r\n",
    b"GET /test/slow HTTP/1.1\r\n",
    b"\r\n",
    b"Host: a\r\n",
    b"GET /test/fast\r\n\r\n",
    b"GET /test/slow\r\n\r\n",
];

/// What the next `send` does (once the script runs out, sends take everything).
#[derive(Clone, Copy, Debug)]
enum SendOp {
    Partial(usize),
    Errno(i32),
}

/// The client's end and the kernel in between, for the current connection.
struct Peer {
    /// Arrived, not yet read.
    inbox: VecDeque<u8>,
    /// The client shut down its side (after the inbox).
    eof: bool,
    /// The client reset the connection.
    reset: bool,
    /// Errors for the next `recv` calls, before anything else.
    recv_faults: VecDeque<i32>,
    sends: VecDeque<SendOp>,
    /// Everything the server read.
    read: Vec<u8>,
    /// The model's verdict on `read`.
    verdict: Verdict,
    /// The server read EOF or got the reset.
    read_end: bool,
    /// The request was complete (model) before the server's latest read.
    read_after_complete: bool,
    /// The server was told the socket was readable after the request was complete
    /// and before a response byte went out: it had the chance to see rule 7.
    extra_seen: bool,
    /// A send failed with a hard error.
    send_failed: bool,
    task_done: bool,
    sent: Vec<u8>,
    closes: u32,
}

impl Default for Peer {
    fn default() -> Self {
        Peer {
            inbox: VecDeque::new(),
            eof: false,
            reset: false,
            recv_faults: VecDeque::new(),
            sends: VecDeque::new(),
            read: Vec::new(),
            verdict: Verdict::Incomplete,
            read_end: false,
            read_after_complete: false,
            extra_seen: false,
            send_failed: false,
            task_done: false,
            sent: Vec::new(),
            closes: 0,
        }
    }
}

impl Peer {
    fn readable(&self) -> bool {
        !self.inbox.is_empty() || self.eof || self.reset
    }
    fn complete(&self) -> bool {
        matches!(self.verdict, Verdict::Fast | Verdict::Slow)
    }
}

/// The scripted socket: a view of the shared `Peer`.
struct Fake<'a>(&'a RefCell<Peer>);

impl Socket for Fake<'_> {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut p = self.0.borrow_mut();
        assert_eq!(p.closes, 0, "recv after close");
        if let Some(errno) = p.recv_faults.pop_front() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if p.reset {
            p.read_end = true;
            return Err(io::Error::from_raw_os_error(libc::ECONNRESET));
        }
        if !p.inbox.is_empty() {
            let n = buf.len().min(p.inbox.len());
            let complete_before = p.complete();
            for (i, b) in p.inbox.drain(..n).enumerate() {
                buf[i] = b;
            }
            p.read.extend_from_slice(&buf[..n]);
            p.verdict = model::verdict(&p.read);
            p.read_after_complete |= complete_before && n > 0;
            return Ok(n);
        }
        if p.eof {
            p.read_end = true;
            return Ok(0);
        }
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    }

    fn send_final(&self, buf: &[u8]) -> io::Result<usize> {
        let mut p = self.0.borrow_mut();
        assert_eq!(p.closes, 0, "send after close");
        assert!(!buf.is_empty(), "empty send");
        if p.sent.is_empty() {
            // The first byte of the response is about to go out: was it earned?
            let v = p.verdict;
            assert!(
                matches!(v, Verdict::Fast | Verdict::Slow),
                "response to a request the model calls {v:?}"
            );
            assert!(!p.read_end, "response after the server read EOF or a reset");
            assert!(!p.extra_seen, "response after the client sent more or left");
            assert!(
                !p.read_after_complete,
                "server read past a complete request"
            );
        }
        let n = match p.sends.pop_front() {
            None => buf.len(),
            Some(SendOp::Partial(k)) => k.min(buf.len()),
            Some(SendOp::Errno(errno)) => {
                if errno != libc::EAGAIN && errno != libc::EINTR {
                    p.send_failed = true;
                }
                return Err(io::Error::from_raw_os_error(errno));
            }
        };
        p.sent.extend_from_slice(&buf[..n]);
        assert!(
            RESPONSE.starts_with(&p.sent),
            "bytes other than the response"
        );
        Ok(n)
    }

    fn raw_fd(&self) -> RawFd {
        7
    }

    fn close(self) {
        self.0.borrow_mut().closes += 1;
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Watch {
    None,
    Read,
    Write,
}

/// One pool slot and the accept task's view of it (mirrors `src/accept.rs`).
struct Driver<'a> {
    peer: &'a RefCell<Peer>,
    ctx: ConnectionCtx<Fake<'a>>,
    /// No workers: slow requests are answered inline.
    slow_inline: bool,
    /// The slot is taken (from accept until released).
    held: bool,
    watch: Watch,
    deadline: bool,
    task_out: bool,
    /// How the current connection ended.
    outcome: Option<Next>,
    gen: u32,
}

impl<'a> Driver<'a> {
    fn open(&self) -> bool {
        self.held && self.ctx.state() != State::Abandoned
    }

    /// `accept_one`: a new connection in the free slot, read at once.
    fn accept(&mut self) {
        assert!(!self.held);
        self.held = true;
        self.outcome = None;
        self.ctx.open(Fake(self.peer));
        self.gen = self.gen.wrapping_add(1);
        assert_eq!(self.ctx.gen(), self.gen, "a new generation per connection");
        assert_eq!(self.ctx.state(), State::Reading);
        let next = self.ctx.on_readable(self.slow_inline);
        self.after_read(next);
    }

    /// `on_io` with a readable event.
    fn readable(&mut self) {
        let was_reading = self.ctx.state() == State::Reading;
        {
            let mut p = self.peer.borrow_mut();
            if p.complete() && p.sent.is_empty() {
                p.extra_seen = true;
            }
        }
        let next = self.ctx.on_readable(self.slow_inline);
        if was_reading {
            self.after_read(next);
        } else {
            self.apply(next);
        }
    }

    /// Checks what a read in `Reading` decided against the model, then applies it.
    fn after_read(&mut self, next: Next) {
        let (v, read_end, send_failed) = {
            let p = self.peer.borrow();
            (p.verdict, p.read_end, p.send_failed)
        };
        let ok = match next {
            Next::Read => v == Verdict::Incomplete && !read_end,
            Next::Delegate => v == Verdict::Slow && !self.slow_inline,
            Next::Write | Next::Finished => {
                v == Verdict::Fast || (v == Verdict::Slow && self.slow_inline)
            }
            Next::Drop(DropReason::Invalid) => v == Verdict::Invalid,
            Next::Drop(DropReason::TooLarge) => v == Verdict::TooLarge,
            Next::Drop(DropReason::ClientGone) => {
                (v == Verdict::Incomplete && read_end)
                    || (send_failed && matches!(v, Verdict::Fast | Verdict::Slow))
            }
            Next::Drop(_) => false,
        };
        assert!(ok, "read decided {next:?} on bytes the model calls {v:?}");
        self.apply(next);
    }

    /// `AcceptTask::apply`.
    fn apply(&mut self, next: Next) {
        match next {
            Next::Read | Next::Write => {
                // `arm_deadline`: a deadline is total, set once.
                self.deadline = true;
                self.watch = if next == Next::Read {
                    Watch::Read
                } else {
                    Watch::Write
                };
            }
            Next::Delegate => {
                assert!(!self.slow_inline, "delegated without workers");
                assert!(!self.task_out, "a second task");
                self.deadline = false;
                self.task_out = true;
                self.watch = Watch::Read;
            }
            Next::Finished | Next::Drop(_) => self.end(next),
        }
    }

    /// Records how the connection ended and closes it (`AcceptTask::close`).
    fn end(&mut self, how: Next) {
        assert!(self.outcome.is_none(), "ended twice: {how:?}");
        self.outcome = Some(how);
        {
            let p = self.peer.borrow();
            match how {
                Next::Finished => {
                    assert_eq!(p.sent, RESPONSE, "finished without the whole response");
                    if p.verdict == Verdict::Slow && !self.slow_inline {
                        assert!(p.task_done, "slow response before the task was done");
                    }
                }
                Next::Drop(DropReason::ClientGone) => assert!(
                    p.read_end || p.extra_seen || p.send_failed,
                    "dropped as gone, but the client did not leave"
                ),
                Next::Drop(DropReason::TimedOut | DropReason::Shutdown) => {}
                Next::Drop(DropReason::Invalid | DropReason::TooLarge) => {
                    assert!(p.sent.is_empty())
                }
                other => panic!("ended with {other:?}"),
            }
        }
        self.deadline = false;
        self.watch = Watch::None;
        let task_out = self.task_out;
        self.ctx.close(task_out);
        assert_eq!(self.peer.borrow().closes, 1, "one close of the socket");
        assert_eq!(self.ctx.fd(), -1);
        if task_out {
            assert_eq!(self.ctx.state(), State::Abandoned);
        } else {
            self.release();
        }
    }

    fn release(&mut self) {
        assert_eq!(self.ctx.state(), State::Free, "released a busy slot");
        assert!(self.held);
        self.held = false;
        assert!(!self.task_out);
        // The next connection starts with a fresh client.
        *self.peer.borrow_mut() = Peer::default();
    }

    /// `take_completions` for this slot.
    fn task_done(&mut self) {
        if !self.task_out {
            return;
        }
        self.task_out = false;
        self.peer.borrow_mut().task_done = true;
        match self.ctx.state() {
            State::Delegated => {
                let next = self.ctx.on_task_done();
                assert!(
                    matches!(next, Next::Finished | Next::Write | Next::Drop(_)),
                    "{next:?} after the task"
                );
                self.apply(next);
            }
            State::Abandoned => {
                self.ctx.close(false);
                self.release();
            }
            other => panic!("task came back to a slot in {other:?}"),
        }
    }

    /// `expire_deadlines` for this slot.
    fn deadline(&mut self) {
        if self.open() && self.deadline {
            self.end(Next::Drop(DropReason::TimedOut));
        }
    }

    /// `begin_drain` (closes what is still reading) or `end_drain` (closes all).
    fn shutdown(&mut self, all: bool) {
        if !self.open() {
            return;
        }
        let state = self.ctx.state();
        if state == State::Reading || (all && state != State::Free) {
            self.end(Next::Drop(DropReason::Shutdown));
        }
    }

    /// One loop iteration's io callback for this slot, if the watcher would fire.
    fn poll(&mut self) -> bool {
        if !self.open() {
            return false;
        }
        let readable = self.peer.borrow().readable();
        match self.watch {
            Watch::Read if readable => self.readable(),
            Watch::Write => {
                let next = self.ctx.on_writable();
                self.apply(next);
            }
            _ => return false,
        }
        true
    }

    /// The script ran out: the loop runs on until the connection is gone (the
    /// client stays quiet, sends succeed, the task ends, the deadline passes).
    fn finish(&mut self) {
        for round in 0.. {
            assert!(round < 10_000, "the connection never ends");
            if self.poll() {
                continue;
            }
            if self.task_out {
                self.task_done();
            } else if self.open() {
                assert!(self.deadline, "an idle connection without a deadline");
                self.deadline();
            } else {
                break;
            }
        }
        assert!(!self.held, "slot not released");
        assert_eq!(self.ctx.state(), State::Free);
    }
}

/// Reads the script one op at a time.
struct Script<'a>(&'a [u8]);

impl Script<'_> {
    fn byte(&mut self) -> u8 {
        let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
        self.0 = rest;
        b
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let (head, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        head
    }
}

fuzz_target!(|data: &[u8]| {
    let mut script = Script(data);
    let peer = RefCell::new(Peer::default());
    let mut d = Driver {
        peer: &peer,
        ctx: ConnectionCtx::default(),
        slow_inline: script.byte() & 1 == 1,
        held: false,
        watch: Watch::None,
        deadline: false,
        task_out: false,
        outcome: None,
        gen: 0,
    };
    while !script.0.is_empty() {
        let op = script.byte();
        match op % 16 {
            0 => {
                let n = usize::from(script.byte());
                let chunk = script.bytes(n).to_vec();
                peer.borrow_mut().inbox.extend(chunk);
            }
            1 => {
                let n = usize::from(script.byte()) * 17;
                peer.borrow_mut().inbox.extend(std::iter::repeat_n(b'x', n));
            }
            2 => {
                let s = SNIPPETS[usize::from(script.byte()) % SNIPPETS.len()];
                peer.borrow_mut().inbox.extend(s);
            }
            3 => peer.borrow_mut().eof = true,
            4 => peer.borrow_mut().reset = true,
            5 => peer.borrow_mut().recv_faults.push_back(libc::EAGAIN),
            6 => peer.borrow_mut().recv_faults.push_back(libc::EINTR),
            7 => {
                let k = 1 + usize::from(script.byte()) % RESPONSE.len();
                peer.borrow_mut().sends.push_back(SendOp::Partial(k));
            }
            8 => peer
                .borrow_mut()
                .sends
                .push_back(SendOp::Errno(libc::EAGAIN)),
            9 => peer
                .borrow_mut()
                .sends
                .push_back(SendOp::Errno(libc::EINTR)),
            10 => peer
                .borrow_mut()
                .sends
                .push_back(SendOp::Errno(libc::EPIPE)),
            // The listener or the socket is readable: accept, or read.
            11 => {
                if !d.held {
                    d.accept();
                } else if d.open() && d.watch == Watch::Read && peer.borrow().readable() {
                    d.readable();
                }
            }
            12 => {
                if d.watch == Watch::Write {
                    d.poll();
                }
            }
            13 => d.task_done(),
            14 => d.deadline(),
            _ => d.shutdown(op & 0x10 != 0),
        }
        // A connection that ended with its slot free is done: the next ops are
        // the next client's, on the same slot.
    }
    if d.held {
        d.finish();
    }
});
