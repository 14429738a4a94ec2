//! Server CPU time and memory from `/proc`.
//!
//! A server is measured as a process tree (the spawned pid plus its
//! descendants) so nginx's master and worker both count; for conn-daemon the
//! tree is one process whose `/proc/PID/stat` already sums all its threads,
//! including exited ones.

use std::collections::HashMap;
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// The fields of `/proc/PID/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Parent pid, to find descendants.
    pub ppid: u32,
    /// User CPU time of all threads, in clock ticks.
    pub utime: u64,
    /// System CPU time of all threads, in clock ticks.
    pub stime: u64,
}

/// Parses a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may contain spaces or `)`, so fields are counted from the
/// last `)`.
pub fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // After ")": state(3) ppid(4) ... utime(14) stime(15).
    Some(Stat {
        ppid: fields.get(1)?.parse().ok()?,
        utime: fields.get(11)?.parse().ok()?,
        stime: fields.get(12)?.parse().ok()?,
    })
}

/// Reads and parses `/proc/PID/stat`; None once the process is gone.
pub fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `root` and all its live descendants, found through the ppid of every
/// process in `/proc`.
pub fn process_tree(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some(stat) = read_stat(pid) {
                children.entry(stat.ppid).or_default().push(pid);
            }
        }
    }
    let mut tree = vec![root];
    let mut i = 0;
    while i < tree.len() {
        if let Some(kids) = children.get(&tree[i]) {
            tree.extend(
                kids.iter()
                    .copied()
                    .filter(|k| !tree.contains(k))
                    .collect::<Vec<_>>(),
            );
        }
        i += 1;
    }
    tree
}

/// CPU time (user + system, clock ticks) of `root`'s process tree.
pub fn tree_cpu_ticks(root: u32) -> u64 {
    process_tree(root)
        .into_iter()
        .filter_map(read_stat)
        .map(|s| s.utime + s.stime)
        .sum()
}

/// On-CPU time of one thread in ns: the first field of
/// `/proc/PID/task/TID/schedstat` ("on-CPU ns, run-queue wait ns, slices").
pub fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// On-CPU time (user + system, ns) of every live thread of `pid`, or None
/// when `/proc` does not have it (gone, or a kernel without schedstat).
pub fn process_cpu_ns(pid: u32) -> Option<u64> {
    let mut total = 0;
    let mut any = false;
    for entry in fs::read_dir(format!("/proc/{pid}/task")).ok()?.flatten() {
        let path = entry.path().join("schedstat");
        if let Some(ns) = fs::read_to_string(path)
            .ok()
            .and_then(|t| parse_schedstat_ns(&t))
        {
            total += ns;
            any = true;
        }
    }
    any.then_some(total)
}

/// On-CPU time (ns) of `root`'s process tree, from schedstat: exact for a
/// thread that is asleep when read (a running one is behind by at most its
/// current slice, one scheduler tick). Threads that exited are not counted,
/// unlike `utime`/`stime` (see `tree_cpu_ticks`, kept as a cross-check).
/// None when the root's schedstat cannot be read.
pub fn tree_cpu_ns(root: u32) -> Option<u64> {
    let tree = process_tree(root);
    let first = process_cpu_ns(*tree.first()?)?;
    Some(
        first
            + tree[1..]
                .iter()
                .filter_map(|&p| process_cpu_ns(p))
                .sum::<u64>(),
    )
}

/// Busy and total clock ticks of `cpus`, summed, from a `/proc/stat` text.
/// Busy is everything but idle and iowait; steal counts as busy, since a
/// stolen CPU is one the benchmark could not use either.
pub fn parse_cpu_ticks(text: &str, cpus: &[usize]) -> (u64, u64) {
    let mut busy = 0;
    let mut total = 0;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(cpu) = fields
            .next()
            .and_then(|f| f.strip_prefix("cpu"))
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if !cpus.contains(&cpu) {
            continue;
        }
        // user nice system idle iowait irq softirq steal (guest is in user).
        let v: Vec<u64> = fields.take(8).filter_map(|f| f.parse().ok()).collect();
        if v.len() == 8 {
            total += v.iter().sum::<u64>();
            busy += v.iter().sum::<u64>() - v[3] - v[4];
        }
    }
    (busy, total)
}

/// Busy and total clock ticks of `cpus` so far, from `/proc/stat`.
pub fn cpu_ticks(cpus: &[usize]) -> (u64, u64) {
    fs::read_to_string("/proc/stat").map_or((0, 0), |text| parse_cpu_ticks(&text, cpus))
}

/// The machine a report was measured on, for the report and its picture.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Machine {
    /// CPUs online (`/proc/stat`'s `cpuN` lines).
    pub cpus: usize,
    /// The first `model name` of `/proc/cpuinfo` ("" when absent).
    pub model: String,
    /// Kernel release (`/proc/sys/kernel/osrelease`).
    pub kernel: String,
    /// When the run ended, UTC, `YYYY-MM-DD HH:MM`.
    pub date: String,
}

impl Machine {
    /// Reads this machine's facts and the time now.
    pub fn read() -> Machine {
        let read = |path: &str| fs::read_to_string(path).unwrap_or_default();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Machine {
            cpus: count_cpus(&read("/proc/stat")),
            model: cpu_model(&read("/proc/cpuinfo")),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            date: utc_date(now),
        }
    }

    /// One line: "2026-12-07 21:40 UTC, 2 CPUs (AMD EPYC 7B13), Linux 6.18.0".
    pub fn describe(&self) -> String {
        let model = if self.model.is_empty() {
            String::new()
        } else {
            format!(" ({})", self.model)
        };
        format!(
            "{} UTC, {} CPUs{model}, Linux {}",
            self.date, self.cpus, self.kernel
        )
    }
}

/// The `cpuN` lines of a `/proc/stat` text.
pub fn count_cpus(stat: &str) -> usize {
    stat.lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count()
}

/// The first `model name` of a `/proc/cpuinfo` text, spaces collapsed.
pub fn cpu_model(cpuinfo: &str) -> String {
    cpuinfo
        .lines()
        .find_map(|l| {
            let (key, value) = l.split_once(':')?;
            (key.trim() == "model name")
                .then(|| value.split_whitespace().collect::<Vec<_>>().join(" "))
        })
        .unwrap_or_default()
}

/// `secs` since the epoch as `YYYY-MM-DD HH:MM` (UTC), by the civil-from-days
/// algorithm (H. Hinnant), so no date crate is needed for one line.
pub fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let (hour, minute) = ((secs % 86_400) / 3600, (secs % 3600) / 60);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02} {hour:02}:{minute:02}")
}

/// Converts clock ticks to microseconds.
pub fn ticks_to_us(ticks: u64, ticks_per_second: u64) -> f64 {
    ticks as f64 * 1e6 / ticks_per_second.max(1) as f64
}

/// Reads a `kB` field such as `VmRSS` from a `/proc/PID/status` text.
pub fn parse_status_kib(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(key)?.strip_prefix(':')?;
        value.split_whitespace().next()?.parse().ok()
    })
}

/// Resident memory (sum of VmRSS, KiB) of `root`'s process tree.
pub fn tree_rss_kib(root: u32) -> u64 {
    process_tree(root)
        .into_iter()
        .filter_map(|pid| fs::read_to_string(format!("/proc/{pid}/status")).ok())
        .filter_map(|text| parse_status_kib(&text, "VmRSS"))
        .sum()
}

/// Samples the resident memory of several process trees every 50 ms on a
/// background thread and keeps each one's maximum: the peak is what a
/// server reaches under load, which a single reading after a round misses.
pub struct RssSampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Mutex<Vec<u64>>>,
    roots: Vec<u32>,
    thread: Option<JoinHandle<()>>,
}

impl RssSampler {
    /// Starts sampling the trees rooted at `roots`.
    pub fn start(roots: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks = Arc::new(Mutex::new(vec![0; roots.len()]));
        let thread = {
            let (stop, peaks, roots) = (stop.clone(), peaks.clone(), roots.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    sample(&roots, &peaks);
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        };
        RssSampler {
            stop,
            peaks,
            roots,
            thread: Some(thread),
        }
    }

    /// Takes one more sample now (end of a round) and returns the peaks so far.
    pub fn peaks(&self) -> Vec<u64> {
        sample(&self.roots, &self.peaks);
        self.peaks.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// Stops the thread and returns the peaks.
    pub fn finish(mut self) -> Vec<u64> {
        let peaks = self.peaks();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        peaks
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn sample(roots: &[u32], peaks: &Mutex<Vec<u64>>) {
    let now: Vec<u64> = roots.iter().map(|&r| tree_rss_kib(r)).collect();
    if let Ok(mut peaks) = peaks.lock() {
        for (peak, value) in peaks.iter_mut().zip(now) {
            *peak = (*peak).max(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_command_names() {
        let line = "4469 (nginx: a) b) S 1 4469 4469 0 -1 4194624 129 0 0 0 7 3 0 0 20 0 1 0 \
                    123 10000 200 18446744073709551615";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                ppid: 1,
                utime: 7,
                stime: 3
            })
        );
        assert_eq!(parse_stat("12 (x) S 1"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        let stat = read_stat(me).expect("own stat");
        assert!(stat.ppid > 0);
        assert!(tree_rss_kib(me) > 0);
        assert_eq!(process_tree(me)[0], me);
    }

    #[test]
    fn parses_status_fields() {
        let text = "Name:\tnginx\nVmHWM:\t    5000 kB\nVmRSS:\t    4321 kB\n";
        assert_eq!(parse_status_kib(text, "VmRSS"), Some(4321));
        assert_eq!(parse_status_kib(text, "VmHWM"), Some(5000));
        assert_eq!(parse_status_kib(text, "VmSwap"), None);
    }

    #[test]
    fn reads_cpu_ticks() {
        let text = "cpu  9 9 9 9 9 9 9 9 0 0\n\
                    cpu0 10 1 5 100 4 0 2 3 0 0\n\
                    cpu1 20 0 10 50 0 0 0 0 0 0\n\
                    intr 1 2 3\n";
        assert_eq!(parse_cpu_ticks(text, &[0]), (21, 125));
        assert_eq!(parse_cpu_ticks(text, &[0, 1]), (51, 205));
        assert_eq!(parse_cpu_ticks(text, &[7]), (0, 0));
        let (busy, total) = cpu_ticks(&[0]);
        assert!(total > 0 && busy <= total);
    }

    #[test]
    fn reads_schedstat() {
        assert_eq!(parse_schedstat_ns("123456789 2000 17\n"), Some(123_456_789));
        assert_eq!(parse_schedstat_ns(""), None);
        assert_eq!(parse_schedstat_ns("x 1 2"), None);
        // This process has run: some ns. This thread's own count grows with a
        // spin (the process's may not: other tests' threads end meanwhile,
        // and an exited thread leaves the sum).
        assert!(tree_cpu_ns(std::process::id()).expect("own schedstat") > 0);
        let mine = || {
            let text = fs::read_to_string("/proc/thread-self/schedstat").unwrap();
            parse_schedstat_ns(&text).unwrap()
        };
        let before = mine();
        let spin = std::time::Instant::now();
        while spin.elapsed() < Duration::from_millis(20) {}
        let after = mine();
        assert!(after > before, "{before} -> {after}");
        assert_eq!(process_cpu_ns(u32::MAX), None);
    }

    #[test]
    fn reads_the_machine() {
        assert_eq!(utc_date(0), "1970-01-01 00:00");
        assert_eq!(utc_date(951_782_400 + 3600 + 120), "2000-02-29 01:02");
        assert_eq!(utc_date(1_796_680_800), "2026-12-07 22:00");
        assert_eq!(count_cpus("cpu  1 2\ncpu0 1\ncpu1 2\nintr 5\n"), 2);
        assert_eq!(
            cpu_model("processor\t: 0\nmodel name\t: AMD  EPYC 7B13\nmodel name: x\n"),
            "AMD EPYC 7B13"
        );
        let m = Machine::read();
        assert!(m.cpus >= 1 && !m.kernel.is_empty(), "{m:?}");
        assert!(m.describe().contains(" UTC, "), "{}", m.describe());
    }

    #[test]
    fn converts_ticks() {
        assert_eq!(ticks_to_us(3, 100), 30_000.0);
        assert_eq!(ticks_to_us(0, 0), 0.0);
    }
}
