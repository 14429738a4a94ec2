//! `--metrics`: counters kept by the threads that serve connections, and a small
//! HTTP listener on its own thread that renders them in the Prometheus text
//! exposition format 0.0.4.
//!
//! Cost on the connection path: every counter an accept thread bumps lives in that
//! thread's [`AcceptCounters`], a cache-line-aligned block nobody else writes, and a
//! bump is a relaxed load and store (no locked instruction, no cache line shared
//! with another writer). They are kept whether or not `--metrics` is on; the
//! [`Stats`] a server returns are read from them too. The workers have their own
//! [`WorkerCounters`] the same way. The scrape thread only loads: no lock, and a
//! gauge that is a difference of counters (open connections, queued and running
//! tasks) is computed at scrape time rather than kept.
#![forbid(unsafe_code)]

use std::fmt::Display;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::Type;

use crate::accept::Stats;
use crate::conn::DropReason;
use crate::delegate::Delegate;
use crate::{net, os, sys};

/// Upper bounds (seconds) of the slow-task histogram's buckets, around the default
/// 30 ms slow duration; `+Inf` follows.
pub const SLOW_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bound on reading one scrape request, and on writing its response: a stalled
/// scraper holds the metrics thread at most this long.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest scrape request read; a longer one is closed unanswered.
const REQUEST_MAX: usize = 4096;
/// `USER_HZ`, the unit of the CPU times in `/proc/PID/stat` (100 on every Linux
/// architecture's user ABI).
const USER_HZ: f64 = 100.0;

/// A counter only one thread ever writes: an increment is a load and a store,
/// not a read-modify-write, so it costs what a plain `+= 1` costs.
#[derive(Debug, Default)]
struct Counter(AtomicU64);

impl Counter {
    fn bump(&self) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Why an accept thread stopped watching its listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PauseCause {
    /// Every pool slot is in use.
    PoolFull,
    /// accept() failed for lack of fds or kernel memory (or another error).
    FdExhaustion,
}

impl PauseCause {
    const ALL: [PauseCause; 2] = [PauseCause::PoolFull, PauseCause::FdExhaustion];

    fn label(self) -> &'static str {
        match self {
            PauseCause::PoolFull => "pool_full",
            PauseCause::FdExhaustion => "fd_exhaustion",
        }
    }
}

/// A histogram one thread writes: counts per bucket (not cumulative: cumulated
/// when rendered) and the sum of the observations.
#[derive(Debug, Default)]
struct Histogram {
    /// One per bound of [`SLOW_BUCKETS`], then `+Inf`.
    buckets: [Counter; SLOW_BUCKETS.len() + 1],
    /// The sum, as the bits of an `f64`.
    sum: Counter,
}

impl Histogram {
    fn observe(&self, seconds: f64) {
        let seconds = seconds.max(0.0);
        let i = SLOW_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(SLOW_BUCKETS.len());
        self.buckets[i].bump();
        self.sum
            .set((f64::from_bits(self.sum.get()) + seconds).to_bits());
    }
}

/// The counters of one accept thread: written by that thread only, read by the
/// scrape. Aligned so that no other thread's counters share its cache lines;
/// the per-connection ones come first, in one line.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct AcceptCounters {
    accepted: Counter,
    /// Responses sent whole, fast and slow.
    responses: Counter,
    dropped: [Counter; DropReason::ALL.len()],
    /// The slow part of `responses`.
    slow_responses: Counter,
    /// Slow tasks given to the workers.
    delegated: Counter,
    /// Connections handed to the worker side (`--delegate socket|loop`); for a
    /// worker's counters: connections it took from its queue.
    handed_off: Counter,
    capacity: Counter,
    /// 0/1 per [`PauseCause`].
    paused: [Counter; PauseCause::ALL.len()],
    pauses: [Counter; PauseCause::ALL.len()],
    slow_seconds: Histogram,
}

impl AcceptCounters {
    fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(Counter::get).sum()
    }

    /// Connections accepted and not yet answered or dropped. Read the outcomes
    /// first: the owner counts a connection's accept before its outcome, so the
    /// difference cannot go below 0 but for reordering, which `saturating_sub`
    /// absorbs.
    fn open(&self) -> u64 {
        let closed = self.responses.get() + self.dropped_total() + self.handed_off.get();
        self.accepted.get().saturating_sub(closed)
    }

    /// The counters as the [`Stats`] a server returns.
    pub fn stats(&self) -> Stats {
        let timed_out = self.dropped[DropReason::TimedOut as usize].get();
        Stats {
            served: self.responses.get(),
            dropped: self.dropped_total() - timed_out,
            timed_out,
        }
    }
}

/// One worker's counters, written by that worker only.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct WorkerCounters {
    started: Counter,
    finished: Counter,
}

impl WorkerCounters {
    /// The worker took a task from the queue.
    pub fn started(&self) {
        self.started.bump();
    }

    /// The worker finished a task.
    pub fn finished(&self) {
        self.finished.bump();
    }
}

/// What an accept thread keeps for the metrics: its shared counters, and the loop
/// time at which each slot's slow task was delegated (owner-only, for the
/// slow-task histogram: libev's cached time, so no clock is read).
pub struct AcceptMetrics {
    counters: Arc<AcceptCounters>,
    delegated_at: Box<[f64]>,
}

impl AcceptMetrics {
    /// For a pool of `capacity` slots. The times are zeroed memory: pages are
    /// only touched by slots that delegate.
    pub fn new(counters: Arc<AcceptCounters>, capacity: usize) -> Self {
        counters.capacity.set(capacity as u64);
        AcceptMetrics {
            counters,
            delegated_at: vec![0.0; capacity].into_boxed_slice(),
        }
    }

    /// The counters so far, as [`Stats`].
    pub fn stats(&self) -> Stats {
        self.counters.stats()
    }

    /// A connection was accepted.
    pub fn accepted(&self) {
        self.counters.accepted.bump();
    }

    /// A response went out whole, to a `/test/slow` request if `slow` (answered
    /// after its task, or inline with `-w 0`).
    pub fn responded(&self, slow: bool) {
        self.counters.responses.bump();
        if slow {
            self.counters.slow_responses.bump();
        }
    }

    /// A connection was closed without a response.
    pub fn dropped(&self, reason: DropReason) {
        self.counters.dropped[reason as usize].bump();
    }

    /// The listener stopped being watched for `cause`.
    pub fn paused(&self, cause: PauseCause) {
        self.counters.paused[cause as usize].set(1);
        self.counters.pauses[cause as usize].bump();
    }

    /// The listener is watched again (or closed) after `cause`.
    pub fn resumed(&self, cause: PauseCause) {
        self.counters.paused[cause as usize].set(0);
    }

    /// The listener is closed (drain): accept is no longer paused for any cause.
    pub fn listener_closed(&self) {
        for cause in PauseCause::ALL {
            self.resumed(cause);
        }
    }

    /// A connection left for the worker side (`--delegate socket|loop`).
    pub fn handed_off(&self) {
        self.counters.handed_off.bump();
    }

    /// Slot `slot` gave its slow task to the workers at loop time `now`.
    pub fn delegated(&mut self, slot: u32, now: f64) {
        self.counters.delegated.bump();
        self.delegated_at[slot as usize] = now;
    }

    /// Slot `slot`'s slow task came back at loop time `now`: queue wait plus run
    /// (plus the trip back to the loop) goes into the histogram.
    pub fn task_back(&self, slot: u32, now: f64) {
        let since = self.delegated_at[slot as usize];
        self.counters.slow_seconds.observe(now - since);
    }
}

/// Binary upgrades in this process's lineage (`conn_daemon_upgrades_total`): one
/// process-wide counter, rare enough for a read-modify-write from any thread.
static UPGRADES: AtomicU64 = AtomicU64::new(0);

/// The upgrades that came before this process (a new process inherits its
/// predecessor's count, plus the upgrade that started it).
pub fn set_upgrades(n: u64) {
    UPGRADES.store(n, Ordering::Relaxed);
}

/// Upgrades in this process's lineage so far (what a successor starts from).
pub fn upgrades() -> u64 {
    UPGRADES.load(Ordering::Relaxed)
}

/// Counts one binary upgrade: the old process calls it once its successor serves.
pub fn count_upgrade() {
    UPGRADES.fetch_add(1, Ordering::Relaxed);
}

/// Every counter of one server: one block per accept thread and per worker.
#[derive(Debug)]
pub struct Metrics {
    accept: Box<[Arc<AcceptCounters>]>,
    workers: Box<[Arc<WorkerCounters>]>,
    /// `--delegate socket|loop`: the counters of each worker that answers
    /// connections itself (empty in `task` mode).
    worker_side: Box<[Arc<AcceptCounters>]>,
    delegate: Delegate,
}

impl Metrics {
    /// Zeroed counters for `accept_threads` accept threads and `workers` workers.
    pub fn new(accept_threads: usize, workers: usize) -> Self {
        Metrics {
            accept: (0..accept_threads).map(|_| Arc::default()).collect(),
            workers: (0..workers).map(|_| Arc::default()).collect(),
            worker_side: Box::default(),
            delegate: Delegate::Task,
        }
    }

    /// These counters for `--delegate mode`: in `socket` and `loop` modes each of
    /// the `workers` workers answers connections and gets counters of its own.
    pub fn for_mode(mut self, mode: Delegate) -> Self {
        self.delegate = mode;
        if mode.hands_off() {
            self.worker_side = (0..self.workers.len()).map(|_| Arc::default()).collect();
        }
        self
    }

    /// The connection counters of worker `n` (`--delegate socket|loop`).
    pub fn worker_side(&self, n: usize) -> Arc<AcceptCounters> {
        Arc::clone(&self.worker_side[n])
    }

    /// The counters of accept thread `id`.
    pub fn accept_thread(&self, id: usize) -> Arc<AcceptCounters> {
        Arc::clone(&self.accept[id])
    }

    /// The counters of worker `n`.
    pub fn worker(&self, n: usize) -> Arc<WorkerCounters> {
        Arc::clone(&self.workers[n])
    }

    /// Appends the exposition (format 0.0.4) of every metric to `out`.
    /// Allocates nothing but `out`'s growth.
    pub fn render(&self, out: &mut Vec<u8>, process: &Process) -> io::Result<()> {
        let accept = &self.accept;
        let reasons = DropReason::ALL.map(DropReason::label);
        let causes = PauseCause::ALL.map(PauseCause::label);
        self.per_thread(
            out,
            ("conn_daemon_connections_accepted_total", "counter"),
            "Connections accepted, per accept thread.",
            None,
            |c, _| c.accepted.get(),
        )?;
        self.per_thread(
            out,
            ("conn_daemon_responses_total", "counter"),
            "Responses sent whole; kind=\"slow\": to /test/slow.",
            Some(("kind", &["fast", "slow"])),
            // Slow first: the owner counts a slow response after the total.
            |c, i| match i {
                0 => {
                    let slow = c.slow_responses.get();
                    c.responses.get().saturating_sub(slow)
                }
                _ => c.slow_responses.get(),
            },
        )?;
        self.per_worker(
            out,
            "conn_daemon_responses_total",
            Some(("kind", &["slow"])),
            |c, _| c.slow_responses.get(),
        )?;
        self.per_thread(
            out,
            ("conn_daemon_connections_dropped_total", "counter"),
            "Connections closed without a response, by reason.",
            Some(("reason", &reasons)),
            |c, i| c.dropped[DropReason::ALL[i] as usize].get(),
        )?;
        self.per_worker(
            out,
            "conn_daemon_connections_dropped_total",
            Some(("reason", &reasons)),
            |c, i| c.dropped[DropReason::ALL[i] as usize].get(),
        )?;
        self.per_thread(
            out,
            ("conn_daemon_connections_open", "gauge"),
            "Connections accepted and not yet answered or dropped (by an accept \
             thread, or with --delegate socket|loop by a worker: worker=\"N\").",
            None,
            |c, _| c.open(),
        )?;
        self.per_worker(out, "conn_daemon_connections_open", None, |c, _| c.open())?;
        self.per_thread(
            out,
            ("conn_daemon_pool_capacity", "gauge"),
            "Connections an accept thread can hold at once (-C).",
            None,
            |c, _| c.capacity.get(),
        )?;
        self.per_thread(
            out,
            ("conn_daemon_accept_paused", "gauge"),
            "1 while the accept thread is not accepting, by cause.",
            Some(("cause", &causes)),
            |c, i| c.paused[PauseCause::ALL[i] as usize].get(),
        )?;
        self.per_thread(
            out,
            ("conn_daemon_accept_pauses_total", "counter"),
            "Times the accept thread stopped accepting, by cause.",
            Some(("cause", &causes)),
            |c, i| c.pauses[PauseCause::ALL[i] as usize].get(),
        )?;
        // Workers' counts first, so that a task counted as started is already
        // counted as delegated when its accept thread is read.
        let finished: u64 = self.workers.iter().map(|w| w.finished.get()).sum();
        let started: u64 = self.workers.iter().map(|w| w.started.get()).sum();
        let delegated: u64 = accept.iter().map(|c| c.delegated.get()).sum();
        let (queued, running) = if self.worker_side.is_empty() {
            (
                delegated.saturating_sub(started),
                started.saturating_sub(finished),
            )
        } else {
            // --delegate socket|loop: the connection is the task. Taken last,
            // so that a connection counted as taken is counted as handed over.
            let handed: u64 = accept.iter().map(|c| c.handed_off.get()).sum();
            let held: u64 = self.worker_side.iter().map(|c| c.open()).sum();
            let taken: u64 = self.worker_side.iter().map(|c| c.accepted.get()).sum();
            (handed.saturating_sub(taken), held)
        };
        gauge(
            out,
            "conn_daemon_slow_tasks_queued",
            "Slow tasks waiting for a worker (with --delegate socket|loop: \
             connections handed over, not yet taken by their worker).",
            queued,
        )?;
        gauge(
            out,
            "conn_daemon_slow_tasks_running",
            "Slow tasks a worker is running (with --delegate socket|loop: \
             connections the workers hold).",
            running,
        )?;
        self.render_slow_histogram(out)?;
        family(
            out,
            "conn_daemon_upgrades_total",
            "counter",
            "Binary upgrades in this process's lineage (SIGUSR2, SIGHUP).",
        )?;
        writeln!(
            out,
            "conn_daemon_upgrades_total {}",
            UPGRADES.load(Ordering::Relaxed)
        )?;
        family(
            out,
            "conn_daemon_build_info",
            "gauge",
            "Version of conn-daemon and of its vendored libev, and the --delegate \
             mode; always 1.",
        )?;
        writeln!(
            out,
            "conn_daemon_build_info{{version=\"{}\",libev=\"{}.{}\",delegate=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            sys::EV_VERSION_MAJOR,
            sys::EV_VERSION_MINOR,
            self.delegate.label()
        )?;
        process.render(out)
    }

    /// A family with one sample per accept thread, or per accept thread and
    /// value of `label` (its name and values); `value` gets the thread's counters
    /// and the index of the label value.
    fn per_thread(
        &self,
        out: &mut Vec<u8>,
        (name, kind): (&str, &str),
        help: &str,
        label: Option<(&str, &[&str])>,
        value: impl Fn(&AcceptCounters, usize) -> u64,
    ) -> io::Result<()> {
        family(out, name, kind, help)?;
        for (t, c) in self.accept.iter().enumerate() {
            let Some((key, values)) = label else {
                writeln!(out, "{name}{{thread=\"{t}\"}} {}", value(c, 0))?;
                continue;
            };
            for (i, v) in values.iter().enumerate() {
                writeln!(
                    out,
                    "{name}{{thread=\"{t}\",{key}=\"{v}\"}} {}",
                    value(c, i)
                )?;
            }
        }
        Ok(())
    }

    /// The series of `name` (whose family the accept threads' [`Metrics::per_thread`]
    /// has opened) for each worker that answers connections, labelled `worker`.
    fn per_worker(
        &self,
        out: &mut Vec<u8>,
        name: &str,
        label: Option<(&str, &[&str])>,
        value: impl Fn(&AcceptCounters, usize) -> u64,
    ) -> io::Result<()> {
        for (w, c) in self.worker_side.iter().enumerate() {
            let Some((key, values)) = label else {
                writeln!(out, "{name}{{worker=\"{w}\"}} {}", value(c, 0))?;
                continue;
            };
            for (i, v) in values.iter().enumerate() {
                writeln!(
                    out,
                    "{name}{{worker=\"{w}\",{key}=\"{v}\"}} {}",
                    value(c, i)
                )?;
            }
        }
        Ok(())
    }

    /// `conn_daemon_slow_task_seconds`, all accept threads together.
    fn render_slow_histogram(&self, out: &mut Vec<u8>) -> io::Result<()> {
        const NAME: &str = "conn_daemon_slow_task_seconds";
        family(
            out,
            NAME,
            "histogram",
            "Time from a slow request's delegation to its task's return to the loop \
             (queue wait + run).",
        )?;
        let mut buckets = [0u64; SLOW_BUCKETS.len() + 1];
        let mut sum = 0.0;
        for c in self.accept.iter().chain(self.worker_side.iter()) {
            let h = &c.slow_seconds;
            for (total, b) in buckets.iter_mut().zip(&h.buckets) {
                *total += b.get();
            }
            sum += f64::from_bits(h.sum.get());
        }
        let mut cumulative = 0;
        for (i, n) in buckets.iter().enumerate() {
            cumulative += n;
            match SLOW_BUCKETS.get(i) {
                Some(le) => writeln!(out, "{NAME}_bucket{{le=\"{le}\"}} {cumulative}")?,
                None => writeln!(out, "{NAME}_bucket{{le=\"+Inf\"}} {cumulative}")?,
            }
        }
        writeln!(out, "{NAME}_sum {sum}")?;
        writeln!(out, "{NAME}_count {cumulative}")
    }
}

/// `# HELP` and `# TYPE` of a metric family.
fn family(out: &mut Vec<u8>, name: &str, kind: &str, help: &str) -> io::Result<()> {
    writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}")
}

/// A family of one unlabelled gauge.
fn gauge(out: &mut Vec<u8>, name: &str, help: &str, value: impl Display) -> io::Result<()> {
    family(out, name, "gauge", help)?;
    writeln!(out, "{name} {value}")
}

/// The standard `process_*` metrics, read from `/proc` at scrape time.
#[derive(Debug)]
pub struct Process {
    /// Seconds since the epoch at which the process started (fixed).
    start_time: f64,
}

impl Process {
    /// Reads what does not change: the start time (`/proc/self/stat`'s
    /// `starttime` after `/proc/stat`'s `btime`).
    pub fn new() -> Self {
        let start_time = (|| {
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            let btime: f64 = stat
                .lines()
                .find_map(|l| l.strip_prefix("btime "))?
                .trim()
                .parse()
                .ok()?;
            let mut buf = [0u8; 1024];
            let ticks: f64 = stat_field(read_small("/proc/self/stat", &mut buf).ok()?, 22)?
                .parse()
                .ok()?;
            Some(btime + ticks / USER_HZ)
        })()
        .unwrap_or(0.0);
        Process { start_time }
    }

    fn render(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        if let Ok(stat) = read_small("/proc/self/stat", &mut buf) {
            let ticks = |n| {
                stat_field(stat, n)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let cpu = (ticks(14) + ticks(15)) as f64 / USER_HZ;
            family(
                out,
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
            )?;
            writeln!(out, "process_cpu_seconds_total {cpu}")?;
        }
        if let Ok(status) = read_small("/proc/self/status", &mut buf) {
            if let Some(kb) = status_kb(status, "VmRSS:") {
                gauge(
                    out,
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    kb * 1024,
                )?;
            }
        }
        if let Ok(n) = os::open_fds() {
            gauge(
                out,
                "process_open_fds",
                "Number of open file descriptors.",
                n,
            )?;
        }
        if let Ok(limits) = read_small("/proc/self/limits", &mut buf) {
            if let Some(max) = max_open_files(limits) {
                gauge(
                    out,
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    max,
                )?;
            }
        }
        gauge(
            out,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            self.start_time,
        )
    }
}

impl Default for Process {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads a small `/proc` file into `buf` without allocating; the text read.
fn read_small<'a>(path: &str, buf: &'a mut [u8]) -> io::Result<&'a str> {
    let mut file = std::fs::File::open(path)?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    std::str::from_utf8(&buf[..len]).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`. The command name
/// (field 2) may contain spaces and parentheses, so count after its last `)`.
fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_ascii_whitespace().nth(n.checked_sub(3)?)
}

/// The kB value of `key` in `/proc/PID/status`.
fn status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix(key))?;
    line.split_ascii_whitespace().next()?.parse().ok()
}

/// The soft "Max open files" limit in `/proc/PID/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_ascii_whitespace().next()?.parse().ok()
}

/// How one scrape connection is answered.
enum Reply {
    Metrics,
    NotFound,
}

/// Reads one request (bounded in size and time) and decides the reply; `None`
/// for anything that is not a well-formed `GET`: such connections are closed
/// without a byte.
fn read_request(stream: &mut TcpStream) -> Option<Reply> {
    let mut buf = [0u8; REQUEST_MAX];
    let mut len = 0;
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    let end = loop {
        if let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        if len == buf.len() || left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).ok()?;
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => len += n,
        }
    };
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let line = head.split("\r\n").next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method != "GET" || !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some(if path == "/metrics" {
        Reply::Metrics
    } else {
        Reply::NotFound
    })
}

/// The scrape thread's state: its listener and one response buffer, reused.
struct Scraper {
    listener: TcpListener,
    metrics: Arc<Metrics>,
    process: Process,
    out: Vec<u8>,
}

impl Scraper {
    fn serve(&mut self) {
        loop {
            match self.listener.accept() {
                // A scraper that misbehaves costs its own connection only.
                Ok((stream, _)) => {
                    let _ = self.answer(stream);
                }
                Err(e) if net::is_resource_exhaustion(&e) => {
                    thread::sleep(Duration::from_millis(250))
                }
                Err(_) => {}
            }
        }
    }

    fn answer(&mut self, mut stream: TcpStream) -> io::Result<()> {
        stream.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
        let Some(reply) = read_request(&mut stream) else {
            return Ok(());
        };
        self.out.clear();
        let (status, content_type) = match reply {
            Reply::Metrics => {
                self.metrics.render(&mut self.out, &self.process)?;
                ("200 OK", "text/plain; version=0.0.4")
            }
            Reply::NotFound => {
                self.out.extend_from_slice(b"404 page not found\n");
                ("404 Not Found", "text/plain")
            }
        };
        // The head goes in front of the body in the same buffer, so the response
        // leaves in one write.
        let body = self.out.len();
        write!(
            self.out,
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {body}\r\nConnection: close\r\n\r\n"
        )?;
        let head = self.out.len() - body;
        self.out.rotate_right(head);
        stream.write_all(&self.out)?;
        stream.shutdown(std::net::Shutdown::Write)
    }
}

/// Binds the `--metrics` listener (before any thread starts, so that a failure
/// stops the start-up). An address in use is refused, unless `beside_predecessor`:
/// an upgrade's new process binds while the old one still serves scrapes, so the
/// socket has `SO_REUSEPORT` (the kernel shares scrapes between the two until the
/// old one exits).
pub fn bind(addr: SocketAddr, beside_predecessor: bool) -> io::Result<TcpListener> {
    if !beside_predecessor {
        net::ensure_addr_free(addr)?;
    }
    let sock = net::bound_reuseport(addr, Type::STREAM.cloexec())?;
    sock.listen(64)?;
    Ok(sock.into())
}

/// Serves scrapes on `listener` from a thread of its own, named `metrics`,
/// off the accept loops. The thread is detached: it never holds up the exit.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> io::Result<()> {
    let mut scraper = Scraper {
        listener,
        metrics,
        process: Process::new(),
        out: Vec::with_capacity(16 * 1024),
    };
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || scraper.serve())
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(m: &Metrics) -> String {
        let mut out = Vec::new();
        m.render(&mut out, &Process::new()).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn value(text: &str, series: &str) -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
            .parse()
            .unwrap()
    }

    #[test]
    fn counters_render_per_thread() {
        let m = Metrics::new(2, 1);
        let mut t1 = AcceptMetrics::new(m.accept_thread(1), 64);
        for _ in 0..5 {
            t1.accepted();
        }
        t1.responded(false);
        t1.responded(true);
        t1.dropped(DropReason::TooLarge);
        t1.paused(PauseCause::PoolFull);
        t1.delegated(3, 10.0);
        t1.task_back(3, 10.04);
        m.worker(0).started();
        let text = render(&m);
        let v = |s: &str| value(&text, s);
        assert_eq!(
            v("conn_daemon_connections_accepted_total{thread=\"1\"}"),
            5.0
        );
        assert_eq!(
            v("conn_daemon_connections_accepted_total{thread=\"0\"}"),
            0.0
        );
        assert_eq!(
            v("conn_daemon_responses_total{thread=\"1\",kind=\"fast\"}"),
            1.0
        );
        assert_eq!(
            v("conn_daemon_responses_total{thread=\"1\",kind=\"slow\"}"),
            1.0
        );
        assert_eq!(
            v("conn_daemon_connections_dropped_total{thread=\"1\",reason=\"too_large\"}"),
            1.0
        );
        assert_eq!(v("conn_daemon_connections_open{thread=\"1\"}"), 2.0);
        assert_eq!(v("conn_daemon_pool_capacity{thread=\"1\"}"), 64.0);
        assert_eq!(
            v("conn_daemon_accept_paused{thread=\"1\",cause=\"pool_full\"}"),
            1.0
        );
        assert_eq!(
            v("conn_daemon_accept_pauses_total{thread=\"1\",cause=\"pool_full\"}"),
            1.0
        );
        assert_eq!(v("conn_daemon_slow_tasks_queued"), 0.0);
        assert_eq!(v("conn_daemon_slow_tasks_running"), 1.0);
        assert_eq!(v("conn_daemon_slow_task_seconds_bucket{le=\"0.025\"}"), 0.0);
        assert_eq!(v("conn_daemon_slow_task_seconds_bucket{le=\"0.05\"}"), 1.0);
        assert_eq!(v("conn_daemon_slow_task_seconds_bucket{le=\"+Inf\"}"), 1.0);
        assert_eq!(v("conn_daemon_slow_task_seconds_count"), 1.0);
        assert!((v("conn_daemon_slow_task_seconds_sum") - 0.04).abs() < 1e-9);
        t1.resumed(PauseCause::PoolFull);
        let text = render(&m);
        assert_eq!(
            value(
                &text,
                "conn_daemon_accept_paused{thread=\"1\",cause=\"pool_full\"}"
            ),
            0.0
        );
        assert_eq!(
            t1.stats().served + t1.stats().dropped + t1.stats().timed_out,
            3
        );
    }

    #[test]
    fn upgrades_are_counted() {
        let m = Metrics::new(1, 0);
        let before = value(&render(&m), "conn_daemon_upgrades_total");
        count_upgrade();
        assert_eq!(
            value(&render(&m), "conn_daemon_upgrades_total"),
            before + 1.0
        );
    }

    #[test]
    fn process_metrics_are_read() {
        let text = render(&Metrics::new(1, 0));
        assert!(value(&text, "process_resident_memory_bytes") > 0.0);
        assert!(value(&text, "process_open_fds") >= 3.0);
        assert!(value(&text, "process_max_fds") >= value(&text, "process_open_fds"));
        let start = value(&text, "process_start_time_seconds");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        assert!(
            start > now - 3600.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
        assert!(value(&text, "process_cpu_seconds_total") >= 0.0);
    }

    #[test]
    fn stat_fields_after_the_command_name() {
        let stat = "42 (a) b) c) S 1 2 3 4 5 6 7 8 9 10 111 222 0 0";
        assert_eq!(stat_field(stat, 3), Some("S"));
        assert_eq!(stat_field(stat, 14), Some("111"));
        assert_eq!(stat_field(stat, 15), Some("222"));
    }
}
