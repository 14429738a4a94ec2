//! memcached's ASCII protocol (`doc/protocol.txt`, as `proto_text.c` answers it) as an
//! incremental parser: [`Session::process`] is handed the bytes read so far, consumes
//! a prefix, and writes the responses into the connection's output area ([`Out`]).
//!
//! - A command line is acted on once its `\n` has arrived; a value's data block is
//!   written straight into the item reserved for it as its bytes arrive, so a 1 MB
//!   `set` streams through a 16 KB read buffer.
//! - A value larger than the room left in the output area is copied in pieces: the
//!   item is pinned and [`Status::Flush`] asks for the area to be sent first.
//! - Pipelined commands are answered in order, as long as the output area has room
//!   for the next answer; then `Flush`, and `process` is called again with what
//!   remains.
//! - The replies are memcached 1.6's, byte for byte, errors included: the token
//!   counts and number rules of `process_command_ascii`, `noreply` wherever
//!   `set_noreply_maybe` applies, `CLIENT_ERROR bad data chunk` for a data block not
//!   ending in `\r\n`, `SERVER_ERROR object too large for cache` with the data read
//!   and thrown away. Two differences, both where memcached would grow a buffer: a
//!   line other than a get that is longer than [`LINE_MAX`] without its `\n` gets
//!   `CLIENT_ERROR line too long` and the connection is closed (memcached closes it
//!   without a word); a get line longer than the read buffer is answered key by key
//!   as it arrives, so a key over 250 bytes late in such a line ends it with
//!   `CLIENT_ERROR bad command line format` after the values already sent (memcached
//!   would have sent only the error).
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::stats::{self, Counter, Stats};
use crate::store::{
    format_u64, strtol, strtoul, strtoull, Delta, Hit, Mode, Outcome, Pin, Read, Refused,
    Reservation, Store, StoreConfig, KEY_MAX,
};

/// Bytes of a connection's read buffer (memcached's `READ_BUFFER_SIZE`).
pub const READ_BUFFER: usize = 16 * 1024;
/// Bytes of a connection's output area.
pub const WRITE_BUFFER: usize = 16 * 1024;
/// The longest line other than a get's awaited without its `\n` (memcached's 2048).
pub const LINE_MAX: usize = 2048;
/// The room a command needs before it is acted on (its longest reply but `stats`,
/// a `VALUE` line included).
const ROOM: usize = 512;
/// The room `stats` needs: the smallest output area that holds every reply.
pub const STATS_ROOM: usize = 4096;
const _: () = assert!(WRITE_BUFFER >= STATS_ROOM && STATS_ROOM >= ROOM);

/// What `version` says.
pub const VERSION: &str = "1.6.0-conn-daemon";
/// memcached's `REALTIME_MAXDELTA`: a larger exptime is a Unix time.
const REALTIME_MAXDELTA: i64 = 60 * 60 * 24 * 30;

/// A connection's output area, as the protocol sees it.
pub trait Out {
    /// Bytes that can still be written.
    fn room(&self) -> usize;
    /// Whether nothing is written and not yet sent.
    fn is_empty(&self) -> bool;
    /// Appends as much of `bytes` as fits; returns how much.
    fn write(&mut self, bytes: &[u8]) -> usize;
}

/// An output area over a vector of a fixed capacity (the tests' and the fuzz
/// target's engine in miniature).
#[allow(dead_code)]
#[derive(Debug)]
pub struct Area {
    /// What is written and not yet sent.
    pub buf: Vec<u8>,
    /// The capacity.
    pub cap: usize,
}

#[allow(dead_code)]
impl Area {
    /// An empty area of `cap` bytes, reserved now.
    pub fn new(cap: usize) -> Area {
        Area {
            buf: Vec::with_capacity(cap),
            cap,
        }
    }
}

impl Out for Area {
    fn room(&self) -> usize {
        self.cap - self.buf.len()
    }
    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    fn write(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.buf.extend_from_slice(&bytes[..n]);
        n
    }
}

/// memcached's clock: seconds since start-up plus 62 (its `current_time`, which
/// starts past `ITEM_UPDATE_INTERVAL`), and the Unix time it counts from.
#[derive(Debug)]
pub struct Clock {
    started: Instant,
    process_started: i64,
}

impl Default for Clock {
    fn default() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        Clock {
            started: Instant::now(),
            process_started: unix - 62,
        }
    }
}

impl Clock {
    /// A clock that counts from this Unix time (the fuzz target's: the same answers
    /// whenever it runs).
    #[allow(dead_code)] // the fuzz target's
    pub fn at(unix: i64) -> Clock {
        Clock {
            started: Instant::now(),
            process_started: unix - 62,
        }
    }

    /// The current relative time.
    pub fn now(&self) -> u32 {
        62 + self.started.elapsed().as_secs() as u32
    }

    /// memcached's `realtime(EXPTIME_TO_POSITIVE_TIME(e))`: 0 never expires; up to 30
    /// days is relative; more is a Unix time (at or before start-up: 1, long past);
    /// negative is past at once.
    pub fn exptime(&self, e: i32, now: u32) -> u32 {
        let e = if e < 0 {
            REALTIME_MAXDELTA + 1
        } else {
            i64::from(e)
        };
        self.realtime(e, now)
    }

    fn realtime(&self, e: i64, now: u32) -> u32 {
        if e == 0 {
            0
        } else if e > REALTIME_MAXDELTA {
            if e <= self.process_started {
                1
            } else {
                (e - self.process_started) as u32
            }
        } else {
            (e + i64::from(now)) as u32
        }
    }

    fn unix(&self, now: u32) -> i64 {
        self.process_started + i64::from(now)
    }
}

/// What every connection shares: the store, the counters, the settings.
#[derive(Debug)]
pub struct Server {
    /// The items.
    pub store: Store,
    /// The counters.
    pub stats: Stats,
    /// The clock.
    pub clock: Clock,
    /// `-c`.
    pub max_connections: u32,
    /// `-t`.
    pub threads: u32,
    /// `-v`, and what `verbosity` sets.
    pub verbosity: AtomicU32,
    /// The process's user and system CPU time, in microseconds (`stats`).
    pub cpu: fn() -> (u64, u64),
}

impl Server {
    /// The store reserved, the counters for `threads` threads.
    pub fn new(
        store: &StoreConfig,
        threads: usize,
        max_connections: usize,
    ) -> Result<Self, String> {
        Ok(Server {
            store: Store::new(store)?,
            stats: Stats::new(threads),
            clock: Clock::default(),
            max_connections: max_connections as u32,
            threads: threads as u32,
            verbosity: AtomicU32::new(0),
            cpu: stats::cpu_micros,
        })
    }
}

/// What a command was, for the engine's count of responses by kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// get, gets, gat, gats.
    Get,
    /// set, add, replace, append, prepend, cas.
    Store,
    /// delete.
    Delete,
    /// incr, decr.
    Arith,
    /// touch.
    Touch,
    /// Anything else (stats, flush_all, version, an unknown command...).
    Other,
}

impl Kind {
    /// The labels, in the order of the variants.
    pub const LABELS: &'static [&'static str] =
        &["get", "store", "delete", "arith", "touch", "other"];
}

/// What the connection does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Every complete command was answered; more bytes are needed. `begun`: part of a
    /// command (or of its data) has arrived, so a request is in progress.
    NeedInput {
        /// A request is in progress.
        begun: bool,
    },
    /// A command was answered (its reply is in the output area, unless `noreply`);
    /// call `process` again with the input not consumed.
    Answered(Kind),
    /// The output area lacks room for the next answer: send it, then call `process`
    /// again with the input not consumed.
    Flush,
    /// A value is being sent and the output area is full: send it, then call
    /// `process` again (with any input: it is not looked at until the value is out).
    Stream,
    /// Send what is in the output area, then close (`quit`, a line too long).
    Close,
}

/// A get in progress: the input goes on at its next key.
#[derive(Clone, Copy, Debug)]
struct Get {
    cas: bool,
    /// `gat`/`gats`: the new exptime.
    touch: Option<u32>,
    /// The line arrived whole and every key was checked against 250 bytes.
    checked: bool,
}

#[derive(Debug, Default)]
enum State {
    /// At a command line.
    #[default]
    Command,
    /// Receiving a value into `res`: `received` of its bytes, then its `\r\n`.
    Data {
        res: Reservation,
        mode: Mode,
        received: usize,
        trailer: u8,
        bad: bool,
        noreply: bool,
    },
    /// Throwing away the data block of a refused value.
    Swallow { left: u64 },
    /// A get: the input goes on at its next key.
    Keys(Get),
    /// Sending a pinned value: `sent` bytes of the value and its `\r\n`, then the get
    /// goes on.
    Value { pin: Pin, sent: usize, get: Get },
    /// Throwing away the rest of a line, through its `\n`.
    SkipLine,
    /// `quit` or a fatal error: nothing more is read.
    Closed,
}

/// One connection's protocol state: built once per pool slot, reset by `close`.
#[derive(Debug, Default)]
pub struct Session {
    state: State,
    noreply: bool,
    /// Input consumed and output room at the last count of `bytes_read` and
    /// `bytes_written` in this call of `process`.
    tally: (usize, usize),
}

/// What a step of the loop in `process` leads to.
enum Flow {
    Continue,
    Done(Kind),
    Wait { begun: bool },
    Flush,
    Stream,
    Close,
}

/// memcached's tokens of a command line: split on spaces, at most 23, `nt` counting
/// the terminal one as `tokenize_command` does.
struct Tokens<'a> {
    t: [&'a [u8]; 24],
    nt: usize,
}

impl<'a> Tokens<'a> {
    fn new(line: &'a [u8]) -> Self {
        let mut t: [&[u8]; 24] = [&[]; 24];
        let mut n = 0;
        for tok in line.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
            if n == 23 {
                // More than memcached looks at: the terminal token is not empty.
                break;
            }
            t[n] = tok;
            n += 1;
        }
        Tokens { t, nt: n + 1 }
    }

    fn is_noreply(&self) -> bool {
        self.nt >= 2 && self.t[self.nt - 2] == b"noreply"
    }
}

fn find(hay: &[u8], b: u8) -> Option<usize> {
    hay.iter().position(|&x| x == b)
}

/// A line's command text: without the `\r` before its `\n` (when it has at least two
/// bytes, as memcached strips it), cut at a NUL (memcached reads it with `strlen`).
fn command_text(line: &[u8]) -> &[u8] {
    let line = if line.len() > 1 && line[line.len() - 1] == b'\r' {
        &line[..line.len() - 1]
    } else {
        line
    };
    match find(line, 0) {
        Some(n) => &line[..n],
        None => line,
    }
}

/// Whether an unfinished line is a get, which may be longer than `LINE_MAX`
/// (memcached's test: up to 100 spaces, then `get ` or `gets `; `gat` too here).
fn is_get_prefix(input: &[u8]) -> bool {
    let spaces = input.iter().take_while(|&&b| b == b' ').count();
    if spaces > 100 {
        return false;
    }
    let rest = &input[spaces..];
    [&b"get "[..], b"gets ", b"gat ", b"gats "]
        .iter()
        .any(|p| rest.starts_with(p))
}

/// Writes the concatenation of `parts` (room was checked).
fn put(out: &mut dyn Out, parts: &[&[u8]]) {
    for p in parts {
        out.write(p);
    }
}

fn put_u64(out: &mut dyn Out, v: u64) {
    let mut buf = [0u8; 20];
    out.write(format_u64(v, &mut buf));
}

fn put_stat(out: &mut dyn Out, name: &str, v: u64) {
    put(out, &[b"STAT ", name.as_bytes(), b" "]);
    put_u64(out, v);
    out.write(b"\r\n");
}

impl Session {
    /// Consumes a prefix of `input`, writing the answers into `out`; returns how many
    /// bytes were consumed and what the connection does next. Also continues a value
    /// being sent (call it with the unconsumed input after a `Flush`).
    pub fn process(
        &mut self,
        srv: &Server,
        now: u32,
        input: &[u8],
        out: &mut dyn Out,
    ) -> (usize, Status) {
        self.tally = (0, out.room());
        let mut pos = 0;
        let status = loop {
            let flow = match &mut self.state {
                State::Command => self.command(srv, now, input, &mut pos, out),
                State::Data { .. } => self.data(srv, now, input, &mut pos, out),
                State::Swallow { left } => {
                    let take =
                        (input.len() - pos).min(usize::try_from(*left).unwrap_or(usize::MAX));
                    pos += take;
                    *left -= take as u64;
                    if *left == 0 {
                        self.state = State::Command;
                        Flow::Continue
                    } else {
                        Flow::Wait { begun: true }
                    }
                }
                State::Keys(get) => {
                    let get = *get;
                    self.keys(srv, now, get, input, &mut pos, out)
                }
                State::Value { .. } => self.value(srv, out),
                State::SkipLine => match find(&input[pos..], b'\n') {
                    Some(n) => {
                        pos += n + 1;
                        self.state = State::Command;
                        Flow::Continue
                    }
                    None => {
                        pos = input.len();
                        Flow::Wait { begun: true }
                    }
                },
                State::Closed => {
                    pos = input.len();
                    Flow::Close
                }
            };
            match flow {
                Flow::Continue => {}
                Flow::Done(kind) => break Status::Answered(kind),
                Flow::Wait { begun } => break Status::NeedInput { begun },
                Flow::Flush => break Status::Flush,
                Flow::Stream => break Status::Stream,
                Flow::Close => break Status::Close,
            }
        };
        self.count_bytes(srv, pos, out);
        (pos, status)
    }

    /// Counts the bytes consumed and written since the last count.
    fn count_bytes(&mut self, srv: &Server, pos: usize, out: &dyn Out) {
        let (read, room) = self.tally;
        srv.stats.add(Counter::BytesRead, (pos - read) as u64);
        srv.stats.add(
            Counter::BytesWritten,
            room.saturating_sub(out.room()) as u64,
        );
        self.tally = (pos, out.room());
    }

    /// The connection is gone (or the slot is reused): lets go of any pinned or
    /// reserved item.
    pub fn close(&mut self, srv: &Server) {
        match std::mem::take(&mut self.state) {
            State::Data { res, .. } => srv.store.cancel(res),
            State::Value { pin, .. } => srv.store.unpin(pin),
            _ => {}
        }
        self.noreply = false;
    }

    /// A reply, unless `noreply` (memcached's `out_string`).
    fn reply(&mut self, out: &mut dyn Out, text: &[u8]) {
        if self.noreply {
            self.noreply = false;
        } else {
            put(out, &[text, b"\r\n"]);
        }
    }

    fn command(
        &mut self,
        srv: &Server,
        now: u32,
        input: &[u8],
        pos: &mut usize,
        out: &mut dyn Out,
    ) -> Flow {
        let rest = &input[*pos..];
        if rest.is_empty() {
            return Flow::Wait { begun: false };
        }
        if out.room() < ROOM {
            return Flow::Flush;
        }
        let Some(nl) = find(rest, b'\n') else {
            if is_get_prefix(rest) {
                if rest.len() >= READ_BUFFER {
                    // A get longer than the buffer: answered key by key from here.
                    return self.start_long_get(srv, now, input, pos, out);
                }
                return Flow::Wait { begun: true };
            }
            if rest.len() > LINE_MAX {
                return self.line_too_long(input, pos, out);
            }
            return Flow::Wait { begun: true };
        };
        if nl > LINE_MAX && !is_get_prefix(rest) {
            // Whether it arrived whole or not: the same answer for the same bytes.
            return self.line_too_long(input, pos, out);
        }
        let line = command_text(&rest[..nl]);
        let next = *pos + nl + 1;
        self.noreply = false;
        let tokens = Tokens::new(line);
        let nt = tokens.nt;
        let cmd = tokens.t[0];
        if nt < 2 || cmd.len() < 2 {
            self.reply(out, b"ERROR");
            *pos = next;
            return Flow::Done(Kind::Other);
        }
        // A get does not consume its line until its last key is answered.
        let get = match cmd {
            b"get" | b"bget" => Some((false, false)),
            b"gets" => Some((true, false)),
            b"gat" => Some((false, true)),
            b"gats" => Some((true, true)),
            _ => None,
        };
        if let Some((cas, touch)) = get {
            if nt < 3 {
                self.reply(out, b"ERROR");
                *pos = next;
                return Flow::Done(Kind::Get);
            }
            return self.start_get(srv, now, cas, touch, input, pos, next, out);
        }
        *pos = next;
        match cmd {
            b"set" => self.update(srv, now, &tokens, Mode::Set, out),
            b"add" => self.update(srv, now, &tokens, Mode::Add, out),
            b"replace" => self.update(srv, now, &tokens, Mode::Replace, out),
            b"append" => self.update(srv, now, &tokens, Mode::Append, out),
            b"prepend" => self.update(srv, now, &tokens, Mode::Prepend, out),
            b"cas" => self.update(srv, now, &tokens, Mode::Cas(0), out),
            b"incr" | b"decr" => self.when(nt == 4 || nt == 5, Kind::Arith, out, |me, out| {
                me.arithmetic(srv, now, &tokens, cmd == b"incr", out)
            }),
            b"delete" => self.when((3..=5).contains(&nt), Kind::Delete, out, |me, out| {
                me.delete(srv, now, &tokens, out)
            }),
            b"touch" => self.when(nt == 4 || nt == 5, Kind::Touch, out, |me, out| {
                me.touch(srv, now, &tokens, out)
            }),
            b"stats" => {
                if out.room() < STATS_ROOM && !out.is_empty() {
                    *pos = next - nl - 1;
                    return Flow::Flush;
                }
                self.count_bytes(srv, *pos, out);
                self.stats(srv, now, &tokens, out);
                Flow::Done(Kind::Other)
            }
            b"flush_all" => self.when((2..=4).contains(&nt), Kind::Other, out, |me, out| {
                me.flush_all(srv, now, &tokens, out)
            }),
            b"version" => {
                put(out, &[b"VERSION ", VERSION.as_bytes(), b"\r\n"]);
                Flow::Done(Kind::Other)
            }
            b"verbosity" => self.when(nt == 3 || nt == 4, Kind::Other, out, |me, out| {
                me.noreply = tokens.is_noreply();
                match strtoul(tokens.t[1]) {
                    Some(level) => {
                        srv.verbosity.store(level.min(2), Ordering::Relaxed);
                        me.reply(out, b"OK");
                    }
                    None => me.reply(out, b"CLIENT_ERROR bad command line format"),
                }
            }),
            b"quit" => {
                self.state = State::Closed;
                *pos = input.len();
                Flow::Close
            }
            b"shutdown" => {
                self.reply(out, b"ERROR: shutdown not enabled");
                Flow::Done(Kind::Other)
            }
            _ => {
                self.reply(out, b"ERROR");
                Flow::Done(Kind::Other)
            }
        }
    }

    /// A command whose token count `ok` or not: `f` answers it, or `ERROR` does
    /// (memcached's `WANT_TOKENS`).
    fn when(
        &mut self,
        ok: bool,
        kind: Kind,
        out: &mut dyn Out,
        f: impl FnOnce(&mut Self, &mut dyn Out),
    ) -> Flow {
        if ok {
            f(self, out);
        } else {
            self.reply(out, b"ERROR");
        }
        Flow::Done(kind)
    }

    /// A line other than a get longer than `LINE_MAX`: no command is that long, and
    /// where the next one starts is unknown.
    fn line_too_long(&mut self, input: &[u8], pos: &mut usize, out: &mut dyn Out) -> Flow {
        put(out, &[b"CLIENT_ERROR line too long\r\n"]);
        *pos = input.len();
        self.state = State::Closed;
        Flow::Close
    }

    /// set/add/replace/append/prepend/cas (memcached's `process_update_command`).
    fn update(
        &mut self,
        srv: &Server,
        now: u32,
        tokens: &Tokens<'_>,
        mode: Mode,
        out: &mut dyn Out,
    ) -> Flow {
        let nt = tokens.nt;
        let cas = matches!(mode, Mode::Cas(_));
        let ok = if cas {
            nt == 7 || nt == 8
        } else {
            nt == 6 || nt == 7
        };
        if !ok {
            self.reply(out, b"ERROR");
            return Flow::Done(Kind::Store);
        }
        self.noreply = tokens.is_noreply();
        let t = &tokens.t;
        let key = t[1];
        const FORMAT: &[u8] = b"CLIENT_ERROR bad command line format";
        if key.len() > KEY_MAX {
            self.reply(out, FORMAT);
            return Flow::Done(Kind::Store);
        }
        let (Some(flags), Some(exptime), Some(vlen)) = (strtoul(t[2]), strtol(t[3]), strtol(t[4]))
        else {
            self.reply(out, FORMAT);
            return Flow::Done(Kind::Store);
        };
        let exptime = srv.clock.exptime(exptime, now);
        let mode = if cas {
            match strtoull(t[5]) {
                Some(unique) => Mode::Cas(unique),
                None => {
                    self.reply(out, FORMAT);
                    return Flow::Done(Kind::Store);
                }
            }
        } else {
            mode
        };
        if !(0..=i32::MAX - 2).contains(&vlen) {
            self.reply(out, FORMAT);
            return Flow::Done(Kind::Store);
        }
        let len = vlen as usize;
        match srv.store.reserve(key, flags, exptime, len, now) {
            Ok(res) => {
                self.state = State::Data {
                    res,
                    mode,
                    received: 0,
                    trailer: 0,
                    bad: false,
                    noreply: self.noreply,
                };
                self.noreply = false;
                Flow::Continue
            }
            Err(refused) => {
                self.reply(
                    out,
                    match refused {
                        Refused::TooLarge => b"SERVER_ERROR object too large for cache",
                        Refused::NoMemory => b"SERVER_ERROR out of memory storing object",
                    },
                );
                self.state = State::Swallow {
                    left: len as u64 + 2,
                };
                // memcached: a failed set must not leave the old value readable.
                if mode == Mode::Set {
                    srv.store.delete(key, now);
                }
                Flow::Done(Kind::Store)
            }
        }
    }

    /// The data block of a storage command, straight into its reservation.
    fn data(
        &mut self,
        srv: &Server,
        now: u32,
        input: &[u8],
        pos: &mut usize,
        out: &mut dyn Out,
    ) -> Flow {
        let State::Data {
            res,
            received,
            trailer,
            bad,
            ..
        } = &mut self.state
        else {
            unreachable!("data() in the Data state");
        };
        let take = (input.len() - *pos).min(res.len - *received);
        if take > 0 {
            srv.store.fill(res, *received, &input[*pos..*pos + take]);
            *received += take;
            *pos += take;
        }
        while *trailer < 2 && *pos < input.len() {
            if input[*pos] != b"\r\n"[usize::from(*trailer)] {
                *bad = true;
            }
            *trailer += 1;
            *pos += 1;
        }
        if *trailer < 2 {
            return Flow::Wait { begun: true };
        }
        let State::Data {
            res,
            mode,
            bad,
            noreply,
            ..
        } = std::mem::take(&mut self.state)
        else {
            unreachable!("still in the Data state");
        };
        self.noreply = noreply;
        srv.stats.add(Counter::CmdSet, 1);
        if bad {
            srv.store.cancel(res);
            self.reply(out, b"CLIENT_ERROR bad data chunk");
            return Flow::Done(Kind::Store);
        }
        let stored = srv.store.commit(res, mode, now);
        if let Mode::Cas(_) = mode {
            srv.stats.add(
                match stored {
                    Outcome::Stored => Counter::CasHits,
                    Outcome::Exists => Counter::CasBadval,
                    _ => Counter::CasMisses,
                },
                1,
            );
        }
        self.reply(
            out,
            match stored {
                Outcome::Stored => b"STORED",
                Outcome::NotStored => b"NOT_STORED",
                Outcome::Exists => b"EXISTS",
                Outcome::NotFound => b"NOT_FOUND",
            },
        );
        Flow::Done(Kind::Store)
    }

    /// A get whose line is complete: every key is checked first, as memcached answers
    /// only `CLIENT_ERROR bad command line format` if any key is too long.
    #[allow(clippy::too_many_arguments)]
    fn start_get(
        &mut self,
        srv: &Server,
        now: u32,
        cas: bool,
        touch: bool,
        input: &[u8],
        pos: &mut usize,
        next: usize,
        out: &mut dyn Out,
    ) -> Flow {
        let line = command_text(&input[*pos..next - 1]);
        let mut words = line.split(|&b| b == b' ').filter(|t| !t.is_empty());
        let _cmd = words.next();
        let mut exptime = None;
        if touch {
            match words.next().and_then(strtol) {
                Some(e) => exptime = Some(srv.clock.exptime(e, now)),
                None => {
                    self.reply(out, b"CLIENT_ERROR invalid exptime argument");
                    *pos = next;
                    return Flow::Done(Kind::Get);
                }
            }
        }
        if words.any(|k| k.len() > KEY_MAX) {
            self.reply(out, b"CLIENT_ERROR bad command line format");
            *pos = next;
            return Flow::Done(Kind::Get);
        }
        // Past the command word (and the exptime): the keys start here.
        *pos += key_start(&input[*pos..], if touch { 2 } else { 1 });
        self.state = State::Keys(Get {
            cas,
            touch: exptime,
            checked: true,
        });
        Flow::Continue
    }

    /// A get line that does not fit the read buffer: its keys are answered as they
    /// arrive (each key and its space must be in the buffer).
    fn start_long_get(
        &mut self,
        srv: &Server,
        now: u32,
        input: &[u8],
        pos: &mut usize,
        out: &mut dyn Out,
    ) -> Flow {
        let rest = &input[*pos..];
        let mut words = rest.split(|&b| b == b' ').filter(|t| !t.is_empty());
        let cmd = words.next().unwrap_or_default();
        let (cas, touch) = (cmd.ends_with(b"s"), cmd.starts_with(b"gat"));
        let mut exptime = None;
        if touch {
            match words.next().and_then(strtol) {
                Some(e) => exptime = Some(srv.clock.exptime(e, now)),
                None => {
                    self.reply(out, b"CLIENT_ERROR invalid exptime argument");
                    self.state = State::SkipLine;
                    return Flow::Done(Kind::Get);
                }
            }
        }
        *pos += key_start(rest, if touch { 2 } else { 1 });
        self.state = State::Keys(Get {
            cas,
            touch: exptime,
            checked: false,
        });
        Flow::Continue
    }

    /// The next key of a get, or its end.
    fn keys(
        &mut self,
        srv: &Server,
        now: u32,
        get: Get,
        input: &[u8],
        pos: &mut usize,
        out: &mut dyn Out,
    ) -> Flow {
        while *pos < input.len() && input[*pos] == b' ' {
            *pos += 1;
        }
        let rest = &input[*pos..];
        let Some(end) = rest.iter().position(|&b| b == b' ' || b == b'\n' || b == 0) else {
            if rest.len() >= READ_BUFFER {
                // One "key" filling the buffer: too long whatever follows.
                self.reply(out, b"CLIENT_ERROR bad command line format");
                self.state = State::SkipLine;
                return Flow::Done(Kind::Get);
            }
            return Flow::Wait { begun: true };
        };
        if out.room() < ROOM {
            return Flow::Flush;
        }
        let stop = rest[end];
        let mut key = &rest[..end];
        if stop == b'\n' && key.last() == Some(&b'\r') {
            key = &key[..key.len() - 1];
        }
        if !get.checked && key.len() > KEY_MAX {
            self.reply(out, b"CLIENT_ERROR bad command line format");
            *pos += end;
            self.state = State::SkipLine;
            return Flow::Done(Kind::Get);
        }
        if !key.is_empty() {
            if let Some((pin, sent)) = self.lookup(srv, now, get, key, out) {
                *pos += end;
                self.state = State::Value { pin, sent, get };
                return Flow::Stream;
            }
        }
        *pos += end;
        match stop {
            b' ' => Flow::Continue,
            stop => {
                put(out, &[b"END\r\n"]);
                if stop == b'\n' {
                    *pos += 1;
                    self.state = State::Command;
                } else {
                    // A NUL ends the command as memcached reads it; the rest of the
                    // line is not looked at.
                    self.state = State::SkipLine;
                }
                Flow::Done(Kind::Get)
            }
        }
    }

    /// One key of a get: its `VALUE` line and as much of its value as fits; the pin
    /// if the rest must follow.
    fn lookup(
        &mut self,
        srv: &Server,
        now: u32,
        get: Get,
        key: &[u8],
        out: &mut dyn Out,
    ) -> Option<(Pin, usize)> {
        let mut sent = 0;
        let read = srv
            .store
            .read(key, now, get.touch, |hit: &Hit, value: &[u8]| {
                put(out, &[b"VALUE ", key, b" "]);
                put_u64(out, u64::from(hit.flags));
                out.write(b" ");
                put_u64(out, hit.len as u64);
                if get.cas {
                    out.write(b" ");
                    put_u64(out, hit.cas);
                }
                out.write(b"\r\n");
                sent = out.write(value);
                if sent == value.len() {
                    sent += out.write(b"\r\n");
                }
                sent == value.len() + 2
            });
        let (hit_counter, miss_counter, cmd) = if get.touch.is_some() {
            (Counter::TouchHits, Counter::TouchMisses, Counter::CmdTouch)
        } else {
            (Counter::GetHits, Counter::GetMisses, Counter::CmdGet)
        };
        srv.stats.add(cmd, 1);
        match read {
            Read::Miss => {
                srv.stats.add(miss_counter, 1);
                None
            }
            Read::Done => {
                srv.stats.add(hit_counter, 1);
                None
            }
            Read::Pinned(pin) => {
                srv.stats.add(hit_counter, 1);
                Some((pin, sent))
            }
        }
    }

    /// Continues a pinned value, then its `\r\n`, then the get.
    fn value(&mut self, srv: &Server, out: &mut dyn Out) -> Flow {
        let State::Value { pin, sent, .. } = &mut self.state else {
            unreachable!("value() in the Value state");
        };
        while *sent < pin.len {
            if out.room() == 0 {
                return Flow::Stream;
            }
            let at = *sent;
            *sent += srv.store.read_pinned(pin, at, |v| out.write(v));
        }
        while *sent < pin.len + 2 {
            let at = *sent - pin.len;
            let n = out.write(&b"\r\n"[at..]);
            if n == 0 {
                return Flow::Stream;
            }
            *sent += n;
        }
        let State::Value { pin, get, .. } = std::mem::take(&mut self.state) else {
            unreachable!("still in the Value state");
        };
        srv.store.unpin(pin);
        self.state = State::Keys(get);
        Flow::Continue
    }

    /// incr/decr (memcached's `process_arithmetic_command`).
    fn arithmetic(
        &mut self,
        srv: &Server,
        now: u32,
        tokens: &Tokens<'_>,
        incr: bool,
        out: &mut dyn Out,
    ) {
        self.noreply = tokens.is_noreply();
        let key = tokens.t[1];
        if key.len() > KEY_MAX {
            return self.reply(out, b"CLIENT_ERROR bad command line format");
        }
        let Some(delta) = strtoull(tokens.t[2]) else {
            return self.reply(out, b"CLIENT_ERROR invalid numeric delta argument");
        };
        let (hit, miss) = if incr {
            (Counter::IncrHits, Counter::IncrMisses)
        } else {
            (Counter::DecrHits, Counter::DecrMisses)
        };
        match srv.store.delta(key, incr, delta, now) {
            Delta::Value(v) => {
                srv.stats.add(hit, 1);
                let mut buf = [0u8; 20];
                let text = format_u64(v, &mut buf);
                self.reply(out, text);
            }
            Delta::NonNumeric => self.reply(
                out,
                b"CLIENT_ERROR cannot increment or decrement non-numeric value",
            ),
            Delta::NotFound => {
                srv.stats.add(miss, 1);
                self.reply(out, b"NOT_FOUND");
            }
            Delta::NoMemory => self.reply(out, b"SERVER_ERROR out of memory"),
        }
    }

    /// delete (memcached's `process_delete_command`: `delete <key> [0] [noreply]`).
    fn delete(&mut self, srv: &Server, now: u32, tokens: &Tokens<'_>, out: &mut dyn Out) {
        let nt = tokens.nt;
        if nt > 3 {
            let hold_is_zero = tokens.t[2] == b"0";
            let sets_noreply = tokens.is_noreply();
            self.noreply = sets_noreply;
            let valid = (nt == 4 && (hold_is_zero || sets_noreply))
                || (nt == 5 && hold_is_zero && sets_noreply);
            if !valid {
                return self.reply(
                    out,
                    b"CLIENT_ERROR bad command line format.  Usage: delete <key> [noreply]",
                );
            }
        }
        let key = tokens.t[1];
        if key.len() > KEY_MAX {
            return self.reply(out, b"CLIENT_ERROR bad command line format");
        }
        let found = srv.store.delete(key, now);
        self.counted(
            srv,
            out,
            found,
            (Counter::DeleteHits, b"DELETED"),
            Counter::DeleteMisses,
        );
    }

    /// The reply of a command that found its item or not, counted as a hit or a miss.
    fn counted(
        &mut self,
        srv: &Server,
        out: &mut dyn Out,
        found: bool,
        hit: (Counter, &[u8]),
        miss: Counter,
    ) {
        let (counter, text) = if found {
            hit
        } else {
            (miss, &b"NOT_FOUND"[..])
        };
        srv.stats.add(counter, 1);
        self.reply(out, text);
    }

    /// touch (memcached's `process_touch_command`).
    fn touch(&mut self, srv: &Server, now: u32, tokens: &Tokens<'_>, out: &mut dyn Out) {
        self.noreply = tokens.is_noreply();
        let key = tokens.t[1];
        if key.len() > KEY_MAX {
            return self.reply(out, b"CLIENT_ERROR bad command line format");
        }
        let Some(e) = strtol(tokens.t[2]) else {
            return self.reply(out, b"CLIENT_ERROR invalid exptime argument");
        };
        srv.stats.add(Counter::CmdTouch, 1);
        let found = srv.store.touch(key, srv.clock.exptime(e, now), now);
        self.counted(
            srv,
            out,
            found,
            (Counter::TouchHits, b"TOUCHED"),
            Counter::TouchMisses,
        );
    }

    /// flush_all [delay] [noreply] (memcached's `process_flush_all_command`).
    fn flush_all(&mut self, srv: &Server, now: u32, tokens: &Tokens<'_>, out: &mut dyn Out) {
        self.noreply = tokens.is_noreply();
        srv.stats.add(Counter::CmdFlush, 1);
        let mut delay = 0;
        if tokens.nt != if self.noreply { 3 } else { 2 } {
            match strtol(tokens.t[1]) {
                Some(d) => delay = d,
                None => return self.reply(out, b"CLIENT_ERROR invalid exptime argument"),
            }
        }
        let new_oldest = if delay > 0 {
            srv.clock.realtime(i64::from(delay), now)
        } else {
            now
        };
        srv.store.flush(new_oldest, now);
        self.reply(out, b"OK");
    }

    /// stats, stats reset.
    fn stats(&mut self, srv: &Server, now: u32, tokens: &Tokens<'_>, out: &mut dyn Out) {
        if tokens.nt > 2 {
            if tokens.t[1] == b"reset" {
                srv.stats.reset();
                return self.reply(out, b"RESET");
            }
            return self.reply(out, b"ERROR");
        }
        let st = srv.store.stats();
        let (user, system) = (srv.cpu)();
        put_stat(out, "pid", u64::from(std::process::id()));
        put_stat(out, "uptime", u64::from(now.saturating_sub(60)));
        put_stat(out, "time", srv.clock.unix(now) as u64);
        put(out, &[b"STAT version ", VERSION.as_bytes(), b"\r\n"]);
        put_stat(out, "pointer_size", usize::BITS.into());
        for (name, micros) in [("rusage_user", user), ("rusage_system", system)] {
            put(out, &[b"STAT ", name.as_bytes(), b" "]);
            put_u64(out, micros / 1_000_000);
            let mut buf = [0u8; 20];
            let frac = format_u64(micros % 1_000_000, &mut buf);
            put(out, &[b".", &b"000000"[frac.len()..], frac, b"\r\n"]);
        }
        put_stat(out, "max_connections", srv.max_connections.into());
        put_stat(
            out,
            "curr_connections",
            srv.stats.curr_connections.load(Ordering::Relaxed),
        );
        put_stat(
            out,
            "total_connections",
            srv.stats.total_connections.load(Ordering::Relaxed),
        );
        for c in &stats::ALL[..4] {
            put_stat(out, stats::NAMES[*c as usize], srv.stats.sum(*c));
        }
        put_stat(out, "get_hits", srv.stats.sum(Counter::GetHits));
        put_stat(out, "get_misses", srv.stats.sum(Counter::GetMisses));
        put_stat(out, "get_expired", st.get_expired);
        put_stat(out, "get_flushed", st.get_flushed);
        for c in &stats::ALL[6..] {
            put_stat(out, stats::NAMES[*c as usize], srv.stats.sum(*c));
        }
        put_stat(out, "limit_maxbytes", srv.store.limit() as u64);
        put_stat(out, "threads", srv.threads.into());
        put_stat(out, "bytes", st.bytes);
        put_stat(out, "curr_items", st.curr_items);
        put_stat(out, "total_items", st.total_items);
        put_stat(out, "evictions", st.evictions);
        put_stat(out, "reclaimed", st.reclaimed);
        put(out, &[b"END\r\n"]);
    }
}

/// The offset in `line` past its first `words` space-separated words and the spaces
/// after them.
fn key_start(line: &[u8], words: usize) -> usize {
    let mut i = 0;
    for _ in 0..words {
        while i < line.len() && line[i] == b' ' {
            i += 1;
        }
        while i < line.len() && !matches!(line[i], b' ' | b'\n' | 0) {
            i += 1;
        }
    }
    i
}
