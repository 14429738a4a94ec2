//! `examples/echo_idle` allocates nothing per connection: its connections live
//! in pool slots that hold both their watchers (`Pool<Conn, (Io, Timer)>`), not
//! in boxes. The example's `serve` runs here, in a thread, under the tests'
//! counting global allocator (`tests/util/alloc_count.rs`), which counts only
//! that thread; after a warm-up, 500 connections (echoed lines, split lines,
//! idle timeouts, closes by the client) must not move the count of allocations
//! made by the server's thread.

#[path = "../examples/echo_idle.rs"]
mod echo_idle;
mod util;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use util::alloc_count::{self, Counting};

#[global_allocator]
static GLOBAL: Counting = Counting::opted_in_threads();

const IDLE: Duration = Duration::from_millis(200);

fn connect(addr: std::net::SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn read_exactly(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut got = vec![0; n];
    s.read_exact(&mut got).unwrap();
    got
}

/// One round of every path: lines, a split line, a close by the client, and
/// (every `idle_every`th connection) an idle timeout.
fn round(addr: std::net::SocketAddr, conns: usize, idle_every: usize) {
    for i in 0..conns {
        let mut s = connect(addr);
        s.write_all(b"hello\nwor").unwrap();
        assert_eq!(read_exactly(&mut s, 6), b"hello\n");
        s.write_all(b"ld\n").unwrap();
        assert_eq!(read_exactly(&mut s, 6), b"world\n");
        if i % idle_every == 0 {
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            assert_eq!(rest, b"idle timeout\n");
        }
    }
}

#[test]
fn echo_idle_allocates_nothing_per_connection() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        alloc_count::count_this_thread(true);
        echo_idle::serve(listener, IDLE).unwrap();
    });
    // Warm-up: the loop's first iterations, and every path once.
    round(addr, 20, 5);
    let before = alloc_count::allocations();
    let t0 = Instant::now();
    round(addr, 500, 100);
    // Let the server finish the last closes (bounded).
    std::thread::sleep(Duration::from_millis(50));
    let after = alloc_count::allocations();
    assert!(
        before > 0,
        "the server's allocations are not counted: the test proves nothing"
    );
    assert_eq!(
        after - before,
        0,
        "allocations by the server for 500 connections (in {:?})",
        t0.elapsed()
    );
}
