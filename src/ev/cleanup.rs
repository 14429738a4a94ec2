//! `ev_cleanup`: a hook for the loop's destruction.

use super::plain_watcher;

plain_watcher!(
    /// An `ev_cleanup` watcher: called as the loop is destroyed, by
    /// [`Loop::destroy`](super::Loop::destroy), which has the handler to call
    /// (a plain drop has none: while a cleanup watcher is started, dropping the
    /// loop panics like dropping it with any other watcher started). The
    /// watcher is stopped before its callback. It does not keep the loop
    /// running.
    ///
    /// ```
    /// use conn_daemon::ev::{Cleanup, Handler, Loop};
    ///
    /// struct Closed(Vec<usize>);
    /// impl Handler for Closed {
    ///     fn on_cleanup(&mut self, _lp: &Loop<Self>, token: usize) {
    ///         self.0.push(token); // release what the loop's users held
    ///     }
    /// }
    /// let cleanup = Box::pin(Cleanup::new());
    /// let lp = Loop::new()?;
    /// cleanup.as_ref().start(&lp, 9);
    /// let mut closed = Closed(vec![]);
    /// lp.destroy(&mut closed);
    /// assert_eq!(closed.0, [9]);
    /// assert!(!cleanup.is_active());
    /// # Ok::<(), std::io::Error>(())
    /// ```
    Cleanup: ev_cleanup, conn_ev_cleanup_init, ev_cleanup_start, ev_cleanup_stop,
    cleanup_trampoline, on_cleanup, "cleanup", |w| { (*w.cast::<Cleanup>()).stop() }
);
