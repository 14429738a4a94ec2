//! Process-level system calls: signals owned by one thread, daemonizing.

use std::io;
use std::mem::MaybeUninit;

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

/// Number of open file descriptors of this process: the entries of
/// `/proc/self/fd`, read with `getdents64` into a stack buffer, since
/// `std::fs::read_dir` allocates per entry (the metrics scrape must not).
pub fn open_fds() -> io::Result<u64> {
    use std::os::fd::AsRawFd;

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
