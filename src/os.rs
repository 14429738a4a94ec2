//! Process-level system calls: signals owned by one thread, daemonizing,
//! address space reserved at start-up.

use std::io;
use std::mem::MaybeUninit;
use std::ptr::{self, NonNull};

/// The signals that ask for a graceful stop.
const STOP_SIGNALS: [libc::c_int; 2] = [libc::SIGTERM, libc::SIGINT];

fn stop_set() -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initialises the set; sigaddset takes valid signal numbers.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for sig in STOP_SIGNALS {
            libc::sigaddset(set.as_mut_ptr(), sig);
        }
        set.assume_init()
    }
}

/// Blocks SIGTERM and SIGINT in the calling thread, and so in every thread it
/// starts afterwards: only the thread in [`wait_stop_signal`] receives them.
/// SIGPIPE is ignored outright (sends use MSG_NOSIGNAL anyway).
pub fn block_stop_signals() -> io::Result<()> {
    let set = stop_set();
    // SAFETY: a valid, initialised set; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    // SAFETY: SIG_IGN is a valid disposition for SIGPIPE.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    Ok(())
}

/// Waits for SIGTERM or SIGINT (blocked beforehand) and returns its number.
pub fn wait_stop_signal() -> libc::c_int {
    let set = stop_set();
    let mut sig: libc::c_int = 0;
    loop {
        // SAFETY: valid set and out-pointer.
        if unsafe { libc::sigwait(&set, &mut sig) } == 0 {
            return sig;
        }
    }
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
