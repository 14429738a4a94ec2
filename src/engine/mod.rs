//! The connection engine, generic over the wire protocol: what a porter
//! implements ([`Protocol`] and its vocabulary) and, crate-private, the engine
//! that runs it (`connections.rs`: one loop's connections, with no knowledge
//! of libev), a connection's state machine (`conn.rs`), the deadline lists and
//! the queue of connections waiting for hand-off room.
//!
//! A protocol is served by [`Server::bind`](crate::server::Server::bind); the
//! engine's types are public only to the fuzz targets (`conn_daemon::fuzzing`).
#![forbid(unsafe_code)]

pub(crate) mod conn;
pub(crate) mod connections;
pub(crate) mod deadline;
mod protocol;
mod waiting;

pub use protocol::{After, Buffer, DropReason, Label, Never, Output, Protocol, Step};

pub(crate) use connections::{Engine, Host, Interest, Settings};
#[cfg(test)]
pub(crate) use connections::{BACKOFF, LINGER};
