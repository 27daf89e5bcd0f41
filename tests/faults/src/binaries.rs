//! Finding the five service binaries.
//!
//! The fault suite runs the services as real processes, so it needs their
//! executables, built with the same profile as the test: [`Binaries::build`]
//! asks Cargo for them through [`interop_test_support::build_bins`].
//! [`Binaries::beside_current_exe`] is for the soak binary, which
//! `scripts/soak` builds together with the services.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

/// The services, in pipeline order (their package is `interop-<name>`).
pub const SERVICES: [&str; 5] = [
    "ingest",
    "spam-scoring",
    "routing",
    "media-transcoding",
    "delivery",
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
        let packages: Vec<String> = SERVICES.iter().map(|s| format!("interop-{s}")).collect();
        let packages: Vec<&str> = packages.iter().map(String::as_str).collect();
        let mut built = interop_test_support::build_bins(&packages).map_err(anyhow::Error::msg)?;
        let mut paths = HashMap::new();
        for s in SERVICES {
            let Some(p) = built.remove(s) else {
                bail!("cargo did not report an executable for {s}");
            };
            paths.insert(s, p);
        }
        Ok(Self { paths })
    }
}
