//! `--delegate loop`: worker threads with an event loop of their own, hosting the
//! same connection [`Engine`] as the accept loops.
//!
//! Each worker thread creates its libev loop (a loop is bound to the thread that
//! made it), its `ev_async` and its engine, then runs. Its "listener" is its
//! queue of hand-offs: an accept loop that hands a connection over pushes a
//! [`Handoff`](crate::delegate::Handoff) (the socket and the job its protocol
//! offloaded) and wakes the loop through the `ev_async`; the engine accepts
//! from the queue as an accept loop accepts from a socket, and takes the
//! connection over with its job ([`ConnectionCtx::adopt`]): no byte is read
//! again. It watches the fd for bytes or EOF meanwhile (rule 7).
//!
//! The job's wait is asynchronous here: a job waits for a timer of
//! [`Protocol::job_wait`] (work that waits on something else, such as a
//! backend), not a sleeping thread. Jobs of one protocol mostly wait the same
//! duration, so they fall due in the order they were started: one ordered queue
//! (appended at its end in the common case) and one `ev_timer` armed for its
//! head serve every connection (as the read deadlines do). When it fires, the
//! job runs ([`Protocol::run_job`], on this loop) and goes back to the engine,
//! which answers (waiting for writability under the read timeout, if the socket
//! is full). One worker holds as many connections as its pool.
//!
//! [`ConnectionCtx::adopt`]: crate::engine::conn::ConnectionCtx::adopt
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::HandOffQueues;
use crate::debug;
use crate::engine::Protocol;
use crate::engine::{Engine, Host, Settings};
use crate::ev::{Async, Events, Handler, Io, Loop, Timer};
use crate::ev_engine;
use crate::metrics::Stats;
use crate::shutdown::Drain;
use crate::start_error::StartError;
use crate::task::{Claimed, TaskRef};
use crate::token::{TimerId, Token};

/// The slow-work timer's token: of the wake-up kind (top bits), an index no other
/// watcher of the loop uses; only `on_timer` ever sees it.
const SLOW_TIMER: usize = Token::Wake.encode() | 1;

/// A worker loop's jobs waiting for their timer, earliest first (mostly in the
/// order they started: one ordered queue and one timer for its head serve
/// them all). Room for one job per pool slot is reserved at start-up.
#[derive(Debug)]
pub struct SlowTimers {
    pending: VecDeque<(Duration, Claimed)>,
}

/// What [`SlowTimers::next_due`] found.
#[derive(Debug)]
pub enum Due {
    /// A job whose time has come: run it and give it back to the engine.
    Ready(Claimed),
    /// The earliest task falls due this much later: arm the timer for it.
    Wait(Duration),
    /// No task waits.
    Empty,
}

impl SlowTimers {
    /// For at most `capacity` jobs at once; `ENOMEM` if the room cannot be had.
    pub fn new(capacity: usize) -> io::Result<Self> {
        Ok(SlowTimers {
            pending: crate::os::deque_with_room(capacity)?,
        })
    }

    /// Starts `task`'s wait of `wait` at loop time `now`; `Some(after)` when
    /// the timer must be armed (it is the earliest).
    ///
    /// The task is claimed now, as a worker thread claims the task it starts: a
    /// client leaving meanwhile then finds it running (its slot waits for the
    /// timer), not withdrawn; a withdrawn holder refilled by the slot's next
    /// connection would reuse this entry and its earlier due time.
    pub fn start(&mut self, now: Duration, task: TaskRef, wait: Duration) -> Option<Duration> {
        // Only a cancelled task cannot be claimed, and this one was just filled.
        let task = task.claim()?;
        debug_assert!(self.pending.len() < self.pending.capacity());
        let due = now + wait;
        // After every job due no later: at the end, unless waits differ.
        let at = self
            .pending
            .iter()
            .rposition(|&(d, _)| d <= due)
            .map_or(0, |i| i + 1);
        self.pending.insert(at, (due, task));
        (at == 0).then_some(wait)
    }

    /// The next task due at loop time `now`.
    pub fn next_due(&mut self, now: Duration) -> Due {
        match self.pending.front() {
            None => Due::Empty,
            Some(&(due, _)) if due > now => Due::Wait(due - now),
            Some(_) => match self.pending.pop_front() {
                Some((_, task)) => Due::Ready(task),
                None => Due::Empty,
            },
        }
    }
}

/// What a worker loop is told at start-up.
#[derive(Debug)]
pub struct LoopSettings {
    /// The worker's number, and its queue's.
    pub queue: usize,
    /// The engine's settings.
    pub engine: Settings,
}

/// A worker loop's libev watchers and its hand-off queue: everything but the connections.
#[derive(Debug)]
struct WorkerState<P: Protocol> {
    queue: usize,
    work: Arc<HandOffQueues<P::Job>>,
    timers: [Pin<Box<Timer>>; TimerId::ALL.len()],
    slow_timer: Pin<Box<Timer>>,
    wake: Pin<Box<Async>>,
    /// The slow work under way.
    slow_work: SlowTimers,
    /// The engine watches its "listener" (it has room).
    listening: bool,
    /// The queue is still taken from (the drain closes it once it took the rest).
    open: bool,
    /// Connections taken from the queue during the current callback.
    taken: usize,
}

impl<P: Protocol> WorkerState<P> {
    fn timer(&self, timer: TimerId) -> Pin<&Timer> {
        self.timers[timer as usize].as_ref()
    }
}

/// One worker's loop and engine.
#[derive(Debug)]
pub struct WorkerLoop<P: Protocol> {
    engine: Engine<P, OwnedFd, Io>,
    state: WorkerState<P>,
    /// Seats of the queue this loop's pool accounts for (its slots in use).
    held: usize,
}

/// The engine's view of the worker loop during one callback.
struct LoopHost<'a, P: Protocol> {
    lp: &'a Loop<WorkerLoop<P>>,
    state: &'a mut WorkerState<P>,
}

impl<P: Protocol> Host<P, OwnedFd> for LoopHost<'_, P> {
    type Watcher = Io;

    ev_engine::libev_host_basics!();

    /// The slow work starts: the task waits for its timer, not in a thread.
    /// From the time now, not the iteration's: a connection handed over while
    /// this iteration's callbacks ran (its predecessor's answer was sent in
    /// them) would otherwise be answered early by as long as they took. A
    /// clock read (vDSO, no system call), on the slow path only.
    fn submit(&mut self, task: TaskRef, wait: Duration) {
        self.lp.update_now();
        if let Some(after) = self.state.slow_work.start(self.lp.now(), task, wait) {
            self.state
                .slow_timer
                .as_ref()
                .start_once(self.lp, after, SLOW_TIMER);
        }
    }

    fn stop(&mut self) {
        self.lp.break_all();
    }

    fn listeners(&self) -> usize {
        usize::from(self.state.open)
    }

    fn accept(&mut self, listener: usize) -> Option<io::Result<(OwnedFd, Option<P::Job>)>> {
        if listener != 0 || !self.state.open {
            return None;
        }
        match self.state.work.take(self.state.queue) {
            Some(h) => {
                self.state.taken += 1;
                debug!(
                    "worker-{}: connection of accept-{} taken over",
                    self.state.queue, h.owner
                );
                Some(Ok((h.fd, Some(h.job))))
            }
            None => Some(Err(io::Error::from_raw_os_error(libc::EAGAIN))),
        }
    }

    fn watch_listeners(&mut self) {
        self.state.listening = true;
    }

    fn unwatch_listeners(&mut self) {
        self.state.listening = false;
    }

    fn close_listeners(&mut self) {
        self.state.listening = false;
        self.state.open = false;
    }
}

impl<P: Protocol> WorkerLoop<P> {
    /// Sets up worker `settings.queue`'s engine and watchers on `lp`, and connects
    /// its queue's wake-up.
    pub fn new(
        lp: &Loop<Self>,
        settings: LoopSettings,
        work: Arc<HandOffQueues<P::Job>>,
        proto: Arc<P>,
    ) -> io::Result<Self> {
        let capacity = settings.engine.capacity;
        let engine = Engine::named(settings.engine, proto, "worker")?;
        let state = WorkerState {
            queue: settings.queue,
            work,
            timers: TimerId::ALL.map(|_| Box::pin(Timer::new())),
            slow_timer: Box::pin(Timer::new()),
            wake: Box::pin(Async::new()),
            slow_work: SlowTimers::new(capacity)?,
            listening: true,
            open: true,
            taken: 0,
        };
        state.wake.as_ref().start(lp, Token::Wake.encode());
        state
            .work
            .connect(state.queue, state.wake.as_ref().sender());
        Ok(WorkerLoop {
            engine,
            state,
            held: 0,
        })
    }

    /// Runs until the worker side stops and every connection held is done (or
    /// the drain's timeout closed it).
    pub fn run(&mut self, lp: &Loop<Self>) {
        // What was queued (or a stop) before the wake-up was connected.
        self.on_async(lp, Token::Wake.encode());
        if self.engine.needs_loop() {
            lp.run(self);
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Stops every watcher and closes every socket, so the loop can be dropped.
    pub fn teardown(&mut self) {
        self.engine.teardown(|io| io.stop());
        for t in &self.state.timers {
            t.stop();
        }
        self.state.slow_timer.stop();
        self.state.wake.stop();
    }

    /// After every callback: take what waits in the queue while there is room,
    /// and give back the places of connections that are done.
    fn settle(&mut self, lp: &Loop<Self>) {
        let mut host = LoopHost {
            lp,
            state: &mut self.state,
        };
        while host.state.listening && host.state.open {
            let before = host.state.taken;
            self.engine.on_listener(&mut host, 0);
            if host.state.taken == before {
                break;
            }
        }
        let in_use = self.engine.in_use();
        let done = (self.held + self.state.taken).saturating_sub(in_use);
        self.state.taken = 0;
        self.held = in_use;
        self.state.work.release(self.state.queue, done);
    }

    /// The slow timer fired: every task that is due goes back to the engine.
    fn tasks_due(&mut self, lp: &Loop<Self>) {
        let now = lp.now();
        let mut host = LoopHost {
            lp,
            state: &mut self.state,
        };
        loop {
            match host.state.slow_work.next_due(now) {
                Due::Ready(job) => {
                    let proto = Arc::clone(self.engine.protocol());
                    let done = job.run_with(|job: &mut P::Job| proto.run_job(job));
                    self.engine.on_task_done(&mut host, done);
                }
                Due::Wait(after) => {
                    host.state
                        .slow_timer
                        .as_ref()
                        .start_once(lp, after, SLOW_TIMER);
                    break;
                }
                Due::Empty => break,
            }
        }
    }
}

impl<P: Protocol> Handler for WorkerLoop<P> {
    fn on_io(&mut self, lp: &Loop<Self>, token: usize, events: Events) {
        if let Token::Slot(slot) = Token::decode(token) {
            let ready = ev_engine::interest(events);
            let mut host = LoopHost {
                lp,
                state: &mut self.state,
            };
            self.engine.on_io(&mut host, slot, ready);
        }
        self.settle(lp);
    }

    fn on_timer(&mut self, lp: &Loop<Self>, token: usize) {
        if token == SLOW_TIMER {
            self.tasks_due(lp);
        } else if let Token::Timer(timer) = Token::decode(token) {
            let mut host = LoopHost {
                lp,
                state: &mut self.state,
            };
            self.engine.on_timer(&mut host, timer);
        }
        self.settle(lp);
    }

    /// Connections queued for us, or the stop.
    fn on_async(&mut self, lp: &Loop<Self>, _token: usize) {
        self.settle(lp);
        if self.state.work.stopping() {
            let mut host = LoopHost {
                lp,
                state: &mut self.state,
            };
            // Takes in what is still queued, then finishes everything it holds.
            self.engine.begin_drain(&mut host, Drain::Stop);
            self.settle(lp);
        }
    }
}

/// Worker loop `settings.queue`'s thread body: builds its loop on this thread,
/// says on `ready` whether that worked (the server announces that it serves
/// only once every loop exists; a failure goes there, with its cause, and the
/// thread ends with nothing served), serves until the worker side stops and it
/// has drained, then tears down.
pub fn run<P: Protocol>(
    settings: LoopSettings,
    work: Arc<HandOffQueues<P::Job>>,
    proto: Arc<P>,
    ready: std::sync::mpsc::Sender<Result<(), StartError>>,
) -> Stats {
    let queue = settings.queue;
    let setup = Loop::new()
        .map_err(|e| {
            StartError::system(
                format_args!("cannot create the event loop of worker-{queue}"),
                e,
            )
        })
        .and_then(|lp| {
            WorkerLoop::new(&lp, settings, work, proto)
                .map(|w| (lp, w))
                .map_err(|e| {
                    StartError::system(
                        format_args!("cannot reserve the connection pool of worker-{queue}"),
                        e,
                    )
                })
        });
    let (lp, mut worker) = match setup {
        Ok(v) => {
            let _ = ready.send(Ok(()));
            v
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return Stats::default();
        }
    };
    drop(ready);
    debug!("worker-{queue}: loop serving");
    worker.run(&lp);
    let stats = worker.stats();
    worker.teardown();
    debug!(
        "worker-{queue}: stopped: {} served, {} dropped, {} timed out",
        stats.served, stats.dropped, stats.timed_out
    );
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Cancel, Filled, Route, Task, TaskHolder};

    struct Nop;
    impl Task for Nop {
        fn run(self) {}
    }

    fn token(holder: &TaskHolder, slot: u32) -> TaskRef {
        let route = Route {
            owner: 0,
            slot,
            gen: 0,
        };
        match holder.fill(Nop, route) {
            Some(Filled::New(t)) => t,
            other => panic!("{other:?}"),
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn tasks_fall_due_in_order_each_after_the_whole_duration() {
        let (a, b) = (TaskHolder::new(), TaskHolder::new());
        let mut t = SlowTimers::new(2).unwrap();
        assert_eq!(
            t.start(ms(0), token(&a, 0), ms(100)),
            Some(ms(100)),
            "arm for the first"
        );
        assert_eq!(
            t.start(ms(30), token(&b, 1), ms(100)),
            None,
            "already armed"
        );
        // Started, so claimed: a client leaving now cannot withdraw it.
        assert_eq!(a.cancel(), Cancel::Running);
        assert!(matches!(t.next_due(ms(50)), Due::Wait(d) if d == ms(50)));
        match t.next_due(ms(100)) {
            Due::Ready(job) => assert_eq!(job.run().route().slot, 0),
            other => panic!("{other:?}"),
        }
        assert!(matches!(t.next_due(ms(100)), Due::Wait(d) if d == ms(30)));
        match t.next_due(ms(131)) {
            Due::Ready(job) => assert_eq!(job.run().route().slot, 1),
            other => panic!("{other:?}"),
        }
        assert!(matches!(t.next_due(ms(131)), Due::Empty));
    }
}
