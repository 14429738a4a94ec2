//! The command line: the C++ reference's options (GNU AutoOpts), minus its bugs.
//!
//! Same short and long names, same defaults, same accepted spellings (`-p 9000`,
//! `-p9000`, `--port 9000`, `--port=9000`, a unique prefix of a long name), same exit
//! status on a bad command line (1, with the error and the usage on stderr). Unlike the
//! reference, values out of range are refused instead of being truncated or wrapped
//! (`--port 70000` used to listen on 4464, `-w -1` used to be accepted).
//!
//! [`Config`] and its defaults are always there; the parsing (clap) is the `cli`
//! feature's, on by default, so that a library user can build a `Config` in code
//! without depending on clap.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[cfg(feature = "cli")]
mod cli;
#[cfg(feature = "cli")]
pub use cli::command;

/// The server's settings, from the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// `-v/--verbose`: print debug lines to stdout.
    pub verbose: bool,
    /// `-d/--daemonize`: detach from the terminal and run in the background.
    pub daemonize: bool,
    /// `-p/--port`: the TCP port every accept thread's listener binds (never 0).
    pub port: u16,
    /// `--listen`: the addresses to listen on, each with its port resolved (`-p`
    /// where the address had none); `0.0.0.0:<port>` without `--listen`. Never
    /// empty, no address twice.
    pub listen: Vec<SocketAddr>,
    /// `--pid-file`: where the serving process writes its pid (absolute, so that
    /// `-d`'s change of directory does not move it).
    pub pid_file: Option<PathBuf>,
    /// `--upgrade-timeout`: how long a new binary started by SIGUSR2 has to serve.
    pub upgrade_timeout: Duration,
    /// `-A/--accept-threads`: number of accept threads, the main thread included (>= 1).
    pub accept_threads: usize,
    /// `-C/--accept-capacity`: connections each accept thread can hold at once
    /// (1..=16_777_216), preallocated at start-up.
    pub accept_capacity: usize,
    /// `-w/--worker-threads`: threads that run slow requests; 0 answers a slow request
    /// inline, like a fast one.
    pub worker_threads: usize,
    /// `-D/--slow-duration`: how long a worker takes over a slow request.
    pub slow_duration: Duration,
    /// `--read-timeout`: time allowed from accept to the end of the request; `None`
    /// (given as 0) waits forever, as the reference does.
    pub read_timeout: Option<Duration>,
    /// How long a kept connection may wait for its next request (protocols
    /// with persistent connections; conn-daemon's closes after each response);
    /// `None` waits for ever. No option: set in code.
    pub idle_timeout: Option<Duration>,
    /// `--shutdown-timeout`: bound on the graceful drain after SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// `--metrics`: where to serve `GET /metrics` (an IP address and a port other
    /// than the service's); `None` (the default) serves no metrics.
    pub metrics: Option<SocketAddr>,
    /// `--delegate`: how a complete slow request reaches a worker.
    pub delegate: Delegate,
}

impl Default for Config {
    /// The settings of a command line without options: the one place the
    /// defaults are written (the command line's, and its help, read them here).
    /// The reference's port, capacity and slow duration; the read timeout (the
    /// reference has none and leaks slots), the drain bound (the reference drops
    /// requests) and the upgrade's (start-up takes a few ms, a loaded machine far
    /// more) are ours.
    fn default() -> Self {
        let accept_threads = default_accept_threads();
        let port = 9000;
        Config {
            verbose: false,
            daemonize: false,
            port,
            listen: vec![SocketAddr::from((Ipv4Addr::UNSPECIFIED, port))],
            pid_file: None,
            upgrade_timeout: Duration::from_millis(10_000),
            accept_threads,
            accept_capacity: 100_000,
            worker_threads: accept_threads,
            slow_duration: Duration::from_millis(30),
            read_timeout: Some(Duration::from_millis(60_000)),
            idle_timeout: None,
            shutdown_timeout: Duration::from_millis(10_000),
            metrics: None,
            delegate: Delegate::Task,
        }
    }
}

impl Config {
    /// The delegation mode the server runs: `--delegate`, except that without
    /// workers (`-w 0`) every mode answers slow requests inline, as `task` does.
    pub fn effective_delegate(&self) -> Delegate {
        if self.worker_threads > 0 {
            self.delegate
        } else {
            Delegate::Task
        }
    }
}

/// Number of accept threads without `-A`: one per CPU, like the reference's
/// `std::thread::hardware_concurrency()`, but never 0 (which that can return).
pub(crate) fn default_accept_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// `--delegate MODE`: what moves to a worker when a slow request is complete.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Delegate {
    /// The task moves; the connection stays and its accept loop answers.
    #[default]
    Task,
    /// The connection moves to a blocking worker, which answers it.
    Socket,
    /// The connection moves onto a worker's own event loop, which answers it.
    Loop,
}

impl Delegate {
    /// Every mode, in the order `--help` lists them.
    pub const ALL: [Delegate; 3] = [Delegate::Task, Delegate::Socket, Delegate::Loop];

    /// The name on the command line, in the logs and in the metrics.
    pub fn label(self) -> &'static str {
        match self {
            Delegate::Task => "task",
            Delegate::Socket => "socket",
            Delegate::Loop => "loop",
        }
    }

    /// The mode named `text`, if any.
    pub fn from_label(text: &str) -> Option<Delegate> {
        Delegate::ALL.into_iter().find(|m| m.label() == text)
    }

    /// Whether the connection itself leaves the accept loop.
    pub fn hands_off(self) -> bool {
        self != Delegate::Task
    }
}

impl fmt::Display for Delegate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}
