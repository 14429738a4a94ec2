//! The token a watcher carries (libev's `data` pointer holds it): which slot,
//! listener, timer or wake-up an event is for. Encoded and decoded here only.
//!
//! The two top bits of the `usize` are the kind, the rest its index, so that
//! no two watchers of one loop can ever report the same number, whatever
//! callback (io, timer, async) they come through.
#![forbid(unsafe_code)]

/// One of a loop's timers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimerId {
    /// The head of the read deadline list.
    Deadline,
    /// The end of the pause after accept ran out of fds or memory.
    Backoff,
    /// The bound on the graceful drain.
    Drain,
    /// The head of the lingering-close list.
    Linger,
    /// The head of the list of connections idle between requests.
    Idle,
}

impl TimerId {
    /// Every timer, in the order of their encoding.
    pub const ALL: [TimerId; 5] = [
        TimerId::Deadline,
        TimerId::Backoff,
        TimerId::Drain,
        TimerId::Linger,
        TimerId::Idle,
    ];
}

/// What a watcher's event is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Token {
    /// The connection in this pool slot.
    Slot(u32),
    /// The loop's listener with this index.
    Listener(u32),
    /// One of the loop's timers.
    Timer(TimerId),
    /// The loop's wake-up (`ev_async`): completions or a shutdown request.
    Wake,
}

const SHIFT: u32 = usize::BITS - 2;
const SLOT: usize = 0;
const LISTENER: usize = 1;
const TIMER: usize = 2;
const WAKE: usize = 3;
const INDEX: usize = (1 << SHIFT) - 1;

impl Token {
    /// The number the watcher carries.
    #[inline]
    pub const fn encode(self) -> usize {
        let (kind, index) = match self {
            Token::Slot(i) => (SLOT, i as usize),
            Token::Listener(i) => (LISTENER, i as usize),
            Token::Timer(t) => (TIMER, t as usize),
            Token::Wake => (WAKE, 0),
        };
        (kind << SHIFT) | (index & INDEX)
    }

    /// The token a watcher's number stands for. Only numbers made by
    /// [`Token::encode`] mean anything: any other decodes to some token.
    #[inline]
    pub const fn decode(raw: usize) -> Token {
        let index = raw & INDEX;
        match raw >> SHIFT {
            SLOT => Token::Slot(index as u32),
            LISTENER => Token::Listener(index as u32),
            TIMER => Token::Timer(TimerId::ALL[index % TimerId::ALL.len()]),
            _ => Token::Wake,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_token_round_trips_and_no_two_share_a_number() {
        let mut tokens = vec![Token::Wake];
        tokens.extend(TimerId::ALL.map(Token::Timer));
        for i in [0, 1, 2, 1000, u32::MAX - 1, u32::MAX] {
            tokens.extend([Token::Slot(i), Token::Listener(i)]);
        }
        let mut raws: Vec<usize> = tokens.iter().map(|t| t.encode()).collect();
        for (t, &raw) in tokens.iter().zip(&raws) {
            assert_eq!(Token::decode(raw), *t, "{t:?} as {raw:#x}");
        }
        raws.sort_unstable();
        raws.dedup();
        assert_eq!(raws.len(), tokens.len(), "two tokens share a number");
    }

    #[test]
    fn the_kinds_are_the_top_bits() {
        assert_eq!(Token::Slot(7).encode(), 7, "a slot's token is its index");
        assert_eq!(Token::Listener(0).encode() >> SHIFT, LISTENER);
        assert_eq!(Token::Timer(TimerId::Linger).encode() >> SHIFT, TIMER);
        assert_eq!(Token::Wake.encode() >> SHIFT, WAKE);
    }
}
