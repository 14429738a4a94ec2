//! `ev_child`: a child process changed state (default loop only).

use std::io;
use std::pin::Pin;
use std::ptr;

use super::{data, trampoline, watcher, Handler, Loop, WHO};
use crate::sys;

watcher!(
    /// An `ev_child` watcher: a child process exited (or, traced, stopped or
    /// continued). It stays started: a watcher for any pid (0) reports every
    /// child.
    ///
    /// libev's semantics: child watchers work on the default loop only
    /// ([`Loop::new_default`], which documents what that loop does to the
    /// process: it reaps every child on `SIGCHLD`). A child that exits before
    /// its watcher starts is still reported, in the loop's next iteration, as
    /// long as the watcher starts before that iteration.
    ///
    /// ```no_run
    /// use conn_daemon::ev::{Child, Handler, Loop};
    ///
    /// struct Exit(Option<i32>);
    /// impl Handler for Exit {
    ///     fn on_child(&mut self, lp: &Loop<Self>, _token: usize, _pid: i32, status: i32) {
    ///         self.0 = Some(libc::WEXITSTATUS(status));
    ///         lp.break_all();
    ///     }
    /// }
    /// let lp = Loop::new_default()?;
    /// let child = std::process::Command::new("false").spawn()?;
    /// let watcher = Box::pin(Child::new());
    /// watcher.as_ref().start(&lp, child.id() as i32, false, 0)?;
    /// let mut exit = Exit(None);
    /// lp.run(&mut exit);
    /// assert_eq!(exit.0, Some(1));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub Child: sys::ev_child = sys::ev_child {
        active: 0,
        pending: 0,
        data: ptr::null_mut(),
        cb: None,
        next: ptr::null_mut(),
        flags: 0,
        pid: 0,
        rpid: 0,
        rstatus: 0,
    },
    sys::ev_child_stop
);

trampoline!(child_trampoline(sys::ev_child => Child, "child"), |h, l, token, w, _revents| {
    h.on_child(l, token, (*w).rpid, (*w).rstatus)
});

impl Child {
    /// (Re)starts watching child `pid` (0: any child) on `lp` (`ev_child_set`
    /// and `ev_child_start`), reporting `token`; with `trace`, stops and
    /// continues are reported too, not only the exit.
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] if `lp` is not the default
    /// loop, or for a negative pid.
    ///
    /// # Panics
    /// If libev holds the watcher on another loop (stop it first).
    #[track_caller]
    pub fn start<H: Handler>(
        self: Pin<&Self>,
        lp: &Loop<H>,
        pid: i32,
        trace: bool,
        token: usize,
    ) -> io::Result<()> {
        self.bound.check(lp.core());
        if !lp.is_default() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{WHO}: child watchers need the default loop (Loop::new_default)"),
            ));
        }
        if pid < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{WHO}: a child watcher's pid is 0 (any) or a pid, not {pid}"),
            ));
        }
        self.stop();
        // SAFETY: inactive, not pending: libev lets us init it; pinned, so the address libev keeps stays valid until stop or drop; the callback matches the loop's H; the loop is the default one, as libev asserts.
        unsafe {
            sys::conn_ev_child_init(self.raw(), child_trampoline::<H>, pid, i32::from(trace));
            (*self.raw()).data = data(token);
            sys::ev_child_start(lp.raw(), self.raw());
        }
        self.bound.bind(lp.core());
        Ok(())
    }

    /// The pid watched (0: any).
    pub fn pid(&self) -> i32 {
        // SAFETY: reading our own watcher's field on its thread.
        unsafe { (*self.raw()).pid }
    }

    /// The pid of the last state change reported (libev's `rpid`).
    pub fn rpid(&self) -> i32 {
        // SAFETY: as `pid`.
        unsafe { (*self.raw()).rpid }
    }

    /// Its status, as `waitpid` reports it (libev's `rstatus`).
    pub fn rstatus(&self) -> i32 {
        // SAFETY: as `pid`.
        unsafe { (*self.raw()).rstatus }
    }
}
