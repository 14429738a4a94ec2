//! Start-up, threads and shutdown: the C++ `main` and its `ThreadPool`, for any
//! [`Protocol`].
//!
//! `Server::bind(&config, protocol)` does everything that can fail for a reason
//! an operator must see (the port, the listeners) before any thread exists;
//! `Server::run` starts the workers and the accept threads, the calling thread
//! being accept thread 0, and returns after the graceful drain.

#![forbid(unsafe_code)]

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Instant;

use socket2::{Socket, Type};

use crate::accept::AcceptTask;
use crate::config::Config;
use crate::config::Delegate;
use crate::delegate::handoff::HandoffWorkers;
use crate::delegate::task::{Shared, Workers};
use crate::delegate::{Capacity, HandOffQueues};
use crate::engine::Protocol;
use crate::engine::Settings;
use crate::ev::Loop;
use crate::metrics::{self, Metrics, Stats};
use crate::shutdown::{Drain, Shutdown, ShutdownHandle};
pub use crate::start_error::{StartError, StartFailure, EXIT_NO_MEMORY, EXIT_SYSTEM, EXIT_USAGE};
use crate::{debug, net, warn};

/// How long the end of a drain waits for the scrapes the metrics thread took.
const SCRAPE_GRACE: std::time::Duration = std::time::Duration::from_millis(500);
/// How long the end of a drain waits for workers to leave their tasks.
const WORKER_GRACE: std::time::Duration = std::time::Duration::from_millis(100);

/// What a parent process handed this one for the server (socket activation, an
/// upgrade): see `os::Inherited`.
#[derive(Debug, Default)]
pub struct Handed {
    /// Listening sockets to serve instead of binding `-p`/`--listen`.
    pub listeners: Vec<OwnedFd>,
    /// The `--metrics` listener of the process we take over from.
    pub metrics: Option<OwnedFd>,
    /// Whether an upgrading conn-daemon is the parent (it still holds
    /// `--metrics`, even if it is an older version that did not hand it over).
    pub from_upgrade: bool,
    /// The lineage's upgrade count, which the metrics show (the lifecycle
    /// counts it: `lifecycle::UpgradeCount`).
    pub upgrades: Arc<AtomicU64>,
}

/// A bound, not yet running server of protocol `P`.
pub struct Server<P: Protocol> {
    config: Config,
    proto: Arc<P>,
    /// Each accept thread's listeners, one per address.
    listeners: Vec<Vec<Socket>>,
    /// The distinct listening sockets, for an upgrade to hand over.
    handover: Vec<RawFd>,
    /// What the listeners are bound to.
    addresses: Vec<SocketAddr>,
    shared: Arc<Shared>,
    shutdown: Arc<Shutdown>,
    /// `--delegate socket|loop` with workers: where slow connections go.
    work: Option<Arc<HandOffQueues<P::Job>>>,
    metrics: Arc<Metrics>,
    metrics_listener: Option<std::net::TcpListener>,
}

impl<P: Protocol> fmt::Debug for Server<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("addresses", &self.addresses)
            .field("listeners", &self.listeners)
            .field("metrics_listener", &self.metrics_listener)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

impl<P: Protocol> Server<P> {
    /// Binds `config.listen` for `protocol`: refuses an address someone else
    /// holds, binds one `SO_REUSEPORT` listener per address per accept thread,
    /// and raises the fd limit.
    pub fn bind(config: &Config, protocol: P) -> Result<Self, StartError> {
        Server::bind_with(config, protocol, Handed::default())
    }

    /// As [`Server::bind`], but serves `handed` listening sockets instead of
    /// binding, when there are any (socket activation, an upgrade): their
    /// addresses are what the server listens on, and `-p`/`--listen` are not
    /// bound. A handed metrics listener is served as `--metrics`.
    pub fn bind_with(config: &Config, protocol: P, handed: Handed) -> Result<Self, StartError> {
        let Handed {
            listeners: inherited,
            metrics: inherited_metrics,
            from_upgrade,
            upgrades,
        } = handed;
        check_reservation::<P::Job>(config, &Host::read())?;
        let threads = config.accept_threads;
        let defer = config
            .read_timeout
            .map_or(1, |t| t.as_secs().clamp(1, 30) as u32);
        let (listeners, handover) = if inherited.is_empty() {
            bind_addresses(&config.listen, threads, defer)?
        } else {
            adopt_inherited(inherited, threads, defer)?
        };
        let metrics_listener = match config.metrics {
            Some(addr) => Some(metrics_listener(
                addr,
                inherited_metrics,
                from_upgrade,
                &listeners,
            )?),
            None => None,
        };
        // After the checks that can refuse to start, so a refusal is one line.
        let wanted = (threads as u64).saturating_mul(config.accept_capacity as u64);
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
        let queues = Queues::of(config);
        let (mode, capacity) = (queues.mode, queues.hand_off);
        // Worker loops are loops too; their fds come on top of the accept threads'.
        let (loops, per_loop_fds) = if mode == Delegate::Loop {
            (
                threads + config.worker_threads,
                config.accept_capacity.max(capacity.per_queue),
            )
        } else {
            (threads, config.accept_capacity)
        };
        crate::ev::reserve_arrays(loops, per_loop_fds)
            .map_err(|e| StartError::system("cannot reserve libev's arrays", e))?;
        // The check above refused what the host's memory can never give; an
        // address-space limit (`ulimit -v`) can still refuse them here.
        let cannot = |e| StartError::system("cannot reserve the queues", e);
        let shared = Arc::new(Shared::new(threads, queues.mailbox, queues.tasks).map_err(cannot)?);
        let wake = Arc::clone(&shared);
        let shutdown = Arc::new(Shutdown::new(move || {
            for mailbox in wake.mailboxes() {
                mailbox.ring();
            }
        }));
        let work = mode
            .hands_off()
            .then(|| HandOffQueues::new(mode, capacity, threads, Arc::clone(&shared)).map(Arc::new))
            .transpose()
            .map_err(cannot)?;
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
            proto: Arc::new(protocol),
            listeners,
            addresses,
            handover,
            shared,
            shutdown,
            work,
            metrics: Arc::new(
                Metrics::with_labels(threads, config.worker_threads, upgrades, P::labels())
                    .for_mode(config.delegate),
            ),
            metrics_listener,
        })
    }

    /// The distinct listening sockets (an upgrade hands them over as they are).
    pub fn listener_fds(&self) -> Vec<RawFd> {
        self.handover.clone()
    }

    /// The `--metrics` listener, if any (an upgrade hands it over too).
    pub fn metrics_fd(&self) -> Option<RawFd> {
        self.metrics_listener.as_ref().map(AsRawFd::as_raw_fd)
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
            proto,
            listeners,
            shared,
            shutdown,
            work,
            metrics,
            metrics_listener,
            ..
        } = self;
        let mut scrapes = None;
        if let Some(listener) = metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                debug!("metrics on http://{addr}/metrics");
            }
            // Once a new process serves (it shares this very socket, handed over),
            // scrapes are its to answer: ours finish, no new one starts here, so
            // that none is cut short when we exit.
            let shutdown = Arc::clone(&shutdown);
            let accepting = Box::new(move || shutdown.requested() != Some(Drain::Handover));
            scrapes = Some(
                metrics::serve(listener, Arc::clone(&metrics), accepting)
                    .map_err(|e| StartError::system("cannot start the metrics thread", e))?,
            );
        }
        let handoff_workers = work
            .as_ref()
            .map(|queues| HandoffWorkers::start(Arc::clone(queues), &config, &metrics, &proto))
            .transpose()?;
        let workers = if config.worker_threads > 0 && work.is_none() {
            Some(
                Workers::start(Arc::clone(&shared), config.worker_threads, &metrics, &proto)
                    .map_err(|e| StartError::system("cannot start worker threads", e))?,
            )
        } else {
            None
        };
        let settings = |id: usize| Settings {
            id: id as u32,
            capacity: config.accept_capacity,
            read_timeout: config.read_timeout,
            idle_timeout: config.idle_timeout,
            shutdown_timeout: config.shutdown_timeout,
            counters: metrics.accept_thread(id),
        };
        let (ready_tx, ready_rx) = mpsc::channel();
        let parts = |id: usize, listener| AcceptParts {
            settings: settings(id),
            proto: Arc::clone(&proto),
            listeners: listener,
            shared: Arc::clone(&shared),
            work: work.clone(),
            shutdown: Arc::clone(&shutdown),
        };
        let mut listeners = listeners.into_iter();
        let first = listeners.next().expect("at least one accept thread");
        let mut threads = Vec::new();
        for (n, listener) in listeners.enumerate() {
            let (parts, ready) = (parts(n + 1, listener), ready_tx.clone());
            let t = thread::Builder::new()
                .name(format!("accept-{}", n + 1))
                .spawn(move || accept_thread(parts, ready))
                .map_err(|e| StartError::system("cannot start accept threads", e))?;
            threads.push(t);
        }
        drop(ready_tx);
        // Thread 0's loop is built here, on the thread that runs it, while the
        // others build theirs, and before anyone is told that the server serves:
        // its pool, like theirs, can still fail.
        let (lp, task) = build_accept_loop(parts(0, first))?;
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
        let mut stats = serve_accept_loop(lp, task, || {
            for t in threads {
                if let Ok(s) = t.join() {
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
        });
        stats.add(others);
        // The scrapes taken are answered before the process exits.
        if let Some(scrapes) = scrapes {
            scrapes.finish(SCRAPE_GRACE);
        }
        Ok(stats)
    }
}

/// What an accept thread is built from.
struct AcceptParts<P: Protocol> {
    settings: Settings,
    proto: Arc<P>,
    listeners: Vec<Socket>,
    shared: Arc<Shared>,
    work: Option<Arc<HandOffQueues<P::Job>>>,
    shutdown: Arc<Shutdown>,
}

/// The loop of one accept thread, and its task.
type AcceptLoop<P> = (Loop<AcceptTask<P>>, AcceptTask<P>);

/// One accept thread's loop and task (pool reserved, wake-up connected,
/// listeners watched), built on the thread that will run them: a libev loop is
/// bound to its thread.
fn build_accept_loop<P: Protocol>(parts: AcceptParts<P>) -> Result<AcceptLoop<P>, StartError> {
    let AcceptParts {
        settings,
        proto,
        listeners,
        shared,
        work,
        shutdown,
    } = parts;
    let lp = Loop::new().map_err(|e| StartError::system("cannot create the event loop", e))?;
    let task = AcceptTask::new(&lp, settings, proto, listeners, shared, shutdown, work)
        .map_err(|e| StartError::system("cannot reserve the connection pool", e))?;
    Ok((lp, task))
}

/// Serves on a built accept loop until the drain ends, runs `after_drain`,
/// then tears down; the loop's counters.
fn serve_accept_loop<P: Protocol>(
    lp: Loop<AcceptTask<P>>,
    mut task: AcceptTask<P>,
    after_drain: impl FnOnce(),
) -> Stats {
    let id = task.id();
    debug!("accept-{id}: serving");
    task.run(&lp);
    after_drain();
    let stats = task.stats();
    task.teardown();
    debug!(
        "accept-{id}: stopped: {} served, {} dropped, {} timed out",
        stats.served, stats.dropped, stats.timed_out
    );
    stats
}

/// The body of accept thread 1, 2, ...: builds its loop, says on `ready`
/// whether that worked (the error goes there, with its cause), then serves.
fn accept_thread<P: Protocol>(
    parts: AcceptParts<P>,
    ready: mpsc::Sender<Result<(), StartError>>,
) -> Stats {
    match build_accept_loop(parts) {
        Ok((lp, task)) => {
            let _ = ready.send(Ok(()));
            drop(ready);
            serve_accept_loop(lp, task, || {})
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            Stats::default()
        }
    }
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

/// Bytes `ArrayQueue::new` commits per slot of a queue of `T`s: it writes every
/// slot's stamp (a `usize`) beside the room for its value. The pools themselves
/// are reserved address space, committed only when touched.
const fn queue_slot<T>() -> u64 {
    (std::mem::size_of::<usize>() + std::mem::size_of::<T>()) as u64
}

/// The queues start-up allocates, sized so that they never overflow: one
/// description for the allocation and for the check that refuses, before it,
/// what the host cannot give.
struct Queues {
    /// What a complete slow request does (`-w 0`: `task`, answered inline).
    mode: Delegate,
    /// Slots of each accept loop's mailbox: one per connection in mode `task`
    /// with workers, else 1 (nothing comes back through it).
    mailbox: usize,
    /// Slots of the shared task queue: `-A` x `-C` in mode `task` with
    /// workers, else 1.
    tasks: usize,
    /// The hand-off queues (`socket` and `loop` only).
    hand_off: Capacity,
}

impl Queues {
    fn of(config: &Config) -> Queues {
        let mode = config.effective_delegate();
        let threads = config.accept_threads;
        let tasks_come_back = config.worker_threads > 0 && !mode.hands_off();
        Queues {
            mode,
            mailbox: if tasks_come_back {
                config.accept_capacity
            } else {
                1
            },
            tasks: if tasks_come_back {
                threads.saturating_mul(config.accept_capacity)
            } else {
                1
            },
            hand_off: Capacity::new(mode, threads, config.accept_capacity, config.worker_threads),
        }
    }

    /// What the queues that scale with `-A` x `-C` are called (for the line that
    /// refuses them) and their bytes, `None` past 2^64: in mode `task` the task
    /// queue and the mailboxes, in the hand-off modes the hand-off queues' places
    /// (their task queues are a slot each).
    fn scaling_bytes<J>(&self, threads: usize) -> (&'static str, Option<u64>) {
        if self.mode.hands_off() {
            let per_queue =
                (self.hand_off.queues as u64).checked_mul(self.hand_off.per_queue as u64);
            let bytes =
                per_queue.and_then(|n| n.checked_mul(queue_slot::<crate::delegate::Handoff<J>>()));
            ("the hand-off queues", bytes)
        } else {
            let mailboxes = (threads as u64)
                .checked_mul(self.mailbox as u64)
                .and_then(|n| n.checked_mul(queue_slot::<crate::task::Done>()));
            let tasks = (self.tasks as u64).checked_mul(queue_slot::<crate::task::TaskRef>());
            let bytes = mailboxes.zip(tasks).and_then(|(m, t)| m.checked_add(t));
            ("the task queues", bytes)
        }
    }
}

/// Refuses, before anything is allocated, what the host can never give: more
/// threads than it allows, or queues larger than its memory. Without this a huge
/// `-A`, `-w` or `-A x -C` aborts in the allocator with a backtrace instead of
/// the one line and exit status 10 of a pool that cannot be reserved.
fn check_reservation<J>(config: &Config, host: &Host) -> Result<(), StartError> {
    let no_memory = |message: String| StartError::new(StartFailure::NoMemory, message);
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
    let (queues, needed) = Queues::of(config).scaling_bytes::<J>(config.accept_threads);
    let needed = needed.filter(|&bytes| usize::try_from(bytes).is_ok());
    match (needed, host.memory) {
        (Some(bytes), Some(memory)) if bytes <= memory => Ok(()),
        (Some(_), None) => Ok(()),
        (bytes, memory) => Err(no_memory(format!(
            "cannot reserve {queues} for {threads} accept threads x {} connections: \
             {} bytes needed, the host has {} (lower -A or -C)",
            config.accept_capacity,
            bytes.map_or("more than 2^64".to_string(), |b| b.to_string()),
            memory.unwrap_or(0)
        ))),
    }
}

/// The `--metrics` listener on `addr`: the one handed over by the process we
/// take over from, else bound here, refused if anyone holds the address (another
/// instance's metrics, say) or if it is the port of a service socket (which
/// under socket activation the command line could not check). Only beside a
/// predecessor that did not hand it over (an older version) is the address
/// shared, by `SO_REUSEPORT`.
fn metrics_listener(
    addr: SocketAddr,
    inherited: Option<OwnedFd>,
    from_upgrade: bool,
    listeners: &[Vec<Socket>],
) -> Result<std::net::TcpListener, StartError> {
    let cannot = |e| StartError::system(format_args!("cannot listen for metrics on {addr}"), e);
    if let Some(fd) = inherited {
        let (sock, at) = net::adopt_listener(fd, 0)
            .map_err(|e| StartError::from_cause(StartFailure::System, e))?;
        if at != addr {
            return Err(StartError::new(
                StartFailure::System,
                format!("the inherited metrics socket is on {at}, not on --metrics {addr}"),
            ));
        }
        return Ok(sock.into());
    }
    let service_port = listeners
        .iter()
        .flatten()
        .filter_map(|s| s.local_addr().ok()?.as_socket())
        .any(|a| a.port() == addr.port());
    if service_port {
        return Err(StartError::new(
            StartFailure::Usage,
            format!(
                "--metrics must not use the service port {}: give it a port of its own",
                addr.port()
            ),
        ));
    }
    metrics::bind(addr, from_upgrade).map_err(cannot)
}

/// Each accept thread's listeners and the distinct sockets among them.
type Listeners = (Vec<Vec<Socket>>, Vec<RawFd>);

/// One listener per address per thread: thread 0's claim each address
/// exclusively (refused if anyone holds it, atomically: see
/// [`net::exclusive_listener`]), the other threads' join them by `SO_REUSEPORT`.
fn bind_addresses(
    addrs: &[SocketAddr],
    threads: usize,
    defer: u32,
) -> Result<Listeners, StartError> {
    let mut per_thread = Vec::with_capacity(threads);
    let first = addrs
        .iter()
        .map(|&addr| {
            let ty = Type::STREAM.nonblocking().cloexec();
            net::exclusive_listener(addr, ty, libc::SOMAXCONN, defer).map_err(|e| {
                if e.raw_os_error() == Some(libc::EADDRINUSE) {
                    let port = addr.port();
                    StartError::system(format_args!("port {port} is already in use ({addr})"), e)
                } else {
                    StartError::system(format_args!("cannot listen on {addr}"), e)
                }
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    per_thread.push(first);
    for _ in 1..threads {
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
    let adopt_error = |e| StartError::from_cause(StartFailure::System, e);
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
    #[cfg(feature = "cli")]
    use crate::proto::SlowTask;

    #[cfg(feature = "cli")]
    fn config(args: &[&str]) -> Config {
        Config::try_parse_from(std::iter::once("conn-daemon").chain(args.iter().copied()))
            .expect("valid command line")
    }

    #[cfg(feature = "cli")]
    const HOST: Host = Host {
        threads: Some(100_000),
        memory: Some(24 << 30),
    };

    #[cfg(feature = "cli")]
    #[test]
    fn reservations_the_host_cannot_give_are_refused_with_status_10() {
        for args in [
            &["-A", "18446744073709551615"][..],
            &["-A", "1", "-w", "18446744073709551615"],
            &["-A", "128", "-C", "16777216", "-w", "1"],
        ] {
            let e = check_reservation::<SlowTask>(&config(args), &HOST).unwrap_err();
            assert_eq!(e.exit_status(), EXIT_NO_MEMORY, "{args:?}: {e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }

    /// The hand-off modes fill in a place per connection in the hand-off
    /// queues instead of task queues: refused by those, named as such.
    #[cfg(feature = "cli")]
    #[test]
    fn hand_off_queues_the_host_cannot_give_are_refused_by_name() {
        for mode in ["socket", "loop"] {
            let args = ["-A", "128", "-C", "16777216", "-w", "3", "--delegate", mode];
            let e = check_reservation::<SlowTask>(&config(&args), &HOST).unwrap_err();
            assert_eq!(e.exit_status(), EXIT_NO_MEMORY, "{args:?}: {e}");
            assert!(
                e.to_string()
                    .starts_with("cannot reserve the hand-off queues"),
                "{args:?}: {e}"
            );
            // 2^31 places of 32 bytes (loop mode rounds up to a multiple of -w).
            let (_, bytes) = Queues::of(&config(&args)).scaling_bytes::<SlowTask>(128);
            let seats: u64 = match mode {
                "loop" => (128u64 << 24).div_ceil(3) * 3,
                _ => 128 << 24,
            };
            assert_eq!(bytes, Some(seats * 32), "{args:?}");
        }
        let task = config(&["-A", "128", "-C", "16777216", "-w", "3"]);
        assert_eq!(
            Queues::of(&task).scaling_bytes::<SlowTask>(128),
            ("the task queues", Some((128 << 24) * 32))
        );
    }

    #[cfg(feature = "cli")]
    #[test]
    fn what_the_host_can_give_passes() {
        for args in [
            &["-A", "2"][..],
            &["-A", "512"],
            &["-A", "128", "-C", "16777216", "-w", "0"],
            &["-A", "1", "-C", "16777216"],
        ] {
            assert!(
                check_reservation::<SlowTask>(&config(args), &HOST).is_ok(),
                "{args:?}"
            );
        }
    }
}
