//! The process itself: daemonizing, ending at once.

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
