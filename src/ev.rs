//! Safe wrappers over libev, one type per libev concept: [`Loop`], [`Io`],
//! [`Timer`], [`Async`], and [`AsyncSender`], the one thing another thread may do.
//!
//! Design, as in the C++ original: watchers are plain structs embedded in
//! longer-lived objects (pool slots, the accept task). libev keeps pointers to them
//! while they are active, so starting one takes `Pin<&Self>`, and dropping an active
//! watcher aborts the process instead of leaving libev a dangling pointer.
//!
//! Callbacks: a loop is typed by the [`Handler`] that owns its watchers. Each
//! watcher carries a `token` (libev's `data` pointer holds it), and the loop's
//! trampolines call `Handler::on_io/on_timer/on_async` with that token. No panic
//! crosses into C: each trampoline catches it, reports it and aborts.
//!
//! Memory: libev's own arrays come from address space reserved at start-up
//! ([`reserve_arrays`]), so they grow without `malloc` (module `alloc`).

use std::cell::{Cell, OnceCell, UnsafeCell};
use std::ffi::c_void;
use std::io;
use std::marker::{PhantomData, PhantomPinned};
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
use std::sync::{Arc, RwLock};

use crate::sys;

mod alloc;
pub use alloc::reserve_arrays;

/// Event bits libev reports to a callback.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Events(i32);

impl Events {
    /// Interest in (or readiness for) reading.
    pub const READ: Events = Events(sys::EV_READ);
    /// Interest in (or readiness for) writing.
    pub const WRITE: Events = Events(sys::EV_WRITE);

    /// The fd is readable.
    pub fn is_readable(self) -> bool {
        self.0 & sys::EV_READ != 0
    }
    /// The fd is writable.
    pub fn is_writable(self) -> bool {
        self.0 & sys::EV_WRITE != 0
    }
}

/// The owner of a loop's watchers: receives their callbacks, by token.
pub trait Handler: Sized {
    /// An io watcher with this token is ready.
    fn on_io(&mut self, lp: &Loop<Self>, token: usize, events: Events);
    /// A timer with this token expired.
    fn on_timer(&mut self, lp: &Loop<Self>, token: usize);
    /// An async watcher with this token was signalled (sends coalesce).
    fn on_async(&mut self, lp: &Loop<Self>, token: usize);
}

/// Shared between a loop and its watchers: the raw loop and how many of our
/// watchers are active on it, so that a loop with active watchers is never freed.
struct Core {
    raw: *mut sys::ev_loop,
    active: Cell<usize>,
    /// Inside `Loop::run`: a nested run would replace the handler the outer
    /// run's callbacks are dispatched to.
    running: Cell<bool>,
}

/// An event loop (`ev_loop_new` with the epoll backend). Bound to its thread.
pub struct Loop<H: Handler> {
    core: Box<Core>,
    _handler: PhantomData<fn(&mut H)>,
    _not_send: PhantomData<*mut ()>,
}

/// What libev's userdata points at while [`Loop::run`] runs.
struct RunCtx<H: Handler> {
    lp: *const Loop<H>,
    handler: *mut H,
}

impl<H: Handler> Loop<H> {
    /// A new loop on the epoll backend, ignoring `LIBEV_FLAGS` from the environment.
    pub fn new() -> io::Result<Self> {
        alloc::install();
        // SAFETY: ev_loop_new has no preconditions; null means failure.
        let raw = unsafe { sys::ev_loop_new(sys::EVBACKEND_EPOLL | sys::EVFLAG_NOENV) };
        if raw.is_null() {
            let err = io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(0) {
                io::Error::other("libev could not create an epoll loop")
            } else {
                err
            });
        }
        Ok(Loop {
            core: Box::new(Core {
                raw,
                active: Cell::new(0),
                running: Cell::new(false),
            }),
            _handler: PhantomData,
            _not_send: PhantomData,
        })
    }

    /// Runs the loop until no watcher is active or [`Loop::break_all`] is called,
    /// dispatching callbacks to `handler`.
    ///
    /// # Panics
    /// If called from one of this loop's callbacks (libev allows nested runs;
    /// dispatching them to a second handler would not be sound).
    pub fn run(&self, handler: &mut H) {
        assert!(!self.core.running.replace(true), "nested Loop::run");
        let mut ctx = RunCtx { lp: self, handler };
        // Callbacks only fire inside ev_run, so trampolines never see a stale userdata.
        // SAFETY: valid loop; userdata points at `ctx`, which outlives ev_run and
        // is reset before `ctx` goes away.
        unsafe {
            sys::ev_set_userdata(self.core.raw, (&mut ctx as *mut RunCtx<H>).cast());
            sys::ev_run(self.core.raw, 0);
            sys::ev_set_userdata(self.core.raw, ptr::null_mut());
        }
        self.core.running.set(false);
    }

    /// Makes the running `run` return once the current callbacks are done.
    pub fn break_all(&self) {
        // SAFETY: valid loop; ev_break only sets a flag.
        unsafe { sys::ev_break(self.core.raw, sys::EVBREAK_ALL) }
    }

    /// The loop's cached monotonic time in seconds (`CLOCK_MONOTONIC`, the clock
    /// its timers run on), updated once per iteration: no clock call.
    ///
    /// Not libev's `ev_now`, which is the wall clock: a deadline computed from it
    /// moves when the system time is stepped (an hour back keeps a connection
    /// open for an hour). Compare these values only with each other.
    pub fn now(&self) -> f64 {
        // SAFETY: valid loop; the accessor only reads a field of it.
        unsafe { sys::conn_ev_mono_now(self.core.raw) }
    }

    /// The backend libev chose (always epoll for loops made by [`Loop::new`]).
    pub fn backend(&self) -> u32 {
        // SAFETY: valid loop.
        unsafe { sys::ev_backend(self.core.raw) }
    }

    fn core(&self) -> *const Core {
        &*self.core
    }
}

impl<H: Handler> Drop for Loop<H> {
    fn drop(&mut self) {
        if self.core.active.get() != 0 {
            // Watchers would keep pointing into a freed loop: refuse, loudly.
            fatal("a libev loop was dropped with active watchers");
        }
        // SAFETY: the loop is valid and no watcher of ours is active on it.
        unsafe { sys::ev_loop_destroy(self.core.raw) }
    }
}

/// Prints why and aborts: used where continuing would be undefined behaviour.
fn fatal(why: &str) -> ! {
    eprintln!("conn-daemon: fatal: {why}; aborting");
    std::process::abort()
}

/// Runs a callback body; a panic is reported and aborts the process, because
/// unwinding into libev's C frames is undefined behaviour and the connection
/// state the panic interrupted can no longer be trusted.
fn guard(what: &str, body: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(body)).is_err() {
        eprintln!("conn-daemon: panic in a libev {what} callback; aborting");
        std::process::abort();
    }
}

/// # Safety
/// `lp` must be a loop currently inside [`Loop::run`] of a `Loop<H>`.
unsafe fn dispatch<H: Handler>(lp: *mut sys::ev_loop, f: impl FnOnce(&mut H, &Loop<H>)) {
    // SAFETY: per the contract, userdata is the RunCtx<H> of the running `run`, whose
    // loop and handler are alive and not otherwise used while ev_run runs.
    unsafe {
        let ctx = &*(sys::ev_userdata(lp) as *const RunCtx<H>);
        f(&mut *ctx.handler, &*ctx.lp)
    }
}

/// Defines the C callback libev calls for a watcher type: it finds the loop's
/// handler through the loop's userdata and calls it with the watcher's token.
macro_rules! trampoline {
    ($name:ident($raw:ty => $ty:ty, $what:literal), |$h:ident, $l:ident, $token:ident, $revents:ident| $call:expr) => {
        /// # Safety
        /// For libev only: `lp` is a `Loop<H>` inside [`Loop::run`] and `w` a live
        /// watcher that `start` installed this callback on.
        unsafe extern "C" fn $name<H: Handler>(lp: *mut sys::ev_loop, w: *mut $raw, $revents: i32) {
            guard($what, || {
                // The watcher type is repr(C) with the raw watcher first: `w` is
                // also its address. libev stops some watchers itself (a one-shot
                // timer before its callback, an io watcher on EV_ERROR): `sync`.
                // SAFETY: per this function's contract.
                unsafe {
                    let $token = (*w).data as usize;
                    (*w.cast::<$ty>()).sync();
                    dispatch::<H>(lp, |$h, $l| $call);
                }
            })
        }
    };
}

trampoline!(io_trampoline(sys::ev_io => Io, "io"), |h, l, token, revents| {
    h.on_io(l, token, Events(revents))
});
trampoline!(timer_trampoline(sys::ev_timer => Timer, "timer"), |h, l, token, _revents| {
    h.on_timer(l, token)
});
trampoline!(async_trampoline(sys::ev_async => RawAsync, "async"), |h, l, token, _revents| {
    h.on_async(l, token)
});

/// What every watcher type shares: which loop it is active on.
struct Bound {
    core: Cell<*const Core>,
}

impl Bound {
    const fn new() -> Self {
        Bound {
            core: Cell::new(ptr::null()),
        }
    }

    fn started(&self, core: *const Core) {
        self.core.set(core);
        // SAFETY: core belongs to a live loop (we are being started on it).
        unsafe { (*core).active.set((*core).active.get() + 1) }
    }

    /// The loop we are active on; clears the binding.
    fn stopping(&self) -> *const Core {
        let core = self.core.replace(ptr::null());
        // SAFETY: while we are bound, the loop cannot be freed (its count is > 0).
        unsafe { (*core).active.set((*core).active.get() - 1) }
        core
    }
}

/// Defines a watcher type over libev's `$raw` struct: the struct itself (`!Send`,
/// pinned while active), `new` (inactive), `is_active`, `stop`, and the Drop that
/// refuses to free a watcher libev still holds.
macro_rules! watcher {
    ($(#[$doc:meta])* $vis:vis $ty:ident: $raw:ty = $init:expr, $stop:path) => {
        $(#[$doc])*
        #[repr(C)] // `w` first: a raw watcher pointer is also a pointer to us.
        $vis struct $ty {
            w: UnsafeCell<$raw>,
            bound: Bound,
            _pin: PhantomPinned,
            _not_send: PhantomData<*mut ()>,
        }

        impl $ty {
            /// An inactive watcher.
            pub const fn new() -> Self {
                $ty {
                    w: UnsafeCell::new($init),
                    bound: Bound::new(),
                    _pin: PhantomPinned,
                    _not_send: PhantomData,
                }
            }

            /// Whether libev holds this watcher.
            pub fn is_active(&self) -> bool {
                // SAFETY: reading a field of our own watcher; libev writes it only
                // from this thread, inside calls we make.
                unsafe { (*self.w.get()).active != 0 }
            }

            /// Keeps our bookkeeping in step when libev stopped the watcher itself
            /// (an expired one-shot timer, an io watcher on a bad fd).
            fn sync(&self) {
                if !self.is_active() && !self.bound.core.get().is_null() {
                    self.bound.stopping();
                }
            }

            /// Stops the watcher if it is active (also clears a pending event).
            pub fn stop(&self) {
                self.sync();
                if self.bound.core.get().is_null() {
                    return;
                }
                let core = self.bound.stopping();
                // SAFETY: the watcher is active on that loop, which is alive.
                unsafe { $stop((*core).raw, self.w.get()) }
            }

            fn raw(&self) -> *mut $raw {
                self.w.get()
            }
        }

        impl Drop for $ty {
            fn drop(&mut self) {
                self.sync();
                if !self.bound.core.get().is_null() {
                    fatal(concat!(
                        "an active ",
                        stringify!($ty),
                        " watcher was dropped"
                    ));
                }
            }
        }

        impl Default for $ty {
            fn default() -> Self {
                Self::new()
            }
        }
    };
}

watcher!(
    /// An `ev_io` watcher: readiness of one fd.
    pub Io: sys::ev_io = sys::ev_io {
        active: 0,
        pending: 0,
        data: ptr::null_mut(),
        cb: None,
        next: ptr::null_mut(),
        fd: -1,
        events: 0,
    },
    sys::ev_io_stop
);

impl Io {
    /// `ev_io_set`: points the watcher at `fd` for `events`, reporting `token`; stops it first
    /// if needed (libev forbids changing an active watcher).
    pub fn set_fd(&self, fd: RawFd, events: Events, token: usize) {
        self.stop();
        // SAFETY: the watcher is inactive; the shim only writes its fields.
        unsafe {
            sys::conn_ev_io_set(self.raw(), fd, events.0);
            (*self.raw()).data = token as *mut c_void;
        }
    }

    /// The fd being watched (-1 before the first `set`).
    pub fn fd(&self) -> RawFd {
        // SAFETY: reading our own watcher's field on its thread.
        unsafe { (*self.raw()).fd }
    }

    /// The events being watched for.
    pub fn events(&self) -> Events {
        // SAFETY: as `fd`; libev keeps private flags above the public bits.
        Events(unsafe { (*self.raw()).events } & (sys::EV_READ | sys::EV_WRITE))
    }

    /// Starts watching on `lp`; a no-op if already active.
    pub fn start<H: Handler>(self: Pin<&Self>, lp: &Loop<H>) {
        self.sync();
        if self.is_active() {
            return;
        }
        // The callback (libev's `ev_set_cb`) is written here, not in `set_fd`,
        // because only the loop tells which handler type it dispatches to.
        // SAFETY: pinned, so the address libev keeps stays valid until `stop` or
        // drop (which aborts if still active); the callback matches the loop's H.
        unsafe {
            (*self.raw()).cb = Some(io_trampoline::<H>);
            sys::ev_io_start(lp.core.raw, self.raw());
        }
        self.bound.started(lp.core());
    }
}

watcher!(
    /// An `ev_timer` watcher: a relative timeout on the loop's monotonic clock.
    pub Timer: sys::ev_timer = sys::ev_timer {
        active: 0,
        pending: 0,
        data: ptr::null_mut(),
        cb: None,
        at: 0.0,
        repeat: 0.0,
    },
    sys::ev_timer_stop
);

impl Timer {
    /// (Re)starts the timer to fire once, `after` seconds from the loop's now,
    /// reporting `token`.
    pub fn start_once<H: Handler>(self: Pin<&Self>, lp: &Loop<H>, after: f64, token: usize) {
        self.stop();
        // SAFETY: inactive watcher; pinned, so libev's pointer stays valid until
        // stop or drop; the callback matches the loop's H.
        unsafe {
            sys::conn_ev_timer_init(self.raw(), timer_trampoline::<H>, after.max(0.0), 0.0);
            (*self.raw()).data = token as *mut c_void;
            sys::ev_timer_start(lp.core.raw, self.raw());
        }
        self.bound.started(lp.core());
    }
}

watcher!(
    /// The raw `ev_async` watcher inside an [`Async`].
    pub(crate) RawAsync: sys::ev_async = sys::ev_async {
        active: 0,
        pending: 0,
        data: ptr::null_mut(),
        cb: None,
        sent: 0,
    },
    sys::ev_async_stop
);

/// An `ev_async` watcher: lets other threads wake the loop through
/// [`AsyncSender`]s, which go quiet once the watcher stops.
#[repr(C)] // `raw` first: the trampoline's watcher pointer is also a pointer to it.
pub struct Async {
    raw: RawAsync,
    /// Shared with the senders, made by the first `sender` call.
    gate: OnceCell<Arc<Gate>>,
}

/// What the senders may signal: the loop and the watcher, only while it is active.
#[derive(Debug)]
struct Gate(RwLock<Option<Target>>);

#[derive(Clone, Copy, Debug)]
struct Target {
    lp: *mut sys::ev_loop,
    w: *mut sys::ev_async,
}

// SAFETY: a Target is only handed to ev_async_send, which libev documents as safe
// from any thread, and only while the gate holds it, i.e. while the watcher is
// active, which keeps both the watcher and its loop alive.
unsafe impl Send for Target {}
// SAFETY: as above; concurrent ev_async_send calls are allowed.
unsafe impl Sync for Target {}

impl Default for Async {
    fn default() -> Self {
        Self::new()
    }
}

impl Async {
    /// An inactive watcher.
    pub const fn new() -> Self {
        Async {
            raw: RawAsync::new(),
            gate: OnceCell::new(),
        }
    }

    /// Whether libev holds this watcher.
    pub fn is_active(&self) -> bool {
        self.raw.is_active()
    }

    /// Starts the watcher on `lp`, reporting `token`.
    pub fn start<H: Handler>(self: Pin<&Self>, lp: &Loop<H>, token: usize) {
        self.stop();
        let raw = &self.raw;
        // SAFETY: inactive; ev_async_init only writes fields; pinned, so libev's
        // pointer stays valid until stop or drop; the callback matches the loop's H.
        unsafe {
            sys::conn_ev_async_init(raw.raw(), async_trampoline::<H>);
            (*raw.raw()).data = token as *mut c_void;
            sys::ev_async_start(lp.core.raw, raw.raw());
        }
        raw.bound.started(lp.core());
        self.open_gate();
    }

    /// Stops the watcher; its senders do nothing from now on (a send in progress
    /// finishes first).
    pub fn stop(&self) {
        self.set_gate(None);
        self.raw.stop();
    }

    /// A `Send + Sync` handle that signals this watcher while it is active.
    pub fn sender(self: Pin<&Self>) -> AsyncSender {
        let gate = self.gate.get_or_init(|| Arc::new(Gate(RwLock::new(None))));
        self.open_gate();
        AsyncSender {
            gate: Arc::clone(gate),
        }
    }

    fn open_gate(&self) {
        let core = self.raw.bound.core.get();
        if self.is_active() && !core.is_null() {
            // SAFETY: bound to a live loop while active.
            let lp = unsafe { (*core).raw };
            self.set_gate(Some(Target {
                lp,
                w: self.raw.raw(),
            }));
        }
    }

    fn set_gate(&self, target: Option<Target>) {
        if let Some(gate) = self.gate.get() {
            *gate.0.write().unwrap_or_else(|e| e.into_inner()) = target;
        }
    }
}

impl Drop for Async {
    fn drop(&mut self) {
        // Close the gate first; `raw`'s own drop then refuses an active watcher.
        self.set_gate(None);
    }
}

/// The `Send + Sync` half of an [`Async`]: `ev_async_send`, and nothing else.
#[derive(Clone, Debug)]
pub struct AsyncSender {
    gate: Arc<Gate>,
}

impl AsyncSender {
    /// Wakes the loop and marks the watcher pending; several sends before the loop
    /// runs coalesce into one callback. False (and nothing done) once the watcher
    /// has stopped.
    pub fn send(&self) -> bool {
        let target = self.gate.0.read().unwrap_or_else(|e| e.into_inner());
        match *target {
            // SAFETY: the gate holds a target only while the watcher is active;
            // stopping it waits for this read lock, so both stay valid here.
            Some(t) => unsafe {
                sys::ev_async_send(t.lp, t.w);
                true
            },
            None => false,
        }
    }
}
