//! `ev_stat`: changes of a path's attributes, by polling.

use std::cell::UnsafeCell;
use std::ffi::CString;
use std::io;
use std::mem::MaybeUninit;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::pin::Pin;
use std::ptr;

use super::{data, secs, trampoline, watcher, Handler, Loop, WHO};
use crate::sys;

/// A zeroed `struct stat`, as libev's `ev_stat_init` leaves it.
const fn no_stat() -> libc::stat {
    // SAFETY: `struct stat` is plain integers, for which all-zero bytes are valid.
    unsafe { MaybeUninit::zeroed().assume_init() }
}

watcher!(
    /// The raw `ev_stat` watcher inside a [`Stat`].
    pub(crate) RawStat: sys::ev_stat = sys::ev_stat {
        active: 0,
        pending: 0,
        data: ptr::null_mut(),
        cb: None,
        next: ptr::null_mut(),
        timer: sys::ev_timer {
            active: 0,
            pending: 0,
            data: ptr::null_mut(),
            cb: None,
            at: 0.0,
            repeat: 0.0,
        },
        interval: 0.0,
        path: ptr::null(),
        prev: no_stat(),
        attr: no_stat(),
        wd: 0,
    },
    sys::ev_stat_stop
);

trampoline!(stat_trampoline(sys::ev_stat => RawStat, "stat"), |h, l, token, _w, _revents| {
    h.on_stat(l, token)
});

/// An `ev_stat` watcher: the attributes (`lstat`) of a path changed.
///
/// This build polls (no inotify): every `interval` (libev's default, about 5 s,
/// for zero; at least 0.1 s) libev `lstat`s the path and calls back when
/// anything `stat` reports differs, including the path appearing or
/// disappearing. [`Stat::attr`] and [`Stat::prev`] hold the new and old
/// attributes (`None`: the path did not exist).
///
/// ```
/// use std::time::Duration;
/// use conn_daemon::ev::{Handler, Loop, Stat};
///
/// struct Changed(bool);
/// impl Handler for Changed {
///     fn on_stat(&mut self, lp: &Loop<Self>, _token: usize) {
///         self.0 = true;
///         lp.break_all();
///     }
/// }
/// let path = std::env::temp_dir().join(format!("ev-stat-doc-{}", std::process::id()));
/// let lp = Loop::new()?;
/// let watch = Box::pin(Stat::new());
/// watch.as_ref().start(&lp, &path, Duration::from_millis(100), 0)?;
/// assert!(watch.attr().is_none()); // not there yet
/// std::fs::write(&path, b"x")?;
/// let mut changed = Changed(false);
/// lp.run(&mut changed);
/// assert!(changed.0 && watch.attr().unwrap().st_size == 1);
/// watch.stop();
/// std::fs::remove_file(&path)?;
/// # Ok::<(), std::io::Error>(())
/// ```
#[repr(C)] // `raw` first: the trampoline's watcher pointer is also a pointer to it.
#[derive(Debug)]
pub struct Stat {
    raw: RawStat,
    /// The path libev's `path` points into: replaced only while stopped.
    path: UnsafeCell<Option<CString>>,
}

impl Default for Stat {
    fn default() -> Self {
        Self::new()
    }
}

impl Stat {
    /// An inactive watcher.
    pub const fn new() -> Self {
        Stat {
            raw: RawStat::new(),
            path: UnsafeCell::new(None),
        }
    }

    /// Whether the watcher is started.
    pub fn is_active(&self) -> bool {
        self.raw.is_active()
    }

    /// Whether a change is queued and its callback not yet run.
    pub fn is_pending(&self) -> bool {
        self.raw.is_pending()
    }

    /// Stops the watcher, and drops a change already queued.
    pub fn stop(&self) {
        self.raw.stop();
    }

    /// (Re)starts watching `path` on `lp`, polled every `interval`
    /// (`ev_stat_set` and `ev_stat_start`), reporting `token`. The current
    /// attributes are read at once ([`Stat::attr`]).
    ///
    /// Fails with [`io::ErrorKind::InvalidInput`] if the path contains a NUL byte.
    ///
    /// # Panics
    /// If libev holds the watcher on another loop (stop it first).
    #[track_caller]
    pub fn start<H: Handler>(
        self: Pin<&Self>,
        lp: &Loop<H>,
        path: &Path,
        interval: std::time::Duration,
        token: usize,
    ) -> io::Result<()> {
        self.raw.bound.check(lp.core());
        let path = CString::new(path.as_os_str().as_bytes()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{WHO}: a stat watcher's path contains a NUL byte"),
            )
        })?;
        self.stop();
        let raw = self.raw.raw();
        // SAFETY: stopped, so libev holds no pointer to the old path and lets us init the watcher; the new path lives in `self` until the next start or drop (which stops first: `raw` is dropped before `path`); pinned, so the addresses libev keeps stay valid; the callback matches the loop's H.
        unsafe {
            let path = (*self.path.get()).insert(path);
            sys::conn_ev_stat_init(raw, stat_trampoline::<H>, path.as_ptr(), secs(interval));
            (*raw).data = data(token);
            sys::ev_stat_start(lp.raw(), raw);
        }
        self.raw.bound.bind(lp.core());
        Ok(())
    }

    /// The attributes found by the last poll (`None`: the path did not exist);
    /// read at start and before each callback.
    pub fn attr(&self) -> Option<libc::stat> {
        // SAFETY: reading our own watcher's field on its thread.
        Self::existing(unsafe { (*self.raw.raw()).attr })
    }

    /// The attributes before the last change reported.
    pub fn prev(&self) -> Option<libc::stat> {
        // SAFETY: as `attr`.
        Self::existing(unsafe { (*self.raw.raw()).prev })
    }

    /// `ev_stat_stat`: reads the attributes now, into [`Stat::attr`] (without a
    /// callback); a no-op on a watcher never started.
    pub fn stat_now(&self) {
        let lp = self.raw.bound.raw_loop();
        // SAFETY: reading our own field; the path it points at lives in `self` while set.
        if unsafe { (*self.raw.raw()).path.is_null() } || lp.is_null() {
            return;
        }
        // SAFETY: bound to that live loop; the path is valid (above); lstat writes only `attr`.
        unsafe { sys::ev_stat_stat(lp, self.raw.raw()) }
    }

    /// libev marks a missing path with `st_nlink` 0.
    fn existing(st: libc::stat) -> Option<libc::stat> {
        (st.st_nlink != 0).then_some(st)
    }
}
