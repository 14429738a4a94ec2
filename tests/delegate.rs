//! `--delegate socket|loop`: the cases of the modes themselves (the shared suites
//! run in every mode with `CONN_DAEMON_TEST_DELEGATE`).
//!
//! - a `loop` worker (`-w 1`) holds 1,000 slow connections at once and answers
//!   them all;
//! - a `socket` worker whose client never reads is not held by it. Over TCP the
//!   57 bytes always fit the receive window of a client that has not read (the
//!   smallest receive buffer is larger), so a send never blocks here: the test
//!   shows the worker goes on to the next client while the first still has not
//!   read, and that the response waits for it whole. The write deadline itself
//!   (a send that would block, on a full buffer, gives up at the deadline) is
//!   tested in `src/delegate/socket.rs` on a socket pair whose buffer the test
//!   fills;
//! - a client that leaves during its slow work: no response, nothing stuck, the
//!   next client served, the drop counted;
//! - back-pressure with a tiny capacity: every request answered, none dropped,
//!   also when a waiting client leaves;
//! - the drain answers what the workers hold and what is queued for them.

mod util;

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use util::metrics::{free_addr, wait_for, Scrape};
use util::{
    check_closed_silently, check_response, read_to_end, send, shutdown_write, End, Server,
    IO_TIMEOUT, RESPONSE,
};

const SLOW: &[u8] = b"GET /test/slow\r\n\r\n";

/// Bound of this file's waits for a scrape: long enough for a thousand
/// connections handed to one worker to show in it.
const SETTLE: Duration = Duration::from_secs(10);

/// A server with `--metrics` on a free port, `--delegate mode` and `args`.
fn start(mode: &str, args: &[&str]) -> (Server, SocketAddr) {
    let addr = free_addr();
    // One argument: `Server::start` then waits for READY=1 rather than probing
    // the port with a connection that would show in the counts.
    let metrics = format!("--metrics={addr}");
    let mut all = vec![metrics.as_str(), "--delegate", mode];
    all.extend_from_slice(args);
    (Server::start(&all), addr)
}

/// Nothing is open.
fn settled(m: &Scrape) -> bool {
    m.sum("conn_daemon_connections_open", &[]) == 0.0
}

#[test]
fn a_loop_worker_holds_a_thousand_slow_connections_at_once() {
    const N: usize = 1000;
    util::raise_own_nofile(N as u64 + 200);
    let (server, addr) = start("loop", &["-A", "1", "-w", "1", "-C", "2000", "-D", "3000"]);
    wait_for(addr, "settled", SETTLE, settled);
    let streams: Vec<TcpStream> = (0..N)
        .map(|_| {
            let s = server.connect();
            send(&s, SLOW);
            s
        })
        .collect();
    // All of them in the one worker's hands at once: with -w 1 in task or
    // socket mode this would take 1,000 x 3 s.
    let m = wait_for(addr, "1000 connections held by worker 0", SETTLE, |m| {
        m.sample("conn_daemon_connections_open{worker=\"0\"}") == Some(N as f64)
    });
    assert_eq!(
        m.sample("conn_daemon_slow_tasks_running"),
        Some(N as f64),
        "{m:?}"
    );
    for (i, s) in streams.iter().enumerate() {
        let r = read_to_end(s, Duration::from_secs(20));
        assert_eq!(r.bytes, RESPONSE, "connection #{i}: then {:?}", r.end);
        assert_eq!(r.end, End::Eof, "connection #{i}");
    }
    let m = wait_for(addr, "all answered and closed", SETTLE, settled);
    assert_eq!(
        m.sum("conn_daemon_responses_total", &[("kind", "slow")]),
        N as f64
    );
    assert_eq!(
        m.sum_labelled("conn_daemon_connections_dropped_total", "worker"),
        0.0
    );
}

#[test]
fn a_socket_worker_is_not_held_by_a_client_that_never_reads() {
    let (server, addr) = start(
        "socket",
        &["-A", "1", "-w", "1", "-D", "200", "--read-timeout", "1000"],
    );
    wait_for(addr, "settled", SETTLE, settled);
    let silent = server.connect();
    send(&silent, SLOW);
    let t = Instant::now();
    let next = server.connect();
    send(&next, SLOW);
    // The one worker answers the second client after the first's work and its
    // own: the first, which reads nothing, did not hold it.
    check_response(&next, IO_TIMEOUT).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "the second client waited {:?}: the worker was held",
        t.elapsed()
    );
    // The silent client's response was queued whole and waits for it.
    let r = read_to_end(&silent, IO_TIMEOUT);
    assert_eq!((r.bytes.as_slice(), r.end), (RESPONSE, End::Eof));
    let m = wait_for(addr, "both closed", SETTLE, settled);
    assert_eq!(
        m.sum(
            "conn_daemon_responses_total",
            &[("worker", "0"), ("kind", "slow")]
        ),
        2.0
    );
}

/// A client leaves during its slow work: closed at once with no response (not
/// when the work would have ended), nothing stuck, the worker free for the next
/// client at once, the drop counted where the connection was.
fn a_client_that_leaves_during_its_slow_work(mode: &str) {
    let (server, addr) = start(mode, &["-A", "1", "-w", "1", "-D", "1500"]);
    let base = wait_for(addr, "settled", SETTLE, settled);
    let gone = |m: &Scrape| {
        m.sum(
            "conn_daemon_connections_dropped_total",
            &[("reason", "client_gone")],
        )
    };
    let leaving = server.connect();
    send(&leaving, SLOW);
    wait_for(addr, "the slow work started", SETTLE, |m| {
        m.one("conn_daemon_slow_tasks_running") == 1.0
    });
    shutdown_write(&leaving);
    let left = Instant::now();
    check_closed_silently(&leaving, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("{mode}: the client that left: {e}"));
    // The work had ~1.45 s to go.
    assert!(
        left.elapsed() < Duration::from_millis(700),
        "{mode}: the client that left was closed only {:?} after its EOF",
        left.elapsed()
    );
    // And one that vanishes outright.
    let vanishing = server.connect();
    send(&vanishing, SLOW);
    drop(vanishing);
    let next = server.connect();
    send(&next, SLOW);
    let sent = Instant::now();
    check_response(&next, IO_TIMEOUT).unwrap();
    // Its own 1.5 s, not the two leavers' work first: the one worker was
    // not kept for clients that had gone (that took more than 4 s).
    assert!(
        sent.elapsed() < Duration::from_millis(2500),
        "{mode}: the next slow request was answered only after {:?}",
        sent.elapsed()
    );
    let m = wait_for(addr, "everything closed", SETTLE, settled);
    assert_eq!(gone(&m) - gone(&base), 2.0, "{mode}: {m:?}");
    assert_eq!(
        m.sum("conn_daemon_responses_total", &[("kind", "slow")]),
        1.0,
        "{mode}"
    );
    assert_eq!(
        m.sample("conn_daemon_slow_tasks_running"),
        Some(0.0),
        "{mode}"
    );
    assert_eq!(
        m.sample("conn_daemon_slow_tasks_queued"),
        Some(0.0),
        "{mode}"
    );
}

#[test]
fn a_client_that_leaves_during_its_slow_work_socket() {
    a_client_that_leaves_during_its_slow_work("socket");
}

#[test]
fn a_client_that_leaves_during_its_slow_work_loop() {
    a_client_that_leaves_during_its_slow_work("loop");
}

/// `-C 2 -w 1`: the worker side holds 2, the accept pool 2 more, the rest wait in
/// the listen backlog. 30 slow requests at once are all answered, none dropped.
fn back_pressure(mode: &str) {
    let (server, addr) = start(mode, &["-A", "1", "-C", "2", "-w", "1", "-D", "50"]);
    let base = wait_for(addr, "settled", SETTLE, settled);
    let drops = |m: &Scrape| m.sum("conn_daemon_connections_dropped_total", &[]);
    let streams: Vec<TcpStream> = (0..30)
        .map(|_| {
            let s = server.connect();
            send(&s, SLOW);
            s
        })
        .collect();
    for (i, s) in streams.iter().enumerate() {
        let r = read_to_end(s, Duration::from_secs(20));
        assert_eq!(
            r.bytes, RESPONSE,
            "{mode}: connection #{i}: then {:?}",
            r.end
        );
    }
    let m = wait_for(addr, "everything closed", SETTLE, settled);
    assert_eq!(
        m.sum("conn_daemon_responses_total", &[("kind", "slow")]),
        30.0
    );
    assert_eq!(drops(&m), drops(&base), "{mode}: a drop: {m:?}");
    assert!(
        m.one("conn_daemon_accept_pauses_total{thread=\"0\",cause=\"pool_full\"}") >= 1.0,
        "{mode}: the accept pool never filled: the test did not test back-pressure"
    );
}

#[test]
fn back_pressure_with_a_tiny_capacity_socket() {
    back_pressure("socket");
}

#[test]
fn back_pressure_with_a_tiny_capacity_loop() {
    back_pressure("loop");
}

/// `-C 1 -w 1`: the first slow request fills the worker side; the second waits
/// in its accept loop, still watched: its client leaving closes it at once
/// (rule 7), and the third is served once the first is done.
fn a_waiting_client_that_leaves(mode: &str) {
    let (server, addr) = start(mode, &["-A", "1", "-C", "1", "-w", "1", "-D", "600"]);
    wait_for(addr, "settled", SETTLE, settled);
    let first = server.connect();
    send(&first, SLOW);
    wait_for(addr, "the first with the worker", SETTLE, |m| {
        m.sample("conn_daemon_connections_open{worker=\"0\"}") == Some(1.0)
    });
    let waiting = server.connect();
    send(&waiting, SLOW);
    wait_for(addr, "the second waiting in the accept loop", SETTLE, |m| {
        m.sample("conn_daemon_connections_open{thread=\"0\"}") == Some(1.0)
    });
    shutdown_write(&waiting);
    let t = Instant::now();
    check_closed_silently(&waiting, IO_TIMEOUT).unwrap();
    assert!(
        t.elapsed() < Duration::from_millis(400),
        "{mode}: closed only after {:?}: not watched while waiting",
        t.elapsed()
    );
    let third = server.connect();
    send(&third, SLOW);
    check_response(&first, IO_TIMEOUT).unwrap();
    check_response(&third, IO_TIMEOUT).unwrap();
    let m = wait_for(addr, "everything closed", SETTLE, settled);
    assert_eq!(
        m.sum("conn_daemon_responses_total", &[("kind", "slow")]),
        2.0
    );
}

#[test]
fn a_waiting_client_that_leaves_is_closed_at_once_socket() {
    a_waiting_client_that_leaves("socket");
}

#[test]
fn a_waiting_client_that_leaves_is_closed_at_once_loop() {
    a_waiting_client_that_leaves("loop");
}

/// SIGTERM while the worker holds one connection and more are queued for it (or,
/// in loop mode, held on its loop): every one is answered, then exit 0.
fn drain_answers_what_the_workers_hold(mode: &str) {
    let (mut server, addr) = start(mode, &["-A", "1", "-w", "1", "-D", "300"]);
    wait_for(addr, "settled", SETTLE, settled);
    let streams: Vec<TcpStream> = (0..5)
        .map(|_| {
            let s = server.connect();
            send(&s, SLOW);
            s
        })
        .collect();
    wait_for(addr, "all five handed over", SETTLE, |m| {
        m.sample("conn_daemon_connections_open{thread=\"0\"}") == Some(0.0)
            && m.sample("conn_daemon_slow_tasks_running").unwrap_or(0.0)
                + m.sample("conn_daemon_slow_tasks_queued").unwrap_or(0.0)
                == 5.0
    });
    server.signal(libc::SIGTERM);
    for (i, s) in streams.iter().enumerate() {
        let r = read_to_end(s, Duration::from_secs(10));
        assert_eq!(
            r.bytes, RESPONSE,
            "{mode}: connection #{i}: then {:?}",
            r.end
        );
    }
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("exit after the drain");
    assert_eq!(status.code(), Some(0), "{mode}");
}

#[test]
fn the_drain_answers_what_the_workers_hold_socket() {
    drain_answers_what_the_workers_hold("socket");
}

#[test]
fn the_drain_answers_what_the_workers_hold_loop() {
    drain_answers_what_the_workers_hold("loop");
}

/// `-w 0` answers slow requests inline whatever the mode; the mode is in the
/// build info.
#[test]
fn without_workers_every_mode_answers_inline() {
    for mode in ["socket", "loop"] {
        let (server, addr) = start(mode, &["-A", "1", "-w", "0", "-D", "5000"]);
        let t = Instant::now();
        let got = server.request(SLOW);
        assert_eq!(got, RESPONSE, "{mode}");
        assert!(t.elapsed() < Duration::from_secs(2), "{mode}: not inline");
        let m = Scrape::get(addr);
        assert_eq!(
            m.sum("conn_daemon_build_info", &[("delegate", mode)]),
            1.0,
            "{m:?}"
        );
    }
}

/// `loop`: a client that leaves during its timer frees nothing early: the next
/// connection (which reuses the slot) waits its own full duration.
#[test]
fn a_loop_worker_gives_each_connection_its_full_duration() {
    let (server, addr) = start("loop", &["-A", "1", "-w", "1", "-D", "1000"]);
    wait_for(addr, "settled", SETTLE, settled);
    for _ in 0..3 {
        let leaving = server.connect();
        send(&leaving, SLOW);
        // 300 ms into its work, the client goes, and the server closes it.
        std::thread::sleep(Duration::from_millis(300));
        drop(leaving);
        wait_for(addr, "the client that left closed", SETTLE, settled);
        let next = server.connect();
        send(&next, SLOW);
        let t = Instant::now();
        check_response(&next, IO_TIMEOUT).unwrap();
        assert!(
            t.elapsed() >= Duration::from_millis(950),
            "answered after {:?}, not --slow-duration",
            t.elapsed()
        );
    }
}
