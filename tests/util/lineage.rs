//! A server that upgrades itself: the binary copied into a directory of the
//! test's own (so the test can install other executables at its path), a pid
//! file to follow the newest process, and a load generator that counts every
//! client-visible failure.

use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use super::{bin, free_port, RESPONSE};

/// Held while this process has an executable open for writing, and while it
/// forks: a child forked meanwhile would inherit the write fd until its exec,
/// and executing the file then fails with ETXTBSY.
static WRITING_EXECUTABLES: Mutex<()> = Mutex::new(());

/// Take this around any other spawn in a test binary that uses [`Lineage`].
pub fn spawn_guard() -> std::sync::MutexGuard<'static, ()> {
    WRITING_EXECUTABLES
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Whether `pid` is a live process (a zombie counts as gone).
pub fn alive(pid: u32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| !rest.starts_with('Z') && !rest.starts_with('X')),
        Err(_) => false,
    }
}

/// How [`Lineage::start_in`] runs the copied binary.
#[derive(PartialEq)]
enum Launch {
    /// By its absolute path.
    Plain,
    /// Through `DIR/current -> v1`.
    Symlinked,
    /// As `./conn-daemon`, from `DIR`.
    Relative,
}

/// A server started from a private copy of the binary, followed across upgrades.
pub struct Lineage {
    dir: PathBuf,
    /// The executable's path: what an upgrade starts.
    pub exe: PathBuf,
    pub pid_file: PathBuf,
    stderr_path: PathBuf,
    pub port: u16,
    first: Child,
    /// How `first` was started, for [`Lineage::restart`].
    command: Vec<String>,
    env: Vec<(String, String)>,
    /// Every pid seen, oldest first.
    pub pids: Vec<u32>,
}

impl Lineage {
    /// Starts `<copy of conn-daemon> -p PORT --pid-file DIR/pid ARGS` and waits
    /// (bounded) until it has written its pid and accepts connections.
    pub fn start(args: &[&str]) -> Lineage {
        Lineage::start_with_env(args, &[])
    }

    /// As [`Lineage::start`], with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Lineage {
        Lineage::start_in(Launch::Plain, args, env)
    }

    /// As [`Lineage::start`], started as `./conn-daemon` from its directory (a
    /// relative `argv[0]`, as an operator in that directory would type it).
    pub fn start_relative(args: &[&str]) -> Lineage {
        Lineage::start_in(Launch::Relative, args, &[])
    }

    /// As [`Lineage::start`], from the versioned layout `DIR/current ->
    /// DIR/v1`, started as `DIR/current/conn-daemon`; see [`Lineage::repoint`].
    pub fn start_symlinked(args: &[&str]) -> Lineage {
        Lineage::start_in(Launch::Symlinked, args, &[])
    }

    fn start_in(how: Launch, args: &[&str], env: &[(&str, &str)]) -> Lineage {
        let symlinked = how == Launch::Symlinked;
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "conn-daemon-lineage-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create the test directory");
        let exe = if symlinked {
            std::os::unix::fs::symlink("v1", dir.join("current")).expect("symlink");
            dir.join("current/conn-daemon")
        } else {
            dir.join("conn-daemon")
        };
        let guard = spawn_guard();
        if symlinked {
            fs::create_dir(dir.join("v1")).expect("mkdir v1");
            fs::copy(bin(), dir.join("v1/conn-daemon")).expect("copy the binary");
        } else {
            fs::copy(bin(), &exe).expect("copy the binary");
        }
        let pid_file = dir.join("pid");
        let stderr_path = dir.join("stderr");
        let port = free_port();
        let program = match how {
            Launch::Relative => "./conn-daemon".to_string(),
            _ => exe.to_string_lossy().into_owned(),
        };
        let mut command = vec![
            program,
            "-p".to_string(),
            port.to_string(),
            "--pid-file".to_string(),
            pid_file.to_string_lossy().into_owned(),
        ];
        command.extend(super::delegate_args(args));
        command.extend(args.iter().map(|a| a.to_string()));
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        fs::File::create(&stderr_path).expect("stderr file");
        let first = spawn_command(&dir, &command, &env, &stderr_path);
        drop(guard);
        let mut lineage = Lineage {
            dir,
            exe,
            pid_file,
            stderr_path,
            port,
            first,
            command,
            env,
            pids: Vec::new(),
        };
        let pid = lineage
            .wait_pid_file(|_| true, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no pid file; stderr:\n{}", lineage.stderr()));
        lineage.pids.push(pid);
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect_timeout(&lineage.addr(), Duration::from_millis(200)).is_err() {
            assert!(
                Instant::now() < deadline,
                "not accepting on {}",
                lineage.addr()
            );
            thread::sleep(Duration::from_millis(10));
        }
        lineage
    }

    /// Starts the first process's command line again (same port, pid file and
    /// stderr), as an operator would after the lineage ended; waits (bounded)
    /// until the pid file names the new process.
    pub fn restart(&mut self) -> u32 {
        let _ = self.first.kill();
        let _ = self.first.wait();
        let guard = spawn_guard();
        self.first = spawn_command(&self.dir, &self.command, &self.env, &self.stderr_path);
        drop(guard);
        let started = self.first.id();
        let pid = self
            .wait_pid_file(|p| p == started, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no pid file after a restart; stderr:\n{}", self.stderr()));
        self.pids.push(pid);
        pid
    }

    /// 127.0.0.1:PORT.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Everything every generation wrote to stderr (they share the file).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The pid in the pid file, once `accept` likes it (bounded wait).
    pub fn wait_pid_file(&self, accept: impl Fn(u32) -> bool, timeout: Duration) -> Option<u32> {
        let deadline = Instant::now() + timeout;
        loop {
            let pid = fs::read_to_string(&self.pid_file)
                .ok()
                .and_then(|t| t.trim().parse().ok());
            if let Some(pid) = pid.filter(|&p| accept(p)) {
                return Some(pid);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The newest process's pid.
    pub fn pid(&self) -> u32 {
        *self.pids.last().expect("started")
    }

    /// Sends `sig` to the newest process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) has no memory preconditions.
        unsafe { libc::kill(self.pid() as libc::pid_t, sig) };
    }

    /// Sends SIGUSR2 (or `sig`) and waits for a new pid in the pid file and the
    /// old process gone; the new pid, or what went wrong.
    pub fn upgrade_with(&mut self, sig: i32, timeout: Duration) -> Result<u32, String> {
        let old = self.pid();
        self.signal(sig);
        let new = self
            .wait_pid_file(|p| p != old, timeout)
            .ok_or_else(|| format!("no new pid within {timeout:?}"))?;
        self.pids.push(new);
        let deadline = Instant::now() + timeout;
        while alive(old) {
            let _ = self.first.try_wait();
            if Instant::now() >= deadline {
                return Err(format!("old process {old} still running after {timeout:?}"));
            }
            thread::sleep(Duration::from_millis(5));
        }
        let _ = self.first.try_wait();
        Ok(new)
    }

    /// An upgrade by SIGUSR2.
    pub fn upgrade(&mut self) -> Result<u32, String> {
        self.upgrade_with(libc::SIGUSR2, Duration::from_secs(10))
    }

    /// Puts `contents` at the executable's path the way an installer should:
    /// write a new file, then rename it over the old one.
    pub fn install(&self, contents: &[u8], mode: u32) {
        let tmp = self.dir.join("conn-daemon.new");
        let _guard = spawn_guard();
        fs::write(&tmp, contents).expect("write the new executable");
        fs::set_permissions(&tmp, fs::Permissions::from_mode(mode)).expect("chmod");
        fs::rename(&tmp, &self.exe).expect("rename over the executable");
    }

    /// In the symlinked layout: installs the real binary as `DIR/<version>` and
    /// re-points `DIR/current` at it (a new link renamed over the old one).
    pub fn repoint(&self, version: &str) {
        let _guard = spawn_guard();
        fs::create_dir(self.dir.join(version)).expect("mkdir");
        fs::copy(bin(), self.dir.join(version).join("conn-daemon")).expect("copy the binary");
        let tmp = self.dir.join("current.new");
        std::os::unix::fs::symlink(version, &tmp).expect("symlink");
        fs::rename(&tmp, self.dir.join("current")).expect("rename the link");
    }

    /// Installs the real binary again.
    pub fn install_real(&self) {
        self.install(&fs::read(bin()).expect("read the binary"), 0o755);
    }

    /// Waits (bounded) until `needle` appears `n` times in stderr.
    pub fn wait_stderr(&self, needle: &str, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.stderr().matches(needle).count() >= n {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// The first whole line of stderr that contains `needle`, once it has
    /// been written to its end (bounded wait).
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let stderr = self.stderr();
            let whole = stderr.rfind('\n').map_or("", |end| &stderr[..end]);
            if let Some(line) = whole.lines().find(|l| l.contains(needle)) {
                return Some(line.to_string());
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM to the newest process; waits (bounded) until no process of the
    /// lineage is left. Err names the survivors.
    pub fn stop(&mut self, timeout: Duration) -> Result<(), String> {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + timeout;
        loop {
            let _ = self.first.try_wait();
            let left: Vec<u32> = self.pids.iter().copied().filter(|&p| alive(p)).collect();
            if left.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!("still running: {left:?}"));
            }
            thread::sleep(Duration::from_millis(5));
        }
    }

    /// Every live process that runs an executable from the lineage's directory
    /// (every generation and replacement, whatever the pid file says).
    pub fn running(&self) -> Vec<u32> {
        let Ok(dir) = fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
            .filter(|&pid| {
                fs::read_link(format!("/proc/{pid}/exe"))
                    .is_ok_and(|exe| exe.starts_with(&self.dir))
                    && alive(pid)
            })
            .collect()
    }

    /// The pid the pid file names, if it names one.
    pub fn pid_in_file(&self) -> Option<u32> {
        fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|t| t.trim().parse().ok())
    }

    /// A stop as an operator or systemd does it: SIGTERM to the pid in the pid
    /// file. Waits (bounded) until no process of the lineage runs and the pid
    /// file is gone; Err says what is left.
    pub fn stop_through_pid_file(&mut self, timeout: Duration) -> Result<(), String> {
        let pid = self.pid_in_file().ok_or("no pid file")?;
        // SAFETY: kill(2) has no memory preconditions.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + timeout;
        loop {
            let _ = self.first.try_wait();
            let left = self.running();
            let file = self.pid_file.exists();
            if left.is_empty() && !file {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "after SIGTERM to {pid}: still running {left:?}; pid file left: {file}"
                ));
            }
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// The directory the test may put files in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Starts `command` from `dir`, its stderr appended to `stderr`.
fn spawn_command(dir: &Path, command: &[String], env: &[(String, String)], stderr: &Path) -> Child {
    let stderr = fs::OpenOptions::new()
        .append(true)
        .open(stderr)
        .expect("stderr file");
    Command::new(&command[0])
        .current_dir(dir)
        .args(&command[1..])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn the copied binary")
}

impl Drop for Lineage {
    fn drop(&mut self) {
        for pid in self.running() {
            // SAFETY: kill(2) has no memory preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        for &pid in &self.pids {
            if alive(pid) {
                // SAFETY: kill(2) has no memory preconditions.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            }
        }
        let _ = self.first.kill();
        let _ = self.first.wait();
        if thread::panicking() {
            eprintln!("--- lineage stderr ---\n{}\n---", self.stderr());
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// What the load saw.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Connections answered with exactly the 57 bytes.
    pub answered: u64,
    /// Every other outcome, described (refused, reset, short, timeout, ...).
    pub failures: Vec<String>,
}

/// Clients opening connections continuously, alternating fast and slow
/// requests, until stopped.
pub struct Load {
    stop: Arc<AtomicBool>,
    answered: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `clients` threads against `addr`.
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|c| {
                let (stop, answered, failures) = (
                    Arc::clone(&stop),
                    Arc::clone(&answered),
                    Arc::clone(&failures),
                );
                thread::spawn(move || {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        let slow = (n + c as u64) % 4 == 0;
                        n += 1;
                        match one_request(addr, slow) {
                            Ok(()) => {
                                answered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(e) => failures.lock().unwrap().push(e),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            answered,
            failures,
            threads,
        }
    }

    /// Connections answered so far.
    pub fn answered(&self) -> u64 {
        self.answered.load(Ordering::Relaxed)
    }

    /// Stops the clients (each finishes its connection) and reports.
    pub fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
        LoadReport {
            answered: self.answered.load(Ordering::Relaxed),
            failures: std::mem::take(&mut *self.failures.lock().unwrap()),
        }
    }
}

/// One connection: the request, then exactly the response and EOF.
fn one_request(addr: SocketAddr, slow: bool) -> Result<(), String> {
    let what = if slow { "slow" } else { "fast" };
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("{what}: connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.set_write_timeout(Some(Duration::from_secs(5))).ok();
    let req: &[u8] = if slow {
        b"GET /test/slow HTTP/1.1\r\nHost: x\r\n\r\n"
    } else {
        b"GET /test/fast HTTP/1.1\r\nHost: x\r\n\r\n"
    };
    s.write_all(req)
        .map_err(|e| format!("{what}: write: {e}"))?;
    let mut got = Vec::new();
    s.read_to_end(&mut got)
        .map_err(|e| format!("{what}: read after {} bytes: {e}", got.len()))?;
    if got != RESPONSE {
        return Err(format!("{what}: got {:?}", String::from_utf8_lossy(&got)));
    }
    Ok(())
}
