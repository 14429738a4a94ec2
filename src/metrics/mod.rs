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

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::config::Delegate;

mod process;
mod render;
mod scrape;

pub use process::Process;
pub use scrape::{bind, serve, Scrapes};

/// Most response kinds a protocol may have (the `kind` label's values).
pub const MAX_KINDS: usize = 8;
/// Most drop reasons of a protocol's own (the engine's three come on top).
pub const MAX_PROTOCOL_REASONS: usize = 13;
/// The engine's own drop reasons (the `reason` label's values after the
/// protocol's): a vanished or misbehaving client, the read deadline, the drain.
/// A counter block keeps them first, the protocol's after them.
pub const ENGINE_REASONS: [&str; 3] = ["client_gone", "timed_out", "shutdown"];
/// Where `timed_out` is kept in a counter block (the [`Stats`] count it apart).
const TIMED_OUT: usize = 1;

/// What the metrics say of a protocol: the values of the `kind` and `reason`
/// labels, in the order they are listed (the engine's reasons follow the
/// protocol's), and the help of `conn_daemon_responses_total`.
#[non_exhaustive]
#[derive(Clone, Copy, Debug)]
pub struct Labels {
    /// The response kinds (at most [`MAX_KINDS`]), by index.
    pub kinds: &'static [&'static str],
    /// The help line of the responses family.
    pub kinds_help: &'static str,
    /// The kinds a worker answers itself (`--delegate socket|loop`), by index.
    pub worker_kinds: &'static [usize],
    /// The protocol's own drop reasons (at most [`MAX_PROTOCOL_REASONS`]), by index.
    pub reasons: &'static [&'static str],
}

impl Labels {
    /// No kinds and no reasons of a protocol's own.
    pub const NONE: Labels = Labels {
        kinds: &[],
        kinds_help: "Responses sent whole, by kind.",
        worker_kinds: &[],
        reasons: &[],
    };
}

/// Upper bounds (seconds) of the slow-task histogram's buckets, around the default
/// 30 ms slow duration; `+Inf` follows.
pub const SLOW_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

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

/// An accept thread's counters as its loop reports them (at exit, `-v`), and
/// a server's, all threads together.
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Responses sent whole.
    pub served: u64,
    /// Connections closed without a response (bad input, client gone, errors).
    pub dropped: u64,
    /// Connections closed by the read deadline.
    pub timed_out: u64,
}

impl Stats {
    /// Adds another loop's counters to these.
    pub fn add(&mut self, other: Stats) {
        self.served += other.served;
        self.dropped += other.dropped;
        self.timed_out += other.timed_out;
    }
}

/// The counters of one accept thread: written by that thread only, read by the
/// scrape. Aligned so that no other thread's counters share its cache lines;
/// the per-connection ones come first, in one line.
#[repr(align(128))]
#[derive(Debug, Default)]
pub struct AcceptCounters {
    accepted: Counter,
    /// Responses sent whole, by kind.
    responses: [Counter; MAX_KINDS],
    /// Connections closed without a response: the engine's reasons (see
    /// [`ENGINE_REASONS`]), then the protocol's.
    dropped: [Counter; ENGINE_REASONS.len() + MAX_PROTOCOL_REASONS],
    /// Slow tasks given to the workers.
    delegated: Counter,
    /// Of those, withdrawn before a worker took them (the client left).
    cancelled: Counter,
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
        let responses: u64 = self.responses.iter().map(Counter::get).sum();
        let closed = responses + self.dropped_total() + self.handed_off.get();
        self.accepted.get().saturating_sub(closed)
    }

    /// The counters as the [`Stats`] a server returns.
    pub fn stats(&self) -> Stats {
        let timed_out = self.dropped[TIMED_OUT].get();
        Stats {
            served: self.responses.iter().map(Counter::get).sum(),
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
#[derive(Debug)]
pub struct AcceptMetrics {
    counters: Arc<AcceptCounters>,
}

impl AcceptMetrics {
    /// For a pool of `capacity` slots.
    pub fn new(counters: Arc<AcceptCounters>, capacity: usize) -> Self {
        counters.capacity.set(capacity as u64);
        AcceptMetrics { counters }
    }

    /// The counters so far, as [`Stats`].
    pub fn stats(&self) -> Stats {
        self.counters.stats()
    }

    /// A connection was accepted.
    pub fn accepted(&self) {
        self.counters.accepted.bump();
    }

    /// `n` responses of kind `kind` (an index of [`Labels::kinds`]) went out whole.
    #[inline]
    pub fn responded(&self, kind: usize, n: u64) {
        let c = &self.counters.responses[kind];
        c.set(c.get().wrapping_add(n));
    }

    /// A connection was closed without a response, for reason `reason`: an
    /// index of the counter block (the engine's reasons, then the protocol's).
    pub fn dropped(&self, reason: usize) {
        self.counters.dropped[reason].bump();
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

    /// A slow task went to the workers.
    pub fn delegated(&mut self) {
        self.counters.delegated.bump();
    }

    /// A connection left for the worker side (`--delegate socket|loop`).
    pub fn handed_off(&self) {
        self.counters.handed_off.bump();
    }

    /// A queued slow task was withdrawn before a worker took it.
    pub fn cancelled(&self) {
        self.counters.cancelled.bump();
    }

    /// A slow task came back after `seconds` (queue wait plus run plus the trip
    /// back to the loop): into the histogram.
    pub fn task_back(&self, seconds: f64) {
        self.counters.slow_seconds.observe(seconds);
    }
}

/// Every counter of one server: one block per accept thread and per worker.
#[derive(Debug)]
pub struct Metrics {
    accept: Box<[Arc<AcceptCounters>]>,
    workers: Box<[Arc<WorkerCounters>]>,
    /// Binary upgrades in this process's lineage (`conn_daemon_upgrades_total`):
    /// counted by the lifecycle (`lifecycle::UpgradeCount`), only read here.
    upgrades: Arc<AtomicU64>,
    /// `--delegate socket|loop`: the counters of each worker that answers
    /// connections itself (empty in `task` mode).
    worker_side: Box<[Arc<AcceptCounters>]>,
    delegate: Delegate,
    labels: Labels,
}

impl Metrics {
    /// Zeroed counters for `accept_threads` accept threads and `workers` workers;
    /// `upgrades` is the lineage's upgrade count, kept by whoever upgrades.
    pub fn new(accept_threads: usize, workers: usize, upgrades: Arc<AtomicU64>) -> Self {
        Metrics::with_labels(accept_threads, workers, upgrades, Labels::NONE)
    }

    /// As [`Metrics::new`], for a protocol with these `labels`.
    pub fn with_labels(
        accept_threads: usize,
        workers: usize,
        upgrades: Arc<AtomicU64>,
        labels: Labels,
    ) -> Self {
        Metrics {
            accept: (0..accept_threads).map(|_| Arc::default()).collect(),
            workers: (0..workers).map(|_| Arc::default()).collect(),
            upgrades,
            worker_side: Box::default(),
            delegate: Delegate::Task,
            labels,
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
}

#[cfg(test)]
mod tests {
    use super::process::stat_field;
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
        let labels = Labels {
            kinds: &["fast", "slow"],
            kinds_help: "",
            worker_kinds: &[1],
            reasons: &["invalid", "too_large"],
        };
        let m = Metrics::with_labels(2, 1, Arc::default(), labels);
        let mut t1 = AcceptMetrics::new(m.accept_thread(1), 64);
        for _ in 0..5 {
            t1.accepted();
        }
        t1.responded(0, 1);
        t1.responded(1, 1);
        t1.dropped(ENGINE_REASONS.len() + 1);
        t1.paused(PauseCause::PoolFull);
        t1.delegated();
        t1.task_back(10.04 - 10.0);
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
        let upgrades = Arc::new(AtomicU64::new(4));
        let m = Metrics::new(1, 0, Arc::clone(&upgrades));
        let before = value(&render(&m), "conn_daemon_upgrades_total");
        assert_eq!(before, 4.0);
        upgrades.fetch_add(1, Ordering::Relaxed);
        assert_eq!(
            value(&render(&m), "conn_daemon_upgrades_total"),
            before + 1.0
        );
    }

    #[test]
    fn process_metrics_are_read() {
        let text = render(&Metrics::new(1, 0, Arc::default()));
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
