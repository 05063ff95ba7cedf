//! The Redis baselines, run against the same Redis as ratemesh: a pipelined XADD loop
//! (the most entries per second that Redis and one client process can append) and an
//! XADD → XREADGROUP latency probe (one stream hop, the floor under any freshness
//! figure); and what that Redis holds ([`memory`]) and how many replicas it has
//! ([`DirectRedis::min_replicas`]).
//!
//! On a Redis Cluster every command and pipeline names keys of one slot, as ratemesh's own
//! do: a baseline key carries the hash tag of a ratemesh partition (`{<prefix>:p<n>}`), so
//! it lands on the primary that partition's streams live on, and figures that exist once
//! per server (`INFO`, `SCAN`) are read on each primary and summed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::{ClusterClientBuilder, ClusterConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::streams::StreamReadReply;
use redis::{Cmd, FromRedisValue, Pipeline, RedisFuture, Value};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::load::{self, Drive, Shape};
use crate::recorder::{Outcome, Recorder};

/// Bytes of payload per baseline entry: about one encoded StockChanged event with its
/// envelope, so Redis moves the same amount per entry as it does for ingest.
pub const ENTRY_BYTES: usize = 256;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The Redis a ratemesh deployment runs on, reached directly (not through the bus): one
/// server, or a cluster known by its seed nodes; with the deployment's key prefix and
/// partitions, whose hash tags the baseline keys take.
#[derive(Debug, Clone)]
pub struct DirectRedis {
    /// The server's URL, or the cluster's seed URLs.
    pub urls: Vec<String>,
    /// `urls` are the seed nodes of a Redis Cluster.
    pub cluster: bool,
    /// Key prefix of the deployment.
    pub key_prefix: String,
    /// Stream partitions of the deployment.
    pub partitions: u32,
}

/// A connection to one server or to a cluster (which routes each command by its key).
#[derive(Clone)]
enum Conn {
    Server(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Server(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Server(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Server(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// A primary of a cluster as `CLUSTER NODES` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    /// Address the node announces (what the cluster client connects to).
    pub host: String,
    pub port: u16,
    /// Slot ranges it serves, both ends included.
    pub slots: Vec<(u16, u16)>,
}

/// The primaries of a `CLUSTER NODES` reply that are not marked failed.
pub fn primaries_of(cluster_nodes: &str) -> Vec<Primary> {
    let mut out = Vec::new();
    for line in cluster_nodes.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        if parts.len() < 8 || !parts[2].contains("master") || parts[2].contains("fail") {
            continue;
        }
        // `ip:port@cport[,hostname]`
        let address = parts[1].split(['@', ',']).next().unwrap_or_default();
        let Some((host, port)) = address.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse() else { continue };
        let slots = parts[8..]
            .iter()
            // Slots being imported or migrated are listed as `[slot-<-id]`: not served yet.
            .filter(|range| !range.starts_with('['))
            .filter_map(|range| match range.split_once('-') {
                Some((a, b)) => Some((a.parse().ok()?, b.parse().ok()?)),
                None => range.parse().ok().map(|s| (s, s)),
            })
            .collect();
        out.push(Primary {
            host: host.to_owned(),
            port,
            slots,
        });
    }
    out
}

impl DirectRedis {
    /// One server at `url`.
    pub fn server(url: &str, key_prefix: &str, partitions: u32) -> Self {
        Self {
            urls: vec![url.to_owned()],
            cluster: false,
            key_prefix: key_prefix.to_owned(),
            partitions: partitions.max(1),
        }
    }

    /// A cluster seeded by `urls`.
    pub fn cluster(urls: &[String], key_prefix: &str, partitions: u32) -> Self {
        Self {
            urls: urls.to_vec(),
            cluster: true,
            key_prefix: key_prefix.to_owned(),
            partitions: partitions.max(1),
        }
    }

    /// A key of the load test's own in partition `p`'s slot: `{<prefix>:p<p>}:loadtest:<name>`
    /// (same hash tag as the partition's streams, a name no ratemesh key has).
    pub fn partition_key(&self, p: u32, name: &str) -> String {
        format!("{{{}:p{p}}}:loadtest:{name}", self.key_prefix)
    }

    async fn connect(&self, response_timeout: Duration) -> anyhow::Result<Conn> {
        if self.cluster {
            let client = ClusterClientBuilder::new(self.urls.iter().map(String::as_str)).build()?;
            let config = ClusterConfig::new()
                .set_connection_timeout(CONNECT_TIMEOUT)
                .set_response_timeout(response_timeout);
            Ok(Conn::Cluster(
                client.get_async_connection_with_config(config).await?,
            ))
        } else {
            let url = self
                .urls
                .first()
                .ok_or_else(|| anyhow::anyhow!("no redis url given"))?;
            let client = redis::Client::open(url.as_str())?;
            let config = redis::AsyncConnectionConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(response_timeout));
            Ok(Conn::Server(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            ))
        }
    }

    /// The cluster's primaries (empty for one server).
    async fn primaries(&self, conn: &mut Conn) -> anyhow::Result<Vec<Primary>> {
        if !self.cluster {
            return Ok(Vec::new());
        }
        let nodes: String = redis::cmd("CLUSTER").arg("NODES").query_async(conn).await?;
        let primaries = primaries_of(&nodes);
        anyhow::ensure!(!primaries.is_empty(), "CLUSTER NODES lists no live primary");
        Ok(primaries)
    }

    /// Where per-server commands go: the server itself (`None`), or each primary.
    async fn servers(&self, conn: &mut Conn) -> anyhow::Result<Vec<Option<Primary>>> {
        if self.cluster {
            Ok(self.primaries(conn).await?.into_iter().map(Some).collect())
        } else {
            Ok(vec![None])
        }
    }

    /// The fewest replicas any primary has (`connected_slaves` of `INFO replication`):
    /// how many replica confirmations a write can wait for on every partition.
    pub async fn min_replicas(&self) -> anyhow::Result<u64> {
        let mut conn = self.connect(Duration::from_secs(10)).await?;
        let mut fewest = u64::MAX;
        for server in self.servers(&mut conn).await? {
            let info: String = on_server(
                &mut conn,
                server.as_ref(),
                redis::cmd("INFO").arg("replication"),
            )
            .await?;
            let replicas = info_field(&info, "connected_slaves")
                .ok_or_else(|| anyhow::anyhow!("INFO replication has no connected_slaves"))?;
            fewest = fewest.min(replicas);
        }
        Ok(fewest)
    }

    /// How many of the deployment's partitions each primary serves, most first (empty for
    /// one server): the share of the streams' load each primary carries.
    pub async fn partitions_per_primary(&self) -> anyhow::Result<Vec<usize>> {
        let mut conn = self.connect(Duration::from_secs(10)).await?;
        let primaries = self.primaries(&mut conn).await?;
        if primaries.is_empty() {
            return Ok(Vec::new());
        }
        let mut counts = vec![0; primaries.len()];
        for p in 0..self.partitions {
            let slot: u16 = redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(self.partition_key(p, "slot"))
                .query_async(&mut conn)
                .await?;
            if let Some(i) = primaries
                .iter()
                .position(|n| n.slots.iter().any(|&(a, b)| a <= slot && slot <= b))
            {
                counts[i] += 1;
            }
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        Ok(counts)
    }
}

/// Sends `cmd` to the one server, or to `primary` of a cluster.
async fn on_server<T: FromRedisValue>(
    conn: &mut Conn,
    primary: Option<&Primary>,
    cmd: &Cmd,
) -> anyhow::Result<T> {
    match (conn, primary) {
        (Conn::Cluster(c), Some(node)) => {
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                host: node.host.clone(),
                port: node.port,
            });
            let value = c.route_command(cmd.clone(), routing).await?;
            Ok(T::from_redis_value(value)?)
        }
        (conn, _) => Ok(cmd.query_async(conn).await?),
    }
}

fn info_field(info: &str, field: &str) -> Option<u64> {
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

/// What Redis holds, as [`memory`] reads it.
pub struct Memory {
    /// `used_memory` (on a cluster, summed over the primaries: every key once).
    pub used: u64,
    /// `MEMORY USAGE` summed over every stream partition (`…}:s:<stream>` keys).
    pub streams: u64,
    /// `MEMORY USAGE` of each key whose name ends with the suffix asked for, by key name.
    pub records: Vec<(String, u64)>,
}

/// Redis's `used_memory`, the `MEMORY USAGE` of the streams, and that of every key whose
/// name ends with `suffix` (one SKU's records). On a cluster, over every primary.
pub async fn memory(redis: &DirectRedis, suffix: &str) -> anyhow::Result<Memory> {
    let mut conn = redis.connect(Duration::from_secs(60)).await?;
    let mut memory = Memory {
        used: 0,
        streams: 0,
        records: Vec::new(),
    };
    for server in redis.servers(&mut conn).await? {
        let server = server.as_ref();
        let info: String = on_server(&mut conn, server, redis::cmd("INFO").arg("memory")).await?;
        memory.used += info_field(&info, "used_memory")
            .ok_or_else(|| anyhow::anyhow!("INFO memory has no used_memory"))?;
        for (_, bytes) in usage(&mut conn, server, "*}:s:*").await? {
            memory.streams += bytes;
        }
        memory
            .records
            .extend(usage(&mut conn, server, &format!("*{suffix}")).await?);
    }
    memory.records.sort();
    Ok(memory)
}

/// `MEMORY USAGE` of every key of one server matching `pattern`, sorted by name.
async fn usage(
    conn: &mut Conn,
    server: Option<&Primary>,
    pattern: &str,
) -> anyhow::Result<Vec<(String, u64)>> {
    let mut keys: Vec<String> = Vec::new();
    let mut cursor: u64 = 0;
    loop {
        let (next, page): (u64, Vec<String>) = on_server(
            conn,
            server,
            redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(10_000),
        )
        .await?;
        keys.extend(page);
        if next == 0 {
            break;
        }
        cursor = next;
    }
    keys.sort();
    let mut sizes = Vec::with_capacity(keys.len());
    for key in keys {
        let bytes: Option<u64> = on_server(
            conn,
            server,
            redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(&key)
                .arg("SAMPLES")
                .arg(0),
        )
        .await?;
        sizes.push((key, bytes.unwrap_or(0)));
    }
    Ok(sizes)
}

/// Appends in pipelines of `depth` entries from `drive.concurrency` workers (one
/// connection each) for `length`, each pipeline to one key named `name` in a partition's
/// slot, the partitions taken in turn (on a cluster, each pipeline goes to the primary
/// serving that partition). Items are entries.
pub async fn xadd_pipelined(
    redis: &DirectRedis,
    name: &str,
    depth: usize,
    drive: &Drive,
    length: Duration,
) -> anyhow::Result<(Recorder, Duration)> {
    let mut conns = Vec::new();
    for _ in 0..drive.concurrency.max(1) {
        conns.push(redis.connect(Duration::from_secs(10)).await?);
    }
    let conns = Arc::new(conns);
    let keys: Arc<Vec<String>> = Arc::new(
        (0..redis.partitions)
            .map(|p| redis.partition_key(p, name))
            .collect(),
    );
    let payload = vec![b'x'; ENTRY_BYTES];
    let result = {
        let keys = keys.clone();
        load::closed_loop(drive, length, move |i| {
            let mut conn = conns[i as usize % conns.len()].clone();
            let key = keys[i as usize % keys.len()].clone();
            let payload = payload.clone();
            async move {
                let mut pipe = redis::pipe();
                for _ in 0..depth {
                    // Trimmed like a real stream, so memory stays flat over a long run.
                    pipe.cmd("XADD")
                        .arg(&key)
                        .arg("MAXLEN")
                        .arg("~")
                        .arg(100_000)
                        .arg("*")
                        .arg("p")
                        .arg(&payload)
                        .ignore();
                }
                match pipe.query_async::<()>(&mut conn).await {
                    Ok(()) => Outcome::Ok(depth as u64),
                    Err(e) => Outcome::Error(format!("xadd: {e}")),
                }
            }
        })
        .await
    };
    let mut conn = redis.connect(Duration::from_secs(10)).await?;
    for key in keys.iter() {
        let _: () = redis::cmd("DEL").arg(key).query_async(&mut conn).await?;
    }
    Ok(result)
}

/// Sends one entry per scheduled slot of `shape` to a key named `name` (in partition 0's
/// slot) and measures, from the scheduled time, until a consumer-group reader (XREADGROUP
/// BLOCK on its own connection, acking what it reads) has it.
pub async fn hop_probe(
    redis: &DirectRedis,
    name: &str,
    drive: &Drive,
    shape: &Shape,
) -> anyhow::Result<(Recorder, Duration)> {
    let key = redis.partition_key(0, name);
    let mut admin = redis.connect(Duration::from_secs(10)).await?;
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&key)
        .arg("probe")
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut admin)
        .await?;
    let waiting: Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>> = Arc::default();
    let stop_reader = CancellationToken::new();
    let reader = {
        let mut conn = redis.connect(Duration::from_secs(5)).await?;
        let (key, waiting, stop) = (key.clone(), waiting.clone(), stop_reader.clone());
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let reply: Result<StreamReadReply, _> = redis::cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg("probe")
                    .arg("reader")
                    .arg("COUNT")
                    .arg(256)
                    .arg("BLOCK")
                    .arg(200)
                    .arg("STREAMS")
                    .arg(&key)
                    .arg(">")
                    .query_async(&mut conn)
                    .await;
                let Ok(reply) = reply else { continue };
                let mut ids = Vec::new();
                for stream in reply.keys {
                    for entry in stream.ids {
                        if let Some(i) = entry.get::<u64>("i")
                            && let Some(tx) = waiting.lock().expect("probe lock").remove(&i)
                        {
                            let _ = tx.send(());
                        }
                        ids.push(entry.id);
                    }
                }
                if !ids.is_empty() {
                    let _: Result<(), _> = redis::cmd("XACK")
                        .arg(&key)
                        .arg("probe")
                        .arg(&ids)
                        .query_async(&mut conn)
                        .await;
                }
            }
        })
    };
    let writer = redis.connect(Duration::from_secs(10)).await?;
    let payload = vec![b'x'; ENTRY_BYTES];
    let key_owned = key.clone();
    let result = load::open_loop(drive, shape, move |i| {
        let (mut conn, waiting, key, payload) = (
            writer.clone(),
            waiting.clone(),
            key_owned.clone(),
            payload.clone(),
        );
        async move {
            let (tx, rx) = oneshot::channel();
            waiting.lock().expect("probe lock").insert(i, tx);
            let sent: Result<String, _> = redis::cmd("XADD")
                .arg(&key)
                .arg("*")
                .arg("i")
                .arg(i)
                .arg("p")
                .arg(&payload)
                .query_async(&mut conn)
                .await;
            if let Err(e) = sent {
                waiting.lock().expect("probe lock").remove(&i);
                return Outcome::Error(format!("xadd: {e}"));
            }
            match tokio::time::timeout(Duration::from_secs(10), rx).await {
                Ok(Ok(())) => Outcome::Ok(1),
                _ => Outcome::Error(format!("entry {i} not read within 10 s")),
            }
        }
    })
    .await;
    stop_reader.cancel();
    let _ = reader.await;
    let _: () = redis::cmd("DEL").arg(&key).query_async(&mut admin).await?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn primaries_are_the_live_masters_with_the_slots_they_serve() {
        let nodes = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@40004 slave e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@40002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@40003,node-3 master - 0 1426238318243 3 connected 10923-16383 [42->-e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca]
6ec23923021cf3ffec47632106199cb7f496ce01 127.0.0.1:30005@40005 master,fail - 0 1426238316232 5 connected
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@40001 myself,master - 0 0 1 connected 0-5460 5462
";
        let primaries = primaries_of(nodes);
        assert_eq!(
            primaries,
            vec![
                Primary {
                    host: "127.0.0.1".into(),
                    port: 30002,
                    slots: vec![(5461, 10922)],
                },
                Primary {
                    host: "127.0.0.1".into(),
                    port: 30003,
                    slots: vec![(10923, 16383)],
                },
                Primary {
                    host: "127.0.0.1".into(),
                    port: 30001,
                    slots: vec![(0, 5460), (5462, 5462)],
                },
            ]
        );
    }

    #[test]
    fn baseline_keys_share_the_hash_tag_of_their_partition() {
        let redis = DirectRedis::cluster(&["redis://127.0.0.1:7000/".into()], "rm-1", 4);
        assert_eq!(
            redis.partition_key(3, "xadd:9"),
            "{rm-1:p3}:loadtest:xadd:9"
        );
        // Not a stream key of the deployment: memory's `*}:s:*` does not count it.
        assert!(!redis.partition_key(0, "s:x").contains("}:s:"));
    }

    #[test]
    fn info_fields_are_read_by_exact_name() {
        let info = "# Memory\r\nused_memory:1024\r\nused_memory_rss:4096\r\n";
        assert_eq!(info_field(info, "used_memory"), Some(1024));
        assert_eq!(info_field(info, "used_memory_rss"), Some(4096));
        assert_eq!(info_field(info, "connected_slaves"), None);
    }
}
