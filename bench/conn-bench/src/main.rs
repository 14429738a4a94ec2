//! `conn-bench`: benchmarks conn-daemon against other servers (the C++
//! original, nginx) with standard load generators and writes a Markdown
//! table (stdout and `report.md`), `report.json` and `report.svg` (and
//! `scaling.svg` for a `--threads` sweep). docs/conn-bench.md describes
//! the options and how to read the report.
//!
//! ```text
//! conn-bench --server conn-daemon='target/release/conn-daemon -A 1 -w {workers} -D {slow_ms} -p {port}' \
//!            --server cpp='/opt/conn-daemon/server-demo -A 1 -w {workers} -D {slow_ms} -p {port}' \
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
//! alike, reading the server's CPU time from /proc at the start of each run
//! and at the end of each load (its window) while a thread samples memory;
//! stop the servers; write the report. A run whose generator output fails
//! the checks is reported as failed, the others still count. Servers and
//! generators are killed on every exit path, Ctrl-C included, and die with
//! conn-bench even when it is SIGKILLed (see `sys`). Servers and generators
//! are spawned from the main thread only: the parent-death signal follows
//! the thread that forked.
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
use load::{LoadKind, LoadSpec, RunError, RunResult, Tool};
use report::{LoadReport, Report, ServerReport, Window};
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

/// Default fast requests per round: a few seconds of load on one core.
const DEFAULT_FAST_REQUESTS: u64 = 20_000;
/// Default fast concurrency.
const DEFAULT_CONCURRENCY: u32 = 50;
/// Default slow load length, in seconds at the ideal rate.
const SLOW_SECONDS: f64 = 2.0;
/// How many times a server whose bind finds its port in use is moved to
/// another port before conn-bench gives up.
const PORT_MOVES: u32 = 5;

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
    let slow_c = slow_concurrency(args);
    let slow_default = ((ideal * SLOW_SECONDS).ceil() as u64).max(u64::from(slow_c));
    let fast = LoadSpec {
        kind: LoadKind::Fast,
        requests: args.requests.unwrap_or(DEFAULT_FAST_REQUESTS),
        concurrency: args.concurrency.unwrap_or(DEFAULT_CONCURRENCY),
    };
    let slow = |requests: Option<u64>| LoadSpec {
        kind: LoadKind::Slow,
        requests: requests.unwrap_or(slow_default),
        concurrency: slow_c,
    };
    match args.scenario {
        Scenario::Fast => vec![fast],
        Scenario::Slow => vec![slow(args.requests)],
        Scenario::Mixed => vec![fast, slow(args.slow_requests)],
    }
}

/// The slow load's concurrency: `--slow-concurrency`, else `--workers`.
fn slow_concurrency(args: &Args) -> u32 {
    args.slow_concurrency.unwrap_or(args.workers)
}

/// Ideal slow throughput: every worker that has a request busy all the
/// time (a server bounded by workers / duration reaches it, no more).
fn ideal_rps(args: &Args) -> f64 {
    f64::from(args.workers.min(slow_concurrency(args))) * 1000.0 / args.slow_ms as f64
}

/// Fills conn-bench's placeholders (all but `{port}`, which is per start)
/// into one word of a server command.
fn fill_placeholders(word: &str, args: &Args, threads: Option<u32>) -> String {
    let mut w = word
        .replace("{workers}", &args.workers.to_string())
        .replace("{slow_ms}", &args.slow_ms.to_string())
        .replace("{delegate}", &args.delegate);
    if let Some(t) = threads {
        w = w.replace("{threads}", &t.to_string());
    }
    w
}

/// Readings taken at the start of a round and at the end of each load.
#[derive(Debug, Clone, Copy)]
struct Snapshot {
    at: Instant,
    /// Server tree on-CPU ns (schedstat), None if unavailable.
    server_ns: Option<u64>,
    /// Server tree utime + stime, clock ticks.
    server_ticks: u64,
    /// conn-bench plus reaped generators (rusage) plus running generators
    /// (schedstat), µs.
    client_us: f64,
    server_cpus: (u64, u64),
    client_cpus: (u64, u64),
}

impl Snapshot {
    fn take(server: u32, server_cpus: &[usize], client_cpus: &[usize], running: &[u32]) -> Self {
        let running_ns: u64 = running
            .iter()
            .filter_map(|&p| procstat::process_cpu_ns(p))
            .sum();
        Snapshot {
            at: Instant::now(),
            server_ns: procstat::tree_cpu_ns(server),
            server_ticks: procstat::tree_cpu_ticks(server),
            client_us: sys::client_side_cpu_us() + running_ns as f64 / 1000.0,
            server_cpus: procstat::cpu_ticks(server_cpus),
            client_cpus: procstat::cpu_ticks(client_cpus),
        }
    }
}

/// One load's window in one round: from the start of the round to that
/// load's end (in `mixed`, the other load may still be running then).
#[derive(Debug, Clone, Copy)]
struct Sample {
    end: Snapshot,
    /// Another generator was still running at `end`: the server was busy,
    /// so its schedstat reading may lag by a tick per CPU.
    busy_at_end: bool,
}

/// Everything measured about one server.
#[derive(Default)]
struct Measured {
    /// Per load (same order as the plan), per round: the run's figures or
    /// why it failed.
    runs: Vec<Vec<Result<RunResult, String>>>,
    /// Per round: the start snapshot and each load's window.
    rounds: Vec<(Snapshot, Vec<Sample>)>,
    idle_rss_kib: u64,
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
                          all); p50/p99 from ab -e (µs precision), p99.9 from ab -g (whole ms) kept \
                          between ab's p99 and maximum. Every figure ab prints is checked (counts, \
                          rate against count and time, percentiles in order and within the run); a run \
                          that fails the checks is reported as failed."
            .into(),
        Generator::Wrk => "wrk: runs for --duration with one thread per client CPU; it uses keep-alive \
                           but these servers close after each response, so it reconnects per request \
                           (its reconnect cost is in the latency)."
            .into(),
    });
    notes.push(format!(
        "Server CPU: on-CPU ns of all threads/processes from /proc/PID/task/*/schedstat (utime+stime \
         ticks at {ticks_per_second}/s kept in report.json as a cross-check). Client CPU: getrusage of \
         conn-bench and the finished generators, schedstat of the running ones. A ratio is printed \
         only when the two medians differ by more than the measurement's resolution and the larger \
         min-max spread of the rounds; otherwise the cell says \"within noise\"."
    ));
    if args.rounds < 2 {
        notes.push(
            "One round: there is no spread between rounds to judge a difference by, so a ratio \
             here has only passed the resolution check; run --rounds 3 or more before trusting \
             one."
                .into(),
        );
    }
    if args.scenario == Scenario::Mixed {
        notes.push(
            "mixed: the fast and slow loads start together from two generator processes; with ab each \
             stops after its own request count. Each row's CPU %, client-bound verdict and CPU per \
             request cover that load's own window (start to its end): CPU per request is the server's \
             CPU in the window over all requests completed in it, a load still running counted pro \
             rata to time."
                .into(),
        );
    }
    if args.scenario != Scenario::Fast {
        for s in args
            .servers
            .iter()
            .filter(|s| !(s.command.contains("{workers}") && s.command.contains("{slow_ms}")))
        {
            notes.push(format!(
                "{}: its command has no {{workers}} and {{slow_ms}} placeholders, so conn-bench cannot \
                 make it run the {} workers and {} ms it assumes for the ideal.",
                s.name, args.workers, args.slow_ms
            ));
        }
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
        rows.extend(run_at(&setup, threads, pinning.as_ref(), &mut notes)?);
    }
    if rows.is_empty() {
        return Err(format!("nothing ran: {}", notes.join(" ")));
    }
    notes.extend(report::shared_cpus_note(&rows));
    report::fill_ratios(&mut rows);
    for row in &rows {
        for load in &row.loads {
            if let Some(note) = report::slow_shortfall(
                row,
                load,
                args.workers,
                args.slow_ms,
                slow_concurrency(args),
            ) {
                notes.push(note);
            }
        }
    }
    let failed: Vec<String> = rows
        .iter()
        .flat_map(|r| r.loads.iter().flat_map(|l| l.failed_runs.iter().cloned()))
        .collect();
    for f in &failed {
        notes.push(format!("Failed run, left out of the figures: {f}"));
    }
    let report = Report {
        tool: "conn-bench",
        scenario: args.scenario,
        generator: args.generator,
        rounds: args.rounds,
        workers: args.workers,
        slow_ms: args.slow_ms,
        slow_concurrency: slow_concurrency(args),
        delegate: args.delegate.clone(),
        ports: args.ports,
        wrk_duration_s: (args.generator == Generator::Wrk).then_some(args.duration),
        loads: setup.loads.clone(),
        threads: args.threads.clone(),
        clock_ticks_per_second: ticks_per_second,
        machine: procstat::Machine::read(),
        notes,
        servers: rows,
    };
    write_outputs(&report, &setup.out)?;
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{} run(s) failed; the report lists them and leaves them out of the figures",
            failed.len()
        ))
    }
}

/// Starts every server for `threads` (pinned as `pinning` says), runs the
/// rounds, stops the servers and returns their report rows.
fn run_at(
    setup: &Setup,
    threads: Option<u32>,
    pinning: Option<&cpus::Pinning>,
    notes: &mut Vec<String>,
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
            Generator::Wrk => tool.threads.min(l.concurrency).max(1),
        })
        .sum::<u32>()
        .min(client.len().max(1) as u32);

    let suffix = threads.map_or(String::new(), |t| format!("-t{t}"));
    let with_threads = |w: &str| fill_placeholders(w, args, threads);
    let count = args.servers.len() + usize::from(setup.nginx.is_some());
    // Ports first: the nginx config needs its port written in.
    let ports = servers::pick_ports(count, args.ports, &[])?;
    let mut launches: Vec<servers::Launch> = args
        .servers
        .iter()
        .map(|s| servers::Launch {
            name: s.name.clone(),
            command: with_threads(&s.command),
            argv: s.argv.iter().map(|w| with_threads(w)).collect(),
            template: s.command.clone(),
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
    // Every port chosen so far, busy ones included: none is offered twice.
    let mut tried = ports.clone();
    for (i, launch) in launches.iter_mut().enumerate() {
        let mut port = ports[i];
        let mut moves = 0;
        let mut server = loop {
            progress.update(&format!("{at}starting {} on port {port}", launch.name));
            let log_name = servers::Launch {
                name: format!("{}{suffix}", launch.name),
                ..launch.clone()
            };
            match servers::start(
                &log_name,
                port,
                pinning.map(|p| p.server.as_slice()),
                Some(&client),
                &logs,
                timeout,
            ) {
                Ok(server) => break server,
                // Taken since the probe, or bound stricter than it: the
                // next free port, not the end of the whole benchmark.
                Err(failure) if failure.port_busy && moves < PORT_MOVES => {
                    moves += 1;
                    let next = servers::pick_ports(1, args.ports, &tried)
                        .map_err(|e| format!("{}; {e}", failure.message))?[0];
                    tried.push(next);
                    notes.push(format!(
                        "{at}{}: port {port} was in use when it bound it, so it ran on port {next}.",
                        launch.name
                    ));
                    if let (Some(nginx), true) = (&setup.nginx, i + 1 == count) {
                        *launch = servers::nginx_launch(
                            nginx,
                            &setup.out.join(format!("nginx{suffix}")),
                            next,
                            threads.unwrap_or(1),
                        )?;
                    }
                    port = next;
                }
                Err(failure) => return Err(failure.message),
            }
        };
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
            let start = Snapshot::take(server.pid(), &server_cpus, &client, &[]);
            let mut inflight = Vec::new();
            for spec in loads {
                let tag = format!("{}{suffix}-r{round}-{}", server.name, spec.kind.name());
                inflight.push(Some(load::start(&tool, spec, server.port, &work, &tag)?));
            }
            // Poll every generator so each load's end is noticed (and its
            // window closed) when it happens, not when an earlier one is waited for.
            let mut results: Vec<Option<Result<RunResult, String>>> = vec![None; loads.len()];
            let mut samples: Vec<Option<Sample>> = vec![None; loads.len()];
            while results.iter().any(Option::is_none) {
                let mut ended = false;
                for (i, job) in inflight.iter_mut().enumerate() {
                    let Some(outcome) = job.as_mut().and_then(|j| j.poll()) else {
                        continue;
                    };
                    *job = None;
                    results[i] = Some(match outcome {
                        Ok(r) => Ok(r),
                        Err(RunError::Interrupted) => return Err("interrupted".into()),
                        Err(RunError::Failed(e)) => Err(e),
                    });
                    ended = true;
                }
                if ended {
                    let still: Vec<u32> = inflight.iter().flatten().map(|j| j.pid()).collect();
                    let end = Snapshot::take(server.pid(), &server_cpus, &client, &still);
                    for (i, sample) in samples.iter_mut().enumerate() {
                        if sample.is_none() && results[i].is_some() {
                            *sample = Some(Sample {
                                end,
                                busy_at_end: !still.is_empty(),
                            });
                        }
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
            let mut summary = Vec::new();
            for (i, result) in results.into_iter().flatten().enumerate() {
                summary.push(match &result {
                    Ok(r) => format!("{} {} req/s", loads[i].kind.name(), report::fmt_num(r.rps)),
                    Err(_) => format!("{} FAILED", loads[i].kind.name()),
                });
                m.runs[i].push(result);
            }
            m.rounds
                .push((start, samples.into_iter().flatten().collect()));
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

/// Busy share of (busy, total) ticks.
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

/// One load's window in one round, as differences.
#[derive(Clone)]
struct Delta {
    wall_s: f64,
    server_us: f64,
    /// What `server_us` can be off by (µs).
    resolution_us: f64,
    client_us: f64,
    server_cpus: (u64, u64),
    client_cpus: (u64, u64),
}

fn delta(start: &Snapshot, s: &Sample, ticks_per_second: u64, server_cpu_count: usize) -> Delta {
    let e = &s.end;
    let tick_us = 1e6 / ticks_per_second.max(1) as f64;
    let (server_us, resolution_us) = match (start.server_ns, e.server_ns) {
        (Some(a), Some(b)) => (
            b.saturating_sub(a) as f64 / 1000.0,
            // Asleep at both readings: exact to the ns; read while the
            // other load kept it busy: a tick per server CPU.
            if s.busy_at_end {
                tick_us * server_cpu_count.max(1) as f64
            } else {
                1.0
            },
        ),
        _ => (
            procstat::ticks_to_us(
                e.server_ticks.saturating_sub(start.server_ticks),
                ticks_per_second,
            ),
            2.0 * tick_us,
        ),
    };
    let sub = |a: (u64, u64), b: (u64, u64)| (b.0.saturating_sub(a.0), b.1.saturating_sub(a.1));
    Delta {
        wall_s: e.at.saturating_duration_since(start.at).as_secs_f64(),
        server_us,
        resolution_us,
        client_us: (e.client_us - start.client_us).max(0.0),
        server_cpus: sub(start.server_cpus, e.server_cpus),
        client_cpus: sub(start.client_cpus, e.client_cpus),
    }
}

/// Sums one load's windows over the rounds into its report figures.
/// Each round comes with the number of requests completed in its window
/// (None when a run of the round failed: no CPU per request for it).
fn window(cpus: &Cpus, deltas: &[(Delta, Option<f64>)], source: &'static str) -> Window {
    let server_cpu_count = cpus.server.as_ref().map_or(cpus.client.len(), Vec::len);
    let wall_us: f64 = deltas.iter().map(|(d, _)| d.wall_s).sum::<f64>() * 1e6;
    let server_us: f64 = deltas.iter().map(|(d, _)| d.server_us).sum();
    let client_us: f64 = deltas.iter().map(|(d, _)| d.client_us).sum();
    let add = |f: fn(&Delta) -> (u64, u64)| {
        deltas
            .iter()
            .map(|(d, _)| f(d))
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
    };
    let share = |used: f64, n: usize| {
        if wall_us > 0.0 && n > 0 {
            used / (wall_us * n as f64)
        } else {
            f64::NAN
        }
    };
    let server_cpu_util = share(server_us, server_cpu_count);
    let client_cpu_util = share(client_us, cpus.client_threads as usize);
    let server_cpus_busy = busy_share(add(|d| d.server_cpus));
    let client_cpus_busy = busy_share(add(|d| d.client_cpus));
    let per_round: Vec<f64> = deltas
        .iter()
        .filter_map(|(d, n)| n.filter(|&n| n > 0.0).map(|n| d.server_us / n))
        .collect();
    let resolution = deltas
        .iter()
        .filter_map(|(d, n)| n.filter(|&n| n > 0.0).map(|n| d.resolution_us / n))
        .fold(0.0, f64::max);
    Window {
        wall_s_total: wall_us / 1e6,
        server_cpu_us_total: server_us,
        server_cpu_util,
        server_cpus_busy,
        client_cpu_us_total: client_us,
        client_cpu_util,
        client_cpus_busy,
        // Unpinned, generator and server share CPUs: no side can be blamed.
        client_bound: cpus.pinned
            && report::is_client_bound(server_cpu_util, [client_cpu_util, client_cpus_busy]),
        requests: deltas.iter().filter_map(|(_, n)| *n).sum(),
        cpu_us_per_request: stats::median(&per_round).unwrap_or(f64::NAN),
        cpu_us_per_request_rounds: per_round,
        cpu_us_per_request_resolution: resolution,
        cpu_source: source,
    }
}

/// Requests completed by all loads within load `i`'s window of one round:
/// a load that ended within it counts whole, one still running pro rata to
/// time. None if a run of the round failed (its count is unknown).
fn requests_in_window(
    i: usize,
    runs: &[Option<&Result<RunResult, String>>],
    deltas: &[Delta],
) -> Option<f64> {
    let mine = deltas.get(i)?.wall_s;
    let mut total = 0.0;
    for (j, run) in runs.iter().enumerate() {
        let done = (*run)?.as_ref().ok()?.completed as f64;
        let theirs = deltas.get(j)?.wall_s;
        total += if theirs <= mine || theirs <= 0.0 {
            done
        } else {
            done * mine / theirs
        };
    }
    Some(total)
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
    let nloads = setup.loads.len();
    let server_cpu_count = cpus.server.as_ref().map_or(cpus.client.len(), Vec::len);
    let source = if m.rounds.iter().all(|(s, _)| s.server_ns.is_some()) {
        "schedstat"
    } else {
        "ticks"
    };
    // Per load: (delta, requests in window) per round; plus the whole round.
    let mut per_load: Vec<Vec<(Delta, Option<f64>)>> = (0..nloads).map(|_| Vec::new()).collect();
    let mut whole: Vec<(Delta, Option<f64>)> = Vec::new();
    for (r, (start, samples)) in m.rounds.iter().enumerate() {
        let deltas: Vec<Delta> = samples
            .iter()
            .map(|s| delta(start, s, setup.ticks_per_second, server_cpu_count))
            .collect();
        let runs: Vec<Option<&Result<RunResult, String>>> = (0..nloads)
            .map(|i| m.runs.get(i).and_then(|v| v.get(r)))
            .collect();
        let last = samples
            .iter()
            .enumerate()
            .max_by_key(|(_, s)| s.end.at)
            .map(|(i, _)| i);
        for (i, d) in deltas.iter().enumerate() {
            let n = requests_in_window(i, &runs, &deltas);
            if Some(i) == last {
                // The last load's window is the whole round; all requests count.
                let all = runs
                    .iter()
                    .map(|r| r.and_then(|r| r.as_ref().ok()).map(|r| r.completed as f64))
                    .sum::<Option<f64>>();
                whole.push((d.clone(), all));
            }
            per_load[i].push((d.clone(), n));
        }
    }
    let all = window(cpus, &whole, source);
    let requests_total: u64 = m.runs.iter().flatten().flatten().map(|r| r.completed).sum();
    let placeholders = ["{workers}", "{slow_ms}", "{delegate}", "{threads}"]
        .into_iter()
        .filter(|p| server.template.contains(p))
        .map(String::from)
        .collect();
    ServerReport {
        name: server.name.clone(),
        command: server.command.clone(),
        placeholders,
        port: server.port,
        threads: cpus.threads,
        server_cpus: cpus.server.clone(),
        client_cpus: cpus.pinned.then(|| cpus.client.clone()),
        client_threads: cpus.client_threads,
        wall_s_total: all.wall_s_total,
        server_cpu_util: all.server_cpu_util,
        server_cpus_busy: all.server_cpus_busy,
        client_cpu_us_total: all.client_cpu_us_total,
        client_cpu_util: all.client_cpu_util,
        client_cpus_busy: all.client_cpus_busy,
        client_bound: all.client_bound,
        startup_ms: server.startup.as_secs_f64() * 1000.0,
        idle_rss_kib: m.idle_rss_kib,
        peak_rss_kib: peak_rss_kib.max(m.idle_rss_kib),
        cpu_us_total: all.server_cpu_us_total,
        cpu_ticks_total: m
            .rounds
            .iter()
            .filter_map(|(s, samples)| {
                let end = samples.iter().map(|x| x.end).max_by_key(|e| e.at)?;
                Some(end.server_ticks.saturating_sub(s.server_ticks))
            })
            .sum(),
        requests_total,
        cpu_us_per_request: all.cpu_us_per_request,
        loads: setup
            .loads
            .iter()
            .zip(m.runs)
            .zip(per_load)
            .map(|((spec, runs), deltas)| {
                let mut l = LoadReport::from_runs(
                    spec.kind,
                    runs,
                    args.generator,
                    args.slow_ms,
                    ideal_rps(args),
                );
                l.window = window(cpus, &deltas, source);
                l
            })
            .collect(),
        ratios: Default::default(),
        within_noise: Vec::new(),
        whole: all,
    }
}

/// Prints the table and writes report.md, report.json and report.svg into `out`.
fn write_outputs(report: &Report, out: &Path) -> Result<(), String> {
    let md = report::markdown(report);
    let mut files = vec![
        ("report.md", md.clone()),
        ("report.json", report::json(report)),
    ];
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
    print!("{md}");
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

    fn delta_of(wall_s: f64) -> Delta {
        Delta {
            wall_s,
            server_us: 0.0,
            resolution_us: 0.0,
            client_us: 0.0,
            server_cpus: (0, 0),
            client_cpus: (0, 0),
        }
    }

    #[test]
    fn counts_requests_per_load_window() {
        let run = |completed| RunResult {
            completed,
            ..RunResult::default()
        };
        let (fast, slow) = (Ok(run(3000)), Ok(run(200)));
        let runs = [Some(&fast), Some(&slow)];
        // The fast load ended after 1 s, the slow one after 4 s: the fast
        // window holds all fast requests and a quarter of the slow ones.
        let deltas = [delta_of(1.0), delta_of(4.0)];
        assert_eq!(requests_in_window(0, &runs, &deltas), Some(3050.0));
        assert_eq!(requests_in_window(1, &runs, &deltas), Some(3200.0));
        // A failed run: its count is unknown, so no CPU per request.
        let failed = Err("garbage".to_string());
        let runs = [Some(&fast), Some(&failed)];
        assert_eq!(requests_in_window(0, &runs, &deltas), None);
        assert_eq!(requests_in_window(1, &runs, &deltas), None);
    }

    #[test]
    fn fills_placeholders() {
        let a = args(&["--workers", "3", "--slow-ms", "20", "--delegate", "loop"]);
        assert_eq!(
            fill_placeholders(
                "-w{workers}:{slow_ms}:{delegate}:{threads}:{port}",
                &a,
                None
            ),
            "-w3:20:loop:{threads}:{port}"
        );
        assert_eq!(fill_placeholders("{threads}", &a, Some(2)), "2");
        // The ideal follows the smaller of workers and slow concurrency.
        assert_eq!(ideal_rps(&a), 150.0);
        let a = args(&[
            "--workers",
            "4",
            "--slow-concurrency",
            "2",
            "--scenario",
            "slow",
        ]);
        assert_eq!(ideal_rps(&a), 2.0 * 1000.0 / 30.0);
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
        // --slow-concurrency above the workers: the ideal stays 4 / 30 ms,
        // the default count covers the connections.
        let wide = plan_loads(&args(&["--scenario", "slow", "--slow-concurrency", "300"]));
        assert_eq!((wide[0].requests, wide[0].concurrency), (300, 300));
    }
}
