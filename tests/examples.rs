//! Every program in `examples/` is built and run against a client on loopback,
//! with the exact bytes it must answer: the examples are documentation that
//! cannot rot silently.
//!
//! Each example prints `listening on ADDR` first; it is started on port 0 and
//! killed when its test ends. Every wait is bounded.
#![allow(unsafe_code)]

mod util;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use util::{read_until_closed, RESPONSE};

const FAST: &[u8] = b"GET /test/fast HTTP/1.1\r\nHost: x\r\n\r\n";
const SLOW: &[u8] = b"GET /test/slow HTTP/1.1\r\nHost: x\r\n\r\n";
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A running example, killed on drop.
struct Example {
    child: Child,
    addr: SocketAddr,
}

impl Example {
    fn start(name: &str, args: &[&str]) -> Example {
        let path = util::example::build(name);
        let mut child = Command::new(&path)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", path.display()));
        let stdout = child.stdout.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| {
                let _ = child.kill();
                panic!("{name} printed no first line within 20 s")
            });
        let addr = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("{name}: first line {line:?}, expected `listening on ADDR`"));
        Example { child, addr }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) has no memory preconditions; the child is reaped only on drop, so the pid is still its own.
        let rc = unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
        assert_eq!(rc, 0, "kill: {}", std::io::Error::last_os_error());
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect_timeout(&self.addr, IO_TIMEOUT).expect("connect");
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Sends `request` on a new connection and returns everything until EOF.
    fn exchange(&self, request: &[u8]) -> Vec<u8> {
        let mut s = self.connect();
        s.write_all(request).unwrap();
        read_until_closed(&mut s)
    }
}

impl Drop for Example {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0u8; n];
    s.read_exact(&mut got).expect("read_exact");
    got
}

#[test]
fn echo_idle_echoes_lines_and_closes_an_idle_connection() {
    let ex = Example::start("echo_idle", &["127.0.0.1:0", "300"]);
    let mut a = ex.connect();
    let mut b = ex.connect();
    a.write_all(b"hello\n").unwrap();
    assert_eq!(read_exactly(&mut a, 6), b"hello\n");
    // A line split across reads comes back whole, once.
    b.write_all(b"wor").unwrap();
    util::wait_read([&b], IO_TIMEOUT);
    b.write_all(b"ld\ntwo\n").unwrap();
    assert_eq!(read_exactly(&mut b, 10), b"world\ntwo\n");
    // Silence: the repeating idle timer, restarted by each line, ends it.
    let quiet = Instant::now();
    assert_eq!(read_until_closed(&mut a), b"idle timeout\n");
    assert_eq!(read_until_closed(&mut b), b"idle timeout\n");
    assert!(
        quiet.elapsed() >= Duration::from_millis(250),
        "{:?}",
        quiet.elapsed()
    );
}

#[test]
fn wakeup_answers_every_job_and_coalesces_wakeups() {
    // Below the listener's backlog (128): all of them wait there while the
    // example is stopped.
    const CLIENTS: usize = 100;
    let ex = Example::start("wakeup", &["127.0.0.1:0", "0"]);
    // Hold the loop: with the example stopped, every job line is queued before
    // it runs, so it reads them all in one go and the workers (no work time)
    // finish and send while it is still reading. Those sends must coalesce.
    ex.signal(libc::SIGSTOP);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let mut s = ex.connect();
            s.write_all(format!("job {i}\n").as_bytes()).unwrap();
            s
        })
        .collect();
    ex.signal(libc::SIGCONT);
    for (i, mut s) in clients.into_iter().enumerate() {
        let want = format!("JOB {i}\n");
        assert_eq!(read_exactly(&mut s, want.len()), want.as_bytes());
    }
    let mut s = ex.connect();
    let (results, wakeups) = wakeup_stats(&mut s);
    assert_eq!(results, CLIENTS);
    // A callback per send would make them equal; held, it is about one.
    assert!(
        wakeups < results,
        "{wakeups} wake-ups for {results} results: sends did not coalesce"
    );
    // Two lines on one connection: one job at a time, answered in order.
    s.write_all(b"a\nb\n").unwrap();
    assert_eq!(read_exactly(&mut s, 4), b"A\nB\n");
    assert_eq!(wakeup_stats(&mut s).0, CLIENTS + 2);
}

/// The wakeup example's `stats` line: (results, wakeups).
fn wakeup_stats(s: &mut TcpStream) -> (usize, usize) {
    s.write_all(b"stats\n").unwrap();
    let mut line = Vec::new();
    while !line.ends_with(b"\n") {
        line.extend(read_exactly(s, 1));
    }
    let line = String::from_utf8(line).unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert!(
        fields.len() == 4 && fields[0] == "results" && fields[2] == "wakeups",
        "{line:?}"
    );
    (fields[1].parse().unwrap(), fields[3].parse().unwrap())
}

#[test]
fn blocking_worker_answers_fast_inline_and_slow_from_a_worker() {
    let ex = Example::start("blocking_worker", &["127.0.0.1:0", "200"]);
    let t0 = Instant::now();
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let mut s = ex.connect();
            s.write_all(SLOW).unwrap();
            s
        })
        .collect();
    assert_eq!(ex.exchange(FAST), RESPONSE);
    for mut s in slow {
        assert_eq!(read_until_closed(&mut s), RESPONSE);
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(ex.exchange(b"POST /test/fast HTTP/1.1\r\n\r\n"), b"");
    // Rule 7: bytes while a slow request is being worked on: no response.
    let mut s = ex.connect();
    s.write_all(SLOW).unwrap();
    util::wait_read([&s], IO_TIMEOUT);
    s.write_all(b"x").unwrap();
    assert_eq!(read_until_closed(&mut s), b"");
}

#[test]
fn dispatcher_serves_through_its_worker_loops() {
    let ex = Example::start("dispatcher", &["127.0.0.1:0", "200"]);
    let t0 = Instant::now();
    let slow: Vec<_> = (0..6)
        .map(|_| {
            let mut s = ex.connect();
            s.write_all(SLOW).unwrap();
            s
        })
        .collect();
    for _ in 0..6 {
        assert_eq!(ex.exchange(FAST), RESPONSE);
    }
    for mut s in slow {
        assert_eq!(read_until_closed(&mut s), RESPONSE);
    }
    assert!(
        t0.elapsed() >= Duration::from_millis(190),
        "{:?}",
        t0.elapsed()
    );
    // A request split across reads, and an invalid one.
    let mut s = ex.connect();
    s.write_all(&FAST[..10]).unwrap();
    util::wait_read([&s], IO_TIMEOUT);
    s.write_all(&FAST[10..]).unwrap();
    assert_eq!(read_until_closed(&mut s), RESPONSE);
    assert_eq!(ex.exchange(b"GET /other HTTP/1.1\r\n\r\n"), b"");
    // Rule 7 on a worker loop: EOF during the slow wait.
    let mut s = ex.connect();
    s.write_all(SLOW).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    assert_eq!(read_until_closed(&mut s), b"");
}

#[test]
fn reference_port_serves_fast_and_slow_like_the_reference() {
    let ex = Example::start(
        "reference_port",
        &["-p", "0", "-A", "2", "-w", "4", "-C", "8", "-D", "100"],
    );
    assert_eq!(ex.exchange(FAST), RESPONSE);
    let t0 = Instant::now();
    assert_eq!(ex.exchange(SLOW), RESPONSE);
    assert!(
        t0.elapsed() >= Duration::from_millis(95),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(ex.exchange(b"GET /test/fastest HTTP/1.1\r\n\r\n"), b"");
    // The client leaves during the task: terminate() now, the slot freed when
    // the task comes back (the task still runs: the reference's rule). 3 x 6
    // such clients on 2 x 8 slots, with time for their tasks between batches:
    // the slots are reused (a full pool would close newcomers).
    for _ in 0..3 {
        for _ in 0..6 {
            let mut s = ex.connect();
            s.write_all(SLOW).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(read_until_closed(&mut s), b"");
        }
        thread::sleep(Duration::from_millis(400));
    }
    let many: Vec<_> = (0..6)
        .map(|_| {
            let mut s = ex.connect();
            s.write_all(SLOW).unwrap();
            s
        })
        .collect();
    for mut s in many {
        assert_eq!(read_until_closed(&mut s), RESPONSE);
    }
}
