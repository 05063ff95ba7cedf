//! Checks the compiled `ratemesh.v1` contract: every service and method the design
//! promises is present, every element carries a doc comment, the descriptor set is
//! complete enough for reflection, and unimplemented RPCs answer UNIMPLEMENTED.

use std::collections::{BTreeMap, BTreeSet};

use prost::Message as _;
use prost_types::{FileDescriptorProto, FileDescriptorSet};
use ratemesh_proto::{FILE_DESCRIPTOR_SET, PACKAGE, SERVICE_NAMES};

/// Field numbers of `FileDescriptorProto` and friends, used in `SourceCodeInfo` paths.
mod path {
    pub(crate) const FILE_MESSAGE: i32 = 4;
    pub(crate) const FILE_ENUM: i32 = 5;
    pub(crate) const FILE_SERVICE: i32 = 6;
    pub(crate) const MESSAGE_FIELD: i32 = 2;
    pub(crate) const MESSAGE_NESTED: i32 = 3;
    pub(crate) const MESSAGE_ENUM: i32 = 4;
    pub(crate) const MESSAGE_ONEOF: i32 = 8;
    pub(crate) const ENUM_VALUE: i32 = 2;
    pub(crate) const SERVICE_METHOD: i32 = 2;
}

fn descriptor_set() -> FileDescriptorSet {
    FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("FILE_DESCRIPTOR_SET decodes")
}

fn ratemesh_files(fds: &FileDescriptorSet) -> Vec<&FileDescriptorProto> {
    fds.file.iter().filter(|f| f.package() == PACKAGE).collect()
}

/// Methods of every `ratemesh.v1` service, keyed by full service name.
fn services(fds: &FileDescriptorSet) -> BTreeMap<String, BTreeSet<String>> {
    ratemesh_files(fds)
        .into_iter()
        .flat_map(|f| &f.service)
        .map(|s| {
            let methods = s.method.iter().map(|m| m.name().to_owned()).collect();
            (format!("{PACKAGE}.{}", s.name()), methods)
        })
        .collect()
}

#[test]
fn every_designed_service_and_method_is_present() {
    let expected: &[(&str, &[&str])] = &[
        (
            "ratemesh.v1.InventoryIngest",
            &["PushStock", "UpsertProducts"],
        ),
        (
            "ratemesh.v1.RateService",
            &[
                "GetRate",
                "BatchGetRates",
                "ListRates",
                "WatchRates",
                "ExplainRate",
            ],
        ),
        (
            "ratemesh.v1.OverrideService",
            &[
                "SetOverride",
                "ClearOverride",
                "ListOverrides",
                "ListOverrideAudit",
            ],
        ),
        (
            "ratemesh.v1.IncentiveService",
            &["ListIncentives", "TriggerIncentive", "CancelIncentive"],
        ),
        (
            "ratemesh.v1.PartnerService",
            &[
                "UpsertPartner",
                "GetPartner",
                "RotateSecret",
                "ListDeliveries",
                "RedeliverDeadLetters",
            ],
        ),
        ("ratemesh.v1.PolicyService", &["WhatIf"]),
    ];

    let found = services(&descriptor_set());
    for (service, methods) in expected {
        let have = found
            .get(*service)
            .unwrap_or_else(|| panic!("service {service} missing from the descriptor set"));
        for method in *methods {
            assert!(have.contains(*method), "{service} has no method {method}");
        }
    }
    assert_eq!(
        found.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        SERVICE_NAMES.into_iter().collect::<BTreeSet<_>>(),
        "SERVICE_NAMES must list exactly the services in the contract"
    );
}

#[test]
fn watch_rates_is_a_server_stream() {
    let fds = descriptor_set();
    let watch = ratemesh_files(&fds)
        .into_iter()
        .flat_map(|f| &f.service)
        .flat_map(|s| &s.method)
        .find(|m| m.name() == "WatchRates")
        .expect("WatchRates exists");
    assert!(watch.server_streaming());
    assert!(!watch.client_streaming());
    assert_eq!(watch.output_type(), ".ratemesh.v1.RateUpdate");
}

#[test]
fn every_event_carries_meta_first() {
    let fds = descriptor_set();
    let events = ratemesh_files(&fds)
        .into_iter()
        .find(|f| f.name() == "ratemesh/v1/events.proto")
        .expect("events.proto is compiled");
    let names: BTreeSet<_> = events.message_type.iter().map(|m| m.name()).collect();
    for event in [
        "StockChanged",
        "ProductChanged",
        "RateChanged",
        "OverrideChanged",
        "IncentiveChanged",
    ] {
        assert!(names.contains(event), "event {event} missing");
        let message = events
            .message_type
            .iter()
            .find(|m| m.name() == event)
            .expect("listed above");
        let meta = message
            .field
            .iter()
            .find(|f| f.name() == "meta")
            .unwrap_or_else(|| panic!("{event} has no meta field"));
        assert_eq!(meta.type_name(), ".ratemesh.v1.EventMeta", "{event}.meta");
        assert_eq!(meta.number(), 1, "{event}.meta is field 1");
    }
    let meta = events
        .message_type
        .iter()
        .find(|m| m.name() == "EventMeta")
        .expect("EventMeta exists");
    let fields: BTreeSet<_> = meta.field.iter().map(|f| f.name()).collect();
    for field in ["event_id", "occurred_at", "traceparent"] {
        assert!(fields.contains(field), "EventMeta has no {field}");
    }
}

/// Walks one file and records a readable name for every element that must be
/// documented, keyed by its source-info path.
fn documentable_elements(file: &FileDescriptorProto) -> Vec<(Vec<i32>, String)> {
    fn message(
        out: &mut Vec<(Vec<i32>, String)>,
        at: Vec<i32>,
        prefix: &str,
        m: &prost_types::DescriptorProto,
    ) {
        let name = format!("{prefix}{}", m.name());
        for (i, f) in m.field.iter().enumerate() {
            let mut p = at.clone();
            p.extend([path::MESSAGE_FIELD, i as i32]);
            out.push((p, format!("field {name}.{}", f.name())));
        }
        for (i, o) in m.oneof_decl.iter().enumerate() {
            // proto3 `optional` fields live in synthetic oneofs that have no source of
            // their own.
            let synthetic = m
                .field
                .iter()
                .any(|f| f.proto3_optional() && f.oneof_index == Some(i as i32));
            if !synthetic {
                let mut p = at.clone();
                p.extend([path::MESSAGE_ONEOF, i as i32]);
                out.push((p, format!("oneof {name}.{}", o.name())));
            }
        }
        for (i, e) in m.enum_type.iter().enumerate() {
            let mut p = at.clone();
            p.extend([path::MESSAGE_ENUM, i as i32]);
            enumeration(out, p, &format!("{name}."), e);
        }
        for (i, nested) in m.nested_type.iter().enumerate() {
            let mut p = at.clone();
            p.extend([path::MESSAGE_NESTED, i as i32]);
            message(out, p, &format!("{name}."), nested);
        }
        out.push((at, format!("message {name}")));
    }

    fn enumeration(
        out: &mut Vec<(Vec<i32>, String)>,
        at: Vec<i32>,
        prefix: &str,
        e: &prost_types::EnumDescriptorProto,
    ) {
        let name = format!("{prefix}{}", e.name());
        for (i, v) in e.value.iter().enumerate() {
            let mut p = at.clone();
            p.extend([path::ENUM_VALUE, i as i32]);
            out.push((p, format!("enum value {name}.{}", v.name())));
        }
        out.push((at, format!("enum {name}")));
    }

    let mut out = Vec::new();
    for (i, m) in file.message_type.iter().enumerate() {
        message(&mut out, vec![path::FILE_MESSAGE, i as i32], "", m);
    }
    for (i, e) in file.enum_type.iter().enumerate() {
        enumeration(&mut out, vec![path::FILE_ENUM, i as i32], "", e);
    }
    for (i, s) in file.service.iter().enumerate() {
        let at = vec![path::FILE_SERVICE, i as i32];
        for (j, m) in s.method.iter().enumerate() {
            let mut p = at.clone();
            p.extend([path::SERVICE_METHOD, j as i32]);
            out.push((p, format!("rpc {}.{}", s.name(), m.name())));
        }
        out.push((at, format!("service {}", s.name())));
    }
    out
}

#[test]
fn every_message_field_enum_value_service_and_rpc_is_documented() {
    let fds = descriptor_set();
    let files = ratemesh_files(&fds);
    assert!(
        files.len() >= 7,
        "expected every ratemesh.v1 file, got {}",
        files.len()
    );

    let mut undocumented = Vec::new();
    let mut checked = 0;
    for file in files {
        let info = file
            .source_code_info
            .as_ref()
            .unwrap_or_else(|| panic!("{} was compiled without source info", file.name()));
        let comments: BTreeMap<&[i32], &str> = info
            .location
            .iter()
            .map(|l| (l.path.as_slice(), l.leading_comments()))
            .collect();
        for (p, what) in documentable_elements(file) {
            checked += 1;
            let doc = comments.get(p.as_slice()).copied().unwrap_or_default();
            if doc.trim().is_empty() {
                undocumented.push(format!("{}: {what}", file.name()));
            }
        }
    }
    assert!(
        checked > 300,
        "walked only {checked} elements; the walk is broken"
    );
    assert!(
        undocumented.is_empty(),
        "elements without a leading doc comment:\n{}",
        undocumented.join("\n")
    );
}

#[test]
fn descriptor_set_includes_imports_for_reflection() {
    let fds = descriptor_set();
    let names: BTreeSet<_> = fds.file.iter().map(|f| f.name()).collect();
    for file in &fds.file {
        for dependency in &file.dependency {
            assert!(
                names.contains(dependency.as_str()),
                "{} imports {dependency}, which is missing from the set",
                file.name()
            );
        }
    }
    assert!(names.contains("google/protobuf/timestamp.proto"));
}

#[test]
fn decimals_cross_the_wire_as_strings() {
    // Money, rates and quantities must never be floats.
    let fds = descriptor_set();
    for file in ratemesh_files(&fds) {
        for m in &file.message_type {
            for f in &m.field {
                assert!(
                    !matches!(
                        f.r#type(),
                        prost_types::field_descriptor_proto::Type::Double
                            | prost_types::field_descriptor_proto::Type::Float
                    ),
                    "{}.{} is a float",
                    m.name(),
                    f.name()
                );
            }
        }
    }
}

mod unimplemented_rpcs {
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use ratemesh_proto::v1::{self, rate_service_server::RateService};
    use tonic::{Code, Request};

    /// A server that implements nothing: default stubs must make it compile and answer.
    struct Nothing;

    impl RateService for Nothing {}

    /// Polls a future that must complete without waiting (the default stubs do).
    fn ready<F: Future>(future: F) -> F::Output {
        let mut future = pin!(future);
        match future
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(out) => out,
            Poll::Pending => panic!("default stub did not answer at once"),
        }
    }

    #[test]
    fn an_unimplemented_rpc_answers_unimplemented() {
        let status = ready(Nothing.get_rate(Request::new(v1::GetRateRequest {
            sku: "SKU-1".to_owned(),
            as_of: None,
        })))
        .expect_err("no GetRate implementation");
        assert_eq!(status.code(), Code::Unimplemented);

        let status = ready(Nothing.watch_rates(Request::new(v1::WatchRatesRequest::default())))
            .err()
            .expect("no WatchRates implementation");
        assert_eq!(status.code(), Code::Unimplemented);
    }
}

#[test]
fn reflection_accepts_the_descriptor_set() {
    let mut builder = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET);
    for name in SERVICE_NAMES {
        builder = builder.with_service_name(name);
    }
    assert!(
        builder.build_v1().is_ok(),
        "tonic-reflection rejected FILE_DESCRIPTOR_SET"
    );
}
