//! A memcached-compatible server on conn-daemon's engine: the ASCII protocol of
//! memcached 1.6, its option letters, its replies byte for byte.
//!
//! Run: `cargo run --release --example memcache -- -p 11211`, then any memcached
//! client (`printf 'set a 0 0 1\r\nx\r\nget a\r\n' | nc 127.0.0.1 11211`). It prints
//! `listening on ADDR` once it serves.
//!
//! | memcached          | here                                                         |
//! |--------------------|--------------------------------------------------------------|
//! | `thread.c`         | the engine: accept threads, pools, deadlines, drain, upgrade |
//! | `proto_text.c`     | `proto.rs`: [`proto::Session::process`] over the bytes read   |
//! | `items.c`, `slabs.c` | `store.rs`: pages from `-m`, size classes, LRU, eviction     |
//! | `thread_stats`     | `stats.rs`: one counter block per accept thread               |
//!
//! Options: `-p PORT` (11211), `-l ADDR[,ADDR...]` (127.0.0.1), `-m MEGABYTES` for
//! items (64), `-c CONNECTIONS` (1024), `-t THREADS` (4), `-I SIZE` the largest item
//! (`1m`; `k`/`m` suffixes), `-v` (repeat for more), and the engine's
//! `--metrics ADDR`, `--pid-file PATH`, `--idle-timeout MS`, `--read-timeout MS`,
//! `--shutdown-timeout MS`, `--upgrade-timeout MS`.
//!
//! Signals, as conn-daemon: SIGTERM or SIGINT drain (the requests read are
//! answered, then each connection closes; idle ones at once), SIGUSR2 starts the
//! binary at our path on the same listening sockets and drains once it serves. The
//! new process starts with an empty cache: see docs/memcache.md for what a client
//! sees then.
//!
//! Beside Debian's memcached 1.6.18, one thread each, in the same run
//! (bench/memcache.sh; the tables are in docs/memcache.md): server CPU per
//! operation 0.76-1.06x memcached's over get-heavy and set-heavy mixes of 32-byte
//! and 4 KB values, ops/s 1.01-1.36x and p99 1.00x (client-bound, with CPU 0 kept
//! awake for both); memory for the same items 0.88x (32-byte values) and 1.06x
//! (4 KB) of memcached's resident growth; within the same `-m 64`, 1.46x and 1.08x
//! as many items held.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser};
use conn_daemon::config::Config;
use conn_daemon::daemon;
use conn_daemon::engine::{After, Label, Never, Output, Protocol, Step};
use conn_daemon::server::StartError;

mod proto;
mod stats;
mod store;

use proto::{Kind, Out, Session, Status, READ_BUFFER, WRITE_BUFFER};
use store::StoreConfig;

/// memcached's option letters, and the engine's long options.
#[derive(Debug, Parser)]
#[command(
    name = "memcache",
    about = "A memcached-compatible server on conn-daemon's engine"
)]
struct Args {
    /// TCP port to listen on.
    #[arg(short = 'p', long = "port", default_value_t = 11211)]
    port: u16,
    /// Addresses to listen on, comma-separated.
    #[arg(short = 'l', long = "listen", default_value = "127.0.0.1")]
    listen: String,
    /// Megabytes of memory for items.
    #[arg(short = 'm', long = "memory-limit", default_value_t = 64)]
    memory: usize,
    /// Most simultaneous connections.
    #[arg(short = 'c', long = "conn-limit", default_value_t = 1024)]
    connections: usize,
    /// Accept threads.
    #[arg(short = 't', long = "threads", default_value_t = 4)]
    threads: usize,
    /// The largest item (bytes, or with a k or m suffix), memcached's way of counting.
    #[arg(short = 'I', long = "max-item-size", default_value = "1m", value_parser = item_size)]
    item_max: usize,
    /// Verbose: print start-up details (-v) and each connection's end (-vv).
    #[arg(short = 'v', action = ArgAction::Count)]
    verbose: u8,
    /// Serve the engine's metrics at this address (GET /metrics).
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Write our pid here once serving.
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Close a connection idle this many milliseconds between commands (0: never).
    #[arg(long, default_value_t = 0)]
    idle_timeout: u64,
    /// Close a connection whose command (a value's data included) has not all
    /// arrived this many milliseconds after its first byte (0: never).
    #[arg(long, default_value_t = 60_000)]
    read_timeout: u64,
    /// Bound on the drain after SIGTERM, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    shutdown_timeout: u64,
    /// How long a binary started by SIGUSR2 has to serve, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    upgrade_timeout: u64,
}

/// `-I`: memcached's `1m`, `512k`, or bytes; from 1 KB to 1 GB.
fn item_size(s: &str) -> Result<usize, String> {
    let (digits, unit) = match s.as_bytes().last() {
        Some(b'k' | b'K') => (&s[..s.len() - 1], 1 << 10),
        Some(b'm' | b'M') => (&s[..s.len() - 1], 1 << 20),
        _ => (s, 1),
    };
    let n: usize = digits.parse().map_err(|_| format!("not a size: {s}"))?;
    match n.checked_mul(unit) {
        Some(v) if (1 << 10..=1 << 30).contains(&v) => Ok(v),
        _ => Err("the item size must be from 1k to 1024m".into()),
    }
}

impl Label for Kind {
    const LABELS: &'static [&'static str] = Kind::LABELS;
    fn index(self) -> usize {
        self as usize
    }
}

/// The protocol the engine serves: the shared store and counters.
#[derive(Debug)]
struct Memcache {
    server: proto::Server,
    /// `-vv`: a line per connection's end.
    verbose: u8,
}

/// The engine's output area, as the protocol writes into it.
struct Area<'o, 'a>(&'o mut Output<'a>);

impl Out for Area<'_, '_> {
    fn room(&self) -> usize {
        self.0.room()
    }
    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    fn write(&mut self, bytes: &[u8]) -> usize {
        self.0.write(bytes)
    }
}

impl Memcache {
    /// What the engine does after `process`.
    fn step(consumed: usize, status: Status) -> Step<Self> {
        match status {
            // One command answered: the engine goes on with the input left (the
            // pipelined commands), batching the replies into one send.
            Status::Answered(kind) => Step::Respond {
                consumed,
                kind,
                after: After::KeepAlive,
            },
            // With replies pending, the engine sends them first.
            Status::NeedInput { begun } => Step::More { consumed, begun },
            Status::Flush => Step::More {
                consumed,
                begun: true,
            },
            Status::Stream => Step::Respond {
                consumed,
                kind: Kind::Get,
                after: After::MoreOutput,
            },
            // quit, a line too long: the reply out, then the client's EOF.
            Status::Close => Step::Respond {
                consumed,
                kind: Kind::Other,
                after: After::Linger,
            },
        }
    }
}

impl Protocol for Memcache {
    type Conn = Session;
    type Job = Never;
    type Kind = Kind;
    type Reason = Never;
    type ReadBuffer = [u8; READ_BUFFER];
    type WriteBuffer = [u8; WRITE_BUFFER];

    const KINDS_HELP: &'static str = "Commands answered, by kind.";

    fn open(&self, _conn: &mut Session) {
        let s = &self.server.stats;
        s.curr_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        s.total_connections
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn on_input(&self, conn: &mut Session, input: &[u8], out: &mut Output<'_>) -> Step<Self> {
        let now = self.server.clock.now();
        let (consumed, status) = conn.process(&self.server, now, input, &mut Area(out));
        Self::step(consumed, status)
    }

    fn on_sent(&self, conn: &mut Session, out: &mut Output<'_>) -> Step<Self> {
        // A value streams on; the input is looked at again only after it.
        let now = self.server.clock.now();
        let (_, status) = conn.process(&self.server, now, &[], &mut Area(out));
        Self::step(0, status)
    }

    fn render_metrics(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let srv = &self.server;
        let st = srv.store.stats();
        let counters = [
            (
                "memcache_get_hits_total",
                "Keys found by get and gets.",
                srv.stats.sum(stats::Counter::GetHits),
            ),
            (
                "memcache_get_misses_total",
                "Keys not found by get and gets.",
                srv.stats.sum(stats::Counter::GetMisses),
            ),
            (
                "memcache_evictions_total",
                "Items evicted to make room (least recently used first).",
                st.evictions,
            ),
        ];
        for (name, help, value) in counters {
            writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            )?;
        }
        let gauges = [
            ("memcache_items", "Items stored now.", st.curr_items),
            (
                "memcache_bytes",
                "Bytes of the items stored now (memcached's `bytes`).",
                st.bytes,
            ),
            (
                "memcache_limit_bytes",
                "Memory for items (-m).",
                srv.store.limit() as u64,
            ),
        ];
        for (name, help, value) in gauges {
            writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            )?;
        }
        Ok(())
    }

    fn close(&self, conn: &mut Session) {
        conn.close(&self.server);
        let s = &self.server.stats;
        s.curr_connections
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if self.verbose > 1 {
            eprintln!("memcache: connection closed");
        }
    }
}

fn main() -> ExitCode {
    // The whole process as conn-daemon runs its own protocol: signals, drains,
    // the SIGUSR2 upgrade, --pid-file, systemd; the lines say `memcache:`.
    daemon::run_with("memcache", setup, |addresses| {
        for a in addresses {
            println!("listening on {a}");
        }
    })
}

/// The command line, the engine's `Config` and the store reserved from `-m`.
fn setup() -> Result<(Config, Memcache), StartError> {
    let args = Args::parse();
    let mut listen = Vec::new();
    for a in args.listen.split(',') {
        match a.trim().parse::<IpAddr>() {
            Ok(ip) => listen.push(SocketAddr::new(ip, args.port)),
            Err(_) => return Err(StartError::usage(format!("-l {a}: not an IP address"))),
        }
    }
    let threads = args.threads.max(1);
    let memory = args.memory.saturating_mul(1 << 20);
    if args.item_max > memory / 2 {
        return Err(StartError::usage(
            "cannot set item size limit higher than 1/2 of memory max",
        ));
    }
    let config = Config {
        verbose: args.verbose > 0,
        port: args.port,
        listen,
        pid_file: args.pid_file.clone(),
        upgrade_timeout: Duration::from_millis(args.upgrade_timeout),
        accept_threads: threads,
        accept_capacity: args.connections.div_ceil(threads).max(1),
        worker_threads: 0,
        read_timeout: (args.read_timeout > 0).then(|| Duration::from_millis(args.read_timeout)),
        idle_timeout: (args.idle_timeout > 0).then(|| Duration::from_millis(args.idle_timeout)),
        shutdown_timeout: Duration::from_millis(args.shutdown_timeout),
        metrics: args.metrics,
        ..Config::default()
    };
    let store = StoreConfig {
        memory,
        item_max: args.item_max,
        shards: threads.next_power_of_two(),
    };
    let server =
        proto::Server::new(&store, threads, args.connections).map_err(StartError::no_memory)?;
    if args.verbose > 0 {
        eprintln!(
            "memcache: {} MB for items, items up to {} bytes, {threads} threads, {} connections",
            args.memory, args.item_max, args.connections
        );
    }
    let protocol = Memcache {
        server,
        verbose: args.verbose,
    };
    Ok((config, protocol))
}
