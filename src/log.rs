//! Debug lines (`-v`, to stdout) and warnings (always, to stderr).
//!
//! Neither allocates: formatting goes straight to the locked stream.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicBool, Ordering};

static VERBOSE: AtomicBool = AtomicBool::new(false);

/// Turns debug lines on or off (`-v`).
pub fn set_verbose(on: bool) {
    VERBOSE.store(on, Ordering::Relaxed);
}

/// Whether debug lines are on.
pub fn verbose() -> bool {
    VERBOSE.load(Ordering::Relaxed)
}

/// A debug line on stdout, only with `-v`.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::verbose() {
            println!("conn-daemon: {}", format_args!($($arg)*));
        }
    };
}

/// A warning on stderr: something an operator should know about.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => {
        eprintln!("conn-daemon: {}", format_args!($($arg)*))
    };
}
