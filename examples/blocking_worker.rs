//! A connection handed to a blocking worker (the seed README's second way to
//! delegate): the loop accepts and reads the request; a slow request's whole
//! connection leaves the loop for a worker thread, which finishes it with
//! ordinary blocking calls. Fast requests are answered on the loop.
//!
//! The protocol is the server's (docs/protocol.md): `GET /test/fast` and
//! `GET /test/slow`, one 57-byte response, then close.
//!
//! Run: `cargo run --example blocking_worker -- 127.0.0.1:7002 200` (address,
//! slow duration in ms), then `curl http://127.0.0.1:7002/test/slow`.
//!
//! The trap when a socket leaves a libev loop: stop its watcher *before* the
//! fd goes to the other thread. The worker closes it whenever it likes, and the
//! kernel may hand the same fd number to the next `accept` at once; libev must
//! not have a watcher (or a queued event) left for the old one.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use conn_daemon::ev::{Events, Handler, Io, Loop};
use conn_daemon::proto::parser::{ReqParser, Verdict, REQUEST_MAX};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
const LISTENER: usize = usize::MAX;
const WORKERS: usize = 4;

struct Conn {
    stream: TcpStream,
    io: Pin<Box<Io>>,
    buf: Vec<u8>,
    parser: ReqParser,
}

struct Server {
    listener: TcpListener,
    conns: HashMap<usize, Conn>,
    next_token: usize,
    to_workers: mpsc::Sender<TcpStream>,
}

impl Handler for Server {
    fn on_io(&mut self, lp: &Loop<Self>, token: usize, _events: Events) {
        if token == LISTENER {
            while let Ok((stream, _)) = self.listener.accept() {
                if stream.set_nonblocking(true).is_err() {
                    continue;
                }
                let token = self.next_token;
                self.next_token += 1;
                let io = Box::pin(Io::new());
                io.set_fd(stream.as_raw_fd(), Events::READ, token);
                io.as_ref().start(lp);
                let (buf, parser) = (Vec::with_capacity(REQUEST_MAX), ReqParser::new());
                self.conns.insert(
                    token,
                    Conn {
                        stream,
                        io,
                        buf,
                        parser,
                    },
                );
            }
            return;
        }
        let conn = self
            .conns
            .get_mut(&token)
            .expect("started watchers have a conn");
        match read_request(conn) {
            Ok(Verdict::Incomplete) => {} // keep watching
            Ok(Verdict::Fast) => {
                // Answered on the loop; a full socket buffer is impossible for
                // 57 bytes on a fresh connection, so the write does not block.
                let _ = conn.stream.write_all(RESPONSE);
                self.conns.remove(&token);
            }
            Ok(Verdict::Slow) => {
                // Out of the loop: remove the entry, which drops (so stops) the
                // watcher first, then give the socket away, back in blocking mode.
                let Conn { stream, io, .. } = self.conns.remove(&token).expect("present");
                drop(io);
                if stream.set_nonblocking(false).is_ok() {
                    let _ = self.to_workers.send(stream);
                }
            }
            // Invalid, too large, peer gone or an error: close without a reply.
            Ok(Verdict::Invalid | Verdict::TooLarge) | Err(_) => {
                self.conns.remove(&token);
            }
        }
    }
}

/// Reads what is there and parses the whole buffer so far.
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

/// A worker owns each connection it receives, start to end, with blocking calls.
fn worker(from_loop: Arc<Mutex<mpsc::Receiver<TcpStream>>>, slow: Duration) {
    loop {
        let Ok(mut stream) = from_loop.lock().unwrap().recv() else {
            return;
        };
        std::thread::sleep(slow);
        // docs/protocol.md rule 7: bytes or EOF from the client meanwhile mean it
        // misbehaves or left: close without a response. A peek that would block
        // means it is quietly waiting.
        let quiet = stream.set_nonblocking(true).is_ok()
            && matches!(stream.peek(&mut [0u8; 1]), Err(e) if e.kind() == ErrorKind::WouldBlock);
        if quiet && stream.set_nonblocking(false).is_ok() {
            let _ = stream.write_all(RESPONSE);
        }
        // Dropping the stream closes it; the loop no longer knows this fd.
    }
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7002".into());
    let slow_ms: u64 = args
        .next()
        .map_or(Ok(200), |s| s.parse())
        .map_err(io::Error::other)?;

    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;

    let (tx, rx) = mpsc::channel();
    let rx = Arc::new(Mutex::new(rx));
    for _ in 0..WORKERS {
        let rx = Arc::clone(&rx);
        std::thread::spawn(move || worker(rx, Duration::from_millis(slow_ms)));
    }

    let lp = Loop::new()?;
    let accept = Box::pin(Io::new());
    accept.set_fd(listener.as_raw_fd(), Events::READ, LISTENER);
    accept.as_ref().start(&lp);
    let mut server = Server {
        listener,
        conns: HashMap::new(),
        next_token: 0,
        to_workers: tx,
    };
    lp.run(&mut server);
    Ok(())
}
