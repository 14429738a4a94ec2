//! Property tests for `ReqParser`: the verdict must not depend on how the bytes
//! were split into reads, and every well-formed request must be accepted.

use conn_daemon::proto::parser::{ReqParser, Verdict, REQUEST_MAX};
use proptest::prelude::*;

/// Moderate so that the file stays at a few seconds in a debug build.
fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 512,
        ..ProptestConfig::default()
    }
}

/// Pieces that steer random input towards the interesting paths (valid method,
/// valid targets, line ends, near-miss line ends) instead of pure noise, which
/// would almost always be rejected at the method.
fn piece() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(b"GET ".to_vec()),
        3 => Just(b"/test/fast".to_vec()),
        3 => Just(b"/test/slow".to_vec()),
        3 => Just(b" ".to_vec()),
        2 => Just(b"\r".to_vec()),
        2 => Just(b"\n".to_vec()),
        4 => Just(b"\r\n".to_vec()),
        1 => Just(b"\t".to_vec()),
        2 => prop::collection::vec(any::<u8>(), 1..8),
        2 => "[ -~]{1,16}".prop_map(String::into_bytes),
        // Long runs so that the REQUEST_MAX boundary gets exercised.
        1 => (1usize..1500, any::<u8>()).prop_map(|(n, b)| vec![b; n]),
    ]
}

/// Biased byte strings up to about 5000 bytes, mostly starting like a request.
fn input() -> impl Strategy<Value = Vec<u8>> {
    (
        prop::bool::weighted(0.7),
        prop::collection::vec(piece(), 0..40),
    )
        .prop_map(|(get, pieces)| {
            let mut out = if get { b"GET ".to_vec() } else { Vec::new() };
            for p in pieces {
                out.extend_from_slice(&p);
            }
            out.truncate(5000);
            out
        })
}

/// The protocol read naively off the whole buffer (rescanning, quadratic), as an
/// oracle for the incremental parser on random input.
fn reference(filled: &[u8]) -> Verdict {
    fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
        (from..hay.len()).find(|&i| hay[i..].starts_with(needle))
    }
    let buf = &filled[..filled.len().min(REQUEST_MAX)];
    let starved = if filled.len() >= REQUEST_MAX {
        Verdict::TooLarge
    } else {
        Verdict::Incomplete
    };
    if buf.len() < 4 {
        return if find(buf, b"\r\n", 0).is_some() {
            Verdict::Invalid
        } else {
            Verdict::Incomplete
        };
    }
    if !buf.starts_with(b"GET ") {
        return Verdict::Invalid;
    }
    let Some(cr) = find(buf, b"\r\n", 0) else {
        return starved;
    };
    let line = &buf[4..cr];
    let start = line.iter().take_while(|&&b| b == b' ').count();
    let target = line[start..].split(|&b| b == b' ').next().unwrap_or(&[]);
    let verdict = match target {
        b"/test/fast" => Verdict::Fast,
        b"/test/slow" => Verdict::Slow,
        _ => return Verdict::Invalid,
    };
    match find(buf, b"\r\n\r\n", cr) {
        Some(_) => verdict,
        None => starved,
    }
}

/// Feeds `data` as growing prefixes ending at the (sorted) `cuts`, then whole,
/// checking that a final verdict, once given, is never revised.
fn feed(data: &[u8], cuts: &[usize]) -> Verdict {
    let mut p = ReqParser::new();
    let mut last = Verdict::Incomplete;
    for &end in cuts.iter().chain([&data.len()]) {
        let v = p.parse(&data[..end]);
        if last != Verdict::Incomplete {
            assert_eq!(v, last, "final verdict revised at {end}");
        }
        last = v;
    }
    last
}

/// Split points as fractions so that they scale with the generated input.
fn cuts_for(len: usize, fractions: &[u16]) -> Vec<usize> {
    let mut cuts: Vec<usize> = fractions
        .iter()
        .map(|&f| len * usize::from(f) / usize::from(u16::MAX))
        .collect();
    cuts.sort_unstable();
    cuts
}

/// A request line's trailing text or a header line of `len` bytes: any bytes,
/// lone CRs and LFs included (they do not end a line), with every CRLF broken up
/// so that the line cannot end early. Mapped rather than filtered, because
/// rejected cases cost generation time.
fn line_text(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), len).prop_map(|mut line| {
        // About one byte in ten becomes a CR or an LF; cheaper to generate
        // than a weighted choice per byte.
        for b in &mut line {
            if *b < 26 {
                *b = if *b % 2 == 0 { b'\r' } else { b'\n' };
            }
        }
        for i in 1..line.len() {
            if line[i - 1] == b'\r' && line[i] == b'\n' {
                line[i] = b'x';
            }
        }
        line
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn split_does_not_change_verdict(
        data in input(),
        fractions in prop::collection::vec(any::<u16>(), 0..12),
    ) {
        let whole = ReqParser::new().parse(&data);
        prop_assert_eq!(whole, reference(&data));
        let cuts = cuts_for(data.len(), &fractions);
        prop_assert_eq!(feed(&data, &cuts), whole);
    }

    #[test]
    fn byte_by_byte_matches_whole(data in input()) {
        let whole = ReqParser::new().parse(&data);
        let cuts: Vec<usize> = (0..data.len()).collect();
        prop_assert_eq!(feed(&data, &cuts), whole);
        // A full buffer must get a final verdict: nothing more can be read into it.
        if data.len() >= REQUEST_MAX {
            prop_assert_ne!(whole, Verdict::Incomplete);
        }
    }

    #[test]
    fn valid_requests_are_accepted(
        slow in any::<bool>(),
        spaces in 1usize..8,
        // Anything after the target must start with a space or it would be part
        // of the target.
        trailing in prop::option::of(line_text(0..60)),
        // Non-empty: an empty header line is the end of the request.
        headers in prop::collection::vec(line_text(1..60), 0..8),
        junk in prop::collection::vec(any::<u8>(), 0..32),
        fractions in prop::collection::vec(any::<u16>(), 0..6),
    ) {
        let mut req = b"GET".to_vec();
        req.resize(3 + spaces, b' ');
        req.extend_from_slice(if slow { b"/test/slow" } else { b"/test/fast" });
        if let Some(t) = trailing {
            req.push(b' ');
            req.extend_from_slice(&t);
        }
        req.extend_from_slice(b"\r\n");
        for h in &headers {
            req.extend_from_slice(h);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"\r\n");
        let end = req.len();
        // Bytes after the end of the request (a pipelined one, say) are ignored.
        req.extend_from_slice(&junk);

        let expected = if slow { Verdict::Slow } else { Verdict::Fast };
        prop_assert_eq!(ReqParser::new().parse(&req), expected);
        prop_assert_eq!(feed(&req, &cuts_for(req.len(), &fractions)), expected);
        // Not a byte earlier.
        prop_assert_eq!(ReqParser::new().parse(&req[..end - 1]), Verdict::Incomplete);
    }

    #[test]
    fn request_must_end_within_the_buffer(
        end in REQUEST_MAX - 8..REQUEST_MAX + 8,
        extra in 0usize..16,
        fractions in prop::collection::vec(any::<u16>(), 0..6),
    ) {
        // One header line padded so that the empty line's LF is byte `end - 1`.
        let mut req = b"GET /test/slow\r\nX-Pad: ".to_vec();
        req.resize(end - 4, b'p');
        req.extend_from_slice(b"\r\n\r\n");
        req.resize(end + extra, b'j');

        let expected = if end <= REQUEST_MAX { Verdict::Slow } else { Verdict::TooLarge };
        prop_assert_eq!(ReqParser::new().parse(&req), expected);
        prop_assert_eq!(feed(&req, &cuts_for(req.len(), &fractions)), expected);
    }
}
