//! The real binary's command line: help, version and refused values, end to end.
//!
//! These check what only the process shows: exit statuses (clap's default would be 2,
//! the reference's is 1), which stream each text goes to, and that a refused command
//! line never gets as far as starting the server. Nothing here opens a connection.
#![forbid(unsafe_code)]

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Bound on one run: a refused command line exits at once, so a child still running
/// after this started the server instead.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Every long option; the usage must list them all.
const LONG_OPTIONS: &[&str] = &[
    "--verbose",
    "--daemonize",
    "--port",
    "--accept-threads",
    "--accept-capacity",
    "--worker-threads",
    "--slow-duration",
    "--read-timeout",
    "--shutdown-timeout",
    "--metrics",
    "--help",
    "--version",
];

/// What a finished run left behind.
struct Output {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Kills the child if the test panics before it was reaped, so no server outlives it.
struct Reaper(Option<Child>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(child) = self.0.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Runs the binary with `args`, killing it (and failing) after `TIMEOUT`.
fn run(args: &[&str]) -> Output {
    let child = Command::new(env!("CARGO_BIN_EXE_conn-daemon"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn conn-daemon");
    let mut reaper = Reaper(Some(child));
    let child = reaper.0.as_mut().expect("child present");
    // Drain both pipes on their own threads so a chatty child cannot block on a full
    // pipe while we poll for its exit.
    let mut out_pipe = child.stdout.take().expect("stdout piped");
    let mut err_pipe = child.stderr.take().expect("stderr piped");
    let out_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = out_pipe.read_to_string(&mut text);
        text
    });
    let err_reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = err_pipe.read_to_string(&mut text);
        text
    });
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if start.elapsed() > TIMEOUT {
            // The reaper kills it; the readers then see EOF.
            drop(reaper);
            panic!("conn-daemon {args:?} still running after {TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(10));
    };
    reaper.0 = None;
    Output {
        status,
        stdout: out_reader.join().expect("stdout reader"),
        stderr: err_reader.join().expect("stderr reader"),
    }
}

/// Asserts that `text` is the full usage: the usage line and every long option.
fn assert_usage(text: &str, context: &str) {
    assert!(
        text.contains("Usage: conn-daemon [OPTIONS]"),
        "{context}: no usage line in\n{text}"
    );
    for option in LONG_OPTIONS {
        assert!(
            text.contains(option),
            "{context}: {option} missing from\n{text}"
        );
    }
}

#[test]
fn help_goes_to_stdout_and_exits_0() {
    for args in [
        &["--help"][..],
        &["-?"],
        &["-h"],
        &["-!"],
        &["--he"],
        &["-v", "--help"],
    ] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {}", out.stderr);
        assert_usage(&out.stdout, &format!("{args:?}"));
        assert!(
            out.stdout.contains("-?, --help"),
            "{args:?}: {}",
            out.stdout
        );
        assert_eq!(out.stderr, "", "{args:?}");
    }
}

#[test]
fn version_goes_to_stdout_and_exits_0() {
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    // The rest of the line is tests/version.rs's.
    assert!(
        out.stdout
            .starts_with(&format!("conn-daemon {} (git ", env!("CARGO_PKG_VERSION")))
            && out.stdout.ends_with(" build)\n")
            && out.stdout.lines().count() == 1,
        "{}",
        out.stdout
    );
    assert_eq!(out.stderr, "");
}

#[test]
fn refused_command_lines_exit_1_with_error_and_usage_on_stderr() {
    let cases: &[&[&str]] = &[
        &["--port", "0"],
        &["--port", "70000"],
        &["-p70000"],
        &["--port=65536"],
        &["-p", "abc"],
        &["-w", "-1"],
        &["--worker-threads=-1"],
        &["-A", "0"],
        &["-C", "0"],
        &["-C", "16777217"],
        &["-D", "-5"],
        &["--slow=-5"],
        &["--read-timeout", "x"],
        &["--shutdown-timeout", "-1"],
        &["-D", "18446744073709551616"],
        &["--acc", "1"],
        &["--acc=1"],
        &["--bogus"],
        &["-x"],
        &["stray"],
        &["-p"],
        &["-v", "-v"],
    ];
    for args in cases {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: stdout {:?} stderr {:?}",
            out.stdout,
            out.stderr
        );
        assert_eq!(out.stdout, "", "{args:?}: nothing belongs on stdout");
        let first = out.stderr.lines().next().unwrap_or("");
        assert!(
            first.starts_with("error: "),
            "{args:?}: first line {first:?}"
        );
        assert_usage(&out.stderr, &format!("{args:?}"));
    }
}

#[test]
fn refusals_name_the_problem() {
    let out = run(&["--port", "70000"]);
    assert!(
        out.stderr.starts_with(
            "error: invalid value '70000' for '--port <PORT>': \
             expected a whole number from 1 to 65535\n"
        ),
        "{}",
        out.stderr
    );
    let out = run(&["--acc", "1"]);
    assert!(
        out.stderr.starts_with(
            "error: ambiguous option '--acc': it could be \
             '--accept-threads' or '--accept-capacity'\n"
        ),
        "{}",
        out.stderr
    );
    let out = run(&["-w", "-1"]);
    assert!(
        out.stderr
            .starts_with("error: invalid value '-1' for '--worker-threads <N>'"),
        "{}",
        out.stderr
    );
}
