//! The read deadline of every connection of one loop, at O(1) per connection.
//!
//! With one constant timeout, connections reach their deadlines in the order they
//! were accepted, so a list ordered by deadline is just a FIFO: append at the tail,
//! unlink from anywhere, look at the head. One libev timer per loop is armed for
//! the head (libev manual, "Be smart about timeouts", strategy 4). The links live
//! in the pool slots, so the list allocates nothing.
#![forbid(unsafe_code)]

use crate::pool::{Pool, SlotWatcher};

const NIL: u32 = u32::MAX;

/// A connection's place in its loop's [`DeadlineList`].
#[derive(Clone, Copy, Debug)]
pub struct Links {
    prev: u32,
    next: u32,
    deadline: f64,
    linked: bool,
}

impl Default for Links {
    fn default() -> Self {
        Links {
            prev: NIL,
            next: NIL,
            deadline: 0.0,
            linked: false,
        }
    }
}

/// A pool value that can wait in a [`DeadlineList`].
pub trait Linked {
    /// Its links.
    fn links(&self) -> &Links;
    /// Its links, to change.
    fn links_mut(&mut self) -> &mut Links;
}

/// Pool slots ordered by deadline (see the module doc).
#[derive(Debug)]
pub struct DeadlineList {
    head: u32,
    tail: u32,
}

impl Default for DeadlineList {
    fn default() -> Self {
        DeadlineList {
            head: NIL,
            tail: NIL,
        }
    }
}

impl DeadlineList {
    /// Appends `idx` with `deadline`, which must not be earlier than the tail's
    /// (true with one constant timeout and a monotonic clock).
    pub fn push_back<T: Linked, W: SlotWatcher>(
        &mut self,
        pool: &mut Pool<T, W>,
        idx: u32,
        deadline: f64,
    ) {
        if pool.get(idx).links().linked {
            self.remove(pool, idx);
        }
        debug_assert!(self.tail == NIL || pool.get(self.tail).links().deadline <= deadline);
        *pool.get_mut(idx).links_mut() = Links {
            prev: self.tail,
            next: NIL,
            deadline,
            linked: true,
        };
        if self.tail == NIL {
            self.head = idx;
        } else {
            pool.get_mut(self.tail).links_mut().next = idx;
        }
        self.tail = idx;
    }

    /// Unlinks `idx` if it is linked.
    pub fn remove<T: Linked, W: SlotWatcher>(&mut self, pool: &mut Pool<T, W>, idx: u32) {
        let links = *pool.get(idx).links();
        if !links.linked {
            return;
        }
        if links.prev == NIL {
            self.head = links.next;
        } else {
            pool.get_mut(links.prev).links_mut().next = links.next;
        }
        if links.next == NIL {
            self.tail = links.prev;
        } else {
            pool.get_mut(links.next).links_mut().prev = links.prev;
        }
        *pool.get_mut(idx).links_mut() = Links::default();
    }

    /// The earliest deadline and its slot.
    pub fn front<T: Linked, W: SlotWatcher>(&self, pool: &Pool<T, W>) -> Option<(u32, f64)> {
        (self.head != NIL).then(|| (self.head, pool.get(self.head).links().deadline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct C(Links);
    impl Linked for C {
        fn links(&self) -> &Links {
            &self.0
        }
        fn links_mut(&mut self) -> &mut Links {
            &mut self.0
        }
    }

    fn order(list: &DeadlineList, pool: &Pool<C>) -> Vec<u32> {
        let mut out = vec![];
        let mut i = list.head;
        while i != NIL {
            out.push(i);
            i = pool.get(i).0.next;
        }
        out
    }

    #[test]
    fn fifo_with_removal_anywhere() {
        let mut pool: Pool<C> = Pool::new(8).unwrap();
        let ids: Vec<u32> = (0..5).map(|_| pool.acquire().unwrap()).collect();
        let mut list = DeadlineList::default();
        for (n, &i) in ids.iter().enumerate() {
            list.push_back(&mut pool, i, n as f64);
        }
        assert_eq!(list.front(&pool), Some((0, 0.0)));
        list.remove(&mut pool, 2);
        list.remove(&mut pool, 0);
        list.remove(&mut pool, 4);
        list.remove(&mut pool, 4); // not linked: no-op
        assert_eq!(order(&list, &pool), vec![1, 3]);
        list.push_back(&mut pool, 1, 9.0); // re-arm moves it to the tail
        assert_eq!(order(&list, &pool), vec![3, 1]);
        assert_eq!(list.front(&pool), Some((3, 3.0)));
        list.remove(&mut pool, 3);
        list.remove(&mut pool, 1);
        assert_eq!(order(&list, &pool), vec![]);
        assert_eq!(list.front(&pool), None);
    }
}
