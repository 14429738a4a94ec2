//! The protocol trait: what a wire protocol tells the engine, and the engine's
//! vocabulary for it ([`Step`], [`After`], [`Output`], [`DropReason`]).
//!
//! The engine owns the sockets, the buffers, the deadlines, the pool and the
//! workers; a [`Protocol`] only turns bytes into decisions. It is called on the
//! loop's thread, one connection at a time, with that connection's state
//! ([`Protocol::Conn`], kept in the pool slot: built once, reset by
//! [`Protocol::open`]), the input read and not yet consumed, and the slot's
//! output area.
#![forbid(unsafe_code)]

use std::fmt::Debug;
use std::time::Duration;

use crate::metrics::{Labels, ENGINE_REASONS, MAX_KINDS, MAX_PROTOCOL_REASONS};

/// A value of a metrics label: a protocol's response kinds and drop reasons.
pub trait Label: Copy + Debug + PartialEq + Send + Sync + 'static {
    /// Every value's label, in the order the metrics list them; [`Label::index`]
    /// is a value's place here.
    const LABELS: &'static [&'static str];
    /// This value's place in [`Label::LABELS`].
    fn index(self) -> usize;
}

/// A type with no values: the [`Protocol::Job`] of a protocol that never
/// offloads work (it pays nothing for the delegation modes), or the
/// [`Protocol::Reason`] of one that has no drop reasons of its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Never {}

impl Label for Never {
    const LABELS: &'static [&'static str] = &[];
    fn index(self) -> usize {
        match self {}
    }
}

/// A byte buffer of a fixed size kept in a pool slot: the read buffer and the
/// output area of a connection (`[u8; N]`).
pub trait Buffer: Send + 'static {
    /// A zeroed buffer.
    fn zeroed() -> Self;
    /// Its bytes.
    fn bytes(&self) -> &[u8];
    /// Its bytes, to fill.
    fn bytes_mut(&mut self) -> &mut [u8];
}

impl<const N: usize> Buffer for [u8; N] {
    fn zeroed() -> Self {
        [0; N]
    }
    #[inline(always)]
    fn bytes(&self) -> &[u8] {
        self
    }
    #[inline(always)]
    fn bytes_mut(&mut self) -> &mut [u8] {
        self
    }
}

/// A wire protocol the engine serves (see the module doc).
///
/// Every method runs on a loop's thread but [`Protocol::run_job`], which runs
/// where the delegation mode says; none may block but that one.
pub trait Protocol: Send + Sync + Sized + 'static {
    /// Per-connection state, in the pool slot: built once with `Default`,
    /// reset by [`Protocol::open`].
    type Conn: Default + Debug + Send + 'static;
    /// Work that leaves the loop (`--delegate`): at most
    /// [`TASK_SIZE`](crate::task::TASK_SIZE) bytes, checked at compile time.
    /// [`Never`] for a protocol that never offloads.
    type Job: Debug + Send + 'static;
    /// The `kind` label of responses.
    type Kind: Label;
    /// The protocol's own drop reasons (the `reason` label's first values).
    type Reason: Label;
    /// The per-connection read buffer (`[u8; 4096]`, say): a request need not
    /// fit it if the protocol consumes it as it comes.
    type ReadBuffer: Buffer;
    /// The per-connection output area (`[u8; 0]` for a protocol that answers
    /// with `&'static` bytes only).
    type WriteBuffer: Buffer;

    /// The help line of `conn_daemon_responses_total`.
    const KINDS_HELP: &'static str = "Responses sent whole, by kind.";
    /// The kinds of the responses to offloaded jobs: what a worker answers
    /// itself in `--delegate socket|loop` (its metrics list only these).
    const WORKER_KINDS: &'static [usize] = &[];

    /// A new connection in this slot.
    fn open(&self, _conn: &mut Self::Conn) {}

    /// Bytes arrived: `input` is what is read and not yet consumed. The
    /// protocol consumes a prefix (it may consume part of a large value and
    /// keep where it is in `conn`), writes any response into `out`, and says
    /// what happens next. It is called again on the unconsumed rest (and on
    /// new bytes) until it asks for more input.
    fn on_input(&self, conn: &mut Self::Conn, input: &[u8], out: &mut Output<'_>) -> Step<Self>;

    /// The output was sent whole after a [`Step::Respond`] with
    /// [`After::MoreOutput`]: write the next part of the response.
    fn on_sent(&self, _conn: &mut Self::Conn, _out: &mut Output<'_>) -> Step<Self> {
        Step::Close { consumed: 0 }
    }

    /// How long `job` waits, without using a CPU, before it runs (a backend's
    /// answer, say): a worker thread sleeps it (`task`), a blocking worker
    /// waits it in `poll` on the socket (`socket`), a worker loop arms a timer
    /// (`loop`).
    fn job_wait(&self, _job: &Self::Job) -> Duration {
        Duration::ZERO
    }

    /// Runs `job` after its wait, where the delegation mode says: on a worker
    /// thread (`task`, `socket`) or on a worker's own loop (`loop`).
    fn run_job(&self, _job: &mut Self::Job) {}

    /// An offloaded job is done: build the response. In `--delegate
    /// socket|loop`, `conn` is a fresh one ([`Protocol::open`]ed) on the
    /// worker's side: what the response needs travels in the job.
    fn on_job_done(
        &self,
        _conn: &mut Self::Conn,
        _job: Self::Job,
        _out: &mut Output<'_>,
    ) -> Step<Self> {
        Step::Close { consumed: 0 }
    }

    /// The connection ends (closed, dropped or handed over): release what
    /// `conn` holds.
    fn close(&self, _conn: &mut Self::Conn) {}

    /// What the metrics say of this protocol.
    fn labels() -> Labels {
        const { assert!(Self::Kind::LABELS.len() <= MAX_KINDS, "too many kinds") };
        const {
            assert!(
                Self::Reason::LABELS.len() <= MAX_PROTOCOL_REASONS,
                "too many drop reasons"
            )
        };
        Labels {
            kinds: Self::Kind::LABELS,
            kinds_help: Self::KINDS_HELP,
            worker_kinds: Self::WORKER_KINDS,
            reasons: Self::Reason::LABELS,
        }
    }
}

/// What the engine does next, with how many input bytes the protocol consumed
/// (0 when there was no input: [`Protocol::on_sent`], [`Protocol::on_job_done`]).
#[non_exhaustive]
pub enum Step<P: Protocol> {
    /// Need more input. `begun`: a request has started (the read deadline
    /// runs) or not (between requests: the idle timeout runs, and a drain
    /// closes the connection at once).
    More {
        /// Input bytes consumed.
        consumed: usize,
        /// Whether a request is under way.
        begun: bool,
    },
    /// A response is in the output.
    Respond {
        /// Input bytes consumed.
        consumed: usize,
        /// The response's `kind` label.
        kind: P::Kind,
        /// What follows once it is sent.
        after: After,
    },
    /// Hand this job to the workers (the mode decides how); the read deadline
    /// stops. Bytes or EOF from the client while it is out close the connection
    /// (`client_gone`); what is in the output is sent first.
    Offload {
        /// Input bytes consumed.
        consumed: usize,
        /// The work.
        job: P::Job,
    },
    /// Close without a response, for one of the protocol's reasons.
    Drop {
        /// Input bytes consumed.
        consumed: usize,
        /// Why (the metrics' `reason`).
        reason: P::Reason,
    },
    /// Close once the output is sent (a `quit` command, say): not a drop.
    Close {
        /// Input bytes consumed.
        consumed: usize,
    },
}

impl<P: Protocol> Debug for Step<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Step::More { consumed, begun } => write!(f, "More({consumed}, begun: {begun})"),
            Step::Respond {
                consumed,
                kind,
                after,
            } => write!(f, "Respond({consumed}, {kind:?}, {after:?})"),
            Step::Offload { consumed, job } => write!(f, "Offload({consumed}, {job:?})"),
            Step::Drop { consumed, reason } => write!(f, "Drop({consumed}, {reason:?})"),
            Step::Close { consumed } => write!(f, "Close({consumed})"),
        }
    }
}

/// What follows a response once it is sent.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum After {
    /// Close.
    Close,
    /// Shut the write side and read to the client's EOF (bounded), then close:
    /// unread input may remain, and closing on it would reset the connection
    /// and destroy the response.
    Linger,
    /// Keep the connection: process what input remains (pipelined requests),
    /// then wait for the next request under the idle timeout.
    KeepAlive,
    /// The response goes on: [`Protocol::on_sent`] writes the next part once
    /// this one is sent.
    MoreOutput,
}

/// Why the engine closed a connection without a response: the `reason` label
/// of `conn_daemon_connections_dropped_total`.
#[non_exhaustive]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason<R> {
    /// One of the protocol's reasons (bad input, say).
    Protocol(R),
    /// EOF, reset or a socket error during a request, or bytes while a job
    /// is out.
    ClientGone,
    /// The read deadline passed.
    TimedOut,
    /// The graceful drain closed it.
    Shutdown,
}

impl<R: Label> DropReason<R> {
    /// The counter of this reason in a metrics counter block (the engine's
    /// reasons first, then the protocol's).
    #[inline]
    pub fn slot(self) -> usize {
        match self {
            DropReason::ClientGone => 0,
            DropReason::TimedOut => 1,
            DropReason::Shutdown => 2,
            DropReason::Protocol(r) => ENGINE_REASONS.len() + r.index(),
        }
    }

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::Protocol(r) => R::LABELS[r.index()],
            other => ENGINE_REASONS[other.slot()],
        }
    }
}

/// Where a protocol writes a response: the slot's output area, or `&'static`
/// bytes sent as they are (no copy).
///
/// Writing never fails loudly: what does not fit is not taken
/// ([`Output::write`] says how much was), so that a protocol can stream a long
/// response through the area in parts ([`After::MoreOutput`]).
#[derive(Debug)]
pub struct Output<'a> {
    area: &'a mut [u8],
    len: &'a mut usize,
    fixed: &'a mut &'static [u8],
}

impl<'a> Output<'a> {
    /// The output over `area`, of which `len` bytes are written, or `fixed`
    /// (the engine's, and the fuzz targets').
    #[doc(hidden)]
    pub fn new(area: &'a mut [u8], len: &'a mut usize, fixed: &'a mut &'static [u8]) -> Self {
        Output { area, len, fixed }
    }

    /// Bytes that can still be written.
    pub fn room(&self) -> usize {
        if self.fixed.is_empty() {
            self.area.len() - *self.len
        } else {
            0
        }
    }

    /// Whether nothing is written yet.
    pub fn is_empty(&self) -> bool {
        *self.len == 0 && self.fixed.is_empty()
    }

    /// Appends what fits of `bytes`; returns how many were taken.
    pub fn write(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.room());
        self.area[*self.len..*self.len + n].copy_from_slice(&bytes[..n]);
        *self.len += n;
        n
    }

    /// Sends `bytes` as the response, without copying them when nothing else
    /// is written (then nothing more can be, until they are sent); otherwise
    /// appends what fits, as [`Output::write`]. Returns how many were taken.
    #[inline]
    pub fn write_static(&mut self, bytes: &'static [u8]) -> usize {
        // `fixed` is empty whenever the protocol is called: static bytes are
        // sent before it is called again.
        if *self.len == 0 && self.fixed.is_empty() {
            *self.fixed = bytes;
            bytes.len()
        } else {
            self.write(bytes)
        }
    }
}
