//! The item store: memcached's `slabs.c` and `items.c` in safe Rust, with every byte
//! reserved by [`Store::new`] and nothing allocated afterwards.
//!
//! - **Memory**: `-m` megabytes cut into pages of `-I` bytes (memcached's slab pages),
//!   each allocated zeroed at start-up, so that the kernel backs a page only once an
//!   item is written into it (the resident size grows with the data, as memcached's
//!   does). A page belongs to one size class once taken; a class cuts it into chunks of
//!   its size (64 bytes, then x1.25, up to half a page, then one whole page). As in
//!   memcached, a class that has no page yet may take one beyond the limit (a spare
//!   page reserved for that), so that any size can be stored however the memory was
//!   spent.
//! - **An item** is one chunk: a 40-byte header (hash chain, LRU links, times, flags,
//!   length, pins, CAS), the key, the value. memcached's header is 48 bytes plus 8 for
//!   the CAS, plus a NUL after the key, 4 bytes of flags when they are not 0 and the
//!   value's `\r\n`.
//! - **Shards**: the index, the LRU lists and the pages are split into shards by key
//!   hash, each behind one lock (memcached locks per hash stripe too). A command locks
//!   the shard of its key, copies, and unlocks: never across a system call. The
//!   counters a client reads are summed over the shards by `stats`.
//! - **Eviction**: a class with no free chunk and no page to take reclaims an expired
//!   or flushed item from the tail of its LRU list, else evicts the least recently
//!   used one that no connection is reading (`evictions`), as memcached's
//!   `lru_pull_tail` does.
//! - **Streaming**: a value larger than a connection's output area is sent from the
//!   item while the connection holds a pin on it ([`Pin`]: a delete, replace or
//!   eviction unlinks it, and the chunk is freed when the last pin goes); a value
//!   being received is written into a reserved chunk ([`Reservation`]) that is
//!   linked only when the data block is complete.
#![forbid(unsafe_code)]

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// The longest key memcached accepts (`KEY_MAX_LENGTH`).
pub const KEY_MAX: usize = 250;

/// Bytes of an item's header in its chunk.
pub const HEADER: usize = 40;

/// memcached's item overhead, by which `-I` limits an item (`item_size_ok`): the
/// 48-byte `item` struct, 8 bytes of CAS, the key's NUL, the flags when not 0 and the
/// value's `\r\n`. The same values are refused as by memcached.
fn memcached_size(nkey: usize, flags: u32, len: usize) -> usize {
    48 + 8 + nkey + 1 + if flags != 0 { 4 } else { 0 } + len + 2
}

// The header's fields (little-endian, in the chunk's first HEADER bytes).
const H_NEXT: usize = 0;
const PREV: usize = 4;
const NEXT: usize = 8;
const EXPTIME: usize = 12;
const TIME: usize = 16;
const FLAGS: usize = 20;
const NBYTES: usize = 24;
const NKEY: usize = 28;
const STATE: usize = 29;
const PINS: usize = 30;
const CAS: usize = 32;

// An item's state.
const FREE: u8 = 0;
/// Reserved for a value being received: in no list.
const RESERVED: u8 = 1;
/// In the index and its LRU list.
const LINKED: u8 = 2;
/// Deleted, replaced or evicted while pinned: freed when the last pin goes.
const UNLINKED: u8 = 3;

/// No item (refs are 1-based so that zeroed memory is an empty index).
const NIL: u32 = 0;

/// How many items from an LRU tail are looked at for one to reclaim or evict
/// (memcached's search depth).
const TAIL_SEARCH: usize = 5;

fn rd32(c: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&c[at..at + 4]);
    u32::from_le_bytes(b)
}

fn wr32(c: &mut [u8], at: usize, v: u32) {
    c[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn rd64(c: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&c[at..at + 8]);
    u64::from_le_bytes(b)
}

fn wr64(c: &mut [u8], at: usize, v: u64) {
    c[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn pins(c: &[u8]) -> u16 {
    u16::from_le_bytes([c[PINS], c[PINS + 1]])
}

fn set_pins(c: &mut [u8], v: u16) {
    c[PINS..PINS + 2].copy_from_slice(&v.to_le_bytes());
}

/// What the store is built from (`-m`, `-I`, the shard count).
#[derive(Clone, Copy, Debug)]
pub struct StoreConfig {
    /// Bytes for items (`-m` megabytes).
    pub memory: usize,
    /// The largest item, memcached's way of counting (`-I`); also the page size.
    pub item_max: usize,
    /// Shards (rounded up to a power of two).
    pub shards: usize,
}

/// Why a value cannot be stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// Larger than `-I`: `SERVER_ERROR object too large for cache`.
    TooLarge,
    /// No chunk could be freed: `SERVER_ERROR out of memory storing object`.
    NoMemory,
}

/// How a received value is stored (the storage commands).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// `set`.
    Set,
    /// `add`: only if the key is absent.
    Add,
    /// `replace`: only if present.
    Replace,
    /// `append`: after the present value, keeping its flags and exptime.
    Append,
    /// `prepend`: before the present value.
    Prepend,
    /// `cas`: only if present with this CAS unique.
    Cas(u64),
}

/// The outcome of a storage command, as the client reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `STORED`.
    Stored,
    /// `NOT_STORED`.
    NotStored,
    /// `EXISTS` (cas: changed since it was read).
    Exists,
    /// `NOT_FOUND` (cas: absent).
    NotFound,
}

/// The outcome of `incr`/`decr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delta {
    /// The new value.
    Value(u64),
    /// The value is not a decimal number.
    NonNumeric,
    /// No such item.
    NotFound,
    /// The longer number needed a new chunk and none could be freed.
    NoMemory,
}

/// An item being read by a connection while its value streams out.
#[derive(Debug)]
pub struct Pin {
    shard: u32,
    item: u32,
    /// The value's length.
    pub len: usize,
}

/// A chunk reserved for a value being received.
#[derive(Debug)]
pub struct Reservation {
    shard: u32,
    item: u32,
    hash: u64,
    /// The value's length.
    pub len: usize,
}

/// What a hit shows a reader before its value.
#[derive(Clone, Copy, Debug)]
pub struct Hit {
    /// The client's 32-bit flags.
    pub flags: u32,
    /// The CAS unique.
    pub cas: u64,
    /// The value's length.
    pub len: usize,
}

/// The outcome of a read.
#[derive(Debug)]
pub enum Read {
    /// Absent, expired or flushed.
    Miss,
    /// The value was copied whole.
    Done,
    /// The value was copied in part; the rest is read through this pin.
    Pinned(Pin),
}

/// The store's counters, summed over the shards (memcached's names).
#[derive(Clone, Copy, Debug, Default)]
pub struct StoreStats {
    /// Items linked now.
    pub curr_items: u64,
    /// Items ever linked.
    pub total_items: u64,
    /// Bytes of the linked items (header, key, value).
    pub bytes: u64,
    /// Items evicted to make room while still valid.
    pub evictions: u64,
    /// Expired or flushed items whose chunk was reused.
    pub reclaimed: u64,
    /// Reads that found an expired item.
    pub get_expired: u64,
    /// Reads that found a flushed item.
    pub get_flushed: u64,
    /// Pages taken by classes.
    pub pages: u64,
}

/// The size classes and how an item ref splits into page and chunk.
#[derive(Debug)]
struct Geometry {
    sizes: Vec<u32>,
    page: usize,
    slot_bits: u32,
}

impl Geometry {
    fn class_for(&self, need: usize) -> Option<usize> {
        self.sizes.iter().position(|&s| s as usize >= need)
    }

    fn split(&self, item: u32) -> (usize, usize) {
        let v = (item - 1) as usize;
        (v >> self.slot_bits, v & ((1 << self.slot_bits) - 1))
    }

    fn join(&self, page: usize, slot: usize) -> u32 {
        ((page << self.slot_bits) | slot) as u32 + 1
    }
}

/// Pages not yet taken by a class.
#[derive(Debug)]
struct PagePool {
    /// Within `-m`.
    main: Vec<Box<[u8]>>,
    /// One for each class of each shard that has none yet (memcached lets such a
    /// class exceed the limit by one page).
    spare: Vec<Box<[u8]>>,
}

#[derive(Debug)]
struct Page {
    class: usize,
    data: Box<[u8]>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Class {
    /// Free chunks, chained through their H_NEXT.
    free: u32,
    /// The LRU list: most recently used at the head.
    head: u32,
    tail: u32,
    /// The page being cut (index + 1), and its next uncut slot.
    fresh_page: usize,
    fresh_slot: usize,
    pages: usize,
}

#[derive(Debug)]
struct Shard {
    pages: Vec<Page>,
    classes: Vec<Class>,
    buckets: Box<[u32]>,
    stats: StoreStats,
}

/// The flush_all state (memcached's `oldest_live`, `oldest_cas`).
#[derive(Debug, Default)]
struct Flush {
    oldest_live: AtomicU32,
    oldest_cas: AtomicU64,
}

impl Flush {
    fn flushed(&self, time: u32, cas: u64, now: u32) -> bool {
        let live = self.oldest_live.load(Ordering::Relaxed);
        if live == 0 || live > now {
            return false;
        }
        let oldest_cas = self.oldest_cas.load(Ordering::Relaxed);
        time <= live || (oldest_cas != 0 && cas != 0 && cas < oldest_cas)
    }
}

/// What a shard needs of the store to allocate: evicting recomputes a key's hash.
struct Cx<'a> {
    g: &'a Geometry,
    pool: &'a Mutex<PagePool>,
    flush: &'a Flush,
    hasher: &'a RandomState,
}

/// The item store, shared by the accept threads.
#[derive(Debug)]
pub struct Store {
    geometry: Geometry,
    shards: Box<[Mutex<Shard>]>,
    shard_bits: u32,
    pool: Mutex<PagePool>,
    item_max: usize,
    limit: usize,
    cas: AtomicU64,
    flush: Flush,
    hasher: RandomState,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while a shard is locked is a bug that aborts the release build; in
    // tests, go on with the data as it is.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Store {
    /// Reserves everything: the pages (zeroed, so backed only once written), the
    /// index and the lists. The one error is the allocation's.
    pub fn new(cfg: &StoreConfig) -> Result<Store, String> {
        let page = cfg.item_max.max(1024);
        let mut sizes = Vec::new();
        let mut size = 64usize;
        while size <= page / 2 {
            sizes.push(size as u32);
            size = (size * 5 / 4 + 7) & !7;
        }
        sizes.push(page as u32);
        let slot_bits = usize::BITS - (page / 64).leading_zeros();
        let shards = cfg.shards.clamp(1, 1024).next_power_of_two();
        let main_pages = (cfg.memory / page).max(1);
        let spare_pages = shards * sizes.len();
        let total_pages = main_pages + spare_pages;
        if (total_pages as u64) << slot_bits >= u64::from(u32::MAX) {
            return Err(format!(
                "-m {} MB with -I {page} bytes: too many items to index",
                cfg.memory >> 20
            ));
        }
        let geometry = Geometry {
            sizes,
            page,
            slot_bits,
        };
        let mut pool = PagePool {
            main: Vec::new(),
            spare: Vec::new(),
        };
        let oom = |what: &str| format!("cannot reserve {what}");
        // One bucket per 128 bytes of items: memcached grows its table to 1.5 items
        // per bucket; we cannot grow, so we size for small items.
        let buckets_total = (cfg.memory / 128).clamp(1024, 1 << 30).next_power_of_two();
        let per_shard = (buckets_total / shards).max(64);
        // The memory is taken zeroed (`vec![0; n]` is calloc: the kernel backs a page
        // only once it is written), which cannot fail softly; this probe of the same
        // size can, so that start-up ends with a line rather than an abort.
        let total_bytes = total_pages
            .checked_mul(page)
            .and_then(|b| b.checked_add(per_shard * shards * 4))
            .ok_or_else(|| oom("the item memory"))?;
        let mut probe: Vec<u8> = Vec::new();
        probe
            .try_reserve_exact(total_bytes)
            .map_err(|_| oom("the item memory"))?;
        drop(probe);
        pool.main
            .try_reserve_exact(main_pages)
            .map_err(|_| oom("the page list"))?;
        pool.spare
            .try_reserve_exact(spare_pages)
            .map_err(|_| oom("the page list"))?;
        for i in 0..total_pages {
            let data = vec![0u8; page].into_boxed_slice();
            if i < main_pages {
                pool.main.push(data);
            } else {
                pool.spare.push(data);
            }
        }
        let mut list = Vec::new();
        list.try_reserve_exact(shards)
            .map_err(|_| oom("the shards"))?;
        for _ in 0..shards {
            let mut pages = Vec::new();
            pages
                .try_reserve_exact(total_pages)
                .map_err(|_| oom("the shards"))?;
            let buckets = vec![NIL; per_shard];
            list.push(Mutex::new(Shard {
                pages,
                classes: vec![Class::default(); geometry.sizes.len()],
                buckets: buckets.into_boxed_slice(),
                stats: StoreStats::default(),
            }));
        }
        Ok(Store {
            geometry,
            shards: list.into_boxed_slice(),
            shard_bits: shards.trailing_zeros(),
            pool: Mutex::new(pool),
            item_max: cfg.item_max,
            limit: cfg.memory,
            cas: AtomicU64::new(0),
            flush: Flush::default(),
            hasher: RandomState::new(),
        })
    }

    /// `-m` in bytes (`limit_maxbytes`).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Whether memcached would refuse this item as larger than `-I`.
    pub fn too_large(&self, nkey: usize, flags: u32, len: usize) -> bool {
        memcached_size(nkey, flags, len) > self.item_max
    }

    fn cx(&self) -> Cx<'_> {
        Cx {
            g: &self.geometry,
            pool: &self.pool,
            flush: &self.flush,
            hasher: &self.hasher,
        }
    }

    fn hash(&self, key: &[u8]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write(key);
        h.finish()
    }

    fn shard_of(&self, hash: u64) -> usize {
        if self.shard_bits == 0 {
            0
        } else {
            (hash >> (64 - self.shard_bits)) as usize
        }
    }

    fn next_cas(&self) -> u64 {
        self.cas.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Reads `key`. `write` gets the hit and the value and says whether it copied
    /// all it needs; if not, the item is pinned for the rest. `touch` sets a new
    /// exptime first (`gat`).
    pub fn read(
        &self,
        key: &[u8],
        now: u32,
        touch: Option<u32>,
        write: impl FnOnce(&Hit, &[u8]) -> bool,
    ) -> Read {
        let hash = self.hash(key);
        let s = self.shard_of(hash);
        let mut shard = lock(&self.shards[s]);
        let g = &self.geometry;
        let Some(item) = shard.find_live(g, &self.flush, key, hash, now, true) else {
            return Read::Miss;
        };
        if let Some(exptime) = touch {
            wr32(shard.chunk_mut(g, item), EXPTIME, exptime);
        }
        shard.bump(g, item);
        let c = shard.chunk(g, item);
        if pins(c) == u16::MAX {
            // As memcached does when a refcount would overflow.
            return Read::Miss;
        }
        let nkey = usize::from(c[NKEY]);
        let len = rd32(c, NBYTES) as usize;
        let hit = Hit {
            flags: rd32(c, FLAGS),
            cas: rd64(c, CAS),
            len,
        };
        let value = &c[HEADER + nkey..HEADER + nkey + len];
        if write(&hit, value) {
            return Read::Done;
        }
        let c = shard.chunk_mut(g, item);
        let p = pins(c);
        set_pins(c, p + 1);
        Read::Pinned(Pin {
            shard: s as u32,
            item,
            len,
        })
    }

    /// Copies the pinned value from `offset` on: `write` returns how many bytes it took.
    pub fn read_pinned(
        &self,
        pin: &Pin,
        offset: usize,
        write: impl FnOnce(&[u8]) -> usize,
    ) -> usize {
        let shard = lock(&self.shards[pin.shard as usize]);
        let c = shard.chunk(&self.geometry, pin.item);
        let nkey = usize::from(c[NKEY]);
        write(&c[HEADER + nkey + offset..HEADER + nkey + pin.len])
    }

    /// Lets a pinned item go (freed now if it was unlinked meanwhile).
    pub fn unpin(&self, pin: Pin) {
        let mut shard = lock(&self.shards[pin.shard as usize]);
        shard.unpin(&self.geometry, pin.item);
    }

    /// Reserves a chunk for a value of `len` bytes about to be received.
    pub fn reserve(
        &self,
        key: &[u8],
        flags: u32,
        exptime: u32,
        len: usize,
        now: u32,
    ) -> Result<Reservation, Refused> {
        if self.too_large(key.len(), flags, len) {
            return Err(Refused::TooLarge);
        }
        let hash = self.hash(key);
        let s = self.shard_of(hash);
        let mut shard = lock(&self.shards[s]);
        let g = &self.geometry;
        let class = g
            .class_for(HEADER + key.len() + len)
            .ok_or(Refused::TooLarge)?;
        let item = shard
            .alloc(&self.cx(), class, now)
            .ok_or(Refused::NoMemory)?;
        let c = shard.chunk_mut(g, item);
        c[STATE] = RESERVED;
        set_pins(c, 0);
        wr32(c, EXPTIME, exptime);
        wr32(c, FLAGS, flags);
        wr32(c, NBYTES, len as u32);
        c[NKEY] = key.len() as u8;
        c[HEADER..HEADER + key.len()].copy_from_slice(key);
        Ok(Reservation {
            shard: s as u32,
            item,
            hash,
            len,
        })
    }

    /// Writes received value bytes at `offset` of a reservation.
    pub fn fill(&self, res: &Reservation, offset: usize, data: &[u8]) {
        let mut shard = lock(&self.shards[res.shard as usize]);
        let c = shard.chunk_mut(&self.geometry, res.item);
        let at = HEADER + usize::from(c[NKEY]) + offset;
        c[at..at + data.len()].copy_from_slice(data);
    }

    /// Gives a reservation back (a bad data chunk, a connection gone mid-value).
    pub fn cancel(&self, res: Reservation) {
        let mut shard = lock(&self.shards[res.shard as usize]);
        shard.free(&self.geometry, res.item);
    }

    /// Stores a received value as `mode` says.
    pub fn commit(&self, res: Reservation, mode: Mode, now: u32) -> Outcome {
        let mut guard = lock(&self.shards[res.shard as usize]);
        let shard = &mut *guard;
        let g = &self.geometry;
        let (nkey, key_buf) = {
            let c = shard.chunk(g, res.item);
            let nkey = usize::from(c[NKEY]);
            let mut k = [0u8; KEY_MAX];
            k[..nkey].copy_from_slice(&c[HEADER..HEADER + nkey]);
            (nkey, k)
        };
        let key = &key_buf[..nkey];
        let old = shard.find_live(g, &self.flush, key, res.hash, now, false);
        let outcome = match (mode, old) {
            (Mode::Add, Some(old)) => {
                shard.bump(g, old);
                Outcome::NotStored
            }
            (Mode::Replace | Mode::Append | Mode::Prepend, None) => Outcome::NotStored,
            (Mode::Cas(_), None) => Outcome::NotFound,
            (Mode::Cas(cas), Some(old)) if rd64(shard.chunk(g, old), CAS) != cas => Outcome::Exists,
            (Mode::Append | Mode::Prepend, Some(old)) => {
                return match self.join(shard, &res, old, mode == Mode::Append, now) {
                    Some(new) => {
                        shard.unlink(g, old, res.hash);
                        shard.link(g, new, res.hash, self.next_cas(), now);
                        shard.free(g, res.item);
                        Outcome::Stored
                    }
                    None => {
                        shard.free(g, res.item);
                        Outcome::NotStored
                    }
                };
            }
            (_, old) => {
                if let Some(old) = old {
                    shard.unlink(g, old, res.hash);
                }
                shard.link(g, res.item, res.hash, self.next_cas(), now);
                return Outcome::Stored;
            }
        };
        shard.free(g, res.item);
        outcome
    }

    /// A new chunk holding `old`'s value with `res`'s before or after it, and `old`'s
    /// flags and exptime; `None` if too large or no memory.
    fn join(
        &self,
        shard: &mut Shard,
        res: &Reservation,
        old: u32,
        append: bool,
        now: u32,
    ) -> Option<u32> {
        let g = &self.geometry;
        let (nkey, flags, exptime, old_len) = {
            let c = shard.chunk(g, old);
            (
                usize::from(c[NKEY]),
                rd32(c, FLAGS),
                rd32(c, EXPTIME),
                rd32(c, NBYTES) as usize,
            )
        };
        let len = old_len + res.len;
        if self.too_large(nkey, flags, len) {
            return None;
        }
        let class = g.class_for(HEADER + nkey + len)?;
        // Neither may be evicted to make the room.
        shard.pin(g, old);
        let new = shard.alloc(&self.cx(), class, now);
        shard.unpin(g, old);
        let new = new?;
        shard.copy(g, old, HEADER, new, HEADER, nkey);
        let c = shard.chunk_mut(g, new);
        c[STATE] = RESERVED;
        set_pins(c, 0);
        wr32(c, EXPTIME, exptime);
        wr32(c, FLAGS, flags);
        wr32(c, NBYTES, len as u32);
        c[NKEY] = nkey as u8;
        let (first, first_len, second) = if append {
            (old, old_len, res.item)
        } else {
            (res.item, res.len, old)
        };
        shard.copy(g, first, HEADER + nkey, new, HEADER + nkey, first_len);
        let second_len = len - first_len;
        shard.copy(
            g,
            second,
            HEADER + nkey,
            new,
            HEADER + nkey + first_len,
            second_len,
        );
        Some(new)
    }

    /// `delete`: whether there was such an item.
    pub fn delete(&self, key: &[u8], now: u32) -> bool {
        let hash = self.hash(key);
        let mut shard = lock(&self.shards[self.shard_of(hash)]);
        let g = &self.geometry;
        match shard.find_live(g, &self.flush, key, hash, now, false) {
            Some(item) => {
                shard.unlink(g, item, hash);
                true
            }
            None => false,
        }
    }

    /// `touch`: sets a new exptime; whether there was such an item.
    pub fn touch(&self, key: &[u8], exptime: u32, now: u32) -> bool {
        let hash = self.hash(key);
        let mut shard = lock(&self.shards[self.shard_of(hash)]);
        let g = &self.geometry;
        match shard.find_live(g, &self.flush, key, hash, now, false) {
            Some(item) => {
                wr32(shard.chunk_mut(g, item), EXPTIME, exptime);
                shard.bump(g, item);
                true
            }
            None => false,
        }
    }

    /// `incr`/`decr` (memcached's `do_add_delta`): 64-bit wrap-around up, floor 0
    /// down; the number is written in place, padded with spaces, when it is not longer
    /// than the value, else into a new chunk.
    pub fn delta(&self, key: &[u8], incr: bool, delta: u64, now: u32) -> Delta {
        let hash = self.hash(key);
        let mut guard = lock(&self.shards[self.shard_of(hash)]);
        let shard = &mut *guard;
        let g = &self.geometry;
        let Some(item) = shard.find_live(g, &self.flush, key, hash, now, false) else {
            return Delta::NotFound;
        };
        let c = shard.chunk(g, item);
        let nkey = usize::from(c[NKEY]);
        let len = rd32(c, NBYTES) as usize;
        let Some(value) = parse_counter(&c[HEADER + nkey..HEADER + nkey + len]) else {
            return Delta::NonNumeric;
        };
        let value = if incr {
            value.wrapping_add(delta)
        } else {
            value.saturating_sub(delta)
        };
        let mut digits = [0u8; 20];
        let text = format_u64(value, &mut digits);
        if text.len() <= len && pins(c) == 0 {
            let cas = self.next_cas();
            let c = shard.chunk_mut(g, item);
            let v = &mut c[HEADER + nkey..HEADER + nkey + len];
            v[..text.len()].copy_from_slice(text);
            v[text.len()..].fill(b' ');
            wr64(c, CAS, cas);
            shard.bump(g, item);
            return Delta::Value(value);
        }
        let (flags, exptime) = (rd32(c, FLAGS), rd32(c, EXPTIME));
        let Some(class) = g.class_for(HEADER + nkey + text.len()) else {
            return Delta::NoMemory;
        };
        shard.pin(g, item);
        let new = shard.alloc(&self.cx(), class, now);
        shard.unpin(g, item);
        let Some(new) = new else {
            return Delta::NoMemory;
        };
        shard.copy(g, item, 0, new, 0, HEADER + nkey);
        let c = shard.chunk_mut(g, new);
        set_pins(c, 0);
        wr32(c, EXPTIME, exptime);
        wr32(c, FLAGS, flags);
        wr32(c, NBYTES, text.len() as u32);
        c[HEADER + nkey..HEADER + nkey + text.len()].copy_from_slice(text);
        shard.unlink(g, item, hash);
        shard.link(g, new, hash, self.next_cas(), now);
        Delta::Value(value)
    }

    /// `flush_all`: items stored up to `oldest_live` are gone from then on (memcached's
    /// rule, with the CAS bound for those stored in the current second).
    pub fn flush(&self, new_oldest: u32, now: u32) {
        let live = new_oldest.saturating_sub(1);
        self.flush.oldest_live.store(live, Ordering::Relaxed);
        if live <= now {
            self.flush
                .oldest_cas
                .store(self.next_cas(), Ordering::Relaxed);
        }
    }

    /// The counters summed over the shards (each locked in turn, briefly).
    pub fn stats(&self) -> StoreStats {
        let mut t = StoreStats::default();
        for s in self.shards.iter() {
            let s = lock(s).stats;
            t.curr_items += s.curr_items;
            t.total_items += s.total_items;
            t.bytes += s.bytes;
            t.evictions += s.evictions;
            t.reclaimed += s.reclaimed;
            t.get_expired += s.get_expired;
            t.get_flushed += s.get_flushed;
            t.pages += s.pages;
        }
        t
    }
}

impl Store {
    /// Checks the store's structure (for the tests and the fuzz target): every LRU
    /// list well linked and holding exactly the linked items, each found through the
    /// index, the counters right; with `idle` (no connection open), no chunk reserved
    /// or pinned.
    #[allow(dead_code)] // the tests' and the fuzz target's
    pub fn audit(&self, idle: bool) -> Result<(), String> {
        let g = &self.geometry;
        for (n, shard) in self.shards.iter().enumerate() {
            let shard = lock(shard);
            let mut linked = 0u64;
            let mut bytes = 0u64;
            for (ci, class) in shard.classes.iter().enumerate() {
                let mut prev = NIL;
                let mut item = class.head;
                while item != NIL {
                    let c = shard.chunk(g, item);
                    if c[STATE] != LINKED || rd32(c, PREV) != prev || shard.class_of(g, item) != ci
                    {
                        return Err(format!("shard {n} class {ci}: item {item} badly linked"));
                    }
                    let nkey = usize::from(c[NKEY]);
                    let hash = {
                        let mut h = self.hasher.build_hasher();
                        h.write(&c[HEADER..HEADER + nkey]);
                        h.finish()
                    };
                    if self.shard_of(hash) != n
                        || shard.find(g, &c[HEADER..HEADER + nkey], hash) != Some(item)
                    {
                        return Err(format!("shard {n}: item {item} not found by its key"));
                    }
                    linked += 1;
                    bytes += shard.item_bytes(g, item);
                    prev = item;
                    item = rd32(c, NEXT);
                }
                if class.tail != prev {
                    return Err(format!(
                        "shard {n} class {ci}: tail {} is not {prev}",
                        class.tail
                    ));
                }
            }
            if linked != shard.stats.curr_items || bytes != shard.stats.bytes {
                return Err(format!(
                    "shard {n}: {linked} items of {bytes} bytes linked, counted {:?}",
                    shard.stats
                ));
            }
            for (pi, page) in shard.pages.iter().enumerate() {
                let size = g.sizes[page.class] as usize;
                let class = &shard.classes[page.class];
                let cut = if class.fresh_page == pi + 1 {
                    class.fresh_slot
                } else {
                    g.page / size
                };
                for slot in 0..cut {
                    let c = shard.chunk(g, g.join(pi, slot));
                    let busy = c[STATE] == RESERVED || c[STATE] == UNLINKED || pins(c) != 0;
                    if idle && busy {
                        return Err(format!(
                            "shard {n}: chunk {pi}/{slot} held with no connection"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl Shard {
    fn chunk(&self, g: &Geometry, item: u32) -> &[u8] {
        let (p, s) = g.split(item);
        let page = &self.pages[p];
        let size = g.sizes[page.class] as usize;
        &page.data[s * size..(s + 1) * size]
    }

    fn chunk_mut(&mut self, g: &Geometry, item: u32) -> &mut [u8] {
        let (p, s) = g.split(item);
        let page = &mut self.pages[p];
        let size = g.sizes[page.class] as usize;
        &mut page.data[s * size..(s + 1) * size]
    }

    fn class_of(&self, g: &Geometry, item: u32) -> usize {
        self.pages[g.split(item).0].class
    }

    fn item_bytes(&self, g: &Geometry, item: u32) -> u64 {
        let c = self.chunk(g, item);
        (HEADER + usize::from(c[NKEY]) + rd32(c, NBYTES) as usize) as u64
    }

    /// Copies `len` bytes between two chunks of this shard.
    fn copy(&mut self, g: &Geometry, from: u32, from_at: usize, to: u32, to_at: usize, len: usize) {
        let (pf, sf) = g.split(from);
        let (pt, st) = g.split(to);
        let size_f = g.sizes[self.pages[pf].class] as usize;
        let size_t = g.sizes[self.pages[pt].class] as usize;
        let src = sf * size_f + from_at;
        let dst = st * size_t + to_at;
        if pf == pt {
            self.pages[pf].data.copy_within(src..src + len, dst);
        } else if pf < pt {
            let (a, b) = self.pages.split_at_mut(pt);
            b[0].data[dst..dst + len].copy_from_slice(&a[pf].data[src..src + len]);
        } else {
            let (a, b) = self.pages.split_at_mut(pf);
            a[pt].data[dst..dst + len].copy_from_slice(&b[0].data[src..src + len]);
        }
    }

    fn bucket(&self, hash: u64) -> usize {
        hash as usize & (self.buckets.len() - 1)
    }

    fn find(&self, g: &Geometry, key: &[u8], hash: u64) -> Option<u32> {
        let mut item = self.buckets[self.bucket(hash)];
        while item != NIL {
            let c = self.chunk(g, item);
            let nkey = usize::from(c[NKEY]);
            if nkey == key.len() && &c[HEADER..HEADER + nkey] == key {
                return Some(item);
            }
            item = rd32(c, H_NEXT);
        }
        None
    }

    /// The linked item for `key` unless it expired or was flushed (then it is
    /// unlinked, as memcached's `do_item_get` does).
    fn find_live(
        &mut self,
        g: &Geometry,
        flush: &Flush,
        key: &[u8],
        hash: u64,
        now: u32,
        count: bool,
    ) -> Option<u32> {
        let item = self.find(g, key, hash)?;
        let c = self.chunk(g, item);
        let exptime = rd32(c, EXPTIME);
        if flush.flushed(rd32(c, TIME), rd64(c, CAS), now) {
            self.unlink(g, item, hash);
            if count {
                self.stats.get_flushed += 1;
            }
            return None;
        }
        if exptime != 0 && exptime <= now {
            self.unlink(g, item, hash);
            if count {
                self.stats.get_expired += 1;
            }
            return None;
        }
        Some(item)
    }

    fn lru_remove(&mut self, g: &Geometry, item: u32) {
        let class = self.class_of(g, item);
        let c = self.chunk(g, item);
        let (prev, next) = (rd32(c, PREV), rd32(c, NEXT));
        if prev == NIL {
            self.classes[class].head = next;
        } else {
            wr32(self.chunk_mut(g, prev), NEXT, next);
        }
        if next == NIL {
            self.classes[class].tail = prev;
        } else {
            wr32(self.chunk_mut(g, next), PREV, prev);
        }
    }

    fn lru_push(&mut self, g: &Geometry, item: u32) {
        let class = self.class_of(g, item);
        let head = self.classes[class].head;
        let c = self.chunk_mut(g, item);
        wr32(c, PREV, NIL);
        wr32(c, NEXT, head);
        if head == NIL {
            self.classes[class].tail = item;
        } else {
            wr32(self.chunk_mut(g, head), PREV, item);
        }
        self.classes[class].head = item;
    }

    /// Most recently used.
    fn bump(&mut self, g: &Geometry, item: u32) {
        if self.classes[self.class_of(g, item)].head != item {
            self.lru_remove(g, item);
            self.lru_push(g, item);
        }
    }

    fn link(&mut self, g: &Geometry, item: u32, hash: u64, cas: u64, now: u32) {
        let b = self.bucket(hash);
        let head = self.buckets[b];
        let c = self.chunk_mut(g, item);
        c[STATE] = LINKED;
        wr32(c, H_NEXT, head);
        wr32(c, TIME, now);
        wr64(c, CAS, cas);
        self.buckets[b] = item;
        self.lru_push(g, item);
        self.stats.curr_items += 1;
        self.stats.total_items += 1;
        self.stats.bytes += self.item_bytes(g, item);
    }

    /// Out of the index and its list; freed unless pinned.
    fn unlink(&mut self, g: &Geometry, item: u32, hash: u64) {
        let next = rd32(self.chunk(g, item), H_NEXT);
        let b = self.bucket(hash);
        let mut prev = NIL;
        let mut cur = self.buckets[b];
        while cur != NIL && cur != item {
            prev = cur;
            cur = rd32(self.chunk(g, cur), H_NEXT);
        }
        debug_assert_eq!(cur, item, "a linked item is in its bucket");
        if prev == NIL {
            self.buckets[b] = next;
        } else {
            wr32(self.chunk_mut(g, prev), H_NEXT, next);
        }
        self.lru_remove(g, item);
        self.stats.curr_items -= 1;
        self.stats.bytes -= self.item_bytes(g, item);
        let c = self.chunk_mut(g, item);
        if pins(c) == 0 {
            self.free(g, item);
        } else {
            c[STATE] = UNLINKED;
        }
    }

    fn pin(&mut self, g: &Geometry, item: u32) {
        let c = self.chunk_mut(g, item);
        let p = pins(c);
        set_pins(c, p + 1);
    }

    fn unpin(&mut self, g: &Geometry, item: u32) {
        let c = self.chunk_mut(g, item);
        let p = pins(c) - 1;
        set_pins(c, p);
        if p == 0 && c[STATE] == UNLINKED {
            self.free(g, item);
        }
    }

    fn free(&mut self, g: &Geometry, item: u32) {
        let class = self.class_of(g, item);
        let head = self.classes[class].free;
        let c = self.chunk_mut(g, item);
        c[STATE] = FREE;
        set_pins(c, 0);
        wr32(c, H_NEXT, head);
        self.classes[class].free = item;
    }

    /// A chunk of `class`: a free one, an uncut one, one of a new page, or one
    /// reclaimed or evicted from the tail of the class's LRU list.
    fn alloc(&mut self, cx: &Cx<'_>, class: usize, now: u32) -> Option<u32> {
        let (g, pool, flush) = (cx.g, cx.pool, cx.flush);
        let cl = self.classes[class];
        if cl.free != NIL {
            let item = cl.free;
            self.classes[class].free = rd32(self.chunk(g, item), H_NEXT);
            return Some(item);
        }
        let per_page = g.page / g.sizes[class] as usize;
        if cl.fresh_page != 0 && cl.fresh_slot < per_page {
            self.classes[class].fresh_slot += 1;
            return Some(g.join(cl.fresh_page - 1, cl.fresh_slot));
        }
        let page = {
            let mut pool = lock(pool);
            match pool.main.pop() {
                Some(p) => Some(p),
                None if cl.pages == 0 => pool.spare.pop(),
                None => None,
            }
        };
        if let Some(data) = page {
            self.pages.push(Page { class, data });
            self.stats.pages += 1;
            let c = &mut self.classes[class];
            c.pages += 1;
            c.fresh_page = self.pages.len();
            c.fresh_slot = 1;
            return Some(g.join(self.pages.len() - 1, 0));
        }
        let mut item = self.classes[class].tail;
        for _ in 0..TAIL_SEARCH {
            if item == NIL {
                break;
            }
            let c = self.chunk(g, item);
            let prev = rd32(c, PREV);
            if pins(c) == 0 {
                let exptime = rd32(c, EXPTIME);
                let dead = flush.flushed(rd32(c, TIME), rd64(c, CAS), now)
                    || (exptime != 0 && exptime <= now);
                let hash = {
                    let nkey = usize::from(c[NKEY]);
                    let mut h = cx.hasher.build_hasher();
                    h.write(&c[HEADER..HEADER + nkey]);
                    h.finish()
                };
                if dead {
                    self.stats.reclaimed += 1;
                } else {
                    self.stats.evictions += 1;
                }
                self.unlink(g, item, hash);
                let head = self.classes[class].free;
                debug_assert_eq!(head, item, "an unpinned unlinked item is freed");
                self.classes[class].free = rd32(self.chunk(g, item), H_NEXT);
                return Some(item);
            }
            item = prev;
        }
        None
    }
}

/// memcached's `safe_strtoull` over a stored value (followed by its `\r\n`): leading
/// white space, an optional sign, digits, then white space or the end; a value that
/// is negative as a signed number with a `-` is refused.
pub fn parse_counter(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    strtoull(value)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// C's `strtoull`/`strtoll` in base 10 over `s`: (negative, magnitude, digits end)
/// after leading white space and a sign; `None` if no digit or out of range for 64
/// bits (`ERANGE`).
fn strto(s: &[u8], max: u64) -> Option<(bool, u64, usize)> {
    let mut i = 0;
    while i < s.len() && is_space(s[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    let mut range = true;
    while i < s.len() && s[i].is_ascii_digit() {
        match v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(s[i] - b'0')))
        {
            Some(n) if n <= max => v = n,
            _ => range = false,
        }
        i += 1;
    }
    if i == start || !range {
        return None;
    }
    // What follows the digits must be white space or the end (memcached's check).
    if i < s.len() && !is_space(s[i]) {
        return None;
    }
    Some((neg, v, i))
}

/// memcached's `safe_strtoull`: the text of a 64-bit unsigned number (a `-` is
/// accepted only when the result does not look negative as a signed number, as C's
/// `strtoull` wraps it).
pub fn strtoull(s: &[u8]) -> Option<u64> {
    let (neg, v, _) = strto(s, u64::MAX)?;
    let v = if neg { v.wrapping_neg() } else { v };
    if (v as i64) < 0 && s.contains(&b'-') {
        return None;
    }
    Some(v)
}

/// memcached's `safe_strtoul` for a 32-bit number: `strtoul` (64-bit on Linux), the
/// same sign rule, then truncated to 32 bits as memcached's assignment does.
pub fn strtoul(s: &[u8]) -> Option<u32> {
    strtoull(s).map(|v| v as u32)
}

/// memcached's `safe_strtol`: `strtol` (64-bit), truncated to 32 bits.
pub fn strtol(s: &[u8]) -> Option<i32> {
    let (neg, v, _) = strto(s, i64::MAX as u64 + 1)?;
    let v = if neg {
        (v as i64).wrapping_neg()
    } else if v > i64::MAX as u64 {
        return None;
    } else {
        v as i64
    };
    Some(v as i32)
}

/// `v` in decimal, in `buf`.
pub fn format_u64(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    &buf[i..]
}
