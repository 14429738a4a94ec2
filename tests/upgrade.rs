//! SIGUSR2 / SIGHUP: the executable at the server's own path takes over the
//! listening sockets; the old process drains once the new one serves. Under
//! continuous load not one connection may be refused, reset or left
//! unanswered, and every way a new executable can fail leaves the old one
//! serving.
#![allow(unsafe_code)]

mod util;

use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use util::lineage::{alive, Lineage, Load};
use util::secs;

/// Five upgrades in a row under load, one to an executable that fails, one
/// more after that: every connection answered, only the newest process left.
#[test]
fn upgrades_under_load_lose_no_connection() {
    let mut lineage = Lineage::start(&["-A", "2", "-w", "4", "-D", "20"]);
    let load = Load::start(lineage.addr(), 8);
    std::thread::sleep(Duration::from_millis(200));
    for round in 1..=5 {
        let before = load.answered();
        if let Err(e) = lineage.upgrade() {
            panic!("upgrade {round}: {e}");
        }
        // Let the load run on the new process for a moment.
        std::thread::sleep(Duration::from_millis(150));
        assert!(
            load.answered() > before,
            "no answers around upgrade {round}"
        );
    }
    // A new "binary" that exits at once: the old process keeps serving.
    let pid = lineage.pid();
    lineage.install(b"#!/bin/sh\nexit 3\n", 0o755);
    lineage.signal(libc::SIGUSR2);
    assert!(
        lineage.wait_stderr("upgrade failed", 1, secs(10)),
        "no 'upgrade failed' line"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(alive(pid), "the old process died with a failed upgrade");
    // The real binary back, and one more upgrade.
    lineage.install_real();
    lineage.upgrade().expect("upgrade after the failed one");
    std::thread::sleep(Duration::from_millis(200));
    let report = load.stop();
    eprintln!(
        "6 upgrades (1 failed attempt) under load: {} answered, {} failed",
        report.answered,
        report.failures.len()
    );
    assert!(
        report.failures.is_empty(),
        "{} of {} connections failed across 6 upgrades: {:?}",
        report.failures.len(),
        report.answered as usize + report.failures.len(),
        &report.failures[..report.failures.len().min(10)]
    );
    assert!(report.answered > 100, "only {} answered", report.answered);
    let newest = lineage.pid();
    let others: Vec<u32> = lineage.pids[..lineage.pids.len() - 1]
        .iter()
        .copied()
        .filter(|&p| alive(p))
        .collect();
    assert!(others.is_empty(), "old processes still running: {others:?}");
    assert!(alive(newest));
    let stderr = lineage.stderr();
    assert_eq!(stderr.matches("upgrade failed").count(), 1, "{stderr}");
    lineage.stop(secs(10)).expect("the newest stops on SIGTERM");
}

/// Every failure mode of the new executable: one line, and the old process
/// serves on; a later SIGUSR2 succeeds. SIGHUP upgrades as SIGUSR2 does.
#[test]
fn a_failed_upgrade_leaves_the_old_process_serving() {
    let mut lineage = Lineage::start(&["-A", "1", "-w", "1", "--upgrade-timeout", "500"]);
    let pid = lineage.pid();
    let exe = std::fs::read(&lineage.exe).unwrap();
    let attempts: [(&str, &[u8], u32); 4] = [
        ("exits", b"#!/bin/sh\nexit 1\n", 0o755),
        ("crashes", b"#!/bin/sh\nkill -SEGV $$\n", 0o755),
        ("is not executable", &exe, 0o644),
        ("never serves", b"#!/bin/sh\nexec sleep 30\n", 0o755),
    ];
    for (n, (what, contents, mode)) in attempts.iter().enumerate() {
        lineage.install(contents, *mode);
        lineage.signal(libc::SIGUSR2);
        assert!(
            lineage.wait_stderr("upgrade failed", n + 1, secs(10)),
            "new executable that {what}: no 'upgrade failed' line"
        );
        assert!(
            alive(pid),
            "old process gone after a new executable that {what}"
        );
        let answered = Load::start(lineage.addr(), 1);
        std::thread::sleep(Duration::from_millis(100));
        let report = answered.stop();
        assert!(
            report.failures.is_empty() && report.answered > 0,
            "after a new executable that {what}: {report:?}"
        );
    }
    // Missing altogether.
    std::fs::remove_file(&lineage.exe).unwrap();
    lineage.signal(libc::SIGUSR2);
    assert!(
        lineage.wait_stderr("upgrade failed", 5, secs(10)),
        "missing executable: no 'upgrade failed' line"
    );
    assert_eq!(lineage.stderr().matches("upgrade failed").count(), 5);
    // One line each, and no process of the failed attempts left behind.
    for line in lineage
        .stderr()
        .lines()
        .filter(|l| l.contains("upgrade failed"))
    {
        assert!(line.ends_with("still serving"), "{line}");
    }
    lineage.install_real();
    lineage
        .upgrade_with(libc::SIGHUP, secs(10))
        .expect("SIGHUP upgrades");
    lineage.stop(secs(10)).unwrap();
}

/// A second SIGUSR2 while the first upgrade waits for its new process is
/// ignored with one line.
#[test]
fn a_second_sigusr2_during_an_upgrade_is_ignored() {
    let mut lineage = Lineage::start(&["-A", "1", "-w", "1", "--upgrade-timeout", "1500"]);
    let pid = lineage.pid();
    lineage.install(b"#!/bin/sh\nexec sleep 30\n", 0o755);
    lineage.signal(libc::SIGUSR2);
    std::thread::sleep(Duration::from_millis(200));
    lineage.signal(libc::SIGUSR2);
    assert!(
        lineage.wait_stderr("an upgrade is in progress", 1, secs(5)),
        "no line for the ignored SIGUSR2; stderr:\n{}",
        lineage.stderr()
    );
    assert!(lineage.wait_stderr("upgrade failed", 1, secs(10)));
    assert!(alive(pid));
    lineage.install_real();
    lineage.upgrade().expect("upgrade after the timed-out one");
    lineage.stop(secs(10)).unwrap();
}

/// A daemonized server (`-d`) upgrades too; the pid file names the new one.
#[test]
fn a_daemonized_server_upgrades() {
    let mut lineage = Lineage::start(&["-d", "-A", "1", "-w", "1"]);
    let first = lineage.pid();
    let load = Load::start(lineage.addr(), 2);
    let second = lineage.upgrade().expect("upgrade of a daemon");
    assert_ne!(first, second);
    std::thread::sleep(Duration::from_millis(100));
    let report = load.stop();
    assert!(report.failures.is_empty(), "{report:?}");
    lineage.stop(secs(10)).unwrap();
}

/// SIGTERM while the new process has not yet served: the upgrade is
/// abandoned (the new process told to stop) and the server drains as usual.
/// The new process is told before our own drain begins: a drain with nothing
/// to finish ends the process at once, and one that ended first left the new
/// process serving on alone (the line was missing once under CI load).
#[test]
fn sigterm_during_an_upgrade_abandons_it_and_drains() {
    let mut lineage = Lineage::start(&["-A", "1", "-w", "1", "--upgrade-timeout", "5000"]);
    let told = lineage.dir().join("new-process-got-sigterm");
    let script = format!(
        "#!/bin/sh\ntrap 'echo term > {}; exit 0' TERM\nsleep 30 &\nwait\n",
        told.display()
    );
    lineage.install(script.as_bytes(), 0o755);
    lineage.signal(libc::SIGUSR2);
    std::thread::sleep(Duration::from_millis(200));
    lineage.stop(secs(5)).expect("drains and exits");
    assert!(
        lineage.stderr().contains("shutting down"),
        "{}",
        lineage.stderr()
    );
    let deadline = Instant::now() + secs(5);
    while !told.exists() {
        assert!(
            Instant::now() < deadline,
            "the new process was never sent SIGTERM; stderr:\n{}",
            lineage.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The versioned layout `current -> releases/vN`: re-pointing the link and
/// sending SIGUSR2 runs the new version (the path as started, not the resolved
/// `/proc/self/exe`).
#[test]
fn an_upgrade_follows_a_re_pointed_symlink() {
    let mut lineage = Lineage::start_symlinked(&["-A", "1", "-w", "1"]);
    let exe_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    assert!(exe_of(lineage.pid()).ends_with("v1/conn-daemon"));
    lineage.repoint("v2");
    let new = lineage.upgrade().expect("upgrade");
    assert!(
        exe_of(new).ends_with("v2/conn-daemon"),
        "new process runs {:?}",
        exe_of(new)
    );
    lineage.stop(secs(10)).unwrap();
}

/// A relative `argv[0]` with `-d` (which moves the cwd to /var/tmp): every
/// upgrade, the second included, runs the file we were started from, never
/// `/var/tmp/conn-daemon` (a file anybody may put there).
#[test]
fn a_relative_argv0_with_daemonize_upgrades_from_the_same_file_every_time() {
    let mut lineage = Lineage::start_relative(&["-d", "-A", "1", "-w", "1"]);
    let exe_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/exe")).unwrap();
    let original = std::fs::canonicalize(&lineage.exe).unwrap();
    for round in 0..2 {
        let new = lineage
            .upgrade()
            .unwrap_or_else(|e| panic!("upgrade {round}: {e}\n{}", lineage.stderr()));
        assert_eq!(exe_of(new), original, "upgrade {round}");
    }
    lineage.stop(secs(10)).unwrap();
}

const SLOW: &[u8] = b"GET /test/slow\r\n\r\n";

/// A new executable that serves but never reports it: the real binary with the
/// readiness pipe taken out of its environment (an older version, a wrapper).
fn silent_server() -> Vec<u8> {
    format!(
        "#!/bin/sh\nunset CONN_DAEMON_READY_FD\nexec '{}' \"$@\"\n",
        util::bin()
    )
    .into_bytes()
}

/// Clients that send slow requests back to back from `threads` threads until
/// stopped; every one must be answered with the 57 bytes.
struct SlowLoad {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<(u64, Vec<String>)>>,
}

impl SlowLoad {
    fn start(addr: SocketAddr, threads: usize) -> SlowLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let (mut answered, mut failures) = (0, Vec::new());
                    while !stop.load(Ordering::Relaxed) {
                        let outcome = TcpStream::connect_timeout(&addr, secs(2))
                            .map_err(|e| format!("connect: {e}"))
                            .and_then(|s| {
                                util::send(&s, SLOW);
                                util::check_response(&s, secs(10)).map_err(String::from)
                            });
                        match outcome {
                            Ok(()) => answered += 1,
                            Err(e) => failures.push(e),
                        }
                    }
                    (answered, failures)
                })
            })
            .collect();
        SlowLoad { stop, threads }
    }

    /// Answered, and every failure.
    fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = (0, Vec::new());
        for t in self.threads {
            let (answered, failures) = t.join().unwrap();
            total.0 += answered;
            total.1.extend(failures);
        }
        total
    }
}

/// Waits (bounded) until connecting to `addr` is refused: nothing listens.
fn refused_within(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(()),
            other => {
                if Instant::now() >= deadline {
                    return Err(format!("{addr} still accepts connections: {other:?}"));
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A new process that serves without reporting it is stopped with SIGTERM when
/// the upgrade times out, so it finishes what it accepted: no slow request is
/// lost, the line says what was seen, and the pid file names the old process.
#[test]
fn a_new_process_that_serves_silently_is_stopped_gracefully() {
    let mut lineage = Lineage::start(&[
        "-A",
        "1",
        "-w",
        "4",
        "-D",
        "200",
        "--upgrade-timeout",
        "800",
    ]);
    let old = lineage.pid();
    lineage.install(&silent_server(), 0o755);
    let load = SlowLoad::start(lineage.addr(), 6);
    lineage.signal(libc::SIGUSR2);
    assert!(
        lineage.wait_stderr("upgrade failed", 1, secs(20)),
        "{}",
        lineage.stderr()
    );
    std::thread::sleep(Duration::from_millis(300));
    let (answered, failures) = load.stop();
    assert!(
        failures.is_empty() && answered > 0,
        "{answered} answered, {failures:?}"
    );
    let line = lineage.wait_line("upgrade failed", secs(5)).unwrap();
    assert!(
        line.contains("it did not report that it serves within 800 ms; stopped with SIGTERM (exited with status 0); still serving"),
        "{line}"
    );
    assert!(alive(old));
    assert_eq!(lineage.wait_pid_file(|p| p == old, secs(5)), Some(old));
    lineage.install_real();
    lineage.stop(secs(10)).unwrap();
    refused_within(lineage.addr(), secs(5)).unwrap();
}

/// With `-d`, the upgrade's timeout reaches the process that serves (the new
/// process does not daemonize again, out of reach): once the old one exits,
/// nothing listens.
#[test]
fn a_daemonized_new_process_is_stopped_by_the_timeout() {
    let mut lineage = Lineage::start(&[
        // -v keeps stderr (the daemon would close it otherwise).
        "-d",
        "-v",
        "-A",
        "1",
        "-w",
        "1",
        "--upgrade-timeout",
        "800",
    ]);
    lineage.install(&silent_server(), 0o755);
    lineage.signal(libc::SIGUSR2);
    assert!(
        lineage.wait_stderr("upgrade failed", 1, secs(20)),
        "{}",
        lineage.stderr()
    );
    lineage.install_real();
    lineage.stop(secs(10)).unwrap();
    refused_within(lineage.addr(), secs(5)).unwrap();
}

/// With `-d`, a SIGTERM during an upgrade reaches the new process as well.
#[test]
fn sigterm_during_a_daemonized_upgrade_stops_the_new_process_too() {
    let mut lineage = Lineage::start(&[
        "-d",
        "-v",
        "-A",
        "1",
        "-w",
        "1",
        "--upgrade-timeout",
        "20000",
    ]);
    lineage.install(&silent_server(), 0o755);
    lineage.signal(libc::SIGUSR2);
    // The new process serves by now (it starts in a few ms).
    std::thread::sleep(Duration::from_millis(500));
    lineage.stop(secs(10)).unwrap();
    assert!(
        lineage.stderr().contains("upgrade abandoned"),
        "{}",
        lineage.stderr()
    );
    refused_within(lineage.addr(), secs(5)).unwrap();
}

/// A new executable that forks (a script whose child holds our listening
/// sockets) is stopped with its whole process group: after the old process
/// exits, connections are refused, not left hanging in an orphan's backlog.
#[test]
fn a_failed_new_executable_that_forked_leaves_nothing_behind() {
    let mut lineage = Lineage::start(&["-A", "1", "-w", "1", "--upgrade-timeout", "500"]);
    for (n, script) in [
        &b"#!/bin/sh\nsleep 1000\n"[..],
        b"#!/bin/sh\nsleep 1000 &\nexit 0\n",
    ]
    .iter()
    .enumerate()
    {
        lineage.install(script, 0o755);
        lineage.signal(libc::SIGUSR2);
        assert!(
            lineage.wait_stderr("upgrade failed", n + 1, secs(20)),
            "{}",
            lineage.stderr()
        );
    }
    lineage.install_real();
    lineage.stop(secs(10)).unwrap();
    refused_within(lineage.addr(), secs(5)).unwrap();
}

/// SIGQUIT right after SIGUSR2 exits at once, and the new process (not yet
/// serving in our place) goes too: nothing serves afterwards.
#[test]
fn sigquit_right_after_sigusr2_leaves_nothing_serving() {
    let lineage = Lineage::start(&["-A", "1", "-w", "1"]);
    let old = lineage.pid();
    lineage.signal(libc::SIGUSR2);
    std::thread::sleep(Duration::from_millis(3));
    lineage.signal(libc::SIGQUIT);
    let deadline = Instant::now() + secs(5);
    while alive(old) {
        assert!(Instant::now() < deadline, "old process still running");
        std::thread::sleep(Duration::from_millis(5));
    }
    refused_within(lineage.addr(), secs(2)).unwrap();
    // And it stays so: no new process comes up late.
    std::thread::sleep(Duration::from_millis(500));
    refused_within(lineage.addr(), Duration::ZERO).unwrap();
}

/// A new process that dies (SIGKILL, 100 ms after it reported) while the old
/// one still drains: the old one starts its own binary again on the listeners
/// it still holds, with one line; the replacement serves and owns the pid
/// file, and the old one finishes its drain.
#[test]
fn a_new_process_that_dies_while_the_old_one_drains_is_replaced() {
    let mut lineage = Lineage::start(&["-A", "1", "-w", "2", "-D", "3000"]);
    let old = lineage.pid();
    // A slow request in flight keeps the old process draining for ~3 s.
    let slow = TcpStream::connect_timeout(&lineage.addr(), secs(2)).unwrap();
    util::send(&slow, SLOW);
    std::thread::sleep(Duration::from_millis(200));
    lineage.signal(libc::SIGUSR2);
    let new = lineage
        .wait_pid_file(|p| p != old, secs(10))
        .expect("the new process serves");
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(new as libc::pid_t, libc::SIGKILL) };
    assert!(
        lineage.wait_stderr(
            &format!("upgrade: new process {new} ended while we drain (killed by signal 9); our own binary serves the listeners again as pid"),
            1,
            secs(5)
        ),
        "{}",
        lineage.stderr()
    );
    let replacement = lineage
        .wait_pid_file(|p| p != old && p != new && alive(p), secs(10))
        .unwrap_or_else(|| panic!("no replacement in the pid file: {}", lineage.stderr()));
    lineage.pids.push(replacement);
    let s = TcpStream::connect_timeout(&lineage.addr(), secs(2)).unwrap();
    util::send(&s, b"GET /test/fast\r\n\r\n");
    util::check_response(&s, secs(5)).unwrap();
    // The old process answers what it had, then exits.
    util::check_response(&slow, secs(10)).unwrap();
    let deadline = Instant::now() + secs(10);
    while alive(old) {
        assert!(Instant::now() < deadline, "old process still running");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(alive(replacement));
    let s = TcpStream::connect_timeout(&lineage.addr(), secs(2)).unwrap();
    util::send(&s, b"GET /test/fast\r\n\r\n");
    util::check_response(&s, secs(5)).unwrap();
    lineage.stop(secs(10)).unwrap();
}

/// The first line of a request: accepted (there are bytes) but incomplete, it
/// keeps the process that accepted it draining until the rest comes.
const PARTIAL: &[u8] = b"GET /test/fast HTTP/1.1\r\n";

/// A client whose incomplete request is accepted by the process serving now.
fn idle_client(lineage: &Lineage) -> TcpStream {
    let s = TcpStream::connect_timeout(&lineage.addr(), secs(2)).unwrap();
    util::send(&s, PARTIAL);
    // Accepted once its bytes are there (TCP_DEFER_ACCEPT), at once.
    std::thread::sleep(Duration::from_millis(200));
    s
}

/// Sends SIGUSR2 to `from` and waits for the pid file to name a new process.
fn upgrade_from(lineage: &mut Lineage, from: u32) -> u32 {
    // SAFETY: kill(2) has no memory preconditions.
    unsafe { libc::kill(from as libc::pid_t, libc::SIGUSR2) };
    let new = lineage
        .wait_pid_file(|p| p != from && alive(p), secs(10))
        .unwrap_or_else(|| panic!("no new process after {from}: {}", lineage.stderr()));
    lineage.pids.push(new);
    new
}

fn wait_gone(pid: u32, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        assert!(Instant::now() < deadline, "{pid} still running");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A stop is final: SIGTERM or SIGQUIT to the new process (the one the pid
/// file names) while the old one still drains ends the lineage. The old one
/// starts nothing (it did: `new process N ended while we drain (exited with
/// status 0)`, then its own binary, which served on), drops its copies of the
/// listeners at once so that new connections are refused while it finishes,
/// and exits after its drain.
#[test]
fn a_stop_of_the_new_process_while_the_old_one_drains_is_final() {
    for sig in [libc::SIGTERM, libc::SIGQUIT] {
        let mut lineage = Lineage::start(&["-A", "1", "-w", "1", "--shutdown-timeout", "8000"]);
        let old = lineage.pid();
        let idle = idle_client(&lineage);
        let new = upgrade_from(&mut lineage, old);
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: kill(2) has no memory preconditions.
        unsafe { libc::kill(new as libc::pid_t, sig) };
        wait_gone(new, secs(10));
        // The old process drains on (the idle client), yet nothing listens.
        refused_within(lineage.addr(), secs(2))
            .unwrap_or_else(|e| panic!("signal {sig}: {e}\n{}", lineage.stderr()));
        assert!(alive(old), "signal {sig}: the old process ended early");
        let status = if sig == libc::SIGTERM { 0 } else { 1 };
        assert!(
            lineage.wait_stderr(
                &format!(
                    "upgrade: new process {new} ended while we drain (exited with status {status})"
                ),
                1,
                secs(5)
            ),
            "signal {sig}: {}",
            lineage.stderr()
        );
        assert!(
            lineage.stderr().contains("nothing is started again"),
            "signal {sig}: {}",
            lineage.stderr()
        );
        // The old process answers what it had, then exits; nothing came back.
        util::send(&idle, b"\r\n");
        util::check_response(&idle, secs(5)).unwrap();
        wait_gone(old, secs(10));
        std::thread::sleep(Duration::from_millis(200));
        refused_within(lineage.addr(), Duration::ZERO).unwrap();
        assert!(
            lineage.running().is_empty(),
            "signal {sig}: {:?}",
            lineage.running()
        );
        assert!(
            !lineage.stderr().contains("our own binary"),
            "signal {sig}: {}",
            lineage.stderr()
        );
        if sig == libc::SIGTERM {
            assert!(!lineage.pid_file.exists(), "the pid file is left behind");
        }
    }
}

/// Two upgrades within the first process's drain leave one lineage: the
/// second process hands over to the third and exits 0 (or is killed while it
/// drains in turn), and the first, which had said the second crashed and
/// started a replacement that took the pid file while the third served on
/// unnamed, now starts nothing. The pid file names the third throughout, and
/// a stop through it stops every generation.
#[test]
fn two_upgrades_within_a_drain_leave_one_lineage() {
    for kill_second in [false, true] {
        let mut lineage = Lineage::start(&["-A", "1", "-w", "1", "--shutdown-timeout", "8000"]);
        let first = lineage.pid();
        let idle_first = idle_client(&lineage);
        let second = upgrade_from(&mut lineage, first);
        let idle_second = kill_second.then(|| idle_client(&lineage));
        let third = upgrade_from(&mut lineage, second);
        if kill_second {
            std::thread::sleep(Duration::from_millis(100));
            // SAFETY: kill(2) has no memory preconditions.
            unsafe { libc::kill(second as libc::pid_t, libc::SIGKILL) };
        }
        wait_gone(second, secs(10));
        drop(idle_second);
        std::thread::sleep(Duration::from_millis(500));
        let what = if kill_second { "killed" } else { "exited" };
        assert!(
            !lineage.stderr().contains("our own binary"),
            "second {what}: {}",
            lineage.stderr()
        );
        assert_eq!(lineage.pid_in_file(), Some(third), "second {what}");
        let mut running = lineage.running();
        running.sort();
        let mut expected = vec![first, third];
        expected.sort();
        assert_eq!(running, expected, "second {what}: {}", lineage.stderr());
        for _ in 0..5 {
            let s = TcpStream::connect_timeout(&lineage.addr(), secs(2)).unwrap();
            util::send(&s, b"GET /test/fast\r\n\r\n");
            util::check_response(&s, secs(5)).unwrap();
        }
        util::send(&idle_first, b"\r\n");
        util::check_response(&idle_first, secs(5)).unwrap();
        wait_gone(first, secs(10));
        lineage
            .stop_through_pid_file(secs(10))
            .unwrap_or_else(|e| panic!("second {what}: {e}\n{}", lineage.stderr()));
        refused_within(lineage.addr(), secs(2)).unwrap();
    }
}

/// A failed upgrade whose new executable daemonizes (an older conn-daemon
/// with `-d`, simulated by a wrapper that hides the readiness pipe and the
/// upgrade count) cannot escape: it leaves its process group, but as we are
/// its subreaper it becomes our child, gets SIGTERM with the group, and the
/// line says how it ended (it said `stopped with SIGTERM (exited with status
/// 0)` of the parent that had exited at once, while the escaped server served
/// on, even after the old process was stopped).
#[test]
fn a_failed_new_executable_that_daemonizes_is_stopped_too() {
    let mut lineage = Lineage::start(&["-A", "1", "-w", "1", "--upgrade-timeout", "800"]);
    let old = lineage.pid();
    let wrapper = format!(
        "#!/bin/sh\nunset CONN_DAEMON_READY_FD CONN_DAEMON_UPGRADES\nexec '{}' \"$@\" -d -v\n",
        util::bin()
    );
    lineage.install(wrapper.as_bytes(), 0o755);
    lineage.signal(libc::SIGUSR2);
    let line = lineage
        .wait_line("upgrade failed", secs(20))
        .unwrap_or_else(|| panic!("{}", lineage.stderr()));
    assert!(
        line.contains("stopped with SIGTERM (exited with status 0; pid ")
            && line
                .contains(", which left its process group: exited with status 0); still serving"),
        "{line}"
    );
    assert!(alive(old));
    // Only the old process serves, and its stop is the end of it.
    lineage.install_real();
    lineage.stop(secs(10)).unwrap();
    refused_within(lineage.addr(), secs(5)).unwrap();
}

/// A small xorshift generator: the storm is random, and its seed is printed
/// (and can be given back through `CONN_DAEMON_TEST_SEED`) to replay a run.
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        let seed = std::env::var("CONN_DAEMON_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_nanos() as u64
                    | 1
            });
        eprintln!("storm seed: CONN_DAEMON_TEST_SEED={seed}");
        Rng(seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// How one client connection of the storm ended.
#[derive(Debug, Default)]
struct Outcomes {
    answered: u64,
    /// Nothing listened: the connection was refused (or reset while the
    /// handshake was under way).
    refused: u64,
    /// Closed or reset before any byte of an answer: a stop without a drain
    /// (SIGQUIT, a second SIGINT), or an incomplete request a drain closed.
    dropped: u64,
    /// Anything else: a hang, or bytes that are not the answer.
    wrong: Vec<String>,
}

/// One connection: `first` (and, after `pause`, `rest`), then the outcome.
fn storm_request(
    addr: SocketAddr,
    first: &[u8],
    pause: Duration,
    rest: &[u8],
) -> Result<bool, String> {
    let s = match TcpStream::connect_timeout(&addr, secs(2)) {
        Ok(s) => s,
        // Reset during the handshake: the listener closed under it (a stop).
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::ConnectionReset
            ) =>
        {
            return Ok(false)
        }
        Err(e) => return Err(format!("connect: {e}")),
    };
    let sent = util::send_lenient(&s, first) && {
        std::thread::sleep(pause);
        rest.is_empty() || util::send_lenient(&s, rest)
    };
    let got = util::read_to_end(&s, secs(10));
    if got.bytes == util::RESPONSE {
        return Ok(true);
    }
    if got.bytes.is_empty() && got.end != util::End::Timeout {
        return Err("dropped".into());
    }
    Err(format!("sent {sent}: {got:?}"))
}

/// Clients of the storm: fast and slow requests back to back, and idle ones
/// that send the first line of a request, wait, then the rest.
fn storm_clients(
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Outcomes>> {
    (0..6)
        .map(|c| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut out = Outcomes::default();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let result = match c % 3 {
                        0 => storm_request(addr, b"GET /test/fast\r\n\r\n", Duration::ZERO, b""),
                        1 => storm_request(addr, SLOW, Duration::ZERO, b""),
                        _ => storm_request(
                            addr,
                            PARTIAL,
                            Duration::from_millis(200 + 150 * (n % 9)),
                            b"\r\n",
                        ),
                    };
                    // Paced, so that the storm leaves the machine to the
                    // other tests running beside it.
                    std::thread::sleep(Duration::from_millis(2));
                    match result {
                        Ok(true) => out.answered += 1,
                        Ok(false) => {
                            out.refused += 1;
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        Err(e) if e == "dropped" => out.dropped += 1,
                        Err(e) => out.wrong.push(e),
                    }
                }
                out
            })
        })
        .collect()
}

/// Random storms of SIGUSR2, SIGHUP, SIGTERM, SIGQUIT and SIGINT sent to
/// random generations while slow and idle clients are open (the lineage is
/// started again whenever a stop ended it), ending with a stop through the pid
/// file: afterwards nothing runs and nothing listens, the pid file is gone,
/// and every connection was answered, refused, or closed without an answer by
/// a stop; none hung or got anything else. (Every storm the report ran left a
/// server listening after the final SIGTERM.)
#[test]
fn random_signal_storms_end_with_nothing_serving() {
    let mut rng = Rng::seeded();
    let mut lineage = Lineage::start(&[
        "-A",
        "2",
        "-w",
        "2",
        "-D",
        "100",
        "--shutdown-timeout",
        "2500",
        "--upgrade-timeout",
        "3000",
    ]);
    let stop = Arc::new(AtomicBool::new(false));
    let clients = storm_clients(lineage.addr(), Arc::clone(&stop));
    const SIGNALS: [libc::c_int; 8] = [
        libc::SIGUSR2,
        libc::SIGUSR2,
        libc::SIGUSR2,
        libc::SIGHUP,
        libc::SIGHUP,
        libc::SIGTERM,
        libc::SIGQUIT,
        libc::SIGINT,
    ];
    let mut sent = Vec::new();
    for _ in 0..50 {
        std::thread::sleep(Duration::from_millis(40 + rng.below(160)));
        let running = lineage.running();
        if running.is_empty() {
            let pid = lineage.restart();
            sent.push(format!("restart {pid}"));
            continue;
        }
        let newest = lineage.pid_in_file().filter(|p| running.contains(p));
        let target = match newest {
            Some(p) if rng.below(10) < 7 => p,
            _ => running[rng.below(running.len() as u64) as usize],
        };
        let sig = SIGNALS[rng.below(SIGNALS.len() as u64) as usize];
        sent.push(format!("{sig} {target}"));
        // SAFETY: kill(2) has no memory preconditions; the target runs our copy.
        unsafe { libc::kill(target as libc::pid_t, sig) };
    }
    // The end: a lineage that runs (started again if the storm ended it), then
    // a stop through its pid file. The last signals take effect first: a
    // SIGQUIT just sent leaves the pid file naming a process about to end.
    std::thread::sleep(Duration::from_millis(500));
    let deadline = Instant::now() + secs(10);
    while lineage.pid_in_file().is_none_or(|p| !alive(p)) {
        if lineage.running().is_empty() {
            let pid = lineage.restart();
            sent.push(format!("restart {pid}"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{:?} run, nothing named",
            lineage.running()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    sent.push("stop through the pid file".into());
    let stopped = lineage.stop_through_pid_file(secs(15));
    stop.store(true, Ordering::Relaxed);
    let mut total = Outcomes::default();
    for c in clients {
        let out = c.join().unwrap();
        total.answered += out.answered;
        total.refused += out.refused;
        total.dropped += out.dropped;
        total.wrong.extend(out.wrong);
    }
    eprintln!("storm: {sent:?}\nstorm: {total:?}");
    stopped.unwrap_or_else(|e| panic!("{e}; signals: {sent:?}\n{}", lineage.stderr()));
    refused_within(lineage.addr(), secs(2)).unwrap();
    assert!(
        total.wrong.is_empty(),
        "{:?}; signals: {sent:?}",
        &total.wrong[..total.wrong.len().min(10)]
    );
    assert!(total.answered > 0, "{total:?}");
}
