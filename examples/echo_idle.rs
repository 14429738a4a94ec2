//! The smallest libev port: one loop, `Io` watchers and a `Timer` per connection.
//! A line echo server that says goodbye to a connection idle for too long.
//!
//! Run: `cargo run --example echo_idle -- 127.0.0.1:7000 5000` (address, idle
//! timeout in ms), then `nc 127.0.0.1 7000`.
//!
//! | C with libev                                   | here                                        |
//! |------------------------------------------------|---------------------------------------------|
//! | `struct ev_loop *l = ev_loop_new(...)`         | `Loop::new()`                               |
//! | `ev_io_init(&w, cb, fd, EV_READ); w.data = c`  | `io.set_fd(fd, Events::READ, token)`        |
//! | `ev_io_start(l, &w)`                           | `io.as_ref().start(&lp)`                    |
//! | one `cb` per watcher, casting `w->data` back   | one [`Handler`], called with the token      |
//! | `ev_timer_init(&t, cb, 0., idle); ev_timer_again` on activity | `timer.as_ref().again(&lp, idle, token)` |
//! | `ev_io_stop; ev_timer_stop; close; free(c)`    | drop the `Conn`: a dropped watcher stops    |
//! | `ev_run(l, 0)`                                 | `lp.run(&mut server)`                       |

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::time::Duration;

use conn_daemon::ev::{Events, Handler, Io, Loop, Timer};

/// The listener's token; connections count up from 0, so they never meet it.
const LISTENER: usize = usize::MAX;

/// One client. The watchers are boxed and pinned because libev keeps their
/// address while they are started (the C code would `malloc` the struct).
struct Conn {
    stream: TcpStream,
    io: Pin<Box<Io>>,
    idle: Pin<Box<Timer>>,
    /// Bytes of a line not yet ended by `\n`.
    partial: Vec<u8>,
}

/// Everything the callbacks need: in C, the globals or the `data` pointers.
struct Server {
    listener: TcpListener,
    conns: HashMap<usize, Conn>,
    next_token: usize,
    idle: Duration,
}

impl Handler for Server {
    fn on_io(&mut self, lp: &Loop<Self>, token: usize, _events: Events) {
        if token == LISTENER {
            self.accept_all(lp);
        } else if let Err(e) = self.echo(lp, token) {
            if e.kind() != ErrorKind::UnexpectedEof {
                eprintln!("echo_idle: conn {token}: {e}");
            }
            // Dropping the connection stops its watchers, then closes the socket.
            self.conns.remove(&token);
        }
    }

    fn on_timer(&mut self, _lp: &Loop<Self>, token: usize) {
        // The idle timer repeats, so it is still active here: dropping stops it.
        if let Some(mut conn) = self.conns.remove(&token) {
            let _ = conn.stream.write_all(b"idle timeout\n");
        }
    }
    // on_async: not used, the no-op default.
}

impl Server {
    /// The listener is non-blocking and level-triggered: accept until EAGAIN.
    fn accept_all(&mut self, lp: &Loop<Self>) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let token = self.next_token;
                    self.next_token += 1;
                    let conn = Conn {
                        io: Box::pin(Io::new()),
                        idle: Box::pin(Timer::new()),
                        partial: Vec::new(),
                        stream,
                    };
                    conn.io.set_fd(conn.stream.as_raw_fd(), Events::READ, token);
                    conn.io.as_ref().start(lp);
                    // A repeating timer, restarted on activity: the libev
                    // manual's cheapest idle timeout ("ev_timer_again").
                    conn.idle.as_ref().again(lp, self.idle, token);
                    self.conns.insert(token, conn);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: a real server pauses the listener
                    // (src/accept.rs); an example just reports it.
                    eprintln!("echo_idle: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Reads what is there and writes back every complete line.
    fn echo(&mut self, lp: &Loop<Self>, token: usize) -> io::Result<()> {
        let conn = self
            .conns
            .get_mut(&token)
            .expect("a started watcher has its conn");
        let mut buf = [0u8; 4096];
        loop {
            match conn.stream.read(&mut buf) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => conn.partial.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if let Some(end) = conn.partial.iter().rposition(|&b| b == b'\n') {
            // Short replies fit the socket buffer; a server with large ones keeps
            // the rest and watches Events::WRITE (see src/engine/conn.rs).
            conn.stream.write_all(&conn.partial[..=end])?;
            conn.partial.drain(..=end);
        }
        conn.idle.as_ref().again(lp, self.idle, token);
        Ok(())
    }
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7000".into());
    let idle_ms: u64 = args
        .next()
        .map_or(Ok(5000), |s| s.parse())
        .map_err(io::Error::other)?;

    let listener = TcpListener::bind(&addr)?;
    listener.set_nonblocking(true)?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;

    // Locals drop in reverse order: the watchers (here and in `server`), made
    // after the loop, are dropped, so stopped, before it. The other order aborts:
    // a loop cannot be freed while watchers are started on it.
    let lp = Loop::new()?;
    let accept = Box::pin(Io::new());
    accept.set_fd(listener.as_raw_fd(), Events::READ, LISTENER);
    accept.as_ref().start(&lp);
    let mut server = Server {
        listener,
        conns: HashMap::new(),
        next_token: 0,
        idle: Duration::from_millis(idle_ms),
    };
    lp.run(&mut server);
    Ok(())
}
