//! The JSON gateway over HTTP: who may sign in, the session cookie, CSRF on every change,
//! and the services' refusals as HTTP answers.

use ratemesh_runtime::Role;
use serde_json::{Value, json};

use crate::support::http::{Response, request};
use crate::support::{Mesh, key_of};

/// A signed-in HTTP client: its cookie and CSRF token.
struct Client<'a> {
    mesh: &'a Mesh,
    cookie: String,
    csrf: String,
}

impl Client<'_> {
    async fn get(&self, path: &str) -> Response {
        request(
            self.mesh.console,
            "GET",
            path,
            &[("Cookie", &self.cookie)],
            None,
        )
        .await
    }

    async fn send(&self, method: &str, path: &str, csrf: Option<&str>, body: Value) -> Response {
        let mut headers = vec![("Cookie", self.cookie.as_str())];
        if let Some(csrf) = csrf {
            headers.push(("X-CSRF-Token", csrf));
        }
        request(
            self.mesh.console,
            method,
            path,
            &headers,
            Some(&body.to_string()),
        )
        .await
    }

    async fn post(&self, path: &str, body: Value) -> Response {
        self.send("POST", path, Some(&self.csrf.clone()), body)
            .await
    }
}

async fn sign_in_with(mesh: &Mesh, key: &str) -> Response {
    request(
        mesh.console,
        "POST",
        "/api/session",
        &[],
        Some(&json!({ "key": key }).to_string()),
    )
    .await
}

async fn sign_in(mesh: &Mesh, role: Role) -> Client<'_> {
    let answer = sign_in_with(mesh, &key_of(role)).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    let cookie = answer
        .header("set-cookie")
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    Client {
        mesh,
        cookie,
        csrf: answer.json()["csrf"].as_str().expect("csrf").to_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_merchandisers_and_admins_sign_in_and_every_change_needs_the_csrf_token() {
    let mesh = Mesh::spawn().await;
    mesh.stock_sku("GW-LAMP", "home", 20).await;

    // The page itself ships in the binary and loads nothing from elsewhere.
    let index = request(mesh.console, "GET", "/", &[], None).await;
    assert_eq!(index.status, 200);
    assert!(index.body.contains("/assets/console.js"), "{}", index.body);
    let csp = index.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    let script = request(mesh.console, "GET", "/assets/console.js", &[], None).await;
    assert_eq!(script.status, 200);
    // Only the SVG namespace name looks like a URL; nothing is fetched from elsewhere.
    let script = script.body.replace("'http://www.w3.org/2000/svg'", "");
    assert!(!script.contains("http://") && !script.contains("https://"));

    // Keys of other roles, and unknown keys, are refused.
    for role in [Role::Network, Role::Partner, Role::Erp] {
        let refused = sign_in_with(&mesh, &key_of(role)).await;
        assert_eq!(refused.status, 403, "{role}: {}", refused.body);
        assert!(refused.header("set-cookie").is_none());
        let error = refused.json()["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            error.contains(&format!("a `{role}` key cannot sign in")),
            "{error}"
        );
    }
    let unknown = sign_in_with(&mesh, "not-a-key").await;
    assert_eq!(unknown.status, 401);
    assert_eq!(unknown.json()["error"], "unknown API key");
    let none = request(mesh.console, "GET", "/api/rates", &[], None).await;
    assert_eq!(none.status, 401, "no session, no data");

    // A merchandiser's session: an HttpOnly, same-site cookie (plain HTTP: not Secure).
    let answer = sign_in_with(&mesh, &key_of(Role::Merchandiser)).await;
    assert_eq!(answer.status, 200);
    let cookie = answer.header("set-cookie").expect("cookie").to_owned();
    assert!(cookie.starts_with("ratemesh_session="), "{cookie}");
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(flag), "{cookie} lacks {flag}");
    }
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(
        !answer.body.contains(&key_of(Role::Merchandiser)),
        "the key is never sent back"
    );
    let merch = sign_in(&mesh, Role::Merchandiser).await;
    let session = merch.get("/api/session").await.json();
    assert_eq!(session["role"], "merchandiser");
    assert_eq!(session["csrf"], merch.csrf.as_str());

    let rates = merch.get("/api/rates?q=gw-la").await;
    assert_eq!(rates.status, 200, "{}", rates.body);
    assert_eq!(rates.json()["cards"][0]["sku"], "GW-LAMP");

    // Sorted by rate, in pages; a column that is not one is refused, naming it.
    mesh.stock_sku("GW-RUG", "home", 90).await;
    let by_rate = merch
        .get("/api/rates?sort=effective_rate&dir=desc&per_page=1&page=2")
        .await
        .json();
    assert_eq!(
        (by_rate["total"].as_u64(), by_rate["pages"].as_u64()),
        (Some(2), Some(2))
    );
    let (rug, lamp) = (
        merch.get("/api/rates?q=gw-rug").await.json()["cards"][0].clone(),
        merch.get("/api/rates?q=gw-lamp").await.json()["cards"][0].clone(),
    );
    let lower = if rug["effective_rate"].as_str() < lamp["effective_rate"].as_str() {
        &rug
    } else {
        &lamp
    };
    assert_eq!(
        by_rate["cards"][0]["sku"], lower["sku"],
        "page 2 of 2, highest first"
    );
    let unsortable = merch.get("/api/rates?sort=colour").await;
    assert_eq!(unsortable.status, 400);
    assert_eq!(unsortable.json()["field"], "sort");

    // A change without the token, or with another, is refused and changes nothing.
    let pin = json!({"sku": "GW-LAMP", "kind": "pin", "value": "0.05", "reason": "launch"});
    let missing = merch
        .send("POST", "/api/overrides", None, pin.clone())
        .await;
    assert_eq!(missing.status, 403, "{}", missing.body);
    let forged = merch
        .send("POST", "/api/overrides", Some(&"0".repeat(64)), pin.clone())
        .await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(
        forged.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("CSRF")
    );
    let other = sign_in(&mesh, Role::Admin).await;
    let crossed = merch
        .send("POST", "/api/overrides", Some(&other.csrf), pin.clone())
        .await;
    assert_eq!(crossed.status, 403, "another session's token is no good");
    let listed = merch.get("/api/overrides?sku=GW-LAMP").await.json();
    assert_eq!(listed["overrides"], json!([]), "nothing was set");

    // The services' own validation comes back with the field it names.
    let bad = merch
        .post(
            "/api/overrides",
            json!({"sku": "GW-LAMP", "kind": "pin", "value": "2", "reason": "launch"}),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["field"], "override.value");

    // With the token, the change is made; a second pin conflicts, naming the first.
    let set = merch.post("/api/overrides", pin.clone()).await;
    assert_eq!(set.status, 201, "{}", set.body);
    let first = set.json()["override"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let other_pin = json!({"sku": "GW-LAMP", "kind": "pin", "value": "0.06", "reason": "later"});
    let conflict = merch.post("/api/overrides", other_pin).await;
    assert_eq!(conflict.status, 409, "{}", conflict.body);
    assert_eq!(conflict.json()["conflicts"][0]["id"], first.as_str());
    assert_eq!(conflict.json()["conflicts"][0]["reason"], "launch");

    // The SKU page: its explanation, the override touching it, and its history.
    let detail = merch.get("/api/skus/GW-LAMP").await.json();
    assert_eq!(detail["overrides"][0]["id"], first.as_str());
    assert!(detail["explanation"]["inputs"]["product"]["unit_cost"].is_string());
    let points = crate::support::eventually(
        "the pin is in the history",
        std::time::Duration::from_secs(10),
        || async {
            let history = merch.get("/api/skus/GW-LAMP/history").await.json();
            let points = history["points"].as_array().cloned().unwrap_or_default();
            (points.last().map(|p| p["rate"].clone()) == Some(json!("0.05"))).then_some(points)
        },
    )
    .await;
    assert!(points.len() >= 2, "{points:?}");
    let versions: Vec<u64> = points
        .iter()
        .filter_map(|p| p["version"].as_u64())
        .collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "oldest first: {versions:?}"
    );

    // An incentive opened and cancelled through the gateway.
    let opened = crate::support::eventually(
        "an incentive opens on GW-RUG",
        std::time::Duration::from_secs(20),
        || async {
            let answer = merch
                .post(
                    "/api/incentives",
                    json!({"sku": "GW-RUG", "bonus_rate": "0.01", "duration_minutes": 120,
                           "budget_spend": "250", "reason": "clear the rugs"}),
                )
                .await;
            (answer.status == 201).then(|| answer.json())
        },
    )
    .await;
    assert_eq!(opened["incentive"]["budget_spend"], "250");
    let id = opened["incentive"]["id"].as_str().expect("id").to_owned();
    let unexplained = merch
        .post(
            &format!("/api/incentives/{id}/cancel"),
            json!({"reason": ""}),
        )
        .await;
    assert_eq!(
        unexplained.status, 400,
        "the service wants a reason: {}",
        unexplained.body
    );
    let cancelled = merch
        .post(
            &format!("/api/incentives/{id}/cancel"),
            json!({"reason": "sold"}),
        )
        .await;
    assert_eq!(cancelled.status, 200, "{}", cancelled.body);
    assert_eq!(cancelled.json()["incentive"]["end_reason"], "cancelled");

    // The partners and their deliveries: merchandisers read them (the notifier decides).
    let partners = merch.get("/api/partners").await;
    assert_eq!(partners.status, 200, "{}", partners.body);
    assert_eq!(other.get("/api/partners").await.status, 200);

    // Unknown SKUs are the rates service's NOT_FOUND.
    let unknown = merch.get("/api/skus/NO-SUCH-SKU").await;
    assert_eq!(unknown.status, 404, "{}", unknown.body);
    assert!(unknown.json()["error"].is_string());

    // Signing out needs the token too, and ends the session.
    let out = merch.send("DELETE", "/api/session", None, json!({})).await;
    assert_eq!(out.status, 403);
    let out = merch
        .send("DELETE", "/api/session", Some(&merch.csrf), json!({}))
        .await;
    assert_eq!(out.status, 200);
    assert!(
        out.header("set-cookie")
            .unwrap_or_default()
            .contains("Max-Age=0")
    );
    assert_eq!(merch.get("/api/session").await.status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_service_is_called_at_its_own_endpoint() {
    // A port nothing listens on once the listener is dropped.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port");
    let mesh = Mesh::spawn_with(|settings, grpc| {
        settings.console.grpc_endpoint = format!("http://{grpc}");
        settings.console.notifier_endpoint = format!("http://{closed}");
    })
    .await;
    mesh.stock_sku("SKU-ENDPOINTS", "apparel", 30).await;
    let merch = sign_in(&mesh, Role::Merchandiser).await;

    let rates = merch.get("/api/skus/SKU-ENDPOINTS").await;
    assert_eq!(rates.status, 200, "{}", rates.body);
    let incentives = merch.get("/api/incentives").await;
    assert_eq!(incentives.status, 200, "{}", incentives.body);
    // Only PartnerService is called at the notifier's endpoint, where nothing answers.
    let partners = merch.get("/api/partners").await;
    assert_eq!(partners.status, 503, "{}", partners.body);
}

#[tokio::test]
async fn under_tls_the_console_serves_https_and_its_cookie_is_secure() {
    use std::sync::Arc;

    use ratemesh_bus::testkit::certs::TlsFiles;
    use ratemesh_console::{Console, ConsoleConfig};
    use tokio_rustls::rustls;

    let files = TlsFiles::new();
    let mut settings = ratemesh_testkit::test_settings();
    settings.server.tls_cert_file = files.server_cert_file.display().to_string();
    settings.server.tls_key_file = files.server_key_file.display().to_string();
    let grpc = "127.0.0.1:50051".parse().expect("addr");
    // The gRPC port's certificate names a host, not 127.0.0.1: the endpoint must be given.
    let refused = ConsoleConfig::from_settings(&settings, grpc)
        .err()
        .expect("refused");
    assert!(
        refused.to_string().contains("console.grpc_endpoint"),
        "{refused}"
    );
    settings.console.grpc_endpoint = "https://localhost:50051".into();
    let config = ConsoleConfig::from_settings(&settings, grpc).expect("config");
    let console = Console::bind("127.0.0.1:0".parse().expect("addr"), config)
        .await
        .expect("binds");
    assert!(console.is_tls());
    let addr = console.local_addr();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(console.run(stop.clone()));

    let roots = ratemesh_runtime::tls::load_roots(&files.ca_file).expect("the test CA");
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("protocols")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(client))
        .connect(
            rustls::pki_types::ServerName::try_from("localhost").expect("name"),
            tcp,
        )
        .await
        .expect("TLS handshake");
    let body = json!({ "key": key_of(Role::Merchandiser) }).to_string();
    let answer =
        crate::support::http::request_over(tls, addr, "POST", "/api/session", &[], Some(&body))
            .await;
    stop.cancel();
    assert_eq!(answer.status, 200, "{}", answer.body);
    let cookie = answer.header("set-cookie").expect("cookie");
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
}

/// The lines of an NDJSON answer.
fn ndjson(answer: &Response) -> Vec<Value> {
    answer
        .body
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_what_if_run_streams_its_progress_then_the_report_the_service_computed() {
    let _replays = crate::support::REPLAYS.lock().await;
    let mesh = Mesh::spawn_archiving().await;
    let since = mesh.fill_archive().await;
    let since_text = since.to_rfc3339();
    let merch = sign_in(&mesh, Role::Merchandiser).await;
    let run = json!({
        "candidate_policy": crate::support::candidate_policy(),
        "baseline_policy": "",
        "since": since_text,
        "until": "",
        "skus": [],
    });

    let answer = merch.post("/api/whatif", run.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert!(
        answer
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/x-ndjson")),
        "{:?}",
        answer.headers
    );
    let lines = ndjson(&answer);
    let (result, progress) = lines.split_last().expect("lines");
    assert_eq!(result["event"], "result", "{lines:?}");
    assert!(!progress.is_empty(), "no progress before the report");
    assert!(
        progress.iter().all(|p| p["event"] == "progress"),
        "{progress:?}"
    );
    assert_eq!(progress[0]["phase"], "replaying");
    let total = progress[0]["total"].as_u64().expect("total");
    assert!(total >= 15, "{progress:?}");
    assert!(
        progress
            .windows(2)
            .all(|w| w[0]["done"].as_u64() <= w[1]["done"].as_u64()),
        "{progress:?}"
    );
    let last = progress.last().expect("progress");
    assert_eq!(
        (&last["phase"], last["done"].as_u64()),
        (&json!("reporting"), Some(total))
    );

    // The report is the service's, as the same run over gRPC computes it.
    let direct = mesh.what_if(since).await.expect("a direct run");
    let expected: Value = serde_json::from_str(&direct.report_json).expect("JSON");
    assert_eq!(result["report"], expected);
    assert_eq!(result["events"].as_u64(), Some(direct.events));
    assert!(
        result["baseline_source"]
            .as_str()
            .is_some_and(|s| s.starts_with("live ")),
        "an empty baseline is the live policy: {}",
        result["baseline_source"]
    );
    assert_eq!(
        result["gaps"].as_array().map(Vec::len),
        Some(direct.gaps.len())
    );
    let program = &result["report"]["program"];
    assert_ne!(program["units_sold"], "0", "{program}");
    for figure in [
        "commission_spend",
        "margin_after_commission",
        "scarce_spend",
    ] {
        assert!(program["candidate"][figure].is_string(), "{figure}");
    }

    // Filters and the elasticity reach the service: one category, and an estimate.
    let garden = merch
        .post(
            "/api/whatif",
            json!({
                "candidate_policy": crate::support::candidate_policy(),
                "baseline_policy": crate::support::candidate_policy(),
                "since": since_text,
                "category": "Garden",
                "elasticity": "0.5",
            }),
        )
        .await;
    assert_eq!(garden.status, 200, "{}", garden.body);
    let garden = ndjson(&garden).pop().expect("a result");
    let report = &garden["report"];
    assert_eq!(garden["baseline_source"], "request");
    let categories: Vec<&String> = report["categories"]
        .as_object()
        .expect("categories")
        .keys()
        .collect();
    assert_eq!(categories, ["garden"]);
    assert_eq!(report["estimate"]["kind"], "estimate");
    assert_eq!(
        report["program"]["baseline"], report["program"]["candidate"],
        "the same policy on both sides pays the same"
    );

    // An admin may run one too; a network key cannot even sign in, and without a session
    // nothing runs.
    let admin = sign_in(&mesh, Role::Admin).await;
    let answer = admin.post("/api/whatif", run.clone()).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(ndjson(&answer).pop().expect("a line")["event"], "result");
    let refused = sign_in_with(&mesh, &key_of(Role::Network)).await;
    assert_eq!(refused.status, 403, "{}", refused.body);
    let anonymous = request(
        mesh.console,
        "POST",
        "/api/whatif",
        &[],
        Some(&run.to_string()),
    )
    .await;
    assert_eq!(anonymous.status, 401, "{}", anonymous.body);

    // A change needs the session's CSRF token: without one, or with another, nothing runs.
    let missing = merch.send("POST", "/api/whatif", None, run.clone()).await;
    assert_eq!(missing.status, 403, "{}", missing.body);
    assert!(
        missing.json()["error"]
            .as_str()
            .unwrap_or_default()
            .contains("CSRF")
    );
    let crossed = merch
        .send("POST", "/api/whatif", Some(&admin.csrf), run.clone())
        .await;
    assert_eq!(crossed.status, 403, "{}", crossed.body);

    // A bad policy is refused before anything runs, naming the field and the policy key.
    let sideways =
        crate::support::candidate_policy().replace("mode = \"direct\"", "mode = \"sideways\"");
    let bad = merch
        .post(
            "/api/whatif",
            json!({"candidate_policy": sideways, "since": since_text}),
        )
        .await;
    assert_eq!(bad.status, 400, "{}", bad.body);
    assert_eq!(bad.json()["field"], "candidate_policy");
    let error = bad.json()["error"].as_str().unwrap_or_default().to_owned();
    assert!(error.contains("program.mode"), "{error}");
    let bad_baseline = merch
        .post(
            "/api/whatif",
            json!({"candidate_policy": crate::support::candidate_policy(),
                   "baseline_policy": "[program\n", "since": since_text}),
        )
        .await;
    assert_eq!(bad_baseline.status, 400, "{}", bad_baseline.body);
    assert_eq!(bad_baseline.json()["field"], "baseline_policy");
    // And so are a range that is no date, a missing start and a bad elasticity.
    for (run, field) in [
        (
            json!({"candidate_policy": "x", "since": "yesterday"}),
            "since",
        ),
        (
            json!({"candidate_policy": crate::support::candidate_policy()}),
            "since",
        ),
        (
            json!({"candidate_policy": crate::support::candidate_policy(),
                   "since": since_text, "elasticity": "half"}),
            "elasticity",
        ),
        (
            json!({"candidate_policy": crate::support::candidate_policy(),
                   "since": since_text, "skus": ["WI-LAMP", " "]}),
            "skus[1]",
        ),
    ] {
        let answer = merch.post("/api/whatif", run).await;
        assert_eq!(answer.status, 400, "{field}: {}", answer.body);
        assert_eq!(answer.json()["field"], field, "{}", answer.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_archive_a_what_if_run_names_the_setting_that_turns_it_on() {
    let mesh = Mesh::spawn().await;
    let merch = sign_in(&mesh, Role::Merchandiser).await;
    let since = (chrono::Utc::now() - chrono::TimeDelta::hours(1)).to_rfc3339();
    let run = json!({"candidate_policy": crate::support::candidate_policy(), "since": since});
    let answer = merch.post("/api/whatif", run.clone()).await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    let error = answer.json()["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("ingest.archive.dir"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_goes_away_mid_run_cancels_the_run_on_the_server() {
    use tokio::io::AsyncReadExt as _;

    let _replays = crate::support::REPLAYS.lock().await;
    // One replay thread, so a run goes through many chunks, each a chance to stop.
    let mesh = Mesh::spawn_archiving_with(|ingest| ingest.whatif.threads = 1).await;
    let since = mesh.fill_archive_large(400, 100).await;
    let merch = sign_in(&mesh, Role::Merchandiser).await;
    let run = json!({"candidate_policy": crate::support::candidate_policy(),
                     "since": since.to_rfc3339()})
    .to_string();
    let (completed, cancelled) = (
        mesh.runs_ended("completed").await,
        mesh.runs_ended("cancelled").await,
    );

    // The browser reads the first progress line and goes away.
    let mut connection = crate::support::http::open(
        mesh.console,
        "POST",
        "/api/whatif",
        &[("Cookie", &merch.cookie), ("X-CSRF-Token", &merch.csrf)],
        Some(&run),
    )
    .await;
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&read).contains(r#""event":"progress""#) {
        let n = connection.read(&mut buf).await.expect("read");
        assert!(
            n > 0,
            "the answer ended: {}",
            String::from_utf8_lossy(&read)
        );
        read.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&read).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.contains(r#""event":"result""#), "{text}");
    drop(connection);

    // The gateway drops its gRPC stream, and the server stops the replay instead of
    // finishing it.
    crate::support::eventually(
        "the run ends cancelled",
        std::time::Duration::from_secs(30),
        || async { (mesh.runs_ended("cancelled").await > cancelled).then_some(()) },
    )
    .await;
    assert_eq!(mesh.runs_ended("cancelled").await, cancelled + 1);
    assert_eq!(
        mesh.runs_ended("completed").await,
        completed,
        "the abandoned run finished its replay"
    );

    // Its slot is free again: the next run goes through to its report.
    let answer = merch
        .post("/api/whatif", serde_json::from_str(&run).expect("JSON"))
        .await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(ndjson(&answer).pop().expect("a line")["event"], "result");
    assert_eq!(mesh.runs_ended("completed").await, completed + 1);
}
