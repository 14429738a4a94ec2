//! Issue 15's connection-engine holes, each against the real binary on loopback:
//! abandoned slow requests (item 3), bytes beyond one read after the request
//! (item 5), and the pause and drain bookkeeping (item 18).
//!
//! The tests of this file run one at a time (`SERIAL`): some of them open
//! hundreds of connections or exhaust the server's fds.

mod util;

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use socket2::Socket;
use util::{read_to_end, send, show, End, Server, IO_TIMEOUT, RESPONSE};

const FAST: &[u8] = b"GET /test/fast\r\n\r\n";
const SLOW: &[u8] = b"GET /test/slow\r\n\r\n";
const PARTIAL: &[u8] = b"GET /te";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A free loopback address for `--metrics`.
fn metrics_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], util::free_port()))
}

/// One scrape of `addr`'s `/metrics`: the body.
fn scrape(addr: SocketAddr) -> String {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to the metrics listener {addr}: {e}"));
    send(&s, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n");
    let r = read_to_end(&s, IO_TIMEOUT);
    let text = String::from_utf8(r.bytes).expect("UTF-8 scrape");
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no scrape from {addr}: {text:?} then {:?}", r.end));
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    body.to_string()
}

/// The value of the sample `series` (name and labels, exactly) in `body`.
fn sample(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{body}"))
        .parse()
        .expect("a number")
}

/// Closes `stream` with an RST instead of a FIN (SO_LINGER 0).
fn reset(stream: TcpStream) {
    let sock = Socket::from(stream);
    sock.set_linger(Some(Duration::ZERO)).expect("SO_LINGER 0");
    drop(sock);
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

// ---------------------------------------------------------------------------
// Item 3: a slow request whose client is gone before a worker takes it
// ---------------------------------------------------------------------------

#[test]
fn abandoned_slow_requests_are_not_run_and_do_not_delay_a_real_one() {
    let _serial = serial();
    let maddr = metrics_addr();
    let m = maddr.to_string();
    let server = Server::start(&["-A", "1", "-w", "1", "-D", "100", "--metrics", &m]);
    // 300 clients send a slow request and leave at once, half with a FIN, half
    // with a reset: 300 x 100 ms of work if their tasks ran.
    for i in 0..300 {
        let s = server.connect();
        send(&s, SLOW);
        if i % 2 == 0 {
            drop(s);
        } else {
            reset(s);
        }
    }
    let s = server.connect();
    let t = Instant::now();
    send(&s, SLOW);
    let r = read_to_end(&s, ms(10_000));
    let took = t.elapsed();
    assert_eq!(r.bytes, RESPONSE, "got {} then {:?}", show(&r.bytes), r.end);
    // At most the task or two that a worker took before the clients' EOF was
    // seen, then this one: a few hundred ms (slack for a debug build on 2
    // busy cores), not 30 s.
    assert!(
        took < ms(2000),
        "a real slow request behind 300 abandoned ones took {took:?}"
    );
    let body = scrape(maddr);
    assert_eq!(
        sample(&body, "conn_daemon_slow_tasks_queued"),
        0.0,
        "{body}"
    );
    assert_eq!(
        sample(&body, "conn_daemon_slow_tasks_running"),
        0.0,
        "{body}"
    );
    assert_eq!(
        sample(&body, r#"conn_daemon_connections_open{thread="0"}"#),
        0.0,
        "{body}"
    );
}

// ---------------------------------------------------------------------------
// Item 5: more than one read's worth of bytes after the request
// ---------------------------------------------------------------------------

#[test]
fn a_response_survives_a_body_larger_than_the_buffer() {
    let _serial = serial();
    let server = Server::start(&["-A", "1", "-w", "0"]);
    for (target, body_len) in [("fast", 5 * 1024), ("slow", 5 * 1024), ("fast", 64 * 1024)] {
        let mut bytes = format!(
            "GET /test/{target} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {body_len}\r\n\r\n"
        )
        .into_bytes();
        bytes.resize(bytes.len() + body_len, b'b');
        let s = server.connect();
        // One write, as curl --data-binary does; the server reads 4096 of it.
        send(&s, &bytes);
        let r = read_to_end(&s, IO_TIMEOUT);
        assert_eq!(
            (r.bytes.as_slice(), r.end),
            (RESPONSE, End::Eof),
            "/test/{target} with a {body_len}-byte body: got {} then {:?}",
            show(&r.bytes),
            r.end
        );
        // The server closes once it reads our EOF.
        s.shutdown(std::net::Shutdown::Write).unwrap();
    }
    // The plain request still closes at once, without waiting for the client.
    let s = server.connect();
    send(&s, FAST);
    let r = read_to_end(&s, IO_TIMEOUT);
    assert_eq!((r.bytes.as_slice(), r.end), (RESPONSE, End::Eof));
}

// ---------------------------------------------------------------------------
// Item 18: pause and drain bookkeeping
// ---------------------------------------------------------------------------

/// A server started under `ulimit -n NOFILE` (soft and hard), so that it can
/// run out of fds.
struct Limited {
    child: Child,
    port: u16,
    stderr: PathBuf,
}

impl Limited {
    fn start(nofile: u64, args: &[&str]) -> Limited {
        let port = util::free_port();
        let stderr = std::env::temp_dir().join(format!(
            "conn-daemon-hostile-{}-{port}.stderr",
            std::process::id()
        ));
        let file = fs::File::create(&stderr).expect("create the stderr file");
        let child = Command::new("sh")
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
            .arg(util::bin())
            .arg("-p")
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file))
            .spawn()
            .expect("spawn sh");
        let mut server = Limited {
            child,
            port,
            stderr,
        };
        let deadline = Instant::now() + util::START_TIMEOUT;
        loop {
            if let Some(status) = server.child.try_wait().expect("try_wait") {
                panic!("exited during start-up ({status}): {}", server.stderr());
            }
            if TcpStream::connect_timeout(&server.addr(), ms(200)).is_ok() {
                return server;
            }
            assert!(
                Instant::now() < deadline,
                "no listener: {}",
                server.stderr()
            );
            thread::sleep(ms(10));
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn fds(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

impl Drop for Limited {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.stderr);
    }
}

#[test]
fn the_fd_exhaustion_gauge_returns_to_0_on_an_idle_server() {
    let _serial = serial();
    let maddr = metrics_addr();
    let m = maddr.to_string();
    let server = Limited::start(64, &["-A", "1", "-w", "1", "--metrics", &m]);
    // Clients one by one until the server runs out of fds: the one that takes
    // the last fd is accepted, and the next accept() (on an empty queue) fails.
    let mut clients = Vec::new();
    let deadline = Instant::now() + ms(10_000);
    while !server.stderr().contains("pausing accept") {
        assert!(
            Instant::now() < deadline && clients.len() < 200,
            "no fd exhaustion with {} clients: {}",
            clients.len(),
            server.stderr()
        );
        let before = server.fds();
        let s = TcpStream::connect_timeout(&server.addr(), IO_TIMEOUT).expect("connect");
        send(&s, PARTIAL);
        clients.push(s);
        let until = Instant::now() + ms(500);
        while server.fds() == before && !server.stderr().contains("pausing accept") {
            if Instant::now() > until {
                break;
            }
            thread::sleep(ms(2));
        }
    }
    // Every client goes: fds are plentiful again, and no new client comes.
    drop(clients);
    thread::sleep(ms(1000));
    let body = scrape(maddr);
    let paused = r#"conn_daemon_accept_paused{thread="0",cause="fd_exhaustion"}"#;
    assert_eq!(
        sample(&body, paused),
        0.0,
        "{body}\nstderr:\n{}",
        server.stderr()
    );
    let pauses = r#"conn_daemon_accept_pauses_total{thread="0",cause="fd_exhaustion"}"#;
    assert_eq!(sample(&body, pauses), 1.0, "{body}");
    assert_eq!(count_lines(&server.stderr(), "accept works again"), 1);
}

#[test]
fn a_drain_with_a_full_pool_pauses_once_and_answers_the_backlog() {
    let _serial = serial();
    let maddr = metrics_addr();
    let m = maddr.to_string();
    let mut server = Server::start(&[
        "-A",
        "1",
        "-C",
        "2",
        "-w",
        "1",
        "-D",
        "1500",
        "--metrics",
        &m,
    ]);
    // Readiness came from the server's READY=1: no connection of ours yet.
    let body = scrape(maddr);
    assert_eq!(
        sample(
            &body,
            r#"conn_daemon_connections_accepted_total{thread="0"}"#
        ),
        0.0,
        "{body}"
    );
    // The pool fills: a slow request (answered after its task) and an
    // incomplete one (which the drain closes).
    let slow = server.connect();
    send(&slow, SLOW);
    let partial = server.connect();
    send(&partial, PARTIAL);
    let deadline = Instant::now() + IO_TIMEOUT;
    while !server.stderr().contains("all 2 connections in use") {
        assert!(
            Instant::now() < deadline,
            "no full pool: {}",
            server.stderr()
        );
        thread::sleep(ms(5));
    }
    // A complete request now waits in the backlog: not answered.
    let queued = server.connect();
    send(&queued, FAST);
    util::check_nothing_for(&queued, ms(200)).unwrap();
    server.signal(libc::SIGTERM);
    // The drain closes the incomplete request, which frees a slot for it.
    let r = read_to_end(&queued, IO_TIMEOUT);
    assert_eq!(
        (r.bytes.as_slice(), r.end),
        (RESPONSE, End::Eof),
        "the complete request in the backlog: got {} then {:?}",
        show(&r.bytes),
        r.end
    );
    let r = read_to_end(&partial, IO_TIMEOUT);
    assert!(
        r.bytes.is_empty(),
        "the incomplete request got {}",
        show(&r.bytes)
    );
    // During the drain (the slow task still runs): one pause, one line.
    let body = scrape(maddr);
    let pauses = r#"conn_daemon_accept_pauses_total{thread="0",cause="pool_full"}"#;
    assert_eq!(sample(&body, pauses), 1.0, "{body}");
    let r = read_to_end(&slow, IO_TIMEOUT);
    assert_eq!(r.bytes, RESPONSE, "the slow request: {}", show(&r.bytes));
    let status = server.wait_exit(IO_TIMEOUT).expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    let stderr = server.stderr();
    assert_eq!(count_lines(&stderr, "connections in use"), 1, "{stderr}");
}
