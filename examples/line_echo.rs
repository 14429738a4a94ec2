//! A second protocol on conn-daemon's engine: a line echo server with
//! persistent connections.
//!
//! Each `\n`-terminated line is echoed back and the connection is kept for the
//! next; lines sent without waiting (pipelined) are answered in order, in one
//! send; a line split across reads is put together; a line longer than the read
//! buffer streams through the output area without being held whole. A
//! connection idle between lines for longer than the idle timeout is closed.
//!
//! All the rest is the engine's, as for conn-daemon itself: accept threads,
//! the preallocated pool, the read deadline of a line under way, partial sends
//! resumed on writability, pausing on a full pool, and the drain: SIGTERM
//! closes idle connections and lines not yet complete at once and finishes the
//! answers under way; SIGHUP (the drain of an upgrade) lets lines under way
//! finish too. Each then closes once answered.
//!
//! Run: `cargo run --example line_echo -- 127.0.0.1:7000 5000 [READ_MS]`
//! (address, idle timeout in ms, and the read deadline of a line, 60 s unless
//! given), then `nc 127.0.0.1 7000`. It prints `listening on ADDR` once it
//! serves.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use conn_daemon::config::Config;
use conn_daemon::engine::{After, Label, Never, Output, Protocol, Step};
use conn_daemon::os;
use conn_daemon::server::Server;

/// The protocol: no settings, so a unit struct.
#[derive(Debug)]
struct LineEcho;

/// The only response kind: an echoed line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Line;

impl Label for Line {
    const LABELS: &'static [&'static str] = &["line"];
    fn index(self) -> usize {
        0
    }
}

/// Bytes of the read buffer: a longer line streams through.
const READ: usize = 1024;

impl Protocol for LineEcho {
    /// Nothing to remember between calls: the engine keeps the unconsumed
    /// input, and a streamed line's start went out already.
    type Conn = ();
    type Job = Never;
    type Kind = Line;
    type Reason = Never;
    type ReadBuffer = [u8; READ];
    type WriteBuffer = [u8; 4096];

    const KINDS_HELP: &'static str = "Lines echoed.";

    fn on_input(&self, _conn: &mut (), input: &[u8], out: &mut Output<'_>) -> Step<Self> {
        match input.iter().position(|&b| b == b'\n') {
            Some(end) => {
                let line = &input[..=end];
                if out.room() < line.len() {
                    // The answers batched so far go out first; then again.
                    return Step::More {
                        consumed: 0,
                        begun: true,
                    };
                }
                out.write(line);
                Step::Respond {
                    consumed: line.len(),
                    kind: Line,
                    after: After::KeepAlive,
                }
            }
            // A full buffer without a newline: echo what there is and read on.
            None if input.len() == READ => Step::More {
                consumed: out.write(input),
                begun: true,
            },
            None => Step::More {
                consumed: 0,
                begun: !input.is_empty(),
            },
        }
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (Some(addr), Some(idle)) = (args.next(), args.next()) else {
        eprintln!("usage: line_echo ADDRESS IDLE_MS [READ_MS]");
        return ExitCode::from(2);
    };
    let read = args.next().unwrap_or_else(|| "60000".into());
    let (Ok(addr), Ok(idle), Ok(read)) = (
        addr.parse::<SocketAddr>(),
        idle.parse::<u64>(),
        read.parse::<u64>(),
    ) else {
        eprintln!("line_echo: bad address or timeout");
        return ExitCode::from(2);
    };
    // Before any thread: the signals go to the thread that waits for them.
    if let Err(e) = os::block_signals() {
        eprintln!("line_echo: cannot block signals: {e}");
        return ExitCode::FAILURE;
    }
    let config = Config {
        port: addr.port(),
        listen: vec![addr],
        accept_threads: 1,
        accept_capacity: 1024,
        worker_threads: 0,
        idle_timeout: Some(Duration::from_millis(idle)),
        read_timeout: Some(Duration::from_millis(read)),
        shutdown_timeout: Duration::from_secs(5),
        ..Config::default()
    };
    let server = match Server::bind(&config, LineEcho) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("line_echo: {e}");
            return ExitCode::from(e.exit_status() as u8);
        }
    };
    let signals = match os::SignalFd::new() {
        Ok(fd) => fd,
        Err(e) => {
            eprintln!("line_echo: cannot watch signals: {e}");
            return ExitCode::FAILURE;
        }
    };
    let drain = server.shutdown_handle();
    std::thread::spawn(move || {
        while let Ok(sig) = signals.read() {
            match sig {
                libc::SIGHUP => {
                    drain.hand_over();
                }
                libc::SIGTERM | libc::SIGINT => drain.shutdown(),
                _ => {}
            }
        }
    });
    let at = server.addresses()[0];
    match server.run_with(|| println!("listening on {at}")) {
        Ok(stats) => {
            println!("{} lines echoed", stats.served);
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("line_echo: {e}");
            ExitCode::from(e.exit_status() as u8)
        }
    }
}
