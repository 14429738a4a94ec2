//! The built-in protocol on the engine: the engine's rules on a recording
//! loop over scripted sockets (no socket, no libev, no clock), and one
//! connection's steps over a socket pair or a scripted socket.
#![forbid(unsafe_code)]

use std::io::{self, Read, Write};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use super::parser::REQUEST_MAX;
use super::{Builtin, Reason, SlowTask, RESPONSE};
use crate::engine::conn::{ConnectionCtx, Next, Release, Socket, State};
use crate::engine::{DropReason, Protocol};
use crate::engine::{Engine, Host, Interest, Settings, BACKOFF, LINGER};
use crate::metrics::{AcceptCounters, AcceptMetrics};
use crate::pool::SlotWatcher;
use crate::shutdown::Drain;
use crate::task::TaskRef;
use crate::token::TimerId;

/// Slow requests delegated, as with workers.
const DELEGATE: Builtin = Builtin::new(Some(Duration::ZERO));
const GONE: Next<Reason> = Next::Drop(DropReason::ClientGone);

mod engine {
    use super::*;
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;
    use std::rc::Rc;

    /// The client's end of one scripted connection.
    #[derive(Default)]
    struct Peer {
        inbox: RefCell<VecDeque<u8>>,
        eof: Cell<bool>,
        sent: RefCell<Vec<u8>>,
        /// The server shut its sending side.
        fin: Cell<bool>,
        closed: Cell<bool>,
    }

    impl Peer {
        fn send(&self, bytes: &[u8]) {
            self.inbox.borrow_mut().extend(bytes);
        }
    }

    struct Sock(Rc<Peer>);

    impl Socket for Sock {
        fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            let mut inbox = self.0.inbox.borrow_mut();
            if inbox.is_empty() {
                return if self.0.eof.get() {
                    Ok(0)
                } else {
                    Err(io::Error::from_raw_os_error(libc::EAGAIN))
                };
            }
            let n = buf.len().min(inbox.len());
            for (b, x) in buf.iter_mut().zip(inbox.drain(..n)) {
                *b = x;
            }
            Ok(n)
        }
        fn send_final(&self, buf: &[u8]) -> io::Result<usize> {
            self.0.sent.borrow_mut().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn shutdown_write(&self) -> io::Result<()> {
            self.0.fin.set(true);
            Ok(())
        }
        fn raw_fd(&self) -> RawFd {
            3
        }
        fn close(self) {
            assert!(!self.0.closed.replace(true), "closed twice");
        }
    }

    /// A slot watcher: what it waits for, if anything.
    #[derive(Default)]
    struct Watch(Cell<Option<Interest>>);

    impl SlotWatcher for Watch {
        fn is_active(&self) -> bool {
            self.0.get().is_some()
        }
    }

    /// A loop that records what the engine asks of it.
    #[derive(Default)]
    struct Rec {
        now: f64,
        /// When each timer fires, if armed.
        timers: [Option<f64>; TimerId::ALL.len()],
        submitted: Vec<TaskRef>,
        stopped: bool,
        /// Connections (or errors) waiting in listener 0's backlog.
        backlog: VecDeque<io::Result<Sock>>,
        has_listener: bool,
        listening: bool,
        accepts: usize,
        closes: Vec<(u32, Next<Reason>)>,
    }

    impl Host<Builtin, Sock> for Rec {
        type Watcher = Watch;
        fn now(&self) -> f64 {
            self.now
        }
        fn watch(&mut self, w: Pin<&Watch>, _fd: RawFd, interest: Interest, _slot: u32) {
            w.0.set(Some(interest));
        }
        fn unwatch(&mut self, w: Pin<&Watch>) {
            w.0.set(None);
        }
        fn start_timer(&mut self, timer: TimerId, after: f64) {
            self.timers[timer as usize] = Some(self.now + after);
        }
        fn timer_active(&self, timer: TimerId) -> bool {
            self.timers[timer as usize].is_some()
        }
        fn stop_timer(&mut self, timer: TimerId) {
            self.timers[timer as usize] = None;
        }
        fn submit(&mut self, task: TaskRef, _wait: Duration) {
            self.submitted.push(task);
        }
        fn stop(&mut self) {
            self.stopped = true;
        }
        fn listeners(&self) -> usize {
            usize::from(self.has_listener)
        }
        fn accept(&mut self, listener: usize) -> Option<io::Result<(Sock, Option<SlowTask>)>> {
            if listener > 0 || !self.has_listener {
                return None;
            }
            self.accepts += 1;
            Some(
                self.backlog
                    .pop_front()
                    .unwrap_or_else(|| Err(io::Error::from_raw_os_error(libc::EAGAIN)))
                    .map(|s| (s, None)),
            )
        }
        fn watch_listeners(&mut self) {
            self.listening = true;
        }
        fn unwatch_listeners(&mut self) {
            self.listening = false;
        }
        fn close_listeners(&mut self) {
            self.listening = false;
            self.has_listener = false;
        }
        fn closed(&mut self, slot: u32, how: Next<Reason>) {
            self.closes.push((slot, how));
        }
    }

    const FAST: &[u8] = b"GET /test/fast\r\n\r\n";
    const SLOW: &[u8] = b"GET /test/slow\r\n\r\n";
    const PARTIAL: &[u8] = b"GET /te";

    fn engine(capacity: usize, read_timeout: Option<f64>) -> (Engine<Builtin, Sock, Watch>, Rec) {
        engine_counting(capacity, read_timeout, Arc::default())
    }

    fn engine_counting(
        capacity: usize,
        read_timeout: Option<f64>,
        counters: Arc<AcceptCounters>,
    ) -> (Engine<Builtin, Sock, Watch>, Rec) {
        let e = Engine::new(
            Settings {
                id: 0,
                capacity,
                read_timeout: read_timeout.map(Duration::from_secs_f64),
                idle_timeout: None,
                shutdown_timeout: Duration::from_secs(5),
                counters,
            },
            Arc::new(DELEGATE),
        )
        .unwrap();
        let host = Rec {
            has_listener: true,
            listening: true,
            ..Rec::default()
        };
        (e, host)
    }

    /// Queues a client that has sent `bytes`; returns its end.
    fn client(host: &mut Rec, bytes: &[u8]) -> Rc<Peer> {
        let peer = Rc::new(Peer::default());
        peer.send(bytes);
        host.backlog.push_back(Ok(Sock(Rc::clone(&peer))));
        peer
    }

    fn fire(e: &mut Engine<Builtin, Sock, Watch>, host: &mut Rec, timer: TimerId) {
        let at = host.timers[timer as usize]
            .take()
            .unwrap_or_else(|| panic!("{timer:?} not armed"));
        host.now = host.now.max(at);
        e.on_timer(host, timer);
    }

    fn run_tasks(e: &mut Engine<Builtin, Sock, Watch>, host: &mut Rec) {
        for task in std::mem::take(&mut host.submitted) {
            if let Some(done) = task.run() {
                e.on_task_done(host, done);
            }
        }
    }

    #[test]
    fn a_whole_request_is_answered_and_released_without_the_loop() {
        let (mut e, mut host) = engine(4, Some(1.0));
        let peer = client(&mut host, FAST);
        e.on_listener(&mut host, 0);
        assert_eq!(&peer.sent.borrow()[..], RESPONSE);
        assert!(peer.closed.get());
        assert_eq!(host.closes, [(0, Next::Finished)]);
        assert_eq!(
            host.timers,
            [None; TimerId::ALL.len()],
            "no timer for a whole request"
        );
        assert_eq!(e.in_use(), 0);
        assert_eq!(host.accepts, 2, "accepts until EAGAIN");
        assert_eq!(e.stats().served, 1);
    }

    #[test]
    fn a_full_pool_pauses_the_listeners_once_and_a_free_slot_resumes_them() {
        let (mut e, mut host) = engine(2, Some(1.0));
        let _a = client(&mut host, PARTIAL);
        let b = client(&mut host, PARTIAL);
        let c = client(&mut host, FAST);
        e.on_listener(&mut host, 0);
        assert_eq!(e.in_use(), 2);
        assert!(!host.listening, "paused on a full pool");
        assert_eq!(
            host.accepts, 2,
            "no accept() while full: c waits in the backlog"
        );
        // A spurious wake-up while paused neither accepts nor pauses again.
        e.on_listener(&mut host, 0);
        assert_eq!(host.accepts, 2);
        // b completes its request: its slot frees and accepting resumes.
        b.send(b"st/fast\r\n\r\n");
        e.on_io(&mut host, 1, Interest::Read);
        assert!(host.listening, "resumed once a slot freed");
        e.on_listener(&mut host, 0);
        assert_eq!(&c.sent.borrow()[..], RESPONSE);
    }

    #[test]
    fn fd_exhaustion_rests_the_listeners_until_the_back_off_timer() {
        let (mut e, mut host) = engine(4, None);
        host.backlog
            .push_back(Err(io::Error::from_raw_os_error(libc::EMFILE)));
        e.on_listener(&mut host, 0);
        assert!(!host.listening);
        assert_eq!(host.timers[TimerId::Backoff as usize], Some(BACKOFF));
        fire(&mut e, &mut host, TimerId::Backoff);
        assert!(host.listening, "listening again after the back-off");
        let peer = client(&mut host, FAST);
        e.on_listener(&mut host, 0);
        assert!(peer.closed.get());
        assert_eq!(host.closes, [(0, Next::Finished)]);
    }

    #[test]
    fn the_read_deadline_is_total_fifo_and_one_timer() {
        let (mut e, mut host) = engine(4, Some(2.0));
        let a = client(&mut host, PARTIAL);
        e.on_listener(&mut host, 0);
        assert_eq!(host.timers[TimerId::Deadline as usize], Some(2.0));
        host.now = 1.0;
        let b = client(&mut host, PARTIAL);
        e.on_listener(&mut host, 0);
        // One timer, armed for the earliest deadline.
        assert_eq!(host.timers[TimerId::Deadline as usize], Some(2.0));
        // Trickled bytes do not extend a's deadline.
        host.now = 1.5;
        a.send(b"s");
        e.on_io(&mut host, 0, Interest::Read);
        fire(&mut e, &mut host, TimerId::Deadline);
        assert!(a.closed.get() && !b.closed.get());
        assert_eq!(host.closes, [(0, Next::Drop(DropReason::TimedOut))]);
        // Re-armed for b's deadline, 1 s after a's.
        assert_eq!(host.timers[TimerId::Deadline as usize], Some(3.0));
        // b finishes in time: no deadline left, the next firing finds nothing.
        b.send(b"st/fast\r\n\r\n");
        e.on_io(&mut host, 1, Interest::Read);
        fire(&mut e, &mut host, TimerId::Deadline);
        assert_eq!(host.closes.len(), 2);
        assert_eq!(host.timers[TimerId::Deadline as usize], None);
        assert_eq!(e.stats().timed_out, 1);
    }

    #[test]
    fn a_slow_request_is_answered_when_its_task_comes_back() {
        let (mut e, mut host) = engine(4, Some(1.0));
        let peer = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        assert_eq!(host.submitted.len(), 1);
        assert_eq!(host.timers[TimerId::Deadline as usize], None);
        assert!(peer.sent.borrow().is_empty());
        run_tasks(&mut e, &mut host);
        assert_eq!(&peer.sent.borrow()[..], RESPONSE);
        assert_eq!(host.closes, [(0, Next::Finished)]);
        assert_eq!(e.in_use(), 0);
    }

    #[test]
    fn a_client_gone_before_a_worker_took_its_task_frees_the_slot_and_the_task_never_runs() {
        let (mut e, mut host) = engine(4, None);
        let peer = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        peer.eof.set(true);
        e.on_io(&mut host, 0, Interest::Read);
        assert!(peer.closed.get());
        assert_eq!(host.closes, [(0, GONE)]);
        assert_eq!(e.in_use(), 0, "the queued task was withdrawn: slot free");
        // The worker pops the token and finds nothing to run.
        let token = host.submitted.pop().unwrap();
        assert!(token.claim().is_none());
    }

    #[test]
    fn a_client_gone_during_its_running_task_holds_the_slot_until_the_task_is_back() {
        let (mut e, mut host) = engine(4, None);
        let peer = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        let running = host.submitted.pop().unwrap().claim().unwrap();
        peer.eof.set(true);
        e.on_io(&mut host, 0, Interest::Read);
        assert!(peer.closed.get(), "the socket closes at once");
        assert_eq!(host.closes, [(0, GONE)]);
        assert_eq!(e.in_use(), 1, "the worker still runs the task");
        e.on_task_done(&mut host, running.run());
        assert_eq!(e.in_use(), 0);
        assert!(peer.sent.borrow().is_empty());
    }

    #[test]
    fn a_slot_reused_while_its_cancelled_token_is_queued_delegates_through_it() {
        let (mut e, mut host) = engine(1, None);
        let first = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        first.eof.set(true);
        e.on_io(&mut host, 0, Interest::Read);
        let second = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        assert_eq!(host.submitted.len(), 1, "one token in the queue, reused");
        run_tasks(&mut e, &mut host);
        assert_eq!(&second.sent.borrow()[..], RESPONSE);
        assert!(first.sent.borrow().is_empty());
        assert_eq!(e.in_use(), 0);
    }

    #[test]
    fn a_stop_drain_takes_the_backlog_closes_incomplete_and_finishes_the_rest() {
        let (mut e, mut host) = engine(4, None);
        let slow = client(&mut host, SLOW);
        let partial = client(&mut host, PARTIAL);
        e.on_listener(&mut host, 0);
        let queued = client(&mut host, FAST);
        e.begin_drain(&mut host, Drain::Stop);
        assert_eq!(&queued.sent.borrow()[..], RESPONSE, "backlog served");
        assert!(partial.closed.get() && partial.sent.borrow().is_empty());
        assert!(!host.has_listener && !host.listening, "listeners closed");
        assert!(!slow.closed.get());
        assert!(!host.stopped, "the slow request is still out");
        assert!(host.timers[TimerId::Drain as usize].is_some());
        run_tasks(&mut e, &mut host);
        assert_eq!(&slow.sent.borrow()[..], RESPONSE);
        assert!(host.stopped, "stopped when the last slot freed");
        assert!(!e.needs_loop());
    }

    #[test]
    fn a_handover_drain_leaves_the_backlog_and_finishes_incomplete_requests() {
        let (mut e, mut host) = engine(4, None);
        let partial = client(&mut host, PARTIAL);
        e.on_listener(&mut host, 0);
        let accepts = host.accepts;
        client(&mut host, FAST);
        e.begin_drain(&mut host, Drain::Handover);
        assert_eq!(host.accepts, accepts, "the backlog is the new process's");
        assert!(!partial.closed.get());
        partial.send(b"st/fast\r\n\r\n");
        e.on_io(&mut host, 0, Interest::Read);
        assert_eq!(&partial.sent.borrow()[..], RESPONSE);
        assert!(host.stopped);
    }

    #[test]
    fn the_drain_timeout_closes_what_is_left_and_stops() {
        let (mut e, mut host) = engine(4, None);
        let partial = client(&mut host, PARTIAL);
        let slow = client(&mut host, SLOW);
        e.on_listener(&mut host, 0);
        e.begin_drain(&mut host, Drain::Handover);
        fire(&mut e, &mut host, TimerId::Drain);
        assert!(partial.closed.get() && slow.closed.get());
        assert!(host.stopped);
        let shutdown: Next<Reason> = Next::Drop(DropReason::Shutdown);
        assert_eq!(host.closes, [(0, shutdown), (1, shutdown)]);
        // The queued slow task was withdrawn: nothing is left to come back.
        assert_eq!(e.in_use(), 0);
        run_tasks(&mut e, &mut host);
        assert!(slow.sent.borrow().is_empty());
    }

    #[test]
    fn a_drain_with_nothing_open_stops_at_once() {
        let (mut e, mut host) = engine(4, None);
        e.begin_drain(&mut host, Drain::Stop);
        assert!(host.stopped && !e.needs_loop());
        assert_eq!(host.timers[TimerId::Drain as usize], None);
    }

    /// The value of the first sample of `metrics` whose line starts with `series`.
    fn sample(metrics: &crate::metrics::Metrics, series: &str) -> f64 {
        let mut out = Vec::new();
        metrics
            .render(&mut out, &crate::metrics::Process::new())
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with(series))
            .unwrap_or_else(|| panic!("no {series} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    #[test]
    fn a_request_that_filled_the_buffer_lingers_until_the_client_eof() {
        let (mut e, mut host) = engine(4, Some(1.0));
        let mut bytes = b"GET /test/fast HTTP/1.1\r\nContent-Length: 5000\r\n\r\n".to_vec();
        bytes.resize(bytes.len() + 5000, b'b');
        let peer = client(&mut host, &bytes);
        e.on_listener(&mut host, 0);
        assert_eq!(&peer.sent.borrow()[..], RESPONSE);
        assert!(
            peer.fin.get() && !peer.closed.get(),
            "half-closed, lingering"
        );
        assert_eq!(e.stats().served, 1, "counted when the response went out");
        assert_eq!(host.timers[TimerId::Linger as usize], Some(LINGER));
        assert_eq!(host.timers[TimerId::Deadline as usize], None);
        // The rest of the body is read and thrown away, then the client's EOF.
        e.on_io(&mut host, 0, Interest::Read);
        assert!(peer.inbox.borrow().is_empty() && !peer.closed.get());
        peer.eof.set(true);
        e.on_io(&mut host, 0, Interest::Read);
        assert!(peer.closed.get());
        assert_eq!(host.closes, [(0, Next::Close)]);
        assert_eq!(e.in_use(), 0);
        let s = e.stats();
        assert_eq!((s.served, s.dropped), (1, 0));
    }

    #[test]
    fn a_lingering_client_that_never_closes_is_closed_at_the_bound() {
        let (mut e, mut host) = engine(4, None);
        let mut bytes = FAST.to_vec();
        bytes.resize(5000, b'b');
        let peer = client(&mut host, &bytes);
        e.on_listener(&mut host, 0);
        assert!(peer.fin.get() && !peer.closed.get());
        fire(&mut e, &mut host, TimerId::Linger);
        assert!(peer.closed.get());
        assert_eq!(host.closes, [(0, Next::Close)]);
        assert_eq!(e.stats().dropped, 0, "answered: not a drop");
        // A drain's timeout closes a lingering connection without counting it.
        let peer = client(&mut host, &bytes);
        e.on_listener(&mut host, 0);
        e.begin_drain(&mut host, Drain::Handover);
        fire(&mut e, &mut host, TimerId::Drain);
        assert!(peer.closed.get() && host.stopped);
        let s = e.stats();
        assert_eq!((s.served, s.dropped), (2, 0));
    }

    #[test]
    fn the_back_off_ends_the_exhaustion_when_accept_finds_an_empty_queue() {
        let metrics = crate::metrics::Metrics::with_labels(1, 0, Arc::default(), Builtin::labels());
        let (mut e, mut host) = engine_counting(4, None, metrics.accept_thread(0));
        let paused = r#"conn_daemon_accept_paused{thread="0",cause="fd_exhaustion"}"#;
        host.backlog
            .push_back(Err(io::Error::from_raw_os_error(libc::EMFILE)));
        e.on_listener(&mut host, 0);
        assert_eq!(sample(&metrics, paused), 1.0);
        // The fds are back, and no client comes: the back-off tries at once.
        fire(&mut e, &mut host, TimerId::Backoff);
        assert_eq!(
            sample(&metrics, paused),
            0.0,
            "paused for fds on an idle server"
        );
        assert!(host.listening);
        assert_eq!(host.timers[TimerId::Backoff as usize], None);
        // Still out of fds at the end of the back-off: paused on, not again.
        host.backlog
            .push_back(Err(io::Error::from_raw_os_error(libc::EMFILE)));
        e.on_listener(&mut host, 0);
        host.backlog
            .push_back(Err(io::Error::from_raw_os_error(libc::EMFILE)));
        fire(&mut e, &mut host, TimerId::Backoff);
        assert_eq!(sample(&metrics, paused), 1.0);
        assert!(!host.listening && host.timers[TimerId::Backoff as usize].is_some());
        let pauses = r#"conn_daemon_accept_pauses_total{thread="0",cause="fd_exhaustion"}"#;
        assert_eq!(sample(&metrics, pauses), 2.0, "one per episode");
    }

    #[test]
    fn a_drain_with_a_full_pool_pauses_once_and_serves_the_backlog_in_freed_slots() {
        let metrics = crate::metrics::Metrics::with_labels(1, 1, Arc::default(), Builtin::labels());
        let (mut e, mut host) = engine_counting(2, None, metrics.accept_thread(0));
        let slow = client(&mut host, SLOW);
        let partial = client(&mut host, PARTIAL);
        let queued = client(&mut host, FAST);
        e.on_listener(&mut host, 0);
        assert!(!host.listening, "paused: the pool is full");
        let pauses = r#"conn_daemon_accept_pauses_total{thread="0",cause="pool_full"}"#;
        assert_eq!(sample(&metrics, pauses), 1.0);
        e.begin_drain(&mut host, Drain::Stop);
        assert!(partial.closed.get() && partial.sent.borrow().is_empty());
        assert_eq!(
            &queued.sent.borrow()[..],
            RESPONSE,
            "the complete request in the backlog got the slot the drain freed"
        );
        assert_eq!(
            sample(&metrics, pauses),
            1.0,
            "the drain paused no second time"
        );
        assert!(!host.stopped);
        run_tasks(&mut e, &mut host);
        assert_eq!(&slow.sent.borrow()[..], RESPONSE);
        assert!(host.stopped);
    }

    #[test]
    fn a_drain_closes_incomplete_requests_it_takes_from_the_backlog() {
        let (mut e, mut host) = engine(1, None);
        let a = client(&mut host, PARTIAL);
        let b = client(&mut host, PARTIAL);
        let c = client(&mut host, FAST);
        e.on_listener(&mut host, 0);
        e.begin_drain(&mut host, Drain::Stop);
        assert!(a.closed.get() && b.closed.get());
        assert!(a.sent.borrow().is_empty() && b.sent.borrow().is_empty());
        assert_eq!(&c.sent.borrow()[..], RESPONSE);
        assert!(host.stopped, "nothing left");
    }
}

mod conn {
    use super::*;

    fn counters() -> AcceptMetrics {
        AcceptMetrics::new(Arc::default(), 1)
    }

    type Ctx<S = OwnedFd> = ConnectionCtx<Builtin, S>;

    /// A connection on one end of a socket pair; the test plays the client.
    fn open() -> (Ctx, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        let mut ctx: Ctx = Ctx::default();
        ctx.open(&DELEGATE, server.into());
        (ctx, client)
    }

    fn received(client: &mut UnixStream) -> Vec<u8> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = client.read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
        }
        out
    }

    #[test]
    fn whole_fast_request_is_answered_at_once() {
        let m = counters();
        let (mut ctx, mut client) = open();
        client
            .write_all(b"GET /test/fast HTTP/1.0\r\n\r\n")
            .unwrap();
        assert_eq!(ctx.on_readable(&DELEGATE, &m), Next::Finished);
        ctx.close(&DELEGATE, Release::Now);
        assert_eq!(received(&mut client), RESPONSE);
        assert_eq!(ctx.state(), State::Free);
    }

    #[test]
    fn incomplete_request_waits_then_completes() {
        let m = counters();
        let (mut ctx, mut client) = open();
        assert_eq!(
            ctx.on_readable(&DELEGATE, &m),
            Next::Read,
            "nothing there yet"
        );
        client.write_all(b"GET /test/fast\r\n").unwrap();
        assert_eq!(ctx.on_readable(&DELEGATE, &m), Next::Read);
        client.write_all(b"\r\n").unwrap();
        assert_eq!(ctx.on_readable(&DELEGATE, &m), Next::Finished);
        assert_eq!(received(&mut client), RESPONSE);
    }

    #[test]
    fn invalid_request_and_eof_drop_without_a_byte() {
        let m = counters();
        let (mut ctx, mut client) = open();
        client.write_all(b"PUT /test/fast\r\n\r\n").unwrap();
        assert_eq!(
            ctx.on_readable(&DELEGATE, &m),
            Next::Drop(DropReason::Protocol(Reason::Invalid))
        );
        ctx.close(&DELEGATE, Release::Now);
        assert_eq!(received(&mut client), b"");

        let (mut ctx, client) = open();
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(ctx.on_readable(&DELEGATE, &m), GONE);
    }

    #[test]
    fn slow_request_is_delegated_and_answered_when_done() {
        let m = counters();
        let (mut ctx, mut client) = open();
        client.write_all(b"GET /test/slow\r\n\r\n").unwrap();
        assert_eq!(ctx.on_readable(&DELEGATE, &m), Next::Delegate);
        assert_eq!(ctx.state(), State::Delegated);
        assert_eq!(ctx.on_job_done(&DELEGATE, &m, SlowTask), Next::Finished);
        assert_eq!(received(&mut client), RESPONSE);
        // Without workers a slow request is answered like a fast one.
        let (server, mut client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        let mut ctx: Ctx = Ctx::default();
        let inline = Builtin::new(None);
        ctx.open(&inline, server.into());
        client.write_all(b"GET /test/slow\r\n\r\n").unwrap();
        assert_eq!(ctx.on_readable(&inline, &m), Next::Finished);
        assert_eq!(received(&mut client), RESPONSE);
    }

    #[test]
    fn bytes_during_a_slow_task_drop_the_connection_and_abandon_the_slot() {
        let m = counters();
        let (mut ctx, mut client) = open();
        client.write_all(b"GET /test/slow\r\n\r\n").unwrap();
        assert_eq!(ctx.on_readable(&DELEGATE, &m), Next::Delegate);
        client.write_all(b"more").unwrap();
        assert_eq!(ctx.on_readable(&DELEGATE, &m), GONE);
        ctx.close(&DELEGATE, Release::AfterTask);
        assert_eq!(ctx.state(), State::Abandoned);
        assert_eq!(ctx.fd(), -1);
        // The task coming back later finds nothing to answer.
        assert_eq!(ctx.on_job_done(&DELEGATE, &m, SlowTask), GONE);
        assert_eq!(received(&mut client), b"");
    }

    /// A socket whose every call's result the test scripts: errors a real socket
    /// cannot be made to return on demand (EINTR, a short send).
    #[derive(Default)]
    struct Scripted {
        recvs: std::cell::RefCell<std::collections::VecDeque<io::Result<&'static [u8]>>>,
        sends: std::cell::RefCell<std::collections::VecDeque<io::Result<usize>>>,
        out: std::rc::Rc<std::cell::RefCell<Vec<u8>>>,
    }

    impl Socket for Scripted {
        fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
            let bytes = self
                .recvs
                .borrow_mut()
                .pop_front()
                .expect("recv scripted")?;
            buf[..bytes.len()].copy_from_slice(bytes);
            Ok(bytes.len())
        }
        fn send_final(&self, buf: &[u8]) -> io::Result<usize> {
            let n = match self.sends.borrow_mut().pop_front() {
                Some(res) => res?.min(buf.len()),
                None => buf.len(),
            };
            self.out.borrow_mut().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn shutdown_write(&self) -> io::Result<()> {
            self.out.borrow_mut().extend_from_slice(b"<FIN>");
            Ok(())
        }
        fn raw_fd(&self) -> RawFd {
            0
        }
        fn close(self) {}
    }

    fn errno(code: i32) -> io::Error {
        io::Error::from_raw_os_error(code)
    }

    #[test]
    fn interrupted_and_short_calls_resume_where_they_left_off() {
        let m = counters();
        let sock = Scripted::default();
        sock.recvs.borrow_mut().extend([
            Err(errno(libc::EINTR)),
            Ok(&b"GET /test/fast\r\n"[..]),
            Err(errno(libc::EAGAIN)),
            Ok(&b"\r\n"[..]),
        ]);
        sock.sends.borrow_mut().extend([
            Ok(10),
            Err(errno(libc::EINTR)),
            Ok(1),
            Err(errno(libc::EAGAIN)),
        ]);
        let out = std::rc::Rc::clone(&sock.out);
        let mut ctx = Ctx::<Scripted>::default();
        ctx.open(&DELEGATE, sock);
        for _ in 0..3 {
            assert_eq!(ctx.on_readable(&DELEGATE, &m), Next::Read);
        }
        // EINTR on send is retried at once; EAGAIN waits for writability.
        assert_eq!(ctx.on_readable(&DELEGATE, &m), Next::Write);
        assert_eq!(out.borrow().len(), 11);
        assert_eq!(ctx.on_writable(&DELEGATE, &m), Next::Finished);
        assert_eq!(&out.borrow()[..], RESPONSE);
    }

    #[test]
    fn a_reset_or_a_failed_send_drops_the_connection() {
        let m = counters();
        let sock = Scripted::default();
        sock.recvs
            .borrow_mut()
            .push_back(Err(errno(libc::ECONNRESET)));
        let mut ctx = Ctx::<Scripted>::default();
        ctx.open(&DELEGATE, sock);
        assert_eq!(ctx.on_readable(&DELEGATE, &m), GONE);

        let sock = Scripted::default();
        sock.recvs
            .borrow_mut()
            .push_back(Ok(&b"GET /test/fast\r\n\r\n"[..]));
        sock.sends.borrow_mut().push_back(Err(errno(libc::EPIPE)));
        ctx.close(&DELEGATE, Release::Now);
        ctx.open(&DELEGATE, sock);
        assert_eq!(ctx.on_readable(&DELEGATE, &m), GONE);
    }

    #[test]
    fn a_request_that_filled_the_buffer_lingers_after_its_response() {
        let m = counters();
        let (mut ctx, mut client) = open();
        let mut bytes = b"GET /test/fast HTTP/1.1\r\nContent-Length: 5120\r\n\r\n".to_vec();
        bytes.resize(bytes.len() + 5120, b'b');
        client.write_all(&bytes).unwrap();
        assert_eq!(
            ctx.on_readable(&DELEGATE, &m),
            Next::Linger,
            "4096 bytes read: more may wait"
        );
        assert_eq!(ctx.state(), State::Lingering);
        // The response, then EOF: the write side is shut.
        assert_eq!(received(&mut client), RESPONSE);
        // The rest of the body is thrown away; the client's EOF ends it.
        assert_eq!(ctx.on_readable(&DELEGATE, &m), Next::Read);
        client.shutdown(std::net::Shutdown::Write).unwrap();
        assert_eq!(ctx.on_readable(&DELEGATE, &m), Next::Close);
    }

    #[test]
    fn a_request_that_did_not_fill_the_buffer_does_not_linger() {
        let m = counters();
        let (mut ctx, mut client) = open();
        let mut bytes = b"GET /test/fast\r\n\r\n".to_vec();
        bytes.resize(REQUEST_MAX - 1, b'b');
        client.write_all(&bytes).unwrap();
        assert_eq!(ctx.on_readable(&DELEGATE, &m), Next::Finished);
    }

    #[test]
    fn a_full_send_buffer_waits_for_writability_and_resumes() {
        let m = counters();
        let (server, mut client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        client.set_nonblocking(true).unwrap();
        // Fill the server side's send buffer so the response cannot go out.
        let mut filler = server.try_clone().unwrap();
        let junk = [b'j'; 4096];
        while filler.write(&junk).is_ok() {}
        let mut ctx: Ctx = Ctx::default();
        ctx.open(&DELEGATE, server.into());
        client.write_all(b"GET /test/fast\r\n\r\n").unwrap();
        assert_eq!(ctx.on_readable(&DELEGATE, &m), Next::Write);
        assert_eq!(ctx.state(), State::Writing);
        // The client reads; the rest of the response then goes out whole.
        let mut got = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match client.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => match ctx.on_writable(&DELEGATE, &m) {
                    Next::Finished => break,
                    Next::Write => continue,
                    other => panic!("{other:?}"),
                },
            }
        }
        ctx.close(&DELEGATE, Release::Now);
        got.extend(received(&mut client));
        assert!(
            got.ends_with(RESPONSE),
            "response intact after a partial send"
        );
    }
}
