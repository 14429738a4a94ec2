//! The fuzz targets' protocol model (`fuzz/src/model.rs`, written from SPEC.md)
//! against SPEC's examples: its own unit tests, compiled here so that `cargo test`
//! runs them without building the fuzz crate (which needs cargo-fuzz).
#![forbid(unsafe_code)]

#[path = "../fuzz/src/model.rs"]
mod model;
