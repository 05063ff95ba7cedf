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
