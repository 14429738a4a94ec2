//! The connection engine: one loop's connections, from accept to release, with
//! no knowledge of libev.
//!
//! It holds the pool of [`ConnectionCtx`]s, the read deadline list, the pause
//! and drain rules and the counters, and carries out what each connection asks
//! for ([`Next`]). What it needs of its event loop is the small [`Host`] trait:
//! watch and unwatch a slot's fd, the loop's timers, the time, submitting a task
//! to the workers, stopping the loop and, if the loop has any, its listeners.
//! The accept threads host it on libev (`accept::AcceptTask`); the fuzz target
//! `conn` hosts it on a scripted loop over scripted sockets, and the unit tests
//! below on a recording one. Another kind of loop (a worker's own) can host it
//! the same way: nothing here is specific to accept threads but the optional
//! listeners.
//!
//! The fast path is eager: accept, read at once (the listener defers accept until
//! bytes are there), parse, send at once, close. A request that arrives whole never
//! touches the loop beyond the listener's readiness. Only incomplete requests, slow
//! requests and partial sends are registered with the loop.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::{ConnectionCtx, DropReason, Next, Socket, State};
use crate::deadline::{DeadlineList, Linked};
use crate::delegate::Waiting;
use crate::lifecycle::Drain;
use crate::metrics::{AcceptCounters, AcceptMetrics, PauseCause};
use crate::net;
use crate::pool::{Pool, SlotWatcher};
use crate::task::{Done, Route, TaskRef};
use crate::token::TimerId;
use crate::worker::SlowTask;
use crate::{debug, warn};

/// Most connections accepted per listener wake-up, so that one busy listener
/// cannot starve the connections and timers of its loop.
pub const ACCEPT_BATCH: usize = 128;
/// How long the listeners rest after EMFILE/ENFILE/ENOBUFS/ENOMEM, in seconds.
pub const BACKOFF: f64 = 0.25;

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
    /// Adds another loop's counters to these.
    pub fn add(&mut self, other: Stats) {
        self.served += other.served;
        self.dropped += other.dropped;
        self.timed_out += other.timed_out;
    }
}

/// What an engine is told at start-up.
#[derive(Debug)]
pub struct Settings {
    /// Index of this loop (accept thread 0 is the main thread); the owner of
    /// its slow tasks' completions.
    pub id: u32,
    /// Connections in this loop's pool.
    pub capacity: usize,
    /// Slow-request duration; `None` answers slow requests inline (`-w 0`).
    pub slow: Option<Duration>,
    /// Deadline from accept to the end of the request; `None` for none.
    pub read_timeout: Option<Duration>,
    /// Bound on the graceful drain.
    pub shutdown_timeout: Duration,
    /// This loop's counters (`--metrics`, and the server's `Stats`).
    pub counters: Arc<AcceptCounters>,
}

/// What a slot's watcher waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Interest {
    /// The fd becoming readable (or at EOF, or in error).
    Read,
    /// The fd becoming writable.
    Write,
}

/// What the engine needs of the event loop that hosts it.
///
/// Calls come from inside the engine's entry points only, on the loop's
/// thread; the host never calls back into the engine from them.
pub trait Host<S: Socket> {
    /// The per-slot watcher, kept in the pool slot next to its connection.
    type Watcher: SlotWatcher;

    /// The loop's cached time, in seconds on a monotonic clock.
    fn now(&self) -> f64;
    /// Makes `watcher` report `interest` on `fd` for `slot` (see
    /// [`Host::Watcher`]); a no-op if it already does.
    fn watch(&mut self, watcher: Pin<&Self::Watcher>, fd: RawFd, interest: Interest, slot: u32);
    /// Stops `watcher` (and forgets an event it has pending); a no-op if stopped.
    fn unwatch(&mut self, watcher: Pin<&Self::Watcher>);
    /// (Re)starts `timer` to fire once, `after` seconds from now.
    fn start_timer(&mut self, timer: TimerId, after: f64);
    /// Whether `timer` is armed.
    fn timer_active(&self, timer: TimerId) -> bool;
    /// Disarms `timer`; a no-op if it is not armed.
    fn stop_timer(&mut self, timer: TimerId);
    /// Hands a filled task to the workers.
    fn submit(&mut self, task: TaskRef);
    /// Makes the loop return once the current callbacks are done.
    fn stop(&mut self);

    /// How many listeners the loop has (none unless it accepts).
    fn listeners(&self) -> usize {
        0
    }
    /// Accepts one connection from listener `listener`; `None` if the loop has
    /// no such listener (or no longer: the drain closes them).
    fn accept(&mut self, _listener: usize) -> Option<io::Result<S>> {
        None
    }
    /// Starts watching every listener.
    fn watch_listeners(&mut self) {}
    /// Stops watching every listener.
    fn unwatch_listeners(&mut self) {}
    /// Closes every listener (the drain: new connections are refused).
    fn close_listeners(&mut self) {}
    /// Told after the engine closed the socket of `slot`'s connection, with the
    /// reason ([`Next::Finished`] or a [`Next::Drop`]): an observer's hook (the
    /// fuzz target checks each outcome); loops do nothing.
    fn closed(&mut self, _slot: u32, _how: Next) {}

    /// Whether a complete slow request leaves the loop with its connection
    /// (`--delegate socket|loop`) rather than as a task (the default).
    fn hands_off(&self) -> bool {
        false
    }
    /// Reserves room on the worker side for one connection; false when it is
    /// full, and the host then has [`Engine::retry_hand_offs`] called once room
    /// frees.
    fn reserve_hand_off(&mut self) -> bool {
        false
    }
    /// Gives `fd` (a complete slow request, no longer watched) to the room
    /// reserved by the last successful [`Host::reserve_hand_off`].
    fn hand_off(&mut self, _fd: S) {}
}

/// Why the listeners are not being watched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pause {
    No,
    /// Every slot is in use; resume when one frees.
    PoolFull,
    /// accept() ran out of a resource; resume when the back-off timer fires.
    Backoff,
}

/// One loop's connections (see the module doc).
pub struct Engine<S: Socket, W: SlotWatcher> {
    settings: Settings,
    pool: Pool<ConnectionCtx<S>, W>,
    deadlines: DeadlineList,
    pause: Pause,
    /// accept() is failing for lack of fds or memory: logged once until it works.
    exhausted: bool,
    draining: bool,
    metrics: AcceptMetrics,
    /// Complete slow requests waiting for room on the worker side
    /// (`--delegate socket|loop`).
    waiting: Waiting,
}

impl<S: Socket, W: SlotWatcher> std::fmt::Debug for Engine<S, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("id", &self.settings.id)
            .field("in_use", &self.pool.in_use())
            .field("pause", &self.pause)
            .field("exhausted", &self.exhausted)
            .field("draining", &self.draining)
            .finish_non_exhaustive()
    }
}

impl<S: Socket, W: SlotWatcher> Engine<S, W> {
    /// Reserves the pool (fails if its address space cannot be reserved).
    pub fn new(settings: Settings) -> io::Result<Self> {
        let pool = Pool::new(settings.capacity)?;
        Ok(Engine {
            pool,
            deadlines: DeadlineList::default(),
            pause: Pause::No,
            exhausted: false,
            draining: false,
            metrics: AcceptMetrics::new(Arc::clone(&settings.counters), settings.capacity),
            waiting: Waiting::new(settings.capacity),
            settings,
        })
    }

    /// This loop's index.
    pub fn id(&self) -> u32 {
        self.settings.id
    }

    /// Slots held: connections open, and slots waiting for a task to come back.
    pub fn in_use(&self) -> usize {
        self.pool.in_use()
    }

    /// Whether the drain has begun.
    pub fn is_draining(&self) -> bool {
        self.draining
    }

    /// Whether the loop has anything left to do: false once a drain found (or
    /// left) every slot free.
    pub fn needs_loop(&self) -> bool {
        !self.draining || self.pool.in_use() > 0
    }

    /// The counters so far.
    pub fn stats(&self) -> Stats {
        self.metrics.stats()
    }

    /// The connection in `slot` (for observers: tests and the fuzz target).
    pub fn connection(&self, slot: u32) -> &ConnectionCtx<S> {
        self.pool.get(slot)
    }

    /// Stops every slot's watcher with `unwatch` and closes every socket, so the
    /// loop can go (after it has returned: no host is needed).
    pub fn teardown(&mut self, mut unwatch: impl FnMut(Pin<&W>)) {
        for idx in self.pool.constructed() {
            unwatch(self.pool.watcher(idx));
            let task_out = self.pool.is_delegated(idx);
            let ctx = self.pool.get_mut(idx);
            if ctx.state() != State::Free {
                ctx.close(task_out);
            }
        }
    }

    /// A listener is readable: accepts up to [`ACCEPT_BATCH`] connections.
    pub fn on_listener(&mut self, host: &mut impl Host<S, Watcher = W>, listener: usize) {
        for _ in 0..ACCEPT_BATCH {
            if !self.accept_one(host, listener) {
                return;
            }
        }
    }

    /// Slot `slot`'s fd is ready: writable, or readable (which includes at EOF
    /// and in error).
    #[inline]
    pub fn on_io(&mut self, host: &mut impl Host<S, Watcher = W>, slot: u32, ready: Interest) {
        let slow_inline = self.settings.slow.is_none();
        let ctx = self.pool.get_mut(slot);
        let next = if ready == Interest::Write {
            ctx.on_writable()
        } else {
            ctx.on_readable(slow_inline)
        };
        self.apply(host, slot, next);
    }

    /// One of the loop's timers fired.
    pub fn on_timer(&mut self, host: &mut impl Host<S, Watcher = W>, timer: TimerId) {
        match timer {
            TimerId::Deadline => self.expire_deadlines(host),
            TimerId::Backoff => self.resume_accepting(host),
            TimerId::Drain => self.end_drain(host),
            TimerId::Linger => {}
        }
    }

    /// Accepts and serves one connection from `listener`; false when the
    /// listener should rest.
    #[inline]
    fn accept_one(&mut self, host: &mut impl Host<S, Watcher = W>, listener: usize) -> bool {
        if self.pool.is_full() {
            self.pause_for_full_pool(host);
            return false;
        }
        let Some(accepted) = host.accept(listener) else {
            return false;
        };
        match accepted {
            Ok(fd) => {
                if self.exhausted {
                    self.exhausted = false;
                    self.metrics.resumed(PauseCause::FdExhaustion);
                    warn!("accept-{}: accept works again", self.settings.id);
                }
                let idx = self.pool.acquire().expect("pool checked not full");
                self.metrics.accepted();
                let ctx = self.pool.get_mut(idx);
                ctx.open(fd);
                debug!(
                    "accept-{}: conn {idx}: accepted fd {}",
                    self.settings.id,
                    ctx.fd()
                );
                let next = ctx.on_readable(self.settings.slow.is_none());
                self.apply(host, idx, next);
                true
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => false,
                // The peer gave up while queued, or a signal: try the next one.
                Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EPROTO) => true,
                _ if net::is_resource_exhaustion(&e) => {
                    self.pause_for_backoff(host, &e);
                    false
                }
                _ => {
                    warn!("accept-{}: accept failed: {e}", self.settings.id);
                    self.pause_for_backoff(host, &e);
                    false
                }
            },
        }
    }

    fn pause_for_full_pool(&mut self, host: &mut impl Host<S, Watcher = W>) {
        if self.pause == Pause::No {
            host.unwatch_listeners();
            self.pause = Pause::PoolFull;
            self.metrics.paused(PauseCause::PoolFull);
            warn!(
                "accept-{}: all {} connections in use; not accepting until one closes",
                self.settings.id,
                self.pool.capacity()
            );
        }
    }

    fn pause_for_backoff(&mut self, host: &mut impl Host<S, Watcher = W>, err: &io::Error) {
        if !self.exhausted {
            self.exhausted = true;
            self.metrics.paused(PauseCause::FdExhaustion);
            warn!(
                "accept-{}: accept failed ({err}); pausing accept for {} ms",
                self.settings.id,
                (BACKOFF * 1000.0) as u64
            );
        }
        host.unwatch_listeners();
        self.pause = Pause::Backoff;
        host.start_timer(TimerId::Backoff, BACKOFF);
    }

    fn resume_accepting(&mut self, host: &mut impl Host<S, Watcher = W>) {
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
        host.watch_listeners();
    }

    /// Carries out what the connection in `idx` asked for.
    #[inline]
    fn apply(&mut self, host: &mut impl Host<S, Watcher = W>, idx: u32, next: Next) {
        match next {
            Next::Read => {
                self.arm_deadline(host, idx);
                self.watch(host, idx, Interest::Read);
            }
            Next::Write => {
                self.arm_deadline(host, idx);
                self.watch(host, idx, Interest::Write);
            }
            Next::Delegate => self.delegate(host, idx),
            Next::Finished => {
                self.metrics.responded(self.pool.get(idx).is_slow());
                debug!("accept-{}: conn {idx}: replied, closing", self.settings.id);
                self.close(host, idx, next);
            }
            Next::Drop(reason) => {
                self.metrics.dropped(reason);
                debug!(
                    "accept-{}: conn {idx}: closing without a reply",
                    self.settings.id
                );
                self.close(host, idx, next);
            }
        }
    }

    fn delegate(&mut self, host: &mut impl Host<S, Watcher = W>, idx: u32) {
        // The request is complete: no read deadline while the worker works.
        self.deadlines.remove(&mut self.pool, idx);
        if host.hands_off() {
            if host.reserve_hand_off() {
                self.hand_off(host, idx);
            } else {
                // No room: wait here, watched for the client leaving (rule 7).
                self.waiting.push(idx, self.pool.get(idx).gen(), |i, g| {
                    let ctx = self.pool.get(i);
                    ctx.state() == State::Delegated && ctx.gen() == g
                });
                self.watch(host, idx, Interest::Read);
            }
            return;
        }
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
        self.metrics.delegated(idx, host.now());
        host.submit(task);
        debug!(
            "accept-{}: conn {idx}: slow request delegated",
            self.settings.id
        );
        // Watch for the client leaving (or misbehaving) meanwhile.
        self.watch(host, idx, Interest::Read);
    }

    /// Moves the connection in `idx` to the room reserved on the worker side:
    /// stops its watcher before the fd can reach another thread, and frees the
    /// slot.
    fn hand_off(&mut self, host: &mut impl Host<S, Watcher = W>, idx: u32) {
        let (ctx, watcher) = self.pool.split(idx);
        host.unwatch(watcher);
        if let Some(fd) = ctx.hand_over() {
            host.hand_off(fd);
        }
        self.metrics.handed_off();
        debug!(
            "accept-{}: conn {idx}: slow request handed to a worker",
            self.settings.id
        );
        self.release(host, idx);
    }

    /// Room may have freed on the worker side: hands over the connections
    /// waiting for it, oldest first, while the host finds room.
    pub fn retry_hand_offs(&mut self, host: &mut impl Host<S, Watcher = W>) {
        while let Some((idx, gen)) = self.waiting.front() {
            let ctx = self.pool.get(idx);
            if ctx.state() != State::Delegated || ctx.gen() != gen {
                // Closed meanwhile (the client left, or the drain's timeout).
                self.waiting.pop();
                continue;
            }
            if !host.reserve_hand_off() {
                return;
            }
            self.waiting.pop();
            self.hand_off(host, idx);
        }
    }

    /// Starts the read deadline of `idx` unless it already runs (a deadline is
    /// total: trickled bytes do not extend it).
    fn arm_deadline(&mut self, host: &mut impl Host<S, Watcher = W>, idx: u32) {
        let Some(timeout) = self.settings.read_timeout else {
            return;
        };
        if self.pool.get(idx).links().is_linked() {
            return;
        }
        let after = timeout.as_secs_f64();
        self.deadlines
            .push_back(&mut self.pool, idx, host.now() + after);
        // An active timer is armed for an earlier deadline (the list is FIFO);
        // it re-arms itself for the head when it fires.
        if !host.timer_active(TimerId::Deadline) {
            host.start_timer(TimerId::Deadline, after);
        }
    }

    #[inline]
    fn watch(&mut self, host: &mut impl Host<S, Watcher = W>, idx: u32, interest: Interest) {
        let (ctx, watcher) = self.pool.split(idx);
        host.watch(watcher, ctx.fd(), interest, idx);
    }

    #[inline]
    fn close(&mut self, host: &mut impl Host<S, Watcher = W>, idx: u32, how: Next) {
        self.deadlines.remove(&mut self.pool, idx);
        let task_out = self.pool.is_delegated(idx);
        let (ctx, watcher) = self.pool.split(idx);
        host.unwatch(watcher);
        ctx.close(task_out);
        host.closed(idx, how);
        if !task_out {
            self.release(host, idx);
        }
    }

    #[inline]
    fn release(&mut self, host: &mut impl Host<S, Watcher = W>, idx: u32) {
        self.pool.release(idx);
        if self.pause == Pause::PoolFull {
            self.resume_accepting(host);
        }
        if self.draining && self.pool.in_use() == 0 {
            debug!("accept-{}: drained", self.settings.id);
            host.stop();
        }
    }

    /// A worker finished a task of this loop's (the loop drains its mailbox
    /// into here).
    pub fn on_task_done(&mut self, host: &mut impl Host<S, Watcher = W>, done: Done) {
        let Some(route) = self.pool.finish(done) else {
            return;
        };
        let (idx, gen) = (route.slot, route.gen);
        debug!("accept-{}: conn {idx}: slow task done", self.settings.id);
        self.metrics.task_back(idx, host.now());
        let ctx = self.pool.get_mut(idx);
        match ctx.state() {
            State::Delegated if ctx.gen() == gen => {
                let next = ctx.on_task_done();
                self.apply(host, idx, next);
            }
            State::Abandoned => {
                ctx.close(false);
                self.release(host, idx);
            }
            // Cannot happen while the slot is held for its task; harmless.
            _ => {}
        }
    }

    fn expire_deadlines(&mut self, host: &mut impl Host<S, Watcher = W>) {
        let now = host.now();
        while let Some((idx, deadline)) = self.deadlines.front(&self.pool) {
            if deadline > now {
                host.start_timer(TimerId::Deadline, deadline - now);
                return;
            }
            self.metrics.dropped(DropReason::TimedOut);
            debug!(
                "accept-{}: conn {idx}: read deadline passed",
                self.settings.id
            );
            self.close(host, idx, Next::Drop(DropReason::TimedOut));
        }
    }

    /// Graceful stop (see [`Drain`]): stop listening, and let connections finish
    /// within the shutdown timeout. On `Stop`, first take what is already in the
    /// backlog (closing the last socket would reset it) and close connections
    /// that have not completed a request; on `Handover` the backlog is the new
    /// process's, and every accepted connection is finished.
    pub fn begin_drain(&mut self, host: &mut impl Host<S, Watcher = W>, how: Drain) {
        if self.draining {
            return;
        }
        debug!("accept-{}: draining ({how:?})", self.settings.id);
        if how == Drain::Stop {
            self.pause = Pause::No;
            for i in 0..host.listeners() {
                while self.accept_one(host, i) {}
            }
        }
        self.draining = true;
        host.unwatch_listeners();
        host.stop_timer(TimerId::Backoff);
        host.close_listeners();
        self.metrics.listener_closed();
        for idx in self.pool.constructed() {
            if how == Drain::Stop && self.pool.get(idx).state() == State::Reading {
                self.metrics.dropped(DropReason::Shutdown);
                self.close(host, idx, Next::Drop(DropReason::Shutdown));
            }
        }
        if self.pool.in_use() == 0 {
            host.stop();
        } else {
            host.start_timer(TimerId::Drain, self.settings.shutdown_timeout.as_secs_f64());
        }
    }

    /// The drain took too long: close what is left and stop.
    fn end_drain(&mut self, host: &mut impl Host<S, Watcher = W>) {
        warn!(
            "accept-{}: shutdown timeout; closing {} connections",
            self.settings.id,
            self.pool.in_use()
        );
        for idx in self.pool.constructed() {
            let state = self.pool.get(idx).state();
            if state != State::Free && state != State::Abandoned {
                self.metrics.dropped(DropReason::Shutdown);
                self.close(host, idx, Next::Drop(DropReason::Shutdown));
            }
        }
        host.stop();
    }
}

#[cfg(test)]
mod tests {
    //! The engine's rules on a recording loop over scripted sockets: no socket,
    //! no libev, no clock.
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// The client's end of one scripted connection.
    #[derive(Default)]
    struct Peer {
        inbox: RefCell<VecDeque<u8>>,
        eof: Cell<bool>,
        sent: RefCell<Vec<u8>>,
        closed: Cell<bool>,
    }

    impl Peer {
        fn send(&self, bytes: &[u8]) {
            self.inbox.borrow_mut().extend(bytes);
        }
    }

    struct Sock(Rc<Peer>);

    impl Socket for Sock {
        fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            let mut inbox = self.0.inbox.borrow_mut();
            if inbox.is_empty() {
                return if self.0.eof.get() {
                    Ok(0)
                } else {
                    Err(io::Error::from_raw_os_error(libc::EAGAIN))
                };
            }
            let n = buf.len().min(inbox.len());
            for (b, x) in buf.iter_mut().zip(inbox.drain(..n)) {
                *b = x;
            }
            Ok(n)
        }
        fn send_final(&self, buf: &[u8]) -> io::Result<usize> {
            self.0.sent.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn raw_fd(&self) -> RawFd {
            3
        }
        fn close(self) {
            assert!(!self.0.closed.replace(true), "closed twice");
        }
    }

    /// A slot watcher: what it waits for, if anything.
    #[derive(Default)]
    struct Watch(Cell<Option<Interest>>);

    impl SlotWatcher for Watch {
        fn is_active(&self) -> bool {
            self.0.get().is_some()
        }
    }

    /// A loop that records what the engine asks of it.
    #[derive(Default)]
    struct Rec {
        now: f64,
        /// When each timer fires, if armed.
        timers: [Option<f64>; TimerId::ALL.len()],
        submitted: Vec<TaskRef>,
        stopped: bool,
        /// Connections (or errors) waiting in listener 0's backlog.
        backlog: VecDeque<io::Result<Sock>>,
        has_listener: bool,
        listening: bool,
        accepts: usize,
        closes: Vec<(u32, Next)>,
    }

    impl Host<Sock> for Rec {
        type Watcher = Watch;
        fn now(&self) -> f64 {
            self.now
        }
        fn watch(&mut self, w: Pin<&Watch>, _fd: RawFd, interest: Interest, _slot: u32) {
            w.0.set(Some(interest));
        }
        fn unwatch(&mut self, w: Pin<&Watch>) {
            w.0.set(None);
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
        fn submit(&mut self, task: TaskRef) {
            self.submitted.push(task);
        }
        fn stop(&mut self) {
            self.stopped = true;
        }
        fn listeners(&self) -> usize {
            usize::from(self.has_listener)
        }
        fn accept(&mut self, listener: usize) -> Option<io::Result<Sock>> {
            if listener > 0 || !self.has_listener {
                return None;
            }
            self.accepts += 1;
            Some(
                self.backlog
                    .pop_front()
                    .unwrap_or_else(|| Err(io::Error::from_raw_os_error(libc::EAGAIN))),
            )
        }
        fn watch_listeners(&mut self) {
            self.listening = true;
        }
        fn unwatch_listeners(&mut self) {
            self.listening = false;
        }
        fn close_listeners(&mut self) {
            self.listening = false;
            self.has_listener = false;
        }
        fn closed(&mut self, slot: u32, how: Next) {
            self.closes.push((slot, how));
        }
    }

    const FAST: &[u8] = b"GET /test/fast\r\n\r\n";
    const SLOW: &[u8] = b"GET /test/slow\r\n\r\n";
    const PARTIAL: &[u8] = b"GET /te";
    const GONE: Next = Next::Drop(DropReason::ClientGone);

    fn engine(capacity: usize, read_timeout: Option<f64>) -> (Engine<Sock, Watch>, Rec) {
        let e = Engine::new(Settings {
            id: 0,
            capacity,
            slow: Some(Duration::ZERO),
            read_timeout: read_timeout.map(Duration::from_secs_f64),
            shutdown_timeout: Duration::from_secs(5),
            counters: Arc::default(),
        })
        .unwrap();
        let host = Rec {
            has_listener: true,
            listening: true,
            ..Rec::default()
        };
        (e, host)
    }

    /// Queues a client that has sent `bytes`; returns its end.
    fn client(host: &mut Rec, bytes: &[u8]) -> Rc<Peer> {
        let peer = Rc::new(Peer::default());
        peer.send(bytes);
        host.backlog.push_back(Ok(Sock(Rc::clone(&peer))));
        peer
    }

    fn fire(e: &mut Engine<Sock, Watch>, host: &mut Rec, timer: TimerId) {
        let at = host.timers[timer as usize]
            .take()
            .unwrap_or_else(|| panic!("{timer:?} not armed"));
        host.now = host.now.max(at);
        e.on_timer(host, timer);
    }

    fn run_tasks(e: &mut Engine<Sock, Watch>, host: &mut Rec) {
        for task in std::mem::take(&mut host.submitted) {
            let done = task.run();
            e.on_task_done(host, done);
        }
    }

    #[test]
    fn a_whole_request_is_answered_and_released_without_the_loop() {
        let (mut e, mut host) = engine(4, Some(1.0));
        let peer = client(&mut host, FAST);
        e.on_listener(&mut host, 0);
        assert_eq!(&peer.sent.borrow()[..], crate::conn::RESPONSE);
        assert!(peer.closed.get());
        assert_eq!(host.closes, [(0, Next::Finished)]);
        assert_eq!(host.timers, [None; 4], "no timer for a whole request");
        assert_eq!(e.in_use(), 0);
        assert_eq!(host.accepts, 2, "accepts until EAGAIN");
        assert_eq!(e.stats().served, 1);
    }

    #[test]
    fn a_full_pool_pauses_the_listeners_once_and_a_free_slot_resumes_them() {
        let (mut e, mut host) = engine(2, Some(1.0));
        let _a = client(&mut host, PARTIAL);
        let b = client(&mut host, PARTIAL);
        let c = client(&mut host, FAST);
        e.on_listener(&mut host, 0);
        assert_eq!(e.in_use(), 2);
        assert!(!host.listening, "paused on a full pool");
        assert_eq!(
            host.accepts, 2,
            "no accept() while full: c waits in the backlog"
        );
        // A spurious wake-up while paused neither accepts nor pauses again.
        e.on_listener(&mut host, 0);
        assert_eq!(host.accepts, 2);
        // b completes its request: its slot frees and accepting resumes.
        b.send(b"st/fast\r\n\r\n");
        e.on_io(&mut host, 1, Interest::Read);
        assert!(host.listening, "resumed once a slot freed");
        e.on_listener(&mut host, 0);
        assert_eq!(&c.sent.borrow()[..], crate::conn::RESPONSE);
    }

    #[test]
    fn fd_exhaustion_rests_the_listeners_until_the_back_off_timer() {
        let (mut e, mut host) = engine(4, None);
        host.backlog
            .push_back(Err(io::Error::from_raw_os_error(libc::EMFILE)));
        e.on_listener(&mut host, 0);
        assert!(!host.listening);
        assert_eq!(host.timers[TimerId::Backoff as usize], Some(BACKOFF));
        fire(&mut e, &mut host, TimerId::Backoff);
        assert!(host.listening, "listening again after the back-off");
        let peer = client(&mut host, FAST);
        e.on_listener(&mut host, 0);
        assert!(peer.closed.get());
        assert_eq!(host.closes, [(0, Next::Finished)]);
    }

    #[test]
    fn the_read_deadline_is_total_fifo_and_one_timer() {
        let (mut e, mut host) = engine(4, Some(2.0));
        let a = client(&mut host, PARTIAL);
        e.on_listener(&mut host, 0);
        assert_eq!(host.timers[TimerId::Deadline as usize], Some(2.0));
        host.now = 1.0;
        let b = client(&mut host, PARTIAL);
        e.on_listener(&mut host, 0);
        // One timer, armed for the earliest deadline.
        assert_eq!(host.timers[TimerId::Deadline as usize], Some(2.0));
        // Trickled bytes do not extend a's deadline.
        host.now = 1.5;
        a.send(b"s");
        e.on_io(&mut host, 0, Interest::Read);
        fire(&mut e, &mut host, TimerId::Deadline);
        assert!(a.closed.get() && !b.closed.get());
        assert_eq!(host.closes, [(0, Next::Drop(DropReason::TimedOut))]);
        // Re-armed for b's deadline, 1 s after a's.
        assert_eq!(host.timers[TimerId::Deadline as usize], Some(3.0));
        // b finishes in time: no deadline left, the next firing finds nothing.
        b.send(b"st/fast\r\n\r\n");
        e.on_io(&mut host, 1, Interest::Read);
        fire(&mut e, &mut host, TimerId::Deadline);
        assert_eq!(host.closes.len(), 2);
        assert_eq!(host.timers[TimerId::Deadline as usize], None);
        assert_eq!(e.stats().timed_out, 1);
    }

    #[test]
    fn a_slow_request_is_answered_when_its_task_comes_back() {
        let (mut e, mut host) = engine(4, Some(1.0));
        let peer = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        assert_eq!(host.submitted.len(), 1);
        assert_eq!(host.timers[TimerId::Deadline as usize], None);
        assert!(peer.sent.borrow().is_empty());
        run_tasks(&mut e, &mut host);
        assert_eq!(&peer.sent.borrow()[..], crate::conn::RESPONSE);
        assert_eq!(host.closes, [(0, Next::Finished)]);
        assert_eq!(e.in_use(), 0);
    }

    #[test]
    fn a_client_gone_during_its_task_holds_the_slot_until_the_task_is_back() {
        let (mut e, mut host) = engine(4, None);
        let peer = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        peer.eof.set(true);
        e.on_io(&mut host, 0, Interest::Read);
        assert!(peer.closed.get());
        assert_eq!(host.closes, [(0, GONE)]);
        assert_eq!(e.in_use(), 1, "the worker still has the task");
        run_tasks(&mut e, &mut host);
        assert_eq!(e.in_use(), 0);
        assert!(peer.sent.borrow().is_empty());
    }

    #[test]
    fn a_stop_drain_takes_the_backlog_closes_incomplete_and_finishes_the_rest() {
        let (mut e, mut host) = engine(4, None);
        let slow = client(&mut host, SLOW);
        let partial = client(&mut host, PARTIAL);
        e.on_listener(&mut host, 0);
        let queued = client(&mut host, FAST);
        e.begin_drain(&mut host, Drain::Stop);
        assert_eq!(
            &queued.sent.borrow()[..],
            crate::conn::RESPONSE,
            "backlog served"
        );
        assert!(partial.closed.get() && partial.sent.borrow().is_empty());
        assert!(!host.has_listener && !host.listening, "listeners closed");
        assert!(!slow.closed.get());
        assert!(!host.stopped, "the slow request is still out");
        assert!(host.timers[TimerId::Drain as usize].is_some());
        run_tasks(&mut e, &mut host);
        assert_eq!(&slow.sent.borrow()[..], crate::conn::RESPONSE);
        assert!(host.stopped, "stopped when the last slot freed");
        assert!(!e.needs_loop());
    }

    #[test]
    fn a_handover_drain_leaves_the_backlog_and_finishes_incomplete_requests() {
        let (mut e, mut host) = engine(4, None);
        let partial = client(&mut host, PARTIAL);
        e.on_listener(&mut host, 0);
        let accepts = host.accepts;
        client(&mut host, FAST);
        e.begin_drain(&mut host, Drain::Handover);
        assert_eq!(host.accepts, accepts, "the backlog is the new process's");
        assert!(!partial.closed.get());
        partial.send(b"st/fast\r\n\r\n");
        e.on_io(&mut host, 0, Interest::Read);
        assert_eq!(&partial.sent.borrow()[..], crate::conn::RESPONSE);
        assert!(host.stopped);
    }

    #[test]
    fn the_drain_timeout_closes_what_is_left_and_stops() {
        let (mut e, mut host) = engine(4, None);
        let partial = client(&mut host, PARTIAL);
        let slow = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        e.begin_drain(&mut host, Drain::Handover);
        fire(&mut e, &mut host, TimerId::Drain);
        assert!(partial.closed.get() && slow.closed.get());
        assert!(host.stopped);
        let shutdown = Next::Drop(DropReason::Shutdown);
        assert_eq!(host.closes, [(0, shutdown), (1, shutdown)]);
        // The slow task still comes back to its (abandoned) slot safely.
        run_tasks(&mut e, &mut host);
        assert_eq!(e.in_use(), 0);
    }

    #[test]
    fn a_drain_with_nothing_open_stops_at_once() {
        let (mut e, mut host) = engine(4, None);
        e.begin_drain(&mut host, Drain::Stop);
        assert!(host.stopped && !e.needs_loop());
        assert_eq!(host.timers[TimerId::Drain as usize], None);
    }
}
