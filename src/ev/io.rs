//! `ev_io`: readiness of one fd.

use std::io;
use std::os::fd::RawFd;
use std::pin::Pin;
use std::ptr;

use super::{data, trampoline, watcher, Events, Handler, Loop};
use crate::sys;

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
    /// io.as_ref().start(&lp)?;
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

trampoline!(io_trampoline(sys::ev_io => Io, "io"), |h, l, token, _w, revents| {
    h.on_io(l, token, Events(revents))
});

impl Io {
    /// `ev_io_set`: points the watcher at `fd` for `events`, reporting `token`;
    /// stops it first if needed (libev forbids changing a started watcher).
    /// The fd is checked when the watcher starts.
    pub fn set_fd(&self, fd: RawFd, events: Events, token: usize) {
        self.stop();
        // SAFETY: the watcher is inactive; the shim only writes its fields.
        unsafe {
            sys::conn_ev_io_set(self.raw(), fd, events.0 & (sys::EV_READ | sys::EV_WRITE));
            (*self.raw()).data = data(token);
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

    /// Starts watching on `lp` (`ev_io_start`); a no-op if already started there.
    ///
    /// Fails, and libev never sees the fd, with `EBADF` for a negative fd (none
    /// set yet) and with `EMFILE` for an fd at or above [`Loop::fd_limit`].
    ///
    /// # Panics
    /// If libev holds the watcher on another loop (stop it first).
    #[track_caller]
    pub fn start<H: Handler>(self: Pin<&Self>, lp: &Loop<H>) -> io::Result<()> {
        self.bound.check(lp.core());
        if self.is_active() {
            return Ok(());
        }
        let fd = self.fd();
        if fd < 0 {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if fd >= lp.fd_limit() {
            return Err(io::Error::from_raw_os_error(libc::EMFILE));
        }
        // Not active but maybe still holding a queued event (an EV_ERROR): drop it.
        self.stop();
        // The callback (libev's `ev_set_cb`) is written here, not in `set_fd`,
        // because only the loop tells which handler type it dispatches to.
        // SAFETY: pinned, so the address libev keeps stays valid until `stop` or drop (which stops it); the callback matches the loop's H; the fd is within what libev's arrays may grow to.
        unsafe {
            (*self.raw()).cb = Some(io_trampoline::<H>);
            sys::ev_io_start(lp.raw(), self.raw());
        }
        self.bound.bind(lp.core());
        Ok(())
    }
}
