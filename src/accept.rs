//! `AcceptTask`: one accept thread's listener, loop, pool and timers, as in the
//! C++ original, plus what the reference lacks: a read deadline, pausing on a full
//! pool or on fd exhaustion, and a graceful drain.
//!
//! The fast path is eager: accept, read at once (the listener defers accept until
//! bytes are there), parse, send at once, close. A request that arrives whole never
//! touches epoll beyond the listener's readiness. Only incomplete requests, slow
//! requests and partial sends are registered with the loop.
#![forbid(unsafe_code)]

use std::os::fd::{AsFd, AsRawFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use socket2::Socket;

use crate::conn::{ConnectionCtx, DropReason, Next, State};
use crate::deadline::{DeadlineList, Linked};
use crate::ev::{Async, Events, Handler, Io, Loop, Timer};
use crate::lifecycle::{Drain, Shutdown};
use crate::metrics::{AcceptCounters, AcceptMetrics, PauseCause};
use crate::net;
use crate::pool::Pool;
use crate::task::Route;
use crate::worker::{Shared, SlowTask};
use crate::{debug, warn};

/// Listener `i`'s token is `usize::MAX - i`: far above any slot index.
const LISTENER_TOKENS: usize = u32::MAX as usize;
const DEADLINE_TIMER: usize = 0;
const BACKOFF_TIMER: usize = 1;
const DRAIN_TIMER: usize = 2;
const WAKE: usize = 0;

/// Most connections accepted per listener wake-up, so that one busy listener
/// cannot starve the connections and timers of its loop.
const ACCEPT_BATCH: usize = 128;
/// How long the listener rests after EMFILE/ENFILE/ENOBUFS/ENOMEM.
const BACKOFF: Duration = Duration::from_millis(250);

/// What an accept thread is told at start-up.
pub struct Settings {
    /// Index of this accept thread (0 is the main thread).
    pub id: u32,
    /// Connections in this thread's pool.
    pub capacity: usize,
    /// Slow-request duration; `None` answers slow requests inline (`-w 0`).
    pub slow: Option<Duration>,
    /// Deadline from accept to the end of the request; `None` for none.
    pub read_timeout: Option<Duration>,
    /// Bound on the graceful drain.
    pub shutdown_timeout: Duration,
    /// This thread's counters (`--metrics`, and the [`Stats`]).
    pub counters: Arc<AcceptCounters>,
}

/// Why the listener is not being watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pause {
    No,
    /// Every slot is in use; resume when one frees.
    PoolFull,
    /// accept() ran out of a resource; resume when the back-off timer fires.
    Backoff,
}

/// Counters for the log and the tests.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Responses sent whole.
    pub served: u64,
    /// Connections closed without a response (bad input, client gone, errors).
    pub dropped: u64,
    /// Connections closed by the read deadline.
    pub timed_out: u64,
}

impl Stats {
    /// Adds another thread's counters to these.
    pub fn add(&mut self, other: Stats) {
        self.served += other.served;
        self.dropped += other.dropped;
        self.timed_out += other.timed_out;
    }
}

/// A listening socket and its watcher.
struct Listener {
    sock: Socket,
    io: Pin<Box<Io>>,
}

/// One accept thread (the C++ `AcceptTask`).
pub struct AcceptTask {
    settings: Settings,
    /// One per listen address (more after an upgrade to fewer threads); empty
    /// once the drain has closed them.
    listeners: Vec<Listener>,
    deadline_timer: Pin<Box<Timer>>,
    backoff_timer: Pin<Box<Timer>>,
    drain_timer: Pin<Box<Timer>>,
    wake: Pin<Box<Async>>,
    pool: Pool<ConnectionCtx>,
    deadlines: DeadlineList,
    shared: Arc<Shared>,
    shutdown: Arc<Shutdown>,
    pause: Pause,
    /// accept() is failing for lack of fds or memory: logged once until it works.
    exhausted: bool,
    draining: bool,
    metrics: AcceptMetrics,
}

impl AcceptTask {
    /// Sets up the thread's pool and watchers on `lp` (not yet running).
    pub fn new(
        lp: &Loop<Self>,
        settings: Settings,
        listeners: Vec<Socket>,
        shared: Arc<Shared>,
        shutdown: Arc<Shutdown>,
    ) -> std::io::Result<Self> {
        let pool = Pool::new(settings.capacity)?;
        let listeners = listeners
            .into_iter()
            .enumerate()
            .map(|(i, sock)| {
                let io = Box::pin(Io::new());
                io.set_fd(sock.as_raw_fd(), Events::READ, usize::MAX - i);
                Listener { sock, io }
            })
            .collect();
        let task = AcceptTask {
            listeners,
            deadline_timer: Box::pin(Timer::new()),
            backoff_timer: Box::pin(Timer::new()),
            drain_timer: Box::pin(Timer::new()),
            wake: Box::pin(Async::new()),
            pool,
            deadlines: DeadlineList::default(),
            shared,
            shutdown,
            pause: Pause::No,
            exhausted: false,
            draining: false,
            metrics: AcceptMetrics::new(Arc::clone(&settings.counters), settings.capacity),
            settings,
        };
        task.wake.as_ref().start(lp, WAKE);
        task.shared
            .mailbox(task.settings.id)
            .connect(task.wake.as_ref().sender());
        task.start_listeners(lp);
        Ok(task)
    }

    /// Runs the loop until the graceful drain is over.
    pub fn run(&mut self, lp: &Loop<Self>) {
        // A shutdown requested before our wake-up was connected would be missed.
        if let Some(how) = self.shutdown.requested() {
            self.begin_drain(lp, how);
        }
        if !self.draining || self.pool.in_use() > 0 {
            lp.run(self);
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.metrics.stats()
    }

    /// Stops every watcher and closes every socket, so the loop can be dropped.
    pub fn teardown(&mut self) {
        for idx in self.pool.constructed() {
            self.pool.io(idx).stop();
            let task_out = self.pool.is_delegated(idx);
            let ctx = self.pool.get_mut(idx);
            if ctx.state() != State::Free {
                ctx.close(task_out);
            }
        }
        self.stop_listeners();
        self.deadline_timer.stop();
        self.backoff_timer.stop();
        self.drain_timer.stop();
        self.wake.stop();
        self.listeners.clear();
    }

    fn start_listeners(&self, lp: &Loop<Self>) {
        for l in &self.listeners {
            l.io.as_ref().start(lp);
        }
    }

    fn stop_listeners(&self) {
        for l in &self.listeners {
            l.io.stop();
        }
    }

    fn accept_ready(&mut self, lp: &Loop<Self>, listener: usize) {
        for _ in 0..ACCEPT_BATCH {
            if !self.accept_one(lp, listener) {
                return;
            }
        }
    }

    /// Accepts and serves one connection from `listener`; false when the
    /// listener should rest.
    fn accept_one(&mut self, lp: &Loop<Self>, listener: usize) -> bool {
        if self.pool.is_full() {
            self.pause_for_full_pool();
            return false;
        }
        let Some(listener) = self.listeners.get(listener) else {
            return false;
        };
        match net::accept(listener.sock.as_fd()) {
            Ok(fd) => {
                if self.exhausted {
                    self.exhausted = false;
                    self.metrics.resumed(PauseCause::FdExhaustion);
                    warn!("accept-{}: accept works again", self.settings.id);
                }
                let idx = self.pool.acquire().expect("pool checked not full");
                self.metrics.accepted();
                let (ctx, _) = self.pool.split(idx);
                ctx.open(fd);
                debug!(
                    "accept-{}: conn {idx}: accepted fd {}",
                    self.settings.id,
                    ctx.fd()
                );
                let next = ctx.on_readable(self.settings.slow.is_none());
                self.apply(lp, idx, next);
                true
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => false,
                // The peer gave up while queued, or a signal: try the next one.
                Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EPROTO) => true,
                _ if net::is_resource_exhaustion(&e) => {
                    self.pause_for_backoff(lp, &e);
                    false
                }
                _ => {
                    warn!("accept-{}: accept failed: {e}", self.settings.id);
                    self.pause_for_backoff(lp, &e);
                    false
                }
            },
        }
    }

    fn pause_for_full_pool(&mut self) {
        if self.pause == Pause::No {
            self.stop_listeners();
            self.pause = Pause::PoolFull;
            self.metrics.paused(PauseCause::PoolFull);
            warn!(
                "accept-{}: all {} connections in use; not accepting until one closes",
                self.settings.id,
                self.pool.capacity()
            );
        }
    }

    fn pause_for_backoff(&mut self, lp: &Loop<Self>, err: &std::io::Error) {
        if !self.exhausted {
            self.exhausted = true;
            self.metrics.paused(PauseCause::FdExhaustion);
            warn!(
                "accept-{}: accept failed ({err}); pausing accept for {} ms",
                self.settings.id,
                BACKOFF.as_millis()
            );
        }
        self.stop_listeners();
        self.pause = Pause::Backoff;
        self.backoff_timer
            .as_ref()
            .start_once(lp, BACKOFF, BACKOFF_TIMER);
    }

    fn resume_accepting(&mut self, lp: &Loop<Self>) {
        if self.pause == Pause::No || self.draining {
            return;
        }
        if self.pause == Pause::PoolFull {
            self.metrics.resumed(PauseCause::PoolFull);
            warn!(
                "accept-{}: a connection closed; accepting again",
                self.settings.id
            );
        }
        self.pause = Pause::No;
        self.start_listeners(lp);
    }

    /// Carries out what the connection in `idx` asked for.
    fn apply(&mut self, lp: &Loop<Self>, idx: u32, next: Next) {
        match next {
            Next::Read => {
                self.arm_deadline(lp, idx);
                self.watch(lp, idx, Events::READ);
            }
            Next::Write => {
                self.arm_deadline(lp, idx);
                self.watch(lp, idx, Events::WRITE);
            }
            Next::Delegate => {
                // The request is complete: no read deadline while the worker works.
                self.deadlines.remove(&mut self.pool, idx);
                let Some(duration) = self.settings.slow else {
                    unreachable!("slow requests are answered inline without workers")
                };
                let route = Route {
                    owner: self.settings.id,
                    slot: idx,
                    gen: self.pool.get(idx).gen(),
                };
                let task = self
                    .pool
                    .delegate(idx, SlowTask { duration }, route)
                    .expect("a reading connection has no task out");
                self.metrics.delegated(idx, lp.now().as_secs_f64());
                self.shared.submit(task);
                debug!(
                    "accept-{}: conn {idx}: slow request delegated",
                    self.settings.id
                );
                // Watch for the client leaving (or misbehaving) meanwhile.
                self.watch(lp, idx, Events::READ);
            }
            Next::Finished => {
                self.metrics.responded(self.pool.get(idx).is_slow());
                debug!("accept-{}: conn {idx}: replied, closing", self.settings.id);
                self.close(lp, idx);
            }
            Next::Drop(reason) => {
                self.metrics.dropped(reason);
                debug!(
                    "accept-{}: conn {idx}: closing without a reply",
                    self.settings.id
                );
                self.close(lp, idx);
            }
        }
    }

    /// Starts the read deadline of `idx` unless it already runs (a deadline is
    /// total: trickled bytes do not extend it).
    fn arm_deadline(&mut self, lp: &Loop<Self>, idx: u32) {
        let Some(timeout) = self.settings.read_timeout else {
            return;
        };
        if self.pool.get(idx).links().is_linked() {
            return;
        }
        let deadline = (lp.now() + timeout).as_secs_f64();
        self.deadlines.push_back(&mut self.pool, idx, deadline);
        // An active timer is armed for an earlier deadline (the list is FIFO);
        // it re-arms itself for the head when it fires.
        if !self.deadline_timer.is_active() {
            self.deadline_timer
                .as_ref()
                .start_once(lp, timeout, DEADLINE_TIMER);
        }
    }

    fn watch(&mut self, lp: &Loop<Self>, idx: u32, events: Events) {
        let (ctx, io) = self.pool.split(idx);
        if !io.is_active() || io.events() != events || io.fd() != ctx.fd() {
            io.set_fd(ctx.fd(), events, idx as usize);
            io.start(lp);
        }
    }

    fn close(&mut self, lp: &Loop<Self>, idx: u32) {
        self.deadlines.remove(&mut self.pool, idx);
        let task_out = self.pool.is_delegated(idx);
        let (ctx, io) = self.pool.split(idx);
        io.stop();
        ctx.close(task_out);
        if !task_out {
            self.release(lp, idx);
        }
    }

    fn release(&mut self, lp: &Loop<Self>, idx: u32) {
        self.pool.release(idx);
        if self.pause == Pause::PoolFull {
            self.resume_accepting(lp);
        }
        if self.draining && self.pool.in_use() == 0 {
            debug!("accept-{}: drained", self.settings.id);
            lp.break_all();
        }
    }

    /// Finished tasks from the workers: the async callback drains the mailbox,
    /// since several sends coalesce into one callback.
    fn take_completions(&mut self, lp: &Loop<Self>) {
        let shared = Arc::clone(&self.shared);
        let mailbox = shared.mailbox(self.settings.id);
        while let Some(done) = mailbox.take() {
            let Some(route) = self.pool.finish(done) else {
                continue;
            };
            let (idx, gen) = (route.slot, route.gen);
            debug!("accept-{}: conn {idx}: slow task done", self.settings.id);
            self.metrics.task_back(idx, lp.now().as_secs_f64());
            let ctx = self.pool.get_mut(idx);
            match ctx.state() {
                State::Delegated if ctx.gen() == gen => {
                    let next = ctx.on_task_done();
                    self.apply(lp, idx, next);
                }
                State::Abandoned => {
                    ctx.close(false);
                    self.release(lp, idx);
                }
                // Cannot happen while the slot is held for its task; harmless.
                _ => {}
            }
        }
    }

    fn expire_deadlines(&mut self, lp: &Loop<Self>) {
        let now = lp.now().as_secs_f64();
        while let Some((idx, deadline)) = self.deadlines.front(&self.pool) {
            if deadline > now {
                self.deadline_timer.as_ref().start_once(
                    lp,
                    Duration::from_secs_f64(deadline - now),
                    DEADLINE_TIMER,
                );
                return;
            }
            self.metrics.dropped(DropReason::TimedOut);
            debug!(
                "accept-{}: conn {idx}: read deadline passed",
                self.settings.id
            );
            self.close(lp, idx);
        }
    }

    /// Graceful stop (see [`Drain`]): stop listening, and let connections finish
    /// within the shutdown timeout. On `Stop`, first take what is already in the
    /// backlog (closing the last socket would reset it) and close connections
    /// that have not completed a request; on `Handover` the backlog is the new
    /// process's, and every accepted connection is finished.
    fn begin_drain(&mut self, lp: &Loop<Self>, how: Drain) {
        if self.draining {
            return;
        }
        debug!("accept-{}: draining ({how:?})", self.settings.id);
        if how == Drain::Stop {
            self.pause = Pause::No;
            for i in 0..self.listeners.len() {
                while self.accept_one(lp, i) {}
            }
        }
        self.draining = true;
        self.stop_listeners();
        self.backoff_timer.stop();
        self.listeners.clear();
        self.metrics.listener_closed();
        for idx in self.pool.constructed() {
            if how == Drain::Stop && self.pool.get(idx).state() == State::Reading {
                self.metrics.dropped(DropReason::Shutdown);
                self.close(lp, idx);
            }
        }
        if self.pool.in_use() == 0 {
            lp.break_all();
        } else {
            self.drain_timer
                .as_ref()
                .start_once(lp, self.settings.shutdown_timeout, DRAIN_TIMER);
        }
    }

    /// The drain took too long: close what is left and stop.
    fn end_drain(&mut self, lp: &Loop<Self>) {
        warn!(
            "accept-{}: shutdown timeout; closing {} connections",
            self.settings.id,
            self.pool.in_use()
        );
        for idx in self.pool.constructed() {
            let state = self.pool.get(idx).state();
            if state != State::Free && state != State::Abandoned {
                self.metrics.dropped(DropReason::Shutdown);
                self.close(lp, idx);
            }
        }
        lp.break_all();
    }
}

impl Handler for AcceptTask {
    fn on_io(&mut self, lp: &Loop<Self>, token: usize, events: Events) {
        crate::log::maybe_inject_panic();
        if token > LISTENER_TOKENS {
            self.accept_ready(lp, usize::MAX - token);
            return;
        }
        let idx = token as u32;
        let slow_inline = self.settings.slow.is_none();
        let ctx = self.pool.get_mut(idx);
        let next = if events.is_writable() {
            ctx.on_writable()
        } else {
            ctx.on_readable(slow_inline)
        };
        self.apply(lp, idx, next);
    }

    fn on_timer(&mut self, lp: &Loop<Self>, token: usize) {
        match token {
            DEADLINE_TIMER => self.expire_deadlines(lp),
            BACKOFF_TIMER => self.resume_accepting(lp),
            DRAIN_TIMER => self.end_drain(lp),
            _ => {}
        }
    }

    fn on_async(&mut self, lp: &Loop<Self>, _token: usize) {
        self.take_completions(lp);
        if let Some(how) = self.shutdown.requested() {
            self.begin_drain(lp, how);
        }
    }
}
