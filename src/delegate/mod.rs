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
//! every queue is a preallocated lock-free [`TaskQueue`], and a connection only
//! enters one after reserving a *place* (an atomic count bounded by the queue's
//! size), so a push can never fail and nothing is ever dropped for want of room.
//! When no worker has a place, the connection waits in its accept loop, watched
//! for EOF, and the loop is rung when a place frees. No lock either: `socket`
//! mode's idle workers sleep on the queue's semaphore, so a hand-off never waits
//! for a worker, whatever it is doing.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::ev::AsyncSender;
use task::{Shared, TaskQueue};

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
    /// `socket` mode's workers sleep on it; a worker loop only takes what its
    /// wake-up announced.
    ring: TaskQueue<Handoff<J>>,
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
    /// Set by `stop`, before the queues close: what is still queued after it
    /// is closed unanswered.
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
                        ring: TaskQueue::new(capacity.per_queue)?,
                        held: AtomicUsize::new(0),
                        wake: OnceLock::new(),
                    })
                })
                .collect::<io::Result<_>>()?,
            waiting: (0..accept_loops).map(|_| AtomicBool::new(false)).collect(),
            shared,
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
    /// worker: a sleeping blocking worker (the push does), or the worker loop.
    /// Never waits for a worker.
    pub fn hand_off(&self, queue: usize, handoff: Handoff<J>) {
        let d = &self.queues[queue];
        if d.ring.push(handoff).is_err() {
            // Impossible by construction: a place was reserved, and places never
            // exceed the queue's capacity.
            panic!("hand-off queue overflow");
        }
        if let Some(wake) = d.wake.get() {
            wake.send();
        }
    }

    /// The next connection queued on `queue`, if any (never blocks).
    pub fn take(&self, queue: usize) -> Option<Handoff<J>> {
        self.queues[queue].ring.try_pop()
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
        for d in self.queues.iter() {
            d.ring.close();
            if let Some(wake) = d.wake.get() {
                wake.send();
            }
        }
    }

    /// Whether the server is stopping (every accept loop has ended: nothing more
    /// will be queued).
    pub fn stopping(&self) -> bool {
        // `stop` closes the queues in order, the first first.
        self.queues[0].ring.is_closed()
    }

    /// The end of the drain, once stopping.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain_deadline.get().copied()
    }

    /// Whether the drain's deadline has passed.
    pub fn past_drain_deadline(&self) -> bool {
        self.drain_deadline().is_some_and(|d| Instant::now() >= d)
    }

    /// `socket` mode: the next queued connection, sleeping while there is none;
    /// `None` once stopping and the queue is empty (what was queued before the
    /// stop is still served: those are complete requests).
    pub fn next_socket(&self) -> Option<Handoff<J>> {
        let ring = &self.queues[0].ring;
        // `pop` ends at the stop, leaving what is queued: drain it.
        ring.pop().or_else(|| ring.try_pop())
    }
}

/// What tests of `socket` mode's sleeping workers need.
#[cfg(test)]
impl<J> HandOffQueues<J> {
    /// Blocking workers that found nothing queued and sleep, or are about to.
    fn sleepers(&self) -> usize {
        self.queues[0].ring.sleepers()
    }

    /// Freezes the first blocking worker that gets to the point of sleeping
    /// ([`TaskQueue::freeze_first_sleeper`]).
    fn freeze_first_sleeper(&self) -> (std::sync::mpsc::Receiver<()>, std::sync::mpsc::Sender<()>) {
        self.queues[0].ring.freeze_first_sleeper()
    }
}

/// What the tests of the workers' queues share.
#[cfg(test)]
mod testing {
    use std::thread;
    use std::time::{Duration, Instant};

    /// Generous bounds on waits that take microseconds when all is well.
    pub(super) const BOUND: Duration = Duration::from_secs(20);

    /// Waits (bounded) until `cond` holds.
    pub(super) fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let end = Instant::now() + BOUND;
        while !cond() {
            assert!(Instant::now() < end, "timed out waiting until {what}");
            thread::sleep(Duration::from_millis(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{wait_until, BOUND};
    use super::*;
    use std::sync::mpsc;
    use std::thread;

    fn queues(mode: Delegate, cap: Capacity) -> HandOffQueues<()> {
        HandOffQueues::new(mode, cap, 2, Arc::new(Shared::new(2, 4, 8).unwrap())).unwrap()
    }

    fn handoff() -> Handoff<()> {
        handoff_of(0)
    }

    fn handoff_of(owner: u32) -> Handoff<()> {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        Handoff {
            fd: a.into(),
            job: (),
            owner,
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

    #[test]
    fn a_hand_off_never_waits_for_a_worker_stopped_on_its_way_to_sleep() {
        // `socket` mode: one blocking worker is frozen just before it sleeps
        // (as if descheduled there), the other sleeps: the accept loop's
        // hand-off must return at once and the sleeping worker must get the
        // connection. With a parking lock held at that point, the hand-off
        // (and the other worker) would wait for the frozen one.
        let s = Arc::new(queues(
            Delegate::Socket,
            Capacity {
                queues: 1,
                per_queue: 4,
            },
        ));
        let (frozen_rx, release_tx) = s.freeze_first_sleeper();
        let (got_tx, got_rx) = mpsc::channel();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let (s, got) = (Arc::clone(&s), got_tx.clone());
                thread::spawn(move || {
                    while let Some(h) = s.next_socket() {
                        got.send(h.owner).unwrap();
                        s.release(0, 1);
                    }
                })
            })
            .collect();
        frozen_rx
            .recv_timeout(BOUND)
            .expect("a worker reached its sleep");
        wait_until("both workers wait for a connection", || s.sleepers() == 2);
        let (handed_tx, handed_rx) = mpsc::channel();
        let accept_loop = {
            let s = Arc::clone(&s);
            thread::spawn(move || {
                let mut next = 0;
                let queue = s.reserve(1, &mut next).unwrap();
                s.hand_off(queue, handoff_of(1));
                handed_tx.send(()).unwrap();
            })
        };
        let handed = handed_rx.recv_timeout(BOUND);
        let got = got_rx.recv_timeout(BOUND);
        drop(release_tx);
        assert!(handed.is_ok(), "the hand-off waited for the frozen worker");
        assert_eq!(got, Ok(1), "the sleeping worker did not get the connection");
        accept_loop.join().unwrap();
        s.stop(Instant::now());
        for w in workers {
            w.join().unwrap();
        }
    }
}
