//! Process-level system calls, one file per job: signals owned by one thread
//! (`signals`), waiting on fds (`poll`), starting and stopping a new binary with
//! inherited sockets (`spawn`), what a parent handed us (`inherit`),
//! service-manager notification (`notify`), daemonizing (`process`), dropping
//! root (`privileges`), memory the generations share (`shared`), address
//! space reserved at start-up (`memory`), counting fds (`fds`), the open-files
//! limit against the reservation (`limits`), sleeping on an atomic word
//! (`futex`), the calling thread's CPU time (`clock`).
#![allow(unsafe_code)]

mod clock;
mod fds;
mod futex;
mod inherit;
mod limits;
mod memory;
mod notify;
mod poll;
mod privileges;
mod process;
mod shared;
mod signals;
mod spawn;

pub use clock::thread_cpu_time;
pub use fds::{alive, dup, open_fds};
pub use futex::{futex_wait, futex_wake};
pub use inherit::{
    take_inherited, InheritError, Inherited, ACTIVATION_VARS, COUNTERS_FD_VAR, METRICS_FD_NAME,
    READY_FD_VAR, UPGRADES_VAR,
};
pub use limits::{nofile_line, nofile_soft, own_fds};
pub use memory::{array_queue, deque_with_room, reserve, vec_with_room};
pub use notify::{monotonic_usec, sd_notify};
pub use poll::{poll, poll2};
pub use privileges::{check as check_privileges, drop_to, lookup as lookup_identity, Identity};
pub use process::{daemonize, descendants, exit_now, set_child_subreaper, Proc};
pub use shared::SharedWords;
pub use signals::{block_signals, signal_name, SignalFd, IGNORED_SIGNALS};
pub use spawn::{kill, kill_group, pipe, reap, Exec, ListenPid, Status, Wait};
