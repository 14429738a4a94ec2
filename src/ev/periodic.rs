//! `ev_periodic`: wall-clock times, once or on a fixed schedule.

use std::pin::Pin;
use std::ptr;
use std::time::{Duration, SystemTime};

use super::{data, from_wall, secs, to_wall, trampoline, watcher, Handler, Loop};
use crate::sys;

watcher!(
    /// An `ev_periodic` watcher: fires at a wall-clock time, or at every
    /// multiple of an interval (plus a phase) on the wall clock, and follows
    /// the wall clock when it is stepped (unlike [`Timer`](super::Timer), which
    /// counts elapsed time). The C API's third mode, a `reschedule_cb`, is not
    /// offered: it runs inside libev's time update, where no handler is at hand.
    ///
    /// ```
    /// use std::time::{Duration, SystemTime};
    /// use conn_daemon::ev::{Handler, Loop, Periodic};
    ///
    /// struct Ticks(u32);
    /// impl Handler for Ticks {
    ///     fn on_periodic(&mut self, lp: &Loop<Self>, _token: usize) {
    ///         self.0 += 1;
    ///         if self.0 == 2 {
    ///             lp.break_all();
    ///         }
    ///     }
    /// }
    /// let lp = Loop::new()?;
    /// let tick = Box::pin(Periodic::new());
    /// // Every 10 ms of wall-clock time, on the 10 ms boundaries.
    /// tick.as_ref().start_every(&lp, Duration::from_millis(10), Duration::ZERO, 0);
    /// assert!(tick.at().unwrap() > SystemTime::now() - Duration::from_millis(1));
    /// lp.run(&mut Ticks(0));
    /// tick.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub Periodic: sys::ev_periodic = sys::ev_periodic {
        active: 0,
        pending: 0,
        data: ptr::null_mut(),
        cb: None,
        at: 0.0,
        offset: 0.0,
        interval: 0.0,
        reschedule_cb: None,
    },
    sys::ev_periodic_stop
);

trampoline!(periodic_trampoline(sys::ev_periodic => Periodic, "periodic"), |h, l, token, _w, _revents| {
    h.on_periodic(l, token)
});

impl Periodic {
    /// (Re)starts the watcher to fire once, at wall-clock time `at` (at once
    /// if that has passed), reporting `token` (`ev_periodic_set(w, at, 0, 0)`).
    ///
    /// # Panics
    /// If libev holds it on another loop (stop it first).
    #[track_caller]
    pub fn start_at<H: Handler>(self: Pin<&Self>, lp: &Loop<H>, at: SystemTime, token: usize) {
        self.start(lp, to_wall(at), 0.0, token);
    }

    /// (Re)starts the watcher to fire at every wall-clock time that is `phase`
    /// past a multiple of `interval` since the Unix epoch (`interval` one hour,
    /// `phase` zero: on every full hour), reporting `token`
    /// (`ev_periodic_set(w, phase, interval, 0)`). A zero `interval` is
    /// [`Periodic::start_at`] the epoch plus `phase`.
    ///
    /// # Panics
    /// If libev holds it on another loop (stop it first).
    #[track_caller]
    pub fn start_every<H: Handler>(
        self: Pin<&Self>,
        lp: &Loop<H>,
        interval: Duration,
        phase: Duration,
        token: usize,
    ) {
        // The same schedule with the phase within one interval: libev finds the
        // next time from a quotient that loses precision with a far phase, then
        // steps one interval at a time (seconds of stepping for a tiny interval).
        let phase = match interval.as_nanos() {
            0 => phase,
            every => {
                let nanos = phase.as_nanos() % every;
                Duration::new(
                    (nanos / 1_000_000_000) as u64,
                    (nanos % 1_000_000_000) as u32,
                )
            }
        };
        self.start(lp, secs(phase), secs(interval), token);
    }

    #[track_caller]
    fn start<H: Handler>(self: Pin<&Self>, lp: &Loop<H>, offset: f64, interval: f64, token: usize) {
        self.bound.check(lp.core());
        self.stop();
        // SAFETY: inactive, not pending: libev lets us init it; pinned, so the address libev keeps stays valid until stop or drop; the callback matches the loop's H; the interval is non-negative, as libev asserts (its schedule loop stops when the interval no longer changes the time).
        unsafe {
            sys::conn_ev_periodic_init(self.raw(), periodic_trampoline::<H>, offset, interval);
            (*self.raw()).data = data(token);
            sys::ev_periodic_start(lp.raw(), self.raw());
        }
        self.bound.bind(lp.core());
    }

    /// `ev_periodic_again`: recomputes the next time from the schedule last set
    /// (after the wall clock moved, say) and starts the watcher if it is not;
    /// a no-op on a watcher never started.
    ///
    /// # Panics
    /// If libev holds it on another loop (stop it first).
    #[track_caller]
    pub fn again<H: Handler>(self: Pin<&Self>, lp: &Loop<H>) {
        self.bound.check(lp.core());
        // SAFETY: reading our own watcher's fields on its thread.
        let (offset, interval, token) = unsafe {
            let w = &*self.raw();
            if w.cb.is_none() {
                return;
            }
            (w.offset, w.interval, w.data as usize)
        };
        // ev_periodic_again is a stop and a start; the callback is written anew
        // for `lp`'s handler type.
        self.start(lp, offset, interval, token);
    }

    /// The wall-clock time it fires next (`ev_periodic_at`); `None` when inactive.
    pub fn at(&self) -> Option<SystemTime> {
        // SAFETY: reading our own watcher's field on its thread.
        self.is_active()
            .then(|| from_wall(unsafe { (*self.raw()).at }))
    }
}
