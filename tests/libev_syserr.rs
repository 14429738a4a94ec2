//! libev's fatal system errors (`ev_syserr`) end the process with one line and
//! exit status 100, never with libev's `perror` and `abort` (a core dump): the
//! shim installs its handler before `main` (`src/shim.c`).
#![allow(unsafe_code)]

use std::process::Command;
use std::time::{Duration, Instant};

use conn_daemon::ev::{Async, Handler, Loop};

/// The variable that makes [`child_runs_out_of_fds_starting_an_async`] do its work.
const CHILD: &str = "CONN_DAEMON_TEST_SYSERR_CHILD";

struct Nothing;

impl Handler for Nothing {}

/// Run by the test below in a process of its own: with one fd left, the loop's
/// epoll fd takes it, and the `ev_async`'s eventfd cannot be created.
#[test]
#[ignore = "run by an_eventfd_libev_cannot_create_is_one_line_and_exit_100"]
fn child_runs_out_of_fds_starting_an_async() {
    if std::env::var_os(CHILD).is_none() {
        return;
    }
    // The limit bounds fd numbers: new fds take the lowest free ones, so a
    // limit at the second free number leaves exactly one.
    let free = (0..).filter(|&fd| {
        // SAFETY: fcntl on any number is harmless; it fails for a closed fd.
        unsafe { libc::fcntl(fd, libc::F_GETFD) == -1 }
    });
    let second_free = free.take(2).last().unwrap();
    let lim = libc::rlimit {
        rlim_cur: second_free as libc::rlim_t,
        rlim_max: second_free as libc::rlim_t,
    };
    // SAFETY: a valid rlimit; only this child process is limited.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let lp = Loop::<Nothing>::new().expect("the epoll fd fits");
    let wake = Box::pin(Async::new());
    wake.as_ref().start(&lp, 0);
    unreachable!("the eventfd was created under a limit that leaves no fd for it");
}

#[test]
fn an_eventfd_libev_cannot_create_is_one_line_and_exit_100() {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_runs_out_of_fds_starting_an_async",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            panic!("the child did not exit");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(100),
        "{:?}; stderr:\n{stderr}",
        out.status
    );
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("conn-daemon: "))
        .collect();
    assert_eq!(
        lines,
        ["conn-daemon: (libev) error creating signal/async pipe: Too many open files"],
        "{stderr}"
    );
}
