//! The open-files limit against what the server reserves: a service manager
//! may give less than its unit asks (systemd caps `LimitNOFILE=` at the hard
//! limit it may set), and nothing else says so.

use std::io;

/// The soft and hard `RLIMIT_NOFILE` of this process.
fn nofile_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the live local it is given.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The fds a server with `threads` event loops (accept threads and worker
/// loops) and `addresses` listening addresses holds besides its
/// connections, with room to spare: per loop an epoll fd, an eventfd and a
/// listener per address; the signalfd, an upgrade's pipe and its inherited
/// copies, stdio, the metrics listener and its 8 scrapes.
pub fn own_fds(threads: u64, addresses: u64) -> u64 {
    32 + threads.saturating_mul(2 + addresses.max(1))
}

/// The soft open-files limit, for the info line that says it.
pub fn nofile_soft() -> Option<u64> {
    nofile_limit().ok().map(|(soft, _)| soft)
}

/// Below this many fds a server is short whatever its capacity: the usual
/// unraised soft limit is 1024.
const FEW_FDS: u64 = 4096;

/// The start-up warning about the open-files limit, once the server has
/// raised its soft limit to the hard one: `Some` when that limit cannot hold
/// `connections` (accept threads x capacity) plus `own` fds of its own, so
/// that accept would pause short of the capacity the command line asks for,
/// and that capacity is plausibly needed: `chosen` by the operator (the
/// default -C is a ceiling sized for big hosts: a warning about it would be
/// noise on every start), or the limit too small for any server.
pub fn nofile_line(connections: u64, own: u64, chosen: bool) -> Option<String> {
    let (soft, hard) = nofile_limit().ok()?;
    nofile_message(soft, hard, connections, own, chosen)
}

fn nofile_message(
    soft: u64,
    hard: u64,
    connections: u64,
    own: u64,
    chosen: bool,
) -> Option<String> {
    let need = connections.saturating_add(own);
    (soft < need && (chosen || soft < FEW_FDS)).then(|| {
        format!(
            "open files limit {soft} (hard limit {hard}) is below the {need} that -A x -C \
             ({connections} connections) and about {own} fds of its own need: accept pauses \
             when they run out; a service manager caps LimitNOFILE= at the hard limit it may \
             set, so raise that (or lower -A or -C)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn says_when_the_limit_cannot_hold_the_capacity() {
        // The unit: -A 4 -C 65000 under LimitNOFILE=262144.
        let own = own_fds(4, 1);
        assert_eq!(own, 44);
        assert_eq!(nofile_message(262_144, 262_144, 260_000, own, true), None);
        // Capped by a host whose hard limit is lower.
        let line = nofile_message(65_536, 65_536, 260_000, own, true).unwrap();
        assert_eq!(
            line,
            "open files limit 65536 (hard limit 65536) is below the 260044 that -A x -C \
             (260000 connections) and about 44 fds of its own need: accept pauses when they \
             run out; a service manager caps LimitNOFILE= at the hard limit it may set, so \
             raise that (or lower -A or -C)"
        );
        // Enough for the connections, not for the server's own fds too.
        assert!(nofile_message(260_010, 260_010, 260_000, own, true).is_some());
        assert_eq!(
            nofile_message(u64::MAX, u64::MAX, u64::MAX, own, true),
            None
        );
        // The default -C (100000 a thread) beside a modest limit: no noise;
        // beside a limit too small for any server: the warning.
        assert_eq!(nofile_message(20_000, 20_000, 200_000, own, false), None);
        assert!(nofile_message(1024, 1024, 200_000, own, false).is_some());
        assert!(nofile_limit().unwrap().0 > 0);
    }
}
