//! `TaskHolder`: a fixed 96-byte home for a delegated task, as in the C++ original,
//! and the move-only tokens that hand it to a worker and back.
//!
//! A holder lives in its connection's pool slot (so a pool of untouched slots costs
//! no memory); the worker queue carries only a [`TaskRef`], one pointer. Ownership
//! of the holder moves with the tokens: the accept thread fills it and gets a
//! `TaskRef`; the worker runs it and gets a [`Done`]; the accept thread hands the
//! `Done` back to the pool, which makes the holder free again.

use std::cell::{Cell, UnsafeCell};
use std::mem::{align_of, size_of, MaybeUninit};
use std::ptr::{self, NonNull};

/// Bytes available for a task inline; a larger task type does not compile.
pub const TASK_SIZE: usize = 96;
/// Alignment the inline storage guarantees.
pub const TASK_ALIGN: usize = 16;

/// Work delegated to a worker thread. It runs once, on the worker, and is then
/// dropped there.
pub trait Task: Send + 'static {
    /// Does the (slow) work.
    fn run(self);
}

/// Where a finished task reports: the accept loop, the slot and the connection
/// generation that delegated it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Route {
    /// Index of the owning accept loop.
    pub owner: u32,
    /// Pool slot of the connection.
    pub slot: u32,
    /// The connection's generation when it delegated.
    pub gen: u32,
}

#[repr(C, align(16))]
struct Storage([MaybeUninit<u8>; TASK_SIZE]);

/// Inline storage for one task of any type up to [`TASK_SIZE`] bytes.
///
/// ```compile_fail
/// use conn_daemon::task::{Task, TaskHolder, Route};
/// struct Big([u8; 97]);
/// impl Task for Big { fn run(self) {} }
/// let holder = TaskHolder::new();
/// // A 97-byte task does not fit: this is a compile-time error.
/// let _ = holder.fill(Big([0; 97]), Route { owner: 0, slot: 0, gen: 0 });
/// ```
///
/// ```
/// use conn_daemon::task::{Task, TaskHolder, Route};
/// struct Fits([u8; 96]);
/// impl Task for Fits { fn run(self) {} }
/// let holder = TaskHolder::new();
/// let done = holder.fill(Fits([0; 96]), Route { owner: 0, slot: 1, gen: 2 }).unwrap().run();
/// assert_eq!(done.route().slot, 1);
/// assert_eq!(holder.finish(done).map(|r| r.gen), Some(2));
/// ```
pub struct TaskHolder {
    storage: UnsafeCell<Storage>,
    /// Runs (and so consumes) the task stored in `storage`.
    call: Cell<Option<unsafe fn(*mut u8)>>,
    route: Cell<Route>,
    /// Only the accept thread reads or writes this: true from `fill` to `finish`.
    busy: Cell<bool>,
}

impl Default for TaskHolder {
    fn default() -> Self {
        Self::new()
    }
}

impl TaskHolder {
    /// An empty holder.
    pub const fn new() -> Self {
        TaskHolder {
            storage: UnsafeCell::new(Storage([MaybeUninit::uninit(); TASK_SIZE])),
            call: Cell::new(None),
            route: Cell::new(Route {
                owner: 0,
                slot: 0,
                gen: 0,
            }),
            busy: Cell::new(false),
        }
    }

    /// Whether a task is stored and not yet finished.
    pub fn is_busy(&self) -> bool {
        self.busy.get()
    }

    /// Moves `task` into the holder and returns the token a worker runs it with;
    /// `None` (and `task` dropped) if the holder is still busy.
    pub fn fill<T: Task>(&self, task: T, route: Route) -> Option<TaskRef> {
        const {
            assert!(
                size_of::<T>() <= TASK_SIZE,
                "task type larger than TaskHolder's 96 bytes"
            );
            assert!(
                align_of::<T>() <= TASK_ALIGN,
                "task type aligned beyond TaskHolder's 16 bytes"
            );
        }
        if self.busy.get() {
            return None;
        }
        /// # Safety
        /// `p` must point at a `T` written by `fill` and not yet consumed.
        unsafe fn call<T: Task>(p: *mut u8) {
            // SAFETY: per the contract; reading it out consumes it exactly once.
            unsafe { ptr::read(p.cast::<T>()) }.run()
        }
        // SAFETY: not busy, so no worker holds a TaskRef to this holder; the size
        // and alignment checks above make the write fit the storage.
        unsafe { ptr::write(self.storage.get().cast::<T>(), task) };
        self.call.set(Some(call::<T>));
        self.route.set(route);
        self.busy.set(true);
        Some(TaskRef(NonNull::from(self)))
    }

    /// Takes back a finished task's token and returns its route, if it was this
    /// holder's current task; that frees the holder for the next one.
    pub fn finish(&self, done: Done) -> Option<Route> {
        if self.busy.get() && done.holder == NonNull::from(self) {
            self.busy.set(false);
            Some(self.route.get())
        } else {
            None
        }
    }

    /// Whether `done` came from this holder (without taking it back).
    pub fn issued(&self, done: &Done) -> bool {
        done.holder == NonNull::from(self)
    }
}

/// A filled holder on its way to a worker: run it exactly once.
#[derive(Debug)]
pub struct TaskRef(NonNull<TaskHolder>);

// SAFETY: a TaskRef is the only access to its holder's task until it is run (the
// holder stays busy, so the accept thread does not touch the storage), and the
// task itself is `Send`.
unsafe impl Send for TaskRef {}

impl TaskRef {
    /// Runs the task on this thread, drops it, and returns the completion token.
    pub fn run(self) -> Done {
        let holder = self.0.as_ptr();
        // The queue that carried the token orders `fill`'s writes before these reads,
        // and the accept thread writes nothing of a busy holder.
        // SAFETY: a busy holder is never freed; `fill` stored a task and its `call`;
        // this token is consumed here, so the task runs exactly once.
        unsafe {
            let call = (*holder).call.get().expect("a filled holder has a task");
            call((*holder).storage.get().cast::<u8>());
            Done { holder: self.0 }
        }
    }
}

/// A finished task: send it to the owning loop, which gives it back to the pool.
/// One pointer, so that the loops' completion queues stay small.
#[derive(Debug)]
pub struct Done {
    holder: NonNull<TaskHolder>,
}

// SAFETY: a token for a holder that stays busy (so stays allocated and its route
// unchanged) until the token is given back with `TaskHolder::finish`.
unsafe impl Send for Done {}

impl Done {
    /// Where the task came from.
    pub fn route(&self) -> Route {
        // SAFETY: while this token exists the holder is busy: alive, and its route
        // is not written (only `fill` writes it, and only when not busy).
        unsafe { (*self.holder.as_ptr()).route.get() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    const ROUTE: Route = Route {
        owner: 1,
        slot: 2,
        gen: 3,
    };

    /// Counts its runs and its drops.
    struct Probe {
        runs: Arc<AtomicUsize>,
        drops: Arc<AtomicUsize>,
    }

    impl Task for Probe {
        fn run(self) {
            self.runs.fetch_add(1, Ordering::SeqCst);
        }
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn probe() -> (Probe, Arc<AtomicUsize>, Arc<AtomicUsize>) {
        let (runs, drops) = (Arc::default(), Arc::default());
        let p = Probe {
            runs: Arc::clone(&runs),
            drops: Arc::clone(&drops),
        };
        (p, runs, drops)
    }

    #[test]
    fn a_task_runs_once_on_the_worker_and_is_dropped_there() {
        let holder = TaskHolder::new();
        let (task, runs, drops) = probe();
        let token = holder.fill(task, ROUTE).unwrap();
        assert!(holder.is_busy());
        let done = std::thread::spawn(move || token.run()).join().unwrap();
        assert_eq!(
            (runs.load(Ordering::SeqCst), drops.load(Ordering::SeqCst)),
            (1, 1)
        );
        assert_eq!(done.route(), ROUTE);
        assert_eq!(holder.finish(done), Some(ROUTE));
        assert!(!holder.is_busy());
    }

    #[test]
    fn a_busy_holder_refuses_a_second_task_and_drops_it() {
        let holder = TaskHolder::new();
        let (first, _, _) = probe();
        let token = holder.fill(first, ROUTE).unwrap();
        let (second, runs, drops) = probe();
        assert!(holder.fill(second, ROUTE).is_none());
        assert_eq!(
            (runs.load(Ordering::SeqCst), drops.load(Ordering::SeqCst)),
            (0, 1)
        );
        assert!(holder.finish(token.run()).is_some());
    }

    #[test]
    fn a_token_from_another_holder_is_not_taken() {
        let (a, b) = (TaskHolder::new(), TaskHolder::new());
        let (ta, _, _) = probe();
        let (tb, _, _) = probe();
        let done_a = a.fill(ta, ROUTE).unwrap().run();
        let done_b = b.fill(tb, ROUTE).unwrap().run();
        assert!(!b.issued(&done_a));
        assert_eq!(b.finish(done_a), None);
        assert!(b.is_busy(), "a foreign token must not free the holder");
        assert!(b.finish(done_b).is_some());
    }

    #[test]
    fn the_holder_is_the_documented_size() {
        // 96 bytes of task, its entry point, route and flag: no hidden growth.
        assert!(std::mem::size_of::<TaskHolder>() <= TASK_SIZE + 32);
        assert_eq!(std::mem::align_of::<TaskHolder>(), TASK_ALIGN);
    }
}
