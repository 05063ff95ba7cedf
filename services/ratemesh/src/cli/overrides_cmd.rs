//! `ratemesh overrides …`: set, clear, list and audit merchandiser overrides over
//! `OverrideService` (role merchandiser). Tables for people, `--json` (one object per
//! line) for scripts.

use clap::{Args, Subcommand, ValueEnum};
use ratemesh_proto::v1;
use ratemesh_proto::v1::override_service_client::OverrideServiceClient;
use ratemesh_rates::overrides::wire::parse_time;
use serde_json::json;

use super::client::{ClientArgs, explain_status};
use super::{invocation, table};

#[derive(Debug, Args)]
pub(crate) struct OverridesArgs {
    #[command(flatten)]
    client: ClientArgs,
    #[command(subcommand)]
    command: OverridesCommand,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Kind {
    /// The rate is exactly --value.
    Pin,
    /// The rate is at least --value.
    Floor,
    /// The rate is at most --value.
    Cap,
    /// The policy rate is multiplied by --value.
    Multiplier,
    /// No commission.
    Exclude,
}

#[derive(Debug, Subcommand)]
enum OverridesCommand {
    /// Set an override on a SKU or a category; it applies on the next read.
    Set {
        /// The SKU it applies to.
        #[arg(
            long,
            conflicts_with = "category",
            required_unless_present = "category"
        )]
        sku: Option<String>,
        /// The category it applies to (every SKU in it).
        #[arg(long)]
        category: Option<String>,
        /// What it does.
        #[arg(long, value_enum)]
        kind: Kind,
        /// A rate fraction for pin/floor/cap (0.07 = 7 %), a factor for multiplier; none
        /// for exclude.
        #[arg(long, default_value = "")]
        value: String,
        /// When it starts: RFC 3339 or +<n><s|m|h|d>. Default: now.
        #[arg(long)]
        starts_at: Option<String>,
        /// When it ends: RFC 3339 or +<n><s|m|h|d>. Default: open-ended.
        #[arg(long)]
        ends_at: Option<String>,
        /// Why (shown in explanations and the audit trail).
        #[arg(long)]
        reason: String,
        /// Clear conflicting overrides instead of failing.
        #[arg(long)]
        replace: bool,
    },
    /// End an override now.
    Clear {
        /// The override's id.
        id: String,
        /// Why (recorded in the audit trail).
        #[arg(long)]
        reason: String,
    },
    /// List overrides, newest first (active only unless --all).
    List {
        /// Only those that can apply to this SKU (its own and its category's).
        #[arg(long)]
        sku: Option<String>,
        /// Only those set on this category.
        #[arg(long)]
        category: Option<String>,
        /// Also scheduled, expired and cleared ones.
        #[arg(long)]
        all: bool,
        /// Most overrides to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// The audit trail of override changes, newest first.
    History {
        /// Only changes to overrides that can apply to this SKU.
        #[arg(long)]
        sku: Option<String>,
        /// Only changes to this override.
        #[arg(long)]
        id: Option<String>,
        /// Most entries to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
}

pub(crate) async fn run(args: &OverridesArgs) -> anyhow::Result<()> {
    let mut client = OverrideServiceClient::new(args.client.connect().await?);
    let json_out = args.client.json;
    match &args.command {
        OverridesCommand::Set {
            sku,
            category,
            kind,
            value,
            starts_at,
            ends_at,
            reason,
            replace,
        } => {
            let time = |t: &Option<String>, flag: &str| -> anyhow::Result<_> {
                t.as_deref()
                    .map(|t| parse_time(t).map_err(|e| anyhow::anyhow!("--{flag} {e}")))
                    .transpose()
            };
            let scope = match (sku, category) {
                (Some(s), _) => v1::r#override::Scope::Sku(s.clone()),
                (None, Some(c)) => v1::r#override::Scope::Category(c.clone()),
                (None, None) => anyhow::bail!("one of --sku or --category is required"),
            };
            let request = v1::SetOverrideRequest {
                r#override: Some(v1::Override {
                    scope: Some(scope),
                    kind: match kind {
                        Kind::Pin => v1::OverrideKind::Pin,
                        Kind::Floor => v1::OverrideKind::Floor,
                        Kind::Cap => v1::OverrideKind::Cap,
                        Kind::Multiplier => v1::OverrideKind::Multiplier,
                        Kind::Exclude => v1::OverrideKind::Exclude,
                    } as i32,
                    value: value.clone(),
                    starts_at: time(starts_at, "starts-at")?,
                    ends_at: time(ends_at, "ends-at")?,
                    reason: reason.clone(),
                    ..Default::default()
                }),
                replace_conflicting: *replace,
            };
            let flags = invocation::connection_flags(&args.client);
            let response = client
                .set_override(request)
                .await
                .map_err(|status| set_refusal(status, &invocation::prefix(), &flags))?
                .into_inner();
            let set: Vec<v1::Override> = response.r#override.into_iter().collect();
            if json_out {
                for o in &set {
                    println!("{}", override_json(o));
                }
                for o in &response.replaced {
                    println!("{}", json!({"replaced": override_json(o)}));
                }
            } else {
                print_overrides(&set);
                if !response.replaced.is_empty() {
                    println!("\nreplaced:");
                    print_overrides(&response.replaced);
                }
                if let Some(sku) = sku {
                    // Guardrails act after overrides; explain shows where the rate landed.
                    println!(
                        "\nthe rate follows within a second: {} rates explain {}{flags}",
                        invocation::prefix(),
                        invocation::shell_word(sku)
                    );
                }
            }
        }
        OverridesCommand::Clear { id, reason } => {
            let cleared: Vec<v1::Override> = client
                .clear_override(v1::ClearOverrideRequest {
                    id: id.clone(),
                    reason: reason.clone(),
                })
                .await
                .map_err(explain_status)?
                .into_inner()
                .cleared
                .into_iter()
                .collect();
            show_overrides(&cleared, json_out);
        }
        OverridesCommand::List {
            sku,
            category,
            all,
            limit,
        } => {
            let limit = *limit as usize;
            let mut shown = Vec::new();
            let mut page_token = String::new();
            while shown.len() < limit {
                let page = client
                    .list_overrides(v1::ListOverridesRequest {
                        sku: sku.clone(),
                        category: category.clone(),
                        include_inactive: *all,
                        page_size: page_size(limit - shown.len()),
                        page_token,
                    })
                    .await
                    .map_err(explain_status)?
                    .into_inner();
                shown.extend(page.overrides);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            show_overrides(&shown, json_out);
        }
        OverridesCommand::History { sku, id, limit } => {
            let limit = *limit as usize;
            let mut shown = Vec::new();
            let mut page_token = String::new();
            while shown.len() < limit {
                let page = client
                    .list_override_audit(v1::ListOverrideAuditRequest {
                        sku: sku.clone(),
                        override_id: id.clone(),
                        page_size: page_size(limit - shown.len()),
                        page_token,
                    })
                    .await
                    .map_err(explain_status)?
                    .into_inner();
                shown.extend(page.entries);
                if page.next_page_token.is_empty() {
                    break;
                }
                page_token = page.next_page_token;
            }
            if json_out {
                for e in &shown {
                    println!("{}", audit_json(e));
                }
            } else {
                print_audit(&shown);
            }
        }
    }
    Ok(())
}

/// Why `overrides set` was refused. A conflict is told in the CLI's own terms: `--replace`
/// and `overrides clear`, not the gRPC field `replace_conflicting`.
fn set_refusal(status: tonic::Status, prefix: &str, flags: &str) -> anyhow::Error {
    use tonic_types::StatusExt;
    let conflicts: Vec<_> = status
        .get_details_precondition_failure()
        .map(|p| p.violations)
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v.r#type == "OVERRIDE_CONFLICT")
        .collect();
    if status.code() != tonic::Code::FailedPrecondition || conflicts.is_empty() {
        return explain_status(status);
    }
    let mut message = format!(
        "the override conflicts with {} active override(s):",
        conflicts.len()
    );
    for c in &conflicts {
        message.push_str(&format!("\n  {}: {}", c.subject, c.description));
    }
    message.push_str(&format!(
        "\nrun the same command with --replace to clear them, or clear one first: \
         {prefix} overrides clear {} --reason …{flags}",
        invocation::shell_word(&conflicts[0].subject)
    ));
    anyhow::anyhow!(message)
}

fn page_size(wanted: usize) -> u32 {
    u32::try_from(wanted).unwrap_or(1000).clamp(1, 1000)
}

fn time(t: Option<&impl ToString>) -> String {
    t.map(ToString::to_string).unwrap_or_default()
}

fn enum_name(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_ascii_lowercase()
}

fn kind_name(o: &v1::Override) -> String {
    v1::OverrideKind::try_from(o.kind)
        .map(|k| enum_name(k.as_str_name(), "OVERRIDE_KIND_"))
        .unwrap_or_default()
}

fn status_name(o: &v1::Override) -> String {
    v1::OverrideStatus::try_from(o.status)
        .map(|s| enum_name(s.as_str_name(), "OVERRIDE_STATUS_"))
        .unwrap_or_default()
}

fn scope_name(o: &v1::Override) -> String {
    match &o.scope {
        Some(v1::r#override::Scope::Sku(s)) => format!("sku {s}"),
        Some(v1::r#override::Scope::Category(c)) => format!("category {c}"),
        None => String::new(),
    }
}

fn override_json(o: &v1::Override) -> serde_json::Value {
    let (sku, category) = match &o.scope {
        Some(v1::r#override::Scope::Sku(s)) => (Some(s), None),
        Some(v1::r#override::Scope::Category(c)) => (None, Some(c)),
        None => (None, None),
    };
    json!({
        "id": o.id,
        "sku": sku,
        "category": category,
        "kind": kind_name(o),
        "value": o.value,
        "starts_at": time(o.starts_at.as_ref()),
        "ends_at": time(o.ends_at.as_ref()),
        "reason": o.reason,
        "author": o.author,
        "created_at": time(o.created_at.as_ref()),
        "status": status_name(o),
    })
}

fn audit_json(e: &v1::OverrideAuditEntry) -> serde_json::Value {
    json!({
        "at": time(e.at.as_ref()),
        "author": e.author,
        "action": v1::OverrideAction::try_from(e.action)
            .map(|a| enum_name(a.as_str_name(), "OVERRIDE_ACTION_"))
            .unwrap_or_default(),
        "reason": e.reason,
        "before": e.before.as_ref().map(override_json),
        "after": e.after.as_ref().map(override_json),
    })
}

fn show_overrides(overrides: &[v1::Override], json_out: bool) {
    if json_out {
        for o in overrides {
            println!("{}", override_json(o));
        }
    } else {
        print_overrides(overrides);
    }
}

fn print_overrides(overrides: &[v1::Override]) {
    print!("{}", overrides_table(overrides));
}

fn overrides_table(overrides: &[v1::Override]) -> String {
    let rows: Vec<Vec<String>> = overrides
        .iter()
        .map(|o| {
            vec![
                o.id.clone(),
                scope_name(o),
                kind_name(o),
                o.value.clone(),
                status_name(o),
                table::maybe_timestamp(o.starts_at.as_ref()),
                table::maybe_timestamp(o.ends_at.as_ref()),
                o.author.clone(),
                o.reason.clone(),
            ]
        })
        .collect();
    table::render(
        &[
            "ID", "SCOPE", "KIND", "VALUE", "STATUS", "STARTS", "ENDS", "AUTHOR", "REASON",
        ],
        &rows,
        "(no overrides)",
    )
}

fn print_audit(entries: &[v1::OverrideAuditEntry]) {
    let rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let subject = e.after.as_ref().or(e.before.as_ref());
            vec![
                table::maybe_timestamp(e.at.as_ref()),
                v1::OverrideAction::try_from(e.action)
                    .map(|a| enum_name(a.as_str_name(), "OVERRIDE_ACTION_"))
                    .unwrap_or_default(),
                subject.map(|o| o.id.clone()).unwrap_or_default(),
                subject.map(scope_name).unwrap_or_default(),
                subject
                    .map(|o| format!("{} {}", kind_name(o), o.value).trim().to_owned())
                    .unwrap_or_default(),
                e.author.clone(),
                e.reason.clone(),
            ]
        })
        .collect();
    table::print(
        &[
            "AT", "ACTION", "ID", "SCOPE", "OVERRIDE", "AUTHOR", "REASON",
        ],
        &rows,
        "(no changes)",
    );
}

#[cfg(test)]
mod tests {
    use tonic_types::{ErrorDetails, StatusExt};

    use super::*;

    #[test]
    fn a_conflict_is_told_in_the_cli_terms() {
        let status = tonic::Status::with_error_details(
            tonic::Code::FailedPrecondition,
            "override conflicts with 1 existing override(s) on sku A-1; clear them or set replace_conflicting",
            ErrorDetails::with_precondition_failure_violation(
                "OVERRIDE_CONFLICT",
                "01JOVERRIDE",
                "two pins on sku A-1",
            ),
        );
        let text = set_refusal(status, "cargo run -p ratemesh --", "").to_string();
        assert!(text.contains("--replace"), "{text}");
        assert!(!text.contains("replace_conflicting"), "{text}");
        assert!(
            text.contains("cargo run -p ratemesh -- overrides clear 01JOVERRIDE --reason"),
            "{text}"
        );
        assert!(text.contains("01JOVERRIDE: two pins on sku A-1"), "{text}");
    }

    #[test]
    fn the_table_shows_times_to_the_second() {
        let o = v1::Override {
            id: "ov-1".into(),
            starts_at: Some(prost_types::Timestamp {
                seconds: 1_796_029_200,
                nanos: 120_000_000,
            }),
            ..Default::default()
        };
        let text = overrides_table(&[o]);
        assert!(text.contains("2026-11-30T09:00:00Z"), "{text}");
        assert!(!text.contains("09:00:00.12"), "{text}");
    }
}
