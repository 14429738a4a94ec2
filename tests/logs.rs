//! Log lines: the journal's priority prefixes when stderr is the journal,
//! syslog with `-d`, `--log-level`, the info lines of a server's life (serving,
//! each upgrade step, the end of a drain), and the open-files warning only
//! where it means something.
#![allow(unsafe_code)]

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod util;

use util::lineage::{alive, spawn_guard, Lineage};
use util::{bin, free_port, Server};

/// Runs `f` (which forks) while no test of this binary writes an executable:
/// a child forked meanwhile would hold the file open for writing, and the
/// upgrade test's exec of it would fail with ETXTBSY (see `spawn_guard`).
fn forking<T>(f: impl FnOnce() -> T) -> T {
    let _guard = spawn_guard();
    f()
}

/// A file for a child's stderr, and its path.
fn stderr_file(name: &str) -> (fs::File, PathBuf) {
    let path = std::env::temp_dir().join(format!(
        "conn-daemon-logs-{}-{name}.stderr",
        std::process::id()
    ));
    (fs::File::create(&path).expect("create"), path)
}

/// Starts the binary with `args` (and `-p` a free port), stderr into `file`
/// and `env` added.
fn spawn(args: &[&str], file: fs::File, env: &[(&str, String)]) -> (Child, u16) {
    let port = free_port();
    let _guard = spawn_guard();
    let child = Command::new(bin())
        .arg("-p")
        .arg(port.to_string())
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env_remove("NOTIFY_SOCKET")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file)
        .spawn()
        .expect("spawn");
    (child, port)
}

/// Waits (bounded) until `path` holds `needle`; its text.
fn wait_text(path: &PathBuf, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in {text:?}");
        thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM, then the exit (bounded).
fn stop(child: &mut Child) -> std::process::ExitStatus {
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit after SIGTERM");
        thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn under_the_journal_lines_carry_priority_prefixes_not_the_name() {
    let (file, path) = stderr_file("journal");
    let meta = fs::metadata(&path).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let (mut child, _) = spawn(
        &["-A", "1", "--log-level", "info"],
        file,
        &[("JOURNAL_STREAM", stream)],
    );
    wait_text(&path, "<6>serving on 0.0.0.0:");
    // A warning: SIGUSR1 is ignored with one line.
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGUSR1) };
    wait_text(&path, "<4>SIGUSR1: ignored");
    assert!(stop(&mut child).success());
    let text = wait_text(&path, "<6>drained; exiting: 0 responses sent");
    for line in text.lines() {
        let prefixed = ["<3>", "<4>", "<6>", "<7>"]
            .iter()
            .any(|p| line.starts_with(p));
        assert!(
            prefixed && !line.contains("conn-daemon: "),
            "{line:?} in\n{text}"
        );
    }
    assert!(text.contains("<6>open files limit "), "{text}");
    let _ = fs::remove_file(path);

    // JOURNAL_STREAM naming another stream (a child whose stderr was
    // redirected inherits it): plain lines.
    let (file, path) = stderr_file("not-journal");
    let (mut child, _) = spawn(
        &["-A", "1", "--log-level", "info"],
        file,
        &[("JOURNAL_STREAM", "1:1".into())],
    );
    wait_text(&path, "conn-daemon: serving on 0.0.0.0:");
    assert!(stop(&mut child).success());
    let _ = fs::remove_file(path);
}

#[test]
fn start_up_errors_are_the_first_line_at_error_priority() {
    let (file, path) = stderr_file("error");
    let meta = fs::metadata(&path).unwrap();
    let stream = format!("{}:{}", meta.dev(), meta.ino());
    let (mut child, _) = spawn(
        &[
            "--metrics",
            "127.0.0.1:1",
            "--config",
            "/nonexistent/x.conf",
        ],
        file,
        &[("JOURNAL_STREAM", stream)],
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1));
    let text = fs::read_to_string(&path).unwrap();
    assert!(
        text.starts_with("<3>/nonexistent/x.conf: cannot read it: "),
        "{text:?}"
    );
    let _ = fs::remove_file(path);
}

#[test]
fn log_level_filters_lines() {
    // The default (warn): warnings, no info.
    let server = forking(|| Server::start(&["-A", "1"]));
    server.signal(libc::SIGUSR1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server.stderr().contains("SIGUSR1: ignored") {
        assert!(Instant::now() < deadline, "{}", server.stderr());
        thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !server.stderr().contains("serving on"),
        "{}",
        server.stderr()
    );
    // error: not even the warning, nor the info line of the drain's end. The
    // signal thread reads SIGUSR1 before SIGTERM (lower numbers first), so
    // once the process has exited it has handled both.
    let mut quiet = forking(|| Server::start(&["-A", "1", "--log-level", "error"]));
    quiet.signal(libc::SIGUSR1);
    quiet.signal(libc::SIGTERM);
    let status = quiet.wait_exit(Duration::from_secs(15)).expect("exit");
    assert!(status.success());
    assert_eq!(quiet.stderr(), "", "--log-level error");
    // A bad level is refused with the usage.
    let out = forking(|| {
        Command::new(bin())
            .args(["--log-level", "notice"])
            .output()
            .unwrap()
    });
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr)
        .starts_with("error: invalid value 'notice' for '--log-level <LEVEL>'"));
}

#[test]
fn with_d_lines_go_to_syslog() {
    let dir = std::env::temp_dir().join(format!("conn-daemon-syslog-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let socket_path = dir.join("log");
    let syslog = UnixDatagram::bind(&socket_path).expect("bind the syslog socket");
    syslog
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let pid_file = dir.join("pid");
    let (file, path) = stderr_file("syslog");
    let (mut child, _) = spawn(
        &[
            "-d",
            "-A",
            "1",
            "--log-level",
            "info",
            "--pid-file",
            pid_file.to_str().unwrap(),
        ],
        file,
        &[(
            "CONN_DAEMON_TEST_SYSLOG",
            socket_path.to_str().unwrap().to_string(),
        )],
    );
    // The parent of daemon() exits 0 at once.
    assert!(child.wait().unwrap().success());
    let mut buf = [0u8; 2048];
    let mut next = || {
        let n = syslog.recv(&mut buf).expect("a syslog line within 10 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let mut lines = Vec::new();
    while !lines.iter().any(|l: &String| l.contains("serving on")) {
        lines.push(next());
    }
    // The pid file is written right after the line.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: u32 = loop {
        if let Some(pid) = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(Instant::now() < deadline, "no pid file");
        thread::sleep(Duration::from_millis(5));
    };
    let serving = lines.last().unwrap();
    // Facility daemon (3 << 3) + info (6) = 30.
    assert!(
        serving.starts_with(&format!("<30>conn-daemon[{pid}]: serving on 0.0.0.0:")),
        "{lines:?}"
    );
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGUSR1) };
    let warning = next();
    assert_eq!(warning, format!("<28>conn-daemon[{pid}]: SIGUSR1: ignored"));
    // SAFETY: as above.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let last = next();
    assert!(
        last.starts_with(&format!("<30>conn-daemon[{pid}]: drained; exiting")),
        "{last}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while alive(pid) {
        assert!(Instant::now() < deadline);
        thread::sleep(Duration::from_millis(5));
    }
    // Before it detached, stderr was still the terminal's (start-up errors
    // show there); after, nothing.
    let stderr = fs::read_to_string(&path).unwrap();
    assert!(!stderr.contains("serving on"), "{stderr}");
    let _ = fs::remove_dir_all(&dir);
    let _ = fs::remove_file(path);
}

#[test]
fn info_lines_for_each_upgrade_step_and_the_drain() {
    let mut lineage = Lineage::start(&["-A", "1", "--log-level", "info"]);
    let first = lineage.pid();
    let second = lineage.upgrade().expect("upgrade");
    assert!(
        lineage.wait_stderr("drained; exiting", 1, Duration::from_secs(10)),
        "{}",
        lineage.stderr()
    );
    let stderr = lineage.stderr();
    for line in [
        "conn-daemon: serving on 0.0.0.0:".to_string(),
        format!(
            "conn-daemon: SIGUSR2: upgrade: started {}",
            lineage.exe.display()
        ),
        format!("conn-daemon: upgrade: new process {second} serves; draining and exiting"),
        "conn-daemon: drained; exiting: ".to_string(),
    ] {
        assert!(
            stderr.lines().any(|l| l.starts_with(&line)),
            "no line {line:?} (pids {first} -> {second}) in\n{stderr}"
        );
    }
    assert_eq!(util::count_lines(&stderr, "serving on"), 2, "{stderr}");
    lineage.stop(Duration::from_secs(10)).unwrap();
}

#[test]
fn the_open_files_warning_only_where_the_capacity_cannot_be_held() {
    // The default -C (100000 a thread) beside a limit of 20000: the limit at
    // info, no warning.
    let server = forking(|| {
        Server::start_limited(
            libc::RLIMIT_NOFILE,
            20_000,
            &["-A", "2", "--log-level", "info"],
        )
    });
    let stderr = server.stderr();
    assert!(
        stderr.contains("conn-daemon: open files limit 20000: "),
        "{stderr}"
    );
    assert!(!stderr.contains("is below"), "{stderr}");
    // A chosen -C the limit cannot hold: the warning.
    let server =
        forking(|| Server::start_limited(libc::RLIMIT_NOFILE, 20_000, &["-A", "2", "-C", "15000"]));
    let stderr = server.stderr();
    assert!(
        stderr.contains("conn-daemon: open files limit 20000 (hard limit 20000) is below the 30")
            && stderr.contains("that -A x -C (30000 connections) and about "),
        "{stderr}"
    );
    assert!(
        !stderr.contains("open files limit 20000: "),
        "info is off: {stderr}"
    );
}
