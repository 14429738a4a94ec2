//! The slow path (docs/protocol.md rules 6 and 7): `/test/slow` waits `-D` ms on a worker, the
//! workers bound the concurrency, no workers means no wait, and a client that
//! leaves while its task runs does not disturb whoever gets its slot next.

mod util;

use std::thread;
use std::time::{Duration, Instant};

use util::{
    check_response, ms, read_to_end, send, show, wait_closed, wait_read, End, Server, ServerEnd,
    RESPONSE,
};

const SLOW: &[u8] = b"GET /test/slow\r\n\r\n";
const FAST: &[u8] = b"GET /test/fast\r\n\r\n";
/// Slack allowed on top of the expected time (debug build, 2 busy cores).
const SLACK: Duration = Duration::from_secs(2);

#[test]
fn slow_is_answered_no_sooner_than_the_duration() {
    let server = Server::start(&["-w", "1", "-D", "200"]);
    for req in [SLOW, b"GET /test/slow HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"] {
        let s = server.connect();
        // Before the write: a lower bound must not lose the time this thread
        // may wait between the write and reading the clock.
        let t = Instant::now();
        send(&s, req);
        let r = read_to_end(&s, ms(200) + SLACK + ms(1000));
        let elapsed = t.elapsed();
        assert_eq!(
            r.bytes,
            RESPONSE,
            "for {}: got {} then {:?}",
            show(req),
            show(&r.bytes),
            r.end
        );
        assert_ne!(r.end, End::Timeout, "no close after the response");
        assert!(
            elapsed >= ms(200),
            "slow answered after {elapsed:?}, before -D 200"
        );
        assert!(elapsed < ms(200) + SLACK, "slow answered after {elapsed:?}");
    }
}

#[test]
fn workers_bound_the_concurrency_of_slow_requests() {
    // 8 slow requests at once, 2 workers, 200 ms each: 4 rounds. With only 2 workers
    // at most 2 tasks can finish per 200 ms, so the k-th response (0-based, in order
    // of arrival) cannot come before (k/2 + 1) * 200 ms.
    const N: usize = 8;
    // The bound of modes task and socket; `--delegate loop`'s work is a timer,
    // bounded by capacity instead (tests/delegate.rs): there, socket is tested.
    let mut args = vec!["-w", "2", "-D", "200", "-C", "64"];
    if util::delegate_mode() == "loop" {
        args.extend(["--delegate", "socket"]);
    }
    let server = Server::start(&args);
    let streams: Vec<_> = (0..N).map(|_| server.connect()).collect();
    let t0 = Instant::now();
    for s in &streams {
        send(s, SLOW);
    }
    let mut results: Vec<(Duration, Vec<u8>, End)> = thread::scope(|scope| {
        let handles: Vec<_> = streams
            .iter()
            .map(|s| {
                scope.spawn(move || {
                    let r = read_to_end(s, ms(800) + SLACK + ms(2000));
                    (t0.elapsed(), r.bytes, r.end)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    results.sort_by_key(|r| r.0);
    for (i, (at, bytes, end)) in results.iter().enumerate() {
        assert_eq!(
            bytes.as_slice(),
            RESPONSE,
            "response #{i} at {at:?}: got {} then {end:?}",
            show(bytes)
        );
        assert_ne!(*end, End::Timeout, "response #{i}: no close");
        let earliest = ms(200 * (i as u64 / 2 + 1));
        assert!(
            *at >= earliest,
            "response #{i} after {at:?}: more than 2 slow tasks ran at once (earliest possible {earliest:?}); all: {:?}",
            results.iter().map(|r| r.0).collect::<Vec<_>>()
        );
    }
    let total = results.last().unwrap().0;
    assert!(
        total >= ms(800),
        "8 slow requests on 2 workers took {total:?}"
    );
    assert!(
        total < ms(800) + SLACK,
        "8 slow requests on 2 workers took {total:?}"
    );
}

#[test]
fn without_workers_slow_is_answered_at_once() {
    let server = Server::start(&["-w", "0", "-D", "5000"]);
    for _ in 0..3 {
        let t = Instant::now();
        let got = server.request(SLOW);
        assert_eq!(got, RESPONSE, "got {}", show(&got));
        assert!(
            t.elapsed() < ms(1000),
            "slow with -w 0 took {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn a_client_leaving_during_its_slow_task_does_not_disturb_the_next() {
    // One accept thread with one connection slot and one worker. A sends a slow
    // request and leaves at once; its task keeps running for 300 ms. B then gets the
    // slot (possibly the very same slot object) and sends its own slow request.
    // When A's task completes it must find A's connection gone: B must get exactly
    // one response, and not before its own 300 ms.
    let mut server = Server::start(&["-A", "1", "-C", "1", "-w", "1", "-D", "300"]);
    // Proves the slot is free: the server closed it before we could read EOF.
    assert_eq!(server.request(FAST), RESPONSE);
    for round in 0..3 {
        let a = server.connect();
        send(&a, SLOW);
        let a_end = ServerEnd::of(&a);
        drop(a);
        // The server has read A's request and EOF and released A's connection.
        wait_closed(&[a_end], ms(5000));
        let b = server.connect();
        let t = Instant::now(); // before the write, as above
        send(&b, SLOW);
        let r = read_to_end(&b, ms(600) + SLACK + ms(1000));
        let elapsed = t.elapsed();
        assert_eq!(
            r.bytes,
            RESPONSE,
            "round {round}: B got {} then {:?} after {elapsed:?}",
            show(&r.bytes),
            r.end
        );
        assert_ne!(
            r.end,
            End::Timeout,
            "round {round}: B's connection not closed after the response"
        );
        assert!(
            elapsed >= ms(300),
            "round {round}: B answered {elapsed:?} after its request (< -D 300): A's completion answered B?"
        );
        // At most A's remaining ~250 ms, then B's 300 ms.
        assert!(
            elapsed < ms(600) + SLACK,
            "round {round}: B answered after {elapsed:?}"
        );
        let got = server.request(FAST);
        assert_eq!(
            got,
            RESPONSE,
            "round {round}: fast after B: got {}",
            show(&got)
        );
        server.assert_running();
    }
}

#[test]
fn abandoned_slow_tasks_are_harmless() {
    // More abandoned slow requests than slots (-C 4) and workers (-w 1): every task
    // completes against a gone connection, slots are reused meanwhile, and in the end
    // no descriptor is leaked and both paths still answer correctly.
    let mut server = Server::start(&["-A", "1", "-C", "4", "-w", "1", "-D", "100"]);
    assert_eq!(server.request(FAST), RESPONSE);
    let baseline = server.fd_count();
    for _ in 0..10 {
        let s = server.connect();
        send(&s, SLOW);
        // Its task is queued before its client goes.
        wait_read([&s], ms(5000));
        drop(s);
    }
    // 10 tasks x 100 ms on one worker, in order: once a slow request sent now
    // is answered, every abandoned task is done.
    let behind = server.connect();
    send(&behind, SLOW);
    check_response(&behind, ms(1100) + SLACK + ms(2000)).unwrap();
    drop(behind);
    server.assert_running();
    let fds = server.wait_fd_count_at_most(baseline, Duration::from_secs(3));
    assert!(
        fds <= baseline,
        "fd count {fds} > {baseline} before the abandoned requests: leak"
    );
    assert_eq!(server.request(FAST), RESPONSE);
    let s = server.connect();
    let t = Instant::now(); // before the write, as above
    send(&s, SLOW);
    let r = read_to_end(&s, ms(100) + SLACK + ms(1000));
    assert_eq!(r.bytes, RESPONSE, "got {} then {:?}", show(&r.bytes), r.end);
    assert!(
        t.elapsed() >= ms(100),
        "slow answered after {:?}",
        t.elapsed()
    );
    server.assert_running();
}
