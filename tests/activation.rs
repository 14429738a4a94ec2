//! Socket activation (`LISTEN_FDS`/`LISTEN_PID`, as systemd and the upgrade
//! pass sockets) and service-manager notification (`NOTIFY_SOCKET`).
#![allow(unsafe_code)]

mod util;

use std::fs;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use util::lineage::Lineage;
use util::{check_response, free_port, listening_sockets_on, socket_inodes_of};

const FAST: &[u8] = b"GET /test/fast\r\n\r\n";

/// A listening socket on 127.0.0.1:`port`, as systemd would make it.
fn listening_socket(port: u16, reuse_port: bool) -> OwnedFd {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    s.set_reuse_address(true).unwrap();
    s.set_reuse_port(reuse_port).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    s.listen(128).unwrap();
    s.into()
}

/// Starts the server with `fds` as 3, 4, ... and `LISTEN_FDS`/`LISTEN_PID` set
/// for it (the shell's pid is the server's: it execs).
fn activated(fds: &[RawFd], args: &[&str], stderr: &std::path::Path) -> Child {
    activated_as(None, fds, args, stderr)
}

/// As [`activated`], switching to `uid` before the exec (as systemd runs a
/// service as its user with sockets it made as root).
fn activated_as(uid: Option<u32>, fds: &[RawFd], args: &[&str], stderr: &std::path::Path) -> Child {
    activated_with(uid, fds, args, &[], stderr)
}

/// As [`activated_as`], with `env` added to the server's environment.
fn activated_with(
    uid: Option<u32>,
    fds: &[RawFd],
    args: &[&str],
    env: &[(&str, &str)],
    stderr: &std::path::Path,
) -> Child {
    // Held across the copy below and the fork (see `spawn_guard`).
    let _guard = util::lineage::spawn_guard();
    let bin = match uid {
        // The build directory may not be reachable by another user (a clone under
        // /root): run a copy from a directory everyone can read.
        Some(_) => {
            let dir = tmp("bin");
            fs::create_dir_all(&dir).unwrap();
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
            let copy = dir.join("conn-daemon");
            if !copy.exists() {
                fs::copy(util::bin(), &copy).unwrap();
                fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
            }
            copy.to_string_lossy().into_owned()
        }
        None => util::bin(),
    };
    let mut targets = [-1 as RawFd; 8];
    assert!(fds.len() <= targets.len());
    targets[..fds.len()].copy_from_slice(fds);
    let n = fds.len();
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(format!("LISTEN_PID=$$ LISTEN_FDS={n} exec \"$0\" \"$@\""))
        .arg(bin)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(stderr).unwrap());
    // The fds are moved above the target range first so none is overwritten.
    // SAFETY: between fork and exec only fcntl/dup2/setgid/setuid on a fixed array: async-signal-safe, no allocation.
    unsafe {
        cmd.pre_exec(move || {
            let mut high = [-1 as RawFd; 8];
            for (h, &fd) in high.iter_mut().zip(&targets[..n]) {
                *h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
            }
            for (i, &fd) in high[..n].iter().enumerate() {
                if libc::dup2(fd, 3 + i as RawFd) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            if let Some(uid) = uid {
                if libc::setgid(uid) == -1 || libc::setuid(uid) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    cmd.spawn().expect("spawn sh")
}

fn wait_answering(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            util::send(&s, FAST);
            if check_response(&s, Duration::from_secs(5)).is_ok() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{addr} never answered");
        thread::sleep(Duration::from_millis(10));
    }
}

/// Every one of `n` connections answered.
fn all_answered(addr: SocketAddr, n: usize) {
    for i in 0..n {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        util::send(&s, FAST);
        if let Err(e) = check_response(&s, Duration::from_secs(5)) {
            panic!("connection {i} to {addr}: {e}");
        }
    }
}

fn stop(mut child: Child) {
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "still running after SIGTERM");
        thread::sleep(Duration::from_millis(5));
    }
}

fn tmp(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "conn-daemon-activation-{}-{name}",
        std::process::id()
    ))
}

/// An inherited fd 3 is served; `-p` is not bound.
#[test]
fn serves_an_inherited_socket_and_binds_nothing() {
    let port = free_port();
    let other = free_port();
    let sock = listening_socket(port, false);
    let err = tmp("one");
    let child = activated(
        &[sock.as_raw_fd()],
        &["-A", "1", "-p", &other.to_string()],
        &err,
    );
    drop(sock);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_answering(addr);
    all_answered(addr, 20);
    assert!(
        TcpStream::connect(("127.0.0.1", other)).is_err(),
        "-p {other} was bound although sockets were inherited"
    );
    // The very socket we made, not a new one.
    assert_eq!(listening_sockets_on(port).len(), 1);
    stop(child);
    let _ = fs::remove_file(err);
}

/// One inherited `SO_REUSEPORT` socket and `-A 3`: the two other threads open
/// their own sockets in the same group. Without `SO_REUSEPORT` they share the
/// inherited one instead, and so they do when the kernel refuses them the group
/// (a socket made by root, a server running as another user: systemd's case).
#[test]
fn more_threads_than_inherited_sockets() {
    // SAFETY: getuid has no preconditions.
    let root = unsafe { libc::getuid() } == 0;
    if !root {
        eprintln!("not root: the case of a server running as another user is skipped");
    }
    let mut cases = vec![(true, None), (false, None)];
    if root {
        cases.push((true, Some(65534)));
    }
    for (reuse_port, uid) in cases {
        let port = free_port();
        let sock = listening_socket(port, reuse_port);
        let err = tmp(&format!("more-{reuse_port}-{uid:?}"));
        let child = activated_as(uid, &[sock.as_raw_fd()], &["-A", "3"], &err);
        drop(sock);
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_answering(addr);
        all_answered(addr, 30);
        let own = socket_inodes_of(child.id());
        let listening: Vec<u64> = listening_sockets_on(port)
            .into_iter()
            .filter(|i| own.contains(i))
            .collect();
        let expected = if reuse_port && uid.is_none() { 3 } else { 1 };
        assert_eq!(
            listening.len(),
            expected,
            "SO_REUSEPORT {reuse_port}, uid {uid:?}: listening sockets {listening:?}; stderr:\n{}",
            fs::read_to_string(&err).unwrap_or_default()
        );
        stop(child);
        let _ = fs::remove_file(err);
    }
    let _ = fs::remove_dir_all(tmp("bin"));
}

/// Three inherited sockets on one address and `-A 1`: the one thread serves
/// all three (the kernel spreads connections over them; none may be left
/// unserved).
#[test]
fn fewer_threads_than_inherited_sockets() {
    let port = free_port();
    let socks: Vec<OwnedFd> = (0..3).map(|_| listening_socket(port, true)).collect();
    let fds: Vec<RawFd> = socks.iter().map(|s| s.as_raw_fd()).collect();
    let err = tmp("fewer");
    let child = activated(&fds, &["-A", "1"], &err);
    drop(socks);
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    wait_answering(addr);
    all_answered(addr, 60);
    stop(child);
    let _ = fs::remove_file(err);
}

/// An inherited fd that is not a listening TCP socket: exit 100, one line.
#[test]
fn an_inherited_fd_that_is_not_a_listener_is_refused() {
    let port = free_port();
    let bound_only = TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let udp = std::net::UdpSocket::bind(("127.0.0.1", 0)).unwrap();
    let file = fs::File::open("/dev/null").unwrap();
    let unconnected: OwnedFd = Socket::new(Domain::IPV4, Type::STREAM, None)
        .unwrap()
        .into();
    let cases: [(&str, RawFd); 3] = [
        ("udp", udp.as_raw_fd()),
        ("file", file.as_raw_fd()),
        ("not listening", unconnected.as_raw_fd()),
    ];
    for (what, fd) in cases {
        let err = tmp(&format!("bad-{}", what.replace(' ', "-")));
        let mut child = activated(
            &[bound_only.as_raw_fd(), fd],
            &["-A", "1", "-p", &port.to_string()],
            &err,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "{what}: still running");
            thread::sleep(Duration::from_millis(5));
        };
        let stderr = fs::read_to_string(&err).unwrap();
        assert_eq!(
            status.code(),
            Some(100),
            "{what}: {status}; stderr:\n{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{what}: stderr:\n{stderr}");
        assert!(
            stderr.contains("inherited fd 4 is not a listening TCP socket"),
            "{what}: {stderr}"
        );
        let _ = fs::remove_file(err);
    }
}

/// A readiness pipe on a standard stream (`CONN_DAEMON_READY_FD=1`) is named
/// for what it is, not as an fd that is not open; nothing is closed on the way.
#[test]
fn a_readiness_fd_on_a_standard_stream_is_refused_by_name() {
    let port = free_port();
    let sock = listening_socket(port, true);
    for (fd, name) in [
        ("0", "standard input"),
        ("1", "standard output"),
        ("2", "standard error"),
    ] {
        let err = tmp(&format!("ready-fd-{fd}"));
        let mut child = activated_with(
            None,
            &[sock.as_raw_fd()],
            &["-A", "1", "-p", &port.to_string()],
            &[("CONN_DAEMON_READY_FD", fd)],
            &err,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(Instant::now() < deadline, "fd {fd}: still running");
            thread::sleep(Duration::from_millis(5));
        };
        let stderr = fs::read_to_string(&err).unwrap();
        assert_eq!(
            status.code(),
            Some(100),
            "fd {fd}: {status}; stderr:\n{stderr}"
        );
        assert_eq!(
            stderr,
            format!(
                "conn-daemon: CONN_DAEMON_READY_FD={fd} names {name}, not a readiness pipe \
                 (an upgrading conn-daemon hands it over as fd 3 or above)\n"
            ),
            "fd {fd}"
        );
        let _ = fs::remove_file(err);
    }
}

/// A readiness pipe on an fd that `LISTEN_FDS` hands over as a socket is
/// refused with one line: taken twice, it was closed after the readiness write
/// under the loop watching it, and libev aborted in `epoll_modify`.
#[test]
fn a_readiness_fd_that_names_an_inherited_socket_is_refused() {
    let port = free_port();
    let sock = listening_socket(port, true);
    let err = tmp("ready-fd-socket");
    let mut child = activated_with(
        None,
        &[sock.as_raw_fd()],
        &["-A", "1", "-p", &port.to_string()],
        &[("CONN_DAEMON_READY_FD", "3")],
        &err,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running; stderr:\n{}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stderr = fs::read_to_string(&err).unwrap();
    assert_eq!(status.code(), Some(100), "{status}; stderr:\n{stderr}");
    assert_eq!(
        stderr,
        "conn-daemon: CONN_DAEMON_READY_FD=3 names an inherited socket (LISTEN_FDS=1 \
         hands over fds 3 to 3), not a readiness pipe (an upgrading conn-daemon hands it \
         over after the sockets)\n"
    );
    let _ = fs::remove_file(err);
}

/// Reads the next notification (bounded wait).
fn next_notification(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock
        .recv(&mut buf)
        .unwrap_or_else(|e| panic!("no notification within the timeout: {e}"));
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

/// READY with MAINPID when serving; RELOADING on SIGUSR2; MAINPID and READY
/// from the new process; STOPPING when the drain starts. Nothing without
/// NOTIFY_SOCKET (the other tests run without it).
#[test]
fn notifies_the_service_manager_in_order() {
    let path = tmp("notify.sock");
    let _ = fs::remove_file(&path);
    let sock = UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut lineage = Lineage::start_with_env(
        &["-A", "1", "-w", "1"],
        &[("NOTIFY_SOCKET", path.to_str().unwrap())],
    );
    let first = lineage.pid();
    let ready = next_notification(&sock);
    assert_eq!(
        ready.lines().take(2).collect::<Vec<_>>(),
        [format!("MAINPID={first}"), "READY=1".into()],
        "{ready}"
    );
    assert!(ready.contains("STATUS="), "{ready}");
    let second = lineage.upgrade().expect("upgrade");
    let reloading = next_notification(&sock);
    assert!(
        reloading.starts_with("RELOADING=1\nMONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(
        reloading.contains(&format!("new process {second}")),
        "{reloading}"
    );
    let ready = next_notification(&sock);
    assert!(
        ready.starts_with(&format!("MAINPID={second}\nREADY=1\n")),
        "{ready}"
    );
    lineage.stop(Duration::from_secs(10)).unwrap();
    let stopping = next_notification(&sock);
    assert!(stopping.starts_with("STOPPING=1"), "{stopping}");
    let _ = fs::remove_file(path);
}

/// Runs an activated server that must refuse to start: (status, stderr).
fn activated_refusal(fds: &[RawFd], args: &[&str], name: &str) -> (Option<i32>, String) {
    let err = tmp(name);
    let mut child = activated(fds, args, &err);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{name}: still running: {}",
                fs::read_to_string(&err).unwrap_or_default()
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    let stderr = fs::read_to_string(&err).unwrap();
    let _ = fs::remove_file(err);
    (status.code(), stderr)
}

/// Under socket activation `--metrics` is checked as on a command line of its
/// own: not the port of an inherited service socket, and not an address another
/// instance's metrics listener holds (it would split its scrapes).
#[test]
fn metrics_under_activation_is_checked() {
    let port = free_port();
    let sock = listening_socket(port, true);
    let (code, stderr) = activated_refusal(
        &[sock.as_raw_fd()],
        &["-A", "1", "--metrics", &format!("127.0.0.2:{port}")],
        "metrics-service-port",
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(
        stderr,
        format!("conn-daemon: --metrics must not use the service port {port}: give it a port of its own\n")
    );
    // Another instance's metrics listener (SO_REUSEPORT, as ours has).
    let metrics_port = free_port();
    let other = listening_socket(metrics_port, true);
    let (code, stderr) = activated_refusal(
        &[sock.as_raw_fd()],
        &["-A", "1", "--metrics", &format!("127.0.0.1:{metrics_port}")],
        "metrics-busy",
    );
    assert_eq!(code, Some(100), "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "conn-daemon: cannot listen for metrics on 127.0.0.1:{metrics_port}: "
        )),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    drop(other);
}
