#![allow(non_camel_case_types)]
//! Raw libev FFI: the `#[repr(C)]` mirrors of the watcher structs and the
//! functions we call, for the configuration fixed in `build.rs`.
//!
//! This is the crate's libev-sys layer. Nothing here is safe to use directly;
//! `ev.rs` wraps it. `tests/layout.rs` checks every size, alignment, offset and
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

/// Readable event.
pub const EV_READ: c_int = 0x01;
/// Writable event.
pub const EV_WRITE: c_int = 0x02;
/// Timer expired.
pub const EV_TIMER: c_int = 0x0000_0100;
/// Async watcher signalled.
pub const EV_ASYNC: c_int = 0x0008_0000;
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

    /// The C side's sizes, offsets and constants, ending with a null name.
    pub static conn_ev_layout: [conn_ev_layout_entry; 0];
}
