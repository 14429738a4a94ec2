//! `ev_idle`: work for when the loop has nothing else to do.

use super::plain_watcher;

plain_watcher!(
    /// An `ev_idle` watcher: called in every iteration in which no other event
    /// is pending; while one is started the loop polls without blocking, so
    /// stop it once its work is done.
    ///
    /// ```
    /// use conn_daemon::ev::{Handler, Idle, Loop};
    ///
    /// struct Work(u32);
    /// impl Handler for Work {
    ///     fn on_idle(&mut self, lp: &Loop<Self>, _token: usize) {
    ///         self.0 -= 1; // one slice of background work
    ///         if self.0 == 0 {
    ///             lp.break_all();
    ///         }
    ///     }
    /// }
    /// let lp = Loop::new()?;
    /// let idle = Box::pin(Idle::new());
    /// idle.as_ref().start(&lp, 0);
    /// lp.run(&mut Work(3));
    /// idle.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    Idle: ev_idle, conn_ev_idle_init, ev_idle_start, ev_idle_stop,
    idle_trampoline, on_idle, "idle", |_w| {}
);
