//! Command line of `conn-bench`: options, `--server NAME=COMMAND` entries and
//! the small shell-style splitter used for their commands.

use clap::{Parser, ValueEnum};
use std::path::PathBuf;

/// Shown after the options in `--help`.
const EXAMPLE: &str = "\
Example:
  conn-bench --server conn-daemon='target/release/conn-daemon -A 1 -w {workers} -D {slow_ms} -p {port}' \\
             --server cpp='/opt/conn-daemon/server-demo -A 1 -w {workers} -D {slow_ms} -p {port}' \\
             --peer nginx --scenario fast --rounds 5 --out bench-out

Placeholders in a server command: {port}, {workers}, {slow_ms}, {delegate},
{threads} (with --threads), each replaced by conn-bench's own value, so what
the report expects and what the server runs agree.

Across cores (servers on the first 1, 2, 4, 8 CPUs, wrk on the others):
  conn-bench --server conn-daemon='target/release/conn-daemon -A {threads} -p {port}' \\
             --peer nginx --threads 1,2,4,8 --generator wrk --duration 4 --rounds 2

Needs Debian's apache2-utils (ab), or wrk for --generator wrk, and
nginx-light for --peer nginx. Prints a Markdown table (a `client-bound`
row measured the load generator's limit, not the server's); writes
OUT/report.json, OUT/report.svg (OUT/scaling.svg with --threads), server
logs in OUT/logs and generator output in OUT/work; OUT/report.md is the
table. A ratio is printed only when the difference is larger than the
measurement's resolution and the rounds' spread, else \"within noise\".";

/// Benchmarks connection servers side by side with standard load generators
/// (`ab` or `wrk`) and reports throughput, latency, CPU and memory per server.
#[derive(Debug, Parser)]
#[command(name = "conn-bench", version, about, long_about = None, after_help = EXAMPLE)]
pub struct Args {
    /// A server to benchmark, as NAME=COMMAND; COMMAND is split shell-style
    /// (quotes honoured, no shell) and must contain `{port}`. Repeatable; the
    /// first server is the reference for the ratios.
    #[arg(long = "server", value_name = "NAME=COMMAND", value_parser = parse_server)]
    pub servers: Vec<ServerSpec>,

    /// A bundled peer server to add after the `--server` ones (Debian's nginx
    /// with `bench/nginx.conf`; answers `/test/fast` only).
    #[arg(long = "peer", value_enum)]
    pub peers: Vec<Peer>,

    /// What to request: `fast`, `slow` (at `--workers` concurrency) or
    /// `mixed` (both at once, from two generator processes).
    #[arg(long, value_enum, default_value_t = Scenario::Fast)]
    pub scenario: Scenario,

    /// Rounds per server; servers alternate round by round (A B A B ...).
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    pub rounds: u32,

    /// Requests per round (ab only): of the fast load, or of the slow load in
    /// the `slow` scenario. Defaults: 20000 fast; about 2 s at the ideal rate
    /// for slow.
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub requests: Option<u64>,

    /// Requests per round of the slow load in the `mixed` scenario (ab only).
    /// Default: about 2 s at the ideal rate.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub slow_requests: Option<u64>,

    /// Concurrent connections of the fast load (the slow load's is
    /// `--slow-concurrency`).
    #[arg(short = 'c', long, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: Option<u32>,

    /// Worker threads of the servers under test: `{workers}` in a server
    /// command (e.g. `-w {workers}`), the slow load's default concurrency
    /// and, with `--slow-ms`, its ideal throughput.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub workers: u32,

    /// The servers' slow duration in ms: `{slow_ms}` in a server command
    /// (e.g. `-D {slow_ms}`); the ideal slow throughput is
    /// min(workers, slow concurrency) * 1000 / slow-ms.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    pub slow_ms: u64,

    /// Concurrent connections of the slow load. Default: `--workers`. Above
    /// it, a server whose slow throughput is not bounded by its workers
    /// (e.g. `--delegate loop`) shows more than 100 % of the ideal.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub slow_concurrency: Option<u32>,

    /// Delegation mode for `{delegate}` in server commands (e.g.
    /// `--delegate {delegate}`), passed as given.
    #[arg(long, value_name = "MODE", default_value = "task")]
    pub delegate: String,

    /// TCP ports the servers may listen on, as FROM-TO (inclusive): the
    /// first free ones are used. Default: any free port the kernel picks.
    #[arg(long, value_name = "FROM-TO", value_parser = parse_port_range)]
    pub ports: Option<PortRange>,

    /// Load generator.
    #[arg(long, value_enum, default_value_t = Generator::Ab)]
    pub generator: Generator,

    /// Seconds per round for wrk, which runs for a time, not a count.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub duration: u64,

    /// Directory for report.json, report.svg, logs and scratch files.
    #[arg(long, default_value = "bench-out")]
    pub out: PathBuf,

    /// CPUs for the servers, like `0-1,4`; the generator gets the other
    /// allowed CPUs. Default: the lower half of the allowed CPUs.
    #[arg(long, value_name = "LIST")]
    pub server_cpus: Option<String>,

    /// CPUs for the load generator, like `2-7`. Default: the allowed CPUs
    /// the servers do not get.
    #[arg(long, value_name = "LIST")]
    pub client_cpus: Option<String>,

    /// Sweep server thread counts, like `1,2,4,8`: for each value, `{threads}`
    /// in the server commands is replaced by it (e.g. `-A {threads}`), nginx
    /// gets that many workers, the servers are pinned to that many CPUs and
    /// the generator to the others. A value that leaves no CPU for the
    /// generator is skipped with a note.
    #[arg(long, value_name = "LIST", value_delimiter = ',',
          value_parser = clap::value_parser!(u32).range(1..))]
    pub threads: Vec<u32>,

    /// Do not pin servers and generator to separate CPUs.
    #[arg(long)]
    pub no_pin: bool,

    /// Seconds a server may take from exec to listening.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub start_timeout: u64,
}

/// One `--server NAME=COMMAND` entry, already split into argv.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSpec {
    /// Label in the report.
    pub name: String,
    /// The command as given, for the report.
    pub command: String,
    /// `command` split into words; `{port}` and `{threads}` are substituted
    /// per word at start.
    pub argv: Vec<String>,
}

/// `--ports FROM-TO`: an inclusive range of TCP ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct PortRange {
    /// First port of the range.
    pub from: u16,
    /// Last port of the range (inclusive).
    pub to: u16,
}

/// Parses `FROM-TO` for clap: 1 <= FROM <= TO <= 65535.
pub fn parse_port_range(text: &str) -> Result<PortRange, String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("expected FROM-TO, like 18700-18799, got `{text}`"))?;
    let port = |t: &str| -> Result<u16, String> {
        match t.trim().parse::<u16>() {
            Ok(p) if p > 0 => Ok(p),
            _ => Err(format!("`{t}` is not a TCP port (1-65535)")),
        }
    };
    let (from, to) = (port(a)?, port(b)?);
    if from > to {
        return Err(format!("empty port range `{text}`: {from} > {to}"));
    }
    Ok(PortRange { from, to })
}

/// Bundled peers `--peer` can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Peer {
    /// Debian's nginx (package nginx-light) with `bench/nginx.conf`.
    Nginx,
}

/// What the load requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// `GET /test/fast` at `-c` concurrency.
    Fast,
    /// `GET /test/slow` at `--slow-concurrency` (default `--workers`).
    Slow,
    /// Fast and slow loads at the same time.
    Mixed,
}

/// Which standard load generator to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Generator {
    /// ApacheBench: one connection per request, like the C++ seed's numbers.
    Ab,
    /// wrk: keep-alive client; our servers close, so it reconnects per request.
    Wrk,
}

impl Scenario {
    /// Label in reports (as on the command line).
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Fast => "fast",
            Scenario::Slow => "slow",
            Scenario::Mixed => "mixed",
        }
    }
}

impl Args {
    /// Checks what clap cannot: at least one server, unique names, and no
    /// `-c` for the slow scenario (its concurrency is the worker count).
    pub fn validate(&self) -> Result<(), String> {
        if self.servers.is_empty() && self.peers.is_empty() {
            return Err(
                "nothing to benchmark: give at least one --server NAME=COMMAND or --peer nginx"
                    .into(),
            );
        }
        let mut names: Vec<&str> = self.servers.iter().map(|s| s.name.as_str()).collect();
        for peer in &self.peers {
            names.push(match peer {
                Peer::Nginx => "nginx",
            });
        }
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(format!("server name `{name}` is used twice"));
            }
        }
        if self.scenario == Scenario::Slow && self.concurrency.is_some() {
            return Err("-c does not apply to the slow scenario: use --slow-concurrency".into());
        }
        if self.scenario == Scenario::Fast && self.slow_concurrency.is_some() {
            return Err("--slow-concurrency applies to the slow and mixed scenarios".into());
        }
        if self.delegate.is_empty()
            || !self
                .delegate
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "--delegate `{}`: use letters, digits and - _ . only",
                self.delegate
            ));
        }
        if self.no_pin && !self.threads.is_empty() {
            return Err("--threads pins each server to that many CPUs: drop --no-pin".into());
        }
        if self.no_pin && (self.server_cpus.is_some() || self.client_cpus.is_some()) {
            return Err("--no-pin contradicts --server-cpus/--client-cpus".into());
        }
        if self.scenario != Scenario::Mixed && self.slow_requests.is_some() {
            return Err("--slow-requests applies to the mixed scenario only (use -n)".into());
        }
        Ok(())
    }
}

/// Parses `NAME=COMMAND` for clap.
pub fn parse_server(text: &str) -> Result<ServerSpec, String> {
    let (name, command) = text
        .split_once('=')
        .ok_or_else(|| format!("expected NAME=COMMAND, got `{text}`"))?;
    let name = name.trim();
    if name.is_empty() {
        return Err("the server name before `=` is empty".into());
    }
    // Names become file names (logs) and table cells: keep them tame.
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
    {
        return Err(format!(
            "server name `{name}`: use letters, digits and - _ . + only"
        ));
    }
    let argv = split_command(command)?;
    if argv.is_empty() {
        return Err(format!("server `{name}`: the command is empty"));
    }
    if !argv.iter().any(|w| w.contains("{port}")) {
        return Err(format!(
            "server `{name}`: the command must contain `{{port}}` where the port goes"
        ));
    }
    Ok(ServerSpec {
        name: name.to_string(),
        command: command.trim().to_string(),
        argv,
    })
}

/// Splits a command line into words like a POSIX shell would, without
/// running one: whitespace separates words, `'...'` is literal, `"..."`
/// honours `\"`, `\\`, `\$` and `` \` ``, and a bare backslash escapes the next
/// character. No expansion of any kind: the servers get exactly these words.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    // Distinguishes `''` (an empty word) from no word at all.
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated ' in `{line}`")),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => word.push(c),
                            Some(c) => {
                                word.push('\\');
                                word.push(c);
                            }
                            None => return Err(format!("unterminated \" in `{line}`")),
                        },
                        Some(c) => word.push(c),
                        None => return Err(format!("unterminated \" in `{line}`")),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err(format!("trailing \\ in `{line}`")),
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

/// Parses a CPU list like `0-3,6,8-9` (the kernel's `Cpus_allowed_list`
/// format) into sorted, deduplicated CPU numbers.
pub fn parse_cpu_list(text: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.trim().is_empty()) {
        let part = part.trim();
        let bad = || format!("bad CPU list `{text}`");
        match part.split_once('-') {
            Some((a, b)) => {
                let a: usize = a.trim().parse().map_err(|_| bad())?;
                let b: usize = b.trim().parse().map_err(|_| bad())?;
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() {
        return Err(format!("empty CPU list `{text}`"));
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(argv: &[&str]) -> Result<Args, String> {
        let args = Args::try_parse_from(std::iter::once("conn-bench").chain(argv.iter().copied()))
            .map_err(|e| e.to_string())?;
        args.validate()?;
        Ok(args)
    }

    #[test]
    fn splits_like_a_shell() {
        assert_eq!(
            split_command("target/release/conn-daemon -A 1 -p {port}").unwrap(),
            ["target/release/conn-daemon", "-A", "1", "-p", "{port}"]
        );
        assert_eq!(
            split_command(r#"  a 'b c'  "d \"e\" \x" f\ g '' "#).unwrap(),
            ["a", "b c", r#"d "e" \x"#, "f g", ""]
        );
        assert_eq!(split_command("pre'fix'\"ed\"").unwrap(), ["prefixed"]);
        assert!(split_command("").unwrap().is_empty());
        assert!(split_command("a 'b").is_err());
        assert!(split_command("a \"b").is_err());
        assert!(split_command("a \\").is_err());
    }

    #[test]
    fn parses_the_issue_example() {
        let args = parse(&[
            "--server",
            "conn-daemon=target/release/conn-daemon -A 1 -p {port}",
            "--server",
            "cpp='/opt/conn-daemon/server-demo' -A 1 -p {port}",
            "--peer",
            "nginx",
            "--scenario",
            "fast",
            "--rounds",
            "5",
            "--out",
            "bench-out",
        ])
        .unwrap();
        assert_eq!(args.servers.len(), 2);
        assert_eq!(args.servers[0].name, "conn-daemon");
        assert_eq!(args.servers[1].argv[0], "/opt/conn-daemon/server-demo");
        assert_eq!(args.servers[1].argv[4], "{port}");
        assert_eq!(args.peers, [Peer::Nginx]);
        assert_eq!(args.scenario, Scenario::Fast);
        assert_eq!(args.rounds, 5);
        assert_eq!(args.generator, Generator::Ab);
        assert_eq!(args.out, PathBuf::from("bench-out"));
        assert_eq!(args.requests, None);
    }

    #[test]
    fn parses_load_options() {
        let args = parse(&[
            "--server",
            "a=x -p {port}",
            "-n",
            "300",
            "-c",
            "10",
            "--generator",
            "wrk",
            "--duration",
            "2",
            "--workers",
            "8",
            "--slow-ms",
            "50",
            "--server-cpus",
            "0-1",
        ])
        .unwrap();
        assert_eq!(args.requests, Some(300));
        assert_eq!(args.concurrency, Some(10));
        assert_eq!(args.generator, Generator::Wrk);
        assert_eq!((args.duration, args.workers, args.slow_ms), (2, 8, 50));
        assert_eq!(args.server_cpus.as_deref(), Some("0-1"));
        assert!(args.threads.is_empty());
        let sweep = parse(&[
            "--server",
            "a=x -A {threads} -p {port}",
            "--threads",
            "1,2,4,8",
            "--client-cpus",
            "8-15",
        ])
        .unwrap();
        assert_eq!(sweep.threads, [1, 2, 4, 8]);
        assert_eq!(sweep.client_cpus.as_deref(), Some("8-15"));
    }

    #[test]
    fn rejects_bad_input() {
        // No server at all.
        assert!(parse(&["--rounds", "1"]).is_err());
        // Missing {port}, missing '=', empty name, odd name.
        assert!(parse(&["--server", "a=x -p 80"])
            .unwrap_err()
            .contains("{port}"));
        assert!(parse(&["--server", "x -p {port}"]).is_err());
        assert!(parse(&["--server", "=x {port}"]).is_err());
        assert!(parse(&["--server", "a/b=x {port}"]).is_err());
        // Duplicate names, also against a peer.
        assert!(parse(&["--server", "a=x {port}", "--server", "a=y {port}"])
            .unwrap_err()
            .contains("twice"));
        assert!(parse(&["--server", "nginx=x {port}", "--peer", "nginx"]).is_err());
        // Zero rounds, unknown scenario, -c with slow.
        assert!(parse(&["--server", "a=x {port}", "--rounds", "0"]).is_err());
        assert!(parse(&["--server", "a=x {port}", "--scenario", "medium"]).is_err());
        assert!(parse(&["--server", "a=x {port}", "--scenario", "slow", "-c", "3"]).is_err());
        assert!(parse(&["--server", "a=x {port}", "--slow-requests", "3"]).is_err());
        // Thread counts are positive; a sweep needs pinning.
        assert!(parse(&["--server", "a=x {port}", "--threads", "0,1"]).is_err());
        assert!(parse(&["--server", "a=x {port}", "--threads", "1", "--no-pin"]).is_err());
    }

    #[test]
    fn parses_slow_and_port_options() {
        let args = parse(&[
            "--server",
            "a=x -w {workers} -p {port}",
            "--scenario",
            "slow",
            "--slow-concurrency",
            "16",
            "--delegate",
            "loop",
            "--ports",
            "18700-18709",
        ])
        .unwrap();
        assert_eq!(args.slow_concurrency, Some(16));
        assert_eq!(args.delegate, "loop");
        assert_eq!(
            args.ports,
            Some(PortRange {
                from: 18700,
                to: 18709
            })
        );
        assert_eq!(parse(&["--server", "a=x {port}"]).unwrap().delegate, "task");
        assert_eq!(parse_port_range("7-7"), Ok(PortRange { from: 7, to: 7 }));
        for bad in ["9-8", "0-5", "5", "a-b", "1-70000", ""] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
        assert!(parse(&["--server", "a=x {port}", "--slow-concurrency", "3"]).is_err());
        assert!(parse(&["--server", "a=x {port}", "--delegate", "a b"]).is_err());
        assert!(parse(&["--server", "a=x {port}", "--slow-concurrency", "0"]).is_err());
    }

    #[test]
    fn parses_cpu_lists() {
        assert_eq!(
            parse_cpu_list("0-3,6,8-9\n").unwrap(),
            [0, 1, 2, 3, 6, 8, 9]
        );
        assert_eq!(parse_cpu_list("1,0,1").unwrap(), [0, 1]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
