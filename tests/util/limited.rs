//! A `conn-daemon` under a small RLIMIT_NOFILE, so that a test can make it run
//! out of fds: [`super::Server`] starts it with the test's own limit, which
//! is far too high to reach.

use std::fs;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Instant;

use super::{bin, fd_count_of, free_port, ms, START_TIMEOUT};

/// A `conn-daemon` started under a hard and soft RLIMIT_NOFILE. Killed and
/// reaped on drop, its stderr printed if the test is panicking.
pub struct LimitedServer {
    child: Child,
    port: u16,
    stderr_path: PathBuf,
}

impl LimitedServer {
    /// Starts the server with `-p <free port>` and `args` under RLIMIT_NOFILE
    /// `nofile`, and waits (at most `START_TIMEOUT`) until its port takes a
    /// connection: a probe, which the server sees close without a byte.
    /// Retries with another port if the chosen one was taken in the meantime.
    pub fn start(nofile: u64, args: &[&str]) -> LimitedServer {
        let mut last = String::new();
        for attempt in 0..5 {
            let port = free_port();
            let stderr_path = std::env::temp_dir().join(format!(
                "conn-daemon-limited-{}-{port}-{attempt}.stderr",
                std::process::id()
            ));
            let stderr_file = fs::File::create(&stderr_path).expect("create stderr file");
            let mut cmd = Command::new(bin());
            cmd.arg("-p")
                .arg(port.to_string())
                .args(args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(stderr_file));
            // SAFETY: the closure only calls setrlimit (async-signal-safe) on a stack value, between fork and exec.
            unsafe {
                cmd.pre_exec(move || {
                    let lim = libc::rlimit {
                        rlim_cur: nofile as libc::rlim_t,
                        rlim_max: nofile as libc::rlim_t,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("spawn {}: {e}", bin()));
            let mut server = LimitedServer {
                child,
                port,
                stderr_path,
            };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Some(status) = server.child.try_wait().expect("try_wait") {
                    last = format!(
                        "exited during start-up ({status}); stderr:\n{}",
                        server.stderr()
                    );
                    break;
                }
                if let Ok(s) = TcpStream::connect_timeout(&server.addr(), ms(200)) {
                    drop(s);
                    return server;
                }
                assert!(
                    Instant::now() < deadline,
                    "conn-daemon did not listen on {} within {:?}; stderr:\n{}",
                    server.addr(),
                    START_TIMEOUT,
                    server.stderr()
                );
                thread::sleep(ms(10));
            }
            if !last.to_lowercase().contains("in use") {
                break;
            }
        }
        panic!("conn-daemon {args:?} under RLIMIT_NOFILE {nofile}: {last}");
    }

    /// 127.0.0.1:PORT.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Number of open file descriptors of the server (see [`fd_count_of`]).
    pub fn fd_count(&self) -> usize {
        fd_count_of(self.pid())
    }

    /// Panics (with stderr) if the server process has exited.
    #[track_caller]
    pub fn assert_running(&mut self) {
        if let Some(status) = self.child.try_wait().expect("try_wait") {
            panic!("conn-daemon exited ({status}); stderr:\n{}", self.stderr());
        }
    }
}

impl Drop for LimitedServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if thread::panicking() {
            eprintln!(
                "--- conn-daemon (RLIMIT_NOFILE) stderr ---\n{}\n---",
                self.stderr()
            );
        }
        let _ = fs::remove_file(&self.stderr_path);
    }
}
