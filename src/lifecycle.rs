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

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::config::Config;
use crate::os::{self, Exec, ListenPid, SignalFd, Wait};
use crate::worker::Shared;
use crate::{debug, warn};

/// How an accept thread stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// SIGTERM/SIGINT: take what waits in the listen backlog, close the
    /// listeners (new connections are refused), close connections that have not
    /// completed a request, answer the complete ones.
    Stop,
    /// A new process serves the same sockets: stop accepting at once without
    /// touching the backlog (it is the new process's now), and finish every
    /// connection already accepted, incomplete requests included.
    Handover,
}

const RUNNING: u8 = 0;
const STOP: u8 = 1;
const HANDOVER: u8 = 2;

/// The stop request every loop watches for; the first request wins.
pub struct Shutdown {
    state: AtomicU8,
    shared: Arc<Shared>,
}

impl Shutdown {
    pub(crate) fn new(shared: Arc<Shared>) -> Shutdown {
        Shutdown {
            state: AtomicU8::new(RUNNING),
            shared,
        }
    }

    /// The requested drain, if any.
    pub fn requested(&self) -> Option<Drain> {
        match self.state.load(Ordering::SeqCst) {
            STOP => Some(Drain::Stop),
            HANDOVER => Some(Drain::Handover),
            _ => None,
        }
    }

    /// Requests `how`; false if a drain was already requested (which stands).
    fn trigger(&self, how: Drain) -> bool {
        let to = match how {
            Drain::Stop => STOP,
            Drain::Handover => HANDOVER,
        };
        if self
            .state
            .compare_exchange(RUNNING, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        // A loop that has already stopped ignores the ring (its sender is shut).
        for mailbox in self.shared.mailboxes() {
            mailbox.ring();
        }
        true
    }
}

/// Asks a running server to stop gracefully (what SIGTERM does).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<Shutdown>);

impl ShutdownHandle {
    pub(crate) fn new(shutdown: Arc<Shutdown>) -> ShutdownHandle {
        ShutdownHandle(shutdown)
    }

    /// Starts the graceful drain; later calls do nothing.
    pub fn shutdown(&self) {
        self.0.trigger(Drain::Stop);
    }

    /// Stops accepting because another process serves the listeners now.
    fn hand_over(&self) -> bool {
        self.0.trigger(Drain::Handover)
    }

    fn draining(&self) -> bool {
        self.0.requested().is_some()
    }
}

/// What the supervisor needs to start our successor.
pub struct UpgradePlan {
    /// The executable's path as we were started from it: a new binary
    /// installed there is what SIGUSR2 starts.
    pub exe: PathBuf,
    /// Our command line, `argv[0]` included, passed on unchanged.
    pub args: Vec<OsString>,
    /// Every distinct listening socket, handed over as fds 3, 4, ...
    pub listeners: Vec<RawFd>,
    /// How long the new process has to report that it serves.
    pub timeout: Duration,
    /// How long a new process that did not serve has, after SIGTERM, before
    /// SIGKILL: our own drain bound (it has our command line), and a little.
    pub stop_grace: Duration,
    /// `--pid-file`: a new process that wrote its pid there and then did not
    /// take over leaves it naming a process that is gone; we write ours again.
    pub pid_file: Option<PathBuf>,
}

impl UpgradePlan {
    /// The plan for this process: `exe` and `args` are read now, at start-up,
    /// before anything can replace the binary or `-d` change directory.
    pub fn new(config: &Config, listeners: Vec<RawFd>) -> io::Result<UpgradePlan> {
        let exe = exe_path()?;
        // The successor gets the absolute path as its argv[0]: it resolves its
        // own successor from it, after -d has moved the cwd to /var/tmp, where a
        // relative `./conn-daemon` would name a file anybody can put there.
        let args = std::iter::once(exe.clone().into_os_string())
            .chain(std::env::args_os().skip(1))
            .collect();
        Ok(UpgradePlan {
            exe,
            args,
            listeners,
            timeout: config.upgrade_timeout,
            stop_grace: config.shutdown_timeout + Duration::from_millis(500),
            pid_file: config.pid_file.clone(),
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
struct Pending {
    pid: libc::pid_t,
    phase: Phase,
}

/// Where a new process stands.
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

/// The signal thread.
pub struct Supervisor {
    signals: SignalFd,
    shutdown: ShutdownHandle,
    plan: UpgradePlan,
    pending: Option<Pending>,
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

    /// Exits with status 1 at once; a new process that has not taken over yet
    /// goes with us (its whole group), so that nothing serves afterwards.
    fn exit_now(&mut self) -> ! {
        if let Some(p) = self.pending.take() {
            os::kill_group(p.pid, libc::SIGKILL);
        }
        os::exit_now(1)
    }

    /// A stop request: the drain, once; an upgrade under way is abandoned.
    fn drain(&mut self, why: &str) {
        if !self.shutdown.draining() {
            debug!("{why}: draining");
            os::sd_notify("STOPPING=1\nSTATUS=draining");
            self.shutdown.shutdown();
        }
        if self
            .pending
            .as_ref()
            .is_some_and(|p| matches!(p.phase, Phase::Starting { .. }))
        {
            self.upgrade_failed(Failure::Abandoned);
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
        env.push(format!("LISTEN_FDS={n}").into());
        env.push(format!("LISTEN_FDNAMES={}", vec!["conn-daemon"; n].join(":")).into());
        env.push(format!("{}={}", os::READY_FD_VAR, 3 + n).into());
        env.push(format!("{}={}", os::UPGRADES_VAR, crate::metrics::upgrades() + 1).into());
        let mut fds = self.plan.listeners.clone();
        fds.push(ready_tx.as_raw_fd());
        let mut exec = Exec::new(
            self.plan.exe.as_os_str(),
            &self.plan.args,
            env,
            ListenPid::OfTheChild,
            fds,
        )?;
        let pid = exec.spawn()?;
        // Only the child may hold the write end, so that its exit is our EOF.
        drop(ready_tx);
        Ok(Pending {
            pid,
            phase: Phase::Starting {
                ready: fs::File::from(ready_rx),
                deadline: Instant::now() + self.plan.timeout,
            },
        })
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
        // A new executable that daemonized after all (an older version): our
        // child forked the server and exited.
        let _ = os::reap(pending.pid, Wait::NoHang);
        if self.shutdown.hand_over() {
            crate::metrics::count_upgrade();
            warn!("upgrade: new process {text} serves; draining and exiting");
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
        let pid = p.pid;
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
/// half written. The temporary file is always a new one (`O_EXCL`, and
/// `O_NOFOLLOW` besides): a symlink planted under its name is never followed, so
/// the pid cannot be written through it into another file; a name that exists
/// is skipped for the next.
fn write_pid_file(path: &Path, pid: u32) -> io::Result<()> {
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
            Ok(mut file) => {
                let written = file.write_all(format!("{pid}\n").as_bytes());
                drop(file);
                if let Err(e) = written.and_then(|()| fs::rename(&tmp, path)) {
                    let _ = fs::remove_file(&tmp);
                    return Err(e);
                }
                return Ok(());
            }
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
