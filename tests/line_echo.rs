//! The second protocol on the engine (`examples/line_echo.rs`), started as a
//! process and spoken to in bytes: persistent connections, pipelined lines,
//! a line split across reads, a line longer than the read buffer, the idle
//! timeout, and the drains (idle connections closed at once, a line under
//! way finished).
#![allow(unsafe_code)]

mod util;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The running example, killed on drop.
struct Echo {
    child: Child,
    addr: SocketAddr,
    /// Kept open: it prints its counts on its way out.
    _stdout: ChildStdout,
}

impl Echo {
    /// Starts it on a free loopback port with `idle_ms`, and waits until it
    /// says it serves.
    fn start(idle_ms: u64) -> Echo {
        Echo::start_with(idle_ms, 60_000)
    }

    /// As [`Echo::start`], with a read deadline of `read_ms` per line.
    fn start_with(idle_ms: u64, read_ms: u64) -> Echo {
        let addr = util::metrics::free_addr();
        let mut child = Command::new(util::example::build("line_echo"))
            .args([addr.to_string(), idle_ms.to_string(), read_ms.to_string()])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start line_echo");
        // Its first line says it serves (or it exited: the read ends).
        let mut stdout = child.stdout.take().expect("piped");
        let mut seen = Vec::new();
        let mut byte = [0u8];
        while !seen.ends_with(b"\n") && stdout.read(&mut byte).unwrap_or(0) == 1 {
            seen.push(byte[0]);
        }
        let line = String::from_utf8_lossy(&seen);
        assert!(line.starts_with("listening on "), "line_echo said {line:?}");
        Echo {
            child,
            addr,
            _stdout: stdout,
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, sig) };
        assert_eq!(rc, 0, "kill");
    }

    /// Waits (bounded) for the process to exit; true if it did.
    fn exited_within(&mut self, bound: Duration) -> bool {
        let until = Instant::now() + bound;
        while Instant::now() < until {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "line_echo exited with {status}");
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Reads exactly `n` bytes.
fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0; n];
    s.read_exact(&mut buf).expect("the echo");
    buf
}

/// Reads until EOF (bounded by the read timeout); what came before it.
fn read_to_eof(s: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    s.read_to_end(&mut out)
        .expect("EOF within the read timeout");
    out
}

/// Nothing arrives within `wait` (the connection is open and silent).
fn silent_for(s: &mut TcpStream, wait: Duration) {
    s.set_read_timeout(Some(wait)).unwrap();
    let mut byte = [0u8];
    match s.read(&mut byte) {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => panic!("expected silence, got {other:?}"),
    }
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
}

#[test]
fn pipelined_lines_come_back_in_order_on_a_kept_connection() {
    let echo = Echo::start(10_000);
    let mut s = echo.connect();
    s.write_all(b"one\ntwo\n\nthree\n").unwrap();
    assert_eq!(read_n(&mut s, 15), b"one\ntwo\n\nthree\n");
    // Kept: the next line on the same connection.
    s.write_all(b"four\n").unwrap();
    assert_eq!(read_n(&mut s, 5), b"four\n");
}

#[test]
fn a_line_split_across_reads_is_echoed_whole_once_complete() {
    let echo = Echo::start(10_000);
    let mut s = echo.connect();
    s.write_all(b"hel").unwrap();
    silent_for(&mut s, Duration::from_millis(200));
    s.write_all(b"lo\nwor").unwrap();
    assert_eq!(read_n(&mut s, 6), b"hello\n");
    s.write_all(b"ld\n").unwrap();
    assert_eq!(read_n(&mut s, 6), b"world\n");
}

#[test]
fn a_line_longer_than_the_read_buffer_streams_through() {
    let echo = Echo::start(10_000);
    let mut s = echo.connect();
    let mut line: Vec<u8> = (0..100_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    line.push(b'\n');
    let mut writer = s.try_clone().unwrap();
    let sent = line.clone();
    let t = std::thread::spawn(move || writer.write_all(&sent).unwrap());
    assert_eq!(read_n(&mut s, line.len()), line);
    t.join().unwrap();
    s.write_all(b"next\n").unwrap();
    assert_eq!(read_n(&mut s, 5), b"next\n");
}

#[test]
fn an_idle_connection_is_closed_after_the_idle_timeout() {
    let echo = Echo::start(300);
    let mut s = echo.connect();
    s.write_all(b"x\n").unwrap();
    assert_eq!(read_n(&mut s, 2), b"x\n");
    let idle_from = Instant::now();
    // Silent at first, then closed by the server (EOF), within bounds.
    silent_for(&mut s, Duration::from_millis(100));
    assert_eq!(read_to_eof(&mut s), b"");
    let idle = idle_from.elapsed();
    assert!(idle >= Duration::from_millis(250), "closed after {idle:?}");
    assert!(idle < Duration::from_secs(5), "closed after {idle:?}");
}

#[test]
fn a_drain_closes_idle_connections_at_once_and_finishes_a_line_under_way() {
    let mut echo = Echo::start(60_000);
    let mut idle = echo.connect();
    idle.write_all(b"done\n").unwrap();
    assert_eq!(read_n(&mut idle, 5), b"done\n");
    let mut busy = echo.connect();
    busy.write_all(b"half").unwrap();
    silent_for(&mut busy, Duration::from_millis(200));
    // The drain of an upgrade: requests under way finish.
    echo.signal(libc::SIGHUP);
    assert_eq!(read_to_eof(&mut idle), b"", "the idle one closed at once");
    silent_for(&mut busy, Duration::from_millis(200));
    busy.write_all(b" way\n").unwrap();
    assert_eq!(
        read_to_eof(&mut busy),
        b"half way\n",
        "answered, then closed"
    );
    assert!(echo.exited_within(Duration::from_secs(10)));
}

#[test]
fn sigterm_closes_idle_and_incomplete_connections_and_exits() {
    let mut echo = Echo::start(60_000);
    let mut idle = echo.connect();
    idle.write_all(b"done\n").unwrap();
    assert_eq!(read_n(&mut idle, 5), b"done\n");
    let mut partial = echo.connect();
    partial.write_all(b"half").unwrap();
    silent_for(&mut partial, Duration::from_millis(200));
    echo.signal(libc::SIGTERM);
    assert_eq!(read_to_eof(&mut idle), b"");
    assert_eq!(read_to_eof(&mut partial), b"");
    assert!(echo.exited_within(Duration::from_secs(10)));
}

/// Each line has a read deadline of its own, from its first byte, even when
/// it begins in the read that completes the one before (pipelined).
#[test]
fn each_pipelined_line_gets_its_own_read_deadline() {
    let echo = Echo::start_with(60_000, 400);
    let mut s = echo.connect();
    s.write_all(b"a").unwrap();
    // Paced by the client: each line takes 250 ms of the 400, three lines
    // 750 ms in all.
    for (next, echoed) in [(&b"\nb"[..], b"a\n"), (b"\nc", b"b\n"), (b"\n", b"c\n")] {
        std::thread::sleep(Duration::from_millis(250));
        s.write_all(next).unwrap();
        assert_eq!(read_n(&mut s, 2), echoed);
    }
    // A line that takes longer than the deadline is dropped.
    s.write_all(b"slow").unwrap();
    assert_eq!(read_to_eof(&mut s), b"", "closed at the read deadline");
}
