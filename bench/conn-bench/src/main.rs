//! `conn-bench`: benchmarks conn-daemon against other servers (the C++
//! original, nginx) with standard load generators and writes a Markdown
//! table, `report.json` and `report.svg`.
//!
//! ```text
//! conn-bench --server conn-daemon='target/release/conn-daemon -A 1 -p {port}' \
//!            --server cpp='/opt/conn-daemon/server-demo -A 1 -p {port}' \
//!            --peer nginx --scenario fast --rounds 5 --out bench-out
//! ```
//!
//! Flow: start every server (pinned to the server CPUs) and time exec to
//! listening; read idle memory; then for each round run the load against
//! each server in turn (A B A B ...) so slow drift of the machine hits all
//! alike, reading the server's CPU time from /proc around each run while a
//! thread samples memory; stop the servers; write the report. Servers and
//! generators are killed on every exit path, Ctrl-C included.
#![deny(unsafe_code)] // Only `sys` may opt out, for its libc calls.

mod args;
mod cpus;
mod load;
mod procstat;
mod progress;
mod report;
mod servers;
mod stats;
mod sys;

use args::{Args, Generator, Peer, Scenario};
use clap::Parser;
use load::{LoadKind, LoadSpec, RunResult, Tool};
use report::{LoadReport, Report, ServerReport};
use std::fs;
use std::path::Path;
use std::time::Duration;

/// Default fast requests per round: a few seconds of load on one core.
const DEFAULT_FAST_REQUESTS: u64 = 20_000;
/// Default fast concurrency.
const DEFAULT_CONCURRENCY: u32 = 50;
/// Default slow load length, in seconds at the ideal rate.
const SLOW_SECONDS: f64 = 2.0;

fn main() {
    let args = Args::parse();
    if let Err(e) = args.validate() {
        eprintln!("conn-bench: {e}");
        std::process::exit(2);
    }
    sys::install_signal_handlers();
    // `run` owns every child process; they are stopped before it returns.
    match run(&args) {
        Ok(()) => {}
        Err(_) if sys::interrupted() => {
            eprintln!("conn-bench: interrupted; servers and generators stopped");
            std::process::exit(130);
        }
        Err(e) => {
            eprintln!("conn-bench: {e}");
            std::process::exit(1);
        }
    }
}

/// The generator runs of one round against one server.
fn plan_loads(args: &Args) -> Vec<LoadSpec> {
    let ideal = ideal_rps(args);
    let slow_default = ((ideal * SLOW_SECONDS).ceil() as u64).max(u64::from(args.workers));
    let fast = LoadSpec {
        kind: LoadKind::Fast,
        requests: args.requests.unwrap_or(DEFAULT_FAST_REQUESTS),
        concurrency: args.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
    };
    let slow = |requests: Option<u64>| LoadSpec {
        kind: LoadKind::Slow,
        requests: requests.unwrap_or(slow_default),
        concurrency: args.workers,
    };
    match args.scenario {
        Scenario::Fast => vec![fast],
        Scenario::Slow => vec![slow(args.requests)],
        Scenario::Mixed => vec![fast, slow(args.slow_requests)],
    }
}

/// Ideal slow throughput: every worker busy all the time.
fn ideal_rps(args: &Args) -> f64 {
    f64::from(args.workers) * 1000.0 / args.slow_ms as f64
}

/// Everything measured about one server.
#[derive(Default)]
struct Measured {
    /// Per load (same order as the plan), per round.
    runs: Vec<Vec<RunResult>>,
    cpu_ticks: u64,
    idle_rss_kib: u64,
}

fn run(args: &Args) -> Result<(), String> {
    let loads = plan_loads(args);
    let mut notes = Vec::new();

    // Fail on missing tools before starting anything.
    let program = match args.generator {
        Generator::Ab => servers::require("ab", "apache2-utils")?,
        Generator::Wrk => servers::require("wrk", "wrk")?,
    };
    let with_nginx = args.peers.contains(&Peer::Nginx);
    let nginx = match (with_nginx, args.scenario) {
        (false, _) => None,
        (true, Scenario::Fast) => Some(servers::require("nginx", "nginx-light")?),
        (true, _) => {
            notes.push("nginx skipped: it serves /test/fast only, so it takes part in the fast scenario only.".into());
            None
        }
    };

    fs::create_dir_all(&args.out).map_err(|e| format!("creating {}: {e}", args.out.display()))?;
    let out = fs::canonicalize(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    let work = out.join("work");
    let logs = out.join("logs");
    for dir in [&work, &logs] {
        fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }

    // Pin this thread (and so the generators it forks, and the memory
    // sampler) to the generator CPUs; servers switch to theirs at spawn.
    let pinning = if args.no_pin {
        notes.push("Not pinned (--no-pin): servers and generator share all CPUs.".into());
        None
    } else {
        let allowed = cpus::allowed_cpus().unwrap_or_default();
        let plan = cpus::plan(&allowed, args.server_cpus.as_deref())?;
        match &plan {
            Some(p) => {
                sys::set_thread_affinity(&p.generator)
                    .map_err(|e| format!("pinning the generator: {e}"))?;
                notes.push(format!(
                    "Servers pinned to CPUs {:?}, load generator to CPUs {:?}.",
                    p.server, p.generator
                ));
            }
            None => notes.push("Not pinned: only one CPU is available.".into()),
        }
        plan
    };
    let ticks_per_second = sys::clock_ticks_per_second();
    let tool = Tool {
        generator: args.generator,
        program,
        duration_s: args.duration,
        threads: pinning.as_ref().map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            |p| p.generator.len() as u32,
        ),
    };
    notes.push(match args.generator {
        Generator::Ab => "ab: one connection per request; p50/p99 from ab -e (µs precision), p99.9 from ab -g \
                          (whole ms) clamped between ab's p99 and maximum."
            .into(),
        Generator::Wrk => "wrk: runs for --duration; it uses keep-alive but these servers close after each \
                           response, so it reconnects per request (its reconnect cost is in the latency)."
            .into(),
    });
    notes.push(format!(
        "Server CPU: utime+stime of all threads/processes from /proc, {ticks_per_second} ticks/s, so ±1 tick per run."
    ));
    if args.scenario == Scenario::Mixed {
        notes.push(
            "mixed: the fast and slow loads start together from two generator processes; with ab each \
             stops after its own request count, so they overlap for the shorter one's duration."
                .into(),
        );
    }

    // Ports first: the nginx config needs its port written in.
    let count = args.servers.len() + usize::from(nginx.is_some());
    if count == 0 {
        return Err("nothing to benchmark: nginx serves /test/fast only; add a --server".into());
    }
    let ports = servers::free_ports(count).map_err(|e| format!("picking free ports: {e}"))?;
    let mut launches: Vec<servers::Launch> = args
        .servers
        .iter()
        .map(|s| servers::Launch {
            name: s.name.clone(),
            command: s.command.clone(),
            argv: s.argv.clone(),
            extra_log: None,
        })
        .collect();
    if let Some(nginx) = &nginx {
        launches.push(servers::nginx_launch(
            nginx,
            &out.join("nginx"),
            ports[count - 1],
        )?);
    }

    let mut progress = progress::Progress::new();
    let timeout = Duration::from_secs(args.start_timeout);
    let mut running = Vec::new();
    for (launch, &port) in launches.iter().zip(&ports) {
        progress.update(&format!("starting {} on port {port}", launch.name));
        let server_cpus = pinning.as_ref().map(|p| p.server.as_slice());
        let restore = pinning.as_ref().map(|p| p.generator.as_slice());
        running.push(servers::start(
            launch,
            port,
            server_cpus,
            restore,
            &logs,
            timeout,
        )?);
    }
    // Let start-up allocations settle before calling the memory "idle".
    std::thread::sleep(Duration::from_millis(200));
    let mut measured: Vec<Measured> = running
        .iter()
        .map(|s| Measured {
            runs: vec![Vec::new(); loads.len()],
            cpu_ticks: 0,
            idle_rss_kib: procstat::tree_rss_kib(s.pid()),
        })
        .collect();
    let sampler = procstat::RssSampler::start(running.iter().map(|s| s.pid()).collect());

    let total = args.rounds as usize * running.len();
    let mut step = 0;
    for round in 1..=args.rounds {
        for (server, m) in running.iter_mut().zip(measured.iter_mut()) {
            step += 1;
            if sys::interrupted() {
                return Err("interrupted".into());
            }
            progress.update(&format!(
                "[{step}/{total}] round {round}/{}: {} ...",
                args.rounds, server.name
            ));
            let before = procstat::tree_cpu_ticks(server.pid());
            let mut inflight = Vec::new();
            for spec in &loads {
                let tag = format!("{}-r{round}-{}", server.name, spec.kind.name());
                inflight.push(load::start(&tool, spec, server.port, &work, &tag)?);
            }
            let mut summary = Vec::new();
            for (i, job) in inflight.into_iter().enumerate() {
                let result = job.wait()?;
                summary.push(format!(
                    "{} {} req/s",
                    loads[i].kind.name(),
                    report::fmt_num(result.rps)
                ));
                m.runs[i].push(result);
            }
            m.cpu_ticks += procstat::tree_cpu_ticks(server.pid()).saturating_sub(before);
            server.check_alive()?;
            progress.update(&format!(
                "[{step}/{total}] round {round}/{}: {}: {}",
                args.rounds,
                server.name,
                summary.join(", ")
            ));
        }
    }
    let peaks = sampler.finish();
    progress.update("stopping servers");
    for server in &mut running {
        server.stop();
    }
    progress.finish();

    let mut reports: Vec<ServerReport> = running
        .iter()
        .zip(measured)
        .zip(peaks)
        .map(|((server, m), peak)| server_report(args, &loads, server, m, peak, ticks_per_second))
        .collect();
    report::fill_ratios(&mut reports);
    let report = Report {
        tool: "conn-bench",
        scenario: args.scenario,
        generator: args.generator,
        rounds: args.rounds,
        workers: args.workers,
        slow_ms: args.slow_ms,
        wrk_duration_s: (args.generator == Generator::Wrk).then_some(args.duration),
        loads: loads.clone(),
        server_cpus: pinning.as_ref().map(|p| p.server.clone()),
        generator_cpus: pinning.as_ref().map(|p| p.generator.clone()),
        clock_ticks_per_second: ticks_per_second,
        notes,
        servers: reports,
    };
    drop(running);
    write_outputs(&report, &out)
}

/// Turns one server's measurements into its report entry.
fn server_report(
    args: &Args,
    loads: &[LoadSpec],
    server: &servers::Server,
    m: Measured,
    peak_rss_kib: u64,
    ticks_per_second: u64,
) -> ServerReport {
    let requests_total: u64 = m.runs.iter().flatten().map(|r| r.completed).sum();
    let cpu_us_total = procstat::ticks_to_us(m.cpu_ticks, ticks_per_second);
    ServerReport {
        name: server.name.clone(),
        command: server.command.clone(),
        port: server.port,
        startup_ms: server.startup.as_secs_f64() * 1000.0,
        idle_rss_kib: m.idle_rss_kib,
        peak_rss_kib: peak_rss_kib.max(m.idle_rss_kib),
        cpu_us_total,
        requests_total,
        cpu_us_per_request: if requests_total > 0 {
            cpu_us_total / requests_total as f64
        } else {
            f64::NAN
        },
        loads: loads
            .iter()
            .zip(m.runs)
            .map(|(spec, runs)| {
                LoadReport::from_rounds(spec.kind, runs, args.slow_ms, ideal_rps(args))
            })
            .collect(),
        ratios: Default::default(),
    }
}

/// Prints the table and writes report.json and report.svg into `out`.
fn write_outputs(report: &Report, out: &Path) -> Result<(), String> {
    let json_path = out.join("report.json");
    fs::write(&json_path, report::json(report))
        .map_err(|e| format!("writing {}: {e}", json_path.display()))?;
    let svg_path = out.join("report.svg");
    let svg = report::svg(report).map_err(|e| format!("drawing the chart: {e}"))?;
    fs::write(&svg_path, svg).map_err(|e| format!("writing {}: {e}", svg_path.display()))?;
    print!("{}", report::markdown(report));
    eprintln!(
        "conn-bench: wrote {} and {}",
        json_path.display(),
        svg_path.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut argv = vec!["conn-bench", "--server", "a=x -p {port}"];
        argv.extend(extra);
        Args::try_parse_from(argv).unwrap()
    }

    #[test]
    fn plans_loads_per_scenario() {
        let fast = plan_loads(&args(&[]));
        assert_eq!(
            fast,
            [LoadSpec {
                kind: LoadKind::Fast,
                requests: 20_000,
                concurrency: 50
            }]
        );
        // 4 workers / 30 ms = 133.3 req/s ideal; 2 s of it.
        let slow = plan_loads(&args(&["--scenario", "slow"]));
        assert_eq!(
            slow,
            [LoadSpec {
                kind: LoadKind::Slow,
                requests: 267,
                concurrency: 4
            }]
        );
        let slow = plan_loads(&args(&["--scenario", "slow", "-n", "40", "--workers", "2"]));
        assert_eq!((slow[0].requests, slow[0].concurrency), (40, 2));
        let mixed = plan_loads(&args(&[
            "--scenario",
            "mixed",
            "-n",
            "300",
            "-c",
            "10",
            "--slow-requests",
            "9",
        ]));
        assert_eq!(mixed.len(), 2);
        assert_eq!(
            (mixed[0].kind, mixed[0].requests, mixed[0].concurrency),
            (LoadKind::Fast, 300, 10)
        );
        assert_eq!(
            (mixed[1].kind, mixed[1].requests, mixed[1].concurrency),
            (LoadKind::Slow, 9, 4)
        );
    }
}
