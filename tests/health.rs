//! `/-/healthy` and `/-/ready` on the metrics listener: 200 while serving,
//! `/-/ready` 503 once a SIGTERM drain began; neither counts in the service's
//! counters.

use std::time::Duration;

mod util;

use util::metrics::{free_addr, http, wait_for, Scrape};
use util::{send, Server};

#[test]
fn healthy_and_ready_while_serving_not_ready_while_draining() {
    let metrics = free_addr();
    let mut server = Server::start(&["--metrics", &metrics.to_string(), "-D", "3000"]);
    for _ in 0..5 {
        let (status, head, body) = http(metrics, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK", "{head}");
        assert_eq!(body, "conn-daemon is Healthy.\n");
        let (status, _, body) = http(metrics, b"GET /-/ready HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert_eq!(body, "conn-daemon is Ready.\n");
    }
    let (status, _, _) = http(metrics, b"GET /-/readyz HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    // The checks count in no service counter.
    let m = Scrape::get(metrics);
    assert_eq!(m.sum("conn_daemon_connections_accepted_total", &[]), 0.0);

    // A slow request holds the drain open for 3 s.
    let slow = server.connect();
    send(&slow, b"GET /test/slow HTTP/1.1\r\n\r\n");
    wait_for(
        metrics,
        "the slow task running",
        Duration::from_secs(5),
        |m| m.one("conn_daemon_slow_tasks_running") == 1.0,
    );
    server.signal(libc::SIGTERM);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let (status, _, body) = http(metrics, b"GET /-/ready HTTP/1.1\r\n\r\n");
        if status == "HTTP/1.1 503 Service Unavailable" {
            assert_eq!(body, "conn-daemon is draining.\n");
            break;
        }
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            std::time::Instant::now() < deadline,
            "still ready after SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let (status, _, _) = http(metrics, b"GET /-/healthy HTTP/1.1\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 200 OK", "healthy while draining");
    let r = util::read_to_end(&slow, Duration::from_secs(10));
    assert_eq!(r.bytes, util::RESPONSE);
    assert!(server
        .wait_exit(Duration::from_secs(10))
        .is_some_and(|s| s.success()));
}
