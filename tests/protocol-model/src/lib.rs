//! The one model of the protocol: docs/protocol.md's rules 1-4 as a function of
//! the bytes a connection has received so far, and what a client must then see
//! (rules 5, 6 and 8).
//!
//! `tests/wire.rs` asks it what the server must have done after each piece it
//! sends, and checks its hand-written tables against it; `ReqParser`'s unit
//! tests, `tests/parser_prop.rs` and the fuzz targets (`fuzz/`) compare
//! `ReqParser` and `ConnectionCtx` with it on every input, through
//! [`verdict_as!`].
//!
//! Written from docs/protocol.md, not from `src/proto/parser.rs`, and deliberately
//! naive (plain substring searches over the whole buffer, no state across calls,
//! no word-at-a-time tricks), so that a disagreement with the parser points at a
//! bug in one of them rather than at a shared mistake. It shares no code with the
//! server, not even the verdict type: the fuzz crate maps one onto the other.
//!
//! docs/protocol.md leaves one thing open: *when* a bad target is noticed. The
//! model judges the request line once its CRLF has arrived (rule 2 defines the
//! line as the bytes up to the first CRLF), so `GET /x` followed by 5000 bytes
//! without a CRLF is [`Verdict::TooLarge`], not [`Verdict::Invalid`]. Either way
//! the connection closes without a byte.
//!
//! Rule 7 (bytes after the end) is about *when* bytes arrive, not which: a
//! function of the bytes cannot state it, and the callers that need it (the fuzz
//! `conn` target, `tests/wire.rs`'s rule 7 test) check it themselves.
#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations)]

/// The per-connection buffer: "a 4096-byte buffer" (docs/protocol.md, rule 4).
pub const BUFFER: usize = 4096;

/// What the bytes received so far mean (rules 1-4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Nothing is decided yet: more bytes may make it any of the others.
    Incomplete,
    /// A complete request for `/test/fast`.
    Fast,
    /// A complete request for `/test/slow`.
    Slow,
    /// Rule 1 or 2 is broken.
    Invalid,
    /// Rule 4: the buffer is full and the request has not ended.
    TooLarge,
}

/// What a client sees once the server has acted on a [`Verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Exactly the 57 bytes of rule 5, then close (rules 5, 6, 8).
    Response,
    /// Close without a byte.
    Closed,
    /// Neither a byte nor a close: the request is incomplete.
    Pending,
}

impl Verdict {
    /// What the client sees: a complete request, fast or slow, is answered (a
    /// slow one after its task, rule 6), a broken one closed, an incomplete one
    /// left waiting.
    pub fn outcome(self) -> Outcome {
        match self {
            Verdict::Incomplete => Outcome::Pending,
            Verdict::Fast | Verdict::Slow => Outcome::Response,
            Verdict::Invalid | Verdict::TooLarge => Outcome::Closed,
        }
    }
}

/// Where `needle` first occurs in `hay`.
fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The verdict on `input`, the bytes a connection has received so far, however
/// they were split into reads (anything past [`BUFFER`] could never be in the
/// buffer and is ignored).
pub fn verdict(input: &[u8]) -> Verdict {
    let buf = &input[..input.len().min(BUFFER)];
    // Rule 4: a full buffer that is still undecided can never be decided.
    let undecided = if buf.len() == BUFFER {
        Verdict::TooLarge
    } else {
        Verdict::Incomplete
    };
    // Rule 1: the method, once 4 bytes are there.
    let method_ok = buf.len() < 4 || buf[..4] == *b"GET ";
    let Some(line_end) = find(buf, b"\r\n") else {
        return if method_ok {
            undecided
        } else {
            Verdict::Invalid
        };
    };
    // Rule 1's second sentence: a CRLF before the method could be checked.
    if line_end < 4 || !method_ok {
        return Verdict::Invalid;
    }
    // Rule 2: after "GET ", skip spaces; the target runs to a space or the CRLF.
    let after = &buf[4..line_end];
    let start = after.iter().position(|&b| b != b' ').unwrap_or(after.len());
    let after = &after[start..];
    let target = &after[..after.iter().position(|&b| b == b' ').unwrap_or(after.len())];
    let kind = match target {
        b"/test/fast" => Verdict::Fast,
        b"/test/slow" => Verdict::Slow,
        _ => return Verdict::Invalid,
    };
    // Rule 3: the end is the first CRLF right after another CRLF. The first CRLF
    // of the buffer ends the request line, so any CRLF CRLF starts at or after it.
    match find(buf, b"\r\n\r\n") {
        Some(_) => kind,
        None => undecided,
    }
}

/// [`verdict`] as a value of another enum with the same five variant names
/// (`verdict_as!(Verdict, input)`, with the server's `Verdict` in scope): how
/// the parser's tests and the fuzz targets compare the parser with the model,
/// while the model still shares no type with the server.
#[macro_export]
macro_rules! verdict_as {
    ($verdict:ident, $input:expr) => {
        match $crate::verdict($input) {
            $crate::Verdict::Incomplete => $verdict::Incomplete,
            $crate::Verdict::Fast => $verdict::Fast,
            $crate::Verdict::Slow => $verdict::Slow,
            $crate::Verdict::Invalid => $verdict::Invalid,
            $crate::Verdict::TooLarge => $verdict::TooLarge,
        }
    };
}

/// Shorthand for `verdict(input).outcome()`: what the client must have seen
/// once exactly `input` has arrived.
pub fn outcome(input: &[u8]) -> Outcome {
    verdict(input).outcome()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::*;

    #[test]
    fn spec_examples() {
        let cases: &[(&[u8], Verdict)] = &[
            (b"", Incomplete),
            (b"GE", Incomplete),
            (b"X", Incomplete),
            (b"\r\n", Invalid),
            (b"G\r\n", Invalid),
            (b"GET\r\n\r\n", Invalid),
            (b"PUT ", Invalid),
            (b"get /test/fast\r\n\r\n", Invalid),
            (b"GET /test/fast", Incomplete),
            (b"GET /test/fast\r\n", Incomplete),
            (b"GET /test/fast\r\n\r\n", Fast),
            (b"GET    /test/slow HTTP/1.1\r\nHost: a\r\n\r\njunk", Slow),
            (b"GET /test/fast/\r\n\r\n", Invalid),
            (b"GET /test/fast?x\r\n", Invalid),
            (b"GET \r\n\r\n", Invalid),
            (b"GET /test/fast\n\n", Incomplete),
            (b"GET /test/fast\r\n\n\r\n", Incomplete),
            (b"GET /test/fast\r\r\n\r\n", Invalid),
            (b"GET /test/fast\tx\r\n\r\n", Invalid),
        ];
        for &(input, want) in cases {
            assert_eq!(verdict(input), want, "{:?}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn buffer_limit() {
        let mut long = b"GET /test/fast\r\n".to_vec();
        long.resize(BUFFER - 4, b'x');
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(verdict(&long), Fast, "ends exactly at the buffer's end");
        long.insert(20, b'x');
        assert_eq!(verdict(&long), TooLarge);
        assert_eq!(verdict(&long[..BUFFER - 1]), Incomplete);
        let mut bad = b"GET /x".to_vec();
        bad.resize(BUFFER + 100, b'y');
        assert_eq!(verdict(&bad), TooLarge, "the target is judged at the CRLF");
    }

    #[test]
    fn outcomes() {
        assert_eq!(outcome(b"GET /test/fast\r\n\r\n"), Outcome::Response);
        assert_eq!(outcome(b"GET /test/slow\r\n\r\n"), Outcome::Response);
        assert_eq!(outcome(b"GET /test/fast\r\n"), Outcome::Pending);
        assert_eq!(outcome(b"POST"), Outcome::Closed);
        let mut full = b"GET /test/fast ".to_vec();
        full.resize(BUFFER, b'x');
        assert_eq!(verdict(&full), TooLarge);
        assert_eq!(outcome(&full), Outcome::Closed);
        assert_eq!(outcome(&full[..BUFFER - 1]), Outcome::Pending);
    }
}
