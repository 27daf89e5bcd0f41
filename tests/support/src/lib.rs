//! Starts the real `nats-server` (with JetStream) and `redis-server` for
//! tests, each on a free loopback port with its data in a temp dir, and kills
//! and cleans them up on drop.
//!
//! ```no_run
//! let nats = interop_test_support::NatsServer::start();
//! let redis = interop_test_support::RedisServer::start();
//! println!("{} {}", nats.url(), redis.url());
//! ```
//!
//! A missing binary panics with the command that installs it: these are test
//! helpers, and a panic with a clear message is the right failure there.
//!
//! For fault tests: [`NatsCluster`] (clustered JetStream nodes that can be
//! killed and restarted one at a time) and [`ChaosProxy`] (a TCP proxy that
//! delays, blackholes or cuts connections on demand).

mod cargo_bins;
mod chaos;
mod cluster;

pub use cargo_bins::build_bins;
pub use chaos::{ChaosProxy, Mode};
pub use cluster::{NatsCluster, CLUSTER_NAME};

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const START_TIMEOUT: Duration = Duration::from_secs(20);

fn spawn(binary: &str, package: &str, args: &[String]) -> Child {
    spawn_with(binary, package, args, |c| c)
}

/// [`spawn`], with the process's group id set to `gid` (root may; see
/// `NatsCluster::partition`).
fn spawn_as(binary: &str, package: &str, args: &[String], gid: u32) -> Child {
    use std::os::unix::process::CommandExt as _;
    spawn_with(binary, package, args, |c| c.gid(gid))
}

fn spawn_with(
    binary: &str,
    package: &str,
    args: &[String],
    with: impl FnOnce(&mut Command) -> &mut Command,
) -> Child {
    with(
        Command::new(binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .spawn()
        .unwrap_or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                panic!("`{binary}` is not installed: run `sudo apt-get install -y {package}` (or `scripts/test`, which installs it)")
            }
            panic!("cannot start `{binary}`: {e}")
        })
}

fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        // Already exited is fine: the point is that it is gone.
        c.kill().ok();
        c.wait().ok();
    }
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited during start-up with {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port} within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the Redis server answering on `port` is process `pid` and
/// serving (`INFO server` answers with its `process_id`; a server still
/// loading its data answers `-LOADING`).
fn served_by(port: u16, pid: u32) -> bool {
    use std::io::Write;
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if s.set_read_timeout(Some(Duration::from_secs(1))).is_err()
        || s.write_all(b"INFO server\r\n").is_err()
    {
        return false;
    }
    let want = format!("\r\nprocess_id:{pid}\r\n");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.len() < 64 * 1024 {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        if got.first() == Some(&b'-') {
            return false;
        }
        if got.windows(want.len()).any(|w| w == want.as_bytes()) {
            return true;
        }
    }
    false
}

/// A free TCP port on loopback, from below the kernel's ephemeral range.
///
/// Ports the OS hands out for port 0 come from the ephemeral range, the same
/// range every outgoing connection takes its local port from: a port picked
/// that way and bound a moment later by a service (or re-bound by a service
/// restarted after kill -9) could meanwhile be the local end of some client's
/// connection. The fault suite saw exactly that ("Address already in use" on
/// an admin port). Ports below the ephemeral range are never used for
/// outgoing connections, and a process-wide counter keeps picks distinct
/// within a test binary. Falls back to port 0 when there is no room below.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const LOW: u32 = 20_000;
    let high = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32_768);
    if high > LOW + 1_000 {
        let span = high - LOW;
        // Spread test binaries (run one after another) over the range.
        let seed = std::process::id() % span + 1;
        // Losing this race means another thread seeded the counter: fine.
        let _seeded = NEXT.compare_exchange(0, seed, Ordering::Relaxed, Ordering::Relaxed);
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = LOW + n % span;
            if let Ok(port) = u16::try_from(port) {
                if TcpListener::bind(("127.0.0.1", port)).is_ok() {
                    return port;
                }
            }
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding port 0 on loopback");
    listener
        .local_addr()
        .expect("bound listener has an address")
        .port()
}

/// A `nats-server -js` on a free port. Stop and start it again with
/// [`NatsServer::stop`] / [`NatsServer::restart`]: it keeps its port and its
/// JetStream store, like a restarted production node.
///
/// The port comes from [`free_port`] (below the kernel's ephemeral range),
/// not from the server's own random pick: while a killed server is down,
/// clients keep connecting to its port, and a connect to a loopback port in
/// the ephemeral range where nothing listens can get that very port as its
/// own local port and connect to itself (TCP simultaneous open), which then
/// holds the port the restarted server needs.
pub struct NatsServer {
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// Flags beyond the defaults: TLS and credentials.
    extra: Vec<String>,
}

/// A server's TLS material, PEM files the test made (for example with
/// `rcgen`). The certificate must name `127.0.0.1`, the address the servers
/// listen on and their URLs use.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// With a CA, clients must present a certificate it signed (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

impl NatsServer {
    pub fn start() -> Self {
        let mut server = Self::unstarted(Vec::new());
        server.spawn_anywhere();
        server
    }

    /// A server not yet started, with its temp dir and `extra` flags.
    fn unstarted(extra: Vec<String>) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("interop-nats-")
            .tempdir()
            .expect("creating a temp dir");
        Self {
            dir,
            port: 0,
            child: None,
            extra,
        }
    }

    /// A `nats-server -js` that speaks only TLS, and with `user` requires
    /// that user and password.
    pub fn start_secured(tls: &ServerTls, user: Option<(&str, &str)>) -> Self {
        let mut extra: Vec<String> = vec![
            "--tls".into(),
            "--tlscert".into(),
            tls.cert.display().to_string(),
            "--tlskey".into(),
            tls.key.display().to_string(),
        ];
        if let Some(ca) = &tls.client_ca {
            extra.extend([
                "--tlsverify".into(),
                "--tlscacert".into(),
                ca.display().to_string(),
            ]);
        }
        if let Some((u, p)) = user {
            extra.extend(["--user".into(), u.into(), "--pass".into(), p.into()]);
        }
        let mut server = Self::unstarted(extra);
        server.spawn_anywhere();
        server
    }

    fn spawn_anywhere(&mut self) {
        let server = self;
        for attempt in 0.. {
            match server.spawn_on_port(free_port()) {
                Ok(()) => break,
                // Most likely the port was taken meanwhile: take another.
                Err(e) => assert!(attempt < 5, "nats-server failed to start five times: {e}"),
            }
        }
    }

    /// A `nats-server -js` on `port`, which must be free.
    pub fn start_on(port: u16) -> Self {
        let mut server = Self::unstarted(Vec::new());
        if let Err(e) = server.spawn_on_port(port) {
            panic!("nats-server did not start on port {port}: {e}");
        }
        server
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    fn spawn_on_port(&mut self, port: u16) -> Result<(), String> {
        let log = self.log_path();
        std::fs::remove_file(&log).ok();
        let store = self.dir.path().join("jetstream");
        let mut args: Vec<String> = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
            "-js".into(),
            "-sd".into(),
            store.display().to_string(),
            "-l".into(),
            log.display().to_string(),
        ];
        args.extend(self.extra.iter().cloned());
        // A Go panic goes to stderr, not to the log: keep it beside the log.
        let stderr = std::fs::File::create(self.dir.path().join("stderr.log"))
            .map_err(|e| format!("creating nats-server's stderr file: {e}"))?;
        let mut child = spawn_with("nats-server", "nats-server", &args, |c| c.stderr(stderr));
        let deadline = Instant::now() + START_TIMEOUT;
        // JetStream is ready once the server says so.
        while !read_file(&log).contains("Server is ready") {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "nats-server exited during start-up with {status}; log: {}",
                    read_file(&log)
                ));
            }
            if Instant::now() > deadline {
                kill(&mut Some(child));
                return Err(format!("nats-server not ready; log: {}", read_file(&log)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        wait_for_port(port, &mut child, "nats-server");
        self.port = port;
        self.child = Some(child);
        Ok(())
    }

    /// The server's folder: its JetStream store (`jetstream/`) and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL), keeping its store.
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts the server again on the same port with the same store.
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        if let Err(e) = self.spawn_on_port(port) {
            panic!("nats-server did not restart on port {port}: {e}");
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

fn read_file(path: &Path) -> String {
    let mut s = String::new();
    if let Ok(mut f) = std::fs::File::open(path) {
        f.read_to_string(&mut s).ok();
    }
    s
}

/// A `redis-server` on a free port, without persistence unless asked.
pub struct RedisServer {
    dir: tempfile::TempDir,
    port: u16,
    persistence: bool,
    child: Option<Child>,
    /// TLS-only with these files, and a password if any.
    tls: Option<ServerTls>,
    password: Option<String>,
    /// Redis's `key-load-delay` (microseconds a key) for the next start.
    key_load_delay_us: Option<u64>,
}

impl RedisServer {
    /// Redis with persistence off (state is rebuildable; see DESIGN).
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Redis with append-only-file persistence (fsync every write).
    pub fn start_persistent() -> Self {
        Self::start_with(true)
    }

    /// Redis that speaks only TLS (`rediss://`), and with a password
    /// requires it (`requirepass`).
    pub fn start_secured(tls: &ServerTls, password: Option<&str>) -> Self {
        Self::start_configured(false, Some(tls.clone()), password.map(str::to_owned))
    }

    fn start_with(persistence: bool) -> Self {
        Self::start_configured(persistence, None, None)
    }

    fn start_configured(
        persistence: bool,
        tls: Option<ServerTls>,
        password: Option<String>,
    ) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("interop-redis-")
            .tempdir()
            .expect("creating a temp dir");
        let mut server = Self {
            dir,
            port: 0,
            persistence,
            child: None,
            tls,
            password,
            key_load_delay_us: None,
        };
        for attempt in 0.. {
            let port = free_port();
            if server.spawn_on_port(port) {
                break;
            }
            assert!(attempt < 5, "redis-server failed to start five times");
        }
        server
    }

    fn spawn_on_port(&mut self, port: u16) -> bool {
        let aof = if self.persistence { "yes" } else { "no" };
        let port_flag = if self.tls.is_some() {
            "--tls-port"
        } else {
            "--port"
        };
        let mut args: Vec<String> = [
            "--bind",
            "127.0.0.1",
            port_flag,
            &port.to_string(),
            "--dir",
            &self.dir.path().display().to_string(),
            "--save",
            "",
            "--appendonly",
            aof,
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
            "--logfile",
            "redis.log",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        if let Some(tls) = &self.tls {
            args.extend(["--port".into(), "0".into()]);
            args.extend(["--tls-cert-file".into(), tls.cert.display().to_string()]);
            args.extend(["--tls-key-file".into(), tls.key.display().to_string()]);
            match &tls.client_ca {
                Some(ca) => args.extend(["--tls-ca-cert-file".into(), ca.display().to_string()]),
                None => {
                    // Redis wants a CA even when it asks no client certificate.
                    args.extend(["--tls-ca-cert-file".into(), tls.cert.display().to_string()]);
                    args.extend(["--tls-auth-clients".into(), "no".into()]);
                }
            }
        }
        if let Some(p) = &self.password {
            args.extend(["--requirepass".into(), p.clone()]);
        }
        if let Some(us) = self.key_load_delay_us {
            args.extend(["--key-load-delay".into(), us.to_string()]);
        }
        let log = self.dir.path().join("redis.log");
        std::fs::remove_file(&log).ok();
        let mut child = spawn("redis-server", "redis-server", &args);
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            // Ready when our child answers on the port: a port that only
            // accepts (another process, or a server still loading) does not
            // count. A TLS or password-protected server cannot be asked in
            // plain text: its own log (in our temp dir) says when it is ready.
            let ready = if self.tls.is_some() || self.password.is_some() {
                read_file(&log).contains("Ready to accept connections")
                    && TcpStream::connect(("127.0.0.1", port)).is_ok()
            } else {
                served_by(port, child.id())
            };
            if ready {
                self.port = port;
                self.child = Some(child);
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                return false; // Most likely the port was taken meanwhile.
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `redis://127.0.0.1:<port>`, or `rediss://` for a TLS server. The
    /// password, if any, is not in it.
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the server (SIGKILL).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Makes the next start (a [`restart`](Self::restart) of a persistent
    /// server) take about `total` to load the keys the server holds now, as
    /// a large production data set does: Redis answers `LOADING` meanwhile.
    /// Rewrites the AOF first (its base is then an RDB snapshot of every
    /// key) and sets Redis's `key-load-delay`, which slows the loading of
    /// that snapshot key by key; writes after the rewrite load at full
    /// speed. Plain-text servers only.
    pub fn slow_next_load(&mut self, total: Duration) {
        assert!(self.persistence, "only a persistent server loads data");
        let command = |cmd: &str| -> String {
            use std::io::Write;
            let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("connecting to redis");
            s.set_read_timeout(Some(Duration::from_secs(5))).ok();
            s.write_all(format!("{cmd}\r\n").as_bytes())
                .expect("writing to redis");
            let mut buf = vec![0u8; 64 * 1024];
            let n = s.read(&mut buf).expect("reading from redis");
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        let reply = command("BGREWRITEAOF");
        assert!(reply.starts_with('+'), "BGREWRITEAOF refused: {reply}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let info = command("INFO persistence");
            if info.contains("aof_rewrite_in_progress:0")
                && info.contains("aof_rewrite_scheduled:0")
            {
                break;
            }
            assert!(Instant::now() < deadline, "the AOF rewrite took over 120 s");
            std::thread::sleep(Duration::from_millis(50));
        }
        let keys: u64 = command("DBSIZE")
            .trim()
            .trim_start_matches(':')
            .parse()
            .expect("DBSIZE answers an integer");
        let total_us = u64::try_from(total.as_micros()).unwrap_or(u64::MAX);
        self.key_load_delay_us = Some(total_us / keys.max(1));
    }

    /// Starts it again on the same port and dir (with the AOF, if persistent).
    pub fn restart(&mut self) {
        self.stop();
        let port = self.port;
        assert!(
            self.spawn_on_port(port),
            "redis-server did not restart on port {port}"
        );
        // The slow load was for this start only (Redis keeps the setting
        // while it runs; the next start goes at full speed).
        self.key_load_delay_us = None;
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        kill(&mut self.child);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn nats_starts_and_restarts_on_the_same_port() {
        let mut nats = NatsServer::start();
        let port = nats.port();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
        nats.stop();
        assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
        nats.restart();
        assert_eq!(nats.port(), port);
        assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    }

    #[test]
    fn redis_answers_ping() {
        let redis = RedisServer::start();
        let mut s = TcpStream::connect(("127.0.0.1", redis.port())).unwrap();
        s.write_all(b"PING\r\n").unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"+PONG\r\n");
    }
}
