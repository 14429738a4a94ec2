//! `AcceptTask`: one accept thread's listeners, libev loop, timers and wake-up,
//! as in the C++ original. It hosts the thread's connection [`Engine`], which
//! decides everything (accepting into the pool, each connection's next step, the
//! read deadline, pausing, the drain); this module only carries those decisions
//! out on libev and turns libev's callbacks into the engine's events.
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use socket2::Socket;

use crate::delegate::task::Shared;
use crate::delegate::{HandOffQueues, Handoff};
use crate::engine::Protocol;
use crate::engine::{Engine, Host, Settings};
use crate::ev::{Async, Events, Handler, Io, Loop, Timer};
use crate::ev_engine;
use crate::metrics::Stats;
use crate::net;
use crate::shutdown::Shutdown;
use crate::task::TaskRef;
use crate::token::{TimerId, Token};

/// A listening socket and its watcher.
struct Listener {
    sock: Socket,
    io: Pin<Box<Io>>,
}

/// The libev state: everything of the thread's loop but the connections.
struct AcceptState<J> {
    /// One per listen address (more after an upgrade to fewer threads); empty
    /// once the drain has closed them.
    listeners: Vec<Listener>,
    /// One per [`TimerId`], in its order.
    timers: [Pin<Box<Timer>>; TimerId::ALL.len()],
    wake: Pin<Box<Async>>,
    shared: Arc<Shared>,
    shutdown: Arc<Shutdown>,
    /// `--delegate socket|loop`: where complete slow requests go, the next
    /// queue to try (round robin), and the one last reserved.
    work: Option<Arc<HandOffQueues<J>>>,
    next_queue: usize,
    reserved: usize,
    /// The engine's id: the owner a hand-off names.
    id: u32,
}

impl<J> AcceptState<J> {
    fn timer(&self, timer: TimerId) -> Pin<&Timer> {
        self.timers[timer as usize].as_ref()
    }

    fn stop_listeners(&self) {
        for l in &self.listeners {
            l.io.stop();
        }
    }
}

/// One accept thread (the C++ `AcceptTask`).
pub struct AcceptTask<P: Protocol> {
    engine: Engine<P, OwnedFd, Io>,
    state: AcceptState<P::Job>,
}

/// The engine's view of the loop during one callback.
struct EvHost<'a, P: Protocol> {
    lp: &'a Loop<AcceptTask<P>>,
    state: &'a mut AcceptState<P::Job>,
}

impl<P: Protocol> Host<P, OwnedFd> for EvHost<'_, P> {
    type Watcher = Io;

    ev_engine::libev_host_basics!();

    fn submit(&mut self, task: TaskRef, _wait: std::time::Duration) {
        self.state.shared.submit(task);
    }

    fn stop(&mut self) {
        self.lp.break_all();
    }

    fn listeners(&self) -> usize {
        self.state.listeners.len()
    }

    #[inline]
    fn accept(&mut self, listener: usize) -> Option<io::Result<(OwnedFd, Option<P::Job>)>> {
        let l = self.state.listeners.get(listener)?;
        Some(net::accept(l.sock.as_fd()).map(|fd| (fd, None)))
    }

    fn watch_listeners(&mut self) {
        for l in &self.state.listeners {
            l.io.as_ref().start(self.lp);
        }
    }

    fn unwatch_listeners(&mut self) {
        self.state.stop_listeners();
    }

    fn close_listeners(&mut self) {
        self.state.stop_listeners();
        self.state.listeners.clear();
    }

    fn hands_off(&self) -> bool {
        self.state.work.is_some()
    }

    fn reserve_hand_off(&mut self) -> bool {
        let state = &mut *self.state;
        let Some(work) = &state.work else {
            return false;
        };
        let owner = state.id;
        match work.reserve(owner, &mut state.next_queue) {
            Some(queue) => {
                state.reserved = queue;
                true
            }
            None => false,
        }
    }

    fn hand_off(&mut self, fd: OwnedFd, job: P::Job) {
        if let Some(work) = &self.state.work {
            let handoff = Handoff {
                fd,
                job,
                owner: self.state.id,
                at: Instant::now(),
            };
            work.hand_off(self.state.reserved, handoff);
        }
    }
}

impl<P: Protocol> AcceptTask<P> {
    /// Sets up the thread's pool and watchers on `lp` (not yet running).
    pub fn new(
        lp: &Loop<Self>,
        settings: Settings,
        proto: Arc<P>,
        listeners: Vec<Socket>,
        shared: Arc<Shared>,
        shutdown: Arc<Shutdown>,
        work: Option<Arc<HandOffQueues<P::Job>>>,
    ) -> io::Result<Self> {
        let engine = Engine::new(settings, proto)?;
        let id = engine.id();
        let listeners = listeners
            .into_iter()
            .enumerate()
            .map(|(i, sock)| {
                let io = Box::pin(Io::new());
                io.set_fd(
                    sock.as_raw_fd(),
                    Events::READ,
                    Token::Listener(i as u32).encode(),
                );
                Listener { sock, io }
            })
            .collect();
        let mut task = AcceptTask {
            engine,
            state: AcceptState {
                listeners,
                timers: TimerId::ALL.map(|_| Box::pin(Timer::new())),
                wake: Box::pin(Async::new()),
                shared,
                shutdown,
                next_queue: id as usize,
                work,
                reserved: 0,
                id,
            },
        };
        let state = &mut task.state;
        state.wake.as_ref().start(lp, Token::Wake.encode());
        state
            .shared
            .mailbox(task.engine.id())
            .connect(state.wake.as_ref().sender());
        EvHost { lp, state }.watch_listeners();
        Ok(task)
    }

    /// Runs the loop until the graceful drain is over.
    pub fn run(&mut self, lp: &Loop<Self>) {
        // A shutdown requested before our wake-up was connected would be missed.
        if let Some(how) = self.state.shutdown.requested() {
            let mut host = EvHost {
                lp,
                state: &mut self.state,
            };
            self.engine.begin_drain(&mut host, how);
        }
        if self.engine.needs_loop() {
            lp.run(self);
        }
    }

    /// The accept thread's number (`accept-N`).
    pub fn id(&self) -> u32 {
        self.engine.id()
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.engine.stats()
    }

    /// Stops every watcher and closes every socket, so the loop can be dropped.
    pub fn teardown(&mut self) {
        self.engine.teardown(|io| io.stop());
        self.state.stop_listeners();
        for t in &self.state.timers {
            t.stop();
        }
        self.state.wake.stop();
        self.state.listeners.clear();
    }
}

impl<P: Protocol> Handler for AcceptTask<P> {
    fn on_io(&mut self, lp: &Loop<Self>, token: usize, events: Events) {
        crate::fault::maybe_inject_panic();
        let mut host = EvHost {
            lp,
            state: &mut self.state,
        };
        match Token::decode(token) {
            Token::Slot(slot) => {
                let ready = ev_engine::interest(events);
                self.engine.on_io(&mut host, slot, ready);
            }
            Token::Listener(i) => self.engine.on_listener(&mut host, i as usize),
            _ => {}
        }
    }

    fn on_timer(&mut self, lp: &Loop<Self>, token: usize) {
        if let Token::Timer(timer) = Token::decode(token) {
            let mut host = EvHost {
                lp,
                state: &mut self.state,
            };
            self.engine.on_timer(&mut host, timer);
        }
    }

    /// Finished tasks from the workers (several sends coalesce into one
    /// callback, so the mailbox is drained), then a shutdown request, if any.
    fn on_async(&mut self, lp: &Loop<Self>, _token: usize) {
        let shared = Arc::clone(&self.state.shared);
        let mailbox = shared.mailbox(self.engine.id());
        let mut host = EvHost {
            lp,
            state: &mut self.state,
        };
        while let Some(done) = mailbox.take() {
            self.engine.on_task_done(&mut host, done);
        }
        // A place may have freed on the worker side (--delegate socket|loop).
        self.engine.retry_hand_offs(&mut host);
        if let Some(how) = host.state.shutdown.requested() {
            self.engine.begin_drain(&mut host, how);
        }
    }
}
