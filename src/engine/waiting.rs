//! The connections of one loop waiting for room on the worker side
//! (`--delegate socket|loop`).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::io;

/// The connections of one accept loop waiting for room on the worker side, as
/// (slot, generation), oldest first. Room for a pool's worth is reserved at
/// start-up. An entry whose connection closed meanwhile (the client left) is
/// stale: skipped when reached, and swept out if the ring fills, which makes
/// room since at most a pool's worth of connections can be waiting at once.
#[derive(Debug)]
pub struct Waiting {
    ring: VecDeque<(u32, u32)>,
}

impl Waiting {
    /// Room for the connections of a pool of `capacity`; `ENOMEM` if it
    /// cannot be had.
    pub fn new(capacity: usize) -> io::Result<Self> {
        Ok(Waiting {
            ring: crate::os::deque_with_room(capacity)?,
        })
    }

    /// Appends slot `idx`'s connection of generation `gen`; `live` tells
    /// whether an older entry still waits.
    pub fn push(&mut self, idx: u32, gen: u32, live: impl Fn(u32, u32) -> bool) {
        if self.ring.len() == self.ring.capacity() {
            self.ring.retain(|&(i, g)| live(i, g));
        }
        self.ring.push_back((idx, gen));
    }

    /// The oldest entry.
    pub fn front(&self) -> Option<(u32, u32)> {
        self.ring.front().copied()
    }

    /// Drops the oldest entry.
    pub fn pop(&mut self) {
        self.ring.pop_front();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_waiting_ring_sweeps_stale_entries_instead_of_growing() {
        let mut w = Waiting::new(2).unwrap();
        let cap = w.ring.capacity();
        for i in 0..cap as u32 {
            w.push(i, 0, |_, _| true);
        }
        // Full: the next push sweeps out what is no longer waiting.
        w.push(99, 1, |i, _| i == 1);
        assert_eq!(w.ring.capacity(), cap, "no reallocation");
        assert_eq!(w.front(), Some((1, 0)));
        w.pop();
        assert_eq!(w.front(), Some((99, 1)));
        w.pop();
        assert_eq!(w.front(), None);
    }
}
