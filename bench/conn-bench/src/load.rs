//! Load generators: runs `ab` or `wrk` against a server and parses what they
//! print. Standard tools rather than a home-made client, so the numbers can
//! be reproduced by hand and compared with the C++ seed's.
//!
//! - `ab` opens one connection per request (the seed's method). Throughput
//!   and failures come from its summary; p50 and p99 from `-e` (microsecond
//!   precision, but whole percents only); p99.9 from `-g`, whose per-request
//!   times ab rounds to whole milliseconds, kept within ab's own
//!   [p99, max] so it is never less precise than the `-e` bounds. Every
//!   figure is checked first (`parse_ab`): ab at small `-n` writes memory
//!   past its array into the p99 row, which is recognised and replaced by
//!   the exact value, and any other implausible figure fails that run.
//! - `wrk` keeps connections alive, but our servers answer
//!   `Connection: close`, so wrk reconnects after every response: it also
//!   measures one request per connection, with its own reconnect overhead.
//!   It runs for `--duration` seconds; a Lua `done()` hook prints exact
//!   microsecond percentiles including p99.9.

use crate::args::Generator;
use crate::stats;
use serde::Serialize;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Which endpoint a load requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadKind {
    /// `GET /test/fast`: answered on the accept thread.
    Fast,
    /// `GET /test/slow`: answered after the slow duration on a worker.
    Slow,
}

impl LoadKind {
    /// Request path on the server.
    pub fn path(self) -> &'static str {
        match self {
            LoadKind::Fast => "/test/fast",
            LoadKind::Slow => "/test/slow",
        }
    }

    /// Label in reports and file names.
    pub fn name(self) -> &'static str {
        match self {
            LoadKind::Fast => "fast",
            LoadKind::Slow => "slow",
        }
    }
}

/// One generator process's job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct LoadSpec {
    /// Endpoint.
    pub kind: LoadKind,
    /// Requests per round (ab; wrk runs for a duration instead).
    pub requests: u64,
    /// Concurrent connections.
    pub concurrency: u32,
}

/// How to run the generator, shared by all rounds.
#[derive(Debug, Clone)]
pub struct Tool {
    /// ab or wrk.
    pub generator: Generator,
    /// Resolved path of the generator binary.
    pub program: PathBuf,
    /// wrk: seconds per run.
    pub duration_s: u64,
    /// wrk: threads (at most the generator's CPUs).
    pub threads: u32,
}

/// Figures of one generator run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct RunResult {
    /// Requests that got a complete response (any status).
    pub completed: u64,
    /// Requests that failed: connect/receive errors, bad length, timeouts.
    pub failed: u64,
    /// Responses whose status was not 2xx (wrk: not 2xx or 3xx).
    pub non_2xx: u64,
    /// Requests per second as the generator reports it.
    pub rps: f64,
    /// Latency percentiles in milliseconds.
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// See `p50_ms`.
    pub p999_ms: f64,
}

/// wrk hook printing exact percentiles (µs) and counters in one parseable line.
const WRK_SCRIPT: &str = r#"-- written by conn-bench: one machine-readable summary line
done = function(summary, latency, requests)
  io.write(string.format(
    "CONNBENCH requests=%.0f duration_us=%.0f connect=%.0f read=%.0f write=%.0f status=%.0f timeout=%.0f p50_us=%.0f p99_us=%.0f p999_us=%.0f\n",
    summary.requests, summary.duration,
    summary.errors.connect, summary.errors.read, summary.errors.write,
    summary.errors.status, summary.errors.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))
end
"#;

/// A generator process in flight; `poll` collects and parses its output.
pub struct Running {
    child: Child,
    generator: Generator,
    out: PathBuf,
    err: PathBuf,
    csv: PathBuf,
    tsv: PathBuf,
    label: String,
    requests: u64,
}

/// Starts the generator for `spec` against `127.0.0.1:port`. Output files go
/// to `work` named after `tag`. The calling thread's CPU affinity is
/// inherited: the caller pins it to the generator CPUs.
pub fn start(
    tool: &Tool,
    spec: &LoadSpec,
    port: u16,
    work: &Path,
    tag: &str,
) -> Result<Running, String> {
    let url = format!("http://127.0.0.1:{port}{}", spec.kind.path());
    let out = work.join(format!("{tag}.out"));
    let err = work.join(format!("{tag}.err"));
    let csv = work.join(format!("{tag}.csv"));
    let tsv = work.join(format!("{tag}.tsv"));
    let mut cmd = Command::new(&tool.program);
    match tool.generator {
        Generator::Ab => {
            // ab refuses a concurrency above the request count.
            let c = u64::from(spec.concurrency).min(spec.requests);
            cmd.args([
                "-q",
                "-r",
                "-n",
                &spec.requests.to_string(),
                "-c",
                &c.to_string(),
            ]);
            cmd.arg("-e").arg(&csv).arg("-g").arg(&tsv).arg(&url);
        }
        Generator::Wrk => {
            let script = work.join("conn-bench.lua");
            fs::write(&script, WRK_SCRIPT)
                .map_err(|e| format!("writing {}: {e}", script.display()))?;
            // Both are at least 1 (clap ranges), but min/max cannot panic.
            let threads = tool.threads.min(spec.concurrency).max(1);
            cmd.args([
                "-t",
                &threads.to_string(),
                "-c",
                &spec.concurrency.to_string(),
            ]);
            cmd.args(["-d", &format!("{}s", tool.duration_s), "--latency", "-s"]);
            cmd.arg(&script).arg(&url);
        }
    }
    let stdout = fs::File::create(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let stderr = fs::File::create(&err).map_err(|e| format!("creating {}: {e}", err.display()))?;
    // A generator must not outlive conn-bench either (it is spawned from the
    // main thread, which lives as long as conn-bench).
    crate::sys::die_with_this_thread(&mut cmd);
    let child = cmd
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .spawn()
        .map_err(|e| format!("cannot run `{}`: {e}", tool.program.display()))?;
    Ok(Running {
        child,
        generator: tool.generator,
        out,
        err,
        csv,
        tsv,
        label: tag.to_string(),
        requests: spec.requests,
    })
}

/// Why a run produced no figures.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// Ctrl-C or SIGTERM: the whole benchmark stops.
    Interrupted,
    /// This run failed (the generator exited non-zero or printed figures
    /// that fail the checks); the benchmark goes on and reports it.
    Failed(String),
}

impl Running {
    /// The generator's process id (to read its CPU time while it runs).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Checks once whether the generator has finished; if so, parses what it
    /// wrote. None while it runs.
    pub fn poll(&mut self) -> Option<Result<RunResult, RunError>> {
        if crate::sys::interrupted() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            return Some(Err(RunError::Interrupted));
        }
        let status = match self.child.try_wait() {
            Ok(Some(status)) => status,
            Ok(None) => return None,
            Err(e) => {
                return Some(Err(RunError::Failed(format!(
                    "{}: waiting for the generator: {e}",
                    self.label
                ))))
            }
        };
        Some(self.collect(status).map_err(RunError::Failed))
    }

    /// Reads and checks the finished generator's output.
    fn collect(&self, status: std::process::ExitStatus) -> Result<RunResult, String> {
        let stdout = fs::read_to_string(&self.out).unwrap_or_default();
        if !status.success() {
            let stderr = fs::read_to_string(&self.err).unwrap_or_default();
            return Err(format!(
                "{}: the load generator failed ({status}): {}",
                self.label,
                tail(&format!("{stdout}{stderr}"), 6)
            ));
        }
        let parsed = match self.generator {
            Generator::Ab => {
                let csv = fs::read_to_string(&self.csv).unwrap_or_default();
                let tsv = fs::read_to_string(&self.tsv).unwrap_or_default();
                parse_ab(&stdout, &csv, &tsv)
            }
            Generator::Wrk => parse_wrk(&stdout),
        };
        // The per-request file is large and already digested.
        let _ = fs::remove_file(&self.tsv);
        let result =
            parsed.map_err(|e| format!("{}: {e} (see {})", self.label, self.out.display()))?;
        if self.generator == Generator::Ab && result.completed > self.requests {
            return Err(format!(
                "{}: ab reports {} complete requests of the {} it was asked for",
                self.label, result.completed, self.requests
            ));
        }
        Ok(result)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Never leave a generator behind on an error path.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last `lines` non-empty lines of `text`, joined with " | ".
pub fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = all[all.len().saturating_sub(lines)..].join(" | ");
    if tail.is_empty() {
        "(no output)".into()
    } else {
        tail
    }
}

/// Value after `key:` on the first line starting with `key`, first word.
fn field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|l| {
            l.trim_start()
                .strip_prefix(key)?
                .trim_start()
                .strip_prefix(':')
        })
        .and_then(|v| v.split_whitespace().next())
}

/// A count the generator printed: a plain non-negative integer.
fn count(text: &str, what: &str) -> Result<u64, String> {
    text.parse::<u64>()
        .map_err(|_| format!("{what} is `{text}`, not a count"))
}

/// A time or rate the generator printed: finite and not negative.
fn amount(text: &str, what: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "{what} is `{text}`, not a finite non-negative number"
        )),
    }
}

/// Checks three latency percentiles (ms) against each other and against
/// the length of the whole run: no request can take longer than the run.
fn check_latencies(
    tool: &str,
    [p50, p99, top]: [f64; 3],
    top_name: &str,
    run_ms: f64,
) -> Result<(), String> {
    for (name, v) in [("p50", p50), ("p99", p99), (top_name, top)] {
        if !(v.is_finite() && v >= 0.0) {
            return Err(format!("{tool}'s {name} latency is {v}"));
        }
        // The run's own length is printed with 1 ms precision (ab) and a
        // request's time is measured from before its connect: 1% + 1 ms slack.
        if v > run_ms * 1.01 + 1.0 {
            return Err(format!(
                "{tool}'s {name} latency of {v} ms is longer than the whole run ({run_ms} ms): \
                 the generator printed garbage"
            ));
        }
    }
    if !(p50 <= p99 && p99 <= top) {
        return Err(format!(
            "{tool}'s latency percentiles are out of order (p50 {p50}, p99 {p99}, {top_name} {top} ms)"
        ));
    }
    Ok(())
}

/// Whether ab's `-e` row for percent `p` (1..=99) is an order statistic of
/// the `done` requests. ab reads `stats[(int)(0.5 + done * p / 100)]`, which
/// is past the end of its array when the index reaches `done` (p99 with at
/// most 50 requests): that row is whatever memory follows, e.g.
/// `99,7311156825131345.000`.
fn ab_row_in_bounds(p: usize, done: u64) -> bool {
    let index = (0.5 + done as f64 * p as f64 / 100.0).floor();
    index < done as f64
}

/// Parses ab's summary (`stdout`), its `-e` percentile CSV and its `-g`
/// per-request TSV. Every figure is checked before use: a count must be an
/// integer, a time finite and non-negative, percentiles in order and no
/// longer than the run, and the request rate must agree with the count and
/// the run's length. Anything else is an error for this run.
pub fn parse_ab(stdout: &str, csv: &str, tsv: &str) -> Result<RunResult, String> {
    let get = |key: &str| field(stdout, key).ok_or_else(|| format!("ab printed no `{key}`"));
    let completed = count(get("Complete requests")?, "ab's `Complete requests`")?;
    let failed = count(get("Failed requests")?, "ab's `Failed requests`")?;
    // Printed only when non-zero.
    let non_2xx = match field(stdout, "Non-2xx responses") {
        Some(v) => count(v, "ab's `Non-2xx responses`")?,
        None => 0,
    };
    let run_s = amount(get("Time taken for tests")?, "ab's `Time taken for tests`")?;
    let rps = amount(get("Requests per second")?, "ab's `Requests per second`")?;
    if completed == 0 {
        return Err("ab completed no request".into());
    }
    if non_2xx > completed {
        return Err(format!(
            "ab counted {non_2xx} non-2xx responses but only {completed} complete requests"
        ));
    }
    // ab prints done / time with 2 decimals and the time rounded to 3, so
    // the rate lies in done / (time ± 0.5 ms), give or take 1%.
    let lo = completed as f64 / (run_s + 0.0005);
    let hi = if run_s > 0.0005 {
        completed as f64 / (run_s - 0.0005)
    } else {
        f64::INFINITY
    };
    if rps < lo * 0.99 - 0.01 || rps > hi * 1.01 + 0.01 {
        return Err(format!(
            "ab's {rps} requests/s disagrees with its {completed} requests in {run_s} s"
        ));
    }
    let run_ms = run_s * 1000.0;

    // -e: "percent,ms" for 0..=100, ab's own order statistics.
    let mut by_percent = [None; 101];
    for line in csv.lines().skip(1) {
        let Some((p, ms)) = line.split_once(',') else {
            continue;
        };
        let Ok(p) = p.trim().parse::<usize>() else {
            continue;
        };
        if p <= 100 {
            by_percent[p] = Some(ms.trim());
        }
    }
    let max = amount(
        by_percent[100].ok_or("ab's percentile file (-e) is missing or incomplete")?,
        "ab's 100% latency",
    )?;
    let percentile = |p: usize| -> Result<f64, String> {
        if !ab_row_in_bounds(p, completed) {
            // Nearest rank of p% of so few requests is the largest one.
            return Ok(max);
        }
        let text = by_percent[p].ok_or("ab's percentile file (-e) is missing or incomplete")?;
        amount(text, &format!("ab's {p}% latency"))
    };
    let (p50, p99) = (percentile(50)?, percentile(99)?);
    check_latencies("ab", [p50, p99, max], "maximum", run_ms)?;

    // -g: column 5 ("ttime") is each request's total time in whole ms.
    let mut times = Vec::new();
    for line in tsv.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let text = line.split('\t').nth(4).unwrap_or("").trim();
        let v = amount(text, "a request time in ab's -g file")?;
        if v > run_ms * 1.01 + 1.0 {
            return Err(format!(
                "ab's -g file has a request of {v} ms in a run of {run_ms} ms"
            ));
        }
        times.push(v);
    }
    times.sort_by(f64::total_cmp);
    // Whole ms: kept within the exact [p99, max] that -e gave (checked to
    // be finite and in order above).
    let p999 = match stats::percentile(&times, 99.9) {
        Some(v) => v.max(p99).min(max),
        None => max,
    };

    Ok(RunResult {
        completed,
        failed,
        non_2xx,
        rps,
        p50_ms: p50,
        p99_ms: p99,
        p999_ms: p999,
    })
}

/// Parses the `CONNBENCH ...` line our wrk script prints, checking every
/// figure as `parse_ab` does.
pub fn parse_wrk(stdout: &str) -> Result<RunResult, String> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CONNBENCH "))
        .ok_or("wrk printed no CONNBENCH summary (is its Lua support working?)")?;
    let raw = |key: &str| -> Result<&str, String> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .ok_or_else(|| format!("wrk summary lacks `{key}`"))
    };
    let num = |key: &str| amount(raw(key)?, &format!("wrk's `{key}`"));
    let int = |key: &str| count(raw(key)?, &format!("wrk's `{key}`"));
    let completed = int("requests")?;
    let run_us = num("duration_us")?;
    if run_us <= 0.0 {
        return Err("wrk ran for 0 µs".into());
    }
    let failed = [
        int("connect")?,
        int("read")?,
        int("write")?,
        int("timeout")?,
    ]
    .iter()
    .try_fold(0u64, |sum, &v| sum.checked_add(v))
    .ok_or("wrk's error counts overflow")?;
    let non_2xx = int("status")?;
    if completed == 0 {
        return Err("wrk completed no request".into());
    }
    let (p50, p99, p999) = (num("p50_us")?, num("p99_us")?, num("p999_us")?);
    let ms = [p50 / 1000.0, p99 / 1000.0, p999 / 1000.0];
    check_latencies("wrk", ms, "p99.9", run_us / 1000.0)?;
    Ok(RunResult {
        completed,
        failed,
        non_2xx,
        rps: completed as f64 / (run_us / 1e6),
        p50_ms: ms[0],
        p99_ms: ms[1],
        p999_ms: ms[2],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const AB_OUT: &str = "\
Benchmarking 127.0.0.1 (be patient).....done

Concurrency Level:      10
Time taken for tests:   0.174 seconds
Complete requests:      2000
Failed requests:        3
   (Connect: 0, Receive: 3, Length: 0, Exceptions: 0)
Non-2xx responses:      7
Total transferred:      218000 bytes
Requests per second:    11478.09 [#/sec] (mean)
Time per request:       0.871 [ms] (mean)
";

    fn ab_csv() -> String {
        let mut s = String::from("Percentage served,Time in ms\n");
        for p in 0..=100 {
            s += &format!("{p},{:.3}\n", 0.5 + p as f64 / 100.0);
        }
        s
    }

    #[test]
    fn parses_ab() {
        let mut tsv = String::from("starttime\tseconds\tctime\tdtime\tttime\twait\n");
        for i in 0..2000 {
            let ttime = if i >= 1997 { 9 } else { 1 };
            tsv += &format!("Thu Nov 26 15:29:39 2026\t1795706979\t0\t0\t{ttime}\t0\n");
        }
        let r = parse_ab(AB_OUT, &ab_csv(), &tsv).unwrap();
        assert_eq!((r.completed, r.failed, r.non_2xx), (2000, 3, 7));
        assert_eq!(r.rps, 11478.09);
        assert_eq!((r.p50_ms, r.p99_ms), (1.0, 1.49));
        // Rank 1998 of 2000 is 9 ms in -g, clamped to ab's max of 1.5 ms.
        assert_eq!(r.p999_ms, 1.5);
        // Rank 1998 of 2000 is 1 ms, raised to p99.
        let tsv_fast = tsv.replace("\t9\t", "\t1\t");
        assert_eq!(
            parse_ab(AB_OUT, &ab_csv(), &tsv_fast).unwrap().p999_ms,
            1.49
        );
        // No -g data: fall back to the maximum.
        assert_eq!(parse_ab(AB_OUT, &ab_csv(), "").unwrap().p999_ms, 1.5);
    }

    #[test]
    fn ab_without_non_2xx_line_and_broken_output() {
        let out = AB_OUT.replace("Non-2xx responses:      7\n", "");
        assert_eq!(parse_ab(&out, &ab_csv(), "").unwrap().non_2xx, 0);
        assert!(parse_ab("garbage", &ab_csv(), "").is_err());
        assert!(parse_ab(AB_OUT, "Percentage served,Time in ms\n", "").is_err());
    }

    /// ab's output for `done` requests in `secs`, -e rows from `rows`.
    fn ab_run(done: u64, secs: f64, rows: &[(usize, &str)]) -> (String, String) {
        let out = format!(
            "Complete requests:      {done}\nFailed requests:        0\n\
             Time taken for tests:   {secs:.3} seconds\n\
             Requests per second:    {:.2} [#/sec] (mean)\n",
            done as f64 / secs
        );
        let mut csv = String::from("Percentage served,Time in ms\n");
        for p in 0..=100 {
            let v = rows
                .iter()
                .find(|(q, _)| *q == p)
                .map_or(format!("{:.3}", 30.0 + p as f64 / 10.0), |(_, v)| {
                    v.to_string()
                });
            csv += &format!("{p},{v}\n");
        }
        (out, csv)
    }

    #[test]
    fn ab_garbage_p99_at_small_n_is_replaced_by_the_exact_value() {
        // The issue's run: -n 40, ab's p99 row read past its array.
        let (out, csv) = ab_run(40, 0.3, &[(99, "7311156825131345.000"), (100, "120.781")]);
        let r = parse_ab(&out, &csv, "").expect("the run is usable");
        // Nearest rank of 99% of 40 is the 40th: ab's maximum.
        assert_eq!((r.p99_ms, r.p999_ms), (120.781, 120.781));
        assert_eq!(r.p50_ms, 35.0);
        // At 51 requests the p99 row is in bounds and is used as printed.
        let (out, csv) = ab_run(51, 0.3, &[(99, "100.5"), (100, "120.781")]);
        assert_eq!(parse_ab(&out, &csv, "").unwrap().p99_ms, 100.5);
        assert!(!ab_row_in_bounds(99, 50) && ab_row_in_bounds(99, 51));
        assert!(ab_row_in_bounds(50, 2) && !ab_row_in_bounds(50, 1));
    }

    #[test]
    fn ab_garbage_fails_the_run_without_panicking() {
        let cases: [(&[(usize, &str)], &str); 6] = [
            // The same garbage where ab's index is in bounds: impossible value.
            (&[(99, "7311156825131345.000")], "longer than the whole run"),
            (&[(50, "nan")], "50% latency"),
            (&[(50, "-3.0")], "50% latency"),
            (&[(99, "inf")], "99% latency"),
            (&[(50, "100.0")], "out of order"),
            (&[(100, "")], "100% latency"),
        ];
        for (rows, expected) in cases {
            let (out, csv) = ab_run(2000, 1.0, rows);
            let err = parse_ab(&out, &csv, "").expect_err(expected);
            assert!(err.contains(expected), "{rows:?}: {err}");
        }
        let (out, csv) = ab_run(2000, 1.0, &[]);
        assert!(parse_ab(&out, &csv, "").is_ok());
        // A short run: 0.008 s printed for 0.0078 s; the rate is ab's own.
        let short = "Complete requests:      300\nFailed requests:        0\n\
                     Time taken for tests:   0.008 seconds\n\
                     Requests per second:    38279.95 [#/sec] (mean)\n";
        assert!(parse_ab(short, &ab_csv(), "").is_ok());
        let lie = short.replace("38279.95", "45000.00");
        assert!(parse_ab(&lie, &ab_csv(), "")
            .unwrap_err()
            .contains("disagrees"));
        // Summary lines that lie or are not numbers.
        for (from, to, expected) in [
            (
                "Complete requests:      2000",
                "Complete requests:      -5",
                "not a count",
            ),
            (
                "Complete requests:      2000",
                "Complete requests:      0",
                "no request",
            ),
            (
                "Failed requests:        0",
                "Failed requests:        1e3",
                "not a count",
            ),
            (
                "Requests per second:    2000.00",
                "Requests per second:    NaN",
                "not a finite",
            ),
            (
                "Requests per second:    2000.00",
                "Requests per second:    9000.00",
                "disagrees",
            ),
            (
                "Time taken for tests:   1.000",
                "Time taken for tests:   inf",
                "not a finite",
            ),
        ] {
            let bad = out.replace(from, to);
            assert_ne!(bad, out, "{from}");
            let err = parse_ab(&bad, &csv, "").expect_err(expected);
            assert!(err.contains(expected), "{to}: {err}");
        }
        // A -g request longer than the run, or not a number.
        let tsv = "starttime\tseconds\tctime\tdtime\tttime\twait\nx\t1\t0\t0\t99999\t0\n";
        assert!(parse_ab(&out, &csv, tsv).unwrap_err().contains("-g file"));
        let tsv = "starttime\tseconds\tctime\tdtime\tttime\twait\nx\t1\t0\t0\tzz\t0\n";
        assert!(parse_ab(&out, &csv, tsv).is_err());
        // Anything at all: an error or a result, never a panic, and a
        // result only with sane figures.
        let junk = [
            "",
            "\0\0",
            "99,",
            ",",
            "100,1e308",
            "100,-0",
            "x,y\n50,1",
            "\u{feff}",
        ];
        for a in junk {
            for b in junk {
                for text in [out.as_str(), a] {
                    if let Ok(r) = parse_ab(text, &format!("{csv}{a}\n{b}"), b) {
                        assert!(r.p50_ms <= r.p99_ms && r.p99_ms <= r.p999_ms, "{r:?}");
                        assert!(r.p999_ms <= 1011.0, "{r:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn parses_wrk() {
        let out = "Running 1s test @ http://127.0.0.1:1/test/fast\n  Latency Distribution\n\
                   CONNBENCH requests=20000 duration_us=2000000 connect=1 read=2 write=0 status=5 \
                   timeout=1 p50_us=250 p99_us=1500 p999_us=4200\n";
        let r = parse_wrk(out).unwrap();
        assert_eq!(
            r,
            RunResult {
                completed: 20000,
                failed: 4,
                non_2xx: 5,
                rps: 10000.0,
                p50_ms: 0.25,
                p99_ms: 1.5,
                p999_ms: 4.2
            }
        );
        assert!(parse_wrk("Requests/sec: 5").is_err());
        assert!(parse_wrk("CONNBENCH requests=1").is_err());
        for (from, to) in [
            ("p99_us=1500", "p99_us=nan"),
            ("p99_us=1500", "p99_us=9000"),
            ("p999_us=4200", "p999_us=99999999999"),
            ("requests=20000", "requests=-1"),
            ("duration_us=2000000", "duration_us=0"),
            ("connect=1", "connect=1.5"),
        ] {
            let bad = out.replace(from, to);
            assert!(parse_wrk(&bad).is_err(), "{to}");
        }
    }

    #[test]
    fn tails() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail("", 2), "(no output)");
    }
}
