//! conn-daemon: an event loop + worker threads connection server on libev.
//!
//! A Rust port of the C++ `conn-daemon` ("server-demo"). Each accept thread owns a
//! `SO_REUSEPORT` listener, a libev loop and a preallocated connection pool; slow
//! requests go to worker threads, which hand completions back to the owning loop
//! through a lock-free queue and one `ev_async` per loop.

pub mod config;
pub mod parser;
pub mod sys;
