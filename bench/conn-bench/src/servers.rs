//! Starting, watching and stopping the servers under test, including the
//! bundled nginx peer.

use crate::args::PortRange;
use crate::load::tail;
use crate::{procstat, sys};
use std::fs;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nginx peer's config template (`{port}`, `{dir}` placeholders).
pub const NGINX_TEMPLATE: &str = include_str!("../../nginx.conf");

/// How to start one server.
#[derive(Debug, Clone)]
pub struct Launch {
    /// Report label.
    pub name: String,
    /// Command for the report, as given (or built, for a peer).
    pub command: String,
    /// Words of the command; `{port}` is substituted in each.
    pub argv: Vec<String>,
    /// The command as the user wrote it, placeholders and all (empty for a
    /// bundled peer), to tell which placeholders it uses.
    pub template: String,
    /// A log file the server writes itself (nginx's error log), read for the
    /// error message when it fails to start.
    pub extra_log: Option<PathBuf>,
}

/// A started server. Dropping it stops it and its children, so every exit
/// path that unwinds (error, Ctrl-C) cleans up; for the ones that do not
/// (SIGKILL, a panic under `panic = "abort"`) the server leads its own
/// process group, gets SIGKILL when conn-bench's main thread dies, and a
/// `GroupGuard` kills the rest of its group.
pub struct Server {
    /// Report label.
    pub name: String,
    /// Command as shown in the report.
    pub command: String,
    /// See `Launch::template`.
    pub template: String,
    /// TCP port it listens on (127.0.0.1).
    pub port: u16,
    /// From spawn to the first accepted TCP connect.
    pub startup: Duration,
    child: Child,
    /// Kills the server's process group if conn-bench dies; None only if
    /// the fork failed (then the parent-death signal still covers the child).
    guard: Option<sys::GroupGuard>,
    stderr_path: PathBuf,
    extra_log: Option<PathBuf>,
    stopped: bool,
}

/// Finds `program` like `execvp` would, plus the sbin directories a
/// non-root PATH often lacks (nginx lives in /usr/sbin).
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let path = PathBuf::from(program);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// Resolves a required tool or explains which Debian package provides it.
pub fn require(program: &str, package: &str) -> Result<PathBuf, String> {
    which(program).ok_or_else(|| format!("`{program}` not found: install Debian's {package}"))
}

/// Picks `count` distinct free TCP ports, none of them in `avoid`: from
/// `range` (the first ones free), else any the kernel gives for port 0.
/// "Free" is what a server's bind would say (`sys::reserve_port`: every
/// address, no `SO_REUSEADDR`), so a port held only by TIME-WAIT sockets of
/// an earlier run is not chosen. All probes are held until every port is
/// chosen so none repeats; the short window before the server binds is an
/// accepted race, which `start`'s `port_busy` lets the caller retry.
pub fn pick_ports(
    count: usize,
    range: Option<PortRange>,
    avoid: &[u16],
) -> Result<Vec<u16>, String> {
    let mut held = Vec::new();
    let Some(range) = range else {
        while held.len() < count {
            let (socket, port) =
                sys::reserve_port(0).map_err(|e| format!("picking free ports: {e}"))?;
            if !avoid.contains(&port) {
                held.push((socket, port));
            }
        }
        return Ok(held.into_iter().map(|(_, p)| p).collect());
    };
    for port in range.from..=range.to {
        if held.len() == count {
            break;
        }
        if avoid.contains(&port) {
            continue;
        }
        if let Ok(probe) = sys::reserve_port(port) {
            held.push(probe);
        }
    }
    if held.len() < count {
        return Err(format!(
            "--ports {}-{}: {} of them free on 127.0.0.1{}, {count} needed",
            range.from,
            range.to,
            held.len(),
            if avoid.is_empty() {
                String::new()
            } else {
                format!(" besides the {} already used or busy", avoid.len())
            }
        ));
    }
    Ok(held.into_iter().map(|(_, p)| p).collect())
}

/// Whether a server's error output says its bind found the port in use
/// (strerror(EADDRINUSE), which conn-daemon, the C++ reference and nginx all
/// print): the port was taken between the probe and the bind, or the server
/// binds stricter than the probe; the caller moves it to another port.
pub fn says_port_busy(log: &str) -> bool {
    log.contains("Address already in use") || log.contains("EADDRINUSE")
}

/// The template's worker count, replaced for a sweep.
const NGINX_ONE_WORKER: &str = "worker_processes 1;";

/// Writes the nginx peer's config for `port` and `workers` worker processes
/// into `dir` and returns how to start it.
pub fn nginx_launch(nginx: &Path, dir: &Path, port: u16, workers: u32) -> Result<Launch, String> {
    fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let dir_text = dir
        .to_str()
        .ok_or("the output directory path is not UTF-8")?;
    if dir_text.contains(['"', '{', '}', ';']) {
        return Err(format!(
            "nginx cannot use the directory `{dir_text}`: pick a plainer --out"
        ));
    }
    let config = NGINX_TEMPLATE
        .replace("{dir}", dir_text)
        .replace("{port}", &port.to_string())
        .replace(NGINX_ONE_WORKER, &format!("worker_processes {workers};"));
    let conf_path = dir.join("nginx.conf");
    let error_log = dir.join("error.log");
    fs::write(&conf_path, config).map_err(|e| format!("writing {}: {e}", conf_path.display()))?;
    let argv = vec![
        nginx.display().to_string(),
        "-c".into(),
        conf_path.display().to_string(),
        "-p".into(),
        format!("{dir_text}/"),
        "-e".into(),
        error_log.display().to_string(),
    ];
    Ok(Launch {
        name: "nginx".into(),
        command: argv.join(" "),
        argv,
        template: String::new(),
        extra_log: Some(error_log),
    })
}

/// Why a server did not start.
#[derive(Debug)]
pub struct StartFailure {
    /// The error, with the tail of the server's stderr.
    pub message: String,
    /// The server exited saying its port was in use (`says_port_busy`):
    /// another port may work.
    pub port_busy: bool,
}

impl From<String> for StartFailure {
    fn from(message: String) -> Self {
        StartFailure {
            message,
            port_busy: false,
        }
    }
}

/// Starts `launch` on `port`, pinned to `cpus` (None: unpinned), logging to
/// `log_dir`, and waits until a TCP connect to the port succeeds. The time
/// from spawn to that connect is the server's startup time.
pub fn start(
    launch: &Launch,
    port: u16,
    cpus: Option<&[usize]>,
    restore_cpus: Option<&[usize]>,
    log_dir: &Path,
    timeout: Duration,
) -> Result<Server, StartFailure> {
    let name = &launch.name;
    let argv: Vec<String> = launch
        .argv
        .iter()
        .map(|w| w.replace("{port}", &port.to_string()))
        .collect();
    let stdout_path = log_dir.join(format!("{name}.stdout.log"));
    let stderr_path = log_dir.join(format!("{name}.stderr.log"));
    let open = |p: &Path| fs::File::create(p).map_err(|e| format!("creating {}: {e}", p.display()));
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(open(&stdout_path)?)
        .stderr(open(&stderr_path)?)
        // Its own group: the guard can kill it and all its descendants at
        // once, and a Ctrl-C in the terminal reaches conn-bench only, which
        // then stops the servers in order.
        .process_group(0);
    sys::die_with_this_thread(&mut cmd);

    // The child inherits this thread's CPU mask at fork: switch to the
    // server CPUs just around the spawn.
    if let Some(cpus) = cpus {
        sys::set_thread_affinity(cpus).map_err(|e| format!("pinning to CPUs {cpus:?}: {e}"))?;
    }
    let spawn_at = Instant::now();
    let spawned = cmd.spawn();
    if let Some(restore) = restore_cpus {
        let _ = sys::set_thread_affinity(restore);
    }
    let mut child =
        spawned.map_err(|e| format!("server `{name}`: cannot run `{}`: {e}", argv[0]))?;
    let guard = match sys::GroupGuard::start(child.id()) {
        Ok(guard) => Some(guard),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("server `{name}`: cannot fork its group guard: {e}").into());
        }
    };

    let mut server = Server {
        name: name.clone(),
        command: launch.command.clone(),
        template: launch.template.clone(),
        port,
        startup: Duration::ZERO,
        child,
        guard,
        stderr_path,
        extra_log: launch.extra_log.clone(),
        stopped: false,
    };
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    loop {
        if sys::interrupted() {
            return Err(String::from("interrupted").into());
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            let tail = server.log_tail();
            return Err(StartFailure {
                port_busy: says_port_busy(&tail),
                message: format!(
                    "server `{name}` exited ({status}) before listening on port {port}; its stderr: {tail}"
                ),
            });
        }
        // A refused connect returns at once, so this polls about every ms.
        if TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok() {
            server.startup = spawn_at.elapsed();
            return Ok(server);
        }
        if spawn_at.elapsed() > timeout {
            return Err(format!(
                "server `{name}` did not listen on port {port} within {} s; its stderr: {}",
                timeout.as_secs(),
                server.log_tail()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

impl Server {
    /// Process id of the spawned command (nginx: the master).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Err with the stderr tail when the server has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!(
                "server `{}` exited during the benchmark ({status}); its stderr: {}",
                self.name,
                self.log_tail()
            )),
            Err(e) => Err(format!("server `{}`: {e}", self.name)),
        }
    }

    /// Last lines of the server's stderr and its own log, for error messages.
    pub fn log_tail(&self) -> String {
        let mut text = fs::read_to_string(&self.stderr_path).unwrap_or_default();
        if let Some(log) = &self.extra_log {
            text += &fs::read_to_string(log).unwrap_or_default();
        }
        tail(&text, 6)
    }

    /// Stops the server: SIGTERM to its process group and descendants (nginx
    /// shuts its workers down on TERM), then SIGKILL to whatever is left
    /// after 2 s, the group guard included.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        let tree = procstat::process_tree(self.pid());
        if let Ok(None) = self.child.try_wait() {
            if let Some(guard) = &self.guard {
                guard.signal_group(libc::SIGTERM);
            }
            for &pid in &tree {
                sys::send_signal(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        // SIGKILL to the group (the guard is in it) and reap the guard.
        drop(self.guard.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Orphaned descendants (a worker whose master died) get KILL too;
        // they were reparented, so their pids cannot have been reused yet
        // unless they exited, which is what we want anyway.
        for &pid in &tree[1..] {
            if procstat::read_stat(pid).is_some() {
                sys::send_signal(pid, libc::SIGKILL);
            }
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn picks_distinct_ports() {
        let ports = pick_ports(3, None, &[]).unwrap();
        assert_eq!(ports.len(), 3);
        assert!(ports[0] != ports[1] && ports[1] != ports[2] && ports[0] != ports[2]);
        // From a range: a busy port is skipped, a short range refused.
        let busy = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let b = busy.local_addr().unwrap().port();
        if b < 65534 {
            let range = PortRange { from: b, to: b + 1 };
            match pick_ports(1, Some(range), &[]) {
                Ok(p) => assert_eq!(p, [b + 1]),
                // b + 1 may be taken by someone else on a shared machine.
                Err(e) => assert!(e.contains("1 needed"), "{e}"),
            }
            let err = pick_ports(2, Some(range), &[]).unwrap_err();
            assert!(err.contains("2 needed"), "{err}");
            // A port already used (or found busy) is not offered again.
            let range = PortRange {
                from: b + 1,
                to: b + 2,
            };
            if let Ok(p) = pick_ports(1, Some(range), &[b + 1]) {
                assert_eq!(p, [b + 2]);
            }
            let err = pick_ports(2, Some(range), &[b + 1]).unwrap_err();
            assert!(err.contains("besides the 1 already used or busy"), "{err}");
        }
    }

    /// The abort: a port whose only sockets are in TIME-WAIT. std's
    /// bind (SO_REUSEADDR) calls it free, a server's bind fails, and so
    /// must the probe.
    #[test]
    fn a_port_in_time_wait_is_busy() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).unwrap();
        let (accepted, _) = listener.accept().unwrap();
        drop(listener);
        // The side that closes first keeps TIME-WAIT: the server's side, on `port`.
        drop(accepted);
        let mut byte = [0u8; 1];
        use std::io::Read;
        assert_eq!((&client).read(&mut byte).unwrap(), 0, "EOF from the server");
        drop(client);
        assert!(
            TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok(),
            "std's bind (SO_REUSEADDR) takes a TIME-WAIT port"
        );
        let err = sys::reserve_port(port).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EADDRINUSE), "{err}");
        let range = PortRange {
            from: port,
            to: port,
        };
        let err = pick_ports(1, Some(range), &[]).unwrap_err();
        assert!(err.contains("0 of them free"), "{err}");
    }

    #[test]
    fn tells_a_busy_port_from_other_failures() {
        // conn-daemon, the C++ reference, nginx.
        for line in [
            "conn-daemon: cannot listen on 0.0.0.0:30003: Address already in use (os error 98)",
            "bind: Address already in use",
            "nginx: [emerg] bind() to 127.0.0.1:30003 failed (98: Address already in use)",
        ] {
            assert!(says_port_busy(line), "{line}");
        }
        assert!(!says_port_busy(
            "conn-daemon: invalid value '0' for '--port'"
        ));
    }

    #[test]
    fn finds_programs() {
        assert!(which("sh").is_some());
        assert!(which("/bin/sh").is_some());
        assert!(which("surely-no-such-program-here").is_none());
        let err = require("surely-no-such-program-here", "some-package").unwrap_err();
        assert_eq!(
            err,
            "`surely-no-such-program-here` not found: install Debian's some-package"
        );
    }

    #[test]
    fn nginx_template_has_placeholders() {
        for needle in [
            "{port}",
            "{dir}/nginx.pid",
            "keepalive_timeout 0",
            NGINX_ONE_WORKER,
            "location = /test/fast",
        ] {
            assert!(NGINX_TEMPLATE.contains(needle), "{needle}");
        }
    }

    #[test]
    fn reports_a_server_that_exits() {
        let dir = std::env::temp_dir().join(format!("conn-bench-unit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let launch = Launch {
            name: "bad".into(),
            command: "sh -c ...".into(),
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo broken {port} >&2; exit 3".into(),
            ],
            template: String::new(),
            extra_log: None,
        };
        let err = match start(&launch, 1, None, None, &dir, Duration::from_secs(5)) {
            Ok(_) => panic!("should fail"),
            Err(e) => e,
        };
        assert!(!err.port_busy);
        let err = err.message;
        assert!(err.contains("server `bad` exited"), "{err}");
        assert!(err.contains("broken 1"), "{err}");
        let busy = Launch {
            argv: vec![
                "sh".into(),
                "-c".into(),
                "echo 'bind: Address already in use' >&2; exit 1".into(),
            ],
            ..launch.clone()
        };
        let err = start(&busy, 1, None, None, &dir, Duration::from_secs(5))
            .err()
            .unwrap();
        assert!(err.port_busy, "{}", err.message);
        let missing = Launch {
            argv: vec!["/nonexistent/server".into()],
            ..launch
        };
        let err = start(&missing, 1, None, None, &dir, Duration::from_secs(1))
            .err()
            .unwrap()
            .message;
        assert!(err.contains("cannot run `/nonexistent/server`"), "{err}");
        let _ = fs::remove_dir_all(&dir);
    }
}
