//! Test harness: a private `redis-server` per test.
//!
//! [`RedisServer::start`] launches `redis-server` on a free port (never 6379) with its
//! data in a fresh temp dir, waits until it answers `PING`, and kills it when dropped.
//! Fault tests can [`RedisServer::kill`] it with SIGKILL and [`RedisServer::restart`] it
//! on the same port and data dir. Each test gets its own key prefix from
//! [`RedisServer::unique_prefix`].
//!
//! [`RedisCluster::start`] does the same for a Redis Cluster of six such servers (three
//! primaries, three replicas), created with `redis-cli --cluster create`.
//!
//! [`RedisServer::start_tls`] adds a TLS port with certificates from [`certs::TlsFiles`]
//! (made at test time), for `rediss://` tests.
//!
//! A missing `redis-server` (or, for a cluster, `redis-cli`) fails the test with a
//! message saying how to install it; it never skips.

pub mod certs;
mod cluster;

pub use cluster::RedisCluster;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

const HOW_TO_INSTALL: &str = "redis-server is not installed or not on PATH: \
     install it with `apt-get install redis-server` (tests start their own private server)";
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Persistence of the test server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Persistence {
    /// Nothing is persisted (fastest; data is lost on kill).
    #[default]
    None,
    /// `appendonly yes` with `appendfsync everysec`.
    AofEverySec,
    /// `appendonly yes` with `appendfsync always`: every acknowledged write survives
    /// `kill -9`. Use it for fault tests.
    AofAlways,
}

/// A `redis-server` owned by one test.
#[derive(Debug)]
pub struct RedisServer {
    dir: TempDir,
    port: u16,
    persistence: Persistence,
    /// The cluster bus port, for a node of a [`RedisCluster`].
    cluster_port: Option<u16>,
    /// A TLS port besides the plaintext one, for [`RedisServer::start_tls`].
    tls: Option<TlsPort>,
    child: Option<Child>,
}

/// The TLS port of a test server and the files it serves with.
#[derive(Debug, Clone)]
struct TlsPort {
    port: u16,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
    /// Whether clients must present a certificate issued by `ca`.
    auth_clients: bool,
    /// The certificate and key a node presents to the others (cluster bus, replication),
    /// which always ask for one; the server certificate is for servers only.
    peer: Option<(PathBuf, PathBuf)>,
}

static PREFIX_COUNTER: AtomicU64 = AtomicU64::new(0);

impl RedisServer {
    /// Starts a server without persistence. Panics (failing the test) when
    /// `redis-server` is missing or does not come up.
    pub fn start() -> Self {
        Self::start_with(Persistence::None)
    }

    /// Starts a server with the given persistence.
    pub fn start_with(persistence: Persistence) -> Self {
        match Self::try_start_with(persistence) {
            Ok(server) => server,
            Err(e) => panic!("{e}"),
        }
    }

    /// Like [`RedisServer::start_with`], returning the failure instead of panicking.
    pub fn try_start_with(persistence: Persistence) -> Result<Self, String> {
        Self::try_start(persistence, false, None)
    }

    /// A server that also listens for TLS (see [`RedisServer::tls_url`]) with the server
    /// certificate of `files`; with `require_client_cert`, a TLS client must present a
    /// certificate issued by its CA. Panics when `redis-server` is missing, was built
    /// without TLS, or does not come up.
    pub fn start_tls(files: &certs::TlsFiles, require_client_cert: bool) -> Self {
        let tls = TlsPort {
            port: 0,
            cert: files.server_cert_file.clone(),
            key: files.server_key_file.clone(),
            ca: files.ca_file.clone(),
            auth_clients: require_client_cert,
            peer: None,
        };
        match Self::try_start(Persistence::None, false, Some(tls)) {
            Ok(server) => server,
            Err(e) => panic!("{e}"),
        }
    }

    fn try_start(
        persistence: Persistence,
        cluster: bool,
        tls: Option<TlsPort>,
    ) -> Result<Self, String> {
        let mut last_error = String::new();
        // A port picked free may be taken before redis binds it; try a few.
        for _ in 0..5 {
            let port = free_port()?;
            let cluster_port = if cluster { Some(free_port()?) } else { None };
            let tls = match &tls {
                Some(tls) => Some(TlsPort {
                    port: free_port()?,
                    ..tls.clone()
                }),
                None => None,
            };
            let mut server = RedisServer {
                dir: tempfile::Builder::new()
                    .prefix("ratemesh-redis-")
                    .tempdir()
                    .map_err(|e| format!("cannot create a temp dir for redis-server: {e}"))?,
                port,
                persistence,
                cluster_port,
                tls,
                child: None,
            };
            match server.spawn_and_wait() {
                Ok(()) => return Ok(server),
                Err(e) if e == HOW_TO_INSTALL => return Err(e),
                Err(e) => last_error = e,
            }
        }
        Err(format!("redis-server did not start: {last_error}"))
    }

    /// The server's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// `rediss://127.0.0.1:<tls port>/` of a server started with
    /// [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        let tls = self.tls.as_ref().expect("the server was started with TLS");
        format!("rediss://127.0.0.1:{}/", tls.port)
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory (AOF files live here).
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// A key prefix no other test in this process uses.
    pub fn unique_prefix(&self) -> String {
        unique_prefix()
    }

    /// Kills the server with SIGKILL (`kill -9`) and waits for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data dir (killing it first if it is
    /// running) and waits until it answers `PING`, i.e. has loaded its AOF.
    pub fn restart(&mut self) {
        self.kill();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn_and_wait() {
                Ok(()) => return,
                Err(e) if Instant::now() >= deadline => {
                    panic!("redis-server did not restart on port {}: {e}", self.port)
                }
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        }
    }

    /// True while the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    fn spawn_and_wait(&mut self) -> Result<(), String> {
        let dir = self.dir.path().to_string_lossy().into_owned();
        let mut cmd = Command::new("redis-server");
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--protected-mode", "no"])
            .args(["--dir", &dir])
            .args(["--save", ""])
            // As deploy/README.md recommends for production.
            .args(["--hash-max-listpack-value", "1024"])
            .args(["--daemonize", "no"])
            .args(["--logfile", "redis.log"]);
        if let Some(bus_port) = self.cluster_port {
            cmd.args(["--cluster-enabled", "yes"])
                .args(["--cluster-port", &bus_port.to_string()])
                .args(["--cluster-config-file", "nodes.conf"])
                // Failover within a few seconds of a primary's death.
                .args([
                    "--cluster-node-timeout",
                    &cluster::NODE_TIMEOUT_MS.to_string(),
                ]);
        }
        if let Some(tls) = &self.tls {
            let path = |p: &Path| p.to_string_lossy().into_owned();
            cmd.args(["--tls-port", &tls.port.to_string()])
                .args(["--tls-cert-file", &path(&tls.cert)])
                .args(["--tls-key-file", &path(&tls.key)])
                .args(["--tls-ca-cert-file", &path(&tls.ca)])
                .args([
                    "--tls-auth-clients",
                    if tls.auth_clients { "yes" } else { "no" },
                ]);
            if let Some((cert, key)) = &tls.peer {
                cmd.args(["--tls-client-cert-file", &path(cert)])
                    .args(["--tls-client-key-file", &path(key)]);
            }
            if self.cluster_port.is_some() {
                // The cluster bus and replication over TLS too; clients reaching a node on
                // its TLS port are redirected to the others' TLS ports.
                cmd.args(["--tls-cluster", "yes", "--tls-replication", "yes"]);
            }
        }
        match self.persistence {
            Persistence::None => {
                cmd.args(["--appendonly", "no"]);
            }
            Persistence::AofEverySec => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "everysec"]);
            }
            Persistence::AofAlways => {
                cmd.args(["--appendonly", "yes", "--appendfsync", "always"]);
            }
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd.spawn().map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                HOW_TO_INSTALL.to_owned()
            } else {
                format!("cannot run redis-server: {e}")
            }
        })?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if !self.is_running() {
                let log =
                    std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
                self.child = None;
                return Err(format!("redis-server exited on start; its log:\n{log}"));
            }
            if answers_ping(self.port) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.kill();
        Err(format!(
            "redis-server on port {} did not answer PING",
            self.port
        ))
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A key prefix unique within this process (and very likely across processes).
pub fn unique_prefix() -> String {
    let n = PREFIX_COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("t{}-{n}-{nanos:x}", std::process::id())
}

fn free_port() -> Result<u16, String> {
    for _ in 0..10 {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(|e| format!("cannot find a free port: {e}"))?;
        let port = listener
            .local_addr()
            .map_err(|e| format!("cannot find a free port: {e}"))?
            .port();
        if port != 6379 {
            return Ok(port);
        }
    }
    Err("cannot find a free port other than 6379".to_owned())
}

fn answers_ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect((Ipv4Addr::LOCALHOST, port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(b"PING\r\n").is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        // `-LOADING` while the AOF is read back: not ready yet.
        Ok(n) => buf[..n].starts_with(b"+PONG"),
        Err(_) => false,
    }
}
