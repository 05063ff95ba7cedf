//! The engine on the embedded bus: stock readings published as ingest publishes them
//! move the stored and published cards the way the policy says.

mod engine_support;

use std::time::Duration;

use engine_support::*;
use ratemesh_bus::StateWrite;
use ratemesh_contract::kinds;
use ratemesh_core::{Event, Policy, replay};
use ratemesh_rates::engine::record::NAMESPACE;
use ratemesh_rates::engine::timers;
use ratemesh_testkit::eventually;

#[tokio::test]
async fn stock_moves_the_rate_down_when_scarce_and_up_on_overstock_with_reasons() {
    let bus = memory_bus();
    let engine = engine(&bus, example_policy());
    // home: base 6 %, scarce (< 7 days) −2 points, overstock (90–180 days) +2 points.
    // The ERP sends stock first, then master data: the first card is the policy's
    // target (there is nothing to damp from).
    let mut entries = vec![
        stock("SCARCE-1", 20, 1, t(0), Some(10)).1, // 2 days of cover
        stock("OVER-1", 1500, 1, t(0), Some(10)).1, // 150 days
        stock("NORMAL-1", 500, 1, t(0), Some(10)).1, // 50 days
    ];
    for s in ["SCARCE-1", "OVER-1", "NORMAL-1"] {
        entries.push(product(s, "home", 100, 40, t(1)).1);
    }
    bus.publish_batch(STOCK, entries).await.unwrap();
    let (stop, task) = spawn_consumer(&engine, STOCK, "c1");
    drained(&bus, STOCK, Duration::from_secs(10)).await;

    let scarce = published(&bus, "SCARCE-1").await.expect("scarce card");
    assert_eq!(scarce.effective_rate, "0.04");
    assert_eq!(codes(&scarce), ["LOW_COVER"]);
    assert!(scarce.reasons[0].text.contains("low cover"), "{scarce:?}");
    assert_eq!(scarce.band, "scarce");
    assert_eq!(scarce.category, "home");
    assert_eq!(scarce.version, 1);

    let over = published(&bus, "OVER-1").await.expect("overstock card");
    assert_eq!(over.effective_rate, "0.08");
    assert_eq!(codes(&over), ["OVERSTOCK"]);
    assert_eq!(over.band, "overstock");

    let normal = published(&bus, "NORMAL-1").await.expect("normal card");
    assert_eq!(normal.effective_rate, "0.06");
    assert_eq!(codes(&normal), ["BASE_RATE"]);

    // The scarce SKU is restocked a day later: the rate rises, damped to one point per
    // recompute, as a new version with the previous rate.
    bus.publish(STOCK, stock("SCARCE-1", 1500, 2, t(24 * 60), Some(10)).1)
        .await
        .unwrap();
    drained(&bus, STOCK, Duration::from_secs(10)).await;
    let moved = published(&bus, "SCARCE-1").await.unwrap();
    assert_eq!(moved.effective_rate, "0.05");
    assert_eq!(moved.previous_rate, "0.04");
    assert_eq!(moved.version, 2);
    assert!(codes(&moved).contains(&"DAMPED"), "{moved:?}");

    // Every publication is on the rates stream, in order, with its previous rate.
    let changes = rate_changes(&bus).await;
    let scarce_changes: Vec<_> = changes
        .iter()
        .filter_map(|c| c.card.as_ref())
        .filter(|c| c.sku == "SCARCE-1")
        .map(|c| (c.version, c.effective_rate.clone()))
        .collect();
    assert_eq!(scarce_changes, [(1, "0.04".into()), (2, "0.05".into())]);
    assert_eq!(changes.len(), 4);

    // A redelivered (older) reading changes nothing and publishes nothing.
    bus.publish(STOCK, stock("SCARCE-1", 1, 1, t(1), Some(10)).1)
        .await
        .unwrap();
    drained(&bus, STOCK, Duration::from_secs(10)).await;
    assert_eq!(published(&bus, "SCARCE-1").await.unwrap(), moved);
    assert_eq!(rate_changes(&bus).await.len(), 4);

    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn hold_expiry_timers_finish_a_damped_move_without_new_stock() {
    let bus = memory_bus();
    let engine = engine(&bus, example_policy());
    bus.publish_batch(
        STOCK,
        vec![
            stock("S-1", 20, 1, t(0), Some(10)).1,
            product("S-1", "home", 100, 40, t(1)).1,
            // after the home hold time (4 h): deep overstock, target 10 %
            stock("S-1", 5000, 2, t(241), Some(10)).1,
        ],
    )
    .await
    .unwrap();
    let (stop, task) = spawn_consumer(&engine, STOCK, "c1");
    drained(&bus, STOCK, Duration::from_secs(10)).await;
    assert_eq!(published(&bus, "S-1").await.unwrap().effective_rate, "0.05");

    // The damped card scheduled a durable recompute at the end of its hold; each one
    // moves another step (the event times are in the past, so they are all due now).
    let timer_stop = tokio_util::sync::CancellationToken::new();
    let timer_task = tokio::spawn(ratemesh_rates::recompute::run(
        engine.clone(),
        timer_stop.clone(),
    ));
    let card = eventually(
        "the rate to reach its target",
        Duration::from_secs(10),
        || {
            let bus = bus.clone();
            async move {
                published(&bus, "S-1")
                    .await
                    .filter(|c| c.effective_rate == "0.1")
            }
        },
    )
    .await;
    assert_eq!(codes(&card), ["OVERSTOCK"]);
    // The three entries came in one batch and were folded in one update, so 0.04 was
    // computed but only 0.05 published (v1); then 0.06 … 0.10 from timers, one version
    // per step.
    assert_eq!(card.version, 6);
    // the steps are one hold time apart, computed at their due time, not at the wall clock
    let computed = card.computed_at.as_ref().unwrap();
    assert_eq!(
        computed.seconds,
        (t(241) + chrono::TimeDelta::hours(20)).timestamp()
    );
    timer_stop.cancel();
    timer_task.await.unwrap().unwrap();
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn going_out_of_stock_and_back_is_published_even_when_the_rate_holds() {
    let bus = memory_bus();
    let engine = engine(&bus, example_policy());
    let s = sku("OOS-1");
    // home pays its 6 % base both out of stock and at 50 days of cover ("normal", +0).
    let steps: [(Event, Option<u64>, bool); 4] = [
        (product("OOS-1", "home", 100, 40, t(0)).0, Some(1), true),
        (stock("OOS-1", 500, 1, t(1), Some(10)).0, Some(2), false),
        (stock("OOS-1", 0, 2, t(2), Some(10)).0, Some(3), true),
        // Still out of stock: nothing new to say.
        (stock("OOS-1", 0, 3, t(3), Some(10)).0, None, true),
    ];
    for (event, version, out_of_stock) in steps {
        let outcome = engine.apply(&s, &[event]).await.unwrap();
        assert_eq!(outcome.published, version);
        let card = published(&bus, "OOS-1").await.expect("card");
        assert_eq!(card.effective_rate, "0.06", "{card:?}");
        assert_eq!(
            codes(&card).contains(&"OUT_OF_STOCK"),
            out_of_stock,
            "{card:?}"
        );
    }
}

#[tokio::test]
async fn a_peak_window_sweep_recomputes_every_sku_with_the_peak_table() {
    let bus = memory_bus();
    // Only the past BFCM window, so the cards computed before the sweep are off-peak
    // whatever today's date is.
    let mut config = Policy::example().config().clone();
    config.peak_windows.retain(|w| w.name == "bfcm-2025");
    for category in config.categories.values_mut() {
        if let Some(tables) = &mut category.peak_bands {
            tables.retain(|window, _| window == "bfcm-2025");
        }
    }
    let engine = engine(&bus, Policy::from_config(&config).unwrap());
    let mut entries = Vec::new();
    for i in 0..120 {
        let s = format!("P-{i:03}");
        entries.push(stock(&s, 100, 1, t(0), Some(10)).1); // 10 days: "low" (0.8)
        entries.push(product(&s, "electronics", 100, 40, t(1)).1);
    }
    bus.publish_batch(STOCK, entries).await.unwrap();
    let (stop, task) = spawn_consumer(&engine, STOCK, "c1");
    drained(&bus, STOCK, Duration::from_secs(20)).await;
    assert_eq!(published(&bus, "P-007").await.unwrap().band, "low");

    // BFCM 2025 starts at Thanksgiving midnight in New York.
    let (_, bfcm) = engine
        .policy()
        .peak_windows
        .iter()
        .enumerate()
        .find(|(_, w)| w.name == "bfcm-2025")
        .unwrap();
    // An earlier attempt at this sweep died after its first page (the engine scans 50
    // SKUs a page): the sweep resumes at the recorded page and forgets it when done.
    let first_page = bus.scan_states(NAMESPACE, None, 50).await.unwrap();
    let second = first_page.next.clone().expect("more than one page");
    bus.write_state(
        StateWrite::new(timers::SWEEPS, "peak-edge").set("next_page", second.into_bytes()),
    )
    .await
    .unwrap();
    let resumed = timers::sweep(&engine, None, bfcm.starts_at, true, Some("peak-edge"))
        .await
        .unwrap();
    assert_eq!(resumed, 70);
    assert_eq!(
        bus.get_state(timers::SWEEPS, "peak-edge").await.unwrap(),
        None
    );
    let skipped = &first_page.items[0].0;
    assert!(!codes(&published(&bus, skipped).await.unwrap()).contains(&"PEAK_WINDOW"));

    // The whole sweep picks up the rest.
    let changed = timers::sweep(&engine, None, bfcm.starts_at, true, None)
        .await
        .unwrap();
    assert_eq!(changed, 50);
    for i in [0, 59, 119] {
        let card = published(&bus, &format!("P-{i:03}")).await.unwrap();
        assert!(codes(&card).contains(&"PEAK_WINDOW"), "{card:?}");
        // 10 days is "normal" in the peak table
        assert_eq!(card.band, "normal");
    }
    // The same sweep again (a crash mid-sweep re-runs it) changes nothing.
    let again = timers::sweep(&engine, None, bfcm.starts_at, true, None)
        .await
        .unwrap();
    assert_eq!(again, 0);
    stop.cancel();
    task.await.unwrap().unwrap();
}

fn inputs() -> Vec<(Event, ratemesh_bus::Event)> {
    let mut all = Vec::new();
    for s in ["A", "B", "C", "D"] {
        all.push(product(s, "toys", 50, 20, t(0)));
    }
    for seq in 1..=30u64 {
        for (i, s) in ["A", "B", "C", "D"].iter().enumerate() {
            let on_hand = ((seq as i64 * 37 + i as i64 * 101) % 400) + 1;
            all.push(stock(
                s,
                on_hand,
                seq,
                t(seq as i64 * 10),
                Some(5 + i as i64),
            ));
        }
    }
    all
}

#[tokio::test]
async fn duplicated_and_reordered_entries_converge_to_the_same_cards() {
    let policy = path_independent_policy();
    let all = inputs();
    let core: Vec<Event> = all.iter().map(|(c, _)| c.clone()).collect();
    let expected = replay(&policy, &core);

    // Delivered in a scrambled order, with every reading delivered twice.
    let mut scrambled: Vec<ratemesh_bus::Event> = Vec::new();
    let n = all.len();
    for k in 0..n {
        let i = (k * 53) % n; // 53 is coprime with n = 124
        scrambled.push(all[i].1.clone());
        if k % 3 == 0 {
            scrambled.push(all[(i + 7) % n].1.clone());
        }
    }
    for (_, e) in all.iter().rev() {
        scrambled.push(e.clone());
    }
    let bus = memory_bus();
    let engine = engine(&bus, policy.clone());
    bus.publish_batch(STOCK, scrambled).await.unwrap();
    let (stop, task) = spawn_consumer(&engine, STOCK, "c1");
    drained(&bus, STOCK, Duration::from_secs(20)).await;
    stop.cancel();
    task.await.unwrap().unwrap();

    for (sku, want) in &expected {
        let got = ratemesh_rates::engine::stored_core_card(&engine, sku)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got.effective_rate, want.effective_rate, "{sku}");
        assert_eq!(got.parts, want.parts, "{sku}");
        assert_eq!(got.reasons, want.reasons, "{sku}");
        let card = published(&bus, sku.as_str()).await.unwrap();
        assert_eq!(
            card.effective_rate,
            want.effective_rate.get().normalize().to_string()
        );
    }
}

#[tokio::test]
async fn an_undecodable_entry_is_dead_lettered_and_the_rest_applied() {
    let mut options = fast_options();
    options.max_deliveries = 2;
    options.reclaim_idle = Duration::from_millis(50);
    let bus = ratemesh_bus::Bus::memory(options).unwrap();
    let engine = engine(&bus, example_policy());
    bus.publish_batch(
        STOCK,
        vec![
            product("OK-1", "home", 100, 40, t(0)).1,
            // Built by hand on purpose: no encoder writes a payload that does not decode.
            ratemesh_bus::Event::new("BAD-1", b"\xff\xff not protobuf".to_vec())
                .with_kind(kinds::STOCK_CHANGED),
            stock("OK-1", 500, 1, t(1), Some(10)).1,
        ],
    )
    .await
    .unwrap();
    let (stop, task) = spawn_consumer(&engine, STOCK, "c1");
    drained(&bus, STOCK, Duration::from_secs(10)).await;
    assert_eq!(
        published(&bus, "OK-1").await.unwrap().effective_rate,
        "0.06"
    );
    let dead = bus.dead_letters(STOCK, GROUP, 10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0].error.contains("StockChanged does not decode"),
        "{:?}",
        dead[0]
    );
    stop.cancel();
    task.await.unwrap().unwrap();
}

#[tokio::test]
async fn an_incentive_is_published_with_its_end_as_the_guarantee() {
    let bus = memory_bus();
    let engine = engine(&bus, example_policy());
    let policy = example_policy();
    let rules = &policy.category("home").flash;
    let incentive =
        ratemesh_core::Incentive::open("inc-1".into(), sku("INC-1"), "home".into(), rules, t(10));
    let events = [
        product("INC-1", "home", 100, 40, t(0)).0,
        stock("INC-1", 1500, 1, t(1), Some(10)).0,
        Event::IncentiveOpened {
            incentive: incentive.clone(),
            at: t(10),
        },
    ];
    let outcome = engine.apply(&sku("INC-1"), &events).await.unwrap();
    assert!(outcome.published.is_some());
    let card = published(&bus, "INC-1").await.expect("card");
    assert!(codes(&card).contains(&"INCENTIVE"), "{card:?}");
    assert_eq!(
        card.guaranteed_until,
        Some(ratemesh_rates::convert::timestamp(incentive.ends_at))
    );
}

/// A policy with a peak window open from two days ago to three days ahead, whatever today is.
fn policy_with_a_window_open_now() -> Policy {
    let today = chrono::Utc::now().date_naive();
    let window = format!(
        "\n[[peak_windows]]\nname = \"open-now\"\nstart = \"{}\"\nend = \"{}\"\nbands = [\n  \
         {{ name = \"short\", max_days = \"5\", multiplier = \"0.7\" }},\n  \
         {{ name = \"long\", multiplier = \"1.5\" }},\n]\n",
        today - chrono::TimeDelta::days(2),
        today + chrono::TimeDelta::days(3)
    );
    let only_window = Policy::from_toml_str(&window).unwrap();
    let mut config = example_policy().config().clone();
    config.peak_windows = only_window.config().peak_windows.clone();
    Policy::from_config(&config).unwrap()
}

#[tokio::test]
async fn a_peak_window_that_opened_while_no_replica_ran_is_applied_at_start_up() {
    let bus = memory_bus();
    let engine = engine(&bus, policy_with_a_window_open_now());
    // Priced in March 2025, long before the window: off-peak.
    for s in ["W-1", "W-2"] {
        engine
            .apply(
                &sku(s),
                &[
                    product(s, "home", 100, 40, t(0)).0,
                    stock(s, 500, 1, t(1), Some(10)).0,
                ],
            )
            .await
            .unwrap();
        let card = published(&bus, s).await.unwrap();
        assert!(!codes(&card).contains(&"PEAK_WINDOW"), "{card:?}");
    }

    // The process starts while the window is open: its start passed unseen.
    timers::schedule_peak_windows(&engine, chrono::Utc::now())
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(ratemesh_rates::recompute::run(engine.clone(), stop.clone()));
    for s in ["W-1", "W-2"] {
        let card = eventually("the window's table", Duration::from_secs(10), || {
            let bus = bus.clone();
            async move {
                published(&bus, s)
                    .await
                    .filter(|c| codes(c).contains(&"PEAK_WINDOW"))
            }
        })
        .await;
        assert_eq!(card.band, "long", "{card:?}");
    }
    stop.cancel();
    task.await.unwrap().unwrap();

    // The next start knows the edge was swept: no second sweep is due.
    timers::schedule_peak_windows(&engine, chrono::Utc::now())
        .await
        .unwrap();
    let due = bus
        .claim_due(timers::QUEUE, std::time::SystemTime::now(), 100)
        .await
        .unwrap();
    assert!(due.iter().all(|d| !d.member.starts_with("all:")), "{due:?}");
}

fn boost_policy() -> Policy {
    Policy::from_toml_str(
        r#"
[program]
id = "boost-test"
mode = "boost"
[network]
notice_hours = 168
max_cut = "0.20"
cut_period_days = 30
boost_hours = 72
[defaults]
base_rate = "0.05"
bands = [
    { name = "scarce", max_days = "3", multiplier = "0.6" },
    { name = "normal", max_days = "60", multiplier = "1.0" },
    { name = "overstock", multiplier = "1.4" },
]
hysteresis = "0"
max_step = "1"
min_hold_minutes = 0
floor = "0.01"
cap = "0.20"
margin_share = "0.40"
"#,
    )
    .unwrap()
}

fn product_with_base(s: &str, base: &str, at: chrono::DateTime<chrono::Utc>) -> Event {
    Event::ProductUpserted {
        sku: sku(s),
        product: ratemesh_core::Product {
            category: "home".into(),
            price: ratemesh_core::Money::new(100.into()).unwrap(),
            unit_cost: ratemesh_core::Money::new(40.into()).unwrap(),
            base_rate: Some(ratemesh_core::Rate::new(base.parse().unwrap()).unwrap()),
        },
        at,
        received_at: Some(at),
    }
}

#[tokio::test]
async fn a_base_cut_is_announced_when_scheduled_and_published_again_when_it_takes_effect() {
    let bus = memory_bus();
    let engine = engine(&bus, boost_policy());
    let s = sku("CUT-1");
    engine
        .apply(
            &s,
            &[
                product_with_base("CUT-1", "0.08", t(0)),
                stock("CUT-1", 300, 1, t(1), Some(10)).0, // 30 days: normal
            ],
        )
        .await
        .unwrap();
    let before = published(&bus, "CUT-1").await.unwrap();
    assert_eq!(before.effective_rate, "0.08");
    assert!(before.scheduled_change.is_none());

    // The retailer lowers the base to 7 %: the cut is announced at once, not applied.
    let outcome = engine
        .apply(&s, &[product_with_base("CUT-1", "0.07", t(60))])
        .await
        .unwrap();
    assert_eq!(
        outcome.published,
        Some(before.version + 1),
        "announcing publishes"
    );
    let announced = published(&bus, "CUT-1").await.unwrap();
    assert_eq!(announced.effective_rate, "0.08", "{announced:?}");
    assert!(
        codes(&announced).contains(&"BASE_CUT_SCHEDULED"),
        "{announced:?}"
    );
    let change = announced
        .scheduled_change
        .clone()
        .expect("scheduled change");
    assert_eq!(change.base_rate, "0.07");
    let effective_at = t(60) + chrono::TimeDelta::hours(168);
    assert_eq!(
        change.effective_at.as_ref().map(|t| t.seconds),
        Some(effective_at.timestamp())
    );
    // Watchers and partners see it: the announcement is on the rates stream.
    let changes = rate_changes(&bus).await;
    let last = changes.last().and_then(|c| c.card.as_ref()).unwrap();
    assert_eq!(last, &announced);

    // Nothing else happens until the notice ends; the timer then applies the cut.
    let outcome = engine
        .apply(
            &s,
            &[Event::Tick {
                at: effective_at,
                sku: Some(s.clone()),
            }],
        )
        .await
        .unwrap();
    assert_eq!(outcome.published, Some(announced.version + 1));
    let cut = published(&bus, "CUT-1").await.unwrap();
    assert_eq!(cut.effective_rate, "0.07", "{cut:?}");
    assert!(codes(&cut).contains(&"BASE_CUT"), "{cut:?}");
    assert!(cut.scheduled_change.is_none(), "{cut:?}");
    assert_eq!(change.rate, cut.effective_rate, "the forecast held");
}

#[tokio::test]
async fn a_batch_applied_from_a_stale_read_redoes_only_the_sku_that_moved() {
    let bus = memory_bus();
    let reference_bus = memory_bus();
    let reference = engine(&reference_bus, example_policy());
    let engine = engine(&bus, example_policy());
    let first = [
        (
            "STALE-1",
            vec![
                stock("STALE-1", 20, 1, t(0), Some(10)).0,
                product("STALE-1", "home", 100, 40, t(1)).0,
            ],
        ),
        (
            "FRESH-1",
            vec![
                stock("FRESH-1", 500, 1, t(0), Some(10)).0,
                product("FRESH-1", "home", 100, 40, t(1)).0,
            ],
        ),
    ];
    for (s, events) in &first {
        engine.apply(&sku(s), events).await.unwrap();
        reference.apply(&sku(s), events).await.unwrap();
    }
    // The batch reads both records; then another writer moves STALE-1.
    let seen = bus
        .get_states(NAMESPACE, &["STALE-1", "FRESH-1"])
        .await
        .unwrap();
    let between = stock("STALE-1", 1500, 2, t(60), Some(10)).0;
    engine
        .apply(&sku("STALE-1"), std::slice::from_ref(&between))
        .await
        .unwrap();
    reference
        .apply(&sku("STALE-1"), std::slice::from_ref(&between))
        .await
        .unwrap();
    let later = |s: &str, on_hand: i64| stock(s, on_hand, 3, t(120), Some(10)).0;
    let runs = vec![
        (
            sku("STALE-1"),
            vec![later("STALE-1", 3000)],
            seen[0].clone(),
        ),
        (sku("FRESH-1"), vec![later("FRESH-1", 10)], seen[1].clone()),
    ];
    let outcomes = engine.apply_many(runs).await;
    assert!(
        outcomes.iter().all(|o| o.as_ref().is_ok_and(|o| o.changed)),
        "{outcomes:?}"
    );
    for s in ["STALE-1", "FRESH-1"] {
        reference
            .apply(&sku(s), &[later(s, if s == "STALE-1" { 3000 } else { 10 })])
            .await
            .unwrap();
        // The stale SKU was read again and folded on top of the reading in between.
        let record = bus.get_state(NAMESPACE, s).await.unwrap().unwrap();
        let expected = reference_bus
            .get_state(NAMESPACE, s)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.fields, expected.fields, "{s}");
        assert_eq!(record.version, expected.version, "{s}");
    }
}

#[tokio::test]
async fn a_record_kept_in_memory_and_changed_by_another_replica_is_read_again() {
    let bus = memory_bus();
    let (one, other) = (
        engine(&bus, example_policy()),
        engine(&bus, example_policy()),
    );
    let reference_bus = memory_bus();
    let reference = engine(&reference_bus, example_policy());
    let batch = |events: Vec<Event>| vec![(sku("KEPT-1"), events, tracing::Span::none())];
    let steps = [
        vec![
            stock("KEPT-1", 20, 1, t(0), Some(10)).0,
            product("KEPT-1", "home", 100, 40, t(1)).0,
        ],
        vec![stock("KEPT-1", 1500, 2, t(60), Some(10)).0],
        vec![stock("KEPT-1", 3000, 3, t(120), Some(10)).0],
        vec![stock("KEPT-1", 10, 4, t(180), Some(10)).0],
    ];
    // `one` applies and keeps the record; `other` (another replica, say after a
    // partition moved) changes it; `one`'s kept record is then out of date.
    for (step, events) in steps.iter().enumerate() {
        let by = if step == 1 { &other } else { &one };
        let outcome = by.apply_batch(batch(events.clone())).await;
        assert!(outcome[0].as_ref().is_ok_and(|o| o.changed), "{outcome:?}");
        reference.apply(&sku("KEPT-1"), events).await.unwrap();
        let record = bus.get_state(NAMESPACE, "KEPT-1").await.unwrap().unwrap();
        let expected = reference_bus
            .get_state(NAMESPACE, "KEPT-1")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.fields, expected.fields, "after step {step}");
    }
}

/// The SKUs a group scan of the rate records lists, sorted.
async fn listed_under(bus: &ratemesh_bus::Bus, category: &str) -> Vec<String> {
    let page = bus
        .scan_group(NAMESPACE, category, None, 100)
        .await
        .unwrap();
    let mut skus: Vec<String> = page.items.into_iter().map(|(k, _)| k).collect();
    skus.sort();
    skus
}

/// Rewrites `sku`'s record as a release that did not list records by category stored it.
async fn as_written_before_categories(bus: &ratemesh_bus::Bus, sku: &str) {
    let stored = bus.get_state(NAMESPACE, sku).await.unwrap().unwrap();
    bus.delete_state(NAMESPACE, sku, ratemesh_bus::Expect::Any)
        .await
        .unwrap();
    let mut write = StateWrite::new(NAMESPACE, sku);
    for (field, value) in stored.fields {
        write = write.set(field, value);
    }
    bus.write_state(write).await.unwrap();
}

#[tokio::test]
async fn a_category_sweep_reads_only_its_category_once_records_are_listed_under_it() {
    let bus = memory_bus();
    let engine = engine(&bus, example_policy());
    let skus = [
        ("H-1", "home"),
        ("H-2", "home"),
        ("H-3", "home"),
        ("T-1", "toys"),
        ("T-2", "toys"),
    ];
    let mut entries = Vec::new();
    for (s, category) in skus {
        entries.push(stock(s, 500, 1, t(0), Some(10)).1);
        entries.push(product(s, category, 100, 40, t(1)).1);
    }
    bus.publish_batch(STOCK, entries).await.unwrap();
    let (stop, task) = spawn_consumer(&engine, STOCK, "c1");
    drained(&bus, STOCK, Duration::from_secs(10)).await;
    stop.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(listed_under(&bus, "home").await, ["H-1", "H-2", "H-3"]);
    assert_eq!(listed_under(&bus, "toys").await, ["T-1", "T-2"]);

    // Records of an earlier release are in no category: until they have been listed,
    // a category's sweep walks every SKU and still re-prices them (and lists them).
    as_written_before_categories(&bus, "H-3").await;
    as_written_before_categories(&bus, "T-2").await;
    assert_eq!(listed_under(&bus, "home").await, ["H-1", "H-2"]);
    let swept = timers::sweep(&engine, Some("home"), t(60), false, None)
        .await
        .unwrap();
    assert_eq!(swept, 3);
    assert_eq!(listed_under(&bus, "home").await, ["H-1", "H-2", "H-3"]);

    // The one-time pass lists the rest; it is done once.
    assert_eq!(timers::index_categories(&engine).await.unwrap(), 5);
    assert_eq!(listed_under(&bus, "toys").await, ["T-1", "T-2"]);
    assert_eq!(timers::index_categories(&engine).await.unwrap(), 0);

    // From then on a category's sweep reads its group only: a record left outside it
    // (which only an earlier release writes) is not visited.
    as_written_before_categories(&bus, "H-1").await;
    let swept = timers::sweep(&engine, Some("home"), t(120), false, None)
        .await
        .unwrap();
    assert_eq!(swept, 2);
    let swept = timers::sweep(&engine, None, t(180), false, None)
        .await
        .unwrap();
    assert_eq!(swept, 5);
}
