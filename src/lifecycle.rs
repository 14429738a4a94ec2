//! Signals, the graceful drain and the binary upgrade: one concern.
//!
//! One supervisor thread owns every handled signal (they are blocked everywhere
//! else from the first instruction of `main`) and reads them from a signalfd, so
//! that one `poll` also watches an upgrade's new process. The accept loops only
//! see the outcome: a [`Shutdown`] request, in one of two [`Drain`] modes, rung
//! through their `ev_async`.
//!
//! | signal | effect |
//! |---|---|
//! | SIGTERM | graceful drain; repeated, the same request (supervisors escalate with SIGKILL) |
//! | SIGINT | the same drain; a second SIGINT exits at once with status 1 |
//! | SIGQUIT | exits at once with status 1 |
//! | SIGUSR2, SIGHUP | zero-downtime upgrade to the executable at our own path |
//! | SIGUSR1, SIGALRM, SIGVTALRM, SIGPROF, SIGPWR, SIGSTKFLT | one line (`SIGUSR1: ignored`), nothing else |
//! | SIGCHLD | reaps what an upgrade left (we are its subreaper) |
//!
//! The upgrade follows nginx's and HAProxy's: the new process gets our listening
//! sockets as inherited fds by the systemd socket-activation convention (one
//! code path for systemd and upgrades), serves on those very sockets (so what
//! waits in their listen queues is served, not reset), and reports on a pipe
//! once it serves. Only then do we stop accepting and drain; if it fails in any
//! way, we log one line and go on serving. The pipe stays open: on it the
//! successor says that it stops or hands over in turn, so that one lineage
//! serves (see [`Supervisor`]).
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::os::{self, Exec, ListenPid, SignalFd, Wait};
pub use crate::shutdown::{Drain, Shutdown, ShutdownHandle};
use crate::{debug, info, warn};

/// Binary upgrades in this server's lineage (`conn_daemon_upgrades_total`):
/// counted here, by the process whose successor took over, and shown by the
/// metrics, which get [`UpgradeCount::shared`]. Rare enough for a
/// read-modify-write from any thread.
#[derive(Clone, Debug, Default)]
pub struct UpgradeCount(Arc<AtomicU64>);

impl UpgradeCount {
    /// Starts from the upgrades that came before this process (a new process
    /// inherits its predecessor's count, plus the upgrade that started it).
    pub fn new(before: u64) -> UpgradeCount {
        UpgradeCount(Arc::new(AtomicU64::new(before)))
    }

    /// Upgrades so far (a successor starts from this plus one).
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    /// The counter itself, for the metrics to read.
    pub fn shared(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.0)
    }

    /// Counts one upgrade: our successor serves.
    fn count(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the supervisor needs to start our successor.
#[derive(Debug)]
pub struct UpgradePlan {
    /// The executable's path as we were started from it: a new binary
    /// installed there is what SIGUSR2 starts.
    pub exe: PathBuf,
    /// Our command line, `argv[0]` included, passed on unchanged.
    pub args: Vec<OsString>,
    /// A copy of every distinct listening socket, handed over as fds 3, 4, ...
    /// Copies, so that they stay open while the accept loops drain after a
    /// handover (a new process that dies then gets a replacement on them) and
    /// are never fds the loops closed; closed when a SIGTERM/SIGINT drain
    /// starts, so that the listeners close (and refuse) with the loops' own.
    listeners: Vec<OwnedFd>,
    /// A copy of the `--metrics` listener, handed over after them (named
    /// `metrics`), so that scrapes go on across the upgrade on one socket.
    metrics: Option<OwnedFd>,
    /// How long the new process has to report that it serves.
    pub timeout: Duration,
    /// How long a new process that did not serve has, after SIGTERM, before
    /// SIGKILL: our own drain bound (it has our command line), and a little.
    pub stop_grace: Duration,
    /// `--pid-file`: a new process that wrote its pid there and then did not
    /// take over leaves it naming a process that is gone; we write ours again.
    pub pid_file: Option<PathBuf>,
    /// The lineage's upgrades: passed on (plus one), and counted on success.
    pub upgrades: UpgradeCount,
    /// A copy of the lineage's counters (a memfd), handed over after the
    /// readiness pipe (`CONN_DAEMON_COUNTERS_FD`).
    counters: Option<OwnedFd>,
}

impl UpgradePlan {
    /// The plan for this process: `exe` and `args` are read now, at start-up,
    /// before anything can replace the binary or `-d` change directory; the
    /// sockets (the server's, still open) are copied.
    pub fn new(
        config: &Config,
        listeners: Vec<RawFd>,
        metrics: Option<RawFd>,
        upgrades: UpgradeCount,
    ) -> io::Result<UpgradePlan> {
        let exe = exe_path()?;
        // The successor gets the absolute path as its argv[0]: it resolves its
        // own successor from it, after -d has moved the cwd to /var/tmp, where a
        // relative `./conn-daemon` would name a file anybody can put there.
        let args = std::iter::once(exe.clone().into_os_string())
            .chain(std::env::args_os().skip(1))
            .collect();
        let listeners = listeners
            .into_iter()
            .map(os::dup)
            .collect::<io::Result<Vec<_>>>()?;
        let metrics = metrics.map(os::dup).transpose()?;
        Ok(UpgradePlan {
            exe,
            args,
            listeners,
            metrics,
            timeout: config.upgrade_timeout,
            stop_grace: config.shutdown_timeout + Duration::from_millis(500),
            pid_file: config.pid_file.clone(),
            upgrades,
            counters: None,
        })
    }

    /// This plan, handing the lineage's counters (`fd`, copied) over too.
    pub fn with_counters(mut self, fd: Option<RawFd>) -> io::Result<UpgradePlan> {
        self.counters = fd.map(os::dup).transpose()?;
        Ok(self)
    }
}

/// The path we were started from, as the caller wrote it: `argv[0]` made
/// absolute, or found on `PATH`. Not `/proc/self/exe`, which resolves
/// symlinks: with the common `current -> releases/v2` layout, re-pointing the
/// link must upgrade to v2, not restart v1.
fn exe_path() -> io::Result<PathBuf> {
    let Some(argv0) = std::env::args_os().next().map(PathBuf::from) else {
        return std::env::current_exe();
    };
    if argv0.components().count() > 1 {
        return std::path::absolute(&argv0);
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(&argv0))
            .find(|p| p.is_file())
    });
    match on_path {
        Some(p) => std::path::absolute(p),
        None => std::env::current_exe(),
    }
}

/// An upgrade under way: the new process (the leader of a process group of its
/// own) and where it stands.
#[derive(Debug)]
struct Pending {
    pid: libc::pid_t,
    phase: Phase,
    /// Our own binary again, started because the new process that had taken
    /// over ended while we drain; it takes over the listeners, not the upgrade.
    replacement: bool,
}

/// The new process that took over while we drain.
#[derive(Debug)]
struct Successor {
    /// The pid that serves (the one it wrote on the pipe).
    pid: libc::pid_t,
    /// The child we started (another pid if it daemonized after all).
    child: libc::pid_t,
    /// Its readiness pipe, kept open: where it says that it stops, or that it
    /// handed over in turn ([`Word`]). `None` once it closed.
    pipe: Option<fs::File>,
    /// What it said last, if anything.
    word: Option<Word>,
}

/// What a successor says on its readiness pipe after its pid: each a line,
/// and each means that the generation it took over from never takes anything
/// back (one lineage: see [`Supervisor`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Word {
    /// `stopping`: a SIGTERM, SIGINT or SIGQUIT reached it; a stop is final.
    Stopping,
    /// `handed over to PID`: its own successor serves now.
    HandedOver(libc::pid_t),
}

impl Word {
    fn parse(line: &str) -> Option<Word> {
        match line {
            "stopping" => Some(Word::Stopping),
            _ => line
                .strip_prefix("handed over to ")
                .and_then(|pid| pid.parse().ok())
                .map(Word::HandedOver),
        }
    }

    fn line(self) -> String {
        match self {
            Word::Stopping => "stopping\n".to_string(),
            Word::HandedOver(pid) => format!("handed over to {pid}\n"),
        }
    }
}

/// Where a new process stands.
#[derive(Debug)]
enum Phase {
    /// Started; we wait for its pid on the pipe until `deadline`.
    Starting { ready: fs::File, deadline: Instant },
    /// Given up on: being stopped, with everything it started.
    Stopping(Stop),
}

/// A new process that did not serve, being stopped with every process it
/// started: its group, and those that left the group (a server that
/// daemonized), which, as we are their subreaper, are our children by then.
#[derive(Debug)]
struct Stop {
    why: Failure,
    /// When the next signal goes out.
    deadline: Instant,
    /// The last signal sent to all of them.
    sent: Sent,
    /// Its own status, once reaped.
    status: Option<os::Status>,
    /// Processes of the attempt reaped here besides it (they had left its
    /// group), and how they ended.
    escaped: Vec<(libc::pid_t, os::Status)>,
    /// Those sent the last signal (one that appears later gets it too).
    signalled: Vec<libc::pid_t>,
    /// It exited by itself, and what it left running was killed.
    killed_leftovers: bool,
}

/// How far the stopping of a new process has gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sent {
    /// Nothing yet (it closed its pipe: it is given a moment to be reaped).
    Nothing,
    /// SIGTERM: a conn-daemon that serves without saying so drains.
    Term,
    /// SIGKILL.
    Kill,
}

/// Why an upgrade did not complete.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Failure {
    /// It did not report that it serves within `--upgrade-timeout`.
    Silent,
    /// Its pipe closed without a pid: it ended (or closed it) before serving.
    Exited,
    /// We are shutting down (SIGTERM, SIGINT) before it reported.
    Abandoned,
}

/// How long a new process that ended by itself may take to be reaped after its
/// pipe closed, before its group is killed.
const EXIT_GRACE: Duration = Duration::from_secs(1);
/// How long processes sent SIGKILL may take to be gone before we say so.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How often the signal thread looks for the end of a new process it stops.
const STOP_POLL: Duration = Duration::from_millis(10);
/// How often it looks whether the new process that took over still lives
/// (SIGCHLD wakes it sooner).
const SUCCESSOR_POLL: Duration = Duration::from_millis(20);
/// What a replacement executes: our own binary, by inode, whatever is at our
/// path now (what is there may be what just failed).
const OWN_EXE: &str = "/proc/self/exe";

/// Whether a successor's exit was a deliberate one: 0 after a drain, 1 after
/// SIGQUIT or a second SIGINT. Anything else (a signal, another status) is a
/// crash, the one end that may bring a replacement.
fn stopped_on_purpose(status: os::Status) -> bool {
    matches!(status, os::Status::Exited(0 | 1))
}

/// The readiness pipe of the process we took over from (if an upgrade
/// started us), kept open after our pid is written on it: we say there that
/// we stop, or that we handed over in turn (`stopping`, `handed over to
/// PID`: one line each), so that it never
/// takes the listeners back while another generation serves or after a stop.
#[derive(Clone, Debug, Default)]
pub struct Predecessor(Arc<Mutex<Option<PredecessorPipe>>>);

#[derive(Debug)]
struct PredecessorPipe {
    pipe: fs::File,
    /// Our pid is written: it reads what follows as [`Word`]s.
    told_ready: bool,
}

impl Predecessor {
    /// The pipe an upgrading conn-daemon handed us (`CONN_DAEMON_READY_FD`).
    pub fn new(ready: Option<OwnedFd>) -> Predecessor {
        let pipe = ready.map(|fd| PredecessorPipe {
            pipe: fs::File::from(fd),
            told_ready: false,
        });
        Predecessor(Arc::new(Mutex::new(pipe)))
    }

    /// Writes `line` (one write, atomic on a pipe); a predecessor gone (EPIPE)
    /// closes our end.
    fn write(&self, line: &str, ready: bool) {
        let mut pipe = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = pipe.as_mut() else { return };
        if !ready && !p.told_ready {
            // Before our pid it would read a word as a failed start.
            return;
        }
        if (&p.pipe).write_all(line.as_bytes()).is_err() {
            *pipe = None;
        } else if ready {
            p.told_ready = true;
        }
    }

    fn say(&self, word: Word) {
        self.write(&word.line(), false);
    }
}

/// The signal thread.
///
/// One lineage through every upgrade: once a new process has taken over, the
/// generation that handed over never takes the listeners back on a deliberate
/// end of its successor (exit status 0 or 1, or a word on the pipe: it
/// stops, or handed over to a third). Only a crash of the process that serves
/// brings a replacement, from the newest generation that knows of no other
/// taking over (it still holds its copies of the listeners, and the pid file
/// names no other live process).
#[derive(Debug)]
pub struct Supervisor {
    signals: SignalFd,
    shutdown: ShutdownHandle,
    plan: UpgradePlan,
    predecessor: Predecessor,
    pending: Option<Pending>,
    /// The new process that took over while we drain: SIGQUIT ends it too, and
    /// if it crashes, a replacement serves the listeners.
    successor: Option<Successor>,
    /// The newest process a successor handed over to: SIGQUIT ends it too.
    newest: Option<libc::pid_t>,
    interrupted: bool,
}

impl Supervisor {
    /// A supervisor for the server behind `shutdown` (signals must be blocked
    /// already: see `os::block_signals`); `predecessor` is the pipe to the
    /// process we took over from, if any. Makes this process the subreaper of
    /// what its upgrades start.
    pub fn new(
        shutdown: ShutdownHandle,
        plan: UpgradePlan,
        predecessor: Predecessor,
    ) -> io::Result<Supervisor> {
        if let Err(e) = os::set_child_subreaper() {
            debug!("cannot become the subreaper of upgrades: {e}");
        }
        Ok(Supervisor {
            signals: SignalFd::new()?,
            shutdown,
            plan,
            predecessor,
            pending: None,
            successor: None,
            newest: None,
            interrupted: false,
        })
    }

    /// Starts the thread; it lives as long as the process.
    pub fn spawn(self) -> io::Result<()> {
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || self.run())
            .map(drop)
    }

    fn run(mut self) {
        loop {
            let now = Instant::now();
            let (pipe, timeout) = match self.pending.as_ref().map(|p| &p.phase) {
                None => match &self.successor {
                    Some(s) => (
                        s.pipe.as_ref().map(AsRawFd::as_raw_fd),
                        Some(SUCCESSOR_POLL),
                    ),
                    None => (None, None),
                },
                Some(Phase::Starting { ready, deadline }) => (
                    Some(ready.as_raw_fd()),
                    Some(deadline.saturating_duration_since(now)),
                ),
                Some(Phase::Stopping(stop)) => (
                    None,
                    Some(stop.deadline.saturating_duration_since(now).min(STOP_POLL)),
                ),
            };
            let (signal, ready) = match os::poll2(self.signals.as_raw_fd(), pipe, timeout) {
                Ok(r) => r,
                Err(e) => {
                    warn!("signal thread: poll failed: {e}");
                    thread::sleep(Duration::from_millis(100));
                    continue;
                }
            };
            if ready {
                if self.pending.is_some() {
                    self.upgrade_answered();
                } else {
                    self.successor_spoke();
                }
            }
            self.check_pending();
            self.check_successor();
            if signal {
                match self.signals.read() {
                    Ok(sig) => self.on_signal(sig),
                    Err(e) => warn!("signal thread: {e}"),
                }
            }
        }
    }

    fn on_signal(&mut self, sig: libc::c_int) {
        match sig {
            libc::SIGTERM => self.drain("SIGTERM"),
            libc::SIGINT if self.interrupted => {
                warn!("second SIGINT: exiting without draining");
                self.exit_now();
            }
            libc::SIGINT => {
                self.interrupted = true;
                self.drain("SIGINT (a second one exits at once)");
            }
            libc::SIGQUIT => {
                warn!("SIGQUIT: exiting without draining");
                self.exit_now();
            }
            libc::SIGUSR2 | libc::SIGHUP => self.start_upgrade(sig),
            libc::SIGCHLD => self.reap_adopted(),
            other => warn!("{}: ignored", os::signal_name(other)),
        }
    }

    /// Exits with status 1 at once. An upgrade's new process goes with us (its
    /// whole group, and everything below us), whether it has taken over or not
    /// yet, and so does the newest one it handed over to: "at once, nothing
    /// drained" must mean nothing serves afterwards, whichever side of the
    /// handover the signal lands on.
    fn exit_now(&mut self) -> ! {
        self.predecessor.say(Word::Stopping);
        if let Some(p) = self.pending.take() {
            os::kill_group(p.pid, libc::SIGKILL);
        }
        if let Some(s) = self.successor.take() {
            os::kill_group(s.pid, libc::SIGKILL);
            os::kill_group(s.child, libc::SIGKILL);
        }
        if let Some(pid) = self.newest.take() {
            os::kill_group(pid, libc::SIGKILL);
        }
        for p in os::descendants(own_pid()) {
            os::kill(p.pid, libc::SIGKILL);
        }
        os::exit_now(1)
    }

    /// A stop request: the drain, once; an upgrade under way is abandoned. A
    /// generation that drains after a handover gives up its copies of the
    /// listeners: it will not take them back.
    fn drain(&mut self, why: &str) {
        // The new process first: once our drain has begun the process may end
        // at any moment (with nothing to finish it ends at once, on another
        // thread), and a new process never told would serve on alone.
        if self
            .pending
            .as_ref()
            .is_some_and(|p| matches!(p.phase, Phase::Starting { .. }))
        {
            self.upgrade_failed(Failure::Abandoned);
        }
        // Before the listeners close: the generation before us drops its
        // copies at once, so new connections are refused, not left waiting.
        self.predecessor.say(Word::Stopping);
        self.give_up_listeners();
        if !self.shutdown.draining() {
            debug!("{why}: draining");
            os::sd_notify("STOPPING=1\nSTATUS=draining");
            self.shutdown.shutdown();
        }
    }

    /// Closes our copies of the listeners (and of `--metrics`): what we would
    /// hand to a new process. Once we drain and will not take the listeners
    /// back, a copy would only keep them open, so that new connections waited
    /// in a backlog nobody accepts from instead of being refused.
    fn give_up_listeners(&mut self) {
        self.plan.listeners.clear();
        self.plan.metrics = None;
    }

    fn start_upgrade(&mut self, sig: libc::c_int) {
        let name = os::signal_name(sig);
        if let Some(p) = &self.pending {
            warn!(
                "{name}: an upgrade is in progress (new process {}); ignored",
                p.pid
            );
            return;
        }
        if self.shutdown.draining() {
            warn!("{name}: draining; no upgrade");
            return;
        }
        match self.spawn_successor() {
            Ok(pending) => {
                info!(
                    "{name}: upgrade: started {} as pid {}",
                    self.plan.exe.display(),
                    pending.pid
                );
                os::sd_notify(&format!(
                    "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=upgrading: new process {}",
                    os::monotonic_usec(),
                    pending.pid
                ));
                self.pending = Some(pending);
            }
            Err(e) => warn!(
                "upgrade failed: cannot start {}: {e}; still serving",
                self.plan.exe.display()
            ),
        }
    }

    /// Everything is prepared here, before the fork: the child may not allocate.
    fn spawn_successor(&self) -> io::Result<Pending> {
        self.start_process(
            self.plan.exe.as_os_str(),
            self.plan.upgrades.get() + 1,
            false,
        )
    }

    /// Starts `exe` on our sockets with `upgrades` as its lineage's count.
    fn start_process(
        &self,
        exe: &std::ffi::OsStr,
        upgrades: u64,
        replacement: bool,
    ) -> io::Result<Pending> {
        let (ready_rx, ready_tx) = os::pipe()?;
        let n = self.plan.listeners.len();
        let mut env: Vec<OsString> = std::env::vars_os()
            .filter(|(k, _)| {
                !os::ACTIVATION_VARS.iter().any(|v| k == v)
                    && k != os::READY_FD_VAR
                    && k != os::UPGRADES_VAR
                    && k != os::COUNTERS_FD_VAR
            })
            .map(|(k, v)| {
                let mut kv = k;
                kv.push("=");
                kv.push(v);
                kv
            })
            .collect();
        let mut names = vec!["conn-daemon"; n];
        let mut fds: Vec<RawFd> = self.plan.listeners.iter().map(AsRawFd::as_raw_fd).collect();
        if let Some(fd) = &self.plan.metrics {
            names.push(os::METRICS_FD_NAME);
            fds.push(fd.as_raw_fd());
        }
        env.push(format!("LISTEN_FDS={}", fds.len()).into());
        env.push(format!("LISTEN_FDNAMES={}", names.join(":")).into());
        env.push(format!("{}={}", os::READY_FD_VAR, 3 + fds.len()).into());
        env.push(format!("{}={upgrades}", os::UPGRADES_VAR).into());
        fds.push(ready_tx.as_raw_fd());
        if let Some(fd) = &self.plan.counters {
            env.push(format!("{}={}", os::COUNTERS_FD_VAR, 3 + fds.len()).into());
            fds.push(fd.as_raw_fd());
        }
        let mut exec = Exec::new(exe, &self.plan.args, env, ListenPid::OfTheChild, fds)?;
        let pid = exec.spawn()?;
        // Only the child may hold the write end, so that its exit is our EOF.
        drop(ready_tx);
        Ok(Pending {
            pid,
            phase: Phase::Starting {
                ready: fs::File::from(ready_rx),
                deadline: Instant::now() + self.plan.timeout,
            },
            replacement,
        })
    }

    /// The successor's pipe is readable: its words, or EOF (it ended, or
    /// closed the pipe: an older version does so once it serves).
    fn successor_spoke(&mut self) {
        let Some(s) = &mut self.successor else { return };
        let Some(pipe) = &s.pipe else { return };
        let mut buf = [0u8; 256];
        let text = match (&*pipe).read(&mut buf) {
            Ok(n) if n > 0 => String::from_utf8_lossy(&buf[..n]).into_owned(),
            _ => {
                s.pipe = None;
                return;
            }
        };
        for word in text.lines().filter_map(Word::parse) {
            self.heard(word);
        }
    }

    /// Our successor stops, or handed over: we will never take back.
    fn heard(&mut self, word: Word) {
        let Some(s) = &mut self.successor else { return };
        s.word = Some(word);
        let pid = s.pid;
        match word {
            Word::Stopping => debug!("upgrade: new process {pid} stops; we finish our drain"),
            Word::HandedOver(newest) => {
                self.newest = Some(newest);
                debug!("upgrade: new process {pid} handed over to {newest}; we finish our drain");
            }
        }
        self.give_up_listeners();
    }

    /// While we drain after a handover: once the new process has ended, a
    /// crash of the one that serves brings our own binary again on the
    /// listeners we still hold (one line), so that something serves them; it
    /// writes the pid file once it serves. A deliberate end brings nothing.
    fn check_successor(&mut self) {
        let Some(s) = &self.successor else { return };
        if self.pending.is_some() {
            return;
        }
        let (pid, child) = (s.pid, s.child);
        let status = os::reap(pid, Wait::NoHang);
        if child != pid {
            os::reap(child, Wait::NoHang);
        }
        if status.is_none() && os::alive(pid) {
            return;
        }
        // A last word it wrote before it ended is in the pipe still.
        while self
            .successor
            .as_ref()
            .and_then(|s| s.pipe.as_ref())
            .is_some_and(|p| readable_now(p.as_raw_fd()))
        {
            self.successor_spoke();
        }
        let s = self.successor.take().expect("checked above");
        let ended = status.map_or("gone".to_string(), |st| st.to_string());
        let why = match (s.word, status) {
            (Some(Word::HandedOver(newest)), _) => Some(format!("it had handed over to {newest}")),
            (Some(Word::Stopping), _) => Some("it was stopping".to_string()),
            (None, Some(st)) if stopped_on_purpose(st) => Some("it was stopped".to_string()),
            _ if self.plan.listeners.is_empty() => Some("we were stopped".to_string()),
            _ => self
                .pid_file_names_another(pid)
                .map(|other| format!("the pid file names {other}, which serves")),
        };
        if let Some(why) = why {
            self.give_up_listeners();
            warn!("upgrade: new process {pid} ended while we drain ({ended}): {why}; nothing is started again");
            return;
        }
        match self.start_process(OsStr::new(OWN_EXE), self.plan.upgrades.get(), true) {
            Ok(pending) => {
                warn!(
                    "upgrade: new process {pid} ended while we drain ({ended}); \
                     our own binary serves the listeners again as pid {}",
                    pending.pid
                );
                self.pending = Some(pending);
            }
            Err(e) => warn!(
                "upgrade: new process {pid} ended while we drain ({ended}), \
                 and our own binary cannot be started again: {e}; nothing serves"
            ),
        }
    }

    /// A live process other than us and `gone` that the pid file names: one
    /// our successor started, which took over without a word reaching us.
    fn pid_file_names_another(&self, gone: libc::pid_t) -> Option<libc::pid_t> {
        let path = self.plan.pid_file.as_ref()?;
        let pid: libc::pid_t = fs::read_to_string(path).ok()?.trim().parse().ok()?;
        (pid != gone && pid != own_pid() && os::alive(pid)).then_some(pid)
    }

    /// SIGCHLD: reaps our children that ended and that nothing else waits for
    /// (a descendant of an upgrade whose parent ended before it, adopted as we
    /// are the subreaper), so that none is left a zombie. A new process being
    /// stopped is [`Supervisor::check_pending`]'s to reap, with what it left.
    fn reap_adopted(&mut self) {
        if matches!(
            self.pending.as_ref().map(|p| &p.phase),
            Some(Phase::Stopping(_))
        ) {
            return;
        }
        let ours = own_pid();
        let known = |pid| {
            self.pending.as_ref().is_some_and(|p| p.pid == pid)
                || self
                    .successor
                    .as_ref()
                    .is_some_and(|s| s.pid == pid || s.child == pid)
        };
        for p in os::descendants(ours) {
            if p.zombie && p.ppid == ours && !known(p.pid) {
                os::reap(p.pid, Wait::NoHang);
            }
        }
    }

    /// The pipe is readable: the new process's pid (it serves), or EOF (it
    /// ended, or closed the pipe without a word).
    fn upgrade_answered(&mut self) {
        let Some(Pending {
            phase: Phase::Starting { ready, .. },
            ..
        }) = &self.pending
        else {
            return;
        };
        let mut buf = [0u8; 256];
        let text = match (&*ready).read(&mut buf) {
            Ok(n) if n > 0 => String::from_utf8_lossy(&buf[..n]).into_owned(),
            _ => String::new(),
        };
        let mut lines = text.lines();
        let Some(first) = lines.next().map(str::trim).filter(|l| !l.is_empty()) else {
            self.upgrade_failed(Failure::Exited);
            return;
        };
        let first = first.to_string();
        let words: Vec<Word> = lines.filter_map(Word::parse).collect();
        let pending = self.pending.take().expect("checked above");
        let Phase::Starting { ready, .. } = pending.phase else {
            unreachable!("matched above")
        };
        // The pid it wrote is the server's, even if it daemonized after all
        // (an older version: our child forked the server and exited).
        let successor = Successor {
            pid: first.parse().unwrap_or(pending.pid),
            child: pending.pid,
            pipe: Some(ready),
            word: None,
        };
        let pid = successor.pid;
        if pending.replacement {
            warn!("upgrade: pid {pid} serves the listeners");
            self.successor = Some(successor);
        } else if !self.shutdown.draining() {
            // Said before the drain is asked for: the process may end at any
            // moment after (with nothing to finish at once, on another
            // thread). Only this thread asks for drains, so nothing can come
            // in between. The generation before us learns it first: it must
            // never take the listeners back from our successor.
            self.predecessor.say(Word::HandedOver(pid));
            self.successor = Some(successor);
            self.plan.upgrades.count();
            info!("upgrade: new process {pid} serves; draining and exiting");
            self.shutdown.hand_over();
        }
        for word in words {
            self.heard(word);
        }
    }

    /// Moves a new process that did not serve to [`Phase::Stopping`]: SIGTERM
    /// to its whole group and to every process it started that left the group
    /// (a new process that serves without saying so drains what it accepted,
    /// as any conn-daemon does on SIGTERM), and the line for an abandoned
    /// upgrade at once (we may exit before it ends).
    fn upgrade_failed(&mut self, why: Failure) {
        let Some(p) = &self.pending else { return };
        let pid = p.pid;
        if why == Failure::Abandoned {
            warn!(
                "upgrade abandoned: {} (pid {pid}): shutting down; sent it SIGTERM",
                self.plan.exe.display(),
            );
        }
        // One that closed its pipe has most likely ended: give it a moment to
        // be reaped before anything is sent.
        let (sent, grace) = match why {
            Failure::Exited => (Sent::Nothing, EXIT_GRACE),
            // The new process has our command line, so our drain bound.
            Failure::Silent | Failure::Abandoned => (Sent::Term, self.plan.stop_grace),
        };
        let mut stop = Stop {
            why,
            deadline: Instant::now() + grace,
            sent,
            status: None,
            escaped: Vec::new(),
            signalled: Vec::new(),
            killed_leftovers: false,
        };
        if sent == Sent::Term {
            os::kill_group(pid, libc::SIGTERM);
            stop.signal_strays(&self.attempt(pid), libc::SIGTERM);
        }
        if let Some(p) = &mut self.pending {
            p.phase = Phase::Stopping(stop);
        }
        self.check_pending();
    }

    /// The processes of a failed attempt `pid` that still run: every process
    /// below us but the generations that took over (a normal upgrade is only
    /// ever started while none has: all below us are its), or, for a
    /// replacement, what is below it.
    fn attempt(&self, pid: libc::pid_t) -> Vec<os::Proc> {
        let replacement = self.pending.as_ref().is_some_and(|p| p.replacement);
        let root = if replacement { pid } else { own_pid() };
        let mut procs = os::descendants(root);
        let lineage = |q: libc::pid_t| {
            self.newest == Some(q)
                || self
                    .successor
                    .as_ref()
                    .is_some_and(|s| s.pid == q || s.child == q)
        };
        procs.retain(|p| !lineage(p.pid));
        procs
    }

    /// The upgrade's timeout, and the end of a new process being stopped:
    /// logged only once it and everything it started are gone.
    fn check_pending(&mut self) {
        let Some(p) = &self.pending else { return };
        let now = Instant::now();
        if let Phase::Starting { deadline, .. } = p.phase {
            if now >= deadline {
                self.upgrade_failed(Failure::Silent);
            }
            return;
        }
        let pid = p.pid;
        let procs = self.attempt(pid);
        let ours = own_pid();
        let Some(Pending {
            phase: Phase::Stopping(stop),
            replacement,
            ..
        }) = &mut self.pending
        else {
            return;
        };
        let replacement = *replacement;
        if stop.status.is_none() {
            stop.status = os::reap(pid, Wait::NoHang);
        }
        // Those that left its group are our children by now (we are their
        // subreaper): reaped here, so that their end can be told. One whose
        // main thread shows as a zombie while its other threads still exit
        // cannot be reaped yet: it still counts.
        let mut live = Vec::new();
        for q in procs.into_iter().filter(|q| q.pid != pid) {
            if !q.zombie {
                live.push(q);
            } else if q.ppid == ours {
                match os::reap(q.pid, Wait::NoHang) {
                    Some(st) => stop.escaped.push((q.pid, st)),
                    None => live.push(q),
                }
            }
        }
        let done = stop.status.is_some() && live.is_empty();
        if !done {
            // One that closed its pipe and was reaped: what it left is killed.
            let leftovers = stop.why == Failure::Exited && stop.status.is_some();
            if leftovers && stop.sent != Sent::Kill {
                stop.killed_leftovers = true;
                stop.sent = Sent::Kill;
                stop.deadline = now + KILL_GRACE;
                os::kill_group(pid, libc::SIGKILL);
                stop.signalled.clear();
            } else if now >= stop.deadline {
                match stop.sent {
                    Sent::Nothing | Sent::Term => {
                        stop.sent = Sent::Kill;
                        stop.deadline = now + KILL_GRACE;
                        os::kill_group(pid, libc::SIGKILL);
                        stop.signalled.clear();
                    }
                    Sent::Kill => {}
                }
            }
            let sig = match stop.sent {
                Sent::Nothing => None,
                Sent::Term => Some(libc::SIGTERM),
                Sent::Kill => Some(libc::SIGKILL),
            };
            if let Some(sig) = sig {
                stop.signal_strays(&live, sig);
            }
            if !(stop.sent == Sent::Kill && now >= stop.deadline) {
                return;
            }
        }
        let Some(Pending {
            phase: Phase::Stopping(stop),
            ..
        }) = self.pending.take()
        else {
            return;
        };
        // Whatever it left in its group goes with it. Its pid cannot name
        // another group meanwhile: a pid still in use as a group id is not
        // reused.
        os::kill_group(pid, libc::SIGKILL);
        let mut ended = match stop.status.or_else(|| os::reap(pid, Wait::NoHang)) {
            Some(status) => status.to_string(),
            None => "it runs on after SIGKILL".to_string(),
        };
        for (q, st) in &stop.escaped {
            ended.push_str(&format!("; pid {q}, which left its process group: {st}"));
        }
        if !live.is_empty() {
            let pids: Vec<String> = live.iter().map(|q| q.pid.to_string()).collect();
            ended.push_str(&format!(
                "; still running after SIGKILL: {}",
                pids.join(", ")
            ));
        }
        let exe = self.plan.exe.display();
        let ms = self.plan.timeout.as_millis();
        let grace = self.plan.stop_grace.as_millis();
        let killed = stop.sent == Sent::Kill;
        let seen = match (stop.why, killed) {
            (Failure::Abandoned, false) => return,
            (Failure::Abandoned, true) => {
                warn!(
                    "upgrade abandoned: {exe} (pid {pid}): it did not stop within \
                     {grace} ms of SIGTERM ({ended})"
                );
                return;
            }
            (Failure::Exited, false) => "it exited before serving".to_string(),
            (Failure::Exited, true) if stop.killed_leftovers => {
                "it exited before serving; what it left running was killed".to_string()
            }
            (Failure::Exited, true) => {
                "it closed its pipe before serving and did not exit: killed".to_string()
            }
            (Failure::Silent, false) => {
                format!("it did not report that it serves within {ms} ms; stopped with SIGTERM")
            }
            (Failure::Silent, true) => format!(
                "it did not report that it serves within {ms} ms, nor stop within \
                 {grace} ms of SIGTERM: killed"
            ),
        };
        if replacement {
            warn!("upgrade: our own binary again (pid {pid}): {seen} ({ended}); nothing serves");
            return;
        }
        warn!("upgrade failed: {exe} (pid {pid}): {seen} ({ended}); still serving");
        if !self.shutdown.draining() {
            if let Some(path) = &self.plan.pid_file {
                if let Err(e) = write_pid_file(path, std::process::id()) {
                    warn!("cannot write the pid file {}: {e}", path.display());
                }
            }
            os::sd_notify("READY=1\nSTATUS=serving (upgrade failed)");
        }
    }
}

impl Stop {
    /// Sends `sig` to each of `procs` not sent it yet.
    fn signal_strays(&mut self, procs: &[os::Proc], sig: libc::c_int) {
        for q in procs.iter().filter(|q| !q.zombie) {
            if !self.signalled.contains(&q.pid) {
                os::kill(q.pid, sig);
                self.signalled.push(q.pid);
            }
        }
    }
}

/// Whether `fd` has something to read (or is at EOF) right now.
fn readable_now(fd: RawFd) -> bool {
    let mut fds = [libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }];
    os::poll(&mut fds, Some(Duration::ZERO)).is_ok_and(|n| n > 0)
}

/// This process's pid.
fn own_pid() -> libc::pid_t {
    std::process::id() as libc::pid_t
}

/// Tells whoever waits that this process serves now: the pid file, the old
/// process of an upgrade (through its pipe, which stays open for what we say
/// later), and the service manager.
pub fn announce_ready(pid_file: Option<&Path>, predecessor: &Predecessor, addresses: usize) {
    let pid = std::process::id();
    if let Some(path) = pid_file {
        if let Err(e) = write_pid_file(path, pid) {
            warn!("cannot write the pid file {}: {e}", path.display());
        }
    }
    predecessor.write(&format!("{pid}\n"), true);
    os::sd_notify(&format!(
        "MAINPID={pid}\nREADY=1\nSTATUS=serving on {addresses} address{}",
        if addresses == 1 { "" } else { "es" }
    ));
}

/// Replaces the file at once (write, then rename), so a reader never sees it
/// half written (the temporary file: see [`new_temp_file`]).
fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
    let (tmp, mut file) = new_temp_file(path, pid)?;
    let written = file.write_all(format!("{pid}\n").as_bytes());
    drop(file);
    if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(())
}

/// Checks at start-up that the pid file can be written where it is to be:
/// a temporary file beside it is created and removed (the pid file itself is
/// left alone: it may name a server still running). With `-d` nothing would
/// say so later (stderr is gone), and a detached server that nothing names
/// would run on.
pub fn check_pid_file(path: &Path) -> io::Result<()> {
    if path.is_dir() {
        return Err(io::Error::other("it is a directory"));
    }
    let (tmp, file) = new_temp_file(path, std::process::id())?;
    drop(file);
    fs::remove_file(&tmp)
}

/// A new file beside `path`, for the pid file's write and rename. Always a new
/// one (`O_EXCL`, and `O_NOFOLLOW` besides): a symlink planted under its name
/// is never followed, so the pid cannot be written through it into another
/// file; a name that exists is skipped for the next.
fn new_temp_file(path: &Path, pid: u32) -> io::Result<(PathBuf, fs::File)> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut last = None;
    for attempt in 0..64u32 {
        let mut tmp = path.as_os_str().to_owned();
        match attempt {
            0 => tmp.push(format!(".{pid}.tmp")),
            n => tmp.push(format!(".{pid}.{n}.tmp")),
        }
        let file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp);
        match file {
            Ok(file) => return Ok((PathBuf::from(tmp), file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::from(io::ErrorKind::AlreadyExists)))
}

/// Removes the pid file at exit, unless a successor has written its own pid.
pub fn remove_pid_file(path: &Path) {
    let ours = format!("{}\n", std::process::id());
    if fs::read_to_string(path).is_ok_and(|text| text == ours) {
        let _ = fs::remove_file(path);
    }
}
