//! `ev_check`: a hook after the loop waited for events.

use super::plain_watcher;

plain_watcher!(
    /// An `ev_check` watcher: called in every iteration just after the loop
    /// waited for events, before their callbacks; with
    /// [`Prepare`](super::Prepare), it brackets the wait.
    ///
    /// ```
    /// use std::time::Duration;
    /// use conn_daemon::ev::{Check, Handler, Loop, Timer};
    ///
    /// #[derive(Default)]
    /// struct Seen(Vec<&'static str>);
    /// impl Handler for Seen {
    ///     fn on_check(&mut self, _lp: &Loop<Self>, _token: usize) {
    ///         self.0.push("check");
    ///     }
    ///     fn on_timer(&mut self, lp: &Loop<Self>, _token: usize) {
    ///         self.0.push("timer");
    ///         lp.break_all();
    ///     }
    /// }
    /// let lp = Loop::new()?;
    /// let (check, timer) = (Box::pin(Check::new()), Box::pin(Timer::new()));
    /// check.as_ref().start(&lp, 0);
    /// timer.as_ref().start_once(&lp, Duration::from_millis(1), 0);
    /// let mut seen = Seen::default();
    /// lp.run(&mut seen);
    /// assert_eq!(seen.0.last(), Some(&"timer"));
    /// assert!(seen.0.contains(&"check"));
    /// check.stop();
    /// # Ok::<(), std::io::Error>(())
    /// ```
    Check: ev_check, conn_ev_check_init, ev_check_start, ev_check_stop,
    check_trampoline, on_check, "check", |_w| {}
);
