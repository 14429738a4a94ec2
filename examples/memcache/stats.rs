//! The counters a client reads with `stats` (memcached's per-thread `thread_stats`):
//! one cache-line block per accept thread, so that counting is an uncontended add,
//! summed when read. No lock, no allocation after start-up.
#![forbid(unsafe_code)]

use std::cell::Cell;
use std::io::Read;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// What is counted per command (memcached's names, in `stats` order).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Keys asked by get/gets (one per key).
    CmdGet,
    /// Storage commands whose data block arrived.
    CmdSet,
    /// `flush_all`.
    CmdFlush,
    /// `touch`, `gat`, `gats` (one per key).
    CmdTouch,
    /// Keys found by get/gets.
    GetHits,
    /// Keys not found by get/gets.
    GetMisses,
    /// `delete` of an absent key.
    DeleteMisses,
    /// `delete` of a present key.
    DeleteHits,
    /// `incr` of an absent key.
    IncrMisses,
    /// `incr` of a present key.
    IncrHits,
    /// `decr` of an absent key.
    DecrMisses,
    /// `decr` of a present key.
    DecrHits,
    /// `cas` of an absent key.
    CasMisses,
    /// `cas` that stored.
    CasHits,
    /// `cas` with a stale unique.
    CasBadval,
    /// touch/gat of a present key.
    TouchHits,
    /// touch/gat of an absent key.
    TouchMisses,
    /// Bytes the protocol consumed.
    BytesRead,
    /// Bytes the protocol wrote.
    BytesWritten,
}

/// How many counters there are.
pub const COUNTERS: usize = Counter::BytesWritten as usize + 1;

/// The names `stats` prints, by counter.
pub const NAMES: [&str; COUNTERS] = [
    "cmd_get",
    "cmd_set",
    "cmd_flush",
    "cmd_touch",
    "get_hits",
    "get_misses",
    "delete_misses",
    "delete_hits",
    "incr_misses",
    "incr_hits",
    "decr_misses",
    "decr_hits",
    "cas_misses",
    "cas_hits",
    "cas_badval",
    "touch_hits",
    "touch_misses",
    "bytes_read",
    "bytes_written",
];

/// Every counter, in `NAMES` order.
pub const ALL: [Counter; COUNTERS] = [
    Counter::CmdGet,
    Counter::CmdSet,
    Counter::CmdFlush,
    Counter::CmdTouch,
    Counter::GetHits,
    Counter::GetMisses,
    Counter::DeleteMisses,
    Counter::DeleteHits,
    Counter::IncrMisses,
    Counter::IncrHits,
    Counter::DecrMisses,
    Counter::DecrHits,
    Counter::CasMisses,
    Counter::CasHits,
    Counter::CasBadval,
    Counter::TouchHits,
    Counter::TouchMisses,
    Counter::BytesRead,
    Counter::BytesWritten,
];

/// One thread's counters, alone on its cache lines.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Block([AtomicU64; COUNTERS]);

thread_local! {
    /// This thread's block index (claimed at its first count).
    static SLOT: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The counters of every accept thread, and the connection counts.
#[derive(Debug)]
pub struct Stats {
    blocks: Box<[Block]>,
    next: AtomicUsize,
    /// Open connections.
    pub curr_connections: AtomicU64,
    /// Connections ever opened.
    pub total_connections: AtomicU64,
}

impl Stats {
    /// Blocks for `threads` threads (more threads share blocks, still correctly).
    pub fn new(threads: usize) -> Stats {
        Stats {
            blocks: (0..threads.max(1)).map(|_| Block::default()).collect(),
            next: AtomicUsize::new(0),
            curr_connections: AtomicU64::new(0),
            total_connections: AtomicU64::new(0),
        }
    }

    fn block(&self) -> &Block {
        let slot = SLOT.with(|s| {
            if s.get() == usize::MAX {
                s.set(self.next.fetch_add(1, Ordering::Relaxed));
            }
            s.get()
        });
        &self.blocks[slot % self.blocks.len()]
    }

    /// Adds `n` to `c` in this thread's block.
    pub fn add(&self, c: Counter, n: u64) {
        self.block().0[c as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// `c` summed over the threads.
    pub fn sum(&self, c: Counter) -> u64 {
        self.blocks
            .iter()
            .map(|b| b.0[c as usize].load(Ordering::Relaxed))
            .sum()
    }

    /// `stats reset`.
    pub fn reset(&self) {
        for b in self.blocks.iter() {
            for c in &b.0 {
                c.store(0, Ordering::Relaxed);
            }
        }
    }
}

/// This process's user and system CPU time in microseconds, from
/// `/proc/self/stat` read into a stack buffer (no allocation); zeros if unreadable.
pub fn cpu_micros() -> (u64, u64) {
    let mut buf = [0u8; 1024];
    let Ok(mut f) = std::fs::File::open("/proc/self/stat") else {
        return (0, 0);
    };
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let stat = &buf[..n];
    // Fields 14 and 15 (utime, stime, in 1/100 s) count from after the ')' that
    // ends the command name, which is field 2.
    let Some(close) = stat.iter().rposition(|&b| b == b')') else {
        return (0, 0);
    };
    let mut fields = stat[close + 1..]
        .split(|&b| b == b' ')
        .filter(|f| !f.is_empty());
    let mut field = |skip: usize| {
        fields
            .nth(skip)
            .and_then(crate::store::strtoull)
            .unwrap_or(0)
            * 10_000
    };
    // After ')': field 3 is first; utime is field 14 (the 12th), stime the next.
    let user = field(11);
    let system = field(0);
    (user, system)
}
