//! Load generators: runs `ab` or `wrk` against a server and parses what they
//! print. Standard tools rather than a home-made client, so the numbers can
//! be reproduced by hand and compared with the C++ seed's.
//!
//! - `ab` opens one connection per request (the seed's method). Throughput
//!   and failures come from its summary; p50 and p99 from `-e` (microsecond
//!   precision, but whole percents only); p99.9 from `-g`, whose per-request
//!   times ab rounds to whole milliseconds, clamped into ab's own
//!   [p99, max] so it is never less precise than the `-e` bounds.
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
use std::time::Duration;

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

/// A generator process in flight; `wait` collects and parses its output.
pub struct Running {
    child: Child,
    generator: Generator,
    out: PathBuf,
    err: PathBuf,
    csv: PathBuf,
    tsv: PathBuf,
    label: String,
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
            let threads = tool.threads.clamp(1, spec.concurrency);
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
    })
}

impl Running {
    /// Waits for the generator (polling so Ctrl-C is noticed) and parses it.
    pub fn wait(mut self) -> Result<RunResult, String> {
        let status = loop {
            if crate::sys::interrupted() {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err("interrupted".into());
            }
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(e) => return Err(format!("{}: waiting for the generator: {e}", self.label)),
            }
        };
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
        parsed.map_err(|e| format!("{}: {e} (see {})", self.label, self.out.display()))
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

/// Parses ab's summary (`stdout`), its `-e` percentile CSV and its `-g`
/// per-request TSV.
pub fn parse_ab(stdout: &str, csv: &str, tsv: &str) -> Result<RunResult, String> {
    let num = |key: &str| -> Result<f64, String> {
        field(stdout, key)
            .ok_or_else(|| format!("ab printed no `{key}`"))?
            .parse::<f64>()
            .map_err(|_| format!("ab's `{key}` is not a number"))
    };
    let completed = num("Complete requests")? as u64;
    let failed = num("Failed requests")? as u64;
    // Printed only when non-zero.
    let non_2xx = field(stdout, "Non-2xx responses")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let rps = num("Requests per second")?;

    // -e: "percent,ms" for 0..=100, ab's own order statistics.
    let mut by_percent = [f64::NAN; 101];
    for line in csv.lines().skip(1) {
        if let Some((p, ms)) = line.split_once(',') {
            if let (Ok(p), Ok(ms)) = (p.trim().parse::<usize>(), ms.trim().parse::<f64>()) {
                if p <= 100 {
                    by_percent[p] = ms;
                }
            }
        }
    }
    let (p50, p99, max) = (by_percent[50], by_percent[99], by_percent[100]);
    if !(p50.is_finite() && p99.is_finite() && max.is_finite()) {
        return Err("ab's percentile file (-e) is missing or incomplete".into());
    }

    // -g: column 5 ("ttime") is each request's total time in whole ms.
    let mut times: Vec<f64> = tsv
        .lines()
        .skip(1)
        .filter_map(|l| l.split('\t').nth(4)?.trim().parse().ok())
        .collect();
    times.sort_by(f64::total_cmp);
    let p999 = stats::percentile(&times, 99.9).map_or(max, |v| v.clamp(p99, max));

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

/// Parses the `CONNBENCH ...` line our wrk script prints.
pub fn parse_wrk(stdout: &str) -> Result<RunResult, String> {
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("CONNBENCH "))
        .ok_or("wrk printed no CONNBENCH summary (is its Lua support working?)")?;
    let get = |key: &str| -> Result<f64, String> {
        line.split_whitespace()
            .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| format!("wrk summary lacks `{key}`"))
    };
    let completed = get("requests")?;
    let seconds = get("duration_us")? / 1e6;
    Ok(RunResult {
        completed: completed as u64,
        failed: (get("connect")? + get("read")? + get("write")? + get("timeout")?) as u64,
        non_2xx: get("status")? as u64,
        rps: if seconds > 0.0 {
            completed / seconds
        } else {
            0.0
        },
        p50_ms: get("p50_us")? / 1000.0,
        p99_ms: get("p99_us")? / 1000.0,
        p999_ms: get("p999_us")? / 1000.0,
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
    }

    #[test]
    fn tails() {
        assert_eq!(tail("a\n\nb\nc\n", 2), "b | c");
        assert_eq!(tail("", 2), "(no output)");
    }
}
