//! End to end: `conn-bench` benchmarks conn-daemon against itself for one
//! short round and writes all three outputs.
//!
//! The server under test is the workspace's `conn-daemon` binary. Cargo only
//! hands a package's own binaries to its tests, so it is looked up beside
//! this test's executable (`target/<profile>/`), where `cargo test
//! --workspace` builds it before running any test; `CONN_DAEMON_BIN` names
//! another. Run alone, build it first: `cargo build -p conn-daemon && cargo
//! test -p conn-bench`.

use std::fs;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory under the system temp dir, removed on success.
fn scratch() -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("conn-bench-test-{}-{nanos}", std::process::id()));
    fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn benchmarks_conn_daemon_against_itself() {
    assert!(
        on_path("ab"),
        "conn-bench needs `ab`: install Debian's apache2-utils"
    );
    let dir = scratch();
    let out = dir.join("out");
    let server = format!("{} -A 1 -w 1 -p {{port}}", conn_daemon().display());
    let mut args = vec![
        "--server".to_string(),
        format!("first={server}"),
        "--server".into(),
        format!("second={server}"),
    ];
    args.extend(
        [
            "--scenario",
            "fast",
            "--rounds",
            "1",
            "-n",
            "300",
            "-c",
            "10",
        ]
        .map(String::from),
    );
    let (status, stdout, stderr) = conn_bench(&dir, &out, &args);
    assert!(
        status.success(),
        "conn-bench failed ({status}):\n{stderr}\n{stdout}"
    );

    // Markdown table with both servers.
    assert!(
        stdout.contains("| server | load | req/s median"),
        "{stdout}"
    );
    assert!(stdout.contains("| first | fast |"), "{stdout}");
    assert!(stdout.contains("| second | fast |"), "{stdout}");

    // report.json with both servers and real throughput.
    let json = report_json(&out);
    let servers = json["servers"].as_array().expect("servers array");
    assert_eq!(servers.len(), 2, "{json}");
    for (server, name) in servers.iter().zip(["first", "second"]) {
        assert_eq!(server["name"], name);
        let load = &server["loads"][0];
        assert_eq!(load["kind"], "fast");
        let rps = load["requests_per_s"]["median"].as_f64().unwrap_or(0.0);
        assert!(rps > 0.0, "{name}: requests/s {rps}");
        assert_eq!(load["completed"], 300, "{name}");
        assert_eq!(load["failed"], 0, "{name}");
        assert_eq!(load["non_2xx"], 0, "{name}");
        assert!(server["startup_ms"].as_f64().unwrap_or(0.0) > 0.0, "{name}");
        assert!(server["idle_rss_kib"].as_u64().unwrap_or(0) > 0, "{name}");
    }
    assert_eq!(
        servers[0]["loads"][0]["ratios"]["requests_per_s_median"],
        1.0
    );

    // The chart.
    let svg = read(&out.join("report.svg"));
    assert!(svg.starts_with("<svg"), "{}", &svg[..svg.len().min(200)]);

    // No server left behind: their ports are closed again.
    for server in servers {
        let port = server["port"].as_u64().unwrap() as u16;
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "port {port} still open"
        );
    }
    let _ = fs::remove_dir_all(&dir);
}

/// The conn-daemon binary: `CONN_DAEMON_BIN`, else the workspace build in
/// the directory above this test's `deps/`.
fn conn_daemon() -> PathBuf {
    if let Some(bin) = std::env::var_os("CONN_DAEMON_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable in target/<profile>/deps");
    let bin = profile_dir.join("conn-daemon");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo test --workspace`, or `cargo build -p conn-daemon` first \
         (or set CONN_DAEMON_BIN)",
        bin.display()
    );
    bin
}

/// Runs conn-bench with `args` and `--out out`, bounded in time; returns
/// its status, stdout and stderr.
fn conn_bench(
    dir: &std::path::Path,
    out: &std::path::Path,
    args: &[String],
) -> (std::process::ExitStatus, String, String) {
    let stdout_path = dir.join("stdout.md");
    let stderr_path = dir.join("stderr.txt");
    let mut child = Command::new(env!("CARGO_BIN_EXE_conn-bench"))
        .args(args)
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&stdout_path).unwrap())
        .stderr(fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("running conn-bench");

    // Bounded: a hung server or generator must fail the test, not CI.
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "conn-bench still running after 120 s; stderr: {}",
                read(&stderr_path)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    (status, read(&stdout_path), read(&stderr_path))
}

/// The CPUs this process may use, as the kernel lists them.
fn allowed_cpus() -> usize {
    let status = fs::read_to_string("/proc/self/status").unwrap();
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap();
    list.trim()
        .split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.parse::<usize>().unwrap() - a.parse::<usize>().unwrap() + 1,
            None => 1,
        })
        .sum()
}

/// A sweep over `1` and the machine's whole CPU count: the latter leaves no
/// CPU for the generator and must be skipped with a note, the former runs
/// with `{threads}` replaced, pinned, and with the client-side figures.
#[test]
fn sweeps_thread_counts_and_skips_what_the_machine_cannot_give() {
    let n = allowed_cpus();
    assert!(n >= 2, "this test needs 2 CPUs, the project's machine size");
    let dir = scratch();
    let out = dir.join("out");
    let server = format!(
        "{} -A {{threads}} -w 1 -p {{port}}",
        conn_daemon().display()
    );
    let args: Vec<String> = [
        "--server".to_string(),
        format!("cd={server}"),
        "--threads".into(),
        format!("1,{n}"),
        "--rounds".into(),
        "1".into(),
        "-n".into(),
        "2000".into(),
        "-c".into(),
        "10".into(),
    ]
    .into();
    let (status, stdout, stderr) = conn_bench(&dir, &out, &args);
    assert!(
        status.success(),
        "conn-bench failed ({status}):\n{stderr}\n{stdout}"
    );
    let skipped = format!("threads={n} skipped");
    assert!(stderr.contains(&skipped), "{stderr}");
    assert!(
        stdout.contains(&skipped),
        "the note is in the report: {stdout}"
    );
    assert!(stdout.contains("| threads | server | load |"), "{stdout}");
    assert!(stdout.contains("| 1 | cd | fast |"), "{stdout}");

    let json = report_json(&out);
    let rows = json["servers"].as_array().expect("servers array");
    assert_eq!(rows.len(), 1, "only threads=1 ran: {json}");
    let row = &rows[0];
    assert_eq!(row["threads"], 1);
    assert!(row["command"].as_str().unwrap().contains(" -A 1 "), "{row}");
    assert_eq!(row["server_cpus"].as_array().unwrap().len(), 1, "{row}");
    assert!(row["client_bound"].is_boolean(), "{row}");
    assert_eq!(row["loads"][0]["completed"], 2000);
    assert_eq!(row["loads"][0]["failed"], 0);
    // ab keeps its one thread busy for the whole run: some client CPU shows.
    let client = row["client_cpu_util"].as_f64().unwrap_or(0.0);
    assert!(client > 0.0 && client < 1.5, "client CPU share {client}");
    assert!(row["wall_s_total"].as_f64().unwrap_or(0.0) > 0.0, "{row}");
    let chart = read(&out.join("scaling.svg"));
    assert!(chart.starts_with("<svg") && chart.contains("cd"), "{chart}");
    let _ = fs::remove_dir_all(&dir);
}

fn report_json(out: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&read(&out.join("report.json"))).expect("report.json parses")
}

fn read(path: &std::path::Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Whether `program` is on PATH. The test fails rather than skips without
/// it, so a machine missing the package cannot pass vacuously.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}
