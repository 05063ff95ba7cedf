//! `ratemesh rates get|list|watch|explain`: read rates over `RateService`, as tables for
//! people or JSON lines (`--json`) for scripts.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use ratemesh_proto::v1;
use ratemesh_proto::v1::rate_service_client::RateServiceClient;
use serde_json::{Value, json};

use super::client::{AuthedChannel, ClientArgs, explain_status};
use super::{invocation, table};

#[derive(Debug, Args)]
pub(crate) struct RatesArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: RatesCommand,
}

#[derive(Debug, Subcommand)]
enum RatesCommand {
    /// Show the rate card of one or more SKUs (several SKUs are read in one batch call).
    Get {
        /// The SKUs (up to 1,000).
        #[arg(required = true)]
        skus: Vec<String>,
        /// Show the card that was current at this instant (RFC 3339), one SKU only.
        #[arg(long, value_name = "TIME")]
        as_of: Option<DateTime<Utc>>,
    },
    /// List rate cards in SKU order, or those changed since a cursor.
    List {
        /// Only this category.
        #[arg(long)]
        category: Option<String>,
        /// A cursor from an earlier `list` or `watch`: only cards changed after it.
        #[arg(long, value_name = "CURSOR")]
        changed_since: Option<String>,
        /// Cards per request (1 to 1,000).
        #[arg(long, default_value_t = 500)]
        page_size: u32,
        /// Stop after this many cards (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Stream rate changes as they are published (Ctrl-C to stop). Falling behind
    /// reconnects from the last cursor received.
    Watch {
        /// Only these SKUs (repeatable).
        #[arg(long = "sku")]
        skus: Vec<String>,
        /// Only these categories (repeatable).
        #[arg(long = "category")]
        categories: Vec<String>,
        /// Resume after this cursor (from an earlier `watch` or `list`).
        #[arg(long, value_name = "CURSOR")]
        cursor: Option<String>,
    },
    /// Show why a SKU's rate is what it is: the card's parts and reasons and the inputs.
    Explain {
        /// The SKU.
        sku: String,
    },
}

pub(crate) async fn run(args: &RatesArgs) -> anyhow::Result<()> {
    let json = args.client.json;
    let mut client = RateServiceClient::new(args.client.connect().await?);
    match &args.command {
        RatesCommand::Get { skus, as_of } => get(&mut client, skus, *as_of, json).await,
        RatesCommand::List {
            category,
            changed_since,
            page_size,
            limit,
        } => {
            list(
                &mut client,
                &args.client,
                category.clone(),
                changed_since.clone().unwrap_or_default(),
                *page_size,
                *limit,
                json,
            )
            .await
        }
        RatesCommand::Watch {
            skus,
            categories,
            cursor,
        } => {
            let request = v1::WatchRatesRequest {
                skus: skus.clone(),
                categories: categories.clone(),
                cursor: cursor.clone().unwrap_or_default(),
            };
            watch(&mut client, &args.client, request, json).await
        }
        RatesCommand::Explain { sku } => explain(&mut client, sku, json).await,
    }
}

type Client = RateServiceClient<AuthedChannel>;

async fn get(
    client: &mut Client,
    skus: &[String],
    as_of: Option<DateTime<Utc>>,
    json: bool,
) -> anyhow::Result<()> {
    if let [sku] = skus {
        let mut request = v1::GetRateRequest {
            sku: sku.clone(),
            as_of: None,
        };
        if let Some(t) = as_of {
            request.as_of = Some(prost_types::Timestamp {
                seconds: t.timestamp(),
                nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
            });
        }
        let card = client
            .get_rate(request)
            .await
            .map_err(explain_status)?
            .into_inner()
            .card
            .ok_or_else(|| anyhow::anyhow!("the server answered without a card"))?;
        print_cards(&[card], json);
        return Ok(());
    }
    if as_of.is_some() {
        anyhow::bail!("--as-of reads one SKU at a time");
    }
    let results = client
        .batch_get_rates(v1::BatchGetRatesRequest {
            skus: skus.to_vec(),
        })
        .await
        .map_err(explain_status)?
        .into_inner()
        .results;
    let mut cards = Vec::new();
    let mut missing = Vec::new();
    for result in results {
        match result.outcome {
            Some(v1::rate_result::Outcome::Card(card)) => cards.push(card),
            Some(v1::rate_result::Outcome::Error(e)) => missing.push((result.sku, e.message)),
            None => missing.push((result.sku, "no answer".to_owned())),
        }
    }
    print_cards(&cards, json);
    for (sku, why) in &missing {
        if json {
            println!("{}", json!({"sku": sku, "error": why}));
        } else {
            eprintln!("{sku}: {why}");
        }
    }
    Ok(())
}

async fn list(
    client: &mut Client,
    connection: &ClientArgs,
    category: Option<String>,
    changed_since: String,
    page_size: u32,
    limit: usize,
    json: bool,
) -> anyhow::Result<()> {
    let mut token = String::new();
    let mut shown = 0usize;
    let mut rows = Vec::new();
    loop {
        let page = client
            .list_rates(v1::ListRatesRequest {
                page_size,
                page_token: token,
                changed_since: changed_since.clone(),
                category: category.clone(),
            })
            .await
            .map_err(explain_status)?
            .into_inner();
        for card in page.cards {
            if limit != 0 && shown >= limit {
                break;
            }
            shown += 1;
            if json {
                println!("{}", card_json(&card));
            } else {
                rows.push(card);
            }
        }
        let done = page.next_page_token.is_empty() || (limit != 0 && shown >= limit);
        if done {
            if !json {
                print_table(&rows);
            }
            if page.next_page_token.is_empty() {
                if json {
                    println!("{}", json!({"cursor": page.cursor}));
                } else {
                    eprintln!(
                        "{shown} cards; next delta: {}",
                        delta_command(
                            &invocation::prefix(),
                            category.as_deref(),
                            &page.cursor,
                            &invocation::connection_flags(connection)
                        )
                    );
                }
            } else if !json {
                eprintln!("{shown} cards shown (--limit); more follow");
            }
            return Ok(());
        }
        token = page.next_page_token;
    }
}

/// The command that lists what changed after `cursor`, runnable as printed.
fn delta_command(prefix: &str, category: Option<&str>, cursor: &str, flags: &str) -> String {
    let category = category
        .map(|c| format!(" --category {}", invocation::shell_word(c)))
        .unwrap_or_default();
    format!(
        "{prefix} rates list{category} --changed-since {}{flags}",
        invocation::shell_word(cursor)
    )
}

/// The command that resumes `request` where it stopped, runnable as printed.
fn resume_command(prefix: &str, request: &v1::WatchRatesRequest, flags: &str) -> String {
    let mut command = format!("{prefix} rates watch");
    for sku in &request.skus {
        command.push_str(&format!(" --sku {}", invocation::shell_word(sku)));
    }
    for category in &request.categories {
        command.push_str(&format!(" --category {}", invocation::shell_word(category)));
    }
    format!(
        "{command} --cursor {}{flags}",
        invocation::shell_word(&request.cursor)
    )
}

async fn watch(
    client: &mut Client,
    connection: &ClientArgs,
    mut request: v1::WatchRatesRequest,
    json: bool,
) -> anyhow::Result<()> {
    if !json {
        eprintln!("watching rate changes (Ctrl-C to stop)");
    }
    loop {
        let mut stream = client
            .watch_rates(request.clone())
            .await
            .map_err(explain_status)?
            .into_inner();
        let status = loop {
            match stream.message().await {
                Ok(Some(update)) => {
                    request.cursor = update.cursor.clone();
                    match (&update.card, json) {
                        (Some(card), true) => println!(
                            "{}",
                            json!({"card": card_json(card), "previous_rate": update.previous_rate, "cursor": update.cursor})
                        ),
                        (Some(card), false) => println!(
                            "{}  {:<24} {:>8} -> {:<8} v{:<4} {:<14} {}",
                            table::maybe_timestamp(card.computed_at.as_ref()),
                            card.sku,
                            percent(&update.previous_rate),
                            percent(&card.effective_rate),
                            card.version,
                            card.band,
                            reason_codes(card)
                        ),
                        (None, true) => {
                            println!("{}", json!({"heartbeat": true, "cursor": update.cursor}));
                        }
                        (None, false) => {}
                    }
                }
                Ok(None) => break None,
                Err(status) => break Some(status),
            }
        };
        match status {
            Some(status) if status.code() == tonic::Code::Aborted => {
                eprintln!(
                    "fell behind ({}); resuming from the last cursor",
                    status.message()
                );
            }
            Some(status) => {
                eprintln!(
                    "resume with: {}",
                    resume_command(
                        &invocation::prefix(),
                        &request,
                        &invocation::connection_flags(connection)
                    )
                );
                return Err(explain_status(status));
            }
            None => {
                eprintln!(
                    "the server closed the stream; resume with: {}",
                    resume_command(
                        &invocation::prefix(),
                        &request,
                        &invocation::connection_flags(connection)
                    )
                );
                return Ok(());
            }
        }
    }
}

async fn explain(client: &mut Client, sku: &str, json: bool) -> anyhow::Result<()> {
    let response = client
        .explain_rate(v1::ExplainRateRequest {
            sku: sku.to_owned(),
        })
        .await
        .map_err(explain_status)?
        .into_inner();
    if json {
        println!("{}", explain_json(&response));
    } else {
        print!("{}", explain_text(sku, &response));
    }
    Ok(())
}

fn explain_json(response: &v1::ExplainRateResponse) -> Value {
    json!({
        "card": response.card.as_ref().map(card_json),
        "inputs": response.inputs.as_ref().map(inputs_json),
        "status": response.status,
        "redacted": response.redacted,
    })
}

/// `rates explain` as people read it.
fn explain_text(sku: &str, response: &v1::ExplainRateResponse) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    match &response.card {
        None => {
            let _ = writeln!(out, "{sku}: no rate");
            if !response.status.is_empty() {
                let _ = writeln!(out, "{}", response.status);
            }
        }
        Some(card) => write_card(&mut out, card),
    }
    if response.redacted {
        let _ = writeln!(
            out,
            "(stock, velocity, unit cost, override notes and incentive budgets are withheld \
             for this key's role)"
        );
    }
    match &response.inputs {
        None => {
            let _ = writeln!(out, "inputs: not available");
        }
        Some(i) => write_inputs(&mut out, i),
    }
    out
}

fn write_card(out: &mut String, card: &v1::RateCard) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "{}  {}  rate {}  (v{}, band {})",
        card.sku,
        card.category,
        percent(&card.effective_rate),
        card.version,
        empty_dash(&card.band)
    );
    if let Some(parts) = &card.parts {
        for (name, value) in [
            ("base", &parts.base),
            ("inventory adjustment", &parts.inventory_adjustment),
            ("boost", &parts.boost),
            ("incentive", &parts.incentive),
            ("override adjustment", &parts.override_adjustment),
            ("guardrail adjustment", &parts.guardrail_adjustment),
        ] {
            let _ = writeln!(out, "  {name:<22} {:>9}", percent(value));
        }
    }
    let _ = writeln!(out, "reasons:");
    for reason in &card.reasons {
        let _ = writeln!(out, "  {:<24} {}", reason.code, reason.text);
    }
    if let Some(note) = guard_note(card) {
        let _ = writeln!(out, "{note}");
    }
    if let Some(t) = &card.guaranteed_until {
        let _ = writeln!(out, "guaranteed until {}", table::timestamp(t));
    }
    if let Some(change) = &card.scheduled_change {
        let _ = writeln!(
            out,
            "announced: base cut to {} from {} (rate then {} if nothing else changes)",
            percent(&change.base_rate),
            change
                .effective_at
                .as_ref()
                .map(table::timestamp)
                .unwrap_or_default(),
            percent(&change.rate)
        );
    }
}

fn write_inputs(out: &mut String, i: &v1::RateInputs) {
    use std::fmt::Write as _;
    let _ = writeln!(out, "inputs:");
    if let Some(p) = &i.product {
        let _ = writeln!(
            out,
            "  product     {} price {} {} cost {}",
            p.category,
            p.price,
            p.currency,
            empty_dash(&p.unit_cost)
        );
    }
    let _ = writeln!(out, "  available   {}", empty_dash(&i.available));
    let _ = writeln!(
        out,
        "  velocity    {}/day ({:?})",
        empty_dash(&i.velocity),
        v1::VelocitySource::try_from(i.velocity_source).unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "  cover       {} days, band {}",
        empty_dash(&i.days_of_cover),
        empty_dash(&i.band)
    );
    if !i.target_rate.is_empty() {
        let _ = match &i.may_move_at {
            Some(t) => writeln!(
                out,
                "  target      {} (held: may move after {})",
                percent(&i.target_rate),
                table::timestamp(t)
            ),
            None => writeln!(
                out,
                "  target      {} (moving there step by step)",
                percent(&i.target_rate)
            ),
        };
    }
    if !i.peak_window.is_empty() {
        let _ = writeln!(out, "  peak window {}", i.peak_window);
    }
    for l in &i.locations {
        let _ = writeln!(
            out,
            "  location {:<10} on hand {} reserved {} (seq {})",
            empty_dash(&l.location),
            l.on_hand,
            l.reserved,
            l.sequence
        );
    }
    for o in &i.overrides {
        let _ = writeln!(
            out,
            "  override {} {:?} {}",
            o.id,
            v1::OverrideKind::try_from(o.kind).unwrap_or_default(),
            o.value
        );
    }
    if let Some(inc) = &i.incentive {
        let _ = writeln!(out, "  incentive {} bonus {}", inc.id, inc.bonus_rate);
    }
}

/// When a guardrail (applied after overrides) cut what a merchandiser's override asked
/// for, one line saying so: "pinned 5 %, shown 3.04 %" is otherwise a puzzle.
fn guard_note(card: &v1::RateCard) -> Option<String> {
    let kind = card.reasons.iter().find_map(|r| match r.code.as_str() {
        "OVERRIDE_PIN" => Some("pin"),
        "OVERRIDE_FLOOR" => Some("floor override"),
        "OVERRIDE_CAP" => Some("cap override"),
        "OVERRIDE_MULTIPLIER" => Some("multiplier override"),
        _ => None,
    })?;
    let guard = card
        .reasons
        .iter()
        .rev()
        .find_map(|r| match r.code.as_str() {
            "MARGIN_GUARD" => Some("the margin guard"),
            "CAP" => Some("the category cap"),
            "FLOOR" => Some("the category floor"),
            _ => None,
        })?;
    let effective: rust_decimal::Decimal = card.effective_rate.parse().ok()?;
    let cut: rust_decimal::Decimal = card.parts.as_ref()?.guardrail_adjustment.parse().ok()?;
    if cut.is_zero() {
        return None;
    }
    Some(format!(
        "note: the {kind} asks for {}; {guard} holds the rate at {}",
        percent(&(effective - cut).to_string()),
        percent(&card.effective_rate)
    ))
}

fn empty_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// A decimal fraction as a percentage for people ("0.0825" → "8.25%"); kept verbatim if
/// it is not a decimal.
fn percent(rate: &str) -> String {
    match rate.parse::<rust_decimal::Decimal>() {
        Ok(d) => format!("{}%", (d * rust_decimal::Decimal::ONE_HUNDRED).normalize()),
        Err(_) if rate.is_empty() => "-".to_owned(),
        Err(_) => rate.to_owned(),
    }
}

fn reason_codes(card: &v1::RateCard) -> String {
    card.reasons
        .iter()
        .map(|r| r.code.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

fn print_cards(cards: &[v1::RateCard], json: bool) {
    if json {
        for card in cards {
            println!("{}", card_json(card));
        }
    } else {
        print_table(cards);
    }
}

fn print_table(cards: &[v1::RateCard]) {
    print!("{}", cards_table(cards));
}

fn cards_table(cards: &[v1::RateCard]) -> String {
    let rows: Vec<Vec<String>> = cards
        .iter()
        .map(|c| {
            vec![
                c.sku.clone(),
                c.category.clone(),
                percent(&c.effective_rate),
                percent(&c.previous_rate),
                c.version.to_string(),
                empty_dash(&c.band).to_owned(),
                table::maybe_timestamp(c.computed_at.as_ref()),
                reason_codes(c),
            ]
        })
        .collect();
    table::render(
        &[
            "SKU", "CATEGORY", "RATE", "PREV", "VER", "BAND", "COMPUTED", "REASONS",
        ],
        &rows,
        "(no rate cards)",
    )
}

fn card_json(c: &v1::RateCard) -> Value {
    let parts = c.parts.clone().unwrap_or_default();
    json!({
        "sku": c.sku,
        "category": c.category,
        "effective_rate": c.effective_rate,
        "previous_rate": c.previous_rate,
        "version": c.version,
        "band": c.band,
        "computed_at": c.computed_at.as_ref().map(table::timestamp),
        "guaranteed_until": c.guaranteed_until.as_ref().map(table::timestamp),
        "parts": {
            "base": parts.base,
            "inventory_adjustment": parts.inventory_adjustment,
            "boost": parts.boost,
            "incentive": parts.incentive,
            "override_adjustment": parts.override_adjustment,
            "guardrail_adjustment": parts.guardrail_adjustment,
        },
        "reasons": c.reasons.iter().map(|r| json!({"code": r.code, "text": r.text})).collect::<Vec<_>>(),
        "scheduled_change": c.scheduled_change.as_ref().map(|s| json!({
            "base_rate": s.base_rate,
            "effective_at": s.effective_at.as_ref().map(table::timestamp),
            "rate": s.rate,
        })),
    })
}

fn inputs_json(i: &v1::RateInputs) -> Value {
    json!({
        "product": i.product.as_ref().map(|p| json!({
            "sku": p.sku, "category": p.category, "price": p.price, "unit_cost": p.unit_cost,
            "base_rate": p.base_rate, "currency": p.currency,
        })),
        "available": i.available,
        "locations": i.locations.iter().map(|l| json!({
            "location": l.location, "on_hand": l.on_hand, "reserved": l.reserved,
            "sequence": l.sequence, "as_of": l.as_of.as_ref().map(table::timestamp),
        })).collect::<Vec<_>>(),
        "velocity": i.velocity,
        "velocity_source": v1::VelocitySource::try_from(i.velocity_source).map(|v| v.as_str_name()).unwrap_or("VELOCITY_SOURCE_UNSPECIFIED"),
        "days_of_cover": i.days_of_cover,
        "band": i.band,
        "peak_window": i.peak_window,
        "overrides": i.overrides.iter().map(|o| json!({"id": o.id, "value": o.value, "reason": o.reason})).collect::<Vec<_>>(),
        "incentive": i.incentive.as_ref().map(|x| json!({"id": x.id, "bonus_rate": x.bonus_rate})),
        "policy_mode": v1::PolicyMode::try_from(i.policy_mode).map(|m| m.as_str_name()).unwrap_or("POLICY_MODE_UNSPECIFIED"),
        "target_rate": i.target_rate,
        "may_move_at": i.may_move_at.as_ref().map(table::timestamp),
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn card(sku: &str, band: &str) -> v1::RateCard {
        v1::RateCard {
            sku: sku.into(),
            category: "electronics".into(),
            effective_rate: "0.0304".into(),
            previous_rate: "0.05".into(),
            version: 12,
            band: band.into(),
            computed_at: Some(prost_types::Timestamp {
                seconds: 1_796_029_200,
                nanos: 987_654_321,
            }),
            ..Default::default()
        }
    }

    #[test]
    fn the_cards_table_keeps_its_columns_whatever_the_band() {
        let text = cards_table(&[
            card("DEMO-CONSOLE", "deep-overstock"),
            card("DEMO-TV-55", "low"),
        ]);
        let lines: Vec<&str> = text.lines().collect();
        let column = lines[0].find("COMPUTED").expect("header");
        for line in &lines[1..] {
            assert_eq!(line.find("2026-11-30T09:00:00Z"), Some(column), "{text}");
        }
        assert!(!text.contains(".987"), "no nanoseconds: {text}");
    }

    fn pinned_and_guarded() -> v1::RateCard {
        v1::RateCard {
            reasons: vec![
                v1::Reason {
                    code: "OVERRIDE_PIN".into(),
                    text: "pinned at 5 % by override ov-1".into(),
                },
                v1::Reason {
                    code: "MARGIN_GUARD".into(),
                    text: "margin guard".into(),
                },
            ],
            parts: Some(v1::RateParts {
                guardrail_adjustment: "-0.0196".into(),
                ..Default::default()
            }),
            ..card("DEMO-CONSOLE", "scarce")
        }
    }

    #[test]
    fn explain_says_when_a_guardrail_cut_an_override() {
        assert_eq!(
            guard_note(&pinned_and_guarded()).as_deref(),
            Some("note: the pin asks for 5%; the margin guard holds the rate at 3.04%")
        );
        let mut unguarded = pinned_and_guarded();
        unguarded.reasons.pop();
        unguarded.parts = Some(v1::RateParts::default());
        assert_eq!(guard_note(&unguarded), None);
    }

    #[test]
    fn printed_follow_up_commands_parse_and_keep_the_connection() {
        let flags = " --addr http://10.0.0.5:50051 --key rm_network_abc";
        let delta = delta_command("/opt/ratemesh", Some("home"), "c-123", flags);
        let resume = resume_command(
            "/opt/ratemesh",
            &v1::WatchRatesRequest {
                skus: vec!["A-1".into()],
                categories: vec![],
                cursor: "c-456".into(),
            },
            flags,
        );
        for command in [delta, resume] {
            assert!(command.ends_with(flags), "{command}");
            let words = command.split_whitespace();
            if let Err(err) = crate::cli::Cli::try_parse_from(words) {
                panic!("{command:?} does not parse: {err}");
            }
        }
    }

    #[test]
    fn explain_shows_a_sku_waiting_for_product_data_held_targets_and_announced_cuts() {
        let waiting = v1::ExplainRateResponse {
            card: None,
            inputs: Some(v1::RateInputs {
                available: "50".into(),
                ..Default::default()
            }),
            redacted: false,
            status: "waiting for product data: no category yet".into(),
        };
        let text = explain_text("NO-PRODUCT", &waiting);
        assert!(
            text.starts_with("NO-PRODUCT: no rate\nwaiting for product data"),
            "{text}"
        );
        assert!(text.contains("available   50"), "{text}");

        let mut held = card("HELD", "scarce");
        held.scheduled_change = Some(v1::ScheduledChange {
            base_rate: "0.07".into(),
            effective_at: Some(prost_types::Timestamp {
                seconds: 1_796_029_200,
                nanos: 0,
            }),
            rate: "0.07".into(),
        });
        let response = v1::ExplainRateResponse {
            card: Some(held),
            inputs: Some(v1::RateInputs {
                target_rate: "0.04".into(),
                may_move_at: Some(prost_types::Timestamp {
                    seconds: 1_796_029_200,
                    nanos: 0,
                }),
                ..Default::default()
            }),
            redacted: true,
            status: String::new(),
        };
        let text = explain_text("HELD", &response);
        assert!(text.contains("announced: base cut to 7"), "{text}");
        assert!(text.contains("from 2026-11-30T09:00:00Z"), "{text}");
        assert!(
            text.contains("held: may move after 2026-11-30T09:00:00Z"),
            "{text}"
        );
        assert!(text.contains("withheld for this key's role"), "{text}");
        let json = explain_json(&response);
        assert_eq!(json["card"]["scheduled_change"]["base_rate"], "0.07");
        assert_eq!(json["inputs"]["target_rate"], "0.04");
        assert_eq!(json["redacted"], true);
    }
}
