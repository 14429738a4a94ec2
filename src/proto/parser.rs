//! The incremental request parser.
//!
//! A connection's bytes arrive in arbitrary pieces, so the parser is a tiny resumable
//! state machine: each call only scans the bytes appended since the previous call
//! (O(total bytes) per request, however the reads are split). It never copies or
//! allocates; its whole state is a few bytes kept in the connection slot.
//!
//! The protocol accepts exactly two requests, `GET /test/fast` and `GET /test/slow`.
//! A request is the request line plus any header lines, terminated by an empty line;
//! lines end with CRLF only (a bare LF or a lone CR is an ordinary byte). Header
//! lines are not examined, so the hot loop is a word-at-a-time search for LF.
#![forbid(unsafe_code)]

/// Size of a connection's request buffer; a request must end within it.
///
/// Only the first `REQUEST_MAX` bytes of a buffer are ever looked at: a request
/// whose terminating empty line is not complete within them is `TooLarge`, even if
/// a larger buffer holds the rest. That keeps the verdict independent of how the
/// bytes were split into reads.
pub const REQUEST_MAX: usize = 4096;

// The resume position is stored in a `u16` to keep `ReqParser` at 4 bytes.
const _: () = assert!(REQUEST_MAX <= u16::MAX as usize);

/// The method prefix every request must start with (case-sensitive, one space).
const METHOD: &[u8; 4] = b"GET ";

/// What the parser knows about a request so far.
///
/// `Fast`, `Slow`, `Invalid` and `TooLarge` are final: the parser never revises
/// them, so the caller may act on the first one it sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Valid so far but not yet terminated: read more bytes and call again.
    Incomplete,
    /// A complete `GET /test/fast` request: answer inline on the event loop.
    Fast,
    /// A complete `GET /test/slow` request: hand it to a worker thread.
    Slow,
    /// Not a request this server accepts.
    Invalid,
    /// `REQUEST_MAX` bytes, valid so far, without the end of the request
    /// (docs/protocol.md rule 4): closed like `Invalid`, told apart for the metrics.
    TooLarge,
}

/// Where the scan stands; the target verdict rides along once the request line is
/// decided so that no second pass over the line is needed at the end.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Phase {
    /// Fewer than 4 bytes seen: the method cannot be checked yet.
    #[default]
    Method,
    /// `GET ` matched; waiting for the request line's CRLF.
    RequestLine,
    /// Request line accepted with this target (`Fast` or `Slow`); waiting for the
    /// empty line.
    Headers(Verdict),
    /// A final verdict was reached; it is repeated on every later call.
    Done(Verdict),
}

/// Incremental parser for one request; reset it (`ReqParser::new()`) per request.
///
/// It holds no reference to the buffer: the caller passes the whole buffer on
/// every call, which lets the parser look back across read boundaries (a CRLF
/// split between two reads) without carrying bytes of its own.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReqParser {
    /// Index in the buffer from which the next call resumes its search.
    pos: u16,
    phase: Phase,
}

impl ReqParser {
    /// A parser at the start of a request; `const` so connection pools can be
    /// initialised statically.
    pub const fn new() -> Self {
        Self {
            pos: 0,
            phase: Phase::Method,
        }
    }

    /// `filled` is the connection's whole buffer so far; between calls it only grows
    /// (bytes appended). Resumes scanning where the previous call stopped (do not
    /// rescan from 0: O(total bytes) overall). Once a final verdict (Fast, Slow,
    /// Invalid, TooLarge) is returned, later calls return the same verdict.
    pub fn parse(&mut self, filled: &[u8]) -> Verdict {
        // Bytes past REQUEST_MAX can never belong to an acceptable request; cutting
        // them off here makes the verdict the same for every split of the input.
        let buf = &filled[..filled.len().min(REQUEST_MAX)];
        // Straight-line fall-through from phase to phase (rather than a loop over
        // a state match): a request that arrives in one read costs one dispatch,
        // and the phase is only stored when the call returns.
        let (from, target) = match self.phase {
            Phase::Done(verdict) => return verdict,
            Phase::Headers(target) => (usize::from(self.pos), target),
            Phase::Method | Phase::RequestLine => {
                let from = if self.phase == Phase::RequestLine {
                    usize::from(self.pos)
                } else if buf.len() < METHOD.len() {
                    // A CRLF can never be part of "GET ", so a short line that
                    // already ended is hopeless; anything else may still become
                    // "GET " and must wait.
                    if buf.windows(2).any(|w| w == b"\r\n") {
                        return self.finish(Verdict::Invalid);
                    }
                    return Verdict::Incomplete;
                } else if buf[..METHOD.len()] != *METHOD {
                    return self.finish(Verdict::Invalid);
                } else {
                    METHOD.len()
                };
                // `buf[3]` is the space of "GET ", so looking one byte back from
                // any LF at or after `from` (>= 4) is in bounds and cannot mistake
                // a method byte for the CR.
                let Some(lf) = scan_lf(buf, from, |lf| buf[lf - 1..=lf] == *b"\r\n") else {
                    self.phase = Phase::RequestLine;
                    return self.starve(buf);
                };
                // `get`: with the buffer only growing, `lf - 1 >= 4`, but a caller
                // that breaks that contract must get `Invalid`, not a panic.
                match classify_target(buf.get(METHOD.len()..lf - 1).unwrap_or_default()) {
                    Verdict::Invalid => return self.finish(Verdict::Invalid),
                    target => (lf + 1, target),
                }
            }
        };
        // The empty line's first CRLF may be the request line's own, so every LF
        // from here on is checked against the three bytes before it; they are in
        // the buffer even when they arrived in an earlier read.
        match scan_lf(buf, from, |lf| buf[lf - 3..=lf] == *b"\r\n\r\n") {
            Some(_) => self.finish(target),
            None => {
                self.phase = Phase::Headers(target);
                self.starve(buf)
            }
        }
    }

    /// The final verdict reached so far, or `Incomplete`: what the last call
    /// returned, without a buffer.
    pub fn verdict(&self) -> Verdict {
        match self.phase {
            Phase::Done(verdict) => verdict,
            _ => Verdict::Incomplete,
        }
    }

    /// Records a final verdict so that later calls skip straight to it.
    #[inline]
    fn finish(&mut self, verdict: Verdict) -> Verdict {
        self.phase = Phase::Done(verdict);
        verdict
    }

    /// Called when `buf` ran out before the current phase could finish: a full
    /// buffer can never receive the rest, anything shorter just needs more bytes.
    #[inline]
    fn starve(&mut self, buf: &[u8]) -> Verdict {
        if buf.len() >= REQUEST_MAX {
            return self.finish(Verdict::TooLarge);
        }
        // The next call resumes at the first unscanned byte; the phases look back
        // from each LF, so a CRLF split across reads is still found. `buf.len()`
        // fits: it is at most REQUEST_MAX (asserted above to fit in u16).
        self.pos = buf.len() as u16;
        Verdict::Incomplete
    }
}

/// Decides the request line's target. `line` is what follows "GET " up to (not
/// including) the CRLF.
#[inline]
fn classify_target(line: &[u8]) -> Verdict {
    let start = line.iter().position(|&b| b != b' ').unwrap_or(line.len());
    let rest = &line[start..];
    // The target runs to the next space; neither accepted target contains one,
    // so "the target is T" is "the line starts with T, then a space or nothing".
    // That compares fixed-size arrays (a couple of word compares) instead of
    // first measuring the target byte by byte.
    let Some((target, after)) = rest.split_first_chunk::<10>() else {
        return Verdict::Invalid;
    };
    if !matches!(after.first(), None | Some(b' ')) {
        return Verdict::Invalid;
    }
    // Array equality, unlike a match on byte-string patterns, compiles to two
    // wide compares rather than a chain of byte compares.
    if *target == *b"/test/fast" {
        Verdict::Fast
    } else if *target == *b"/test/slow" {
        Verdict::Slow
    } else {
        Verdict::Invalid
    }
}

/// Index of the first LF at or after `from` for which `accept(index)` holds.
/// `accept` must check the byte at the index itself: it may also be offered a VT
/// (0x0B) that directly follows an LF (see `lf_mask`).
///
/// A plain `position` loop costs a compare-and-branch per byte. Instead this reads
/// 16 bytes per step as two words, flags their LFs with a SWAR zero-byte test and
/// visits only the LFs found: a typical 90-byte request takes six steps plus one
/// check per line, with no `unsafe` and no `memchr` dependency. `accept` is how
/// each phase tells its line ends apart (CRLF, or CRLF CRLF) by comparing the
/// bytes ending at the candidate as one word; inlined, so it costs no call.
#[inline(always)]
fn scan_lf(buf: &[u8], from: usize, mut accept: impl FnMut(usize) -> bool) -> Option<usize> {
    let len = buf.len();
    let mut i = from;
    while let Some(pair) = buf.get(i..).and_then(<[u8]>::first_chunk::<16>) {
        let (lo, hi) = pair.split_at(8);
        let (lo, hi) = (lf_mask(lo), lf_mask(hi));
        // One branch per 16 bytes: lines are longer than that, so most steps
        // find nothing.
        if lo | hi != 0 {
            if let Some(lf) = first_accepted(lo, i, &mut accept) {
                return Some(lf);
            }
            if let Some(lf) = first_accepted(hi, i + 8, &mut accept) {
                return Some(lf);
            }
        }
        i += 16;
    }
    if let Some(word) = buf.get(i..).and_then(<[u8]>::first_chunk::<8>) {
        if let Some(lf) = first_accepted(lf_mask(word), i, &mut accept) {
            return Some(lf);
        }
        i += 8;
    }
    if i >= len {
        return None;
    }
    match buf.last_chunk::<8>() {
        // Re-read the last whole word, its already scanned bytes masked off,
        // rather than finishing with up to seven byte steps. The steps above
        // left less than a word, so `len - 8 < i < len` and the shift is in
        // 8..=56.
        Some(word) => {
            let start = len - 8;
            let fresh = u64::MAX << ((i - start) * 8);
            first_accepted(lf_mask(word) & fresh, start, &mut accept)
        }
        // Under eight bytes in all: only while the request line is still short.
        None => (i..len).find(|&j| buf[j] == b'\n' && accept(j)),
    }
}

/// Visits the bytes flagged in `hits` (bit 7 of byte k for index `base + k`) in
/// order and returns the first one `accept`ed.
#[inline(always)]
fn first_accepted(
    mut hits: u64,
    base: usize,
    accept: &mut impl FnMut(usize) -> bool,
) -> Option<usize> {
    while hits != 0 {
        // Little-endian load, so the lowest set bit is the earliest byte.
        let j = base + (hits.trailing_zeros() / 8) as usize;
        if accept(j) {
            return Some(j);
        }
        hits &= hits - 1;
    }
    None
}

/// Flags (bit 7 of the byte) every LF in the first eight bytes of `bytes`, plus
/// possibly a VT (0x0B) directly above an LF: the classic "has zero byte" test,
/// exact for the lowest zero byte only, since a borrow can ripple one byte up.
/// An exact test costs two more operations on every word, while the callers'
/// pattern compare, which includes the LF itself, rejects a VT for free.
#[inline(always)]
fn lf_mask(bytes: &[u8]) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const LFS: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut word = [0; 8];
    word.copy_from_slice(&bytes[..8]);
    let x = u64::from_le_bytes(word) ^ LFS;
    x.wrapping_sub(ONES) & !x & HIGHS
}

#[cfg(test)]
mod tests {
    use super::*;
    use Verdict::{Fast, Incomplete, Invalid, Slow, TooLarge};

    /// A deliberately naive whole-buffer reading of the protocol, written straight
    /// from the rules, to check the incremental parser against.
    fn reference(filled: &[u8]) -> Verdict {
        fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
            (from..=hay.len().saturating_sub(needle.len()))
                .find(|&i| hay.len() >= needle.len() && &hay[i..i + needle.len()] == needle)
        }
        let buf = &filled[..filled.len().min(REQUEST_MAX)];
        let full = filled.len() >= REQUEST_MAX;
        if buf.len() < 4 {
            return if find(buf, b"\r\n", 0).is_some() {
                Invalid
            } else {
                Incomplete
            };
        }
        if &buf[..4] != b"GET " {
            return Invalid;
        }
        let Some(cr) = find(buf, b"\r\n", 0) else {
            return if full { TooLarge } else { Incomplete };
        };
        let line = &buf[4..cr];
        let mut i = 0;
        while i < line.len() && line[i] == b' ' {
            i += 1;
        }
        let mut j = i;
        while j < line.len() && line[j] != b' ' {
            j += 1;
        }
        let target = match &line[i..j] {
            b"/test/fast" => Fast,
            b"/test/slow" => Slow,
            _ => return Invalid,
        };
        match find(buf, b"\r\n\r\n", cr) {
            Some(_) => target,
            None if full => TooLarge,
            None => Incomplete,
        }
    }

    fn whole(input: &[u8]) -> Verdict {
        ReqParser::new().parse(input)
    }

    /// Feeds `input` as successive prefixes ending at `cuts` (then the whole), and
    /// checks after every call that the incremental verdict is exactly what a
    /// fresh parser says about that prefix: no final verdict too early or too late,
    /// and none revised.
    fn feed_cuts(input: &[u8], cuts: impl IntoIterator<Item = usize>) -> Verdict {
        let mut p = ReqParser::new();
        let mut last = Incomplete;
        for end in cuts.into_iter().chain([input.len()]) {
            let v = p.parse(&input[..end]);
            assert_eq!(v, whole(&input[..end]), "prefix {:?}", &input[..end]);
            if last != Incomplete {
                assert_eq!(v, last, "final verdict revised at {end}");
            }
            last = v;
        }
        last
    }

    /// All the ways the splitting tests feed an input: byte by byte, and every
    /// single split point.
    fn check_splits(input: &[u8]) {
        let expected = whole(input);
        assert_eq!(expected, reference(input), "reference on {input:?}");
        for end in 0..=input.len() {
            assert_eq!(
                whole(&input[..end]),
                reference(&input[..end]),
                "prefix {end}"
            );
        }
        assert_eq!(feed_cuts(input, 0..input.len()), expected, "byte by byte");
        for cut in 0..=input.len() {
            assert_eq!(feed_cuts(input, [cut]), expected, "split at {cut}");
        }
        // Two split points: quadratic, so only for the short inputs.
        if input.len() > 200 {
            return;
        }
        for a in 0..=input.len() {
            for b in a..=input.len() {
                assert_eq!(feed_cuts(input, [a, b]), expected, "split at {a},{b}");
            }
        }
    }

    const AB: &[u8] = b"GET /test/fast HTTP/1.0\r\nHost: 127.0.0.1:9000\r\n\
        User-Agent: ApacheBench/2.3\r\nAccept: */*\r\n\r\n";

    /// Every example from the protocol description, with its whole-buffer verdict.
    const EXAMPLES: &[(&[u8], Verdict)] = &[
        (b"GET /test/fast\r\n\r\n", Fast),
        (b"GET    /test/slow HTTP/1.1\r\nHost: x\r\n\r\n", Slow),
        (b"GET /test/fast\n\n", Incomplete),
        (b"get /test/fast\r\n\r\n", Invalid),
        (b"GET /test/fast/\r\n\r\n", Invalid),
        (b"GET /test/fast?x\r\nHost: x\r\n\r\n", Invalid),
        (b"GET \r\n\r\n", Invalid),
        (b"GET /test/fast\r\n", Incomplete),
        (b"POST", Invalid),
        (b"GE", Incomplete),
        (b"\r\n", Invalid),
        (b"G\r\n", Invalid),
        (b"GET /x", Incomplete),
        (b"GET /test/fast\r\n\r\nJUNK", Fast),
        (AB, Fast),
    ];

    #[test]
    fn examples_whole() {
        for &(input, expected) in EXAMPLES {
            assert_eq!(
                whole(input),
                expected,
                "{:?}",
                String::from_utf8_lossy(input)
            );
            assert_eq!(reference(input), expected, "reference {input:?}");
        }
    }

    #[test]
    fn examples_every_split() {
        for &(input, _) in EXAMPLES {
            check_splits(input);
        }
    }

    /// The prefix length at which each example's final verdict first appears.
    #[test]
    fn final_verdict_appears_exactly_when_decidable() {
        let cases: &[(&[u8], usize)] = &[
            // The empty line's LF.
            (b"GET /test/fast\r\n\r\n", 18),
            (AB, AB.len()),
            // Four bytes in: the method is decidable.
            (b"get /test/fast\r\n\r\n", 4),
            (b"POST", 4),
            // The request line's LF.
            (b"GET /test/fast/\r\n\r\n", 17),
            (b"GET \r\n\r\n", 6),
            // A CRLF before the method could be checked.
            (b"G\r\n", 3),
            (b"\r\n", 2),
        ];
        for &(input, at) in cases {
            for end in 0..=input.len() {
                let v = whole(&input[..end]);
                assert_eq!(v != Incomplete, end >= at, "{input:?} prefix {end}: {v:?}");
            }
        }
    }

    #[test]
    fn method_rule() {
        assert_eq!(whole(b""), Incomplete);
        assert_eq!(whole(b"X"), Incomplete);
        assert_eq!(whole(b"XYZ"), Incomplete);
        assert_eq!(whole(b"GET"), Incomplete);
        assert_eq!(whole(b"GET "), Incomplete);
        assert_eq!(whole(b"GE\r"), Incomplete);
        assert_eq!(whole(b"GE\r\n"), Invalid);
        assert_eq!(whole(b"\r\nG"), Invalid);
        assert_eq!(whole(b"\n\r"), Incomplete);
        for bad in [
            &b"GET\t/test/fast\r\n\r\n"[..],
            b"GETX/test/fast\r\n\r\n",
            b"Get /test/fast\r\n\r\n",
            b" GET /test/fast\r\n\r\n",
            b"GET/test/fast\r\n\r\n",
            b"HEAD /test/fast\r\n\r\n",
        ] {
            assert_eq!(whole(bad), Invalid, "{bad:?}");
            check_splits(bad);
        }
    }

    #[test]
    fn target_rule() {
        let ok: &[(&[u8], Verdict)] = &[
            (b"GET /test/fast\r\n\r\n", Fast),
            (b"GET /test/slow\r\n\r\n", Slow),
            (b"GET  /test/fast\r\n\r\n", Fast),
            (b"GET /test/slow \r\n\r\n", Slow),
            (b"GET /test/fast HTTP/1.1\r\n\r\n", Fast),
            (b"GET /test/slow    whatever  here\r\n\r\n", Slow),
            (b"GET /test/fast \t\r junk\r\n\r\n", Fast),
            (b"GET /test/fast HTTP/1.1\r\nA: b\r\nC: d\r\n\r\n", Fast),
        ];
        for &(input, expected) in ok {
            assert_eq!(whole(input), expected, "{input:?}");
            check_splits(input);
        }
        for bad in [
            &b"GET /test/fast/\r\n\r\n"[..],
            b"GET /test/fast?x=1 HTTP/1.1\r\n\r\n",
            b"GET /test/fas\r\n\r\n",
            b"GET /test/fastt\r\n\r\n",
            b"GET /TEST/FAST\r\n\r\n",
            b"GET /test/medium\r\n\r\n",
            b"GET test/fast\r\n\r\n",
            b"GET \t/test/fast\r\n\r\n",
            b"GET /test/fast\t\r\n\r\n",
            b"GET /test/fast\r\r\n\r\n",
            b"GET /test/fast\n\r\n\r\n",
            b"GET /test/\r\n\r\n",
            b"GET    \r\n\r\n",
            b"GET \r\n",
        ] {
            assert_eq!(whole(bad), Invalid, "{bad:?}");
            check_splits(bad);
        }
        // Undecided until the request line's CRLF arrives, even when hopeless.
        assert_eq!(whole(b"GET /nope"), Incomplete);
        assert_eq!(whole(b"GET /nope\r"), Incomplete);
        assert_eq!(whole(b"GET /nope\n"), Incomplete);
        assert_eq!(whole(b"GET /nope\r\n"), Invalid);
    }

    #[test]
    fn end_of_request_rule() {
        let incomplete: &[&[u8]] = &[
            b"GET /test/fast\r\n",
            b"GET /test/fast\r\n\r",
            b"GET /test/fast\r\n\n",
            b"GET /test/fast\r\n\n\r\n",
            b"GET /test/fast\n\n",
            b"GET /test/fast\r\nHost: x\r\n",
            b"GET /test/fast\r\nHost: x\r\r\n",
            b"GET /test/fast\r\nHost: x\r\n\n",
            b"GET /test/fast\r\nHost: x\r\n\r\r\n",
            b"GET /test/fast\r\nHost: x\n\r\n",
        ];
        for &input in incomplete {
            assert_eq!(whole(input), Incomplete, "{input:?}");
            check_splits(input);
        }
        let complete: &[(&[u8], Verdict)] = &[
            (b"GET /test/slow\r\n\r\n", Slow),
            (b"GET /test/slow\r\nHost: x\r\n\r\n", Slow),
            (b"GET /test/slow\r\nHost: x\n\r\n\r\n", Slow),
            (b"GET /test/slow\r\n\r\r\n\r\n", Slow),
            (
                b"GET /test/slow\r\nA\rB\r\n\r\nGET /test/fast\r\n\r\n",
                Slow,
            ),
            (b"GET /test/slow\r\n\r\n\r\n\r\n", Slow),
            (b"GET /test/fast\r\n\r\n\xff\x00", Fast),
        ];
        for &(input, expected) in complete {
            assert_eq!(whole(input), expected, "{input:?}");
            check_splits(input);
        }
    }

    #[test]
    fn size_limit_rule() {
        // The longest request that fits: the empty line ends exactly at the limit.
        let mut req = b"GET /test/fast\r\nX: ".to_vec();
        req.resize(REQUEST_MAX - 4, b'a');
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(req.len(), REQUEST_MAX);
        assert_eq!(whole(&req), Fast);
        assert_eq!(whole(&req[..REQUEST_MAX - 1]), Incomplete);
        check_splits(&req);

        // One byte more and the end falls outside the buffer.
        let mut long = b"GET /test/fast\r\nX: ".to_vec();
        long.resize(REQUEST_MAX - 3, b'a');
        long.extend_from_slice(b"\r\n\r\n");
        assert_eq!(whole(&long[..REQUEST_MAX - 1]), Incomplete);
        assert_eq!(whole(&long[..REQUEST_MAX]), TooLarge);
        // Bytes beyond the limit never rescue a request, however they are fed.
        assert_eq!(whole(&long), TooLarge);
        check_splits(&long);

        // A request line that never ends within the buffer.
        let mut line = b"GET /test/fast ".to_vec();
        line.resize(REQUEST_MAX, b'x');
        assert_eq!(whole(&line[..REQUEST_MAX - 1]), Incomplete);
        assert_eq!(whole(&line), TooLarge);
        let mut p = ReqParser::new();
        assert_eq!(p.parse(&line[..100]), Incomplete);
        assert_eq!(p.parse(&line[..REQUEST_MAX - 1]), Incomplete);
        assert_eq!(p.parse(&line), TooLarge);
    }

    #[test]
    fn final_verdict_sticks() {
        let mut p = ReqParser::new();
        assert_eq!(p.parse(b"GET /test/fast\r\n\r\n"), Fast);
        assert_eq!(p.parse(b"GET /test/fast\r\n\r\nmore bytes\r\n\r\n"), Fast);
        let mut p = ReqParser::new();
        assert_eq!(p.parse(b"POST"), Invalid);
        assert_eq!(p.parse(b"POST /test/fast\r\n\r\n"), Invalid);
        // A copy carries the state with it.
        let mut p = ReqParser::new();
        assert_eq!(p.parse(b"GET /test/sl"), Incomplete);
        let mut q = p;
        assert_eq!(q.parse(b"GET /test/slow\r\n\r\n"), Slow);
        assert_eq!(p.parse(b"GET /test/slow\r\n\r"), Incomplete);
        assert_eq!(ReqParser::default().parse(AB), Fast);
    }

    /// The word-at-a-time scan against a byte loop: every buffer length around
    /// the word size, every LF position and start, and an `accept` that skips
    /// some LFs so that several LFs in one word get visited.
    #[test]
    fn scan_lf_matches_naive() {
        for len in 0..=26 {
            for lf in 0..len {
                for extra in [None, Some(1), Some(2), Some(7), Some(8), Some(9)] {
                    // Bytes that differ from LF by one bit or that borrow in the
                    // zero-byte test, around the LFs.
                    let mut buf: Vec<u8> = [0x0b, 0x8a, 0x00, 0x09, 0xff, 0x0a ^ 0x80, 0x01]
                        .iter()
                        .cycle()
                        .take(len)
                        .copied()
                        .collect();
                    buf[lf] = b'\n';
                    if let Some(e) = extra.filter(|e| lf + e < len) {
                        buf[lf + e] = b'\n';
                    }
                    for from in 0..=len {
                        for skip_first in [false, true] {
                            // Like the parser's, it checks the byte itself:
                            // the scan may offer a VT right after an LF.
                            let accept = |j: usize| buf[j] == b'\n' && !(skip_first && j == lf);
                            let naive = (from..len).find(|&j| accept(j));
                            assert_eq!(
                                scan_lf(&buf, from, accept),
                                naive,
                                "len {len} lf {lf} extra {extra:?} from {from} skip {skip_first}"
                            );
                        }
                    }
                }
            }
        }
        assert_eq!(scan_lf(b"abc", 5, |_| true), None);
    }

    /// The contract says the buffer only grows; a caller that breaks it gets
    /// some verdict, never a panic (which would take the server down).
    #[test]
    fn contract_violations_do_not_panic() {
        let inputs: Vec<&[u8]> = EXAMPLES
            .iter()
            .map(|&(input, _)| input)
            .chain([&b""[..], b"GET \r\n", b"GET\r\n\r\n", b"\r\n\r\n\r\n\r\n"])
            .collect();
        for &a in &inputs {
            for &b in &inputs {
                for cut in 0..=a.len() {
                    let mut p = ReqParser::new();
                    p.parse(&a[..cut]);
                    p.parse(b);
                    p.parse(&b[..b.len() / 2]);
                    p.parse(a);
                }
            }
        }
    }

    #[test]
    fn state_is_small() {
        assert!(std::mem::size_of::<ReqParser>() <= 4);
    }
}
