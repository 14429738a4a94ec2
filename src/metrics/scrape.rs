//! The `--metrics` listener: `GET /metrics` over HTTP/1.x on a thread of its own.
//!
//! One thread, one `poll`: the listener is non-blocking, and up to [`SLOTS`]
//! scrape connections are served at once, each under its own deadline, so that
//! no client can delay another's scrape. A connection that arrives when every
//! slot is taken takes the oldest one's (which is closed unanswered): a flood of
//! idle connections costs the flood, never the scraper that comes after it.
//! Every buffer is allocated when the thread starts and reused (a response that
//! outgrows its buffer grows it once); slots are taken lowest first, so
//! scrapes one after another always reuse the first one.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use socket2::Type;

use super::{Metrics, Process};
use crate::{net, os};

/// Bound on reading one scrape request, and then on writing its response.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest scrape request read; a longer one is closed unanswered.
const REQUEST_MAX: usize = 4096;
/// Scrape connections served at once.
pub const SLOTS: usize = 8;
/// Room for a response before it has to grow.
const RESPONSE_ROOM: usize = 16 * 1024;
/// How long accept rests after running out of fds or memory.
const EXHAUSTION_PAUSE: Duration = Duration::from_millis(250);
/// How often the thread asks whether it should go on accepting.
const ACCEPTING_POLL: Duration = Duration::from_millis(50);

/// How one scrape connection is answered.
enum Reply {
    Metrics,
    /// `/-/healthy`: the process answers (as Prometheus' own).
    Healthy,
    /// `/-/ready`: the process serves and is not draining after SIGTERM or
    /// SIGINT: what a balancer's check asks, instead of a request to the
    /// service port that the counters would count.
    Ready,
    NotFound,
}

/// The reply to a complete request head (`head` without its final blank line);
/// `None` for anything that is not a well-formed `GET`: such connections are
/// closed without a byte.
fn reply_to(head: &[u8]) -> Option<Reply> {
    let head = std::str::from_utf8(head).ok()?;
    let line = head.split("\r\n").next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method != "GET" || !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some(match path {
        "/metrics" => Reply::Metrics,
        "/-/healthy" => Reply::Healthy,
        "/-/ready" => Reply::Ready,
        _ => Reply::NotFound,
    })
}

/// One scrape connection and its buffers (kept when the connection goes).
struct Slot {
    stream: Option<TcpStream>,
    /// When the current step (reading, then writing) must be done by.
    deadline: Instant,
    /// When the connection was accepted: the oldest is dropped first.
    accepted: Instant,
    request: Box<[u8; REQUEST_MAX]>,
    /// Bytes of `request` read so far.
    read: usize,
    /// The response, once the request is read, and how much of it is sent.
    out: Vec<u8>,
    sent: usize,
    writing: bool,
}

impl Slot {
    fn new() -> Slot {
        let now = Instant::now();
        Slot {
            stream: None,
            deadline: now,
            accepted: now,
            request: Box::new([0; REQUEST_MAX]),
            read: 0,
            out: Vec::with_capacity(RESPONSE_ROOM),
            sent: 0,
            writing: false,
        }
    }

    fn open(&mut self, stream: TcpStream, now: Instant) {
        self.stream = Some(stream);
        self.accepted = now;
        self.deadline = now + SCRAPE_TIMEOUT;
        self.read = 0;
        self.out.clear();
        self.sent = 0;
        self.writing = false;
    }

    fn close(&mut self) {
        self.stream = None;
    }
}

/// The scrape thread's state.
struct Scraper {
    listener: TcpListener,
    metrics: Arc<Metrics>,
    process: Process,
    slots: Vec<Slot>,
    /// Whether to go on accepting (false once another process serves scrapes).
    accepting: Box<dyn Fn() -> bool + Send>,
    /// Whether `/-/ready` says so (false once a SIGTERM/SIGINT drain began).
    ready: Box<dyn Fn() -> bool + Send>,
    /// Where [`Scrapes::finish`] asks the thread to end, and hears it did.
    stage: Arc<(Mutex<Stage>, Condvar)>,
    /// Accept rests until then after running out of fds or memory.
    resting_until: Option<Instant>,
}

impl Scraper {
    fn serve(&mut self) {
        let mut fds = [libc::pollfd {
            fd: -1,
            events: 0,
            revents: 0,
        }; SLOTS + 1];
        let mut accepting = true;
        loop {
            let now = Instant::now();
            let finishing = {
                let (stage, _) = &*self.stage;
                *stage.lock().unwrap_or_else(|e| e.into_inner()) != Stage::Serving
            };
            if accepting && (finishing || !(self.accepting)()) {
                accepting = false;
            }
            if finishing && self.slots.iter().all(|s| s.stream.is_none()) {
                let (stage, ended) = &*self.stage;
                *stage.lock().unwrap_or_else(|e| e.into_inner()) = Stage::Finished;
                ended.notify_all();
                return;
            }
            let resting = self.resting_until.is_some_and(|t| now < t);
            fds[0] = pollfd(
                (accepting && !resting).then(|| self.listener.as_raw_fd()),
                libc::POLLIN,
            );
            // Not accepting, the thread still looks at `stage` now and then.
            let mut timeout = match (accepting, self.resting_until) {
                (true, Some(t)) if resting => Some(ACCEPTING_POLL.min(t - now)),
                _ => Some(ACCEPTING_POLL),
            };
            for (fd, slot) in fds[1..].iter_mut().zip(&self.slots) {
                let events = if slot.writing {
                    libc::POLLOUT
                } else {
                    libc::POLLIN
                };
                *fd = pollfd(slot.stream.as_ref().map(AsRawFd::as_raw_fd), events);
                if slot.stream.is_some() {
                    let left = slot.deadline.saturating_duration_since(now);
                    timeout = Some(timeout.map_or(left, |t| t.min(left)));
                }
            }
            if let Err(e) = os::poll(&mut fds, timeout) {
                crate::warn!("metrics: poll failed: {e}");
                thread::sleep(EXHAUSTION_PAUSE);
                continue;
            }
            for (fd, slot) in fds[1..].iter().zip(&mut self.slots) {
                if fd.fd >= 0 && fd.revents != 0 {
                    // A scraper that misbehaves costs its own connection only.
                    let ready = &*self.ready;
                    if Self::step(slot, &self.metrics, &self.process, ready).is_err() {
                        slot.close();
                    }
                }
            }
            let now = Instant::now();
            for slot in &mut self.slots {
                if slot.stream.is_some() && now >= slot.deadline {
                    slot.close();
                }
            }
            if fds[0].fd >= 0 && fds[0].revents != 0 {
                self.accept_all(now);
            }
        }
    }

    /// Takes what waits on the listener, at most one round of slots.
    fn accept_all(&mut self, now: Instant) {
        for _ in 0..SLOTS {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let free = self.slots.iter().position(|s| s.stream.is_none());
                    let i = free.unwrap_or_else(|| {
                        // Every slot taken: the oldest connection makes room.
                        let oldest = self
                            .slots
                            .iter()
                            .enumerate()
                            .min_by_key(|(_, s)| s.accepted);
                        oldest.map_or(0, |(i, _)| i)
                    });
                    self.slots[i].open(stream, now);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if net::is_resource_exhaustion(&e) => {
                    self.resting_until = Some(now + EXHAUSTION_PAUSE);
                    return;
                }
                Err(_) => {}
            }
        }
    }

    /// The connection in `slot` is readable or writable: reads what it sent,
    /// answers once the request is whole, writes what fits. Err: close it.
    fn step(
        slot: &mut Slot,
        metrics: &Metrics,
        process: &Process,
        ready: &dyn Fn() -> bool,
    ) -> io::Result<()> {
        let closed = || io::Error::from(io::ErrorKind::UnexpectedEof);
        if !slot.writing {
            let stream = slot.stream.as_mut().ok_or_else(closed)?;
            loop {
                if slot.read == REQUEST_MAX {
                    return Err(io::Error::from(io::ErrorKind::InvalidData));
                }
                match stream.read(&mut slot.request[slot.read..]) {
                    Ok(0) => return Err(closed()),
                    Ok(n) => slot.read += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
                let got = &slot.request[..slot.read];
                if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                    let reply = reply_to(&got[..end]).ok_or_else(closed)?;
                    respond(&mut slot.out, reply, metrics, process, ready)?;
                    slot.writing = true;
                    slot.deadline = Instant::now() + SCRAPE_TIMEOUT;
                    break;
                }
            }
        }
        let stream = slot.stream.as_mut().ok_or_else(closed)?;
        while slot.sent < slot.out.len() {
            match stream.write(&slot.out[slot.sent..]) {
                Ok(0) => return Err(closed()),
                Ok(n) => slot.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let _ = stream.shutdown(std::net::Shutdown::Write);
        slot.close();
        Ok(())
    }
}

/// Where the scrape thread is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Serving,
    /// Asked to take no new scrape and end once the ones it has are answered.
    Finishing,
    Finished,
}

/// The running scrape thread.
#[derive(Debug)]
pub struct Scrapes {
    stage: Arc<(Mutex<Stage>, Condvar)>,
}

impl Scrapes {
    /// Stops taking scrapes and waits, at most `bound`, until the ones taken
    /// are answered: the process exits after this, and a scrape it had taken
    /// would otherwise be cut short (after an upgrade the new process serves the
    /// same socket; its queue is the new process's to take).
    pub fn finish(self, bound: Duration) {
        let (stage, ended) = &*self.stage;
        let mut stage = stage.lock().unwrap_or_else(|e| e.into_inner());
        if *stage == Stage::Serving {
            *stage = Stage::Finishing;
        }
        let deadline = Instant::now() + bound;
        while *stage != Stage::Finished {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            stage = ended
                .wait_timeout(stage, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// A pollfd for `fd`, or one `poll` skips.
fn pollfd(fd: Option<std::os::fd::RawFd>, events: libc::c_short) -> libc::pollfd {
    libc::pollfd {
        fd: fd.unwrap_or(-1),
        events,
        revents: 0,
    }
}

/// The whole response in `out`: the head goes in front of the body in the same
/// buffer, so that it leaves in one write.
fn respond(
    out: &mut Vec<u8>,
    reply: Reply,
    metrics: &Metrics,
    process: &Process,
    ready: &dyn Fn() -> bool,
) -> io::Result<()> {
    out.clear();
    let (status, content_type) = match reply {
        Reply::Metrics => {
            metrics.render(out, process)?;
            ("200 OK", "text/plain; version=0.0.4")
        }
        Reply::Healthy => {
            out.extend_from_slice(b"conn-daemon is Healthy.\n");
            ("200 OK", "text/plain")
        }
        Reply::Ready if ready() => {
            out.extend_from_slice(b"conn-daemon is Ready.\n");
            ("200 OK", "text/plain")
        }
        Reply::Ready => {
            out.extend_from_slice(b"conn-daemon is draining.\n");
            ("503 Service Unavailable", "text/plain")
        }
        Reply::NotFound => {
            out.extend_from_slice(b"404 page not found\n");
            ("404 Not Found", "text/plain")
        }
    };
    let body = out.len();
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\
         Content-Length: {body}\r\nConnection: close\r\n\r\n"
    )?;
    let head = out.len() - body;
    out.rotate_right(head);
    Ok(())
}

/// Binds the `--metrics` listener (before any thread starts, so that a failure
/// stops the start-up). An address in use is refused, unless `beside_predecessor`:
/// an upgrade's new process binds while the old one still serves scrapes, so the
/// socket has `SO_REUSEPORT` (the kernel shares scrapes between the two until the
/// old one exits).
pub fn bind(addr: SocketAddr, beside_predecessor: bool) -> io::Result<TcpListener> {
    let sock = if beside_predecessor {
        let sock = net::bound_reuseport(addr, Type::STREAM.nonblocking().cloexec())?;
        sock.listen(64)?;
        sock
    } else {
        net::exclusive_listener(addr, Type::STREAM.nonblocking().cloexec(), 64, 0)?
    };
    Ok(sock.into())
}

/// Serves scrapes (and `/-/healthy`, `/-/ready`, which says 503 once `ready`
/// is false) on `listener` from a thread of its own, named `metrics`, off the
/// accept loops, for as long as `accepting` says so (then it finishes the
/// scrapes it has), until [`Scrapes::finish`].
pub fn serve(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    accepting: Box<dyn Fn() -> bool + Send>,
    ready: Box<dyn Fn() -> bool + Send>,
) -> io::Result<Scrapes> {
    let stage = Arc::new((Mutex::new(Stage::Serving), Condvar::new()));
    listener.set_nonblocking(true)?;
    let mut scraper = Scraper {
        listener,
        metrics,
        process: Process::new(),
        slots: (0..SLOTS).map(|_| Slot::new()).collect(),
        accepting,
        ready,
        stage: Arc::clone(&stage),
        resting_until: None,
    };
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || scraper.serve())?;
    Ok(Scrapes { stage })
}
