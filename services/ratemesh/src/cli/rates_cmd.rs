//! `ratemesh rates get|list|watch|explain`: read rates over `RateService`, as tables for
//! people or JSON lines (`--json`) for scripts.

use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use ratemesh_proto::v1;
use ratemesh_proto::v1::rate_service_client::RateServiceClient;
use serde_json::{Value, json};

use super::client::{AuthedChannel, ClientArgs, explain_status};

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
            watch(&mut client, request, json).await
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
                        "{shown} cards; next delta: ratemesh rates list --changed-since {}",
                        page.cursor
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

async fn watch(
    client: &mut Client,
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
                            "{}  {:<24} {:>8} -> {:<8} v{:<4} {:<10} {}",
                            card.computed_at.as_ref().map(time_text).unwrap_or_default(),
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
                    "resume with: ratemesh rates watch --cursor {}",
                    request.cursor
                );
                return Err(explain_status(status));
            }
            None => {
                eprintln!(
                    "the server closed the stream; resume with: ratemesh rates watch --cursor {}",
                    request.cursor
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
    let card = response
        .card
        .ok_or_else(|| anyhow::anyhow!("the server answered without a card"))?;
    let inputs = response.inputs;
    if json {
        println!(
            "{}",
            json!({"card": card_json(&card), "inputs": inputs.as_ref().map(inputs_json)})
        );
        return Ok(());
    }
    println!(
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
            println!("  {name:<22} {:>9}", percent(value));
        }
    }
    println!("reasons:");
    for reason in &card.reasons {
        println!("  {:<24} {}", reason.code, reason.text);
    }
    if let Some(t) = &card.guaranteed_until {
        println!("guaranteed until {}", time_text(t));
    }
    match inputs {
        None => println!("inputs: not available"),
        Some(i) => {
            println!("inputs:");
            if let Some(p) = &i.product {
                println!(
                    "  product     {} price {} {} cost {}",
                    p.category, p.price, p.currency, p.unit_cost
                );
            }
            println!("  available   {}", empty_dash(&i.available));
            println!(
                "  velocity    {}/day ({:?})",
                empty_dash(&i.velocity),
                v1::VelocitySource::try_from(i.velocity_source).unwrap_or_default()
            );
            println!(
                "  cover       {} days, band {}",
                empty_dash(&i.days_of_cover),
                empty_dash(&i.band)
            );
            if !i.peak_window.is_empty() {
                println!("  peak window {}", i.peak_window);
            }
            for l in &i.locations {
                println!(
                    "  location {:<10} on hand {} reserved {} (seq {})",
                    empty_dash(&l.location),
                    l.on_hand,
                    l.reserved,
                    l.sequence
                );
            }
            for o in &i.overrides {
                println!(
                    "  override {} {:?} {}",
                    o.id,
                    v1::OverrideKind::try_from(o.kind).unwrap_or_default(),
                    o.value
                );
            }
            if let Some(inc) = &i.incentive {
                println!("  incentive {} bonus {}", inc.id, inc.bonus_rate);
            }
        }
    }
    Ok(())
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

fn time_text(t: &prost_types::Timestamp) -> String {
    DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
        .unwrap_or_default()
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
    println!(
        "{:<24} {:<14} {:>8} {:>8} {:>5} {:<10} {:<20} REASONS",
        "SKU", "CATEGORY", "RATE", "PREV", "VER", "BAND", "COMPUTED"
    );
    for c in cards {
        println!(
            "{:<24} {:<14} {:>8} {:>8} {:>5} {:<10} {:<20} {}",
            c.sku,
            c.category,
            percent(&c.effective_rate),
            percent(&c.previous_rate),
            c.version,
            empty_dash(&c.band),
            c.computed_at.as_ref().map(time_text).unwrap_or_default(),
            reason_codes(c)
        );
    }
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
        "computed_at": c.computed_at.as_ref().map(time_text),
        "guaranteed_until": c.guaranteed_until.as_ref().map(time_text),
        "parts": {
            "base": parts.base,
            "inventory_adjustment": parts.inventory_adjustment,
            "boost": parts.boost,
            "incentive": parts.incentive,
            "override_adjustment": parts.override_adjustment,
            "guardrail_adjustment": parts.guardrail_adjustment,
        },
        "reasons": c.reasons.iter().map(|r| json!({"code": r.code, "text": r.text})).collect::<Vec<_>>(),
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
            "sequence": l.sequence, "as_of": l.as_of.as_ref().map(time_text),
        })).collect::<Vec<_>>(),
        "velocity": i.velocity,
        "velocity_source": v1::VelocitySource::try_from(i.velocity_source).map(|v| v.as_str_name()).unwrap_or("VELOCITY_SOURCE_UNSPECIFIED"),
        "days_of_cover": i.days_of_cover,
        "band": i.band,
        "peak_window": i.peak_window,
        "overrides": i.overrides.iter().map(|o| json!({"id": o.id, "value": o.value, "reason": o.reason})).collect::<Vec<_>>(),
        "incentive": i.incentive.as_ref().map(|x| json!({"id": x.id, "bonus_rate": x.bonus_rate})),
        "policy_mode": v1::PolicyMode::try_from(i.policy_mode).map(|m| m.as_str_name()).unwrap_or("POLICY_MODE_UNSPECIFIED"),
    })
}
