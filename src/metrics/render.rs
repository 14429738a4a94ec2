//! The Prometheus text exposition (format 0.0.4) of every counter.

use std::fmt::Display;
use std::io::{self, Write};
use std::sync::atomic::Ordering;

use super::{AcceptCounters, Metrics, PauseCause, Process, ENGINE_REASONS, SLOW_BUCKETS};
use crate::sys;

impl Metrics {
    /// Appends the exposition (format 0.0.4) of every metric to `out`.
    /// Allocates nothing but `out`'s growth.
    pub fn render(&self, out: &mut Vec<u8>, process: &Process) -> io::Result<()> {
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
            labels.kinds_help,
            Some(("kind", labels.kinds)),
            |c, i| c.responses[i].get(),
        )?;
        self.per_worker(
            out,
            "conn_daemon_responses_total",
            Some(("kind", worker_kinds)),
            |c, i| c.responses[labels.worker_kinds[i]].get(),
        )?;
        self.per_thread(
            out,
            ("conn_daemon_connections_dropped_total", "counter"),
            "Connections closed without a response, by reason.",
            Some(("reason", reasons)),
            |c, i| c.dropped[slots[i]].get(),
        )?;
        self.per_worker(
            out,
            "conn_daemon_connections_dropped_total",
            Some(("reason", reasons)),
            |c, i| c.dropped[slots[i]].get(),
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
            self.upgrades.load(Ordering::Relaxed)
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
