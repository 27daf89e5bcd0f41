//! Building and finding the workspace's binaries from a test.
//!
//! Some tests run a binary of another package as a real process (the fault
//! suite runs the five services, the CLI test runs `interop`). Cargo sets
//! `CARGO_BIN_EXE_<name>` only for a package's own binaries, and `cargo test`
//! builds the binaries of only those packages that have integration tests,
//! so [`build_bins`] asks Cargo for them (`cargo build --bins -p <package>...
//! --message-format=json`, in the running test's target dir and profile) and
//! takes the paths Cargo reports. The first run in a target dir builds what is
//! missing (its dependencies are already built); later runs are a no-op of
//! about a second, and a stale binary is never run. Cargo releases its build
//! lock before it runs tests, so the nested call does not wait.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Variables Cargo sets for the test process that a nested `cargo build`
/// must not inherit.
const TEST_PROCESS_VARS: [&str; 8] = [
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_CRATE_NAME",
    "CARGO_BIN_NAME",
    "CARGO_TARGET_TMPDIR",
    "CARGO_PRIMARY_PACKAGE",
    "CARGO_RUSTC_CURRENT_DIR",
    "OUT_DIR",
];

/// Builds the binaries of `packages` with Cargo (a no-op when they are
/// fresh) in the running test's target dir and profile; each binary's name
/// and path. The error says what failed, Cargo's output included.
pub fn build_bins(packages: &[&str]) -> Result<HashMap<String, PathBuf>, String> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the running test: {e}"))?;
    // <target>/<profile>/deps/<test>-<hash>, or with --target:
    // <target>/<triple>/<profile>/deps/<test>-<hash>.
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .ok_or("the test executable is not inside a Cargo target dir")?;
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev".to_owned(),
        Some(other) => other.to_owned(),
    };
    let target_dir = profile_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .map(Path::to_path_buf)
        .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from));
    // The workspace of the running test: Cargo gives a test process its
    // package's directory. (This crate's own directory, fixed when it was
    // compiled, is only the fallback: a build reused from another checkout
    // of the repository names that checkout.)
    let workspace = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .and_then(|dir| {
            dir.ancestors()
                .find(|d| d.join("Cargo.lock").is_file())
                .map(Path::to_path_buf)
        })
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    // Cargo gives a test process the variables of the test's own package
    // (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...). Passed on, some build scripts
    // see them as changed and everything above them is rebuilt, and rebuilt
    // again by the next plain `cargo` command.
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        if TEST_PROCESS_VARS.contains(&key)
            || key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_EXE_")
        {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(&workspace)
        .args(["build", "--bins", "--message-format=json", "--profile"])
        .arg(&profile);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if let Some(dir) = &target_dir {
        cmd.arg("--target-dir").arg(dir);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running cargo to build {packages:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo build of {packages:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let mut paths = HashMap::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(name), Some(exe)) =
            (msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            paths.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    Ok(paths)
}
