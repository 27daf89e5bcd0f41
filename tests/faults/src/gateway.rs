//! The five services as real processes (the binaries `scripts/up` runs,
//! with the flags it passes), each on free loopback ports, one or more
//! replicas each, killable with SIGKILL, stoppable with SIGTERM (their
//! drain) and restartable with the same flags.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::time::Instant;

use interop_loadtest::Target;
use interop_test_support::free_port;

use crate::binaries::{Binaries, SERVICES};

/// Demo providers' tokens (test-only secrets).
pub const HOME_TOKEN: &str = "faults-home-token-0123456789abcdef";
pub const SIGNAL_TOKEN: &str = "faults-signal-token-0123456789abcdef";

/// How long a service may take to become ready after it was (re)started.
/// Generous: on 2 shared cores a debug binary under load starts slowly.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Where the services find NATS and Redis, and how streams are replicated.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// One URL, or several comma-separated (a cluster).
    pub nats_url: String,
    pub redis_url: String,
    pub stream_replicas: usize,
    /// `--log` filter for every service.
    pub log: String,
    /// Processes per service (1 to 8): the first is named after the
    /// service (`ingest`), the others `<service>-<n>` (`ingest-2`), as
    /// `scripts/up --replicas` names them. Replicas of a service with a
    /// port share it (`--listen-reuse-port`).
    pub replicas: usize,
    /// `--inbox-max-per-recipient` for every service (the stores' count
    /// limit); `None`: the services' default.
    pub inbox_max_per_recipient: Option<i64>,
}

impl GatewayOptions {
    pub fn new(nats_url: impl Into<String>, redis_url: impl Into<String>) -> Self {
        Self {
            nats_url: nats_url.into(),
            redis_url: redis_url.into(),
            stream_replicas: 1,
            log: "info".into(),
            replicas: 1,
            inbox_max_per_recipient: None,
        }
    }
}

struct Service {
    /// The instance's name: the service's, or `<service>-<n>`.
    name: String,
    exe: PathBuf,
    args: Vec<String>,
    admin_port: u16,
    log: PathBuf,
    child: Option<Child>,
}

/// The running services; all are killed on drop.
pub struct Gateway {
    dir: tempfile::TempDir,
    services: Vec<Service>,
    pub ingest_url: String,
    pub delivery_url: String,
}

fn providers_toml() -> String {
    let hash = interop_providers::hash_token;
    format!(
        r#"
[[providers]]
id = "home"
display_name = "Home Messenger"
privacy_policy_url = "https://home.example/privacy"
encryption = "e2ee"
token_sha256 = ["{}"]

[[providers]]
id = "signal"
display_name = "Signal"
privacy_policy_url = "https://signal.example/privacy"
encryption = "e2ee"
token_sha256 = ["{}"]
"#,
        hash(HOME_TOKEN),
        hash(SIGNAL_TOKEN)
    )
}

impl Gateway {
    /// Starts the five services and returns once each answers `/readyz`.
    pub async fn start(binaries: &Binaries, options: &GatewayOptions) -> Self {
        let mut gateway = Self::spawn_all(binaries, options);
        for name in gateway.instances() {
            gateway.wait_ready(&name, READY_TIMEOUT).await;
        }
        gateway
    }

    /// Starts the five services without waiting for them to be ready.
    pub fn spawn_all(binaries: &Binaries, options: &GatewayOptions) -> Self {
        // INTEROP_FAULTS_KEEP_LOGS: the dir (the services' logs) outlives
        // the gateway, for looking into a failure afterwards.
        let keep = std::env::var_os("INTEROP_FAULTS_KEEP_LOGS").is_some();
        let dir = tempfile::Builder::new()
            .prefix("interop-faults-")
            .disable_cleanup(keep)
            .tempdir()
            .expect("creating a temp dir");
        if keep {
            eprintln!("gateway logs kept in {}", dir.path().display());
        }
        let providers = dir.path().join("providers.toml");
        std::fs::write(&providers, providers_toml()).expect("writing the providers file");
        let listen: HashMap<&str, u16> = ["ingest", "delivery", "media-transcoding"]
            .into_iter()
            .map(|s| (s, free_port()))
            .collect();
        let replicas = options.replicas.clamp(1, 8);
        let mut services = Vec::new();
        for &service in &SERVICES {
            for k in 1..=replicas {
                let admin_port = free_port();
                let mut args: Vec<String> = vec![
                    "--nats-url".into(),
                    options.nats_url.clone(),
                    "--redis-url".into(),
                    options.redis_url.clone(),
                    "--admin-listen".into(),
                    format!("127.0.0.1:{admin_port}"),
                    "--stream-replicas".into(),
                    options.stream_replicas.to_string(),
                    "--log".into(),
                    options.log.clone(),
                    "--shutdown-grace-secs".into(),
                    "5".into(),
                ];
                if let Some(n) = options.inbox_max_per_recipient {
                    args.extend(["--inbox-max-per-recipient".into(), n.to_string()]);
                }
                if let Some(port) = listen.get(service) {
                    args.extend([
                        "--listen".into(),
                        format!("127.0.0.1:{port}"),
                        "--providers-file".into(),
                        providers.display().to_string(),
                    ]);
                    if replicas > 1 {
                        args.push("--listen-reuse-port".into());
                    }
                }
                let name = if k == 1 {
                    service.to_owned()
                } else {
                    format!("{service}-{k}")
                };
                services.push(Service {
                    exe: binaries.path(service).to_path_buf(),
                    args,
                    admin_port,
                    log: dir.path().join(format!("{name}.log")),
                    name,
                    child: None,
                });
            }
        }
        let mut gateway = Self {
            ingest_url: format!("ws://127.0.0.1:{}/v1/ws", listen["ingest"]),
            delivery_url: format!("ws://127.0.0.1:{}/v1/ws", listen["delivery"]),
            dir,
            services,
        };
        for name in gateway.instances() {
            gateway.spawn(&name);
        }
        gateway
    }

    /// Every process's name (one per replica), in pipeline order.
    pub fn instances(&self) -> Vec<String> {
        self.services.iter().map(|s| s.name.clone()).collect()
    }

    /// What the load generator needs to reach this gateway.
    pub fn target(&self) -> Target {
        Target {
            ingest_url: self.ingest_url.clone(),
            delivery_url: self.delivery_url.clone(),
            media_url: None,
            tokens: HashMap::from([
                ("home".to_owned(), HOME_TOKEN.to_owned()),
                ("signal".to_owned(), SIGNAL_TOKEN.to_owned()),
            ]),
        }
    }

    fn service(&mut self, name: &str) -> &mut Service {
        self.services
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name:?} is not one of {SERVICES:?}"))
    }

    /// Starts `name` (with the flags it had) if it is not running.
    pub fn spawn(&mut self, name: &str) {
        let s = self.service(name);
        if s.child.is_some() {
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&s.log)
            .expect("opening a service log");
        let err = log.try_clone().expect("cloning a file handle");
        let child = Command::new(&s.exe)
            .args(&s.args)
            // Only what we pass: no INTEROP_* from the caller's environment.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", s.exe.display()));
        s.child = Some(child);
    }

    /// Stops `name` with SIGTERM (its drain: the chart's rolling update)
    /// and waits for it to exit, for at most `timeout`; then SIGKILL.
    /// Returns how it exited, or `None` if it had to be killed.
    pub async fn terminate(
        &mut self,
        name: &str,
        timeout: Duration,
    ) -> Option<std::process::ExitStatus> {
        let mut child = self.service(name).child.take()?;
        // `kill -TERM`: no libc binding needed for one signal.
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success());
        let deadline = Instant::now() + timeout;
        while sent && Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        child.kill().ok();
        child.wait().ok();
        None
    }

    /// Kills `name` with SIGKILL (no drain, no flush) and reaps it.
    pub fn kill(&mut self, name: &str) {
        if let Some(mut c) = self.service(name).child.take() {
            // Already exited is fine: the point is that it is gone.
            c.kill().ok();
            c.wait().ok();
        }
    }

    /// The process id of `name`, if running.
    pub fn pid(&mut self, name: &str) -> Option<u32> {
        self.service(name).child.as_ref().map(Child::id)
    }

    /// Whether `name` exited by itself (a crash); its status if so.
    pub fn exited(&mut self, name: &str) -> Option<std::process::ExitStatus> {
        self.service(name)
            .child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    /// The last `lines` lines of `name`'s log (for failure messages).
    pub fn log_tail(&mut self, name: &str, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.service(name).log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Log lines at WARN or ERROR level of every service so far, the last
    /// `max` of each service (for failure messages).
    pub fn warn_lines(&self, max: usize) -> Vec<String> {
        self.services
            .iter()
            .flat_map(|s| {
                let text = std::fs::read_to_string(&s.log).unwrap_or_default();
                let lines: Vec<String> = text
                    .lines()
                    .filter(|l| l.contains("WARN") || l.contains("ERROR"))
                    .map(|l| format!("{}: {l}", s.name))
                    .collect();
                let from = lines.len().saturating_sub(max);
                lines[from..].to_vec()
            })
            .collect()
    }

    /// Log lines at ERROR level of every service so far.
    pub fn error_lines(&self) -> Vec<String> {
        self.services
            .iter()
            .flat_map(|s| {
                std::fs::read_to_string(&s.log)
                    .unwrap_or_default()
                    .lines()
                    .filter(|l| l.contains("ERROR"))
                    .map(|l| format!("{}: {l}", s.name))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// Waits until `name` answers `/readyz` with 200; panics with its log
    /// after `timeout` or if it exits.
    pub async fn wait_ready(&mut self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let port = self.service(name).admin_port;
        loop {
            if http_status(port, "/readyz").await == Some(200) {
                return;
            }
            if let Some(status) = self.exited(name) {
                panic!(
                    "{name} exited with {status}; its log:\n{}",
                    self.log_tail(name, 30)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "{name} was not ready within {timeout:?}; its log:\n{}",
                    self.log_tail(name, 30)
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `name`'s answer to `GET /readyz` (status and body), if it answers.
    pub async fn readyz(&mut self, name: &str) -> Option<(u16, String)> {
        let port = self.service(name).admin_port;
        http_get(port, "/readyz").await
    }

    /// Whether every service answers `/readyz` with 200 right now.
    pub async fn all_ready(&self) -> bool {
        for s in &self.services {
            if http_status(s.admin_port, "/readyz").await != Some(200) {
                return false;
            }
        }
        true
    }

    /// Where the logs are (kept until the gateway is dropped).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        for s in &mut self.services {
            if let Some(mut c) = s.child.take() {
                c.kill().ok();
                c.wait().ok();
            }
        }
    }
}

/// The status code of `GET <path>` on the loopback port, or `None` if it
/// does not answer within a second.
pub async fn http_status(port: u16, path: &str) -> Option<u16> {
    http_get(port, path).await.map(|(status, _)| status)
}

/// The status code and body of `GET <path>` on the loopback port, or `None`
/// if it does not answer within a second.
pub async fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let ask = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        )
        .await
        .ok()?;
        let mut response = Vec::new();
        s.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8_lossy(&response);
        // "HTTP/1.1 200 OK\r\n...\r\n\r\nbody"
        let status = text.get(9..12)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        Some((status, body.to_owned()))
    };
    tokio::time::timeout(Duration::from_secs(1), ask)
        .await
        .ok()
        .flatten()
}
