//! The `--metrics` listener: `GET /metrics` over HTTP/1.x on a thread of its own.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use socket2::Type;

use super::{Metrics, Process};
use crate::net;

/// Bound on reading one scrape request, and on writing its response: a stalled
/// scraper holds the metrics thread at most this long.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest scrape request read; a longer one is closed unanswered.
const REQUEST_MAX: usize = 4096;

/// How one scrape connection is answered.
enum Reply {
    Metrics,
    NotFound,
}

/// Reads one request (bounded in size and time) and decides the reply; `None`
/// for anything that is not a well-formed `GET`: such connections are closed
/// without a byte.
fn read_request(stream: &mut TcpStream) -> Option<Reply> {
    let mut buf = [0u8; REQUEST_MAX];
    let mut len = 0;
    let deadline = Instant::now() + SCRAPE_TIMEOUT;
    let end = loop {
        if let Some(end) = buf[..len].windows(4).position(|w| w == b"\r\n\r\n") {
            break end;
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        if len == buf.len() || left.is_zero() {
            return None;
        }
        stream.set_read_timeout(Some(left)).ok()?;
        match stream.read(&mut buf[len..]) {
            Ok(0) | Err(_) => return None,
            Ok(n) => len += n,
        }
    };
    let head = std::str::from_utf8(&buf[..end]).ok()?;
    let line = head.split("\r\n").next()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || method != "GET" || !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    Some(if path == "/metrics" {
        Reply::Metrics
    } else {
        Reply::NotFound
    })
}

/// The scrape thread's state: its listener and one response buffer, reused.
struct Scraper {
    listener: TcpListener,
    metrics: Arc<Metrics>,
    process: Process,
    out: Vec<u8>,
}

impl Scraper {
    fn serve(&mut self) {
        loop {
            match self.listener.accept() {
                // A scraper that misbehaves costs its own connection only.
                Ok((stream, _)) => {
                    let _ = self.answer(stream);
                }
                Err(e) if net::is_resource_exhaustion(&e) => {
                    thread::sleep(Duration::from_millis(250))
                }
                Err(_) => {}
            }
        }
    }

    fn answer(&mut self, mut stream: TcpStream) -> io::Result<()> {
        stream.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
        let Some(reply) = read_request(&mut stream) else {
            return Ok(());
        };
        self.out.clear();
        let (status, content_type) = match reply {
            Reply::Metrics => {
                self.metrics.render(&mut self.out, &self.process)?;
                ("200 OK", "text/plain; version=0.0.4")
            }
            Reply::NotFound => {
                self.out.extend_from_slice(b"404 page not found\n");
                ("404 Not Found", "text/plain")
            }
        };
        // The head goes in front of the body in the same buffer, so the response
        // leaves in one write.
        let body = self.out.len();
        write!(
            self.out,
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n\
             Content-Length: {body}\r\nConnection: close\r\n\r\n"
        )?;
        let head = self.out.len() - body;
        self.out.rotate_right(head);
        stream.write_all(&self.out)?;
        stream.shutdown(std::net::Shutdown::Write)
    }
}

/// Binds the `--metrics` listener (before any thread starts, so that a failure
/// stops the start-up). An address in use is refused, unless `beside_predecessor`:
/// an upgrade's new process binds while the old one still serves scrapes, so the
/// socket has `SO_REUSEPORT` (the kernel shares scrapes between the two until the
/// old one exits).
pub fn bind(addr: SocketAddr, beside_predecessor: bool) -> io::Result<TcpListener> {
    let sock = if beside_predecessor {
        let sock = net::bound_reuseport(addr, Type::STREAM.cloexec())?;
        sock.listen(64)?;
        sock
    } else {
        net::exclusive_listener(addr, Type::STREAM.cloexec(), 64, 0)?
    };
    Ok(sock.into())
}

/// Serves scrapes on `listener` from a thread of its own, named `metrics`,
/// off the accept loops. The thread is detached: it never holds up the exit.
pub fn serve(listener: TcpListener, metrics: Arc<Metrics>) -> io::Result<()> {
    let mut scraper = Scraper {
        listener,
        metrics,
        process: Process::new(),
        out: Vec::with_capacity(16 * 1024),
    };
    thread::Builder::new()
        .name("metrics".into())
        .spawn(move || scraper.serve())
        .map(drop)
}
