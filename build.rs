//! Builds the vendored libev and the small C shim the Rust FFI layer calls.
//!
//! Every libev configuration define is stated here, once, and passed to every C
//! file, because the layout of libev's watcher structs depends on them and
//! `src/sys.rs` mirrors that layout by hand (checked by `tests/layout.rs`).

use std::path::Path;

/// The libev configuration, shared by `ev.c` and the shim so both agree on layout.
///
/// Why each group is set:
/// - layout: `EV_MULTIPLICITY` (one loop per accept thread), `EV_COMMON` (one
///   `data` pointer), no priorities (no `priority` field in watchers);
/// - features: every watcher kind a ported server uses on Linux (io, timer,
///   async, signal, child, periodic, stat, idle, prepare, check, fork, cleanup);
///   only `ev_embed` (a loop inside another, which epoll cannot embed) is out.
///   The server itself uses io, timer and async; the others cost it nothing per
///   connection (a few compares per loop iteration: bench/lean.sh rows 5 and 6);
/// - backends: epoll only, the reference's backend on Linux;
/// - OS: eventfd for `ev_async`, `clock_gettime` through the vDSO (the raw clock
///   syscall would cost a system call per loop iteration).
const LIBEV_DEFINES: &[(&str, &str)] = &[
    ("EV_STANDALONE", "1"),
    ("EV_FEATURES", "0x0b"), // code speed, data speed, API; no implicit watchers/backends/OS
    ("EV_MULTIPLICITY", "1"),
    ("EV_COMMON", "void *data;"),
    ("EV_MINPRI", "0"),
    ("EV_MAXPRI", "0"),
    ("EV_VERIFY", "0"),
    ("EV_COMPAT3", "0"),
    ("EV_PERIODIC_ENABLE", "1"),
    ("EV_STAT_ENABLE", "1"),
    ("EV_PREPARE_ENABLE", "1"),
    ("EV_CHECK_ENABLE", "1"),
    ("EV_IDLE_ENABLE", "1"),
    ("EV_FORK_ENABLE", "1"),
    ("EV_CLEANUP_ENABLE", "1"),
    ("EV_SIGNAL_ENABLE", "1"),
    ("EV_CHILD_ENABLE", "1"),
    ("EV_ASYNC_ENABLE", "1"),
    ("EV_EMBED_ENABLE", "0"),
    ("EV_USE_EPOLL", "1"),
    ("EV_USE_POLL", "0"),
    ("EV_USE_SELECT", "0"),
    ("EV_USE_LINUXAIO", "0"),
    ("EV_USE_IOURING", "0"),
    ("EV_USE_KQUEUE", "0"),
    ("EV_USE_PORT", "0"),
    ("EV_USE_INOTIFY", "0"),
    ("EV_USE_SIGNALFD", "0"),
    ("EV_USE_TIMERFD", "0"),
    ("EV_USE_EVENTFD", "1"),
    ("EV_USE_MONOTONIC", "1"),
    ("EV_USE_REALTIME", "0"),
    ("EV_USE_CLOCK_SYSCALL", "0"),
    ("EV_USE_NANOSLEEP", "1"),
    ("EV_USE_FLOOR", "0"),
    ("EV_USE_4HEAP", "1"),
    ("EV_HEAP_CACHE_AT", "1"),
];

const LIBEV_DIR: &str = "vendor/libev";
const SHIM: &str = "src/shim.c";
/// `ev.c` plus the accessors that need libev's private loop struct.
const UNIT: &str = "src/ev_unit.c";

fn main() {
    rerun_if_changed();
    build_identity();
    // The shim calls into libev, so it must come first on the static link line.
    build_shim();
    build_libev();
}

/// Rebuild when the vendored tree or the shim changes, and only then.
fn rerun_if_changed() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed={LIBEV_DIR}");
    println!("cargo:rerun-if-changed={SHIM}");
    println!("cargo:rerun-if-changed={UNIT}");
}

/// A `cc::Build` with the libev defines; both C libraries start from it.
fn configured() -> cc::Build {
    let mut build = cc::Build::new();
    build.include(LIBEV_DIR).opt_level(2);
    for (name, value) in LIBEV_DEFINES {
        build.define(name, Some(*value));
    }
    build
}

/// libev itself, compiled through `src/ev_unit.c` (which includes `ev.c`). Its
/// warnings are upstream's business: silenced for this file only.
fn build_libev() {
    println!(
        "cargo:rerun-if-changed={}",
        Path::new(LIBEV_DIR).join("ev.c").display()
    );
    configured()
        .file(UNIT)
        .warnings(false)
        .flag_if_supported("-w")
        .compile("ev");
}

/// Our shim: turns libev's init/set macros into functions and reports struct
/// layout for the layout test. Our own C, so warnings stay on and are errors.
fn build_shim() {
    configured()
        .file(SHIM)
        .warnings(true)
        .warnings_into_errors(true)
        // Without priorities, libev's `ev_init` expands `ev_set_priority` to a no-op
        // comma expression: upstream's macro, not our code.
        .flag("-Wno-unused-value")
        .compile("ev_shim");
}

// --- Build identity: what `--version` and `conn_daemon_build_info` say -------
// Separate from the libev build above: only rustc-env variables, read by
// src/config/version.rs.
//
// - CONN_DAEMON_GIT_COMMIT: the commit built (12 hex digits), `unknown`
//   outside a git checkout (a crate tarball);
// - CONN_DAEMON_GIT_MODIFIED: `true` if tracked files differed from it when
//   this ran (it reruns when HEAD, the branch or the index moves), else `false`;
// - CONN_DAEMON_PROFILE: cargo's profile (`debug`, `release`);
// - CONN_DAEMON_PACKAGE: the package version the build is for, from the
//   environment variable of that name (contrib/debian/build.sh sets the
//   Debian version); empty otherwise;
// - CONN_DAEMON_DESCRIPTION: all of it as `--version` prints it after the name:
//   `0.1.0 (git 0123456789ab, modified, release build, package 0.1.0-2)`.
fn build_identity() {
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).filter(|c| !c.is_empty());
    let modified = commit.is_some()
        && git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    if commit.is_some() {
        let mut watched = vec!["HEAD".to_string(), "index".to_string()];
        watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
        for path in watched {
            if let Some(p) = git(&["rev-parse", "--git-path", &path]) {
                println!("cargo:rerun-if-changed={p}");
            }
        }
    }
    println!("cargo:rerun-if-env-changed=CONN_DAEMON_PACKAGE");
    let package = std::env::var("CONN_DAEMON_PACKAGE").unwrap_or_default();
    let profile = std::env::var("PROFILE").unwrap_or_else(|_| "unknown".into());
    println!(
        "cargo:rustc-env=CONN_DAEMON_GIT_COMMIT={}",
        commit.as_deref().unwrap_or("unknown")
    );
    println!("cargo:rustc-env=CONN_DAEMON_GIT_MODIFIED={modified}");
    println!("cargo:rustc-env=CONN_DAEMON_PROFILE={profile}");
    println!("cargo:rustc-env=CONN_DAEMON_PACKAGE={package}");
    let mut description = format!(
        "{} (git {}",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default(),
        commit.as_deref().unwrap_or("unknown")
    );
    if modified {
        description.push_str(", modified");
    }
    description.push_str(&format!(", {profile} build"));
    if !package.is_empty() {
        description.push_str(&format!(", package {package}"));
    }
    println!("cargo:rustc-env=CONN_DAEMON_DESCRIPTION={description})");
}
