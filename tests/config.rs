//! `--config FILE`: the options of the command line one per line, the command
//! line overriding them; `--check-config`; and the edit-and-reload cycle: an
//! upgrade (SIGHUP) reads the file anew, and a bad file refuses the upgrade
//! with one line naming the file and the line while the old process serves on.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

mod util;

use util::lineage::{spawn_guard, Lineage};
use util::metrics::{free_addr, Scrape};
use util::{bin, Server};

/// A file in the test's temporary directory holding `text`.
fn config_file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "conn-daemon-config-{}-{name}.conf",
        std::process::id()
    ));
    fs::write(&path, text).expect("write the config file");
    path
}

/// Runs the binary with `args` to completion: (status, stdout, stderr).
fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let _guard = spawn_guard();
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run conn-daemon");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn arg(path: &Path) -> String {
    path.to_str().expect("UTF-8 path").to_string()
}

#[test]
fn check_config_accepts_a_good_file_and_names_the_line_of_a_bad_one() {
    let good = config_file(
        "good",
        "# conn-daemon\n\nport = 9123\naccept-capacity = 64   # per thread\n\
         listen = 127.0.0.1\nlisten = [::1]:9124\nverbose\n",
    );
    let (status, stdout, stderr) = run(&["--config", &arg(&good), "--check-config"]);
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    assert_eq!(
        stdout,
        format!(
            "conn-daemon: {} and the command line: valid\n",
            good.display()
        )
    );
    assert_eq!(stderr, "");

    for (name, text, line, reason) in [
        (
            "value",
            "port = 9123\n\naccept-capacity = 0\n",
            "3",
            "invalid value '0' for '--accept-capacity <N>'",
        ),
        (
            "unknown",
            "# x\nbogus = 1\n",
            "2",
            "unknown option \"bogus\"",
        ),
        ("prefix", "acc = 1\n", "1", "unknown option \"acc\""),
        ("flag", "verbose = yes\n", "1", "verbose is a flag"),
        ("missing", "port\n", "1", "port needs a value"),
        ("twice", "port = 1\nport = 2\n", "2", "port is set twice"),
        ("dashes", "--port = 1\n", "1", "without dashes"),
        (
            "nested",
            "config = /etc/x\n",
            "1",
            "unknown option \"config\"",
        ),
    ] {
        let path = config_file(name, text);
        let (status, stdout, stderr) = run(&["--config", &arg(&path), "--check-config"]);
        assert_eq!(status, Some(1), "{name}: {stdout}{stderr}");
        assert_eq!(stdout, "", "{name}");
        let prefix = format!("conn-daemon: {}:{line}: ", path.display());
        assert!(
            stderr.starts_with(&prefix) && stderr.contains(reason),
            "{name}: {stderr:?} should start with {prefix:?} and say {reason:?}"
        );
        assert_eq!(stderr.lines().count(), 1, "{name}: one line: {stderr:?}");
        let _ = fs::remove_file(path);
    }
    // Options that conflict across lines name the file.
    let conflict = config_file("conflict", "port = 9125\nmetrics = 127.0.0.1:9125\n");
    let (status, _, stderr) = run(&["--config", &arg(&conflict), "--check-config"]);
    assert_eq!(status, Some(1));
    assert!(
        stderr.starts_with(&format!("conn-daemon: {}: --metrics", conflict.display())),
        "{stderr}"
    );
    // A missing file, and the same file without --check-config (no server starts).
    let (status, _, stderr) = run(&["--config", "/nonexistent/cd.conf", "--check-config"]);
    assert_eq!(status, Some(1));
    assert!(
        stderr.starts_with("conn-daemon: /nonexistent/cd.conf: cannot read it: "),
        "{stderr}"
    );
    let bad = config_file("bad", "accept-capacity = 0\n");
    let (status, _, stderr) = run(&["--config", &arg(&bad)]);
    assert_eq!(status, Some(1));
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // A bad command line is still reported with the usage.
    let (status, _, stderr) = run(&["--check-config", "-p", "0"]);
    assert_eq!(status, Some(1));
    assert!(
        stderr.starts_with("error: invalid value '0' for '--port <PORT>'"),
        "{stderr}"
    );
    for p in [good, conflict, bad] {
        let _ = fs::remove_file(p);
    }
}

#[test]
fn the_command_line_overrides_the_file() {
    let metrics = free_addr();
    // `port` is overridden by the `-p` util::Server passes; capacity is not.
    let path = config_file(
        "override",
        &format!("port = 1\naccept-capacity = 77\naccept-threads = 1\nmetrics = {metrics}\n"),
    );
    let server = {
        let _guard = spawn_guard();
        Server::start(&["--config", &arg(&path), "-A", "2"])
    };
    let response = server.request(b"GET /test/fast HTTP/1.1\r\n\r\n");
    assert_eq!(response, util::RESPONSE);
    let m = Scrape::get(metrics);
    assert_eq!(m.one("conn_daemon_pool_capacity{thread=\"0\"}"), 77.0);
    assert_eq!(
        m.count("conn_daemon_pool_capacity"),
        2,
        "-A 2 wins over the file"
    );
    let _ = fs::remove_file(path);
}

#[test]
fn a_reload_applies_the_edited_file_and_refuses_a_bad_one() {
    let metrics = free_addr();
    let path = config_file(
        "reload",
        &format!("accept-capacity = 64\naccept-threads = 1\nmetrics = {metrics}\n"),
    );
    let mut lineage = Lineage::start(&["--config", &arg(&path)]);
    assert_eq!(
        Scrape::get(metrics).one("conn_daemon_pool_capacity{thread=\"0\"}"),
        64.0
    );

    // A good edit: the new process reads the file anew.
    fs::write(
        &path,
        format!("accept-capacity = 128\naccept-threads = 1\nmetrics = {metrics}\n"),
    )
    .unwrap();
    let first = lineage.pid();
    let second = lineage
        .upgrade_with(libc::SIGHUP, Duration::from_secs(10))
        .expect("the reload with a good file");
    assert_ne!(first, second);
    assert_eq!(
        Scrape::get(metrics).one("conn_daemon_pool_capacity{thread=\"0\"}"),
        128.0
    );

    // A bad edit: one line naming the file and the line, and the old process
    // serves on (its pid file too).
    fs::write(
        &path,
        format!("accept-capacity = 128\n# oops\naccept-threads = 0\nmetrics = {metrics}\n"),
    )
    .unwrap();
    lineage.signal(libc::SIGHUP);
    assert!(
        lineage.wait_stderr("upgrade failed", 1, Duration::from_secs(10)),
        "{}",
        lineage.stderr()
    );
    let stderr = lineage.stderr();
    let named = format!(
        "conn-daemon: {}:3: invalid value '0' for '--accept-threads <N>'",
        path.display()
    );
    assert_eq!(util::count_lines(&stderr, &named), 1, "{stderr}");
    assert!(
        stderr.contains("it exited before serving (exited with status 1); still serving"),
        "{stderr}"
    );
    assert!(util::lineage::alive(second));
    assert_eq!(
        lineage.wait_pid_file(|p| p == second, Duration::from_secs(5)),
        Some(second)
    );
    let s = util::connect(lineage.addr());
    util::send(&s, b"GET /test/fast HTTP/1.1\r\n\r\n");
    assert_eq!(
        util::read_to_end(&s, util::IO_TIMEOUT).bytes,
        util::RESPONSE
    );
    assert_eq!(
        Scrape::get(metrics).one("conn_daemon_pool_capacity{thread=\"0\"}"),
        128.0
    );

    // Fixed again: the next reload goes through.
    fs::write(
        &path,
        format!("accept-capacity = 32\naccept-threads = 1\nmetrics = {metrics}\n"),
    )
    .unwrap();
    lineage
        .upgrade_with(libc::SIGHUP, Duration::from_secs(10))
        .expect("the reload after the fix");
    assert_eq!(
        Scrape::get(metrics).one("conn_daemon_pool_capacity{thread=\"0\"}"),
        32.0
    );
    lineage.stop(Duration::from_secs(10)).unwrap();
    let _ = fs::remove_file(path);
}

/// The Debian conffile is valid, and shows every option a file can set.
#[test]
fn the_shipped_config_file_is_valid_and_complete() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/debian/conn-daemon.conf");
    let (status, stdout, stderr) = run(&["--config", &arg(&path), "--check-config"]);
    assert_eq!(status, Some(0), "{stdout}{stderr}");
    let text = fs::read_to_string(&path).unwrap();
    let help = run(&["--help"]).1;
    let longs = help
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| w.trim_end_matches(',').to_string())
        .filter(|w| !w.is_empty() && w.chars().all(|c| c.is_ascii_lowercase() || c == '-'));
    for long in longs {
        if ["config", "check-config", "help", "version"].contains(&long.as_str()) {
            continue;
        }
        let shown = text.lines().any(|l| {
            let l = l.trim_start_matches('#');
            l == long || l.starts_with(&format!("{long} "))
        });
        assert!(shown, "--{long} is not in {}", path.display());
    }
}
