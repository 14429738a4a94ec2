//! Accept threads (`-A N`): one `SO_REUSEPORT` listener per accept thread, all of
//! them serving.
//!
//! How "all of them serve" is observed from outside: the kernel spreads incoming
//! connections over the listeners of a `SO_REUSEPORT` group by a hash of the
//! 4-tuple, so with a few hundred connections from varying source ports every
//! listener receives a good share. Each accept thread sleeps in `epoll_wait` when it
//! has nothing to do, and every wake-up to accept/read/answer a connection after such
//! a sleep counts as a voluntary context switch of that thread
//! (`voluntary_ctxt_switches` in /proc/PID/task/TID/status). An idle accept thread's
//! counter barely moves; one that handles ~200 sequential connections gains at least
//! one switch per connection. So: read the counters of the main thread (accept
//! thread 0, tid == pid) and of `accept-1`, run 400 fast requests, read them again,
//! and require both to have grown well beyond idle noise. (CPU ticks in
//! /proc/.../stat have 10 ms granularity and are too coarse for this.)
//!
//! Listeners are counted in /proc/net/tcp{,6}: rows whose local port is the
//! server's and whose state is `0A` (LISTEN), restricted to socket inodes that are
//! open descriptors of the server process (/proc/PID/fd).

mod util;

use std::thread;
use std::time::{Duration, Instant};

use util::{listening_sockets_on, show, Server, RESPONSE};

const FAST: &[u8] = b"GET /test/fast\r\n\r\n";

/// Waits (bounded) until the server has at least `n` listeners, then watches
/// 100 ms more (a listener too many would show up late: no state to wait
/// for), and returns their inodes.
fn listeners(server: &Server, n: usize) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.listening_inodes().len() < n && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(10));
    }
    thread::sleep(Duration::from_millis(100));
    let mut own = server.listening_inodes();
    own.sort_unstable();
    let mut all = listening_sockets_on(server.port());
    all.sort_unstable();
    assert_eq!(
        own,
        all,
        "listening sockets on port {} that are not the server's",
        server.port()
    );
    own
}

/// Waits (bounded) for the thread named `name`.
fn thread_named(server: &Server, name: &str) -> u32 {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(tid) = server.thread_named(name) {
            return tid;
        }
        assert!(
            Instant::now() < deadline,
            "no thread named {name:?}; threads: {:?}",
            server.threads()
        );
        thread::sleep(Duration::from_millis(10));
    }
}

fn names_with_prefix(server: &Server, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = server
        .threads()
        .into_iter()
        .map(|(_, c)| c)
        .filter(|c| c.starts_with(prefix))
        .collect();
    v.sort();
    v
}

fn vcs(server: &Server, tid: u32) -> u64 {
    server
        .task_status(tid, "voluntary_ctxt_switches")
        .unwrap_or_else(|| panic!("no voluntary_ctxt_switches for task {tid}"))
}

#[test]
fn two_accept_threads_two_listeners_both_serving() {
    let mut server = Server::start(&["-A", "2", "-w", "1"]);
    let accept1 = thread_named(&server, "accept-1");
    // Workers start while the listeners already take connections: wait for them.
    thread_named(&server, "worker-0");
    let main = server.pid();
    assert_ne!(accept1, main);
    assert_eq!(names_with_prefix(&server, "accept-"), ["accept-1"]);
    assert_eq!(names_with_prefix(&server, "worker-"), ["worker-0"]);
    let l = listeners(&server, 2);
    assert_eq!(
        l.len(),
        2,
        "-A 2: listeners on port {}: {l:?}",
        server.port()
    );

    // Start-up's own wake-ups must not count as serving: measure from when
    // neither counter has moved for 50 ms.
    let mut last = (vcs(&server, main), vcs(&server, accept1));
    util::wait_until("start-up's wake-ups over", Duration::from_secs(5), || {
        thread::sleep(Duration::from_millis(50));
        let now = (vcs(&server, main), vcs(&server, accept1));
        std::mem::replace(&mut last, now) == now
    });
    let (main0, acc0) = last;
    for i in 0..400 {
        let got = server.request(FAST);
        assert_eq!(got, RESPONSE, "request {i}: got {}", show(&got));
    }
    let (main1, acc1) = (vcs(&server, main), vcs(&server, accept1));
    let (d_main, d_acc) = (main1 - main0, acc1 - acc0);
    eprintln!("voluntary context switches over 400 requests: main {d_main}, accept-1 {d_acc}");
    assert!(
        d_main >= 40,
        "main thread (accept thread 0) woke only {d_main} times over 400 connections: not serving?"
    );
    assert!(
        d_acc >= 40,
        "accept-1 woke only {d_acc} times over 400 connections: not serving?"
    );
    server.assert_running();
}

#[test]
fn one_accept_thread_one_listener() {
    let mut server = Server::start(&["-A", "1", "-w", "2"]);
    let l = listeners(&server, 1);
    assert_eq!(
        l.len(),
        1,
        "-A 1: listeners on port {}: {l:?}",
        server.port()
    );
    assert_eq!(names_with_prefix(&server, "accept-"), Vec::<String>::new());
    thread_named(&server, "worker-1");
    assert_eq!(
        names_with_prefix(&server, "worker-"),
        ["worker-0", "worker-1"]
    );
    for _ in 0..20 {
        assert_eq!(server.request(FAST), RESPONSE);
    }
    server.assert_running();
}

#[test]
fn three_accept_threads_no_workers() {
    let mut server = Server::start(&["-A", "3", "-w", "0"]);
    thread_named(&server, "accept-2");
    assert_eq!(
        names_with_prefix(&server, "accept-"),
        ["accept-1", "accept-2"]
    );
    assert_eq!(names_with_prefix(&server, "worker-"), Vec::<String>::new());
    let l = listeners(&server, 3);
    assert_eq!(
        l.len(),
        3,
        "-A 3: listeners on port {}: {l:?}",
        server.port()
    );
    for _ in 0..30 {
        assert_eq!(server.request(FAST), RESPONSE);
        assert_eq!(server.request(b"GET /test/slow\r\n\r\n"), RESPONSE);
    }
    server.assert_running();
}
