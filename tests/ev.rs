//! The safe libev wrappers on their own: io readiness, one-shot and repeating
//! timers, `ev_async` sends from other threads coalescing into drained
//! callbacks, every other watcher kind (signal, child, periodic, stat, idle,
//! prepare, check, fork, cleanup), what dropping a started watcher does, the
//! allocator choice, and the loop's clock (monotonic, so that deadlines survive
//! a step of the wall clock). What no safe code can do is `tests/soundness.rs`.
#![allow(unsafe_code)]

mod util;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conn_daemon::ev::{
    Async, Check, Child, Cleanup, Events, Fork, Handler, Idle, Io, Loop, Periodic, Prepare, Signal,
    Stat, Timer,
};

#[derive(Default)]
struct Record {
    io: Vec<(usize, bool)>,
    timers: Vec<usize>,
    asyncs: usize,
    drained: usize,
    queue: Arc<AtomicUsize>,
    stop_after_async: bool,
    io_watcher: Option<Pin<Box<Io>>>,
}

impl Handler for Record {
    fn on_io(&mut self, lp: &Loop<Self>, token: usize, events: Events) {
        self.io.push((token, events.is_readable()));
        if let Some(w) = &self.io_watcher {
            w.stop();
        }
        lp.break_all();
    }
    fn on_timer(&mut self, lp: &Loop<Self>, token: usize) {
        self.timers.push(token);
        lp.break_all();
    }
    fn on_async(&mut self, lp: &Loop<Self>, _token: usize) {
        self.asyncs += 1;
        // Sends coalesce: take everything that is there.
        self.drained += self.queue.swap(0, Ordering::SeqCst);
        if self.stop_after_async && self.drained == 1000 {
            lp.break_all();
        }
    }
}

#[test]
fn io_watcher_reports_readable_with_its_token() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let lp = Loop::<Record>::new().unwrap();
    let mut rec = Record {
        io_watcher: Some(Box::pin(Io::new())),
        ..Default::default()
    };
    let w = rec.io_watcher.as_ref().unwrap().as_ref();
    w.set_fd(a.as_raw_fd(), Events::READ, 42);
    w.start(&lp).unwrap();
    assert!(w.is_active());
    assert_eq!((w.fd(), w.events()), (a.as_raw_fd(), Events::READ));
    b.write_all(b"x").unwrap();
    lp.run(&mut rec);
    assert_eq!(rec.io, vec![(42, true)]);
    assert!(!rec.io_watcher.as_ref().unwrap().is_active());
}

#[test]
fn one_shot_timer_fires_once_and_is_inactive_after() {
    let lp = Loop::<Record>::new().unwrap();
    let timer = Box::pin(Timer::new());
    let mut rec = Record::default();
    let t0 = Instant::now();
    timer.as_ref().start_once(&lp, Duration::from_millis(50), 7);
    lp.run(&mut rec);
    assert_eq!(rec.timers, vec![7]);
    assert!(t0.elapsed() >= Duration::from_millis(45));
    assert!(!timer.is_active());
    // Nothing is left active, so the loop may be dropped without aborting.
}

/// Four threads that each add `count` units to `queue`, sending after each.
fn send_from_threads(
    sender: &conn_daemon::ev::AsyncSender,
    queue: &Arc<AtomicUsize>,
    count: usize,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..4)
        .map(|_| {
            let (queue, sender) = (Arc::clone(queue), sender.clone());
            std::thread::spawn(move || {
                for _ in 0..count {
                    queue.fetch_add(1, Ordering::SeqCst);
                    assert!(sender.send());
                }
            })
        })
        .collect()
}

/// Sends coalesce, and every one is drained. Held (not yet running), the
/// loop gets 1000 sends from four threads, then calls back exactly once, and
/// that callback drains the lot: a callback per send would be 1000. Racing
/// with the running loop, 1000 more are all drained, however many callbacks
/// they come in.
#[test]
fn async_sends_coalesce_and_are_all_drained() {
    let lp = Loop::<Record>::new().unwrap();
    let wake = Box::pin(Async::new());
    wake.as_ref().start(&lp, 0);
    let queue = Arc::new(AtomicUsize::new(0));
    let mut rec = Record {
        queue: Arc::clone(&queue),
        stop_after_async: true,
        ..Default::default()
    };
    let sender = wake.as_ref().sender();
    for s in send_from_threads(&sender, &queue, 250) {
        s.join().unwrap();
    }
    lp.run(&mut rec);
    assert_eq!((rec.asyncs, rec.drained), (1, 1000), "held");

    rec.drained = 0;
    let senders = send_from_threads(&sender, &queue, 250);
    lp.run(&mut rec);
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(rec.drained, 1000, "racing");
    wake.stop();
}

fn clock(id: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a timespec to write to.
    assert_eq!(unsafe { libc::clock_gettime(id, &mut ts) }, 0);
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// `Loop::now` is CLOCK_MONOTONIC (libev's `mn_now`), not the wall clock that
/// `ev_now` returns: the two differ by decades (boot time vs 1970), so a value
/// between two monotonic readings can only be the monotonic clock.
#[test]
fn loop_now_is_the_monotonic_clock() {
    let before = clock(libc::CLOCK_MONOTONIC);
    let lp = Loop::<Record>::new().unwrap();
    let at_new = lp.now().as_secs_f64();
    let after = clock(libc::CLOCK_MONOTONIC);
    let realtime = clock(libc::CLOCK_REALTIME);
    assert!(
        (before - 1e-3..=after + 1e-3).contains(&at_new),
        "Loop::now() = {at_new}, CLOCK_MONOTONIC read {before}..{after}, CLOCK_REALTIME {realtime}"
    );
    // And it is the value the loop caches per iteration: after a 20 ms timer it
    // moved by that much, on the same clock.
    let timer = Box::pin(Timer::new());
    timer.as_ref().start_once(&lp, Duration::from_millis(20), 1);
    lp.run(&mut Record::default());
    let later = lp.now().as_secs_f64();
    let now = clock(libc::CLOCK_MONOTONIC);
    assert!(
        later - at_new >= 0.019 && later <= now + 1e-3,
        "after the timer: Loop::now() = {later}, was {at_new}, CLOCK_MONOTONIC {now}"
    );
}

/// Steps the wall clock back one hour for the server process alone: libev reads
/// the wall clock through `gettimeofday` (ev.c's `ev_time`, this build has
/// `EV_USE_REALTIME 0`), so interposing it is enough. The step happens when the
/// file named by `$STEP_TRIGGER` exists; the first stepped reading creates
/// `$STEP_TRIGGER.seen`, which proves libev looked at the clock after the step.
const STEP_BACK: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
struct tv { long sec, usec; };
int gettimeofday(struct tv *tv, void *tz) {
  static int (*real)(struct tv *, void *);
  static int seen;
  if (!real) real = (int (*)(struct tv *, void *))dlsym(RTLD_NEXT, "gettimeofday");
  int r = real(tv, tz);
  const char *trigger = getenv("STEP_TRIGGER");
  if (r == 0 && tv && trigger && access(trigger, F_OK) == 0) {
    tv->sec -= 3600;
    if (!seen) {
      char path[4096];
      size_t n = strlen(trigger);
      if (n + 6 < sizeof path) {
        memcpy(path, trigger, n);
        memcpy(path + n, ".seen", 6);
        int fd = open(path, O_CREAT | O_WRONLY, 0600);
        if (fd >= 0) close(fd);
        seen = 1;
      }
    }
  }
  return r;
}
"#;

/// Issue 15 item 15: a partial request's read deadline holds when the wall clock
/// steps back an hour after the deadline was set. With deadlines on `ev_now`, the
/// connection stayed open (33 s with `--read-timeout 3000` in the report, here
/// past the 6 s bound); on the monotonic clock it closes after ~1 s.
#[test]
fn read_deadline_survives_a_backward_step_of_the_wall_clock() {
    use std::process::Command;
    let dir = std::env::temp_dir().join(format!("conn-daemon-step-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (src, lib, trigger) = (dir.join("step.c"), dir.join("step.so"), dir.join("step"));
    let _ = std::fs::remove_file(&trigger);
    let _ = std::fs::remove_file(dir.join("step.seen"));
    std::fs::write(&src, STEP_BACK).unwrap();
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let out = Command::new(&cc)
        .args(["-shared", "-fPIC", "-O1", "-o"])
        .arg(&lib)
        .arg(&src)
        .arg("-ldl")
        .output()
        .unwrap_or_else(|e| panic!("run {cc}: {e}"));
    assert!(
        out.status.success(),
        "{cc}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let server = util::Server::start_with_env(
        &["-A", "1", "-w", "1", "--read-timeout", "1000"],
        &[
            ("LD_PRELOAD", lib.as_os_str()),
            ("STEP_TRIGGER", trigger.as_os_str()),
        ],
    );
    let client = server.connect();
    util::send(&client, b"GET /test/fast HTTP/1.1\r\n");
    let sent = Instant::now();
    // Once the server has read the partial request, its deadline is set: step.
    util::wait_read([&client], Duration::from_secs(5));
    std::fs::write(&trigger, b"").unwrap();

    let got = util::read_to_end(&client, Duration::from_secs(6));
    let waited = sent.elapsed();
    assert!(
        dir.join("step.seen").exists(),
        "libev never read the stepped wall clock: the test proves nothing; stderr:\n{}",
        server.stderr()
    );
    assert!(
        got.bytes.is_empty() && got.end != util::End::Timeout && waited < Duration::from_secs(4),
        "after a backward step the partial request ended {:?} after {waited:?} \
         (expected a silent close at the 1 s deadline); got {}",
        got.end,
        util::show(&got.bytes)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A handler that only records timers, relying on the no-op defaults for the rest.
#[derive(Default)]
struct Timers {
    fired: Vec<usize>,
    /// Indexed by token; the first to fire drops the other (then pending).
    owned: Vec<Option<Pin<Box<Timer>>>>,
    pending_when_dropped: Option<bool>,
    stop_after: usize,
}

impl Handler for Timers {
    fn on_timer(&mut self, lp: &Loop<Self>, token: usize) {
        self.fired.push(token);
        if !self.owned.is_empty() {
            let other = 1 - token;
            if let Some(t) = self.owned[other].take() {
                self.pending_when_dropped = Some(t.is_pending());
                drop(t);
            }
        }
        if self.fired.len() == self.stop_after {
            lp.break_all();
        }
    }
}

#[test]
fn repeating_timer_fires_until_stopped_and_again_restarts_it() {
    let lp = Loop::<Timers>::new().unwrap();
    let t = Box::pin(Timer::new());
    let mut h = Timers {
        stop_after: 3,
        ..Default::default()
    };
    let t0 = Instant::now();
    t.as_ref()
        .start_repeating(&lp, Duration::from_millis(5), Duration::from_millis(10), 4);
    lp.run(&mut h);
    assert_eq!(h.fired, [4, 4, 4]);
    assert!(
        t0.elapsed() >= Duration::from_millis(25),
        "{:?}",
        t0.elapsed()
    );
    assert!(t.is_active(), "a repeating timer stays active");
    let left = t.remaining().unwrap();
    assert!(left <= Duration::from_millis(10), "{left:?}");

    // again: restart from now with a new interval, then zero stops it.
    t.as_ref().again(&lp, Duration::from_millis(30), 5);
    assert!(t.remaining().unwrap() > Duration::from_millis(10));
    h.stop_after = 4;
    lp.run(&mut h);
    assert_eq!(h.fired, [4, 4, 4, 5]);
    t.as_ref().again(&lp, Duration::ZERO, 5);
    assert!(!t.is_active() && t.remaining().is_none());
    // Nothing is started: the loop returns at once, and may be dropped.
    lp.run(&mut h);
    assert_eq!(h.fired.len(), 4);
}

/// Dropping a started watcher stops it: no abort, no callback afterwards, and
/// the loop, with nothing started, may then be dropped.
#[test]
fn dropping_a_started_io_watcher_stops_it() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let lp = Loop::<Record>::new().unwrap();
    let io = Box::pin(Io::new());
    io.set_fd(a.as_raw_fd(), Events::READ, 1);
    io.as_ref().start(&lp).unwrap();
    b.write_all(b"x").unwrap();
    drop(io);
    let mut rec = Record::default();
    lp.run(&mut rec); // returns at once: nothing is started
    assert!(rec.io.is_empty(), "{:?}", rec.io);
}

/// Two one-shot timers expire in the same iteration; the first callback drops
/// the other, which libev has already stopped and queued. Its drop must take it
/// off libev's queue: before, it was freed with libev still holding it, and its
/// callback then ran from freed memory.
#[test]
fn dropping_a_pending_timer_cancels_its_callback() {
    let lp = Loop::<Timers>::new().unwrap();
    let mut h = Timers {
        owned: vec![Some(Box::pin(Timer::new())), Some(Box::pin(Timer::new()))],
        stop_after: usize::MAX,
        ..Default::default()
    };
    for (token, t) in h.owned.iter().enumerate() {
        let t = t.as_ref().unwrap().as_ref();
        t.start_once(&lp, Duration::from_millis(1), token);
    }
    // Both expire before the loop looks at the clock again.
    std::thread::sleep(Duration::from_millis(20));
    lp.run(&mut h);
    assert_eq!(
        h.pending_when_dropped,
        Some(true),
        "the test did not drop a pending timer"
    );
    assert_eq!(h.fired.len(), 1, "callbacks: {:?}", h.fired);
}

#[test]
fn events_debug_names_the_flags() {
    assert_eq!(format!("{:?}", Events::READ), "Events(READ)");
    assert_eq!(
        format!("{:?}", Events::READ | Events::WRITE),
        "Events(READ | WRITE)"
    );
    assert_eq!(format!("{:?}", Events::NONE), "Events(NONE)");
    assert_eq!(
        format!("{:?}", Events::ERROR | Events::READ | Events::WRITE),
        "Events(READ | WRITE | ERROR)"
    );
    assert!((Events::READ | Events::WRITE).contains(Events::WRITE));
}

/// The allocator is an explicit, process-wide choice made before the first
/// loop: `Loop::new` keeps libc's, and a later `reserve_arrays` says why it
/// cannot switch.
#[test]
fn reserve_arrays_after_a_loop_is_refused_with_the_cause() {
    let _lp = Loop::<Record>::new().unwrap();
    let err = conn_daemon::ev::reserve_arrays(1, 16).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("conn_daemon::ev") && msg.contains("before the first Loop::new"),
        "{msg}"
    );
}

/// Records which callbacks ran, in order, for the watcher kinds beyond io,
/// timer and async; stops the loop after `stop_after` of them.
#[derive(Default)]
struct Kinds {
    seen: Vec<(&'static str, usize)>,
    child: Option<(i32, i32)>,
    stop_after: usize,
}

impl Kinds {
    fn saw(&mut self, lp: &Loop<Self>, what: &'static str, token: usize) {
        self.seen.push((what, token));
        if self.seen.len() >= self.stop_after {
            lp.break_all();
        }
    }
    fn count(&self, what: &str) -> usize {
        self.seen.iter().filter(|(w, _)| *w == what).count()
    }
}

impl Handler for Kinds {
    fn on_timer(&mut self, lp: &Loop<Self>, token: usize) {
        self.saw(lp, "timer", token);
    }
    fn on_signal(&mut self, lp: &Loop<Self>, token: usize) {
        self.saw(lp, "signal", token);
    }
    fn on_child(&mut self, lp: &Loop<Self>, token: usize, pid: i32, status: i32) {
        self.child = Some((pid, status));
        self.saw(lp, "child", token);
    }
    fn on_periodic(&mut self, lp: &Loop<Self>, token: usize) {
        self.saw(lp, "periodic", token);
    }
    fn on_stat(&mut self, lp: &Loop<Self>, token: usize) {
        self.saw(lp, "stat", token);
    }
    fn on_idle(&mut self, lp: &Loop<Self>, token: usize) {
        self.saw(lp, "idle", token);
    }
    fn on_prepare(&mut self, lp: &Loop<Self>, token: usize) {
        self.saw(lp, "prepare", token);
    }
    fn on_check(&mut self, lp: &Loop<Self>, token: usize) {
        self.saw(lp, "check", token);
    }
    fn on_fork(&mut self, lp: &Loop<Self>, token: usize) {
        self.saw(lp, "fork", token);
    }
    fn on_cleanup(&mut self, lp: &Loop<Self>, token: usize) {
        self.saw(lp, "cleanup", token);
    }
}

fn kinds(stop_after: usize) -> Kinds {
    Kinds {
        stop_after,
        ..Default::default()
    }
}

/// `ev_signal`: raised signals reach the watcher's callback; stopping the last
/// watcher of a signal restores its default action (checked with SIGURG,
/// whose default is to be ignored).
#[test]
fn signal_watcher_reports_a_raised_signal() {
    let lp = Loop::<Kinds>::new().unwrap();
    let sig = Box::pin(Signal::new());
    sig.as_ref().start(&lp, libc::SIGURG, 5).unwrap();
    assert_eq!(sig.signum(), libc::SIGURG);
    // SAFETY: raise has no memory-safety preconditions; libev's handler is installed.
    assert_eq!(unsafe { libc::raise(libc::SIGURG) }, 0);
    let mut h = kinds(1);
    lp.run(&mut h);
    assert_eq!(h.seen, [("signal", 5)]);
    sig.stop();
    // SAFETY: a null new action only reads the current one into `old`.
    let handler = unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        libc::sigaction(libc::SIGURG, std::ptr::null(), &mut old);
        old.sa_sigaction
    };
    assert_eq!(handler, libc::SIG_DFL);
}

/// `ev_child`, on the default loop (in a child process of this test: the
/// default loop reaps every child of its process).
#[test]
fn child_watcher_reports_the_exit_status() {
    const NAME: &str = "child_watcher_reports_the_exit_status";
    const CHILD: &str = "CONN_DAEMON_EV_TEST_CHILD";
    if std::env::var(CHILD).is_err() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", NAME, "--nocapture"])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("1 passed"),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let lp = Loop::<Kinds>::new_default().unwrap();
    // The default loop reaps it (waitpid(-1)); std's wait would find no child.
    #[allow(clippy::zombie_processes)]
    let pid = std::process::Command::new("sh")
        .args(["-c", "exit 3"])
        .spawn()
        .unwrap()
        .id() as i32;
    let w = Box::pin(Child::new());
    w.as_ref().start(&lp, pid, false, 8).unwrap();
    let mut h = kinds(1);
    lp.run(&mut h);
    assert_eq!(h.seen, [("child", 8)]);
    let (rpid, status) = h.child.unwrap();
    assert_eq!((rpid, w.rpid(), w.rstatus()), (pid, pid, status));
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 3,
        "{status:#x}"
    );
    assert!(w.is_active(), "a child watcher stays started");
    w.stop();
}

/// `ev_periodic`: an absolute time fires once (and the watcher stops), an
/// interval fires again and again.
#[test]
fn periodic_watcher_fires_at_a_time_and_on_an_interval() {
    let lp = Loop::<Kinds>::new().unwrap();
    let once = Box::pin(Periodic::new());
    let every = Box::pin(Periodic::new());
    let t0 = Instant::now();
    once.as_ref().start_at(
        &lp,
        std::time::SystemTime::now() + Duration::from_millis(30),
        1,
    );
    every
        .as_ref()
        .start_every(&lp, Duration::from_millis(20), Duration::from_millis(5), 2);
    assert!(once.at().is_some() && every.at().is_some());
    let mut h = kinds(4);
    lp.run(&mut h);
    assert!(
        h.count("periodic") == 4 && h.seen.contains(&("periodic", 1)),
        "{:?}",
        h.seen
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(25),
        "{:?}",
        t0.elapsed()
    );
    assert!(!once.is_active() && once.at().is_none());
    assert!(every.is_active());
    every.stop();
}

/// `ev_stat`: a file appearing, changing and going away, seen by polling.
#[test]
fn stat_watcher_sees_a_file_appear_change_and_go() {
    let path = std::env::temp_dir().join(format!("conn-daemon-ev-stat-{}", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let lp = Loop::<Kinds>::new().unwrap();
    let w = Box::pin(Stat::new());
    w.as_ref()
        .start(&lp, &path, Duration::from_millis(100), 4)
        .unwrap();
    assert!(w.attr().is_none());
    let mut h = kinds(1);
    std::fs::write(&path, b"abc").unwrap();
    lp.run(&mut h);
    assert_eq!(w.attr().map(|st| st.st_size), Some(3));
    assert!(w.prev().is_none());
    std::fs::remove_file(&path).unwrap();
    h.stop_after = 2;
    lp.run(&mut h);
    assert!(w.attr().is_none() && w.prev().map(|st| st.st_size) == Some(3));
    assert_eq!(h.seen, [("stat", 4), ("stat", 4)]);
    assert!(w
        .as_ref()
        .start(&lp, std::path::Path::new("a\0b"), Duration::ZERO, 0)
        .is_err());
    w.stop();
}

/// `ev_idle`, `ev_prepare`, `ev_check`: prepare before the wait, check after
/// it, idle when nothing else is pending; an idle watcher keeps the loop from
/// blocking.
#[test]
fn idle_prepare_and_check_bracket_each_iteration() {
    let lp = Loop::<Kinds>::new().unwrap();
    let (prepare, check, idle) = (
        Box::pin(Prepare::new()),
        Box::pin(Check::new()),
        Box::pin(Idle::new()),
    );
    prepare.as_ref().start(&lp, 1);
    check.as_ref().start(&lp, 2);
    idle.as_ref().start(&lp, 3);
    let mut h = kinds(6);
    let t0 = Instant::now();
    lp.run(&mut h);
    assert!(
        t0.elapsed() < Duration::from_secs(1),
        "idle must keep the loop from blocking"
    );
    let order: Vec<&str> = h.seen.iter().map(|(w, _)| *w).collect();
    assert_eq!(
        order,
        ["prepare", "check", "idle", "prepare", "check", "idle"]
    );
    // Restarting a started one only changes its token.
    idle.as_ref().start(&lp, 9);
    assert!(idle.is_active());
    idle.stop();
    prepare.stop();
    check.stop();
}

/// `ev_fork` runs after `Loop::fork`, here in a real child process of `fork`,
/// whose loop keeps serving its parent's watchers (a timer).
#[test]
fn fork_watcher_runs_in_the_forked_child() {
    let lp = Loop::<Kinds>::new().unwrap();
    let (fork, timer) = (Box::pin(Fork::new()), Box::pin(Timer::new()));
    fork.as_ref().start(&lp, 6);
    timer.as_ref().start_once(&lp, Duration::from_millis(10), 7);
    // SAFETY: the child only runs the loop (no allocation: the loop's arrays
    // exist, the handler's Vec has room) and leaves with _exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        let mut h = kinds(2);
        h.seen.reserve(4);
        lp.fork();
        lp.run(&mut h);
        let ok = h.seen == [("fork", 6), ("timer", 7)];
        // SAFETY: ends the child without running the parent's destructors.
        unsafe { libc::_exit(if ok { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{status:#x}"
    );
    // The parent's loop never saw the fork.
    let mut h = kinds(1);
    lp.run(&mut h);
    assert_eq!(h.seen, [("timer", 7)]);
    fork.stop();
}

/// `ev_cleanup`: `Loop::destroy` calls every started cleanup watcher, stopped,
/// then frees the loop.
#[test]
fn cleanup_watchers_run_when_the_loop_is_destroyed() {
    let (a, b) = (Box::pin(Cleanup::new()), Box::pin(Cleanup::new()));
    let lp = Loop::<Kinds>::new().unwrap();
    a.as_ref().start(&lp, 1);
    b.as_ref().start(&lp, 2);
    // They do not keep the loop running.
    let mut h = kinds(usize::MAX);
    lp.run(&mut h);
    assert!(h.seen.is_empty());
    lp.destroy(&mut h);
    h.seen.sort();
    assert_eq!(h.seen, [("cleanup", 1), ("cleanup", 2)]);
    assert!(!a.is_active() && !b.is_active());
}
