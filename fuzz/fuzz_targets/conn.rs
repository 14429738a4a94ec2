//! Fuzzes the connection engine (`conn_daemon::fuzzing::Engine`, the very code
//! every accept loop runs) over a scripted socket and a scripted loop: the input
//! is a script of what the client and the kernel do (bytes arriving in any
//! chunks, EOF, reset, EAGAIN and EINTR on recv, partial, refused and failed
//! sends) and of what the event loop delivers (the listener or the socket
//! readable, writable, the slow task's completion, the read deadline, a drain of
//! either kind and its timeout), in any order. Clients come one after another on
//! the same slot; after a drain has stopped the loop, the next client gets a
//! fresh engine.
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

use std::cell::Cell;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use conn_daemon::engine::DropReason;
use conn_daemon::fuzzing::{Engine, Host, Interest, Next, Settings, Socket, State, TimerId};
use conn_daemon::lifecycle::Drain;
use conn_daemon::pool::SlotWatcher;
use conn_daemon::proto::parser::Verdict;
use conn_daemon::proto::{Builtin, Reason, SlowTask, RESPONSE};
use conn_daemon::task::{Claimed, TaskRef};
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
    /// The server shut its sending side (a lingering close).
    fin: bool,
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
            fin: false,
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
        assert!(!p.fin, "send after shutdown");
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

    fn shutdown_write(&self) -> io::Result<()> {
        let mut p = self.0.borrow_mut();
        assert_eq!(p.closes, 0, "shutdown after close");
        assert_eq!(p.sent, RESPONSE, "shut down before the whole response");
        assert!(!std::mem::replace(&mut p.fin, true), "shut down twice");
        Ok(())
    }

    fn raw_fd(&self) -> RawFd {
        7
    }

    fn close(self) {
        self.0.borrow_mut().closes += 1;
    }
}

/// A slot watcher of the scripted loop: what it waits for, if anything.
#[derive(Default)]
struct Watch(Cell<Option<Interest>>);

impl SlotWatcher for Watch {
    fn is_active(&self) -> bool {
        self.0.get().is_some()
    }
}

/// The scripted loop: one listener, whose backlog holds the next client when
/// the script says one connects; timers fire when the script says so.
struct Loop<'a> {
    peer: &'a RefCell<Peer>,
    slow_inline: bool,
    now: f64,
    timers: [Option<f64>; TimerId::ALL.len()],
    /// Tokens handed to the (scripted) workers, not yet popped (a cancelled
    /// task's token stays until popped, or carries the slot's next task).
    tasks: VecDeque<TaskRef>,
    /// The task a worker has claimed and runs.
    running: Option<Claimed>,
    stopped: bool,
    /// A client waits in the backlog.
    pending: bool,
    listener_open: bool,
    listening: bool,
    /// What slot 0's watcher waits for.
    watched: Option<Interest>,
    /// How the current connection ended, told by the engine (until its slot
    /// is released).
    outcome: Option<Next<Reason>>,
}

impl<'a> Host<Builtin, Fake<'a>> for Loop<'a> {
    type Watcher = Watch;

    fn now(&self) -> f64 {
        self.now
    }
    fn watch(&mut self, w: Pin<&Watch>, fd: RawFd, interest: Interest, slot: u32) {
        assert_eq!((fd, slot), (7, 0), "watching another fd or slot");
        w.0.set(Some(interest));
        self.watched = Some(interest);
    }
    fn unwatch(&mut self, w: Pin<&Watch>) {
        w.0.set(None);
        self.watched = None;
    }
    fn start_timer(&mut self, timer: TimerId, after: f64) {
        assert!(after >= 0.0, "{timer:?} armed in the past");
        self.timers[timer as usize] = Some(self.now + after);
    }
    fn timer_active(&self, timer: TimerId) -> bool {
        self.timers[timer as usize].is_some()
    }
    fn stop_timer(&mut self, timer: TimerId) {
        self.timers[timer as usize] = None;
    }
    fn submit(&mut self, task: TaskRef, _wait: Duration) {
        assert!(!self.slow_inline, "delegated without workers");
        assert!(self.tasks.is_empty(), "a second token for one slot");
        self.tasks.push_back(task);
    }
    fn stop(&mut self) {
        self.stopped = true;
    }
    fn listeners(&self) -> usize {
        usize::from(self.listener_open)
    }
    fn accept(&mut self, listener: usize) -> Option<io::Result<(Fake<'a>, Option<SlowTask>)>> {
        assert_eq!(listener, 0);
        assert!(
            self.listening || !self.listener_open,
            "accept on a paused listener"
        );
        if !self.listener_open {
            return None;
        }
        if !std::mem::take(&mut self.pending) {
            return Some(Err(io::Error::from_raw_os_error(libc::EAGAIN)));
        }
        Some(Ok((Fake(self.peer), None)))
    }
    fn watch_listeners(&mut self) {
        assert!(self.listener_open);
        self.listening = true;
    }
    fn unwatch_listeners(&mut self) {
        self.listening = false;
    }
    fn close_listeners(&mut self) {
        self.listening = false;
        self.listener_open = false;
    }
    fn closed(&mut self, slot: u32, how: Next<Reason>) {
        assert_eq!(slot, 0);
        assert!(self.outcome.is_none(), "ended twice: {how:?}");
        self.outcome = Some(how);
        let p = self.peer.borrow();
        assert_eq!(p.closes, 1, "one close of the socket");
        match how {
            Next::Finished => {
                assert_eq!(p.sent, RESPONSE, "finished without the whole response");
                if p.verdict == Verdict::Slow && !self.slow_inline {
                    assert!(p.task_done, "slow response before the task was done");
                }
            }
            Next::Close => {
                assert!(p.fin, "a lingering close without the shutdown");
                assert_eq!(p.sent, RESPONSE, "lingered without the whole response");
            }
            Next::Drop(DropReason::Protocol(Reason::Invalid)) => {
                assert_eq!(p.verdict, Verdict::Invalid, "dropped as invalid");
                assert!(p.sent.is_empty());
            }
            Next::Drop(DropReason::Protocol(Reason::TooLarge)) => {
                assert_eq!(p.verdict, Verdict::TooLarge, "dropped as too large");
                assert!(p.sent.is_empty());
            }
            Next::Drop(DropReason::ClientGone) => assert!(
                p.read_end || p.extra_seen || p.send_failed,
                "dropped as gone, but the client did not leave"
            ),
            Next::Drop(DropReason::TimedOut | DropReason::Shutdown) => {}
            other => panic!("ended with {other:?}"),
        }
    }
}

/// The engine, its loop, and the checks between the script's steps.
struct Driver<'a> {
    engine: Engine<Builtin, Fake<'a>, Watch>,
    lp: Loop<'a>,
    /// The generation of the last connection in slot 0.
    gen: u32,
}

fn new_engine<'a>(slow_inline: bool) -> Engine<Builtin, Fake<'a>, Watch> {
    let proto = Builtin::new((!slow_inline).then_some(Duration::ZERO));
    let settings = Settings {
        id: 0,
        // Room for the one client and more, so that a full pool is never the cause.
        capacity: 2,
        read_timeout: Some(Duration::from_secs(1)),
        idle_timeout: None,
        shutdown_timeout: Duration::from_secs(5),
        counters: Arc::default(),
    };
    Engine::new(settings, Arc::new(proto)).expect("a pool of 2")
}

impl<'a> Driver<'a> {
    /// Slot 0 is held: a connection open, or waiting for its task.
    fn held(&self) -> bool {
        self.engine.in_use() > 0
    }

    /// A connection is open in slot 0 (not ended).
    fn open(&self) -> bool {
        self.held() && self.lp.outcome.is_none()
    }

    fn state(&self) -> State {
        self.engine.connection(0).state()
    }

    fn watching(&self) -> Option<Interest> {
        self.lp.watched
    }

    /// A client connects (the listener is readable).
    fn connect(&mut self) {
        if self.lp.stopped {
            // The last loop has drained and stopped: a new process, in effect.
            self.restart();
        }
        if self.held() || !self.lp.listener_open || !self.lp.listening {
            return;
        }
        self.lp.pending = true;
        self.lp.outcome = None;
        self.engine.on_listener(&mut self.lp, 0);
        assert!(
            !self.lp.pending,
            "a listening engine with room did not accept"
        );
        self.gen = self.gen.wrapping_add(1);
        self.check();
    }

    fn restart(&mut self) {
        if let Some(task) = self.lp.running.take() {
            self.engine.on_task_done(&mut self.lp, task.run());
        }
        while let Some(task) = self.lp.tasks.pop_front() {
            if let Some(done) = task.run() {
                self.engine.on_task_done(&mut self.lp, done);
            }
        }
        assert_eq!(self.engine.in_use(), 0, "a stopped loop with a slot held");
        self.engine.teardown(|w| w.0.set(None));
        self.lp.watched = None;
        self.engine = new_engine(self.lp.slow_inline);
        self.gen = 0;
        self.lp.stopped = false;
        self.lp.listener_open = true;
        self.lp.listening = true;
        self.lp.timers = [None; TimerId::ALL.len()];
        *self.lp.peer.borrow_mut() = Peer::default();
    }

    /// The socket is readable (when its watcher waits for that).
    fn readable(&mut self) {
        if !self.open() || self.watching() != Some(Interest::Read) {
            return;
        }
        if !self.lp.peer.borrow().readable() {
            return;
        }
        {
            let mut p = self.lp.peer.borrow_mut();
            if p.complete() && p.sent.is_empty() {
                p.extra_seen = true;
            }
        }
        self.engine.on_io(&mut self.lp, 0, Interest::Read);
        self.check();
    }

    /// The socket is writable (when its watcher waits for that).
    fn writable(&mut self) {
        if self.open() && self.watching() == Some(Interest::Write) {
            self.engine.on_io(&mut self.lp, 0, Interest::Write);
            self.check();
        }
    }

    /// A worker finishes the task it runs, or else pops the next token (and
    /// claims its task, unless it was cancelled).
    fn task_done(&mut self) {
        if let Some(task) = self.lp.running.take() {
            self.lp.peer.borrow_mut().task_done = true;
            let done = task.run();
            self.engine.on_task_done(&mut self.lp, done);
            self.check();
        } else if let Some(token) = self.lp.tasks.pop_front() {
            self.lp.running = token.claim();
            self.check();
        }
    }

    fn task_out(&self) -> bool {
        self.lp.running.is_some() || !self.lp.tasks.is_empty()
    }

    /// `timer` fires, if armed.
    fn fire(&mut self, timer: TimerId) -> bool {
        let Some(at) = self.lp.timers[timer as usize].take() else {
            return false;
        };
        let delegated = self.open() && self.state() == State::Delegated;
        self.lp.now = self.lp.now.max(at);
        self.engine.on_timer(&mut self.lp, timer);
        // The read deadline ends with the request: a task's wait is not the
        // client's fault.
        assert!(
            !(delegated && self.lp.outcome == Some(Next::Drop(DropReason::TimedOut))),
            "timed out while its slow task was out"
        );
        self.check();
        true
    }

    /// A shutdown request, or the drain's timeout once one has begun.
    fn shutdown(&mut self, how: Drain) {
        if self.engine.is_draining() {
            self.fire(TimerId::Drain);
        } else if !self.lp.stopped {
            self.engine.begin_drain(&mut self.lp, how);
            assert!(!self.lp.listener_open, "the drain closes the listener");
            self.check();
        }
    }

    /// What must hold between two events.
    fn check(&mut self) {
        if let Some(how) = self.lp.outcome {
            if self.held() {
                // Ended while a worker runs its task: the slot waits for it (a
                // task still queued is withdrawn and its slot freed at once).
                assert!(self.lp.running.is_some(), "{how:?}: slot held for nothing");
                assert_eq!(self.state(), State::Abandoned);
            } else {
                assert_eq!(self.state(), State::Free);
                // The next connection starts with a fresh client.
                *self.lp.peer.borrow_mut() = Peer::default();
                self.lp.outcome = None;
            }
            assert_eq!(self.watching(), None, "a closed connection still watched");
            assert_eq!(self.engine.connection(0).fd(), -1);
            if self.engine.in_use() == 0 && self.engine.is_draining() {
                assert!(self.lp.stopped, "drained but the loop goes on");
            }
            return;
        }
        if !self.held() {
            return;
        }
        let ctx = self.engine.connection(0);
        assert_eq!(ctx.gen(), self.gen, "a new generation per connection");
        let (v, read_end) = {
            let p = self.lp.peer.borrow();
            (p.verdict, p.read_end)
        };
        match ctx.state() {
            State::Reading => {
                assert_eq!(
                    v,
                    Verdict::Incomplete,
                    "still reading a request the model calls {v:?}"
                );
                assert!(!read_end, "still reading after EOF or a reset");
                assert_eq!(self.watching(), Some(Interest::Read));
                assert!(
                    self.lp.timers[TimerId::Deadline as usize].is_some(),
                    "no deadline"
                );
            }
            State::Delegated => {
                assert!(
                    v == Verdict::Slow && !self.lp.slow_inline,
                    "delegated a {v:?}"
                );
                assert!(
                    self.lp.running.is_some() != (self.lp.tasks.len() == 1),
                    "delegated without exactly one task out"
                );
                assert_eq!(
                    self.watching(),
                    Some(Interest::Read),
                    "not watching for the client leaving"
                );
            }
            State::Writing => {
                assert!(
                    matches!(v, Verdict::Fast | Verdict::Slow),
                    "answering a {v:?}"
                );
                assert_eq!(self.watching(), Some(Interest::Write));
            }
            State::Lingering => {
                let p = self.lp.peer.borrow();
                assert!(p.fin && p.sent == RESPONSE, "lingering before the response");
                assert!(
                    p.read.len() >= model::BUFFER,
                    "lingering after a request that did not fill the buffer"
                );
                assert_eq!(self.watching(), Some(Interest::Read));
                assert!(
                    self.lp.timers[TimerId::Linger as usize].is_some(),
                    "no bound"
                );
            }
            other => panic!("an open connection in {other:?}"),
        }
    }

    /// The script ran out: the loop runs on until the connection is gone (the
    /// client stays quiet, sends succeed, the task ends, the deadline passes).
    fn finish(&mut self) {
        for round in 0.. {
            assert!(round < 10_000, "the connection never ends");
            if !self.held() {
                break;
            }
            if self.open() {
                let readable = self.lp.peer.borrow().readable();
                match self.watching() {
                    Some(Interest::Read) if readable => {
                        self.readable();
                        continue;
                    }
                    Some(Interest::Write) => {
                        self.writable();
                        continue;
                    }
                    _ => {}
                }
            }
            if self.task_out() {
                self.task_done();
            } else if !self.fire(TimerId::Deadline)
                && !self.fire(TimerId::Linger)
                && !self.fire(TimerId::Drain)
            {
                panic!("an idle connection with nothing to end it");
            }
        }
        assert_eq!(self.engine.in_use(), 0, "slot not released");
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
    let slow_inline = script.byte() & 1 == 1;
    let mut d = Driver {
        engine: new_engine(slow_inline),
        lp: Loop {
            peer: &peer,
            slow_inline,
            now: 0.0,
            timers: [None; TimerId::ALL.len()],
            tasks: VecDeque::new(),
            running: None,
            stopped: false,
            pending: false,
            listener_open: true,
            listening: true,
            watched: None,
            outcome: None,
        },
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
                if d.held() {
                    d.readable();
                } else {
                    d.connect();
                }
            }
            12 => d.writable(),
            13 => d.task_done(),
            14 if op & 0x10 != 0 => {
                d.fire(TimerId::Linger);
            }
            14 => {
                d.fire(TimerId::Deadline);
            }
            _ if op & 0x10 != 0 => d.shutdown(Drain::Handover),
            _ => d.shutdown(Drain::Stop),
        }
    }
    if d.held() {
        d.finish();
    }
});
