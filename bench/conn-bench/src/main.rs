//! `conn-bench`: benchmarks conn-daemon against other servers (the C++
//! original, nginx) with standard load generators and writes a Markdown
//! table, `report.json` and `report.svg` (and `scaling.svg` for a
//! `--threads` sweep).
//!
//! ```text
//! conn-bench --server conn-daemon='target/release/conn-daemon -A 1 -p {port}' \
//!            --server cpp='/opt/conn-daemon/server-demo -A 1 -p {port}' \
//!            --peer nginx --scenario fast --rounds 5 --out bench-out
//! ```
//!
//! With `--threads 1,2,4`, the flow below runs once per value, the servers
//! pinned to that many CPUs and the generator to the rest; every row
//! records the generator's CPU share so a client-bound row is flagged.
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
use cpus::Plan;
use load::{LoadKind, LoadSpec, RunResult, Tool};
use report::{LoadReport, Report, ServerReport};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

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
    /// Wall time of the runs, summed.
    wall_s: f64,
    /// CPU of the generators and of conn-bench over the runs, µs.
    client_cpu_us: f64,
    /// Busy and total ticks of the server's CPUs over the runs (/proc/stat).
    server_cpus_ticks: (u64, u64),
    /// The same for the generator's CPUs.
    client_cpus_ticks: (u64, u64),
}

/// What every sweep value shares.
struct Setup<'a> {
    args: &'a Args,
    loads: Vec<LoadSpec>,
    program: std::path::PathBuf,
    nginx: Option<std::path::PathBuf>,
    out: std::path::PathBuf,
    ticks_per_second: u64,
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
    if args.servers.is_empty() && nginx.is_none() {
        return Err("nothing to benchmark: nginx serves /test/fast only; add a --server".into());
    }

    fs::create_dir_all(&args.out).map_err(|e| format!("creating {}: {e}", args.out.display()))?;
    let out = fs::canonicalize(&args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    for dir in [out.join("work"), out.join("logs")] {
        fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }

    let ticks_per_second = sys::clock_ticks_per_second();
    notes.push(match args.generator {
        Generator::Ab => "ab: one connection per request, one thread per ab process (so one client CPU \
                          per load, however many the generator is pinned to; --generator wrk uses them \
                          all); p50/p99 from ab -e (µs precision), p99.9 from ab -g (whole ms) clamped \
                          between ab's p99 and maximum."
            .into(),
        Generator::Wrk => "wrk: runs for --duration with one thread per client CPU; it uses keep-alive \
                           but these servers close after each response, so it reconnects per request \
                           (its reconnect cost is in the latency)."
            .into(),
    });
    notes.push(format!(
        "Server CPU: utime+stime of all threads/processes from /proc, {ticks_per_second} ticks/s, so ±1 tick \
         per run. Client CPU: getrusage of the generators and conn-bench itself."
    ));
    if args.scenario == Scenario::Mixed {
        notes.push(
            "mixed: the fast and slow loads start together from two generator processes; with ab each \
             stops after its own request count, so they overlap for the shorter one's duration."
                .into(),
        );
    }
    if !args.threads.is_empty() {
        for s in args
            .servers
            .iter()
            .filter(|s| !s.command.contains("{threads}"))
        {
            notes.push(format!(
                "{}: its command has no {{threads}}, so every thread count ran it unchanged (only its CPUs changed).",
                s.name
            ));
        }
    }
    let setup = Setup {
        args,
        loads,
        program,
        nginx,
        out,
        ticks_per_second,
    };

    // One pass per thread count; without --threads, one pass as given.
    let mut sweep: Vec<Option<u32>> = Vec::new();
    for t in &args.threads {
        if !sweep.contains(&Some(*t)) {
            sweep.push(Some(*t));
        }
    }
    if sweep.is_empty() {
        sweep.push(None);
    }
    let allowed = cpus::allowed_cpus().unwrap_or_default();
    let mut rows = Vec::new();
    for threads in sweep {
        let plan = if args.no_pin {
            Plan::Unpinned
        } else {
            cpus::plan(
                &allowed,
                threads,
                args.server_cpus.as_deref(),
                args.client_cpus.as_deref(),
            )?
        };
        let at = threads.map_or(String::new(), |t| format!("threads={t}: "));
        let pinning = match plan {
            Plan::Skip(note) => {
                eprintln!("conn-bench: {note}");
                notes.push(note);
                continue;
            }
            Plan::Unpinned => {
                notes.push(if args.no_pin {
                    format!("{at}Not pinned (--no-pin): servers and generator share all CPUs.")
                } else {
                    format!("{at}Not pinned: only one CPU is available.")
                });
                None
            }
            Plan::Pinned(p) => {
                notes.push(format!(
                    "{at}Servers pinned to CPUs {:?}, load generator to CPUs {:?}.",
                    p.server, p.generator
                ));
                Some(p)
            }
        };
        rows.extend(run_at(&setup, threads, pinning.as_ref())?);
    }
    if rows.is_empty() {
        return Err(format!("nothing ran: {}", notes.join(" ")));
    }
    if rows.iter().any(|r| {
        r.server_cpus_busy - r.server_cpu_util > 0.25
            || r.client_cpus_busy - r.client_cpu_util > 0.25
    }) {
        notes.push(
            "Other processes kept the benchmark's CPUs busy during some runs (cells with \"CPUs N%\"): \
             those rows measure a shared machine; rerun on a quiet one."
                .into(),
        );
    }
    report::fill_ratios(&mut rows);
    let report = Report {
        tool: "conn-bench",
        scenario: args.scenario,
        generator: args.generator,
        rounds: args.rounds,
        workers: args.workers,
        slow_ms: args.slow_ms,
        wrk_duration_s: (args.generator == Generator::Wrk).then_some(args.duration),
        loads: setup.loads.clone(),
        threads: args.threads.clone(),
        clock_ticks_per_second: ticks_per_second,
        notes,
        servers: rows,
    };
    write_outputs(&report, &setup.out)
}

/// Starts every server for `threads` (pinned as `pinning` says), runs the
/// rounds, stops the servers and returns their report rows.
fn run_at(
    setup: &Setup,
    threads: Option<u32>,
    pinning: Option<&cpus::Pinning>,
) -> Result<Vec<ServerReport>, String> {
    let args = setup.args;
    let loads = &setup.loads;
    let work = setup.out.join("work");
    let logs = setup.out.join("logs");
    // Pin this thread (and so the generators it forks, and the memory
    // sampler) to the generator CPUs; servers switch to theirs at spawn.
    let allowed_now = cpus::allowed_cpus().unwrap_or_default();
    let client = pinning.map_or(allowed_now, |p| p.generator.clone());
    sys::set_thread_affinity(&client).map_err(|e| format!("pinning the generator: {e}"))?;
    let tool = Tool {
        generator: args.generator,
        program: setup.program.clone(),
        duration_s: args.duration,
        threads: client.len().max(1) as u32,
    };
    // The generator threads that can run at once: what "saturated" is measured against.
    let client_threads = loads
        .iter()
        .map(|l| match args.generator {
            Generator::Ab => 1,
            Generator::Wrk => tool.threads.clamp(1, l.concurrency),
        })
        .sum::<u32>()
        .min(client.len().max(1) as u32);

    let suffix = threads.map_or(String::new(), |t| format!("-t{t}"));
    let with_threads = |w: &str| match threads {
        Some(t) => w.replace("{threads}", &t.to_string()),
        None => w.to_string(),
    };
    let count = args.servers.len() + usize::from(setup.nginx.is_some());
    // Ports first: the nginx config needs its port written in.
    let ports = servers::free_ports(count).map_err(|e| format!("picking free ports: {e}"))?;
    let mut launches: Vec<servers::Launch> = args
        .servers
        .iter()
        .map(|s| servers::Launch {
            name: s.name.clone(),
            command: with_threads(&s.command),
            argv: s.argv.iter().map(|w| with_threads(w)).collect(),
            extra_log: None,
        })
        .collect();
    if let Some(nginx) = &setup.nginx {
        launches.push(servers::nginx_launch(
            nginx,
            &setup.out.join(format!("nginx{suffix}")),
            ports[count - 1],
            threads.unwrap_or(1),
        )?);
    }

    let server_cpus = pinning.map_or_else(|| client.clone(), |p| p.server.clone());
    let mut progress = progress::Progress::new();
    let at = threads.map_or(String::new(), |t| format!("threads={t}: "));
    let timeout = Duration::from_secs(args.start_timeout);
    let mut running = Vec::new();
    for (launch, &port) in launches.iter().zip(&ports) {
        progress.update(&format!("{at}starting {} on port {port}", launch.name));
        let log_name = servers::Launch {
            name: format!("{}{suffix}", launch.name),
            ..launch.clone()
        };
        let mut server = servers::start(
            &log_name,
            port,
            pinning.map(|p| p.server.as_slice()),
            Some(&client),
            &logs,
            timeout,
        )?;
        server.name = launch.name.clone();
        running.push(server);
    }
    // Let start-up allocations settle before calling the memory "idle".
    std::thread::sleep(Duration::from_millis(200));
    let mut measured: Vec<Measured> = running
        .iter()
        .map(|s| Measured {
            runs: vec![Vec::new(); loads.len()],
            idle_rss_kib: procstat::tree_rss_kib(s.pid()),
            ..Measured::default()
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
                "{at}[{step}/{total}] round {round}/{}: {} ...",
                args.rounds, server.name
            ));
            let before = procstat::tree_cpu_ticks(server.pid());
            let client_before = sys::client_side_cpu_us();
            let server_cpus_before = procstat::cpu_ticks(&server_cpus);
            let client_cpus_before = procstat::cpu_ticks(&client);
            let started = Instant::now();
            let mut inflight = Vec::new();
            for spec in loads {
                let tag = format!("{}{suffix}-r{round}-{}", server.name, spec.kind.name());
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
            m.wall_s += started.elapsed().as_secs_f64();
            m.client_cpu_us += sys::client_side_cpu_us() - client_before;
            add_ticks(&mut m.server_cpus_ticks, server_cpus_before, &server_cpus);
            add_ticks(&mut m.client_cpus_ticks, client_cpus_before, &client);
            m.cpu_ticks += procstat::tree_cpu_ticks(server.pid()).saturating_sub(before);
            server.check_alive()?;
            progress.update(&format!(
                "{at}[{step}/{total}] round {round}/{}: {}: {}",
                args.rounds,
                server.name,
                summary.join(", ")
            ));
        }
    }
    let peaks = sampler.finish();
    progress.update(&format!("{at}stopping servers"));
    for server in &mut running {
        server.stop();
    }
    progress.finish();

    let cpus = Cpus {
        threads,
        server: pinning.map(|p| p.server.clone()),
        client,
        client_threads,
        pinned: pinning.is_some(),
    };
    Ok(running
        .iter()
        .zip(measured)
        .zip(peaks)
        .map(|((server, m), peak)| server_report(setup, &cpus, server, m, peak))
        .collect())
}

/// Adds the busy and total ticks of `cpus` since `before` to `sum`.
fn add_ticks(sum: &mut (u64, u64), before: (u64, u64), cpus: &[usize]) {
    let now = procstat::cpu_ticks(cpus);
    sum.0 += now.0.saturating_sub(before.0);
    sum.1 += now.1.saturating_sub(before.1);
}

/// Busy share of ticks counted by `add_ticks`.
fn busy_share((busy, total): (u64, u64)) -> f64 {
    if total > 0 {
        busy as f64 / total as f64
    } else {
        f64::NAN
    }
}

/// Where one pass ran, for its rows.
struct Cpus {
    threads: Option<u32>,
    server: Option<Vec<usize>>,
    client: Vec<usize>,
    client_threads: u32,
    pinned: bool,
}

/// Turns one server's measurements into its report row.
fn server_report(
    setup: &Setup,
    cpus: &Cpus,
    server: &servers::Server,
    m: Measured,
    peak_rss_kib: u64,
) -> ServerReport {
    let args = setup.args;
    let requests_total: u64 = m.runs.iter().flatten().map(|r| r.completed).sum();
    let cpu_us_total = procstat::ticks_to_us(m.cpu_ticks, setup.ticks_per_second);
    let wall_us = m.wall_s * 1e6;
    let server_cpu_count = cpus.server.as_ref().map_or(cpus.client.len(), Vec::len);
    let share = |used: f64, cpus: usize| {
        if wall_us > 0.0 && cpus > 0 {
            used / (wall_us * cpus as f64)
        } else {
            f64::NAN
        }
    };
    let server_cpu_util = share(cpu_us_total, server_cpu_count);
    let client_cpu_util = share(m.client_cpu_us, cpus.client_threads as usize);
    let server_cpus_busy = busy_share(m.server_cpus_ticks);
    let client_cpus_busy = busy_share(m.client_cpus_ticks);
    ServerReport {
        name: server.name.clone(),
        command: server.command.clone(),
        port: server.port,
        threads: cpus.threads,
        server_cpus: cpus.server.clone(),
        client_cpus: cpus.pinned.then(|| cpus.client.clone()),
        client_threads: cpus.client_threads,
        wall_s_total: m.wall_s,
        server_cpu_util,
        server_cpus_busy,
        client_cpu_us_total: m.client_cpu_us,
        client_cpu_util,
        client_cpus_busy,
        // Unpinned, generator and server share CPUs: no side can be blamed.
        client_bound: cpus.pinned
            && report::is_client_bound(
                [server_cpu_util, server_cpus_busy],
                [client_cpu_util, client_cpus_busy],
            ),
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
        loads: setup
            .loads
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
    let mut files = vec![("report.json", report::json(report))];
    files.push((
        "report.svg",
        report::svg(report).map_err(|e| format!("drawing the chart: {e}"))?,
    ));
    if !report.threads.is_empty() {
        files.push((
            "scaling.svg",
            report::scaling_svg(report).map_err(|e| format!("drawing the scaling chart: {e}"))?,
        ));
    }
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out.join(name);
        fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
        written.push(path.display().to_string());
    }
    print!("{}", report::markdown(report));
    eprintln!("conn-bench: wrote {}", written.join(", "));
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
