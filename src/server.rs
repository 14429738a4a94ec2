//! Start-up, threads and shutdown: the C++ `main` and its `ThreadPool`.
//!
//! `Server::bind` does everything that can fail for a reason an operator must see
//! (the port, the listeners) before any thread exists; `Server::run` starts the
//! workers and the accept threads, the calling thread being accept thread 0, and
//! returns after the graceful drain.

#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;

use socket2::Socket;

use crate::accept::{AcceptTask, Settings, Stats};
use crate::config::Config;
use crate::ev::Loop;
use crate::worker::{Shared, Workers};
use crate::{debug, net, warn};

/// Exit status for a failed system call at start-up (the reference's).
pub const EXIT_SYSTEM: i32 = 100;
/// Exit status when the pools cannot be reserved (the reference's).
pub const EXIT_NO_MEMORY: i32 = 10;

/// How long the end of a drain waits for workers to leave their tasks.
const WORKER_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// Why the server did not start: one line for stderr, and the exit status.
#[derive(Debug)]
pub struct StartError {
    /// Process exit status to use.
    pub code: i32,
    message: String,
}

impl StartError {
    fn system(what: impl fmt::Display, err: io::Error) -> Self {
        let code = if err.raw_os_error() == Some(libc::ENOMEM) {
            EXIT_NO_MEMORY
        } else {
            EXIT_SYSTEM
        };
        StartError {
            code,
            message: format!("{what}: {err}"),
        }
    }
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StartError {}

/// The stop request every loop watches for.
pub struct Shutdown {
    requested: AtomicBool,
    shared: Arc<Shared>,
}

impl Shutdown {
    /// Whether a graceful stop was asked for.
    pub fn requested(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    fn trigger(&self) {
        if self.requested.swap(true, Ordering::SeqCst) {
            return;
        }
        // A loop that has already stopped ignores the ring (its sender is shut).
        for mailbox in self.shared.mailboxes() {
            mailbox.ring();
        }
    }
}

/// Asks a running server to stop gracefully (what SIGTERM does).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Shutdown>);

impl ShutdownHandle {
    /// Starts the graceful drain; later calls do nothing.
    pub fn shutdown(&self) {
        self.0.trigger();
    }
}

/// A bound, not yet running server.
pub struct Server {
    config: Config,
    listeners: Vec<Socket>,
    shared: Arc<Shared>,
    shutdown: Arc<Shutdown>,
}

impl Server {
    /// Refuses a port someone else holds, binds one `SO_REUSEPORT` listener per
    /// accept thread, and raises the fd limit.
    pub fn bind(config: &Config) -> Result<Server, StartError> {
        let threads = config.accept_threads;
        let port = config.port;
        net::ensure_port_free(port)
            .map_err(|e| StartError::system(format_args!("port {port} is already in use"), e))?;
        let defer = config
            .read_timeout
            .map_or(1, |t| t.as_secs().clamp(1, 30) as u32);
        let listeners = (0..threads)
            .map(|_| net::listener(port, defer))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| StartError::system(format_args!("cannot listen on 0.0.0.0:{port}"), e))?;
        // After the checks that can refuse to start, so a refusal is one line.
        let total = threads.saturating_mul(config.accept_capacity);
        let wanted = total as u64;
        match net::raise_nofile_limit() {
            Ok(limit) => {
                debug!("open files limit raised to {limit}");
                if limit < wanted {
                    warn!(
                        "open files limit {limit} is below accept threads x capacity ({wanted}): \
                         accept will pause when it runs out"
                    );
                }
            }
            Err(e) => warn!("cannot raise the open files limit: {e}"),
        }
        // After the limit is raised: libev's arrays are sized from it.
        crate::ev::reserve_arrays(threads, config.accept_capacity)
            .map_err(|e| StartError::system("cannot reserve libev's arrays", e))?;
        // Queues sized so they never overflow: one task per connection at most,
        // and none at all without workers (-w 0 answers slow requests inline).
        let (per_loop, all) = if config.worker_threads > 0 {
            (config.accept_capacity, total)
        } else {
            (1, 1)
        };
        let shared = Arc::new(Shared::new(threads, per_loop, all));
        let shutdown = Arc::new(Shutdown {
            requested: AtomicBool::new(false),
            shared: Arc::clone(&shared),
        });
        debug!(
            "listening on 0.0.0.0:{port}: {threads} accept threads x {} connections, {} workers",
            config.accept_capacity, config.worker_threads
        );
        Ok(Server {
            config: config.clone(),
            listeners,
            shared,
            shutdown,
        })
    }

    /// A handle that stops the server gracefully from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(Arc::clone(&self.shutdown))
    }

    /// Serves until a graceful stop completes; the calling thread is accept
    /// thread 0. Returns the counters of all accept threads together.
    pub fn run(self) -> Result<Stats, StartError> {
        let Server {
            config,
            listeners,
            shared,
            shutdown,
        } = self;
        let workers = if config.worker_threads > 0 {
            Some(
                Workers::start(Arc::clone(&shared), config.worker_threads)
                    .map_err(|e| StartError::system("cannot start worker threads", e))?,
            )
        } else {
            None
        };
        let settings = |id: usize| Settings {
            id: id as u32,
            capacity: config.accept_capacity,
            slow: (config.worker_threads > 0).then_some(config.slow_duration),
            read_timeout: config.read_timeout,
            shutdown_timeout: config.shutdown_timeout,
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut listeners = listeners.into_iter();
        let first = listeners.next().expect("at least one accept thread");
        let mut threads = Vec::new();
        for (n, listener) in listeners.enumerate() {
            let id = n + 1;
            let (s, shared, shutdown) = (settings(id), Arc::clone(&shared), Arc::clone(&shutdown));
            let ready = ready_tx.clone();
            let t = thread::Builder::new()
                .name(format!("accept-{id}"))
                .spawn(move || accept_thread(s, listener, shared, shutdown, ready, || {}))
                .map_err(|e| StartError::system("cannot start accept threads", e))?;
            threads.push(t);
        }
        for _ in &threads {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => {
                    return Err(StartError::system(
                        "accept thread",
                        io::Error::other("died at start-up"),
                    ))
                }
            }
        }
        // Workers serve every loop, so accept thread 0 stops them only after the
        // other accept threads have drained and ended.
        let mut others = Stats::default();
        let mut stats = accept_thread(
            settings(0),
            first,
            Arc::clone(&shared),
            Arc::clone(&shutdown),
            ready_tx,
            || {
                for t in threads {
                    if let Ok(Ok(s)) = t.join() {
                        others.add(s);
                    }
                }
                // After a normal drain every task has come back and the workers
                // are idle; after a drain timeout some may still be in a task and
                // are left to finish it: their loop's sender is shut by then, and
                // a pool with a task out is never freed.
                if let Some(w) = workers {
                    w.stop_and_join(WORKER_GRACE);
                }
            },
        )?;
        stats.add(others);
        Ok(stats)
    }
}

/// One accept thread: builds its loop and task, reports readiness, serves until
/// the drain ends, runs `after_drain`, then tears down.
fn accept_thread(
    settings: Settings,
    listener: Socket,
    shared: Arc<Shared>,
    shutdown: Arc<Shutdown>,
    ready: mpsc::Sender<Result<(), StartError>>,
    after_drain: impl FnOnce(),
) -> Result<Stats, StartError> {
    let id = settings.id;
    let setup = Loop::new()
        .map_err(|e| StartError::system("cannot create the event loop", e))
        .and_then(|lp| {
            AcceptTask::new(&lp, settings, listener, shared, shutdown)
                .map(|task| (lp, task))
                .map_err(|e| StartError::system("cannot reserve the connection pool", e))
        });
    let (lp, mut task) = match setup {
        Ok(v) => {
            let _ = ready.send(Ok(()));
            v
        }
        Err(e) => {
            let msg = e.to_string();
            let _ = ready.send(Err(e));
            return Err(StartError {
                code: EXIT_SYSTEM,
                message: msg,
            });
        }
    };
    drop(ready);
    debug!("accept-{id}: serving");
    task.run(&lp);
    after_drain();
    let stats = task.stats();
    task.teardown();
    debug!(
        "accept-{id}: stopped: {} served, {} dropped, {} timed out",
        stats.served, stats.dropped, stats.timed_out
    );
    Ok(stats)
}
