//! A panic inside a libev callback must not unwind into C: the trampoline catches
//! it, says so on stderr and aborts the process (documented in docs/operating.md). The
//! debug build's test-only hook `CONN_DAEMON_TEST_PANIC=1` makes the first io
//! callback panic.

mod util;

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn panic_in_callback_aborts_with_a_message() {
    let port = util::free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_conn-daemon"))
        .args(["-p", &port.to_string(), "-A", "1", "-w", "0"])
        .env("CONN_DAEMON_TEST_PANIC", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Err(e) => panic!("server did not listen: {e}"),
        }
    };
    let _ = stream.write_all(b"GET /test/fast\r\n\r\n");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("the server did not abort");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(status.signal(), Some(libc::SIGABRT), "{status:?}");
    let mut stderr = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("injected by CONN_DAEMON_TEST_PANIC"),
        "{stderr}"
    );
    assert!(
        stderr.contains("panic in a libev io callback; aborting"),
        "{stderr}"
    );
}
