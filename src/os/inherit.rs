//! What a parent process hands this one: socket activation's fds, and an
//! upgrading conn-daemon's readiness pipe and upgrade count.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// What a parent process handed this one: listening sockets by the systemd
/// socket-activation convention (`LISTEN_PID`, `LISTEN_FDS`; fds 3, 4, ...),
/// and, from an upgrading conn-daemon, the pipe to report readiness on
/// (`CONN_DAEMON_READY_FD`) and how many upgrades came before
/// (`CONN_DAEMON_UPGRADES`).
#[derive(Debug, Default)]
pub struct Inherited {
    /// The listening sockets, in the order given (not yet checked).
    pub listeners: Vec<OwnedFd>,
    /// The socket named `metrics` in `LISTEN_FDNAMES`: the `--metrics`
    /// listener an upgrading conn-daemon hands over (not yet checked).
    pub metrics: Option<OwnedFd>,
    /// Where to write our pid once we serve, if an old process waits for it.
    pub ready: Option<OwnedFd>,
    /// Upgrades in this server's lineage so far.
    pub upgrades: u64,
    /// The lineage's counters (`CONN_DAEMON_COUNTERS_FD`): a memfd every
    /// generation counts in (not yet checked).
    pub counters: Option<OwnedFd>,
    /// Whether an upgrading conn-daemon started us (it counts upgrades, and
    /// handed us sockets): we are detached already if it was (`-d`), and must
    /// stay the process it started, the one it can stop.
    pub from_upgrade: bool,
}

/// Environment variable naming the readiness pipe of an upgrade.
pub const READY_FD_VAR: &str = "CONN_DAEMON_READY_FD";
/// Environment variable naming the lineage's counters (a memfd).
pub const COUNTERS_FD_VAR: &str = "CONN_DAEMON_COUNTERS_FD";
/// Environment variable counting the upgrades in a lineage.
pub const UPGRADES_VAR: &str = "CONN_DAEMON_UPGRADES";
/// The `LISTEN_FDNAMES` name of the `--metrics` listener among inherited fds.
pub const METRICS_FD_NAME: &str = "metrics";
/// The socket-activation variables, which are never passed on as they are.
pub const ACTIVATION_VARS: [&str; 3] = ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"];

/// Why what the environment hands this process cannot be taken.
#[derive(Debug)]
pub enum InheritError {
    /// A variable is set but is not a number.
    NotANumber {
        /// The variable.
        var: &'static str,
        /// Its value.
        text: String,
    },
    /// A variable names an fd that is not open.
    NotOpen {
        /// The fd.
        fd: RawFd,
        /// What `fcntl(F_GETFD)` said.
        cause: io::Error,
    },
    /// `CONN_DAEMON_READY_FD` names standard input, output or error.
    Stdio {
        /// The fd (0, 1 or 2).
        fd: RawFd,
    },
    /// `CONN_DAEMON_READY_FD` names an fd that `LISTEN_FDS` hands over as a
    /// socket already: one fd cannot be both (it would be closed after the
    /// readiness write under the loop watching it).
    ClaimedTwice {
        /// The fd.
        fd: RawFd,
        /// `LISTEN_FDS`: the sockets are fds 3 to 2 + this.
        listen_fds: u32,
    },
}

impl std::fmt::Display for InheritError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InheritError::NotANumber { var, text } => write!(f, "{var}={text:?} is not a number"),
            InheritError::NotOpen { fd, .. } => write!(f, "inherited fd {fd} is not open"),
            InheritError::Stdio { fd } => {
                let name = ["standard input", "standard output", "standard error"]
                    .get(*fd as usize)
                    .copied()
                    .unwrap_or("a standard stream");
                write!(
                    f,
                    "{READY_FD_VAR}={fd} names {name}, not a readiness pipe \
                     (an upgrading conn-daemon hands it over as fd 3 or above)"
                )
            }
            InheritError::ClaimedTwice { fd, listen_fds } => write!(
                f,
                "{READY_FD_VAR}={fd} names an inherited socket (LISTEN_FDS={listen_fds} \
                 hands over fds 3 to {}), not a readiness pipe (an upgrading conn-daemon \
                 hands it over after the sockets)",
                2 + listen_fds
            ),
        }
    }
}

impl std::error::Error for InheritError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            InheritError::NotOpen { cause, .. } => Some(cause),
            _ => None,
        }
    }
}

/// Claims what the environment hands this process (see [`Inherited`]); the
/// fds are claimed on the first call only, later calls get nothing. Sockets
/// meant for another pid (`LISTEN_PID` differs) are ignored, as systemd's
/// `sd_listen_fds` does. Err: a variable that is set but malformed or names an fd
/// that is not open, or a readiness pipe on fd 0, 1 or 2 or on one of the
/// sockets.
pub fn take_inherited() -> Result<Inherited, InheritError> {
    static TAKEN: AtomicBool = AtomicBool::new(false);
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Inherited::default());
    }
    let var = |name: &str| std::env::var(name).ok();
    let number = |var: &'static str, text: String| {
        text.parse::<u32>()
            .map_err(|_| InheritError::NotANumber { var, text })
    };
    let mut inherited = Inherited::default();
    if let Some(text) = var(UPGRADES_VAR) {
        inherited.upgrades = u64::from(number(UPGRADES_VAR, text)?);
    }
    let ours = var("LISTEN_PID").is_some_and(|p| p.parse::<u32>() == Ok(std::process::id()));
    if let (true, Some(text)) = (ours, var("LISTEN_FDS")) {
        inherited.from_upgrade = var(UPGRADES_VAR).is_some();
        let n = number("LISTEN_FDS", text)?;
        let names = var("LISTEN_FDNAMES").unwrap_or_default();
        let mut names = names.split(':');
        for fd in 3..3u32.saturating_add(n) {
            let fd = claim_fd(fd as RawFd)?;
            match names.next() {
                Some(METRICS_FD_NAME) if inherited.metrics.is_none() => {
                    inherited.metrics = Some(fd)
                }
                _ => inherited.listeners.push(fd),
            }
        }
        if let Some(text) = var(READY_FD_VAR) {
            let fd = number(READY_FD_VAR, text)? as RawFd;
            // Closing a standard stream on the way would hide our own output.
            if (0..3).contains(&fd) {
                return Err(InheritError::Stdio { fd });
            }
            // Each fd has one owner: a socket claimed above is not a pipe too.
            if (3..3i64.saturating_add(i64::from(n))).contains(&i64::from(fd)) {
                return Err(InheritError::ClaimedTwice { fd, listen_fds: n });
            }
            inherited.ready = Some(claim_fd(fd)?);
        }
        if let Some(text) = var(COUNTERS_FD_VAR) {
            let fd = number(COUNTERS_FD_VAR, text)? as RawFd;
            // Never a standard stream (closing it would hide our output):
            // the counters then start anew.
            if fd > 2 {
                inherited.counters = Some(claim_fd(fd)?);
            }
        }
    }
    Ok(inherited)
}

/// Takes ownership of an inherited fd (3 or above) and makes it close-on-exec,
/// so that it reaches a later upgrade only when handed over on purpose.
fn claim_fd(fd: RawFd) -> Result<OwnedFd, InheritError> {
    // SAFETY: fcntl on any number is harmless; it fails for a closed fd.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        let cause = io::Error::last_os_error();
        return Err(InheritError::NotOpen { fd, cause });
    }
    // SAFETY: as above.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) };
    // The environment hands this fd to this process, and nothing in it has
    // opened or claimed it (`take_inherited` runs once, at start-up, and fds 0-2
    // are refused before this).
    // SAFETY: so we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
