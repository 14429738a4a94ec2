//! Safe wrappers over libev, one type per libev concept: [`Loop`], and one
//! watcher type per libev watcher kind, each mirroring its C API: [`Io`],
//! [`Timer`], [`Periodic`], [`Signal`], [`Child`], [`Stat`], [`Idle`],
//! [`Prepare`], [`Check`], [`Fork`], [`Cleanup`] and [`Async`] (with
//! [`AsyncSender`], the one thing another thread may do). Usable on its own,
//! outside this server: nothing here knows about connections.
//!
//! # Soundness contract
//!
//! No safe code can cause undefined behaviour, a libev assertion or abort, or a
//! hang inside libev through this module. What holds it, case by case (each case
//! has its test in `tests/soundness.rs`):
//!
//! 1. **A started watcher does not move and outlives libev's hold on it.**
//!    Starting takes `Pin<&Self>`; dropping a watcher stops it first
//!    (`ev_TYPE_stop`, which also takes an already queued event off libev's
//!    list). Watchers and loops are `!Send` and `!Sync`, so that drop runs on
//!    the loop's thread, never during a libev call of another thread.
//! 2. **A loop outlives the watchers started on it.** Each loop counts the
//!    watchers libev holds (started, or with an event queued). Dropping a loop
//!    while that count is not zero panics and *leaks* the loop instead of
//!    freeing it, so the watchers' later stops still find valid memory. Drop or
//!    stop the watchers first (declare the loop before them).
//! 3. **A watcher is held by one loop at a time.** Starting a watcher that
//!    libev holds on one loop on another loop panics, the same way for every
//!    kind (`... was started on another loop`); stop it first.
//! 4. **What libev would assert on, or grow without bound, is checked first**
//!    and refused with an [`std::io::Error`]: an [`Io`] fd that is negative or
//!    beyond the fds the process reserved room for ([`Loop::fd_limit`];
//!    libev indexes an array by fd and grows it to the fd's size), a signal
//!    number libev does not have or that another loop watches, a child
//!    watcher on a loop other than the default one.
//! 5. **Callbacks cannot reach freed or foreign state.** A loop is typed by its
//!    [`Handler`]; a callback is only ever installed for the loop it is started
//!    on; callbacks run only inside [`Loop::run`] (and [`Loop::destroy`]), a
//!    nested `run` panics, and no panic unwinds into C: each callback catches
//!    it, reports it and aborts.
//!
//!    A watcher that is not pinned cannot be started, and neither it nor its
//!    loop can be sent to another thread (`compile_fail` doc tests):
//!    ```compile_fail,E0599
//!    use conn_daemon::ev::{Handler, Loop, Timer};
//!    struct Nothing;
//!    impl Handler for Nothing {}
//!    let lp = Loop::<Nothing>::new().unwrap();
//!    let timer = Timer::new(); // on the stack, free to move
//!    timer.start_once(&lp, std::time::Duration::from_secs(1), 0);
//!    ```
//!    ```compile_fail,E0277
//!    use conn_daemon::ev::Timer;
//!    let timer = Box::pin(Timer::new());
//!    std::thread::spawn(move || drop(timer));
//!    ```
//! 6. **Forgetting is harmless.** `mem::forget` on a started watcher leaks its
//!    memory (libev's pointer stays valid, its loop then never frees; see 2);
//!    on a loop, leaks it.
//!
//! What this module does not promise: that an fd is open (libev reports a bad
//! one with [`Events::ERROR`] and stops the watcher), and that memory is
//! infinite (libev aborts when `realloc` fails, as Rust does on an allocation
//! failure).
//!
//! # Design
//!
//! As in the C++ original: watchers are plain structs embedded in longer-lived
//! objects (pool slots, the accept task); several in one place are pinned
//! together and split with [`Project`]. Each watcher carries a `token` (libev's
//! `data` pointer holds it), and the loop's trampolines call the matching
//! `Handler` method (`on_io`, `on_timer`, ...) with that token.
//!
//! Time: [`Loop::now`] and every [`Timer`] follow `CLOCK_MONOTONIC`, never the
//! wall clock, and intervals are [`Duration`]s; [`Periodic`], whose point is
//! the wall clock, takes [`SystemTime`]s.
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
//!     // Every other callback keeps its no-op default.
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

use std::cell::Cell;
use std::ffi::c_void;
use std::fmt;
use std::marker::PhantomData;
use std::ops::{BitOr, BitOrAssign};
use std::os::fd::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::ptr::{self, NonNull};
use std::time::{Duration, SystemTime};

use crate::sys;

mod alloc;
mod check;
mod child;
mod cleanup;
mod fork;
mod idle;
mod io;
mod periodic;
mod prepare;
mod signal;
mod stat;
mod timer;
mod wakeup;

pub use alloc::reserve_arrays;
pub use check::Check;
pub use child::Child;
pub use cleanup::Cleanup;
pub use fork::Fork;
pub use idle::Idle;
pub use io::Io;
pub use periodic::Periodic;
pub use prepare::Prepare;
pub use signal::Signal;
pub use stat::Stat;
pub use timer::Timer;
pub use wakeup::{Async, AsyncSender};

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
    /// A periodic watcher with this token reached its time (one that is not
    /// repeating is inactive by now).
    fn on_periodic(&mut self, lp: &Loop<Self>, token: usize) {
        let _ = (lp, token);
    }
    /// The signal of a signal watcher with this token arrived (several
    /// arrivals before the loop looks coalesce into one call).
    fn on_signal(&mut self, lp: &Loop<Self>, token: usize) {
        let _ = (lp, token);
    }
    /// A child process watched with this token changed state: `pid` and its
    /// `status` as `waitpid` reports them (`libc::WIFEXITED` and friends).
    fn on_child(&mut self, lp: &Loop<Self>, token: usize, pid: i32, status: i32) {
        let _ = (lp, token, pid, status);
    }
    /// The attributes of a stat watcher's path changed ([`Stat::attr`],
    /// [`Stat::prev`]).
    fn on_stat(&mut self, lp: &Loop<Self>, token: usize) {
        let _ = (lp, token);
    }
    /// The loop has nothing else to do (an idle watcher keeps it from blocking).
    fn on_idle(&mut self, lp: &Loop<Self>, token: usize) {
        let _ = (lp, token);
    }
    /// The loop is about to wait for events.
    fn on_prepare(&mut self, lp: &Loop<Self>, token: usize) {
        let _ = (lp, token);
    }
    /// The loop has just waited for events, before their callbacks.
    fn on_check(&mut self, lp: &Loop<Self>, token: usize) {
        let _ = (lp, token);
    }
    /// The loop resumed after [`Loop::fork`] (in the child of a `fork`).
    fn on_fork(&mut self, lp: &Loop<Self>, token: usize) {
        let _ = (lp, token);
    }
    /// The loop is being destroyed by [`Loop::destroy`]; the cleanup watcher
    /// is already stopped.
    fn on_cleanup(&mut self, lp: &Loop<Self>, token: usize) {
        let _ = (lp, token);
    }
}

/// Shared between a loop and its watchers: the raw loop and how many of our
/// watchers libev holds on it, so that a loop holding watchers is never freed.
#[derive(Debug)]
struct Core {
    raw: *mut sys::ev_loop,
    active: Cell<usize>,
    /// Inside `Loop::run` (or `destroy`): a nested run would replace the
    /// handler the outer run's callbacks are dispatched to.
    running: Cell<bool>,
    /// libev's default loop, the one child watchers need.
    is_default: bool,
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
pub struct Loop<H: Handler> {
    /// Freed by `Drop` unless watchers are still held (then leaked).
    core: NonNull<Core>,
    _handler: PhantomData<fn(&mut H)>,
    _not_send: PhantomData<*mut ()>,
}

/// The loop's state, whatever its handler type.
impl<H: Handler> fmt::Debug for Loop<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loop")
            .field("core", self.core_ref())
            .finish()
    }
}

/// What libev's userdata points at while [`Loop::run`] runs.
struct RunCtx<H: Handler> {
    lp: *const Loop<H>,
    handler: *mut H,
}

/// The flags every loop is made with: epoll, and `LIBEV_FLAGS` ignored.
const FLAGS: u32 = sys::EVBACKEND_EPOLL | sys::EVFLAG_NOENV;

impl<H: Handler> Loop<H> {
    /// A new loop on the epoll backend, ignoring `LIBEV_FLAGS` from the environment.
    /// Uses whichever allocator the process chose (see [`reserve_arrays`]).
    pub fn new() -> std::io::Result<Self> {
        alloc::loop_made();
        // SAFETY: ev_loop_new has no preconditions; null means failure.
        let raw = unsafe { sys::ev_loop_new(FLAGS) };
        Self::wrap(raw, false)
    }

    /// libev's default loop (`ev_default_loop`), the only loop [`Child`]
    /// watchers work on. There is one per process: this fails with
    /// [`std::io::ErrorKind::AlreadyExists`] while another `Loop` holds it (or
    /// while another loop watches `SIGCHLD`), and works again once that one
    /// is dropped.
    ///
    /// Its semantics are libev's, process-wide: it installs a `SIGCHLD` handler
    /// that reaps *every* child of the process (`waitpid(-1)`), so nothing else
    /// in the process may wait for children while it exists (no
    /// `std::process::Child::wait`); and `SIGCHLD` is then its signal (a
    /// [`Signal`] for it works on this loop only).
    pub fn new_default() -> std::io::Result<Self> {
        alloc::loop_made();
        let raw = signal::with_registry(|reg| {
            if !reg.take_default() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "{WHO}: the default loop exists already, or another loop watches SIGCHLD"
                    ),
                ));
            }
            // SAFETY: no default loop exists (the registry says so, under its lock), and no loop watches SIGCHLD, which this one will (libev asserts otherwise).
            let raw = unsafe { sys::ev_default_loop(FLAGS) };
            if raw.is_null() {
                reg.give_back_default();
            } else {
                reg.set_default(raw);
            }
            Ok(raw)
        })?;
        Self::wrap(raw, true)
    }

    fn wrap(raw: *mut sys::ev_loop, is_default: bool) -> std::io::Result<Self> {
        if raw.is_null() {
            let err = std::io::Error::last_os_error();
            return Err(if err.raw_os_error() == Some(0) {
                std::io::Error::other("libev could not create an epoll loop")
            } else {
                err
            });
        }
        let core = Box::new(Core {
            raw,
            active: Cell::new(0),
            running: Cell::new(false),
            is_default,
        });
        Ok(Loop {
            core: NonNull::from(Box::leak(core)),
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
        self.with_handler(handler, |raw| {
            // SAFETY: valid loop, userdata set for the callbacks.
            unsafe { sys::ev_run(raw, 0) };
        });
    }

    /// Runs `f` with libev's userdata pointing at `handler`, so that callbacks
    /// can be invoked; panics if that is already the case.
    fn with_handler(&self, handler: &mut H, f: impl FnOnce(*mut sys::ev_loop)) {
        let core = self.core_ref();
        assert!(!core.running.replace(true), "{WHO}: nested Loop::run");
        let mut ctx = RunCtx { lp: self, handler };
        // Callbacks only fire inside `f`, so trampolines never see a stale userdata.
        // SAFETY: valid loop; userdata points at `ctx`, which outlives `f` and is reset before `ctx` goes away.
        unsafe { sys::ev_set_userdata(core.raw, (&mut ctx as *mut RunCtx<H>).cast()) };
        f(core.raw);
        // SAFETY: as above.
        unsafe { sys::ev_set_userdata(core.raw, ptr::null_mut()) };
        core.running.set(false);
    }

    /// Makes the running `run` return once the current callbacks are done.
    pub fn break_all(&self) {
        // SAFETY: valid loop; ev_break only sets a flag.
        unsafe { sys::ev_break(self.raw(), sys::EVBREAK_ALL) }
    }

    /// The loop's cached monotonic time: `CLOCK_MONOTONIC` (the clock its timers
    /// run on) as a [`Duration`] since that clock's origin, updated once per
    /// iteration, so reading it costs no clock call.
    ///
    /// Not libev's `ev_now`, which is the wall clock ([`Loop::wall_now`]): a
    /// deadline computed from it moves when the system time is stepped (an hour
    /// back keeps a connection open for an hour). Compare these values only
    /// with each other.
    pub fn now(&self) -> Duration {
        // SAFETY: valid loop; the accessor only reads a field of it.
        let secs = unsafe { sys::conn_ev_mono_now(self.raw()) };
        Duration::try_from_secs_f64(secs).unwrap_or_default()
    }

    /// libev's `ev_now`: the loop's cached wall-clock time, the clock
    /// [`Periodic`] watchers follow.
    pub fn wall_now(&self) -> SystemTime {
        // SAFETY: valid loop; reads a field.
        from_wall(unsafe { sys::ev_now(self.raw()) })
    }

    /// Refreshes the cached time (`ev_now_update`), e.g. after a callback that
    /// blocked for a while; costs a clock call.
    pub fn update_now(&self) {
        // SAFETY: valid loop.
        unsafe { sys::ev_now_update(self.raw()) }
    }

    /// The backend libev chose (always epoll for loops made here).
    pub fn backend(&self) -> u32 {
        // SAFETY: valid loop.
        unsafe { sys::ev_backend(self.raw()) }
    }

    /// Whether this is libev's default loop ([`Loop::new_default`]).
    pub fn is_default(&self) -> bool {
        self.core_ref().is_default
    }

    /// `ev_loop_fork`: call it in the child after a `fork` that is to keep using
    /// the loop. Its next iteration recreates the kernel state it shares with
    /// the parent (the epoll set, the eventfd) and calls the [`Fork`] watchers.
    pub fn fork(&self) {
        // SAFETY: valid loop; ev_loop_fork only sets a flag for the next iteration.
        unsafe { sys::ev_loop_fork(self.raw()) }
    }

    /// Fds below this can be watched by an [`Io`] on this loop; starting one on
    /// a higher fd fails with `EMFILE`.
    ///
    /// libev keeps an array indexed by fd number and grows it to the highest fd
    /// watched, with `int` arithmetic: an unchecked fd number can make it
    /// allocate gigabytes, overflow or never finish. With [`reserve_arrays`]
    /// the limit is what the reservation was sized for (an fd the kernel hands
    /// this process is below it unless the reservation was too small);
    /// without, the smaller of the fd hard limit and 2^24.
    pub fn fd_limit(&self) -> RawFd {
        alloc::fd_limit()
    }

    /// Runs the [`Cleanup`] watchers started on this loop (each stopped before
    /// its callback, `handler`'s `on_cleanup`), then drops the loop: libev's
    /// `ev_loop_destroy`, whose cleanup callbacks need a handler that a plain
    /// drop does not have.
    ///
    /// # Panics
    /// As dropping: if watchers are still started on it once the cleanup
    /// callbacks return.
    pub fn destroy(self, handler: &mut H) {
        self.with_handler(handler, |raw| {
            // SAFETY: valid loop, userdata set for the callbacks; the cleanup trampoline stops each watcher before its callback, so none is left held.
            unsafe { sys::conn_ev_invoke_cleanups(raw) };
        });
    }

    fn core_ref(&self) -> &Core {
        // SAFETY: the core lives until Drop frees it, and is never mutated but through Cells.
        unsafe { self.core.as_ref() }
    }

    fn raw(&self) -> *mut sys::ev_loop {
        self.core_ref().raw
    }

    fn core(&self) -> *const Core {
        self.core.as_ptr()
    }
}

impl<H: Handler> Drop for Loop<H> {
    fn drop(&mut self) {
        let core = self.core_ref();
        if core.active.get() != 0 {
            // The watchers still point into the loop and we cannot reach them to
            // stop them: leak the loop (their stops will find it), and say so.
            let why = format!(
                "{WHO}: a Loop was dropped while {} watchers were still started on it \
                 (stop or drop them first); the loop is leaked",
                core.active.get()
            );
            if std::thread::panicking() {
                eprintln!("{why}");
                return;
            }
            panic!("{why}");
        }
        let (raw, is_default) = (core.raw, core.is_default);
        if is_default {
            signal::with_registry(|reg| {
                // SAFETY: the loop is valid and no watcher of ours is held on it; under the registry's lock, as its SIGCHLD watcher stops.
                unsafe { sys::ev_loop_destroy(raw) };
                reg.give_back_default();
            });
        } else {
            // SAFETY: the loop is valid and no watcher of ours is held on it.
            unsafe { sys::ev_loop_destroy(raw) };
        }
        // SAFETY: made by Box::leak in `wrap`; no watcher points at it any more (the count is zero).
        drop(unsafe { Box::from_raw(self.core.as_ptr()) });
    }
}

/// libev's wall-clock seconds as a `SystemTime`.
fn from_wall(secs: f64) -> SystemTime {
    let since = Duration::try_from_secs_f64(secs.abs()).unwrap_or_default();
    if secs >= 0.0 {
        SystemTime::UNIX_EPOCH + since
    } else {
        SystemTime::UNIX_EPOCH - since
    }
}

/// A `SystemTime` as libev's wall-clock seconds.
fn to_wall(t: SystemTime) -> f64 {
    match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => -e.duration().as_secs_f64(),
    }
}

/// libev's intervals are seconds in an `f64`.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
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
/// `lp` must be a `Loop<H>`'s raw loop; it is then inside [`Loop::run`] or
/// [`Loop::destroy`] (libev invokes callbacks nowhere else; checked).
unsafe fn dispatch<H: Handler>(lp: *mut sys::ev_loop, f: impl FnOnce(&mut H, &Loop<H>)) {
    // SAFETY: a valid loop (the contract).
    let ctx = unsafe { sys::ev_userdata(lp) } as *const RunCtx<H>;
    if ctx.is_null() {
        fatal("a libev callback ran outside Loop::run");
    }
    // SAFETY: userdata is the RunCtx<H> of the running `run`, whose loop and handler are alive and not otherwise used while ev_run runs.
    unsafe { f(&mut *(*ctx).handler, &*(*ctx).lp) }
}

/// Defines the C callback libev calls for a watcher type: it finds the loop's
/// handler through the loop's userdata and calls it with the watcher's token.
/// `$w` is the raw watcher pointer, for values to read before the handler runs.
macro_rules! trampoline {
    ($name:ident($raw:ty => $ty:ty, $what:literal), |$h:ident, $l:ident, $token:ident, $w:ident, $revents:ident| $call:expr) => {
        /// # Safety
        /// For libev only: `lp` is a `Loop<H>` inside [`Loop::run`] and `w` a live
        /// watcher that `start` installed this callback on.
        unsafe extern "C" fn $name<H: $crate::ev::Handler>(
            lp: *mut $crate::sys::ev_loop,
            $w: *mut $raw,
            $revents: i32,
        ) {
            $crate::ev::guard($what, || {
                // The watcher type is repr(C) with the raw watcher first: `w` is
                // also its address. libev stops some watchers itself (a one-shot
                // timer before its callback, an io watcher on EV_ERROR): `sync`.
                // Nothing touches `w` after the handler returns: the handler may
                // drop the watcher.
                // SAFETY: per this function's contract.
                unsafe {
                    let $token = (*$w).data as usize;
                    (*$w.cast::<$ty>()).sync();
                    $crate::ev::dispatch::<H>(lp, |$h, $l| $call);
                }
            })
        }
    };
}
use trampoline;

/// What every watcher type shares: the loop libev holds it on, from `start`
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

    /// Whether the watcher is held by the loop `core`.
    fn is_on(&self, core: *const Core) -> bool {
        self.core.get() == core
    }

    /// Called first by every `start`: a watcher libev holds on one loop may not
    /// be started on another (contract case 3).
    #[track_caller]
    fn check(&self, core: *const Core) {
        if self.is_bound() && !self.is_on(core) {
            panic!("{WHO}: a watcher held by one loop was started on another loop (stop it first)");
        }
    }

    /// Records that libev now holds the watcher on `core` (once: a second start
    /// on the same loop changes nothing).
    fn bind(&self, core: *const Core) {
        if self.is_on(core) {
            return;
        }
        debug_assert!(
            !self.is_bound(),
            "`check` lets no watcher reach here bound elsewhere"
        );
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

    /// The raw loop we are bound to (null if none).
    fn raw_loop(&self) -> *mut sys::ev_loop {
        let core = self.core.get();
        if core.is_null() {
            return ptr::null_mut();
        }
        // SAFETY: bound, so the loop is alive.
        unsafe { (*core).raw }
    }
}

/// Defines a watcher type over libev's `$raw` struct: the struct itself (`!Send`,
/// pinned while started), `new` (inactive), `is_active`, `is_pending`, `stop`,
/// and the Drop that stops it. `$stop` is called with the bound loop and the
/// raw watcher.
macro_rules! watcher {
    ($(#[$doc:meta])* $vis:vis $ty:ident: $raw:ty = $init:expr, $stop:path) => {
        $(#[$doc])*
        #[repr(C)] // `w` first: a raw watcher pointer is also a pointer to us.
        #[derive(Debug)]
        $vis struct $ty {
            w: ::std::cell::UnsafeCell<$raw>,
            bound: $crate::ev::Bound,
            _pin: ::std::marker::PhantomPinned,
            _not_send: ::std::marker::PhantomData<*mut ()>,
        }

        impl $ty {
            /// An inactive watcher.
            pub const fn new() -> Self {
                $ty {
                    w: ::std::cell::UnsafeCell::new($init),
                    bound: $crate::ev::Bound::new(),
                    _pin: ::std::marker::PhantomPinned,
                    _not_send: ::std::marker::PhantomData,
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
            #[allow(dead_code)] // Only kinds with a trampoline call it.
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
                // SAFETY: the watcher was held by that loop, which is alive (it cannot be freed while we are bound); libev's stop first clears a pending event, then returns early if inactive.
                unsafe { $stop((*core).raw, self.w.get()) }
            }

            #[allow(dead_code)] // Not every kind needs its raw pointer outside `stop`.
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
use watcher;

/// Defines a watcher kind that is `EV_WATCHER` and nothing more (idle,
/// prepare, check, fork, cleanup): the type, its trampoline and
/// `start(lp, token)`. `|w| $before` runs in the trampoline before the
/// handler, with `w` the raw watcher pointer.
macro_rules! plain_watcher {
    ($(#[$doc:meta])* $ty:ident: $raw:ident, $init:ident, $start:ident, $stop:ident,
     $tramp:ident, $on:ident, $what:literal, |$w:ident| $before:block) => {
        $crate::ev::watcher!(
            $(#[$doc])*
            pub $ty: $crate::sys::$raw = $crate::sys::$raw {
                active: 0,
                pending: 0,
                data: ::std::ptr::null_mut(),
                cb: None,
            },
            $crate::sys::$stop
        );

        $crate::ev::trampoline!($tramp($crate::sys::$raw => $ty, $what), |h, l, token, $w, _revents| {
            {
                $before
                h.$on(l, token)
            }
        });

        impl $ty {
            #[doc = concat!("Starts the watcher on `lp` (`", stringify!($start), "`), reporting `token`;")]
            /// if it is already started there, only the token changes.
            ///
            /// # Panics
            /// If libev holds it on another loop (stop it first).
            #[track_caller]
            pub fn start<H: $crate::ev::Handler>(
                self: ::std::pin::Pin<&Self>,
                lp: &$crate::ev::Loop<H>,
                token: usize,
            ) {
                self.bound.check(lp.core());
                if self.is_active() {
                    // SAFETY: our own watcher's `data`, which libev never reads.
                    unsafe { (*self.raw()).data = $crate::ev::data(token) };
                    return;
                }
                self.stop(); // an event still queued
                // SAFETY: inactive and not pending, so libev lets us init it; pinned, so the address libev keeps stays valid until stop or drop (which stops it); the callback is for `lp`'s handler type.
                unsafe {
                    $crate::sys::$init(self.raw(), $tramp::<H>);
                    (*self.raw()).data = $crate::ev::data(token);
                    $crate::sys::$start(lp.raw(), self.raw());
                }
                self.bound.bind(lp.core());
            }
        }
    };
}
use plain_watcher;

/// Several watchers pinned together, each reached pinned on its own: the safe
/// pin projection of a tuple of watchers, so that one pool slot (or one box)
/// can hold a connection's io watcher *and* its timers without `unsafe` code.
///
/// ```
/// use std::pin::Pin;
/// use std::time::Duration;
/// use conn_daemon::ev::{Handler, Io, Loop, Project, Timer};
///
/// struct Nothing;
/// impl Handler for Nothing {}
/// let lp = Loop::<Nothing>::new()?;
/// let watchers = Box::pin((Io::new(), Timer::new(), Timer::new()));
/// let (io, read_deadline, idle): (Pin<&Io>, Pin<&Timer>, Pin<&Timer>) =
///     watchers.as_ref().project();
/// read_deadline.start_once(&lp, Duration::from_secs(5), 1);
/// idle.start_once(&lp, Duration::from_secs(60), 2);
/// assert!(!io.is_active() && read_deadline.is_active() && idle.is_active());
/// # Ok::<(), std::io::Error>(())
/// ```
///
/// Moving a watcher out of a pinned tuple does not compile:
/// ```compile_fail,E0507
/// use conn_daemon::ev::{Io, Timer};
/// let watchers = Box::pin((Io::new(), Timer::new()));
/// let (io, _timer) = *watchers; // Pin gives no way to move out
/// ```
pub trait Project {
    /// Each element, pinned.
    type Projected<'a>
    where
        Self: 'a;
    /// Splits the pinned tuple into its pinned elements.
    fn project(self: Pin<&Self>) -> Self::Projected<'_>;
}

macro_rules! project_tuple {
    ($($name:ident . $idx:tt),+) => {
        impl<$($name),+> Project for ($($name,)+) {
            type Projected<'a> = ($(Pin<&'a $name>,)+) where Self: 'a;
            fn project(self: Pin<&Self>) -> Self::Projected<'_> {
                let tuple = self.get_ref();
                // SAFETY: structural pinning of a tuple's fields: the tuple is pinned, so its fields never move until dropped in place; a tuple has no Drop of its own that could move them, is Unpin only if every field is, and Pin<&(..)> offers no way to move a field out.
                unsafe { ($(Pin::new_unchecked(&tuple.$idx),)+) }
            }
        }
    };
}
project_tuple!(A.0, B.1);
project_tuple!(A.0, B.1, C.2);
project_tuple!(A.0, B.1, C.2, D.3);
project_tuple!(A.0, B.1, C.2, D.3, E.4);
project_tuple!(A.0, B.1, C.2, D.3, E.4, F.5);

/// The token as libev's `data` pointer.
fn data(token: usize) -> *mut c_void {
    token as *mut c_void
}
