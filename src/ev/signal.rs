//! `ev_signal`: a Unix signal, delivered to one loop.
//!
//! libev's signal state is process-wide: one loop per signal number at a time
//! (it asserts otherwise), a `sigaction` handler installed by the first watcher
//! of a signal and `SIG_DFL` restored when the last one stops. A registry,
//! under one lock, keeps that true for safe code: a second loop asking for a
//! signal is refused with an error, and starts and stops of one signal never
//! race between threads.

use std::io;
use std::pin::Pin;
use std::ptr;
use std::sync::Mutex;

use super::{data, trampoline, watcher, Handler, Loop, WHO};
use crate::sys;

watcher!(
    /// An `ev_signal` watcher: a signal arrived.
    ///
    /// libev's semantics, process-wide: a signal is watched by one loop at a
    /// time (a second loop is refused); starting the first watcher of a signal
    /// installs libev's handler for it, stopping the last one restores the
    /// default action (`SIG_DFL`: for most signals, the end of the process).
    /// Arrivals between two loop iterations coalesce into one callback. The
    /// signal must not be blocked in every thread (a server that reads its
    /// signals from a `signalfd`, as this one does, has no use for it).
    ///
    /// ```
    /// use conn_daemon::ev::{Handler, Loop, Signal};
    ///
    /// struct Got(bool);
    /// impl Handler for Got {
    ///     fn on_signal(&mut self, lp: &Loop<Self>, token: usize) {
    ///         self.0 = token == 3;
    ///         lp.break_all();
    ///     }
    /// }
    /// let lp = Loop::new()?;
    /// let usr2 = Box::pin(Signal::new());
    /// usr2.as_ref().start(&lp, libc::SIGUSR2, 3)?;
    /// // SAFETY: raise has no memory-safety preconditions.
    /// unsafe { libc::raise(libc::SIGUSR2) };
    /// let mut got = Got(false);
    /// lp.run(&mut got);
    /// assert!(got.0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub Signal: sys::ev_signal = sys::ev_signal {
        active: 0,
        pending: 0,
        data: ptr::null_mut(),
        cb: None,
        next: ptr::null_mut(),
        signum: 0,
    },
    signal_stop
);

trampoline!(signal_trampoline(sys::ev_signal => Signal, "signal"), |h, l, token, _w, _revents| {
    h.on_signal(l, token)
});

/// `ev_signal_stop`, keeping the registry in step.
///
/// # Safety
/// As `ev_signal_stop`: `lp` alive, `w` a watcher it holds or an inactive one.
unsafe fn signal_stop(lp: *mut sys::ev_loop, w: *mut sys::ev_signal) {
    with_registry(|reg| {
        // SAFETY: per the contract; under the registry's lock.
        unsafe {
            let (was_active, signum) = ((*w).active != 0, (*w).signum);
            sys::ev_signal_stop(lp, w);
            if was_active {
                reg.release(signum);
            }
        }
    })
}

impl Signal {
    /// Starts watching signal `signum` on `lp` (`ev_signal_set` and
    /// `ev_signal_start`), reporting `token`; if it already watches that
    /// signal there, only the token changes.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] for a number that is not a
    /// signal libev handles (or `SIGKILL`/`SIGSTOP`, which cannot be caught),
    /// and with [`io::ErrorKind::AlreadyExists`] when another loop watches the
    /// signal (for `SIGCHLD`: any loop but the default one, once that exists).
    ///
    /// # Panics
    /// If libev holds the watcher on another loop (stop it first).
    #[track_caller]
    pub fn start<H: Handler>(
        self: Pin<&Self>,
        lp: &Loop<H>,
        signum: i32,
        token: usize,
    ) -> io::Result<()> {
        self.bound.check(lp.core());
        if !(1..sys::EV_NSIG).contains(&signum)
            || signum == libc::SIGKILL
            || signum == libc::SIGSTOP
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{WHO}: {signum} is not a signal a watcher can catch"),
            ));
        }
        if self.is_active() && self.signum() == signum {
            // SAFETY: our own watcher's `data`, which libev never reads.
            unsafe { (*self.raw()).data = data(token) };
            return Ok(());
        }
        // Stopping first (another signal, or an event still queued) may restore
        // SIG_DFL for the old signal: libev's semantics, as in C.
        self.stop();
        with_registry(|reg| {
            reg.claim(signum, lp.raw())?;
            // SAFETY: inactive, not pending: libev lets us init it; pinned, so the address libev keeps stays valid until stop or drop; the callback matches the loop's H; the number is valid and no other loop holds it (the registry, under its lock), which is what libev asserts.
            unsafe {
                sys::conn_ev_signal_init(self.raw(), signal_trampoline::<H>, signum);
                (*self.raw()).data = data(token);
                sys::ev_signal_start(lp.raw(), self.raw());
            }
            Ok::<(), io::Error>(())
        })?;
        self.bound.bind(lp.core());
        Ok(())
    }

    /// The signal number set by the last `start` (0 before).
    pub fn signum(&self) -> i32 {
        // SAFETY: reading our own watcher's field on its thread.
        unsafe { (*self.raw()).signum }
    }
}

/// Which loop holds each signal, and whether the default loop exists.
#[derive(Debug)]
pub(super) struct Registry {
    /// Per signal number: the holding loop (as an address) and how many of its
    /// watchers (counting the default loop's own `SIGCHLD` watcher) hold it.
    owners: [(usize, u32); sys::EV_NSIG as usize],
    default_exists: bool,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    owners: [(0, 0); sys::EV_NSIG as usize],
    default_exists: false,
});

/// Runs `f` under the registry's lock.
pub(super) fn with_registry<R>(f: impl FnOnce(&mut Registry) -> R) -> R {
    f(&mut REGISTRY.lock().unwrap_or_else(|e| e.into_inner()))
}

impl Registry {
    /// Records one more watcher of `signum` on `lp`; refused if another loop
    /// holds the signal.
    fn claim(&mut self, signum: i32, lp: *mut sys::ev_loop) -> io::Result<()> {
        let (owner, count) = &mut self.owners[signum as usize];
        if *count > 0 && *owner != lp as usize {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{WHO}: signal {signum} is watched on another loop"),
            ));
        }
        *owner = lp as usize;
        *count += 1;
        Ok(())
    }

    /// One watcher of `signum` fewer.
    fn release(&mut self, signum: i32) {
        let (owner, count) = &mut self.owners[signum as usize];
        *count -= 1;
        if *count == 0 {
            *owner = 0;
        }
    }

    /// Reserves the default loop's place: false if it exists or another loop
    /// watches `SIGCHLD` (which the default loop starts watching).
    pub(super) fn take_default(&mut self) -> bool {
        if self.default_exists || self.owners[libc::SIGCHLD as usize].1 > 0 {
            return false;
        }
        self.default_exists = true;
        true
    }

    /// The default loop `lp` was made: it holds `SIGCHLD`.
    pub(super) fn set_default(&mut self, lp: *mut sys::ev_loop) {
        self.owners[libc::SIGCHLD as usize] = (lp as usize, 1);
    }

    /// The default loop is gone (or could not be made).
    pub(super) fn give_back_default(&mut self) {
        self.default_exists = false;
        self.owners[libc::SIGCHLD as usize] = (0, 0);
    }
}
