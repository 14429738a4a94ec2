//! Placeholder: the incremental request parser (being written).
#![forbid(unsafe_code)]
