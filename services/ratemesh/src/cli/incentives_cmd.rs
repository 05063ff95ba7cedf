//! `ratemesh incentives …`: list flash incentives, trigger one by hand, cancel one, over
//! `IncentiveService`.

use clap::{Args, Subcommand};
use ratemesh_proto::v1;
use ratemesh_proto::v1::incentive_service_client::IncentiveServiceClient;
use serde_json::json;

use super::client::{ClientArgs, explain_status};

#[derive(Debug, Args)]
pub(crate) struct IncentivesArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: IncentivesCommand,
}

#[derive(Debug, Subcommand)]
enum IncentivesCommand {
    /// List incentives, newest first.
    List {
        /// Only this SKU.
        #[arg(long)]
        sku: Option<String>,
        /// Only SKUs of this category.
        #[arg(long)]
        category: Option<String>,
        /// Only incentives in this state.
        #[arg(long, value_parser = ["active", "ended"])]
        state: Option<String>,
        /// Most incentives to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Open an incentive on a SKU now (merchandiser).
    Trigger {
        /// The SKU.
        sku: String,
        /// Bonus on top of the rate, a decimal fraction of the price (e.g. 0.02).
        #[arg(long)]
        bonus: String,
        /// How long it runs, in hours.
        #[arg(long, default_value_t = 48)]
        hours: u32,
        /// Maximum bonus commission to pay (money in the product's currency).
        #[arg(long)]
        budget_spend: Option<String>,
        /// Maximum units to sell under it.
        #[arg(long)]
        budget_units: Option<String>,
        /// Why (kept with the incentive).
        #[arg(long)]
        reason: String,
    },
    /// End an active incentive now (merchandiser); cancelling twice is harmless.
    Cancel {
        /// The incentive's id.
        id: String,
        /// Why (kept with the incentive).
        #[arg(long)]
        reason: String,
    },
}

pub(crate) async fn run(args: &IncentivesArgs) -> anyhow::Result<()> {
    let mut client = IncentiveServiceClient::new(args.client.connect().await?);
    let json_out = args.client.json;
    let shown = match &args.command {
        IncentivesCommand::List {
            sku,
            category,
            state,
            limit,
        } => {
            let state = match state.as_deref() {
                Some("active") => v1::IncentiveState::Active,
                Some("ended") => v1::IncentiveState::Ended,
                _ => v1::IncentiveState::Unspecified,
            };
            let mut all = Vec::new();
            let mut page_token = String::new();
            let limit = *limit as usize;
            while all.len() < limit {
                let page = client
                    .list_incentives(v1::ListIncentivesRequest {
                        sku: sku.clone(),
                        category: category.clone(),
                        state: state as i32,
                        page_size: u32::try_from(limit - all.len()).unwrap_or(1000).min(1000),
                        page_token,
                    })
                    .await
                    .map_err(explain_status)?
                    .into_inner();
                all.extend(page.incentives);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            all
        }
        IncentivesCommand::Trigger {
            sku,
            bonus,
            hours,
            budget_spend,
            budget_units,
            reason,
        } => {
            let mut request = v1::TriggerIncentiveRequest {
                sku: sku.clone(),
                bonus_rate: bonus.clone(),
                duration: None,
                budget_spend: budget_spend.clone(),
                budget_units: budget_units.clone(),
                reason: reason.clone(),
            };
            // Built from the default so this crate needs no direct prost-types dependency.
            let mut duration = request.duration.take().unwrap_or_default();
            duration.seconds = i64::from(*hours) * 3600;
            request.duration = Some(duration);
            let incentive = client
                .trigger_incentive(request)
                .await
                .map_err(explain_status)?
                .into_inner()
                .incentive;
            incentive.into_iter().collect()
        }
        IncentivesCommand::Cancel { id, reason } => client
            .cancel_incentive(v1::CancelIncentiveRequest {
                id: id.clone(),
                reason: reason.clone(),
            })
            .await
            .map_err(explain_status)?
            .into_inner()
            .incentive
            .into_iter()
            .collect(),
    };
    if json_out {
        for i in &shown {
            println!("{}", incentive_json(i));
        }
    } else {
        print_incentives(&shown);
    }
    Ok(())
}

fn state_name(i: &v1::Incentive) -> String {
    match v1::IncentiveState::try_from(i.state) {
        Ok(v1::IncentiveState::Active) => "active".to_owned(),
        Ok(v1::IncentiveState::Ended) => {
            let why = v1::IncentiveEndReason::try_from(i.end_reason)
                .map(|r| {
                    r.as_str_name()
                        .trim_start_matches("INCENTIVE_END_REASON_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            format!("ended ({why})")
        }
        _ => "unknown".to_owned(),
    }
}

fn origin_name(i: &v1::Incentive) -> &'static str {
    match v1::IncentiveOrigin::try_from(i.origin) {
        Ok(v1::IncentiveOrigin::Automatic) => "automatic",
        Ok(v1::IncentiveOrigin::Manual) => "manual",
        _ => "unknown",
    }
}

fn time(t: Option<&impl ToString>) -> String {
    t.map(ToString::to_string).unwrap_or_default()
}

fn incentive_json(i: &v1::Incentive) -> serde_json::Value {
    json!({
        "id": i.id,
        "sku": i.sku,
        "category": i.category,
        "bonus_rate": i.bonus_rate,
        "state": state_name(i),
        "origin": origin_name(i),
        "opened_by": i.opened_by,
        "reason": i.reason,
        "starts_at": time(i.starts_at.as_ref()),
        "ends_at": time(i.ends_at.as_ref()),
        "ended_at": time(i.ended_at.as_ref()),
        "budget_spend": i.budget_spend,
        "budget_units": i.budget_units,
        "spent": i.spent,
        "units_sold": i.units_sold,
        "units_over_budget": i.units_over_budget,
        "spend_over_budget": i.spend_over_budget,
        "days_of_cover_at_open": i.days_of_cover_at_open,
        "ended_by": i.ended_by,
        "cancel_reason": i.cancel_reason,
    })
}

/// `used/budget`, with the overshoot a coarse stock reading forced past the budget shown
/// rather than hidden: `1600/10 (+1590 over)`.
fn budget_cell(used: &str, budget: Option<&str>, over: &str) -> String {
    let shown = match budget {
        Some(b) => format!("{used}/{b}"),
        None => used.to_owned(),
    };
    match over.trim() {
        "" | "0" => shown,
        over => format!("{shown} (+{over} over)"),
    }
}

fn print_incentives(incentives: &[v1::Incentive]) {
    print!("{}", incentives_table(incentives));
}

fn incentives_table(incentives: &[v1::Incentive]) -> String {
    let header = [
        "ID", "SKU", "CATEGORY", "BONUS", "STATE", "ORIGIN", "ENDS", "SPENT", "UNITS", "REASON",
    ];
    let rows: Vec<Vec<String>> = incentives
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.sku.clone(),
                i.category.clone(),
                i.bonus_rate.clone(),
                state_name(i),
                origin_name(i).to_owned(),
                super::table::maybe_timestamp(i.ends_at.as_ref()),
                budget_cell(&i.spent, i.budget_spend.as_deref(), &i.spend_over_budget),
                budget_cell(
                    &i.units_sold,
                    i.budget_units.as_deref(),
                    &i.units_over_budget,
                ),
                i.reason.clone(),
            ]
        })
        .collect();
    super::table::render(&header, &rows, "(no incentives)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_times_to_the_second() {
        let incentive = v1::Incentive {
            id: "inc-1".into(),
            sku: "DEMO-FAN".into(),
            ends_at: Some(prost_types::Timestamp {
                seconds: 1_796_029_200,
                nanos: 5,
            }),
            ..Default::default()
        };
        let text = incentives_table(&[incentive]);
        assert!(text.contains("2026-11-30T09:00:00Z"), "{text}");
        assert!(!text.contains("09:00:00.0"), "{text}");
    }

    #[test]
    fn a_budget_cell_shows_the_overshoot() {
        assert_eq!(
            budget_cell("1600", Some("10"), "1590"),
            "1600/10 (+1590 over)"
        );
        assert_eq!(
            budget_cell("3200", Some("500"), "2700"),
            "3200/500 (+2700 over)"
        );
        assert_eq!(budget_cell("8", Some("10"), "0"), "8/10");
        assert_eq!(budget_cell("8", None, ""), "8");
    }
}
