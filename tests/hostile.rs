//! Issue 15's connection-engine holes, each against the real binary on loopback:
//! abandoned slow requests (item 3), bytes beyond one read after the request
//! (item 5), and the pause and drain bookkeeping (item 18).
//!
//! The tests of this file run one at a time (`util::serial`): some of them open
//! hundreds of connections or exhaust the server's fds.

mod util;

use std::net::TcpStream;
use std::thread;
use std::time::Instant;

use util::metrics::{free_addr, wait_for, Scrape};
use util::{
    count_lines, ms, read_to_end, reset, send, serial, show, End, Server, IO_TIMEOUT, RESPONSE,
};

const FAST: &[u8] = b"GET /test/fast\r\n\r\n";
const SLOW: &[u8] = b"GET /test/slow\r\n\r\n";
const PARTIAL: &[u8] = b"GET /te";

// ---------------------------------------------------------------------------
// Item 3: a slow request whose client is gone before a worker takes it
// ---------------------------------------------------------------------------

#[test]
fn abandoned_slow_requests_are_not_run_and_do_not_delay_a_real_one() {
    let _serial = serial();
    let maddr = free_addr();
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
    let scrape = Scrape::get(maddr);
    assert_eq!(
        scrape.one("conn_daemon_slow_tasks_queued"),
        0.0,
        "{scrape:?}"
    );
    assert_eq!(
        scrape.one("conn_daemon_slow_tasks_running"),
        0.0,
        "{scrape:?}"
    );
    assert_eq!(
        scrape.one(r#"conn_daemon_connections_open{thread="0"}"#),
        0.0,
        "{scrape:?}"
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

#[test]
fn the_fd_exhaustion_gauge_returns_to_0_on_an_idle_server() {
    let _serial = serial();
    let maddr = free_addr();
    let m = maddr.to_string();
    let server = Server::start_limited(
        libc::RLIMIT_NOFILE,
        64,
        &["-A", "1", "-w", "1", "--metrics", &m],
    );
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
        let before = server.fd_count();
        let s = TcpStream::connect_timeout(&server.addr(), IO_TIMEOUT).expect("connect");
        send(&s, PARTIAL);
        clients.push(s);
        let until = Instant::now() + ms(500);
        while server.fd_count() == before && !server.stderr().contains("pausing accept") {
            if Instant::now() > until {
                break;
            }
            thread::sleep(ms(2));
        }
    }
    // Every client goes: fds are plentiful again, and no new client comes;
    // within a second the pause is over.
    drop(clients);
    let over = Instant::now() + ms(1000);
    let paused = r#"conn_daemon_accept_paused{thread="0",cause="fd_exhaustion"}"#;
    let scrape = wait_for(maddr, "the pause over", ms(1000), |m| m.one(paused) == 0.0);
    util::wait_until(
        "'accept works again'",
        over.saturating_duration_since(Instant::now()),
        || server.stderr().contains("accept works again"),
    );
    let pauses = r#"conn_daemon_accept_pauses_total{thread="0",cause="fd_exhaustion"}"#;
    assert_eq!(scrape.one(pauses), 1.0, "{scrape:?}");
    assert_eq!(count_lines(&server.stderr(), "accept works again"), 1);
}

#[test]
fn a_drain_with_a_full_pool_pauses_once_and_answers_the_backlog() {
    let _serial = serial();
    let maddr = free_addr();
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
    let scrape = Scrape::get(maddr);
    assert_eq!(
        scrape.one(r#"conn_daemon_connections_accepted_total{thread="0"}"#),
        0.0,
        "{scrape:?}"
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
    let scrape = Scrape::get(maddr);
    let pauses = r#"conn_daemon_accept_pauses_total{thread="0",cause="pool_full"}"#;
    assert_eq!(scrape.one(pauses), 1.0, "{scrape:?}");
    let r = read_to_end(&slow, IO_TIMEOUT);
    assert_eq!(r.bytes, RESPONSE, "the slow request: {}", show(&r.bytes));
    let status = server.wait_exit(IO_TIMEOUT).expect("exits after the drain");
    assert!(status.success(), "{status:?}");
    let stderr = server.stderr();
    assert_eq!(count_lines(&stderr, "connections in use"), 1, "{stderr}");
}
