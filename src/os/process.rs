//! The process itself and those below it: daemonizing, ending at once,
//! adopting orphaned descendants, listing processes.

use std::io;

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

/// Makes this process the "child subreaper" of everything it starts
/// (`PR_SET_CHILD_SUBREAPER`): a descendant whose parent ends (one that
/// daemonized, leaving its process group and session) becomes our child
/// instead of init's, so that it can still be found, stopped and reaped.
pub fn set_child_subreaper() -> io::Result<()> {
    // SAFETY: prctl with this option takes an integer and no pointer.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A process as `/proc/PID/stat` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Proc {
    /// Its pid.
    pub pid: libc::pid_t,
    /// Its parent's pid.
    pub ppid: libc::pid_t,
    /// Whether it has ended and waits to be reaped.
    pub zombie: bool,
}

/// Every process below `root` (children, their children, ...), read from
/// `/proc`; empty if `/proc` cannot be read. Allocates: for the signal
/// thread's rare upgrade work only.
pub fn descendants(root: libc::pid_t) -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let all: Vec<Proc> = dir
        .flatten()
        .filter_map(|entry| {
            let pid: libc::pid_t = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // The state and the parent follow the parenthesised command name.
            let mut rest = stat.rsplit_once(") ")?.1.split(' ');
            let state = rest.next()?;
            let ppid = rest.next()?.parse().ok()?;
            Some(Proc {
                pid,
                ppid,
                zombie: state == "Z" || state == "X",
            })
        })
        .collect();
    let mut below: Vec<Proc> = Vec::new();
    let mut parents = vec![root];
    while let Some(parent) = parents.pop() {
        for p in all.iter().filter(|p| p.ppid == parent) {
            if p.pid != root && !below.iter().any(|b| b.pid == p.pid) {
                below.push(*p);
                parents.push(p.pid);
            }
        }
    }
    below
}
