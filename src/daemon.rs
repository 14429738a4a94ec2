//! The whole life of a server process, for any protocol: what `conn-daemon`'s
//! `main` does, as one call a ported server makes from its own `main`.
//!
//! In order: signals blocked (before any other thread, so that only the
//! supervisor sees them), the command line read by the caller's `setup`,
//! `--check-config`, `--user`/`--group` checked, inherited sockets taken
//! (socket activation, an upgrade's), the pid file checked, the listeners
//! bound, `-d`, root given up, the supervisor thread (signals, drains, binary
//! upgrades, the pid file) started, then the loops run until a drain ends.
//! Every start-up failure is one line and its exit status
//! ([`StartError::exit_status`]).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::process::ExitCode;

use crate::config::Config;
use crate::engine::Protocol;
use crate::lifecycle::{self, Predecessor, Supervisor, UpgradeCount, UpgradePlan};
use crate::server::{Handed, Server, StartError, EXIT_SYSTEM, EXIT_USAGE};
use crate::{error, info, log, os, warn};

/// Runs a server of `P` from start to exit, as `conn-daemon` runs its own
/// protocol: `setup` reads the command line and builds the [`Config`] and the
/// protocol (it runs once signals are blocked; its error is the one line and
/// exit status); `name` starts every log line (and is syslog's ident).
///
/// What the caller gets without writing it: graceful drains on SIGTERM and
/// SIGINT, SIGQUIT's immediate stop, binary upgrades on SIGUSR2/SIGHUP with
/// the counters handed over, socket activation, `--pid-file`, `-d`,
/// `--user`/`--group`, `READY=1` to systemd, and the log lines of each step.
pub fn run<P: Protocol>(
    name: &'static str,
    setup: impl FnOnce() -> Result<(Config, P), StartError>,
) -> ExitCode {
    run_with(name, setup, |_| {})
}

/// As [`run`], calling `on_ready` with the addresses served once every loop
/// is ready, just before readiness is announced (systemd's `READY=1`, an
/// upgrade's predecessor, the pid file): an example's `listening on` line.
pub fn run_with<P: Protocol>(
    name: &'static str,
    setup: impl FnOnce() -> Result<(Config, P), StartError>,
    on_ready: impl FnOnce(&[SocketAddr]),
) -> ExitCode {
    log::set_name(name);
    // The very first thing, before the arguments are even read and before any
    // other thread exists, so that all of them inherit the mask and only the
    // supervisor sees the signals; a signal that arrives while we start up
    // waits for it instead of killing a process that may already have
    // connections in its listen backlog (an upgrade's, an activated one's).
    if let Err(e) = os::block_signals() {
        return fail(EXIT_SYSTEM, &format_args!("cannot block signals: {e}"));
    }
    let (config, protocol) = match setup() {
        Ok(set) => set,
        Err(e) => return fail(e.exit_status(), &e.report()),
    };
    log::set_verbose(config.verbose);
    log::set_level(config.log_level);
    let identity = match identity(&config) {
        Ok(identity) => identity,
        Err(why) => return fail(EXIT_USAGE, &why),
    };
    if config.check_config {
        println!("{name}: {}", config.valid());
        return ExitCode::SUCCESS;
    }
    let inherited = match os::take_inherited() {
        Ok(inherited) => inherited,
        Err(e) => return fail(EXIT_SYSTEM, &e),
    };
    // Before anything is bound or detached: a pid file that cannot be written
    // would leave a server (with -d, a detached one) that nothing names.
    if let Some(path) = &config.pid_file {
        if let Err(e) = lifecycle::check_pid_file(path) {
            let line = format_args!("cannot write the pid file {}: {e}", path.display());
            return fail(EXIT_SYSTEM, &line);
        }
    }
    let upgrades = UpgradeCount::new(inherited.upgrades);
    let handed = Handed {
        listeners: inherited.listeners,
        metrics: inherited.metrics,
        from_upgrade: inherited.from_upgrade,
        upgrades: upgrades.shared(),
        counters: inherited.counters,
    };
    let server = match Server::bind_with(&config, protocol, handed) {
        Ok(server) => server,
        Err(e) => return fail(e.exit_status(), &e.report()),
    };
    // The limit is final now (bind_with raised soft to hard): say it at info,
    // and warn when it cannot hold what -A x -C plausibly needs (a -C the
    // operator chose: the default is a ceiling, not a plan).
    let loops = config.accept_threads + config.worker_threads;
    let own = os::own_fds(loops as u64, server.addresses().len() as u64);
    let connections = (config.accept_threads as u64).saturating_mul(config.accept_capacity as u64);
    let chosen = config.accept_capacity != Config::default().accept_capacity;
    if let Some(soft) = os::nofile_soft() {
        info!("open files limit {soft}: accept pauses when it runs out");
    }
    if let Some(line) = os::nofile_line(connections, own, chosen) {
        warn!("{line}");
    }
    // Read before -d changes directory (a relative argv[0] would then miss).
    let plan = match UpgradePlan::new(
        &config,
        server.listener_fds(),
        server.metrics_fd(),
        upgrades,
    )
    .and_then(|plan| plan.with_counters(server.counters_fd()))
    {
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
    // Detached, stderr is /dev/null (unless -v): the lines go to syslog. An
    // upgrade's new process of a -d server inherited that /dev/null too.
    if config.daemonize && !config.verbose {
        log::to_syslog();
    }
    // Bound, not yet accepting: the one place root is given up (before any
    // thread is started, though glibc would change every thread's ids).
    if let Some(id) = &identity {
        if let Err(e) = os::drop_to(id) {
            return fail(
                EXIT_SYSTEM,
                &format_args!("cannot run as user {} group {}: {e}", id.user, id.group),
            );
        }
        info!(
            "running as user {} (uid {}), group {} (gid {})",
            id.user, id.uid, id.group, id.gid
        );
    }
    let predecessor = Predecessor::new(inherited.ready);
    let supervisor = Supervisor::new(server.shutdown_handle(), plan, predecessor.clone())
        .and_then(Supervisor::spawn);
    if let Err(e) = supervisor {
        let e = StartError::system("cannot start the signal thread", e);
        return fail(e.exit_status(), &e.report());
    }
    let addresses = server.addresses().to_vec();
    let serving = serving_line(&config, &addresses);
    let pid_file = config.pid_file.as_deref();
    let result = server.run_with(|| {
        info!("{serving}");
        on_ready(&addresses);
        lifecycle::announce_ready(pid_file, &predecessor, addresses.len())
    });
    if let Some(path) = pid_file {
        lifecycle::remove_pid_file(path);
    }
    match result {
        Ok(stats) => {
            info!(
                "drained; exiting: {} responses sent, {} connections dropped, {} timed out \
                 since start",
                stats.served, stats.dropped, stats.timed_out
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail(e.exit_status(), &e.report()),
    }
}

/// `--user`/`--group` looked up and checked before anything is bound: one
/// line (exit 1) for what cannot work.
fn identity(config: &Config) -> Result<Option<os::Identity>, String> {
    let Some(user) = config.user.as_deref() else {
        return match &config.group {
            Some(group) => Err(format!("--group {group} needs --user")),
            None => Ok(None),
        };
    };
    let id = os::lookup_identity(user, config.group.as_deref())?;
    os::check_privileges(&id, config.pid_file.as_deref())?;
    Ok(Some(id))
}

/// The info line of a server that serves: where, and with what.
fn serving_line(config: &Config, addresses: &[SocketAddr]) -> String {
    let addresses: Vec<String> = addresses.iter().map(ToString::to_string).collect();
    format!(
        "serving on {}: {} accept threads x {} connections, {} workers, --delegate {}",
        addresses.join(" "),
        config.accept_threads,
        config.accept_capacity,
        config.worker_threads,
        config.effective_delegate()
    )
}

fn fail(code: i32, why: &dyn std::fmt::Display) -> ExitCode {
    error!("{why}");
    ExitCode::from(code as u8)
}
