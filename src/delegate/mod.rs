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
//! enters one after reserving a *place* (an atomic count bounded by the queue's
//! size), so a push can never fail and nothing is ever dropped for want of room.
//! When no worker has a place, the connection waits in its accept loop, watched
//! for EOF, and the loop is rung when a place frees.
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

use crate::config::Delegate;

pub(crate) mod handoff;
pub mod socket;
pub(crate) mod task;
#[path = "loop.rs"]
pub mod worker_loop;

/// What the hand-off queues of modes `socket` and `loop` can hold, fixed at start-up.
///
/// They hold at most what the accept threads hold (`-A` x `-C`):
/// - `socket`: one queue of `-A` x `-C` places shared by all workers (a blocking
///   worker takes the next connection whoever queued it, so no connection waits
///   behind a busy worker); each worker has one connection in hand at a time.
/// - `loop`: each of the `-w` worker loops has a queue and a connection pool of
///   `ceil(-A x -C / -w)` (pool slots are reserved address space, committed when
///   touched, like the accept pools).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacity {
    /// Queues (one in `socket` mode, one per worker in `loop` mode).
    pub queues: usize,
    /// Places in each queue.
    pub per_queue: usize,
}

impl Capacity {
    /// The hand-off queues for `mode` with `accept` accept threads of `per_accept`
    /// connections and `workers` workers (at least 1).
    pub fn new(mode: Delegate, accept: usize, per_accept: usize, workers: usize) -> Capacity {
        let total = accept.saturating_mul(per_accept).max(1);
        match mode {
            Delegate::Loop => Capacity {
                queues: workers.max(1),
                per_queue: total.div_ceil(workers.max(1)),
            },
            _ => Capacity {
                queues: 1,
                per_queue: total,
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

/// One hand-off queue and the count of its places taken.
struct Queue<J> {
    ring: ArrayQueue<Handoff<J>>,
    /// Connections queued or held by the worker(s) of this queue: never above
    /// the queue's capacity, so a push after a reservation cannot fail.
    held: AtomicUsize,
    /// The worker loop's wake-up (`loop` mode).
    wake: OnceLock<AsyncSender>,
}

/// What the accept loops and the workers of modes `socket` and `loop` share.
pub struct HandOffQueues<J> {
    mode: Delegate,
    queues: Box<[Queue<J>]>,
    /// Per accept loop: it has a connection waiting for a place, ring it when one
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

impl<J> fmt::Debug for HandOffQueues<J> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandOffQueues")
            .field("mode", &self.mode)
            .field("queues", &self.queues.len())
            .finish_non_exhaustive()
    }
}

impl<J> HandOffQueues<J> {
    /// The hand-off queues of `mode` with `capacity`, for `accept_loops` accept loops
    /// rung through `shared`'s mailboxes. Every queue is allocated here;
    /// `ENOMEM` if one cannot be had.
    pub fn new(
        mode: Delegate,
        capacity: Capacity,
        accept_loops: usize,
        shared: Arc<Shared>,
    ) -> io::Result<Self> {
        Ok(HandOffQueues {
            mode,
            queues: (0..capacity.queues)
                .map(|_| {
                    Ok(Queue {
                        ring: crate::os::array_queue(capacity.per_queue)?,
                        held: AtomicUsize::new(0),
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

    /// The mode these queues serve.
    pub fn mode(&self) -> Delegate {
        self.mode
    }

    /// Places in each queue.
    pub fn per_queue(&self) -> usize {
        self.queues[0].ring.capacity()
    }

    /// Connections queued on `queue` or held by its worker(s).
    #[cfg(test)]
    pub fn held(&self, queue: usize) -> usize {
        self.queues[queue].held.load(Ordering::Relaxed)
    }

    /// Reserves a place for a connection of accept loop `owner`, trying the queues
    /// round robin from `*next` (which moves past the queue chosen). Round robin,
    /// not least loaded: every slow request costs the same fixed duration, so
    /// turns already spread the load evenly, and a full queue is skipped; least
    /// loaded would read every queue's count on every hand-off for the same
    /// spread. `None` when every queue is full: `owner` is then rung once a place
    /// frees.
    pub fn reserve(&self, owner: u32, next: &mut usize) -> Option<usize> {
        if let Some(queue) = self.try_reserve(next) {
            return Some(queue);
        }
        // Register before the second try: a place freed between the first try
        // and the registration would otherwise ring nobody.
        self.waiting[owner as usize].store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        self.try_reserve(next)
    }

    fn try_reserve(&self, next: &mut usize) -> Option<usize> {
        let n = self.queues.len();
        for i in 0..n {
            let d = (*next + i) % n;
            let queue = &self.queues[d];
            let cap = queue.ring.capacity();
            let got = queue
                .held
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

    /// Queues `handoff` on `queue`, whose place the caller reserved, and wakes its
    /// worker.
    pub fn hand_off(&self, queue: usize, handoff: Handoff<J>) {
        let d = &self.queues[queue];
        if d.ring.push(handoff).is_err() {
            // Impossible by construction: a place was reserved, and places never
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

    /// The next connection queued on `queue`, if any (never blocks).
    pub fn take(&self, queue: usize) -> Option<Handoff<J>> {
        self.queues[queue].ring.pop()
    }

    /// Gives back `n` places of `queue` (connections closed and their slots free)
    /// and rings the accept loops waiting for one.
    pub fn release(&self, queue: usize, n: usize) {
        if n == 0 {
            return;
        }
        self.queues[queue].held.fetch_sub(n, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        for (owner, flag) in self.waiting.iter().enumerate() {
            if flag.load(Ordering::SeqCst) && flag.swap(false, Ordering::SeqCst) {
                self.shared.mailbox(owner as u32).ring();
            }
        }
    }

    /// Connects worker loop `queue`'s wake-up (`loop` mode); once only.
    pub fn connect(&self, queue: usize, wake: AsyncSender) {
        assert!(
            self.queues[queue].wake.set(wake).is_ok(),
            "worker loop connected twice"
        );
    }

    /// Wakes every worker: loops see [`HandOffQueues::stopping`], blocking
    /// workers return from [`HandOffQueues::next_socket`] once the queue is empty.
    /// Connections still queued at `deadline` (the end of the drain) are closed
    /// unanswered.
    pub fn stop(&self, deadline: Instant) {
        let _ = self.drain_deadline.set(deadline);
        self.stop.store(true, Ordering::SeqCst);
        for d in self.queues.iter() {
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

    fn queues(mode: Delegate, cap: Capacity) -> HandOffQueues<()> {
        HandOffQueues::new(mode, cap, 2, Arc::new(Shared::new(2, 4, 8).unwrap())).unwrap()
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
        assert_eq!(
            loop_cap,
            Capacity {
                queues: 3,
                per_queue: 4
            }
        );
        let sock = Capacity::new(Delegate::Socket, 2, 5, 3);
        assert_eq!(
            sock,
            Capacity {
                queues: 1,
                per_queue: 10
            }
        );
    }

    #[test]
    fn seats_go_round_robin_skip_full_desks_and_ring_waiters_when_freed() {
        let s = queues(
            Delegate::Loop,
            Capacity {
                queues: 2,
                per_queue: 1,
            },
        );
        let mut next = 0;
        assert_eq!(s.reserve(0, &mut next), Some(0));
        assert_eq!(next, 1);
        assert_eq!(s.reserve(0, &mut next), Some(1));
        assert_eq!(s.reserve(1, &mut next), None, "both queues full");
        assert!(s.waiting[1].load(Ordering::SeqCst));
        s.hand_off(0, handoff());
        assert!(s.take(0).is_some());
        assert_eq!(s.held(0), 1, "taken is still held until released");
        s.release(0, 1);
        assert!(!s.waiting[1].load(Ordering::SeqCst), "the waiter was rung");
        assert_eq!(s.reserve(1, &mut next), Some(0), "queue 1 is still full");
    }

    #[test]
    fn blocking_workers_serve_what_was_queued_before_the_stop() {
        let s = Arc::new(queues(
            Delegate::Socket,
            Capacity {
                queues: 1,
                per_queue: 4,
            },
        ));
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
