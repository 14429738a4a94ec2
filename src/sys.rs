#![allow(non_camel_case_types)]
//! Raw libev FFI: the `#[repr(C)]` mirrors of the watcher structs and the
//! functions we call, for the configuration fixed in `build.rs`.
//!
//! This is the crate's libev-sys layer. Nothing here is safe to use directly;
//! `ev` wraps it. `tests/layout.rs` checks every size, alignment, offset and
//! constant below against the C compiler's view (`conn_ev_layout` in `shim.c`).
#![allow(unsafe_code)]

use libc::{c_char, c_int, c_long, c_uint, c_void};

/// `ev_tstamp`: seconds as a double.
pub type ev_tstamp = f64;

/// Opaque `struct ev_loop`.
#[repr(C)]
#[derive(Debug)]
pub struct ev_loop {
    _opaque: [u8; 0],
}

/// libev's allocator: `realloc` semantics, a size of 0 frees and returns null.
pub type ev_allocator = unsafe extern "C" fn(ptr: *mut c_void, size: c_long) -> *mut c_void;

/// Callback type of an `ev_io` watcher.
pub type ev_io_cb = unsafe extern "C" fn(*mut ev_loop, *mut ev_io, c_int);
/// Callback type of an `ev_timer` watcher.
pub type ev_timer_cb = unsafe extern "C" fn(*mut ev_loop, *mut ev_timer, c_int);
/// Callback type of an `ev_async` watcher.
pub type ev_async_cb = unsafe extern "C" fn(*mut ev_loop, *mut ev_async, c_int);
/// Callback type of an `ev_signal` watcher.
pub type ev_signal_cb = unsafe extern "C" fn(*mut ev_loop, *mut ev_signal, c_int);
/// Callback type of an `ev_child` watcher.
pub type ev_child_cb = unsafe extern "C" fn(*mut ev_loop, *mut ev_child, c_int);
/// Callback type of an `ev_periodic` watcher.
pub type ev_periodic_cb = unsafe extern "C" fn(*mut ev_loop, *mut ev_periodic, c_int);
/// An `ev_periodic`'s `reschedule_cb`: the next wall-clock time after `now`.
pub type ev_periodic_reschedule_cb = unsafe extern "C" fn(*mut ev_periodic, ev_tstamp) -> ev_tstamp;
/// Callback type of an `ev_stat` watcher.
pub type ev_stat_cb = unsafe extern "C" fn(*mut ev_loop, *mut ev_stat, c_int);

/// `struct ev_io` with `EV_COMMON = void *data;` and no priorities.
#[repr(C)]
#[derive(Debug)]
pub struct ev_io {
    /// Nonzero while started (libev private).
    pub active: c_int,
    /// Nonzero while an event is queued (libev private).
    pub pending: c_int,
    /// `EV_COMMON`: ours; holds the watcher's token.
    pub data: *mut c_void,
    /// The callback libev invokes.
    pub cb: Option<ev_io_cb>,
    /// Next watcher on the same fd (libev private).
    pub next: *mut c_void,
    /// The watched fd.
    pub fd: c_int,
    /// `EV_READ` / `EV_WRITE`, plus libev's private `EV__IOFDSET`.
    pub events: c_int,
}

/// `struct ev_timer` with `EV_COMMON = void *data;` and no priorities.
#[repr(C)]
#[derive(Debug)]
pub struct ev_timer {
    /// Nonzero while started (libev private).
    pub active: c_int,
    /// Nonzero while an event is queued (libev private).
    pub pending: c_int,
    /// `EV_COMMON`: ours; holds the watcher's token.
    pub data: *mut c_void,
    /// The callback libev invokes.
    pub cb: Option<ev_timer_cb>,
    /// Expiry time (libev private).
    pub at: ev_tstamp,
    /// Repeat interval in seconds; 0 for one-shot.
    pub repeat: ev_tstamp,
}

/// `struct ev_async` with `EV_COMMON = void *data;` and no priorities.
#[repr(C)]
#[derive(Debug)]
pub struct ev_async {
    /// Nonzero while started (libev private).
    pub active: c_int,
    /// Nonzero while an event is queued (libev private).
    pub pending: c_int,
    /// `EV_COMMON`: ours; holds the watcher's token.
    pub data: *mut c_void,
    /// The callback libev invokes.
    pub cb: Option<ev_async_cb>,
    /// `EV_ATOMIC_T`, i.e. `sig_atomic_t volatile`.
    pub sent: c_int,
}

/// The watchers that are `EV_WATCHER` and nothing more: idle, prepare, check,
/// fork and cleanup, each its own C type (and callback type) over one layout.
macro_rules! plain_watcher {
    ($($(#[$doc:meta])* $name:ident, $cb:ident;)*) => {$(
        $(#[$doc])*
        #[repr(C)]
        #[derive(Debug)]
        pub struct $name {
            /// Nonzero while started (libev private).
            pub active: c_int,
            /// Nonzero while an event is queued (libev private).
            pub pending: c_int,
            /// `EV_COMMON`: ours; holds the watcher's token.
            pub data: *mut c_void,
            /// The callback libev invokes.
            pub cb: Option<$cb>,
        }
        #[doc = concat!("Callback type of an `", stringify!($name), "` watcher.")]
        pub type $cb = unsafe extern "C" fn(*mut ev_loop, *mut $name, c_int);
    )*};
}

plain_watcher! {
    /// `struct ev_idle`: runs when the loop has nothing else to do.
    ev_idle, ev_idle_cb;
    /// `struct ev_prepare`: runs before the loop blocks.
    ev_prepare, ev_prepare_cb;
    /// `struct ev_check`: runs after the loop blocked.
    ev_check, ev_check_cb;
    /// `struct ev_fork`: runs in the next iteration after `ev_loop_fork`.
    ev_fork, ev_fork_cb;
    /// `struct ev_cleanup`: runs as the loop is destroyed.
    ev_cleanup, ev_cleanup_cb;
}

/// `struct ev_signal` (`EV_WATCHER_LIST`).
#[repr(C)]
#[derive(Debug)]
pub struct ev_signal {
    /// Nonzero while started (libev private).
    pub active: c_int,
    /// Nonzero while an event is queued (libev private).
    pub pending: c_int,
    /// `EV_COMMON`: ours; holds the watcher's token.
    pub data: *mut c_void,
    /// The callback libev invokes.
    pub cb: Option<ev_signal_cb>,
    /// Next watcher of the same signal (libev private).
    pub next: *mut c_void,
    /// The signal number.
    pub signum: c_int,
}

/// `struct ev_child` (`EV_WATCHER_LIST`).
#[repr(C)]
#[derive(Debug)]
pub struct ev_child {
    /// Nonzero while started (libev private).
    pub active: c_int,
    /// Nonzero while an event is queued (libev private).
    pub pending: c_int,
    /// `EV_COMMON`: ours; holds the watcher's token.
    pub data: *mut c_void,
    /// The callback libev invokes.
    pub cb: Option<ev_child_cb>,
    /// Next watcher in the same hash bucket (libev private).
    pub next: *mut c_void,
    /// Whether stops and continues are reported too (libev private).
    pub flags: c_int,
    /// The pid watched; 0 for any.
    pub pid: c_int,
    /// The pid whose status changed.
    pub rpid: c_int,
    /// Its status, as `waitpid` reports it.
    pub rstatus: c_int,
}

/// `struct ev_periodic` (`EV_WATCHER_TIME`).
#[repr(C)]
#[derive(Debug)]
pub struct ev_periodic {
    /// Nonzero while started (libev private).
    pub active: c_int,
    /// Nonzero while an event is queued (libev private).
    pub pending: c_int,
    /// `EV_COMMON`: ours; holds the watcher's token.
    pub data: *mut c_void,
    /// The callback libev invokes.
    pub cb: Option<ev_periodic_cb>,
    /// The next wall-clock time it fires (`ev_periodic_at`).
    pub at: ev_tstamp,
    /// Absolute time (interval 0) or the phase within the interval.
    pub offset: ev_tstamp,
    /// Seconds between firings; 0 for one absolute time.
    pub interval: ev_tstamp,
    /// Computes the next time instead (unused: null).
    pub reschedule_cb: Option<ev_periodic_reschedule_cb>,
}

/// `struct ev_stat` (`EV_WATCHER_LIST`), `ev_statdata` being `struct stat`.
#[repr(C)]
#[derive(Debug)]
pub struct ev_stat {
    /// Nonzero while started (libev private).
    pub active: c_int,
    /// Nonzero while an event is queued (libev private).
    pub pending: c_int,
    /// `EV_COMMON`: ours; holds the watcher's token.
    pub data: *mut c_void,
    /// The callback libev invokes.
    pub cb: Option<ev_stat_cb>,
    /// Next watcher (libev private).
    pub next: *mut c_void,
    /// The polling timer (libev private).
    pub timer: ev_timer,
    /// Seconds between polls; 0 for libev's default.
    pub interval: ev_tstamp,
    /// The path, NUL-terminated; must stay valid while started.
    pub path: *const c_char,
    /// The attributes before the last change.
    pub prev: libc::stat,
    /// The attributes now (`st_nlink` 0: the path does not exist).
    pub attr: libc::stat,
    /// inotify's watch descriptor (unused here: polling only).
    pub wd: c_int,
}

/// Readable event.
pub const EV_READ: c_int = 0x01;
/// Writable event.
pub const EV_WRITE: c_int = 0x02;
/// Timer expired.
pub const EV_TIMER: c_int = 0x0000_0100;
/// Async watcher signalled.
pub const EV_ASYNC: c_int = 0x0008_0000;
/// Periodic timer fired.
pub const EV_PERIODIC: c_int = 0x0000_0200;
/// Signal received.
pub const EV_SIGNAL: c_int = 0x0000_0400;
/// Child status changed.
pub const EV_CHILD: c_int = 0x0000_0800;
/// Stat data changed.
pub const EV_STAT: c_int = 0x0000_1000;
/// Loop idle.
pub const EV_IDLE: c_int = 0x0000_2000;
/// Loop about to block.
pub const EV_PREPARE: c_int = 0x0000_4000;
/// Loop done blocking.
pub const EV_CHECK: c_int = 0x0000_8000;
/// Loop resumed after `ev_loop_fork`.
pub const EV_FORK: c_int = 0x0002_0000;
/// Loop being destroyed.
pub const EV_CLEANUP: c_int = 0x0004_0000;
/// One past the highest signal number libev accepts (`EV_NSIG`).
pub const EV_NSIG: c_int = 65;
/// Watcher stopped by libev after an error (e.g. a bad fd).
pub const EV_ERROR: c_int = 0x8000_0000_u32 as c_int;
/// The epoll backend.
pub const EVBACKEND_EPOLL: c_uint = 0x0000_0004;
/// Ignore `LIBEV_FLAGS` in the environment: the backend is ours to choose.
pub const EVFLAG_NOENV: c_uint = 0x0100_0000;
/// `ev_break`: leave every nested `ev_run`.
pub const EVBREAK_ALL: c_int = 2;
/// `ev_run`: poll once without blocking.
pub const EVRUN_NOWAIT: c_int = 1;
/// Vendored version, major.
pub const EV_VERSION_MAJOR: c_int = 4;
/// Vendored version, minor.
pub const EV_VERSION_MINOR: c_int = 33;

/// One row of the shim's layout table: a name such as `"ev_io.fd"` and its value.
#[repr(C)]
#[derive(Debug)]
pub struct conn_ev_layout_entry {
    /// Entry name, NUL-terminated; null ends the table.
    pub name: *const c_char,
    /// The size, alignment, offset or constant.
    pub value: usize,
}

extern "C" {
    /// Replaces the process-wide allocator of every loop's arrays and structs;
    /// must not race with any loop (set it before the first exists).
    pub fn ev_set_allocator(cb: ev_allocator);
    /// Creates a loop with the given backend flags; null on failure.
    pub fn ev_loop_new(flags: c_uint) -> *mut ev_loop;
    /// The process's one default loop (made on the first call; the only loop
    /// that may have child watchers, and it reaps every child on `SIGCHLD`).
    pub fn ev_default_loop(flags: c_uint) -> *mut ev_loop;
    /// Marks the loop to recreate its kernel state (epoll set, eventfd) and run
    /// its fork watchers in its next iteration.
    pub fn ev_loop_fork(l: *mut ev_loop);
    /// Frees a loop (its watchers must be stopped).
    pub fn ev_loop_destroy(l: *mut ev_loop);
    /// Runs the loop until no watcher is active or `ev_break` is called.
    pub fn ev_run(l: *mut ev_loop, flags: c_int) -> c_int;
    /// Makes `ev_run` return.
    pub fn ev_break(l: *mut ev_loop, how: c_int);
    /// The loop's cached wall-clock time (follows steps of `CLOCK_REALTIME`).
    pub fn ev_now(l: *mut ev_loop) -> ev_tstamp;
    /// `ev_unit.c`: the loop's cached `CLOCK_MONOTONIC` time (libev's `mn_now`,
    /// the clock its timers run on).
    pub fn conn_ev_mono_now(l: *mut ev_loop) -> ev_tstamp;
    /// The backend in use (`EVBACKEND_*`).
    pub fn ev_backend(l: *mut ev_loop) -> c_uint;
    /// Stores a pointer in the loop.
    pub fn ev_set_userdata(l: *mut ev_loop, data: *mut c_void);
    /// The pointer stored with `ev_set_userdata`.
    pub fn ev_userdata(l: *mut ev_loop) -> *mut c_void;

    /// Starts an io watcher.
    pub fn ev_io_start(l: *mut ev_loop, w: *mut ev_io);
    /// Stops an io watcher and clears its pending event.
    pub fn ev_io_stop(l: *mut ev_loop, w: *mut ev_io);
    /// Refreshes the loop's cached times.
    pub fn ev_now_update(l: *mut ev_loop);
    /// Restarts a repeating timer at `repeat` from now; stops a one-shot one.
    pub fn ev_timer_again(l: *mut ev_loop, w: *mut ev_timer);
    /// Seconds until an active timer fires.
    pub fn ev_timer_remaining(l: *mut ev_loop, w: *mut ev_timer) -> ev_tstamp;
    /// Starts a timer.
    pub fn ev_timer_start(l: *mut ev_loop, w: *mut ev_timer);
    /// Stops a timer.
    pub fn ev_timer_stop(l: *mut ev_loop, w: *mut ev_timer);
    /// Starts an async watcher.
    pub fn ev_async_start(l: *mut ev_loop, w: *mut ev_async);
    /// Stops an async watcher.
    pub fn ev_async_stop(l: *mut ev_loop, w: *mut ev_async);
    /// Signals an async watcher; the one call safe from any thread.
    pub fn ev_async_send(l: *mut ev_loop, w: *mut ev_async);
    /// Starts a signal watcher (one loop per signal number, process-wide).
    pub fn ev_signal_start(l: *mut ev_loop, w: *mut ev_signal);
    /// Stops a signal watcher; the last one of a signal restores `SIG_DFL`.
    pub fn ev_signal_stop(l: *mut ev_loop, w: *mut ev_signal);
    /// Starts a child watcher (default loop only).
    pub fn ev_child_start(l: *mut ev_loop, w: *mut ev_child);
    /// Stops a child watcher.
    pub fn ev_child_stop(l: *mut ev_loop, w: *mut ev_child);
    /// Starts a periodic watcher.
    pub fn ev_periodic_start(l: *mut ev_loop, w: *mut ev_periodic);
    /// Stops a periodic watcher.
    pub fn ev_periodic_stop(l: *mut ev_loop, w: *mut ev_periodic);
    /// Recomputes an active periodic watcher's next time.
    pub fn ev_periodic_again(l: *mut ev_loop, w: *mut ev_periodic);
    /// Starts a stat watcher (the path must stay valid while it is started).
    pub fn ev_stat_start(l: *mut ev_loop, w: *mut ev_stat);
    /// Stops a stat watcher.
    pub fn ev_stat_stop(l: *mut ev_loop, w: *mut ev_stat);
    /// Refreshes `attr` from the path now.
    pub fn ev_stat_stat(l: *mut ev_loop, w: *mut ev_stat);
    /// Starts an idle watcher.
    pub fn ev_idle_start(l: *mut ev_loop, w: *mut ev_idle);
    /// Stops an idle watcher.
    pub fn ev_idle_stop(l: *mut ev_loop, w: *mut ev_idle);
    /// Starts a prepare watcher.
    pub fn ev_prepare_start(l: *mut ev_loop, w: *mut ev_prepare);
    /// Stops a prepare watcher.
    pub fn ev_prepare_stop(l: *mut ev_loop, w: *mut ev_prepare);
    /// Starts a check watcher.
    pub fn ev_check_start(l: *mut ev_loop, w: *mut ev_check);
    /// Stops a check watcher.
    pub fn ev_check_stop(l: *mut ev_loop, w: *mut ev_check);
    /// Starts a fork watcher.
    pub fn ev_fork_start(l: *mut ev_loop, w: *mut ev_fork);
    /// Stops a fork watcher.
    pub fn ev_fork_stop(l: *mut ev_loop, w: *mut ev_fork);
    /// Starts a cleanup watcher.
    pub fn ev_cleanup_start(l: *mut ev_loop, w: *mut ev_cleanup);
    /// Stops a cleanup watcher.
    pub fn ev_cleanup_stop(l: *mut ev_loop, w: *mut ev_cleanup);
    /// `ev_unit.c`: queues every started cleanup watcher and invokes what is
    /// pending: the first step of `ev_loop_destroy`, on its own.
    pub fn conn_ev_invoke_cleanups(l: *mut ev_loop);

    // shim.c: libev's init/set macros as functions.
    /// `ev_io_set`.
    pub fn conn_ev_io_set(w: *mut ev_io, fd: c_int, events: c_int);
    /// `ev_timer_init`.
    pub fn conn_ev_timer_init(
        w: *mut ev_timer,
        cb: ev_timer_cb,
        after: ev_tstamp,
        repeat: ev_tstamp,
    );
    /// `ev_async_init`.
    pub fn conn_ev_async_init(w: *mut ev_async, cb: ev_async_cb);
    /// `ev_signal_init`.
    pub fn conn_ev_signal_init(w: *mut ev_signal, cb: ev_signal_cb, signum: c_int);
    /// `ev_child_init`.
    pub fn conn_ev_child_init(w: *mut ev_child, cb: ev_child_cb, pid: c_int, trace: c_int);
    /// `ev_periodic_init` (no `reschedule_cb`).
    pub fn conn_ev_periodic_init(
        w: *mut ev_periodic,
        cb: ev_periodic_cb,
        offset: ev_tstamp,
        interval: ev_tstamp,
    );
    /// `ev_stat_init`.
    pub fn conn_ev_stat_init(
        w: *mut ev_stat,
        cb: ev_stat_cb,
        path: *const c_char,
        interval: ev_tstamp,
    );
    /// `ev_idle_init`.
    pub fn conn_ev_idle_init(w: *mut ev_idle, cb: ev_idle_cb);
    /// `ev_prepare_init`.
    pub fn conn_ev_prepare_init(w: *mut ev_prepare, cb: ev_prepare_cb);
    /// `ev_check_init`.
    pub fn conn_ev_check_init(w: *mut ev_check, cb: ev_check_cb);
    /// `ev_fork_init`.
    pub fn conn_ev_fork_init(w: *mut ev_fork, cb: ev_fork_cb);
    /// `ev_cleanup_init`.
    pub fn conn_ev_cleanup_init(w: *mut ev_cleanup, cb: ev_cleanup_cb);

    /// The C side's sizes, offsets and constants, ending with a null name.
    pub static conn_ev_layout: [conn_ev_layout_entry; 0];
}
