//! Process-level system calls: signals owned by one thread, starting a new
//! binary with inherited sockets, service-manager notification, daemonizing,
//! address space reserved at start-up.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The signals the supervisor thread handles (see `lifecycle`); every other
/// thread has them blocked.
const HANDLED_SIGNALS: [libc::c_int; 5] = [
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGUSR2,
    libc::SIGHUP,
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

fn signal_set(signals: &[libc::c_int]) -> libc::sigset_t {
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

/// Waits until `a` or `b` is readable (or hung up), at most `timeout`; returns
/// which were.
pub fn poll2(a: RawFd, b: Option<RawFd>, timeout: Option<Duration>) -> io::Result<(bool, bool)> {
    let mut fds = [
        libc::pollfd {
            fd: a,
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: b.unwrap_or(-1),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
    // SAFETY: two valid pollfds; a negative fd is ignored by poll.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, ms) };
    if rc == -1 {
        let err = io::Error::last_os_error();
        return if err.kind() == io::ErrorKind::Interrupted {
            Ok((false, false))
        } else {
            Err(err)
        };
    }
    Ok((fds[0].revents != 0, fds[1].revents != 0))
}

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
        // SAFETY: fork has no preconditions; the child runs only async-signal-safe
        // calls on memory prepared above, then execs or _exits.
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
        // SAFETY: every pointer is into buffers allocated before the fork, and
        // every call is async-signal-safe.
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

/// Reaps `pid` if it has ended (or waits for it with [`Wait::Block`]); returns
/// its status as text for a log line.
pub fn reap(pid: libc::pid_t, wait: Wait) -> Option<String> {
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
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended ({status})")
    })
}

/// Sends one datagram to the service manager (`sd_notify`): nothing when
/// `NOTIFY_SOCKET` is unset. A leading `@` is Linux's abstract namespace.
pub fn sd_notify(message: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    if path.is_empty() || path.len() >= addr.sun_path.len() {
        return;
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(path) {
        *dst = src as libc::c_char;
    }
    if path[0] == b'@' {
        addr.sun_path[0] = 0;
    }
    let len = std::mem::size_of::<libc::sa_family_t>() + path.len();
    // SAFETY: a new datagram socket, closed below.
    let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd == -1 {
        return;
    }
    // SAFETY: valid buffer and address of the lengths given.
    unsafe {
        libc::sendto(
            fd,
            message.as_ptr().cast(),
            message.len(),
            libc::MSG_NOSIGNAL,
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        );
        libc::close(fd);
    }
}

/// Microseconds on CLOCK_MONOTONIC, as `RELOADING=1` wants in `MONOTONIC_USEC`.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

/// What a parent process handed this one: listening sockets by the systemd
/// socket-activation convention (`LISTEN_PID`, `LISTEN_FDS`; fds 3, 4, ...),
/// and, from an upgrading conn-daemon, the pipe to report readiness on
/// (`CONN_DAEMON_READY_FD`) and how many upgrades came before
/// (`CONN_DAEMON_UPGRADES`).
#[derive(Debug, Default)]
pub struct Inherited {
    /// The listening sockets, in the order given (not yet checked).
    pub listeners: Vec<OwnedFd>,
    /// Where to write our pid once we serve, if an old process waits for it.
    pub ready: Option<OwnedFd>,
    /// Upgrades in this server's lineage so far.
    pub upgrades: u64,
    /// Whether an upgrading conn-daemon started us (it counts upgrades, and
    /// handed us sockets): we are detached already if it was (`-d`), and must
    /// stay the process it started, the one it can stop.
    pub from_upgrade: bool,
}

/// Environment variable naming the readiness pipe of an upgrade.
pub const READY_FD_VAR: &str = "CONN_DAEMON_READY_FD";
/// Environment variable counting the upgrades in a lineage.
pub const UPGRADES_VAR: &str = "CONN_DAEMON_UPGRADES";
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
/// that is not open, or a readiness pipe on fd 0, 1 or 2.
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
        for fd in 3..3u32.saturating_add(n) {
            inherited.listeners.push(claim_fd(fd as RawFd)?);
        }
        if let Some(text) = var(READY_FD_VAR) {
            let fd = number(READY_FD_VAR, text)? as RawFd;
            // Closing a standard stream on the way would hide our own output.
            if (0..3).contains(&fd) {
                return Err(InheritError::Stdio { fd });
            }
            inherited.ready = Some(claim_fd(fd)?);
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

/// Ends the process at once, without unwinding or running destructors.
pub fn exit_now(code: i32) -> ! {
    // SAFETY: _exit has no preconditions.
    unsafe { libc::_exit(code) }
}

/// Detaches like the reference: `chdir("/var/tmp")`, then `daemon(nochdir=1,
/// noclose=verbose)`. Must run before any thread is started.
pub fn daemonize(keep_output: bool) -> io::Result<()> {
    std::env::set_current_dir("/var/tmp")?;
    // SAFETY: single-threaded at this point, as daemon() (a fork) requires.
    if unsafe { libc::daemon(1, keep_output as libc::c_int) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reserves `len` bytes of zeroed, page-aligned, read-write address space
/// (an anonymous private `mmap`). The kernel commits a page only when it is
/// first touched, and `MAP_NORESERVE` keeps untouched pages out of the commit
/// limit: a reservation sized for the worst case costs nothing until used.
/// Release it with `munmap`, or keep it for the life of the process.
pub fn reserve(len: usize) -> io::Result<NonNull<u8>> {
    // SAFETY: an anonymous mapping with no address hint has no preconditions.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))
}

/// Number of open file descriptors of this process: the entries of
/// `/proc/self/fd`, read with `getdents64` into a stack buffer, since
/// `std::fs::read_dir` allocates per entry (the metrics scrape must not).
pub fn open_fds() -> io::Result<u64> {
    #[repr(C, align(8))]
    struct Buf([u8; 4096]);

    let dir = std::fs::File::open("/proc/self/fd")?;
    let mut buf = Buf([0; 4096]);
    let mut count: u64 = 0;
    loop {
        // SAFETY: getdents64 writes at most the given length into our buffer,
        // which is aligned for `linux_dirent64`; the fd is an open directory.
        let got = unsafe {
            libc::syscall(
                libc::SYS_getdents64,
                dir.as_raw_fd(),
                buf.0.as_mut_ptr(),
                buf.0.len(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        if got == 0 {
            break;
        }
        let mut at = 0;
        let end = got as usize;
        // linux_dirent64: d_ino (8), d_off (8), d_reclen (2), d_type (1), d_name.
        while at + 19 < end {
            let reclen = usize::from(u16::from_ne_bytes([buf.0[at + 16], buf.0[at + 17]]));
            let name = &buf.0[at + 19..(at + reclen).min(end)];
            if name.first() != Some(&b'.') {
                count += 1;
            }
            if reclen == 0 {
                break;
            }
            at += reclen;
        }
    }
    // Not counting the directory we had open to count.
    Ok(count.saturating_sub(1))
}
