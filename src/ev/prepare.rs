//! `ev_prepare`: a hook before the loop waits for events.

use super::plain_watcher;

plain_watcher!(
    /// An `ev_prepare` watcher: called in every iteration just before the loop
    /// waits for events (to flush what callbacks batched, say); with
    /// [`Check`](super::Check), it brackets the wait.
    ///
    /// ```
    /// use std::time::Duration;
    /// use conn_daemon::ev::{Handler, Loop, Prepare, Timer};
    ///
    /// #[derive(Default)]
    /// struct Seen(Vec<&'static str>);
    /// impl Handler for Seen {
    ///     fn on_prepare(&mut self, _lp: &Loop<Self>, _token: usize) {
    ///         self.0.push("prepare");
    ///     }
    ///     fn on_timer(&mut self, lp: &Loop<Self>, _token: usize) {
    ///         self.0.push("timer");
    ///         lp.break_all();
    ///     }
    /// }
    /// let lp = Loop::new()?;
    /// let (prepare, timer) = (Box::pin(Prepare::new()), Box::pin(Timer::new()));
    /// prepare.as_ref().start(&lp, 0);
    /// timer.as_ref().start_once(&lp, Duration::from_millis(1), 0);
    /// let mut seen = Seen::default();
    /// lp.run(&mut seen);
    /// assert_eq!(seen.0[0], "prepare"); // before the wait the timer ends
    /// prepare.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    Prepare: ev_prepare, conn_ev_prepare_init, ev_prepare_start, ev_prepare_stop,
    prepare_trampoline, on_prepare, "prepare", |_w| {}
);
