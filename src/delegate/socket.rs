//! `--delegate socket`: blocking workers that own the connection.
//!
//! The accept loop has stopped watching the fd and freed its pool slot; from the
//! [`Handoff`] on, the worker is the only one to touch the socket. For each
//! connection it: waits the job's wait ([`Protocol::job_wait`]) in `poll` on the
//! socket's input, so that rule 7 applies at once (bytes or EOF close the
//! connection with no response, and free the worker, the moment they arrive);
//! runs the job and has the protocol build the response
//! ([`Protocol::on_job_done`], on a fresh connection state); sends it with
//! blocking semantics, but bounded by a write deadline: the socket stays
//! non-blocking, and a send that would block waits in `poll` for at most what
//! is left of the deadline, so a client that never reads holds a worker for the
//! deadline and no longer; closes.
//!
//! Public so that the fuzz target `handover` can drive [`answer`] over a
//! scripted [`WorkerSocket`].
#![forbid(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{HandOffQueues, Handoff};
use crate::engine::{Buffer, DropReason, Label, Never, Output, Protocol, Step};
use crate::metrics::{AcceptCounters, AcceptMetrics};
use crate::{debug, net};

/// How one connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The response went out whole.
    Answered,
    /// Closed without a (whole) response, for one of the engine's reasons.
    Dropped(DropReason<Never>),
    /// Closed without a response, for a reason of the protocol's (counted).
    Refused,
}

/// The socket calls a blocking worker makes (a trait so that the steps can be
/// driven over a scripted socket).
pub trait WorkerSocket {
    /// Waits at most `timeout` for bytes, EOF or an error to arrive; false if
    /// none did (zero: whether they are waiting, without waiting).
    fn wait_input(&self, timeout: Duration) -> io::Result<bool>;
    /// As `send(2)` of the last bytes ever sent (no `SIGPIPE`).
    fn send_final(&self, buf: &[u8]) -> io::Result<usize>;
    /// Waits at most `timeout` for the socket to take bytes; false on timeout.
    fn wait_writable(&self, timeout: Duration) -> io::Result<bool>;
}

impl WorkerSocket for OwnedFd {
    fn wait_input(&self, timeout: Duration) -> io::Result<bool> {
        let ready = net::poll_one(
            self.as_fd(),
            libc::POLLIN | libc::POLLRDHUP,
            poll_ms(timeout),
        )?;
        Ok(ready != 0)
    }

    fn send_final(&self, buf: &[u8]) -> io::Result<usize> {
        net::send_final(self.as_fd(), buf)
    }

    fn wait_writable(&self, timeout: Duration) -> io::Result<bool> {
        let ready = net::poll_one(self.as_fd(), libc::POLLOUT, poll_ms(timeout))?;
        Ok(ready != 0)
    }
}

/// `timeout` as `poll`'s milliseconds, rounded up so that a wait never returns
/// before its deadline.
fn poll_ms(timeout: Duration) -> i32 {
    timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as i32
}

/// The job's wait of `slow`, rule 7 applied all along: `Err` with the client
/// gone as soon as bytes, EOF or an error arrive, `Ok` once the whole duration
/// passed quietly (one `poll`, when nothing comes and no signal interrupts it).
pub fn work(sock: &impl WorkerSocket, slow: Duration) -> Result<(), Outcome> {
    let gone = Err(Outcome::Dropped(DropReason::ClientGone));
    let deadline = Instant::now() + slow;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sock.wait_input(left) {
            Ok(true) => return gone,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(_) => return gone,
            Ok(false) if Instant::now() >= deadline => return Ok(()),
            Ok(false) => {}
        }
    }
}

/// Sends `response` under `write_deadline` (measured from now): what the
/// worker does once the job is done.
pub fn answer(sock: &impl WorkerSocket, response: &[u8], write_deadline: Duration) -> Outcome {
    let deadline = Instant::now() + write_deadline;
    let mut sent = 0;
    while sent < response.len() {
        match sock.send_final(&response[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    return Outcome::Dropped(DropReason::TimedOut);
                }
                match sock.wait_writable(left) {
                    Ok(_) => {}
                    Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                    Err(_) => return Outcome::Dropped(DropReason::ClientGone),
                }
            }
            Err(_) => return Outcome::Dropped(DropReason::ClientGone),
        }
    }
    Outcome::Answered
}

/// What a blocking worker is told at start-up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The worker's number (`worker-N`).
    pub id: usize,
    /// Bound on sending the response.
    pub write_timeout: Duration,
    /// The worker's counters (responses and drops, as an accept thread's).
    pub counters: Arc<AcceptCounters>,
}

/// The body of blocking worker `settings.id`: serves queued connections with
/// `proto` until the hand-off stops and its queue is empty.
pub fn run<P: Protocol>(queues: &HandOffQueues<P::Job>, settings: Settings, proto: &P) {
    let mut metrics = AcceptMetrics::new(Arc::clone(&settings.counters), 1);
    // The worker's one connection state and output area, made once.
    let mut conn = P::Conn::default();
    let mut area = Box::new(P::WriteBuffer::zeroed());
    while let Some(Handoff {
        fd,
        mut job,
        owner,
        at,
    }) = queues.next_socket()
    {
        metrics.accepted();
        let outcome = if queues.past_drain_deadline() {
            Outcome::Dropped(DropReason::Shutdown)
        } else {
            let worked = work(&fd, proto.job_wait(&job));
            // The histogram's time: from the hand-off to the end of the wait.
            metrics.delegated();
            metrics.task_back(at.elapsed().as_secs_f64());
            match worked {
                Ok(()) => {
                    proto.run_job(&mut job);
                    proto.open(&mut conn);
                    let (mut len, mut fixed) = (0, &[][..]);
                    let mut out = Output::new(area.bytes_mut(), &mut len, &mut fixed);
                    let step = proto.on_job_done(&mut conn, job, &mut out);
                    let response = if fixed.is_empty() {
                        &area.bytes()[..len]
                    } else {
                        fixed
                    };
                    let outcome = match step {
                        Step::Respond { kind, .. } => {
                            match answer(&fd, response, settings.write_timeout) {
                                Outcome::Answered => {
                                    metrics.responded(kind.index(), 1);
                                    Outcome::Answered
                                }
                                dropped => dropped,
                            }
                        }
                        Step::Drop { reason, .. } => {
                            metrics.dropped(DropReason::Protocol(reason).slot());
                            Outcome::Refused
                        }
                        // A closing protocol sends what it wrote; reading on
                        // is not a blocking worker's.
                        _ => match answer(&fd, response, settings.write_timeout) {
                            Outcome::Answered => Outcome::Refused,
                            other => other,
                        },
                    };
                    proto.close(&mut conn);
                    outcome
                }
                Err(left) => left,
            }
        };
        if let Outcome::Dropped(reason) = outcome {
            metrics.dropped(reason.slot());
        }
        debug!(
            "worker-{}: connection of accept-{owner}: {outcome:?}",
            settings.id
        );
        net::close(fd);
        queues.release(0, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    use std::thread;

    /// A response of the test's (not a protocol's).
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

    fn pair() -> (OwnedFd, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        (server.into(), client)
    }

    #[test]
    fn a_quiet_client_gets_the_response() {
        let (server, mut client) = pair();
        assert_eq!(
            answer(&server, REPLY, Duration::from_secs(1)),
            Outcome::Answered
        );
        drop(server);
        let mut got = Vec::new();
        client.read_to_end(&mut got).unwrap();
        assert_eq!(got, REPLY);
    }

    #[test]
    fn a_quiet_client_waits_the_whole_work() {
        let (server, _client) = pair();
        let start = Instant::now();
        assert_eq!(work(&server, Duration::from_millis(100)), Ok(()));
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(100), "{took:?}");
    }

    /// Bytes or EOF arriving during the work end it at once (rule 7), not
    /// when the work would have ended: the worker is free for the next one.
    #[test]
    fn bytes_or_eof_during_the_work_end_it_at_once() {
        let gone = Err(Outcome::Dropped(DropReason::ClientGone));
        // Already there when the work starts.
        let (server, mut client) = pair();
        client.write_all(b"x").unwrap();
        assert_eq!(work(&server, Duration::ZERO), gone);
        // Arriving 100 ms into a 5 s work: bytes, then EOF.
        for eof in [false, true] {
            let (server, mut client) = pair();
            let late = thread::spawn(move || {
                thread::sleep(Duration::from_millis(100));
                if eof {
                    client.shutdown(std::net::Shutdown::Write).unwrap();
                } else {
                    client.write_all(b"more bytes").unwrap();
                }
                client
            });
            let start = Instant::now();
            assert_eq!(work(&server, Duration::from_secs(5)), gone, "eof: {eof}");
            let took = start.elapsed();
            assert!(took >= Duration::from_millis(100), "eof {eof}: {took:?}");
            assert!(took < Duration::from_secs(2), "eof {eof}: {took:?}");
            drop(late.join().unwrap());
        }
    }

    /// A client that never reads: the send buffer is full (the test filled it,
    /// which a short response over TCP never could), so the send would block; the worker
    /// gives up at the deadline instead of waiting forever.
    #[test]
    fn a_client_that_never_reads_holds_the_worker_only_until_the_deadline() {
        let (server, _client) = pair();
        let filler = [0u8; 4096];
        while net::send_final(server.as_fd(), &filler).is_ok() {}
        let start = Instant::now();
        let outcome = answer(&server, REPLY, Duration::from_millis(200));
        let took = start.elapsed();
        assert_eq!(outcome, Outcome::Dropped(DropReason::TimedOut));
        assert!(took >= Duration::from_millis(200), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    /// A scripted socket: EINTR, short sends and would-block that a real socket
    /// does not produce on demand.
    struct Scripted {
        sends: std::cell::RefCell<Vec<io::Result<usize>>>,
        out: std::cell::RefCell<Vec<u8>>,
        waits: std::cell::Cell<usize>,
    }

    impl WorkerSocket for Scripted {
        fn wait_input(&self, _timeout: Duration) -> io::Result<bool> {
            Ok(false)
        }
        fn send_final(&self, buf: &[u8]) -> io::Result<usize> {
            let next = self.sends.borrow_mut().pop();
            let n = match next {
                Some(r) => r?.min(buf.len()),
                None => buf.len(),
            };
            self.out.borrow_mut().extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn wait_writable(&self, _timeout: Duration) -> io::Result<bool> {
            self.waits.set(self.waits.get() + 1);
            Ok(true)
        }
    }

    #[test]
    fn short_interrupted_and_blocked_sends_resume_where_they_left_off() {
        let errno = io::Error::from_raw_os_error;
        let sock = Scripted {
            // Popped from the end.
            sends: std::cell::RefCell::new(vec![
                Ok(3),
                Err(errno(libc::EAGAIN)),
                Err(errno(libc::EINTR)),
                Ok(10),
            ]),
            out: Default::default(),
            waits: Default::default(),
        };
        assert_eq!(
            answer(&sock, REPLY, Duration::from_secs(1)),
            Outcome::Answered
        );
        assert_eq!(&sock.out.borrow()[..], REPLY);
        assert_eq!(sock.waits.get(), 1);
    }
}
