//! `Pool`: the per-accept-thread connection pool of the C++ original: a fixed
//! number of slots reserved once at start-up, a LIFO free list, O(1) acquire and
//! release, and no allocation afterwards.
//!
//! The slots are one anonymous mapping, so the kernel commits a page only when a
//! slot on it is first used: a pool of 100,000 connections costs nothing until
//! connections arrive. Slots are constructed on first use (a high-water mark) and
//! never move, which is what lets each carry the event-loop watcher of its
//! connection (libev's [`Io`] in the server; any [`SlotWatcher`]) and the holder of
//! its delegated task.
#![allow(unsafe_code)]

use std::io;
use std::marker::PhantomData;
use std::mem::size_of;
use std::pin::Pin;
use std::ptr::{self, addr_of, addr_of_mut, NonNull};

use crate::ev::Io;
use crate::task::{Cancel, Done, Filled, Route, Task, TaskHolder};

/// The per-slot watcher of an event loop: what a slot must know of it is whether
/// the loop still holds it (a slot is only released once it does not).
pub trait SlotWatcher: Default {
    /// Whether the loop holds the watcher (it must then not move or be dropped).
    fn is_active(&self) -> bool;
}

impl SlotWatcher for Io {
    #[inline]
    fn is_active(&self) -> bool {
        Io::is_active(self)
    }
}

/// One slot: the watcher and task holder the pool manages, and the user's value.
struct Slot<T, W> {
    io: W,
    task: TaskHolder,
    value: T,
}

/// A fixed-capacity pool of `T`, each with its own watcher `W` ([`Io`] unless
/// said otherwise) and [`TaskHolder`], addressed by `u32` index.
pub struct Pool<T, W: SlotWatcher = Io> {
    base: NonNull<Slot<T, W>>,
    map_len: usize,
    capacity: u32,
    /// Slots `0..constructed` hold a value; the rest are untouched memory.
    constructed: u32,
    /// Released slots, reused last-in first-out so hot memory is reused first.
    free: Vec<u32>,
    _owns: PhantomData<Slot<T, W>>,
}

/// The pool's size and use, not its slots (millions, most never touched).
impl<T, W: SlotWatcher> std::fmt::Debug for Pool<T, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("capacity", &self.capacity)
            .field("constructed", &self.constructed)
            .field("free", &self.free.len())
            .finish_non_exhaustive()
    }
}

impl<T: Default, W: SlotWatcher> Pool<T, W> {
    /// Reserves `capacity` slots. Fails (`ENOMEM`, or `EINVAL` for 0 or more than
    /// `u32::MAX` slots) if the address space cannot be reserved.
    pub fn new(capacity: usize) -> io::Result<Self> {
        let cap = u32::try_from(capacity)
            .ok()
            .filter(|&c| c > 0)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let map_len = size_of::<Slot<T, W>>()
            .checked_mul(capacity)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
        // Before the mapping, which nothing would unmap if this failed.
        let free = crate::os::vec_with_room(capacity)?;
        // Untouched slots cost no memory (see `os::reserve`).
        let base = crate::os::reserve(map_len)?;
        Ok(Pool {
            // Page aligned: enough for any slot alignment up to a page.
            base: base.cast(),
            map_len,
            capacity: cap,
            constructed: 0,
            free,
            _owns: PhantomData,
        })
    }

    /// Takes a free slot; `None` when all `capacity` are in use.
    pub fn acquire(&mut self) -> Option<u32> {
        let idx = match self.free.pop() {
            Some(idx) => idx,
            None if self.constructed < self.capacity => {
                let idx = self.constructed;
                // SAFETY: idx < capacity, inside the mapping, and not yet constructed.
                unsafe {
                    ptr::write(
                        self.base.as_ptr().add(idx as usize),
                        Slot {
                            io: W::default(),
                            task: TaskHolder::new(),
                            value: T::default(),
                        },
                    )
                };
                self.constructed += 1;
                idx
            }
            None => return None,
        };
        Some(idx)
    }
}

impl<T, W: SlotWatcher> Pool<T, W> {
    /// Returns slot `idx` to the free list. Its watcher must be stopped and its
    /// task holder free: the slot's next user starts clean.
    ///
    /// # Panics
    /// If the watcher is active or a task is still out (a bug in the caller).
    pub fn release(&mut self, idx: u32) {
        let slot = self.slot(idx);
        // SAFETY: slot is constructed; shared references to its pool-managed fields are fine (no &mut to them exists).
        let (active, busy) = unsafe {
            (
                (*addr_of!((*slot).io)).is_active(),
                (*addr_of!((*slot).task)).is_busy(),
            )
        };
        assert!(
            !active && !busy,
            "released a pool slot still in use by libev or a worker"
        );
        debug_assert!(!self.free.contains(&idx), "slot released twice");
        // Never reallocates: at most `capacity` indices are ever free.
        self.free.push(idx);
    }

    /// The value in slot `idx`.
    pub fn get(&self, idx: u32) -> &T {
        // SAFETY: constructed slot; the value field is only ever borrowed through the pool, so this shared borrow follows Rust's rules via &self.
        unsafe { &*addr_of!((*self.slot(idx)).value) }
    }

    /// The value in slot `idx`, mutably.
    pub fn get_mut(&mut self, idx: u32) -> &mut T {
        // SAFETY: as `get`, exclusive through &mut self. Only the `value` field is borrowed, never the task holder a worker may be using.
        unsafe { &mut *addr_of_mut!((*self.slot(idx)).value) }
    }

    /// The watcher of slot `idx`, pinned: slots never move while the pool lives.
    pub fn watcher(&self, idx: u32) -> Pin<&W> {
        // SAFETY: constructed slot; pool memory never moves while the pool lives and a slot is dropped in place (Pool's Drop) or never: what Pin asks.
        unsafe { Pin::new_unchecked(&*addr_of!((*self.slot(idx)).io)) }
    }

    /// The value and the watcher of slot `idx` together.
    pub fn split(&mut self, idx: u32) -> (&mut T, Pin<&W>) {
        let slot = self.slot(idx);
        // SAFETY: disjoint fields of one constructed slot; see `get_mut` and `io`.
        unsafe {
            (
                &mut *addr_of_mut!((*slot).value),
                Pin::new_unchecked(&*addr_of!((*slot).io)),
            )
        }
    }

    /// Moves `task` into slot `idx`'s holder for a worker (see
    /// [`TaskHolder::fill`]); `None` if that slot already has a task out.
    pub fn delegate<K: Task>(&self, idx: u32, task: K, route: Route) -> Option<Filled> {
        self.holder(idx).fill(task, route)
    }

    /// As [`Pool::delegate`], for a job that comes back with its `Done` (see
    /// [`TaskHolder::fill_job`]).
    pub fn delegate_job<J: Send + 'static>(
        &self,
        idx: u32,
        job: J,
        route: Route,
    ) -> Option<Filled> {
        self.holder(idx).fill_job(job, route)
    }

    /// As [`Pool::finish`], and takes back the job that ran (see
    /// [`TaskHolder::finish_job`]).
    pub fn finish_job<J: 'static>(&self, done: Done) -> Option<(Route, Option<J>)> {
        let idx = done.route().slot;
        if idx >= self.constructed || !self.holder(idx).issued(&done) {
            return None;
        }
        self.holder(idx).finish_job(done)
    }

    /// Withdraws slot `idx`'s task unless a worker runs it already (see
    /// [`TaskHolder::cancel`]).
    #[inline]
    pub fn cancel(&self, idx: u32) -> Cancel {
        self.holder(idx).cancel()
    }

    /// Takes back a finished task's token and returns the route it was delegated
    /// with; `None` for a token that is not this pool's current task.
    pub fn finish(&self, done: Done) -> Option<Route> {
        let idx = done.route().slot;
        if idx >= self.constructed || !self.holder(idx).issued(&done) {
            return None;
        }
        self.holder(idx).finish(done)
    }

    /// Whether slot `idx` has a task out with a worker.
    pub fn is_delegated(&self, idx: u32) -> bool {
        self.holder(idx).is_busy()
    }

    fn holder(&self, idx: u32) -> &TaskHolder {
        // SAFETY: constructed slot; a TaskHolder is only ever shared (interior mutability; raw access by the worker holding its TaskRef), never &mut.
        unsafe { &*addr_of!((*self.slot(idx)).task) }
    }

    /// Slots handed out and not yet released.
    pub fn in_use(&self) -> usize {
        (self.constructed as usize) - self.free.len()
    }

    /// The fixed number of slots.
    pub fn capacity(&self) -> usize {
        self.capacity as usize
    }

    /// No slot is free.
    pub fn is_full(&self) -> bool {
        self.in_use() == self.capacity()
    }

    /// Indices of every slot ever constructed (in use or free): for sweeps at
    /// shutdown.
    pub fn constructed(&self) -> std::ops::Range<u32> {
        0..self.constructed
    }

    fn slot(&self, idx: u32) -> *mut Slot<T, W> {
        assert!(idx < self.constructed, "pool index {idx} out of range");
        // SAFETY: idx < constructed <= capacity: inside the mapping.
        unsafe { self.base.as_ptr().add(idx as usize) }
    }
}

impl<T, W: SlotWatcher> Drop for Pool<T, W> {
    fn drop(&mut self) {
        if self.constructed().any(|i| self.holder(i).is_referenced()) {
            // A worker (or the queue) still holds a pointer into this memory:
            // leaking it is the only safe choice (this happens only when the
            // process is exiting).
            return;
        }
        for i in self.constructed() {
            // SAFETY: constructed slot, dropped exactly once, never used again.
            unsafe { ptr::drop_in_place(self.slot(i)) };
        }
        // SAFETY: the mapping made in `new`, with its length; nothing points into it any more.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Conn {
        n: u64,
    }

    #[test]
    fn acquire_release_lifo_and_capacity() {
        let mut pool: Pool<Conn> = Pool::new(3).unwrap();
        let a = pool.acquire().unwrap();
        let b = pool.acquire().unwrap();
        let c = pool.acquire().unwrap();
        assert_eq!((a, b, c), (0, 1, 2));
        assert!(pool.is_full());
        assert_eq!(pool.acquire(), None);
        pool.get_mut(b).n = 7;
        pool.release(b);
        pool.release(a);
        assert_eq!(pool.in_use(), 1);
        // Last released, first reused; values persist until the user resets them.
        assert_eq!(pool.acquire(), Some(a));
        assert_eq!(pool.acquire(), Some(b));
        assert_eq!(pool.get(b).n, 7);
        assert_eq!(pool.constructed(), 0..3);
    }

    #[test]
    fn slots_never_move() {
        let mut pool: Pool<Conn> = Pool::new(1000).unwrap();
        let first = pool.acquire().unwrap();
        let addr = pool.get(first) as *const Conn;
        for _ in 0..999 {
            pool.acquire().unwrap();
        }
        assert_eq!(addr, pool.get(first) as *const Conn);
        assert_eq!(pool.capacity(), 1000);
    }

    #[test]
    fn zero_capacity_is_refused() {
        assert!(Pool::<Conn>::new(0).is_err());
    }

    #[test]
    fn untouched_slots_cost_no_memory() {
        fn rss_kib() -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
            line.split_whitespace().nth(1).unwrap().parse().unwrap()
        }
        struct Big {
            _pad: [u64; 600],
        }
        impl Default for Big {
            fn default() -> Self {
                Big { _pad: [1; 600] }
            }
        }
        let before = rss_kib();
        let mut pool: Pool<Big> = Pool::new(100_000).unwrap();
        pool.acquire().unwrap();
        // 100,000 slots of over 4 KiB reserved; only the first one's pages are touched.
        assert!(
            rss_kib() < before + 2048,
            "reserving a pool committed memory"
        );
    }

    struct Count(std::sync::Arc<std::sync::atomic::AtomicUsize>);
    impl Task for Count {
        fn run(self) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn delegate_and_finish_round_trip() {
        let mut pool: Pool<Conn> = Pool::new(2).unwrap();
        let i = pool.acquire().unwrap();
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let route = Route {
            owner: 0,
            slot: i,
            gen: 9,
        };
        let Some(Filled::New(task)) = pool.delegate(i, Count(runs.clone()), route) else {
            panic!("a fresh slot takes a task");
        };
        assert!(pool.is_delegated(i));
        // A second task for the same slot is refused while the first is out.
        assert!(pool.delegate(i, Count(runs.clone()), route).is_none());
        let done = std::thread::spawn(move || task.run().unwrap())
            .join()
            .unwrap();
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(done.route(), route);
        assert_eq!(pool.finish(done), Some(route));
        assert!(!pool.is_delegated(i));
        pool.release(i);
    }

    #[test]
    fn a_slot_whose_queued_task_is_cancelled_is_free_at_once() {
        let mut pool: Pool<Conn> = Pool::new(1).unwrap();
        let i = pool.acquire().unwrap();
        let runs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let route = Route {
            owner: 0,
            slot: i,
            gen: 1,
        };
        let Some(Filled::New(task)) = pool.delegate(i, Count(runs.clone()), route) else {
            panic!("a fresh slot takes a task");
        };
        assert_eq!(pool.cancel(i), Cancel::Withdrawn);
        assert!(!pool.is_delegated(i));
        pool.release(i);
        // The next connection of the slot delegates through the same queued token.
        let i = pool.acquire().unwrap();
        assert!(matches!(
            pool.delegate(i, Count(runs.clone()), route),
            Some(Filled::Requeued)
        ));
        let done = task.run().unwrap();
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(pool.finish(done), Some(route));
        pool.release(i);
    }
}
