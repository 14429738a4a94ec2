//! Fuzzes `ReqParser`: no panic on any input, and the verdict must not depend on
//! how the bytes were split into reads.
#![no_main]

use conn_daemon::proto::parser::{ReqParser, Verdict};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = ReqParser::new().parse(data);

    // The first byte picks the split pattern so that the fuzzer can steer it;
    // it stays part of the input so that valid requests are not lost.
    let Some(&seed) = data.first() else {
        return;
    };
    let step = usize::from(seed % 16) + 1;
    let mut end = usize::from(seed >> 4);
    let mut p = ReqParser::new();
    let mut last = Verdict::Incomplete;
    while end < data.len() {
        let v = p.parse(&data[..end]);
        if last != Verdict::Incomplete {
            assert_eq!(v, last, "final verdict revised at {end}");
        }
        last = v;
        end += step;
    }
    let split = p.parse(data);
    if last != Verdict::Incomplete {
        assert_eq!(split, last, "final verdict revised at the end");
    }
    assert_eq!(split, whole, "split every {step} bytes from {}", seed >> 4);

    // Byte by byte as well: the worst case for state kept across calls.
    let mut p = ReqParser::new();
    for end in 0..data.len() {
        p.parse(&data[..end]);
    }
    assert_eq!(p.parse(data), whole, "byte by byte");
});
