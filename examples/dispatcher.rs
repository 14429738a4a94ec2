//! A dispatcher feeding worker loops (the seed README's third way to delegate):
//! one loop only accepts, and hands each connection to one of several worker
//! threads that run loops of their own; a worker loop owns its connections from
//! then on, asynchronously. A slow request waits on a timer of its worker loop,
//! so one worker loop serves many slow requests at once without blocking.
//!
//! Hand-off: a bounded lock-free mailbox per worker loop plus that loop's one
//! `AsyncSender`, the same wake-up as in `examples/wakeup.rs`.
//!
//! Run: `cargo run --example dispatcher -- 127.0.0.1:7003 200` (address, slow
//! duration in ms), then `curl http://127.0.0.1:7003/test/fast`.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use conn_daemon::ev::{Async, AsyncSender, Events, Handler, Io, Loop, Timer};
use conn_daemon::proto::parser::{ReqParser, Verdict, REQUEST_MAX};
use crossbeam_queue::ArrayQueue;

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
const WORKER_LOOPS: usize = 2;
/// Connections waiting in one mailbox; when it is full the dispatcher closes
/// the newcomer (the real server pauses accepting instead).
const MAILBOX: usize = 1024;

/// What the dispatcher knows of a worker loop.
struct Remote {
    mailbox: Arc<ArrayQueue<TcpStream>>,
    wake: AsyncSender,
}

/// The accepting loop's handler.
struct Dispatcher {
    listener: TcpListener,
    workers: Vec<Remote>,
    next: usize,
}

impl Handler for Dispatcher {
    fn on_io(&mut self, _lp: &Loop<Self>, _token: usize, _events: Events) {
        while let Ok((stream, _)) = self.listener.accept() {
            // Round robin; the kernel's SO_REUSEPORT balancing is the other way
            // (the server's: one listener per loop, no dispatcher at all).
            let remote = &self.workers[self.next % self.workers.len()];
            self.next += 1;
            if remote.mailbox.push(stream).is_ok() {
                remote.wake.send();
            }
        }
    }
}

struct Conn {
    stream: TcpStream,
    /// Never read: owning it is the watch (dropping the conn stops it).
    _io: Pin<Box<Io>>,
    slow: Pin<Box<Timer>>,
    buf: Vec<u8>,
    parser: ReqParser,
}

/// A worker loop's handler: everything the single-loop examples do, for the
/// connections the dispatcher gave it.
struct WorkerLoop {
    mailbox: Arc<ArrayQueue<TcpStream>>,
    conns: HashMap<usize, Conn>,
    next_token: usize,
    slow: Duration,
}

impl Handler for WorkerLoop {
    /// New connections: drain the mailbox (sends coalesce).
    fn on_async(&mut self, lp: &Loop<Self>, _token: usize) {
        while let Some(stream) = self.mailbox.pop() {
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            let token = self.next_token;
            self.next_token += 1;
            let io = Box::pin(Io::new());
            // The dispatcher accepted it because it was readable (or will be):
            // watch it here; the first callback reads.
            io.set_fd(stream.as_raw_fd(), Events::READ, token);
            io.as_ref().start(lp);
            let conn = Conn {
                stream,
                _io: io,
                slow: Box::pin(Timer::new()),
                buf: Vec::with_capacity(REQUEST_MAX),
                parser: ReqParser::new(),
            };
            self.conns.insert(token, conn);
        }
    }

    fn on_io(&mut self, lp: &Loop<Self>, token: usize, _events: Events) {
        let conn = self
            .conns
            .get_mut(&token)
            .expect("started watchers have a conn");
        if conn.slow.is_active() {
            // Bytes (or EOF) while the slow request waits: the protocol says
            // close (docs/protocol.md); dropping stops the timer too.
            self.conns.remove(&token);
            return;
        }
        match read_request(conn) {
            Ok(Verdict::Incomplete) => {}
            Ok(Verdict::Fast) => {
                let _ = conn.stream.write_all(RESPONSE);
                self.conns.remove(&token);
            }
            Ok(Verdict::Slow) => {
                // Keep watching for reads to notice a client that leaves.
                conn.slow.as_ref().start_once(lp, self.slow, token);
            }
            Ok(Verdict::Invalid | Verdict::TooLarge) | Err(_) => {
                self.conns.remove(&token);
            }
        }
    }

    fn on_timer(&mut self, _lp: &Loop<Self>, token: usize) {
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = conn.stream.write_all(RESPONSE);
        }
    }
}

fn read_request(conn: &mut Conn) -> io::Result<Verdict> {
    let mut chunk = [0u8; 1024];
    loop {
        match conn.stream.read(&mut chunk) {
            Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
            Ok(n) => {
                conn.buf.extend_from_slice(&chunk[..n]);
                let verdict = conn.parser.parse(&conn.buf);
                if verdict != Verdict::Incomplete {
                    return Ok(verdict);
                }
            }
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(Verdict::Incomplete),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// A worker thread: its loop and its `Async` live here (both are `!Send`);
/// only the sender travels back to the dispatcher.
fn worker_thread(slow: Duration, announce: mpsc::Sender<io::Result<Remote>>) {
    let setup = Loop::<WorkerLoop>::new();
    let lp = match setup {
        Ok(lp) => lp,
        Err(e) => return announce.send(Err(e)).unwrap_or(()),
    };
    let wake = Box::pin(Async::new());
    wake.as_ref().start(&lp, 0);
    let mailbox = Arc::new(ArrayQueue::new(MAILBOX));
    let remote = Remote {
        mailbox: Arc::clone(&mailbox),
        wake: wake.as_ref().sender(),
    };
    if announce.send(Ok(remote)).is_err() {
        return;
    }
    let mut handler = WorkerLoop {
        mailbox,
        conns: HashMap::new(),
        next_token: 0,
        slow,
    };
    // The Async stays started, so this runs for the life of the process.
    lp.run(&mut handler);
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7003".into());
    let slow_ms: u64 = args
        .next()
        .map_or(Ok(200), |s| s.parse())
        .map_err(io::Error::other)?;

    let (tx, rx) = mpsc::channel();
    for _ in 0..WORKER_LOOPS {
        let tx = tx.clone();
        std::thread::spawn(move || worker_thread(Duration::from_millis(slow_ms), tx));
    }
    let workers = (0..WORKER_LOOPS)
        .map(|_| rx.recv().map_err(io::Error::other)?)
        .collect::<io::Result<Vec<Remote>>>()?;

    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;

    let lp = Loop::new()?;
    let accept = Box::pin(Io::new());
    accept.set_fd(listener.as_raw_fd(), Events::READ, 0);
    accept.as_ref().start(&lp);
    let mut dispatcher = Dispatcher {
        listener,
        workers,
        next: 0,
    };
    lp.run(&mut dispatcher);
    Ok(())
}
