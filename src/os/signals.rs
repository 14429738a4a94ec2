//! Signals owned by one thread: the mask every thread inherits, and the
//! signalfd the supervisor reads them from.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The signals the supervisor thread handles (see `lifecycle`); every other
/// thread has them blocked. SIGCHLD among them: the end of an upgrade's new process, or of a descendant
/// it left behind, wakes the supervisor to reap it.
const HANDLED_SIGNALS: [libc::c_int; 6] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR2,
    libc::SIGHUP,
    libc::SIGCHLD,
];

/// Signals a user or supervisor may send that would end the process by default
/// but mean nothing to the server: the supervisor thread reads them too, and
/// logs one line each (`SIGUSR1: ignored`) instead of dying.
pub const IGNORED_SIGNALS: [libc::c_int; 6] = [
    libc::SIGUSR1,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGPWR,
    libc::SIGSTKFLT,
];

/// The name of a signal the [`SignalFd`] reads, for a log line.
pub fn signal_name(sig: libc::c_int) -> &'static str {
    match sig {
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGHUP => "SIGHUP",
        libc::SIGCHLD => "SIGCHLD",
        libc::SIGALRM => "SIGALRM",
        libc::SIGVTALRM => "SIGVTALRM",
        libc::SIGPROF => "SIGPROF",
        libc::SIGPWR => "SIGPWR",
        libc::SIGSTKFLT => "SIGSTKFLT",
        _ => "a signal",
    }
}

/// Every signal read from the [`SignalFd`].
fn watched_signals() -> libc::sigset_t {
    let mut all = [0; HANDLED_SIGNALS.len() + IGNORED_SIGNALS.len()];
    all[..HANDLED_SIGNALS.len()].copy_from_slice(&HANDLED_SIGNALS);
    all[HANDLED_SIGNALS.len()..].copy_from_slice(&IGNORED_SIGNALS);
    signal_set(&all)
}

pub(super) fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset takes valid signal numbers.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &sig in signals {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

/// Blocks the handled signals in the calling thread, and so in every thread it
/// starts afterwards: only [`SignalFd`] receives them. SIGPIPE is ignored
/// outright (sends use MSG_NOSIGNAL anyway).
pub fn block_signals() -> io::Result<()> {
    let set = watched_signals();
    // SAFETY: a valid, initialised set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(())
}

/// The handled signals as a readable fd, so that one `poll` waits for a signal
/// and for an upgrade's new process at once. They must be blocked first
/// ([`block_signals`]).
#[derive(Debug)]
pub struct SignalFd(OwnedFd);

impl SignalFd {
    /// A close-on-exec signalfd for the handled signals.
    pub fn new() -> io::Result<SignalFd> {
        let set = watched_signals();
        // SAFETY: a valid set; -1 asks for a new fd.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a new fd that nothing else owns.
        Ok(SignalFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Waits for the next signal and returns its number.
    pub fn read(&self) -> io::Result<libc::c_int> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        loop {
            // SAFETY: the buffer is exactly one signalfd_siginfo.
            let n = unsafe { libc::read(self.0.as_raw_fd(), info.as_mut_ptr().cast(), size) };
            if n == size as isize {
                // SAFETY: the kernel filled the whole struct.
                return Ok(unsafe { info.assume_init() }.ssi_signo as libc::c_int);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}
