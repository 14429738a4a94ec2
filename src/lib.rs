//! conn-daemon: an event loop + worker threads connection server on libev.
//!
//! A Rust port of the C++ `conn-daemon` ("server-demo"). Each accept thread owns a
//! `SO_REUSEPORT` listener, a libev loop and a preallocated connection pool; slow
//! requests go to worker threads, which hand completions back to the owning loop
//! through a lock-free queue and one `ev_async` per loop.
//!
//! Layers, bottom up: [`sys`] (raw libev FFI), [`ev`] (safe libev types),
//! [`pool`] and [`task`] (slot storage), [`parser`], [`conn`], [`worker`],
//! [`accept`], [`server`]. Only `sys`, `ev`, `pool`, `task`, `net`, `os` and the
//! one hand-off in `server` contain `unsafe`.

pub mod accept;
pub mod config;
pub mod conn;
pub mod deadline;
pub mod ev;
pub mod log;
pub mod net;
pub mod os;
pub mod parser;
pub mod pool;
pub mod server;
pub mod sys;
pub mod task;
pub mod worker;
