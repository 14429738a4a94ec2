//! `--version`: the version, the git commit built and whether the tree was
//! modified, the build profile; `conn_daemon_build_info` carries the same.

use std::process::Command;

mod util;

use util::metrics::{free_addr, Scrape};
use util::Server;

/// What git says of this checkout: (commit, modified), or None outside one.
fn git() -> Option<(String, bool)> {
    let run = |args: &[&str]| {
        let out = Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = run(&["rev-parse", "--short=12", "HEAD"])?;
    let modified = !run(&["status", "--porcelain", "--untracked-files=no"])?.is_empty();
    Some((commit, modified))
}

#[test]
fn version_names_the_commit_and_the_profile() {
    let out = Command::new(util::bin()).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let prefix = format!("conn-daemon {} (git ", env!("CARGO_PKG_VERSION"));
    assert!(text.starts_with(&prefix), "{text:?}");
    let inside = text
        .strip_prefix(&prefix)
        .and_then(|t| t.strip_suffix(")\n"))
        .unwrap_or_else(|| panic!("{text:?}"));
    let parts: Vec<&str> = inside.split(", ").collect();
    let commit = parts[0];
    assert!(
        commit == "unknown"
            || (commit.len() == 12 && commit.chars().all(|c| c.is_ascii_hexdigit())),
        "{text:?}"
    );
    assert!(
        parts.contains(&format!("{profile} build").as_str()),
        "{text:?}"
    );
    let modified = parts.contains(&"modified");
    // Built from this checkout: its HEAD (the build reruns when HEAD or the
    // index moves, so a commit since the build rebuilt it). Whether the tree
    // was modified is as of that build: only a clean tree can be checked.
    if let Some((head, dirty)) = git() {
        assert_eq!(commit, head, "{text:?}");
        if !dirty {
            assert!(!modified, "a clean tree built as modified: {text:?}");
        }
    }
    // The package version only from contrib/debian/build.sh.
    if std::env::var_os("CONN_DAEMON_PACKAGE").is_none() {
        assert!(!text.contains("package"), "{text:?}");
    }

    // The metric carries the same.
    let metrics = free_addr();
    let _server = Server::start(&["--metrics", &metrics.to_string()]);
    let m = Scrape::get(metrics);
    let series = format!(
        "conn_daemon_build_info{{version=\"{}\",commit=\"{commit}\",modified=\"{modified}\",\
         profile=\"{profile}\",package=\"\",libev=\"4.33\",delegate=\"{}\"}}",
        env!("CARGO_PKG_VERSION"),
        util::delegate_mode()
    );
    assert_eq!(m.sample(&series), Some(1.0), "{series} in\n{}", m.text);
}
