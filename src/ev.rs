//! Safe wrappers over libev, one type per libev concept: [`Loop`], [`Io`],
//! [`Timer`], [`Async`], and [`AsyncSender`], the one thing another thread may do.
//! Usable on its own, outside this server: nothing here knows about connections.
//!
//! Design, as in the C++ original: watchers are plain structs embedded in
//! longer-lived objects (pool slots, the accept task). libev keeps pointers to them
//! while they are started, so starting one takes `Pin<&Self>`.
//!
//! Callbacks: a loop is typed by the [`Handler`] that owns its watchers. Each
//! watcher carries a `token` (libev's `data` pointer holds it), and the loop's
//! trampolines call `Handler::on_io/on_timer/on_async` with that token. No panic
//! crosses into C: each trampoline catches it, reports it and aborts.
//!
//! Lifetimes, decided so that no mistake is undefined behaviour:
//! - dropping a started watcher stops it first (`ev_TYPE_stop`, which also
//!   clears an event already queued for it). That is sound because watchers and
//!   loops are `!Send`: a watcher is dropped on the thread it was started on,
//!   which is its loop's thread, and its loop is still alive (below);
//! - dropping a [`Loop`] while any watcher is still started on it aborts the
//!   process with a message: the loop cannot reach those watchers to stop them,
//!   and they would point into freed memory. Drop or stop watchers first.
//!
//! Time: [`Loop::now`] and every timer follow `CLOCK_MONOTONIC`, never the wall
//! clock, and intervals are [`Duration`]s.
//!
//! Memory: by default libev allocates with libc's `realloc`. A program that
//! must not allocate once it serves (this server) calls [`reserve_arrays`]
//! before its first loop: an explicit, process-wide choice, because libev has
//! one allocator for every loop in the process (`ev_set_allocator`).
//!
//! # Example
//! The smallest complete use: one loop, one timer, a handler that stops the loop.
//! ```
//! use std::time::Duration;
//! use conn_daemon::ev::{Handler, Loop, Timer};
//!
//! struct Ticks(u32);
//! impl Handler for Ticks {
//!     // on_io and on_async keep their no-op defaults.
//!     fn on_timer(&mut self, lp: &Loop<Self>, _token: usize) {
//!         self.0 += 1;
//!         if self.0 == 3 {
//!             lp.break_all();
//!         }
//!     }
//! }
//!
//! let lp = Loop::new()?;
//! let timer = Box::pin(Timer::new());
//! timer.as_ref().start_repeating(&lp, Duration::from_millis(1), Duration::from_millis(1), 0);
//! let mut ticks = Ticks(0);
//! lp.run(&mut ticks);
//! assert_eq!(ticks.0, 3);
//! # Ok::<(), std::io::Error>(())
//! ```
#![allow(unsafe_code)]

use std::cell::{Cell, OnceCell, UnsafeCell};
use std::ffi::c_void;
use std::fmt;
use std::io;
use std::marker::{PhantomData, PhantomPinned};
use std::ops::{BitOr, BitOrAssign};
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::sys;

mod alloc;
pub use alloc::reserve_arrays;

/// Who speaks in this layer's messages: the library, not whichever binary uses it.
const WHO: &str = module_path!();

/// Event bits libev reports to a callback, or a watcher's interest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Events(i32);

impl Events {
    /// No event.
    pub const NONE: Events = Events(0);
    /// Interest in (or readiness for) reading.
    pub const READ: Events = Events(sys::EV_READ);
    /// Interest in (or readiness for) writing.
    pub const WRITE: Events = Events(sys::EV_WRITE);
    /// libev stopped the watcher after an error (a closed or invalid fd); it
    /// comes with `READ | WRITE` so that a handler reading or writing sees it.
    pub const ERROR: Events = Events(sys::EV_ERROR);

    /// The fd is readable.
    pub fn is_readable(self) -> bool {
        self.0 & sys::EV_READ != 0
    }
    /// The fd is writable.
    pub fn is_writable(self) -> bool {
        self.0 & sys::EV_WRITE != 0
    }
    /// libev stopped the watcher after an error.
    pub fn is_error(self) -> bool {
        self.0 & sys::EV_ERROR != 0
    }
    /// Every bit of `other` is set here.
    pub fn contains(self, other: Events) -> bool {
        self.0 & other.0 == other.0
    }
}

impl BitOr for Events {
    type Output = Events;
    fn bitor(self, rhs: Events) -> Events {
        Events(self.0 | rhs.0)
    }
}

impl BitOrAssign for Events {
    fn bitor_assign(&mut self, rhs: Events) {
        self.0 |= rhs.0;
    }
}

/// `Events(READ | WRITE)`; bits libev may add that have no name here are shown
/// in hex.
impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(i32, &str); 5] = [
            (sys::EV_READ, "READ"),
            (sys::EV_WRITE, "WRITE"),
            (sys::EV_TIMER, "TIMER"),
            (sys::EV_ASYNC, "ASYNC"),
            (sys::EV_ERROR, "ERROR"),
        ];
        f.write_str("Events(")?;
        let mut rest = self.0;
        let mut first = true;
        for (bit, name) in NAMES {
            if rest & bit != 0 {
                if !first {
                    f.write_str(" | ")?;
                }
                f.write_str(name)?;
                rest &= !bit;
                first = false;
            }
        }
        if rest != 0 {
            if !first {
                f.write_str(" | ")?;
            }
            write!(f, "{:#x}", rest as u32)?;
        } else if first {
            f.write_str("NONE")?;
        }
        f.write_str(")")
    }
}

/// The owner of a loop's watchers: receives their callbacks, by token.
///
/// Every method has a no-op default, so a handler implements only the watcher
/// kinds it uses. Beware that an io watcher whose readiness is ignored fires
/// again at once (libev is level-triggered): read, write or stop it.
pub trait Handler: Sized {
    /// An io watcher with this token is ready (or, with [`Events::ERROR`],
    /// was stopped by libev).
    fn on_io(&mut self, lp: &Loop<Self>, token: usize, events: Events) {
        let _ = (lp, token, events);
    }
    /// A timer with this token expired (a one-shot timer is inactive by now).
    fn on_timer(&mut self, lp: &Loop<Self>, token: usize) {
        let _ = (lp, token);
    }
    /// An async watcher with this token was signalled (sends coalesce: drain
    /// everything that was posted, not one item).
    fn on_async(&mut self, lp: &Loop<Self>, token: usize) {
        let _ = (lp, token);
    }
}

/// Shared between a loop and its watchers: the raw loop and how many of our
/// watchers are started on it, so that a loop with started watchers is never freed.
#[derive(Debug)]
struct Core {
    raw: *mut sys::ev_loop,
    active: Cell<usize>,
    /// Inside `Loop::run`: a nested run would replace the handler the outer
    /// run's callbacks are dispatched to.
    running: Cell<bool>,
}

/// An event loop (`ev_loop_new` with the epoll backend). Bound to its thread.
///
/// ```
/// use std::time::Duration;
/// use conn_daemon::ev::{Handler, Loop, Timer};
///
/// struct Once;
/// impl Handler for Once {
///     fn on_timer(&mut self, lp: &Loop<Self>, token: usize) {
///         assert_eq!(token, 7);
///         lp.break_all();
///     }
/// }
/// let lp = Loop::new()?;
/// let t0 = lp.now();
/// let timer = Box::pin(Timer::new());
/// timer.as_ref().start_once(&lp, Duration::from_millis(5), 7);
/// lp.run(&mut Once);
/// assert!(lp.now() - t0 >= Duration::from_millis(5));
/// # Ok::<(), std::io::Error>(())
/// ```
#[derive(Debug)]
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
    /// Uses whichever allocator the process chose (see [`reserve_arrays`]).
    pub fn new() -> io::Result<Self> {
        alloc::loop_made();
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
        // SAFETY: valid loop; userdata points at `ctx`, which outlives ev_run and is reset before `ctx` goes away.
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

    /// The loop's cached monotonic time: `CLOCK_MONOTONIC` (the clock its timers
    /// run on) as a [`Duration`] since that clock's origin, updated once per
    /// iteration, so reading it costs no clock call.
    ///
    /// Not libev's `ev_now`, which is the wall clock: a deadline computed from it
    /// moves when the system time is stepped (an hour back keeps a connection
    /// open for an hour). Compare these values only with each other.
    pub fn now(&self) -> Duration {
        // SAFETY: valid loop; the accessor only reads a field of it.
        let secs = unsafe { sys::conn_ev_mono_now(self.core.raw) };
        Duration::try_from_secs_f64(secs).unwrap_or_default()
    }

    /// Refreshes the cached time (`ev_now_update`), e.g. after a callback that
    /// blocked for a while; costs a clock call.
    pub fn update_now(&self) {
        // SAFETY: valid loop.
        unsafe { sys::ev_now_update(self.core.raw) }
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
            // Watchers would keep pointing into a freed loop, and we cannot reach
            // them to stop them: refuse, loudly.
            fatal("a Loop was dropped while watchers were still started on it (stop or drop them first)");
        }
        // SAFETY: the loop is valid and no watcher of ours is started on it.
        unsafe { sys::ev_loop_destroy(self.core.raw) }
    }
}

/// Prints why and aborts: used where continuing would be undefined behaviour.
fn fatal(why: &str) -> ! {
    eprintln!("{WHO}: fatal: {why}; aborting");
    std::process::abort()
}

/// Runs a callback body; a panic is reported and aborts the process, because
/// unwinding into libev's C frames is undefined behaviour and the state the
/// panic interrupted can no longer be trusted.
fn guard(what: &str, body: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(body)).is_err() {
        eprintln!("{WHO}: panic in a libev {what} callback; aborting");
        std::process::abort();
    }
}

/// # Safety
/// `lp` must be a loop currently inside [`Loop::run`] of a `Loop<H>`.
unsafe fn dispatch<H: Handler>(lp: *mut sys::ev_loop, f: impl FnOnce(&mut H, &Loop<H>)) {
    // SAFETY: per the contract, userdata is the RunCtx<H> of the running `run`, whose loop and handler are alive and not otherwise used while ev_run runs.
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
                // Nothing touches `w` after the handler returns: the handler may
                // drop the watcher.
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

/// What every watcher type shares: the loop it was started on, from `start`
/// until it is neither active nor has an event queued there (libev holds a
/// pointer to it in both cases).
#[derive(Debug)]
struct Bound {
    core: Cell<*const Core>,
}

impl Bound {
    const fn new() -> Self {
        Bound {
            core: Cell::new(ptr::null()),
        }
    }

    fn is_bound(&self) -> bool {
        !self.core.get().is_null()
    }

    /// Records that the watcher was started on `core` (once: a second start on
    /// the same loop changes nothing).
    fn bind(&self, core: *const Core) {
        if self.core.get() == core {
            return;
        }
        debug_assert!(!self.is_bound(), "bound to another loop");
        self.core.set(core);
        // SAFETY: core belongs to a live loop (we are being started on it).
        unsafe { (*core).active.set((*core).active.get() + 1) }
    }

    /// The loop we are bound to; clears the binding.
    fn unbind(&self) -> *const Core {
        let core = self.core.replace(ptr::null());
        // SAFETY: while we are bound, the loop cannot be freed (its count is > 0).
        unsafe { (*core).active.set((*core).active.get() - 1) }
        core
    }
}

/// Defines a watcher type over libev's `$raw` struct: the struct itself (`!Send`,
/// pinned while started), `new` (inactive), `is_active`, `is_pending`, `stop`,
/// and the Drop that stops it.
macro_rules! watcher {
    ($(#[$doc:meta])* $vis:vis $ty:ident: $raw:ty = $init:expr, $stop:path) => {
        $(#[$doc])*
        #[repr(C)] // `w` first: a raw watcher pointer is also a pointer to us.
        #[derive(Debug)]
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

            /// Whether the watcher is started (libev's `ev_is_active`).
            pub fn is_active(&self) -> bool {
                // SAFETY: reading a field of our own watcher; libev writes it only from this thread, inside calls we make.
                unsafe { (*self.w.get()).active != 0 }
            }

            /// Whether an event for it is queued and its callback not yet run
            /// (libev's `ev_is_pending`).
            pub fn is_pending(&self) -> bool {
                // SAFETY: as `is_active`.
                unsafe { (*self.w.get()).pending != 0 }
            }

            /// Keeps our bookkeeping in step when libev let go of the watcher
            /// itself (an expired one-shot timer once its callback is called, an
            /// io watcher on a bad fd).
            fn sync(&self) {
                if self.bound.is_bound() && !self.is_active() && !self.is_pending() {
                    self.bound.unbind();
                }
            }

            /// Stops the watcher if it is started, and drops an event already
            /// queued for it (its callback will not be called).
            pub fn stop(&self) {
                if !self.bound.is_bound() {
                    return;
                }
                let core = self.bound.unbind();
                // SAFETY: the watcher was started on that loop, which is alive (it cannot be freed while we are bound); libev's stop first clears a pending event, then returns early if inactive.
                unsafe { $stop((*core).raw, self.w.get()) }
            }

            fn raw(&self) -> *mut $raw {
                self.w.get()
            }
        }

        /// Stops a started watcher (see the module documentation for why
        /// that is sound).
        impl Drop for $ty {
            fn drop(&mut self) {
                self.stop();
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
    ///
    /// ```
    /// use std::io::Write;
    /// use std::os::fd::AsRawFd;
    /// use std::os::unix::net::UnixStream;
    /// use conn_daemon::ev::{Events, Handler, Io, Loop};
    ///
    /// struct Reader(Vec<(usize, Events)>);
    /// impl Handler for Reader {
    ///     fn on_io(&mut self, lp: &Loop<Self>, token: usize, events: Events) {
    ///         self.0.push((token, events));
    ///         lp.break_all(); // or read the fd: libev reports it again until then
    ///     }
    /// }
    /// let (a, mut b) = UnixStream::pair()?;
    /// let lp = Loop::new()?;
    /// let io = Box::pin(Io::new());
    /// io.set_fd(a.as_raw_fd(), Events::READ, 42);
    /// io.as_ref().start(&lp);
    /// b.write_all(b"x")?;
    /// let mut reader = Reader(vec![]);
    /// lp.run(&mut reader);
    /// assert_eq!(reader.0, [(42, Events::READ)]);
    /// // Dropping `io` stops it; it must go before the loop does.
    /// drop(io);
    /// # Ok::<(), std::io::Error>(())
    /// ```
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
    /// if needed (libev forbids changing a started watcher).
    pub fn set_fd(&self, fd: RawFd, events: Events, token: usize) {
        self.stop();
        // SAFETY: the watcher is inactive; the shim only writes its fields.
        unsafe {
            sys::conn_ev_io_set(self.raw(), fd, events.0 & (sys::EV_READ | sys::EV_WRITE));
            (*self.raw()).data = token as *mut c_void;
        }
    }

    /// The fd being watched (-1 before the first `set_fd`).
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
        if self.is_active() {
            return;
        }
        // Not active but maybe still holding a queued event (an EV_ERROR):
        // drop it, and the binding to whichever loop that was.
        self.stop();
        // The callback (libev's `ev_set_cb`) is written here, not in `set_fd`,
        // because only the loop tells which handler type it dispatches to.
        // SAFETY: pinned, so the address libev keeps stays valid until `stop` or drop (which stops it); the callback matches the loop's H.
        unsafe {
            (*self.raw()).cb = Some(io_trampoline::<H>);
            sys::ev_io_start(lp.core.raw, self.raw());
        }
        self.bound.bind(lp.core());
    }
}

watcher!(
    /// An `ev_timer` watcher: a relative timeout on the loop's monotonic clock,
    /// once or repeating.
    ///
    /// An idle timeout, the libev manual's `ev_timer_again` pattern: restart the
    /// same timer on every bit of activity, at the cost of a heap adjustment.
    /// ```
    /// use std::time::Duration;
    /// use conn_daemon::ev::{Handler, Loop, Timer};
    ///
    /// struct Idle { fired: bool }
    /// impl Handler for Idle {
    ///     fn on_timer(&mut self, lp: &Loop<Self>, _token: usize) {
    ///         self.fired = true;
    ///         lp.break_all();
    ///     }
    /// }
    /// let lp = Loop::new()?;
    /// let idle = Box::pin(Timer::new());
    /// let timeout = Duration::from_millis(20);
    /// idle.as_ref().again(&lp, timeout, 1); // started: 20 ms from now
    /// idle.as_ref().again(&lp, timeout, 1); // activity: 20 ms from now again
    /// assert!(idle.remaining().unwrap() <= timeout);
    /// let mut h = Idle { fired: false };
    /// lp.run(&mut h);
    /// assert!(h.fired && idle.is_active()); // it repeats until stopped
    /// idle.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
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

/// libev's timestamps are seconds in an `f64`.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

impl Timer {
    /// (Re)starts the timer to fire once, `after` from the loop's now,
    /// reporting `token`.
    pub fn start_once<H: Handler>(self: Pin<&Self>, lp: &Loop<H>, after: Duration, token: usize) {
        self.start_repeating(lp, after, Duration::ZERO, token);
    }

    /// (Re)starts the timer to fire `after` from the loop's now, then every
    /// `every` (zero: once), reporting `token`. A repeating timer stays active
    /// until stopped.
    pub fn start_repeating<H: Handler>(
        self: Pin<&Self>,
        lp: &Loop<H>,
        after: Duration,
        every: Duration,
        token: usize,
    ) {
        self.stop();
        // SAFETY: inactive watcher; pinned, so libev's pointer stays valid until stop or drop; the callback matches the loop's H.
        unsafe {
            sys::conn_ev_timer_init(self.raw(), timer_trampoline::<H>, secs(after), secs(every));
            (*self.raw()).data = token as *mut c_void;
            sys::ev_timer_start(lp.core.raw, self.raw());
        }
        self.bound.bind(lp.core());
    }

    /// `ev_timer_again`: makes the timer fire `every` from now and then every
    /// `every`, whether it was running or not (an idle timeout restarted on
    /// activity); zero stops it. Reports `token`.
    pub fn again<H: Handler>(self: Pin<&Self>, lp: &Loop<H>, every: Duration, token: usize) {
        let restart = !self.is_active() || self.bound.core.get() != lp.core();
        if restart {
            // Also drops a queued event: ev_timer_init must not see a pending
            // watcher (it would forget its place in libev's queue).
            self.stop();
        }
        // SAFETY: an active watcher is bound to `lp`, so its callback is already the trampoline for `lp`'s H and only `repeat` and `data` change (both documented as writable while active); an inactive, not pending one is initialised first. Pinned, as in `start_repeating`.
        unsafe {
            if restart {
                sys::conn_ev_timer_init(self.raw(), timer_trampoline::<H>, 0.0, 0.0);
            }
            (*self.raw()).repeat = secs(every);
            (*self.raw()).data = token as *mut c_void;
            sys::ev_timer_again(lp.core.raw, self.raw());
        }
        // ev_timer_again clears a pending event: bound exactly when active.
        if self.is_active() {
            self.bound.bind(lp.core());
        } else if self.bound.is_bound() {
            self.bound.unbind();
        }
    }

    /// Time left before it fires (`ev_timer_remaining`); `None` when inactive.
    pub fn remaining(&self) -> Option<Duration> {
        if !self.is_active() {
            return None;
        }
        let core = self.bound.core.get();
        // SAFETY: active, hence bound to a live loop.
        let left = unsafe { sys::ev_timer_remaining((*core).raw, self.raw()) };
        Some(Duration::try_from_secs_f64(left).unwrap_or_default())
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
///
/// Sends coalesce: the loop may see one callback for many sends, so what the
/// other threads post goes into a queue the callback drains until empty.
/// ```
/// use std::sync::mpsc;
/// use conn_daemon::ev::{Async, Handler, Loop};
///
/// struct Drain { rx: mpsc::Receiver<u32>, sum: u32 }
/// impl Handler for Drain {
///     fn on_async(&mut self, lp: &Loop<Self>, _token: usize) {
///         while let Ok(n) = self.rx.try_recv() {
///             self.sum += n;
///         }
///         if self.sum == 1 + 2 + 3 {
///             lp.break_all();
///         }
///     }
/// }
/// let lp = Loop::new()?;
/// let wake = Box::pin(Async::new());
/// wake.as_ref().start(&lp, 0);
/// let (tx, rx) = mpsc::channel();
/// let sender = wake.as_ref().sender(); // Send + Sync + Clone
/// let worker = std::thread::spawn(move || {
///     for n in 1..=3 {
///         tx.send(n).unwrap();
///         sender.send();
///     }
/// });
/// let mut drain = Drain { rx, sum: 0 };
/// lp.run(&mut drain);
/// worker.join().unwrap();
/// assert_eq!(drain.sum, 6);
/// wake.stop(); // from now on the senders do nothing
/// # Ok::<(), std::io::Error>(())
/// ```
#[repr(C)] // `raw` first: the trampoline's watcher pointer is also a pointer to it.
#[derive(Debug)]
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

    /// Whether the watcher is started.
    pub fn is_active(&self) -> bool {
        self.raw.is_active()
    }

    /// Starts the watcher on `lp`, reporting `token`.
    pub fn start<H: Handler>(self: Pin<&Self>, lp: &Loop<H>, token: usize) {
        self.stop();
        let raw = &self.raw;
        // SAFETY: inactive; ev_async_init only writes fields; pinned, so libev's pointer stays valid until stop or drop; the callback matches the loop's H.
        unsafe {
            sys::conn_ev_async_init(raw.raw(), async_trampoline::<H>);
            (*raw.raw()).data = token as *mut c_void;
            sys::ev_async_start(lp.core.raw, raw.raw());
        }
        raw.bound.bind(lp.core());
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
        // Close the gate first, so no sender signals a stopping watcher; `raw`'s
        // own drop then stops it.
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
            // SAFETY: the gate holds a target only while the watcher is active; stopping it waits for this read lock, so both stay valid here.
            Some(t) => unsafe {
                sys::ev_async_send(t.lp, t.w);
                true
            },
            None => false,
        }
    }
}
