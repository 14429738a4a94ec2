//! `--delegate`: how a protocol's offloaded job reaches a worker (the seed's
//! three modes, one file each), and the hand-off queues of the two modes in
//! which the connection itself leaves its accept loop.
//!
//! - `task` (the default, `task.rs`): the job goes to a worker thread, the
//!   connection stays in its accept loop.
//! - `socket` (`socket.rs`): the accept loop stops watching the fd and hands it
//!   with its job, as a [`Handoff`], to one shared queue; a blocking worker takes
//!   it, waits the job's wait in `poll` on it (rule 7 at once), runs the job,
//!   sends the response under a write deadline and closes.
//! - `loop` (`loop.rs`): the accept loop hands it to one worker's own queue and
//!   wakes that worker's libev loop, which hosts the same connection engine as
//!   the accept loops and takes the connection over with its job (no bytes are
//!   replayed).
//!
//! Capacity is fixed at start-up from `-A`, `-C` and `-w` (see [`Capacity`]):
//! every queue is a preallocated lock-free `ArrayQueue`, and a connection only
//! enters one after reserving a *seat* (an atomic count bounded by the queue's
//! size), so a push can never fail and nothing is ever dropped for want of room.
//! When no worker has a seat, the connection waits in its accept loop, watched
//! for EOF, and the loop is rung when a seat frees.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::Instant;

use crossbeam_queue::ArrayQueue;

use crate::ev::AsyncSender;
use task::Shared;

pub use crate::config::Delegate;

pub(crate) mod handoff;
pub mod socket;
pub(crate) mod task;
#[path = "loop.rs"]
pub mod worker_loop;

/// What the worker side of modes `socket` and `loop` can hold, fixed at start-up.
///
/// The worker side holds at most what the accept side holds (`-A` x `-C`):
/// - `socket`: one queue of `-A` x `-C` seats shared by all workers (a blocking
///   worker takes the next connection whoever queued it, so no connection waits
///   behind a busy worker); each worker has one connection in hand at a time.
/// - `loop`: each of the `-w` worker loops has a queue and a connection pool of
///   `ceil(-A x -C / -w)` (pool slots are reserved address space, committed when
///   touched, like the accept pools).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Queues (one in `socket` mode, one per worker in `loop` mode).
    pub desks: usize,
    /// Seats of each queue.
    pub seats: usize,
}

impl Capacity {
    /// The worker side for `mode` with `accept` accept threads of `per_accept`
    /// connections and `workers` workers (at least 1).
    pub fn new(mode: Delegate, accept: usize, per_accept: usize, workers: usize) -> Capacity {
        let total = accept.saturating_mul(per_accept).max(1);
        match mode {
            Delegate::Loop => Capacity {
                desks: workers.max(1),
                seats: total.div_ceil(workers.max(1)),
            },
            _ => Capacity {
                desks: 1,
                seats: total,
            },
        }
    }
}

/// A connection on its way from an accept loop to a worker: the socket, the
/// job its protocol offloaded, and where it came from. The request's bytes do
/// not travel: what the worker needs of them is in the job.
#[derive(Debug)]
pub struct Handoff<J> {
    /// The connection (non-blocking, no longer watched by the accept loop).
    pub fd: OwnedFd,
    /// Its offloaded job.
    pub job: J,
    /// The accept loop it came from (for the logs).
    pub owner: u32,
    /// When the accept loop handed it over (the slow-task histogram).
    pub at: Instant,
}

/// One queue of the worker side and its seats.
struct Desk<J> {
    queue: ArrayQueue<Handoff<J>>,
    /// Connections queued or held by the worker(s) of this desk: never above
    /// the queue's capacity, so a push after a reservation cannot fail.
    seats: AtomicUsize,
    /// The worker loop's wake-up (`loop` mode).
    wake: OnceLock<AsyncSender>,
}

/// What the accept loops and the workers of modes `socket` and `loop` share.
pub struct WorkerSide<J> {
    mode: Delegate,
    desks: Box<[Desk<J>]>,
    /// Per accept loop: it has a connection waiting for a seat, ring it when one
    /// frees.
    waiting: Box<[AtomicBool]>,
    /// The accept loops' wake-ups.
    shared: Arc<Shared>,
    /// `socket` mode's idle workers park here.
    parked: AtomicUsize,
    lock: Mutex<()>,
    wakeup: Condvar,
    stop: AtomicBool,
    /// Set with `stop`: what is still queued after it is closed unanswered.
    drain_deadline: OnceLock<Instant>,
}

impl<J> fmt::Debug for WorkerSide<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerSide")
            .field("mode", &self.mode)
            .field("desks", &self.desks.len())
            .finish_non_exhaustive()
    }
}

impl<J> WorkerSide<J> {
    /// The worker side of `mode` with `capacity`, for `accept_loops` accept loops
    /// rung through `shared`'s mailboxes. Every queue is allocated here;
    /// `ENOMEM` if one cannot be had.
    pub fn new(
        mode: Delegate,
        capacity: Capacity,
        accept_loops: usize,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        Ok(WorkerSide {
            mode,
            desks: (0..capacity.desks)
                .map(|_| {
                    Ok(Desk {
                        queue: crate::os::array_queue(capacity.seats)?,
                        seats: AtomicUsize::new(0),
                        wake: OnceLock::new(),
                    })
                })
                .collect::<io::Result<_>>()?,
            waiting: (0..accept_loops).map(|_| AtomicBool::new(false)).collect(),
            shared,
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wakeup: Condvar::new(),
            stop: AtomicBool::new(false),
            drain_deadline: OnceLock::new(),
        })
    }

    /// The mode this side serves.
    pub fn mode(&self) -> Delegate {
        self.mode
    }

    /// How many queues there are.
    pub fn desks(&self) -> usize {
        self.desks.len()
    }

    /// Seats of each queue.
    pub fn seats(&self) -> usize {
        self.desks[0].queue.capacity()
    }

    /// Connections queued for or held by desk `desk`'s worker(s).
    pub fn held(&self, desk: usize) -> usize {
        self.desks[desk].seats.load(Ordering::Relaxed)
    }

    /// Reserves a seat for a connection of accept loop `owner`, trying the desks
    /// round robin from `*next` (which moves past the desk chosen). Round robin,
    /// not least loaded: every slow request costs the same fixed duration, so
    /// turns already spread the load evenly, and a full desk is skipped; least
    /// loaded would read every desk's count on every hand-off for the same
    /// spread. `None` when every desk is full: `owner` is then rung once a seat
    /// frees.
    pub fn reserve(&self, owner: u32, next: &mut usize) -> Option<usize> {
        if let Some(desk) = self.try_reserve(next) {
            return Some(desk);
        }
        // Register before the second try: a seat freed between the first try
        // and the registration would otherwise ring nobody.
        self.waiting[owner as usize].store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.try_reserve(next)
    }

    fn try_reserve(&self, next: &mut usize) -> Option<usize> {
        let n = self.desks.len();
        for i in 0..n {
            let d = (*next + i) % n;
            let desk = &self.desks[d];
            let cap = desk.queue.capacity();
            let got = desk
                .seats
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |s| {
                    (s < cap).then_some(s + 1)
                })
                .is_ok();
            if got {
                *next = (d + 1) % n;
                return Some(d);
            }
        }
        None
    }

    /// Queues `handoff` on `desk`, whose seat the caller reserved, and wakes its
    /// worker.
    pub fn hand_off(&self, desk: usize, handoff: Handoff<J>) {
        let d = &self.desks[desk];
        if d.queue.push(handoff).is_err() {
            // Impossible by construction: a seat was reserved, and seats never
            // exceed the queue's capacity.
            panic!("hand-off queue overflow");
        }
        match self.mode {
            Delegate::Loop => {
                if let Some(wake) = d.wake.get() {
                    wake.send();
                }
            }
            _ => {
                // Pairs with the fence in `next_socket`.
                fence(Ordering::SeqCst);
                if self.parked.load(Ordering::SeqCst) > 0 {
                    let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
                    self.wakeup.notify_one();
                }
            }
        }
    }

    /// The next connection queued on `desk`, if any (never blocks).
    pub fn take(&self, desk: usize) -> Option<Handoff<J>> {
        self.desks[desk].queue.pop()
    }

    /// Gives back `n` seats of `desk` (connections closed and their slots free)
    /// and rings the accept loops waiting for one.
    pub fn release(&self, desk: usize, n: usize) {
        if n == 0 {
            return;
        }
        self.desks[desk].seats.fetch_sub(n, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        for (owner, flag) in self.waiting.iter().enumerate() {
            if flag.load(Ordering::SeqCst) && flag.swap(false, Ordering::SeqCst) {
                self.shared.mailbox(owner as u32).ring();
            }
        }
    }

    /// Connects worker loop `desk`'s wake-up (`loop` mode); once only.
    pub fn connect(&self, desk: usize, wake: AsyncSender) {
        assert!(
            self.desks[desk].wake.set(wake).is_ok(),
            "worker loop connected twice"
        );
    }

    /// Wakes every worker: loops see [`WorkerSide::stopping`], blocking
    /// workers return from [`WorkerSide::next_socket`] once the queue is empty.
    /// Connections still queued at `deadline` (the end of the drain) are closed
    /// unanswered.
    pub fn stop(&self, deadline: Instant) {
        let _ = self.drain_deadline.set(deadline);
        self.stop.store(true, Ordering::SeqCst);
        for d in self.desks.iter() {
            if let Some(wake) = d.wake.get() {
                wake.send();
            }
        }
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wakeup.notify_all();
    }

    /// Whether the server is stopping (every accept loop has ended: nothing more
    /// will be queued).
    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    /// The end of the drain, once stopping.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain_deadline.get().copied()
    }

    /// Whether the drain's deadline has passed.
    pub fn past_drain_deadline(&self) -> bool {
        self.drain_deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// `socket` mode: the next queued connection, parking while there is none;
    /// `None` once stopping and the queue is empty (what was queued before the
    /// stop is still served: those are complete requests).
    pub fn next_socket(&self) -> Option<Handoff<J>> {
        loop {
            if let Some(h) = self.take(0) {
                return Some(h);
            }
            if self.stopping() {
                return None;
            }
            let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.parked.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // Re-check under the lock: a producer that missed our `parked` count
            // pushed before it, so we see its connection here.
            if let Some(h) = self.take(0) {
                self.parked.fetch_sub(1, Ordering::SeqCst);
                return Some(h);
            }
            if !self.stopping() {
                drop(self.wakeup.wait(guard).unwrap_or_else(|e| e.into_inner()));
            }
            self.parked.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn side(mode: Delegate, cap: Capacity) -> WorkerSide<()> {
        WorkerSide::new(mode, cap, 2, Arc::new(Shared::new(2, 4, 8).unwrap())).unwrap()
    }

    fn handoff() -> Handoff<()> {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        Handoff {
            fd: a.into(),
            job: (),
            owner: 0,
            at: Instant::now(),
        }
    }

    #[test]
    fn labels_round_trip() {
        for m in Delegate::ALL {
            assert_eq!(Delegate::from_label(m.label()), Some(m));
        }
        assert_eq!(Delegate::from_label("Task"), None);
        assert_eq!(Delegate::default(), Delegate::Task);
        assert!(!Delegate::Task.hands_off() && Delegate::Loop.hands_off());
    }

    #[test]
    fn capacity_is_the_accept_side_split_over_the_workers() {
        let loop_cap = Capacity::new(Delegate::Loop, 2, 5, 3);
        assert_eq!(loop_cap, Capacity { desks: 3, seats: 4 });
        let sock = Capacity::new(Delegate::Socket, 2, 5, 3);
        assert_eq!(
            sock,
            Capacity {
                desks: 1,
                seats: 10
            }
        );
    }

    #[test]
    fn seats_go_round_robin_skip_full_desks_and_ring_waiters_when_freed() {
        let s = side(Delegate::Loop, Capacity { desks: 2, seats: 1 });
        let mut next = 0;
        assert_eq!(s.reserve(0, &mut next), Some(0));
        assert_eq!(next, 1);
        assert_eq!(s.reserve(0, &mut next), Some(1));
        assert_eq!(s.reserve(1, &mut next), None, "both desks full");
        assert!(s.waiting[1].load(Ordering::SeqCst));
        s.hand_off(0, handoff());
        assert!(s.take(0).is_some());
        assert_eq!(s.held(0), 1, "taken is still held until released");
        s.release(0, 1);
        assert!(!s.waiting[1].load(Ordering::SeqCst), "the waiter was rung");
        assert_eq!(s.reserve(1, &mut next), Some(0), "desk 1 is still full");
    }

    #[test]
    fn blocking_workers_serve_what_was_queued_before_the_stop() {
        let s = Arc::new(side(Delegate::Socket, Capacity { desks: 1, seats: 4 }));
        let mut next = 0;
        for _ in 0..2 {
            let d = s.reserve(0, &mut next).unwrap();
            s.hand_off(d, handoff());
        }
        s.stop(Instant::now() + std::time::Duration::from_secs(10));
        let worker = {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut n = 0;
                while s.next_socket().is_some() {
                    n += 1;
                }
                n
            })
        };
        assert_eq!(worker.join().unwrap(), 2);
    }
}
