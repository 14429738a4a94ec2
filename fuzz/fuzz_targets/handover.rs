//! Fuzzes the hand-over of `--delegate socket|loop` and the blocking worker's
//! steps, over scripted sockets and a scripted loop.
//!
//! The accept side: the real connection engine (`conn_daemon::fuzzing::Engine`)
//! with a host that hands complete slow requests off; the script connects
//! clients (up to the pool's 3 at once), feeds them bytes, EOF or a reset, opens
//! and closes the room on the worker side, rings the loop (room may have freed),
//! and drains. Invariants: a connection is handed over only for a complete
//! `/test/slow` (the docs/protocol.md model's verdict), with its watcher stopped
//! first, never after its socket was closed, at most once, and only into room
//! reserved for it (every successful reservation is followed by exactly one
//! hand-over, none leaked); a handed-over connection gets no byte from the
//! accept loop and its slot is free at once; a connection waiting for room is
//! watched for reading (rule 7) and closed when its client leaves; nothing is
//! left once the room stays open and the loop is rung (no connection stuck
//! waiting); every connection ends exactly once (closed or handed over).
//!
//! The worker side, both kinds:
//! - `--delegate loop`: the engine as a worker's loop hosts it, with the worker
//!   loop's own piece (`SlowTimers` for the job's wait), taking connections
//!   over with their job (no byte replayed) on scripted sockets: connections are
//!   handed over at any time, send bytes or EOF during their work, time passes
//!   in steps, a drain comes. No byte before a connection's full duration, none
//!   once it sent more or left, every connection that stayed gets the 57 bytes
//!   once time has passed, and every slot ends free;
//! - `--delegate socket`: the blocking worker's `work` then `answer` over a scripted
//!   socket (input arriving at any wait of the work, interrupted waits, short,
//!   interrupted, would-block and failed sends,
//!   the write deadline passing): at most the 57 bytes, as a prefix; all of them
//!   exactly when it reports `Answered`; none once input was pending.
#![no_main]

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use conn_daemon::fuzzing::{
    answer, work, Due, Engine, Host, Interest, Next, Outcome, Settings, SlowTimers, Socket,
    TimerId, WorkerSocket,
};
use conn_daemon::lifecycle::Drain;
use conn_daemon::pool::SlotWatcher;
use conn_daemon::proto::parser::Verdict;
use conn_daemon::proto::{Builtin, Reason, SlowTask, RESPONSE};
use conn_daemon::task::TaskRef;
use conn_daemon_fuzz::model;
use libfuzzer_sys::fuzz_target;

const SNIPPETS: [&[u8]; 5] = [
    b"GET /test/slow\r\n\r\n",
    b"GET /test/fast\r\n\r\n",
    b"GET /test/slow HTTP/1.1\r\n",
    b"\r\n",
    b"x",
];

/// Slots in the engine's pool.
const CAPACITY: usize = 3;

/// One client and what happened to it.
#[derive(Default)]
struct Client {
    inbox: VecDeque<u8>,
    eof: bool,
    read: Vec<u8>,
    read_end: bool,
    sent: Vec<u8>,
    closes: u32,
    handed: u32,
}

#[derive(Default)]
struct World {
    clients: Vec<Client>,
    /// fd (client index) -> its slot watcher is active.
    watched: Vec<bool>,
    /// fd (client index) -> the slot it was last watched for.
    slot_of: Vec<u32>,
}

/// A client's socket, as the engine sees it: fd = the client's index.
struct Fake {
    id: usize,
    world: Rc<RefCell<World>>,
}

impl Socket for Fake {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = self.world.borrow_mut();
        let c = &mut w.clients[self.id];
        assert_eq!(
            (c.closes, c.handed),
            (0, 0),
            "recv after close or hand-over"
        );
        if !c.inbox.is_empty() {
            let n = buf.len().min(c.inbox.len());
            for (i, b) in c.inbox.drain(..n).enumerate() {
                buf[i] = b;
            }
            c.read.extend_from_slice(&buf[..n]);
            return Ok(n);
        }
        if c.eof {
            c.read_end = true;
            return Ok(0);
        }
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    }
    fn send_final(&self, buf: &[u8]) -> io::Result<usize> {
        let mut w = self.world.borrow_mut();
        let c = &mut w.clients[self.id];
        assert_eq!(
            (c.closes, c.handed),
            (0, 0),
            "send after close or hand-over"
        );
        let v = model::verdict(&c.read);
        assert_eq!(v, Verdict::Fast, "the accept loop answered a {v:?} request");
        c.sent.extend_from_slice(buf);
        assert!(RESPONSE.starts_with(&c.sent));
        Ok(buf.len())
    }
    fn shutdown_write(&self) -> io::Result<()> {
        // A lingering close after the response (bytes beyond the request).
        let w = self.world.borrow();
        let c = &w.clients[self.id];
        assert_eq!(
            (c.closes, c.handed),
            (0, 0),
            "shutdown after close or hand-over"
        );
        assert_eq!(c.sent, RESPONSE, "shutdown before the whole response");
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        self.id as RawFd
    }
    fn close(self) {
        let mut w = self.world.borrow_mut();
        let c = &mut w.clients[self.id];
        assert_eq!(c.handed, 0, "closed a handed-over socket");
        c.closes += 1;
        assert_eq!(c.closes, 1, "closed twice");
    }
}

#[derive(Default)]
struct Watch {
    fd: Cell<Option<RawFd>>,
}

impl SlotWatcher for Watch {
    fn is_active(&self) -> bool {
        self.fd.get().is_some()
    }
}

struct Loop {
    world: Rc<RefCell<World>>,
    now: f64,
    timers: [Option<f64>; TimerId::ALL.len()],
    /// The next client waiting in the backlog.
    pending: Option<usize>,
    listener_open: bool,
    listening: bool,
    /// The worker side has room.
    room: bool,
    /// Reservations not yet followed by their hand-over.
    reserved: u32,
    stopped: bool,
}

impl Host<Builtin, Fake> for Loop {
    type Watcher = Watch;

    fn now(&self) -> f64 {
        self.now
    }
    fn watch(&mut self, w: Pin<&Watch>, fd: RawFd, _interest: Interest, slot: u32) {
        let mut world = self.world.borrow_mut();
        if let Some(old) = w.fd.get() {
            world.watched[old as usize] = false;
        }
        w.fd.set(Some(fd));
        world.watched[fd as usize] = true;
        world.slot_of[fd as usize] = slot;
    }
    fn unwatch(&mut self, w: Pin<&Watch>) {
        if let Some(fd) = w.fd.take() {
            self.world.borrow_mut().watched[fd as usize] = false;
        }
    }
    fn start_timer(&mut self, timer: TimerId, after: f64) {
        self.timers[timer as usize] = Some(self.now + after);
    }
    fn timer_active(&self, timer: TimerId) -> bool {
        self.timers[timer as usize].is_some()
    }
    fn stop_timer(&mut self, timer: TimerId) {
        self.timers[timer as usize] = None;
    }
    fn submit(&mut self, _task: TaskRef, _wait: Duration) {
        panic!("a task submitted by a loop that hands connections off");
    }
    fn stop(&mut self) {
        self.stopped = true;
    }
    fn listeners(&self) -> usize {
        usize::from(self.listener_open)
    }
    fn accept(&mut self, _listener: usize) -> Option<io::Result<(Fake, Option<SlowTask>)>> {
        if !self.listener_open {
            return None;
        }
        match self.pending.take() {
            Some(id) => Some(Ok((
                Fake {
                    id,
                    world: Rc::clone(&self.world),
                },
                None,
            ))),
            None => Some(Err(io::Error::from_raw_os_error(libc::EAGAIN))),
        }
    }
    fn watch_listeners(&mut self) {
        self.listening = true;
    }
    fn unwatch_listeners(&mut self) {
        self.listening = false;
    }
    fn close_listeners(&mut self) {
        self.listening = false;
        self.listener_open = false;
    }
    fn closed(&mut self, _slot: u32, _how: Next<Reason>) {}
    fn hands_off(&self) -> bool {
        true
    }
    fn reserve_hand_off(&mut self) -> bool {
        assert_eq!(self.reserved, 0, "a reservation left without its hand-over");
        if self.room {
            self.reserved += 1;
        }
        self.room
    }
    fn hand_off(&mut self, fd: Fake, _job: SlowTask) {
        assert_eq!(self.reserved, 1, "a hand-over without a reservation");
        self.reserved = 0;
        let mut w = self.world.borrow_mut();
        assert!(!w.watched[fd.id], "handed over while still watched");
        let c = &mut w.clients[fd.id];
        assert_eq!(c.closes, 0, "handed over a closed socket");
        assert_eq!(c.handed, 0, "handed over twice");
        let v = model::verdict(&c.read);
        assert_eq!(v, Verdict::Slow, "handed over a {v:?} request");
        assert!(c.sent.is_empty());
        c.handed += 1;
    }
}

struct Driver {
    engine: Engine<Builtin, Fake, Watch>,
    lp: Loop,
    /// Clients whose connection the engine holds, by client index.
    open: Vec<usize>,
}

impl Driver {
    fn new(world: Rc<RefCell<World>>) -> Driver {
        let settings = Settings {
            id: 0,
            capacity: CAPACITY,
            read_timeout: Some(Duration::from_secs(1)),
            idle_timeout: None,
            shutdown_timeout: Duration::from_secs(5),
            counters: Arc::default(),
        };
        let proto = Arc::new(Builtin::new(Some(Duration::ZERO)));
        let engine = Engine::new(settings, proto).expect("a pool of 3");
        let mut lp = Loop {
            world,
            now: 0.0,
            timers: [None; TimerId::ALL.len()],
            pending: None,
            listener_open: true,
            listening: false,
            room: true,
            reserved: 0,
            stopped: false,
        };
        lp.watch_listeners();
        Driver {
            engine,
            lp,
            open: Vec::new(),
        }
    }

    /// After every step.
    fn check(&mut self) {
        assert_eq!(self.lp.reserved, 0, "a reservation leaked");
        self.open.retain(|&id| {
            let w = self.lp.world.borrow();
            w.clients[id].closes + w.clients[id].handed == 0
        });
        assert!(
            self.engine.in_use() >= self.open.len(),
            "{} open, {} slots held",
            self.open.len(),
            self.engine.in_use()
        );
        let w = self.lp.world.borrow();
        for &id in &self.open {
            let c = &w.clients[id];
            if model::verdict(&c.read) == Verdict::Slow && !self.lp.stopped {
                // Waiting for room: watched, so that rule 7 can close it.
                assert!(w.watched[id], "client {id} waits unwatched");
            }
        }
    }

    fn connect(&mut self, first: &[u8]) {
        if !self.lp.listening || self.lp.pending.is_some() {
            return;
        }
        let id = {
            let mut w = self.lp.world.borrow_mut();
            w.clients.push(Client {
                inbox: first.iter().copied().collect(),
                ..Client::default()
            });
            w.watched.push(false);
            w.slot_of.push(u32::MAX);
            w.clients.len() - 1
        };
        self.lp.pending = Some(id);
        self.engine.on_listener(&mut self.lp, 0);
        assert!(
            self.lp.pending.is_none(),
            "a listening engine did not accept"
        );
        self.open.push(id);
    }

    /// The client `pick` of the open ones, if any, is readable.
    fn readable(&mut self, pick: usize, bytes: Option<&[u8]>) {
        let Some(&id) = self.open.get(pick % self.open.len().max(1)) else {
            return;
        };
        let slot = {
            let mut w = self.lp.world.borrow_mut();
            let c = &mut w.clients[id];
            match bytes {
                Some(b) => c.inbox.extend(b),
                None => c.eof = true,
            }
            if !w.watched[id] {
                // Nobody watches it: the event cannot be delivered.
                return;
            }
            w.slot_of[id]
        };
        assert_eq!(self.engine.connection(slot).fd(), id as RawFd);
        self.engine.on_io(&mut self.lp, slot, Interest::Read);
    }
}

fuzz_target!(|data: &[u8]| {
    worker_steps(data);
    worker_loop(data);
    let world = Rc::new(RefCell::new(World::default()));
    let mut d = Driver::new(Rc::clone(&world));
    let mut ops = data.iter().copied();
    while let Some(op) = ops.next() {
        let arg = ops.next().unwrap_or(0) as usize;
        match op % 9 {
            0 | 1 => d.connect(SNIPPETS[arg % SNIPPETS.len()]),
            2 => d.readable(arg, Some(SNIPPETS[(arg / 8) % SNIPPETS.len()])),
            3 => d.readable(arg, None),
            4 => d.lp.room = false,
            5 => {
                d.lp.room = true;
                d.engine.retry_hand_offs(&mut d.lp);
            }
            6 => d.engine.retry_hand_offs(&mut d.lp),
            7 => {
                let how = if arg % 2 == 0 {
                    Drain::Stop
                } else {
                    Drain::Handover
                };
                d.engine.begin_drain(&mut d.lp, how);
            }
            _ => {
                // Time passes: the read deadline (and the drain's bound) fire.
                d.lp.now += 2.0;
                for t in [TimerId::Deadline, TimerId::Drain] {
                    if d.lp.timers[t as usize].is_some_and(|at| at <= d.lp.now) {
                        d.lp.timers[t as usize] = None;
                        d.engine.on_timer(&mut d.lp, t);
                    }
                }
            }
        }
        d.check();
    }
    // Room for good, the loop rung: no complete slow request stays behind.
    d.lp.room = true;
    d.engine.retry_hand_offs(&mut d.lp);
    d.check();
    let w = world.borrow();
    for &id in &d.open {
        let v = model::verdict(&w.clients[id].read);
        assert_ne!(v, Verdict::Slow, "client {id} still waits with room free");
    }
});

/// The blocking worker's steps over a scripted socket.
fn worker_steps(data: &[u8]) {
    struct Scripted {
        /// Input arrives at this wait of the work (counting from 1), if any.
        input_at: Option<u8>,
        /// Waits of the work so far.
        input_waits: Cell<u8>,
        /// Input arrived: no byte may be sent from then on.
        pending: Cell<bool>,
        sends: RefCell<VecDeque<u8>>,
        out: RefCell<Vec<u8>>,
        /// The deadline passes at the next wait.
        expire: bool,
    }
    impl WorkerSocket for Scripted {
        fn wait_input(&self, timeout: Duration) -> io::Result<bool> {
            let n = self.input_waits.get() + 1;
            self.input_waits.set(n);
            if self.input_at == Some(n) {
                self.pending.set(true);
                return Ok(true);
            }
            // Every other wait is cut short by a signal, so the work loops.
            if n % 2 == 1 {
                return Err(io::Error::from_raw_os_error(libc::EINTR));
            }
            std::thread::sleep(timeout);
            Ok(false)
        }
        fn send_final(&self, buf: &[u8]) -> io::Result<usize> {
            let op = self.sends.borrow_mut().pop_front();
            let n = match op {
                None => buf.len(),
                Some(b) if b % 4 == 0 => return Err(io::Error::from_raw_os_error(libc::EAGAIN)),
                Some(b) if b % 4 == 1 => return Err(io::Error::from_raw_os_error(libc::EINTR)),
                Some(b) if b % 16 == 2 => return Err(io::Error::from_raw_os_error(libc::EPIPE)),
                Some(b) => (b as usize / 4).min(buf.len()),
            };
            self.out.borrow_mut().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn wait_writable(&self, timeout: Duration) -> io::Result<bool> {
            if self.expire {
                // The poll ran out the deadline.
                std::thread::sleep(timeout);
                return Ok(false);
            }
            Ok(true)
        }
    }
    let Some((&flags, script)) = data.split_first() else {
        return;
    };
    let sock = Scripted {
        input_at: (flags & 1 == 1).then_some(1 + (flags >> 2) % 4),
        input_waits: Cell::new(0),
        pending: Cell::new(false),
        sends: RefCell::new(script.iter().copied().take(64).collect()),
        out: RefCell::new(Vec::new()),
        expire: flags & 2 == 2,
    };
    let outcome = match work(&sock, Duration::from_micros(20)) {
        Ok(()) => answer(&sock, RESPONSE, Duration::from_micros(50)),
        Err(gone) => gone,
    };
    let out = sock.out.borrow();
    assert!(RESPONSE.starts_with(&out), "bytes other than the response");
    match outcome {
        Outcome::Answered => assert_eq!(&out[..], RESPONSE, "answered without the 57 bytes"),
        Outcome::Dropped(_) => assert!(out.len() < RESPONSE.len(), "dropped after all 57"),
        other => panic!("{other:?} from the blocking steps"),
    }
    if sock.pending.get() {
        assert!(out.is_empty(), "a byte after the client sent more or left");
    }
    // A quiet work waits its whole duration, then answers or drops; input at
    // any of its waits drops at once.
    if let Some(at) = sock.input_at.filter(|&at| at <= sock.input_waits.get()) {
        assert_eq!(sock.input_waits.get(), at, "kept waiting after the input");
        assert!(
            matches!(outcome, Outcome::Dropped(_)),
            "answered after input"
        );
    }
}

/// A connection handed to a worker loop, and what happened to it there.
#[derive(Default)]
struct Held {
    inbox: VecDeque<u8>,
    eof: bool,
    /// The client sent bytes or EOF after its request and the server was told
    /// (the socket reported readable), or read them: rule 7 applies.
    read_more: bool,
    handed_at: Duration,
    sent: Vec<u8>,
    closes: u32,
}

#[derive(Default)]
struct WorkerWorld {
    held: Vec<Held>,
    watched: Vec<bool>,
    slot_of: Vec<u32>,
    now: Duration,
}

const SLOW: Duration = Duration::from_millis(100);

struct HeldSock {
    id: usize,
    world: Rc<RefCell<WorkerWorld>>,
}

impl Socket for HeldSock {
    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        let mut w = self.world.borrow_mut();
        let c = &mut w.held[self.id];
        assert_eq!(c.closes, 0, "recv after close");
        if !c.inbox.is_empty() {
            let n = buf.len().min(c.inbox.len());
            for (i, b) in c.inbox.drain(..n).enumerate() {
                buf[i] = b;
            }
            c.read_more = true;
            return Ok(n);
        }
        if c.eof {
            c.read_more = true;
            return Ok(0);
        }
        Err(io::Error::from_raw_os_error(libc::EAGAIN))
    }
    fn send_final(&self, buf: &[u8]) -> io::Result<usize> {
        let mut w = self.world.borrow_mut();
        let now = w.now;
        let c = &mut w.held[self.id];
        assert_eq!(c.closes, 0, "send after close");
        assert!(
            !c.read_more,
            "a response after the client sent more or left"
        );
        assert!(
            now >= c.handed_at + SLOW,
            "answered {:?} after the hand-over, before the slow duration",
            now - c.handed_at
        );
        c.sent.extend_from_slice(buf);
        assert!(RESPONSE.starts_with(&c.sent));
        Ok(buf.len())
    }
    fn shutdown_write(&self) -> io::Result<()> {
        Ok(())
    }
    fn raw_fd(&self) -> RawFd {
        self.id as RawFd
    }
    fn close(self) {
        let mut w = self.world.borrow_mut();
        let c = &mut w.held[self.id];
        c.closes += 1;
        assert_eq!(c.closes, 1, "closed twice");
    }
}

/// A worker's loop, scripted: its queue, its timers, its slow work.
struct WorkerHost {
    world: Rc<RefCell<WorkerWorld>>,
    timers: [Option<Duration>; TimerId::ALL.len()],
    slow_timer: Option<Duration>,
    slow_work: SlowTimers,
    queue: VecDeque<usize>,
    open: bool,
    listening: bool,
    stopped: bool,
}

impl WorkerHost {
    fn now(&self) -> Duration {
        self.world.borrow().now
    }
}

impl Host<Builtin, HeldSock> for WorkerHost {
    type Watcher = Watch;

    fn now(&self) -> f64 {
        WorkerHost::now(self).as_secs_f64()
    }
    fn watch(&mut self, w: Pin<&Watch>, fd: RawFd, _interest: Interest, slot: u32) {
        let mut world = self.world.borrow_mut();
        if let Some(old) = w.fd.get() {
            world.watched[old as usize] = false;
        }
        w.fd.set(Some(fd));
        world.watched[fd as usize] = true;
        world.slot_of[fd as usize] = slot;
    }
    fn unwatch(&mut self, w: Pin<&Watch>) {
        if let Some(fd) = w.fd.take() {
            self.world.borrow_mut().watched[fd as usize] = false;
        }
    }
    fn start_timer(&mut self, timer: TimerId, after: f64) {
        let after = Duration::try_from_secs_f64(after).unwrap_or(Duration::ZERO);
        self.timers[timer as usize] = Some(WorkerHost::now(self) + after);
    }
    fn timer_active(&self, timer: TimerId) -> bool {
        self.timers[timer as usize].is_some()
    }
    fn stop_timer(&mut self, timer: TimerId) {
        self.timers[timer as usize] = None;
    }
    fn submit(&mut self, task: TaskRef, wait: Duration) {
        let now = WorkerHost::now(self);
        if let Some(after) = self.slow_work.start(now, task, wait) {
            self.slow_timer = Some(now + after);
        }
    }
    fn stop(&mut self) {
        self.stopped = true;
    }
    fn listeners(&self) -> usize {
        usize::from(self.open)
    }
    fn accept(&mut self, _listener: usize) -> Option<io::Result<(HeldSock, Option<SlowTask>)>> {
        if !self.open {
            return None;
        }
        match self.queue.pop_front() {
            Some(id) => Some(Ok((
                HeldSock {
                    id,
                    world: Rc::clone(&self.world),
                },
                Some(SlowTask),
            ))),
            None => Some(Err(io::Error::from_raw_os_error(libc::EAGAIN))),
        }
    }
    fn watch_listeners(&mut self) {
        self.listening = true;
    }
    fn unwatch_listeners(&mut self) {
        self.listening = false;
    }
    fn close_listeners(&mut self) {
        self.listening = false;
        self.open = false;
    }
}

/// The engine as a worker loop hosts it (see the module doc).
fn worker_loop(data: &[u8]) {
    let world = Rc::new(RefCell::new(WorkerWorld::default()));
    let mut engine: Engine<Builtin, HeldSock, Watch> = Engine::named(
        Settings {
            id: 0,
            capacity: CAPACITY,
            read_timeout: Some(Duration::from_secs(1)),
            idle_timeout: None,
            shutdown_timeout: Duration::from_secs(5),
            counters: Arc::default(),
        },
        Arc::new(Builtin::new(Some(SLOW))),
        "worker",
    )
    .expect("a pool of 3");
    let mut h = WorkerHost {
        world: Rc::clone(&world),
        timers: [None; TimerId::ALL.len()],
        slow_timer: None,
        slow_work: SlowTimers::new(CAPACITY).expect("room for the timers"),
        queue: VecDeque::new(),
        open: true,
        listening: true,
        stopped: false,
    };
    let mut drained = false;
    // Takes what waits in the queue while the engine listens (the loop's settle).
    fn settle(engine: &mut Engine<Builtin, HeldSock, Watch>, h: &mut WorkerHost) {
        while h.listening && h.open && !h.queue.is_empty() {
            let before = h.queue.len();
            engine.on_listener(h, 0);
            if h.queue.len() == before {
                break;
            }
        }
    }
    // Time passes by `step`: every timer that falls due fires, in order.
    fn advance(engine: &mut Engine<Builtin, HeldSock, Watch>, h: &mut WorkerHost, step: Duration) {
        let end = WorkerHost::now(h) + step;
        loop {
            let next = h
                .timers
                .iter()
                .copied()
                .chain([h.slow_timer])
                .flatten()
                .filter(|&t| t <= end)
                .min();
            let Some(at) = next else { break };
            {
                let mut w = h.world.borrow_mut();
                w.now = w.now.max(at);
            }
            if h.slow_timer == Some(at) {
                h.slow_timer = None;
                loop {
                    match h.slow_work.next_due(WorkerHost::now(h)) {
                        Due::Ready(job) => engine.on_task_done(h, job.run()),
                        Due::Wait(after) => {
                            h.slow_timer = Some(WorkerHost::now(h) + after);
                            break;
                        }
                        Due::Empty => break,
                    }
                }
            } else if let Some(t) = TimerId::ALL
                .into_iter()
                .find(|&t| h.timers[t as usize] == Some(at))
            {
                h.timers[t as usize] = None;
                engine.on_timer(h, t);
            }
            settle(engine, h);
        }
        let mut w = h.world.borrow_mut();
        w.now = w.now.max(end);
    }
    let mut ops = data.iter().rev().copied();
    while let Some(op) = ops.next() {
        let arg = ops.next().unwrap_or(0) as usize;
        match op % 6 {
            0 | 1 if !drained => {
                let id = {
                    let mut w = world.borrow_mut();
                    let now = w.now;
                    w.held.push(Held {
                        handed_at: now,
                        ..Held::default()
                    });
                    w.watched.push(false);
                    w.slot_of.push(u32::MAX);
                    w.held.len() - 1
                };
                h.queue.push_back(id);
                settle(&mut engine, &mut h);
            }
            2 | 3 => {
                let n = world.borrow().held.len();
                if n == 0 {
                    continue;
                }
                let id = arg % n;
                let slot = {
                    let mut w = world.borrow_mut();
                    if op % 6 == 2 {
                        w.held[id].inbox.push_back(b'x');
                    } else {
                        w.held[id].eof = true;
                    }
                    if !w.watched[id] {
                        continue;
                    }
                    w.held[id].read_more = true;
                    w.slot_of[id]
                };
                engine.on_io(&mut h, slot, Interest::Read);
                settle(&mut engine, &mut h);
            }
            4 => advance(&mut engine, &mut h, Duration::from_millis(arg as u64 * 4)),
            5 if arg % 8 == 0 && !drained => {
                drained = true;
                engine.begin_drain(&mut h, Drain::Stop);
            }
            _ => {}
        }
    }
    // Long enough for every duration, deadline and drain bound.
    for _ in 0..4 {
        advance(&mut engine, &mut h, Duration::from_secs(10));
    }
    assert!(
        h.queue.is_empty() || !h.open,
        "connections left in the queue"
    );
    assert_eq!(
        engine.in_use(),
        0,
        "a slot still held after every timer fired"
    );
    let w = world.borrow();
    for (id, c) in w.held.iter().enumerate() {
        if h.queue.contains(&id) {
            continue;
        }
        assert_eq!(c.closes, 1, "connection {id} not closed once");
        if !c.read_more && !drained {
            assert_eq!(c.sent, RESPONSE, "connection {id} stayed but got no answer");
        }
    }
}
