//! The Prometheus text exposition (format 0.0.4) of every counter.

use std::fmt::Display;
use std::io::{self, Write};
use std::sync::atomic::Ordering;

use super::{Metrics, PauseCause, Process, Totals, ENGINE_REASONS, HIST, SLOW_BUCKETS};
use crate::config::version;
use crate::sys;

impl Metrics {
    /// Appends the exposition (format 0.0.4) of every metric to `out`.
    /// Allocates nothing but `out`'s growth (the totals are added up in
    /// buffers allocated with the counters).
    pub fn render(&self, out: &mut Vec<u8>, process: &Process) -> io::Result<()> {
        self.with_totals(|totals| self.render_with(out, process, totals))
    }

    fn render_with(&self, out: &mut Vec<u8>, process: &Process, totals: &Totals) -> io::Result<()> {
        let accept = &self.accept;
        let labels = &self.labels;
        // The protocol's reasons first, then the engine's; a counter block
        // keeps the engine's first: `slots` maps a label's place to its counter.
        let mut reasons = [""; ENGINE_REASONS.len() + super::MAX_PROTOCOL_REASONS];
        let mut slots = [0; ENGINE_REASONS.len() + super::MAX_PROTOCOL_REASONS];
        let own = labels.reasons.len();
        for (i, r) in labels.reasons.iter().enumerate() {
            reasons[i] = r;
            slots[i] = ENGINE_REASONS.len() + i;
        }
        for (i, r) in ENGINE_REASONS.iter().enumerate() {
            reasons[own + i] = r;
            slots[own + i] = i;
        }
        let reasons = &reasons[..own + ENGINE_REASONS.len()];
        let mut worker_kinds = [""; super::MAX_KINDS];
        for (i, &k) in labels.worker_kinds.iter().enumerate() {
            worker_kinds[i] = labels.kinds[k];
        }
        let worker_kinds = &worker_kinds[..labels.worker_kinds.len()];
        let causes = PauseCause::ALL.map(PauseCause::label);
        // `totals`: the counters of every generation of the lineage (see
        // `generations`); the gauges but the open connections are this
        // process's own.
        per_thread(
            out,
            ("conn_daemon_connections_accepted_total", "counter"),
            "Connections accepted, per accept thread.",
            &totals.accept,
            None,
            |b, _| b.accepted(),
        )?;
        per_thread(
            out,
            ("conn_daemon_responses_total", "counter"),
            labels.kinds_help,
            &totals.accept,
            Some(("kind", labels.kinds)),
            |b, i| b.responses(i),
        )?;
        per_worker(
            out,
            "conn_daemon_responses_total",
            &totals.workers,
            Some(("kind", worker_kinds)),
            |b, i| b.responses(labels.worker_kinds[i]),
        )?;
        per_thread(
            out,
            ("conn_daemon_connections_dropped_total", "counter"),
            "Connections closed without a response, by reason.",
            &totals.accept,
            Some(("reason", reasons)),
            |b, i| b.dropped(slots[i]),
        )?;
        per_worker(
            out,
            "conn_daemon_connections_dropped_total",
            &totals.workers,
            Some(("reason", reasons)),
            |b, i| b.dropped(slots[i]),
        )?;
        per_thread(
            out,
            ("conn_daemon_connections_open", "gauge"),
            "Connections accepted and not yet answered or dropped (by an accept \
             thread, or with --delegate socket|loop by a worker: worker=\"N\"), in \
             every generation that runs (an upgrade's old one drains its own).",
            &totals.open_accept,
            None,
            |o, _| *o,
        )?;
        per_worker(
            out,
            "conn_daemon_connections_open",
            &totals.open_workers,
            None,
            |o, _| *o,
        )?;
        per_thread(
            out,
            ("conn_daemon_pool_capacity", "gauge"),
            "Connections an accept thread can hold at once (-C).",
            accept,
            None,
            |c, _| c.capacity.get(),
        )?;
        per_thread(
            out,
            ("conn_daemon_accept_paused", "gauge"),
            "1 while the accept thread is not accepting, by cause.",
            accept,
            Some(("cause", &causes)),
            |c, i| c.paused[PauseCause::ALL[i] as usize].get(),
        )?;
        per_thread(
            out,
            ("conn_daemon_accept_pauses_total", "counter"),
            "Times the accept thread stopped accepting, by cause.",
            &totals.accept,
            Some(("cause", &causes)),
            |b, i| b.pauses(PauseCause::ALL[i]),
        )?;
        // Workers' counts first, so that a task counted as started is already
        // counted as delegated when its accept thread is read.
        let finished: u64 = self.workers.iter().map(|w| w.finished.get()).sum();
        let started: u64 = self.workers.iter().map(|w| w.started.get()).sum();
        let delegated: u64 = accept.iter().map(|c| c.delegated.get()).sum();
        let cancelled: u64 = accept.iter().map(|c| c.cancelled.get()).sum();
        let (queued, running) = if self.worker_side.is_empty() {
            (
                delegated.saturating_sub(started).saturating_sub(cancelled),
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
        render_slow_histogram(out, &totals.hist)?;
        family(
            out,
            "conn_daemon_upgrades_total",
            "counter",
            "Binary upgrades in this process's lineage (SIGUSR2, SIGHUP).",
        )?;
        writeln!(
            out,
            "conn_daemon_upgrades_total {}",
            self.upgrades.load(Ordering::Relaxed)
        )?;
        family(
            out,
            "conn_daemon_build_info",
            "gauge",
            "What runs: the version, the git commit and whether the tree was modified, \
             the build profile, the package version (contrib/debian/build.sh), the \
             vendored libev, and the --delegate mode; always 1.",
        )?;
        writeln!(
            out,
            "conn_daemon_build_info{{version=\"{}\",commit=\"{}\",modified=\"{}\",\
             profile=\"{}\",package=\"{}\",libev=\"{}.{}\",delegate=\"{}\"}} 1",
            version::VERSION,
            version::GIT_COMMIT,
            version::GIT_MODIFIED,
            version::PROFILE,
            version::PACKAGE,
            sys::EV_VERSION_MAJOR,
            sys::EV_VERSION_MINOR,
            self.delegate.label()
        )?;
        process.render(out)?;
        match &self.protocol {
            Some(series) => (series.0)(out),
            None => Ok(()),
        }
    }
}

/// A family with one sample per accept thread (`items`, one per thread), or
/// per accept thread and value of `label` (its name and values); `value`
/// gets the thread's item and the index of the label value.
fn per_thread<T>(
    out: &mut Vec<u8>,
    (name, kind): (&str, &str),
    help: &str,
    items: &[T],
    label: Option<(&str, &[&str])>,
    value: impl Fn(&T, usize) -> u64,
) -> io::Result<()> {
    family(out, name, kind, help)?;
    series(out, name, "thread", items, label, value)
}

/// The series of `name` (whose family [`per_thread`] has opened) for each
/// worker that answers connections, labelled `worker`.
fn per_worker<T>(
    out: &mut Vec<u8>,
    name: &str,
    items: &[T],
    label: Option<(&str, &[&str])>,
    value: impl Fn(&T, usize) -> u64,
) -> io::Result<()> {
    series(out, name, "worker", items, label, value)
}

/// The samples of `name`, one per item labelled `who="N"` (and per value of
/// `label`).
fn series<T>(
    out: &mut Vec<u8>,
    name: &str,
    who: &str,
    items: &[T],
    label: Option<(&str, &[&str])>,
    value: impl Fn(&T, usize) -> u64,
) -> io::Result<()> {
    for (n, item) in items.iter().enumerate() {
        let Some((key, values)) = label else {
            writeln!(out, "{name}{{{who}=\"{n}\"}} {}", value(item, 0))?;
            continue;
        };
        for (i, v) in values.iter().enumerate() {
            writeln!(
                out,
                "{name}{{{who}=\"{n}\",{key}=\"{v}\"}} {}",
                value(item, i)
            )?;
        }
    }
    Ok(())
}

/// `conn_daemon_slow_task_seconds`: `hist` holds the count per bucket (not
/// cumulated), `+Inf`, and the sum's bits.
fn render_slow_histogram(out: &mut Vec<u8>, hist: &[u64; HIST]) -> io::Result<()> {
    const NAME: &str = "conn_daemon_slow_task_seconds";
    family(
        out,
        NAME,
        "histogram",
        "Time from a slow request's delegation to its task's return to the loop \
         (queue wait + run).",
    )?;
    let mut cumulative = 0;
    for (i, n) in hist[..HIST - 1].iter().enumerate() {
        cumulative += n;
        match SLOW_BUCKETS.get(i) {
            Some(le) => writeln!(out, "{NAME}_bucket{{le=\"{le}\"}} {cumulative}")?,
            None => writeln!(out, "{NAME}_bucket{{le=\"+Inf\"}} {cumulative}")?,
        }
    }
    writeln!(out, "{NAME}_sum {}", f64::from_bits(hist[HIST - 1]))?;
    writeln!(out, "{NAME}_count {cumulative}")
}

/// `# HELP` and `# TYPE` of a metric family.
pub(super) fn family(out: &mut Vec<u8>, name: &str, kind: &str, help: &str) -> io::Result<()> {
    writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}")
}

/// A family of one unlabelled gauge.
pub(super) fn gauge(
    out: &mut Vec<u8>,
    name: &str,
    help: &str,
    value: impl Display,
) -> io::Result<()> {
    family(out, name, "gauge", help)?;
    writeln!(out, "{name} {value}")
}
