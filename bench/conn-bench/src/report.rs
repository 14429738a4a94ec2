//! The report: its data model (serialized as `report.json`), the Markdown
//! table printed on stdout and the SVG chart.

use crate::args::{Generator, PortRange, Scenario};
use crate::load::{LoadKind, LoadSpec, RunResult};
use crate::procstat::Machine;
use crate::stats::{median, ratio, within_noise, Spread};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use serde::Serialize;
use std::fmt::Write as _;

/// Everything conn-bench measured, in `report.json`'s shape.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Always "conn-bench", so the file identifies itself.
    pub tool: &'static str,
    /// fast, slow or mixed.
    pub scenario: Scenario,
    /// ab or wrk.
    pub generator: Generator,
    /// Rounds per server.
    pub rounds: u32,
    /// The servers' worker count as given (`--workers`).
    pub workers: u32,
    /// The servers' slow duration as given (`--slow-ms`).
    pub slow_ms: u64,
    /// The slow load's concurrency (`--slow-concurrency`, default workers).
    pub slow_concurrency: u32,
    /// `{delegate}` as given (`--delegate`).
    pub delegate: String,
    /// `--ports`, when given.
    pub ports: Option<PortRange>,
    /// wrk only: seconds per run.
    pub wrk_duration_s: Option<u64>,
    /// The generator processes of each run.
    pub loads: Vec<LoadSpec>,
    /// `--threads` values asked for (empty: no sweep); rows carry the ones run.
    pub threads: Vec<u32>,
    /// Resolution of the CPU figures (`/proc` ticks per second).
    pub clock_ticks_per_second: u64,
    /// Where and when it ran.
    pub machine: Machine,
    /// Caveats and skipped servers, also printed under the table.
    pub notes: Vec<String>,
    /// One entry per server and thread count: per thread count, the
    /// reference (first) server first.
    pub servers: Vec<ServerReport>,
}

/// A generator CPU share at or above this means the client was the limit
/// (when the server's share is below it).
pub const SATURATED: f64 = 0.85;

/// One server's figures.
#[derive(Debug, Clone, Serialize)]
pub struct ServerReport {
    /// Label given with `--server` (or `nginx`).
    pub name: String,
    /// Its command line, conn-bench's placeholders filled in (`{port}` aside).
    pub command: String,
    /// The placeholders its command used (`{workers}`, `{slow_ms}`, ...).
    pub placeholders: Vec<String>,
    /// Port it listened on.
    pub port: u16,
    /// The `--threads` value of this row (its `{threads}`); None without a sweep.
    pub threads: Option<u32>,
    /// CPUs the server was pinned to; None when not pinned.
    pub server_cpus: Option<Vec<usize>>,
    /// CPUs the load generator was pinned to; None when not pinned.
    pub client_cpus: Option<Vec<usize>>,
    /// Generator threads that could run at once: wrk's `-t` summed over the
    /// loads, one per ab process, at most the client CPUs.
    pub client_threads: u32,
    /// Wall time of the load runs, summed over rounds.
    pub wall_s_total: f64,
    /// Share of its CPUs the server used while loaded (1.0: all busy).
    pub server_cpu_util: f64,
    /// Share of the server's CPUs busy during the runs, whoever used them
    /// (`/proc/stat`): above `server_cpu_util` when other processes ran there.
    pub server_cpus_busy: f64,
    /// CPU of the generators and conn-bench itself over all runs, in µs.
    pub client_cpu_us_total: f64,
    /// Share of the generator threads' CPUs used (1.0: all busy).
    pub client_cpu_util: f64,
    /// Share of the generator's CPUs busy during the runs, whoever used them.
    pub client_cpus_busy: f64,
    /// The generator was saturated and the server was not: this row's
    /// throughput measures the client, not the server.
    pub client_bound: bool,
    /// From exec to the first successful TCP connect.
    pub startup_ms: f64,
    /// Resident memory (KiB, whole process tree) after start, before load.
    pub idle_rss_kib: u64,
    /// Highest resident memory sampled (every 50 ms) during the rounds.
    pub peak_rss_kib: u64,
    /// Server CPU time (all threads and processes) over all rounds, µs.
    pub cpu_us_total: f64,
    /// The same in utime + stime clock ticks (`/proc/PID/stat`), a
    /// cross-check: it also counts threads that exited, schedstat does not.
    pub cpu_ticks_total: u64,
    /// Completed requests over all rounds and loads.
    pub requests_total: u64,
    /// Median over rounds of the server's CPU per request (all loads).
    pub cpu_us_per_request: f64,
    /// Per load (one, or fast and slow for `mixed`).
    pub loads: Vec<LoadReport>,
    /// Server-wide figures divided by the first server's.
    pub ratios: ServerRatios,
    /// Names of the `ratios` whose difference is within noise (the table
    /// prints "within noise" instead of the ratio).
    pub within_noise: Vec<&'static str>,
    /// The whole run's window (all loads), with the per-round CPU figures
    /// behind `cpu_us_per_request` and the server-wide shares above.
    pub whole: Window,
}

/// CPU and time over one load's window, from the start of each round to
/// that load's end, summed over rounds. For a single load (and the
/// server-wide figures) the window is the whole run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Window {
    /// Wall time of the windows, summed.
    pub wall_s_total: f64,
    /// Server CPU in the windows, µs.
    pub server_cpu_us_total: f64,
    /// Share of its CPUs the server used in the windows.
    pub server_cpu_util: f64,
    /// Share of the server's CPUs busy in the windows, whoever used them.
    pub server_cpus_busy: f64,
    /// CPU of the generators and conn-bench in the windows, µs.
    pub client_cpu_us_total: f64,
    /// Share of the generator threads' CPUs used.
    pub client_cpu_util: f64,
    /// Share of the generator's CPUs busy, whoever used them.
    pub client_cpus_busy: f64,
    /// Generator saturated, server not: throughput here is the client's.
    pub client_bound: bool,
    /// Requests completed in the windows by all loads (a load still
    /// running at the window's end counted pro rata to time).
    pub requests: f64,
    /// Median over rounds of server CPU per request in the window, µs.
    pub cpu_us_per_request: f64,
    /// Each round's CPU per request, µs (rounds with a failed run left out).
    pub cpu_us_per_request_rounds: Vec<f64>,
    /// What a round's CPU per request can be off by from the readings
    /// alone, µs (the largest over rounds).
    pub cpu_us_per_request_resolution: f64,
    /// `schedstat` (ns) or `ticks` (utime + stime), where schedstat was unreadable.
    pub cpu_source: &'static str,
}

/// The finest difference each latency/throughput figure of a generator can show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Resolution {
    /// Requests/s as printed.
    pub requests_per_s: f64,
    /// p50 and p99, ms.
    pub p50_p99_ms: f64,
    /// p99.9, ms.
    pub p999_ms: f64,
}

impl Resolution {
    /// ab prints requests/s with 2 decimals and `-e` in µs, but `-g` (p99.9)
    /// in whole ms; wrk's percentiles are µs and its rate exact.
    pub fn of(generator: Generator) -> Resolution {
        match generator {
            Generator::Ab => Resolution {
                requests_per_s: 0.01,
                p50_p99_ms: 0.001,
                p999_ms: 1.0,
            },
            Generator::Wrk => Resolution {
                requests_per_s: 0.0,
                p50_p99_ms: 0.001,
                p999_ms: 0.001,
            },
        }
    }
}

/// Resolution of a start-up time: the connect probe retries every 1 ms.
pub const STARTUP_RESOLUTION_MS: f64 = 1.0;
/// Resolution of a resident-memory reading: one page.
pub const RSS_RESOLUTION_KIB: f64 = 4.0;

/// One load's figures for one server.
#[derive(Debug, Clone, Serialize)]
pub struct LoadReport {
    /// Endpoint.
    pub kind: LoadKind,
    /// Requests per second over rounds.
    pub requests_per_s: Spread,
    /// Median over rounds of each round's percentile, in ms.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub p999_ms: f64,
    /// Completed requests, summed over rounds.
    pub completed: u64,
    /// Failed requests, summed over rounds.
    pub failed: u64,
    /// Non-2xx responses, summed over rounds.
    pub non_2xx: u64,
    /// Slow load: workers * 1000 / slow_ms.
    pub ideal_requests_per_s: Option<f64>,
    /// Slow load: median requests/s as a percentage of the ideal.
    pub percent_of_ideal: Option<f64>,
    /// Slow load: latency percentiles minus the slow duration, in ms.
    pub p50_over_slow_ms: Option<f64>,
    /// See `p50_over_slow_ms`.
    pub p99_over_slow_ms: Option<f64>,
    /// See `p50_over_slow_ms`.
    pub p999_over_slow_ms: Option<f64>,
    /// Each successful round's raw figures.
    pub rounds: Vec<RunResult>,
    /// Why each failed round failed (left out of every figure).
    pub failed_runs: Vec<String>,
    /// The finest differences the generator's figures can show.
    pub resolution: Resolution,
    /// CPU and time over this load's own window.
    pub window: Window,
    /// This load's figures divided by the first server's same load.
    pub ratios: LoadRatios,
    /// Names of the `ratios` whose difference is within noise.
    pub within_noise: Vec<&'static str>,
    /// The percentiles (`p50_ms`, `p99_ms`, `p999_ms`) that rest on fewer
    /// than `MIN_TAIL` of a round's requests: see `thin_percentiles`.
    pub thin: Vec<&'static str>,
}

/// A percentile needs at least this many of a round's requests beyond it to
/// be a measured tail rather than the slowest few requests.
pub const MIN_TAIL: f64 = 10.0;

/// The percentiles a round of `requests` (the smallest round) cannot
/// measure: fewer than `MIN_TAIL` requests lie beyond them. With 267
/// requests, 2.7 lie beyond p99 and 0.3 beyond p99.9, which is then the
/// round's maximum: printed as a percentile it would look measured.
pub fn thin_percentiles(requests: u64) -> Vec<&'static str> {
    [("p50_ms", 50.0), ("p99_ms", 99.0), ("p999_ms", 99.9)]
        .into_iter()
        .filter(|&(_, p)| (requests as f64) * (1.0 - p / 100.0) < MIN_TAIL - 1e-9)
        .map(|(name, _)| name)
        .collect()
}

/// Ratios of server-wide figures to the first server (None: undefined).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct ServerRatios {
    /// Startup time.
    pub startup_ms: Option<f64>,
    /// Idle RSS.
    pub idle_rss_kib: Option<f64>,
    /// Peak RSS.
    pub peak_rss_kib: Option<f64>,
    /// CPU per request.
    pub cpu_us_per_request: Option<f64>,
}

/// Ratios of a load's figures to the first server's same load.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct LoadRatios {
    /// Median requests/s.
    pub requests_per_s_median: Option<f64>,
    /// Minimum requests/s.
    pub requests_per_s_min: Option<f64>,
    /// Maximum requests/s.
    pub requests_per_s_max: Option<f64>,
    /// Latency p50.
    pub p50_ms: Option<f64>,
    /// Latency p99.
    pub p99_ms: Option<f64>,
    /// Latency p99.9.
    pub p999_ms: Option<f64>,
    /// Failed requests.
    pub failed: Option<f64>,
    /// Non-2xx responses.
    pub non_2xx: Option<f64>,
    /// CPU per request in this load's window.
    pub cpu_us_per_request: Option<f64>,
}

impl LoadReport {
    /// Summarizes a load's runs, failed ones set aside. `ideal`
    /// (requests/s) and `slow_ms` apply to the slow load only.
    pub fn from_runs(
        kind: LoadKind,
        runs: Vec<Result<RunResult, String>>,
        generator: Generator,
        slow_ms: u64,
        ideal: f64,
    ) -> LoadReport {
        let mut rounds = Vec::new();
        let mut failed_runs = Vec::new();
        for run in runs {
            match run {
                Ok(r) => rounds.push(r),
                Err(e) => failed_runs.push(e),
            }
        }
        let mut l = LoadReport::from_rounds(kind, rounds, slow_ms, ideal);
        l.failed_runs = failed_runs;
        l.resolution = Resolution::of(generator);
        l
    }

    /// Summarizes successful rounds (see `from_runs`).
    pub fn from_rounds(
        kind: LoadKind,
        rounds: Vec<RunResult>,
        slow_ms: u64,
        ideal: f64,
    ) -> LoadReport {
        let pick = |f: fn(&RunResult) -> f64| {
            median(&rounds.iter().map(f).collect::<Vec<_>>()).unwrap_or(f64::NAN)
        };
        let rps: Vec<f64> = rounds.iter().map(|r| r.rps).collect();
        // No successful round: nothing to show (n/a), not a zero.
        let requests_per_s = Spread::of(&rps).unwrap_or(Spread {
            median: f64::NAN,
            min: f64::NAN,
            max: f64::NAN,
        });
        let (p50, p99, p999) = (pick(|r| r.p50_ms), pick(|r| r.p99_ms), pick(|r| r.p999_ms));
        let slow = kind == LoadKind::Slow;
        let over = |p: f64| slow.then_some(p - slow_ms as f64);
        LoadReport {
            kind,
            requests_per_s,
            p50_ms: p50,
            p99_ms: p99,
            p999_ms: p999,
            completed: rounds.iter().map(|r| r.completed).sum(),
            failed: rounds.iter().map(|r| r.failed).sum(),
            non_2xx: rounds.iter().map(|r| r.non_2xx).sum(),
            ideal_requests_per_s: slow.then_some(ideal),
            percent_of_ideal: if slow {
                ratio(requests_per_s.median, ideal).map(|r| r * 100.0)
            } else {
                None
            },
            p50_over_slow_ms: over(p50),
            p99_over_slow_ms: over(p99),
            p999_over_slow_ms: over(p999),
            failed_runs: Vec::new(),
            resolution: Resolution::default(),
            window: Window::default(),
            ratios: LoadRatios::default(),
            within_noise: Vec::new(),
            thin: rounds
                .iter()
                .map(|r| r.completed)
                .min()
                .map_or_else(Vec::new, thin_percentiles),
            rounds,
        }
    }
}

/// Fills every row's `ratios` against the first server with the same
/// thread count, and names those whose difference is within noise.
pub fn fill_ratios(servers: &mut [ServerReport]) {
    let bases: Vec<ServerReport> = servers.to_vec();
    for server in servers.iter_mut() {
        let Some(base) = bases.iter().find(|b| b.threads == server.threads) else {
            continue;
        };
        server.ratios = ServerRatios {
            startup_ms: ratio(server.startup_ms, base.startup_ms),
            idle_rss_kib: ratio(server.idle_rss_kib as f64, base.idle_rss_kib as f64),
            peak_rss_kib: ratio(server.peak_rss_kib as f64, base.peak_rss_kib as f64),
            cpu_us_per_request: ratio(server.cpu_us_per_request, base.cpu_us_per_request),
        };
        // The reference against itself: ratios of 1, no noise to judge.
        let itself = base.name == server.name;
        let single = |a: f64, b: f64, res: f64| within_noise(&[a], res, &[b], res);
        let (mine, mine_res) = (
            &server.whole.cpu_us_per_request_rounds,
            server.whole.cpu_us_per_request_resolution,
        );
        let (theirs, theirs_res) = (
            &base.whole.cpu_us_per_request_rounds,
            base.whole.cpu_us_per_request_resolution,
        );
        server.within_noise = [
            (
                "startup_ms",
                single(server.startup_ms, base.startup_ms, STARTUP_RESOLUTION_MS),
            ),
            (
                "idle_rss_kib",
                single(
                    server.idle_rss_kib as f64,
                    base.idle_rss_kib as f64,
                    RSS_RESOLUTION_KIB,
                ),
            ),
            (
                "peak_rss_kib",
                single(
                    server.peak_rss_kib as f64,
                    base.peak_rss_kib as f64,
                    RSS_RESOLUTION_KIB,
                ),
            ),
            (
                "cpu_us_per_request",
                within_noise(mine, mine_res, theirs, theirs_res),
            ),
        ]
        .into_iter()
        .filter_map(|(name, noisy)| (noisy && !itself).then_some(name))
        .collect();
        for load in server.loads.iter_mut() {
            let Some(b) = base.loads.iter().find(|l| l.kind == load.kind) else {
                continue;
            };
            load.ratios = LoadRatios {
                requests_per_s_median: ratio(load.requests_per_s.median, b.requests_per_s.median),
                requests_per_s_min: ratio(load.requests_per_s.min, b.requests_per_s.min),
                requests_per_s_max: ratio(load.requests_per_s.max, b.requests_per_s.max),
                p50_ms: ratio(load.p50_ms, b.p50_ms),
                p99_ms: ratio(load.p99_ms, b.p99_ms),
                p999_ms: ratio(load.p999_ms, b.p999_ms),
                failed: ratio(load.failed as f64, b.failed as f64),
                non_2xx: ratio(load.non_2xx as f64, b.non_2xx as f64),
                cpu_us_per_request: ratio(
                    load.window.cpu_us_per_request,
                    b.window.cpu_us_per_request,
                ),
            };
            let rounds = |l: &LoadReport, f: fn(&RunResult) -> f64| -> Vec<f64> {
                l.rounds.iter().map(f).collect()
            };
            let cmp = |f: fn(&RunResult) -> f64, res: fn(&Resolution) -> f64| {
                within_noise(
                    &rounds(load, f),
                    res(&load.resolution),
                    &rounds(b, f),
                    res(&b.resolution),
                )
            };
            let rps = cmp(|r| r.rps, |r| r.requests_per_s);
            load.within_noise = [
                ("requests_per_s_median", rps),
                ("requests_per_s_min", rps),
                ("requests_per_s_max", rps),
                ("p50_ms", cmp(|r| r.p50_ms, |r| r.p50_p99_ms)),
                ("p99_ms", cmp(|r| r.p99_ms, |r| r.p50_p99_ms)),
                ("p999_ms", cmp(|r| r.p999_ms, |r| r.p999_ms)),
                (
                    "cpu_us_per_request",
                    within_noise(
                        &load.window.cpu_us_per_request_rounds,
                        load.window.cpu_us_per_request_resolution,
                        &b.window.cpu_us_per_request_rounds,
                        b.window.cpu_us_per_request_resolution,
                    ),
                ),
            ]
            .into_iter()
            .filter_map(|(name, noisy)| (noisy && !itself).then_some(name))
            .collect();
        }
    }
}

/// Why a slow load fell short of (or beat) its ideal, for the notes: under
/// 90 % the run says nothing about the server until the cause is known.
pub fn slow_shortfall(
    s: &ServerReport,
    l: &LoadReport,
    workers: u32,
    slow_ms: u64,
    concurrency: u32,
) -> Option<String> {
    if l.kind != LoadKind::Slow {
        return None;
    }
    let pct = l.percent_of_ideal.filter(|p| p.is_finite())?;
    let ideal = l.ideal_requests_per_s?;
    let rate = l.requests_per_s.median;
    // Little's law: requests/s times the duration each holds a worker.
    let busy = rate * slow_ms as f64 / 1000.0;
    let queued = l.p50_over_slow_ms.unwrap_or(f64::NAN);
    if pct > 110.0 {
        return Some(format!(
            "{}: the slow load reached {pct:.0}% of the ideal {} req/s: its slow throughput is not \
             bounded by {workers} workers / {slow_ms} ms (about {busy:.1} requests in service at \
             once), e.g. a server that serves slow requests on its event loop (--delegate loop).",
            s.name,
            fmt_num(ideal)
        ));
    }
    if pct >= 90.0 {
        return None;
    }
    let has = |p: &str| s.placeholders.iter().any(|x| x == p);
    // Requests each connection made per round: the ideal assumes the
    // pipeline is always full, which the first and last batch are not.
    let batches = l.completed as f64 / l.rounds.len().max(1) as f64 / f64::from(concurrency.max(1));
    let cause = if !has("{workers}") {
        format!(
            "the server's worker count differs from --workers {workers}: its command does not pass \
             {{workers}}, and the rate is that of {busy:.1} busy workers (conn-daemon's -w defaults \
             to its -A); add `-w {{workers}}` to the command"
        )
    } else if !has("{slow_ms}") && queued.is_finite() && queued.abs() > 0.2 * slow_ms as f64 {
        format!(
            "the server's slow duration differs from --slow-ms {slow_ms}: its command does not pass \
             {{slow_ms}} and p50 is {} ms over it; add `-D {{slow_ms}}` to the command",
            fmt_num(queued)
        )
    } else if l.window.client_bound {
        "the load generator was saturated (client-bound)".to_string()
    } else if l.window.server_cpu_util >= SATURATED || l.window.server_cpus_busy >= SATURATED {
        format!(
            "the server's CPUs were {} busy",
            percent(l.window.server_cpus_busy.max(l.window.server_cpu_util))
        )
    } else if batches < 50.0 {
        format!(
            "too few requests: each connection of the slow load made only {batches:.0} requests \
             in a round, so the generator's start and its last, partly filled batch weigh about \
             1/{batches:.0} of the time; use more requests (-n or --slow-requests)"
        )
    } else if queued.is_finite() && queued > 0.5 * slow_ms as f64 {
        format!(
            "requests waited for a worker (p50 is {} ms over the duration): the server ran fewer \
             than {workers} workers, about {busy:.1} by the rate; check the value it got",
            fmt_num(queued)
        )
    } else {
        format!(
            "unknown: no queueing (p50 {} ms over the duration), server and generator not \
             saturated; the rate is that of {busy:.1} busy workers",
            fmt_num(queued)
        )
    };
    Some(format!(
        "{}: the slow load reached {pct:.1}% of the ideal {} req/s (under 90%). Likely cause: {cause}.",
        s.name,
        fmt_num(ideal)
    ))
}

/// A number with precision fit for a table cell: integers for large
/// figures, two decimals for small ones (sub-millisecond latencies).
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        "n/a".into()
    } else if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// A cell: the value, then its ratio to the first server unless this is
/// the first server or the ratio is undefined; "within noise" instead of
/// a ratio the measurement cannot support.
fn cell(value: String, ratio: Option<f64>, noisy: bool, first: bool) -> String {
    match ratio {
        Some(_) if !first && noisy => format!("{value} (within noise)"),
        Some(r) if !first => format!("{value} ({r:.2}×)"),
        _ => value,
    }
}

/// A percentile's cell: "(thin)" instead of a ratio when too few requests
/// lie beyond it (`thin_percentiles`), else as `cell`.
fn latency_cell(l: &LoadReport, name: &str, value: f64, ratio: Option<f64>, first: bool) -> String {
    if l.thin.contains(&name) {
        format!("{} (thin)", fmt_num(value))
    } else {
        cell(fmt_num(value), ratio, l.within_noise.contains(&name), first)
    }
}

/// An axis tick: at most two decimals, trailing zeros dropped.
fn fmt_axis(v: f64) -> String {
    let text = format!("{v:.2}");
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// A CPU share as a whole percentage.
fn percent(share: f64) -> String {
    if share.is_finite() {
        format!("{:.0}%", share * 100.0)
    } else {
        "n/a".into()
    }
}

/// A CPU % cell: the processes' share, and the CPUs' when other processes
/// made them noticeably busier.
fn cpu_cell(own: f64, busy: f64) -> String {
    if busy.is_finite() && own.is_finite() && busy - own > SHARED {
        format!("{} (CPUs {})", percent(own), percent(busy))
    } else {
        percent(own)
    }
}

/// Whether a row is client-bound: the generator was saturated and the
/// server was not. The generator counts as saturated when its processes used
/// at least `SATURATED` of what they can use, or its CPUs were that busy
/// whoever kept them so (a generator starved by other processes limits the
/// throughput as surely as a slow one). The server is judged by its own CPU
/// time against its CPU set only: other processes keeping its CPUs busy do
/// not make it the limit (`shared_cpus_note` says when they did).
pub fn is_client_bound(server_own: f64, client: [f64; 2]) -> bool {
    client.iter().any(|&v| v >= SATURATED) && server_own.is_finite() && server_own < SATURATED
}

/// A CPU set counts as shared when whoever ran there kept it this much busier
/// than the benchmark's own processes did.
pub const SHARED: f64 = 0.10;

/// The note naming the rows whose CPUs other processes used (by more than
/// `SHARED`), or None on a quiet machine.
pub fn shared_cpus_note(rows: &[ServerReport]) -> Option<String> {
    let mut seen = Vec::new();
    for s in rows {
        let at = s.threads.map_or(String::new(), |t| format!(" ×{t}"));
        for l in &s.loads {
            let w = &l.window;
            let sides: Vec<String> = [
                ("server", w.server_cpu_util, w.server_cpus_busy),
                ("generator", w.client_cpu_util, w.client_cpus_busy),
            ]
            .into_iter()
            .filter(|(_, own, busy)| busy - own > SHARED)
            .map(|(side, own, busy)| {
                format!(
                    "{side} CPUs {} busy, {} by the {side}",
                    percent(busy),
                    percent(own)
                )
            })
            .collect();
            if !sides.is_empty() {
                seen.push(format!(
                    "{}{at} {}: {}",
                    s.name,
                    l.kind.name(),
                    sides.join(", ")
                ));
            }
        }
    }
    (!seen.is_empty()).then(|| {
        format!(
            "Other processes used the benchmark's CPUs ({}): those rows measure a shared \
             machine (their cells read \"N% (CPUs M%)\"); rerun on a quiet one.",
            seen.join("; ")
        )
    })
}

fn mib(kib: u64) -> String {
    fmt_num(kib as f64 / 1024.0)
}

/// The generator's command name.
fn generator_name(generator: Generator) -> &'static str {
    match generator {
        Generator::Ab => "ab",
        Generator::Wrk => "wrk",
    }
}

/// One run's loads: "fast × 20000 requests at concurrency 50 + ...".
fn describe_loads(report: &Report) -> String {
    let loads: Vec<String> = report
        .loads
        .iter()
        .map(|l| match report.wrk_duration_s {
            Some(d) => format!(
                "{} for {d} s at concurrency {}",
                l.kind.name(),
                l.concurrency
            ),
            None => format!(
                "{} × {} requests at concurrency {}",
                l.kind.name(),
                l.requests,
                l.concurrency
            ),
        })
        .collect();
    loads.join(" + ")
}

/// The Markdown report: a heading, the main table, the slow-load table when
/// there is a slow load, and the notes.
pub fn markdown(report: &Report) -> String {
    let mut md = String::new();
    let scenario = report.scenario.name();
    let generator = generator_name(report.generator);
    let _ = writeln!(md, "## conn-bench: {scenario} scenario\n");
    let _ = writeln!(
        md,
        "{generator}, {} round(s) per server (servers alternating), per run: {}. Measured {}.\n",
        report.rounds,
        describe_loads(report),
        report.machine.describe()
    );
    if report.servers.is_empty() {
        let _ = writeln!(md, "No server was benchmarked.\n");
    } else {
        let sweep = report.servers.iter().any(|s| s.threads.is_some());
        md += if sweep { "| threads " } else { "" };
        md +=
            "| server | load | req/s median | req/s min | req/s max | p50 ms | p99 ms | p99.9 ms \
               | failed | non-2xx | CPU µs/req | idle RSS MiB | peak RSS MiB | exec→listen ms \
               | server CPU % | client CPU % | limit |\n";
        md += if sweep { "| ---: " } else { "" };
        md += "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |\n";
        for (i, s) in report.servers.iter().enumerate() {
            let first = report.servers.iter().position(|b| b.threads == s.threads) == Some(i);
            let server_noisy = |name: &str| s.within_noise.contains(&name);
            for l in &s.loads {
                let r = &l.ratios;
                let noisy = |name: &str| l.within_noise.contains(&name);
                let w = &l.window;
                let mut cells = Vec::new();
                if sweep {
                    cells.push(s.threads.map_or("-".into(), |t| t.to_string()));
                }
                let limit = match (w.client_bound, l.failed_runs.len()) {
                    (_, n) if n > 0 => format!("{n} of {} runs failed", n + l.rounds.len()),
                    (true, _) => "client-bound".into(),
                    _ => String::new(),
                };
                cells.extend([
                    s.name.clone(),
                    l.kind.name().to_string(),
                    cell(
                        fmt_num(l.requests_per_s.median),
                        r.requests_per_s_median,
                        noisy("requests_per_s_median"),
                        first,
                    ),
                    cell(
                        fmt_num(l.requests_per_s.min),
                        r.requests_per_s_min,
                        noisy("requests_per_s_min"),
                        first,
                    ),
                    cell(
                        fmt_num(l.requests_per_s.max),
                        r.requests_per_s_max,
                        noisy("requests_per_s_max"),
                        first,
                    ),
                    latency_cell(l, "p50_ms", l.p50_ms, r.p50_ms, first),
                    latency_cell(l, "p99_ms", l.p99_ms, r.p99_ms, first),
                    latency_cell(l, "p999_ms", l.p999_ms, r.p999_ms, first),
                    cell(l.failed.to_string(), r.failed, false, first),
                    cell(l.non_2xx.to_string(), r.non_2xx, false, first),
                    cell(
                        fmt_num(w.cpu_us_per_request),
                        r.cpu_us_per_request,
                        noisy("cpu_us_per_request"),
                        first,
                    ),
                    cell(
                        mib(s.idle_rss_kib),
                        s.ratios.idle_rss_kib,
                        server_noisy("idle_rss_kib"),
                        first,
                    ),
                    cell(
                        mib(s.peak_rss_kib),
                        s.ratios.peak_rss_kib,
                        server_noisy("peak_rss_kib"),
                        first,
                    ),
                    cell(
                        fmt_num(s.startup_ms),
                        s.ratios.startup_ms,
                        server_noisy("startup_ms"),
                        first,
                    ),
                    cpu_cell(w.server_cpu_util, w.server_cpus_busy),
                    cpu_cell(w.client_cpu_util, w.client_cpus_busy),
                    limit,
                ]);
                let _ = writeln!(md, "| {} |", cells.join(" | "));
            }
        }
        let per = if sweep { " with the same threads" } else { "" };
        let _ = writeln!(
            md,
            "\nIn parentheses: ratio to the first server{per} ({}), or \"within noise\" when the \
             difference is no larger than the measurement's resolution or the rounds' min-max \
             spread (the ratio would be noise). CPU and memory cover all threads and processes \
             of a server. CPU µs/req, server CPU % and client CPU % cover the row's own load \
             window (start of each round to that load's end): the share of the server's CPUs, \
             and of the generator's threads' CPUs, busy in it; `client-bound` (generator or its \
             CPUs at {:.0}% or more, the server's own CPU time below that share of its CPUs): \
             that row's throughput is the load generator's limit, not the server's.",
            report.servers[0].name,
            SATURATED * 100.0
        );
    }

    let slow: Vec<(&ServerReport, &LoadReport)> = report
        .servers
        .iter()
        .flat_map(|s| {
            s.loads
                .iter()
                .filter(|l| l.kind == LoadKind::Slow)
                .map(move |l| (s, l))
        })
        .collect();
    if !slow.is_empty() {
        let _ = writeln!(
            md,
            "\nSlow load at concurrency {} against the ideal of min({}, {}) workers / {} ms, latency \
             over the {} ms duration:\n",
            report.slow_concurrency,
            report.workers,
            report.slow_concurrency,
            report.slow_ms,
            report.slow_ms
        );
        md += "| server | ideal req/s | req/s median | % of ideal | p50 − D ms | p99 − D ms | p99.9 − D ms |\n";
        md += "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
        for (s, l) in slow {
            let opt = |v: Option<f64>| v.map_or("n/a".to_string(), fmt_num);
            let over = |v: Option<f64>, name: &str| {
                let text = opt(v);
                if l.thin.contains(&name) {
                    format!("{text} (thin)")
                } else {
                    text
                }
            };
            let _ = writeln!(
                md,
                "| {} | {} | {} | {} | {} | {} | {} |",
                s.name,
                opt(l.ideal_requests_per_s),
                fmt_num(l.requests_per_s.median),
                opt(l.percent_of_ideal),
                over(l.p50_over_slow_ms, "p50_ms"),
                over(l.p99_over_slow_ms, "p99_ms"),
                over(l.p999_over_slow_ms, "p999_ms")
            );
        }
    }
    if let Some(note) = thin_note(report) {
        let _ = writeln!(md, "\n{note}");
    }
    if !report.notes.is_empty() {
        md += "\nNotes:\n";
        for note in &report.notes {
            let _ = writeln!(md, "- {note}");
        }
    }
    md
}

/// What "(thin)" means, with the smallest round of the report, when a
/// cell says it.
fn thin_note(report: &Report) -> Option<String> {
    let fewest = report
        .servers
        .iter()
        .flat_map(|s| &s.loads)
        .filter(|l| !l.thin.is_empty())
        .flat_map(|l| l.rounds.iter().map(|r| r.completed))
        .min()?;
    let beyond = |p: f64| fewest as f64 * (1.0 - p / 100.0);
    Some(format!(
        "(thin): fewer than {MIN_TAIL:.0} of a round's requests lie beyond that percentile, so it \
         is the slowest few requests, not a measured tail, and gets no ratio (the smallest round, \
         {fewest} requests, has {:.1} beyond p99 and {:.1} beyond p99.9). Measuring p99 takes at \
         least {} requests per round, p99.9 {}.",
        beyond(99.0),
        beyond(99.9),
        fmt_num(MIN_TAIL / 0.01),
        fmt_num(MIN_TAIL / 0.001)
    ))
}

/// `report.json`: the report, pretty-printed.
pub fn json(report: &Report) -> String {
    // Serializing plain structs of numbers and strings cannot fail; NaN
    // becomes null.
    serde_json::to_string_pretty(report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
        + "\n"
}

/// One colour per server, the same in every panel.
const PALETTE: [RGBColor; 6] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xff, 0x7f, 0x0e),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x94, 0x67, 0xbd),
    RGBColor(0x8c, 0x56, 0x4b),
];

/// One bar of a panel (or, with a NaN value and no label, a gap between
/// groups).
struct Bar {
    label: String,
    value: f64,
    /// Whisker (min, max) over the rounds, drawn when present.
    range: Option<(f64, f64)>,
    colour: RGBColor,
    /// Drawn pale: a client-bound row (its height is the generator's limit)
    /// or a thin percentile.
    pale: bool,
    /// Above the value: its ratio to the reference, "noise" (within noise,
    /// the table's rule) or "thin"; empty for the reference itself.
    mark: String,
}

impl Bar {
    fn gap() -> Bar {
        Bar {
            label: String::new(),
            value: f64::NAN,
            range: None,
            colour: BLACK,
            pale: false,
            mark: String::new(),
        }
    }
}

/// One bar chart of the picture.
struct Panel {
    caption: String,
    bars: Vec<Bar>,
    /// A reference line (the slow load's ideal throughput).
    line: Option<f64>,
    /// Names written under groups of bars: (first bar, last bar, text).
    groups: Vec<(usize, usize, String)>,
}

impl Panel {
    fn new(caption: impl Into<String>) -> Panel {
        Panel {
            caption: caption.into(),
            bars: Vec::new(),
            line: None,
            groups: Vec::new(),
        }
    }

    /// Whether there is anything to draw: a panel of n/a only is left out.
    fn has_data(&self) -> bool {
        self.bars.iter().any(|b| b.value.is_finite())
    }
}

/// Names the servers get colours by, in first-seen order, so a server has
/// the same colour in every row and chart.
fn server_names(report: &Report) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for s in &report.servers {
        if !names.contains(&s.name.as_str()) {
            names.push(&s.name);
        }
    }
    names
}

fn colour_of(names: &[&str], name: &str) -> RGBColor {
    let i = names.iter().position(|n| *n == name).unwrap_or(0);
    PALETTE[i % PALETTE.len()]
}

/// The mark over a bar: what the table's cell says in parentheses.
fn mark(ratio: Option<f64>, noisy: bool, first: bool) -> String {
    match ratio {
        Some(_) if !first && noisy => "noise".into(),
        Some(r) if !first => format!("{r:.2}×"),
        _ => String::new(),
    }
}

/// Min and max of the finite `values`, when there are two or more rounds.
fn min_max(values: impl Iterator<Item = f64> + Clone) -> Option<(f64, f64)> {
    let finite = values.filter(|v| v.is_finite());
    (finite.clone().count() > 1).then(|| {
        (
            finite.clone().fold(f64::INFINITY, f64::min),
            finite.fold(f64::NEG_INFINITY, f64::max),
        )
    })
}

/// The lines under a chart: where, when and how it ran, and each server's
/// command.
fn facts(report: &Report) -> Vec<String> {
    let generator = generator_name(report.generator);
    let mut lines = vec![format!(
        "Measured {}. Generator: {generator}, per round {}.",
        report.machine.describe(),
        describe_loads(report)
    )];
    let mut sets: Vec<String> = Vec::new();
    for s in &report.servers {
        let at = s
            .threads
            .map_or(String::new(), |t| format!("threads={t}: "));
        let set = match (&s.server_cpus, &s.client_cpus) {
            (Some(server), Some(client)) => {
                format!("{at}servers on CPUs {server:?}, generator on CPUs {client:?}")
            }
            _ => format!("{at}servers and generator unpinned, sharing all CPUs"),
        };
        if !sets.contains(&set) {
            sets.push(set);
        }
    }
    if !sets.is_empty() {
        lines.push(format!("CPU sets: {}.", sets.join("; ")));
    }
    let mut commands: Vec<String> = Vec::new();
    for s in &report.servers {
        let line = format!("{}: {}", s.name, s.command);
        if !commands.contains(&line) {
            commands.push(line);
        }
    }
    for line in commands {
        // A long path stays readable; report.md has the whole command.
        let cut: String = line.chars().take(200).collect();
        lines.push(if cut.len() < line.len() {
            format!("{cut}…")
        } else {
            cut
        });
    }
    if shared_cpus_note(&report.servers).is_some() {
        lines.push(
            "Shared machine: other processes kept the benchmark's CPUs busier than it did \
             (report.md names the rows); its throughput and latency there measure the contention."
                .into(),
        );
    }
    lines
}

/// How to read the bars of `svg`, under its facts.
fn bar_legend(report: &Report) -> String {
    let reference = report.servers.first().map_or("", |s| s.name.as_str());
    let spread = if report.rounds > 1 {
        "whiskers: min–max over the rounds"
    } else {
        "one round: no spread to show, so a ratio has passed the resolution check only"
    };
    format!(
        "Bars: median of the rounds ({spread}). Over each bar its value, then its ratio to {reference} \
         (the first server of its thread count); \"noise\": within noise by the table's rule; \
         \"thin\" (pale): fewer than {MIN_TAIL:.0} requests per round beyond that percentile."
    )
}

/// A latency bar's source: its label, its name in `thin` and
/// `within_noise`, the median, the ratio, and its value in one round.
type Percentile = (
    &'static str,
    &'static str,
    f64,
    Option<f64>,
    fn(&RunResult) -> f64,
);

/// `report.svg`: per load a panel of requests/s per server and one of its
/// latency percentiles (p50, p99, p99.9 per server), then server CPU µs
/// per request (one bar per load window in `mixed`), idle and peak RSS and
/// exec-to-listen time. Every bar that has rounds carries their min–max
/// whisker, and over it its value and what the table says of it (ratio,
/// noise, thin). Loads get separate panels because fast and slow figures
/// differ by orders of magnitude. In a sweep each bar is one server at one
/// thread count (`name ×T`); client-bound bars are pale. Under the panels:
/// the machine, the generator, the CPU sets and every command.
pub fn svg(report: &Report) -> Result<String, String> {
    let mut rps: Vec<Panel> = report
        .loads
        .iter()
        .map(|spec| Panel::new(format!("{} requests/s", spec.kind.name())))
        .collect();
    let mut latency: Vec<Panel> = report
        .loads
        .iter()
        .map(|spec| Panel::new(format!("{} latency ms (p50, p99, p99.9)", spec.kind.name())))
        .collect();
    let mut cpu = Panel::new("server CPU µs per request (own window)");
    let mut idle = Panel::new("idle RSS MiB");
    let mut peak = Panel::new("peak RSS MiB");
    let mut startup = Panel::new("exec → listen ms");
    let names = server_names(report);
    let several = report.loads.len() > 1;
    for (i, s) in report.servers.iter().enumerate() {
        let first = report.servers.iter().position(|b| b.threads == s.threads) == Some(i);
        let colour = colour_of(&names, &s.name);
        let label = match s.threads {
            Some(t) => format!("{} ×{t}", s.name),
            None => s.name.clone(),
        };
        for ((rps, lat), spec) in rps.iter_mut().zip(latency.iter_mut()).zip(&report.loads) {
            let Some(l) = s.loads.iter().find(|l| l.kind == spec.kind) else {
                continue;
            };
            let noisy = |name: &str| l.within_noise.contains(&name);
            rps.line = rps.line.or(l.ideal_requests_per_s);
            rps.bars.push(Bar {
                label: label.clone(),
                value: l.requests_per_s.median,
                range: min_max(l.rounds.iter().map(|r| r.rps)),
                colour,
                pale: l.window.client_bound,
                mark: mark(
                    l.ratios.requests_per_s_median,
                    noisy("requests_per_s_median"),
                    first,
                ),
            });
            if !lat.bars.is_empty() {
                lat.bars.push(Bar::gap());
            }
            let start = lat.bars.len();
            let percentiles: [Percentile; 3] = [
                ("p50", "p50_ms", l.p50_ms, l.ratios.p50_ms, |r| r.p50_ms),
                ("p99", "p99_ms", l.p99_ms, l.ratios.p99_ms, |r| r.p99_ms),
                ("p99.9", "p999_ms", l.p999_ms, l.ratios.p999_ms, |r| {
                    r.p999_ms
                }),
            ];
            for (short, name, value, ratio, of) in percentiles {
                let thin = l.thin.contains(&name);
                lat.bars.push(Bar {
                    label: short.into(),
                    value,
                    range: min_max(l.rounds.iter().map(of)),
                    colour,
                    pale: thin || l.window.client_bound,
                    mark: if thin {
                        "thin".into()
                    } else {
                        mark(ratio, noisy(name), first)
                    },
                });
            }
            lat.groups.push((start, lat.bars.len() - 1, label.clone()));
        }
        // In `mixed` each load has its own window, hence its own bar, and
        // the server's bars are a group named under them.
        if several && !cpu.bars.is_empty() {
            cpu.bars.push(Bar::gap());
        }
        let start = cpu.bars.len();
        for l in &s.loads {
            let w = &l.window;
            cpu.bars.push(Bar {
                label: if several {
                    l.kind.name().to_string()
                } else {
                    label.clone()
                },
                value: w.cpu_us_per_request,
                range: min_max(w.cpu_us_per_request_rounds.iter().copied()),
                colour,
                pale: w.client_bound,
                mark: mark(
                    l.ratios.cpu_us_per_request,
                    l.within_noise.contains(&"cpu_us_per_request"),
                    first,
                ),
            });
        }
        if several {
            cpu.groups.push((start, cpu.bars.len() - 1, label.clone()));
        }
        let single = |value: f64, ratio: Option<f64>, name: &str| Bar {
            label: label.clone(),
            value,
            range: None,
            colour,
            pale: false,
            mark: mark(ratio, s.within_noise.contains(&name), first),
        };
        idle.bars.push(single(
            s.idle_rss_kib as f64 / 1024.0,
            s.ratios.idle_rss_kib,
            "idle_rss_kib",
        ));
        peak.bars.push(single(
            s.peak_rss_kib as f64 / 1024.0,
            s.ratios.peak_rss_kib,
            "peak_rss_kib",
        ));
        startup
            .bars
            .push(single(s.startup_ms, s.ratios.startup_ms, "startup_ms"));
    }
    let mut panels: Vec<Panel> = Vec::new();
    for (r, l) in rps.into_iter().zip(latency) {
        panels.extend([r, l]);
    }
    panels.extend([cpu, idle, peak, startup]);
    // A panel with nothing measured (every run failed) says nothing.
    panels.retain(Panel::has_data);

    let mut facts = facts(report);
    facts.push(bar_legend(report));
    let mut out = String::new();
    {
        // Three panels a row; the last row's panels share its whole width,
        // so no cell is left empty.
        const COLS: usize = 3;
        let rows: Vec<&[Panel]> = panels.chunks(COLS).collect();
        let (width, panel_h, line_h) = (1620_u32, 400_u32, 18_u32);
        let facts_h = line_h * facts.len() as u32 + 20;
        let height = 50 + panel_h * rows.len().max(1) as u32 + facts_h;
        let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let pale = if report
            .servers
            .iter()
            .any(|s| s.loads.iter().any(|l| l.window.client_bound))
        {
            " (pale bars: client-bound)"
        } else {
            ""
        };
        let title = format!(
            "conn-bench: {} scenario, {} round(s){pale}",
            report.scenario.name(),
            report.rounds
        );
        let root = root
            .titled(&title, ("sans-serif", 22))
            .map_err(|e| e.to_string())?;
        let (body, foot) = root.split_vertically(panel_h * rows.len().max(1) as u32);
        if rows.is_empty() {
            body.draw(&Text::new(
                "No figure to draw: nothing was measured (see report.md).",
                (40, 40),
                ("sans-serif", 18),
            ))
            .map_err(|e| e.to_string())?;
        }
        for (area, row) in body.split_evenly((rows.len().max(1), 1)).iter().zip(&rows) {
            for (cell, panel) in area.split_evenly((1, row.len())).iter().zip(row.iter()) {
                draw_panel(cell, panel)?;
            }
        }
        draw_facts(&foot, &facts, line_h)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Writes `facts` one a line into `area`.
fn draw_facts<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    facts: &[String],
    line_h: u32,
) -> Result<(), String> {
    let style = ("sans-serif", 13).into_font().color(&BLACK);
    for (i, line) in facts.iter().enumerate() {
        area.draw(&Text::new(
            line.as_str(),
            (20, 10 + (line_h * i as u32) as i32),
            style.clone(),
        ))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// A point of the scaling chart: threads, value, client-bound.
type Point = (f64, f64, bool);

/// One server's points in a panel of the scaling chart.
type Line<'a> = (&'a str, &'a [Point]);

/// `scaling.svg` for a sweep: requests/s (of the first load) and server CPU
/// µs per request against the thread count, one line per server. A
/// client-bound point is drawn hollow: it shows the generator's ceiling, so
/// the line's slope there says nothing about the server.
pub fn scaling_svg(report: &Report) -> Result<String, String> {
    let names = server_names(report);
    let kind = report.loads.first().map_or(LoadKind::Fast, |l| l.kind);
    let mut lines: Vec<(&str, Vec<Point>, Vec<Point>)> = Vec::new();
    for name in &names {
        let rows = || {
            report
                .servers
                .iter()
                .filter(move |s| s.name == *name)
                .filter_map(|s| Some((f64::from(s.threads?), s)))
        };
        let rps = rows()
            .filter_map(|(t, s)| {
                let l = s.loads.iter().find(|l| l.kind == kind)?;
                Some((t, l.requests_per_s.median, s.client_bound))
            })
            .collect();
        let cpu = rows()
            .map(|(t, s)| (t, s.cpu_us_per_request, s.client_bound))
            .collect();
        lines.push((name, rps, cpu));
    }
    let max_threads = report
        .servers
        .iter()
        .filter_map(|s| s.threads)
        .max()
        .unwrap_or(1);
    let panels: [(String, Vec<Line>); 2] = [
        (
            format!("{} requests/s (median) against threads", kind.name()),
            lines.iter().map(|(n, r, _)| (*n, r.as_slice())).collect(),
        ),
        (
            "server CPU µs per request against threads".into(),
            lines.iter().map(|(n, _, c)| (*n, c.as_slice())).collect(),
        ),
    ];
    let mut out = String::new();
    {
        let mut facts = facts(report);
        facts.extend(
            report
                .notes
                .iter()
                .filter(|n| n.contains(" skipped: "))
                .cloned(),
        );
        facts.push("Points: median of the rounds; hollow: client-bound.".into());
        let line_h = 18_u32;
        let height = 480 + line_h * facts.len() as u32 + 20;
        let root = SVGBackend::with_string(&mut out, (1400, height)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let title = format!(
            "conn-bench: scaling, {} scenario, {} round(s) (hollow points: client-bound)",
            report.scenario.name(),
            report.rounds
        );
        let root = root
            .titled(&title, ("sans-serif", 20))
            .map_err(|e| e.to_string())?;
        let (body, foot) = root.split_vertically(440);
        for (area, (caption, series)) in body.split_evenly((1, 2)).iter().zip(&panels) {
            draw_lines(area, caption, series, &names, max_threads)?;
        }
        draw_facts(&foot, &facts, line_h)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Draws one panel of `scaling_svg`: a line per server over (threads, value).
fn draw_lines<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    caption: &str,
    series: &[Line],
    names: &[&str],
    max_threads: u32,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let top = series
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1))
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.15 } else { 1.0 };
    let right = f64::from(max_threads) + 0.5;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(0.5..right, 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("threads (server CPUs)")
        .x_labels(max_threads as usize + 1)
        .x_label_formatter(&|v| {
            if v.fract() == 0.0 && *v >= 1.0 {
                format!("{v:.0}")
            } else {
                String::new()
            }
        })
        .y_label_formatter(&|v| fmt_axis(*v))
        .draw()
        .map_err(err)?;
    for (name, points) in series {
        let colour = colour_of(names, name);
        let finite: Vec<(f64, f64, bool)> =
            points.iter().copied().filter(|p| p.1.is_finite()).collect();
        chart
            .draw_series(LineSeries::new(
                finite.iter().map(|p| (p.0, p.1)),
                colour.stroke_width(2),
            ))
            .map_err(err)?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], colour.stroke_width(2)));
        chart
            .draw_series(finite.iter().map(|&(x, y, client_bound)| {
                let style = if client_bound {
                    colour.stroke_width(2)
                } else {
                    colour.filled()
                };
                Circle::new((x, y), 5, style)
            }))
            .map_err(err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()
        .map_err(err)?;
    Ok(())
}

/// Draws one bar panel. Bars sit in slots 1..=n of n+2, so there is air on
/// both sides and a lone bar is not a wall. Values and marks are written
/// over the bars (over the whisker when there is one), in black, so a short
/// bar's figure is as readable as a tall one's.
fn draw_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    panel: &Panel,
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let bars = &panel.bars;
    let top_of = |b: &Bar| b.range.map_or(b.value, |r| r.1.max(b.value));
    let top = bars
        .iter()
        .map(top_of)
        .chain(panel.line)
        .filter(|v| v.is_finite())
        .fold(0.0_f64, f64::max);
    // Room over the tallest bar for its value and mark.
    let top = if top > 0.0 { top * 1.3 } else { 1.0 };
    let n = bars.len();
    // plotters' integer ranges are inclusive: 0..n+1 gives n+2 slots.
    let slot_px = area.dim_in_pixel().0.saturating_sub(100) / (n as u32 + 2);
    let bar = |slot: &usize| slot.checked_sub(1).and_then(|i| bars.get(i));
    let grouped = !panel.groups.is_empty();
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.caption, ("sans-serif", 16))
        .margin(15)
        .x_label_area_size(if grouped { 50 } else { 35 })
        .y_label_area_size(70)
        .build_cartesian_2d((0..n + 1).into_segmented(), 0.0..top)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        // Ask for more labels than slots so plotters skips none; the
        // formatter blanks everything but the bar centres.
        .x_labels(2 * n + 6)
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(slot) => bar(slot).map(|b| b.label.clone()).unwrap_or_default(),
            _ => String::new(),
        })
        .y_label_formatter(&|v| fmt_axis(*v))
        .draw()
        .map_err(err)?;
    chart
        .draw_series(
            Histogram::vertical(&chart)
                .margin(slot_px / 6)
                .style_func(|x, _| match x {
                    SegmentValue::Exact(slot) | SegmentValue::CenterOf(slot) => {
                        bar(slot).map_or(BLACK.filled(), |b| {
                            if b.pale {
                                b.colour.mix(0.35).filled()
                            } else {
                                b.colour.filled()
                            }
                        })
                    }
                    SegmentValue::Last => BLACK.filled(),
                })
                .data(
                    bars.iter()
                        .enumerate()
                        .filter(|(_, b)| b.value.is_finite())
                        .map(|(i, b)| (i + 1, b.value)),
                ),
        )
        .map_err(err)?;
    chart
        .draw_series(bars.iter().enumerate().filter_map(|(i, b)| {
            let (lo, hi) = b.range?;
            Some(ErrorBar::new_vertical(
                SegmentValue::CenterOf(i + 1),
                lo,
                b.value,
                hi,
                BLACK.stroke_width(2),
                10,
            ))
        }))
        .map_err(err)?;
    let small = slot_px < 60;
    let value_font = ("sans-serif", if small { 11 } else { 13 })
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    let mark_font = ("sans-serif", if small { 10 } else { 12 })
        .into_font()
        .color(&RGBColor(0x55, 0x55, 0x55))
        .pos(Pos::new(HPos::Center, VPos::Bottom));
    chart
        .draw_series(
            bars.iter()
                .enumerate()
                .filter(|(_, b)| b.value.is_finite())
                .map(|(i, b)| {
                    let at = (SegmentValue::CenterOf(i + 1), top_of(b));
                    EmptyElement::at(at)
                        + Text::new(fmt_num(b.value), (0, -3), value_font.clone())
                        + Text::new(b.mark.clone(), (0, -17), mark_font.clone())
                }),
        )
        .map_err(err)?;
    if let Some(y) = panel.line.filter(|y| y.is_finite()) {
        chart
            .draw_series(LineSeries::new(
                [(SegmentValue::Exact(0), y), (SegmentValue::Last, y)],
                RED.stroke_width(2),
            ))
            .map_err(err)?
            .label(format!("ideal {}", fmt_num(y)))
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED.stroke_width(2)));
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(err)?;
    }
    // Group names (the server of three percentile bars) under their labels.
    let base = area.get_base_pixel();
    let group_font = ("sans-serif", 13)
        .into_font()
        .color(&BLACK)
        .pos(Pos::new(HPos::Center, VPos::Top));
    for (from, to, name) in &panel.groups {
        let left = chart.backend_coord(&(SegmentValue::CenterOf(from + 1), 0.0));
        let right = chart.backend_coord(&(SegmentValue::CenterOf(to + 1), 0.0));
        let at = ((left.0 + right.0) / 2 - base.0, left.1 - base.1 + 24);
        area.draw(&Text::new(name.as_str(), at, group_font.clone()))
            .map_err(err)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(rps: f64, p50: f64) -> RunResult {
        RunResult {
            completed: 10_000,
            failed: 0,
            non_2xx: 0,
            rps,
            p50_ms: p50,
            p99_ms: p50 * 2.0,
            p999_ms: p50 * 3.0,
        }
    }

    /// A window like the ones main.rs builds, CPU per request `cpu` in
    /// every round, measured to `resolution`.
    fn window(cpu: f64, resolution: f64, client_bound: bool) -> Window {
        Window {
            wall_s_total: 1.0,
            server_cpu_us_total: cpu * 3000.0,
            server_cpu_util: 0.3,
            server_cpus_busy: 0.32,
            client_cpu_us_total: 950_000.0,
            client_cpu_util: 0.95,
            client_cpus_busy: 0.97,
            client_bound,
            requests: 3000.0,
            cpu_us_per_request: cpu,
            cpu_us_per_request_rounds: vec![cpu; 3],
            cpu_us_per_request_resolution: resolution,
            cpu_source: "schedstat",
        }
    }

    fn server(name: &str, rps: [f64; 3], cpu: f64, kinds: &[LoadKind]) -> ServerReport {
        ServerReport {
            name: name.into(),
            command: format!("{name} -p {{port}}"),
            placeholders: Vec::new(),
            port: 8080,
            threads: None,
            server_cpus: Some(vec![0]),
            client_cpus: Some(vec![1]),
            client_threads: 1,
            wall_s_total: 1.0,
            server_cpu_util: 0.3,
            server_cpus_busy: 0.32,
            client_cpu_us_total: 950_000.0,
            client_cpu_util: 0.95,
            client_cpus_busy: 0.97,
            client_bound: true,
            startup_ms: 2.0,
            idle_rss_kib: 2048,
            peak_rss_kib: 4096,
            cpu_us_total: cpu * 3000.0,
            cpu_ticks_total: 0,
            requests_total: 3000,
            cpu_us_per_request: cpu,
            loads: kinds
                .iter()
                .map(|&k| {
                    let mut l = LoadReport::from_runs(
                        k,
                        rps.iter().map(|&r| Ok(run(r, 0.5))).collect(),
                        Generator::Ab,
                        30,
                        133.3,
                    );
                    l.window = window(cpu, 0.001, true);
                    l
                })
                .collect(),
            ratios: ServerRatios::default(),
            within_noise: Vec::new(),
            whole: window(cpu, 0.001, true),
        }
    }

    fn report(kinds: &[LoadKind]) -> Report {
        let mut servers = vec![
            server("conn-daemon", [190.0, 210.0, 200.0], 20.0, kinds),
            server("cpp", [95.0, 105.0, 100.0], 10.0, kinds),
        ];
        // The second server kept the generator busy too, but not all of it,
        // while something else kept its CPU busier.
        servers[1].client_cpu_util = 0.6;
        servers[1].client_cpus_busy = 0.75;
        servers[1].client_bound = false;
        for l in &mut servers[1].loads {
            l.window.client_cpu_util = 0.6;
            l.window.client_cpus_busy = 0.75;
            l.window.client_bound = false;
        }
        fill_ratios(&mut servers);
        Report {
            tool: "conn-bench",
            scenario: Scenario::Fast,
            generator: Generator::Ab,
            rounds: 3,
            workers: 4,
            slow_ms: 30,
            slow_concurrency: 4,
            delegate: "task".into(),
            ports: None,
            wrk_duration_s: None,
            loads: kinds
                .iter()
                .map(|&kind| LoadSpec {
                    kind,
                    requests: 1000,
                    concurrency: 10,
                })
                .collect(),
            threads: Vec::new(),
            clock_ticks_per_second: 100,
            machine: Machine {
                cpus: 2,
                model: "Test CPU".into(),
                kernel: "6.18.0".into(),
                date: "2026-12-07 21:40".into(),
            },
            notes: vec!["a note".into()],
            servers,
        }
    }

    #[test]
    fn summarizes_rounds_and_ratios() {
        let r = report(&[LoadKind::Fast]);
        let load = &r.servers[1].loads[0];
        assert_eq!(
            load.requests_per_s,
            Spread {
                median: 100.0,
                min: 95.0,
                max: 105.0
            }
        );
        assert_eq!(load.completed, 30_000);
        assert_eq!(load.p99_ms, 1.0);
        assert_eq!(load.ideal_requests_per_s, None);
        assert_eq!(load.ratios.requests_per_s_median, Some(0.5));
        assert_eq!(load.ratios.requests_per_s_max, Some(0.5));
        assert_eq!(load.ratios.p50_ms, Some(1.0));
        assert_eq!(load.ratios.failed, None); // 0 vs 0
        assert_eq!(r.servers[1].ratios.cpu_us_per_request, Some(0.5));
        assert_eq!(r.servers[0].ratios.peak_rss_kib, Some(1.0));
    }

    /// The slow run: 267 requests per round, where p99.9 = p99 = max.
    #[test]
    fn percentiles_of_few_requests_are_thin() {
        assert_eq!(thin_percentiles(267), ["p99_ms", "p999_ms"]);
        assert_eq!(thin_percentiles(999), ["p99_ms", "p999_ms"]);
        assert_eq!(thin_percentiles(1000), ["p999_ms"]);
        assert_eq!(thin_percentiles(10_000), Vec::<&str>::new());
        assert_eq!(thin_percentiles(19), ["p50_ms", "p99_ms", "p999_ms"]);
        let mut r = report(&[LoadKind::Slow]);
        for s in &mut r.servers {
            s.loads[0] = LoadReport::from_rounds(
                LoadKind::Slow,
                vec![
                    RunResult {
                        completed: 267,
                        ..run(120.0, 31.0)
                    };
                    3
                ],
                30,
                133.3,
            );
        }
        fill_ratios(&mut r.servers);
        let md = markdown(&r);
        assert!(md.contains("| 31.0 | 62.0 (thin) | 93.0 (thin) |"), "{md}");
        assert!(md.contains("| 1.00 | 32.0 (thin) | 63.0 (thin) |"), "{md}");
        assert!(
            md.contains(
                "the smallest round, 267 requests, has 2.7 beyond p99 and 0.3 beyond p99.9"
            ),
            "{md}"
        );
        assert!(
            md.contains("p99 takes at least 1000 requests per round, p99.9 10000"),
            "{md}"
        );
        // Enough requests: no mark, no note.
        assert!(!markdown(&report(&[LoadKind::Slow])).contains("(thin)"));
    }

    #[test]
    fn slow_load_against_ideal() {
        let l = LoadReport::from_rounds(LoadKind::Slow, vec![run(100.0, 31.0)], 30, 200.0);
        assert_eq!(l.percent_of_ideal, Some(50.0));
        assert_eq!(l.p50_over_slow_ms, Some(1.0));
        assert_eq!(l.p99_over_slow_ms, Some(32.0));
    }

    #[test]
    fn writes_markdown() {
        let md = markdown(&report(&[LoadKind::Fast, LoadKind::Slow]));
        assert!(md.contains("| server | load | req/s median"), "{md}");
        assert!(md.contains("| conn-daemon | fast | 200 | 190 | 210 | 0.50 | 1.00 | 1.50 | 0 | 0 | 20.0 | 2.00 | 4.00 | 2.00 | 30% | 95% | client-bound |"), "{md}");
        assert!(md.contains(" | 30% | 60% (CPUs 75%) |  |"), "{md}");
        assert!(
            !md.contains("| threads |"),
            "no sweep, no threads column: {md}"
        );
        assert!(
            md.contains(
                "| cpp | fast | 100 (0.50×) | 95.0 (0.50×) | 105 (0.50×) | 0.50 (within noise) |"
            ),
            "{md}"
        );
        // Same RSS and start-up, CPU per request measured to 1 ns: 10 vs 20 µs is real.
        assert!(
            md.contains("| 10.0 (0.50×) | 2.00 (within noise) | 4.00 (within noise) | 2.00 (within noise) |"),
            "{md}"
        );
        assert!(md.contains("| cpp | slow |"), "{md}");
        assert!(md.contains("% of ideal"), "{md}");
        assert!(md.contains("- a note"), "{md}");
        // Every row of the main table has the header's column count.
        let header_cols = md
            .lines()
            .find(|l| l.starts_with("| server | load"))
            .unwrap()
            .matches('|')
            .count();
        let rows: Vec<&str> = md
            .lines()
            .filter(|l| l.contains(" | fast | ") || l.contains(" | slow | "))
            .collect();
        assert_eq!(rows.len(), 4);
        for row in rows {
            assert_eq!(row.matches('|').count(), header_cols, "{row}");
        }
    }

    #[test]
    fn writes_json() {
        let text = json(&report(&[LoadKind::Fast]));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["tool"], "conn-bench");
        assert_eq!(v["scenario"], "fast");
        assert_eq!(v["generator"], "ab");
        assert_eq!(v["servers"][1]["name"], "cpp");
        assert_eq!(v["servers"][1]["loads"][0]["kind"], "fast");
        assert_eq!(
            v["servers"][1]["loads"][0]["requests_per_s"]["median"],
            100.0
        );
        assert_eq!(
            v["servers"][1]["loads"][0]["ratios"]["requests_per_s_median"],
            0.5
        );
        assert!(v["servers"][1]["loads"][0]["ratios"]["failed"].is_null());
        assert_eq!(
            v["servers"][0]["loads"][0]["rounds"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
    }

    #[test]
    fn writes_svg() {
        let svg = svg(&report(&[LoadKind::Fast, LoadKind::Slow])).unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..80.min(svg.len())]);
        assert!(svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains("fast requests/s"));
        assert!(svg.contains("slow requests/s"));
        // Names on the axis, values inside the bars.
        assert!(svg.contains(">\ncpp\n<"), "server name as an axis label");
        assert!(svg.contains(">\n100\n<"), "value drawn in its bar");
        assert!(svg.contains("ideal 133"));
        // A latency panel per load, percentiles grouped by server.
        assert!(svg.contains("fast latency ms (p50, p99, p99.9)"));
        assert!(svg.contains("slow latency ms (p50, p99, p99.9)"));
        assert!(svg.contains(">\np99.9\n<"));
        // Over each bar what the table says: cpp's req/s is half (0.50×),
        // its latency and memory within noise; conn-daemon, the
        // reference, has no mark.
        assert!(svg.contains(">\n0.50×\n<"), "the ratio over cpp's bars");
        assert!(svg.contains(">\nnoise\n<"), "within noise over cpp's p50");
        // The machine, the generator, the CPU sets and the commands.
        for fact in [
            "Measured 2026-12-07 21:40 UTC, 2 CPUs (Test CPU), Linux 6.18.0. Generator: ab, per \
             round fast × 1000 requests at concurrency 10 + slow × 1000 requests at concurrency 10.",
            "CPU sets: servers on CPUs [0], generator on CPUs [1].",
            "conn-daemon: conn-daemon -p {port}",
            "cpp: cpp -p {port}",
            "whiskers: min–max over the rounds",
        ] {
            assert!(svg.contains(fact), "{fact} missing from the SVG");
        }
        // Few requests: the percentile is marked thin, not measured.
        let mut thin = report(&[LoadKind::Slow]);
        for s in &mut thin.servers {
            for r in &mut s.loads[0].rounds {
                r.completed = 267;
            }
            s.loads[0].thin = thin_percentiles(267);
        }
        assert!(super::svg(&thin).unwrap().contains(">\nthin\n<"));
        // A load with no figure (every run failed) gets no empty panel.
        let mut failed = report(&[LoadKind::Fast, LoadKind::Slow]);
        for s in &mut failed.servers {
            s.loads[1] = LoadReport::from_runs(
                LoadKind::Slow,
                vec![Err("garbage".into())],
                Generator::Ab,
                30,
                133.3,
            );
        }
        let chart = super::svg(&failed).unwrap();
        assert!(chart.contains("fast requests/s"));
        assert!(!chart.contains("slow requests/s"), "no empty panel");
        assert!(!chart.contains("slow latency"), "no empty panel");
        // An empty report still renders.
        let mut empty = report(&[LoadKind::Fast]);
        empty.servers.clear();
        assert!(svg_ok(&empty));
    }

    /// Two thread counts: rows of the same count share a reference.
    fn sweep() -> Report {
        let mut r = report(&[LoadKind::Fast]);
        let mut rows = Vec::new();
        for t in [1, 2] {
            for s in &r.servers {
                let mut row = s.clone();
                row.threads = Some(t);
                if t == 2 {
                    row.loads[0].requests_per_s.median *= 3.0;
                    row.client_bound = false;
                    row.loads[0].window.client_bound = false;
                }
                rows.push(row);
            }
        }
        fill_ratios(&mut rows);
        r.threads = vec![1, 2, 4];
        r.servers = rows;
        r
    }

    #[test]
    fn sweeps_thread_counts() {
        let r = sweep();
        // cpp at threads=2 is compared with conn-daemon at threads=2.
        assert_eq!(
            r.servers[3].loads[0].ratios.requests_per_s_median,
            Some(0.5)
        );
        assert_eq!(
            r.servers[2].loads[0].ratios.requests_per_s_median,
            Some(1.0)
        );
        let md = markdown(&r);
        assert!(md.contains("| threads | server | load |"), "{md}");
        assert!(md.contains("| 1 | conn-daemon | fast | 200 |"), "{md}");
        assert!(md.contains("| 2 | cpp | fast | 300 (0.50×) |"), "{md}");
        assert!(md.contains("with the same threads"), "{md}");
        assert_eq!(md.matches("client-bound |").count(), 1, "{md}");
        let v: serde_json::Value = serde_json::from_str(&json(&r)).unwrap();
        assert_eq!(v["servers"][0]["threads"], 1);
        assert_eq!(v["servers"][0]["client_bound"], true);
        assert_eq!(v["servers"][2]["threads"], 2);
        assert_eq!(v["servers"][2]["client_bound"], false);
        let chart = scaling_svg(&r).unwrap();
        assert!(chart.starts_with("<svg") && chart.trim_end().ends_with("</svg>"));
        assert!(chart.contains("hollow points: client-bound"));
        assert!(
            chart.contains("threads=1: servers on CPUs [0], generator on CPUs [1]"),
            "the CPU sets under the chart"
        );
        assert!(chart.contains("conn-daemon") && chart.contains("cpp"));
        // Two panels of two lines of two points; conn-daemon at threads=1,
        // client-bound, is hollow in both panels.
        let circles: Vec<&str> = chart.lines().filter(|l| l.starts_with("<circle")).collect();
        assert_eq!(circles.len(), 8, "{chart}");
        assert_eq!(
            circles
                .iter()
                .filter(|c| c.contains("fill=\"none\""))
                .count(),
            2,
            "{chart}"
        );
        let bars = svg(&r).unwrap();
        assert!(
            bars.contains("conn-daemon ×2"),
            "bar labels carry the thread count"
        );
        assert!(bars.contains("pale bars: client-bound"));
    }

    /// The slow run: CPU from 10 ms ticks over 267 requests, one
    /// round, 74.9 vs 99.9 µs/req: "1.33x" was inside the rounding. In ns
    /// the same medians are a real difference.
    #[test]
    fn ratios_inside_the_resolution_are_within_noise() {
        let mut servers = vec![
            server("conn-daemon", [120.0; 3], 74.9, &[LoadKind::Slow]),
            server("cpp", [120.0; 3], 99.9, &[LoadKind::Slow]),
        ];
        let tick_per_request = 2.0 * 10_000.0 / 267.0;
        for (s, cpu) in servers.iter_mut().zip([74.9, 99.9]) {
            s.whole = window(cpu, tick_per_request, false);
            s.whole.cpu_us_per_request_rounds = vec![cpu];
            s.whole.cpu_source = "ticks";
            s.loads[0].window = s.whole.clone();
        }
        let mut noisy = servers.clone();
        fill_ratios(&mut noisy);
        assert_eq!(
            noisy[1].loads[0].within_noise,
            [
                "requests_per_s_median",
                "requests_per_s_min",
                "requests_per_s_max",
                "p50_ms",
                "p99_ms",
                "p999_ms",
                "cpu_us_per_request"
            ]
        );
        assert!(noisy[1].within_noise.contains(&"cpu_us_per_request"));
        // The reference is not judged against itself.
        assert!(noisy[0].within_noise.is_empty() && noisy[0].loads[0].within_noise.is_empty());
        let mut r = report(&[LoadKind::Slow]);
        r.servers = noisy;
        let md = markdown(&r);
        assert!(md.contains("| 99.9 (within noise) |"), "{md}");
        assert!(!md.contains("1.33×"), "{md}");
        // Measured in ns: the same figures are 1.33x apart.
        for s in servers.iter_mut() {
            s.whole.cpu_us_per_request_resolution = 2.0 / 267.0 / 1000.0;
            s.loads[0].window.cpu_us_per_request_resolution = 2.0 / 267.0 / 1000.0;
        }
        fill_ratios(&mut servers);
        assert!(!servers[1].loads[0]
            .within_noise
            .contains(&"cpu_us_per_request"));
        r.servers = servers;
        assert!(markdown(&r).contains("| 99.9 (1.33×) |"));
    }

    #[test]
    fn names_the_cause_of_a_slow_shortfall() {
        let mut s = server("one", [33.0, 33.0, 33.0], 10.0, &[LoadKind::Slow]);
        let l = |s: &ServerReport| s.loads[0].clone();
        // Ideal 133.3; 33 req/s with 30 ms each: one worker busy; the
        // command does not pass {workers}.
        s.loads[0].completed = 3000;
        s.loads[0].p50_over_slow_ms = Some(90.0);
        let note = slow_shortfall(&s, &l(&s), 4, 30, 4).unwrap();
        assert!(
            note.contains("reached 24.8% of the ideal 133 req/s"),
            "{note}"
        );
        assert!(
            note.contains("worker count differs from --workers 4"),
            "{note}"
        );
        assert!(note.contains("1.0 busy workers"), "{note}");
        // It passes {workers} but not {slow_ms}, and p50 is far over D.
        s.placeholders = vec!["{workers}".into()];
        let note = slow_shortfall(&s, &l(&s), 4, 30, 4).unwrap();
        assert!(
            note.contains("slow duration differs from --slow-ms 30"),
            "{note}"
        );
        // Both placeholders: queueing says fewer workers ran.
        s.placeholders.push("{slow_ms}".into());
        s.loads[0].window.client_bound = false;
        let note = slow_shortfall(&s, &l(&s), 4, 30, 4).unwrap();
        assert!(note.contains("waited for a worker"), "{note}");
        // Few requests per connection: the batches explain it.
        s.loads[0].completed = 3 * 40;
        let note = slow_shortfall(&s, &l(&s), 4, 30, 4).unwrap();
        assert!(note.contains("too few requests"), "{note}");
        // At 90% or more: nothing to say; far above: not worker-bound.
        s.loads[0].percent_of_ideal = Some(95.0);
        assert_eq!(slow_shortfall(&s, &l(&s), 4, 30, 4), None);
        s.loads[0].percent_of_ideal = Some(400.0);
        let note = slow_shortfall(&s, &l(&s), 4, 30, 16).unwrap();
        assert!(note.contains("not bounded by 4 workers"), "{note}");
        // A fast load or no figure: no note.
        let fast = server("f", [1.0; 3], 1.0, &[LoadKind::Fast]);
        assert_eq!(slow_shortfall(&fast, &l(&fast), 4, 30, 4), None);
    }

    #[test]
    fn tells_client_bound_rows() {
        assert!(is_client_bound(0.33, [0.99, 0.99]));
        assert!(
            is_client_bound(0.33, [0.40, 0.95]),
            "generator starved by others on its CPUs"
        );
        assert!(
            !is_client_bound(0.95, [0.99, 0.99]),
            "both saturated: the server is a limit too"
        );
        // The row: generator 86%, the server 20% of its CPUs while
        // other processes kept them busy: the rule fits, so it is flagged.
        assert!(is_client_bound(0.20, [0.86, 0.86]));
        assert!(!is_client_bound(0.50, [0.60, 0.6]), "neither saturated");
        assert!(!is_client_bound(f64::NAN, [0.99, 0.99]));
        assert!(!is_client_bound(0.2, [f64::NAN; 2]));
    }

    #[test]
    fn names_rows_whose_cpus_others_used() {
        let mut r = report(&[LoadKind::Fast]);
        // Both rows: server 30% of CPUs 32%, generator 95% of 97% (cpp 60%
        // of 75%): only cpp's generator CPUs were shared.
        let note = shared_cpus_note(&r.servers).unwrap();
        assert_eq!(
            note,
            "Other processes used the benchmark's CPUs (cpp fast: generator CPUs 75% busy, \
             60% by the generator): those rows measure a shared machine (their cells read \
             \"N% (CPUs M%)\"); rerun on a quiet one."
        );
        r.servers[1].loads[0].window.client_cpus_busy = 0.65;
        assert_eq!(shared_cpus_note(&r.servers), None);
        r.servers[0].loads[0].window.server_cpu_util = 0.20;
        r.servers[0].loads[0].window.server_cpus_busy = 0.90;
        assert!(shared_cpus_note(&r.servers)
            .unwrap()
            .contains("conn-daemon fast: server CPUs 90% busy, 20% by the server"));
    }

    fn svg_ok(r: &Report) -> bool {
        svg(r).map(|s| s.starts_with("<svg")).unwrap_or(false)
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(fmt_num(41234.4), "41234");
        assert_eq!(fmt_num(18.25), "18.2");
        assert_eq!(fmt_num(0.534), "0.53");
        assert_eq!(fmt_num(f64::NAN), "n/a");
        assert_eq!(fmt_axis(2000.0), "2000");
        assert_eq!(fmt_axis(2.50), "2.5");
        assert_eq!(fmt_axis(0.0), "0");
        assert_eq!(cell("5".into(), Some(0.5), false, false), "5 (0.50×)");
        assert_eq!(cell("5".into(), Some(0.5), true, false), "5 (within noise)");
        assert_eq!(cell("5".into(), Some(0.5), false, true), "5");
        assert_eq!(cell("0".into(), None, false, false), "0");
    }
}
