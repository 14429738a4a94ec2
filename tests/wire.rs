//! Protocol conformance (docs/protocol.md rules 1-8) against the real binary, over loopback.
//!
//! Every expectation is also checked against `model`, the protocol's one model
//! (`tests/protocol-model`: docs/protocol.md's rules as a function of the bytes
//! received so far, also the fuzz targets' oracle), so the hand-written tables
//! cannot silently drift from the rules, and the split / random
//! tests can ask the model what the server must have done after each piece.

mod util;

use std::net::TcpStream;
use std::thread;
use std::time::{Duration, Instant};

use util::{
    check_closed_silently, check_nothing_for, check_outcome, check_response, send, send_lenient,
    show, shutdown_write, Outcome, Server, IO_TIMEOUT, RESPONSE,
};
use Outcome::{Closed, Pending, Response};

/// Size of the server's per-connection read buffer (docs/protocol.md rule 4).
const BUF: usize = protocol_model::BUFFER;
/// Pause between two writes so they reach the server as separate reads (TCP_NODELAY
/// is on for every test stream).
const GAP: Duration = Duration::from_millis(3);
/// How long an incomplete request must get neither a byte nor a close.
const PENDING_WINDOW: Duration = Duration::from_millis(300);
/// Bound on "the server answers or closes" in the bulk tests.
const QUICK: Duration = Duration::from_secs(2);
/// Bulk tests stop after this many failures (each may cost a timeout).
const MAX_FAILURES: usize = 8;

/// docs/protocol.md rules 1-8 as a function: what the server must have done once
/// exactly `input` has arrived on a connection (in any split across reads). The
/// one model of the protocol (`tests/protocol-model`, shared with the fuzz
/// targets) decides rules 1-4; rules 5, 6 and 8 make a complete valid request a
/// `Response`, a broken one `Closed`, an incomplete one `Pending`.
///
/// Rule 7 (bytes after the end) needs no case here: a fast request (or slow without
/// workers) is answered as soon as its end arrives, and later bytes are never sent
/// by the tests that use the model.
fn model(input: &[u8]) -> Outcome {
    protocol_model::outcome(input)
}

/// Runs a table of single-write requests against `server`. `Response`/`Closed` cases
/// are checked one by one; `Pending` ones are all opened, left alone for
/// `PENDING_WINDOW` together, checked, then completed with `\r\n\r\n` (the model
/// says what that must do), proving the connection really was still alive.
fn run_table(server: &Server, cases: &[(&[u8], Outcome)]) {
    for &(req, want) in cases {
        assert_eq!(
            model(req),
            want,
            "test table disagrees with the reference model for {}",
            show(req)
        );
    }
    let mut failures = Vec::new();
    let mut pending: Vec<(&[u8], TcpStream)> = Vec::new();
    for &(req, want) in cases {
        if failures.len() >= MAX_FAILURES {
            break;
        }
        let s = server.connect();
        if !req.is_empty() {
            send_lenient(&s, req);
        }
        if want == Pending {
            pending.push((req, s));
            continue;
        }
        if let Err(e) = check_outcome(&s, want, QUICK, PENDING_WINDOW) {
            failures.push(format!("{} (want {want:?}): {e}", show(req)));
        }
    }
    thread::sleep(PENDING_WINDOW);
    for (req, s) in pending {
        if failures.len() >= MAX_FAILURES {
            break;
        }
        if let Err(e) = check_nothing_for(&s, Duration::from_millis(5)) {
            failures.push(format!(
                "{} (want Pending for {PENDING_WINDOW:?}): {e}",
                show(req)
            ));
            continue;
        }
        let mut full = req.to_vec();
        full.extend_from_slice(b"\r\n\r\n");
        let want = model(&full);
        send_lenient(&s, b"\r\n\r\n");
        if let Err(e) = check_outcome(&s, want, QUICK, Duration::from_millis(50)) {
            failures.push(format!(
                "{} then, after {PENDING_WINDOW:?}, \"\\r\\n\\r\\n\" (want {want:?}): {e}",
                show(req)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failure(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

/// Sends `parts` as separate writes (GAP apart) and checks, after every part, what
/// the model says the server must have done by then. Stops at the first decided
/// outcome (the server has answered or closed; later parts are not sent).
fn run_parts(
    server: &Server,
    parts: &[&[u8]],
    final_pending_window: Duration,
) -> Result<(), String> {
    let s = server.connect();
    let mut sent = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        if !send_lenient(&s, part) {
            // Only acceptable if the server already closed: the check below says.
            return check_closed_silently(&s, QUICK)
                .map_err(|e| format!("write of part {i} failed and then: {e}"));
        }
        sent.extend_from_slice(part);
        let want = model(&sent);
        let last = i + 1 == parts.len();
        match want {
            Pending if !last => check_nothing_for(&s, GAP),
            Pending => check_nothing_for(&s, final_pending_window),
            decided => {
                return check_outcome(&s, decided, QUICK, final_pending_window)
                    .map_err(|e| format!("after part {i} (want {decided:?}): {e}"));
            }
        }
        .map_err(|e| format!("after part {i} (want Pending): {e}"))?;
    }
    Ok(())
}

fn describe_parts(parts: &[&[u8]]) -> String {
    parts
        .iter()
        .map(|p| show(p))
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Every two-write split of `req`, plus the model's verdict at each step.
fn split_everywhere(server: &Server, req: &[u8], failures: &mut Vec<String>) {
    for at in 1..req.len() {
        if failures.len() >= MAX_FAILURES {
            return;
        }
        let parts = [&req[..at], &req[at..]];
        if let Err(e) = run_parts(server, &parts, Duration::from_millis(100)) {
            failures.push(format!("split at {at}: {}: {e}", describe_parts(&parts)));
        }
    }
}

fn assert_no_failures(failures: Vec<String>) {
    assert!(
        failures.is_empty(),
        "{} failure(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

// ---------------------------------------------------------------------------
// The reference model itself (no server).

#[test]
fn reference_model_follows_the_spec_examples() {
    assert_eq!(model(b"GET /test/fast\r\n\r\n"), Response);
    assert_eq!(model(b"GET /test/fast\r\n"), Pending);
    assert_eq!(model(b"GET /test/fast\n\n"), Pending);
    assert_eq!(model(b"GE"), Pending);
    assert_eq!(model(b"\r\n"), Closed);
    assert_eq!(model(b"POST"), Closed);
    assert_eq!(model(b"GET /test/fast/\r\n"), Closed);
    assert_eq!(model(b"GET /nope"), Pending);
    assert_eq!(model(&pad_request(BUF, true)), Response);
    assert_eq!(model(&pad_request(BUF, false)), Closed);
    assert_eq!(model(&pad_request(BUF + 1, true)), Closed);
    assert_eq!(model(&pad_request(BUF - 1, false)), Pending);
    assert_eq!(RESPONSE.len(), 57);
}

// ---------------------------------------------------------------------------
// Rule 1: the method.

#[test]
fn rule1_method() {
    let server = Server::start(&["-w", "0"]);
    run_table(
        &server,
        &[
            (b"GET /test/fast\r\n\r\n", Response),
            (b"GET /test/slow\r\n\r\n", Response),
            // Wrong method, wrong case, wrong separator: closed once 4 bytes are in.
            (b"get /test/fast\r\n\r\n", Closed),
            (b"Get /test/fast\r\n\r\n", Closed),
            (b"gET /test/fast\r\n\r\n", Closed),
            (b"POST /test/fast\r\n\r\n", Closed),
            (b"PUT /test/fast\r\n\r\n", Closed),
            (b"HEAD /test/fast\r\n\r\n", Closed),
            (b"GETS /test/fast\r\n\r\n", Closed),
            (b"XGET /test/fast\r\n\r\n", Closed),
            (b" GET /test/fast\r\n\r\n", Closed),
            (b"GET\t/test/fast\r\n\r\n", Closed),
            (b"GET/test/fast\r\n\r\n", Closed),
            (b"GET\x00/test/fast\r\n\r\n", Closed),
            (b"\x00\x00\x00\x00", Closed),
            (b"POST", Closed),
            (b"\n\n\n\n", Closed),
            // A CRLF before the method could be checked.
            (b"\r\n", Closed),
            (b"\r\n\r\n", Closed),
            (b"\r\nGET /test/fast\r\n\r\n", Closed),
            (b"G\r\n", Closed),
            (b"GE\r\n", Closed),
            (b"GET\r\n\r\n", Closed),
            // Fewer than 4 bytes and no CRLF: nothing yet.
            (b"", Pending),
            (b"G", Pending),
            (b"GE", Pending),
            (b"GET", Pending),
            (b"GE\r", Pending),
            (b"\n\n", Pending),
            (b"\r\r\r", Pending),
            (b"XX", Pending),
            // 4 bytes, right method: nothing yet.
            (b"GET ", Pending),
        ],
    );
}

// ---------------------------------------------------------------------------
// Rule 2: the request line and its target.

#[test]
fn rule2_target() {
    let server = Server::start(&["-w", "0"]);
    run_table(
        &server,
        &[
            (b"GET /test/fast\r\n\r\n", Response),
            (b"GET /test/slow\r\n\r\n", Response),
            (b"GET /test/fast HTTP/1.1\r\n\r\n", Response),
            (b"GET /test/slow HTTP/1.0\r\n\r\n", Response),
            // Further spaces before the target are skipped.
            (b"GET  /test/fast\r\n\r\n", Response),
            (b"GET        /test/slow HTTP/1.1\r\n\r\n", Response),
            // Whatever follows the target on the line is ignored.
            (b"GET /test/fast \r\n\r\n", Response),
            (b"GET /test/fast  \r\n\r\n", Response),
            (b"GET /test/fast anything at all\r\n\r\n", Response),
            (b"GET /test/fast /test/nope\r\n\r\n", Response),
            (b"GET /test/slow \x00\x7f\xff\tx\r\n\r\n", Response),
            (
                b"GET /test/fast HTTP/1.1\nstill the request line\r\n\r\n",
                Response,
            ),
            // Not exactly one of the two targets.
            (b"GET /test/fast?x=1\r\n\r\n", Closed),
            (b"GET /test/fast?\r\n\r\n", Closed),
            (b"GET /test/fast/\r\n\r\n", Closed),
            (b"GET /test/fast#a\r\n\r\n", Closed),
            (b"GET /test/fastx\r\n\r\n", Closed),
            (b"GET /test/fas\r\n\r\n", Closed),
            (b"GET /test/slo\r\n\r\n", Closed),
            (b"GET /TEST/FAST\r\n\r\n", Closed),
            (b"GET /test/Fast\r\n\r\n", Closed),
            (b"GET /Test/slow\r\n\r\n", Closed),
            (b"GET /test/medium\r\n\r\n", Closed),
            (b"GET /test/\r\n\r\n", Closed),
            (b"GET /test\r\n\r\n", Closed),
            (b"GET /\r\n\r\n", Closed),
            (b"GET test/fast\r\n\r\n", Closed),
            (b"GET //test/fast\r\n\r\n", Closed),
            (b"GET /test//fast\r\n\r\n", Closed),
            (b"GET http://127.0.0.1/test/fast\r\n\r\n", Closed),
            (b"GET /test/fast%20\r\n\r\n", Closed),
            (b"GET /test/fast\x00\r\n\r\n", Closed),
            // Only a space ends the target: tab, CR, bare LF are part of it.
            (b"GET /test/fast\tHTTP/1.1\r\n\r\n", Closed),
            (b"GET \t/test/fast\r\n\r\n", Closed),
            (b"GET /test/fast\rX\r\n\r\n", Closed),
            (b"GET /test/fast\nHost: x\r\n\r\n", Closed),
            (b"GET /test/fast\n\r\n", Closed),
            // No target at all.
            (b"GET \r\n\r\n", Closed),
            (b"GET      \r\n\r\n", Closed),
            // Decided when the request line's CRLF arrives, not before, not later.
            (b"GET /nope\r\n", Closed),
            (b"GET /test/fast?x=1\r\n", Closed),
            (b"GET /nope", Pending),
            (b"GET /test/fast/", Pending),
            (b"GET /test/fast", Pending),
            (b"GET /test/fast\r", Pending),
            (b"GET ", Pending),
            (b"GET    ", Pending),
        ],
    );
}

// ---------------------------------------------------------------------------
// Rule 3: headers are not examined; the request ends at the first empty line.

#[test]
fn rule3_headers_and_end_of_request() {
    let server = Server::start(&["-w", "0"]);
    run_table(
        &server,
        &[
            (b"GET /test/fast\r\nHost: a\r\n\r\n", Response),
            (b"GET /test/fast HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: x\r\nAccept: */*\r\n\r\n", Response),
            (b"GET /test/fast\r\nno colon at all\r\n\r\n", Response),
            (b"GET /test/fast\r\n:\r\n\r\n", Response),
            (b"GET /test/fast\r\n   \r\n\r\n", Response),
            (b"GET /test/fast\r\nX: \x00\x01\x7f\xfe\xff\r\n\r\n", Response),
            (b"GET /test/fast\r\nGET /test/nope\r\n\r\n", Response),
            (b"GET /test/fast\r\nPOST / HTTP/1.1\r\n\r\n", Response),
            (b"GET /test/fast\r\nA: b\nC: d\r\n\r\n", Response),
            (b"GET /test/fast\r\nA: b\rC: d\r\n\r\n", Response),
            (b"GET /test/fast\r\nX: y\r\n\r\r\n\r\n", Response),
            // A body is announced but not waited for.
            (b"GET /test/fast\r\nContent-Length: 100\r\n\r\n", Response),
            (b"GET /test/fast\r\nTransfer-Encoding: chunked\r\n\r\n", Response),
            (b"GET /test/slow\r\nHost: a\r\nX-Y: z\r\n\r\n", Response),
            // Bare LF (or CR) does not end a line, so these have no empty line yet.
            (b"GET /test/fast\n\n", Pending),
            (b"GET /test/fast\r\n\n", Pending),
            (b"GET /test/fast\r\n\n\r\n", Pending),
            (b"GET /test/fast\r\n\r\r\n", Pending),
            (b"GET /test/fast\r\nHost: a\n\n", Pending),
            (b"GET /test/fast\r\nHost: a\r\n\n\r\n", Pending),
            (b"GET /test/fast\r\nHost: a\r\n", Pending),
            (b"GET /test/fast\r\nHost: a\r\n\r", Pending),
            (b"GET /test/fast\r\n\r", Pending),
        ],
    );
}

// ---------------------------------------------------------------------------
// Rule 4: 4096 bytes without the end of a request.

/// A `GET /test/fast` request of exactly `len` bytes, padded with one header.
/// With `end`, its last 4 bytes are the terminating CRLFCRLF (the only one);
/// without, it holds no CRLFCRLF at all.
fn pad_request(len: usize, end: bool) -> Vec<u8> {
    let mut v = b"GET /test/fast HTTP/1.1\r\nX-Pad: ".to_vec();
    let tail: &[u8] = if end { b"\r\n\r\n" } else { b"" };
    assert!(len >= v.len() + tail.len());
    v.resize(len - tail.len(), b'a');
    v.extend_from_slice(tail);
    assert_eq!(v.len(), len);
    v
}

#[test]
fn rule4_buffer_limit() {
    let server = Server::start(&["-w", "0"]);

    // Terminator ends exactly at byte 4096: answered.
    let s = server.connect();
    send(&s, &pad_request(BUF, true));
    check_response(&s, IO_TIMEOUT).unwrap();

    // 4096 bytes, no end: closed, no response.
    let s = server.connect();
    send(&s, &pad_request(BUF, false));
    check_closed_silently(&s, IO_TIMEOUT).unwrap();

    // 4096 bytes ending in "\r\n\r" (one byte short of the end): closed.
    let mut almost = pad_request(BUF - 1, false);
    almost.truncate(BUF - 3);
    almost.extend_from_slice(b"\r\n\r");
    assert_eq!(almost.len(), BUF);
    assert_eq!(model(&almost), Closed);
    let s = server.connect();
    send(&s, &almost);
    check_closed_silently(&s, IO_TIMEOUT).unwrap();

    // The end at byte 4097: too late, closed.
    let s = server.connect();
    send_lenient(&s, &pad_request(BUF + 1, true));
    check_closed_silently(&s, IO_TIMEOUT).unwrap();

    // A request line of 4096 bytes with no CRLF at all: closed.
    let mut long_line = b"GET /test/fast ".to_vec();
    long_line.resize(BUF, b'x');
    let s = server.connect();
    send(&s, &long_line);
    check_closed_silently(&s, IO_TIMEOUT).unwrap();

    // 4095 bytes: still pending; the 4096th byte completing the end: answered.
    let full = pad_request(BUF, true);
    let s = server.connect();
    send(&s, &full[..BUF - 1]);
    check_nothing_for(&s, Duration::from_millis(100)).unwrap();
    send(&s, &full[BUF - 1..]);
    check_response(&s, IO_TIMEOUT).unwrap();

    // 4095 bytes without the end, then one more non-terminating byte: closed.
    let s = server.connect();
    send(&s, &pad_request(BUF - 1, false));
    check_nothing_for(&s, Duration::from_millis(100)).unwrap();
    send(&s, b"a");
    check_closed_silently(&s, IO_TIMEOUT).unwrap();

    // 4094 bytes ending in "\r\n\r", then "\n" as the 4095th byte: answered.
    let mut v = pad_request(BUF - 1, true);
    let last = v.pop().unwrap();
    let s = server.connect();
    send(&s, &v);
    check_nothing_for(&s, Duration::from_millis(100)).unwrap();
    send(&s, &[last]);
    check_response(&s, IO_TIMEOUT).unwrap();

    // The buffer limit is per connection: a normal request still works.
    assert_eq!(server.request(b"GET /test/fast\r\n\r\n"), RESPONSE);
}

// ---------------------------------------------------------------------------
// Rule 5: the exact response.

#[test]
fn rule5_fast_response_is_exact_then_close() {
    let server = Server::start(&["-w", "0"]);
    assert_eq!(
        RESPONSE,
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
    );
    assert_eq!(RESPONSE.len(), 57);
    for req in [
        &b"GET /test/fast\r\n\r\n"[..],
        b"GET /test/fast HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET /test/fast HTTP/1.0\r\n\r\n",
    ] {
        let got = server.request(req);
        assert_eq!(got, RESPONSE, "for {}: got {}", show(req), show(&got));
    }
    // The close is an orderly FIN: the read after the 57 bytes returns 0.
    let s = server.connect();
    send(&s, b"GET /test/fast\r\n\r\n");
    let r = util::read_to_end(&s, Duration::from_secs(5));
    assert_eq!(r.bytes, RESPONSE, "got {}", show(&r.bytes));
    assert_eq!(r.end, util::End::Eof);
}

// ---------------------------------------------------------------------------
// Rule 6: slow requests.

#[test]
fn rule6_slow_without_workers_is_answered_like_fast() {
    let server = Server::start(&["-w", "0", "-D", "5000"]);
    for req in [
        &b"GET /test/slow\r\n\r\n"[..],
        b"GET /test/slow HTTP/1.1\r\nHost: x\r\n\r\n",
    ] {
        let t = Instant::now();
        let got = server.request(req);
        assert_eq!(got, RESPONSE, "for {}: got {}", show(req), show(&got));
        assert!(
            t.elapsed() < Duration::from_secs(1),
            "slow without workers took {:?} (-D 5000 must not apply)",
            t.elapsed()
        );
    }
}

#[test]
fn rule6_slow_with_workers_gets_the_same_response() {
    let server = Server::start(&["-w", "2", "-D", "30"]);
    for req in [
        &b"GET /test/slow\r\n\r\n"[..],
        b"GET /test/slow HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n",
        b"GET    /test/slow trailing words\r\n\r\n",
    ] {
        let t = Instant::now();
        let got = server.request(req);
        assert_eq!(got, RESPONSE, "for {}: got {}", show(req), show(&got));
        assert!(
            t.elapsed() >= Duration::from_millis(30),
            "answered after {:?}",
            t.elapsed()
        );
    }
    // Fast requests are not delayed by the workers.
    assert_eq!(server.request(b"GET /test/fast\r\n\r\n"), RESPONSE);
}

// ---------------------------------------------------------------------------
// Rule 7: bytes after the end of the request.

#[test]
fn rule7_bytes_after_the_end() {
    let mut server = Server::start(&["-w", "2", "-D", "500"]);

    // Same read: ignored. Fast request with junk, and with a whole second request.
    for req in [
        &b"GET /test/fast\r\n\r\nJUNK"[..],
        b"GET /test/fast\r\n\r\n\r\n\r\n",
        b"GET /test/fast\r\n\r\nGET /test/fast\r\n\r\n",
        b"GET /test/fast\r\n\r\nPOST /x\r\n\r\n",
    ] {
        let got = server.request(req);
        assert_eq!(got, RESPONSE, "for {}: got {}", show(req), show(&got));
    }

    // Same read, slow request handled by a worker: ignored too, answered after -D.
    let s = server.connect();
    send(&s, b"GET /test/slow\r\n\r\nJUNK\r\n\r\n");
    let t = Instant::now();
    check_response(&s, IO_TIMEOUT).unwrap();
    assert!(
        t.elapsed() >= Duration::from_millis(450),
        "answered after {:?}",
        t.elapsed()
    );

    // Later bytes while the slow request is with a worker: closed, no response.
    // (`-D 500`: the extra bytes come ~50 ms after the request.) Closed when they
    // arrive, in every mode (a blocking worker waits for input during its work).
    let close_within = Duration::from_millis(400);
    let later: [(&str, &[u8]); 3] = [
        ("one byte", b"X"),
        ("a second request", b"GET /test/fast\r\n\r\n"),
        ("an empty line", b"\r\n"),
    ];
    for (what, extra) in later {
        let s = server.connect();
        send(&s, b"GET /test/slow\r\n\r\n");
        check_nothing_for(&s, Duration::from_millis(50)).unwrap();
        send_lenient(&s, extra);
        let t = Instant::now();
        check_closed_silently(&s, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("slow request, then {what} 50 ms later: {e}"));
        // Closed when the bytes arrive, not when the task completes (~450 ms later).
        assert!(
            t.elapsed() < close_within,
            "slow request, then {what} 50 ms later: closed only {:?} after them",
            t.elapsed()
        );
    }

    // EOF (shutdown of the write side) while the slow request is with a worker.
    let s = server.connect();
    send(&s, b"GET /test/slow\r\n\r\n");
    check_nothing_for(&s, Duration::from_millis(50)).unwrap();
    shutdown_write(&s);
    let t = Instant::now();
    check_closed_silently(&s, Duration::from_secs(3))
        .unwrap_or_else(|e| panic!("slow request, then EOF 50 ms later: {e}"));
    assert!(
        t.elapsed() < close_within,
        "slow request, then EOF 50 ms later: closed only {:?} after the EOF",
        t.elapsed()
    );

    // A client that simply vanishes (close) during its slow request.
    for _ in 0..3 {
        let s = server.connect();
        send(&s, b"GET /test/slow\r\n\r\n");
        util::wait_read([&s], IO_TIMEOUT);
        drop(s);
    }

    // The abandoned tasks complete and must find their connections gone; the
    // server keeps serving correctly. Two slow requests queued behind them (two
    // workers, tasks in order): the second is answered only once the third
    // abandoned task has ended, 500 ms or more before.
    let behind: Vec<TcpStream> = (0..2)
        .map(|_| {
            let s = server.connect();
            send(&s, b"GET /test/slow\r\n\r\n");
            s
        })
        .collect();
    for s in &behind {
        check_response(s, IO_TIMEOUT).unwrap();
    }
    server.assert_running();
    assert_eq!(server.request(b"GET /test/fast\r\n\r\n"), RESPONSE);
    let got = server.request(b"GET /test/slow\r\n\r\n");
    assert_eq!(
        got,
        RESPONSE,
        "slow after abandoned tasks: got {}",
        show(&got)
    );
    server.assert_running();
}

// ---------------------------------------------------------------------------
// Rule 8: no keep-alive.

#[test]
fn rule8_one_response_then_close() {
    let server = Server::start(&["-w", "0"]);
    for req in [
        &b"GET /test/fast HTTP/1.1\r\nConnection: keep-alive\r\n\r\n"[..],
        b"GET /test/fast HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n",
        b"GET /test/slow HTTP/1.1\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\r\n",
        b"GET /test/fast HTTP/1.1\r\nConnection: keep-alive\r\n\r\nGET /test/fast HTTP/1.1\r\n\r\n",
    ] {
        let s = server.connect();
        send(&s, req);
        util::check_response(&s, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("for {}: {e}", show(req)));
    }
}

// ---------------------------------------------------------------------------
// Incremental parsing: every split.

/// The representative requests of the split tests (the model gives each outcome).
const SPLIT_REQUESTS: &[&[u8]] = &[
    b"GET /test/fast HTTP/1.1\r\n\r\n",
    b"GET /test/slow HTTP/1.1\r\n\r\n",
    b"POST /test/fast HTTP/1.1\r\n\r\n",
    b"GET /test/fasT HTTP/1.1\r\n\r\n",
    b"GET /test/fast HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nUser-Agent: t/1.0\r\nAccept: */*\r\n\r\n",
    b"GET /test/fast/ HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET  /test/slow\r\nA: b\nc\r\n\r\n",
];

#[test]
fn split_at_every_position_no_workers() {
    let server = Server::start(&["-w", "0"]);
    assert_eq!(model(SPLIT_REQUESTS[0]), Response);
    assert_eq!(model(SPLIT_REQUESTS[2]), Closed);
    assert_eq!(model(SPLIT_REQUESTS[3]), Closed);
    let mut failures = Vec::new();
    for req in SPLIT_REQUESTS {
        split_everywhere(&server, req, &mut failures);
    }
    assert_no_failures(failures);
}

#[test]
fn split_at_every_position_slow_with_workers() {
    let server = Server::start(&["-w", "2", "-D", "1"]);
    let mut failures = Vec::new();
    split_everywhere(
        &server,
        b"GET /test/slow HTTP/1.1\r\nHost: x\r\n\r\n",
        &mut failures,
    );
    assert_no_failures(failures);
}

#[test]
fn byte_by_byte() {
    let server = Server::start(&["-w", "0"]);
    let mut failures = Vec::new();
    for req in [
        &b"GET /test/fast HTTP/1.1\r\nHost: x\r\n\r\n"[..],
        // Closed exactly when the 4th byte arrives.
        b"GeT /test/fast\r\n\r\n",
        // Closed exactly when the request line's LF arrives.
        b"GET /test/fastest HTTP/1.1\r\nHost: x\r\n\r\n",
        // Closed at the first CRLF, before any method check.
        b"G\r\nET /test/fast\r\n\r\n",
    ] {
        let parts: Vec<&[u8]> = req.chunks(1).collect();
        if let Err(e) = run_parts(&server, &parts, Duration::from_millis(100)) {
            failures.push(format!("byte by byte {}: {e}", show(req)));
        }
    }
    assert_no_failures(failures);
}

// ---------------------------------------------------------------------------
// Incomplete requests.

#[test]
fn incomplete_requests_get_neither_response_nor_close() {
    let server = Server::start(&["-w", "0"]);
    run_table(
        &server,
        &[
            (b"GET /test/fast\r\n", Pending),
            (b"GET /test/fast\n\n", Pending),
            (b"GE", Pending),
            (b"GET /test/slow\r\n", Pending),
            (b"GET /test/fast HTTP/1.1\r\nHost: x\r\n", Pending),
            (b"GET /test/fast\r\n\r", Pending),
            (b"GET /test/fast\n\r\n\n", Closed),
        ],
    );
}

#[test]
fn eof_before_the_end_of_the_request_closes_silently() {
    // Not a numbered rule, but a peer that is gone cannot be answered: the server
    // must release the connection on EOF, with no response.
    let server = Server::start(&["-w", "0"]);
    for req in [
        &b""[..],
        b"GE",
        b"GET /test/fast\r\n",
        b"GET /test/fast\r\nHost: x\r\n\r",
    ] {
        let s = server.connect();
        if !req.is_empty() {
            send(&s, req);
            // The EOF comes in a read of its own.
            util::wait_read([&s], IO_TIMEOUT);
        }
        shutdown_write(&s);
        check_closed_silently(&s, Duration::from_secs(3))
            .unwrap_or_else(|e| panic!("{} then EOF: {e}", show(req)));
    }
}

// ---------------------------------------------------------------------------
// Random requests from docs/protocol.md fragments, randomly split, against the model.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn pick<'a>(&mut self, xs: &[&'a [u8]]) -> &'a [u8] {
        xs[self.below(xs.len())]
    }
}

/// A request built from fragments: mostly well-formed pieces, sometimes one of the
/// near misses the rules single out.
fn random_request(rng: &mut Rng) -> Vec<u8> {
    // (common, rare): the common list is picked 4 times out of 5.
    const METHODS: (&[&[u8]], &[&[u8]]) = (
        &[b"GET ", b"GET  ", b"GET    "],
        &[
            b"get ", b"GET", b"GETX", b"POST ", b"G", b"", b"\r\n", b" GET ", b"GET\t",
        ],
    );
    const TARGETS: (&[&[u8]], &[&[u8]]) = (
        &[b"/test/fast", b"/test/slow"],
        &[
            b"/test/fast/",
            b"/test/fast?a=1",
            b"/TEST/FAST",
            b"/test/fas",
            b"/",
            b"",
            b"/test/slow\t",
            b"/test/fastt",
            b"/test/fast\r",
        ],
    );
    const AFTER: (&[&[u8]], &[&[u8]]) = (
        &[
            b"",
            b" HTTP/1.1",
            b" HTTP/1.0",
            b" ",
            b"  HTTP/1.1 extra words",
        ],
        &[b"\t HTTP/1.1", b"\nHTTP/1.1", b" \n", b" \r"],
    );
    const EOLS: (&[&[u8]], &[&[u8]]) = (&[b"\r\n"], &[b"\n", b"\r", b"\n\r\n"]);
    const HEADERS: (&[&[u8]], &[&[u8]]) = (
        &[
            b"Host: 127.0.0.1\r\n",
            b"Accept: */*\r\n",
            b"Connection: keep-alive\r\n",
        ],
        &[
            b"X: y\n",
            b"\n",
            b"\r\r\n",
            b"A: b\r",
            b"Junk\r\n",
            b"GET /test/nope\r\n",
            b"\r",
        ],
    );
    const FINALS: (&[&[u8]], &[&[u8]]) = (&[b"\r\n"], &[b"", b"\n", b"\r", b"\n\r\n", b"\r\r\n"]);
    const TRAILING: (&[&[u8]], &[&[u8]]) = (&[b""], &[b"JUNK", b"GET /test/fast\r\n\r\n", b"\r\n"]);
    fn pick(rng: &mut Rng, (common, rare): (&[&'static [u8]], &[&'static [u8]])) -> &'static [u8] {
        if rng.below(5) < 4 {
            rng.pick(common)
        } else {
            rng.pick(rare)
        }
    }
    let mut v = Vec::new();
    v.extend_from_slice(pick(rng, METHODS));
    v.extend_from_slice(pick(rng, TARGETS));
    v.extend_from_slice(pick(rng, AFTER));
    v.extend_from_slice(pick(rng, EOLS));
    for _ in 0..[0, 1, 1, 2, 2, 3, 4][rng.below(7)] {
        v.extend_from_slice(pick(rng, HEADERS));
    }
    v.extend_from_slice(pick(rng, FINALS));
    v.extend_from_slice(pick(rng, TRAILING));
    v
}

fn random_split(rng: &mut Rng, req: &[u8]) -> Vec<Vec<u8>> {
    let mut cuts: Vec<usize> = (0..rng.below(4))
        .map(|_| rng.below(req.len() + 1))
        .collect();
    cuts.push(0);
    cuts.push(req.len());
    cuts.sort_unstable();
    cuts.dedup();
    let parts: Vec<Vec<u8>> = cuts.windows(2).map(|w| req[w[0]..w[1]].to_vec()).collect();
    if parts.is_empty() {
        vec![Vec::new()]
    } else {
        parts
    }
}

#[test]
fn random_requests_match_the_reference_model() {
    const CASES: usize = 240;
    const THREADS: usize = 4;
    let seed: u64 = std::env::var("CONN_WIRE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c0de_2024_0001);
    let server = Server::start(&["-w", "0"]);
    // xorshift must not start at 0.
    let mut rng = Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let cases: Vec<Vec<Vec<u8>>> = (0..CASES)
        .map(|_| {
            let req = random_request(&mut rng);
            random_split(&mut rng, &req)
        })
        .collect();
    let failures: Vec<String> = thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let server = &server;
                let cases = &cases;
                scope.spawn(move || {
                    let mut failures = Vec::new();
                    for parts in cases.iter().skip(t).step_by(THREADS) {
                        if failures.len() >= MAX_FAILURES / 2 {
                            break;
                        }
                        let parts: Vec<&[u8]> = parts.iter().map(|p| p.as_slice()).collect();
                        if let Err(e) = run_parts(server, &parts, Duration::from_millis(50)) {
                            failures.push(format!("{}: {e}", describe_parts(&parts)));
                        }
                    }
                    failures
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect()
    });
    assert!(
        failures.is_empty(),
        "seed {seed} (set CONN_WIRE_SEED to rerun): {} failure(s):\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}
