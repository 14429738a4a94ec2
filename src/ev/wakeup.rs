//! `ev_async`: the one watcher other threads may signal, through an
//! [`AsyncSender`].

use std::cell::OnceCell;
use std::pin::Pin;
use std::ptr;
use std::sync::{Arc, RwLock};

use super::{data, trampoline, watcher, Handler, Loop};
use crate::sys;

watcher!(
    /// The raw `ev_async` watcher inside an [`Async`].
    pub(crate) RawAsync: sys::ev_async = sys::ev_async {
        active: 0,
        pending: 0,
        data: ptr::null_mut(),
        cb: None,
        sent: 0,
    },
    sys::ev_async_stop
);

trampoline!(async_trampoline(sys::ev_async => RawAsync, "async"), |h, l, token, _w, _revents| {
    h.on_async(l, token)
});

/// An `ev_async` watcher: lets other threads wake the loop through
/// [`AsyncSender`]s, which go quiet once the watcher stops.
///
/// Sends coalesce: the loop may see one callback for many sends, so what the
/// other threads post goes into a queue the callback drains until empty.
/// ```
/// use std::sync::mpsc;
/// use conn_daemon::ev::{Async, Handler, Loop};
///
/// struct Drain { rx: mpsc::Receiver<u32>, sum: u32 }
/// impl Handler for Drain {
///     fn on_async(&mut self, lp: &Loop<Self>, _token: usize) {
///         while let Ok(n) = self.rx.try_recv() {
///             self.sum += n;
///         }
///         if self.sum == 1 + 2 + 3 {
///             lp.break_all();
///         }
///     }
/// }
/// let lp = Loop::new()?;
/// let wake = Box::pin(Async::new());
/// wake.as_ref().start(&lp, 0);
/// let (tx, rx) = mpsc::channel();
/// let sender = wake.as_ref().sender(); // Send + Sync + Clone
/// let worker = std::thread::spawn(move || {
///     for n in 1..=3 {
///         tx.send(n).unwrap();
///         sender.send();
///     }
/// });
/// let mut drain = Drain { rx, sum: 0 };
/// lp.run(&mut drain);
/// worker.join().unwrap();
/// assert_eq!(drain.sum, 6);
/// wake.stop(); // from now on the senders do nothing
/// # Ok::<(), std::io::Error>(())
/// ```
#[repr(C)] // `raw` first: the trampoline's watcher pointer is also a pointer to it.
#[derive(Debug)]
pub struct Async {
    raw: RawAsync,
    /// Shared with the senders, made by the first `sender` call.
    gate: OnceCell<Arc<Gate>>,
}

/// What the senders may signal: the loop and the watcher, only while it is active.
#[derive(Debug)]
struct Gate(RwLock<Option<Target>>);

#[derive(Clone, Copy, Debug)]
struct Target {
    lp: *mut sys::ev_loop,
    w: *mut sys::ev_async,
}

// SAFETY: a Target is only handed to ev_async_send, which libev documents as safe
// from any thread, and only while the gate holds it, i.e. while the watcher is
// active, which keeps both the watcher and its loop alive.
unsafe impl Send for Target {}
// SAFETY: as above; concurrent ev_async_send calls are allowed.
unsafe impl Sync for Target {}

impl Default for Async {
    fn default() -> Self {
        Self::new()
    }
}

impl Async {
    /// An inactive watcher.
    pub const fn new() -> Self {
        Async {
            raw: RawAsync::new(),
            gate: OnceCell::new(),
        }
    }

    /// Whether the watcher is started.
    pub fn is_active(&self) -> bool {
        self.raw.is_active()
    }

    /// (Re)starts the watcher on `lp`, reporting `token`.
    ///
    /// # Panics
    /// If libev holds it on another loop (stop it first).
    #[track_caller]
    pub fn start<H: Handler>(self: Pin<&Self>, lp: &Loop<H>, token: usize) {
        self.raw.bound.check(lp.core());
        self.stop();
        let raw = &self.raw;
        // SAFETY: inactive; ev_async_init only writes fields; pinned, so libev's pointer stays valid until stop or drop; the callback matches the loop's H.
        unsafe {
            sys::conn_ev_async_init(raw.raw(), async_trampoline::<H>);
            (*raw.raw()).data = data(token);
            sys::ev_async_start(lp.raw(), raw.raw());
        }
        raw.bound.bind(lp.core());
        self.open_gate();
    }

    /// Stops the watcher; its senders do nothing from now on (a send in progress
    /// finishes first).
    pub fn stop(&self) {
        self.set_gate(None);
        self.raw.stop();
    }

    /// A `Send + Sync` handle that signals this watcher while it is active.
    pub fn sender(self: Pin<&Self>) -> AsyncSender {
        let gate = self.gate.get_or_init(|| Arc::new(Gate(RwLock::new(None))));
        self.open_gate();
        AsyncSender {
            gate: Arc::clone(gate),
        }
    }

    fn open_gate(&self) {
        let lp = self.raw.bound.raw_loop();
        if self.is_active() && !lp.is_null() {
            self.set_gate(Some(Target {
                lp,
                w: self.raw.raw(),
            }));
        }
    }

    fn set_gate(&self, target: Option<Target>) {
        if let Some(gate) = self.gate.get() {
            *gate.0.write().unwrap_or_else(|e| e.into_inner()) = target;
        }
    }
}

impl Drop for Async {
    fn drop(&mut self) {
        // Close the gate first, so no sender signals a stopping watcher; `raw`'s
        // own drop then stops it.
        self.set_gate(None);
    }
}

/// The `Send + Sync` half of an [`Async`]: `ev_async_send`, and nothing else.
#[derive(Clone, Debug)]
pub struct AsyncSender {
    gate: Arc<Gate>,
}

impl AsyncSender {
    /// Wakes the loop and marks the watcher pending; several sends before the loop
    /// runs coalesce into one callback. False (and nothing done) once the watcher
    /// has stopped.
    pub fn send(&self) -> bool {
        let target = self.gate.0.read().unwrap_or_else(|e| e.into_inner());
        match *target {
            // SAFETY: the gate holds a target only while the watcher is active; stopping it waits for this read lock, so both stay valid here.
            Some(t) => unsafe {
                sys::ev_async_send(t.lp, t.w);
                true
            },
            None => false,
        }
    }
}
