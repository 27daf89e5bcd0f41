//! Runs the web app's browser tests (apps/home-messenger/web/test/, node's
//! test runner, playwright-core driving Debian's chromium headless) against
//! a real gateway and the adapter started here, with the `interop` CLI as
//! the Signal user.
//!
//! Needs `npm ci && npm run build` in apps/home-messenger/web and
//! /usr/bin/chromium (`scripts/test` sees to both). Without them the test
//! says so and passes, except in CI (`CI=true`), where it fails.

mod common;

use std::path::PathBuf;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_app_in_a_real_browser() {
    let web = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("web");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let missing: Vec<String> = [
        (
            web.join("dist/app.js"),
            "the built web app (npm ci && npm run build)",
        ),
        (
            web.join("node_modules/playwright-core"),
            "playwright-core (npm ci)",
        ),
        (
            PathBuf::from(&chromium),
            "chromium (apt-get install chromium)",
        ),
    ]
    .into_iter()
    .filter(|(p, _)| !p.exists())
    .map(|(_, what)| what.to_owned())
    .collect();
    if !missing.is_empty() {
        let msg = format!("browser tests need: {}", missing.join(", "));
        assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
        eprintln!("SKIPPED: {msg}; scripts/test installs them");
        return;
    }
    let cli = common::binaries()["interop"].clone();
    let env = common::start().await;
    let shots = std::env::var("HOME_MESSENGER_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| web.join("test-results"));
    let mut node = tokio::process::Command::new("node");
    node.arg("--test")
        .arg("--test-reporter=spec")
        .arg("test/")
        .current_dir(&web)
        .env("HOME_MESSENGER_URL", env.server.url())
        .env("INTEROP_CLI", &cli)
        .env("INTEROP_CLIENT_CONFIG", env.dir.path().join("client.toml"))
        .env("SCREENSHOT_DIR", &shots)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true);
    let status = tokio::time::timeout(Duration::from_secs(180), node.status())
        .await
        .expect("the browser tests finish within 180 s")
        .expect("node runs");
    assert!(status.success(), "the browser tests failed: {status}");

    // End to end means the gateway's store never held the plaintext of the
    // encrypted messages, in either direction; the server-visible message
    // sent in the same run is there, so the search does find what is stored.
    let stored = files_under(&env.nats.dir().join("jetstream"));
    let holds = |needle: &str| stored.iter().any(|f| contains(f, needle.as_bytes()));
    assert!(
        holds("hi bob, it's carol"),
        "the server-visible message is in the store"
    );
    for secret in [
        "hello from signal",
        "hi alice, from the browser",
        "a reply, end to end",
        "an edited reply, end to end",
    ] {
        assert!(!holds(secret), "{secret:?} reached the gateway's store");
    }
    env.server.stop();
}

fn files_under(dir: &std::path::Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push(bytes);
            }
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
