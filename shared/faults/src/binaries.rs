//! Finding the five service binaries.
//!
//! The fault suite runs the services as real processes, so it needs their
//! executables, built with the same profile as the test. [`Binaries::build`]
//! asks Cargo for them (`cargo build --bins -p <each service>
//! --message-format=json`, same target dir and profile as the running test)
//! and takes the paths Cargo reports. `cargo test` builds the binaries of
//! only those packages that have integration tests, so the first run in a
//! target dir builds the rest (their dependencies are already built); later
//! runs are a no-op of about a second, and a stale binary is never run.
//! Cargo releases its build lock before it runs tests, so the nested call
//! does not wait.
//! [`Binaries::beside_current_exe`] is for the soak binary, which
//! `scripts/soak` builds together with the services.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context as _};

/// The services, in pipeline order (their package is `interop-<name>`).
pub const SERVICES: [&str; 5] = [
    "ingest",
    "spam-scoring",
    "routing",
    "media-transcoding",
    "delivery",
];

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

/// Each service's executable.
#[derive(Debug, Clone)]
pub struct Binaries {
    paths: HashMap<&'static str, PathBuf>,
}

impl Binaries {
    /// The executable of `service` (one of [`SERVICES`]).
    pub fn path(&self, service: &str) -> &Path {
        // Constructors fill every entry of SERVICES; callers pass those names.
        self.paths
            .get(service)
            .unwrap_or_else(|| panic!("{service:?} is not one of {SERVICES:?}"))
    }

    /// Binaries in the same directory as the running executable.
    pub fn beside_current_exe() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the running executable")?;
        let dir = exe.parent().context("the executable has a directory")?;
        let mut paths = HashMap::new();
        for s in SERVICES {
            let p = dir.join(s);
            if !p.is_file() {
                bail!(
                    "{} is missing: build the workspace's binaries first (`cargo build --release --workspace --bins`)",
                    p.display()
                );
            }
            paths.insert(s, p);
        }
        Ok(Self { paths })
    }

    /// Builds the service binaries with Cargo (a no-op when they are fresh)
    /// in the running test's target dir and profile, and returns their paths.
    pub fn build() -> anyhow::Result<Self> {
        let exe = std::env::current_exe().context("locating the running test")?;
        // <target>/<profile>/deps/<test>-<hash>, or with --target:
        // <target>/<triple>/<profile>/deps/<test>-<hash>.
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .context("the test executable is not inside a Cargo target dir")?;
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") | None => "dev".to_owned(),
            Some(other) => other.to_owned(),
        };
        let target_dir = profile_dir
            .ancestors()
            .find(|d| d.join("CACHEDIR.TAG").is_file())
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from));
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut cmd = Command::new(cargo);
        // Cargo gives a test process the variables of the test's own
        // package (CARGO_MANIFEST_DIR, CARGO_PKG_*, ...). Passed on, some
        // build scripts see them as changed and everything above them is
        // rebuilt, and rebuilt again by the next plain `cargo` command.
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
        for s in SERVICES {
            cmd.args(["-p", &format!("interop-{s}")]);
        }
        if let Some(dir) = &target_dir {
            cmd.arg("--target-dir").arg(dir);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .context("running cargo to build the service binaries")?;
        if !out.status.success() {
            bail!(
                "cargo build of the service binaries failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut paths = HashMap::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let (Some(name), Some(exe)) =
                (msg["target"]["name"].as_str(), msg["executable"].as_str())
            else {
                continue;
            };
            if let Some(s) = SERVICES.iter().find(|s| **s == name) {
                paths.insert(*s, PathBuf::from(exe));
            }
        }
        for s in SERVICES {
            if !paths.contains_key(s) {
                bail!("cargo did not report an executable for {s}");
            }
        }
        Ok(Self { paths })
    }
}
