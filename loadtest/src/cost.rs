//! What a delivered message costs in Redis and NATS: Redis's `INFO
//! commandstats` and nats-server's monitoring endpoint (`/varz`), read at
//! the same moments as CPU per process (the start of every measured step
//! and the end of the last, see `cpu.rs`), turned into figures per
//! delivered message: Redis commands and scripts, NATS protocol messages
//! and bytes in and out.
//!
//! Both are read with a few lines of protocol of their own (RESP over TCP,
//! HTTP/1.0), so the generator needs no Redis or HTTP client: a new
//! connection for every reading, closed right after. Several Redis nodes
//! or nats-servers (comma-separated URLs) are summed.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::net::TcpStream;

/// Longest wait for one reading (connect, ask, read the answer).
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest answer read (an `INFO commandstats` is a few KiB, `/varz` too).
const MAX_ANSWER: usize = 4 << 20;
/// Commands listed by name in the report, the most called first.
pub const TOP_COMMANDS: usize = 5;
/// Commands that run a script (Lua through `EVAL*`, functions through
/// `FCALL*`).
pub const SCRIPT_COMMANDS: [&str; 6] = [
    "eval",
    "evalsha",
    "eval_ro",
    "evalsha_ro",
    "fcall",
    "fcall_ro",
];

#[derive(Debug, thiserror::Error)]
pub enum CostError {
    #[error("{url:?} is not a redis://[user:password@]host[:port] URL{why}")]
    RedisUrl { url: String, why: &'static str },
    #[error("{url:?} is not an http://host:port nats-server monitoring URL{why}")]
    MonitorUrl { url: String, why: &'static str },
    #[error("{what} at {addr}: {source}")]
    Io {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{what} at {addr} did not answer within {READ_TIMEOUT:?}")]
    Timeout { what: &'static str, addr: String },
    #[error("Redis at {addr} refused {command}: {message}")]
    Refused {
        addr: String,
        command: &'static str,
        message: String,
    },
    #[error("Redis at {addr} sent a malformed reply: {detail}")]
    Resp { addr: String, detail: String },
    #[error("INFO commandstats, line {line}: {detail}")]
    Commandstats { line: usize, detail: String },
    #[error("nats-server monitoring at {url}: {detail}")]
    Varz { url: String, detail: String },
}

/// One command's counters in `INFO commandstats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommandCounts {
    pub calls: u64,
    /// Microseconds spent in the command (for a script: all of it).
    pub usec: u64,
}

/// `INFO commandstats` by command name, lower case; Redis 7's subcommands
/// keep their `|` (`client|setname`).
pub type CommandStats = BTreeMap<String, CommandCounts>;

/// Reads `INFO commandstats` (Redis 6 and 7):
/// `cmdstat_<name>:calls=N,usec=N,usec_per_call=F[,rejected_calls=N,failed_calls=N]`
/// lines, CRLF or LF, `#` section headers and blank lines skipped, other
/// sections' lines (an `INFO everything`) ignored, unknown fields ignored.
/// A `cmdstat_` line without `calls` is an error.
pub fn parse_commandstats(text: &str) -> Result<CommandStats, CostError> {
    let mut out = CommandStats::new();
    for (i, raw) in text.lines().enumerate() {
        let err = |detail: String| CostError::Commandstats {
            line: i + 1,
            detail,
        };
        let line = raw.trim();
        let Some(rest) = line.strip_prefix("cmdstat_") else {
            continue;
        };
        let (name, fields) = rest
            .split_once(':')
            .ok_or_else(|| err(format!("no ':' in {line:?}")))?;
        if name.is_empty() {
            return Err(err(format!("no command name in {line:?}")));
        }
        let (mut calls, mut usec) = (None, 0);
        for field in fields.split(',') {
            let Some((key, value)) = field.split_once('=') else {
                return Err(err(format!("{field:?} is not key=value")));
            };
            let number = || {
                value
                    .parse::<u64>()
                    .map_err(|_| err(format!("{key}={value:?} is not a count")))
            };
            match key {
                "calls" => calls = Some(number()?),
                "usec" => usec = number()?,
                _ => {}
            }
        }
        let calls = calls.ok_or_else(|| err(format!("no calls= in {line:?}")))?;
        let entry = out.entry(name.to_ascii_lowercase()).or_default();
        entry.calls += calls;
        entry.usec += usec;
    }
    Ok(out)
}

/// One Redis node to read, from a `redis://` URL. The password is never
/// printed.
#[derive(Clone)]
pub struct RedisNode {
    /// `host:port`.
    pub addr: String,
    user: Option<String>,
    password: Option<String>,
}

impl std::fmt::Debug for RedisNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisNode")
            .field("addr", &self.addr)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "…"))
            .finish()
    }
}

/// `%XX` escapes of a URL's user part.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        if b == b'%' {
            let hex = [bytes.next()?, bytes.next()?];
            out.push(u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?);
        } else {
            out.push(b);
        }
    }
    String::from_utf8(out).ok()
}

/// `host:port` of an authority, with `default_port` when it has none
/// (`[::1]` and `[::1]:6379` too).
fn with_port(host: &str, default_port: u16) -> Option<String> {
    let has_port = match host.rfind(']') {
        Some(close) => host[close..].contains(':'),
        None => host.contains(':'),
    };
    if host.is_empty() || host.starts_with(':') {
        return None;
    }
    Some(if has_port {
        host.to_owned()
    } else {
        format!("{host}:{default_port}")
    })
}

impl RedisNode {
    /// `redis://[[user]:password@]host[:port][/db]`; the database does not
    /// matter (`INFO` is the server's). `rediss://` (TLS) and unix sockets
    /// are not supported.
    pub fn parse(url: &str) -> Result<Self, CostError> {
        let bad = |why| CostError::RedisUrl {
            url: redact(url),
            why,
        };
        if url.starts_with("rediss://") {
            return Err(bad(
                ": TLS (rediss://) is not supported; read INFO commandstats yourself",
            ));
        }
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| bad(": it must start with redis://"))?;
        let authority = rest.split('/').next().unwrap_or_default();
        let (userinfo, host) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => {
                let (user, password) = match u.split_once(':') {
                    Some((user, password)) => (user, Some(password)),
                    None => (u, None),
                };
                let user = percent_decode(user).ok_or_else(|| bad(": bad %-escape"))?;
                let password = password
                    .map(|p| percent_decode(p).ok_or_else(|| bad(": bad %-escape")))
                    .transpose()?;
                ((!user.is_empty()).then_some(user), password)
            }
        };
        Ok(Self {
            addr: with_port(host, 6379).ok_or_else(|| bad(": no host"))?,
            user,
            password,
        })
    }

    /// `INFO commandstats`, after `AUTH` when the URL has a password.
    pub async fn read(&self) -> Result<RedisSample, CostError> {
        tokio::time::timeout(READ_TIMEOUT, self.ask())
            .await
            .map_err(|_| CostError::Timeout {
                what: "Redis",
                addr: self.addr.clone(),
            })?
    }

    async fn ask(&self) -> Result<RedisSample, CostError> {
        let io = |source| CostError::Io {
            what: "Redis",
            addr: self.addr.clone(),
            source,
        };
        let stream = TcpStream::connect(&self.addr).await.map_err(io)?;
        let mut conn = BufReader::new(stream);
        let mut own = BTreeMap::new();
        if let Some(password) = &self.password {
            let mut args = vec!["AUTH"];
            args.extend(self.user.as_deref());
            args.push(password);
            self.command(&mut conn, "AUTH", &args).await?;
            own.insert("auth".to_owned(), 1);
        }
        let text = self
            .command(&mut conn, "INFO commandstats", &["INFO", "commandstats"])
            .await?;
        Ok(RedisSample {
            stats: parse_commandstats(&text)?,
            own_before_info: own,
            nodes: 1,
        })
    }

    /// Sends one command and reads a simple string or bulk reply.
    async fn command(
        &self,
        conn: &mut BufReader<TcpStream>,
        name: &'static str,
        args: &[&str],
    ) -> Result<String, CostError> {
        let io = |source| CostError::Io {
            what: "Redis",
            addr: self.addr.clone(),
            source,
        };
        let resp = |detail: String| CostError::Resp {
            addr: self.addr.clone(),
            detail,
        };
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        conn.get_mut()
            .write_all(request.as_bytes())
            .await
            .map_err(io)?;
        let mut line = String::new();
        conn.read_line(&mut line).await.map_err(io)?;
        let line = line.trim_end();
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" => Ok(rest.to_owned()),
            "-" => Err(CostError::Refused {
                addr: self.addr.clone(),
                command: name,
                message: rest.to_owned(),
            }),
            "$" => {
                let len: usize = rest
                    .parse()
                    .map_err(|_| resp(format!("bulk length {rest:?}")))?;
                if len > MAX_ANSWER {
                    return Err(resp(format!("a reply of {len} bytes")));
                }
                let mut body = vec![0; len + 2];
                conn.read_exact(&mut body).await.map_err(io)?;
                body.truncate(len);
                String::from_utf8(body).map_err(|_| resp("a reply that is not UTF-8".into()))
            }
            "" => Err(resp("the connection closed".into())),
            _ => Err(resp(format!("unexpected {line:?}"))),
        }
    }
}

/// The URL without its password, to print.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://…@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// What one reading of all Redis nodes found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RedisSample {
    /// Summed over the nodes.
    pub stats: CommandStats,
    /// The generator's own commands before `INFO` on each node (`AUTH`):
    /// counted in this reading already.
    pub own_before_info: BTreeMap<String, u64>,
    /// Nodes read: each counted this reading's `INFO` only after it
    /// answered, so the next reading has it.
    pub nodes: usize,
}

impl RedisSample {
    fn add(&mut self, other: RedisSample) {
        for (name, c) in other.stats {
            let e = self.stats.entry(name).or_default();
            e.calls += c.calls;
            e.usec += c.usec;
        }
        for (name, n) in other.own_before_info {
            *self.own_before_info.entry(name).or_default() += n;
        }
        self.nodes += other.nodes;
    }
}

/// The gateway's Redis: one node or several (summed).
#[derive(Debug, Clone)]
pub struct RedisProbe {
    pub nodes: Vec<RedisNode>,
}

impl RedisProbe {
    /// Comma-separated `redis://` URLs.
    pub fn parse(urls: &str) -> Result<Self, CostError> {
        let nodes = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(RedisNode::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if nodes.is_empty() {
            return Err(CostError::RedisUrl {
                url: urls.to_owned(),
                why: ": empty",
            });
        }
        Ok(Self { nodes })
    }

    /// Every node, at once.
    pub async fn read(&self) -> Result<RedisSample, CostError> {
        let readings = futures_util::future::join_all(self.nodes.iter().map(RedisNode::read)).await;
        let mut sum = RedisSample::default();
        for r in readings {
            sum.add(r?);
        }
        Ok(sum)
    }

    /// The nodes' addresses, to show.
    pub fn describe(&self) -> String {
        let addrs: Vec<&str> = self.nodes.iter().map(|n| n.addr.as_str()).collect();
        addrs.join(", ")
    }
}

/// nats-server's message counters (`/varz`), since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Varz {
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
}

/// The counters of a `/varz` answer (every other field ignored; these four
/// are required).
pub fn parse_varz(body: &str) -> Result<Varz, serde_json::Error> {
    serde_json::from_str(body)
}

/// One nats-server's monitoring endpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct MonitorUrl {
    /// `host:port`.
    pub addr: String,
    /// `/varz`, or the path given when it ends in `/varz`.
    pub path: String,
}

impl MonitorUrl {
    /// `http://host:port` (or `host:port`), with or without `/varz`.
    pub fn parse(url: &str) -> Result<Self, CostError> {
        let bad = |why| CostError::MonitorUrl {
            url: url.to_owned(),
            why,
        };
        if url.starts_with("https://") {
            return Err(bad(": https is not supported"));
        }
        let rest = url.strip_prefix("http://").unwrap_or(url);
        if rest.contains("://") {
            return Err(bad(": only http://"));
        }
        let (host, path) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        let path = if path.ends_with("/varz") {
            path.to_owned()
        } else {
            format!("{path}/varz")
        };
        Ok(Self {
            addr: with_port(host, 8222).ok_or_else(|| bad(": no host"))?,
            path,
        })
    }

    fn shown(&self) -> String {
        format!("http://{}{}", self.addr, self.path)
    }

    pub async fn read(&self) -> Result<Varz, CostError> {
        let body = tokio::time::timeout(READ_TIMEOUT, http_get(&self.addr, &self.path))
            .await
            .map_err(|_| CostError::Timeout {
                what: "nats-server monitoring",
                addr: self.addr.clone(),
            })??;
        parse_varz(&body).map_err(|e| CostError::Varz {
            url: self.shown(),
            detail: format!("not a /varz answer: {e}"),
        })
    }
}

/// `GET path` over HTTP/1.0 (so the answer is neither chunked nor kept
/// alive; a chunked one is read all the same); the body of a 200.
async fn http_get(addr: &str, path: &str) -> Result<String, CostError> {
    let io = |source| CostError::Io {
        what: "nats-server monitoring",
        addr: addr.to_owned(),
        source,
    };
    let varz = |detail: String| CostError::Varz {
        url: format!("http://{addr}{path}"),
        detail,
    };
    let mut stream = TcpStream::connect(addr).await.map_err(io)?;
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(io)?;
    let mut buf = Vec::new();
    stream
        .take(MAX_ANSWER as u64)
        .read_to_end(&mut buf)
        .await
        .map_err(io)?;
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| varz("no end of the HTTP headers".into()))?;
    let head = String::from_utf8_lossy(&buf[..split]).to_ascii_lowercase();
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| varz("no HTTP status".into()))?;
    if status != 200 {
        return Err(varz(format!("HTTP {status}")));
    }
    let body = &buf[split + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body).ok_or_else(|| varz("a malformed chunked body".into()))?
    } else {
        body.to_vec()
    };
    String::from_utf8(body).map_err(|_| varz("a body that is not UTF-8".into()))
}

fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&body[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

/// What one reading of all nats-servers found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NatsSample {
    /// Summed over the servers.
    pub varz: Varz,
    pub servers: usize,
}

/// nats-server's monitoring endpoints: one, or a cluster's (summed).
#[derive(Debug, Clone)]
pub struct NatsMonitor {
    pub servers: Vec<MonitorUrl>,
}

impl NatsMonitor {
    /// Comma-separated URLs.
    pub fn parse(urls: &str) -> Result<Self, CostError> {
        let servers = urls
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(MonitorUrl::parse)
            .collect::<Result<Vec<_>, _>>()?;
        if servers.is_empty() {
            return Err(CostError::MonitorUrl {
                url: urls.to_owned(),
                why: ": empty",
            });
        }
        Ok(Self { servers })
    }

    pub async fn read(&self) -> Result<NatsSample, CostError> {
        let readings =
            futures_util::future::join_all(self.servers.iter().map(MonitorUrl::read)).await;
        let mut sum = NatsSample::default();
        for r in readings {
            let v = r?;
            sum.varz.in_msgs += v.in_msgs;
            sum.varz.out_msgs += v.out_msgs;
            sum.varz.in_bytes += v.in_bytes;
            sum.varz.out_bytes += v.out_bytes;
            sum.servers += 1;
        }
        Ok(sum)
    }

    pub fn describe(&self) -> String {
        let urls: Vec<String> = self.servers.iter().map(MonitorUrl::shown).collect();
        urls.join(", ")
    }
}

/// What to read at each point: either, both or neither.
#[derive(Debug, Clone, Default)]
pub struct Probes {
    pub redis: Option<RedisProbe>,
    pub nats: Option<NatsMonitor>,
}

/// One point's readings: `None` where nothing was asked for, the error as
/// text where a reading failed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BusSample {
    pub redis: Option<Result<RedisSample, String>>,
    pub nats: Option<Result<NatsSample, String>>,
}

impl Probes {
    /// Reads both at once.
    pub async fn sample(&self) -> BusSample {
        let redis = async {
            match &self.redis {
                Some(p) => Some(p.read().await.map_err(|e| e.to_string())),
                None => None,
            }
        };
        let nats = async {
            match &self.nats {
                Some(p) => Some(p.read().await.map_err(|e| e.to_string())),
                None => None,
            }
        };
        let (redis, nats) = futures_util::future::join(redis, nats).await;
        BusSample { redis, nats }
    }
}

/// `n / delivered`, rounded to 4 decimals; `None` without deliveries.
fn per_message(n: u64, delivered: u64) -> Option<f64> {
    (delivered > 0).then(|| (n as f64 / delivered as f64 * 10_000.0).round() / 10_000.0)
}

/// One command's share of a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandCost {
    pub command: String,
    pub calls: u64,
    pub per_delivered_msg: Option<f64>,
    pub usec_per_call: Option<f64>,
}

/// Redis's work over a window, per message delivered in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RedisCost {
    /// Nodes read (summed).
    pub nodes: usize,
    /// Messages delivered in the window: the divisor.
    pub delivered: u64,
    /// Calls of every command, less the generator's own readings.
    pub commands: u64,
    /// Calls of `EVAL`, `EVALSHA`, `FCALL` and their `_RO` forms.
    pub scripts: u64,
    /// Microseconds Redis spent in commands (scripts: all their time).
    pub usec: u64,
    pub script_usec: u64,
    pub commands_per_delivered_msg: Option<f64>,
    pub scripts_per_delivered_msg: Option<f64>,
    pub usec_per_delivered_msg: Option<f64>,
    pub script_usec_per_delivered_msg: Option<f64>,
    /// The [`TOP_COMMANDS`] most called commands.
    pub top: Vec<CommandCost>,
    /// Some counter was lower at the end than at the start (`CONFIG
    /// RESETSTAT` or a restart during the window): the figures are too low.
    pub counters_went_back: bool,
}

/// Redis's work from `before` to `after`, less what the generator's own
/// readings added (each node's `INFO` of `before`, any `AUTH` of `after`).
pub fn redis_cost(before: &RedisSample, after: &RedisSample, delivered: u64) -> RedisCost {
    redis_delta(
        before,
        after,
        &own_commands(&[Some(before), Some(after)]),
        delivered,
    )
}

/// Redis's work from the first reading of `series` to the last (both
/// there), less what every reading of the series added: each one's `INFO`
/// but the last's (on every node), each one's `AUTH` but the first's. A
/// reading in between that failed is taken to have run its `INFO`.
pub fn redis_cost_over(series: &[Option<&RedisSample>], delivered: u64) -> Option<RedisCost> {
    let (Some(Some(first)), Some(Some(last))) = (series.first(), series.last()) else {
        return None;
    };
    (series.len() >= 2).then(|| redis_delta(first, last, &own_commands(series), delivered))
}

/// The generator's own commands counted from the first reading of
/// `series` to its last.
fn own_commands(series: &[Option<&RedisSample>]) -> BTreeMap<String, u64> {
    let nodes = series.iter().flatten().map(|s| s.nodes).max().unwrap_or(1);
    let mut own = BTreeMap::new();
    for (k, reading) in series.iter().enumerate() {
        if k + 1 < series.len() {
            *own.entry("info".to_owned()).or_default() += reading.map_or(nodes, |r| r.nodes) as u64;
        }
        if let (true, Some(r)) = (k > 0, reading) {
            for (name, n) in &r.own_before_info {
                *own.entry(name.clone()).or_default() += n;
            }
        }
    }
    own
}

fn redis_delta(
    before: &RedisSample,
    after: &RedisSample,
    own: &BTreeMap<String, u64>,
    delivered: u64,
) -> RedisCost {
    let mut went_back = false;
    let mut delta: Vec<(String, CommandCounts)> = Vec::new();
    for (name, a) in &after.stats {
        let b = before.stats.get(name).copied().unwrap_or_default();
        went_back |= a.calls < b.calls || a.usec < b.usec;
        let own = own.get(name).copied().unwrap_or(0);
        let calls = a.calls.saturating_sub(b.calls).saturating_sub(own);
        if calls > 0 {
            delta.push((
                name.clone(),
                CommandCounts {
                    calls,
                    usec: a.usec.saturating_sub(b.usec),
                },
            ));
        }
    }
    went_back |= before.stats.keys().any(|k| !after.stats.contains_key(k));
    let commands = delta.iter().map(|(_, c)| c.calls).sum();
    let usec = delta.iter().map(|(_, c)| c.usec).sum();
    let scripts_of = |f: fn(&CommandCounts) -> u64| {
        delta
            .iter()
            .filter(|(n, _)| SCRIPT_COMMANDS.contains(&n.as_str()))
            .map(|(_, c)| f(c))
            .sum::<u64>()
    };
    let (scripts, script_usec) = (scripts_of(|c| c.calls), scripts_of(|c| c.usec));
    delta.sort_by(|(an, a), (bn, b)| b.calls.cmp(&a.calls).then_with(|| an.cmp(bn)));
    RedisCost {
        nodes: after.nodes,
        delivered,
        commands,
        scripts,
        usec,
        script_usec,
        commands_per_delivered_msg: per_message(commands, delivered),
        scripts_per_delivered_msg: per_message(scripts, delivered),
        usec_per_delivered_msg: per_message(usec, delivered),
        script_usec_per_delivered_msg: per_message(script_usec, delivered),
        top: delta
            .into_iter()
            .take(TOP_COMMANDS)
            .map(|(command, c)| CommandCost {
                command,
                calls: c.calls,
                per_delivered_msg: per_message(c.calls, delivered),
                usec_per_call: (c.calls > 0)
                    .then(|| (c.usec as f64 / c.calls as f64 * 100.0).round() / 100.0),
            })
            .collect(),
        counters_went_back: went_back,
    }
}

/// NATS's traffic over a window, per message delivered in it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NatsCost {
    /// Servers read (summed; in a cluster a message routed between servers
    /// counts at each).
    pub servers: usize,
    pub delivered: u64,
    /// Protocol messages nats-server received (publishes, JetStream acks
    /// and API requests, …) and sent (deliveries to subscribers,
    /// replies, …).
    pub in_msgs: u64,
    pub out_msgs: u64,
    pub in_bytes: u64,
    pub out_bytes: u64,
    pub in_msgs_per_delivered_msg: Option<f64>,
    pub out_msgs_per_delivered_msg: Option<f64>,
    pub in_bytes_per_delivered_msg: Option<f64>,
    pub out_bytes_per_delivered_msg: Option<f64>,
    /// Some counter was lower at the end (a restart during the window).
    pub counters_went_back: bool,
}

/// NATS's traffic from the first reading of `series` to the last (both
/// there; the generator adds none).
pub fn nats_cost_over(series: &[Option<&NatsSample>], delivered: u64) -> Option<NatsCost> {
    match (series.first(), series.last()) {
        (Some(Some(a)), Some(Some(b))) if series.len() >= 2 => Some(nats_cost(a, b, delivered)),
        _ => None,
    }
}

pub fn nats_cost(before: &NatsSample, after: &NatsSample, delivered: u64) -> NatsCost {
    let (b, a) = (before.varz, after.varz);
    let went_back = a.in_msgs < b.in_msgs
        || a.out_msgs < b.out_msgs
        || a.in_bytes < b.in_bytes
        || a.out_bytes < b.out_bytes;
    let in_msgs = a.in_msgs.saturating_sub(b.in_msgs);
    let out_msgs = a.out_msgs.saturating_sub(b.out_msgs);
    let in_bytes = a.in_bytes.saturating_sub(b.in_bytes);
    let out_bytes = a.out_bytes.saturating_sub(b.out_bytes);
    NatsCost {
        servers: after.servers,
        delivered,
        in_msgs,
        out_msgs,
        in_bytes,
        out_bytes,
        in_msgs_per_delivered_msg: per_message(in_msgs, delivered),
        out_msgs_per_delivered_msg: per_message(out_msgs, delivered),
        in_bytes_per_delivered_msg: per_message(in_bytes, delivered),
        out_bytes_per_delivered_msg: per_message(out_bytes, delivered),
        counters_went_back: went_back,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Captured from redis-server 7.0.15 on the development VM after SET,
    /// GET, HSET, HMGET, SCRIPT LOAD, EVALSHA ×2, EVAL, EVALSHA_RO (a
    /// failed write), FUNCTION LOAD, FCALL, CLIENT SETNAME, CONFIG GET,
    /// then one INFO commandstats (CRLF line ends, as on the wire).
    const REDIS_7_0: &str = include_str!("../testdata/redis-7.0.15-commandstats.txt");
    /// `/varz` of nats-server 2.9.10 on the same VM.
    const VARZ_2_9: &str = include_str!("../testdata/nats-2.9.10-varz.json");

    #[test]
    fn a_real_redis_7_0_commandstats_is_read() {
        assert!(REDIS_7_0.contains("\r\n"), "the sample keeps its CRLFs");
        let stats = parse_commandstats(REDIS_7_0).unwrap();
        let calls = |n: &str| stats.get(n).map(|c| c.calls);
        assert_eq!(calls("evalsha"), Some(2));
        assert_eq!(stats["evalsha"].usec, 68);
        assert_eq!(calls("evalsha_ro"), Some(1));
        assert_eq!(calls("eval"), Some(1));
        assert_eq!(calls("fcall"), Some(1));
        assert_eq!(calls("incr"), Some(2));
        assert_eq!(calls("client|setname"), Some(1));
        assert_eq!(calls("script|load"), Some(1));
        // An INFO is counted only after it answered: the sample, taken by
        // a third INFO, has the first two.
        assert_eq!(calls("info"), Some(2));
        assert_eq!(stats.values().map(|c| c.calls).sum::<u64>(), 17);
    }

    #[test]
    fn commandstats_parsing_is_tolerant_of_layout_and_strict_about_counts() {
        // Redis 6 (no rejected/failed), LF ends, other sections, a header,
        // upper case, blank lines.
        let text = "# Server\nredis_version:6.2.0\n\n# Commandstats\ncmdstat_GET:calls=3,usec=9,usec_per_call=3.00\r\ncmdstat_set:usec=1,calls=2,usec_per_call=0.50,new_field=x\n";
        let stats = parse_commandstats(text).unwrap();
        assert_eq!(stats["get"], CommandCounts { calls: 3, usec: 9 });
        assert_eq!(stats["set"], CommandCounts { calls: 2, usec: 1 });
        assert_eq!(stats.len(), 2);
        assert!(parse_commandstats("").unwrap().is_empty());
        for bad in [
            "cmdstat_get:usec=1",
            "cmdstat_get:calls=x,usec=1",
            "cmdstat_get calls=1",
            "cmdstat_:calls=1",
            "cmdstat_get:calls",
        ] {
            let e = parse_commandstats(&format!("# Commandstats\n{bad}\n")).unwrap_err();
            assert!(
                e.to_string().starts_with("INFO commandstats, line 2"),
                "{e}"
            );
        }
    }

    #[test]
    fn a_real_varz_is_read() {
        let v = parse_varz(VARZ_2_9).unwrap();
        assert_eq!(v, Varz::default());
        let v = parse_varz(
            r#"{"in_msgs":5,"out_msgs":7,"in_bytes":50,"out_bytes":70,"other":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(
            (v.in_msgs, v.out_msgs, v.in_bytes, v.out_bytes),
            (5, 7, 50, 70)
        );
        // /connz or /healthz instead of /varz.
        assert!(parse_varz(r#"{"connections":[]}"#).is_err());
        assert!(parse_varz("ok").is_err());
    }

    fn sample(pairs: &[(&str, u64, u64)]) -> RedisSample {
        RedisSample {
            stats: pairs
                .iter()
                .map(|&(n, calls, usec)| (n.to_owned(), CommandCounts { calls, usec }))
                .collect(),
            own_before_info: BTreeMap::new(),
            nodes: 1,
        }
    }

    #[test]
    fn redis_cost_is_the_delta_less_the_generators_own_readings() {
        let before = sample(&[("evalsha", 100, 1_000), ("hget", 50, 50), ("info", 3, 30)]);
        let mut after = sample(&[
            ("evalsha", 400, 16_000),
            ("hget", 250, 250),
            ("info", 4, 40),
            ("fcall_ro", 10, 100),
            ("auth", 7, 7),
            ("set", 1_000, 900),
        ]);
        after.own_before_info.insert("auth".into(), 1);
        let c = redis_cost(&before, &after, 100);
        // The INFO of `before` is ours; so is the AUTH before `after`'s
        // INFO (6 other AUTHs are the gateway's).
        assert_eq!(c.commands, 300 + 200 + 10 + 6 + 1_000);
        assert_eq!(c.scripts, 310);
        assert_eq!(c.script_usec, 15_100);
        assert_eq!(c.commands_per_delivered_msg, Some(15.16));
        assert_eq!(c.scripts_per_delivered_msg, Some(3.1));
        assert_eq!(c.script_usec_per_delivered_msg, Some(151.0));
        let top: Vec<(&str, u64)> = c
            .top
            .iter()
            .map(|t| (t.command.as_str(), t.calls))
            .collect();
        assert_eq!(
            top,
            [
                ("set", 1_000),
                ("evalsha", 300),
                ("hget", 200),
                ("fcall_ro", 10),
                ("auth", 6)
            ]
        );
        assert_eq!(c.top[1].usec_per_call, Some(50.0));
        assert_eq!(c.top[1].per_delivered_msg, Some(3.0));
        assert!(!c.counters_went_back);
        // Nothing delivered: counts, no ratios.
        let c = redis_cost(&before, &after, 0);
        assert_eq!((c.commands > 0, c.commands_per_delivered_msg), (true, None));
        // A reset in between.
        let c = redis_cost(&after, &before, 10);
        assert!(c.counters_went_back);
    }

    #[test]
    fn over_several_readings_each_ones_own_commands_are_left_out() {
        // Three readings of two nodes with passwords; the gateway ran 10
        // GETs between each. Every reading adds 2 AUTHs before its INFOs
        // and 2 INFOs after.
        let at = |k: u64| {
            let mut s = sample(&[
                ("get", 10 * k, 0),
                ("info", 2 * k, 0),
                ("auth", 2 * k + 2, 0),
            ]);
            s.nodes = 2;
            s.own_before_info.insert("auth".into(), 2);
            s
        };
        let (a, b, c) = (at(0), at(1), at(2));
        let run = redis_cost_over(&[Some(&a), Some(&b), Some(&c)], 20).unwrap();
        assert_eq!(
            (run.commands, run.commands_per_delivered_msg),
            (20, Some(1.0))
        );
        // The middle reading failed: its INFO is taken to have run.
        let run = redis_cost_over(&[Some(&a), None, Some(&c)], 20).unwrap();
        assert_eq!(run.commands, 22, "its AUTHs are not known: {run:?}");
        assert_eq!(redis_cost_over(&[Some(&a), None], 20), None);
        assert_eq!(redis_cost_over(&[Some(&a)], 20), None);
        assert_eq!(redis_cost(&a, &b, 10).commands, 10);
    }

    #[test]
    fn nats_cost_per_delivered_message() {
        let s = |m: u64| NatsSample {
            varz: Varz {
                in_msgs: m,
                out_msgs: 2 * m,
                in_bytes: 100 * m,
                out_bytes: 300 * m,
            },
            servers: 3,
        };
        let c = nats_cost(&s(1_000), &s(5_400), 1_000);
        assert_eq!((c.in_msgs, c.out_msgs), (4_400, 8_800));
        assert_eq!(c.in_msgs_per_delivered_msg, Some(4.4));
        assert_eq!(c.out_msgs_per_delivered_msg, Some(8.8));
        assert_eq!(c.out_bytes_per_delivered_msg, Some(1_320.0));
        assert_eq!(c.servers, 3);
        assert!(!c.counters_went_back);
        assert!(nats_cost(&s(5), &s(1), 1).counters_went_back);
    }

    #[test]
    fn urls_are_read_and_passwords_never_shown() {
        let n = RedisNode::parse("redis://127.0.0.1:6379/0").unwrap();
        assert_eq!(
            (n.addr.as_str(), n.password.is_none()),
            ("127.0.0.1:6379", true)
        );
        let n = RedisNode::parse("redis://:s%40cret@redis").unwrap();
        assert_eq!(n.addr, "redis:6379");
        assert_eq!(
            (n.user.as_deref(), n.password.as_deref()),
            (None, Some("s@cret"))
        );
        assert!(!format!("{n:?}").contains("cret"));
        let n = RedisNode::parse("redis://app:pw@[::1]:7000").unwrap();
        assert_eq!(
            (n.addr.as_str(), n.user.as_deref()),
            ("[::1]:7000", Some("app"))
        );
        assert_eq!(
            RedisNode::parse("redis://[::1]").unwrap().addr,
            "[::1]:6379"
        );
        let e = RedisNode::parse("rediss://u:topsecret@h:6380").unwrap_err();
        assert!(e.to_string().contains("TLS"), "{e}");
        assert!(!e.to_string().contains("topsecret"), "{e}");
        assert!(RedisNode::parse("127.0.0.1:6379").is_err());
        assert!(RedisNode::parse("redis://").is_err());
        let p = RedisProbe::parse("redis://a:1, redis://b:2").unwrap();
        assert_eq!(p.describe(), "a:1, b:2");

        let m = |u: &str| MonitorUrl::parse(u).unwrap();
        assert_eq!(
            m("http://127.0.0.1:8222"),
            MonitorUrl {
                addr: "127.0.0.1:8222".into(),
                path: "/varz".into()
            }
        );
        assert_eq!(m("http://n:8222/").path, "/varz");
        assert_eq!(m("http://n:8222/varz").path, "/varz");
        assert_eq!(m("http://n/nats/").path, "/nats/varz");
        assert_eq!(m("nats-0:8222").addr, "nats-0:8222");
        assert_eq!(m("nats-0").addr, "nats-0:8222");
        assert!(MonitorUrl::parse("https://n:8222").is_err());
        assert!(MonitorUrl::parse("nats://n:4222").is_err());
        let cluster = NatsMonitor::parse("http://a:8222,http://b:8222,").unwrap();
        assert_eq!(cluster.servers.len(), 2);
        assert!(NatsMonitor::parse(" , ").is_err());
    }

    #[test]
    fn chunked_bodies_are_joined() {
        assert_eq!(
            dechunk(b"4\r\n{\"a\"\r\n3;x=1\r\n:1}\r\n0\r\n\r\n").as_deref(),
            Some(&b"{\"a\":1}"[..])
        );
        assert_eq!(dechunk(b"zz\r\n"), None);
        assert_eq!(dechunk(b"9\r\nshort\r\n"), None);
    }

    /// A fake Redis and a fake monitoring endpoint on loopback, each
    /// answering once per connection.
    #[tokio::test]
    async fn readings_go_over_the_wire() {
        use tokio::net::TcpListener;
        let redis = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let redis_addr = redis.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (s, _) = redis.accept().await.unwrap();
                let mut s = BufReader::new(s);
                let mut seen = String::new();
                loop {
                    let mut line = String::new();
                    if s.read_line(&mut line).await.unwrap() == 0 {
                        break;
                    }
                    seen.push_str(&line);
                    if seen.ends_with("commandstats\r\n") {
                        let body = REDIS_7_0;
                        let reply = format!("${}\r\n{body}\r\n", body.len());
                        s.get_mut().write_all(reply.as_bytes()).await.unwrap();
                        break;
                    }
                    if seen.ends_with("pw\r\n") {
                        let ok: &[u8] = if seen.contains("wrong") {
                            b"-WRONGPASS invalid password\r\n"
                        } else {
                            b"+OK\r\n"
                        };
                        s.get_mut().write_all(ok).await.unwrap();
                        seen.clear();
                    }
                }
            }
        });
        let r = RedisProbe::parse(&format!("redis://{redis_addr},redis://:pw@{redis_addr}"))
            .unwrap()
            .read()
            .await
            .unwrap();
        assert_eq!(r.nodes, 2);
        assert_eq!(r.stats["evalsha"].calls, 4);
        assert_eq!(r.own_before_info.get("auth"), Some(&1));
        let e = RedisProbe::parse(&format!("redis://wrong:pw@{redis_addr}"))
            .unwrap()
            .read()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("refused AUTH: WRONGPASS"), "{e}");

        let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_addr = http.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = http.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let answer = if req.starts_with("GET /varz HTTP/1.0") {
                    let body = r#"{"in_msgs":10,"out_msgs":20,"in_bytes":1000,"out_bytes":2000}"#;
                    format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n", body.len())
                } else {
                    "HTTP/1.1 404 Not Found\r\n\r\nno".to_owned()
                };
                s.write_all(answer.as_bytes()).await.unwrap();
            }
        });
        let n = NatsMonitor::parse(&format!("http://{http_addr},{http_addr}/varz"))
            .unwrap()
            .read()
            .await
            .unwrap();
        assert_eq!((n.servers, n.varz.in_msgs, n.varz.out_bytes), (2, 20, 4000));
        let e = NatsMonitor::parse(&format!("http://{http_addr}/other/"))
            .unwrap()
            .read()
            .await
            .unwrap_err();
        assert!(e.to_string().contains("HTTP 404"), "{e}");
        // Nothing listening.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let probes = Probes {
            redis: Some(RedisProbe::parse(&format!("redis://{closed_addr}")).unwrap()),
            nats: None,
        };
        let s = probes.sample().await;
        assert!(s.nats.is_none());
        assert!(
            matches!(s.redis, Some(Err(ref e)) if e.starts_with("Redis at")),
            "{s:?}"
        );
    }
}
