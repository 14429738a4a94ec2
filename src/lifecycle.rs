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
//!
//! The upgrade follows nginx's and HAProxy's: the new process gets our listening
//! sockets as inherited fds by the systemd socket-activation convention (one
//! code path for systemd and upgrades), serves on those very sockets (so what
//! waits in their listen queues is served, not reset), and reports on a pipe
//! once it serves. Only then do we stop accepting and drain; if it fails in any
//! way, we log one line and go on serving.
#![forbid(unsafe_code)]

use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::os::{self, Exec, ListenPid, SignalFd, Wait};
pub use crate::shutdown::{Drain, Shutdown, ShutdownHandle};
use crate::{debug, warn};

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
        })
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
}

/// Where a new process stands.
#[derive(Debug)]
enum Phase {
    /// Started; we wait for its pid on the pipe until `deadline`.
    Starting { ready: fs::File, deadline: Instant },
    /// Given up on for `why`: its group was sent SIGTERM (unless it had exited
    /// already); SIGKILL follows at `deadline` if it has not ended by then.
    Stopping {
        why: Failure,
        deadline: Instant,
        sent_term: bool,
    },
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
/// How often the signal thread looks for the end of a new process it stops.
const STOP_POLL: Duration = Duration::from_millis(10);
/// How often it looks whether the new process that took over still lives.
const SUCCESSOR_POLL: Duration = Duration::from_millis(20);
/// What a replacement executes: our own binary, by inode, whatever is at our
/// path now (what is there may be what just failed).
const OWN_EXE: &str = "/proc/self/exe";

/// The signal thread.
#[derive(Debug)]
pub struct Supervisor {
    signals: SignalFd,
    shutdown: ShutdownHandle,
    plan: UpgradePlan,
    pending: Option<Pending>,
    /// The new process that took over while we drain: SIGQUIT ends it too, and
    /// if it ends, a replacement serves the listeners.
    successor: Option<Successor>,
    interrupted: bool,
}

impl Supervisor {
    /// A supervisor for the server behind `shutdown` (signals must be blocked
    /// already: see `os::block_signals`).
    pub fn new(shutdown: ShutdownHandle, plan: UpgradePlan) -> io::Result<Supervisor> {
        Ok(Supervisor {
            signals: SignalFd::new()?,
            shutdown,
            plan,
            pending: None,
            successor: None,
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
                None if self.successor.is_some() => (None, Some(SUCCESSOR_POLL)),
                None => (None, None),
                Some(Phase::Starting { ready, deadline }) => (
                    Some(ready.as_raw_fd()),
                    Some(deadline.saturating_duration_since(now)),
                ),
                Some(Phase::Stopping { deadline, .. }) => (
                    None,
                    Some(deadline.saturating_duration_since(now).min(STOP_POLL)),
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
                self.upgrade_answered();
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
            other => warn!("{}: ignored", os::signal_name(other)),
        }
    }

    /// Exits with status 1 at once. An upgrade's new process goes with us (its
    /// whole group), whether it has taken over or not yet: "at once, nothing
    /// drained" must mean nothing serves afterwards, whichever side of the
    /// handover the signal lands on.
    fn exit_now(&mut self) -> ! {
        if let Some(p) = self.pending.take() {
            os::kill_group(p.pid, libc::SIGKILL);
        }
        if let Some(s) = self.successor.take() {
            os::kill_group(s.pid, libc::SIGKILL);
            os::kill_group(s.child, libc::SIGKILL);
        }
        os::exit_now(1)
    }

    /// A stop request: the drain, once; an upgrade under way is abandoned.
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
        if !self.shutdown.draining() {
            debug!("{why}: draining");
            os::sd_notify("STOPPING=1\nSTATUS=draining");
            // Our copies must not keep the listeners open past the loops'.
            self.plan.listeners.clear();
            self.plan.metrics = None;
            self.successor = None;
            self.shutdown.shutdown();
        }
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
                debug!(
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

    /// While we drain after a handover: if the new process has ended, our own
    /// binary is started again on the listeners we still hold (one line), so
    /// that something serves them; it writes the pid file once it serves.
    fn check_successor(&mut self) {
        let Some(s) = &self.successor else { return };
        if self.pending.is_some() || self.shutdown.requested() != Some(Drain::Handover) {
            return;
        }
        let status = os::reap(s.child, Wait::NoHang);
        let gone = if s.pid == s.child {
            status.is_some()
        } else {
            !os::alive(s.pid)
        };
        if !gone {
            return;
        }
        let pid = s.pid;
        self.successor = None;
        let status = status.unwrap_or_else(|| "gone".into());
        match self.start_process(OsStr::new(OWN_EXE), self.plan.upgrades.get(), true) {
            Ok(pending) => {
                warn!(
                    "upgrade: new process {pid} ended while we drain ({status}); \
                     our own binary serves the listeners again as pid {}",
                    pending.pid
                );
                self.pending = Some(pending);
            }
            Err(e) => warn!(
                "upgrade: new process {pid} ended while we drain ({status}), \
                 and our own binary cannot be started again: {e}; nothing serves"
            ),
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
        let mut buf = [0u8; 32];
        let text = match (&*ready).read(&mut buf) {
            Ok(n) if n > 0 => String::from_utf8_lossy(&buf[..n]).trim().to_string(),
            _ => String::new(),
        };
        if text.is_empty() {
            self.upgrade_failed(Failure::Exited);
            return;
        }
        let pending = self.pending.take().expect("checked above");
        // The pid it wrote is the server's, even if it daemonized after all
        // (an older version: our child forked the server and exited).
        let successor = Successor {
            pid: text.parse().unwrap_or(pending.pid),
            child: pending.pid,
        };
        if pending.replacement {
            warn!("upgrade: pid {} serves the listeners", successor.pid);
            self.successor = Some(successor);
            return;
        }
        // Said before the drain is asked for: the process may end at any
        // moment after (with nothing to finish at once, on another thread).
        // Only this thread asks for drains, so nothing can come in between.
        if !self.shutdown.draining() {
            self.successor = Some(successor);
            self.plan.upgrades.count();
            warn!("upgrade: new process {text} serves; draining and exiting");
            self.shutdown.hand_over();
        }
    }

    /// Moves a new process that did not serve to [`Phase::Stopping`]: SIGTERM
    /// to its whole group (a new process that serves without saying so drains
    /// what it accepted, as any conn-daemon does on SIGTERM), and the line for
    /// an abandoned upgrade at once (we may exit before it ends).
    fn upgrade_failed(&mut self, why: Failure) {
        let Some(p) = &mut self.pending else { return };
        // One that closed its pipe has most likely ended: give it a moment to
        // be reaped before anything is sent.
        let sent_term = why != Failure::Exited;
        let grace = match why {
            Failure::Exited => EXIT_GRACE,
            // The new process has our command line, so our drain bound.
            Failure::Silent | Failure::Abandoned => self.plan.stop_grace,
        };
        if sent_term {
            os::kill_group(p.pid, libc::SIGTERM);
        }
        if why == Failure::Abandoned {
            warn!(
                "upgrade abandoned: {} (pid {}): shutting down; sent it SIGTERM",
                self.plan.exe.display(),
                p.pid
            );
        }
        p.phase = Phase::Stopping {
            why,
            deadline: Instant::now() + grace,
            sent_term,
        };
        self.check_pending();
    }

    /// The upgrade's timeout, and the end of a new process being stopped.
    fn check_pending(&mut self) {
        let Some(p) = &self.pending else { return };
        let now = Instant::now();
        let (why, deadline, sent_term) = match p.phase {
            Phase::Starting { deadline, .. } => {
                if now >= deadline {
                    self.upgrade_failed(Failure::Silent);
                }
                return;
            }
            Phase::Stopping {
                why,
                deadline,
                sent_term,
            } => (why, deadline, sent_term),
        };
        let (pid, replacement) = (p.pid, p.replacement);
        let (status, killed) = match os::reap(pid, Wait::NoHang) {
            Some(status) => (status, false),
            None if now < deadline => return,
            None => {
                os::kill_group(pid, libc::SIGKILL);
                (
                    os::reap(pid, Wait::Block).unwrap_or_else(|| "gone".into()),
                    true,
                )
            }
        };
        self.pending = None;
        // Whatever it left in its group (a script's children holding our
        // listening sockets) goes with it. Its pid cannot name another group
        // meanwhile: a pid still in use as a group id is not reused.
        os::kill_group(pid, libc::SIGKILL);
        let exe = self.plan.exe.display();
        let ms = self.plan.timeout.as_millis();
        let grace = self.plan.stop_grace.as_millis();
        let seen = match (why, sent_term, killed) {
            (Failure::Abandoned, _, false) => return,
            (Failure::Abandoned, _, true) => {
                warn!(
                    "upgrade abandoned: {exe} (pid {pid}): it did not stop within \
                     {grace} ms of SIGTERM ({status})"
                );
                return;
            }
            (Failure::Exited, _, false) => "it exited before serving".to_string(),
            (Failure::Exited, _, true) => {
                "it closed its pipe before serving and did not exit: killed".to_string()
            }
            (Failure::Silent, _, false) => {
                format!("it did not report that it serves within {ms} ms; stopped with SIGTERM")
            }
            (Failure::Silent, _, true) => format!(
                "it did not report that it serves within {ms} ms, nor stop within \
                 {grace} ms of SIGTERM: killed"
            ),
        };
        if replacement {
            warn!("upgrade: our own binary again (pid {pid}): {seen} ({status}); nothing serves");
            return;
        }
        warn!("upgrade failed: {exe} (pid {pid}): {seen} ({status}); still serving");
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

/// Tells whoever waits that this process serves now: the pid file, the old
/// process of an upgrade (through its pipe), and the service manager.
pub fn announce_ready(pid_file: Option<&Path>, ready: Option<OwnedFd>, addresses: usize) {
    let pid = std::process::id();
    if let Some(path) = pid_file {
        if let Err(e) = write_pid_file(path, pid) {
            warn!("cannot write the pid file {}: {e}", path.display());
        }
    }
    if let Some(fd) = ready {
        let _ = fs::File::from(fd).write_all(format!("{pid}\n").as_bytes());
    }
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
