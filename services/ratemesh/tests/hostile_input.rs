//! Malformed and out-of-range gRPC input, through real sockets against every service in
//! one process: undecodable messages, oversized ids and cursors, and values outside what
//! the protocol or the policy allows are INVALID_ARGUMENT naming what was wrong, never
//! INTERNAL; the process keeps serving and nothing is stored.

use std::time::Duration;

use bytes::Bytes;
use prost::Message;
use ratemesh_contract::streams;
use ratemesh_proto::v1;
use ratemesh_proto::v1::incentive_service_client::IncentiveServiceClient;
use ratemesh_proto::v1::override_service_client::OverrideServiceClient;
use ratemesh_proto::v1::rate_service_client::RateServiceClient;
use ratemesh_runtime::Role;
use ratemesh_testkit::{Bearer, TestApp, key_of};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

/// Whether bytes decode as an RPC's request type.
type Decodes = fn(&[u8]) -> bool;

/// Every RPC of the public API, with whether bytes decode as its request type.
const RPCS: [(&str, Decodes); 20] = [
    ("InventoryIngest/PushStock", decodes::<v1::PushStockRequest>),
    (
        "InventoryIngest/UpsertProducts",
        decodes::<v1::UpsertProductsRequest>,
    ),
    ("RateService/GetRate", decodes::<v1::GetRateRequest>),
    (
        "RateService/BatchGetRates",
        decodes::<v1::BatchGetRatesRequest>,
    ),
    ("RateService/ListRates", decodes::<v1::ListRatesRequest>),
    ("RateService/WatchRates", decodes::<v1::WatchRatesRequest>),
    ("RateService/ExplainRate", decodes::<v1::ExplainRateRequest>),
    (
        "OverrideService/SetOverride",
        decodes::<v1::SetOverrideRequest>,
    ),
    (
        "OverrideService/ClearOverride",
        decodes::<v1::ClearOverrideRequest>,
    ),
    (
        "OverrideService/ListOverrides",
        decodes::<v1::ListOverridesRequest>,
    ),
    (
        "OverrideService/ListOverrideAudit",
        decodes::<v1::ListOverrideAuditRequest>,
    ),
    (
        "IncentiveService/ListIncentives",
        decodes::<v1::ListIncentivesRequest>,
    ),
    (
        "IncentiveService/TriggerIncentive",
        decodes::<v1::TriggerIncentiveRequest>,
    ),
    (
        "IncentiveService/CancelIncentive",
        decodes::<v1::CancelIncentiveRequest>,
    ),
    (
        "PartnerService/UpsertPartner",
        decodes::<v1::UpsertPartnerRequest>,
    ),
    (
        "PartnerService/GetPartner",
        decodes::<v1::GetPartnerRequest>,
    ),
    (
        "PartnerService/ListPartners",
        decodes::<v1::ListPartnersRequest>,
    ),
    (
        "PartnerService/RotateSecret",
        decodes::<v1::RotateSecretRequest>,
    ),
    (
        "PartnerService/ListDeliveries",
        decodes::<v1::ListDeliveriesRequest>,
    ),
    (
        "PartnerService/RedeliverDeadLetters",
        decodes::<v1::RedeliverDeadLettersRequest>,
    ),
];

fn decodes<M: Message + Default>(bytes: &[u8]) -> bool {
    M::decode(bytes).is_ok()
}

/// A deterministic byte source (xorshift), so a failure names a reproducible case.
struct Bytes64(u64);

impl Bytes64 {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// One gRPC message frame: flag, big-endian length, payload.
fn frame(flag: u8, declared_len: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = vec![flag];
    out.extend_from_slice(&declared_len.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

fn message(payload: &[u8]) -> Vec<u8> {
    frame(0, payload.len() as u32, payload)
}

/// The request bodies sent to one RPC: framing errors, then payloads that do not decode.
fn hostile_bodies(rpc: usize, decodes: Decodes) -> Vec<(String, Vec<u8>)> {
    let mut cases = vec![
        ("no message frame".to_owned(), Vec::new()),
        (
            "frame shorter than its length".to_owned(),
            frame(0, 100, &[0x0a; 10]),
        ),
        (
            "compressed flag without an encoding".to_owned(),
            frame(1, 3, &[1, 2, 3]),
        ),
        (
            "declared length beyond the limit".to_owned(),
            frame(0, u32::MAX, &[0; 8]),
        ),
        (
            "truncated length-delimited field".to_owned(),
            message(&[0x0a, 0x32, b'a', b'b', b'c', b'd', b'e']),
        ),
        ("invalid wire type".to_owned(), message(&[0x0f, 0x01])),
        (
            "varint longer than ten bytes".to_owned(),
            message(&[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ]),
        ),
    ];
    let mut source = Bytes64(0x9e37_79b9_7f4a_7c15 ^ (rpc as u64 + 1));
    let mut random = 0;
    while random < 8 {
        let len = 1 + (source.next() % 48) as usize;
        let payload = source.bytes(len);
        if !decodes(&payload) {
            cases.push((format!("random bytes {payload:02x?}"), message(&payload)));
            random += 1;
        }
    }
    for (what, body) in &cases[4..] {
        assert!(!decodes(&body[5..]), "{what} decodes: not a hostile case");
    }
    cases
}

/// Sends `body` as the raw request body of `method`; returns the status.
async fn raw_call(
    channel: &Channel,
    method: &str,
    key: Option<&str>,
    body: Vec<u8>,
) -> tonic::Status {
    use http_body_util::BodyExt;
    use tonic::client::GrpcService;

    let mut request = http::Request::post(format!("/ratemesh.v1.{method}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let request = request
        .body(tonic::body::Body::new(http_body_util::Full::new(
            Bytes::from(body),
        )))
        .expect("request");
    let mut channel = channel.clone();
    std::future::poll_fn(|cx| GrpcService::poll_ready(&mut channel, cx))
        .await
        .expect("channel ready");
    let response = GrpcService::call(&mut channel, request)
        .await
        .unwrap_or_else(|e| panic!("{method}: the server did not answer: {e}"));
    assert_eq!(response.status(), 200, "{method}: HTTP status");
    if let Some(status) = tonic::Status::from_header_map(response.headers()) {
        return status;
    }
    let collected = tokio::time::timeout(Duration::from_secs(5), response.into_body().collect())
        .await
        .unwrap_or_else(|_| panic!("{method}: the response did not end"))
        .unwrap_or_else(|e| panic!("{method}: the response broke: {e}"));
    collected
        .trailers()
        .and_then(tonic::Status::from_header_map)
        .unwrap_or_else(|| panic!("{method}: no grpc-status"))
}

/// Entries on every shared stream, the state a refused call must not change.
async fn stream_lengths(app: &TestApp) -> Vec<(&'static str, usize)> {
    let mut lengths = Vec::new();
    for stream in [
        streams::STOCK,
        streams::RATES,
        streams::OVERRIDES,
        streams::INCENTIVES,
    ] {
        let (entries, _) = app
            .bus()
            .read_after(stream, &app.bus().start_cursor(), 100_000)
            .await
            .expect("read stream");
        lengths.push((stream, entries.len()));
    }
    lengths
}

#[tokio::test]
async fn undecodable_messages_are_invalid_arguments_for_every_rpc() {
    let app = TestApp::spawn().await;
    let channel = app.channel().await;
    let admin = key_of(Role::Admin);
    let before = stream_lengths(&app).await;

    let mut sent = 0;
    let mut wrong = Vec::new();
    for (index, (method, decodes)) in RPCS.iter().enumerate() {
        for (what, body) in hostile_bodies(index, *decodes) {
            let status = raw_call(&channel, method, Some(&admin), body).await;
            sent += 1;
            if status.code() != Code::InvalidArgument || !status.message().contains(method) {
                wrong.push(format!(
                    "{method} ({what}): {:?} {}",
                    status.code(),
                    status.message()
                ));
            }
        }
        // Without a key, authentication answers first, before anything is decoded.
        let status = raw_call(&channel, method, None, message(&[0x0f])).await;
        sent += 1;
        if status.code() != Code::Unauthenticated {
            wrong.push(format!("{method} without a key: {:?}", status.code()));
        }
    }
    assert_eq!(sent, 20 * 16);
    assert!(
        wrong.is_empty(),
        "{} of {sent} answered wrongly:\n{}",
        wrong.len(),
        wrong.join("\n")
    );

    // Still serving, and nothing was stored.
    let listed = OverrideServiceClient::with_interceptor(channel, Bearer::role(Role::Admin))
        .list_overrides(v1::ListOverridesRequest::default())
        .await
        .expect("the server still answers");
    assert!(listed.into_inner().overrides.is_empty());
    assert_eq!(stream_lengths(&app).await, before);
    app.stop().await.expect("clean stop");
}

/// The message of a refusal repeats at most a short prefix of what was sent.
fn assert_short(status: &tonic::Status) {
    assert!(
        status.message().len() < 200,
        "{} characters: {}",
        status.message().len(),
        status.message()
    );
}

fn field_of(status: &tonic::Status) -> Vec<String> {
    assert_short(status);
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn oversized_ids_and_cursors_are_invalid_with_short_messages() {
    let app = TestApp::spawn().await;
    let huge = "a".repeat(4096);
    let mut overrides =
        OverrideServiceClient::with_interceptor(app.channel().await, Bearer::role(Role::Admin));
    let mut incentives =
        IncentiveServiceClient::with_interceptor(app.channel().await, Bearer::role(Role::Admin));
    let mut rates =
        RateServiceClient::with_interceptor(app.channel().await, Bearer::role(Role::Admin));

    let status = overrides
        .clear_override(v1::ClearOverrideRequest {
            id: huge.clone(),
            reason: "tidy up".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field_of(&status), ["id"]);

    let status = incentives
        .cancel_incentive(v1::CancelIncentiveRequest {
            id: huge.clone(),
            reason: "tidy up".into(),
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field_of(&status), ["id"]);

    let cursor = "ab".repeat(2048);
    let status = rates
        .list_rates(v1::ListRatesRequest {
            changed_since: cursor.clone(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field_of(&status), ["changed_since"]);
    let status = rates
        .watch_rates(v1::WatchRatesRequest {
            cursor: cursor.clone(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(field_of(&status), ["cursor"]);
    let status = rates
        .get_rate(v1::GetRateRequest {
            sku: huge.clone(),
            ..Default::default()
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_short(&status);

    let status = overrides
        .set_override(v1::SetOverrideRequest {
            r#override: Some(v1::Override {
                scope: Some(v1::r#override::Scope::Sku("SKU-1".into())),
                kind: v1::OverrideKind::Pin as i32,
                value: format!("0.{huge}"),
                reason: "promo".into(),
                ..Default::default()
            }),
            replace_conflicting: false,
        })
        .await
        .expect_err("refused");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_short(&status);

    app.stop().await.expect("clean stop");
}

/// A timestamp `seconds` after the epoch.
fn at(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

#[tokio::test]
async fn set_override_refuses_out_of_range_times_extra_places_and_odd_categories() {
    let app = TestApp::spawn().await;
    let mut overrides = OverrideServiceClient::with_interceptor(
        app.channel().await,
        Bearer::role(Role::Merchandiser),
    );
    let now = chrono::Utc::now().timestamp();
    let good = v1::Override {
        scope: Some(v1::r#override::Scope::Category("home".into())),
        kind: v1::OverrideKind::Pin as i32,
        value: "0.05".into(),
        starts_at: Some(at(now)),
        ends_at: Some(at(now + 3600)),
        reason: "spring promo".into(),
        ..Default::default()
    };
    let year_0 = -62_135_596_800 - 86_400;
    let year_10000 = 253_402_300_800;
    let cases: Vec<(&str, v1::Override)> = vec![
        (
            "override.starts_at",
            v1::Override {
                starts_at: Some(at(year_0)),
                ..good.clone()
            },
        ),
        (
            "override.ends_at",
            v1::Override {
                ends_at: Some(at(year_10000)),
                ..good.clone()
            },
        ),
        (
            "override.value",
            v1::Override {
                value: "0.05000001".into(),
                ..good.clone()
            },
        ),
        (
            "override.category",
            v1::Override {
                scope: Some(v1::r#override::Scope::Category("home\0".into())),
                ..good.clone()
            },
        ),
        (
            "override.sku",
            v1::Override {
                scope: Some(v1::r#override::Scope::Sku("SKU 1".into())),
                ..good.clone()
            },
        ),
        (
            "override.reason",
            v1::Override {
                reason: "spring\u{7}promo".into(),
                ..good.clone()
            },
        ),
    ];
    for (field, value) in cases {
        let status = overrides
            .set_override(v1::SetOverrideRequest {
                r#override: Some(value),
                replace_conflicting: false,
            })
            .await
            .expect_err(field);
        assert_eq!(status.code(), Code::InvalidArgument, "{field}: {status:?}");
        assert_eq!(field_of(&status), [field], "{status:?}");
    }
    let listed = overrides
        .list_overrides(v1::ListOverridesRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.overrides.is_empty(), "{listed:?}");

    // The same override within range is accepted, its category in lower case.
    let set = overrides
        .set_override(v1::SetOverrideRequest {
            r#override: Some(v1::Override {
                scope: Some(v1::r#override::Scope::Category("Home".into())),
                ..good
            }),
            replace_conflicting: false,
        })
        .await
        .expect("a valid override is set")
        .into_inner();
    let stored = set.r#override.expect("override");
    assert_eq!(
        stored.scope,
        Some(v1::r#override::Scope::Category("home".into()))
    );
    app.stop().await.expect("clean stop");
}
