//! Start-up as an operator sees it: a busy port is refused (the reference silently
//! joins it through SO_REUSEPORT), `-v` prints debug lines to stdout, `-d`
//! daemonizes as the reference does.
#![allow(unsafe_code)]

mod util;

use std::io::Read;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use util::{bin, check_response, free_port, run_bounded, Server, IO_TIMEOUT};

fn assert_refused_busy_port(port: u16) {
    let out = run_bounded(
        &["-p", &port.to_string(), "-A", "2"],
        Duration::from_secs(10),
    );
    assert_eq!(out.status.code(), Some(100), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line on stderr: {stderr:?}");
    assert!(
        stderr.starts_with(&format!("conn-daemon: port {port} is already in use")),
        "{stderr:?}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn a_port_another_conn_daemon_listens_on_is_refused() {
    let server = Server::start(&["-A", "2", "-w", "0"]);
    assert_refused_busy_port(server.port());
    // The first server kept every connection to itself: all are answered.
    for _ in 0..50 {
        let s = server.connect();
        util::send(&s, b"GET /test/fast\r\n\r\n");
        check_response(&s, IO_TIMEOUT).unwrap();
    }
}

#[test]
fn a_port_a_plain_listener_holds_is_refused() {
    let holder = TcpListener::bind(("0.0.0.0", 0)).unwrap();
    assert_refused_busy_port(holder.local_addr().unwrap().port());
}

/// Two of our own `--listen` addresses on one port, one covering the other,
/// are refused as such (exit 1, one line naming both), not as a port another
/// process holds; the IPv4 and IPv6 wildcards do not overlap and both serve.
#[test]
fn listen_addresses_that_overlap_each_other_are_named() {
    let port = free_port();
    let (wild, local) = (format!("0.0.0.0:{port}"), format!("127.0.0.1:{port}"));
    for (first, second) in [(&wild, &local), (&local, &wild)] {
        let out = run_bounded(
            &["--listen", first, "--listen", second, "-A", "2"],
            Duration::from_secs(10),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{first} {second}: {stderr}");
        assert_eq!(
            stderr,
            format!(
                "conn-daemon: --listen {second} overlaps --listen {first} (0.0.0.0 takes \
                 port {port} on every IPv4 address): give one of them\n"
            )
        );
    }
    // Without a port, --listen takes the test server's -p.
    let both = Server::start(&["--listen", "0.0.0.0", "--listen", "[::]", "-A", "1"]);
    for host in ["127.0.0.1", "[::1]"] {
        let addr: std::net::SocketAddr = format!("{host}:{}", both.port()).parse().unwrap();
        let s = util::connect(addr);
        util::send(&s, b"GET /test/fast\r\n\r\n");
        check_response(&s, IO_TIMEOUT).unwrap();
    }
}

#[test]
fn verbose_prints_debug_lines_to_stdout() {
    let port = free_port();
    let mut child = Command::new(bin())
        .args([
            "-v",
            "-p",
            &port.to_string(),
            "-A",
            "1",
            "-w",
            "1",
            "-C",
            "7",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    answered_once_listening(port, Instant::now() + Duration::from_secs(10));
    // SAFETY: sending SIGTERM to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "server did not stop");
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    assert!(
        stdout.contains(&format!(
            "conn-daemon: listening on 0.0.0.0:{port}: 1 accept threads x 7 connections, 1 workers"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("conn-daemon: accept-0: serving"),
        "{stdout}"
    );
    assert!(
        stdout.contains("conn-daemon: accept-0: stopped"),
        "{stdout}"
    );
}

/// Connects once `port` listens (before `deadline`) and checks that a fast
/// request is answered.
fn answered_once_listening(port: u16, deadline: Instant) {
    let stream = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(Instant::now() < deadline, "nothing listens on {port}: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    util::send(&stream, b"GET /test/fast\r\n\r\n");
    check_response(&stream, IO_TIMEOUT).unwrap();
}

/// The pid of the process whose command line is exactly `args` (our daemon).
fn find_process(args: &[&str]) -> Option<u32> {
    let want: Vec<u8> = args.iter().flat_map(|a| a.bytes().chain([0])).collect();
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            (cmdline == want).then_some(pid)
        })
}

/// The command line of a daemon on `port` with one accept thread, `extra`
/// after it: the binary first, as `/proc/PID/cmdline` shows it.
fn daemon_command(port: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec![
        bin(),
        "-d".into(),
        "-p".into(),
        port.into(),
        "-A".into(),
        "1".into(),
    ];
    args.extend(extra.iter().map(|a| a.to_string()));
    args
}

#[test]
fn daemonize_detaches_into_var_tmp_and_serves() {
    let port = free_port().to_string();
    let args = daemon_command(&port, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    // The foreground process returns at once, successfully; the daemon serves on.
    let out = run_bounded(&args[1..], Duration::from_secs(10));
    assert!(out.status.success(), "{out:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid = loop {
        if let Some(pid) = find_process(&args) {
            break pid;
        }
        assert!(Instant::now() < deadline, "no daemon process found");
        std::thread::sleep(Duration::from_millis(10));
    };
    let stop = scopeguard(pid);
    answered_once_listening(port.parse().unwrap(), deadline);
    assert_eq!(
        std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap(),
        std::path::Path::new("/var/tmp")
    );
    drop(stop);
}

/// `-d` with a pid file that cannot be written (its directory missing, a file
/// where a directory should be, a directory in its place) exits 100 with one
/// line before detaching: no server runs on that nothing names (it exited 0
/// silently, and the detached server served on).
#[test]
fn daemonize_with_a_pid_file_that_cannot_be_written_exits_100() {
    let dir = std::env::temp_dir().join(format!("conn-daemon-pidfile-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("a-directory")).unwrap();
    std::fs::write(dir.join("a-file"), "").unwrap();
    for (pid_file, why) in [
        (dir.join("missing/cd.pid"), "No such file or directory"),
        (dir.join("a-file/cd.pid"), "Not a directory"),
        (dir.join("a-directory"), "it is a directory"),
    ] {
        let port = free_port().to_string();
        let pid_arg = pid_file.to_str().unwrap().to_string();
        let args = daemon_command(&port, &["--pid-file", &pid_arg]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_bounded(&args[1..], Duration::from_secs(10));
        // Whatever the outcome, no daemon of this test's may outlive it.
        std::thread::sleep(Duration::from_millis(200));
        let daemon = find_process(&args).map(scopeguard);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(100), "{pid_arg}: {out:?}");
        assert_eq!(stderr.lines().count(), 1, "{pid_arg}: {stderr}");
        assert!(
            stderr.starts_with(&format!(
                "conn-daemon: cannot write the pid file {pid_arg}: {why}"
            )),
            "{pid_arg}: {stderr}"
        );
        assert!(daemon.is_none(), "{pid_arg}: a detached server runs on");
        let refused = std::net::TcpStream::connect(("127.0.0.1", port.parse::<u16>().unwrap()));
        assert!(refused.is_err(), "{pid_arg}: something listens on {port}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// Kills the daemon when the test ends, however it ends.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: signalling the daemon this test started (found by its exact command line with a port only this test uses).
        unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
    }
}

fn scopeguard(pid: u32) -> KillOnDrop {
    KillOnDrop(pid)
}

/// The binary under an address-space limit of `limit_kib` (`ulimit -v`), as an
/// operator with a tight limit would start it, with `env` added; stderr piped.
fn spawn_with_address_limit(
    args: &[&str],
    limit_kib: u64,
    env: &[(&str, &str)],
) -> std::process::Child {
    spawn_limited(args, libc::RLIMIT_AS, limit_kib * 1024, env)
}

/// The binary with `resource` limited to `limit` (soft and hard), `env` added;
/// stderr piped.
fn spawn_limited(
    args: &[&str],
    resource: util::Resource,
    limit: u64,
    env: &[(&str, &str)],
) -> std::process::Child {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .env_remove("NOTIFY_SOCKET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    util::limit_before_exec(&mut cmd, resource, limit);
    cmd.spawn().unwrap()
}

/// Waits at most 10 s for `child` to exit (killing it then): its status, and
/// its stderr.
fn finish(mut child: std::process::Child) -> (Option<i32>, String) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary to completion under an address-space limit of `limit_kib`:
/// status, stderr.
fn run_with_address_limit(
    args: &[&str],
    limit_kib: u64,
    env: &[(&str, &str)],
) -> (Option<i32>, String) {
    finish(spawn_with_address_limit(args, limit_kib, env))
}

fn assert_one_line_status_10(code: Option<i32>, stderr: &str, args: &[&str]) {
    assert_eq!(code, Some(10), "{args:?}: {stderr}");
    // A huge -C may also warn that the fd limit is lower (a warning, not the error).
    let errors = stderr.lines().filter(|l| !l.contains("open files limit"));
    assert_eq!(errors.count(), 1, "{args:?}: one line: {stderr:?}");
    assert!(stderr.starts_with("conn-daemon: "), "{stderr:?}");
    assert!(!stderr.contains("panicked"), "{stderr:?}");
}

#[test]
fn sizes_the_host_cannot_give_are_one_line_and_status_10() {
    let port = free_port().to_string();
    for args in [
        &["-A", "18446744073709551615"][..],
        &["-A", "1", "-w", "18446744073709551615"],
        &["-A", "128", "-C", "16777216", "-w", "1"],
    ] {
        let mut all = vec!["-p", &port];
        all.extend_from_slice(args);
        let (code, stderr) = util::start_fails(&all);
        assert_one_line_status_10(code, &stderr, args);
    }
}

#[test]
fn pools_that_cannot_be_reserved_exit_10_whatever_the_accept_threads() {
    let port = free_port().to_string();
    for threads in ["1", "2"] {
        let args = ["-p", &port, "-A", threads, "-C", "16777216", "-w", "0"];
        let notify = util::Notify::bind();
        let env = [("NOTIFY_SOCKET", notify.env())];
        let (code, stderr) = run_with_address_limit(&args, 2_000_000, &env);
        assert_one_line_status_10(code, &stderr, &args);
        // Thread 0's pool is reserved before the server says it serves: a
        // service manager (or an upgrading predecessor) is never told "ready"
        // by a process about to exit.
        assert!(
            !notify.ready_within(Duration::from_millis(100)),
            "-A {threads}: READY=1 sent before exit 10"
        );
    }
}

/// A worker loop's pool (`--delegate loop`) is a pool too: worker loops are built
/// before the accept threads, so under the limit theirs is the first that cannot
/// be reserved, and that is status 10 (not 100) with a line naming it.
#[test]
fn a_worker_loop_pool_that_cannot_be_reserved_exits_10() {
    let port = free_port().to_string();
    let args = [
        "-p",
        &port,
        "-A",
        "1",
        "-C",
        "1000000",
        "-w",
        "1",
        "--delegate",
        "loop",
    ];
    let (code, stderr) = run_with_address_limit(&args, 2_000_000, &[]);
    assert_one_line_status_10(code, &stderr, &args);
    assert!(
        stderr.contains("cannot reserve the connection pool of worker-0"),
        "{stderr}"
    );
}

/// Whatever the address-space limit, start-up either serves or exits 10 with
/// one line: no allocation at start-up may abort the process (the queues, the
/// pools' free lists, the rings sized by `-C`), and a thread whose stack is
/// refused is "threads cannot be had" too. Limits from 16 MB to 2 GB, every
/// mode, one and two accept threads; and `-C 16777216`, whose queues alone do
/// not fit below 512 MB.
#[test]
fn under_any_address_space_limit_start_up_serves_or_exits_10() {
    let port = free_port().to_string();
    let limits_mb = [
        16u64, 24, 32, 48, 64, 100, 150, 250, 400, 600, 900, 1300, 2000,
    ];
    let mut served = 0;
    let mut cases = Vec::new();
    for mode in ["task", "socket", "loop"] {
        for threads in ["1", "2"] {
            for mb in limits_mb {
                cases.push((mode, threads, "100000", mb));
            }
        }
        for mb in [100, 300, 450] {
            cases.push((mode, "1", "16777216", mb));
        }
    }
    for (mode, threads, capacity, mb) in cases {
        let args = [
            "-p",
            &port,
            "-A",
            threads,
            "-C",
            capacity,
            "-w",
            "2",
            "--delegate",
            mode,
        ];
        let notify = util::Notify::bind();
        let env = [("NOTIFY_SOCKET", notify.env())];
        let mut child = spawn_with_address_limit(&args, mb * 1000, &env);
        let deadline = Instant::now() + Duration::from_secs(10);
        let started = loop {
            if notify.ready_within(Duration::from_millis(5)) {
                break true;
            }
            if child.try_wait().unwrap().is_some() || Instant::now() >= deadline {
                break false;
            }
        };
        if started {
            served += 1;
            let _ = child.kill();
            let _ = child.wait();
            continue;
        }
        let (code, stderr) = finish(child);
        let what = format!("{args:?} under {mb} MB");
        assert_one_line_status_10(code, &stderr, &[what.as_str()]);
    }
    // The sweep reaches limits where the server does start.
    assert!(served > 0, "no limit was wide enough to serve");
}

/// Starts `args` under `ulimit -n limit`: whether it served (said READY=1),
/// else its exit status and stderr.
fn start_under_fd_limit(args: &[&str], limit: u64) -> Result<(), (Option<i32>, String)> {
    let notify = util::Notify::bind();
    let env = [("NOTIFY_SOCKET", notify.env())];
    let mut child = spawn_limited(args, libc::RLIMIT_NOFILE, limit, &env);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if notify.ready_within(Duration::from_millis(5)) {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(());
        }
        if child.try_wait().unwrap().is_some() || Instant::now() >= deadline {
            return Err(finish(child));
        }
    }
}

/// An open-files limit start-up would run out of is one line and exit 100,
/// before anything is created: libev aborted (SIGABRT, a core dump) when an
/// eventfd could not be made, at `ulimit -n 1024` with `-A 300 -C 10` and at
/// 10 to 14 with `-A 2`. Swept from 8 up in three shapes (the worker loops of
/// `--delegate loop`, `--metrics`): each limit serves or refuses, and the
/// number of fds the line says start-up needs is the first limit that serves.
#[test]
fn an_open_files_limit_start_up_would_run_out_of_is_one_line_and_exit_100() {
    let port = free_port().to_string();
    let many = ["-p", &port, "-A", "300", "-C", "10", "-w", "1"];
    let (code, stderr) = start_under_fd_limit(&many, 1024).unwrap_err();
    assert_eq!(code, Some(100), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("conn-daemon: open files limit 1024 is below the "),
        "{stderr}"
    );
    let metrics = format!("127.0.0.1:{}", free_port());
    let shapes: [&[&str]; 3] = [
        &["-A", "2", "-C", "10", "-w", "2"],
        &["-A", "2", "-C", "10", "-w", "3", "--delegate", "loop"],
        &["-A", "3", "-C", "10", "-w", "1", "--metrics", &metrics],
    ];
    for shape in shapes {
        let mut args = vec!["-p", &port];
        args.extend_from_slice(shape);
        let mut said_needed = None;
        let mut first_served = None;
        // Below about 5 the dynamic loader itself cannot open the libraries.
        for limit in 8..80u64 {
            match start_under_fd_limit(&args, limit) {
                Ok(()) => {
                    first_served = Some(limit);
                    break;
                }
                Err((code, stderr)) => {
                    let prefix = format!("conn-daemon: open files limit {limit} is below the ");
                    assert!(
                        code == Some(100) && stderr.lines().count() == 1,
                        "{shape:?} under {limit}: {code:?}\n{stderr}"
                    );
                    let rest = stderr.strip_prefix(&prefix).unwrap_or_else(|| {
                        panic!("{shape:?} under {limit}: {stderr}");
                    });
                    said_needed = rest.split(' ').next().and_then(|n| n.parse::<u64>().ok());
                }
            }
        }
        assert!(said_needed.is_some(), "{shape:?}: served even under 8 fds");
        assert_eq!(first_served, said_needed, "{shape:?}");
    }
}

/// The pid file's temporary name is never followed as a symlink: with links
/// planted under every name the next pids would use, pointing at another file,
/// that file is left alone and the pid file still names the server.
#[test]
fn the_pid_file_is_not_written_through_a_planted_symlink() {
    let dir = std::env::temp_dir().join(format!("conn-daemon-pidlink-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let victim = dir.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let pid_file = dir.join("cd.pid");
    let last: u32 = std::fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    for pid in last + 1..last + 3000 {
        let link = dir.join(format!("cd.pid.{pid}.tmp"));
        std::os::unix::fs::symlink(&victim, link).unwrap();
    }
    let pid_arg = pid_file.to_str().unwrap();
    let server = Server::start(&["-A", "1", "-w", "0", "--pid-file", pid_arg]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let written = loop {
        match std::fs::read_to_string(&pid_file) {
            Ok(text) if !text.is_empty() => break text,
            _ => {
                assert!(Instant::now() < deadline, "no pid file");
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    };
    assert!(
        (last + 1..last + 3000).contains(&server.pid()),
        "the server's pid {} is outside the planted range: the test proves nothing",
        server.pid()
    );
    assert_eq!(written, format!("{}\n", server.pid()));
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n");
    assert!(!std::fs::symlink_metadata(&pid_file)
        .unwrap()
        .file_type()
        .is_symlink());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Thirty instances started at once on one port: exactly one listens, every
/// other exits 100 with the busy-port line. Claiming the port and opening the
/// `SO_REUSEPORT` group are one step, so no two can both pass a check first.
#[test]
fn of_instances_started_at_once_on_one_port_one_listens() {
    const N: usize = 30;
    for round in 0..2 {
        let port = free_port();
        let args = ["-p", &port.to_string(), "-A", "2", "-w", "0", "-C", "64"];
        let mut children: Vec<_> = (0..N)
            .map(|_| {
                Command::new(bin())
                    .args(args)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut refused = Vec::new();
        while refused.len() < N - 1 && Instant::now() < deadline {
            for child in &mut children {
                if let Some(status) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    child
                        .stderr
                        .take()
                        .unwrap()
                        .read_to_string(&mut err)
                        .unwrap();
                    refused.push((child.id(), status.code(), err));
                }
            }
            children.retain(|c| c.stderr.is_some());
            std::thread::sleep(Duration::from_millis(10));
        }
        // Let a second listener show itself (it would be running, not exited).
        std::thread::sleep(Duration::from_millis(200));
        for child in &mut children {
            let _ = child.kill();
            let _ = child.wait();
        }
        assert_eq!(
            children.len(),
            1,
            "round {round}: {} instances still running on port {port}",
            children.len()
        );
        for (pid, code, err) in &refused {
            assert_eq!(*code, Some(100), "round {round}: pid {pid}: {err}");
            assert!(
                err.starts_with(&format!("conn-daemon: port {port} is already in use")),
                "round {round}: pid {pid}: {err}"
            );
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}

/// Resident memory of `pid` in bytes (`VmRSS`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap();
    kb * 1024
}

/// What an idle server costs per reserved connection is what `--help` and the
/// docs say: 32 bytes of task queue per slot with workers, the pools nothing.
#[test]
fn idle_memory_per_reserved_slot_is_the_documented_32_bytes() {
    const SLOTS: u64 = 2_000_000;
    let c = SLOTS.to_string();
    let with = Server::start(&["-A", "1", "-C", &c, "-w", "1"]);
    let without = Server::start(&["-A", "1", "-C", &c, "-w", "0"]);
    // Served: every start-up allocation is done (the listeners take
    // connections before the queues are built).
    for server in [&with, &without] {
        let s = server.connect();
        util::send(&s, b"GET /test/fast\r\n\r\n");
        check_response(&s, IO_TIMEOUT).unwrap();
    }
    let (a, b) = (rss(with.pid()), rss(without.pid()));
    let per_slot = a.saturating_sub(b) as f64 / SLOTS as f64;
    assert!(
        (28.0..=36.0).contains(&per_slot),
        "{per_slot:.1} bytes per slot ({a} with a worker, {b} without)"
    );
    // Without workers, a server reserving 2M connections stays small.
    assert!(b < 32 << 20, "{b} bytes resident with -w 0");
    let help = run_bounded(&["--help"], Duration::from_secs(10));
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("32 bytes of task queue per connection"),
        "{help}"
    );
}
