//! Differential: `ReqParser` must give the model's verdict (`conn_daemon_fuzz::
//! model`, written from docs/protocol.md) on every input and on every prefix it is fed, however
//! the input is split into reads.
#![no_main]

use conn_daemon::proto::parser::{ReqParser, REQUEST_MAX};
use conn_daemon_fuzz::model;
use libfuzzer_sys::fuzz_target;

/// Inputs up to this long are fed one byte at a time (every split at once); longer
/// ones at about 32 pseudo-random cuts, which keeps each run linear in the input.
const EVERY_BYTE: usize = 64;

fuzz_target!(|data: &[u8]| {
    assert_eq!(model::BUFFER, REQUEST_MAX);
    let want = model::verdict(data);
    assert_eq!(ReqParser::new().parse(data), want, "whole input");

    let mut p = ReqParser::new();
    if data.len() <= EVERY_BYTE {
        for end in 0..=data.len() {
            let got = p.parse(&data[..end]);
            assert_eq!(got, model::verdict(&data[..end]), "byte by byte, at {end}");
        }
        return;
    }
    // Cuts from a xorshift seeded by the input: about 32 reads of 1..2n/32 bytes,
    // with single bytes now and then so that a CRLF is split across reads too.
    let mut x = data.iter().take(8).fold(0x9e37_79b9_7f4a_7c15u64, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let span = (data.len() / 16).max(2) as u64;
    let mut end = 0;
    while end < data.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        end = (end + if x % 4 == 0 { 1 } else { 1 + (x >> 8) % span } as usize).min(data.len());
        let got = p.parse(&data[..end]);
        assert_eq!(got, model::verdict(&data[..end]), "cut at {end}");
    }
});
