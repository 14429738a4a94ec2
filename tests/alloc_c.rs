//! No heap allocation after start-up in the whole server process, C included.
//!
//! `tests/alloc.rs` counts Rust's global allocator only; libev allocates with
//! its own `realloc` (its arrays grow with the highest fd watched and the
//! events of one iteration). Here the real binary runs under an LD_PRELOAD
//! shim (`tests/util/alloc_count.c`, built with `cc`) that counts every
//! malloc, calloc, realloc, reallocarray, posix_memalign, aligned_alloc,
//! memalign, valloc and pvalloc of the process into a shared file this test
//! reads. After a light warm-up at concurrency 4 that takes every path once,
//! the number of open connections goes far past it (1,500 idle half-requests
//! held open, slow requests at concurrency 400, fast bursts at 200, trickling,
//! resetting and timed-out clients), every answer is checked, and the count
//! must not move. `--metrics` is on and scraped throughout. It runs once per
//! `--delegate` mode, slow clients that leave during their work included.

use std::fs;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod util;

use util::metrics::{free_addr, wait_for, Scrape};
use util::{check_closed_silently, check_response, reset_on_close, send, Server, IO_TIMEOUT};

/// `--read-timeout`: long enough for the loaded phase, short enough to wait
/// out twice.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
const FAST: &[u8] = b"GET /test/fast HTTP/1.1\r\nHost: x\r\n\r\n";
const SLOW: &[u8] = b"GET /test/slow HTTP/1.1\r\n\r\n";
/// A request line without the end of the request: the server keeps waiting.
const HALF: &[u8] = b"GET /test/fast HTTP/1.1\r\n";

/// Builds the counting shim into the test's scratch directory.
fn build_shim() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/util/alloc_count.c");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("libconn_alloc_count.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let output = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("run {cc} (a C compiler is needed, as for libev): {e}"));
    assert!(
        output.status.success(),
        "{cc} {}: {}",
        src.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    out
}

/// The server's allocations so far, as the shim records them.
fn allocations(counter: &Path) -> u64 {
    let bytes = fs::read(counter).expect("read the allocation counter");
    u64::from_ne_bytes(bytes[..8].try_into().expect("an 8-byte counter"))
}

/// `n` requests `request`, `concurrency` connections open at a time; each gets
/// exactly the response, then a close.
fn burst(server: &Server, request: &[u8], n: usize, concurrency: usize) {
    let mut left = n;
    while left > 0 {
        let round: Vec<TcpStream> = (0..concurrency.min(left))
            .map(|_| server.connect())
            .collect();
        for s in &round {
            send(s, request);
        }
        for s in &round {
            check_response(s, IO_TIMEOUT).unwrap();
        }
        left -= round.len();
    }
}

/// `n` connections that send `head` and are then reset (SO_LINGER 0).
fn resets(server: &Server, head: &[u8], n: usize) {
    let conns: Vec<TcpStream> = (0..n).map(|_| server.connect()).collect();
    for s in &conns {
        send(s, head);
        reset_on_close(s);
    }
    // The server has read the bytes first, so it has watched these connections.
    util::wait_read(&conns, IO_TIMEOUT);
}

/// `n` connections that each send a whole request in four pieces, one read
/// apart, so each is watched by the loop while it trickles in.
fn trickle(server: &Server, n: usize) {
    let conns: Vec<TcpStream> = (0..n).map(|_| server.connect()).collect();
    for piece in [&b"GET "[..], b"/test/", b"fast HTTP/1.1\r\n", b"\r\n"] {
        for s in &conns {
            send(s, piece);
        }
        util::wait_read(&conns, IO_TIMEOUT);
    }
    for s in &conns {
        check_response(s, IO_TIMEOUT).unwrap();
    }
}

/// `n` invalid requests, all closed without a byte.
fn invalid(server: &Server, n: usize) {
    let conns: Vec<TcpStream> = (0..n).map(|_| server.connect()).collect();
    for s in &conns {
        send(s, b"POST /test/fast HTTP/1.1\r\n\r\n");
    }
    for s in &conns {
        check_closed_silently(s, IO_TIMEOUT).unwrap();
    }
}

/// `n` connections that send half a request and stop: the server must keep
/// them open (watched by the loop) until the read deadline.
fn idle(server: &Server, n: usize) -> Vec<TcpStream> {
    let conns: Vec<TcpStream> = (0..n).map(|_| server.connect()).collect();
    for s in &conns {
        send(s, HALF);
    }
    conns
}

/// `n` slow requests whose clients leave (reset) before the response: the task
/// (or the connection, with `--delegate socket|loop`) is with a worker when the
/// client goes. Returns once the workers have finished the abandoned work.
fn leave_mid_task(server: &Server, metrics: SocketAddr, n: usize) {
    let conns: Vec<TcpStream> = (0..n).map(|_| server.connect()).collect();
    for s in &conns {
        send(s, SLOW);
    }
    util::wait_read(&conns, IO_TIMEOUT);
    for s in &conns {
        reset_on_close(s);
    }
    drop(conns);
    wait_for(metrics, "the abandoned work done", IO_TIMEOUT, idle_workers);
}

/// No slow work queued or running.
fn idle_workers(m: &Scrape) -> bool {
    m.one("conn_daemon_slow_tasks_running") + m.one("conn_daemon_slow_tasks_queued") == 0.0
}

/// Waits for the read deadline to close `conns` without a response.
fn expect_timed_out(conns: &[TcpStream]) {
    for s in conns {
        util::check_closed_silently(s, READ_TIMEOUT + Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("a silent client past --read-timeout: {e}"));
    }
}

/// Every `--delegate` mode, one after the other (each holds thousands of fds).
#[test]
fn no_allocation_after_start_up_in_rust_or_c() {
    for mode in ["task", "socket", "loop"] {
        no_allocation_in(mode);
    }
}

fn no_allocation_in(mode: &str) {
    util::raise_own_nofile(5000);
    let shim = build_shim();
    let counter = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("alloc-count-{}-{mode}", std::process::id()));
    let _ = fs::remove_file(&counter);
    let timeout_ms = READ_TIMEOUT.as_millis().to_string();
    let metrics = free_addr();
    let metrics_arg = metrics.to_string();
    let mut server = Server::start_with_env(
        &[
            "-A",
            "2",
            "-C",
            "2500",
            "-w",
            "8",
            "-D",
            "5",
            "--read-timeout",
            &timeout_ms,
            "--metrics",
            &metrics_arg,
            "--delegate",
            mode,
        ],
        &[
            ("LD_PRELOAD", shim.as_os_str()),
            ("CONN_ALLOC_COUNT_FILE", counter.as_os_str()),
        ],
    );
    let at_start = allocations(&counter);
    assert!(
        at_start > 0,
        "the shim counted no allocation at start-up: is it loaded?"
    );

    // Warm-up, light: every path once or a few times, at concurrency 4.
    let warm_idle = idle(&server, 4);
    burst(&server, FAST, 200, 4);
    burst(&server, SLOW, 40, 4);
    trickle(&server, 4);
    invalid(&server, 4);
    resets(&server, HALF, 4);
    leave_mid_task(&server, metrics, 4);
    let eof = server.connect();
    send(&eof, HALF);
    util::shutdown_write(&eof);
    check_closed_silently(&eof, IO_TIMEOUT).unwrap();
    expect_timed_out(&warm_idle);
    drop(warm_idle);
    wait_for(
        metrics,
        "the warm-up's connections all closed",
        IO_TIMEOUT,
        |m| idle_workers(m) && m.sum("conn_daemon_connections_open", &[]) == 0.0,
    );
    let quiet_fds = server.fd_count();
    let before = allocations(&counter);

    // Far past the warm-up: the loops now watch over a thousand fds at once,
    // with fd numbers and events per iteration never seen before.
    let loaded = Instant::now();
    let held = idle(&server, 1500);
    burst(&server, SLOW, 1200, 400);
    burst(&server, FAST, 6000, 200);
    Scrape::get(metrics);
    trickle(&server, 300);
    invalid(&server, 400);
    resets(&server, HALF, 300);
    leave_mid_task(&server, metrics, 300);
    burst(&server, SLOW, 400, 400);
    // Half of the held connections complete their request: each gets its
    // response, if its read deadline (counted from accept) has not passed.
    let (finish, wait) = held.split_at(750);
    let in_time = loaded.elapsed() + Duration::from_secs(1) < READ_TIMEOUT;
    for s in finish {
        send(s, b"\r\n");
    }
    for s in finish {
        if in_time {
            check_response(s, IO_TIMEOUT).unwrap();
        } else {
            util::check_response(s, util::IO_TIMEOUT)
                .or_else(|_| util::check_closed_silently(s, util::IO_TIMEOUT))
                .unwrap_or_else(|e| panic!("a completed request: {e}"));
        }
    }
    // The other half, and a new batch, wait out the deadline together.
    let late = idle(&server, 500);
    expect_timed_out(wait);
    expect_timed_out(&late);
    let phase = loaded.elapsed();
    drop(held);
    drop(late);
    let fds = server.wait_fd_count_at_most(quiet_fds, Duration::from_secs(10));
    assert!(
        fds <= quiet_fds,
        "{fds} fds open after the load, {quiet_fds} before"
    );
    server.assert_running();
    Scrape::get(metrics);
    let after = allocations(&counter);
    eprintln!(
        "--delegate {mode}: {} allocations at start-up, {} by the warm-up, {} in the loaded \
         phase ({phase:?})",
        at_start,
        before - at_start,
        after - before
    );
    assert_eq!(
        after - before,
        0,
        "--delegate {mode}: the server process allocated {} times on the connection path",
        after - before
    );
}
