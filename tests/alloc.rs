//! The seed's first rule: no heap allocation while a connection is handled.
//!
//! The server runs in this process under a counting global allocator. After a
//! warm-up that takes every path once, at least 10,000 mixed connections (fast,
//! slow, invalid, oversized, reset mid-request, closed early, timed out) must not
//! move the count of allocations made by the server's threads. The client threads
//! of this test mark themselves and are not counted. `--metrics` is on, and
//! scrapes during the count do not move it either (the scrape thread reuses its
//! response buffer).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod util;

use conn_daemon::config::Config;
use conn_daemon::proto::Builtin;
use conn_daemon::server::Server;
use util::alloc_count::{self, Counting};
use util::metrics::{free_addr, wait_for, Scrape};
use util::{connect, read_until_closed, reset, RESPONSE};

#[global_allocator]
static GLOBAL: Counting = Counting::every_thread();

#[derive(Clone, Copy, Debug)]
enum Kind {
    Fast,
    Slow,
    Invalid,
    Oversized,
    ResetMidRequest,
    EofMidRequest,
    LeaveDuringSlow,
}

const MIX: [Kind; 7] = [
    Kind::Fast,
    Kind::Slow,
    Kind::Invalid,
    Kind::Oversized,
    Kind::ResetMidRequest,
    Kind::EofMidRequest,
    Kind::LeaveDuringSlow,
];

fn one(addr: SocketAddr, kind: Kind) {
    let mut s = connect(addr);
    match kind {
        Kind::Fast => {
            s.write_all(b"GET /test/fast HTTP/1.0\r\nHost: x\r\n\r\n")
                .unwrap();
            assert_eq!(read_until_closed(&mut s), RESPONSE);
        }
        Kind::Slow => {
            s.write_all(b"GET /test/slow HTTP/1.0\r\n\r\n").unwrap();
            assert_eq!(read_until_closed(&mut s), RESPONSE);
        }
        Kind::Invalid => {
            s.write_all(b"POST /test/fast HTTP/1.0\r\n\r\n").unwrap();
            assert_eq!(read_until_closed(&mut s), b"");
        }
        Kind::Oversized => {
            let big = [b'a'; 4200];
            let _ = s.write_all(b"GET /test/fast HTTP/1.0\r\n");
            let _ = s.write_all(&big);
            assert_eq!(read_until_closed(&mut s), b"");
        }
        Kind::ResetMidRequest => {
            s.write_all(b"GET /test/fa").unwrap();
            reset(s);
        }
        Kind::EofMidRequest => {
            s.write_all(b"GET /test/fast HTTP/1.0\r\n").unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            assert_eq!(read_until_closed(&mut s), b"");
        }
        Kind::LeaveDuringSlow => {
            s.write_all(b"GET /test/slow\r\n\r\n").unwrap();
        }
    }
}

/// Client threads that run `per_thread` connections each once `go` is passed.
/// They are spawned before the count is read: starting a thread allocates.
fn clients(
    addr: SocketAddr,
    threads: usize,
    per_thread: usize,
    go: Arc<Barrier>,
) -> Vec<JoinHandle<()>> {
    (0..threads)
        .map(|t| {
            let go = Arc::clone(&go);
            std::thread::spawn(move || {
                alloc_count::count_this_thread(false);
                go.wait();
                for i in 0..per_thread {
                    one(addr, MIX[(i + t) % MIX.len()]);
                }
                // A few read deadlines expiring together.
                let mut waiting: Vec<TcpStream> = (0..5)
                    .map(|_| {
                        let mut s = connect(addr);
                        s.write_all(b"GET /test/fast").unwrap();
                        s
                    })
                    .collect();
                for s in &mut waiting {
                    assert_eq!(read_until_closed(s), b"");
                }
            })
        })
        .collect()
}

fn drive(addr: SocketAddr, threads: usize, per_thread: usize) {
    let go = Arc::new(Barrier::new(threads + 1));
    let handles = clients(addr, threads, per_thread, Arc::clone(&go));
    go.wait();
    for h in handles {
        h.join().unwrap();
    }
}

/// Client threads, and the connections each makes (then 5 that time out).
const THREADS: usize = 4;
const PER_THREAD: usize = 2520;
const _: () = assert!(
    THREADS * (PER_THREAD + 5) >= 10_000,
    "10,000 connections or more"
);

/// No connection open, no slow task queued or running.
fn quiet(m: &Scrape) -> bool {
    m.sum("conn_daemon_connections_open", &[])
        + m.one("conn_daemon_slow_tasks_running")
        + m.one("conn_daemon_slow_tasks_queued")
        == 0.0
}

#[test]
fn no_allocation_per_connection() {
    let port = util::free_port();
    let metrics = free_addr();
    let config = Config::try_parse_from([
        "conn-daemon",
        "-p",
        &port.to_string(),
        "-A",
        "2",
        "-C",
        "1000",
        "-w",
        "2",
        "-D",
        "1",
        "--read-timeout",
        "200",
        "--metrics",
        &metrics.to_string(),
    ])
    .unwrap();
    let server = Server::bind(&config, Builtin::from_config(&config)).expect("bind");
    let stop = server.shutdown_handle();
    let running = std::thread::Builder::new()
        .name("accept-0".into())
        .spawn(move || server.run().expect("run"))
        .unwrap();
    // This thread only spawns and joins clients from here on.
    alloc_count::count_this_thread(false);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();

    // Warm-up: every kind of connection, on both accept threads and all workers.
    drive(addr, 4, 70);
    wait_for(metrics, "the warm-up done", Duration::from_secs(10), quiet);

    let (threads, per_thread) = (THREADS, PER_THREAD);
    let go = Arc::new(Barrier::new(threads + 1));
    let handles = clients(addr, threads, per_thread, Arc::clone(&go));
    let before = alloc_count::allocations();
    let started = Instant::now();
    go.wait();
    let mut last = None;
    for _ in 0..10 {
        last = Some(Scrape::get(metrics));
        std::thread::sleep(Duration::from_millis(20));
    }
    for h in handles {
        h.join().unwrap();
    }
    // Abandoned slow tasks come back and deadlines fire.
    wait_for(
        metrics,
        "every connection done",
        Duration::from_secs(10),
        quiet,
    );
    let after = alloc_count::allocations();
    let connections = threads * (per_thread + 5);
    eprintln!(
        "{connections} connections in {:?}: {} allocations by the server",
        started.elapsed(),
        after - before
    );
    assert_eq!(
        after - before,
        0,
        "the server allocated while handling connections"
    );

    let last = last.expect("ten scrapes");
    assert!(
        last.text
            .contains("conn_daemon_connections_accepted_total{thread=\"1\"} "),
        "{last:?}"
    );

    stop.shutdown();
    let stats = running.join().unwrap();
    assert!(
        stats.served as usize >= threads * per_thread * 2 / 7,
        "{stats:?}"
    );
    assert!(stats.timed_out as usize >= threads * 5, "{stats:?}");
}
