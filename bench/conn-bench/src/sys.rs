//! The few libc calls the standard library lacks: signal flag, CPU affinity,
//! clock ticks, CPU time used, probing a port as servers bind it, sending a signal, and tying children's lives to
//! conn-bench's (parent-death signal, process-group guards). This is the only
//! module with `unsafe`; each block is one call with no pointer juggling
//! beyond a local struct, except the guard's fork, explained there.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// Set by SIGINT/SIGTERM; every wait loop polls it so servers and
/// generators are killed on the way out instead of being left running.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_signal: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Routes SIGINT and SIGTERM to the `interrupted()` flag.
pub fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // Children get the default disposition back at exec.
        // SAFETY: `on_signal` has the C ABI `signal` expects and only does an atomic store, which is async-signal-safe.
        unsafe {
            libc::signal(signal, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// True once SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Pins the calling thread to `cpus`. Children forked from this thread
/// inherit the mask, which is how servers and generators get theirs without
/// `taskset` or a `pre_exec` hook.
pub fn set_thread_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit array; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("CPU {cpu} out of range"),
            ));
        }
        // SAFETY: `cpu` is below CPU_SETSIZE, so the bit is inside `set`.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: passes a pointer to a live, correctly sized cpu_set_t; pid 0 means the calling thread.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Kernel clock ticks per second, the unit of utime/stime in /proc/PID/stat.
pub fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 {
        ticks as u64
    } else {
        100 // The Linux value on every common architecture.
    }
}

/// CPU time (user + system, µs) of this process plus that of its children
/// already waited for. Generators are reaped at the end of each run while the
/// servers live on until they are stopped, so the difference across a run is
/// the generators' CPU plus conn-bench's own (which shares their CPUs).
pub fn client_side_cpu_us() -> f64 {
    [libc::RUSAGE_SELF, libc::RUSAGE_CHILDREN]
        .into_iter()
        .map(|who| {
            // SAFETY: rusage is plain data, all-zero is valid; getrusage only writes into the struct it is given.
            let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
            // SAFETY: `usage` is a live, correctly sized rusage.
            if unsafe { libc::getrusage(who, &mut usage) } != 0 {
                return 0.0;
            }
            let us = |t: libc::timeval| t.tv_sec as f64 * 1e6 + t.tv_usec as f64;
            us(usage.ru_utime) + us(usage.ru_stime)
        })
        .sum()
}

/// Binds a TCP socket to `port` of every local IPv4 address (0: any free
/// port) the way a server under test binds its listener: without
/// `SO_REUSEADDR`, so a port that still has sockets in TIME-WAIT counts as
/// busy (std's `TcpListener::bind` sets `SO_REUSEADDR` and calls it free,
/// and the C++ reference's bind then fails). The socket never listens, so
/// closing it leaves nothing behind. Returns the socket and its port.
pub fn reserve_port(port: u16) -> io::Result<(OwnedFd, u16)> {
    use std::os::fd::FromRawFd;
    // SAFETY: socket has no memory-safety preconditions.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nobody else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_in is plain data; all-zero is INADDR_ANY, port 0.
    let mut addr: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    addr.sin_family = libc::AF_INET as libc::sa_family_t;
    addr.sin_port = port.to_be();
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: passes a live sockaddr_in and its exact size.
    let rc = unsafe { libc::bind(fd, (&addr as *const libc::sockaddr_in).cast(), len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: getsockname writes at most `len` bytes into the live `addr`.
    let rc =
        unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_in).cast(), &mut len) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((socket, u16::from_be(addr.sin_port)))
}

/// Sends `signal` to `pid`; errors (already gone) are ignored because
/// callers use it only to stop processes.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    if pid <= 0 {
        return; // Never signal a process group by accident.
    }
    // SAFETY: kill has no memory-safety preconditions.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Makes the kernel SIGKILL `cmd`'s child when the thread that spawns it
/// dies (`PR_SET_PDEATHSIG` follows the forking *thread*, not the process):
/// call it from the main thread, which lives as long as conn-bench. This
/// covers every way conn-bench can end, SIGKILL and a panic under
/// `panic = "abort"` included; it reaches the direct child only, which is
/// why servers also get a `GroupGuard`.
pub fn die_with_this_thread(cmd: &mut Command) {
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs in the child between fork and exec and calls only async-signal-safe functions (prctl, getppid); it allocates nothing (`io::Error::from_raw_os_error` and `last_os_error` are plain values).
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // If conn-bench died before the prctl, no signal will ever come.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

/// The pipe whose write end only conn-bench holds (close-on-exec, so no
/// exec'd child inherits it): its read end reports EOF to the guards the
/// moment conn-bench is gone, however it ended.
fn lifeline() -> io::Result<&'static (OwnedFd, OwnedFd)> {
    static LIFELINE: OnceLock<(OwnedFd, OwnedFd)> = OnceLock::new();
    if let Some(pair) = LIFELINE.get() {
        return Ok(pair);
    }
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 writes two descriptors into the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    use std::os::fd::FromRawFd;
    // SAFETY: both descriptors were just created and are owned by nobody else.
    let pair = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    Ok(LIFELINE.get_or_init(|| pair))
}

/// A process in a server's process group that SIGKILLs the whole group once
/// conn-bench is gone. The parent-death signal kills only the server's
/// direct child; this also takes its descendants (nginx's workers, a
/// wrapper script's server). Being a member, it also keeps the group id
/// from being reused, so signalling the group is always safe while it lives.
pub struct GroupGuard {
    pid: libc::pid_t,
    pgid: libc::pid_t,
}

impl GroupGuard {
    /// Forks a guard into process group `pgid` (a server that leads its own
    /// group). Call it from the main thread.
    pub fn start(pgid: u32) -> io::Result<GroupGuard> {
        let pgid = libc::pid_t::try_from(pgid)
            .ok()
            .filter(|&p| p > 1)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "bad process group"))?;
        let (read_end, _write_end) = lifeline()?;
        let read_fd: RawFd = read_end.as_raw_fd();
        // SAFETY: fork in a multi-threaded process. The child runs only async-signal-safe calls (setpgid, syscall(close_range), close, read, kill, _exit) on stack data and never returns into Rust code that could allocate or take a lock another thread held.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above; this branch ends in _exit.
            unsafe { guard_child(pgid, read_fd) }
        }
        Ok(GroupGuard { pid, pgid })
    }

    /// Sends `signal` to the whole group (the guard included for SIGKILL).
    pub fn signal_group(&self, signal: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions; the group id is held by the guard until it is reaped in `finish`.
        unsafe {
            libc::kill(-self.pgid, signal);
        }
    }
}

/// Dropping the guard kills the whole group (guard included) and reaps it.
impl Drop for GroupGuard {
    fn drop(&mut self) {
        self.signal_group(libc::SIGKILL);
        let mut status = 0;
        // SAFETY: waits for our own child; `status` is a live c_int.
        unsafe {
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}

/// The guard's body, in the forked child.
///
/// # Safety
/// Call only in the child of `fork`, with `read_fd` the lifeline's read end.
unsafe fn guard_child(pgid: libc::pid_t, read_fd: RawFd) -> ! {
    if libc::setpgid(0, pgid) != 0 {
        libc::_exit(0); // The group is gone already: nothing to guard.
    }
    // Drop every inherited descriptor but the lifeline's read end: above all
    // the write end (or EOF would never come), and conn-bench's stdout, which
    // a reader waits on.
    let closed = (read_fd == 0
        || libc::syscall(libc::SYS_close_range, 0u32, (read_fd - 1) as u32, 0u32) == 0)
        && libc::syscall(libc::SYS_close_range, (read_fd + 1) as u32, u32::MAX, 0u32) == 0;
    if !closed {
        for fd in (0..4096).filter(|&fd| fd != read_fd) {
            libc::close(fd);
        }
    }
    let mut byte = 0u8;
    loop {
        let n = libc::read(read_fd, (&mut byte as *mut u8).cast(), 1);
        if n == 0 || (n < 0 && *libc::__errno_location() != libc::EINTR) {
            break;
        }
    }
    libc::kill(-pgid, libc::SIGKILL);
    libc::_exit(0)
}
