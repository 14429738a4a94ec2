//! What every libev loop hosting the engine (`engine::Engine`)
//! carries out the same way (the accept loops and `--delegate loop`'s worker
//! loops): watching a slot's fd, arming a timer, the clock, and reading an
//! event back as the engine's [`Interest`]. Each host keeps only what differs
//! (its listeners, its task queue, its wake-up).
#![forbid(unsafe_code)]

use std::os::fd::RawFd;
use std::pin::Pin;
use std::time::Duration;

use crate::engine::Interest;
use crate::ev::{Events, Handler, Io, Loop, Timer};
use crate::token::{TimerId, Token};

/// The loop's monotonic now, in the engine's seconds.
#[inline]
pub fn now<H: Handler>(lp: &Loop<H>) -> f64 {
    lp.now().as_secs_f64()
}

/// Watches `fd` for `interest` as slot `slot`; a watcher already doing exactly
/// that is left alone (libev forbids changing an active one, and a restart is a
/// system call).
#[inline]
pub fn watch<H: Handler>(lp: &Loop<H>, io: Pin<&Io>, fd: RawFd, interest: Interest, slot: u32) {
    let events = match interest {
        Interest::Read => Events::READ,
        Interest::Write => Events::WRITE,
    };
    if !io.is_active() || io.events() != events || io.fd() != fd {
        io.set_fd(fd, events, Token::Slot(slot).encode());
        io.start(lp);
    }
}

/// Arms `timer` (the engine's `id`) to fire once, `after` seconds from now; a
/// deadline already passed (negative) fires at once.
pub fn start_timer<H: Handler>(lp: &Loop<H>, timer: Pin<&Timer>, id: TimerId, after: f64) {
    let after = Duration::try_from_secs_f64(after).unwrap_or(Duration::ZERO);
    timer.start_once(lp, after, Token::Timer(id).encode());
}

/// What a slot's event asks of the engine: writing wins, as a watcher has one
/// interest at a time.
#[inline]
pub fn interest(events: Events) -> Interest {
    if events.is_writable() {
        Interest::Write
    } else {
        Interest::Read
    }
}

/// The `Host` methods every libev host of the engine has alike (the clock, a
/// slot's watcher, the engine's timers), for a host struct with `lp: &Loop<_>`
/// and `state` whose `timer(TimerId)` gives the pinned timer.
macro_rules! libev_host_basics {
    () => {
        #[inline]
        fn now(&self) -> f64 {
            $crate::ev_engine::now(self.lp)
        }

        #[inline]
        fn watch(
            &mut self,
            io: ::std::pin::Pin<&$crate::ev::Io>,
            fd: ::std::os::fd::RawFd,
            interest: $crate::engine::Interest,
            slot: u32,
        ) {
            $crate::ev_engine::watch(self.lp, io, fd, interest, slot);
        }

        #[inline]
        fn unwatch(&mut self, io: ::std::pin::Pin<&$crate::ev::Io>) {
            io.stop();
        }

        fn start_timer(&mut self, timer: $crate::token::TimerId, after: f64) {
            $crate::ev_engine::start_timer(self.lp, self.state.timer(timer), timer, after);
        }

        fn timer_active(&self, timer: $crate::token::TimerId) -> bool {
            self.state.timer(timer).is_active()
        }

        fn stop_timer(&mut self, timer: $crate::token::TimerId) {
            self.state.timer(timer).stop();
        }
    };
}
pub(crate) use libev_host_basics;
