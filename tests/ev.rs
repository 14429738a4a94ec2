//! The safe libev wrappers on their own: io readiness, one-shot timers, and
//! `ev_async` sends from other threads coalescing into drained callbacks.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use conn_daemon::ev::{Async, Events, Handler, Io, Loop, Timer};

#[derive(Default)]
struct Record {
    io: Vec<(usize, bool)>,
    timers: Vec<usize>,
    asyncs: usize,
    drained: usize,
    queue: Arc<AtomicUsize>,
    stop_after_async: bool,
    io_watcher: Option<Pin<Box<Io>>>,
}

impl Handler for Record {
    fn on_io(&mut self, lp: &Loop<Self>, token: usize, events: Events) {
        self.io.push((token, events.is_readable()));
        if let Some(w) = &self.io_watcher {
            w.stop();
        }
        lp.break_all();
    }
    fn on_timer(&mut self, lp: &Loop<Self>, token: usize) {
        self.timers.push(token);
        lp.break_all();
    }
    fn on_async(&mut self, lp: &Loop<Self>, _token: usize) {
        self.asyncs += 1;
        // Sends coalesce: take everything that is there.
        self.drained += self.queue.swap(0, Ordering::SeqCst);
        if self.stop_after_async && self.drained == 1000 {
            lp.break_all();
        }
    }
}

#[test]
fn io_watcher_reports_readable_with_its_token() {
    let (a, mut b) = UnixStream::pair().unwrap();
    let lp = Loop::<Record>::new().unwrap();
    let mut rec = Record {
        io_watcher: Some(Box::pin(Io::new())),
        ..Default::default()
    };
    let w = rec.io_watcher.as_ref().unwrap().as_ref();
    w.set_fd(a.as_raw_fd(), Events::READ, 42);
    w.start(&lp);
    assert!(w.is_active());
    assert_eq!((w.fd(), w.events()), (a.as_raw_fd(), Events::READ));
    b.write_all(b"x").unwrap();
    lp.run(&mut rec);
    assert_eq!(rec.io, vec![(42, true)]);
    assert!(!rec.io_watcher.as_ref().unwrap().is_active());
}

#[test]
fn one_shot_timer_fires_once_and_is_inactive_after() {
    let lp = Loop::<Record>::new().unwrap();
    let timer = Box::pin(Timer::new());
    let mut rec = Record::default();
    let t0 = Instant::now();
    timer.as_ref().start_once(&lp, 0.05, 7);
    lp.run(&mut rec);
    assert_eq!(rec.timers, vec![7]);
    assert!(t0.elapsed() >= Duration::from_millis(45));
    assert!(!timer.is_active());
    // Nothing is left active, so the loop may be dropped without aborting.
}

#[test]
fn async_sends_from_other_threads_coalesce_and_drain() {
    let lp = Loop::<Record>::new().unwrap();
    let wake = Box::pin(Async::new());
    wake.as_ref().start(&lp, 0);
    let queue = Arc::new(AtomicUsize::new(0));
    let mut rec = Record {
        queue: Arc::clone(&queue),
        stop_after_async: true,
        ..Default::default()
    };
    let sender = wake.as_ref().sender();
    let senders: Vec<_> = (0..4)
        .map(|_| {
            let (queue, sender) = (Arc::clone(&queue), sender.clone());
            std::thread::spawn(move || {
                for _ in 0..250 {
                    queue.fetch_add(1, Ordering::SeqCst);
                    assert!(sender.send());
                }
            })
        })
        .collect();
    lp.run(&mut rec);
    for s in senders {
        s.join().unwrap();
    }
    assert_eq!(rec.drained, 1000);
    assert!(
        rec.asyncs >= 1 && rec.asyncs <= 1000,
        "{} callbacks",
        rec.asyncs
    );
    wake.stop();
}
