//! conn-daemon's own protocol (docs/protocol.md) on the engine: `GET /test/fast`
//! answered at once, `GET /test/slow` after `--slow-duration` of work off the
//! loop, one request per connection, then close.
//!
//! Everything specific to it lives in this folder: the request parser, the
//! 57-byte response, the slow request's job, and its metrics labels. A new
//! request kind (`/test/cpu`, say) is a new [`Kind`], a parser verdict and, if it
//! leaves the loop, a field of [`SlowTask`] read by [`Builtin::run_job`].
#![forbid(unsafe_code)]

use std::time::Duration;

use crate::config::Config;
use crate::engine::{After, Label, Output, Protocol, Step};

pub mod parser;
#[cfg(test)]
mod tests;

use parser::{ReqParser, Verdict, REQUEST_MAX};

/// The only response: 57 bytes, then the server closes.
pub const RESPONSE: &[u8; 57] =
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";

/// The built-in protocol, with the slow request's duration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Builtin {
    /// `--slow-duration`; `None` answers a slow request at once, like a fast
    /// one (`-w 0`: no workers).
    slow: Option<Duration>,
}

impl Builtin {
    /// Slow requests take `slow` off the loop; `None` answers them inline.
    pub const fn new(slow: Option<Duration>) -> Self {
        Builtin { slow }
    }

    /// As the command line says: `-D`, inline with `-w 0`.
    pub fn from_config(config: &Config) -> Self {
        Builtin::new((config.worker_threads > 0).then_some(config.slow_duration))
    }
}

/// The `kind` label of a response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// To `GET /test/fast`.
    Fast,
    /// To `GET /test/slow`.
    Slow,
}

impl Label for Kind {
    const LABELS: &'static [&'static str] = &["fast", "slow"];
    fn index(self) -> usize {
        self as usize
    }
}

/// The protocol's own drop reasons.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The bytes break the protocol (docs/protocol.md rules 1-3).
    Invalid,
    /// `REQUEST_MAX` bytes without the end of the request (rule 4).
    TooLarge,
}

impl Label for Reason {
    const LABELS: &'static [&'static str] = &["invalid", "too_large"];
    fn index(self) -> usize {
        self as usize
    }
}

/// A connection's state: the parser, and whether the request filled the
/// buffer (then unread bytes may follow it, and the close lingers).
#[derive(Clone, Copy, Debug, Default)]
pub struct Conn {
    parser: ReqParser,
    full: bool,
}

/// The slow request's work: wait `--slow-duration` ([`Builtin::job_wait`]), as
/// the reference does. Nothing else travels: the response is always the same.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlowTask;

impl Builtin {
    /// The response, and what follows it: a lingering close if the request
    /// filled the buffer (the read that filled it may have left bytes behind).
    #[inline(always)]
    fn respond(kind: Kind, full: bool, consumed: usize, out: &mut Output<'_>) -> Step<Self> {
        out.write_static(RESPONSE);
        Step::Respond {
            consumed,
            kind,
            after: if full { After::Linger } else { After::Close },
        }
    }
}

impl Protocol for Builtin {
    type Conn = Conn;
    type Job = SlowTask;
    type Kind = Kind;
    type Reason = Reason;
    type ReadBuffer = [u8; REQUEST_MAX];
    type WriteBuffer = [u8; 0];

    const KINDS_HELP: &'static str = "Responses sent whole; kind=\"slow\": to /test/slow.";
    const WORKER_KINDS: &'static [usize] = &[Kind::Slow as usize];

    #[inline]
    fn open(&self, conn: &mut Conn) {
        *conn = Conn::default();
    }

    /// The parser looks at the whole request each time (it resumes where it
    /// stopped): nothing is consumed until the request is complete.
    #[inline(always)]
    fn on_input(&self, conn: &mut Conn, input: &[u8], out: &mut Output<'_>) -> Step<Self> {
        let full = input.len() == REQUEST_MAX;
        match conn.parser.parse(input) {
            Verdict::Incomplete => Step::More {
                consumed: 0,
                begun: true,
            },
            Verdict::Invalid => Step::Drop {
                consumed: 0,
                reason: Reason::Invalid,
            },
            Verdict::TooLarge => Step::Drop {
                consumed: 0,
                reason: Reason::TooLarge,
            },
            Verdict::Fast => Self::respond(Kind::Fast, full, input.len(), out),
            Verdict::Slow if self.slow.is_none() => {
                Self::respond(Kind::Slow, full, input.len(), out)
            }
            Verdict::Slow => {
                conn.full = full;
                Step::Offload {
                    consumed: input.len(),
                    job: SlowTask,
                }
            }
        }
    }

    fn job_wait(&self, _job: &SlowTask) -> Duration {
        self.slow.unwrap_or_default()
    }

    fn on_job_done(&self, conn: &mut Conn, _job: SlowTask, out: &mut Output<'_>) -> Step<Self> {
        Self::respond(Kind::Slow, conn.full, 0, out)
    }
}
