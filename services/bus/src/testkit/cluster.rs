//! A private Redis Cluster per test: six `redis-server` processes with `cluster-enabled
//! yes` on free loopback ports, joined by `redis-cli --cluster create … --cluster-replicas
//! 1` into three primaries with a replica each.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{Persistence, RedisServer, TlsPort, certs, unique_prefix};

/// `cluster-node-timeout` of the test nodes: a primary unreachable this long is failed
/// over to its replica, within a few seconds.
pub(super) const NODE_TIMEOUT_MS: u64 = 2_000;

const NODES: usize = 6;
const FORM_TIMEOUT: Duration = Duration::from_secs(60);
const HOW_TO_INSTALL_CLI: &str = "redis-cli is not installed or not on PATH: install it with \
     `apt-get install redis-tools` (cluster tests create their own private cluster with it)";

/// A Redis Cluster owned by one test; every node is killed when it is dropped.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts six nodes without persistence and forms the cluster. Panics (failing the
    /// test) when `redis-server` or `redis-cli` is missing or the cluster does not form.
    pub fn start() -> Self {
        Self::start_with(Persistence::None)
    }

    /// Starts six nodes with the given persistence and forms the cluster.
    pub fn start_with(persistence: Persistence) -> Self {
        match Self::try_start_with(persistence) {
            Ok(cluster) => cluster,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`RedisCluster::start_with`], returning the failure instead of panicking.
    pub fn try_start_with(persistence: Persistence) -> Result<Self, String> {
        Self::try_start(persistence, None)
    }

    /// Six nodes that also serve TLS (certificates from `files`, no client certificate
    /// required), with the cluster bus and replication over TLS: [`RedisCluster::tls_urls`]
    /// are `rediss://` seeds. Panics (failing the test) when the cluster does not form.
    pub fn start_tls(files: &certs::TlsFiles) -> Self {
        let tls = TlsPort {
            port: 0,
            cert: files.server_cert_file.clone(),
            key: files.server_key_file.clone(),
            ca: files.ca_file.clone(),
            auth_clients: false,
            peer: Some((
                files.client_cert_file.clone(),
                files.client_key_file.clone(),
            )),
        };
        match Self::try_start(Persistence::None, Some(tls)) {
            Ok(cluster) => cluster,
            Err(e) => panic!("{e}"),
        }
    }

    fn try_start(persistence: Persistence, tls: Option<TlsPort>) -> Result<Self, String> {
        let nodes = (0..NODES)
            .map(|_| RedisServer::try_start(persistence, true, tls.clone()))
            .collect::<Result<Vec<_>, _>>()?;
        let cluster = RedisCluster { nodes };
        let mut create = Command::new("redis-cli");
        if let Some(tls) = &tls {
            // Formed over TLS, so the nodes meet on (and announce) their TLS ports.
            create
                .arg("--tls")
                .arg("--cacert")
                .arg(&tls.ca)
                .args(["--cluster", "create"]);
            for node in &cluster.nodes {
                let port = node.tls.as_ref().map_or(node.port(), |t| t.port);
                create.arg(format!("127.0.0.1:{port}"));
            }
        } else {
            create.args(["--cluster", "create"]);
            for node in &cluster.nodes {
                create.arg(format!("127.0.0.1:{}", node.port()));
            }
        }
        create
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .stdin(Stdio::null());
        let output = create.output().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                HOW_TO_INSTALL_CLI.to_owned()
            } else {
                format!("cannot run redis-cli: {e}")
            }
        })?;
        if !output.status.success() {
            return Err(format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        cluster.wait_formed(FORM_TIMEOUT)?;
        Ok(cluster)
    }

    /// The nodes' URLs, each a seed for a cluster client.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The nodes' `rediss://` URLs, of a cluster started with [`RedisCluster::start_tls`].
    pub fn tls_urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::tls_url).collect()
    }

    /// The seeds as one comma-separated list, as `redis.url` takes them in cluster mode.
    pub fn seeds(&self) -> String {
        self.urls().join(",")
    }

    /// A key prefix no other test in this process uses.
    pub fn unique_prefix(&self) -> String {
        unique_prefix()
    }

    /// Node `i` (0–5), e.g. to kill it.
    pub fn node(&mut self, i: usize) -> &mut RedisServer {
        &mut self.nodes[i]
    }

    /// The nodes, in the order they were started.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node currently serving `key` as primary (by `CLUSTER NODES` of a live node).
    pub fn primary_of(&mut self, key: &str) -> Result<usize, String> {
        let port = self.live_port()?;
        let slot: i64 = query(port, redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))?;
        let nodes: String = query(port, redis::cmd("CLUSTER").arg("NODES"))?;
        for line in nodes.lines() {
            let parts: Vec<&str> = line.split_whitespace().collect();
            if parts.len() < 8 || !parts[2].contains("master") || parts[2].contains("fail") {
                continue;
            }
            let serves = parts[8..].iter().any(|range| match range.split_once('-') {
                Some((a, b)) => {
                    a.parse().is_ok_and(|a: i64| a <= slot)
                        && b.parse().is_ok_and(|b: i64| slot <= b)
                }
                None => range.parse() == Ok(slot),
            });
            if serves {
                let port: u16 = parts[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .ok_or_else(|| format!("bad CLUSTER NODES line {line:?}"))?;
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port() == port)
                    .ok_or_else(|| format!("slot {slot} is served by unknown port {port}"));
            }
        }
        Err(format!("no live primary serves slot {slot}"))
    }

    /// The running nodes that are primaries now (`ROLE`).
    pub fn primaries(&self) -> Result<Vec<usize>, String> {
        let mut out = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            if let Ok(role) = query::<redis::Value>(node.port(), &redis::cmd("ROLE"))
                && let redis::Value::Array(parts) = role
                && matches!(parts.first(), Some(redis::Value::BulkString(b)) if b == b"master")
            {
                out.push(i);
            }
        }
        Ok(out)
    }

    /// The number of keys node `i` holds (`DBSIZE`).
    pub fn key_count(&self, i: usize) -> Result<u64, String> {
        query(self.nodes[i].port(), &redis::cmd("DBSIZE"))
    }

    /// The node id (`CLUSTER MYID`) of node `i`.
    pub fn node_id(&self, i: usize) -> Result<String, String> {
        query(self.nodes[i].port(), redis::cmd("CLUSTER").arg("MYID"))
    }

    /// Moves `slots` slots from node `from` to node `to` (both primaries) with
    /// `redis-cli --cluster reshard`, key by key, while clients keep working.
    pub fn reshard(&mut self, from: usize, to: usize, slots: u32) -> Result<(), String> {
        let (from_id, to_id) = (self.node_id(from)?, self.node_id(to)?);
        let output = Command::new("redis-cli")
            .args(["--cluster", "reshard"])
            .arg(format!("127.0.0.1:{}", self.nodes[from].port()))
            .args(["--cluster-from", &from_id, "--cluster-to", &to_id])
            .args(["--cluster-slots", &slots.to_string(), "--cluster-yes"])
            .args(["--cluster-pipeline", "100"])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run redis-cli: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "redis-cli --cluster reshard failed: {}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ));
        }
        Ok(())
    }

    /// `CLUSTER NODES` as a live node sees it, for failure messages.
    pub fn describe(&mut self) -> String {
        match self.live_port() {
            Ok(port) => query(port, redis::cmd("CLUSTER").arg("NODES"))
                .unwrap_or_else(|e| format!("CLUSTER NODES failed: {e}")),
            Err(e) => e,
        }
    }

    /// Waits until every running node sees all slots served and the cluster `ok`, and
    /// every primary has a replica in sync.
    pub fn wait_formed(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        self.wait_slots_served(timeout)?;
        loop {
            let mut lagging = Vec::new();
            for (i, node) in self.nodes.iter().enumerate() {
                let Ok(info) = query::<String>(node.port(), redis::cmd("INFO").arg("replication"))
                else {
                    continue;
                };
                if info.contains("role:master")
                    && !(info.contains("connected_slaves:1") && info.contains("state=online"))
                {
                    lagging.push(i);
                }
            }
            if lagging.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "primaries {lagging:?} have no replica in sync after {timeout:?}"
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_slots_served(&self, timeout: Duration) -> Result<(), String> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            let mut ok = true;
            for node in &self.nodes {
                match query::<String>(node.port(), redis::cmd("CLUSTER").arg("INFO")) {
                    Ok(info) => {
                        let healthy = info.contains("cluster_state:ok")
                            && info.contains("cluster_slots_ok:16384")
                            && info.contains(&format!("cluster_known_nodes:{NODES}"));
                        if !healthy {
                            last = info;
                            ok = false;
                        }
                    }
                    // A killed node does not count.
                    Err(_) => continue,
                }
            }
            if ok {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "the cluster did not become healthy within {timeout:?}; last CLUSTER INFO:\n{last}"
        ))
    }

    fn live_port(&mut self) -> Result<u16, String> {
        self.nodes
            .iter_mut()
            .find_map(|n| n.is_running().then(|| n.port()))
            .ok_or_else(|| "no node of the cluster is running".to_owned())
    }
}

/// One command to the node on `port`, outside cluster routing.
fn query<T: redis::FromRedisValue>(port: u16, cmd: &redis::Cmd) -> Result<T, String> {
    let client = redis::Client::open(format!("redis://127.0.0.1:{port}/"))
        .map_err(|e| format!("bad node url: {e}"))?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(2))
        .map_err(|e| format!("node on port {port}: {e}"))?;
    cmd.query(&mut conn)
        .map_err(|e| format!("node on port {port}: {e}"))
}
