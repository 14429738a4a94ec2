//! Start-up, threads and shutdown: the C++ `main` and its `ThreadPool`.
//!
//! `Server::bind` does everything that can fail for a reason an operator must see
//! (the port, the listeners) before any thread exists; `Server::run` starts the
//! workers and the accept threads, the calling thread being accept thread 0, and
//! returns after the graceful drain.

#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Instant;

use socket2::Socket;

use crate::accept::{AcceptTask, Settings, Stats};
use crate::config::Config;
use crate::delegate::{Capacity, Delegate, WorkerSide};
use crate::ev::Loop;
use crate::handoff::HandoffWorkers;
use crate::lifecycle::{Shutdown, ShutdownHandle};
use crate::metrics::{self, Metrics};
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

/// A bound, not yet running server.
pub struct Server {
    config: Config,
    /// Each accept thread's listeners, one per address.
    listeners: Vec<Vec<Socket>>,
    /// The distinct listening sockets, for an upgrade to hand over.
    handover: Vec<RawFd>,
    /// What the listeners are bound to.
    addresses: Vec<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: Arc<Shutdown>,
    /// `--delegate socket|loop` with workers: where slow connections go.
    work: Option<Arc<WorkerSide>>,
    metrics: Arc<Metrics>,
    metrics_listener: Option<std::net::TcpListener>,
}

impl Server {
    /// Binds `config.listen`: refuses an address someone else holds, binds one
    /// `SO_REUSEPORT` listener per address per accept thread, and raises the fd
    /// limit.
    pub fn bind(config: &Config) -> Result<Server, StartError> {
        Server::bind_with(config, Vec::new())
    }

    /// As [`Server::bind`], but serves `inherited` listening sockets instead of
    /// binding, when there are any (socket activation, an upgrade): their
    /// addresses are what the server listens on, and `-p`/`--listen` are not
    /// bound.
    pub fn bind_with(config: &Config, inherited: Vec<OwnedFd>) -> Result<Server, StartError> {
        check_reservation(config, &Host::read())?;
        let threads = config.accept_threads;
        let defer = config
            .read_timeout
            .map_or(1, |t| t.as_secs().clamp(1, 30) as u32);
        // An upgrade's new process (or an activated one) binds --metrics next to
        // its predecessor's listener, which is still open.
        let upgrading = !inherited.is_empty();
        let (listeners, handover) = if inherited.is_empty() {
            bind_addresses(&config.listen, threads, defer)?
        } else {
            adopt_inherited(inherited, threads, defer)?
        };
        let metrics_listener = config
            .metrics
            .map(|addr| {
                metrics::bind(addr, upgrading).map_err(|e| {
                    StartError::system(format_args!("cannot listen for metrics on {addr}"), e)
                })
            })
            .transpose()?;
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
        // -w 0 answers slow requests inline in every mode.
        let mode = if config.worker_threads > 0 {
            config.delegate
        } else {
            Delegate::Task
        };
        let capacity = Capacity::new(mode, threads, config.accept_capacity, config.worker_threads);
        // Worker loops are loops too; their fds come on top of the accept side's.
        let (loops, per_loop_fds) = if mode == Delegate::Loop {
            (
                threads + config.worker_threads,
                config.accept_capacity.max(capacity.seats),
            )
        } else {
            (threads, config.accept_capacity)
        };
        crate::ev::reserve_arrays(loops, per_loop_fds)
            .map_err(|e| StartError::system("cannot reserve libev's arrays", e))?;
        // Queues sized so they never overflow: one task per connection at most,
        // and none at all without workers (-w 0 answers slow requests inline).
        let (per_loop, all) = if config.worker_threads > 0 && !mode.hands_off() {
            (config.accept_capacity, total)
        } else {
            (1, 1)
        };
        let shared = Arc::new(Shared::new(threads, per_loop, all));
        let shutdown = Arc::new(Shutdown::new(Arc::clone(&shared)));
        let work = mode.hands_off().then(|| {
            Arc::new(WorkerSide::new(
                mode,
                capacity,
                threads,
                Arc::clone(&shared),
            ))
        });
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for addr in listeners
            .iter()
            .flatten()
            .filter_map(|s| s.local_addr().ok()?.as_socket())
        {
            if !addresses.contains(&addr) {
                debug!(
                    "listening on {addr}: {threads} accept threads x {} connections, {} workers, \
                     --delegate {}",
                    config.accept_capacity, config.worker_threads, config.delegate
                );
                addresses.push(addr);
            }
        }
        Ok(Server {
            config: config.clone(),
            listeners,
            addresses,
            handover,
            shared,
            shutdown,
            work,
            metrics: Arc::new(
                Metrics::new(threads, config.worker_threads).for_mode(config.delegate),
            ),
            metrics_listener,
        })
    }

    /// The distinct listening sockets (an upgrade hands them over as they are).
    pub fn listener_fds(&self) -> Vec<RawFd> {
        self.handover.clone()
    }

    /// The addresses the server listens on.
    pub fn addresses(&self) -> &[SocketAddr] {
        &self.addresses
    }

    /// A handle that stops the server gracefully from any thread.
    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle::new(Arc::clone(&self.shutdown))
    }

    /// Serves until a graceful stop completes; the calling thread is accept
    /// thread 0. Returns the counters of all accept threads together.
    pub fn run(self) -> Result<Stats, StartError> {
        self.run_with(|| {})
    }

    /// As [`Server::run`], calling `on_ready` once every accept thread watches
    /// its listeners (connections arriving from then on are served).
    pub fn run_with(self, on_ready: impl FnOnce()) -> Result<Stats, StartError> {
        let Server {
            config,
            listeners,
            shared,
            shutdown,
            work,
            metrics,
            metrics_listener,
            ..
        } = self;
        if let Some(listener) = metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                debug!("metrics on http://{addr}/metrics");
            }
            metrics::serve(listener, Arc::clone(&metrics))
                .map_err(|e| StartError::system("cannot start the metrics thread", e))?;
        }
        let handoff_workers = work
            .as_ref()
            .map(|side| HandoffWorkers::start(Arc::clone(side), &config, &metrics))
            .transpose()
            .map_err(|e| StartError::system("cannot start worker threads", e))?;
        let workers = if config.worker_threads > 0 && work.is_none() {
            Some(
                Workers::start(Arc::clone(&shared), config.worker_threads, &metrics)
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
            counters: metrics.accept_thread(id),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let mut listeners = listeners.into_iter();
        let first = listeners.next().expect("at least one accept thread");
        let mut threads = Vec::new();
        for (n, listener) in listeners.enumerate() {
            let id = n + 1;
            let (s, shared, shutdown) = (settings(id), Arc::clone(&shared), Arc::clone(&shutdown));
            let (ready, work) = (ready_tx.clone(), work.clone());
            let t = thread::Builder::new()
                .name(format!("accept-{id}"))
                .spawn(move || accept_thread(s, listener, (shared, work), shutdown, ready, || {}))
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
        on_ready();
        // Workers serve every loop, so accept thread 0 stops them only after the
        // other accept threads have drained and ended.
        let mut others = Stats::default();
        let mut stats = accept_thread(
            settings(0),
            first,
            (Arc::clone(&shared), work.clone()),
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
                // Nothing more can be handed over: the workers of --delegate
                // socket|loop finish what they hold, within the drain's bound.
                if let Some(w) = handoff_workers {
                    others.add(w.stop_and_join(Instant::now() + config.shutdown_timeout));
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
    listener: Vec<Socket>,
    (shared, work): (Arc<Shared>, Option<Arc<WorkerSide>>),
    shutdown: Arc<Shutdown>,
    ready: mpsc::Sender<Result<(), StartError>>,
    after_drain: impl FnOnce(),
) -> Result<Stats, StartError> {
    let id = settings.id;
    let setup = Loop::new()
        .map_err(|e| StartError::system("cannot create the event loop", e))
        .and_then(|lp| {
            AcceptTask::new(&lp, settings, listener, shared, shutdown, work)
                .map(|task| (lp, task))
                .map_err(|e| StartError::system("cannot reserve the connection pool", e))
        });
    let (lp, mut task) = match setup {
        Ok(v) => {
            let _ = ready.send(Ok(()));
            v
        }
        Err(e) => {
            let copy = StartError {
                code: e.code,
                message: e.message.clone(),
            };
            let _ = ready.send(Err(e));
            return Err(copy);
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

/// What the host can give at most, read once at start-up.
struct Host {
    /// `/proc/sys/kernel/threads-max`.
    threads: Option<u64>,
    /// RAM and swap together, in bytes (`/proc/meminfo`).
    memory: Option<u64>,
}

impl Host {
    fn read() -> Host {
        let threads = std::fs::read_to_string("/proc/sys/kernel/threads-max")
            .ok()
            .and_then(|s| s.trim().parse().ok());
        let memory = std::fs::read_to_string("/proc/meminfo").ok().map(|info| {
            info.lines()
                .filter(|l| l.starts_with("MemTotal:") || l.starts_with("SwapTotal:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .map(|kib| kib.saturating_mul(1024))
                .sum()
        });
        Host { threads, memory }
    }
}

/// Bytes committed at start-up per connection slot when there are workers: a slot
/// in the shared task queue and one in the loop's mailbox (`ArrayQueue`
/// initialises every slot). The pools themselves are reserved address space,
/// committed only when touched.
const QUEUED_BYTES_PER_SLOT: u64 = 2 * 2 * std::mem::size_of::<usize>() as u64;

/// Refuses, before anything is allocated, what the host can never give: more
/// threads than it allows, or queues larger than its memory. Without this a huge
/// `-A`, `-w` or `-A x -C` aborts in the allocator with a backtrace instead of
/// the one line and exit status 10 of a pool that cannot be reserved.
fn check_reservation(config: &Config, host: &Host) -> Result<(), StartError> {
    let no_memory = |message: String| StartError {
        code: EXIT_NO_MEMORY,
        message,
    };
    let (threads, workers) = (config.accept_threads, config.worker_threads);
    let all_threads = (threads as u64).saturating_add(workers as u64);
    if let Some(max) = host.threads.filter(|&max| all_threads > max) {
        return Err(no_memory(format!(
            "cannot start {threads} accept threads and {workers} workers: \
             the host allows {max} threads"
        )));
    }
    if workers == 0 {
        return Ok(());
    }
    let needed = (threads as u64)
        .checked_mul(config.accept_capacity as u64)
        .and_then(|slots| slots.checked_mul(QUEUED_BYTES_PER_SLOT))
        .filter(|&bytes| usize::try_from(bytes).is_ok());
    match (needed, host.memory) {
        (Some(bytes), Some(memory)) if bytes <= memory => Ok(()),
        (Some(_), None) => Ok(()),
        (bytes, memory) => Err(no_memory(format!(
            "cannot reserve the task queues for {threads} accept threads x {} connections: \
             {} bytes needed, the host has {} (lower -A or -C)",
            config.accept_capacity,
            bytes.map_or("more than 2^64".to_string(), |b| b.to_string()),
            memory.unwrap_or(0)
        ))),
    }
}

/// Each accept thread's listeners and the distinct sockets among them.
type Listeners = (Vec<Vec<Socket>>, Vec<RawFd>);

/// One new `SO_REUSEPORT` listener per address per thread, after checking that
/// no one else holds any of the addresses.
fn bind_addresses(
    addrs: &[SocketAddr],
    threads: usize,
    defer: u32,
) -> Result<Listeners, StartError> {
    for &addr in addrs {
        net::ensure_addr_free(addr).map_err(|e| {
            if e.raw_os_error() == Some(libc::EADDRINUSE) {
                let port = addr.port();
                StartError::system(format_args!("port {port} is already in use ({addr})"), e)
            } else {
                StartError::system(format_args!("cannot listen on {addr}"), e)
            }
        })?;
    }
    let mut per_thread = Vec::with_capacity(threads);
    for _ in 0..threads {
        let socks = addrs
            .iter()
            .map(|&addr| {
                net::listener(addr, defer)
                    .map_err(|e| StartError::system(format_args!("cannot listen on {addr}"), e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        per_thread.push(socks);
    }
    let handover = per_thread.iter().flatten().map(|s| s.as_raw_fd()).collect();
    Ok((per_thread, handover))
}

/// Inherited listeners, grouped by address, shared out over the accept
/// threads. An address with at least as many sockets as threads: thread `t`
/// serves sockets `t`, `t + A`, ... (none is left unserved, or connections the
/// kernel queued on it would wait forever). With fewer: each thread past them
/// opens its own `SO_REUSEPORT` socket on the address (joining the group), or,
/// when it cannot (the inherited socket lacks `SO_REUSEPORT`, systemd's
/// default, or belongs to another user), shares one (a dup: each loop watches
/// it, one of them accepts).
fn adopt_inherited(fds: Vec<OwnedFd>, threads: usize, defer: u32) -> Result<Listeners, StartError> {
    let adopt_error = |msg: String| StartError {
        code: EXIT_SYSTEM,
        message: msg,
    };
    let mut groups: Vec<(SocketAddr, Vec<Socket>)> = Vec::new();
    for fd in fds {
        let (sock, addr) = net::adopt_listener(fd, defer).map_err(adopt_error)?;
        match groups.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, socks)) => socks.push(sock),
            None => groups.push((addr, vec![sock])),
        }
    }
    let mut per_thread: Vec<Vec<Socket>> = (0..threads).map(|_| Vec::new()).collect();
    let mut handover = Vec::new();
    for (addr, socks) in groups {
        let k = socks.len();
        let reuse_port = socks[0].reuse_port().unwrap_or(false);
        let mut extra = Vec::new();
        for t in k..threads {
            // The kernel lets only the same user join a SO_REUSEPORT group: a
            // socket systemd made as root cannot be joined by a service user.
            let own = reuse_port
                .then(|| net::listener(addr, defer).ok())
                .flatten();
            let sock = match own {
                Some(s) => {
                    handover.push(s.as_raw_fd());
                    s
                }
                None => socks[t % k]
                    .try_clone()
                    .map_err(|e| StartError::system(format_args!("cannot share {addr}"), e))?,
            };
            extra.push((t, sock));
        }
        for (j, sock) in socks.into_iter().enumerate() {
            handover.push(sock.as_raw_fd());
            per_thread[j % threads].push(sock);
        }
        for (t, sock) in extra {
            per_thread[t].push(sock);
        }
    }
    Ok((per_thread, handover))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("conn-daemon").chain(args.iter().copied()))
            .expect("valid command line")
    }

    const HOST: Host = Host {
        threads: Some(100_000),
        memory: Some(24 << 30),
    };

    #[test]
    fn reservations_the_host_cannot_give_are_refused_with_status_10() {
        for args in [
            &["-A", "18446744073709551615"][..],
            &["-A", "1", "-w", "18446744073709551615"],
            &["-A", "128", "-C", "16777216", "-w", "1"],
        ] {
            let e = check_reservation(&config(args), &HOST).unwrap_err();
            assert_eq!(e.code, EXIT_NO_MEMORY, "{args:?}: {e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    #[test]
    fn what_the_host_can_give_passes() {
        for args in [
            &["-A", "2"][..],
            &["-A", "512"],
            &["-A", "128", "-C", "16777216", "-w", "0"],
            &["-A", "1", "-C", "16777216"],
        ] {
            assert!(check_reservation(&config(args), &HOST).is_ok(), "{args:?}");
        }
    }
}
