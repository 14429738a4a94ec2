//! libev's own memory, reserved at start-up: the allocator behind
//! `ev_set_allocator` that keeps the connection path free of `malloc` in C too.
//!
//! # Why
//!
//! libev grows its per-loop arrays with `realloc` while it runs: `anfds` (one
//! entry per fd *number*) and `fdchanges` whenever a watcher is started on a
//! higher fd, or more fds change in one iteration, than ever before; `pendings`
//! when more watchers are ready at once; the epoll backend's event array when a
//! poll fills it; `timers` and `rfeeds` with the timers. With libc's allocator
//! that is a heap allocation on the connection path, exactly what the pools
//! exist to avoid.
//!
//! # How
//!
//! [`reserve_arrays`], called once per server at start-up, reserves one
//! anonymous `MAP_NORESERVE` mapping cut into equal *regions*, each large
//! enough for the largest any libev array of this process can become. Every
//! block libev asks for gets a whole region of its own:
//!
//! - `realloc(NULL, n)` takes a free region (a compare-and-swap on its flag:
//!   no lock, any thread);
//! - `realloc(p, n)` with `n` within the region returns `p`: growth in place,
//!   no copy, no system call;
//! - `realloc(p, 0)` (free) gives the pages back (`MADV_DONTNEED`) and frees
//!   the region. libev frees only when a loop is destroyed and when the epoll
//!   event array grows (free, then allocate), which happens a bounded number
//!   of times in a loop's life, never per connection.
//!
//! The kernel commits a page only when it is first touched, so an idle server
//! pays for the bytes its arrays really use, rounded to pages, and nothing for
//! the reservation. Pre-growing the arrays to their final size at start-up
//! (the other way to the same end) would instead touch all of `anfds`, since
//! libev zero-fills it as it grows: 16 bytes per possible fd per loop, 3.2 MB
//! per loop at the default `-C` on a machine whose fd limit allows it, and no
//! way to pre-grow `pendings` or the epoll array short of feeding them events.
//!
//! A pointer this allocator did not hand out (a loop made before any
//! reservation, or one that outgrew its region, which the sizing below rules
//! out for the fds a server can hold) goes to libc's `realloc`/`free`, so
//! nothing breaks if the sizing is ever wrong: memory is only allocated again.
//!
//! # libev's growth policy, which the sizing relies on
//!
//! From `vendor/libev/ev.c` (4.33), `array_needsize` and `array_nextsize`: an
//! array of `cur` elements of `elem` bytes that must hold `cnt > cur` grows to
//! `ncur` elements, where `ncur` starts at `2 (cur + 1)` and doubles while it
//! is below `cnt`, so `ncur <= 2 cnt`; then, once `elem * ncur` exceeds
//! 4096 - 32 bytes, the byte size is rounded up to a multiple of 4096 minus 32,
//! adding less than `elem + 4096` bytes. The epoll backend grows its event
//! array the same way to hold one more event than it had. So an array asked to
//! hold `cnt` elements occupies at most `2 elem cnt + elem + 4096` bytes
//! (checked against a port of `array_nextsize` by this module's tests).
//!
//! Every element type is at most [`MAX_ELEM`] bytes on 64-bit Linux: `ANFD`
//! (a pointer, four flag bytes, the epoll generation counter), `ANPENDING` (a
//! pointer and an int), `ANHE` (time and pointer, `EV_HEAP_CACHE_AT`), watcher
//! pointers, `int` fds, `struct epoll_event` (12 bytes).
//!
//! Every count is at most the number of fd numbers in use plus the loop's few
//! timers and async watchers ([`EXTRA_ELEMS`]): `anfds` is indexed by fd,
//! `fdchanges` holds each fd at most once per iteration, a ready watcher is
//! queued in `pendings` at most once per iteration and every io watcher has its
//! own fd, the epoll array only grows when a poll returned as many ready fds as
//! it holds. fd numbers are below the fd limit, and below the number of fds
//! open at once, since the kernel hands out the lowest free one: the fds open
//! at start-up, plus `-A` x `-C` connections, plus a few per loop
//! ([`FD_SLACK`]). The loop struct itself is a few hundred bytes.
//!
//! A loop using the watcher kinds this server uses (io, timer, async)
//! allocates [`ARRAYS_PER_LOOP`] blocks: the loop, `anfds`, `fdchanges`,
//! `pendings` (one priority), `rfeeds`, `timers`, `asyncs`, and the epoll
//! backend's events and `eperms`. The other kinds `build.rs` enables each add
//! one array when first started on a loop (`periodics`, `idles`, `prepares`,
//! `checks`, `forks`, `cleanups`; signals and children live in static tables):
//! they take the spare regions, then libc's heap.
//!
//! # The fd limit
//!
//! The same sizing bounds the fds an [`Io`](super::Io) may watch
//! ([`Loop::fd_limit`](super::Loop::fd_limit)): the largest fd bound any
//! reservation was sized for, so that `anfds` never outgrows a region; without
//! a reservation, the fd hard limit, capped at [`FD_CEILING`], far below the
//! fd numbers at which libev's `int` size arithmetic overflows (2^25 with its
//! 16-byte `ANFD`). Both only grow once a loop exists, so a check passed once
//! holds for good.

use std::ffi::c_void;
use std::io;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, Ordering};
use std::sync::Mutex;

use libc::c_long;

use crate::sys;

/// Blocks one loop allocates (see the module documentation).
const ARRAYS_PER_LOOP: usize = 9;
/// Regions reserved per loop beyond those, for loops of other servers in the
/// same process (tests run several) and anything a later libev version adds.
const SPARE_PER_LOOP: usize = 3;
/// Largest element of any libev array, in bytes.
const MAX_ELEM: usize = 16;
/// Array elements beyond one per fd: timers, async watchers, their pendings.
const EXTRA_ELEMS: usize = 64;
/// fds a server opens besides its connections and what was open at start-up
/// (listeners, one epoll fd and one eventfd per loop, an accept in flight).
const FD_SLACK: usize = 1024;
/// libev's `MALLOC_ROUND`: the granularity of its size rounding.
const MALLOC_ROUND: usize = 4096;
/// The highest fd limit without a reservation (see the module documentation).
const FD_CEILING: RawFd = 1 << 24;

/// The largest fd bound of any reservation; 0 before the first.
static RESERVED_FDS: AtomicI32 = AtomicI32::new(0);

/// Without a reservation: the fd hard limit when first asked, capped; 0
/// before. Read once, so that the check costs no system call and the limit
/// never shrinks under a watcher that passed it.
static UNRESERVED_FDS: AtomicI32 = AtomicI32::new(0);

/// Fds below this may be watched (see the module documentation).
#[inline]
pub(super) fn fd_limit() -> RawFd {
    match RESERVED_FDS.load(Ordering::Relaxed) {
        0 => match UNRESERVED_FDS.load(Ordering::Relaxed) {
            0 => unreserved_fd_limit(),
            fds => fds,
        },
        fds => fds,
    }
}

#[cold]
fn unreserved_fd_limit() -> RawFd {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        RawFd::try_from(lim.rlim_max).unwrap_or(RawFd::MAX)
    } else {
        FD_CEILING
    };
    let fds = hard.clamp(1, FD_CEILING);
    // The first value stored wins (racing threads read the same limit anyway).
    match UNRESERVED_FDS.compare_exchange(0, fds, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => fds,
        Err(first) => first,
    }
}

/// One start-up reservation: `taken.len()` regions of `region` bytes from `base`.
struct Arena {
    base: usize,
    region: usize,
    taken: Box<[AtomicBool]>,
    /// The arena reserved before this one; arenas are never unmapped.
    next: *const Arena,
}

impl Arena {
    /// The index of the region holding `p`, if it is one of ours.
    fn region_of(&self, p: usize) -> Option<usize> {
        let offset = p.checked_sub(self.base)?;
        let i = offset / self.region;
        (i < self.taken.len()).then_some(i)
    }

    fn address(&self, i: usize) -> *mut c_void {
        (self.base + i * self.region) as *mut c_void
    }

    /// Takes a free region; lock-free, any thread.
    fn take(&self) -> Option<*mut c_void> {
        let i = self.taken.iter().position(|flag| {
            !flag.load(Ordering::Relaxed)
                && flag
                    .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
        })?;
        Some(self.address(i))
    }

    /// Gives region `i`'s pages back to the kernel and makes it free again.
    fn release(&self, i: usize) {
        // SAFETY: the region lies inside our mapping and nobody uses it any more (libev freed it); its pages read as zeros from now on.
        unsafe { libc::madvise(self.address(i), self.region, libc::MADV_DONTNEED) };
        self.taken[i].store(false, Ordering::Release);
    }
}

/// Newest arena first. Pushed at start-up, never removed.
static ARENAS: AtomicPtr<Arena> = AtomicPtr::new(ptr::null_mut());

/// Every arena, newest first.
fn arenas() -> impl Iterator<Item = &'static Arena> {
    let mut next: *const Arena = ARENAS.load(Ordering::Acquire);
    std::iter::from_fn(move || {
        // SAFETY: arenas are leaked boxes, published complete (Release/Acquire on ARENAS) and never freed or changed apart from their atomic flags.
        let arena = unsafe { next.as_ref()? };
        next = arena.next;
        Some(arena)
    })
}

/// Which allocator libev uses in this process, decided once: by the first
/// [`reserve_arrays`] (ours) or the first [`Loop::new`](super::Loop::new)
/// (libc's, libev's default), whichever comes first. The lock orders the two,
/// so `ev_set_allocator` never races with a loop reading the allocator.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Choice {
    Undecided,
    Reserved,
    Libc,
}

static CHOICE: Mutex<Choice> = Mutex::new(Choice::Undecided);

fn choice() -> std::sync::MutexGuard<'static, Choice> {
    CHOICE.lock().unwrap_or_else(|e| e.into_inner())
}

/// Called by `Loop::new` before it makes a loop: with no reservation yet, the
/// process keeps libc's allocator for good.
pub(super) fn loop_made() {
    let mut c = choice();
    if *c == Choice::Undecided {
        *c = Choice::Libc;
    }
}

/// Fails unless the process may still choose (or has chosen) our allocator.
fn may_reserve(c: Choice) -> io::Result<()> {
    match c {
        Choice::Undecided | Choice::Reserved => Ok(()),
        Choice::Libc => Err(io::Error::other(
            "conn_daemon::ev::reserve_arrays: a loop was made before it, with libc's allocator; \
             reserve before the first Loop::new",
        )),
    }
}

/// Installs [`ev_alloc`], once; the caller holds the choice's lock and has
/// checked [`may_reserve`].
fn install(c: &mut Choice) {
    if *c == Choice::Undecided {
        // SAFETY: no loop exists (the lock orders us before every `Loop::new`), so nothing reads libev's allocator concurrently; `ev_alloc` has the realloc semantics libev expects.
        unsafe { sys::ev_set_allocator(ev_alloc) };
        *c = Choice::Reserved;
    }
}

/// libev's allocator (see the module documentation). Never unwinds: nothing in
/// it can panic.
unsafe extern "C" fn ev_alloc(p: *mut c_void, size: c_long) -> *mut c_void {
    // libev never asks for a negative size; treat one as a failed allocation
    // (libev then reports it and aborts).
    let Ok(size) = usize::try_from(size) else {
        return ptr::null_mut();
    };
    let ours = arenas().find_map(|a| a.region_of(p as usize).map(|i| (a, i)));
    match ours {
        Some((arena, i)) if size == 0 => {
            arena.release(i);
            ptr::null_mut()
        }
        Some((arena, _)) if size <= arena.region => p,
        Some((arena, i)) => {
            // Outgrew its region (the sizing rules this out): move to the heap.
            // SAFETY: malloc of a positive size; the copy stays inside the old region and the new block, which do not overlap.
            unsafe {
                let moved = libc::malloc(size);
                if !moved.is_null() {
                    ptr::copy_nonoverlapping(p.cast::<u8>(), moved.cast::<u8>(), arena.region);
                    arena.release(i);
                }
                moved
            }
        }
        None if p.is_null() && size == 0 => ptr::null_mut(),
        None if p.is_null() => arenas()
            .filter(|a| a.region >= size)
            .find_map(Arena::take)
            // SAFETY: malloc of a positive size.
            .unwrap_or_else(|| unsafe { libc::malloc(size) }),
        None if size == 0 => {
            // SAFETY: `p` came from libc (not from an arena): libev frees only what its allocator returned.
            unsafe { libc::free(p) };
            ptr::null_mut()
        }
        // SAFETY: as above; realloc keeps the contents, as libev expects.
        None => unsafe { libc::realloc(p, size) },
    }
}

/// Makes libev allocate from address space reserved now: enough for `loops`
/// loops holding up to `connections` connections each, sized from the fd limit
/// in force (call it after raising the limit). Only pages libev touches are
/// ever committed.
///
/// This is a process-wide choice (libev has one allocator for all its loops,
/// `ev_set_allocator`), so it is explicit: [`Loop::new`](super::Loop::new)
/// never makes it. A server calls it once at start-up, before its first loop,
/// when it must not allocate once it serves: libev otherwise grows its arrays
/// with `realloc` on the connection path (a higher fd, more ready events than
/// ever before). Calling it again (another server in the same process)
/// reserves more.
///
/// Fails with `ENOMEM` if the address space cannot be reserved, and with an
/// error naming the cause if a loop was already made with libc's allocator.
pub fn reserve_arrays(loops: usize, connections: usize) -> io::Result<()> {
    // Held throughout: a loop made meanwhile would see the allocator installed
    // but not the fd limit of the arena.
    let mut c = choice();
    may_reserve(*c)?;
    let fds = fd_bound(loops.saturating_mul(connections)).min(FD_CEILING as usize);
    let region = region_size(fds).ok_or_else(no_memory)?;
    let count = loops
        .max(1)
        .checked_mul(ARRAYS_PER_LOOP + SPARE_PER_LOOP)
        .ok_or_else(no_memory)?;
    let len = region.checked_mul(count).ok_or_else(no_memory)?;
    let base = crate::os::reserve(len)?.as_ptr().cast::<c_void>();
    // A transparent huge page would commit 2 MB where libev touched 4 KB: the
    // arrays of an idle loop would cost megabytes. Best effort: without THP
    // support the call fails and nothing is lost.
    // SAFETY: the range is the mapping just made.
    unsafe { libc::madvise(base, len, libc::MADV_NOHUGEPAGE) };
    let arena: &'static mut Arena = Box::leak(Box::new(Arena {
        base: base as usize,
        region,
        taken: (0..count).map(|_| AtomicBool::new(false)).collect(),
        next: ptr::null(),
    }));
    let mut head = ARENAS.load(Ordering::Acquire);
    loop {
        arena.next = head;
        match ARENAS.compare_exchange_weak(head, arena, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => break,
            Err(now) => head = now,
        }
    }
    RESERVED_FDS.fetch_max(fds as RawFd, Ordering::Relaxed);
    install(&mut c);
    Ok(())
}

fn no_memory() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOMEM)
}

/// A bound on the fd numbers this process will use with `connections` more
/// connections open: the soft fd limit, or less when the highest fd open now
/// plus the connections plus [`FD_SLACK`] is less (the kernel hands out the
/// lowest free number, but fds open at start-up may leave gaps).
fn fd_bound(connections: usize) -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid out-pointer.
    let limit = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    } else {
        usize::MAX
    };
    let open = std::fs::read_dir("/proc/self/fd").map_or(limit, |d| {
        d.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<usize>().ok())
            .max()
            .map_or(0, |fd| fd + 1)
    });
    limit.min(open.saturating_add(connections).saturating_add(FD_SLACK))
}

/// Bytes per region for arrays indexed by fds below `fds` (see the module
/// documentation for the bound), rounded up to whole pages.
fn region_size(fds: usize) -> Option<usize> {
    let elems = fds.checked_add(EXTRA_ELEMS)?;
    let bytes = elems
        .checked_mul(2 * MAX_ELEM)?
        .checked_add(MAX_ELEM + MALLOC_ROUND)?;
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .unwrap_or(4096)
        .max(1);
    bytes.checked_next_multiple_of(page)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The size of the region `p` lies in; 0 if it is not one of ours.
    fn region_limit(p: *mut c_void) -> usize {
        arenas()
            .find(|a| a.region_of(p as usize).is_some())
            .map_or(0, |a| a.region)
    }

    /// `array_nextsize` from `vendor/libev/ev.c`, line for line.
    fn array_nextsize(elem: usize, cur: usize, cnt: usize) -> usize {
        let mut ncur = cur + 1;
        loop {
            ncur <<= 1;
            if cnt <= ncur {
                break;
            }
        }
        if elem * ncur > MALLOC_ROUND - 8 * 4 {
            ncur *= elem;
            ncur = (ncur + elem + (MALLOC_ROUND - 1) + 8 * 4) & !(MALLOC_ROUND - 1);
            ncur -= 8 * 4;
            ncur /= elem;
        }
        ncur
    }

    #[test]
    fn a_region_holds_whatever_libev_grows_an_array_to() {
        let fds = 700;
        let region = region_size(fds).unwrap();
        for elem in [4, 8, 12, 16] {
            for cnt in 1..=fds + EXTRA_ELEMS {
                for cur in 0..cnt {
                    let bytes = elem * array_nextsize(elem, cur, cnt);
                    assert!(
                        bytes <= region,
                        "{elem} x ({cur} -> {cnt}): {bytes} > {region}"
                    );
                }
            }
        }
    }

    #[test]
    fn fd_bound_is_below_the_fd_limit() {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: valid out-pointer.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert!(fd_bound(usize::MAX) as u64 <= lim.rlim_cur);
        assert!(fd_bound(0) >= FD_SLACK.min(lim.rlim_cur as usize));
    }

    #[test]
    fn blocks_grow_in_place_and_regions_are_reused() {
        // Room for loops other tests may create meanwhile.
        reserve_arrays(4, 10).unwrap();
        // SAFETY: the allocator's own contract: realloc semantics on blocks it handed out, each used within its size.
        unsafe {
            let a = ev_alloc(ptr::null_mut(), 64);
            assert!(!a.is_null());
            let region = region_limit(a);
            assert!(region >= region_size(FD_SLACK).unwrap());
            a.cast::<u8>().write_bytes(7, 64);
            let grown = ev_alloc(a, region as c_long);
            assert_eq!(grown, a, "growth within the region moves nothing");
            assert_eq!(*grown.cast::<u8>().add(63), 7);
            assert!(ev_alloc(grown, 0).is_null());
            let again = ev_alloc(ptr::null_mut(), 16);
            assert!(region_limit(again) > 0);
            // Outgrowing the region moves the block to the heap, contents kept.
            again.cast::<u8>().write_bytes(9, 16);
            let moved = ev_alloc(again, region as c_long + 1);
            assert_eq!(region_limit(moved), 0);
            assert_eq!(*moved.cast::<u8>().add(15), 9);
            assert!(ev_alloc(moved, 0).is_null());
            // Larger than any region: libc's from the start.
            let big = ev_alloc(ptr::null_mut(), (region * 2) as c_long);
            assert_eq!(region_limit(big), 0);
            assert!(ev_alloc(big, 0).is_null());
        }
    }
}
