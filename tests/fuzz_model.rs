//! The fuzz targets' protocol model (`fuzz/src/model.rs`, written from
//! docs/protocol.md) against its examples: its own unit tests, compiled here so that `cargo test`
//! runs them without building the fuzz crate (which needs cargo-fuzz).
#![forbid(unsafe_code)]

#[path = "../fuzz/src/model.rs"]
mod model;
