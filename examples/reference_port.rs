//! A C++-faithful port of the reference's `main.cc` (upstream `server-demo`),
//! to read side by side with it: the same classes under the same names, the
//! same methods in the same order, the crate's safe libev layer where the C++
//! calls libev. No operations features (no deadlines, drain, metrics, signals);
//! where the reference is wrong (docs/protocol.md, "What the reference gets
//! wrong"), a comment says so and this port does the harmless thing.
//!
//! Run: `cargo run --example reference_port -- -p 9000 -A 2 -w 2 -C 1000 -D 30`
//! (the reference's short options; this port listens on 127.0.0.1, the
//! reference on 0.0.0.0), then `curl http://127.0.0.1:9000/test/slow`.
//!
//! | main.cc                                   | here                                          |
//! |-------------------------------------------|-----------------------------------------------|
//! | `ThreadPool thread_pool` (mutex + deque)  | `ThreadPool`: a channel of `TaskRef`s         |
//! | `class ReqParser`, `Status`               | `conn_daemon::proto::parser::ReqParser`, `Verdict`   |
//! | `class SlowTask : public Task`            | `SlowTask: Task`, stored in the slot's `TaskHolder` |
//! | `class ConnectionCtx : public OnPool<..>` | `ConnectionCtx` in a `Pool<ConnectionCtx>` slot |
//! | `new (*pool) ConnectionCtx(...)`, `delete this` | `pool.acquire()`, `AcceptTask::delete`  |
//! | `ev_async async_watcher` per connection   | one `Async` per loop and a mailbox of `Done`s |
//! | `class AcceptTask : public Task`          | `AcceptTask`, the loop's `Handler`            |
//! | `ev_invoke(loop, &accept_watcher, EV_READ)` | calling the callback (`accept_conn`)        |
//! | `throw Errno(...)` through libev          | `io::Result` back to the callback, handled there |

use std::io::{self, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;

use conn_daemon::ev::{Async, AsyncSender, Events, Handler, Io, Loop};
use conn_daemon::pool::Pool;
use conn_daemon::proto::parser::{ReqParser, Verdict, REQUEST_MAX};
use conn_daemon::task::{Done, Filled, Route, Task, TaskRef};
use crossbeam_queue::ArrayQueue;
use socket2::{Domain, Socket, Type};

const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// `OPT_VALUE_*`: what AutoOpts gives the C++ as globals.
#[derive(Clone, Copy)]
struct Opts {
    port: u16,
    accept_threads: usize,
    worker_threads: usize,
    accept_capacity: usize,
    slow_duration: Duration,
}

/// `ThreadPool`: workers sleeping on one queue. The C++ copies each task into a
/// `std::deque<TaskHolder>` under a mutex; here the task already sits in its
/// connection's `TaskHolder` and only a one-pointer `TaskRef` travels.
struct ThreadPool {
    tasks: mpsc::Sender<TaskRef>,
}

/// Where a worker posts a finished task: the owning loop's mailbox and wake-up.
struct Owner {
    done: ArrayQueue<Done>,
    wake: OnceLock<AsyncSender>,
}

impl ThreadPool {
    fn spawn_threads(count: usize, owners: Arc<Vec<Owner>>) -> ThreadPool {
        let (tasks, rx) = mpsc::channel::<TaskRef>();
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..count {
            let (rx, owners) = (Arc::clone(&rx), Arc::clone(&owners));
            std::thread::spawn(move || loop {
                let Ok(task) = rx.lock().unwrap().recv() else {
                    return;
                };
                // Task::execute(), then what SlowTask::execute ends with:
                // ev_async_send(event_loop, async_watcher).
                // `None`: the task was cancelled while queued (this port never
                // cancels; the server does when a client leaves).
                let Some(done) = task.run() else {
                    continue;
                };
                let owner = &owners[done.route().owner as usize];
                // One task per pool slot at most: the mailbox (capacity -C) has room.
                assert!(owner.done.push(done).is_ok(), "mailbox sized for the pool");
                owner
                    .wake
                    .get()
                    .expect("started before its first task")
                    .send();
            });
        }
        ThreadPool { tasks }
    }

    fn add_task(&self, task: TaskRef) {
        let _ = self.tasks.send(task);
    }
}

/// `class SlowTask`: sleeps `--slow-duration`. The C++ keeps the loop and the
/// connection's `ev_async` in it; here the `Route` the pool stores beside the
/// task says where to report, so the task is only its duration.
struct SlowTask {
    duration: Duration,
}

impl Task for SlowTask {
    fn run(self) {
        std::thread::sleep(self.duration);
    }
}

/// `class ConnectionCtx`: one connection, in a pool slot that also holds its
/// `ev_io` (`conn_watcher`) and its task holder.
struct ConnectionCtx {
    /// `conn_watcher.fd`; `None` is the C++'s `fd == 0` after `terminate()`.
    stream: Option<TcpStream>,
    full_buf: Vec<u8>,
    parser: ReqParser,
    read_expected: bool,
    sent_size: usize,
    async_task: bool,
}

impl Default for ConnectionCtx {
    fn default() -> Self {
        ConnectionCtx {
            stream: None,
            full_buf: Vec::new(),
            parser: ReqParser::new(),
            read_expected: true,
            sent_size: 0,
            async_task: false,
        }
    }
}

/// What a `ConnectionCtx` method asks its owner to do: the C++ does these
/// itself (`delete this`, `thread_pool.add_task`), which needs the pool.
enum Then {
    Nothing,
    Delete,
    Delegate,
}

impl ConnectionCtx {
    /// `idx` is the slot, the token of its watcher (the C++ has `this`).
    fn read_conn(&mut self, io: Pin<&Io>, lp: &Loop<AcceptTask>, idx: u32, workers: usize) -> Then {
        let stream = self.stream.as_mut().expect("reading an open connection");
        let mut buf = [0u8; REQUEST_MAX];
        let room = REQUEST_MAX - self.full_buf.len();
        match stream.read(&mut buf[..room]) {
            Ok(0) => return Then::Delete, // "peer shutdown"
            Ok(n) => self.full_buf.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Then::Nothing,
            // The reference deletes on ENOTCONN and throws on anything else,
            // ending the thread (D1: a reset kills an accept thread).
            Err(_) => return Then::Delete,
        }
        // ReqParser::operator(): TERMINATE, CONTINUE, PROCEED. The crate's
        // parser also finds an end of request split across reads (D13).
        match self.parser.parse(&self.full_buf) {
            Verdict::Invalid | Verdict::TooLarge => Then::Delete, // incl. "Not enough buffer!"
            Verdict::Incomplete => Then::Nothing,
            verdict => {
                self.read_expected = false;
                if verdict == Verdict::Fast || workers == 0 {
                    // ev_io_stop; events = EV_READ | EV_WRITE; ev_io_start.
                    io.set_fd(io.fd(), Events::READ | Events::WRITE, idx as usize);
                    io.start(lp);
                    Then::Nothing
                } else {
                    // "read event is still active in event loop. So, we terminate
                    // connection on unexpected read."
                    self.async_task = true;
                    Then::Delegate
                }
            }
        }
    }

    /// The connection's watcher stops and its socket closes; the slot stays
    /// while a task is out (the C++ keeps the object alive for the same reason).
    fn terminate(&mut self, io: Pin<&Io>) {
        if self.stream.is_some() {
            io.stop();
            self.stream = None;
        }
    }

    fn read_unexpected(&mut self, io: Pin<&Io>) -> Then {
        // Bytes, EOF or an error while the request is being served: the client
        // misbehaves or left (docs/protocol.md rule 7).
        let mut buf = [0u8; 1];
        let stream = self.stream.as_mut().expect("watching an open connection");
        if let Err(e) = stream.read(&mut buf) {
            if e.kind() == ErrorKind::WouldBlock {
                return Then::Nothing;
            }
        }
        if self.async_task {
            self.terminate(io);
            Then::Nothing
        } else {
            Then::Delete
        }
    }

    fn write_conn(&mut self) -> Then {
        let stream = self.stream.as_mut().expect("writing an open connection");
        match stream.write(&RESPONSE[self.sent_size..]) {
            Ok(n) => self.sent_size += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Then::Nothing,
            Err(_) => return Then::Delete,
        }
        if self.sent_size == RESPONSE.len() {
            Then::Delete // "sent reply"
        } else {
            Then::Nothing
        }
    }
}

/// Connection tokens are pool indices; the listener's is above them all.
const ACCEPT_TOKEN: usize = usize::MAX;

/// `class AcceptTask`: one accept thread's listener, loop and pool.
struct AcceptTask {
    id: u32,
    listen: TcpListener,
    pool: Pool<ConnectionCtx>,
    opts: Opts,
    thread_pool: Arc<ThreadPool>,
    owners: Arc<Vec<Owner>>,
}

impl AcceptTask {
    fn accept_conn(&mut self, lp: &Loop<Self>) {
        // The reference accepts one connection per callback (level-triggered
        // epoll calls again while the backlog is not empty).
        let conn = match self.listen.accept() {
            Ok((conn, _)) => conn,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return, // "unexpected EAGAIN!"
            Err(e) => {
                // The reference throws here and the thread ends (D3, EMFILE).
                eprintln!("accept: {e}");
                return;
            }
        };
        // `new (*pool) ConnectionCtx(event_loop, conn_fd)`: the C++ throws
        // bad_alloc on a full pool, through libev, and the process exits with
        // "Not enough memory!" (D2). Here the newcomer is closed.
        let Some(idx) = self.pool.acquire() else {
            eprintln!("Not enough memory!");
            return;
        };
        if conn.set_nonblocking(true).is_err() {
            self.pool.release(idx);
            return;
        }
        let (ctx, io) = self.pool.split(idx);
        io.set_fd(conn.as_raw_fd(), Events::READ, idx as usize);
        io.start(lp);
        *ctx = ConnectionCtx {
            stream: Some(conn),
            full_buf: Vec::with_capacity(REQUEST_MAX),
            ..ConnectionCtx::default()
        };
    }

    /// `ConnectionCtx::conn_callback`.
    fn conn_callback(&mut self, lp: &Loop<Self>, idx: u32, events: Events) {
        let workers = self.opts.worker_threads;
        let (ctx, io) = self.pool.split(idx);
        let mut then = Then::Nothing;
        if events.is_readable() {
            then = if ctx.read_expected {
                ctx.read_conn(io, lp, idx, workers)
            } else {
                ctx.read_unexpected(io)
            };
        }
        // The C++ goes on to write_conn() even after a read that did `delete
        // this`; here a deleted connection is not written to.
        if events.is_writable() && matches!(then, Then::Nothing) && ctx.stream.is_some() {
            then = ctx.write_conn();
        }
        self.then(idx, then);
    }

    fn then(&mut self, idx: u32, then: Then) {
        match then {
            Then::Nothing => {}
            Then::Delete => self.delete(idx),
            Then::Delegate => {
                let route = Route {
                    owner: self.id,
                    slot: idx,
                    gen: 0,
                };
                let task = SlowTask {
                    duration: self.opts.slow_duration,
                };
                let task = self
                    .pool
                    .delegate(idx, task, route)
                    .expect("one task per connection");
                // `Requeued` only follows a cancel, which this port never does.
                if let Filled::New(task) = task {
                    self.thread_pool.add_task(task);
                }
            }
        }
    }

    /// `delete this`: `~ConnectionCtx` (terminate) and `~OnPool` (release).
    fn delete(&mut self, idx: u32) {
        let (ctx, io) = self.pool.split(idx);
        ctx.terminate(io);
        *ctx = ConnectionCtx::default();
        self.pool.release(idx);
    }

    /// `ConnectionCtx::async_callback`, for every task that came back: one
    /// wake-up may stand for many (sends coalesce).
    fn async_callback(&mut self, lp: &Loop<Self>) {
        let owners = Arc::clone(&self.owners);
        while let Some(done) = owners[self.id as usize].done.pop() {
            let Some(route) = self.pool.finish(done) else {
                continue;
            };
            let idx = route.slot;
            let (ctx, io) = self.pool.split(idx);
            ctx.async_task = false;
            if ctx.stream.is_none() {
                // terminate() ran while the task was out: the client left.
                self.delete(idx);
                continue;
            }
            io.set_fd(io.fd(), Events::READ | Events::WRITE, idx as usize);
            io.start(lp);
        }
    }

    /// `AcceptTask::execute`: start watching, accept what is already there
    /// before the first poll, run the loop.
    fn execute(mut self, lp: Loop<Self>, wake: Pin<Box<Async>>) {
        let accept_watcher = Box::pin(Io::new());
        accept_watcher.set_fd(self.listen.as_raw_fd(), Events::READ, ACCEPT_TOKEN);
        accept_watcher.as_ref().start(&lp);
        // The C++ calls accept() once and, if it got a connection, ev_invoke()s
        // the accept callback, which accepts *again*: the first fd is leaked.
        // ev_invoke's equivalent is calling the callback; no accept before it.
        self.accept_conn(&lp);
        lp.run(&mut self);
        drop((accept_watcher, wake));
    }
}

impl Handler for AcceptTask {
    fn on_io(&mut self, lp: &Loop<Self>, token: usize, events: Events) {
        if token == ACCEPT_TOKEN {
            self.accept_conn(lp); // accept_callback
        } else {
            self.conn_callback(lp, token as u32, events);
        }
    }

    fn on_async(&mut self, lp: &Loop<Self>, _token: usize) {
        self.async_callback(lp);
    }
}

/// The AcceptTask constructor's socket set-up: `SO_REUSEPORT`, so that every
/// accept thread has its own listener on the same port (the kernel balances).
fn listen_socket(port: u16) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None)?;
    socket.set_reuse_port(true)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, port)).into())?;
    socket.set_nonblocking(true)?;
    socket.listen(libc::SOMAXCONN)?;
    Ok(socket.into())
}

/// One accept thread: its loop, its async watcher and its `AcceptTask`.
fn accept_thread(
    id: u32,
    listen: TcpListener,
    opts: Opts,
    thread_pool: Arc<ThreadPool>,
    owners: Arc<Vec<Owner>>,
) -> io::Result<()> {
    let lp = Loop::new()?;
    let wake = Box::pin(Async::new());
    wake.as_ref().start(&lp, 0);
    let _ = owners[id as usize].wake.set(wake.as_ref().sender());
    let pool = Pool::new(opts.accept_capacity)?;
    let task = AcceptTask {
        id,
        listen,
        pool,
        opts,
        thread_pool,
        owners,
    };
    task.execute(lp, wake);
    Ok(())
}

fn parse_opts() -> Result<Opts, String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut opts = Opts {
        port: 9000,
        accept_threads: cpus,
        worker_threads: usize::MAX, // "= accept threads" unless given
        accept_capacity: 100_000,
        slow_duration: Duration::from_millis(30),
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        let n: u64 = value.parse().map_err(|e| format!("{flag} {value}: {e}"))?;
        match flag.as_str() {
            "-p" => opts.port = u16::try_from(n).map_err(|e| e.to_string())?,
            "-A" => opts.accept_threads = (n as usize).max(1),
            "-w" => opts.worker_threads = n as usize,
            "-C" => opts.accept_capacity = (n as usize).max(1),
            "-D" => opts.slow_duration = Duration::from_millis(n),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if opts.worker_threads == usize::MAX {
        opts.worker_threads = opts.accept_threads;
    }
    Ok(opts)
}

fn main() {
    let opts = parse_opts().unwrap_or_else(|e| {
        eprintln!("reference_port: {e}");
        std::process::exit(1)
    });
    // Every listener binds the same port; with -p 0 the first one picks it.
    let first = listen_socket(opts.port).unwrap_or_else(|e| {
        eprintln!("bind: {e}");
        std::process::exit(100)
    });
    let port = first.local_addr().map(|a| a.port()).unwrap_or(opts.port);
    let mut listeners = vec![first];
    for _ in 1..opts.accept_threads {
        listeners.push(listen_socket(port).unwrap_or_else(|e| {
            eprintln!("bind: {e}");
            std::process::exit(100)
        }));
    }
    let owners: Arc<Vec<Owner>> = Arc::new(
        (0..opts.accept_threads)
            .map(|_| Owner {
                done: ArrayQueue::new(opts.accept_capacity),
                wake: OnceLock::new(),
            })
            .collect(),
    );
    let thread_pool = Arc::new(ThreadPool::spawn_threads(
        opts.worker_threads,
        Arc::clone(&owners),
    ));
    println!("listening on 127.0.0.1:{port}");
    let _ = io::stdout().flush();

    // "main thread is also accept thread": threads 1.., then thread 0 here.
    let mut listeners = listeners.into_iter();
    let main_listener = listeners.next().expect("at least one");
    for (i, listen) in listeners.enumerate() {
        let (thread_pool, owners) = (Arc::clone(&thread_pool), Arc::clone(&owners));
        std::thread::spawn(move || {
            if let Err(e) = accept_thread(i as u32 + 1, listen, opts, thread_pool, owners) {
                eprintln!("accept thread: {e}");
            }
        });
    }
    if let Err(e) = accept_thread(0, main_listener, opts, thread_pool, owners) {
        // The reference: "Not enough memory!" exit 10, any other exception 100.
        eprintln!("{e}");
        std::process::exit(if e.kind() == ErrorKind::OutOfMemory {
            10
        } else {
            100
        });
    }
}
