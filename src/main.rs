//! `conn-daemon`: the drop-in replacement for the C++ binary.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use conn_daemon::config::Config;
use conn_daemon::lifecycle::{self, Supervisor, UpgradeCount, UpgradePlan};
use conn_daemon::proto::Builtin;
use conn_daemon::server::{Handed, Server, StartError, EXIT_SYSTEM};
use conn_daemon::{log, os};

fn main() -> ExitCode {
    // The very first thing, before the arguments are even read and before any
    // other thread exists, so that all of them inherit the mask and only the
    // supervisor sees the signals; a signal that arrives while we start up
    // waits for it instead of killing a process that may already have
    // connections in its listen backlog (an upgrade's, an activated one's).
    if let Err(e) = os::block_signals() {
        return fail(EXIT_SYSTEM, &format_args!("cannot block signals: {e}"));
    }
    let config = Config::from_env();
    log::set_verbose(config.verbose);
    let inherited = match os::take_inherited() {
        Ok(inherited) => inherited,
        Err(e) => return fail(EXIT_SYSTEM, &e),
    };
    let upgrades = UpgradeCount::new(inherited.upgrades);
    let handed = Handed {
        listeners: inherited.listeners,
        metrics: inherited.metrics,
        from_upgrade: inherited.from_upgrade,
        upgrades: upgrades.shared(),
    };
    let server = match Server::bind_with(&config, Builtin::from_config(&config), handed) {
        Ok(server) => server,
        Err(e) => return fail(e.exit_status(), &e),
    };
    // Read before -d changes directory (a relative argv[0] would then miss).
    let plan = match UpgradePlan::new(
        &config,
        server.listener_fds(),
        server.metrics_fd(),
        upgrades,
    ) {
        Ok(plan) => plan,
        Err(e) => {
            return fail(
                EXIT_SYSTEM,
                &format_args!("cannot find our executable: {e}"),
            )
        }
    };
    // An upgrade's new process is detached already (its parent is the daemon),
    // and daemonizing again would hide it from the old process, which must be
    // able to stop it if it does not take over.
    if config.daemonize && !inherited.from_upgrade {
        if let Err(e) = os::daemonize(config.verbose) {
            return fail(EXIT_SYSTEM, &format_args!("cannot daemonize: {e}"));
        }
    }
    let supervisor = Supervisor::new(server.shutdown_handle(), plan).and_then(Supervisor::spawn);
    if let Err(e) = supervisor {
        let e = StartError::system("cannot start the signal thread", e);
        return fail(e.exit_status(), &e);
    }
    let addresses = server.addresses().len();
    let ready = inherited.ready;
    let pid_file = config.pid_file.as_deref();
    let result = server.run_with(|| lifecycle::announce_ready(pid_file, ready, addresses));
    if let Some(path) = pid_file {
        lifecycle::remove_pid_file(path);
    }
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => fail(e.exit_status(), &e),
    }
}

fn fail(code: i32, why: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("conn-daemon: {why}");
    ExitCode::from(code as u8)
}
