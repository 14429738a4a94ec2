//! `conn-daemon`: the drop-in replacement for the C++ binary: its own protocol
//! ([`Builtin`]) run by the crate's [`daemon::run`], as any ported server is.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use conn_daemon::config::Config;
use conn_daemon::daemon;
use conn_daemon::proto::Builtin;

fn main() -> ExitCode {
    daemon::run("conn-daemon", || {
        let config = Config::from_env();
        let protocol = Builtin::from_config(&config);
        Ok((config, protocol))
    })
}
