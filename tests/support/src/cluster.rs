//! A NATS cluster with JetStream: `n` `nats-server` processes on loopback,
//! each with its own store, routed to each other.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::{free_port, kill, read_file, spawn_as, wait_for_port, START_TIMEOUT};

/// The name every node gives its cluster.
pub const CLUSTER_NAME: &str = "interop-test";

struct Node {
    name: String,
    port: u16,
    cluster_port: u16,
    child: Option<Child>,
}

/// `n` clustered `nats-server -js` nodes. Each keeps its ports and store
/// across [`NatsCluster::stop_node`] / [`NatsCluster::restart_node`], like a
/// restarted production node; all are killed on drop.
///
/// ```no_run
/// let mut cluster = interop_test_support::NatsCluster::start(3);
/// let urls = cluster.urls(); // "nats://127.0.0.1:a,nats://127.0.0.1:b,..."
/// cluster.stop_node(1);
/// cluster.restart_node(1);
/// # drop(urls);
/// ```
pub struct NatsCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
    /// The nftables table of a partition in place ([`NatsCluster::partition`]).
    partition: Option<String>,
}

/// The group id node `i` runs with, so that nftables can tell its sockets
/// from the other nodes' (`meta skgid`) although all share loopback.
fn node_gid(i: usize) -> u32 {
    PARTITION_GID_BASE + i as u32
}

/// Group ids from here on are the nodes' (unused by the system).
const PARTITION_GID_BASE: u32 = 47_000;

impl NatsCluster {
    /// Starts `n` nodes (at least 1) and returns once every node is ready and
    /// the JetStream meta group has a leader (streams can be created).
    pub fn start(n: usize) -> Self {
        assert!(n >= 1, "a cluster needs a node");
        let dir = tempfile::Builder::new()
            .prefix("interop-nats-cluster-")
            .tempdir()
            .expect("creating a temp dir");
        let nodes = (0..n)
            .map(|i| Node {
                name: format!("n{i}"),
                port: free_port(),
                cluster_port: free_port(),
                child: None,
            })
            .collect();
        let mut cluster = Self {
            dir,
            nodes,
            partition: None,
        };
        for i in 0..n {
            cluster.spawn_node(i);
        }
        for i in 0..n {
            cluster.wait_ready(i);
        }
        cluster.wait_for_meta_leader();
        cluster
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("{}.log", self.nodes[i].name))
    }

    fn spawn_node(&mut self, i: usize) {
        let log = self.log_path(i);
        std::fs::remove_file(&log).ok();
        let routes = self
            .nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",");
        let node = &self.nodes[i];
        let store = self.dir.path().join(&node.name);
        let args: Vec<String> = vec![
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            node.port.to_string(),
            "-n".into(),
            node.name.clone(),
            "-js".into(),
            "-sd".into(),
            store.display().to_string(),
            "--cluster_name".into(),
            CLUSTER_NAME.into(),
            "--cluster".into(),
            format!("nats://127.0.0.1:{}", node.cluster_port),
            "--routes".into(),
            routes,
            "-l".into(),
            log.display().to_string(),
        ];
        self.nodes[i].child = Some(spawn_as("nats-server", "nats-server", &args, node_gid(i)));
    }

    fn wait_ready(&mut self, i: usize) {
        let log = self.log_path(i);
        let port = self.nodes[i].port;
        let what = format!("nats-server node {}", self.nodes[i].name);
        let child = self.nodes[i]
            .child
            .as_mut()
            .expect("the node was just spawned");
        wait_for_port(port, child, &what);
        let deadline = Instant::now() + START_TIMEOUT;
        while !read_file(&log).contains("Server is ready") {
            assert!(
                Instant::now() < deadline,
                "{what} not ready; log: {}",
                read_file(&log)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for_meta_leader(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut answered = vec![false; self.nodes.len()];
        loop {
            // Every node answers a JetStream API request that needs the meta
            // leader: the group has one and every node reaches it, so a
            // service may connect to any node. (Logs are no proof: a
            // follower of nats-server 2.9 may never log the leader.)
            for (i, node) in self.nodes.iter().enumerate() {
                if !answered[i] {
                    answered[i] = js_api_answers(node.port);
                }
            }
            if answered.iter().all(|a| *a) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the NATS cluster's nodes did not all answer JetStream API requests \
                 (answered: {answered:?}); logs: {}",
                (0..self.nodes.len())
                    .map(|i| format!(
                        "\n--- {}\n{}",
                        self.nodes[i].name,
                        read_file(&self.log_path(i))
                    ))
                    .collect::<String>()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// `nats://127.0.0.1:<port>` of node `i`.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes[i].port)
    }

    /// Every node's URL, comma-separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node's server name (`n0`, `n1`, ...), as JetStream reports leaders.
    pub fn name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Node `i`'s log so far (for failure messages).
    pub fn log(&self, i: usize) -> String {
        read_file(&self.log_path(i))
    }

    /// Kills node `i` (SIGKILL), keeping its store.
    pub fn stop_node(&mut self, i: usize) {
        kill(&mut self.nodes[i].child);
    }

    /// Starts node `i` again on the same ports with the same store; returns
    /// once it listens and says it is ready (it then catches up with the
    /// others by itself).
    pub fn restart_node(&mut self, i: usize) {
        self.stop_node(i);
        self.spawn_node(i);
        self.wait_ready(i);
    }
}

impl NatsCluster {
    /// Cuts node `i` off from the other nodes: every packet of the cluster
    /// routes to or from it is dropped (an nftables table on loopback; the
    /// node's sockets are told apart by their group id), while its client
    /// port stays reachable, so services connected to it stay connected to
    /// a node without the cluster, as in a real partition. Needs root and
    /// `nft`. [`NatsCluster::heal`] removes it; so does drop.
    pub fn partition(&mut self, i: usize) -> Result<(), String> {
        self.heal()?;
        let table = format!("interop_partition_{}", self.nodes[0].cluster_port);
        let own = self.nodes[i].cluster_port;
        let others = self
            .nodes
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, n)| n.cluster_port.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        // Routes dialled to the node (its cluster port, both directions),
        // and those it dialled to the others (its own sockets, by gid).
        let rules = format!(
            "table inet {table} {{\n\
             \tchain output {{\n\
             \t\ttype filter hook output priority 0; policy accept;\n\
             \t\toif \"lo\" tcp dport {own} drop\n\
             \t\toif \"lo\" tcp sport {own} drop\n\
             \t\toif \"lo\" meta skgid {gid} tcp dport {{ {others} }} drop\n\
             \t}}\n\
             }}\n",
            gid = node_gid(i),
        );
        nft(&rules)?;
        self.partition = Some(table);
        Ok(())
    }

    /// Removes the partition, if any: the routes' connections carry on
    /// (TCP retransmits what was dropped) or are re-dialled.
    pub fn heal(&mut self) -> Result<(), String> {
        if let Some(table) = self.partition.take() {
            nft(&format!("delete table inet {table}\n"))?;
        }
        Ok(())
    }
}

/// Runs `nft -f -` with `rules`.
fn nft(rules: &str) -> Result<(), String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run nft (apt-get install nftables): {e}"))?;
    child
        .stdin
        .take()
        .ok_or("nft has no stdin")?
        .write_all(rules.as_bytes())
        .map_err(|e| format!("writing to nft: {e}"))?;
    let out = child
        .wait_with_output()
        .map_err(|e| format!("waiting for nft: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "nft failed ({}): {}\nrules:\n{rules}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        self.heal().ok();
        for node in &mut self.nodes {
            kill(&mut node.child);
        }
    }
}

/// Whether the node on `port` answers `$JS.API.STREAM.NAMES` (answered
/// only with a JetStream meta leader) within half a second, over a plain
/// NATS protocol exchange: no client library, so it can run anywhere.
fn js_api_answers(port: u16) -> bool {
    use std::io::{BufRead, BufReader, Read, Write};
    let Ok(mut writer) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    writer
        .set_read_timeout(Some(Duration::from_millis(500)))
        .ok();
    let Ok(read_half) = writer.try_clone() else {
        return false;
    };
    let mut reader = BufReader::new(read_half);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() || !line.starts_with("INFO") {
        return false;
    }
    let hello =
        "CONNECT {\"verbose\":false,\"pedantic\":false,\"name\":\"interop-test-ready\"}\r\n\
                 SUB _INBOX.ready 1\r\n\
                 PUB $JS.API.STREAM.NAMES _INBOX.ready 2\r\n{}\r\n";
    if writer.write_all(hello.as_bytes()).is_err() {
        return false;
    }
    loop {
        line.clear();
        match reader.read_line(&mut line) {
            Ok(0) | Err(_) => return false,
            Ok(_) => {}
        }
        if line.starts_with("PING") {
            writer.write_all(b"PONG\r\n").ok();
        } else if line.starts_with("-ERR") {
            return false;
        } else if let Some(header) = line.strip_prefix("MSG ") {
            let Some(len) = header
                .split_whitespace()
                .last()
                .and_then(|n| n.parse::<usize>().ok())
            else {
                return false;
            };
            let mut payload = vec![0; len + 2];
            if reader.read_exact(&mut payload).is_err() {
                return false;
            }
            let body = String::from_utf8_lossy(&payload);
            return body.contains("stream_names_response") && !body.contains("\"error\"");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::js_api_answers;

    #[test]
    fn a_jetstream_server_answers_the_probe_and_a_closed_port_does_not() {
        let nats = crate::NatsServer::start();
        assert!(js_api_answers(nats.port()));
        let closed = crate::free_port();
        assert!(!js_api_answers(closed));
    }
}
