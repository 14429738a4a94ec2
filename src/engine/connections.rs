//! The engine proper: one loop's connections, from accept to release, with no
//! knowledge of libev.
//!
//! It holds the pool of [`ConnectionCtx`]s, the read deadline list, the pause
//! and drain rules and the counters, and carries out what each connection asks
//! for ([`Next`]); what the bytes mean is the [`Protocol`]'s business. What it
//! needs of its event loop is the small [`Host`] trait:
//! watch and unwatch a slot's fd, the loop's timers, the time, submitting a task
//! to the workers, stopping the loop and, if the loop has any, its listeners.
//! The accept threads host it on libev (`accept::AcceptTask`); the fuzz target
//! `conn` hosts it on a scripted loop over scripted sockets, and the unit tests
//! below on a recording one. Another kind of loop (a worker's own) can host it
//! the same way ([`Engine::named`] for its log lines): nothing here is specific
//! to accept threads but the optional listeners.
//!
//! The fast path is eager: accept, read at once (the listener defers accept until
//! bytes are there), hand the bytes to the protocol, send at once, close (or keep
//! the connection for the next request). A request that arrives whole never
//! touches the loop beyond the listener's readiness. Only incomplete requests, slow
//! requests and partial sends are registered with the loop.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::conn::{ConnectionCtx, Next, Release, Socket, State, Waits};
use super::deadline::DeadlineList;
use super::waiting::Waiting;
use super::{DropReason, Protocol};
use crate::metrics::{AcceptCounters, AcceptMetrics, PauseCause, Stats};
use crate::net;
use crate::pool::{Pool, SlotWatcher};
use crate::shutdown::Drain;
use crate::task::{Cancel, Done, Filled, Route, TaskRef};
use crate::token::TimerId;
use crate::{debug, warn};

/// Most connections accepted per listener wake-up, so that one busy listener
/// cannot starve the connections and timers of its loop.
pub const ACCEPT_BATCH: usize = 128;
/// How long the listeners rest after EMFILE/ENFILE/ENOBUFS/ENOMEM, in seconds.
pub const BACKOFF: f64 = 0.25;
/// Bound on a lingering close (see [`State::Lingering`]), in seconds: a client
/// that neither reads its EOF nor closes is then closed on.
pub const LINGER: f64 = 2.0;

/// What an engine is told at start-up.
#[derive(Debug)]
pub struct Settings {
    /// Index of this loop (accept thread 0 is the main thread); the owner of
    /// its jobs' completions.
    pub id: u32,
    /// Connections in this loop's pool.
    pub capacity: usize,
    /// Deadline from accept (or from the first byte of a later request on a
    /// kept connection) to the end of the request; `None` for none.
    pub read_timeout: Option<Duration>,
    /// How long a kept connection may wait for its next request; `None`
    /// for ever.
    pub idle_timeout: Option<Duration>,
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
pub trait Host<P: Protocol, S: Socket> {
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
    /// Hands a filled task to the workers; its job waits `wait` first
    /// ([`Protocol::job_wait`]).
    fn submit(&mut self, task: TaskRef, wait: Duration);
    /// Makes the loop return once the current callbacks are done.
    fn stop(&mut self);

    /// How many listeners the loop has (none unless it accepts).
    fn listeners(&self) -> usize {
        0
    }
    /// Accepts one connection from listener `listener`, with the job it
    /// brings if another loop handed it over; `None` if the loop has no such
    /// listener (or no longer: the drain closes them).
    fn accept(&mut self, _listener: usize) -> Option<io::Result<(S, Option<P::Job>)>> {
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
    fn closed(&mut self, _slot: u32, _how: Next<P::Reason>) {}

    /// Whether an offloaded job leaves the loop with its connection
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
    /// Gives `fd` (no longer watched) and its `job` to the room reserved by
    /// the last successful [`Host::reserve_hand_off`].
    fn hand_off(&mut self, _fd: S, _job: P::Job) {}
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
pub struct Engine<P: Protocol, S: Socket, W: SlotWatcher> {
    settings: Settings,
    name: Name,
    proto: Arc<P>,
    pool: Pool<ConnectionCtx<P, S>, W>,
    /// Read deadlines, of connections that are reading or writing a request.
    deadlines: DeadlineList,
    /// Ends of the lingering closes, of connections that linger (a slot is in
    /// one list at most: its links are shared).
    lingering: DeadlineList,
    /// Ends of the idle timeouts, of kept connections between requests.
    idle: DeadlineList,
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

impl<P: Protocol, S: Socket, W: SlotWatcher> std::fmt::Debug for Engine<P, S, W> {
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

impl<P: Protocol, S: Socket, W: SlotWatcher> Engine<P, S, W> {
    /// Reserves the pool (fails if its address space cannot be reserved), for
    /// an accept thread's loop serving `proto`.
    pub fn new(settings: Settings, proto: Arc<P>) -> io::Result<Self> {
        Self::named(settings, proto, "accept")
    }

    /// As [`Engine::new`], for a loop whose log lines say `role-ID` (a worker's
    /// own loop, say).
    pub fn named(settings: Settings, proto: Arc<P>, role: &'static str) -> io::Result<Self> {
        let pool = Pool::new(settings.capacity)?;
        Ok(Engine {
            name: Name {
                role,
                id: settings.id,
            },
            proto,
            pool,
            deadlines: DeadlineList::default(),
            lingering: DeadlineList::default(),
            idle: DeadlineList::default(),
            pause: Pause::No,
            exhausted: false,
            phase: Phase::Serving,
            metrics: AcceptMetrics::new(Arc::clone(&settings.counters), settings.capacity),
            waiting: Waiting::new(settings.capacity)?,
            settings,
        })
    }

    /// The protocol this loop serves.
    pub fn protocol(&self) -> &Arc<P> {
        &self.proto
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
    pub fn connection(&self, slot: u32) -> &ConnectionCtx<P, S> {
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
                ctx.close(&self.proto, release);
            }
        }
    }

    /// A listener is readable: accepts up to [`ACCEPT_BATCH`] connections.
    pub fn on_listener(&mut self, host: &mut impl Host<P, S, Watcher = W>, listener: usize) {
        for _ in 0..ACCEPT_BATCH {
            if self.accept_one(host, listener) == Accepted::Rest {
                return;
            }
        }
    }

    /// Slot `slot`'s fd is ready: writable, or readable (which includes at EOF
    /// and in error).
    #[inline(always)]
    pub fn on_io(&mut self, host: &mut impl Host<P, S, Watcher = W>, slot: u32, ready: Interest) {
        let ctx = self.pool.get_mut(slot);
        let next = if ready == Interest::Write {
            ctx.on_writable(&self.proto, &self.metrics)
        } else {
            ctx.on_readable(&self.proto, &self.metrics)
        };
        self.apply(host, slot, next);
    }

    /// One of the loop's timers fired.
    pub fn on_timer(&mut self, host: &mut impl Host<P, S, Watcher = W>, timer: TimerId) {
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
            TimerId::Idle => self.expire_idle(host),
        }
    }

    /// Accepts and serves one connection from `listener`.
    #[inline(always)]
    fn accept_one(&mut self, host: &mut impl Host<P, S, Watcher = W>, listener: usize) -> Accepted {
        if self.pool.is_full() {
            self.pause_for_full_pool(host);
            return Accepted::Rest;
        }
        let Some(accepted) = host.accept(listener) else {
            return Accepted::Rest;
        };
        match accepted {
            Ok((fd, job)) => {
                self.accept_works();
                let idx = self.pool.acquire().expect("pool checked not full");
                self.metrics.accepted();
                let ctx = self.pool.get_mut(idx);
                let next = match job {
                    None => {
                        ctx.open(&self.proto, fd);
                        debug!("{}: conn {idx}: accepted fd {}", self.name, ctx.fd());
                        ctx.on_readable(&self.proto, &self.metrics)
                    }
                    Some(job) => {
                        ctx.adopt(&self.proto, fd, job);
                        debug!("{}: conn {idx}: took over fd {}", self.name, ctx.fd());
                        Next::Delegate
                    }
                };
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

    fn pause_for_full_pool(&mut self, host: &mut impl Host<P, S, Watcher = W>) {
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

    fn pause_for_backoff(&mut self, host: &mut impl Host<P, S, Watcher = W>, err: &io::Error) {
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

    fn resume_accepting(&mut self, host: &mut impl Host<P, S, Watcher = W>) {
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
    #[inline(always)]
    fn apply(&mut self, host: &mut impl Host<P, S, Watcher = W>, idx: u32, next: Next<P::Reason>) {
        match next {
            Next::Read => {
                // A no-op for a lingering connection: it has its linger deadline.
                self.arm_deadline(host, idx);
                self.watch(host, idx, Interest::Read);
            }
            Next::Idle => self.wait_idle(host, idx),
            Next::Write => {
                self.arm_deadline(host, idx);
                self.watch(host, idx, Interest::Write);
            }
            Next::Delegate => self.delegate(host, idx),
            Next::Finished => {
                debug!("{}: conn {idx}: replied, closing", self.name);
                self.close(host, idx, next);
            }
            Next::Linger => {
                debug!("{}: conn {idx}: replied, closing", self.name);
                self.linger(host, idx);
            }
            Next::Close => self.close(host, idx, next),
            Next::Drop(reason) => {
                self.metrics.dropped(reason.slot());
                debug!("{}: conn {idx}: closing without a reply", self.name);
                self.close(host, idx, next);
            }
        }
    }

    /// A kept connection waits for its next request under the idle timeout
    /// (a drain closes it at once instead).
    #[cold]
    fn wait_idle(&mut self, host: &mut impl Host<P, S, Watcher = W>, idx: u32) {
        if self.phase != Phase::Serving {
            self.close(host, idx, Next::Close);
            return;
        }
        if self.pool.get(idx).waits != Waits::Idle {
            self.unlink(idx);
            if let Some(timeout) = self.settings.idle_timeout {
                let after = timeout.as_secs_f64();
                self.idle.push_back(&mut self.pool, idx, host.now() + after);
                self.pool.get_mut(idx).waits = Waits::Idle;
                if !host.timer_active(TimerId::Idle) {
                    host.start_timer(TimerId::Idle, after);
                }
            }
        }
        self.watch(host, idx, Interest::Read);
    }

    fn delegate(&mut self, host: &mut impl Host<P, S, Watcher = W>, idx: u32) {
        // The request is complete: no read deadline while the worker works.
        self.unlink(idx);
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
        let route = Route {
            owner: self.settings.id,
            slot: idx,
            gen: self.pool.get(idx).gen(),
        };
        let ctx = self.pool.get_mut(idx);
        let Some(job) = ctx.take_job() else {
            unreachable!("a connection delegates with its job")
        };
        ctx.note_delegated(host.now());
        let wait = self.proto.job_wait(&job);
        let filled = self
            .pool
            .delegate_job(idx, job, route)
            .expect("a reading connection has no task out");
        self.metrics.delegated();
        if let Filled::New(task) = filled {
            host.submit(task, wait);
        }
        debug!("{}: conn {idx}: slow request delegated", self.name);
        // Watch for the client leaving (or misbehaving) meanwhile.
        self.watch(host, idx, Interest::Read);
    }

    /// Moves `idx` from its read deadline to a linger deadline, and waits for
    /// the client's EOF.
    fn linger(&mut self, host: &mut impl Host<P, S, Watcher = W>, idx: u32) {
        self.unlink(idx);
        self.lingering
            .push_back(&mut self.pool, idx, host.now() + LINGER);
        self.pool.get_mut(idx).waits = Waits::Linger;
        if !host.timer_active(TimerId::Linger) {
            host.start_timer(TimerId::Linger, LINGER);
        }
        self.watch(host, idx, Interest::Read);
    }

    /// Moves the connection in `idx` to the room reserved on the worker side:
    /// stops its watcher before the fd can reach another thread, and frees the
    /// slot.
    fn hand_off(&mut self, host: &mut impl Host<P, S, Watcher = W>, idx: u32) {
        let (ctx, watcher) = self.pool.split(idx);
        host.unwatch(watcher);
        if let Some((fd, job)) = ctx.hand_over(&self.proto) {
            host.hand_off(fd, job);
        }
        self.metrics.handed_off();
        debug!("{}: conn {idx}: job handed to a worker", self.name);
        self.release(host, idx);
    }

    /// Room may have freed on the worker side: hands over the connections
    /// waiting for it, oldest first, while the host finds room.
    pub fn retry_hand_offs(&mut self, host: &mut impl Host<P, S, Watcher = W>) {
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
    fn arm_deadline(&mut self, host: &mut impl Host<P, S, Watcher = W>, idx: u32) {
        let Some(timeout) = self.settings.read_timeout else {
            return;
        };
        let next_request = self.pool.get_mut(idx).take_answered();
        match self.pool.get(idx).waits {
            Waits::Nothing => {}
            Waits::Idle => self.unlink(idx),
            // A kept connection's next request gets a deadline of its own.
            Waits::Request if next_request => self.unlink(idx),
            Waits::Request | Waits::Linger => return,
        }
        let after = timeout.as_secs_f64();
        self.deadlines
            .push_back(&mut self.pool, idx, host.now() + after);
        self.pool.get_mut(idx).waits = Waits::Request;
        // An active timer is armed for an earlier deadline (the list is FIFO);
        // it re-arms itself for the head when it fires.
        if !host.timer_active(TimerId::Deadline) {
            host.start_timer(TimerId::Deadline, after);
        }
    }

    #[inline]
    fn watch(&mut self, host: &mut impl Host<P, S, Watcher = W>, idx: u32, interest: Interest) {
        let (ctx, watcher) = self.pool.split(idx);
        host.watch(watcher, ctx.fd(), interest, idx);
    }

    #[inline]
    fn close(&mut self, host: &mut impl Host<P, S, Watcher = W>, idx: u32, how: Next<P::Reason>) {
        if self.pool.get(idx).waits != Waits::Nothing {
            self.unlink(idx);
        }
        let release = if self.pool.is_delegated(idx) {
            self.withdraw(idx)
        } else {
            Release::Now
        };
        let (ctx, watcher) = self.pool.split(idx);
        host.unwatch(watcher);
        ctx.close(&self.proto, release);
        host.closed(idx, how);
        if release == Release::Now {
            self.release(host, idx);
        }
    }

    /// Takes `idx` off the deadline list it is on, if any.
    #[inline]
    fn unlink(&mut self, idx: u32) {
        let list = match self.pool.get(idx).waits {
            Waits::Nothing => return,
            Waits::Request => &mut self.deadlines,
            Waits::Idle => &mut self.idle,
            Waits::Linger => &mut self.lingering,
        };
        list.remove(&mut self.pool, idx);
        self.pool.get_mut(idx).waits = Waits::Nothing;
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

    fn release(&mut self, host: &mut impl Host<P, S, Watcher = W>, idx: u32) {
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
    pub fn on_task_done(&mut self, host: &mut impl Host<P, S, Watcher = W>, done: Done) {
        let Some((route, job)) = self.pool.finish_job::<P::Job>(done) else {
            return;
        };
        let (idx, gen) = (route.slot, route.gen);
        debug!("{}: conn {idx}: job done", self.name);
        let ctx = self.pool.get_mut(idx);
        self.metrics.task_back(ctx.task_seconds(host.now()));
        match (ctx.state(), job) {
            (State::Delegated, Some(job)) if ctx.gen() == gen => {
                let next = ctx.on_job_done(&self.proto, &self.metrics, job);
                self.apply(host, idx, next);
            }
            (State::Abandoned, _) => {
                ctx.close(&self.proto, Release::Now);
                self.release(host, idx);
            }
            // Cannot happen while the slot is held for its task; harmless.
            _ => {}
        }
    }

    fn expire_deadlines(&mut self, host: &mut impl Host<P, S, Watcher = W>) {
        let now = host.now();
        while let Some((idx, deadline)) = self.deadlines.front(&self.pool) {
            if deadline > now {
                host.start_timer(TimerId::Deadline, deadline - now);
                return;
            }
            self.metrics
                .dropped(DropReason::<P::Reason>::TimedOut.slot());
            debug!("{}: conn {idx}: read deadline passed", self.name);
            self.close(host, idx, Next::Drop(DropReason::TimedOut));
        }
    }

    fn expire_idle(&mut self, host: &mut impl Host<P, S, Watcher = W>) {
        let now = host.now();
        while let Some((idx, end)) = self.idle.front(&self.pool) {
            if end > now {
                host.start_timer(TimerId::Idle, end - now);
                return;
            }
            debug!("{}: conn {idx}: idle timeout", self.name);
            self.close(host, idx, Next::Close);
        }
    }

    fn expire_lingering(&mut self, host: &mut impl Host<P, S, Watcher = W>) {
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
    pub fn begin_drain(&mut self, host: &mut impl Host<P, S, Watcher = W>, how: Drain) {
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
        if how == Drain::Handover {
            for idx in self.pool.constructed() {
                self.close_idle(host, idx);
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
    fn close_incomplete(&mut self, host: &mut impl Host<P, S, Watcher = W>, idx: u32) {
        if self.pool.get(idx).is_idle() {
            self.close(host, idx, Next::Close);
        } else if self.pool.get(idx).state() == State::Reading {
            self.metrics
                .dropped(DropReason::<P::Reason>::Shutdown.slot());
            self.close(host, idx, Next::Drop(DropReason::Shutdown));
        }
    }

    /// The drain closes `idx` if it waits between requests: nothing is lost.
    fn close_idle(&mut self, host: &mut impl Host<P, S, Watcher = W>, idx: u32) {
        if self.pool.get(idx).is_idle() {
            self.close(host, idx, Next::Close);
        }
    }

    /// The drain took too long: close what is left and stop.
    fn end_drain(&mut self, host: &mut impl Host<P, S, Watcher = W>) {
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
                _ if self.pool.get(idx).is_idle() => self.close(host, idx, Next::Close),
                _ => {
                    self.metrics
                        .dropped(DropReason::<P::Reason>::Shutdown.slot());
                    self.close(host, idx, Next::Drop(DropReason::Shutdown));
                }
            }
        }
        host.stop();
    }
}
