//! `TaskHolder`: a fixed 96-byte home for a delegated task, as in the C++ original,
//! and the move-only tokens that hand it to a worker and back.
//!
//! A holder lives in its connection's pool slot (so a pool of untouched slots costs
//! no memory); the worker queue carries only a [`TaskRef`], one pointer. Ownership
//! of the holder moves with the tokens: the accept thread fills it and gets a
//! `TaskRef`; a worker claims it ([`TaskRef::claim`]), runs it and gets a
//! [`Done`]; the accept thread hands the `Done` back to the pool, which makes the
//! holder free again.
//!
//! A queued task can be withdrawn ([`TaskHolder::cancel`]: its client left): the
//! accept thread drops it in place and the holder is free at once, while its
//! `TaskRef` still waits in the queue; the worker that pops it finds nothing to
//! run and lets go of it. One atomic state decides who wins, the worker claiming
//! or the accept thread cancelling, and at most one `TaskRef` per holder is ever
//! in the queue: filling a holder whose cancelled `TaskRef` is still queued
//! reuses that `TaskRef` ([`Filled::Requeued`]), so the queue, sized one task per
//! connection, cannot overflow.
#![allow(unsafe_code)]

use std::any::TypeId;
use std::cell::{Cell, UnsafeCell};
use std::mem::{align_of, size_of, MaybeUninit};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU8, Ordering};

/// No task; no `TaskRef` to this holder exists.
const IDLE: u8 = 0;
/// A task is stored and its `TaskRef` queued (or being popped).
const QUEUED: u8 = 1;
/// A worker claimed the task; a `Done` will come back.
const RUNNING: u8 = 2;
/// The task was withdrawn and dropped; its `TaskRef` is still queued.
const CANCELLED: u8 = 3;

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
/// use conn_daemon::task::{Filled, Task, TaskHolder, Route};
/// struct Fits([u8; 96]);
/// impl Task for Fits { fn run(self) {} }
/// let holder = TaskHolder::new();
/// let Some(Filled::New(token)) = holder.fill(Fits([0; 96]), Route { owner: 0, slot: 1, gen: 2 }) else {
///     panic!("an idle holder takes a task");
/// };
/// let done = token.run().expect("not cancelled");
/// assert_eq!(done.route().slot, 1);
/// assert_eq!(holder.finish(done).map(|r| r.gen), Some(2));
/// ```
#[derive(Debug)]
pub struct TaskHolder {
    storage: UnsafeCell<Storage>,
    /// How to run and drop the value stored in `storage`, and its type.
    vtable: Cell<Option<&'static Vtable>>,
    route: Cell<Route>,
    /// IDLE, QUEUED, RUNNING or CANCELLED. The accept thread writes `storage`,
    /// `vtable`, `kept` and `route` only in IDLE or CANCELLED, states in which a
    /// worker reads none of them; a worker reads them only after its
    /// QUEUED -> RUNNING exchange, which acquires what the fill released.
    state: AtomicU8,
    /// The stored value is a job that stays in the holder when it runs and
    /// comes back to its loop with the `Done` ([`TaskHolder::fill_job`]).
    kept: Cell<bool>,
}

/// The entry points of one stored type: one static table per type, so that a
/// holder carries one pointer for them.
struct Vtable {
    /// Runs (and so consumes) a stored [`Task`]; `None` for a kept job.
    call: Option<unsafe fn(*mut u8)>,
    /// Drops the stored value without running it (a cancel, or a kept job
    /// nobody took back).
    discard: unsafe fn(*mut u8),
    /// The stored type, so that a kept job is only ever read back as itself.
    type_id: fn() -> TypeId,
}

impl std::fmt::Debug for Vtable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vtable").finish_non_exhaustive()
    }
}

/// # Safety
/// `p` must point at a `T` written by a fill and not yet consumed.
unsafe fn call<T: Task>(p: *mut u8) {
    // SAFETY: per the contract; reading it out consumes it exactly once.
    unsafe { ptr::read(p.cast::<T>()) }.run()
}

/// # Safety
/// As `call`.
unsafe fn discard<T>(p: *mut u8) {
    // SAFETY: per the contract; dropped in place exactly once.
    unsafe { ptr::drop_in_place(p.cast::<T>()) }
}

/// The static entry points of a stored `T`.
struct Entry<T>(std::marker::PhantomData<T>);

impl<T: 'static> Entry<T> {
    const KEPT: Vtable = Vtable {
        call: None,
        discard: discard::<T>,
        type_id: TypeId::of::<T>,
    };
}

impl<T: Task> Entry<T> {
    const TASK: Vtable = Vtable {
        call: Some(call::<T>),
        discard: discard::<T>,
        type_id: TypeId::of::<T>,
    };
}

/// Compile-time: a `T` fits the inline storage.
const fn check_fits<T>() {
    assert!(
        size_of::<T>() <= TASK_SIZE,
        "task type larger than TaskHolder's 96 bytes"
    );
    assert!(
        align_of::<T>() <= TASK_ALIGN,
        "task type aligned beyond TaskHolder's 16 bytes"
    );
}

/// What [`TaskHolder::fill`] did with the task.
#[derive(Debug)]
pub enum Filled {
    /// Queue this token for a worker.
    New(TaskRef),
    /// The holder's earlier (cancelled) token is still queued and now carries
    /// this task: nothing to queue.
    Requeued,
}

/// What [`TaskHolder::cancel`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cancel {
    /// No task was out.
    Idle,
    /// The task was still queued: withdrawn and dropped, it will not run; the
    /// holder is free.
    Withdrawn,
    /// A worker is running it: its `Done` will come back (the seed's rule: a
    /// running task finishes).
    Running,
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
            vtable: Cell::new(None),
            route: Cell::new(Route {
                owner: 0,
                slot: 0,
                gen: 0,
            }),
            state: AtomicU8::new(IDLE),
            kept: Cell::new(false),
        }
    }

    /// Whether a task is out: queued or running, not yet finished or cancelled.
    #[inline]
    pub fn is_busy(&self) -> bool {
        matches!(self.state.load(Ordering::Acquire), QUEUED | RUNNING)
    }

    /// Whether a worker may still touch this holder: a task is out, or a
    /// cancelled task's token is still queued. Its memory must stay mapped.
    pub fn is_referenced(&self) -> bool {
        self.state.load(Ordering::Acquire) != IDLE
    }

    /// Moves `task` into the holder for a worker (see [`Filled`]); `None` (and
    /// `task` dropped) if the holder is still busy.
    pub fn fill<T: Task>(&self, task: T, route: Route) -> Option<Filled> {
        const { check_fits::<T>() }
        self.store(task, &Entry::<T>::TASK, false, route)
    }

    /// As [`fill`](Self::fill), for a job that a worker works on in place
    /// ([`Claimed::run_with`]) and that comes back to its loop with the
    /// [`Done`] ([`TaskHolder::finish_job`]).
    pub fn fill_job<T: Send + 'static>(&self, job: T, route: Route) -> Option<Filled> {
        const { check_fits::<T>() }
        self.store(job, &Entry::<T>::KEPT, true, route)
    }

    fn store<T>(
        &self,
        value: T,
        vtable: &'static Vtable,
        kept: bool,
        route: Route,
    ) -> Option<Filled> {
        let was = self.state.load(Ordering::Acquire);
        if was != IDLE && was != CANCELLED {
            return None;
        }
        // SAFETY: IDLE or CANCELLED: no value is stored and no worker reads the storage (see `state`); the callers' size and alignment checks make the write fit it.
        unsafe { ptr::write(self.storage.get().cast::<T>(), value) };
        self.vtable.set(Some(vtable));
        self.kept.set(kept);
        self.route.set(route);
        if was == CANCELLED
            && self
                .state
                .compare_exchange(CANCELLED, QUEUED, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            return Some(Filled::Requeued);
        }
        // IDLE, or the worker let go of the cancelled token meanwhile: a new one.
        self.state.store(QUEUED, Ordering::Release);
        Some(Filled::New(TaskRef(NonNull::from(self))))
    }

    /// Drops the stored value in place.
    fn discard(&self) {
        let vtable = self.vtable.get().expect("a filled holder has a value");
        // SAFETY: only called with a value stored and owned by this thread (won from QUEUED, or a kept job back with its Done); it is dropped exactly once, and `kept` cleared.
        unsafe { (vtable.discard)(self.storage.get().cast::<u8>()) };
        self.kept.set(false);
    }

    /// Withdraws the task if no worker has claimed it yet (see [`Cancel`]).
    #[inline]
    pub fn cancel(&self) -> Cancel {
        // Only this thread leaves IDLE: a plain load keeps the common case (no
        // task ever delegated) free of a locked instruction.
        if self.state.load(Ordering::Relaxed) == IDLE {
            return Cancel::Idle;
        }
        match self
            .state
            .compare_exchange(QUEUED, CANCELLED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                // We won the value from QUEUED: no worker will run it or read it.
                self.discard();
                Cancel::Withdrawn
            }
            Err(RUNNING) => Cancel::Running,
            Err(_) => Cancel::Idle,
        }
    }

    /// Takes back a finished task's token and returns its route, if it was this
    /// holder's current task; that frees the holder for the next one (a kept
    /// job is dropped: see [`finish_job`](Self::finish_job) to take it back).
    pub fn finish(&self, done: Done) -> Option<Route> {
        if done.holder == NonNull::from(self) && self.state.load(Ordering::Acquire) == RUNNING {
            if self.kept.get() {
                self.discard();
            }
            self.state.store(IDLE, Ordering::Release);
            Some(self.route.get())
        } else {
            None
        }
    }

    /// As [`finish`](Self::finish), and takes back the job that ran, if it is a
    /// `T` stored by [`fill_job`](Self::fill_job).
    pub fn finish_job<T: 'static>(&self, done: Done) -> Option<(Route, Option<T>)> {
        if done.holder != NonNull::from(self) || self.state.load(Ordering::Acquire) != RUNNING {
            return None;
        }
        let is_t = self
            .vtable
            .get()
            .is_some_and(|v| (v.type_id)() == TypeId::of::<T>());
        let job = if self.kept.get() && is_t {
            self.kept.set(false);
            // SAFETY: RUNNING and its Done given back: the worker is done with the storage (the Done's trip acquired its writes); a kept `T` (checked above) is stored there, and clearing `kept` makes this read its only consumer.
            Some(unsafe { ptr::read(self.storage.get().cast::<T>()) })
        } else {
            if self.kept.get() {
                self.discard();
            }
            None
        };
        self.state.store(IDLE, Ordering::Release);
        Some((self.route.get(), job))
    }

    /// Whether `done` came from this holder (without taking it back).
    pub fn issued(&self, done: &Done) -> bool {
        done.holder == NonNull::from(self)
    }
}

/// A filled holder on its way to a worker: claim it, then run it, once.
#[derive(Debug)]
pub struct TaskRef(NonNull<TaskHolder>);

// SAFETY: a TaskRef only touches its holder's state until it wins the task
// (QUEUED -> RUNNING), after which the accept thread does not touch the
// storage; the memory stays mapped while any TaskRef exists (`is_referenced`);
// the task itself is `Send`.
unsafe impl Send for TaskRef {}

impl TaskRef {
    /// Takes the task for this thread; `None` if it was cancelled (the token is
    /// then spent and the holder free for the accept thread).
    pub fn claim(self) -> Option<Claimed> {
        // SAFETY: the holder stays mapped while this token exists (see Send).
        let state = unsafe { &(*self.0.as_ptr()).state };
        let mut seen = state.load(Ordering::Acquire);
        loop {
            let (to, claimed) = match seen {
                QUEUED => (RUNNING, true),
                CANCELLED => (IDLE, false),
                other => unreachable!("a queued token to a holder in state {other}"),
            };
            // Fails only when the accept thread requeued a cancelled holder
            // meanwhile (CANCELLED -> QUEUED): try again with what it is now.
            match state.compare_exchange(seen, to, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) if claimed => return Some(Claimed(self.0)),
                Ok(_) => return None,
                Err(now) => seen = now,
            }
        }
    }

    /// Claims and runs the task; `None` if it was cancelled.
    pub fn run(self) -> Option<Done> {
        self.claim().map(Claimed::run)
    }
}

/// A task a worker has claimed: it must run it and send the [`Done`] back.
#[derive(Debug)]
pub struct Claimed(NonNull<TaskHolder>);

// SAFETY: as TaskRef; the task is this token's alone now.
unsafe impl Send for Claimed {}

impl Claimed {
    /// Runs the task on this thread, drops it, and returns the completion token
    /// (a kept job is not run: see [`Claimed::run_with`]; it only comes back).
    pub fn run(self) -> Done {
        let holder = self.0.as_ptr();
        // SAFETY: a RUNNING holder is never freed nor written by the accept thread; the claim acquired the fill's writes of the value and its vtable; this token is consumed here, so a task runs exactly once.
        unsafe {
            let vtable = (*holder).vtable.get().expect("a filled holder has a value");
            if let Some(call) = vtable.call {
                call((*holder).storage.get().cast::<u8>());
            }
        }
        Done { holder: self.0 }
    }

    /// Works on a kept job in place (see [`TaskHolder::fill_job`]) with `f`,
    /// then returns the completion token, the job still in the holder.
    /// `f` is not called if the holder keeps no `T`.
    pub fn run_with<T: 'static>(self, f: impl FnOnce(&mut T)) -> Done {
        let holder = self.0.as_ptr();
        // SAFETY: as `run`: the holder is RUNNING and this token is its only user; the fill's writes were acquired by the claim.
        let (vtable, kept) = unsafe { ((*holder).vtable.get(), (*holder).kept.get()) };
        if kept && vtable.is_some_and(|v| (v.type_id)() == TypeId::of::<T>()) {
            // SAFETY: a kept `T` (checked above) is stored, and no other thread touches the storage while RUNNING; the borrow ends before the Done is made.
            f(unsafe { &mut *(*holder).storage.get().cast::<T>() });
        }
        Done { holder: self.0 }
    }
}

/// A finished task: send it to the owning loop, which gives it back to the pool.
/// One pointer, so that the loops' completion queues stay small.
#[derive(Debug)]
pub struct Done {
    holder: NonNull<TaskHolder>,
}

// SAFETY: a token for a holder that stays RUNNING (so stays allocated and its
// route unchanged) until the token is given back with `TaskHolder::finish`.
unsafe impl Send for Done {}

impl Done {
    /// Where the task came from.
    pub fn route(&self) -> Route {
        // SAFETY: while this token exists the holder is RUNNING: alive, and its route is not written (only `fill` writes it, and only when not busy).
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

    /// The token of a fill that must need queueing.
    fn new_token(filled: Option<Filled>) -> TaskRef {
        match filled {
            Some(Filled::New(token)) => token,
            other => panic!("expected a new token, got {other:?}"),
        }
    }

    #[test]
    fn a_task_runs_once_on_the_worker_and_is_dropped_there() {
        let holder = TaskHolder::new();
        let (task, runs, drops) = probe();
        let token = new_token(holder.fill(task, ROUTE));
        assert!(holder.is_busy());
        let done = std::thread::spawn(move || token.run().unwrap())
            .join()
            .unwrap();
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
        let token = new_token(holder.fill(first, ROUTE));
        let (second, runs, drops) = probe();
        assert!(holder.fill(second, ROUTE).is_none());
        assert_eq!(
            (runs.load(Ordering::SeqCst), drops.load(Ordering::SeqCst)),
            (0, 1)
        );
        assert!(holder.finish(token.run().unwrap()).is_some());
    }

    #[test]
    fn a_token_from_another_holder_is_not_taken() {
        let (a, b) = (TaskHolder::new(), TaskHolder::new());
        let (ta, _, _) = probe();
        let (tb, _, _) = probe();
        let done_a = new_token(a.fill(ta, ROUTE)).run().unwrap();
        let done_b = new_token(b.fill(tb, ROUTE)).run().unwrap();
        assert!(!b.issued(&done_a));
        assert_eq!(b.finish(done_a), None);
        assert!(b.is_busy(), "a foreign token must not free the holder");
        assert!(b.finish(done_b).is_some());
    }

    #[test]
    fn a_cancelled_task_is_dropped_unrun_and_its_token_spent_by_the_worker() {
        let holder = TaskHolder::new();
        let (task, runs, drops) = probe();
        let token = new_token(holder.fill(task, ROUTE));
        assert_eq!(holder.cancel(), Cancel::Withdrawn);
        assert_eq!(drops.load(Ordering::SeqCst), 1, "dropped by the cancel");
        assert!(!holder.is_busy() && holder.is_referenced());
        assert!(token.claim().is_none(), "a cancelled task is not claimed");
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        assert!(!holder.is_referenced());
        assert_eq!(holder.cancel(), Cancel::Idle);
    }

    #[test]
    fn a_claimed_task_cannot_be_cancelled() {
        let holder = TaskHolder::new();
        let (task, runs, _) = probe();
        let claimed = new_token(holder.fill(task, ROUTE)).claim().unwrap();
        assert_eq!(holder.cancel(), Cancel::Running);
        let done = claimed.run();
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(holder.finish(done), Some(ROUTE));
    }

    #[test]
    fn refilling_a_cancelled_holder_reuses_its_queued_token() {
        let holder = TaskHolder::new();
        let (first, first_runs, _) = probe();
        let token = new_token(holder.fill(first, ROUTE));
        assert_eq!(holder.cancel(), Cancel::Withdrawn);
        let (second, second_runs, _) = probe();
        let route = Route { gen: 4, ..ROUTE };
        assert!(matches!(holder.fill(second, route), Some(Filled::Requeued)));
        // The one queued token now runs the second task.
        let done = token.run().expect("requeued, not cancelled");
        assert_eq!(first_runs.load(Ordering::SeqCst), 0);
        assert_eq!(second_runs.load(Ordering::SeqCst), 1);
        assert_eq!(holder.finish(done), Some(route));
        // Once the worker spent a cancelled token, the next fill makes a new one.
        let (third, _, _) = probe();
        let token = new_token(holder.fill(third, ROUTE));
        assert_eq!(holder.cancel(), Cancel::Withdrawn);
        assert!(token.claim().is_none());
        let (fourth, _, _) = probe();
        let token = new_token(holder.fill(fourth, ROUTE));
        assert!(holder.finish(token.run().unwrap()).is_some());
    }

    #[test]
    fn cancels_and_claims_race_to_exactly_one_outcome() {
        for _ in 0..2000 {
            let holder = TaskHolder::new();
            let (task, runs, drops) = probe();
            let token = new_token(holder.fill(task, ROUTE));
            let worker = std::thread::spawn(move || token.run().is_some());
            let cancel = holder.cancel();
            let ran = worker.join().unwrap();
            assert_eq!(ran, cancel == Cancel::Running, "{cancel:?}");
            assert_eq!(runs.load(Ordering::SeqCst), usize::from(ran));
            assert_eq!(drops.load(Ordering::SeqCst), 1);
        }
    }

    #[test]
    fn a_job_is_worked_on_in_place_and_comes_back_with_its_done() {
        let holder = TaskHolder::new();
        let (p, runs, drops) = probe();
        let token = new_token(holder.fill_job((7u32, p), ROUTE));
        let done = std::thread::spawn(move || {
            token
                .claim()
                .unwrap()
                .run_with(|job: &mut (u32, Probe)| job.0 += 1)
        })
        .join()
        .unwrap();
        let (route, job) = holder.finish_job::<(u32, Probe)>(done).unwrap();
        assert_eq!(route, ROUTE);
        let (n, back) = job.expect("the job came back");
        assert_eq!(n, 8, "worked on in place");
        assert_eq!(drops.load(Ordering::SeqCst), 0, "not dropped on the way");
        drop(back);
        assert_eq!(
            (runs.load(Ordering::SeqCst), drops.load(Ordering::SeqCst)),
            (0, 1)
        );
        // Not taken back (its connection left): dropped by the holder, once.
        let (p, _, drops) = probe();
        let token = new_token(holder.fill_job(p, ROUTE));
        let done = token
            .claim()
            .unwrap()
            .run_with(|_: &mut u64| panic!("wrong type"));
        assert!(holder.finish(done).is_some());
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        // Withdrawn while queued: dropped, unrun.
        let (p, _, drops) = probe();
        let token = new_token(holder.fill_job(p, ROUTE));
        assert_eq!(holder.cancel(), Cancel::Withdrawn);
        assert_eq!(drops.load(Ordering::SeqCst), 1);
        assert!(token.claim().is_none());
    }

    #[test]
    fn the_holder_is_the_documented_size() {
        // 96 bytes of task, its two entry points, route and state: no hidden growth.
        assert!(std::mem::size_of::<TaskHolder>() <= TASK_SIZE + 32);
        assert_eq!(std::mem::align_of::<TaskHolder>(), TASK_ALIGN);
    }
}
