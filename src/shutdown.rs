//! The stop request every accept loop watches for, and how it reaches them.
//!
//! Below the accept loops and above nothing but `std`: the server hands a
//! [`Shutdown`] the loops' wake-up (ringing each loop's `ev_async`), so this
//! module knows neither the worker pool nor libev, and the signal thread
//! (`lifecycle`) asks for a drain through a [`ShutdownHandle`] without knowing
//! what it wakes.
#![forbid(unsafe_code)]

use std::fmt;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// How an accept thread stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Drain {
    /// SIGTERM/SIGINT: take what waits in the listen backlog, close the
    /// listeners (new connections are refused), close connections that have not
    /// completed a request, answer the complete ones.
    Stop,
    /// A new process serves the same sockets: stop accepting at once without
    /// touching the backlog (it is the new process's now), and finish every
    /// connection already accepted, incomplete requests included.
    Handover,
}

const RUNNING: u8 = 0;
const STOP: u8 = 1;
const HANDOVER: u8 = 2;

/// Wakes every accept loop (they then read [`Shutdown::requested`]).
type Wake = Box<dyn Fn() + Send + Sync>;

/// The stop request every loop watches for; the first request wins.
pub struct Shutdown {
    state: AtomicU8,
    wake: Wake,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("requested", &self.requested())
            .finish_non_exhaustive()
    }
}

impl Shutdown {
    /// No drain requested yet; `wake` rings every loop's wake-up (a loop that
    /// has stopped already must ignore it).
    pub fn new(wake: impl Fn() + Send + Sync + 'static) -> Shutdown {
        Shutdown {
            state: AtomicU8::new(RUNNING),
            wake: Box::new(wake),
        }
    }

    /// The requested drain, if any.
    pub fn requested(&self) -> Option<Drain> {
        match self.state.load(Ordering::SeqCst) {
            STOP => Some(Drain::Stop),
            HANDOVER => Some(Drain::Handover),
            _ => None,
        }
    }

    /// Requests `how` and wakes the loops; false if a drain was already
    /// requested (which stands).
    fn trigger(&self, how: Drain) -> bool {
        let to = match how {
            Drain::Stop => STOP,
            Drain::Handover => HANDOVER,
        };
        if self
            .state
            .compare_exchange(RUNNING, to, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return false;
        }
        (self.wake)();
        true
    }
}

/// Asks a running server to stop gracefully (what SIGTERM does).
#[derive(Clone, Debug)]
pub struct ShutdownHandle(Arc<Shutdown>);

impl ShutdownHandle {
    /// A handle on `shutdown`.
    pub fn new(shutdown: Arc<Shutdown>) -> ShutdownHandle {
        ShutdownHandle(shutdown)
    }

    /// Starts the graceful drain; later calls do nothing.
    pub fn shutdown(&self) {
        self.0.trigger(Drain::Stop);
    }

    /// Stops accepting because another process serves the listeners now;
    /// false if a drain was requested already.
    pub fn hand_over(&self) -> bool {
        self.0.trigger(Drain::Handover)
    }

    /// The requested drain, if any.
    pub fn requested(&self) -> Option<Drain> {
        self.0.requested()
    }

    /// Whether a drain of either kind was requested.
    pub fn draining(&self) -> bool {
        self.0.requested().is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn the_first_request_wins_and_wakes_once() {
        let rings = Arc::new(AtomicUsize::new(0));
        let counted = Arc::clone(&rings);
        let shutdown = Arc::new(Shutdown::new(move || {
            counted.fetch_add(1, Ordering::SeqCst);
        }));
        let handle = ShutdownHandle::new(Arc::clone(&shutdown));
        assert_eq!(shutdown.requested(), None);
        assert!(!handle.draining());
        assert!(handle.hand_over());
        handle.shutdown();
        assert!(!handle.hand_over());
        assert_eq!(shutdown.requested(), Some(Drain::Handover));
        assert_eq!(rings.load(Ordering::SeqCst), 1);
    }
}
