//! What ships: the version the binary reports, the license and changelog beside it, and the
//! container image's stripped binary and health check, down to the probe answering for a
//! real server.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use ratemesh_bus::testkit::RedisServer;
use ratemesh_testkit::{TestApp, test_settings};

fn ratemesh() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ratemesh"));
    // No inherited RATEMESH_ADDR or RATEMESH__ variables: only what each test sets.
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("services/ratemesh sits two levels below the workspace root")
        .to_path_buf()
}

fn read(relative: &str) -> String {
    let path = workspace_root().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn manifest(relative: &str) -> toml::Table {
    read(relative)
        .parse()
        .unwrap_or_else(|e| panic!("{relative}: {e}"))
}

fn text(output: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `[workspace.package]` of the root manifest: the one place version and license are set.
fn workspace_package() -> toml::Table {
    manifest("Cargo.toml")["workspace"]["package"]
        .as_table()
        .expect("[workspace.package]")
        .clone()
}

#[test]
fn the_binary_reports_the_workspace_version() {
    let declared = workspace_package()["version"]
        .as_str()
        .expect("workspace.package.version")
        .to_owned();
    assert_eq!(
        env!("CARGO_PKG_VERSION"),
        declared,
        "the ratemesh crate's version is the workspace's"
    );
    let output = ratemesh().arg("--version").output().expect("run ratemesh");
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), format!("ratemesh {declared}"));
}

#[test]
fn every_crate_takes_version_and_license_from_the_workspace() {
    let root = manifest("Cargo.toml");
    let members = root["workspace"]["members"]
        .as_array()
        .expect("workspace.members");
    assert!(members.len() > 1, "{members:?}");
    for member in members {
        let member = member.as_str().expect("member path");
        let path = format!("{member}/Cargo.toml");
        let package = manifest(&path)["package"]
            .as_table()
            .unwrap_or_else(|| panic!("{path}: no [package]"))
            .clone();
        for key in ["version", "license"] {
            let inherited = package
                .get(key)
                .and_then(|value| value.get("workspace"))
                .and_then(toml::Value::as_bool);
            assert_eq!(
                inherited,
                Some(true),
                "{path}: package.{key} must be `{key}.workspace = true`"
            );
        }
    }
}

#[test]
fn the_license_file_is_the_declared_license() {
    assert_eq!(
        workspace_package()["license"].as_str(),
        Some("Apache-2.0"),
        "LICENSE holds the Apache License 2.0; change both together"
    );
    let license = read("LICENSE");
    for phrase in [
        "Apache License",
        "Version 2.0, January 2004",
        "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION",
        "END OF TERMS AND CONDITIONS",
    ] {
        assert!(license.contains(phrase), "LICENSE lacks {phrase:?}");
    }
}

#[test]
fn the_changelog_has_a_section_for_the_current_version() {
    let changelog = read("CHANGELOG.md");
    let heading = format!("## [{}]", env!("CARGO_PKG_VERSION"));
    assert!(
        changelog.lines().any(|line| line.starts_with(&heading)),
        "CHANGELOG.md has no `{heading}` section"
    );
}

/// The Dockerfile's instructions, continuation lines joined, each with its keyword.
fn dockerfile_instructions() -> Vec<(String, String)> {
    let mut instructions = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if let Some(continued) = trimmed.strip_suffix('\\') {
            current.push_str(continued);
            current.push(' ');
            continue;
        }
        current.push_str(trimmed);
        let (keyword, rest) = current
            .split_once(char::is_whitespace)
            .expect("an argument");
        instructions.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
        current.clear();
    }
    instructions
}

/// The instructions of the last stage, the image that ships.
fn runtime_stage() -> Vec<(String, String)> {
    let instructions = dockerfile_instructions();
    let last_from = instructions
        .iter()
        .rposition(|(keyword, _)| keyword == "FROM")
        .expect("a FROM");
    instructions[last_from..].to_vec()
}

#[test]
fn the_image_ships_the_binary_of_a_profile_that_strips_symbols() {
    let instructions = dockerfile_instructions();
    let runs: Vec<&str> = instructions
        .iter()
        .filter(|(keyword, _)| keyword == "RUN")
        .map(|(_, rest)| rest.as_str())
        .collect();
    // The command that builds the binary the image copies out of the build stage.
    let build = runs
        .iter()
        .find(|run| run.contains("cp target/"))
        .expect("a RUN that builds and copies the binary");
    let profile = build
        .split_once("--profile ")
        .map(|(_, rest)| rest.split_whitespace().next().expect("a profile name"))
        .unwrap_or("release");
    let dir = match profile {
        "dev" | "test" => "debug",
        "bench" => "release",
        other => other,
    };
    assert!(
        build.contains(&format!("cp target/{dir}/ratemesh ")),
        "the copied binary is not the one `--profile {profile}` builds: {build}"
    );

    let root = manifest("Cargo.toml");
    let profiles = root["profile"].as_table().expect("[profile.*]");
    let strip = profiles
        .get(profile)
        .and_then(|table| table.get("strip"))
        .unwrap_or_else(|| panic!("[profile.{profile}] sets no `strip`"));
    assert!(
        strip.as_str() == Some("symbols") || strip.as_bool() == Some(true),
        "[profile.{profile}] strip = {strip}: the image's binary keeps its symbols"
    );

    let runtime = runtime_stage();
    assert!(
        runtime.iter().any(|(keyword, rest)| keyword == "COPY"
            && rest.contains("--from=build")
            && rest.contains("/usr/local/bin/ratemesh")),
        "the runtime stage does not copy the built binary: {runtime:?}"
    );
}

/// The HEALTHCHECK's command line as the image would run it.
fn healthcheck_argv() -> Vec<String> {
    let runtime = runtime_stage();
    let healthcheck = runtime
        .iter()
        .find(|(keyword, _)| keyword == "HEALTHCHECK")
        .map(|(_, rest)| rest.as_str())
        .expect("the runtime stage has a HEALTHCHECK");
    let (_, command) = healthcheck
        .split_once("CMD ")
        .expect("HEALTHCHECK [options] CMD …");
    // The runtime image has no shell: only the exec (JSON array) form can run.
    serde_json::from_str(command.trim()).unwrap_or_else(|e| {
        panic!("HEALTHCHECK CMD must be an exec-form JSON array (no shell in the image): {e}")
    })
}

#[test]
fn the_image_health_check_runs_the_binary_health_probe() {
    let argv = healthcheck_argv();
    assert!(
        argv.first()
            .is_some_and(|program| program == "/usr/local/bin/ratemesh" || program == "ratemesh"),
        "{argv:?}"
    );
    assert_eq!(argv.get(1).map(String::as_str), Some("health"), "{argv:?}");

    // The arguments parse as the binary defines them (clap exits 2 on a usage error); with
    // a port where nothing listens, the probe fails as a probe does.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let closed = listener.local_addr().expect("addr");
    drop(listener);
    let mut args: Vec<String> = argv[1..].to_vec();
    if let Some(i) = args.iter().position(|arg| arg == "--addr") {
        args[i + 1] = format!("http://{closed}");
    } else {
        args.extend(["--addr".to_owned(), format!("http://{closed}")]);
    }
    let output = ratemesh().args(&args).output().expect("run ratemesh");
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
    assert!(stderr.contains("cannot reach ratemesh at"), "{stderr}");
}

/// Runs `ratemesh health` with `args` on a blocking thread, leaving the runtime to serve.
async fn probe(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|arg| (*arg).to_owned()).collect();
    tokio::task::spawn_blocking(move || ratemesh().arg("health").args(args).output())
        .await
        .expect("probe thread")
        .expect("run ratemesh")
}

/// A server that answers SERVING passes the probe; one whose backend is gone answers
/// NOT_SERVING and fails it, and so does asking for a service it does not run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_probe_exits_zero_only_while_the_server_is_serving() {
    let mut redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis, test_settings()).await;
    let grpc = app.grpc.to_string();
    let url = format!("http://{grpc}");
    let ingest = ratemesh_proto::INVENTORY_INGEST;

    let output = probe(&["--addr", &grpc]).await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "SERVING");

    let output = probe(&["--addr", &url, "--service", ingest]).await;
    let (stdout, stderr) = text(&output);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(stdout.trim(), "SERVING");

    let output = probe(&["--addr", &url, "--service", "ratemesh.v1.NoSuchService"]).await;
    let (_, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("has no service \"ratemesh.v1.NoSuchService\""),
        "{stderr}"
    );

    // Ingest can accept nothing without Redis: its health says so within the backend's
    // probe interval.
    redis.kill();
    let deadline = Instant::now() + Duration::from_secs(15);
    let output = loop {
        let output = probe(&["--addr", &url, "--service", ingest]).await;
        if !output.status.success() || Instant::now() > deadline {
            break output;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let (stdout, stderr) = text(&output);
    assert_eq!(output.status.code(), Some(1), "still SERVING: {stdout}");
    assert_eq!(stdout.trim(), "NOT_SERVING");
    assert!(
        stderr.contains(&format!("{ingest} at {url} is NOT_SERVING")),
        "{stderr}"
    );
}
