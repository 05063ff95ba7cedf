//! `ratemesh partners …`: register partners, read them, rotate their signing secret, list
//! their deliveries and requeue dead ones, over `PartnerService`.

use clap::{Args, Subcommand};
use ratemesh_proto::v1;
use ratemesh_proto::v1::partner_service_client::PartnerServiceClient;
use serde_json::json;

use super::client::{ClientArgs, explain_status};

#[derive(Debug, Args)]
pub(crate) struct PartnersArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: PartnersCommand,
}

#[derive(Debug, Subcommand)]
enum PartnersCommand {
    /// Create a partner, or replace an existing one's name, URL and filters. Prints the
    /// signing secret once, on creation.
    Add(AddArgs),
    /// Show one partner.
    Get {
        /// The partner's id.
        id: String,
    },
    /// List every partner (admin).
    List,
    /// Issue a new signing secret; the old one keeps signing during the overlap.
    RotateSecret {
        /// The partner's id.
        id: String,
        /// Hours the previous secret keeps signing alongside the new one (0 to 168).
        #[arg(long, default_value_t = 24)]
        overlap_hours: u32,
    },
    /// List a partner's deliveries, newest first.
    Deliveries {
        /// The partner's id.
        id: String,
        /// Only deliveries in this status.
        #[arg(long, value_parser = ["pending", "delivered", "retrying", "dead"])]
        status: Option<String>,
        /// Most deliveries to show.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Requeue dead deliveries (all of the partner's, or the ids given); event ids are kept.
    Redeliver {
        /// The partner's id.
        id: String,
        /// Delivery ids; none means every dead delivery of the partner.
        delivery_ids: Vec<String>,
    },
}

#[derive(Debug, Args)]
struct AddArgs {
    /// Partner id, 1 to 64 characters of [a-z0-9-]; omit to have one assigned.
    #[arg(long, default_value = "")]
    id: String,
    /// Display name.
    #[arg(long)]
    name: String,
    /// The HTTPS URL webhooks are POSTed to.
    #[arg(long)]
    url: String,
    /// Only these SKUs (repeatable).
    #[arg(long = "sku")]
    skus: Vec<String>,
    /// Only these categories (repeatable).
    #[arg(long = "category")]
    categories: Vec<String>,
    /// Only these event types (repeatable): rate.changed, incentive.changed.
    #[arg(long = "event-type")]
    event_types: Vec<String>,
    /// Minimum absolute rate change to be told about, a decimal fraction ("0.005").
    #[arg(long, default_value = "")]
    min_change: String,
    /// Register without delivering anything yet.
    #[arg(long)]
    disabled: bool,
}

/// Runs a `partners` command.
pub(crate) async fn run(args: &PartnersArgs) -> anyhow::Result<()> {
    let mut client = PartnerServiceClient::new(args.client.connect().await?);
    let json_out = args.client.json;
    match &args.command {
        PartnersCommand::Add(add) => {
            let response = client
                .upsert_partner(v1::UpsertPartnerRequest {
                    partner: Some(v1::Partner {
                        id: add.id.clone(),
                        name: add.name.clone(),
                        endpoint_url: add.url.clone(),
                        filters: Some(v1::PartnerFilter {
                            skus: add.skus.clone(),
                            categories: add.categories.clone(),
                            event_types: add.event_types.clone(),
                            min_change: add.min_change.clone(),
                        }),
                        enabled: !add.disabled,
                        ..Default::default()
                    }),
                })
                .await
                .map_err(explain_status)?
                .into_inner();
            let partner = response.partner.unwrap_or_default();
            if json_out {
                let mut value = partner_json(&partner);
                value["created"] = json!(response.created);
                if response.created {
                    value["signing_secret"] = json!(response.signing_secret);
                }
                println!("{value}");
            } else {
                print_partners(&[partner]);
                if response.created {
                    println!(
                        "\nsigning secret (shown only now, store it): {}",
                        response.signing_secret
                    );
                } else {
                    println!("\nupdated; the signing secret is unchanged");
                }
            }
        }
        PartnersCommand::Get { id } => {
            let partner = client
                .get_partner(v1::GetPartnerRequest { id: id.clone() })
                .await
                .map_err(explain_status)?
                .into_inner()
                .partner
                .unwrap_or_default();
            if json_out {
                println!("{}", partner_json(&partner));
            } else {
                print_partners(&[partner]);
            }
        }
        PartnersCommand::List => {
            let mut all = Vec::new();
            let mut page_token = String::new();
            loop {
                let page = client
                    .list_partners(v1::ListPartnersRequest {
                        page_size: 1000,
                        page_token,
                    })
                    .await
                    .map_err(explain_status)?
                    .into_inner();
                all.extend(page.partners);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if json_out {
                for p in &all {
                    println!("{}", partner_json(p));
                }
            } else {
                print_partners(&all);
            }
        }
        PartnersCommand::RotateSecret { id, overlap_hours } => {
            let mut request = v1::RotateSecretRequest {
                id: id.clone(),
                overlap: None,
            };
            let mut overlap = request.overlap.take().unwrap_or_default();
            overlap.seconds = i64::from(*overlap_hours) * 3600;
            request.overlap = Some(overlap);
            let response = client
                .rotate_secret(request)
                .await
                .map_err(explain_status)?
                .into_inner();
            let until = response
                .previous_valid_until
                .map(|t| rfc3339(t.seconds))
                .unwrap_or_default();
            if json_out {
                println!(
                    "{}",
                    json!({"signing_secret": response.signing_secret, "previous_valid_until": until})
                );
            } else {
                println!(
                    "new signing secret (shown only now): {}",
                    response.signing_secret
                );
                println!("the previous secret keeps signing until {until}");
            }
        }
        PartnersCommand::Deliveries { id, status, limit } => {
            let status = match status.as_deref() {
                Some("pending") => v1::DeliveryStatus::Pending,
                Some("delivered") => v1::DeliveryStatus::Delivered,
                Some("retrying") => v1::DeliveryStatus::Retrying,
                Some("dead") => v1::DeliveryStatus::Dead,
                _ => v1::DeliveryStatus::Unspecified,
            };
            let deliveries = client
                .list_deliveries(v1::ListDeliveriesRequest {
                    partner_id: id.clone(),
                    status: status as i32,
                    page_size: (*limit).clamp(1, 1000),
                    page_token: String::new(),
                })
                .await
                .map_err(explain_status)?
                .into_inner()
                .deliveries;
            if json_out {
                for d in &deliveries {
                    println!("{}", delivery_json(d));
                }
            } else {
                print_deliveries(&deliveries);
            }
        }
        PartnersCommand::Redeliver { id, delivery_ids } => {
            let response = client
                .redeliver_dead_letters(v1::RedeliverDeadLettersRequest {
                    partner_id: id.clone(),
                    delivery_ids: delivery_ids.clone(),
                })
                .await
                .map_err(explain_status)?
                .into_inner();
            if json_out {
                println!("{}", json!({"requeued": response.requeued}));
            } else {
                println!("requeued {} dead deliveries", response.requeued);
            }
        }
    }
    Ok(())
}

fn status_name(status: i32) -> &'static str {
    match v1::DeliveryStatus::try_from(status) {
        Ok(v1::DeliveryStatus::Pending) => "pending",
        Ok(v1::DeliveryStatus::Delivered) => "delivered",
        Ok(v1::DeliveryStatus::Retrying) => "retrying",
        Ok(v1::DeliveryStatus::Dead) => "dead",
        _ => "unknown",
    }
}

fn partner_json(p: &v1::Partner) -> serde_json::Value {
    let f = p.filters.clone().unwrap_or_default();
    json!({
        "id": p.id,
        "name": p.name,
        "endpoint_url": p.endpoint_url,
        "enabled": p.enabled,
        "filters": {
            "skus": f.skus,
            "categories": f.categories,
            "event_types": f.event_types,
            "min_change": f.min_change,
        },
        "created_at": p.created_at.map(|t| rfc3339(t.seconds)),
        "updated_at": p.updated_at.map(|t| rfc3339(t.seconds)),
    })
}

fn delivery_json(d: &v1::Delivery) -> serde_json::Value {
    json!({
        "id": d.id,
        "partner_id": d.partner_id,
        "event_id": d.event_id,
        "event_type": d.event_type,
        "status": status_name(d.status),
        "attempts": d.attempts,
        "last_error": d.last_error,
        "last_response_code": d.last_response_code,
        "next_attempt_at": d.next_attempt_at.map(|t| rfc3339(t.seconds)),
        "created_at": d.created_at.map(|t| rfc3339(t.seconds)),
        "delivered_at": d.delivered_at.map(|t| rfc3339(t.seconds)),
        "skus": d.skus,
    })
}

fn print_partners(partners: &[v1::Partner]) {
    let rows: Vec<Vec<String>> = partners
        .iter()
        .map(|p| {
            let f = p.filters.clone().unwrap_or_default();
            let mut filters = Vec::new();
            if !f.event_types.is_empty() {
                filters.push(f.event_types.join(","));
            }
            if !f.categories.is_empty() {
                filters.push(format!("categories:{}", f.categories.len()));
            }
            if !f.skus.is_empty() {
                filters.push(format!("skus:{}", f.skus.len()));
            }
            if !f.min_change.is_empty() {
                filters.push(format!("min_change:{}", f.min_change));
            }
            vec![
                p.id.clone(),
                p.name.clone(),
                if p.enabled { "yes" } else { "no" }.to_owned(),
                p.endpoint_url.clone(),
                if filters.is_empty() {
                    "everything".to_owned()
                } else {
                    filters.join(" ")
                },
            ]
        })
        .collect();
    super::table::print(
        &["ID", "NAME", "ENABLED", "URL", "FILTERS"],
        &rows,
        "(no partners)",
    );
}

fn print_deliveries(deliveries: &[v1::Delivery]) {
    let rows: Vec<Vec<String>> = deliveries
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.event_type.clone(),
                status_name(d.status).to_owned(),
                d.attempts.to_string(),
                match d.last_response_code {
                    0 => "-".to_owned(),
                    code => code.to_string(),
                },
                if d.last_error.is_empty() {
                    "-".to_owned()
                } else {
                    d.last_error.clone()
                },
                d.created_at.map(|t| rfc3339(t.seconds)).unwrap_or_default(),
                d.skus.join(","),
            ]
        })
        .collect();
    super::table::print(
        &[
            "ID",
            "TYPE",
            "STATUS",
            "ATTEMPTS",
            "CODE",
            "LAST ERROR",
            "CREATED",
            "SKUS",
        ],
        &rows,
        "(no deliveries)",
    );
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn unix_seconds_print_as_utc_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_825_600), "2000-02-29T12:00:00Z");
    }
}
