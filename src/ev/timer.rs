//! `ev_timer`: relative timeouts on the loop's monotonic clock.

use std::pin::Pin;
use std::ptr;
use std::time::Duration;

use super::{data, secs, trampoline, watcher, Handler, Loop};
use crate::sys;

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

trampoline!(timer_trampoline(sys::ev_timer => Timer, "timer"), |h, l, token, _w, _revents| {
    h.on_timer(l, token)
});

impl Timer {
    /// (Re)starts the timer to fire once, `after` from the loop's now,
    /// reporting `token`.
    ///
    /// # Panics
    /// If libev holds it on another loop (stop it first).
    #[track_caller]
    pub fn start_once<H: Handler>(self: Pin<&Self>, lp: &Loop<H>, after: Duration, token: usize) {
        self.start_repeating(lp, after, Duration::ZERO, token);
    }

    /// (Re)starts the timer to fire `after` from the loop's now, then every
    /// `every` (zero: once), reporting `token`. A repeating timer stays active
    /// until stopped.
    ///
    /// # Panics
    /// If libev holds it on another loop (stop it first).
    #[track_caller]
    pub fn start_repeating<H: Handler>(
        self: Pin<&Self>,
        lp: &Loop<H>,
        after: Duration,
        every: Duration,
        token: usize,
    ) {
        self.bound.check(lp.core());
        self.stop();
        // SAFETY: inactive watcher; pinned, so libev's pointer stays valid until stop or drop; the callback matches the loop's H; both times are non-negative, as libev asserts.
        unsafe {
            sys::conn_ev_timer_init(self.raw(), timer_trampoline::<H>, secs(after), secs(every));
            (*self.raw()).data = data(token);
            sys::ev_timer_start(lp.raw(), self.raw());
        }
        self.bound.bind(lp.core());
    }

    /// `ev_timer_again`: makes the timer fire `every` from now and then every
    /// `every`, whether it was running or not (an idle timeout restarted on
    /// activity); zero stops it. Reports `token`.
    ///
    /// # Panics
    /// If libev holds it on another loop (stop it first).
    #[track_caller]
    pub fn again<H: Handler>(self: Pin<&Self>, lp: &Loop<H>, every: Duration, token: usize) {
        self.bound.check(lp.core());
        let restart = !self.is_active();
        if restart {
            // Also drops a queued event: ev_timer_init must not see a pending
            // watcher (it would forget its place in libev's queue).
            self.stop();
        }
        // SAFETY: an active watcher is bound to `lp` (checked above), so its callback is already the trampoline for `lp`'s H and only `repeat` and `data` change (both documented as writable while active); an inactive, not pending one is initialised first. Pinned, as in `start_repeating`.
        unsafe {
            if restart {
                sys::conn_ev_timer_init(self.raw(), timer_trampoline::<H>, 0.0, 0.0);
            }
            (*self.raw()).repeat = secs(every);
            (*self.raw()).data = data(token);
            sys::ev_timer_again(lp.raw(), self.raw());
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
        // SAFETY: active, hence bound to a live loop.
        let left = unsafe { sys::ev_timer_remaining(self.bound.raw_loop(), self.raw()) };
        Some(Duration::try_from_secs_f64(left).unwrap_or_default())
    }
}
