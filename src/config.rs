//! Placeholder: the command line (being written).
#![forbid(unsafe_code)]
