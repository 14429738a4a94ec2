//! `--delegate task`: worker threads (the C++ `ThreadPool` of workers) that run
//! the protocol's jobs, and the mailboxes that carry finished tasks back to
//! their accept loops.
//!
//! Tasks travel as [`TaskRef`]s through one [`TaskQueue`]: a bounded lock-free
//! queue sized so it can never overflow (every connection has at most one task
//! out), whose idle workers sleep on a counting semaphore ([`Permits`]). No lock
//! anywhere: an accept loop's `submit` is one push and one atomic add, plus one
//! wake-up system call when a worker sleeps, whatever the workers are doing.
//! The hand-off queues of modes `socket` and `loop` are `TaskQueue`s too.
//! Completions go to the owning loop's [`Mailbox`]: a bounded queue plus that
//! loop's single `ev_async`, whose callback drains the queue until empty.
#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicIsize, AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use crate::engine::Protocol;
use crate::ev::AsyncSender;
use crate::metrics::Metrics;
use crate::task::{Done, TaskRef};
#[cfg(test)]
use {
    super::testing::BOUND,
    std::sync::{mpsc, Mutex},
};

/// Where one accept loop receives its finished tasks.
#[derive(Debug)]
pub struct Mailbox {
    done: ArrayQueue<Done>,
    wake: OnceLock<AsyncSender>,
}

impl Mailbox {
    /// A mailbox for a loop of `capacity` connections (one task each at most);
    /// `ENOMEM` if its queue cannot be had.
    pub fn new(capacity: usize) -> io::Result<Self> {
        Ok(Mailbox {
            done: crate::os::array_queue(capacity)?,
            wake: OnceLock::new(),
        })
    }

    /// Connects the mailbox to its loop's started `ev_async`; once only.
    pub fn connect(&self, wake: AsyncSender) {
        assert!(self.wake.set(wake).is_ok(), "mailbox connected twice");
    }

    /// Delivers a finished task and wakes the loop.
    pub fn post(&self, done: Done) {
        if self.done.push(done).is_err() {
            // Impossible by construction: one slot per connection of that loop.
            panic!("completion queue overflow");
        }
        self.ring();
    }

    /// Wakes the loop without a delivery (shutdown uses it).
    pub fn ring(&self) {
        if let Some(wake) = self.wake.get() {
            wake.send();
        }
    }

    /// The next delivered task, if any; the loop drains until `None`.
    pub fn take(&self) -> Option<Done> {
        self.done.pop()
    }
}

/// A counting semaphore on one futex word, for threads that wait for work.
///
/// Why not a mutex and a condition variable: with hundreds of workers sharing a
/// CPU, a worker descheduled while it holds the parking lock stalls every
/// producer that needs the lock to wake someone (the accept loop, in `submit`),
/// and a woken worker must take that lock again before it can run, so one
/// hand-over costs two wake-ups. Here a post is one atomic add, plus one
/// `futex_wake` when a thread sleeps; a taker that was descheduled anywhere
/// holds nothing anyone waits for.
struct Permits {
    /// Permits not yet taken, minus the takers that found none: those sleep, or
    /// are about to, each owed one wake token.
    count: AtomicIsize,
    /// Wake tokens posted to owed takers, and [`CLOSED`]: the futex word.
    tokens: AtomicU32,
    /// Runs where a taker is about to sleep (tests freeze a taker there).
    #[cfg(test)]
    before_sleep: OnceLock<Box<dyn Fn() + Send + Sync>>,
}

/// Set in `tokens` by [`Permits::close`]: nobody sleeps any more.
const CLOSED: u32 = 1 << 31;

impl Permits {
    fn new() -> Self {
        Permits {
            count: AtomicIsize::new(0),
            tokens: AtomicU32::new(0),
            #[cfg(test)]
            before_sleep: OnceLock::new(),
        }
    }

    /// Adds a permit, waking one sleeping taker if any.
    fn post(&self) {
        // A negative count: someone took a permit that was not there and is (or
        // will be) asleep; hand it a token. Nobody owed: no system call.
        if self.count.fetch_add(1, Ordering::SeqCst) < 0 {
            self.tokens.fetch_add(1, Ordering::SeqCst);
            crate::os::futex_wake(&self.tokens, 1);
        }
    }

    /// Takes a permit if one is there, never sleeping.
    fn try_take(&self) -> bool {
        self.count
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| {
                (c > 0).then_some(c - 1)
            })
            .is_ok()
    }

    /// Takes a permit, sleeping until one is posted; once closed, returns
    /// whether or not it got one.
    fn take(&self) {
        if self.count.fetch_sub(1, Ordering::SeqCst) > 0 {
            return;
        }
        // Owed a token: any token will do, every owed taker is alike.
        loop {
            let word = self.tokens.load(Ordering::SeqCst);
            if word & CLOSED != 0 {
                return;
            }
            if word > 0 {
                if self
                    .tokens
                    .compare_exchange_weak(word, word - 1, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
                {
                    return;
                }
                continue;
            }
            #[cfg(test)]
            if let Some(hook) = self.before_sleep.get() {
                hook();
            }
            // Returns at once if a token (or the close) came meanwhile.
            crate::os::futex_wait(&self.tokens, 0);
        }
    }

    /// Wakes every taker and lets none sleep again.
    fn close(&self) {
        self.tokens.fetch_or(CLOSED, Ordering::SeqCst);
        crate::os::futex_wake(&self.tokens, i32::MAX);
    }

    fn is_closed(&self) -> bool {
        self.tokens.load(Ordering::SeqCst) & CLOSED != 0
    }
}

/// A bounded queue whose consumers sleep while it is empty, and whose producers
/// never wait: a lock-free `ArrayQueue` plus one [`Permits`] per item.
pub struct TaskQueue<T> {
    items: ArrayQueue<T>,
    permits: Permits,
}

impl<T> fmt::Debug for TaskQueue<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskQueue")
            .field("len", &self.items.len())
            .field("capacity", &self.items.capacity())
            .finish_non_exhaustive()
    }
}

impl<T> TaskQueue<T> {
    /// Room for `capacity` items; `ENOMEM` if it cannot be had.
    pub fn new(capacity: usize) -> io::Result<Self> {
        Ok(TaskQueue {
            items: crate::os::array_queue(capacity)?,
            permits: Permits::new(),
        })
    }

    /// Queues `item` and wakes a sleeping consumer, if any; `Err(item)` when
    /// full. Never waits for a consumer, whatever it is doing.
    pub fn push(&self, item: T) -> Result<(), T> {
        self.items.push(item)?;
        self.permits.post();
        Ok(())
    }

    /// The next item, sleeping while there is none; `None` once closed (what
    /// is still queued then is left there).
    pub fn pop(&self) -> Option<T> {
        loop {
            self.permits.take();
            if self.permits.is_closed() {
                return None;
            }
            // A permit is posted after its item's push has completed, and
            // every pop holds a permit, so this finds one; the loop only
            // guards the invariant.
            if let Some(item) = self.items.pop() {
                return Some(item);
            }
        }
    }

    /// The next item if there is one, never sleeping; once closed, what is
    /// still queued (one item a call), for a consumer that drains.
    pub fn try_pop(&self) -> Option<T> {
        // Once closed the permits no longer count the items (a closed `pop`
        // may have taken one and left its item).
        if self.permits.is_closed() || self.permits.try_take() {
            self.items.pop()
        } else {
            None
        }
    }

    /// Wakes every consumer: [`TaskQueue::pop`] returns `None` from now on.
    pub fn close(&self) {
        self.permits.close();
    }

    /// Whether [`TaskQueue::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.permits.is_closed()
    }

    /// How many items it can hold.
    pub fn capacity(&self) -> usize {
        self.items.capacity()
    }
}

/// What tests of consumers' sleep need to see and do.
#[cfg(test)]
impl<T> TaskQueue<T> {
    /// Consumers that found nothing and sleep, or are about to.
    pub(crate) fn sleepers(&self) -> usize {
        usize::try_from(-self.permits.count.load(Ordering::SeqCst)).unwrap_or(0)
    }

    /// Freezes the first consumer that gets to the point of sleeping right
    /// there, as if descheduled (once only): the receiver hears when it is
    /// frozen; it goes on when the sender sends or is dropped.
    pub(crate) fn freeze_first_sleeper(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (frozen_tx, frozen_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let frozen_tx = Mutex::new(Some(frozen_tx));
        let release_rx = Mutex::new(release_rx);
        let hook = move || {
            let first = frozen_tx.lock().unwrap().take();
            if let Some(frozen) = first {
                let _ = frozen.send(());
                // Longer than any test waits: released by it.
                let _ = release_rx.lock().unwrap().recv_timeout(3 * BOUND);
            }
        };
        assert!(
            self.permits.before_sleep.set(Box::new(hook)).is_ok(),
            "one freeze per queue"
        );
        (frozen_rx, release_tx)
    }
}

/// What the accept loops and the workers share.
#[derive(Debug)]
pub struct Shared {
    tasks: TaskQueue<TaskRef>,
    mailboxes: Vec<Mailbox>,
}

impl Shared {
    /// Room for `total_capacity` tasks (all connections of all loops) and one
    /// mailbox of `loop_capacity` per accept loop; `ENOMEM` if a queue cannot
    /// be had.
    pub fn new(loops: usize, loop_capacity: usize, total_capacity: usize) -> io::Result<Self> {
        Ok(Shared {
            tasks: TaskQueue::new(total_capacity)?,
            mailboxes: (0..loops)
                .map(|_| Mailbox::new(loop_capacity))
                .collect::<io::Result<_>>()?,
        })
    }

    /// The mailbox of accept loop `owner`.
    pub fn mailbox(&self, owner: u32) -> &Mailbox {
        &self.mailboxes[owner as usize]
    }

    /// All mailboxes, one per accept loop.
    pub fn mailboxes(&self) -> &[Mailbox] {
        &self.mailboxes
    }

    /// Queues a task for the workers and wakes one if any sleeps.
    pub fn submit(&self, task: TaskRef) {
        if self.tasks.push(task).is_err() {
            // Impossible by construction: one slot per connection.
            panic!("task queue overflow");
        }
    }

    /// The next task, sleeping while there is none; `None` once stopping.
    fn next(&self) -> Option<TaskRef> {
        self.tasks.pop()
    }

    fn stop(&self) {
        self.tasks.close();
    }
}

/// The worker threads; stop them with [`Workers::stop_and_join`].
pub struct Workers {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Starts `count` workers named `worker-N` for `proto`'s jobs, worker N
    /// counting in `metrics.worker(N)`.
    pub fn start<P: Protocol>(
        shared: Arc<Shared>,
        count: usize,
        metrics: &Metrics,
        proto: &Arc<P>,
    ) -> io::Result<Self> {
        let mut threads = Vec::with_capacity(count);
        for n in 0..count {
            let shared = Arc::clone(&shared);
            let proto = Arc::clone(proto);
            let counters = metrics.worker(n);
            threads.push(
                thread::Builder::new()
                    .name(format!("worker-{n}"))
                    .spawn(move || {
                        while let Some(task) = shared.next() {
                            // A task whose client left while it was queued was
                            // withdrawn by its loop: skip it.
                            let Some(task) = task.claim() else { continue };
                            counters.started();
                            let done = task.run_with(|job: &mut P::Job| {
                                let wait = proto.job_wait(job);
                                if !wait.is_zero() {
                                    thread::sleep(wait);
                                }
                                proto.run_job(job);
                            });
                            counters.finished();
                            shared.mailbox(done.route().owner).post(done);
                        }
                    })?,
            );
        }
        Ok(Workers { shared, threads })
    }

    /// Tells the workers to stop once their current task is done (tasks still
    /// queued are not run: their connections were already given up) and waits up
    /// to `grace` for them. True if all have ended; false if some are still inside
    /// a task (they are left to run on, detached).
    pub fn stop_and_join(self, grace: Duration) -> bool {
        self.shared.stop();
        let deadline = std::time::Instant::now() + grace;
        while self.threads.iter().any(|t| !t.is_finished()) && std::time::Instant::now() < deadline
        {
            thread::sleep(Duration::from_millis(1));
        }
        let all = self.threads.iter().all(|t| t.is_finished());
        for t in self.threads {
            if t.is_finished() {
                let _ = t.join();
            }
        }
        all
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::wait_until;
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize};

    #[test]
    fn every_item_reaches_exactly_one_of_many_sleeping_consumers() {
        const CONSUMERS: usize = 128;
        const PRODUCERS: usize = 4;
        const EACH: usize = 5_000;
        const TOTAL: usize = PRODUCERS * EACH;
        let q = Arc::new(TaskQueue::<usize>::new(TOTAL).unwrap());
        let seen: Arc<Vec<AtomicBool>> =
            Arc::new((0..TOTAL).map(|_| AtomicBool::new(false)).collect());
        let taken = Arc::new(AtomicUsize::new(0));
        let (ended_tx, ended_rx) = mpsc::channel();
        let consumers: Vec<_> = (0..CONSUMERS)
            .map(|_| {
                let (q, seen, taken, ended) =
                    (q.clone(), seen.clone(), taken.clone(), ended_tx.clone());
                thread::spawn(move || {
                    while let Some(id) = q.pop() {
                        assert!(
                            !seen[id].swap(true, Ordering::SeqCst),
                            "item {id} taken twice"
                        );
                        taken.fetch_add(1, Ordering::SeqCst);
                    }
                    ended.send(()).unwrap();
                })
            })
            .collect();
        // Most consumers asleep before the first push.
        wait_until("the consumers sleep", || q.sleepers() >= CONSUMERS / 2);
        let producers: Vec<_> = (0..PRODUCERS)
            .map(|p| {
                let q = q.clone();
                thread::spawn(move || {
                    for i in 0..EACH {
                        q.push(p * EACH + i).unwrap();
                        if i % 64 == 0 {
                            // Let consumers go back to sleep now and then.
                            thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for p in producers {
            p.join().unwrap();
        }
        wait_until("every item is taken", || {
            taken.load(Ordering::SeqCst) == TOTAL
        });
        assert!(seen.iter().all(|s| s.load(Ordering::SeqCst)));
        q.close();
        for _ in 0..CONSUMERS {
            ended_rx
                .recv_timeout(BOUND)
                .expect("a consumer did not end at close");
        }
        for c in consumers {
            c.join().unwrap();
        }
    }

    #[test]
    fn a_producer_never_waits_for_a_consumer_stopped_on_its_way_to_sleep() {
        // One consumer is frozen just before it sleeps (as if descheduled
        // there), the other sleeps: a push must return at once and the
        // sleeping one must get the item. With a parking lock held at that
        // point, the push would wait for the frozen consumer.
        let q = Arc::new(TaskQueue::<u32>::new(4).unwrap());
        let (frozen_rx, release_tx) = q.freeze_first_sleeper();
        let (got_tx, got_rx) = mpsc::channel();
        let consumers: Vec<_> = (0..2)
            .map(|_| {
                let (q, got) = (q.clone(), got_tx.clone());
                thread::spawn(move || {
                    while let Some(x) = q.pop() {
                        got.send(x).unwrap();
                    }
                })
            })
            .collect();
        frozen_rx
            .recv_timeout(BOUND)
            .expect("a consumer reached its sleep");
        // (A parking lock held by the frozen consumer fails the test here
        // already: the other one cannot even start to wait.)
        wait_until("both consumers wait for work", || q.sleepers() == 2);
        let (pushed_tx, pushed_rx) = mpsc::channel();
        let producer = {
            let q = q.clone();
            thread::spawn(move || {
                q.push(7).unwrap();
                pushed_tx.send(()).unwrap();
            })
        };
        let pushed = pushed_rx.recv_timeout(BOUND);
        let got = got_rx.recv_timeout(BOUND);
        release_tx.send(()).unwrap();
        assert!(pushed.is_ok(), "the push waited for the frozen consumer");
        assert_eq!(got, Ok(7), "the sleeping consumer did not get the item");
        producer.join().unwrap();
        q.close();
        for c in consumers {
            c.join().unwrap();
        }
    }

    #[test]
    fn pushes_with_nobody_asleep_post_no_wake_up_and_close_ends_every_pop() {
        let q = Arc::new(TaskQueue::<u32>::new(4).unwrap());
        for i in 0..3 {
            q.push(i).unwrap();
        }
        assert_eq!(q.push(3), Ok(()));
        assert_eq!(q.push(4), Err(4), "full");
        assert_eq!(
            q.permits.tokens.load(Ordering::SeqCst),
            0,
            "no wake-up posted"
        );
        assert_eq!((q.pop(), q.pop()), (Some(0), Some(1)));
        let sleepers: Vec<_> = (0..8)
            .map(|_| {
                let q = q.clone();
                thread::spawn(move || while q.pop().is_some() {})
            })
            .collect();
        wait_until("the pops sleep", || q.sleepers() == 8);
        q.close();
        for s in sleepers {
            s.join().unwrap();
        }
        assert_eq!(q.pop(), None, "closed: nothing more, even with items left");
    }
}
