//! conn-daemon: an event loop + worker threads connection server on libev.
//!
//! A Rust port of the C++ `conn-daemon` ("server-demo"). Each accept thread owns a
//! `SO_REUSEPORT` listener, a libev loop and a preallocated connection pool; slow
//! requests go to worker threads, which hand completions back to the owning loop
//! through a lock-free queue and one `ev_async` per loop.
//!
//! Layers, bottom up, as the imports show them (each module imports only
//! from modules above it in this list; `contrib/import-cycles.py` prints the
//! layers from the `crate::` paths and fails on a cycle):
//! - the base: [`sys`] (raw libev FFI), [`os`] (process-level system calls),
//!   `net` (socket calls), [`config`], [`log`], `fault` (test-only panic injection), [`proto::parser`], [`task`],
//!   [`token`] (what a watcher's event is for), [`shutdown`] (the stop request
//!   and the loops' wake-up, knowing neither the loops nor the workers),
//!   [`start_error`] (why start-up failed, and the exit status);
//! - [`ev`] (safe libev types) and [`lifecycle`] (signals, the upgrade: it only
//!   asks for a drain through a `ShutdownHandle`, and counts the upgrades that
//!   the metrics show);
//! - [`pool`] (slot storage), then `engine::conn` and its deadlines
//!   (`ConnectionCtx`, public so that it can be fuzzed over a scripted socket);
//! - [`metrics`] (counters, `Stats`, the exposition, the `--metrics` listener);
//! - the crate-private `worker` (`SlowTask`, the worker threads);
//! - [`delegate`] (`--delegate socket|loop`: the worker side's queues, seats and
//!   wake-ups; the mode itself, `Delegate`, is in `config`);
//! - [`engine`] (one loop's connections, over any loop that implements its
//!   `Host`: public so that the fuzz targets drive it over a scripted loop) and
//!   [`delegate::socket`] (a blocking worker's steps, `--delegate socket`);
//! - the crate-private `ev_engine` (what every libev host of the engine does
//!   alike: watch a slot, arm a timer, the clock);
//! - `accept` (`AcceptTask`: the engine on libev) and the crate-private
//!   `worker_loop` (the engine on a worker's own libev loop, `--delegate loop`);
//! - the crate-private `handoff` (the worker threads of `socket` and `loop`);
//! - [`server`] (start-up, threads), which the binary drives with `lifecycle`.
//!
//! Only `sys`, `ev`, `pool`, `task`, `net` and `os` contain `unsafe`, and the
//! compiler holds it so: `[lints]` in Cargo.toml denies `unsafe_code` for the
//! crate, those modules allow it by name, the others are `#![forbid(unsafe_code)]`;
//! `unsafe_op_in_unsafe_fn` and `clippy::undocumented_unsafe_blocks` are denied.
//!
//! Features: `cli` (default) is the command line (`Config::from_env`,
//! `config::command`, clap) and the binary; with `default-features = false`
//! the library builds without clap, and a `Config` is made in code from
//! `Config::default()`.

#![warn(missing_docs)]

// The public surface: what the binaries, the integration tests and a reader
// porting a libev design need. The rest is crate-private.
pub mod config;
pub mod delegate;
pub mod engine;
pub mod ev;
pub mod lifecycle;
pub mod log;
pub mod metrics;
pub mod os;
pub mod pool;
pub mod proto;
pub mod server;
pub mod shutdown;
pub mod start_error;
pub mod sys;
pub mod task;
pub mod token;

mod accept;
mod ev_engine;
mod fault;
mod net;

/// What the fuzz targets (`fuzz/`) drive directly, public for them only (as
/// rustls's `internal`): the engine over a scripted loop, one connection's
/// state machine over a scripted socket, and the delegation modes' steps.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::delegate::socket::{answer, work, Outcome, WorkerSocket};
    pub use crate::delegate::worker_loop::{Due, SlowTimers};
    pub use crate::engine::conn::{ConnectionCtx, Next, Release, Socket, State};
    pub use crate::engine::connections::{Engine, Host, Interest, Settings};
    pub use crate::token::TimerId;
}
