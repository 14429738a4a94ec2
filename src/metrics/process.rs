//! The standard `process_*` metrics, read from `/proc` at scrape time into
//! stack buffers (no allocation).

use std::io::{self, Read, Write};

use super::render::{family, gauge};
use crate::os;

/// `USER_HZ`, the unit of the CPU times in `/proc/PID/stat` (100 on every Linux
/// architecture's user ABI).
const USER_HZ: f64 = 100.0;

/// The standard `process_*` metrics, read from `/proc` at scrape time.
#[derive(Debug)]
pub struct Process {
    /// Seconds since the epoch at which the process started (fixed).
    start_time: f64,
}

impl Process {
    /// Reads what does not change: the start time (`/proc/self/stat`'s
    /// `starttime` after `/proc/stat`'s `btime`).
    pub fn new() -> Self {
        let start_time = (|| {
            let stat = std::fs::read_to_string("/proc/stat").ok()?;
            let btime: f64 = stat
                .lines()
                .find_map(|l| l.strip_prefix("btime "))?
                .trim()
                .parse()
                .ok()?;
            let mut buf = [0u8; 1024];
            let ticks: f64 = stat_field(read_small("/proc/self/stat", &mut buf).ok()?, 22)?
                .parse()
                .ok()?;
            Some(btime + ticks / USER_HZ)
        })()
        .unwrap_or(0.0);
        Process { start_time }
    }

    pub(super) fn render(&self, out: &mut Vec<u8>) -> io::Result<()> {
        let mut buf = [0u8; 4096];
        if let Ok(stat) = read_small("/proc/self/stat", &mut buf) {
            let ticks = |n| {
                stat_field(stat, n)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0)
            };
            let cpu = (ticks(14) + ticks(15)) as f64 / USER_HZ;
            family(
                out,
                "process_cpu_seconds_total",
                "counter",
                "Total user and system CPU time spent in seconds.",
            )?;
            writeln!(out, "process_cpu_seconds_total {cpu}")?;
        }
        if let Ok(status) = read_small("/proc/self/status", &mut buf) {
            if let Some(kb) = status_kb(status, "VmRSS:") {
                gauge(
                    out,
                    "process_resident_memory_bytes",
                    "Resident memory size in bytes.",
                    kb * 1024,
                )?;
            }
        }
        if let Ok(n) = os::open_fds() {
            gauge(
                out,
                "process_open_fds",
                "Number of open file descriptors.",
                n,
            )?;
        }
        if let Ok(limits) = read_small("/proc/self/limits", &mut buf) {
            if let Some(max) = max_open_files(limits) {
                gauge(
                    out,
                    "process_max_fds",
                    "Maximum number of open file descriptors.",
                    max,
                )?;
            }
        }
        gauge(
            out,
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            self.start_time,
        )
    }
}

impl Default for Process {
    fn default() -> Self {
        Self::new()
    }
}

/// Reads a small `/proc` file into `buf` without allocating; the text read.
fn read_small<'a>(path: &str, buf: &'a mut [u8]) -> io::Result<&'a str> {
    let mut file = std::fs::File::open(path)?;
    let mut len = 0;
    while len < buf.len() {
        match file.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    std::str::from_utf8(&buf[..len]).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// Field `n` (1-based, as in proc(5)) of `/proc/PID/stat`. The command name
/// (field 2) may contain spaces and parentheses, so count after its last `)`.
pub(super) fn stat_field(stat: &str, n: usize) -> Option<&str> {
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_ascii_whitespace().nth(n.checked_sub(3)?)
}

/// The kB value of `key` in `/proc/PID/status`.
fn status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find_map(|l| l.strip_prefix(key))?;
    line.split_ascii_whitespace().next()?.parse().ok()
}

/// The soft "Max open files" limit in `/proc/PID/limits`.
fn max_open_files(limits: &str) -> Option<u64> {
    let line = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max open files"))?;
    line.split_ascii_whitespace().next()?.parse().ok()
}
