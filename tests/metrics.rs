//! `--metrics`: the counters equal what the clients did, the gauges come back to
//! 0, the listener speaks just enough HTTP, and the output passes
//! `promtool check metrics`.
//!
//! `util::Server::start` waits for the server's own `READY=1` (no probe
//! connection), so the figures are exactly what each test's clients did.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod util;

use util::metrics::{exchange, free_addr, http, wait_for, Scrape};
use util::{check_closed_silently, check_response, read_to_end, send, Server, IO_TIMEOUT};

/// Runs `f` (which forks) while no test of this binary writes an executable: a
/// child forked meanwhile would hold the file open for writing, and the
/// upgrade tests' exec of it would fail with ETXTBSY (see `spawn_guard`).
fn forking<T>(f: impl FnOnce() -> T) -> T {
    let _guard = util::lineage::spawn_guard();
    f()
}

/// A server with `--metrics 127.0.0.1:<free port>` and `args`, and that address.
fn start(args: &[&str]) -> (Server, SocketAddr) {
    let addr = free_addr();
    let metrics = addr.to_string();
    let mut all = vec!["--metrics", &metrics];
    all.extend_from_slice(args);
    let server = forking(|| Server::start(&all));
    let m = Scrape::get(addr);
    assert_eq!(m.sum("conn_daemon_connections_accepted_total", &[]), 0.0);
    assert_eq!(m.count("conn_daemon_build_info"), 1);
    (server, addr)
}

/// `n` connections to the service port, each sent `bytes`.
fn sending(server: &Server, n: usize, bytes: &[u8]) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let s = server.connect();
            send(&s, bytes);
            s
        })
        .collect()
}

/// Checks every drop reason's total against `expected` (the others must be 0).
#[track_caller]
fn assert_drops(m: &Scrape, expected: &[(&str, f64)]) {
    for reason in [
        "invalid",
        "too_large",
        "client_gone",
        "timed_out",
        "shutdown",
    ] {
        let want = expected
            .iter()
            .find(|(r, _)| *r == reason)
            .map_or(0.0, |(_, n)| *n);
        let got = m.sum(
            "conn_daemon_connections_dropped_total",
            &[("reason", reason)],
        );
        assert_eq!(got, want, "dropped {reason}:\n{}", m.text);
    }
}

#[test]
fn counters_equal_what_the_clients_did() {
    let (server, addr) = start(&["-A", "2", "-w", "2", "-D", "20", "--read-timeout", "1000"]);
    // 100 fast, 10 slow (concurrently), 6 invalid.
    for _ in 0..100 {
        let s = server.connect();
        send(&s, b"GET /test/fast HTTP/1.1\r\n\r\n");
        check_response(&s, IO_TIMEOUT).unwrap();
    }
    let slow = sending(&server, 10, b"GET /test/slow HTTP/1.1\r\n\r\n");
    for s in &slow {
        check_response(s, IO_TIMEOUT).unwrap();
    }
    for bad in [
        &b"POST /test/fast HTTP/1.1\r\n\r\n"[..],
        b"GET /metrics HTTP/1.1\r\n\r\n",
        b"GET /test/fastx HTTP/1.1\r\n\r\n",
        b"get /test/fast\r\n\r\n",
        b"\r\n",
        b"GET /test/slow/ HTTP/1.1\r\n\r\n",
    ] {
        let s = server.connect();
        send(&s, bad);
        check_closed_silently(&s, IO_TIMEOUT).unwrap();
    }
    let m = wait_for(addr, "the 116 connections closed", IO_TIMEOUT, |m| {
        m.sum("conn_daemon_connections_open", &[]) == 0.0
    });
    assert_eq!(m.sum("conn_daemon_connections_accepted_total", &[]), 116.0);
    assert_eq!(
        m.sum("conn_daemon_responses_total", &[("kind", "fast")]),
        100.0
    );
    assert_eq!(
        m.sum("conn_daemon_responses_total", &[("kind", "slow")]),
        10.0
    );
    assert_drops(&m, &[("invalid", 6.0)]);
    // Per thread: both accept threads are listed, each with its own capacity.
    for t in ["0", "1"] {
        let series = format!("conn_daemon_pool_capacity{{thread=\"{t}\"}}");
        assert_eq!(m.one(&series), 100_000.0);
    }
    // Every slow task took its 20 ms, and came back.
    assert_eq!(m.one("conn_daemon_slow_task_seconds_count"), 10.0);
    assert_eq!(
        m.one("conn_daemon_slow_task_seconds_bucket{le=\"+Inf\"}"),
        10.0
    );
    assert_eq!(
        m.one("conn_daemon_slow_task_seconds_bucket{le=\"0.01\"}"),
        0.0
    );
    let sum = m.one("conn_daemon_slow_task_seconds_sum");
    assert!((0.2..5.0).contains(&sum), "{sum}");
    assert_eq!(m.one("conn_daemon_slow_tasks_queued"), 0.0);
    assert_eq!(m.one("conn_daemon_slow_tasks_running"), 0.0);

    // The other reasons: 2 oversized, 3 that leave mid-request, 2 that time out.
    for _ in 0..2 {
        let s = server.connect();
        send(&s, b"GET /test/fast HTTP/1.1\r\n");
        util::send_lenient(&s, &[b'a'; 4200]);
        check_closed_silently(&s, IO_TIMEOUT).unwrap();
    }
    for _ in 0..3 {
        let s = server.connect();
        send(&s, b"GET /test/fa");
        util::shutdown_write(&s);
        check_closed_silently(&s, IO_TIMEOUT).unwrap();
    }
    let idle = sending(&server, 2, b"GET /test/fast HTTP/1.1\r\n");
    wait_for(addr, "two connections open", IO_TIMEOUT, |m| {
        m.sum("conn_daemon_connections_open", &[]) == 2.0
    });
    for s in &idle {
        check_closed_silently(s, IO_TIMEOUT).unwrap();
    }
    let m = wait_for(addr, "the timed-out connections closed", IO_TIMEOUT, |m| {
        m.sum("conn_daemon_connections_open", &[]) == 0.0
    });
    assert_eq!(
        m.sum("conn_daemon_connections_accepted_total", &[]),
        116.0 + 7.0
    );
    assert_drops(
        &m,
        &[
            ("invalid", 6.0),
            ("too_large", 2.0),
            ("client_gone", 3.0),
            ("timed_out", 2.0),
        ],
    );
    assert_eq!(m.sum("conn_daemon_responses_total", &[]), 110.0);
}

/// `-w 0` answers slow requests inline: still `kind="slow"`, and no task.
/// `process_cpu_seconds_total` is the server's CPU time as /proc counts it:
/// read from outside just before and just after a scrape, it lies between the
/// two, once the server has used some (so that a constant 0 fails).
#[test]
fn cpu_seconds_are_the_processs_cpu_time() {
    let (server, addr) = start(&[]);
    let ticks = || util::cpu_ticks(server.pid()) as f64 / util::clk_tck() as f64;
    let deadline = Instant::now() + IO_TIMEOUT;
    while ticks() < 0.05 {
        assert!(Instant::now() < deadline, "50 ms of CPU not used");
        for _ in 0..50 {
            assert_eq!(server.request(b"GET /test/fast\r\n\r\n"), util::RESPONSE);
        }
    }
    let before = ticks();
    let cpu = Scrape::get(addr).one("process_cpu_seconds_total");
    let after = ticks();
    assert!(
        before <= cpu && cpu <= after,
        "process_cpu_seconds_total {cpu}, /proc: {before} before the scrape, {after} after"
    );
}

#[test]
fn slow_requests_answered_inline_count_as_slow() {
    let (server, addr) = start(&["-A", "1", "-w", "0"]);
    for req in [&b"GET /test/slow\r\n\r\n"[..], b"GET /test/fast\r\n\r\n"] {
        for _ in 0..3 {
            let s = server.connect();
            send(&s, req);
            check_response(&s, IO_TIMEOUT).unwrap();
        }
    }
    let m = wait_for(addr, "the 6 connections closed", IO_TIMEOUT, |m| {
        m.sum("conn_daemon_connections_open", &[]) == 0.0
    });
    assert_eq!(
        m.sum("conn_daemon_responses_total", &[("kind", "slow")]),
        3.0
    );
    assert_eq!(
        m.sum("conn_daemon_responses_total", &[("kind", "fast")]),
        3.0
    );
    assert_eq!(m.one("conn_daemon_slow_task_seconds_count"), 0.0);
}

#[test]
fn pause_and_slow_task_gauges_return_to_zero() {
    // Task mode: the connections stay in the accept pool while their tasks are
    // out (the other modes free the slot at the hand-over: tests/delegate.rs).
    let (server, addr) = start(&[
        "-A",
        "1",
        "-C",
        "2",
        "-w",
        "1",
        "-D",
        "700",
        "--delegate",
        "task",
    ]);
    // Two slow requests on a pool of two: one runs, one waits for the worker,
    // and the pool is full.
    let slow = sending(&server, 2, b"GET /test/slow\r\n\r\n");
    let third = server.connect();
    send(&third, b"GET /test/fast\r\n\r\n");
    let m = wait_for(
        addr,
        "pool full, one task running, one queued",
        IO_TIMEOUT,
        // The pause's counter too: a scrape adds up the counters the
        // generations published before it reads the live gauges, so one scrape
        // can show the pause's gauge a moment before its count.
        |m| {
            m.one("conn_daemon_accept_paused{thread=\"0\",cause=\"pool_full\"}") == 1.0
                && m.one("conn_daemon_accept_pauses_total{thread=\"0\",cause=\"pool_full\"}") >= 1.0
                && m.one("conn_daemon_slow_tasks_running") == 1.0
                && m.one("conn_daemon_slow_tasks_queued") == 1.0
        },
    );
    assert_eq!(m.one("conn_daemon_connections_open{thread=\"0\"}"), 2.0);
    assert_eq!(
        m.one("conn_daemon_accept_pauses_total{thread=\"0\",cause=\"pool_full\"}"),
        1.0
    );
    for s in &slow {
        check_response(s, IO_TIMEOUT).unwrap();
    }
    check_response(&third, IO_TIMEOUT).unwrap();
    let m = wait_for(addr, "all gauges back to 0", IO_TIMEOUT, |m| {
        m.one("conn_daemon_connections_open{thread=\"0\"}") == 0.0
    });
    for series in [
        "conn_daemon_accept_paused{thread=\"0\",cause=\"pool_full\"}",
        "conn_daemon_accept_paused{thread=\"0\",cause=\"fd_exhaustion\"}",
        "conn_daemon_slow_tasks_running",
        "conn_daemon_slow_tasks_queued",
    ] {
        assert_eq!(m.one(series), 0.0, "{series}");
    }
    assert_eq!(
        m.one("conn_daemon_accept_pauses_total{thread=\"0\",cause=\"pool_full\"}"),
        1.0
    );
    assert_eq!(m.sum("conn_daemon_responses_total", &[]), 3.0);
    // The second task waited for the first: 0.7 s, then 1.4 s (queue wait + run).
    assert_eq!(m.one("conn_daemon_slow_task_seconds_count"), 2.0);
    assert_eq!(
        m.one("conn_daemon_slow_task_seconds_bucket{le=\"0.5\"}"),
        0.0
    );
    assert!(m.one("conn_daemon_slow_task_seconds_bucket{le=\"1\"}") <= 1.0);
    let sum = m.one("conn_daemon_slow_task_seconds_sum");
    assert!(sum >= 2.1, "{sum}");
}

#[test]
fn scrapes_go_on_during_the_drain() {
    let (mut server, addr) = start(&["-A", "1", "-w", "1", "-D", "1500"]);
    let slow = server.connect();
    send(&slow, b"GET /test/slow\r\n\r\n");
    let partial = sending(&server, 2, b"GET /test/fast");
    wait_for(
        addr,
        "three connections open, the slow task running",
        IO_TIMEOUT,
        |m| {
            m.sum("conn_daemon_connections_open", &[]) == 3.0
                && m.one("conn_daemon_slow_tasks_running") == 1.0
        },
    );
    server.signal(libc::SIGTERM);
    for s in &partial {
        check_closed_silently(s, IO_TIMEOUT).unwrap();
    }
    let m = Scrape::get(addr);
    assert_drops(&m, &[("shutdown", 2.0)]);
    assert_eq!(m.sum("conn_daemon_connections_open", &[]), 1.0);
    assert_eq!(m.one("conn_daemon_slow_tasks_running"), 1.0);
    check_response(&slow, IO_TIMEOUT).unwrap();
    let status = server.wait_exit(IO_TIMEOUT).expect("exit after the drain");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn only_get_metrics_is_answered() {
    let (server, addr) = start(&["-A", "1"]);
    let (status, head, body) = http(addr, b"GET /other HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found", "{head}");
    assert_eq!(body, "404 page not found\n");
    for other in ["/", "/metricsx", "/metrics/", "/test/fast"] {
        let request = format!("GET {other} HTTP/1.0\r\n\r\n");
        assert_eq!(http(addr, request.as_bytes()).0, "HTTP/1.1 404 Not Found");
    }
    // A query string is the scraper's business (scrape_config `params`).
    let (status, _, body) = http(addr, b"GET /metrics?x=1 HTTP/1.0\r\nAccept: */*\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("conn_daemon_build_info{"), "{body}");
    // Bad requests are closed without a byte.
    for bad in [
        &b"POST /metrics HTTP/1.1\r\n\r\n"[..],
        b"GET /metrics\r\n\r\n",
        b"GET  /metrics HTTP/1.1\r\n\r\n",
        b"GET /metrics SPDY/3\r\n\r\n",
        b"\r\n\r\n",
        b"\xff\xfe\r\n\r\n",
        &[b'a'; 5000],
    ] {
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
        let _ = (&s).write_all(bad);
        check_closed_silently(&s, IO_TIMEOUT).unwrap();
    }
    // A request that never ends is closed too, in bounded time.
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
    send(&s, b"GET /metrics HTTP/1.1\r\n");
    check_closed_silently(&s, IO_TIMEOUT).unwrap();
    // The service port's behaviour does not change.
    let s = server.connect();
    send(&s, b"GET /metrics HTTP/1.1\r\n\r\n");
    check_closed_silently(&s, IO_TIMEOUT).unwrap();
    // ... and the metrics listener still answers.
    assert_eq!(
        Scrape::get(addr).sum(
            "conn_daemon_connections_dropped_total",
            &[("reason", "invalid")]
        ),
        1.0
    );
}

#[test]
fn ipv6_loopback() {
    let port = util::free_port();
    let metrics = format!("[::1]:{port}");
    let _server = forking(|| Server::start(&["-A", "1", "--metrics", &metrics]));
    let addr: SocketAddr = metrics.parse().unwrap();
    let (status, _, body) = http(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(body.contains("conn_daemon_connections_accepted_total{thread=\"0\"}"));
}

#[test]
fn output_passes_promtool() {
    let (server, addr) = start(&["-A", "2", "-w", "1", "-D", "5"]);
    for request in [
        &b"GET /test/fast\r\n\r\n"[..],
        b"GET /test/slow\r\n\r\n",
        b"BAD\r\n",
    ] {
        let s = server.connect();
        send(&s, request);
        let _ = read_to_end(&s, IO_TIMEOUT);
    }
    let m = Scrape::get(addr);
    let promtool = forking(|| {
        Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
    });
    // Not a skip: the README's test command installs promtool (Debian's prometheus).
    let mut child = promtool.expect("promtool (apt-get install -y prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(m.text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool check metrics: {:?}\n{}{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        m.text
    );
}

#[test]
fn a_busy_metrics_address_stops_the_start_up() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let port = util::free_port().to_string();
    let (code, stderr) =
        forking(|| util::start_fails(&["-p", &port, "--metrics", &addr.to_string()]));
    assert_eq!(code, Some(100), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!(
            "conn-daemon: cannot listen for metrics on {addr}: "
        )),
        "{stderr}"
    );
}

#[test]
fn a_host_name_is_refused_on_the_command_line() {
    let (code, stderr) = forking(|| util::start_fails(&["--metrics", "localhost:9100"]));
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: invalid value 'localhost:9100' for '--metrics <ADDR:PORT>'"),
        "{stderr}"
    );
    assert!(stderr.contains("Usage: conn-daemon [OPTIONS]"), "{stderr}");
}

/// A binary upgrade: the new process binds the metrics address while the old one
/// still holds it, and serves the scrapes once the old one is gone.
#[test]
fn an_upgrade_keeps_the_metrics_address() {
    let addr = free_addr();
    let metrics = addr.to_string();
    let mut lineage = util::lineage::Lineage::start(&["-A", "1", "--metrics", &metrics]);
    let service = lineage.addr();
    for _ in 0..5 {
        let s = TcpStream::connect_timeout(&service, IO_TIMEOUT).unwrap();
        send(&s, b"GET /test/fast\r\n\r\n");
        check_response(&s, IO_TIMEOUT).unwrap();
    }
    let old = wait_for(addr, "the old process's five responses", IO_TIMEOUT, |m| {
        m.sum("conn_daemon_responses_total", &[]) == 5.0
    });
    assert_eq!(old.one("conn_daemon_upgrades_total"), 0.0);
    let new = lineage
        .upgrade()
        .unwrap_or_else(|e| panic!("upgrade with --metrics: {e}; stderr:\n{}", lineage.stderr()));
    // The old process is exiting (its listener may still take a connection and
    // then reset it, as a scraper sees it too): the first whole answer is the
    // new process's, with the lineage's counts (tests/metrics_upgrade.rs).
    let deadline = Instant::now() + IO_TIMEOUT;
    while let Err(e) = exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n") {
        assert!(
            Instant::now() < deadline,
            "no scrape after the upgrade: {e}"
        );
        thread::sleep(Duration::from_millis(10));
    }
    let m = Scrape::get(addr);
    assert_eq!(m.sum("conn_daemon_responses_total", &[]), 5.0, "{}", m.text);
    // The lineage's count: one upgrade so far.
    assert_eq!(m.one("conn_daemon_upgrades_total"), 1.0);
    assert!(
        m.one("process_start_time_seconds") >= old.one("process_start_time_seconds"),
        "{}",
        m.text
    );
    assert!(!lineage.stderr().contains("cannot listen for metrics"));
    assert!(util::lineage::alive(new));
    lineage.stop(Duration::from_secs(10)).expect("stop");
}

/// Idle connections that send half a request hold nobody up: a scrape that
/// comes after five of them, or after more than the listener serves at once,
/// is answered long before their read deadline (2 s).
#[test]
fn idle_scrape_connections_do_not_delay_a_scrape() {
    let (_server, addr) = start(&["-A", "1"]);
    for idle in [5, 40] {
        let holders: Vec<TcpStream> = (0..idle)
            .map(|_| {
                let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
                send(&s, b"GET /metrics HTTP/1.1\r\n");
                s
            })
            .collect();
        // As many as the listener serves at once (8, `SLOTS` in
        // src/metrics/scrape.rs) accepted and waiting for the rest of their
        // request; the others, if any, wait in its backlog.
        util::wait_read(&holders[..idle.min(8)], IO_TIMEOUT);
        let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT).unwrap();
        send(&s, b"GET /metrics HTTP/1.1\r\n\r\n");
        let r = read_to_end(&s, Duration::from_millis(1500));
        let text = String::from_utf8_lossy(&r.bytes);
        assert!(
            r.end == util::End::Eof && text.starts_with("HTTP/1.1 200 OK\r\n"),
            "after {idle} idle connections: {:?}, {:?}",
            r.end,
            text.lines().next()
        );
        drop(holders);
    }
}

/// An upgrade hands the metrics listener over like the service listeners: the
/// new process serves scrapes on the very socket the old one listened on (one
/// listening socket on the port all along), and scrapes during upgrades all
/// succeed.
#[test]
fn an_upgrade_hands_the_metrics_listener_over() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let addr = free_addr();
    let metrics = addr.to_string();
    let mut lineage = util::lineage::Lineage::start(&["-A", "1", "--metrics", &metrics]);
    let before = util::listening_sockets_on(addr.port());
    assert_eq!(before.len(), 1, "{before:?}");
    let stop = Arc::new(AtomicBool::new(false));
    let scrapes = Arc::new(AtomicU64::new(0));
    let scraper = {
        let (stop, scrapes) = (Arc::clone(&stop), Arc::clone(&scrapes));
        thread::spawn(move || {
            let (mut ok, mut failures) = (0u64, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                scrapes.fetch_add(1, Ordering::Relaxed);
                match exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n") {
                    Ok((status, _, _)) if status == "HTTP/1.1 200 OK" => ok += 1,
                    Ok((status, _, _)) => failures.push(status),
                    Err(e) => failures.push(e),
                }
            }
            (ok, failures)
        })
    };
    for round in 0..3 {
        lineage
            .upgrade()
            .unwrap_or_else(|e| panic!("upgrade {round}: {e}; stderr:\n{}", lineage.stderr()));
        let now = util::listening_sockets_on(addr.port());
        assert_eq!(now, before, "upgrade {round}: the metrics socket changed");
    }
    // A few scrapes that start after the last upgrade, too.
    let after_last = scrapes.load(Ordering::Relaxed) + 3;
    util::wait_until("scrapes after the last upgrade", IO_TIMEOUT, || {
        scrapes.load(Ordering::Relaxed) > after_last
    });
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = scraper.join().unwrap();
    assert!(
        ok > 0 && failures.is_empty(),
        "{ok} scrapes, failures: {failures:?}"
    );
    let m = Scrape::get(addr);
    assert_eq!(m.one("conn_daemon_upgrades_total"), 3.0);
    lineage.stop(Duration::from_secs(10)).expect("stop");
}
