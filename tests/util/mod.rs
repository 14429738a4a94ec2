//! Shared helpers for the integration tests: start the real `conn-daemon` binary
//! on a free port, talk to it over loopback, and inspect it through `/proc`.
//!
//! Every wait here is bounded: a misbehaving server makes a test fail with a
//! message (and the server's stderr), never hang.
//!
//! Include with `mod util;` from a test file. Not every test uses every helper.
#![allow(dead_code)]
#![allow(unsafe_code)]

use std::fmt;
use std::fs;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{self as unix, UnixDatagram};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

/// The one response the server ever sends (docs/protocol.md rule 5): exactly 57 bytes.
pub const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// Read/write timeout of the streams `Server::connect` returns, and the bound on
/// every "wait for the server to answer or close" helper.
pub const IO_TIMEOUT: Duration = Duration::from_secs(5);

/// How long `Server::start` waits for the server to be ready.
pub const START_TIMEOUT: Duration = Duration::from_secs(10);

/// How long `Server::start` waits for `READY=1` from a binary named by
/// `CONN_DAEMON_BIN` before it takes it for one that does not notify (the C++
/// reference) and probes its port instead.
pub const NOTIFY_GRACE: Duration = Duration::from_secs(1);

/// Path of the server binary under test: the crate's `conn-daemon`, unless the
/// environment variable `CONN_DAEMON_BIN` names another (e.g. a release build or
/// the C++ reference, to run the same conformance tests against it).
pub fn bin() -> String {
    std::env::var("CONN_DAEMON_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_conn-daemon").to_string())
}

/// Whether `CONN_DAEMON_BIN` names the binary under test: it may be one that
/// never sends `READY=1`.
fn other_bin() -> bool {
    std::env::var_os("CONN_DAEMON_BIN").is_some()
}

pub mod alloc_count;
pub mod example;
pub mod lineage;
pub mod metrics;

/// The loopback address the tests talk to: 127.0.0.1, or `::1` with
/// `CONN_DAEMON_TEST_HOST=::1`, which runs the same tests over IPv6 (the server
/// is then started with `--listen [::1]`).
pub fn host() -> std::net::IpAddr {
    std::env::var("CONN_DAEMON_TEST_HOST")
        .ok()
        .and_then(|h| h.parse().ok())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]))
}

/// `--delegate MODE` when `CONN_DAEMON_TEST_DELEGATE=MODE` is set: the same tests
/// then run in that delegation mode, unless the test's own `args` name one.
pub fn delegate_args(args: &[&str]) -> Vec<String> {
    if delegate_mode() == "task" {
        return vec![];
    }
    if args.iter().any(|a| a.starts_with("--delegate")) {
        return vec![];
    }
    vec!["--delegate".into(), delegate_mode()]
}

/// The `--delegate` mode the tests run in (`CONN_DAEMON_TEST_DELEGATE`, `task`
/// by default).
pub fn delegate_mode() -> String {
    std::env::var("CONN_DAEMON_TEST_DELEGATE")
        .ok()
        .filter(|m| !m.is_empty())
        .unwrap_or_else(|| "task".into())
}

/// A TCP port that was free on 127.0.0.1 a moment ago (bind port 0, read it, drop).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().expect("local_addr").port()
}

/// Printable form of a byte string for assertion messages.
pub fn show(bytes: &[u8]) -> String {
    format!("\"{}\" ({} bytes)", bytes.escape_ascii(), bytes.len())
}

/// `n` milliseconds, so that a test's many durations read as numbers.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// `n` seconds (see [`ms`]).
pub fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// Lines of `text` that contain `needle`: how often the server logged something.
pub fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

static SERIAL: Mutex<()> = Mutex::new(());

/// A guard to hold for the whole of a test that must not run alongside the
/// other tests of its binary that take one: they load the cores or exhaust
/// fds, which would skew each other's timings. One lock per test binary, each
/// its own process.
///
/// The wait lasts as long as the tests before it, each of which is bounded. A
/// test that panicked while holding it does not stop the next (the poison is
/// ignored): its failure is already reported.
pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A new connection to `addr` with TCP_NODELAY and `IO_TIMEOUT` read/write
/// timeouts; panics if it is not established within `IO_TIMEOUT`.
#[track_caller]
pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_nodelay(true).expect("set_nodelay");
    s.set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    s.set_write_timeout(Some(IO_TIMEOUT))
        .expect("set_write_timeout");
    s
}

/// Sets SO_LINGER 0 on `stream`, so that its close (whenever it is dropped)
/// sends an RST instead of a FIN: a client that vanishes mid-exchange.
pub fn reset_on_close(stream: &TcpStream) {
    socket2::SockRef::from(stream)
        .set_linger(Some(Duration::ZERO))
        .expect("SO_LINGER 0");
}

/// Closes `stream` now with an RST instead of a FIN (see [`reset_on_close`]).
pub fn reset(stream: TcpStream) {
    reset_on_close(&stream);
    drop(stream);
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// The service manager's end of `NOTIFY_SOCKET`, owned by the test: a datagram
/// socket in the abstract namespace (nothing to clean up), named after this
/// process and a sequence number so that every server gets its own.
pub struct Notify {
    sock: UnixDatagram,
    /// The value of `NOTIFY_SOCKET`: `@` and the abstract name.
    env: String,
}

impl Notify {
    /// A new socket, bound.
    pub fn bind() -> Notify {
        let name = format!(
            "conn-daemon-test-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let addr = unix::SocketAddr::from_abstract_name(name.as_bytes())
            .unwrap_or_else(|e| panic!("abstract socket address {name}: {e}"));
        let sock = UnixDatagram::bind_addr(&addr)
            .unwrap_or_else(|e| panic!("bind the notify socket @{name}: {e}"));
        Notify {
            sock,
            env: format!("@{name}"),
        }
    }

    /// The value for the server's `NOTIFY_SOCKET`.
    pub fn env(&self) -> &str {
        &self.env
    }

    /// Waits at most `wait` for a datagram; whether one said `READY=1`.
    pub fn ready_within(&self, wait: Duration) -> bool {
        self.sock
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .expect("set_read_timeout on the notify socket");
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => buf[..n].split(|&b| b == b'\n').any(|l| l == b"READY=1"),
            Err(e) if is_timeout(&e) || e.kind() == ErrorKind::Interrupted => false,
            Err(e) => panic!("recv on the notify socket: {e}"),
        }
    }
}

/// A running `conn-daemon`. Killed (SIGKILL) and reaped on drop.
pub struct Server {
    child: Child,
    port: u16,
    args: Vec<String>,
    stderr_path: PathBuf,
    exited: Option<ExitStatus>,
    probed: bool,
}

impl Server {
    /// Starts the server with `-p <free port>` followed by `args`, and waits (at most
    /// `START_TIMEOUT`) until it is ready: until it sends `READY=1` on a
    /// `NOTIFY_SOCKET` this function owns (once every accept thread is listening),
    /// so that no connection of the test's own shows up in the server's counts.
    /// Panics with the server's stderr if it exits first. Retries with another port
    /// if the chosen one was taken in the meantime (bind error on stderr).
    ///
    /// The port is probed with a connection (which the server sees close without a
    /// byte) instead when the caller passes its own `NOTIFY_SOCKET` in `env`, or when
    /// `CONN_DAEMON_BIN` names a binary that sent no `READY=1` within `NOTIFY_GRACE`
    /// (the C++ reference does not notify).
    pub fn start(args: &[&str]) -> Server {
        Server::start_with_env(args, &[])
    }

    /// `start`, with these variables added to the server's environment.
    pub fn start_with_env(args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Server {
        Server::start_in(args, env, None)
    }

    /// `start`, with the server's `resource` limited to `limit` (soft and hard,
    /// see [`limit_before_exec`]): a small RLIMIT_NOFILE that a test can run it
    /// out of, say.
    pub fn start_limited(resource: Resource, limit: u64, args: &[&str]) -> Server {
        Server::start_in(args, &[], Some((resource, limit)))
    }

    fn start_in(
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        limit: Option<(Resource, u64)>,
    ) -> Server {
        let mut last_err = String::new();
        for _attempt in 0..5 {
            match Server::try_start(args, env, limit) {
                Ok(s) => return s,
                Err((status, stderr)) => {
                    let lower = stderr.to_lowercase();
                    let port_taken = lower.contains("in use")
                        || lower.contains("eaddrinuse")
                        || lower.contains("os error 98");
                    last_err = format!(
                        "conn-daemon {args:?} exited during startup ({status:?}); stderr:\n{stderr}"
                    );
                    if !port_taken {
                        break;
                    }
                }
            }
        }
        panic!("{last_err}");
    }

    fn try_start(
        args: &[&str],
        env: &[(&str, &std::ffi::OsStr)],
        limit: Option<(Resource, u64)>,
    ) -> Result<Server, (Option<ExitStatus>, String)> {
        let port = free_port();
        let stderr_path = std::env::temp_dir().join(format!(
            "conn-daemon-test-{}-{}-{}.stderr",
            std::process::id(),
            port,
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let stderr_file = fs::File::create(&stderr_path).expect("create stderr log file");
        let port_s = port.to_string();
        let listen: Vec<String> = match host() {
            std::net::IpAddr::V4(ip) if ip.is_loopback() && ip.octets() == [127, 0, 0, 1] => vec![],
            ip => vec!["--listen".into(), SocketAddr::new(ip, port).to_string()],
        };
        let notify = (!env.iter().any(|(k, _)| *k == "NOTIFY_SOCKET")).then(Notify::bind);
        let mut command = Command::new(bin());
        command
            .arg("-p")
            .arg(&port_s)
            .args(&listen)
            .args(delegate_args(args))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr_file));
        // Always set (or removed), so that a NOTIFY_SOCKET of the test run's own
        // (a CI runner under systemd) never reaches the server.
        match &notify {
            Some(n) => command.env("NOTIFY_SOCKET", &n.env),
            None => command.env_remove("NOTIFY_SOCKET"),
        };
        if let Some((resource, value)) = limit {
            limit_before_exec(&mut command, resource, value);
        }
        let child = command
            .envs(env.iter().copied())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin()));
        let mut server = Server {
            child,
            port,
            args: args.iter().map(|s| s.to_string()).collect(),
            stderr_path,
            exited: None,
            probed: false,
        };
        let started = Instant::now();
        let deadline = started + START_TIMEOUT;
        loop {
            if let Some(status) = server.try_wait() {
                return Err((Some(status), server.stderr()));
            }
            let probe = match &notify {
                // The socket is closed on return: the server's later notifications
                // (STOPPING=1, an upgrade's) then fail at once instead of filling a
                // queue nobody reads, on which the server's send would block.
                Some(n) if n.ready_within(Duration::from_millis(10)) => return Ok(server),
                Some(_) => other_bin() && started.elapsed() >= NOTIFY_GRACE,
                None => true,
            };
            if probe {
                if let Ok(s) =
                    TcpStream::connect_timeout(&server.addr(), Duration::from_millis(200))
                {
                    // The probe: the server sees a connection that closes without a byte.
                    drop(s);
                    server.probed = true;
                    return Ok(server);
                }
            }
            if Instant::now() >= deadline {
                let stderr = server.stderr();
                let waited = if probe {
                    "did not accept on"
                } else {
                    "sent no READY=1 (NOTIFY_SOCKET), listening on"
                };
                panic!(
                    "conn-daemon {:?} {waited} {} within {START_TIMEOUT:?}; stderr:\n{stderr}",
                    server.args,
                    server.addr()
                );
            }
            // (Waiting for READY=1 waited in the recv.)
            if probe {
                thread::sleep(Duration::from_millis(10));
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether readiness was learnt from a probe connection (see [`Server::start`]),
    /// which the server may not have closed yet: counts taken right after start-up
    /// then include it.
    pub fn probed(&self) -> bool {
        self.probed
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// 127.0.0.1:PORT, or [::1]:PORT (see [`host`]).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(host(), self.port)
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// A new connection to the server: [`connect`] to [`Server::addr`].
    #[track_caller]
    pub fn connect(&self) -> TcpStream {
        connect(self.addr())
    }

    /// One connection: send all of `bytes` in one write, then read until EOF (or
    /// reset) and return what arrived. Panics if the server neither closes nor
    /// finishes within `IO_TIMEOUT`.
    #[track_caller]
    pub fn request(&self, bytes: &[u8]) -> Vec<u8> {
        let s = self.connect();
        send(&s, bytes);
        let r = read_to_end(&s, IO_TIMEOUT);
        assert!(
            r.end != End::Timeout,
            "request {}: no EOF within {IO_TIMEOUT:?}; got {} so far",
            show(bytes),
            show(&r.bytes)
        );
        r.bytes
    }

    /// Number of open file descriptors of the server (see [`fd_count_of`]).
    pub fn fd_count(&self) -> usize {
        fd_count_of(self.pid())
    }

    /// Waits (bounded) until `fd_count() <= max`; returns the last count seen.
    pub fn wait_fd_count_at_most(&self, max: usize, timeout: Duration) -> usize {
        let mut n = self.fd_count();
        poll_until(timeout, || {
            n = self.fd_count();
            n <= max
        });
        n
    }

    /// The server's threads as (tid, comm), sorted by tid. The main thread's tid is
    /// the pid.
    pub fn threads(&self) -> Vec<(u32, String)> {
        let mut v = Vec::new();
        if let Ok(dir) = fs::read_dir(format!("/proc/{}/task", self.pid())) {
            for e in dir.flatten() {
                let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                    continue;
                };
                let comm = fs::read_to_string(e.path().join("comm")).unwrap_or_default();
                v.push((tid, comm.trim_end().to_string()));
            }
        }
        v.sort();
        v
    }

    /// The tid of the thread whose comm is exactly `name`, if any.
    pub fn thread_named(&self, name: &str) -> Option<u32> {
        self.threads()
            .into_iter()
            .find(|(_, c)| c == name)
            .map(|(t, _)| t)
    }

    /// A numeric field (e.g. `voluntary_ctxt_switches`) of /proc/PID/task/TID/status.
    pub fn task_status(&self, tid: u32, field: &str) -> Option<u64> {
        let text = fs::read_to_string(format!("/proc/{}/task/{tid}/status", self.pid())).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            if k == field {
                v.split_whitespace().next()?.parse().ok()
            } else {
                None
            }
        })
    }

    /// Inodes of the listening TCP sockets (IPv4 and IPv6) on this server's port that
    /// belong to this server's process.
    pub fn listening_inodes(&self) -> Vec<u64> {
        let own = socket_inodes_of(self.pid());
        listening_sockets_on(self.port)
            .into_iter()
            .filter(|i| own.contains(i))
            .collect()
    }

    /// Sends `sig` to the server (`libc::kill`). Panics if the kill fails.
    #[track_caller]
    pub fn signal(&self, sig: i32) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) with a pid we spawned and still own (not yet reaped).
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
    }

    fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().expect("try_wait");
        }
        self.exited
    }

    /// Waits (bounded) for the server to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.try_wait() {
                return Some(st);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Panics (with stderr) if the server process has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(st) = self.try_wait() {
            panic!(
                "conn-daemon {:?} exited unexpectedly ({st}); stderr:\n{}",
                self.args,
                self.stderr()
            );
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.try_wait().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if thread::panicking() {
            let err = self.stderr();
            if !err.is_empty() {
                let tail: String = {
                    let start = err.len().saturating_sub(4000);
                    let start = (start..err.len())
                        .find(|&i| err.is_char_boundary(i))
                        .unwrap_or(err.len());
                    err[start..].to_string()
                };
                eprintln!(
                    "--- conn-daemon {:?} (port {}) stderr (tail) ---\n{tail}\n---",
                    self.args, self.port
                );
            }
        }
        let _ = fs::remove_file(&self.stderr_path);
    }
}

/// A resource of `setrlimit(2)` (`libc::RLIMIT_NOFILE`, `libc::RLIMIT_AS`).
pub type Resource = libc::__rlimit_resource_t;

/// Makes the process `cmd` starts run with `resource` limited to `value`, soft
/// and hard, as an operator's `ulimit` before the command would.
pub fn limit_before_exec(cmd: &mut Command, resource: Resource, value: u64) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure only calls setrlimit (async-signal-safe) on a stack value, between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: value as libc::rlim_t,
                rlim_max: value as libc::rlim_t,
            };
            if libc::setrlimit(resource, &lim) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Raises this test process's soft RLIMIT_NOFILE to its hard limit, for tests
/// that hold thousands of sockets; panics if that is below `needed`.
pub fn raise_own_nofile(needed: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(rc, 0, "getrlimit: {}", io::Error::last_os_error());
    if lim.rlim_cur < lim.rlim_max {
        lim.rlim_cur = lim.rlim_max;
        // SAFETY: valid pointer to an initialised rlimit.
        let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
        assert_eq!(rc, 0, "setrlimit: {}", io::Error::last_os_error());
    }
    assert!(
        lim.rlim_cur >= needed,
        "RLIMIT_NOFILE hard limit {} is too low for this test (needs {needed})",
        lim.rlim_max
    );
}

/// Clock ticks per second of /proc/PID/stat.
pub fn clk_tck() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(n > 0, "sysconf(_SC_CLK_TCK) = {n}");
    n as u64
}

/// utime + stime of process `pid` (all its threads), in clock ticks.
pub fn cpu_ticks(pid: u32) -> u64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // The comm field (2) is in parentheses and may hold spaces: count from after it.
    let rest = &stat[stat.rfind(')').expect("comm in /proc/PID/stat") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields[11].parse().expect("utime");
    let stime: u64 = fields[12].parse().expect("stime");
    utime + stime
}

/// Number of open file descriptors of process `pid` (entries of
/// /proc/PID/fd); 0 once it is gone.
pub fn fd_count_of(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// Inodes of every `socket:[N]` fd of `pid`.
pub fn socket_inodes_of(pid: u32) -> Vec<u64> {
    let mut v = Vec::new();
    if let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            if let Ok(target) = fs::read_link(e.path()) {
                let t = target.to_string_lossy();
                if let Some(n) = t.strip_prefix("socket:[").and_then(|s| s.strip_suffix(']')) {
                    if let Ok(n) = n.parse() {
                        v.push(n);
                    }
                }
            }
        }
    }
    v
}

/// Inodes of all sockets in state LISTEN (`0A`) on local port `port`, from
/// /proc/net/tcp and /proc/net/tcp6 (this network namespace, any process).
pub fn listening_sockets_on(port: u16) -> Vec<u64> {
    let mut v = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 {
                continue;
            }
            let Some((_, port_hex)) = f[1].rsplit_once(':') else {
                continue;
            };
            if u16::from_str_radix(port_hex, 16).ok() == Some(port) && f[3] == "0A" {
                if let Ok(inode) = f[9].parse() {
                    v.push(inode);
                }
            }
        }
    }
    v
}

/// The server's end of a loopback connection: what the server has done with
/// a connection, seen from outside without a byte on the wire. Looked up by
/// its addresses through the kernel's socket diagnostics (`sock_diag(7)`),
/// one socket at a time: /proc/net/tcp lists every socket of the host,
/// thousands in TIME_WAIT after a test suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerEnd {
    server: SocketAddr,
    client: SocketAddr,
}

/// What `sock_diag` tells of one TCP socket.
#[derive(Debug, Clone, Copy)]
struct SocketState {
    /// The kernel's `TCP_*` state number.
    state: u8,
    /// Bytes received and not yet read by the process that holds it.
    unread: u32,
    /// 0 while no process holds it: in the accept queue, or closed.
    inode: u32,
}

const TCP_ESTABLISHED: u8 = 1;
const TCP_SYN_RECV: u8 = 3;
const TCP_CLOSE_WAIT: u8 = 8;

impl ServerEnd {
    /// The server's end of `client`.
    pub fn of(client: &TcpStream) -> ServerEnd {
        ServerEnd {
            server: client.peer_addr().expect("peer_addr"),
            client: client.local_addr().expect("local_addr"),
        }
    }

    /// The socket, `None` when the kernel has none with these addresses.
    fn state(&self) -> Option<SocketState> {
        // Netlink's own constants (linux/netlink.h, linux/sock_diag.h).
        const NETLINK_SOCK_DIAG: libc::c_int = 4;
        const SOCK_DIAG_BY_FAMILY: u16 = 20;
        const NLM_F_REQUEST: u16 = 1;
        const NLMSG_ERROR: u16 = 2;
        // SAFETY: socket(2) with constant arguments; the fd is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        assert!(fd >= 0, "netlink socket: {}", io::Error::last_os_error());
        // SAFETY: a new fd that nothing else owns.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let fd = std::os::fd::AsRawFd::as_raw_fd(&fd);
        // nlmsghdr (16 bytes), then inet_diag_req_v2: family, protocol, ext,
        // pad, states (all), and the socket's id: ports and addresses in
        // network order, no interface, no cookie. The server's end is the one
        // whose source is the server.
        let mut req = Vec::with_capacity(72);
        req.extend_from_slice(&72u32.to_ne_bytes());
        req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
        req.extend_from_slice(&[0; 8]); // sequence number, port id
        let family = if self.server.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        req.extend_from_slice(&[family as u8, libc::IPPROTO_TCP as u8, 0, 0]);
        req.extend_from_slice(&u32::MAX.to_ne_bytes());
        req.extend_from_slice(&self.server.port().to_be_bytes());
        req.extend_from_slice(&self.client.port().to_be_bytes());
        for addr in [self.server.ip(), self.client.ip()] {
            let mut bytes = [0u8; 16];
            match addr {
                std::net::IpAddr::V4(a) => bytes[..4].copy_from_slice(&a.octets()),
                std::net::IpAddr::V6(a) => bytes = a.octets(),
            }
            req.extend_from_slice(&bytes);
        }
        req.extend_from_slice(&[0; 4]); // interface
        req.extend_from_slice(&[0xff; 8]); // INET_DIAG_NOCOOKIE
        assert_eq!(req.len(), 72);
        // SAFETY: `req` is valid for its length; to the kernel (an unbound
        // netlink socket sends to it).
        let sent = unsafe { libc::send(fd, req.as_ptr().cast(), req.len(), 0) };
        assert_eq!(sent, 72, "netlink send: {}", io::Error::last_os_error());
        let mut buf = [0u8; 1024];
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n >= 16, "netlink recv: {}", io::Error::last_os_error());
        let buf = &buf[..n as usize];
        let u16_at = |i: usize| u16::from_ne_bytes([buf[i], buf[i + 1]]);
        let u32_at = |i: usize| u32::from_ne_bytes(buf[i..i + 4].try_into().unwrap());
        if u16_at(4) == NLMSG_ERROR {
            return None; // ENOENT: no such socket
        }
        // inet_diag_msg after the header: family, state, timer, retrans,
        // the id (ports at +4 and +6), expires, rqueue, wqueue, uid, inode.
        assert!(buf.len() >= 16 + 72, "short sock_diag answer");
        let msg = 16;
        // Without a connection the lookup falls back to the listener.
        if u16::from_be_bytes([buf[msg + 6], buf[msg + 7]]) != self.client.port() {
            return None;
        }
        Some(SocketState {
            state: buf[msg + 1],
            unread: u32_at(msg + 56),
            inode: u32_at(msg + 68),
        })
    }
}

/// Waits (bounded) until the server has accepted every one of `clients` and
/// read every byte sent on it so far: its request is with the server (which
/// may even have answered and closed it already).
#[track_caller]
pub fn wait_read<'a>(clients: impl IntoIterator<Item = &'a TcpStream>, within: Duration) {
    let ends: Vec<ServerEnd> = clients.into_iter().map(ServerEnd::of).collect();
    // Not yet accepted: a request socket (SYN_RECV, TCP_DEFER_ACCEPT waiting
    // for bytes), or one in the accept queue (no process holds it: inode 0).
    // Accepted and then closed by the server, it has no inode either.
    let taken = |s: SocketState| {
        s.unread == 0
            && s.state != TCP_SYN_RECV
            && (s.inode != 0 || ![TCP_ESTABLISHED, TCP_CLOSE_WAIT].contains(&s.state))
    };
    if !wait_for_ends(&ends, within, |e| e.state().is_some_and(taken)) {
        panic!(
            "the server did not read what was sent within {within:?}: {}",
            show_ends(&ends)
        );
    }
}

/// Waits (bounded) until the server has closed its end of every connection of
/// `ends`, whose clients closed theirs with a FIN (an end the kernel no longer
/// has was closed on both sides; a reset one would be gone at once).
#[track_caller]
pub fn wait_closed(ends: &[ServerEnd], within: Duration) {
    let open = [TCP_ESTABLISHED, TCP_SYN_RECV, TCP_CLOSE_WAIT];
    let closed = |e: &ServerEnd| !e.state().is_some_and(|s| open.contains(&s.state));
    if !wait_for_ends(ends, within, closed) {
        panic!(
            "the server did not close its ends within {within:?}: {}",
            show_ends(ends)
        );
    }
}

/// Polls until `ok` holds of every one of `ends` (true) or `within` has passed.
fn wait_for_ends(ends: &[ServerEnd], within: Duration, ok: impl Fn(&ServerEnd) -> bool) -> bool {
    poll_until(within, || ends.iter().all(&ok))
}

/// What the kernel has for `ends` now, for a failure message.
fn show_ends(ends: &[ServerEnd]) -> String {
    let shown: Vec<String> = ends
        .iter()
        .map(|e| format!("{e:?}: {:?}", e.state()))
        .collect();
    shown.join(", ")
}

/// Waits (bounded) until `cond` holds; panics naming `what` once `within`
/// has passed.
#[track_caller]
pub fn wait_until(what: &str, within: Duration, cond: impl FnMut() -> bool) {
    assert!(
        poll_until(within, cond),
        "waited {within:?} for {what} in vain"
    );
}

/// Polls `cond` every 2 ms until it holds (true) or `within` has passed
/// (false): the one bounded polling loop of the tests' waits.
pub fn poll_until(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// How a read loop ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// Orderly close (read returned 0).
    Eof,
    /// ECONNRESET / ECONNABORTED: the server closed with unread data (RST).
    Reset,
    /// Neither EOF nor reset within the timeout.
    Timeout,
}

/// What `read_to_end` collected.
#[derive(Debug)]
pub struct ReadResult {
    pub bytes: Vec<u8>,
    pub end: End,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)
}

fn is_reset(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted | ErrorKind::BrokenPipe
    )
}

/// Reads until EOF, reset, or `timeout` (overall) elapses. Restores the stream's
/// read timeout to `IO_TIMEOUT` afterwards.
pub fn read_to_end(stream: &TcpStream, timeout: Duration) -> ReadResult {
    let deadline = Instant::now() + timeout;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 8192];
    let end = loop {
        let now = Instant::now();
        if now >= deadline {
            break End::Timeout;
        }
        let left = (deadline - now).max(Duration::from_millis(1));
        stream
            .set_read_timeout(Some(left))
            .expect("set_read_timeout");
        match (&*stream).read(&mut buf) {
            Ok(0) => break End::Eof,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if is_timeout(&e) => break End::Timeout,
            Err(e) if is_reset(&e) => break End::Reset,
            Err(e) => panic!("read: {e}"),
        }
    };
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    ReadResult { bytes, end }
}

/// Everything until EOF, a reset counting as the end; panics on any other error
/// (the stream's read timeout included) with the start of what had arrived.
pub fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return got,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!(
                "read: {e} after {} bytes: {}",
                got.len(),
                show(&got[..got.len().min(256)])
            ),
        }
    }
}

/// Writes all of `bytes`; panics on any error.
#[track_caller]
pub fn send(stream: &TcpStream, bytes: &[u8]) {
    (&*stream)
        .write_all(bytes)
        .unwrap_or_else(|e| panic!("write {}: {e}", show(bytes)));
}

/// Writes all of `bytes`, tolerating the errors a write gets when the server has
/// already closed the connection (EPIPE, ECONNRESET). Returns whether it all went.
#[track_caller]
pub fn send_lenient(stream: &TcpStream, bytes: &[u8]) -> bool {
    match (&*stream).write_all(bytes) {
        Ok(()) => true,
        Err(e) if is_reset(&e) => false,
        Err(e) => panic!("write {}: {e}", show(bytes)),
    }
}

/// Closes the write side (the server reads EOF).
pub fn shutdown_write(stream: &TcpStream) {
    stream.shutdown(Shutdown::Write).expect("shutdown(Write)");
}

/// Why a check failed: what was expected and what arrived instead. Every check
/// returns it, so one function serves both a test that asserts (`.unwrap()`, whose
/// panic prints the message as it is) and one that collects or retries failures
/// (`?` into a `Result<_, String>`, or `Display` into a report).
pub struct Mismatch(String);

impl fmt::Debug for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Mismatch> for String {
    fn from(m: Mismatch) -> String {
        m.0
    }
}

/// Checks that the server sends exactly `RESPONSE` and then closes (EOF, or a
/// reset after all 57 bytes arrived), within `timeout`.
pub fn check_response(stream: &TcpStream, timeout: Duration) -> Result<(), Mismatch> {
    let r = read_to_end(stream, timeout);
    if r.bytes != RESPONSE {
        return Err(Mismatch(format!(
            "expected exactly the {}-byte response then close; got {} then {:?}",
            RESPONSE.len(),
            show(&r.bytes),
            r.end
        )));
    }
    if r.end == End::Timeout {
        return Err(Mismatch(format!(
            "the response arrived but the connection was not closed within {timeout:?}"
        )));
    }
    Ok(())
}

/// Checks that the server closes the connection (EOF or reset) without sending a
/// single byte, within `timeout`.
pub fn check_closed_silently(stream: &TcpStream, timeout: Duration) -> Result<(), Mismatch> {
    let r = read_to_end(stream, timeout);
    if r.bytes.is_empty() && r.end != End::Timeout {
        Ok(())
    } else {
        Err(Mismatch(format!(
            "expected close with no response within {timeout:?}; got {} then {:?}",
            show(&r.bytes),
            r.end
        )))
    }
}

/// Checks that for `window` neither a byte nor EOF/reset arrives (the read timing
/// out is the pass). Restores the read timeout to `IO_TIMEOUT`.
pub fn check_nothing_for(stream: &TcpStream, window: Duration) -> Result<(), Mismatch> {
    stream
        .set_read_timeout(Some(window.max(Duration::from_millis(1))))
        .expect("set_read_timeout");
    let mut buf = [0u8; 4096];
    let res = loop {
        match (&*stream).read(&mut buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            other => break other,
        }
    };
    stream
        .set_read_timeout(Some(IO_TIMEOUT))
        .expect("set_read_timeout");
    match res {
        Err(e) if is_timeout(&e) => Ok(()),
        Ok(0) => Err(Mismatch(format!(
            "expected nothing for {window:?}, but the server closed the connection"
        ))),
        Ok(n) => Err(Mismatch(format!(
            "expected nothing for {window:?}, but the server sent {}",
            show(&buf[..n])
        ))),
        Err(e) => Err(Mismatch(format!(
            "expected nothing for {window:?}, but read failed: {e}"
        ))),
    }
}

/// The outcome of a request, as the tests state expectations: the protocol
/// model's (`tests/protocol-model`), so that a table and the model compare.
pub use protocol_model::Outcome;

/// Checks `outcome` on `stream`: `Response`/`Closed` must happen within `timeout`,
/// `Pending` must hold for `pending_window`.
pub fn check_outcome(
    stream: &TcpStream,
    outcome: Outcome,
    timeout: Duration,
    pending_window: Duration,
) -> Result<(), Mismatch> {
    match outcome {
        Outcome::Response => check_response(stream, timeout),
        Outcome::Closed => check_closed_silently(stream, timeout),
        Outcome::Pending => check_nothing_for(stream, pending_window),
    }
}

/// Runs the binary to completion with `args`, killing it (and failing) after
/// `limit`; stdout and stderr captured.
pub fn run_bounded(args: &[&str], limit: Duration) -> std::process::Output {
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("conn-daemon {args:?} still running after {limit:?}");
        }
        thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().unwrap()
}

/// Runs the binary to completion (it must fail at start-up): status, stderr.
pub fn start_fails(args: &[&str]) -> (Option<i32>, String) {
    let out = run_bounded(args, Duration::from_secs(10));
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
