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
//! the same way ([`Engine::named`] for its log lines): nothing here is specific
//! to accept threads but the optional listeners.
//!
//! The fast path is eager: accept, read at once (the listener defers accept until
//! bytes are there), parse, send at once, close. A request that arrives whole never
//! touches the loop beyond the listener's readiness. Only incomplete requests, slow
//! requests and partial sends are registered with the loop.
#![forbid(unsafe_code)]

pub mod conn;
pub(crate) mod deadline;
mod waiting;

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::conn::{ConnectionCtx, DropReason, Next, Release, SlowRequests, Socket, State};
use crate::engine::deadline::{DeadlineList, Linked};
use crate::metrics::{AcceptCounters, AcceptMetrics, PauseCause};
use crate::net;
use crate::pool::{Pool, SlotWatcher};
use crate::proto::SlowTask;
use crate::shutdown::Drain;
use crate::task::{Cancel, Done, Filled, Route, TaskRef};
use crate::token::TimerId;
use crate::{debug, warn};
use waiting::Waiting;

/// Most connections accepted per listener wake-up, so that one busy listener
/// cannot starve the connections and timers of its loop.
pub const ACCEPT_BATCH: usize = 128;
/// How long the listeners rest after EMFILE/ENFILE/ENOBUFS/ENOMEM, in seconds.
pub const BACKOFF: f64 = 0.25;
/// Bound on a lingering close (see [`State::Lingering`]), in seconds: a client
/// that neither reads its EOF nor closes is then closed on.
pub const LINGER: f64 = 2.0;

pub use crate::metrics::Stats;

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

/// What one accept attempt did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Accepted {
    /// A connection, in this slot (it may already be closed again).
    Conn(u32),
    /// Nothing, but the next attempt may succeed.
    Retry,
    /// The listener should rest: empty, paused, or closed.
    Rest,
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

/// How a loop names itself in the log: `accept-3`.
#[derive(Clone, Copy, Debug)]
struct Name {
    role: &'static str,
    id: u32,
}

impl std::fmt::Display for Name {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.role, self.id)
    }
}

/// One loop's connections (see the module doc).
pub struct Engine<S: Socket, W: SlotWatcher> {
    settings: Settings,
    name: Name,
    /// From `settings.slow`, for each connection.
    slow: SlowRequests,
    pool: Pool<ConnectionCtx<S>, W>,
    /// Read deadlines, of connections that are reading or writing.
    deadlines: DeadlineList,
    /// Ends of the lingering closes, of connections that linger (a slot is in
    /// one list at most: its links are shared).
    lingering: DeadlineList,
    pause: Pause,
    /// accept() is failing for lack of fds or memory: logged once until it works.
    exhausted: bool,
    phase: Phase,
    metrics: AcceptMetrics,
    /// Complete slow requests waiting for room on the worker side
    /// (`--delegate socket|loop`).
    waiting: Waiting,
}

/// Where the loop is on its way to stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// Inside `begin_drain`: slots free and fill again, and neither may resume
    /// the listeners nor stop the loop.
    Beginning,
    /// The listeners are closed; the loop stops once every slot is free.
    Draining,
}

impl<S: Socket, W: SlotWatcher> std::fmt::Debug for Engine<S, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.name)
            .field("in_use", &self.pool.in_use())
            .field("pause", &self.pause)
            .field("exhausted", &self.exhausted)
            .field("phase", &self.phase)
            .finish_non_exhaustive()
    }
}

impl<S: Socket, W: SlotWatcher> Engine<S, W> {
    /// Reserves the pool (fails if its address space cannot be reserved), for
    /// an accept thread's loop.
    pub fn new(settings: Settings) -> io::Result<Self> {
        Self::named(settings, "accept")
    }

    /// As [`Engine::new`], for a loop whose log lines say `role-ID` (a worker's
    /// own loop, say).
    pub fn named(settings: Settings, role: &'static str) -> io::Result<Self> {
        let pool = Pool::new(settings.capacity)?;
        Ok(Engine {
            name: Name {
                role,
                id: settings.id,
            },
            slow: match settings.slow {
                Some(_) => SlowRequests::Delegate,
                None => SlowRequests::Inline,
            },
            pool,
            deadlines: DeadlineList::default(),
            lingering: DeadlineList::default(),
            pause: Pause::No,
            exhausted: false,
            phase: Phase::Serving,
            metrics: AcceptMetrics::new(Arc::clone(&settings.counters), settings.capacity),
            waiting: Waiting::new(settings.capacity)?,
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
        self.phase != Phase::Serving
    }

    /// Whether the loop has anything left to do: false once a drain found (or
    /// left) every slot free.
    pub fn needs_loop(&self) -> bool {
        self.phase == Phase::Serving || self.pool.in_use() > 0
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
            let release = if self.pool.is_delegated(idx) {
                Release::AfterTask
            } else {
                Release::Now
            };
            let ctx = self.pool.get_mut(idx);
            if ctx.state() != State::Free {
                ctx.close(release);
            }
        }
    }

    /// A listener is readable: accepts up to [`ACCEPT_BATCH`] connections.
    pub fn on_listener(&mut self, host: &mut impl Host<S, Watcher = W>, listener: usize) {
        for _ in 0..ACCEPT_BATCH {
            if self.accept_one(host, listener) == Accepted::Rest {
                return;
            }
        }
    }

    /// Slot `slot`'s fd is ready: writable, or readable (which includes at EOF
    /// and in error).
    #[inline(always)]
    pub fn on_io(&mut self, host: &mut impl Host<S, Watcher = W>, slot: u32, ready: Interest) {
        let ctx = self.pool.get_mut(slot);
        let next = if ready == Interest::Write {
            ctx.on_writable()
        } else {
            ctx.on_readable()
        };
        self.apply(host, slot, next);
    }

    /// One of the loop's timers fired.
    pub fn on_timer(&mut self, host: &mut impl Host<S, Watcher = W>, timer: TimerId) {
        match timer {
            TimerId::Deadline => self.expire_deadlines(host),
            TimerId::Backoff => {
                self.resume_accepting(host);
                // Try at once: on an idle server no connection would come to
                // tell whether the fds are back (and end the pause's gauge).
                for i in 0..host.listeners() {
                    if self.pause == Pause::No {
                        self.on_listener(host, i);
                    }
                }
            }
            TimerId::Drain => self.end_drain(host),
            TimerId::Linger => self.expire_lingering(host),
        }
    }

    /// Accepts and serves one connection from `listener`.
    #[inline(always)]
    fn accept_one(&mut self, host: &mut impl Host<S, Watcher = W>, listener: usize) -> Accepted {
        if self.pool.is_full() {
            self.pause_for_full_pool(host);
            return Accepted::Rest;
        }
        let Some(accepted) = host.accept(listener) else {
            return Accepted::Rest;
        };
        match accepted {
            Ok(fd) => {
                self.accept_works();
                let idx = self.pool.acquire().expect("pool checked not full");
                self.metrics.accepted();
                let ctx = self.pool.get_mut(idx);
                ctx.open(fd, self.slow);
                debug!("{}: conn {idx}: accepted fd {}", self.name, ctx.fd());
                let next = ctx.on_readable();
                self.apply(host, idx, next);
                Accepted::Conn(idx)
            }
            Err(e) => match e.raw_os_error() {
                Some(libc::EAGAIN) => {
                    // accept() takes an fd before it looks at the queue: an
                    // empty queue says the fds are back too.
                    self.accept_works();
                    Accepted::Rest
                }
                // The peer gave up while queued, or a signal: try the next one.
                Some(libc::ECONNABORTED) | Some(libc::EINTR) | Some(libc::EPROTO) => {
                    Accepted::Retry
                }
                _ if net::is_resource_exhaustion(&e) => {
                    self.pause_for_backoff(host, &e);
                    Accepted::Rest
                }
                _ => {
                    warn!("{}: accept failed: {e}", self.name);
                    self.pause_for_backoff(host, &e);
                    Accepted::Rest
                }
            },
        }
    }

    /// accept() got past taking an fd: the end of an exhaustion, if any.
    #[inline]
    fn accept_works(&mut self) {
        if self.exhausted {
            self.end_exhaustion();
        }
    }

    #[cold]
    fn end_exhaustion(&mut self) {
        self.exhausted = false;
        self.metrics.resumed(PauseCause::FdExhaustion);
        warn!("{}: accept works again", self.name);
    }

    fn pause_for_full_pool(&mut self, host: &mut impl Host<S, Watcher = W>) {
        if self.pause == Pause::No {
            host.unwatch_listeners();
            self.pause = Pause::PoolFull;
            self.metrics.paused(PauseCause::PoolFull);
            warn!(
                "{}: all {} connections in use; not accepting until one closes",
                self.name,
                self.pool.capacity()
            );
        }
    }

    fn pause_for_backoff(&mut self, host: &mut impl Host<S, Watcher = W>, err: &io::Error) {
        if !self.exhausted {
            self.exhausted = true;
            self.metrics.paused(PauseCause::FdExhaustion);
            warn!(
                "{}: accept failed ({err}); pausing accept for {} ms",
                self.name,
                (BACKOFF * 1000.0) as u64
            );
        }
        host.unwatch_listeners();
        self.pause = Pause::Backoff;
        host.start_timer(TimerId::Backoff, BACKOFF);
    }

    fn resume_accepting(&mut self, host: &mut impl Host<S, Watcher = W>) {
        if self.pause == Pause::No || self.phase != Phase::Serving {
            return;
        }
        if self.pause == Pause::PoolFull {
            self.metrics.resumed(PauseCause::PoolFull);
            warn!("{}: a connection closed; accepting again", self.name);
        }
        self.pause = Pause::No;
        host.watch_listeners();
    }

    /// Carries out what the connection in `idx` asked for.
    #[inline]
    fn apply(&mut self, host: &mut impl Host<S, Watcher = W>, idx: u32, next: Next) {
        match next {
            Next::Read => {
                // A no-op for a lingering connection: it has its linger deadline.
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
                debug!("{}: conn {idx}: replied, closing", self.name);
                self.close(host, idx, next);
            }
            Next::Linger => {
                self.metrics.responded(self.pool.get(idx).is_slow());
                debug!("{}: conn {idx}: replied, closing", self.name);
                self.linger(host, idx);
            }
            Next::Close => self.close(host, idx, next),
            Next::Drop(reason) => {
                self.metrics.dropped(reason);
                debug!("{}: conn {idx}: closing without a reply", self.name);
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
        let filled = self
            .pool
            .delegate(idx, SlowTask { duration }, route)
            .expect("a reading connection has no task out");
        self.metrics.delegated();
        self.pool.get_mut(idx).note_delegated(host.now());
        if let Filled::New(task) = filled {
            host.submit(task);
        }
        debug!("{}: conn {idx}: slow request delegated", self.name);
        // Watch for the client leaving (or misbehaving) meanwhile.
        self.watch(host, idx, Interest::Read);
    }

    /// Moves `idx` from its read deadline to a linger deadline, and waits for
    /// the client's EOF.
    fn linger(&mut self, host: &mut impl Host<S, Watcher = W>, idx: u32) {
        self.deadlines.remove(&mut self.pool, idx);
        self.lingering
            .push_back(&mut self.pool, idx, host.now() + LINGER);
        if !host.timer_active(TimerId::Linger) {
            host.start_timer(TimerId::Linger, LINGER);
        }
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
        if self.pool.get(idx).links().is_linked() {
            self.unlink(idx);
        }
        let release = if self.pool.is_delegated(idx) {
            self.withdraw(idx)
        } else {
            Release::Now
        };
        let (ctx, watcher) = self.pool.split(idx);
        host.unwatch(watcher);
        ctx.close(release);
        host.closed(idx, how);
        if release == Release::Now {
            self.release(host, idx);
        }
    }

    #[inline]
    /// Takes `idx` off the deadline list it is on.
    fn unlink(&mut self, idx: u32) {
        if self.pool.get(idx).state() == State::Lingering {
            self.lingering.remove(&mut self.pool, idx);
        } else {
            self.deadlines.remove(&mut self.pool, idx);
        }
    }

    /// A connection with a task out ends: a task still queued will not run
    /// (withdrawn, its slot frees now); one a worker runs finishes, and the
    /// slot waits for it.
    #[cold]
    fn withdraw(&mut self, idx: u32) -> Release {
        match self.pool.cancel(idx) {
            Cancel::Idle => Release::Now,
            Cancel::Withdrawn => {
                self.metrics.cancelled();
                Release::Now
            }
            Cancel::Running => Release::AfterTask,
        }
    }

    fn release(&mut self, host: &mut impl Host<S, Watcher = W>, idx: u32) {
        self.pool.release(idx);
        if self.pause == Pause::PoolFull {
            self.resume_accepting(host);
        }
        if self.phase == Phase::Draining && self.pool.in_use() == 0 {
            debug!("{}: drained", self.name);
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
        debug!("{}: conn {idx}: slow task done", self.name);
        let ctx = self.pool.get_mut(idx);
        self.metrics.task_back(ctx.task_seconds(host.now()));
        match ctx.state() {
            State::Delegated if ctx.gen() == gen => {
                let next = ctx.on_task_done();
                self.apply(host, idx, next);
            }
            State::Abandoned => {
                ctx.close(Release::Now);
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
            debug!("{}: conn {idx}: read deadline passed", self.name);
            self.close(host, idx, Next::Drop(DropReason::TimedOut));
        }
    }

    fn expire_lingering(&mut self, host: &mut impl Host<S, Watcher = W>) {
        let now = host.now();
        while let Some((idx, end)) = self.lingering.front(&self.pool) {
            if end > now {
                host.start_timer(TimerId::Linger, end - now);
                return;
            }
            self.close(host, idx, Next::Close);
        }
    }

    /// Graceful stop (see [`Drain`]): stop listening, and let connections finish
    /// within the shutdown timeout. On `Stop`, first close connections that have
    /// not completed a request, then take what is already in the backlog into
    /// the slots that freed (closing the last socket would reset it), closing
    /// those that are incomplete in turn; on `Handover` the backlog is the new
    /// process's, and every accepted connection is finished.
    pub fn begin_drain(&mut self, host: &mut impl Host<S, Watcher = W>, how: Drain) {
        if self.phase != Phase::Serving {
            return;
        }
        debug!("{}: draining ({how:?})", self.name);
        self.phase = Phase::Beginning;
        if how == Drain::Stop {
            for idx in self.pool.constructed() {
                self.close_incomplete(host, idx);
            }
            // A pause stands: the pool may still be full, and has been said so.
            for i in 0..host.listeners() {
                loop {
                    match self.accept_one(host, i) {
                        Accepted::Conn(idx) => self.close_incomplete(host, idx),
                        Accepted::Retry => {}
                        Accepted::Rest => break,
                    }
                }
            }
        }
        self.phase = Phase::Draining;
        host.unwatch_listeners();
        host.stop_timer(TimerId::Backoff);
        host.close_listeners();
        self.metrics.listener_closed();
        if self.pool.in_use() == 0 {
            host.stop();
        } else {
            host.start_timer(TimerId::Drain, self.settings.shutdown_timeout.as_secs_f64());
        }
    }

    /// The drain closes `idx` if it has not completed its request.
    fn close_incomplete(&mut self, host: &mut impl Host<S, Watcher = W>, idx: u32) {
        if self.pool.get(idx).state() == State::Reading {
            self.metrics.dropped(DropReason::Shutdown);
            self.close(host, idx, Next::Drop(DropReason::Shutdown));
        }
    }

    /// The drain took too long: close what is left and stop.
    fn end_drain(&mut self, host: &mut impl Host<S, Watcher = W>) {
        warn!(
            "{}: shutdown timeout; closing {} connections",
            self.name,
            self.pool.in_use()
        );
        for idx in self.pool.constructed() {
            match self.pool.get(idx).state() {
                State::Free | State::Abandoned => {}
                // Answered already: nothing lost, nothing to count.
                State::Lingering => self.close(host, idx, Next::Close),
                _ => {
                    self.metrics.dropped(DropReason::Shutdown);
                    self.close(host, idx, Next::Drop(DropReason::Shutdown));
                }
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
        /// The server shut its sending side.
        fin: Cell<bool>,
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
        fn shutdown_write(&self) -> io::Result<()> {
            self.0.fin.set(true);
            Ok(())
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
        engine_counting(capacity, read_timeout, Arc::default())
    }

    fn engine_counting(
        capacity: usize,
        read_timeout: Option<f64>,
        counters: Arc<AcceptCounters>,
    ) -> (Engine<Sock, Watch>, Rec) {
        let e = Engine::new(Settings {
            id: 0,
            capacity,
            slow: Some(Duration::ZERO),
            read_timeout: read_timeout.map(Duration::from_secs_f64),
            shutdown_timeout: Duration::from_secs(5),
            counters,
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
            if let Some(done) = task.run() {
                e.on_task_done(host, done);
            }
        }
    }

    #[test]
    fn a_whole_request_is_answered_and_released_without_the_loop() {
        let (mut e, mut host) = engine(4, Some(1.0));
        let peer = client(&mut host, FAST);
        e.on_listener(&mut host, 0);
        assert_eq!(&peer.sent.borrow()[..], crate::engine::conn::RESPONSE);
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
        assert_eq!(&c.sent.borrow()[..], crate::engine::conn::RESPONSE);
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
        assert_eq!(&peer.sent.borrow()[..], crate::engine::conn::RESPONSE);
        assert_eq!(host.closes, [(0, Next::Finished)]);
        assert_eq!(e.in_use(), 0);
    }

    #[test]
    fn a_client_gone_before_a_worker_took_its_task_frees_the_slot_and_the_task_never_runs() {
        let (mut e, mut host) = engine(4, None);
        let peer = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        peer.eof.set(true);
        e.on_io(&mut host, 0, Interest::Read);
        assert!(peer.closed.get());
        assert_eq!(host.closes, [(0, GONE)]);
        assert_eq!(e.in_use(), 0, "the queued task was withdrawn: slot free");
        // The worker pops the token and finds nothing to run.
        let token = host.submitted.pop().unwrap();
        assert!(token.claim().is_none());
    }

    #[test]
    fn a_client_gone_during_its_running_task_holds_the_slot_until_the_task_is_back() {
        let (mut e, mut host) = engine(4, None);
        let peer = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        let running = host.submitted.pop().unwrap().claim().unwrap();
        peer.eof.set(true);
        e.on_io(&mut host, 0, Interest::Read);
        assert!(peer.closed.get(), "the socket closes at once");
        assert_eq!(host.closes, [(0, GONE)]);
        assert_eq!(e.in_use(), 1, "the worker still runs the task");
        e.on_task_done(&mut host, running.run());
        assert_eq!(e.in_use(), 0);
        assert!(peer.sent.borrow().is_empty());
    }

    #[test]
    fn a_slot_reused_while_its_cancelled_token_is_queued_delegates_through_it() {
        let (mut e, mut host) = engine(1, None);
        let first = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        first.eof.set(true);
        e.on_io(&mut host, 0, Interest::Read);
        let second = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        assert_eq!(host.submitted.len(), 1, "one token in the queue, reused");
        run_tasks(&mut e, &mut host);
        assert_eq!(&second.sent.borrow()[..], crate::engine::conn::RESPONSE);
        assert!(first.sent.borrow().is_empty());
        assert_eq!(e.in_use(), 0);
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
            crate::engine::conn::RESPONSE,
            "backlog served"
        );
        assert!(partial.closed.get() && partial.sent.borrow().is_empty());
        assert!(!host.has_listener && !host.listening, "listeners closed");
        assert!(!slow.closed.get());
        assert!(!host.stopped, "the slow request is still out");
        assert!(host.timers[TimerId::Drain as usize].is_some());
        run_tasks(&mut e, &mut host);
        assert_eq!(&slow.sent.borrow()[..], crate::engine::conn::RESPONSE);
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
        assert_eq!(&partial.sent.borrow()[..], crate::engine::conn::RESPONSE);
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
        // The queued slow task was withdrawn: nothing is left to come back.
        assert_eq!(e.in_use(), 0);
        run_tasks(&mut e, &mut host);
        assert!(slow.sent.borrow().is_empty());
    }

    #[test]
    fn a_drain_with_nothing_open_stops_at_once() {
        let (mut e, mut host) = engine(4, None);
        e.begin_drain(&mut host, Drain::Stop);
        assert!(host.stopped && !e.needs_loop());
        assert_eq!(host.timers[TimerId::Drain as usize], None);
    }

    /// The value of the first sample of `metrics` whose line starts with `series`.
    fn sample(metrics: &crate::metrics::Metrics, series: &str) -> f64 {
        let mut out = Vec::new();
        metrics
            .render(&mut out, &crate::metrics::Process::new())
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_request_that_filled_the_buffer_lingers_until_the_client_eof() {
        let (mut e, mut host) = engine(4, Some(1.0));
        let mut bytes = b"GET /test/fast HTTP/1.1\r\nContent-Length: 5000\r\n\r\n".to_vec();
        bytes.resize(bytes.len() + 5000, b'b');
        let peer = client(&mut host, &bytes);
        e.on_listener(&mut host, 0);
        assert_eq!(&peer.sent.borrow()[..], crate::engine::conn::RESPONSE);
        assert!(
            peer.fin.get() && !peer.closed.get(),
            "half-closed, lingering"
        );
        assert_eq!(e.stats().served, 1, "counted when the response went out");
        assert_eq!(host.timers[TimerId::Linger as usize], Some(LINGER));
        assert_eq!(host.timers[TimerId::Deadline as usize], None);
        // The rest of the body is read and thrown away, then the client's EOF.
        e.on_io(&mut host, 0, Interest::Read);
        assert!(peer.inbox.borrow().is_empty() && !peer.closed.get());
        peer.eof.set(true);
        e.on_io(&mut host, 0, Interest::Read);
        assert!(peer.closed.get());
        assert_eq!(host.closes, [(0, Next::Close)]);
        assert_eq!(e.in_use(), 0);
        let s = e.stats();
        assert_eq!((s.served, s.dropped), (1, 0));
    }

    #[test]
    fn a_lingering_client_that_never_closes_is_closed_at_the_bound() {
        let (mut e, mut host) = engine(4, None);
        let mut bytes = FAST.to_vec();
        bytes.resize(5000, b'b');
        let peer = client(&mut host, &bytes);
        e.on_listener(&mut host, 0);
        assert!(peer.fin.get() && !peer.closed.get());
        fire(&mut e, &mut host, TimerId::Linger);
        assert!(peer.closed.get());
        assert_eq!(host.closes, [(0, Next::Close)]);
        assert_eq!(e.stats().dropped, 0, "answered: not a drop");
        // A drain's timeout closes a lingering connection without counting it.
        let peer = client(&mut host, &bytes);
        e.on_listener(&mut host, 0);
        e.begin_drain(&mut host, Drain::Handover);
        fire(&mut e, &mut host, TimerId::Drain);
        assert!(peer.closed.get() && host.stopped);
        let s = e.stats();
        assert_eq!((s.served, s.dropped), (2, 0));
    }

    #[test]
    fn the_back_off_ends_the_exhaustion_when_accept_finds_an_empty_queue() {
        let metrics = crate::metrics::Metrics::new(1, 0, Arc::default());
        let (mut e, mut host) = engine_counting(4, None, metrics.accept_thread(0));
        let paused = r#"conn_daemon_accept_paused{thread="0",cause="fd_exhaustion"}"#;
        host.backlog
            .push_back(Err(io::Error::from_raw_os_error(libc::EMFILE)));
        e.on_listener(&mut host, 0);
        assert_eq!(sample(&metrics, paused), 1.0);
        // The fds are back, and no client comes: the back-off tries at once.
        fire(&mut e, &mut host, TimerId::Backoff);
        assert_eq!(
            sample(&metrics, paused),
            0.0,
            "paused for fds on an idle server"
        );
        assert!(host.listening);
        assert_eq!(host.timers[TimerId::Backoff as usize], None);
        // Still out of fds at the end of the back-off: paused on, not again.
        host.backlog
            .push_back(Err(io::Error::from_raw_os_error(libc::EMFILE)));
        e.on_listener(&mut host, 0);
        host.backlog
            .push_back(Err(io::Error::from_raw_os_error(libc::EMFILE)));
        fire(&mut e, &mut host, TimerId::Backoff);
        assert_eq!(sample(&metrics, paused), 1.0);
        assert!(!host.listening && host.timers[TimerId::Backoff as usize].is_some());
        let pauses = r#"conn_daemon_accept_pauses_total{thread="0",cause="fd_exhaustion"}"#;
        assert_eq!(sample(&metrics, pauses), 2.0, "one per episode");
    }

    #[test]
    fn a_drain_with_a_full_pool_pauses_once_and_serves_the_backlog_in_freed_slots() {
        let metrics = crate::metrics::Metrics::new(1, 1, Arc::default());
        let (mut e, mut host) = engine_counting(2, None, metrics.accept_thread(0));
        let slow = client(&mut host, SLOW);
        let partial = client(&mut host, PARTIAL);
        let queued = client(&mut host, FAST);
        e.on_listener(&mut host, 0);
        assert!(!host.listening, "paused: the pool is full");
        let pauses = r#"conn_daemon_accept_pauses_total{thread="0",cause="pool_full"}"#;
        assert_eq!(sample(&metrics, pauses), 1.0);
        e.begin_drain(&mut host, Drain::Stop);
        assert!(partial.closed.get() && partial.sent.borrow().is_empty());
        assert_eq!(
            &queued.sent.borrow()[..],
            crate::engine::conn::RESPONSE,
            "the complete request in the backlog got the slot the drain freed"
        );
        assert_eq!(
            sample(&metrics, pauses),
            1.0,
            "the drain paused no second time"
        );
        assert!(!host.stopped);
        run_tasks(&mut e, &mut host);
        assert_eq!(&slow.sent.borrow()[..], crate::engine::conn::RESPONSE);
        assert!(host.stopped);
    }

    #[test]
    fn a_drain_closes_incomplete_requests_it_takes_from_the_backlog() {
        let (mut e, mut host) = engine(1, None);
        let a = client(&mut host, PARTIAL);
        let b = client(&mut host, PARTIAL);
        let c = client(&mut host, FAST);
        e.on_listener(&mut host, 0);
        e.begin_drain(&mut host, Drain::Stop);
        assert!(a.closed.get() && b.closed.get());
        assert!(a.sent.borrow().is_empty() && b.sent.borrow().is_empty());
        assert_eq!(&c.sent.borrow()[..], crate::engine::conn::RESPONSE);
        assert!(host.stopped, "nothing left");
    }
}
