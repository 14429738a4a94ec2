//! The few libc calls the standard library lacks: signal flag, CPU affinity,
//! clock ticks, CPU time used and sending a signal. This is the only module with `unsafe`;
//! each block is one call with no pointer juggling beyond a local struct.
#![allow(unsafe_code)]

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

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
        // SAFETY: `on_signal` has the C ABI `signal` expects and only does an
        // atomic store, which is async-signal-safe.
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
    // SAFETY: passes a pointer to a live, correctly sized cpu_set_t; pid 0
    // means the calling thread.
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
            // SAFETY: rusage is plain data, all-zero is valid; getrusage only
            // writes into the struct it is given.
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
