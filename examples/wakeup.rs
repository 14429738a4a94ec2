//! Cross-thread wake-up: worker threads post results to the loop through a
//! lock-free queue and an `AsyncSender`; the loop drains the queue until empty,
//! because many sends coalesce into one callback.
//!
//! A line server: every line is a job that a worker "works on" (sleeps, then
//! upper-cases it); the answer goes back to the client from the loop's thread.
//! The line `stats` answers `results R wakeups W`: with several clients, W is
//! usually below R, the coalescing at work.
//!
//! Run: `cargo run --example wakeup -- 127.0.0.1:7001 50` (address, work in ms),
//! then `nc 127.0.0.1 7001`.
//!
//! The C++ habit this replaces: one `ev_async` per connection, started when its
//! job is submitted, stopped in its callback. Here there is one `Async` per loop
//! and a mailbox: the loop cannot tell from the callback *which* job finished,
//! so each result names its connection, and the loop must take everything that
//! is queued (a send while the callback runs may or may not produce another).

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use conn_daemon::ev::{Async, AsyncSender, Events, Handler, Io, Loop};
use crossbeam_queue::ArrayQueue;

const LISTENER: usize = usize::MAX;
/// Connections at once. Each has at most one job out, so a results queue of
/// this size can never be full: a worker never has to wait for the loop.
const MAX_CONNS: usize = 1024;
const WORKERS: usize = 4;

struct Job {
    token: usize,
    line: Vec<u8>,
}

struct Done {
    token: usize,
    reply: Vec<u8>,
}

struct Conn {
    stream: TcpStream,
    io: Pin<Box<Io>>,
    input: Vec<u8>,
    /// A job is out: stop reading until it is back (one job per connection).
    busy: bool,
}

struct Server {
    listener: TcpListener,
    conns: HashMap<usize, Conn>,
    next_token: usize,
    jobs: mpsc::Sender<Job>,
    results: Arc<ArrayQueue<Done>>,
    results_seen: u64,
    wakeups: u64,
}

impl Handler for Server {
    fn on_io(&mut self, lp: &Loop<Self>, token: usize, _events: Events) {
        if token == LISTENER {
            self.accept_all(lp);
        } else if self.read(token).is_err() {
            self.conns.remove(&token);
        } else {
            self.next_line(token);
        }
    }

    /// Drain until empty: one callback may stand for any number of sends.
    fn on_async(&mut self, lp: &Loop<Self>, _token: usize) {
        self.wakeups += 1;
        while let Some(done) = self.results.pop() {
            self.results_seen += 1;
            // The connection may have gone while its job was out: its token is
            // never reused here, so the result just finds nobody. (The server
            // reuses pool slots, so it also checks a generation: src/accept.rs.)
            let Some(conn) = self.conns.get_mut(&done.token) else {
                continue;
            };
            conn.busy = false;
            if conn.stream.write_all(&done.reply).is_err() {
                self.conns.remove(&done.token);
                continue;
            }
            conn.io
                .as_ref()
                .start(lp)
                .expect("the fd was watched before");
            self.next_line(done.token);
        }
    }
}

impl Server {
    fn accept_all(&mut self, lp: &Loop<Self>) {
        while let Ok((stream, _)) = self.listener.accept() {
            if self.conns.len() >= MAX_CONNS || stream.set_nonblocking(true).is_err() {
                continue; // dropped: closed
            }
            let token = self.next_token;
            self.next_token += 1;
            let io = Box::pin(Io::new());
            io.set_fd(stream.as_raw_fd(), Events::READ, token);
            if io.as_ref().start(lp).is_err() {
                continue; // an fd beyond Loop::fd_limit: closed
            }
            let conn = Conn {
                stream,
                io,
                input: Vec::new(),
                busy: false,
            };
            self.conns.insert(token, conn);
        }
    }

    fn read(&mut self, token: usize) -> io::Result<()> {
        let conn = self
            .conns
            .get_mut(&token)
            .expect("started watchers have a conn");
        let mut buf = [0u8; 4096];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => conn.input.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Submits the next complete line of `token`, if it has no job out.
    fn next_line(&mut self, token: usize) {
        let Some(conn) = self.conns.get_mut(&token) else {
            return;
        };
        if conn.busy {
            return;
        }
        let Some(end) = conn.input.iter().position(|&b| b == b'\n') else {
            return;
        };
        let line: Vec<u8> = conn.input.drain(..=end).collect();
        if line.trim_ascii() == b"stats" {
            let reply = format!("results {} wakeups {}\n", self.results_seen, self.wakeups);
            if conn.stream.write_all(reply.as_bytes()).is_err() {
                self.conns.remove(&token);
            } else {
                self.next_line(token);
            }
            return;
        }
        conn.busy = true;
        // Not reading while the job is out is what bounds the jobs in flight.
        conn.io.stop();
        let _ = self.jobs.send(Job { token, line });
    }
}

/// A worker: blocks for a job, works, posts the result, wakes the loop.
fn worker(
    jobs: Arc<Mutex<mpsc::Receiver<Job>>>,
    results: Arc<ArrayQueue<Done>>,
    wake: AsyncSender,
    work: Duration,
) {
    loop {
        let job = match jobs.lock().unwrap().recv() {
            Ok(job) => job,
            Err(_) => return, // the loop is gone
        };
        std::thread::sleep(work);
        let done = Done {
            token: job.token,
            reply: job.line.to_ascii_uppercase(),
        };
        // Cannot fail: at most MAX_CONNS jobs exist at once (see MAX_CONNS).
        assert!(
            results.push(done).is_ok(),
            "results queue sized for every job"
        );
        // Push first, then send: the loop may be draining right now, and a send
        // after the push guarantees it looks again.
        wake.send();
    }
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7001".into());
    let work_ms: u64 = args
        .next()
        .map_or(Ok(50), |s| s.parse())
        .map_err(io::Error::other)?;

    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;

    let lp = Loop::new()?;
    let accept = Box::pin(Io::new());
    accept.set_fd(listener.as_raw_fd(), Events::READ, LISTENER);
    accept.as_ref().start(&lp)?;
    // The one Async of this loop; its sender is Send + Sync + Clone.
    let wake = Box::pin(Async::new());
    wake.as_ref().start(&lp, 0);

    let results = Arc::new(ArrayQueue::new(MAX_CONNS));
    let (jobs_tx, jobs_rx) = mpsc::channel();
    let jobs_rx = Arc::new(Mutex::new(jobs_rx));
    for _ in 0..WORKERS {
        let (jobs, results, wake) = (
            Arc::clone(&jobs_rx),
            Arc::clone(&results),
            wake.as_ref().sender(),
        );
        std::thread::spawn(move || worker(jobs, results, wake, Duration::from_millis(work_ms)));
    }

    let mut server = Server {
        listener,
        conns: HashMap::new(),
        next_token: 0,
        jobs: jobs_tx,
        results,
        results_seen: 0,
        wakeups: 0,
    };
    lp.run(&mut server);
    Ok(())
}
