//! `conn-daemon`: the drop-in replacement for the C++ binary.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use conn_daemon::config::Config;
use conn_daemon::server::{Server, EXIT_SYSTEM};
use conn_daemon::{log, os};

fn main() -> ExitCode {
    let config = Config::from_env();
    log::set_verbose(config.verbose);
    // First, before any other thread exists, so that all of them inherit the mask
    // and only the signal thread below sees SIGTERM/SIGINT; a signal that arrives
    // while we start up waits for it instead of killing a process that already
    // has connections in its listen backlog.
    if let Err(e) = os::block_stop_signals() {
        return fail(EXIT_SYSTEM, &format_args!("cannot block signals: {e}"));
    }
    let server = match Server::bind(&config) {
        Ok(server) => server,
        Err(e) => return fail(e.code, &e),
    };
    if config.daemonize {
        if let Err(e) = os::daemonize(config.verbose) {
            return fail(EXIT_SYSTEM, &format_args!("cannot daemonize: {e}"));
        }
    }
    let stop = server.shutdown_handle();
    let signals = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let sig = os::wait_stop_signal();
            conn_daemon::debug!("signal {sig}: draining (a second signal stops at once)");
            stop.shutdown();
            os::wait_stop_signal();
            conn_daemon::warn!("second signal: exiting without draining");
            os::exit_now(1);
        });
    if let Err(e) = signals {
        return fail(
            EXIT_SYSTEM,
            &format_args!("cannot start the signal thread: {e}"),
        );
    }
    match server.run() {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(e.code, &e),
    }
}

fn fail(code: i32, why: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("conn-daemon: {why}");
    ExitCode::from(code as u8)
}
