//! `ev_fork`: a hook for a loop that continues in a forked child.

use super::plain_watcher;

plain_watcher!(
    /// An `ev_fork` watcher: called in the first iteration after
    /// [`Loop::fork`](super::Loop::fork), which a child process that keeps
    /// using its parent's loop calls after `fork` (libev's `ev_loop_fork`).
    ///
    /// ```
    /// use conn_daemon::ev::{Fork, Handler, Idle, Loop};
    ///
    /// struct Forked(bool);
    /// impl Handler for Forked {
    ///     fn on_fork(&mut self, _lp: &Loop<Self>, _token: usize) {
    ///         self.0 = true;
    ///     }
    ///     fn on_idle(&mut self, lp: &Loop<Self>, _token: usize) {
    ///         lp.break_all();
    ///     }
    /// }
    /// let lp = Loop::new()?;
    /// let (fork, idle) = (Box::pin(Fork::new()), Box::pin(Idle::new()));
    /// fork.as_ref().start(&lp, 0);
    /// idle.as_ref().start(&lp, 0);
    /// lp.fork(); // here in the same process, as the child would after fork()
    /// let mut forked = Forked(false);
    /// lp.run(&mut forked);
    /// assert!(forked.0);
    /// # Ok::<(), std::io::Error>(())
    /// ```
    Fork: ev_fork, conn_ev_fork_init, ev_fork_start, ev_fork_stop,
    fork_trampoline, on_fork, "fork", |_w| {}
);
