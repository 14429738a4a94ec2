//! Oracles shared by the fuzz targets.
#![forbid(unsafe_code)]

pub mod model;
