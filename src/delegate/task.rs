//! `--delegate task`: worker threads (the C++ `ThreadPool` of workers) that run
//! the protocol's jobs, and the mailboxes that carry finished tasks back to
//! their accept loops.
//!
//! Tasks travel as [`TaskRef`]s through one bounded lock-free queue sized so it can
//! never overflow (every connection has at most one task out). An idle worker
//! parks on a condition variable; producers touch the lock only when someone is
//! parked. Completions go to the owning loop's [`Mailbox`]: a bounded queue plus
//! that loop's single `ev_async`, whose callback drains the queue until empty.
#![forbid(unsafe_code)]

use std::io;
use std::sync::atomic::{fence, AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use crate::engine::Protocol;
use crate::ev::AsyncSender;
use crate::metrics::Metrics;
use crate::task::{Done, TaskRef};

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

/// What the accept loops and the workers share.
#[derive(Debug)]
pub struct Shared {
    queue: ArrayQueue<TaskRef>,
    mailboxes: Vec<Mailbox>,
    parked: AtomicUsize,
    lock: Mutex<()>,
    wakeup: Condvar,
    stop: AtomicBool,
}

impl Shared {
    /// Room for `total_capacity` tasks (all connections of all loops) and one
    /// mailbox of `loop_capacity` per accept loop; `ENOMEM` if a queue cannot
    /// be had.
    pub fn new(loops: usize, loop_capacity: usize, total_capacity: usize) -> io::Result<Self> {
        Ok(Shared {
            queue: crate::os::array_queue(total_capacity)?,
            mailboxes: (0..loops)
                .map(|_| Mailbox::new(loop_capacity))
                .collect::<io::Result<_>>()?,
            parked: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wakeup: Condvar::new(),
            stop: AtomicBool::new(false),
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

    /// Queues a task for the workers and wakes one if any is parked.
    pub fn submit(&self, task: TaskRef) {
        if self.queue.push(task).is_err() {
            panic!("task queue overflow");
        }
        // Pairs with the fence in `next`: either the parked worker sees the task,
        // or we see it parked and wake it.
        fence(Ordering::SeqCst);
        if self.parked.load(Ordering::SeqCst) > 0 {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.wakeup.notify_one();
        }
    }

    /// The next task, parking while there is none; `None` once stopping.
    fn next(&self) -> Option<TaskRef> {
        loop {
            if let Some(task) = self.queue.pop() {
                return Some(task);
            }
            if self.stop.load(Ordering::SeqCst) {
                return None;
            }
            let guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.parked.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            // Re-check under the lock: a producer that missed our `parked` count
            // pushed before it, so we see its task here.
            if let Some(task) = self.queue.pop() {
                self.parked.fetch_sub(1, Ordering::SeqCst);
                return Some(task);
            }
            if !self.stop.load(Ordering::SeqCst) {
                drop(self.wakeup.wait(guard).unwrap_or_else(|e| e.into_inner()));
            }
            self.parked.fetch_sub(1, Ordering::SeqCst);
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.wakeup.notify_all();
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
