//! The `ratemesh` binary as an operator runs it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

fn ratemesh() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ratemesh"));
    // Only what each test sets: no inherited RATEMESH__ variables, no RUST_LOG surprises.
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

#[test]
fn an_invalid_setting_exits_non_zero_naming_the_key() {
    let output = ratemesh()
        .args(["config", "check"])
        .env("RATEMESH__SERVER__REQUEST_TIMEOUT_MS", "soon")
        .output()
        .expect("run ratemesh");
    assert!(!output.status.success());
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("server.request_timeout_ms"), "{stderr}");

    let output = ratemesh()
        .args(["config", "check"])
        .env("RATEMESH__REDIS__PARTITIONS", "0")
        .output()
        .expect("run ratemesh");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("redis.partitions"), "{stderr}");
}

#[test]
fn config_file_layers_and_dump_redacts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("ratemesh.toml");
    std::fs::write(&file, "[redis]\nurl = \"redis://app:s3cret@redis:6379\"\n").expect("write");
    let output = ratemesh()
        .args(["config", "dump", "--file"])
        .arg(&file)
        .output()
        .expect("run ratemesh");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("redis://app:***@redis:6379"), "{stdout}");
    assert!(!stdout.contains("s3cret"), "{stdout}");

    let output = ratemesh()
        .args(["config", "check", "--file"])
        .arg(dir.path().join("missing.toml"))
        .output()
        .expect("run ratemesh");
    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn config_check_validates_the_policy_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = dir.path().join("good.toml");
    std::fs::write(&good, "[program]\nid = \"acme-eu\"\n").expect("write");
    let output = ratemesh()
        .args(["config", "check"])
        .env("RATEMESH__POLICY__FILE", &good)
        .output()
        .expect("run ratemesh");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("acme-eu"));

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[program]\nid = \"acme-eu\"\nrate_decimals = 99\n").expect("write");
    let output = ratemesh()
        .args(["config", "check"])
        .env("RATEMESH__POLICY__FILE", &bad)
        .output()
        .expect("run ratemesh");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("policy.file"), "{stderr}");
    assert!(stderr.contains("program.rate_decimals"), "{stderr}");

    let output = ratemesh()
        .args(["config", "check"])
        .env("RATEMESH__POLICY__FILE", dir.path().join("missing.toml"))
        .output()
        .expect("run ratemesh");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("policy.file"), "{stderr}");
}

#[test]
fn generated_keys_come_with_their_hash() {
    let output = ratemesh()
        .args(["keys", "generate", "--role", "network", "--name", "acme"])
        .output()
        .expect("run ratemesh");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let key = stdout.lines().nth(1).expect("key line").trim().to_owned();
    assert!(key.starts_with("rm_network_"), "{stdout}");
    let hashed = ratemesh()
        .args(["keys", "hash", &key])
        .output()
        .expect("run ratemesh");
    let hash = String::from_utf8_lossy(&hashed.stdout).trim().to_owned();
    assert!(stdout.contains(&format!("sha256 = \"{hash}\"")), "{stdout}");
}

/// `ratemesh up` starts, every service answers SERVING, and SIGINT stops it cleanly.
#[tokio::test]
async fn up_serves_every_service_and_stops_on_sigint() {
    let mut child = ratemesh()
        .arg("up")
        .env("RATEMESH__SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("RATEMESH__SERVER__HTTP_ADDR", "127.0.0.1:0")
        .env("RATEMESH__SERVER__ADMIN_ADDR", "127.0.0.1:0")
        .env("RATEMESH__TELEMETRY__LOG_FILTER", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ratemesh up");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut grpc = None;
    let mut trial_keys = 0;
    let mut warned_embedded = false;
    let deadline = Instant::now() + Duration::from_secs(30);
    while grpc.is_none() || trial_keys < 5 || !warned_embedded {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("ratemesh up printed its listeners");
        // Piped output is read by programs and files: no terminal colour codes.
        assert!(
            !line.contains('\u{1b}'),
            "colour codes in piped output: {line:?}"
        );
        warned_embedded |= line.contains("embedded backend");
        if let Some(rest) = line.trim().strip_prefix("grpc listening on ") {
            grpc = rest.split_whitespace().next().map(str::to_owned);
        }
        if line
            .trim_start()
            .starts_with(|c: char| c.is_ascii_lowercase())
            && line.contains(" rm_")
        {
            trial_keys += 1;
        }
    }
    let grpc = grpc.expect("grpc address");

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);
    for service in std::iter::once("").chain(ratemesh_proto::SERVICE_NAMES) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let status = health
                .check(HealthCheckRequest {
                    service: service.to_owned(),
                })
                .await
                .expect("health check")
                .into_inner()
                .status;
            if status == ServingStatus::Serving as i32 {
                break;
            }
            assert!(Instant::now() < deadline, "{service:?} not SERVING");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("send SIGINT");
    assert!(interrupted.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "ratemesh up did not exit after SIGINT"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "exit status {status:?}");
}

/// Splits a printed command into its words (the banner quotes nothing it does not need to).
fn run_printed(command: &str) -> std::process::Output {
    let mut words = command.split_whitespace();
    let program = words.next().expect("a command");
    Command::new(program)
        .args(words)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .output()
        .unwrap_or_else(|e| panic!("{command:?} cannot start: {e}"))
}

/// Stops a `ratemesh up` child when the test ends, also when it fails half-way.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Someone who copies a command from the `up --demo` banner, and then the "next delta"
/// hint of `rates list`, gets a working command each time, however ratemesh was started.
#[test]
fn the_demo_banner_and_list_hints_print_commands_that_run_as_written() {
    let mut child = Running(
        ratemesh()
            .args(["up", "--demo"])
            .env("RATEMESH__SERVER__GRPC_ADDR", "127.0.0.1:0")
            .env("RATEMESH__SERVER__HTTP_ADDR", "127.0.0.1:0")
            .env("RATEMESH__SERVER__ADMIN_ADDR", "127.0.0.1:0")
            .env("RATEMESH__TELEMETRY__LOG_FILTER", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start ratemesh up --demo"),
    );
    let stdout = child.0.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut commands = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while commands.len() < 4 {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("ratemesh up --demo printed commands to try");
        let line = line.trim();
        if let Some(command) = line.strip_prefix("try:") {
            commands.push(command.trim().to_owned());
        } else if !commands.is_empty() {
            commands.push(line.to_owned());
        }
    }
    let list = commands
        .iter()
        .find(|c| c.contains(" rates list"))
        .unwrap_or_else(|| panic!("no `rates list` in {commands:?}"));
    assert!(
        list.starts_with(env!("CARGO_BIN_EXE_ratemesh")),
        "not on PATH and not under cargo: the binary's own path, got {list:?}"
    );
    // The read path answers UNAVAILABLE until its replica has loaded.
    let deadline = Instant::now() + Duration::from_secs(15);
    let listed = loop {
        let listed = run_printed(list);
        let stderr = String::from_utf8_lossy(&listed.stderr).into_owned();
        if listed.status.success() || Instant::now() > deadline || !stderr.contains("loading") {
            break listed;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stderr = String::from_utf8_lossy(&listed.stderr);
    assert!(listed.status.success(), "{list:?}: {stderr}");

    let hint = stderr
        .lines()
        .find_map(|l| l.split_once("next delta: ").map(|(_, c)| c.to_owned()))
        .unwrap_or_else(|| panic!("no next-delta hint in {stderr}"));
    let delta = run_printed(&hint);
    assert!(
        delta.status.success(),
        "{hint:?}: {}",
        String::from_utf8_lossy(&delta.stderr)
    );
}
