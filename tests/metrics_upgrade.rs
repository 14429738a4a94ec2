//! The counters across upgrades: a known load through two upgrades (SIGUSR2,
//! then SIGHUP); every scrape, whichever generation answers it, is at least
//! the one before (a scrape during a drain is never lower than one before the
//! upgrade), and once the old generations have exited the counters' increase
//! is exactly what the clients received.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

mod util;

use util::lineage::{alive, Lineage, Load};
use util::metrics::{exchange, free_addr, Scrape};

/// Every `responses_total` series of a scrape body, and their sum.
fn responses(body: &str) -> (Vec<(String, f64)>, f64) {
    let series: Vec<(String, f64)> = body
        .lines()
        .filter(|l| l.starts_with("conn_daemon_responses_total{"))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect();
    let sum = series.iter().map(|(_, v)| v).sum();
    (series, sum)
}

/// Scrapes `addr` until told to stop; each scrape's series must be at least
/// the previous scrape's (per series and in sum). Errors go to `problems`.
fn watch(
    addr: std::net::SocketAddr,
    stop: Arc<AtomicBool>,
    problems: Arc<Mutex<Vec<String>>>,
) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut last: Vec<(String, f64)> = Vec::new();
        let mut scrapes = 0;
        while !stop.load(Ordering::Relaxed) {
            match exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: t\r\n\r\n") {
                Ok((status, _, body)) if status == "HTTP/1.1 200 OK" => {
                    let (series, _) = responses(&body);
                    for (k, v) in &last {
                        let now = series.iter().find(|(s, _)| s == k).map(|(_, v)| *v);
                        if !now.is_some_and(|n| n >= *v) {
                            problems
                                .lock()
                                .unwrap()
                                .push(format!("{k} went from {v} to {now:?}"));
                        }
                    }
                    last = series;
                    scrapes += 1;
                }
                other => problems.lock().unwrap().push(format!("scrape: {other:?}")),
            }
            thread::sleep(Duration::from_millis(5));
        }
        scrapes
    })
}

#[test]
fn counters_survive_two_upgrades_exactly_and_never_fall() {
    let _serial = util::serial();
    let metrics = free_addr();
    let m = metrics.to_string();
    // Slow requests of 300 ms keep each old generation draining a while.
    let mut lineage = Lineage::start(&["-A", "2", "-w", "4", "-D", "300", "--metrics", &m]);
    let stop = Arc::new(AtomicBool::new(false));
    let problems = Arc::new(Mutex::new(Vec::new()));
    let watcher = watch(metrics, Arc::clone(&stop), Arc::clone(&problems));
    let load = Load::start(lineage.addr(), 6);

    for (n, sig) in [(1, libc::SIGUSR2), (2, libc::SIGHUP)] {
        let deadline = Instant::now() + Duration::from_secs(20);
        while load.answered() < 100 * n {
            assert!(Instant::now() < deadline, "the load is stuck");
            thread::sleep(Duration::from_millis(5));
        }
        let before = responses(&Scrape::get(metrics).text).1;
        let old = lineage.pid();
        lineage.signal(sig);
        let new = lineage
            .wait_pid_file(|p| p != old, Duration::from_secs(10))
            .expect("the new process serves");
        lineage.pids.push(new);
        // During the old generation's drain (it finishes its slow requests).
        let mut during = 0;
        while alive(old) {
            let now = responses(&Scrape::get(metrics).text).1;
            if alive(old) {
                assert!(
                    now >= before,
                    "upgrade {n}: {now} during the drain < {before} before"
                );
                during += 1;
            }
        }
        assert!(
            during > 0,
            "upgrade {n}: no scrape while the old process drained"
        );
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while load.answered() < 300 {
        assert!(Instant::now() < deadline, "the load is stuck");
        thread::sleep(Duration::from_millis(5));
    }
    let report = load.stop();
    assert!(report.failures.is_empty(), "{:?}", report.failures);
    stop.store(true, Ordering::Relaxed);
    let scrapes = watcher.join().unwrap();
    let problems = problems.lock().unwrap().clone();
    assert!(problems.is_empty(), "{problems:?}");
    assert!(scrapes > 10, "only {scrapes} scrapes");

    // Both old generations have exited: the increase is exactly what the
    // clients received.
    let m = Scrape::get(metrics);
    assert_eq!(
        responses(&m.text).1,
        report.answered as f64,
        "responses_total after two upgrades vs the clients' count\n{}",
        m.text
    );
    assert_eq!(m.one("conn_daemon_upgrades_total"), 2.0);
    assert_eq!(m.sum("conn_daemon_connections_open", &[]), 0.0);
    lineage.stop(Duration::from_secs(10)).unwrap();
}
