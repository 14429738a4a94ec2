//! The soundness contract of `conn_daemon::ev`, `pool` and `task` (stated at
//! the top of `src/ev/mod.rs`), one test per hole issue 25 found and per case
//! of the contract. What the type system rules out is shown by the
//! `compile_fail` doc tests next to the types (`ev` module docs, `Project`,
//! `TaskHolder`). CI also runs this file under valgrind (`.ci/run`): a case
//! that passes by luck while touching freed memory fails there.
//!
//! Cases that change process-wide state (the allocator choice, the default
//! loop and its `SIGCHLD` reaper, an abort) run in a child process: this test
//! binary again, filtered to that test, with `CHILD` set.

use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::ExitStatusExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use conn_daemon::ev::{
    Async, Check, Child, Cleanup, Events, Fork, Handler, Idle, Io, Loop, Periodic, Prepare,
    Project, Signal, Stat, Timer,
};
use conn_daemon::pool::Pool;
use conn_daemon::task::{Filled, Route, Task};

const CHILD: &str = "CONN_DAEMON_SOUNDNESS_CHILD";

/// Whether this process is the child run for test `name`.
fn is_child(name: &str) -> bool {
    std::env::var(CHILD).is_ok_and(|v| v == name)
}

/// Runs test `name` of this binary in a child process.
fn run_child(name: &str) -> Output {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", name, "--nocapture", "--test-threads=1"])
        .env(CHILD, name)
        .output()
        .unwrap()
}

/// The child's run of `name` passed (its test harness reports it).
fn assert_child_passed(name: &str) {
    let out = run_child(name);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "{name} in a child: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The panic message of `f`, which must panic.
fn panic_message(f: impl FnOnce()) -> String {
    let err = catch_unwind(AssertUnwindSafe(f)).expect_err("did not panic");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// A handler that does nothing (every callback's default).
struct Nothing;
impl Handler for Nothing {}

/// Hole 1 (issue 25): `Io::set_fd` took any integer, and `ev_io_start` then
/// wrote through a null pointer (2^27), aborted in libev's allocator (2^26)
/// or looped forever in `array_realloc` (2^30). Now `start` refuses every fd
/// at or above the loop's limit with EMFILE, and libev never sees it: the
/// loop still works afterwards.
#[test]
fn an_io_fd_beyond_the_loop_limit_is_refused_before_libev_sees_it() {
    let lp = Loop::<Nothing>::new().unwrap();
    let limit = lp.fd_limit();
    assert!(limit > 2, "{limit}");
    let io = Box::pin(Io::new());
    for fd in [1 << 26, 1 << 27, 1 << 30, i32::MAX, limit] {
        io.set_fd(fd, Events::READ, 0);
        let err = io.as_ref().start(&lp).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EMFILE), "fd {fd}: {err}");
        assert!(!io.is_active(), "fd {fd}");
    }
    // The loop is intact: a real fd works.
    let (a, mut b) = UnixStream::pair().unwrap();
    io.set_fd(a.as_raw_fd(), Events::READ, 1);
    io.as_ref().start(&lp).unwrap();
    b.write_all(b"x").unwrap();
    struct Once(bool);
    impl Handler for Once {
        fn on_io(&mut self, lp: &Loop<Self>, _token: usize, _events: Events) {
            self.0 = true;
            lp.break_all();
        }
    }
    let lp2 = Loop::<Once>::new().unwrap();
    io.stop();
    io.as_ref().start(&lp2).unwrap();
    let mut once = Once(false);
    lp2.run(&mut once);
    assert!(once.0);
    io.stop(); // before lp2 goes (declared after it, io would be dropped after it)
}

/// Contract case 4: a negative fd (or none set) is refused with EBADF; libev's
/// own assertion was the only guard before.
#[test]
fn a_negative_or_missing_fd_is_refused() {
    let lp = Loop::<Nothing>::new().unwrap();
    let io = Box::pin(Io::new());
    assert_eq!(io.fd(), -1);
    let err = io.as_ref().start(&lp).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EBADF));
    io.set_fd(-5, Events::READ, 0);
    assert_eq!(
        io.as_ref().start(&lp).unwrap_err().raw_os_error(),
        Some(libc::EBADF)
    );
    assert!(!io.is_active());
}

/// Hole 1, with a reservation: the limit is what `reserve_arrays` sized libev's
/// arrays for, far below the fd hard limit, and an fd beyond it is refused
/// rather than grown into the heap.
#[test]
fn with_reserved_arrays_the_fd_limit_is_the_reservation() {
    const NAME: &str = "with_reserved_arrays_the_fd_limit_is_the_reservation";
    if !is_child(NAME) {
        return assert_child_passed(NAME);
    }
    conn_daemon::ev::reserve_arrays(1, 16).unwrap();
    let lp = Loop::<Nothing>::new().unwrap();
    let limit = lp.fd_limit();
    let (a, _b) = UnixStream::pair().unwrap();
    assert!(
        a.as_raw_fd() < limit && limit < 64 * 1024,
        "fd {} limit {limit}",
        a.as_raw_fd()
    );
    let io = Box::pin(Io::new());
    io.set_fd(limit, Events::READ, 0);
    assert_eq!(
        io.as_ref().start(&lp).unwrap_err().raw_os_error(),
        Some(libc::EMFILE)
    );
    io.set_fd(a.as_raw_fd(), Events::READ, 0);
    io.as_ref().start(&lp).unwrap();
    io.stop();
}

#[derive(Default)]
struct Conn;

/// Hole 2 (issue 25): a slot released twice was caught by a `debug_assert`
/// only; in release builds the next two `acquire`s returned the same slot.
/// The check is an `assert!` now, in every build, and the pool stays whole.
#[test]
fn a_pool_slot_released_twice_panics_and_is_not_handed_out_twice() {
    let mut pool: Pool<Conn> = Pool::new(4).unwrap();
    let a = pool.acquire().unwrap();
    pool.release(a);
    let msg = panic_message(|| pool.release(a));
    assert!(msg.contains("released twice"), "{msg}");
    let (x, y) = (pool.acquire().unwrap(), pool.acquire().unwrap());
    assert_ne!(x, y);
    assert_eq!(pool.in_use(), 2);
    // A slot never acquired cannot be released either.
    let msg = panic_message(|| pool.release(3));
    assert!(msg.contains("out of range"), "{msg}");
}

/// Hole 3 (issue 25): a watcher started on a second loop behaved differently
/// by kind (`Io::start` did nothing, `Timer::start_once` moved it). Now every
/// kind panics the same way, and stays on its first loop.
#[test]
fn every_watcher_kind_started_on_another_loop_panics_the_same_way() {
    let a = Loop::<Nothing>::new().unwrap();
    let b = Loop::<Nothing>::new().unwrap();
    let (s, _peer) = UnixStream::pair().unwrap();
    let path = std::env::temp_dir();
    let second_start_panics = |what: &str, on_b: &dyn Fn()| {
        let msg = panic_message(on_b);
        assert!(msg.contains("started on another loop"), "{what}: {msg:?}");
    };

    let io = Box::pin(Io::new());
    io.set_fd(s.as_raw_fd(), Events::READ, 0);
    io.as_ref().start(&a).unwrap();
    second_start_panics("Io::start", &|| drop(io.as_ref().start(&b)));

    let timer = Box::pin(Timer::new());
    timer.as_ref().start_once(&a, Duration::from_secs(60), 0);
    second_start_panics("Timer::start_once", &|| {
        timer.as_ref().start_once(&b, Duration::from_secs(60), 0)
    });
    second_start_panics("Timer::again", &|| {
        timer.as_ref().again(&b, Duration::from_secs(60), 0)
    });
    assert!(timer.is_active() && timer.remaining().unwrap() > Duration::from_secs(50));

    let wake = Box::pin(Async::new());
    wake.as_ref().start(&a, 0);
    second_start_panics("Async::start", &|| wake.as_ref().start(&b, 0));

    let signal = Box::pin(Signal::new());
    signal.as_ref().start(&a, libc::SIGWINCH, 0).unwrap();
    second_start_panics("Signal::start", &|| {
        drop(signal.as_ref().start(&b, libc::SIGWINCH, 0))
    });

    let periodic = Box::pin(Periodic::new());
    periodic
        .as_ref()
        .start_at(&a, SystemTime::now() + Duration::from_secs(60), 0);
    second_start_panics("Periodic::start_at", &|| {
        periodic
            .as_ref()
            .start_every(&b, Duration::from_secs(1), Duration::ZERO, 0)
    });
    second_start_panics("Periodic::again", &|| periodic.as_ref().again(&b));

    let stat = Box::pin(Stat::new());
    stat.as_ref().start(&a, &path, Duration::ZERO, 0).unwrap();
    second_start_panics("Stat::start", &|| {
        drop(stat.as_ref().start(&b, &path, Duration::ZERO, 0))
    });

    let idle = Box::pin(Idle::new());
    idle.as_ref().start(&a, 0);
    second_start_panics("Idle::start", &|| idle.as_ref().start(&b, 0));
    let prepare = Box::pin(Prepare::new());
    prepare.as_ref().start(&a, 0);
    second_start_panics("Prepare::start", &|| prepare.as_ref().start(&b, 0));
    let check = Box::pin(Check::new());
    check.as_ref().start(&a, 0);
    second_start_panics("Check::start", &|| check.as_ref().start(&b, 0));
    let fork = Box::pin(Fork::new());
    fork.as_ref().start(&a, 0);
    second_start_panics("Fork::start", &|| fork.as_ref().start(&b, 0));
    let cleanup = Box::pin(Cleanup::new());
    cleanup.as_ref().start(&a, 0);
    second_start_panics("Cleanup::start", &|| cleanup.as_ref().start(&b, 0));

    // Stopped, each may move to the other loop.
    io.stop();
    io.as_ref().start(&b).unwrap();
    timer.stop();
    timer.as_ref().start_once(&b, Duration::from_secs(60), 0);
    assert!(io.is_active() && timer.is_active());
}

/// Contract case 2: dropping a loop while a watcher is started on it panics
/// (it used to abort) and leaks the loop, so that the watcher's later stop
/// still finds valid memory (valgrind checks that in CI).
#[test]
fn dropping_a_loop_before_its_watchers_panics_and_leaks_it() {
    let timer = Box::pin(Timer::new());
    let idle = Box::pin(Idle::new());
    let lp = Loop::<Nothing>::new().unwrap();
    timer.as_ref().start_once(&lp, Duration::from_secs(60), 0);
    idle.as_ref().start(&lp, 0);
    let msg = panic_message(move || drop(lp));
    assert!(
        msg.contains("conn_daemon::ev: a Loop was dropped while 2 watchers were still started"),
        "{msg}"
    );
    // The loop is leaked, not freed: stopping and dropping still work.
    timer.stop();
    drop(idle);
}

/// Contract case 6: forgetting a started watcher leaks it, and its loop then
/// cannot be freed (a panic, not a use after free); forgetting a loop leaks it.
#[test]
fn forgetting_a_watcher_or_a_loop_only_leaks() {
    let lp = Loop::<Nothing>::new().unwrap();
    let timer = Box::pin(Timer::new());
    timer.as_ref().start_once(&lp, Duration::from_secs(60), 0);
    std::mem::forget(timer);
    let msg = panic_message(move || drop(lp));
    assert!(msg.contains("1 watchers were still started"), "{msg}");

    let idle = Box::pin(Idle::new());
    let lp = Loop::<Nothing>::new().unwrap();
    idle.as_ref().start(&lp, 0);
    std::mem::forget(lp);
    drop(idle); // stops on the leaked loop
}

/// Contract case 1: watchers dropped in any order relative to each other and
/// to their pool, inside or outside callbacks, stop themselves.
#[test]
fn watchers_in_a_pool_slot_are_stopped_when_the_pool_goes() {
    type Watchers = (Io, Timer, Timer);
    let lp = Loop::<Nothing>::new().unwrap();
    let mut pool: Pool<Conn, Watchers> = Pool::new(2).unwrap();
    let (s, _peer) = UnixStream::pair().unwrap();
    let i = pool.acquire().unwrap();
    let (_conn, watchers) = pool.split(i);
    let (io, deadline, idle): (Pin<&Io>, Pin<&Timer>, Pin<&Timer>) = watchers.project();
    io.set_fd(s.as_raw_fd(), Events::READ, 0);
    io.start(&lp).unwrap();
    deadline.start_once(&lp, Duration::from_secs(60), 1);
    idle.again(&lp, Duration::from_secs(60), 2);
    // A slot whose watchers are active cannot be released.
    let msg = panic_message(|| pool.release(i));
    assert!(msg.contains("still in use by libev"), "{msg}");
    drop(pool); // stops all three; the loop may go now
    drop(lp);
}

/// Contract case 4: signal numbers libev would assert on are refused, and a
/// signal is held by one loop at a time (libev asserts on a second).
#[test]
fn signals_are_checked_and_held_by_one_loop() {
    let a = Loop::<Nothing>::new().unwrap();
    let b = Loop::<Nothing>::new().unwrap();
    let w = Box::pin(Signal::new());
    for bad in [0, -1, 65, 1000, libc::SIGKILL, libc::SIGSTOP] {
        let err = w.as_ref().start(&a, bad, 0).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidInput, "{bad}: {err}");
    }
    let on_a = Box::pin(Signal::new());
    on_a.as_ref().start(&a, libc::SIGURG, 0).unwrap();
    let err = w.as_ref().start(&b, libc::SIGURG, 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    assert!(!w.is_active());
    // A second watcher of the same signal on the same loop is fine.
    w.as_ref().start(&a, libc::SIGURG, 1).unwrap();
    w.stop();
    // Once loop a lets go of it, loop b may take it.
    drop(on_a);
    w.as_ref().start(&b, libc::SIGURG, 0).unwrap();
}

/// Contract case 4: child watchers work on the default loop only (libev
/// asserts otherwise); there is one default loop at a time, and while another
/// loop watches SIGCHLD (the default loop's signal) there is none.
#[test]
fn child_watchers_need_the_one_default_loop() {
    const NAME: &str = "child_watchers_need_the_one_default_loop";
    if !is_child(NAME) {
        return assert_child_passed(NAME);
    }
    let plain = Loop::<Nothing>::new().unwrap();
    let child = Box::pin(Child::new());
    let err = child.as_ref().start(&plain, 0, false, 0).unwrap_err();
    assert_eq!(err.kind(), ErrorKind::InvalidInput, "{err}");

    let sigchld = Box::pin(Signal::new());
    sigchld.as_ref().start(&plain, libc::SIGCHLD, 0).unwrap();
    let err = Loop::<Nothing>::new_default().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    sigchld.stop();

    let default = Loop::<Nothing>::new_default().unwrap();
    assert!(default.is_default() && !plain.is_default());
    let err = Loop::<Nothing>::new_default().unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    let err = sigchld
        .as_ref()
        .start(&plain, libc::SIGCHLD, 0)
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::AlreadyExists, "{err}");
    child.as_ref().start(&default, 0, false, 0).unwrap();
    assert!(child.as_ref().start(&default, -1, false, 0).is_err());
    child.stop();
    drop(default);
    // Gone: it can be made again.
    drop(Loop::<Nothing>::new_default().unwrap());
}

/// Contract case 5: a nested `run` from a callback panics, and no panic
/// unwinds into C: the callback's guard reports it and aborts.
#[test]
fn a_nested_run_from_a_callback_aborts_with_a_message() {
    const NAME: &str = "a_nested_run_from_a_callback_aborts_with_a_message";
    if is_child(NAME) {
        struct Nested;
        impl Handler for Nested {
            fn on_idle(&mut self, lp: &Loop<Self>, _token: usize) {
                lp.run(&mut Nested);
            }
        }
        let lp = Loop::<Nested>::new().unwrap();
        let idle = Box::pin(Idle::new());
        idle.as_ref().start(&lp, 0);
        lp.run(&mut Nested);
        unreachable!("the nested run returned");
    }
    let out = run_child(NAME);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGABRT), "{stderr}");
    assert!(stderr.contains("nested Loop::run"), "{stderr}");
    assert!(
        stderr.contains("conn_daemon::ev: panic in a libev idle callback; aborting"),
        "{stderr}"
    );
}

/// Contract case 5: a callback is only ever dispatched to its loop's handler:
/// a watcher moved (stopped, restarted) between loops of two handler types
/// reaches the second handler.
#[test]
fn a_watcher_moved_between_handler_types_calls_the_right_one() {
    struct A;
    impl Handler for A {}
    struct B(bool);
    impl Handler for B {
        fn on_idle(&mut self, lp: &Loop<Self>, _token: usize) {
            self.0 = true;
            lp.break_all();
        }
    }
    let a = Loop::<A>::new().unwrap();
    let b = Loop::<B>::new().unwrap();
    let idle = Box::pin(Idle::new());
    let periodic = Box::pin(Periodic::new());
    idle.as_ref().start(&a, 0);
    periodic
        .as_ref()
        .start_at(&a, SystemTime::now() + Duration::from_secs(60), 0);
    idle.stop();
    periodic.stop();
    idle.as_ref().start(&b, 0);
    // `again` after a stop re-installs the callback for b's handler type.
    periodic.as_ref().again(&b);
    let mut h = B(false);
    b.run(&mut h);
    assert!(h.0);
    periodic.stop();
}

/// Task tokens: a completion given to a pool it does not belong to is refused
/// (not freed into the wrong slot), and the pool that owns it is then leaked
/// rather than unmapped under a worker.
#[test]
fn a_task_token_only_finishes_in_its_own_pool() {
    struct Nop;
    impl Task for Nop {
        fn run(self) {}
    }
    let mut a: Pool<Conn> = Pool::new(1).unwrap();
    let mut b: Pool<Conn> = Pool::new(1).unwrap();
    let (ia, ib) = (a.acquire().unwrap(), b.acquire().unwrap());
    let route = Route {
        owner: 0,
        slot: 0,
        gen: 1,
    };
    let Some(Filled::New(token)) = a.delegate(ia, Nop, route) else {
        panic!("a fresh slot takes a task");
    };
    let done = token.run().unwrap();
    assert!(b.finish(done).is_none());
    assert!(
        a.is_delegated(ia),
        "a's slot stays busy: its token was spent elsewhere"
    );
    b.release(ib);
    drop(a); // leaked, not unmapped: a worker could still hold a pointer into it
}
