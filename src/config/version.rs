//! What runs: the version, the git commit it was built from (and whether the
//! tree was modified), the build profile, and the package version when a
//! package build set one; written by `build.rs`, shown by `--version` and
//! `conn_daemon_build_info`.
#![forbid(unsafe_code)]

/// The crate's version (`Cargo.toml`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit built (12 hex digits), or `unknown` outside a checkout.
pub const GIT_COMMIT: &str = env!("CONN_DAEMON_GIT_COMMIT");
/// `true` if tracked files differed from [`GIT_COMMIT`] at build time.
pub const GIT_MODIFIED: &str = env!("CONN_DAEMON_GIT_MODIFIED");
/// Cargo's profile: `debug` or `release`.
pub const PROFILE: &str = env!("CONN_DAEMON_PROFILE");
/// The package version the build is for (contrib/debian/build.sh: the Debian
/// version, such as `0.1.0-2`); empty for a plain cargo build.
pub const PACKAGE: &str = env!("CONN_DAEMON_PACKAGE");

/// What `--version` prints after the name: `0.1.0 (git 0123456789ab,
/// modified, release build, package 0.1.0-2)`.
pub const DESCRIPTION: &str = env!("CONN_DAEMON_DESCRIPTION");
