//! SIGTERM / SIGINT: stop accepting at once, finish complete requests (slow ones
//! included), close the rest, exit 0; `--shutdown-timeout` bounds the drain; a
//! repeated SIGTERM changes nothing, a second SIGINT or a SIGQUIT exits at once
//! with status 1.
#![allow(unsafe_code)]

mod util;

use std::io::ErrorKind;
use std::net::TcpStream;
use std::thread;
use std::time::Instant;

use util::{
    check_closed_silently, check_response, ms, read_to_end, send, show, wait_read, End, Mismatch,
    Server,
};

const SLOW: &[u8] = b"GET /test/slow\r\n\r\n";

/// The server listens no more by `by` (it is polled until then), and one
/// connection attempt (no retry) is refused.
#[track_caller]
fn expect_refused_by(server: &Server, by: Instant, when: &str) {
    while !server.listening_inodes().is_empty() && Instant::now() < by {
        thread::sleep(ms(2));
    }
    expect_refused(server, when);
}

/// One connection attempt (no retry) must be refused: nothing listens any more.
#[track_caller]
fn expect_refused(server: &Server, when: &str) {
    match TcpStream::connect_timeout(&server.addr(), ms(1000)) {
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => {}
        Err(e) => panic!("connect {when}: expected ECONNREFUSED, got {e}"),
        Ok(_) => panic!("connect {when}: accepted, expected ECONNREFUSED"),
    }
}

/// `n` connections, each with a complete slow request sent.
fn slow_requests(server: &Server, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let s = server.connect();
            send(&s, SLOW);
            s
        })
        .collect()
}

#[test]
fn sigterm_finishes_slow_requests_refuses_new_ones_and_exits_0() {
    const N: usize = 20;
    let mut server = Server::start(&["-A", "2", "-w", "4", "-D", "500"]);
    let streams = slow_requests(&server, N);
    wait_read(&streams, ms(5000));
    server.signal(libc::SIGTERM);
    let t_sig = Instant::now();

    expect_refused_by(&server, t_sig + ms(100), "100 ms after SIGTERM");

    // 20 tasks of 500 ms on 4 workers: ~2.5 s, well within the default 10 s drain.
    let limit = t_sig + ms(2500 + 3000);
    let results: Vec<Result<(), Mismatch>> = thread::scope(|scope| {
        let handles: Vec<_> = streams
            .iter()
            .map(|s| {
                scope.spawn(move || {
                    check_response(s, limit.saturating_duration_since(Instant::now()))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("reader"))
            .collect()
    });
    let failed: Vec<(usize, &Mismatch)> = results
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.as_ref().err().map(|e| (i, e)))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {N} slow requests in flight at SIGTERM were not answered: {failed:?}",
        failed.len()
    );

    let status = server.wait_exit(limit.saturating_duration_since(Instant::now()) + ms(1000));
    let elapsed = t_sig.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running {elapsed:?} after SIGTERM"));
    assert_eq!(
        status.code(),
        Some(0),
        "exit after SIGTERM: {status}; stderr:\n{}",
        server.stderr()
    );
}

/// SIGTERM twice (timeout(1), job control and group kills send it to the
/// process and then to its group) is the same request: the drain goes on.
#[test]
fn a_repeated_sigterm_is_the_same_request() {
    let mut server = Server::start(&["-w", "2", "-D", "600"]);
    let streams = slow_requests(&server, 2);
    wait_read(&streams, ms(5000));
    server.signal(libc::SIGTERM);
    // The second once the first has been acted on.
    expect_refused_by(
        &server,
        Instant::now() + ms(5000),
        "after the first SIGTERM",
    );
    server.signal(libc::SIGTERM);
    for (i, s) in streams.iter().enumerate() {
        if let Err(e) = check_response(s, ms(3000)) {
            panic!(
                "slow request {i} after two SIGTERMs: {e}; stderr:\n{}",
                server.stderr()
            );
        }
    }
    let status = server.wait_exit(ms(3000)).expect("exits after the drain");
    assert_eq!(
        status.code(),
        Some(0),
        "{status}; stderr:\n{}",
        server.stderr()
    );
}

/// What a new user tried: `timeout 1 conn-daemon -w 4 -D 1500` with 4 slow
/// requests in flight. timeout(1) signals the server and then its process
/// group; every request must still be answered.
#[test]
fn timeout_1_with_slow_requests_in_flight_answers_them_all() {
    let port = util::free_port();
    let mut child = std::process::Command::new("timeout")
        .args([
            "1",
            &util::bin(),
            "-p",
            &port.to_string(),
            "-w",
            "4",
            "-D",
            "1500",
        ])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn timeout(1)");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + ms(5000);
    let first = loop {
        if let Ok(s) = TcpStream::connect_timeout(&addr, ms(200)) {
            break s;
        }
        assert!(Instant::now() < deadline, "server did not listen on {addr}");
        thread::sleep(ms(10));
    };
    let mut streams = vec![first];
    while streams.len() < 4 {
        streams.push(TcpStream::connect_timeout(&addr, ms(1000)).expect("connect"));
    }
    for s in &streams {
        send(s, SLOW);
    }
    for (i, s) in streams.iter().enumerate() {
        if let Err(e) = check_response(s, ms(5000)) {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "slow request {i} under timeout(1): {e}; stderr:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let deadline = Instant::now() + ms(5000);
    while child.try_wait().expect("try_wait").is_none() {
        assert!(Instant::now() < deadline, "timeout(1) still running");
        thread::sleep(ms(10));
    }
    let out = child.wait_with_output().expect("wait");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("without draining"), "stderr:\n{stderr}");
}

/// A server with one 5 s slow request in flight, and that request's stream.
fn one_slow_in_flight() -> (Server, TcpStream) {
    let server = Server::start(&["-w", "1", "-D", "5000"]);
    let s = server.connect();
    send(&s, SLOW);
    wait_read([&s], ms(5000));
    (server, s)
}

/// The server exits with status 1 within a second of `what`, long before the
/// slow request in flight could be answered, and its client gets no byte.
#[track_caller]
fn assert_exits_at_once(server: &mut Server, slow: &TcpStream, what: &str) {
    let t = Instant::now();
    let status = server
        .wait_exit(ms(1000))
        .unwrap_or_else(|| panic!("still running 1 s after {what}"));
    assert_eq!(
        status.code(),
        Some(1),
        "exit after {what} ({:?} later): {status}; stderr:\n{}",
        t.elapsed(),
        server.stderr()
    );
    let r = read_to_end(slow, ms(1000));
    assert!(
        r.bytes.is_empty() && r.end != End::Timeout,
        "slow client after {what}: got {} then {:?}",
        show(&r.bytes),
        r.end
    );
}

#[test]
fn a_second_sigint_exits_at_once_with_status_1() {
    let (mut server, s) = one_slow_in_flight();
    server.signal(libc::SIGINT);
    // The first signal only starts the drain: the 5 s task keeps it alive.
    if let Some(st) = server.wait_exit(ms(100)) {
        panic!("exited ({st}) 100 ms after a single SIGINT, with a 5 s slow request in flight");
    }
    server.signal(libc::SIGINT);
    assert_exits_at_once(&mut server, &s, "a second SIGINT");
}

#[test]
fn sigquit_exits_at_once_with_status_1() {
    let (mut server, s) = one_slow_in_flight();
    server.signal(libc::SIGQUIT);
    assert_exits_at_once(&mut server, &s, "SIGQUIT");
    assert!(server.stderr().contains("SIGQUIT"), "{}", server.stderr());
}

#[test]
fn shutdown_timeout_bounds_the_drain() {
    let mut server = Server::start(&["--shutdown-timeout", "300", "-w", "1", "-D", "5000"]);
    let slow = server.connect();
    send(&slow, SLOW);
    let idle = server.connect();
    send(&idle, b"GET /te");
    wait_read([&slow, &idle], ms(5000));
    server.signal(libc::SIGTERM);
    let t_sig = Instant::now();

    // The idle client has not completed a request: closed at once, well before the
    // 300 ms drain bound.
    if let Err(e) = check_closed_silently(&idle, ms(1000)) {
        panic!("idle client at SIGTERM: {e}");
    }
    let idle_closed = t_sig.elapsed();
    assert!(
        idle_closed < ms(250),
        "idle client closed {idle_closed:?} after SIGTERM, not at once"
    );

    // The slow one is cut off at the drain bound: EOF, no response.
    let r = read_to_end(&slow, ms(300 + 1000).saturating_sub(t_sig.elapsed()));
    let slow_closed = t_sig.elapsed();
    assert!(
        r.bytes.is_empty() && r.end != End::Timeout,
        "slow client with --shutdown-timeout 300: got {} then {:?} ({slow_closed:?} after SIGTERM)",
        show(&r.bytes),
        r.end
    );
    assert!(
        slow_closed >= ms(250),
        "slow client closed {slow_closed:?} after SIGTERM, before the 300 ms drain bound"
    );

    let status = server.wait_exit(ms(300 + 1000).saturating_sub(t_sig.elapsed()));
    let elapsed = t_sig.elapsed();
    let status = status.unwrap_or_else(|| {
        panic!(
            "still running {elapsed:?} after SIGTERM with --shutdown-timeout 300; stderr:\n{}",
            server.stderr()
        )
    });
    assert_eq!(
        status.code(),
        Some(0),
        "exit after the drain timeout: {status}"
    );
}

#[test]
fn sigint_behaves_as_sigterm() {
    let mut server = Server::start(&["-w", "1", "-D", "300"]);
    let s = server.connect();
    send(&s, SLOW);
    wait_read([&s], ms(5000));
    server.signal(libc::SIGINT);
    let t_sig = Instant::now();
    expect_refused_by(&server, t_sig + ms(100), "100 ms after SIGINT");
    if let Err(e) = check_response(&s, ms(300 + 2000)) {
        panic!("slow request in flight at SIGINT: {e}");
    }
    let status = server
        .wait_exit(ms(2000))
        .unwrap_or_else(|| panic!("still running {:?} after SIGINT", t_sig.elapsed()));
    assert_eq!(status.code(), Some(0), "exit after SIGINT: {status}");
}

/// Connections already in the listen backlog when the signal arrives are taken
/// and answered, not reset by the kernel. The server is stopped (SIGSTOP) while
/// the clients connect and send, so they wait in the backlog, and SIGTERM is
/// pending when it resumes.
#[test]
fn the_listen_backlog_is_served_before_the_listener_closes() {
    const N: usize = 30;
    let mut server = Server::start(&["-A", "1", "-w", "1"]);
    server.signal(libc::SIGSTOP);
    let streams: Vec<TcpStream> = (0..N)
        .map(|_| {
            let s = server.connect();
            send(&s, b"GET /test/fast\r\n\r\n");
            s
        })
        .collect();
    server.signal(libc::SIGTERM);
    server.signal(libc::SIGCONT);
    for (i, s) in streams.iter().enumerate() {
        if let Err(e) = check_response(s, ms(5000)) {
            panic!("backlog connection {i}: {e}");
        }
    }
    let status = server.wait_exit(ms(5000)).expect("exits after the drain");
    assert_eq!(status.code(), Some(0), "{status:?}");
    expect_refused(&server, "after exit");
}

/// Whether `pid`'s main thread blocks SIGTERM: `main` has begun, and its first
/// step, blocking the handled signals, is done.
fn sigterm_blocked(pid: u32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigBlk:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (libc::SIGTERM - 1)) != 0)
}

/// A SIGTERM that arrives while the arguments are read does not kill the
/// process: signals are blocked before anything else in `main`. The command line
/// is long (5000 `--listen` values) so that reading it takes a while, and
/// refused at its end, so that the process exits with the command line's status
/// 1, unless the signal killed it first. The signal is sent once the process is
/// seen to block SIGTERM, which must be seen while it still runs: a `main` that
/// read its arguments first would have exited on `--bogus` by then. (Sending it
/// a fixed moment after the runtime started raced with a loaded machine's
/// scheduler, which could hold the process in between.)
#[test]
fn a_signal_while_the_arguments_are_read_waits() {
    let mut args: Vec<String> = Vec::new();
    for port in 1..=5000 {
        args.push("--listen".into());
        args.push(format!("127.0.0.1:{port}"));
    }
    args.push("--bogus".into());
    for round in 0..3 {
        let started = Instant::now();
        let child = std::process::Command::new(util::bin())
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = Instant::now() + ms(5000);
        let mut child = child;
        loop {
            if sigterm_blocked(pid) {
                break;
            }
            let exited = child.try_wait().unwrap();
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "round {round}: SIGTERM never seen blocked while the process ran ({exited:?})"
            );
            std::hint::spin_loop();
        }
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "round {round}: {} after {:?}; stderr: {}",
            out.status,
            started.elapsed(),
            stderr.lines().next().unwrap_or("")
        );
        assert!(stderr.contains("--bogus"), "round {round}: {stderr}");
    }
}

/// Signals that mean nothing to the server (SIGUSR1, SIGALRM, ...) are one line
/// each on stderr; the server serves on, and SIGTERM still drains it.
#[test]
fn signals_without_a_use_are_logged_and_ignored() {
    let mut server = Server::start(&["-A", "1", "-w", "1"]);
    let signals = [
        (libc::SIGUSR1, "SIGUSR1"),
        (libc::SIGALRM, "SIGALRM"),
        (libc::SIGVTALRM, "SIGVTALRM"),
        (libc::SIGPROF, "SIGPROF"),
        (libc::SIGPWR, "SIGPWR"),
    ];
    for (sig, name) in signals {
        server.signal(sig);
        let line = format!("conn-daemon: {name}: ignored");
        let deadline = Instant::now() + ms(5000);
        while !server.stderr().contains(&line) {
            server.assert_running();
            assert!(
                Instant::now() < deadline,
                "no {line:?}: {}",
                server.stderr()
            );
            thread::sleep(ms(5));
        }
        let s = server.connect();
        send(&s, b"GET /test/fast\r\n\r\n");
        check_response(&s, ms(5000)).unwrap();
    }
    server.signal(libc::SIGTERM);
    let status = server.wait_exit(ms(10_000)).expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0), "{}", server.stderr());
}
