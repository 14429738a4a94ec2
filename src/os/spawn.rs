//! Starting a new binary with inherited fds (fork, then only async-signal-safe
//! calls until `execve`), and stopping and reaping it.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use super::signals::signal_set;

/// A close-on-exec pipe: (read end, write end).
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two ends.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new fds that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Everything `execve` needs, built before the fork: a threaded process may not
/// allocate (or take any lock) between `fork` and `exec`.
#[derive(Debug)]
pub struct Exec {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    env: Vec<Vec<u8>>,
    env_ptrs: Vec<*const libc::c_char>,
    /// Index in `env` of `LISTEN_PID=` plus room for the digits.
    pid_var: Option<usize>,
    /// fds to hand over as 3, 4, ... in this order, and room to move them.
    fds: Vec<RawFd>,
    scratch: Vec<RawFd>,
}

/// Room for a pid's digits (pid_max is at most 2^22 on Linux).
const PID_DIGITS: usize = 10;

impl Exec {
    /// `path` with `argv` (argv\[0\] included) and `env` (`NAME=value`); the fds
    /// become 3, 4, ... in the new process. With [`ListenPid::OfTheChild`],
    /// `LISTEN_PID` is set to the new process's own pid, known only after the
    /// fork.
    pub fn new(
        path: &OsStr,
        argv: &[OsString],
        env: Vec<OsString>,
        listen_pid: ListenPid,
        fds: Vec<RawFd>,
    ) -> io::Result<Exec> {
        let cstring = |s: &OsStr| {
            CString::new(s.as_bytes()).map_err(|_| io::Error::other("NUL byte in an argument"))
        };
        let path = cstring(path)?;
        let argv = argv
            .iter()
            .map(|a| cstring(a))
            .collect::<io::Result<Vec<_>>>()?;
        let mut env: Vec<Vec<u8>> = env
            .into_iter()
            .filter(|v| !v.as_bytes().contains(&0))
            .map(|v| {
                let mut v = v.into_vec();
                v.push(0);
                v
            })
            .collect();
        let pid_var = (listen_pid == ListenPid::OfTheChild).then(|| {
            let mut v = b"LISTEN_PID=".to_vec();
            v.resize(v.len() + PID_DIGITS + 1, 0);
            env.push(v);
            env.len() - 1
        });
        let mut argv_ptrs: Vec<_> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<_> = env.iter().map(|v| v.as_ptr().cast()).collect();
        env_ptrs.push(std::ptr::null());
        let scratch = vec![-1; fds.len()];
        Ok(Exec {
            path,
            _argv: argv,
            argv_ptrs,
            env,
            env_ptrs,
            pid_var,
            fds,
            scratch,
        })
    }

    /// Forks and executes; returns the child's pid. If `execve` fails the child
    /// exits with status 127, which the caller sees as an early exit. The child
    /// leads a process group of its own (its pid), so that [`kill_group`] reaches
    /// whatever it forks too.
    pub fn spawn(&mut self) -> io::Result<libc::pid_t> {
        // SAFETY: fork has no preconditions; the child runs only async-signal-safe calls on memory prepared above, then execs or _exits.
        match unsafe { libc::fork() } {
            -1 => Err(io::Error::last_os_error()),
            // SAFETY: we are the child of a fork (see `exec_child`).
            0 => unsafe { self.exec_child() },
            pid => {
                // Both sides, as shells do: whichever runs first, the group exists
                // before we might signal it. It fails harmlessly (EACCES) once
                // the child has exec'd.
                // SAFETY: setpgid has no memory preconditions.
                unsafe { libc::setpgid(pid, pid) };
                Ok(pid)
            }
        }
    }

    /// # Safety
    /// Only in the child right after `fork`: it writes into its own copy of the
    /// prepared buffers and calls nothing but async-signal-safe functions.
    unsafe fn exec_child(&mut self) -> ! {
        // No allocation, no lock, no panic here (no indexing that could fail:
        // iterators and checked `get`).
        // SAFETY: every pointer is into buffers allocated before the fork, and every call is async-signal-safe.
        unsafe {
            if let Some(var) = self.pid_var.and_then(|i| self.env.get_mut(i)) {
                let digits = &mut var[b"LISTEN_PID=".len()..];
                let mut pid = libc::getpid() as u32;
                let mut len = 0;
                let mut tmp = [0u8; PID_DIGITS];
                for slot in tmp.iter_mut() {
                    *slot = b'0' + (pid % 10) as u8;
                    pid /= 10;
                    len += 1;
                    if pid == 0 {
                        break;
                    }
                }
                for (d, t) in digits.iter_mut().zip(tmp[..len].iter().rev()) {
                    *d = *t;
                }
                if let Some(end) = digits.get_mut(len) {
                    *end = 0;
                }
            }
            // First every fd out of the way of the target range 3..3+n (a source
            // may sit inside it), then into place; dup2 clears close-on-exec.
            let low = 3 + self.fds.len() as RawFd;
            for (tmp, &fd) in self.scratch.iter_mut().zip(&self.fds) {
                *tmp = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, low);
                if *tmp == -1 {
                    libc::_exit(126);
                }
            }
            for (target, &tmp) in (3..).zip(&self.scratch) {
                if libc::dup2(tmp, target) == -1 {
                    libc::_exit(126);
                }
            }
            libc::setpgid(0, 0);
            // The new program starts with no signal blocked and SIGPIPE default,
            // as after any ordinary exec.
            let empty = signal_set(&[]);
            libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr(),
            );
            libc::_exit(127)
        }
    }
}

/// Sends `sig` to `pid` (errors mean it is gone already).
pub fn kill(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// Sends `sig` to the process group `pgid` (a child of [`Exec::spawn`] and
/// everything it forked that stayed in its group), and to `pgid` itself in case
/// the group was never made. Errors mean they are gone already.
pub fn kill_group(pgid: libc::pid_t, sig: libc::c_int) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: kill has no memory preconditions.
    unsafe {
        libc::kill(-pgid, sig);
        libc::kill(pgid, sig);
    }
}

/// Whether `LISTEN_PID` names the new process (see [`Exec::new`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenPid {
    /// `LISTEN_PID` is set to the child's own pid.
    OfTheChild,
    /// No `LISTEN_PID` is added.
    Unset,
}

/// Whether [`reap`] waits for the process to end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Until it ends.
    Block,
    /// Not at all (`WNOHANG`).
    NoHang,
}

/// How a process ended, as `waitpid` tells it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// It exited with this status.
    Exited(i32),
    /// A signal ended it.
    Killed(i32),
    /// Anything else `waitpid` reported (the raw status).
    Other(i32),
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Status::Exited(code) => write!(f, "exited with status {code}"),
            Status::Killed(sig) => write!(f, "killed by signal {sig}"),
            Status::Other(raw) => write!(f, "ended ({raw})"),
        }
    }
}

/// Reaps `pid` if it has ended (or waits for it with [`Wait::Block`]); its
/// status, `None` if it runs on or is not our child.
pub fn reap(pid: libc::pid_t, wait: Wait) -> Option<Status> {
    let mut status = 0;
    let flags = match wait {
        Wait::Block => 0,
        Wait::NoHang => libc::WNOHANG,
    };
    // SAFETY: valid out-pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, flags) };
    if rc != pid {
        return None;
    }
    Some(if libc::WIFEXITED(status) {
        Status::Exited(libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        Status::Killed(libc::WTERMSIG(status))
    } else {
        Status::Other(status)
    })
}
