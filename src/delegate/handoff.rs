//! The worker threads of `--delegate socket` and `--delegate loop`: started
//! before the accept threads, stopped after every accept thread has drained
//! (only then can nothing more be handed over), each finishing what it holds.
#![forbid(unsafe_code)]

use std::io;
use std::sync::{mpsc, Arc};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::HandOffQueues;
use super::{socket as socket_worker, worker_loop};
use crate::config::Config;
use crate::config::Delegate;
use crate::engine::Protocol;
use crate::engine::Settings;
use crate::metrics::{Metrics, Stats};
use crate::start_error::StartError;

/// How long past the drain's deadline the workers are waited for (a blocking
/// worker may be inside its sleep, a loop inside its last send).
const GRACE: Duration = Duration::from_millis(100);

/// The running workers of a hand-off mode.
#[derive(Debug)]
pub struct HandoffWorkers<J> {
    queues: Arc<HandOffQueues<J>>,
    threads: Vec<JoinHandle<Stats>>,
}

impl<J: Send + 'static> HandoffWorkers<J> {
    /// Starts `config.worker_threads` workers named `worker-N` for the mode of `queues`
    /// serving `proto`, worker N counting in `metrics.worker_side(N)`; returns
    /// once every worker loop exists, or with the first that could not be built.
    pub fn start<P: Protocol<Job = J>>(
        queues: Arc<HandOffQueues<J>>,
        config: &Config,
        metrics: &Metrics,
        proto: &Arc<P>,
    ) -> Result<Self, StartError> {
        let cannot_spawn = |e| StartError::system("cannot start worker threads", e);
        let mut threads = Vec::with_capacity(config.worker_threads);
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut loops = 0;
        for n in 0..config.worker_threads {
            let counters = metrics.worker_side(n);
            let work = Arc::clone(&queues);
            let proto = Arc::clone(proto);
            let builder = thread::Builder::new().name(format!("worker-{n}"));
            let t = match queues.mode() {
                Delegate::Loop => {
                    let settings = worker_loop::LoopSettings {
                        queue: n,
                        engine: Settings {
                            id: n as u32,
                            capacity: queues.per_queue(),
                            read_timeout: config.read_timeout,
                            idle_timeout: config.idle_timeout,
                            shutdown_timeout: config.shutdown_timeout,
                            counters,
                        },
                    };
                    // The loop is created on its own thread: a libev loop is
                    // bound to the thread that runs it.
                    let ready = ready_tx.clone();
                    loops += 1;
                    builder
                        .spawn(move || worker_loop::run(settings, work, proto, ready))
                        .map_err(cannot_spawn)?
                }
                _ => {
                    let settings = socket_worker::Settings {
                        id: n,
                        write_timeout: write_timeout(config),
                        counters,
                    };
                    builder
                        .spawn(move || {
                            let counters = Arc::clone(&settings.counters);
                            socket_worker::run(&work, settings, &*proto);
                            counters.stats()
                        })
                        .map_err(cannot_spawn)?
                }
            };
            threads.push(t);
        }
        drop(ready_tx);
        // Every worker loop exists (its epoll and eventfd open) before the
        // server says it serves.
        for _ in 0..loops {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(cannot_spawn(io::Error::other(
                        "a worker loop died at start-up",
                    )))
                }
            }
        }
        Ok(HandoffWorkers { queues, threads })
    }

    /// Tells the workers that nothing more will be handed over; they finish
    /// what they hold and what is queued, closing unanswered what is still
    /// queued at `deadline`. Waits for them until then (plus a grace) and
    /// returns their counters; a worker still busy is left to finish, detached.
    pub fn stop_and_join(self, deadline: Instant) -> Stats {
        self.queues.stop(deadline);
        let until = deadline + GRACE;
        while self.threads.iter().any(|t| !t.is_finished()) && Instant::now() < until {
            thread::sleep(Duration::from_millis(1));
        }
        let mut stats = Stats::default();
        for t in self.threads {
            if t.is_finished() {
                if let Ok(s) = t.join() {
                    stats.add(s);
                }
            }
        }
        stats
    }
}

/// The write deadline of `--delegate socket`: `--read-timeout`, or its default
/// (60 s) when that is 0 (waiting forever is not an option for a blocking
/// worker).
pub fn write_timeout(config: &Config) -> Duration {
    config.read_timeout.unwrap_or(
        Config::default()
            .read_timeout
            .unwrap_or(Duration::from_secs(60)),
    )
}
