//! Fuzzes the memcache example's protocol and store (`examples/memcache`, included
//! by path): no panic on any input; the bytes answered do not depend on how the
//! input is split into reads nor on the size of the output area (as long as it holds
//! the longest reply); a session never asks to send an empty output area; and once
//! the session is closed the store's lists, index and counters are consistent, with
//! no chunk left reserved or pinned.
//!
//! The first byte steers the split (read size) and the output area's size; the rest
//! is protocol bytes.
#![no_main]

#[allow(dead_code)]
#[path = "../../examples/memcache/proto.rs"]
mod proto;
#[allow(dead_code)]
#[path = "../../examples/memcache/stats.rs"]
mod stats;
#[allow(dead_code)]
#[path = "../../examples/memcache/store.rs"]
mod store;

use libfuzzer_sys::fuzz_target;
use proto::{Area, Server, Session, Status, READ_BUFFER, STATS_ROOM, WRITE_BUFFER};
use store::StoreConfig;

/// A fixed clock: the answers must not depend on when the run happens.
const NOW: u32 = 1000;


/// A small store (one shard: the same evictions whatever the hash seed), so that
/// eviction and the page limit are reached.
fn server() -> Server {
    let cfg = StoreConfig {
        memory: 64 << 10,
        item_max: 16 << 10,
        shards: 1,
    };
    let mut srv = Server::new(&cfg, 1, 16).expect("store");
    srv.clock = proto::Clock::at(1_800_000_000);
    srv.cpu = || (0, 0);
    srv
}

/// The engine in miniature: a read buffer of READ_BUFFER bytes filled `step` at a
/// time, the output area sent whenever the session asks.
fn run(input: &[u8], step: usize, area: usize) -> Vec<u8> {
    let srv = server();
    let mut s = Session::default();
    let mut got = Vec::new();
    let mut out = Area::new(area);
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    'feed: loop {
        let take = step.min(input.len() - fed).min(READ_BUFFER - buf.len());
        buf.extend_from_slice(&input[fed..fed + take]);
        fed += take;
        loop {
            let (consumed, status) = s.process(&srv, NOW, &buf, &mut out);
            assert!(consumed <= buf.len());
            buf.drain(..consumed);
            match status {
                Status::Flush | Status::Stream => {
                    assert!(!out.buf.is_empty(), "{status:?} with nothing to send");
                    got.append(&mut out.buf);
                }
                Status::Answered(_) => {}
                Status::Close => break 'feed,
                Status::NeedInput { .. } => break,
            }
        }
        got.append(&mut out.buf);
        if fed == input.len() {
            break;
        }
        assert!(take > 0 || buf.len() < READ_BUFFER, "a full buffer left unread");
    }
    got.append(&mut out.buf);
    s.close(&srv);
    srv.store.audit(true).expect("store consistent");
    got
}

fuzz_target!(|data: &[u8]| {
    let Some((&seed, input)) = data.split_first() else {
        return;
    };
    let whole = run(input, usize::MAX, WRITE_BUFFER);
    let step = usize::from(seed & 0x1f) + 1;
    let area = STATS_ROOM + usize::from(seed >> 5) * 97;
    let split = run(input, step, area);
    assert!(whole == split, "reads of {step}, area {area}: answers differ");
});
