//! conn-daemon: an event loop + worker threads connection server on libev.
//!
//! A Rust port of the C++ `conn-daemon` ("server-demo"). Each accept thread owns a
//! `SO_REUSEPORT` listener, a libev loop and a preallocated connection pool; slow
//! requests go to worker threads, which hand completions back to the owning loop
//! through a lock-free queue and one `ev_async` per loop.
//!
//! Layers, bottom up: [`sys`] (raw libev FFI), [`ev`] (safe libev types),
//! [`pool`] and [`task`] (slot storage), [`token`] (what a watcher's event is
//! for), [`parser`], [`conn`] (`ConnectionCtx`, public so that it can be fuzzed
//! over a scripted socket), the crate-private `deadline` and `worker` (`SlowTask`,
//! the worker threads), [`engine`] (one loop's connections, over any loop that
//! implements its `Host`: public so that the fuzz target drives it over a
//! scripted loop), then `accept` (`AcceptTask`: the engine on libev),
//! [`metrics`] (counters, `--metrics`), [`server`], and
//! [`lifecycle`] (signals, drain, upgrade). Only `sys`, `ev`, `pool`,
//! `task`, `net` and `os` contain `unsafe`; the other modules are
//! `#![forbid(unsafe_code)]`.

#![warn(missing_docs)]

// The public surface: what the binaries, the integration tests and a reader
// porting a libev design need. The rest is crate-private.
pub mod config;
pub mod conn;
pub mod delegate;
pub mod engine;
pub mod ev;
pub mod lifecycle;
pub mod log;
pub mod metrics;
pub mod os;
pub mod parser;
pub mod pool;
pub mod server;
pub mod socket_worker;
pub mod sys;
pub mod task;
pub mod token;

mod accept;
mod deadline;
mod handoff;
mod net;
mod worker;
mod worker_loop;

pub use accept::Stats;
