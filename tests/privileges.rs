//! `--user` / `--group`: started as root, the server drops to the user on
//! every thread once its listeners are bound, serves, writes its pid file and
//! upgrades after the drop; what cannot work is refused with one line, exit 1.
//!
//! Runs as root (here and in CI: `.ci/run` runs as root), with the system's
//! `nobody` user and `nogroup` group.
#![allow(unsafe_code)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod util;

use util::lineage::{alive, spawn_guard};
use util::metrics::{free_addr, Scrape};
use util::{bin, Server, RESPONSE};

const NOBODY: u32 = 65534;
const NOGROUP: u32 = 65534;

/// A directory `nobody` owns, for the pid file.
fn nobody_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "conn-daemon-privileges-{}-{name}",
        std::process::id()
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOGROUP)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// A thread's name, uids, gids and supplementary groups.
type Credentials = (String, Vec<u32>, Vec<u32>, Vec<u32>);

/// The `Uid:`, `Gid:` and `Groups:` lines of every thread of `pid`.
fn credentials(pid: u32) -> Vec<Credentials> {
    let mut all = Vec::new();
    for task in fs::read_dir(format!("/proc/{pid}/task")).unwrap().flatten() {
        let status = fs::read_to_string(task.path().join("status")).unwrap_or_default();
        let comm = fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let ids = |field: &str| -> Vec<u32> {
            status
                .lines()
                .find_map(|l| l.strip_prefix(field))
                .unwrap_or_default()
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        };
        all.push((
            comm.trim().to_string(),
            ids("Uid:"),
            ids("Gid:"),
            ids("Groups:"),
        ));
    }
    all
}

/// Asserts that every thread of `pid` runs as nobody:nogroup, with no
/// supplementary group but nogroup; the thread names.
#[track_caller]
fn assert_dropped(pid: u32) -> Vec<String> {
    let creds = credentials(pid);
    for (name, uids, gids, groups) in &creds {
        assert_eq!(
            uids, &[NOBODY; 4],
            "thread {name}: uids (real, effective, saved, fs)"
        );
        assert_eq!(gids, &[NOGROUP; 4], "thread {name}: gids");
        assert_eq!(groups, &[NOGROUP], "thread {name}: supplementary groups");
    }
    creds.into_iter().map(|c| c.0).collect()
}

fn wait_pid_file(path: &PathBuf, accept: impl Fn(u32) -> bool) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(pid) = fs::read_to_string(path)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .filter(|&p| accept(p))
        {
            return pid;
        }
        assert!(
            Instant::now() < deadline,
            "no new pid in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn every_thread_drops_to_the_user_and_it_serves_and_upgrades() {
    let dir = nobody_dir("serve");
    let pid_file = dir.join("pid");
    let metrics = free_addr();
    let args = [
        "--user",
        "nobody",
        "--group",
        "nogroup",
        "-A",
        "2",
        "-w",
        "2",
        "--metrics",
        &metrics.to_string(),
        "--pid-file",
        pid_file.to_str().unwrap(),
        "--log-level",
        "info",
    ];
    let server = {
        let _guard = spawn_guard();
        Server::start(&args)
    };
    let first = server.pid();
    let names = assert_dropped(first);
    for thread in ["accept-1", "metrics", "signals"] {
        assert!(
            names.iter().any(|n| n == thread),
            "no {thread} in {names:?}"
        );
    }
    assert!(
        names.iter().filter(|n| n.starts_with("worker")).count() >= 2,
        "{names:?}"
    );
    assert_eq!(server.request(b"GET /test/fast HTTP/1.1\r\n\r\n"), RESPONSE);
    assert_eq!(server.request(b"GET /test/slow HTTP/1.1\r\n\r\n"), RESPONSE);
    assert_eq!(
        Scrape::get(metrics).sum("conn_daemon_responses_total", &[]),
        2.0
    );
    assert_eq!(wait_pid_file(&pid_file, |_| true), first);
    assert!(
        server
            .stderr()
            .contains("running as user nobody (uid 65534), group nogroup (gid 65534)"),
        "{}",
        server.stderr()
    );

    // An upgrade after the drop: the new process, started by the unprivileged
    // one, runs as nobody already, serves the same sockets and rewrites the
    // pid file.
    {
        let _guard = spawn_guard();
        server.signal(libc::SIGUSR2);
    }
    let second = wait_pid_file(&pid_file, |p| p != first);
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(first) {
        assert!(Instant::now() < deadline, "the old process did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_dropped(second);
    assert_eq!(server.request(b"GET /test/fast HTTP/1.1\r\n\r\n"), RESPONSE);
    assert_eq!(
        Scrape::get(metrics).sum("conn_daemon_upgrades_total", &[]),
        1.0
    );
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(second as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(second) {
        assert!(Instant::now() < deadline, "the new process did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!pid_file.exists(), "the pid file is removed at exit");
    let _ = fs::remove_dir_all(dir);
}

/// Runs the binary with `args` (as `uid` if given) to its end: (status, stderr).
fn run(args: &[&str], uid: Option<u32>) -> (Option<i32>, String) {
    let _guard = spawn_guard();
    let mut cmd = Command::new(bin());
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::null());
    if let Some(uid) = uid {
        cmd.uid(uid).gid(NOGROUP);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn what_cannot_work_is_one_line_and_exit_1() {
    let port = util::free_port().to_string();
    let root_dir = std::env::temp_dir().join(format!(
        "conn-daemon-privileges-{}-root",
        std::process::id()
    ));
    fs::create_dir_all(&root_dir).unwrap();
    fs::set_permissions(&root_dir, fs::Permissions::from_mode(0o755)).unwrap();
    let root_pid = root_dir.join("pid");
    for (args, uid, line) in [
        (
            vec!["--group", "nogroup"],
            None,
            "conn-daemon: --group nogroup needs --user".to_string(),
        ),
        (
            vec!["--user", "no-such-user-here"],
            None,
            "conn-daemon: --user no-such-user-here: no such user".to_string(),
        ),
        (
            vec!["--user", "nobody", "--group", "no-such-group-here"],
            None,
            "conn-daemon: --group no-such-group-here: no such group".to_string(),
        ),
        (
            vec!["--user", "root"],
            Some(NOBODY),
            format!("conn-daemon: --user root: only root can switch users (this process runs as uid {NOBODY})"),
        ),
        (
            vec!["--user", "nobody", "--pid-file", root_pid.to_str().unwrap()],
            None,
            format!(
                "conn-daemon: --pid-file: {} is not writable by user nobody: ",
                root_dir.display()
            ),
        ),
    ] {
        let mut all = vec!["-p", port.as_str()];
        all.extend(&args);
        let (status, stderr) = run(&all, uid);
        assert_eq!(status, Some(1), "{args:?}: {stderr}");
        assert!(stderr.starts_with(&line), "{args:?}: {stderr:?}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr:?}");
    }
    assert!(!root_pid.exists());
    // --check-config checks them too.
    let (status, stderr) = run(&["--check-config", "--user", "no-such-user-here"], None);
    assert_eq!(status, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        "conn-daemon: --user no-such-user-here: no such user\n"
    );
    let (status, stderr) = run(&["--check-config", "--user", "nobody"], None);
    assert_eq!((status, stderr.as_str()), (Some(0), ""));
    let _ = fs::remove_dir_all(root_dir);
}
