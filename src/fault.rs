//! Test-only fault injection, compiled into debug builds only, kept out of the
//! modules that do the work: `tests/panic.rs` sets `CONN_DAEMON_TEST_PANIC=1`.
#![forbid(unsafe_code)]

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
