//! `PartnerService`: validation with field names, SSRF refusal, secrets shown once, and
//! what a partner key may see.

mod support;

use ratemesh_bus::testkit::RedisServer;
use ratemesh_notifier::NotifierSettings;
use ratemesh_proto::v1;
use ratemesh_runtime::Role;
use ratemesh_testkit::Sink;
use support::*;
use tonic::Code;
use tonic_types::StatusExt;

fn partner(id: &str, url: &str) -> v1::UpsertPartnerRequest {
    v1::UpsertPartnerRequest {
        partner: Some(v1::Partner {
            id: id.into(),
            name: "Acme".into(),
            endpoint_url: url.into(),
            enabled: true,
            ..Default::default()
        }),
    }
}

fn violated_fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_plain_http_destinations_are_refused_unless_allowed() {
    let redis = RedisServer::start();
    let mut settings = fast_settings();
    settings
        .section_mut::<NotifierSettings>()
        .allow_private_destinations = false;
    settings.section_mut::<NotifierSettings>().allow_plain_http = false;
    let notifier = Notifier::start(&redis, &redis.unique_prefix(), settings).await;
    let mut admin = notifier.client(Role::Admin).await;
    for url in [
        "https://127.0.0.1/hook",
        "https://localhost:8443/hook",
        "https://169.254.169.254/latest/meta-data",
        "https://[::1]/hook",
        "https://10.0.0.7/hook",
        "http://hooks.example.com/x",
        "ftp://hooks.example.com/x",
        "not a url",
    ] {
        let err = admin
            .upsert_partner(partner("acme", url))
            .await
            .expect_err(url);
        assert_eq!(err.code(), Code::InvalidArgument, "{url}");
        assert_eq!(violated_fields(&err), vec!["partner.endpoint_url"], "{url}");
    }
    let listed = admin
        .list_partners(v1::ListPartnersRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.partners.is_empty(), "nothing was stored");
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upsert_validates_fields_and_returns_the_secret_only_on_create() {
    let redis = RedisServer::start();
    let notifier = Notifier::start(&redis, &redis.unique_prefix(), fast_settings()).await;
    let sink = Sink::start().await;
    let mut admin = notifier.client(Role::Admin).await;

    let mut bad = partner("Not_Valid", &sink.url());
    let p = bad.partner.as_mut().expect("partner");
    p.name = String::new();
    p.filters = Some(v1::PartnerFilter {
        event_types: vec!["rate.exploded".into()],
        min_change: "-1".into(),
        skus: vec!["has space".into()],
        ..Default::default()
    });
    let err = admin.upsert_partner(bad).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "partner.filters.event_types[0]",
            "partner.filters.min_change",
            "partner.filters.skus[0]",
            "partner.id",
            "partner.name",
        ]
    );

    let created = admin
        .upsert_partner(partner("", &sink.url()))
        .await
        .expect("create with server id")
        .into_inner();
    assert!(created.created);
    assert!(created.signing_secret.len() >= 43, "32 bytes base64url");
    let id = created.partner.expect("partner").id;
    assert!(id.starts_with("p-"), "{id}");

    let updated = admin
        .upsert_partner(partner(&id, &sink.url()))
        .await
        .expect("update")
        .into_inner();
    assert!(!updated.created);
    assert!(
        updated.signing_secret.is_empty(),
        "the secret is shown only once"
    );

    let err = admin
        .get_partner(v1::GetPartnerRequest {
            id: "nobody".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = admin
        .rotate_secret(v1::RotateSecretRequest {
            id: id.clone(),
            overlap: Some(prost_types::Duration {
                seconds: 8 * 24 * 3600,
                nanos: 0,
            }),
        })
        .await
        .expect_err("overlap too long");
    assert_eq!(violated_fields(&err), vec!["overlap"]);
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partner_key_sees_only_its_own_partner() {
    let redis = RedisServer::start();
    let notifier = Notifier::start(&redis, &redis.unique_prefix(), fast_settings()).await;
    let sink = Sink::start().await;
    notifier
        .add_partner(PARTNER_KEY_ID, &sink.url(), v1::PartnerFilter::default())
        .await;
    notifier
        .add_partner("globex", &sink.url(), v1::PartnerFilter::default())
        .await;
    let mut own = notifier.client(Role::Partner).await;

    let me = own
        .get_partner(v1::GetPartnerRequest {
            id: PARTNER_KEY_ID.into(),
        })
        .await
        .expect("own record")
        .into_inner();
    assert_eq!(me.partner.expect("partner").id, PARTNER_KEY_ID);
    own.list_deliveries(v1::ListDeliveriesRequest {
        partner_id: PARTNER_KEY_ID.into(),
        ..Default::default()
    })
    .await
    .expect("own deliveries");
    own.rotate_secret(v1::RotateSecretRequest {
        id: PARTNER_KEY_ID.into(),
        overlap: None,
    })
    .await
    .expect("own secret");

    let denied = [
        own.get_partner(v1::GetPartnerRequest {
            id: "globex".into(),
        })
        .await
        .map(|_| ())
        .expect_err("other record"),
        own.list_deliveries(v1::ListDeliveriesRequest {
            partner_id: "globex".into(),
            ..Default::default()
        })
        .await
        .map(|_| ())
        .expect_err("other deliveries"),
        own.rotate_secret(v1::RotateSecretRequest {
            id: "globex".into(),
            overlap: None,
        })
        .await
        .map(|_| ())
        .expect_err("other secret"),
        own.list_partners(v1::ListPartnersRequest::default())
            .await
            .map(|_| ())
            .expect_err("list"),
        own.upsert_partner(partner("globex", &sink.url()))
            .await
            .map(|_| ())
            .expect_err("upsert"),
    ];
    for status in denied {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    let mut network = notifier.client(Role::Network).await;
    let err = network
        .get_partner(v1::GetPartnerRequest {
            id: PARTNER_KEY_ID.into(),
        })
        .await
        .expect_err("network key");
    assert_eq!(err.code(), Code::PermissionDenied);
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_merchandiser_reads_every_partner_and_redelivers_but_does_not_manage_partners() {
    let redis = RedisServer::start();
    let notifier = Notifier::start(&redis, &redis.unique_prefix(), fast_settings()).await;
    let sink = Sink::start().await;
    for id in [PARTNER_KEY_ID, "globex"] {
        notifier
            .add_partner(id, &sink.url(), v1::PartnerFilter::default())
            .await;
    }
    let mut merchandiser = notifier.client(Role::Merchandiser).await;

    let listed = merchandiser
        .list_partners(v1::ListPartnersRequest::default())
        .await
        .expect("every partner")
        .into_inner();
    let ids: Vec<&str> = listed.partners.iter().map(|p| p.id.as_str()).collect();
    assert_eq!(ids, [PARTNER_KEY_ID, "globex"]);
    for id in [PARTNER_KEY_ID, "globex"] {
        let got = merchandiser
            .get_partner(v1::GetPartnerRequest { id: id.into() })
            .await
            .expect("any partner")
            .into_inner();
        assert_eq!(got.partner.expect("partner").id, id);
        merchandiser
            .list_deliveries(v1::ListDeliveriesRequest {
                partner_id: id.into(),
                ..Default::default()
            })
            .await
            .expect("any partner's deliveries");
        let requeued = merchandiser
            .redeliver_dead_letters(v1::RedeliverDeadLettersRequest {
                partner_id: id.into(),
                ..Default::default()
            })
            .await
            .expect("requeue (nothing is dead)")
            .into_inner();
        assert_eq!(requeued.requeued, 0);
    }

    let denied = [
        merchandiser
            .upsert_partner(partner("initech", &sink.url()))
            .await
            .map(|_| ())
            .expect_err("create"),
        merchandiser
            .rotate_secret(v1::RotateSecretRequest {
                id: "globex".into(),
                overlap: None,
            })
            .await
            .map(|_| ())
            .expect_err("re-key"),
    ];
    for status in denied {
        assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    }
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ownership_is_checked_before_urls_and_resolved_addresses_are_never_echoed() {
    let redis = RedisServer::start();
    let mut settings = fast_settings();
    settings
        .section_mut::<NotifierSettings>()
        .allow_private_destinations = false;
    settings.section_mut::<NotifierSettings>().allow_plain_http = true;
    let notifier = Notifier::start(&redis, &redis.unique_prefix(), settings).await;
    let mut admin = notifier.client(Role::Admin).await;
    for id in [PARTNER_KEY_ID, "globex"] {
        admin
            .upsert_partner(partner(id, "https://93.184.216.34/hook"))
            .await
            .expect("a public literal is accepted");
    }

    // IPv6 forms that carry a loopback or metadata IPv4 address are refused like it.
    for url in [
        "http://[::ffff:0:127.0.0.1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[64:ff9b::a9fe:a9fe]/latest",
        "http://[2002:7f00:1::1]/",
    ] {
        let err = admin
            .upsert_partner(partner("globex", url))
            .await
            .expect_err(url);
        assert_eq!(err.code(), Code::InvalidArgument, "{url}");
        assert_eq!(violated_fields(&err), vec!["partner.endpoint_url"], "{url}");
    }

    // Another partner's record: refused for ownership, before the URL is looked at.
    let mut own = notifier.client(Role::Partner).await;
    let err = own
        .upsert_partner(partner("globex", "https://localhost/hook"))
        .await
        .expect_err("not its record");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    // Its own record: the URL is refused without saying what the name resolves to.
    let err = own
        .upsert_partner(partner(PARTNER_KEY_ID, "https://localhost/hook"))
        .await
        .expect_err("private destination");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let details = format!("{err:?}");
    for address in ["127.0.0.1", "::1"] {
        assert!(!details.contains(address), "{details}");
    }
    notifier.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_skus_and_categories_follow_the_shared_input_rules() {
    let redis = RedisServer::start();
    let notifier = Notifier::start(&redis, &redis.unique_prefix(), fast_settings()).await;
    let sink = Sink::start().await;
    let mut admin = notifier.client(Role::Admin).await;

    let mut bad = partner("acme", &sink.url());
    bad.partner.as_mut().expect("partner").filters = Some(v1::PartnerFilter {
        skus: vec!["OK-1".into(), "no\u{0}nul".into(), "x".repeat(4096)],
        categories: vec!["home\u{0}".into(), "c".repeat(4096)],
        ..Default::default()
    });
    let err = admin.upsert_partner(bad).await.expect_err("invalid");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 200, "{}", err.message());
    let mut fields = violated_fields(&err);
    fields.sort();
    assert_eq!(
        fields,
        vec![
            "partner.filters.categories[0]",
            "partner.filters.categories[1]",
            "partner.filters.skus[1]",
            "partner.filters.skus[2]",
        ]
    );

    let mut good = partner("acme", &sink.url());
    good.partner.as_mut().expect("partner").filters = Some(v1::PartnerFilter {
        categories: vec!["Home".into(), "home".into()],
        ..Default::default()
    });
    let saved = admin
        .upsert_partner(good)
        .await
        .expect("valid")
        .into_inner()
        .partner
        .expect("partner");
    assert_eq!(
        saved.filters.expect("filters").categories,
        vec!["home".to_owned()],
        "stored in the cards' lower case, once"
    );
    notifier.stop().await;
}
