//! Counts that survive upgrades: every generation of a lineage publishes its
//! counters into memory they all share (a memfd the first one creates and
//! each upgrade hands to the next), and every scrape adds up all of them.
//!
//! The rules that make a counter monotonic from Prometheus' point of view
//! (whichever generation answers a scrape, before, during or after an
//! upgrade) and, once the old generations have exited, equal to what all
//! generations counted:
//! - each generation owns a slot and only ever raises its words
//!   (`fetch_max` of its counters, which only grow), so every slot only grows;
//! - a scrape first publishes its own counters, then adds up every slot: a
//!   later scrape, by any generation, reads every slot at least as high;
//! - a generation publishes a last time once its drain is over (nothing
//!   counts after that) and marks its slot ended; it is never written again;
//! - when every slot is taken, ended slots are folded into slot 0 (the
//!   retired generations) under a sequence lock, so that no scrape sees a
//!   count twice or not at all.
//!
//! Gauges are not carried: they show the serving generations, which the open
//! connections of a draining one are part of (see [`Totals::open_accept`]).

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Mutex;

use super::{
    AcceptCounters, PauseCause, ENGINE_REASONS, MAX_KINDS, MAX_PROTOCOL_REASONS, SLOW_BUCKETS,
};
use crate::os::{self, SharedWords};

/// "CDCOUNT1": the region is ours.
const MAGIC: u64 = u64::from_be_bytes(*b"CDCOUNT1");
/// Slots: the retired generations (0) and up to 31 at once.
const SLOTS: usize = 32;
/// Accept threads (and workers) whose counters are carried; those past them
/// count from 0 again in each generation. With [`SLOTS`], 0.9 MB of shared
/// memory, committed only where written.
pub const MAX_CARRIED: usize = 64;
/// Words of the region's head: magic, layout, sequence.
const HEAD: usize = 8;
/// Words of a slot's head: state, pid, accept threads, workers.
const SLOT_HEAD: usize = 8;
/// Drop reasons a counter block keeps: the engine's, then the protocol's.
const REASONS: usize = ENGINE_REASONS.len() + MAX_PROTOCOL_REASONS;
/// Words of one thread's counters (see [`Block`]).
pub const BLOCK: usize = 2 + MAX_KINDS + REASONS + PauseCause::ALL.len();
/// The slow-task histogram: a count per bucket, `+Inf`, the sum's bits.
pub const HIST: usize = SLOW_BUCKETS.len() + 2;
const SLOT_DATA: usize = 2 * MAX_CARRIED * BLOCK + HIST;
const SLOT: usize = SLOT_HEAD + SLOT_DATA;
const WORDS: usize = HEAD + SLOTS * SLOT;
/// What a generation with another layout (another version) writes here:
/// such a region is not joined.
const LAYOUT: u64 =
    ((SLOTS as u64) << 48) | ((MAX_CARRIED as u64) << 32) | ((BLOCK as u64) << 16) | HIST as u64;

const FREE: u64 = 0;
const LIVE: u64 = 1;
const ENDED: u64 = 2;

/// One thread's counters as words: accepted, handed off, one per response
/// kind ([`MAX_KINDS`]), one per drop reason (the engine's, then the
/// protocol's), one per [`PauseCause`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Block(pub [u64; BLOCK]);

impl Default for Block {
    fn default() -> Self {
        Block([0; BLOCK])
    }
}

impl Block {
    const RESPONSES: usize = 2;
    const DROPPED: usize = Self::RESPONSES + MAX_KINDS;
    const PAUSES: usize = Self::DROPPED + REASONS;

    /// The counters of `c` now. Outcomes are read before `accepted` (the
    /// owner counts an accept before its outcome), so that the open gauge
    /// cannot go below 0 but for reordering.
    pub fn of(c: &AcceptCounters) -> Block {
        let mut b = [0; BLOCK];
        for (w, r) in b[Self::RESPONSES..].iter_mut().zip(&c.responses) {
            *w = r.get();
        }
        for (w, d) in b[Self::DROPPED..].iter_mut().zip(&c.dropped) {
            *w = d.get();
        }
        b[1] = c.handed_off.get();
        for (w, p) in b[Self::PAUSES..].iter_mut().zip(&c.pauses) {
            *w = p.get();
        }
        b[0] = c.accepted.get();
        Block(b)
    }

    /// Connections accepted.
    pub fn accepted(&self) -> u64 {
        self.0[0]
    }
    /// Responses of kind `kind` sent whole.
    pub fn responses(&self, kind: usize) -> u64 {
        self.0[Self::RESPONSES + kind]
    }
    /// Dropped for the reason at `slot` of a counter block (the engine's
    /// reasons, then the protocol's).
    pub fn dropped(&self, slot: usize) -> u64 {
        self.0[Self::DROPPED + slot]
    }
    /// Accept pauses for `cause`.
    pub fn pauses(&self, cause: PauseCause) -> u64 {
        self.0[Self::PAUSES + cause as usize]
    }
    /// Accepted and not yet answered, dropped or handed off.
    pub fn open(&self) -> u64 {
        let closed: u64 = self.0[1..Self::PAUSES].iter().sum();
        self.accepted().saturating_sub(closed)
    }

    fn add(&mut self, other: &Block) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a += b;
        }
    }
}

/// Counters summed over a lineage's generations (or one process's own).
#[derive(Debug, Default)]
pub struct Totals {
    /// Per accept thread.
    pub accept: Vec<Block>,
    /// Per worker that answers connections (`--delegate socket|loop`).
    pub workers: Vec<Block>,
    /// The slow-task histogram: per bucket (not cumulated), `+Inf`, and the
    /// sum's bits.
    pub hist: [u64; HIST],
    /// Open connections per accept thread of the generations that live.
    pub open_accept: Vec<u64>,
    /// Open connections per worker of the generations that live.
    pub open_workers: Vec<u64>,
}

impl Totals {
    /// Back to empty, keeping the room.
    pub fn clear(&mut self) {
        self.accept.clear();
        self.workers.clear();
        self.hist = [0; HIST];
        self.open_accept.clear();
        self.open_workers.clear();
    }

    /// Adds `blocks` into `into` from index 0, growing it as needed; the open
    /// gauges too when `live`.
    fn add(into: &mut Vec<Block>, open: &mut Vec<u64>, blocks: &[Block], live: bool) {
        if into.len() < blocks.len() {
            into.resize(blocks.len(), Block::default());
        }
        for (t, b) in into.iter_mut().zip(blocks) {
            t.add(b);
        }
        if live {
            if open.len() < blocks.len() {
                open.resize(blocks.len(), 0);
            }
            for (o, b) in open.iter_mut().zip(blocks) {
                *o += b.open();
            }
        }
    }

    /// Adds one generation's counters.
    pub fn add_generation(
        &mut self,
        accept: &[Block],
        workers: &[Block],
        hist: &[u64; HIST],
        live: bool,
    ) {
        Totals::add(&mut self.accept, &mut self.open_accept, accept, live);
        Totals::add(&mut self.workers, &mut self.open_workers, workers, live);
        for (t, h) in self.hist[..HIST - 1].iter_mut().zip(hist) {
            *t += h;
        }
        let sum = f64::from_bits(self.hist[HIST - 1]) + f64::from_bits(hist[HIST - 1]);
        self.hist[HIST - 1] = sum.to_bits();
    }
}

/// This generation's place among its lineage's.
#[derive(Debug)]
pub struct Generations {
    shared: SharedWords,
    slot: usize,
    /// Set once the last counts are published: the slot is no longer ours
    /// to write (it may be folded and taken by another generation).
    ended: Mutex<bool>,
}

impl Generations {
    /// Joins the lineage whose counters `inherited` holds (a predecessor's),
    /// or starts one: takes a slot for this generation. A region of another
    /// layout (another version) or one with no room is not joined: a new one
    /// is started, and the second value says why in one line.
    pub fn join(inherited: Option<OwnedFd>) -> io::Result<(Generations, Option<String>)> {
        let mut why = None;
        if let Some(fd) = inherited {
            match SharedWords::attach(fd) {
                Ok(shared) if Generations::ours(&shared) => {
                    if let Some(g) = Generations::take_slot(shared) {
                        return Ok((g, None));
                    }
                    why = Some("no room in the inherited counters".to_string());
                }
                Ok(_) => why = Some("the inherited counters have another layout".to_string()),
                Err(e) => why = Some(format!("cannot map the inherited counters: {e}")),
            }
        }
        let shared = SharedWords::create(WORDS)?;
        shared.words()[1].store(LAYOUT, Ordering::Relaxed);
        shared.words()[0].store(MAGIC, Ordering::Release);
        let g = Generations::take_slot(shared).ok_or_else(|| io::Error::other("no slot"))?;
        Ok((
            g,
            why.map(|w| format!("{w}: the counters start from 0 in this generation")),
        ))
    }

    fn ours(shared: &SharedWords) -> bool {
        let w = shared.words();
        w.len() == WORDS
            && w[0].load(Ordering::Acquire) == MAGIC
            && w[1].load(Ordering::Relaxed) == LAYOUT
    }

    /// The fd to hand to a successor.
    pub fn fd(&self) -> RawFd {
        self.shared.fd().as_raw_fd()
    }

    fn words(&self) -> &[AtomicU64] {
        self.shared.words()
    }

    fn slot_words(words: &[AtomicU64], slot: usize) -> &[AtomicU64] {
        &words[HEAD + slot * SLOT..HEAD + (slot + 1) * SLOT]
    }

    /// Claims a free slot (folding ended ones into slot 0 if none is free).
    fn take_slot(shared: SharedWords) -> Option<Generations> {
        for attempt in 0..2 {
            for slot in 1..SLOTS {
                let s = Generations::slot_words(shared.words(), slot);
                if s[0]
                    .compare_exchange(FREE, LIVE, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
                {
                    s[1].store(u64::from(std::process::id()), Ordering::Relaxed);
                    return Some(Generations {
                        shared,
                        slot,
                        ended: Mutex::new(false),
                    });
                }
            }
            if attempt == 0 {
                Generations::fold(shared.words());
            }
        }
        None
    }

    /// Whether the generation of slot words `s` still runs.
    fn live(s: &[AtomicU64]) -> bool {
        s[0].load(Ordering::Acquire) == LIVE
            && libc::pid_t::try_from(s[1].load(Ordering::Relaxed)).is_ok_and(os::alive)
    }

    /// Adds every slot whose generation is gone into slot 0 and frees it,
    /// under the sequence lock (odd while it runs).
    fn fold(words: &[AtomicU64]) {
        let seq = &words[2];
        let start = seq.load(Ordering::Relaxed);
        if start % 2 == 1
            || seq
                .compare_exchange(start, start + 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        fence(Ordering::Release);
        let retired = Generations::slot_words(words, 0);
        for slot in 1..SLOTS {
            let s = Generations::slot_words(words, slot);
            let state = s[0].load(Ordering::Acquire);
            if state == FREE || Generations::live(s) {
                continue;
            }
            for h in 2..4 {
                retired[h].fetch_max(s[h].load(Ordering::Relaxed), Ordering::Relaxed);
            }
            let (data, into) = (&s[SLOT_HEAD..], &retired[SLOT_HEAD..]);
            for (i, (w, r)) in data.iter().zip(into).enumerate() {
                let v = w.swap(0, Ordering::Relaxed);
                if i == SLOT_DATA - 1 {
                    let sum = f64::from_bits(r.load(Ordering::Relaxed)) + f64::from_bits(v);
                    r.store(sum.to_bits(), Ordering::Relaxed);
                } else {
                    r.fetch_add(v, Ordering::Relaxed);
                }
            }
            s[2].store(0, Ordering::Relaxed);
            s[3].store(0, Ordering::Relaxed);
            s[0].store(FREE, Ordering::Release);
        }
        seq.store(start + 2, Ordering::Release);
    }

    /// Raises this generation's slot to `accept`, `workers` (the first
    /// `MAX_CARRIED` of each) and `hist`; nothing once [`Generations::end`]
    /// ran.
    pub fn publish(&self, accept: &[Block], workers: &[Block], hist: &[u64; HIST]) {
        let ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if *ended {
            return;
        }
        self.raise(accept, workers, hist);
    }

    fn raise(&self, accept: &[Block], workers: &[Block], hist: &[u64; HIST]) {
        let s = Generations::slot_words(self.words(), self.slot);
        let accept = &accept[..accept.len().min(MAX_CARRIED)];
        let workers = &workers[..workers.len().min(MAX_CARRIED)];
        s[2].fetch_max(accept.len() as u64, Ordering::Relaxed);
        s[3].fetch_max(workers.len() as u64, Ordering::Relaxed);
        let data = &s[SLOT_HEAD..];
        let blocks = accept.iter().enumerate().chain(
            workers
                .iter()
                .enumerate()
                .map(|(i, b)| (MAX_CARRIED + i, b)),
        );
        for (i, b) in blocks {
            for (w, v) in data[i * BLOCK..(i + 1) * BLOCK].iter().zip(b.0) {
                w.fetch_max(v, Ordering::Relaxed);
            }
        }
        // Bits of a non-negative f64 order as its values: fetch_max works.
        for (w, v) in data[2 * MAX_CARRIED * BLOCK..].iter().zip(hist) {
            w.fetch_max(*v, Ordering::Relaxed);
        }
    }

    /// The last publication: nothing counts any more. The slot is marked
    /// ended, and never written by this process again.
    pub fn end(&self, accept: &[Block], workers: &[Block], hist: &[u64; HIST]) {
        let mut ended = self.ended.lock().unwrap_or_else(|e| e.into_inner());
        if *ended {
            return;
        }
        self.raise(accept, workers, hist);
        *ended = true;
        let s = Generations::slot_words(self.words(), self.slot);
        s[0].store(ENDED, Ordering::Release);
    }

    /// Every slot added up into `totals` (cleared first): the lineage's
    /// counters. A consistent read: it is retried while a fold runs
    /// (bounded: a generation killed in the middle of one leaves the lock
    /// taken). `slot` is room for one slot's blocks: nothing is allocated
    /// while they have room for `MAX_CARRIED`.
    pub fn totals_into(&self, totals: &mut Totals, slot: &mut (Vec<Block>, Vec<Block>)) {
        let words = self.words();
        for _ in 0..1000 {
            let before = words[2].load(Ordering::Acquire);
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            Generations::read(words, totals, slot);
            fence(Ordering::Acquire);
            if words[2].load(Ordering::Relaxed) == before {
                break;
            }
        }
    }

    fn read(
        words: &[AtomicU64],
        totals: &mut Totals,
        (accept, workers): &mut (Vec<Block>, Vec<Block>),
    ) {
        totals.clear();
        for slot in 0..SLOTS {
            let s = Generations::slot_words(words, slot);
            if slot > 0 && s[0].load(Ordering::Acquire) == FREE {
                continue;
            }
            let n = |i: usize| (s[i].load(Ordering::Relaxed) as usize).min(MAX_CARRIED);
            let data = &s[SLOT_HEAD..];
            let block = |i: usize| {
                let mut b = [0; BLOCK];
                for (v, w) in b.iter_mut().zip(&data[i * BLOCK..(i + 1) * BLOCK]) {
                    *v = w.load(Ordering::Relaxed);
                }
                Block(b)
            };
            accept.clear();
            accept.extend((0..n(2)).map(block));
            workers.clear();
            workers.extend((0..n(3)).map(|i| block(MAX_CARRIED + i)));
            let mut hist = [0; HIST];
            for (h, w) in hist.iter_mut().zip(&data[2 * MAX_CARRIED * BLOCK..]) {
                *h = w.load(Ordering::Relaxed);
            }
            let live = slot > 0 && Generations::live(s);
            totals.add_generation(accept, workers, &hist, live);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(n: u64) -> Block {
        let mut b = Block::default();
        b.0[0] = n; // accepted
        b.0[Block::RESPONSES] = n; // responses of kind 0
        b
    }

    fn responses_of(g: &Generations) -> u64 {
        let mut t = Totals::default();
        g.totals_into(&mut t, &mut (Vec::new(), Vec::new()));
        t.accept.iter().map(|b| b.responses(0)).sum()
    }

    #[test]
    fn generations_add_up_and_the_sum_never_falls() {
        let (first, why) = Generations::join(None).unwrap();
        assert_eq!(why, None);
        let hist = [0; HIST];
        first.publish(&[block(5), block(7)], &[], &hist);
        let dup = |g: &Generations| {
            // A copy of the fd, as an upgrade hands it over.
            let fd = g.shared.fd().try_clone().unwrap();
            Generations::join(Some(fd)).unwrap()
        };
        let (second, why) = dup(&first);
        assert_eq!(why, None);
        assert_ne!(first.slot, second.slot);
        assert_eq!(responses_of(&second), 12);
        second.publish(&[block(1)], &[], &hist);
        assert_eq!(responses_of(&second), 13);
        let mut t = Totals::default();
        second.totals_into(&mut t, &mut (Vec::new(), Vec::new()));
        assert_eq!(t.accept.len(), 2, "thread 1 of the first generation stays");
        // A stale publication never lowers a slot.
        first.publish(&[block(4), block(7)], &[], &hist);
        assert_eq!(responses_of(&second), 13);
        first.end(&[block(6), block(7)], &[], &hist);
        first.publish(&[block(100), block(100)], &[], &hist);
        assert_eq!(responses_of(&second), 14, "nothing after the end");
        // Many generations: ended slots are folded, nothing lost or doubled.
        let mut last = second;
        for n in 0..(2 * SLOTS as u64) {
            let (next, why) = dup(&last);
            assert_eq!(why, None, "generation {n}");
            last.end(&[block(2)], &[], &hist);
            next.publish(&[block(1)], &[], &hist);
            last = next;
        }
        // first 13, second 2 at its end, 2 x SLOTS - 1 more ended with 2
        // each, and the last, still live, 1.
        let expected = 13 + 2 + 2 * (2 * SLOTS as u64 - 1) + 1;
        assert_eq!(responses_of(&last), expected);
    }

    #[test]
    fn another_layout_is_not_joined() {
        let other = SharedWords::create(16).unwrap();
        let (g, why) = Generations::join(Some(other.fd().try_clone().unwrap())).unwrap();
        assert!(why.unwrap().contains("another layout"));
        assert_eq!(responses_of(&g), 0);
    }
}
