//! The CLI over TLS, through the binary and real sockets: `ratemesh up` serving TLS with a
//! certificate made at test time, client commands calling it over `https://` with
//! `--ca-file`, and an API key refused over plaintext to another machine.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ratemesh_bus::testkit::certs::TlsFiles;

fn ratemesh() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ratemesh"));
    command
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    command
}

/// Stops the `ratemesh up` child when the test ends, also when it fails half-way.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What `ratemesh up` printed: its gRPC port, a trial network key, its webhook URL and the
/// trial ERP secret.
struct Banner {
    grpc_port: u16,
    network_key: String,
    webhooks: String,
    erp_secret: String,
}

/// `ratemesh up` with TLS on its listeners, and what its banner says.
fn up_with_tls(files: &TlsFiles) -> (Running, Banner) {
    let mut child = ratemesh()
        .arg("up")
        .env("RATEMESH__SERVER__GRPC_ADDR", "127.0.0.1:0")
        .env("RATEMESH__SERVER__HTTP_ADDR", "127.0.0.1:0")
        .env("RATEMESH__SERVER__ADMIN_ADDR", "127.0.0.1:0")
        .env("RATEMESH__SERVER__TLS_CERT_FILE", &files.server_cert_file)
        .env("RATEMESH__SERVER__TLS_KEY_FILE", &files.server_key_file)
        .env("RATEMESH__TELEMETRY__LOG_FILTER", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ratemesh up");
    let stdout = child.stdout.take().expect("stdout");
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    // Reads to the end: `up` exits quietly when nobody reads its output any more.
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut port, mut key, mut webhooks, mut secret) = (None, None, None, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while port.is_none() || key.is_none() || webhooks.is_none() || secret.is_none() {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("ratemesh up printed its listeners and keys");
        if let Some(rest) = line.trim().strip_prefix("grpc listening on ") {
            assert!(rest.contains("over TLS"), "{line}");
            let addr = rest.split_whitespace().next().expect("address");
            port = addr.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
        }
        if let Some(rest) = line.trim().strip_prefix("network ") {
            key = Some(rest.trim().to_owned());
        }
        if let Some(rest) = line.trim().strip_prefix("webhooks listening on ") {
            let url = rest.split_whitespace().next().expect("url");
            assert!(url.starts_with("https://"), "{line}");
            webhooks = Some(url.replace("127.0.0.1", "localhost"));
        }
        if let Some(rest) = line.trim().strip_prefix("trial ERP webhook secret: ") {
            secret = rest.split_whitespace().next().map(str::to_owned);
        }
    }
    let banner = Banner {
        grpc_port: port.expect("port"),
        network_key: key.expect("network key"),
        webhooks: webhooks.expect("webhook url"),
        erp_secret: secret.expect("erp secret"),
    };
    (running, banner)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn client_commands_call_over_https_with_the_ca_file() {
    let files = TlsFiles::new();
    let (_running, banner) = up_with_tls(&files);
    let (port, key) = (banner.grpc_port, banner.network_key.clone());
    let https = format!("https://localhost:{port}");

    // The server may still be loading its replica: health first.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let health = ratemesh()
            .args(["health", "--addr", &https, "--ca-file"])
            .arg(&files.ca_file)
            .output()
            .expect("run ratemesh health");
        if health.status.success() {
            assert_eq!(String::from_utf8_lossy(&health.stdout).trim(), "SERVING");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never SERVING: {}",
            stderr(&health)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let listed = ratemesh()
        .args([
            "rates",
            "list",
            "--json",
            "--addr",
            &https,
            "--key",
            &key,
            "--ca-file",
        ])
        .arg(&files.ca_file)
        .output()
        .expect("run ratemesh rates list");
    assert!(listed.status.success(), "{}", stderr(&listed));

    // Without the private CA the server's certificate is not trusted: no call is made.
    let untrusted = ratemesh()
        .args(["rates", "list", "--addr", &https, "--key", &key])
        .output()
        .expect("run ratemesh rates list");
    assert!(!untrusted.status.success());
    assert!(
        stderr(&untrusted).contains("cannot reach ratemesh"),
        "{}",
        stderr(&untrusted)
    );

    // A plaintext client gets no answer from the TLS port.
    let plaintext = ratemesh()
        .args([
            "rates",
            "list",
            "--addr",
            &format!("http://127.0.0.1:{port}"),
            "--key",
            &key,
        ])
        .output()
        .expect("run ratemesh rates list");
    assert!(!plaintext.status.success(), "a plaintext call was answered");

    // The webhook port serves HTTPS too: a signed push goes through with the CA.
    let dir = tempfile::tempdir().expect("tempdir");
    let products = dir.path().join("products.json");
    std::fs::write(
        &products,
        r#"[{"sku":"A-1","category":"home","price":"20","unit_cost":"8"}]"#,
    )
    .expect("write");
    let push = |extra: &[&str]| {
        ratemesh()
            .args(["products", "push"])
            .arg(&products)
            .args(["--url", &banner.webhooks, "--secret", &banner.erp_secret])
            .args(extra)
            .output()
            .expect("run ratemesh products push")
    };
    let ca = files.ca_file.display().to_string();
    let pushed = push(&["--ca-file", &ca]);
    assert!(pushed.status.success(), "{}", stderr(&pushed));
    assert!(
        String::from_utf8_lossy(&pushed.stdout).contains("pushed 1 item"),
        "{}",
        String::from_utf8_lossy(&pushed.stdout)
    );
    let untrusted = push(&[]);
    assert!(!untrusted.status.success(), "a push trusted an unknown CA");
}

#[test]
fn a_key_is_not_sent_in_plaintext_to_another_host_without_insecure() {
    // The refusal happens before connecting, so no server is needed; the address only has
    // to be another machine's.
    let output = ratemesh()
        .args([
            "rates",
            "get",
            "SKU-1",
            "--addr",
            "http://10.255.255.1:50051",
            "--key",
            "rm_network_secret",
        ])
        .output()
        .expect("run ratemesh");
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(
        message.contains("refusing to send the API key in plaintext to 10.255.255.1"),
        "{message}"
    );
    assert!(message.contains("--insecure"), "{message}");
    assert!(!message.contains("rm_network_secret"), "{message}");

    // With --insecure it tries (and, with nothing there, cannot reach the address).
    let output = ratemesh()
        .args([
            "rates",
            "get",
            "SKU-1",
            "--addr",
            "http://10.255.255.1:50051",
            "--key",
            "rm_network_secret",
            "--insecure",
        ])
        .output()
        .expect("run ratemesh");
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("cannot reach ratemesh"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn config_check_loads_the_tls_files() {
    let files = TlsFiles::new();
    let check = |cert: &std::path::Path| {
        ratemesh()
            .args(["config", "check"])
            .env("RATEMESH__SERVER__TLS_CERT_FILE", cert)
            .env("RATEMESH__SERVER__TLS_KEY_FILE", &files.server_key_file)
            .env("RATEMESH__SERVER__TLS_CLIENT_CA_FILE", &files.ca_file)
            .output()
            .expect("run ratemesh config check")
    };
    let ok = check(&files.server_cert_file);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let summary = String::from_utf8_lossy(&ok.stdout);
    assert!(
        summary.contains("TLS listeners with client certificates"),
        "{summary}"
    );

    let missing = check(&files.dir().join("missing.pem"));
    assert_eq!(missing.status.code(), Some(2));
    assert!(
        stderr(&missing).contains("server.tls_cert_file"),
        "{}",
        stderr(&missing)
    );

    // A certificate with somebody else's key.
    let not_the_key = check(&files.client_cert_file);
    assert_eq!(not_the_key.status.code(), Some(2));
    assert!(
        stderr(&not_the_key).contains("server.tls_cert_file"),
        "{}",
        stderr(&not_the_key)
    );

    let lone_key = ratemesh()
        .args(["config", "check"])
        .env("RATEMESH__SERVER__TLS_KEY_FILE", &files.server_key_file)
        .output()
        .expect("run ratemesh config check");
    assert_eq!(lone_key.status.code(), Some(2));
    assert!(
        stderr(&lone_key).contains("server.tls_cert_file"),
        "{}",
        stderr(&lone_key)
    );
}
