//! The smallest libev port: one loop, and per connection an `Io` watcher and
//! an idle `Timer` in a pool slot, so that nothing is allocated per connection.
//! A line echo server that says goodbye to a connection idle for too long.
//!
//! Run: `cargo run --example echo_idle -- 127.0.0.1:7000 5000` (address, idle
//! timeout in ms), then `nc 127.0.0.1 7000`.
//!
//! | C with libev                                   | here                                        |
//! |------------------------------------------------|---------------------------------------------|
//! | `struct ev_loop *l = ev_loop_new(...)`         | `Loop::new()`                               |
//! | a preallocated array of `struct conn { ev_io io; ev_timer idle; ... }` | `Pool<Conn, (Io, Timer)>`: the slots never move |
//! | `&c->io`, `&c->idle`                           | `pool.split(idx)`, then `.project()`: each watcher pinned |
//! | `ev_io_init(&c->io, cb, fd, EV_READ); c->io.data = c` | `io.set_fd(fd, Events::READ, idx)`   |
//! | `ev_io_start(l, &c->io)`                       | `io.start(&lp)?` (refuses an fd libev cannot hold) |
//! | one `cb` per watcher, casting `w->data` back   | one [`Handler`], called with the token (the slot) |
//! | `ev_timer_init(&t, cb, 0., idle); ev_timer_again` on activity | `idle.again(&lp, idle, idx)` |
//! | `ev_io_stop; ev_timer_stop; close` and back on the free list | `close`: stop both, drop the stream, `pool.release` |
//! | `ev_run(l, 0)`                                 | `lp.run(&mut server)`                       |

#![forbid(unsafe_code)]

use std::io::{self, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::Duration;

use conn_daemon::ev::{self, Events, Handler, Io, Loop, Project, Timer};
use conn_daemon::pool::Pool;

/// The listener's token; slots are numbered from 0, so they never meet it.
const LISTENER: usize = usize::MAX;
/// Connections served at once; one more waits in the kernel's backlog.
pub const CAPACITY: usize = 1024;
/// The longest line kept whole; a longer one is echoed in pieces.
const LINE_MAX: usize = 1024;

/// Each slot's watchers: the socket's readiness and the idle timeout. A tuple
/// of watchers is a slot watcher, and `project` reaches each one pinned.
type Watchers = (Io, Timer);

/// One client, in its pool slot: made once, reused by the slot's next client.
struct Conn {
    stream: Option<TcpStream>,
    /// Bytes of a line not yet ended by `\n`: `line[..len]`.
    line: [u8; LINE_MAX],
    len: usize,
}

impl Default for Conn {
    fn default() -> Self {
        Conn {
            stream: None,
            line: [0; LINE_MAX],
            len: 0,
        }
    }
}

/// Everything the callbacks need: in C, the globals or the `data` pointers.
struct Server {
    listener: TcpListener,
    pool: Pool<Conn, Watchers>,
    idle: Duration,
}

impl Handler for Server {
    fn on_io(&mut self, lp: &Loop<Self>, token: usize, _events: Events) {
        if token == LISTENER {
            self.accept_all(lp);
            return;
        }
        let idx = token as u32;
        if let Err(e) = self.echo(lp, idx) {
            if e.kind() != ErrorKind::UnexpectedEof {
                eprintln!("echo_idle: conn {idx}: {e}");
            }
            self.close(idx);
        }
    }

    fn on_timer(&mut self, _lp: &Loop<Self>, token: usize) {
        let idx = token as u32;
        if let Some(stream) = &mut self.pool.get_mut(idx).stream {
            let _ = stream.write_all(b"idle timeout\n");
        }
        self.close(idx);
    }
    // The other callbacks: not used, their no-op defaults.
}

impl Server {
    /// The listener is non-blocking and level-triggered: accept until EAGAIN.
    fn accept_all(&mut self, lp: &Loop<Self>) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => self.open(lp, stream),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: a real server pauses the listener
                    // (src/engine/connections.rs); an example just reports it.
                    eprintln!("echo_idle: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Gives `stream` a slot and starts its watchers; a client beyond the
    /// pool's capacity is closed at once (dropped).
    fn open(&mut self, lp: &Loop<Self>, stream: TcpStream) {
        if stream.set_nonblocking(true).is_err() {
            return;
        }
        let Some(idx) = self.pool.acquire() else {
            return;
        };
        let (conn, watchers) = self.pool.split(idx);
        let (io, idle) = watchers.project();
        io.set_fd(stream.as_raw_fd(), Events::READ, idx as usize);
        if io.start(lp).is_err() {
            // An fd beyond Loop::fd_limit: closed, the slot free again.
            self.pool.release(idx);
            return;
        }
        // A repeating timer, restarted on activity: the libev manual's
        // cheapest idle timeout ("ev_timer_again").
        idle.again(lp, self.idle, idx as usize);
        conn.stream = Some(stream);
        conn.len = 0;
    }

    /// Reads what is there and writes back every complete line.
    fn echo(&mut self, lp: &Loop<Self>, idx: u32) -> io::Result<()> {
        let (conn, watchers) = self.pool.split(idx);
        let stream = conn
            .stream
            .as_mut()
            .expect("a started watcher has its stream");
        loop {
            if conn.len == LINE_MAX {
                // No newline in a full buffer: echo it as it is.
                stream.write_all(&conn.line)?;
                conn.len = 0;
            }
            match stream.read(&mut conn.line[conn.len..]) {
                Ok(0) => return Err(ErrorKind::UnexpectedEof.into()),
                Ok(n) => conn.len += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if let Some(end) = conn.line[..conn.len].iter().rposition(|&b| b == b'\n') {
                // Short replies fit the socket buffer; a server with large ones
                // keeps the rest and watches Events::WRITE (see src/engine/conn.rs).
                stream.write_all(&conn.line[..=end])?;
                conn.line.copy_within(end + 1..conn.len, 0);
                conn.len -= end + 1;
            }
        }
        let (_io, idle) = watchers.project();
        idle.again(lp, self.idle, idx as usize);
        Ok(())
    }

    /// Stops the slot's watchers, closes its socket and frees the slot.
    fn close(&mut self, idx: u32) {
        let (conn, watchers) = self.pool.split(idx);
        let (io, idle) = watchers.project();
        io.stop();
        idle.stop();
        conn.stream = None;
        self.pool.release(idx);
    }
}

/// Serves `listener` until the process ends: everything per connection lives
/// in pool slots and libev's arrays reserved here, so serving allocates nothing.
pub fn serve(listener: TcpListener, idle: Duration) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    // libev's own arrays too: reserved before the first loop (process-wide).
    ev::reserve_arrays(1, CAPACITY)?;
    // Locals drop in reverse order: the watchers (here and in `server`'s pool),
    // made after the loop, are dropped, so stopped, before it; the other order
    // panics (a loop cannot be freed while watchers are started on it).
    let lp = Loop::new()?;
    let accept = Box::pin(Io::new());
    accept.set_fd(listener.as_raw_fd(), Events::READ, LISTENER);
    accept.as_ref().start(&lp)?;
    let mut server = Server {
        listener,
        pool: Pool::new(CAPACITY)?,
        idle,
    };
    lp.run(&mut server);
    Ok(())
}

#[allow(dead_code)] // tests/echo_idle_alloc.rs includes this file for `serve`.
fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args.next().unwrap_or_else(|| "127.0.0.1:7000".into());
    let idle_ms: u64 = args
        .next()
        .map_or(Ok(5000), |s| s.parse())
        .map_err(io::Error::other)?;
    let listener = TcpListener::bind(&addr)?;
    println!("listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    serve(listener, Duration::from_millis(idle_ms))
}
