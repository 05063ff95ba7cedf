//! One trace per stock change, read back from an OTLP collector in the test process: the
//! whole mesh runs with `telemetry.otlp_endpoint` pointing at it, an ERP pushes stock with
//! its own `traceparent`, and every span the change causes — the webhook, the stream
//! appends and their handling in every service, the incentive it opens, the partner POSTs
//! and the batched Redis calls — is in that trace, under that root, with its
//! semantic-convention kind. A manual incentive is one trace from the RPC to the partner;
//! a read makes its span only when its trace is sampled; a 5,000-item push makes a bounded number of spans, not one per item and stage.
//!
//! One test function: the tracing subscriber is per process, and the exporter's channel
//! lives on the runtime that built it.

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use ratemesh_notifier::webhook::{EVENT_ID_HEADER, INCENTIVE_CHANGED, WebhookBody};
use ratemesh_proto::v1;
use ratemesh_proto::v1::incentive_service_client::IncentiveServiceClient;
use ratemesh_runtime::Role;
use ratemesh_runtime::telemetry::TelemetryGuard;
use ratemesh_testkit::erp::{fresh_batch_id, stock_batch};
use ratemesh_testkit::{
    Bearer, CollectedSpan, Collector, Product, Received, RedisServer, Sink, SpanKind, Stock,
    TestApp, test_settings,
};

/// The ERP's own span: the parent of the webhook's span in every trace here.
const ERP_SPAN: &str = "00f067aa0ba902b7";

fn fresh_trace_id() -> String {
    format!("{:032x}", rand::random::<u128>() | 1)
}

fn traceparent(trace_id: &str) -> String {
    format!("00-{trace_id}-{ERP_SPAN}-01")
}

/// The trace id of a `traceparent` header.
fn trace_of(received: &Received) -> Option<String> {
    let tp = received.header("traceparent")?;
    tp.split('-').nth(1).map(str::to_owned)
}

fn body(received: &Received) -> Option<WebhookBody> {
    serde_json::from_slice(&received.body).ok()
}

/// The incentive webhook about `sku` the sink received, once it arrives.
async fn incentive_webhook(sink: &Sink, sku: &str) -> Received {
    wait_until(&format!("an incentive webhook for {sku}"), || {
        sink.accepted().into_iter().find(|r| {
            body(r).is_some_and(|b| {
                b.event_type == INCENTIVE_CHANGED && b.incentive.is_some_and(|i| i.sku == sku)
            })
        })
    })
    .await
}

async fn wait_until<T>(what: &str, mut found: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = found() {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The spans of `trace_id`, once `complete` holds for them (spans are exported when they
/// end, so a parent may arrive after its children).
async fn trace_when(
    telemetry: &TelemetryGuard,
    collector: &Collector,
    trace_id: &str,
    what: &str,
    complete: impl Fn(&[CollectedSpan]) -> bool,
) -> Vec<CollectedSpan> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        telemetry.flush().await;
        let spans = collector.trace(trace_id);
        if complete(&spans) {
            return spans;
        }
        assert!(
            Instant::now() < deadline,
            "trace {trace_id} never held {what}:\n{}",
            describe(&spans)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn describe(spans: &[CollectedSpan]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{:?} {} ({}) {} <- {}",
                s.kind,
                s.name,
                s.attr("messaging.destination.name").unwrap_or(""),
                s.span_id,
                s.parent_span_id
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every span's parent is the ERP's span or another span of the trace: one tree, no
/// orphan.
fn orphans(spans: &[CollectedSpan]) -> Vec<&CollectedSpan> {
    let ids: HashSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
    spans
        .iter()
        .filter(|s| s.parent_span_id != ERP_SPAN && !ids.contains(s.parent_span_id.as_str()))
        .collect()
}

fn has(spans: &[CollectedSpan], kind: SpanKind, destination: &str) -> bool {
    spans
        .iter()
        .any(|s| s.kind == kind && s.attr("messaging.destination.name") == Some(destination))
}

/// The partner POST that delivered `received`.
fn post_of<'a>(spans: &'a [CollectedSpan], received: &Received) -> Option<&'a CollectedSpan> {
    let event_id = received.header(EVENT_ID_HEADER)?;
    spans
        .iter()
        .find(|s| s.kind == SpanKind::Client && s.attr("event_id") == Some(event_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_change_is_one_trace_from_the_webhook_to_the_partner_post() {
    let collector = Collector::start().await;
    let mut settings = test_settings();
    settings.telemetry.otlp_endpoint = collector.endpoint();
    settings.telemetry.service_name = "ratemesh".into();
    settings.telemetry.log_filter = "warn".into();
    let telemetry = ratemesh_runtime::telemetry::init(&settings.telemetry).expect("telemetry");
    let redis = RedisServer::start();
    let app = TestApp::spawn_on_redis(&redis, settings).await;
    let sink = Sink::start().await;
    app.register_partner("p1", &sink.url(), Default::default())
        .await;
    // Garden opens incentives at 150 days of cover: SHED-1 at 2000 units selling 5 a day
    // has 400. HOSE-1 at 100 units has 20.
    app.push_products(&[
        Product::new("SHED-1", "garden", "200", "80"),
        Product::new("HOSE-1", "garden", "200", "80"),
    ])
    .await;
    app.push_stock(&[Stock::new("HOSE-1", 100).velocity("5")])
        .await;
    app.wait_card("HOSE-1", |c| !c.effective_rate.is_empty())
        .await;

    // An overstock push: the rate moves, the incentives service opens a flash incentive,
    // the rate moves again with it, and the partner hears of both, all in the ERP's trace.
    let pushed = fresh_trace_id();
    let stock = stock_batch(
        &fresh_batch_id("stock"),
        &[Stock::new("SHED-1", 2000).velocity("5")],
    );
    let answer = app
        .erp()
        .post_signed(
            "/v1/stock",
            &stock,
            &[("traceparent", traceparent(&pushed))],
        )
        .await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    let incentive = incentive_webhook(&sink, "SHED-1").await;
    assert_eq!(
        trace_of(&incentive).as_deref(),
        Some(pushed.as_str()),
        "the incentive delivery continues the push's trace"
    );
    let spans = trace_when(
        &telemetry,
        &collector,
        &pushed,
        "every stage through the incentive to its partner POST",
        |spans| {
            post_of(spans, &incentive).is_some()
                && has(spans, SpanKind::Consumer, "incentives")
                && has(spans, SpanKind::Consumer, "rates")
                && orphans(spans).is_empty()
        },
    )
    .await;
    let webhook = spans
        .iter()
        .find(|s| s.parent_span_id == ERP_SPAN)
        .expect("the webhook's span continues the ERP's");
    assert_eq!(webhook.kind, SpanKind::Server);
    assert_eq!(webhook.name, "POST /v1/stock");
    assert_eq!(webhook.attr("http.request.method"), Some("POST"));
    assert_eq!(webhook.attr("http.response.status_code"), Some("202"));
    for stream in ["stock", "incentives", "rates"] {
        for kind in [SpanKind::Producer, SpanKind::Consumer] {
            assert!(
                has(&spans, kind, stream),
                "no {kind:?} span for stream {stream}:\n{}",
                describe(&spans)
            );
        }
    }
    let redis_calls: Vec<&CollectedSpan> = spans
        .iter()
        .filter(|s| s.kind == SpanKind::Client && s.attr("db.system") == Some("redis"))
        .collect();
    assert!(
        redis_calls.iter().any(|s| s.name == "EVALSHA"),
        "no Redis state write in the trace:\n{}",
        describe(&spans)
    );
    for s in spans.iter().filter(|s| s.kind == SpanKind::Consumer) {
        assert_eq!(s.attr("messaging.system"), Some("redis"), "{s:?}");
        assert_eq!(s.attr("messaging.operation"), Some("process"), "{s:?}");
        assert!(s.attr("messaging.consumer.group.name").is_some(), "{s:?}");
    }
    let post = post_of(&spans, &incentive).expect("the incentive's POST");
    assert_eq!(post.attr("http.request.method"), Some("POST"));
    assert_eq!(post.attr("http.response.status_code"), Some("200"));
    assert_eq!(post.attr("url.full"), Some(sink.url().as_str()));
    // The rate change the push caused reaches the partner in the same trace.
    wait_until("a SHED-1 rate delivery in the push's trace", || {
        sink.accepted().into_iter().find(|r| {
            trace_of(r).as_deref() == Some(pushed.as_str())
                && body(r)
                    .and_then(|b| b.rates)
                    .is_some_and(|rates| rates.iter().any(|rate| rate.sku == "SHED-1"))
        })
    })
    .await;

    // A manual incentive is one trace from the merchandiser's RPC to the partner POST.
    let triggered = fresh_trace_id();
    let mut incentives = IncentiveServiceClient::with_interceptor(
        app.channel().await,
        Bearer::role(Role::Merchandiser),
    );
    let mut one_hour = v1::TriggerIncentiveRequest::default()
        .duration
        .unwrap_or_default();
    one_hour.seconds = 3600;
    let mut request = tonic::Request::new(v1::TriggerIncentiveRequest {
        sku: "HOSE-1".into(),
        bonus_rate: "0.01".into(),
        duration: Some(one_hour),
        reason: "weekend push".into(),
        ..Default::default()
    });
    request.metadata_mut().insert(
        "traceparent",
        traceparent(&triggered).parse().expect("metadata value"),
    );
    incentives
        .trigger_incentive(request)
        .await
        .expect("trigger");
    let manual = incentive_webhook(&sink, "HOSE-1").await;
    assert_eq!(trace_of(&manual).as_deref(), Some(triggered.as_str()));
    let spans = trace_when(
        &telemetry,
        &collector,
        &triggered,
        "the RPC, the incentive's stages and its partner POST",
        |spans| post_of(spans, &manual).is_some() && orphans(spans).is_empty(),
    )
    .await;
    let rpc = spans
        .iter()
        .find(|s| s.parent_span_id == ERP_SPAN)
        .expect("the RPC's span continues the caller's");
    assert_eq!(rpc.kind, SpanKind::Server);
    assert_eq!(rpc.name, "ratemesh.v1.IncentiveService/TriggerIncentive");
    assert_eq!(rpc.attr("rpc.system"), Some("grpc"));
    assert_eq!(
        rpc.attr("rpc.service"),
        Some("ratemesh.v1.IncentiveService")
    );
    assert_eq!(rpc.attr("rpc.method"), Some("TriggerIncentive"));
    assert!(has(&spans, SpanKind::Producer, "incentives"));
    assert!(has(&spans, SpanKind::Consumer, "incentives"));

    // A read continues a sampled caller's trace with its RPC span; under a caller whose
    // trace is not sampled it makes no span at all (nothing would export it).
    let mut rates = app.rates(Role::Network).await;
    let (sampled, unsampled) = (fresh_trace_id(), fresh_trace_id());
    for (trace_id, flags) in [(&unsampled, "00"), (&sampled, "01")] {
        let mut request = tonic::Request::new(v1::GetRateRequest {
            sku: "HOSE-1".into(),
            ..Default::default()
        });
        let traceparent = format!("00-{trace_id}-{ERP_SPAN}-{flags}");
        request
            .metadata_mut()
            .insert("traceparent", traceparent.parse().expect("metadata value"));
        rates.get_rate(request).await.expect("GetRate");
    }
    let spans = trace_when(
        &telemetry,
        &collector,
        &sampled,
        "the read's span",
        |spans| !spans.is_empty(),
    )
    .await;
    let rpc = spans
        .iter()
        .find(|s| s.parent_span_id == ERP_SPAN)
        .expect("the read's span continues the caller's");
    assert_eq!(rpc.name, "ratemesh.v1.RateService/GetRate");
    assert_eq!(rpc.kind, SpanKind::Server);
    telemetry.flush().await;
    assert!(
        collector.trace(&unsampled).is_empty(),
        "an unsampled read made spans:\n{}",
        describe(&collector.trace(&unsampled))
    );

    // A 5,000-item push: each stage handles a read batch of it under one span.
    const ITEMS: usize = 5_000;
    let products: Vec<Product> = (0..ITEMS)
        .map(|i| Product::new(&format!("BULK-{i}"), "home", "100", "40"))
        .collect();
    app.push_products(&products).await;
    let big = fresh_trace_id();
    let lines: Vec<Stock> = (0..ITEMS)
        .map(|i| Stock::new(&format!("BULK-{i}"), 20).velocity("10"))
        .collect();
    let stock = stock_batch(&fresh_batch_id("stock"), &lines);
    let answer = app
        .erp()
        .post_signed("/v1/stock", &stock, &[("traceparent", traceparent(&big))])
        .await;
    assert_eq!(answer.status, 202, "{:?}", answer.body);
    let last = format!("BULK-{}", ITEMS - 1);
    wait_until("the last SKU's rate delivery", || {
        sink.accepted().into_iter().find(|r| {
            trace_of(r).as_deref() == Some(big.as_str())
                && body(r)
                    .and_then(|b| b.rates)
                    .is_some_and(|rates| rates.iter().any(|rate| rate.sku == last))
        })
    })
    .await;
    // Settled: nothing of the push is left to read or handle.
    for (stream, group) in [
        ("stock", "rates"),
        ("stock", "incentives"),
        ("rates", "notifier"),
    ] {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stats = app.bus().stream_stats(stream, group).await.expect("stats");
            if stats.undelivered == 0 && stats.pending == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{group} never finished {stream}: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    let spans = trace_when(&telemetry, &collector, &big, "a settled trace", |spans| {
        !spans.is_empty() && orphans(spans).is_empty()
    })
    .await;
    let mut by_name: BTreeMap<String, usize> = BTreeMap::new();
    for s in &spans {
        *by_name
            .entry(format!("{:?} {}", s.kind, s.name))
            .or_default() += 1;
    }
    assert!(
        spans.len() <= ITEMS / 10,
        "{} spans for a {ITEMS}-item push: {by_name:#?}",
        spans.len()
    );
    assert!(has(&spans, SpanKind::Consumer, "stock"));
    assert!(has(&spans, SpanKind::Consumer, "rates"));
    // The rates engine's batched write of the push is in its trace.
    assert!(
        spans
            .iter()
            .any(|s| s.kind == SpanKind::Client && s.name == "EVALSHA"),
        "{by_name:#?}"
    );
    app.stop().await.expect("clean stop");
    telemetry.shutdown().await;
}
