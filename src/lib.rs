//! conn-daemon: an event loop + worker threads connection server on libev.
//!
//! A Rust port of the C++ `conn-daemon` ("server-demo"). Each accept thread owns a
//! `SO_REUSEPORT` listener, a libev loop and a preallocated connection pool; slow
//! requests go to worker threads, which hand completions back to the owning loop
//! through a lock-free queue and one `ev_async` per loop.
//!
//! The engine is generic over the wire protocol: a porter implements
//! [`engine::Protocol`] and serves it with [`server::Server::bind`] then
//! `run`; conn-daemon's own protocol is [`proto::Builtin`]. The modules and
//! their layers are in docs/architecture.md (the one place they are written;
//! `tests/layers.rs` holds the imports to it).
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

mod accept;
mod delegate;
mod ev_engine;
mod fault;
mod net;
mod token;

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
