//! `--listen ADDR` (repeatable): chosen interfaces, IPv6, and the refusals.

mod util;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use util::{check_response, free_port, send, Server};

const FAST: &[u8] = b"GET /test/fast\r\n\r\n";

fn answered(addr: SocketAddr) -> Result<(), String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    send(&s, FAST);
    check_response(&s, Duration::from_secs(5)).map_err(|e| format!("{addr}: {e}"))
}

fn refused(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err()
}

/// `--listen 127.0.0.1` listens there and nowhere else (127.0.0.2 is another
/// loopback address of the same host).
#[test]
fn listens_on_the_chosen_address_only() {
    let server = Server::start(&["-A", "2", "--listen", "127.0.0.1"]);
    let port = server.port();
    answered(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    assert!(
        refused(SocketAddr::from(([127, 0, 0, 2], port))),
        "127.0.0.2:{port} accepted, the server should listen on 127.0.0.1 only"
    );
    // One SO_REUSEPORT listener per accept thread.
    assert_eq!(server.listening_inodes().len(), 2);
}

/// Two addresses, one with its own port: each accept thread listens on both.
#[test]
fn several_addresses_with_and_without_ports() {
    let second = free_port();
    let server = Server::start(&[
        "-A",
        "2",
        "--listen",
        "127.0.0.1",
        "--listen",
        &format!("127.0.0.2:{second}"),
    ]);
    for _ in 0..20 {
        answered(SocketAddr::from(([127, 0, 0, 1], server.port()))).unwrap();
        answered(SocketAddr::from(([127, 0, 0, 2], second))).unwrap();
    }
    assert!(refused(SocketAddr::from(([127, 0, 0, 2], server.port()))));
    let own = util::socket_inodes_of(server.pid());
    let on_second = util::listening_sockets_on(second)
        .into_iter()
        .filter(|i| own.contains(i))
        .count();
    assert_eq!(
        on_second, 2,
        "one listener per thread on the second address"
    );
}

/// `[::1]` over IPv6, and `[::]` beside `0.0.0.0` on the same port (the IPv6
/// socket is IPV6_V6ONLY, so both bind). Not skipped on a host without ::1:
/// it fails there, as tests/metrics.rs's IPv6 test does.
#[test]
fn ipv6_addresses() {
    let server = Server::start(&["-A", "1", "--listen", "[::1]", "--listen", "127.0.0.1"]);
    answered(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], server.port()))).unwrap();
    answered(SocketAddr::from(([127, 0, 0, 1], server.port()))).unwrap();
    drop(server);

    let server = Server::start(&["-A", "2", "--listen", "[::]", "--listen", "0.0.0.0"]);
    answered(SocketAddr::from(([0, 0, 0, 0, 0, 0, 0, 1], server.port()))).unwrap();
    answered(SocketAddr::from(([127, 0, 0, 1], server.port()))).unwrap();
    assert_eq!(server.listening_inodes().len(), 4);
}

/// Malformed addresses and host names are command-line errors: exit 1, the
/// reason and the usage.
#[test]
fn malformed_addresses_are_refused_at_the_command_line() {
    for bad in [
        "localhost",
        "127.0.0.1:99999",
        "[::1",
        "1.2.3",
        "127.0.0.1:0",
    ] {
        let (code, stderr) = util::start_fails(&["--listen", bad]);
        assert_eq!(code, Some(1), "--listen {bad}: {stderr}");
        assert!(stderr.contains("--listen"), "--listen {bad}: {stderr}");
        assert!(
            stderr.contains("Usage:"),
            "--listen {bad}: no usage: {stderr}"
        );
    }
}

/// An address this host does not have, or a port someone holds: exit 100 with
/// one line naming the address.
#[test]
fn addresses_that_cannot_be_bound_are_refused_at_start_up() {
    let port = free_port();
    let (code, stderr) = util::start_fails(&["-p", &port.to_string(), "--listen", "192.0.2.1"]);
    assert_eq!(code, Some(100), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("192.0.2.1:{port}")), "{stderr}");

    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let held = holder.local_addr().unwrap();
    let (code, stderr) =
        util::start_fails(&["--listen", "127.0.0.2", "--listen", &held.to_string()]);
    assert_eq!(code, Some(100), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("already in use") && stderr.contains(&held.to_string()),
        "{stderr}"
    );
}

/// Ports written as C's `strtol` reads them (AutoOpts, the reference's parser):
/// `0x...` hexadecimal and `0...` octal listen on the port they denote.
#[test]
fn hexadecimal_and_octal_ports_listen_where_c_reads_them() {
    let (hex, octal) = (free_port(), free_port());
    let server = Server::start(&[
        "--listen",
        "127.0.0.1",
        "--listen",
        &format!("127.0.0.1:{hex:#x}"),
        "--listen",
        &format!("127.0.0.1:0{octal:o}"),
    ]);
    for port in [server.port(), hex, octal] {
        answered(SocketAddr::from(([127, 0, 0, 1], port))).unwrap();
    }
}
