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

/// Test-only fault injection, compiled into debug builds only: with
/// `CONN_DAEMON_TEST_PANIC=1` in the environment, the first io callback panics,
/// so a test can check that the panic is caught at the libev trampoline and
/// ends the process with a message instead of unwinding into C.
#[cfg(debug_assertions)]
pub fn maybe_inject_panic() {
    use std::sync::OnceLock;
    static ARMED: OnceLock<bool> = OnceLock::new();
    if *ARMED.get_or_init(|| std::env::var_os("CONN_DAEMON_TEST_PANIC").is_some_and(|v| v == "1")) {
        panic!("injected by CONN_DAEMON_TEST_PANIC");
    }
}

/// Release builds have no fault injection.
#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn maybe_inject_panic() {}
