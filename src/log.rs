//! Log lines: errors, warnings, info and debug, by `--log-level`, to where the
//! process's lines belong.
//!
//! | where | how a line looks |
//! |---|---|
//! | stderr (a terminal, a file) | `conn-daemon: text` |
//! | stderr is the journal (`JOURNAL_STREAM` names it) | `<4>text`: the sd-daemon priority prefix, which journald strips and keeps as the priority; it adds the name itself |
//! | syslog (`-d`: stderr is `/dev/null`) | `<28>conn-daemon[PID]: text` on `/dev/log`, facility daemon |
//! | `-v` | debug lines on stdout, `conn-daemon: text`, as the reference |
//!
//! Nothing allocates once set up: a line is formatted straight into the locked
//! stream, or into a buffer on the stack for syslog (cut at 1 KiB).
#![forbid(unsafe_code)]

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Mutex, OnceLock};

use crate::config::LogLevel as Level;

static VERBOSE: AtomicBool = AtomicBool::new(false);
/// The level shown: `--log-level`'s, or debug with `-v`.
static LEVEL: AtomicU8 = AtomicU8::new(Level::Warn as u8);
/// `--log-level`.
static CONFIGURED: AtomicU8 = AtomicU8::new(Level::Warn as u8);
/// Whether lines go to syslog (after `-d`).
static SYSLOG: AtomicBool = AtomicBool::new(false);
/// The `/dev/log` socket, once connected.
static SYSLOG_SOCKET: Mutex<Option<UnixDatagram>> = Mutex::new(None);
/// The syslog facility `daemon` (3), shifted as the priority wants it.
const FACILITY_DAEMON: u8 = 3 << 3;
/// Where syslog listens.
const DEV_LOG: &str = "/dev/log";

/// Turns debug lines on stdout on or off (`-v`); on, the level is at least
/// debug.
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
    shown();
}

/// Shows lines of `level` and more severe ones (`--log-level`; debug with
/// `-v` whatever the level).
pub fn set_level(level: Level) {
    CONFIGURED.store(level as u8, Ordering::Relaxed);
    shown();
}

/// Sets the level shown from `--log-level` and `-v`.
fn shown() {
    let level = if verbose() {
        Level::Debug as u8
    } else {
        CONFIGURED.load(Ordering::Relaxed)
    };
    LEVEL.store(level, Ordering::Relaxed);
}

/// Whether debug lines go to stdout (`-v`).
pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// Whether lines of `level` are shown: one relaxed load, which is all a
/// debug line on the connection path costs when it is not shown.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Sends the lines to syslog from now on (`-d`, once stderr is `/dev/null`):
/// connects to `/dev/log` now, while nothing is restricted yet. If nobody
/// listens there, the lines go on to stderr.
pub fn to_syslog() {
    if let Some(socket) = connect_syslog() {
        *SYSLOG_SOCKET.lock().unwrap_or_else(|e| e.into_inner()) = Some(socket);
        SYSLOG.store(true, Ordering::Relaxed);
    }
}

fn connect_syslog() -> Option<UnixDatagram> {
    let socket = UnixDatagram::unbound().ok()?;
    // Test-only, in debug builds: `tests/logs.rs` listens elsewhere than the
    // host's syslog.
    #[cfg(debug_assertions)]
    if let Some(path) = std::env::var_os("CONN_DAEMON_TEST_SYSLOG") {
        socket.connect(path).ok()?;
        return Some(socket);
    }
    socket.connect(DEV_LOG).ok()?;
    Some(socket)
}

/// Whether stderr is the journal: `JOURNAL_STREAM` is `DEVICE:INODE` of the
/// stream systemd connected, and it must still be stderr (a child whose
/// stderr was redirected inherits the variable too).
fn stderr_is_journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| {
        use std::os::unix::fs::MetadataExt;
        let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
            return false;
        };
        let Some((dev, ino)) = value.to_str().and_then(|v| v.split_once(':')) else {
            return false;
        };
        let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
            return false;
        };
        std::fs::metadata("/proc/self/fd/2").is_ok_and(|m| m.dev() == dev && m.ino() == ino)
    })
}

/// The name every line starts with (`conn-daemon` unless [`set_name`] said
/// otherwise): a program's own, as syslog's ident.
static NAME: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();

/// Names the program in every line from now on (the first call wins): a
/// server ported onto the crate says its own name, not `conn-daemon`.
pub fn set_name(name: &'static str) {
    let _ = NAME.set(name);
}

fn name() -> &'static str {
    NAME.get().copied().unwrap_or("conn-daemon")
}

/// Writes one line of `level` (the macros call this once [`enabled`] said
/// yes). A debug line with `-v` goes to stdout.
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    if level == Level::Debug && verbose() {
        let _ = writeln!(std::io::stdout().lock(), "{}: {args}", name());
        return;
    }
    if SYSLOG.load(Ordering::Relaxed) && syslog(level, args) {
        return;
    }
    let mut err = std::io::stderr().lock();
    let _ = if stderr_is_journal() {
        writeln!(err, "<{}>{args}", level.severity())
    } else {
        writeln!(err, "{}: {args}", name())
    };
}

/// One datagram to `/dev/log` (reconnected once if syslog restarted);
/// false if it could not be sent.
fn syslog(level: Level, args: fmt::Arguments<'_>) -> bool {
    let mut line = LineBuf::new();
    let _ = write!(
        line,
        "<{}>{}[{}]: {args}",
        FACILITY_DAEMON | level.severity(),
        name(),
        std::process::id()
    );
    let mut socket = SYSLOG_SOCKET.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..2 {
        if let Some(s) = socket.as_ref() {
            if s.send(line.bytes()).is_ok() {
                return true;
            }
        }
        *socket = connect_syslog();
    }
    false
}

/// A line on the stack, cut at its capacity.
struct LineBuf {
    buf: [u8; 1024],
    len: usize,
}

impl LineBuf {
    fn new() -> LineBuf {
        LineBuf {
            buf: [0; 1024],
            len: 0,
        }
    }

    fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl fmt::Write for LineBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// A line at `level`, if the level is shown.
#[macro_export]
macro_rules! log_at {
    ($level:expr, $($arg:tt)*) => {
        if $crate::log::enabled($level) {
            $crate::log::write($level, format_args!($($arg)*));
        }
    };
}

/// A debug line: on stdout with `-v`, else where the log goes at
/// `--log-level debug`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log_at!($crate::config::LogLevel::Debug, $($arg)*) };
}

/// An info line: the life of the process (`--log-level info`).
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log_at!($crate::config::LogLevel::Info, $($arg)*) };
}

/// A warning: something an operator should know about.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log_at!($crate::config::LogLevel::Warn, $($arg)*) };
}

/// An error: the process cannot go on as asked.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log_at!($crate::config::LogLevel::Error, $($arg)*) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_by_name_and_order() {
        for l in Level::ALL {
            assert_eq!(Level::from_label(l.label()), Some(l));
        }
        assert_eq!(Level::from_label("warning"), None);
        assert!(Level::Error < Level::Warn && Level::Info < Level::Debug);
        assert_eq!(Level::default(), Level::Warn);
    }

    #[test]
    fn a_long_line_is_cut_not_refused() {
        let mut line = LineBuf::new();
        write!(line, "{}", "x".repeat(2000)).unwrap();
        assert_eq!(line.bytes().len(), 1024);
    }
}
