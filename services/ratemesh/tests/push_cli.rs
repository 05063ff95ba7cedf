//! `ratemesh stock push` and `ratemesh products push` against a running ratemesh: the
//! integrator's way of testing a feed.

use ratemesh::IngestSettings;
use std::process::Command;

use ratemesh_bus::{Bus, BusOptions};
use ratemesh_testkit::settings::erp_source;
use ratemesh_testkit::{TestApp, test_settings};

const SECRET: &str = "integration-secret-0001";

fn push(kind: &str, file: &std::path::Path, url: &str) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_ratemesh"))
        .args([kind, "push"])
        .arg(file)
        .args(["--url", url, "--batch-size", "2"])
        .env("RATEMESH_ERP_SECRET", SECRET)
        .output()
        .expect("run ratemesh")
}

// Multi-threaded: the CLI runs as a blocking child process while the app serves it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_csv_feed_is_signed_sent_in_batches_and_safe_to_rerun() {
    let mut settings = test_settings();
    settings.section_mut::<IngestSettings>().sources = erp_source("feed-test", &[SECRET]);
    let bus = Bus::memory(BusOptions::embedded()).expect("bus");
    let app = TestApp::spawn_with(settings, bus).await;
    let url = format!("http://{}", app.http.expect("webhook port"));
    let dir = tempfile::tempdir().expect("tempdir");

    let products = dir.path().join("products.json");
    std::fs::write(
        &products,
        r#"[{"sku":"A-1","category":"home","price":"20","unit_cost":"8"},{"sku":"B-2","category":"home","price":"30","unit_cost":"9"}]"#,
    )
    .expect("write");
    let output = push("products", &products, &url);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let as_of = chrono::Utc::now().to_rfc3339();
    let stock = dir.path().join("stock.csv");
    std::fs::write(
        &stock,
        format!("sku,location,on_hand,as_of,sequence\nA-1,dc-1,5,{as_of},1\nB-2,dc-1,500,{as_of},1\nA-1,dc-2,7,{as_of},1\n"),
    )
    .expect("write");
    let output = push("stock", &stock, &url);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("pushed 3 items"), "{stdout}");
    assert!(stdout.contains("applied 3"), "{stdout}");

    // Re-running the same file applies nothing twice: every batch is answered again, and
    // the summary says so instead of claiming the items were applied now.
    let output = push("stock", &stock, &url);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    assert!(
        stdout.contains("already applied (replayed) 3"),
        "remembered answers: {stdout}"
    );
    assert!(!stdout.contains("applied 3,"), "{stdout}");

    // --json is for scripts: piped, each batch's answer is a JSON line on stdout, nothing else.
    let output = Command::new(env!("CARGO_BIN_EXE_ratemesh"))
        .args(["stock", "push"])
        .arg(&stock)
        .args(["--url", &url, "--batch-size", "2", "--json"])
        .env("RATEMESH_ERP_SECRET", SECRET)
        .output()
        .expect("run ratemesh");
    assert!(output.status.success());
    let stdout = String::from_utf8_lossy(&output.stdout);
    let answers: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(answers.len(), 2, "one answer per batch: {stdout}");
    assert!(answers.iter().all(|a| a["replayed"] == true), "{stdout}");
    let entries = support_stock_len(&app).await;
    assert_eq!(entries, 5, "2 products + 3 stock updates, each once");

    // A bad row is reported by its place in the file.
    let bad = dir.path().join("bad.csv");
    std::fs::write(
        &bad,
        format!("sku,on_hand,as_of,sequence\nA-1,1,{as_of},2\nB-2,1,{as_of},2\nC-3,-5,{as_of},1\n"),
    )
    .expect("write");
    let output = push("stock", &bad, &url);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("item 3 of the file.on_hand"), "{stderr}");

    // A wrong secret is refused with the server's reason.
    let output = Command::new(env!("CARGO_BIN_EXE_ratemesh"))
        .args(["stock", "push"])
        .arg(&stock)
        .args(["--url", &url, "--secret", "wrong-secret-wrong-secret"])
        .output()
        .expect("run ratemesh");
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("401"));
    app.stop().await.expect("clean stop");
}

async fn support_stock_len(app: &TestApp) -> usize {
    app.bus()
        .read_after(
            ratemesh_contract::streams::STOCK,
            &app.bus().start_cursor(),
            1000,
        )
        .await
        .expect("read")
        .0
        .len()
}
