//! The programs in `examples/`, built for the tests that run them as processes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

/// Path of example `name`'s binary, built first (once per test process) with
/// the profile of this test binary: a no-op when `cargo test` has just built it.
/// Panics with cargo's output if it does not build.
pub fn build(name: &str) -> PathBuf {
    // Each name's outcome, kept so a failed build is reported to every test
    // that wants it; the lock makes two tests wait on one build.
    static BUILT: OnceLock<Mutex<HashMap<String, Result<(), String>>>> = OnceLock::new();
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let outcome = built
        .entry(name.to_string())
        .or_insert_with(|| {
            let mut cargo = Command::new(env!("CARGO"));
            cargo
                .args(["build", "--example", name, "--quiet"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.ends_with("release") {
                cargo.arg("--release");
            }
            let out = cargo.output().map_err(|e| format!("run cargo: {e}"))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        })
        .clone();
    drop(built);
    if let Err(e) = outcome {
        panic!("cargo build --example {name} failed:\n{e}");
    }
    profile_dir.join("examples").join(name)
}
