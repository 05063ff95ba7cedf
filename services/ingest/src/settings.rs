//! The `[ingest]` settings section: its type, its documented defaults
//! (`src/defaults.toml`) and its checks. The frame layers it with every other section.

use std::collections::HashSet;

use ratemesh_runtime::settings::{
    Secret, Section, SettingsError, check_consumer_name, require_positive,
};
use serde::{Deserialize, Serialize};

/// ERP webhooks and `InventoryIngest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSettings {
    /// Largest webhook body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// Bytes held at once, across every webhook request, for bodies whose signature is not
    /// verified yet (503 beyond): what unsigned floods can make the process buffer.
    pub max_unverified_body_bytes: usize,
    /// Most items in one batch (413 beyond).
    pub max_batch_items: usize,
    /// How far a signature's timestamp may be from server time.
    pub signature_tolerance_secs: u64,
    /// How long a batch id is remembered with its answer.
    pub idempotency_ttl_secs: u64,
    /// How far in the future an item's `as_of` may be (clock skew allowance).
    pub max_future_skew_secs: u64,
    /// Backlog of the stock stream for the rates group above which pushes are shed (429).
    pub max_stock_backlog: u64,
    /// Webhook requests with a verified signature processed at once; more are shed (503).
    pub max_in_flight: usize,
    /// Deadline for receiving a webhook body, from the end of its headers (408 beyond).
    pub body_read_timeout_ms: u64,
    /// Back-off advertised with 429/503 answers.
    pub retry_after_secs: u64,
    /// ERP sources allowed to call the webhooks, each with its signing secrets.
    pub sources: Vec<ErpSource>,
    /// The input archive this service keeps for what-if replays (`[ingest.archive]`).
    pub archive: ArchiveSettings,
    /// Bounds of `PolicyService.WhatIf` runs over the archive (`[ingest.whatif]`).
    pub whatif: WhatIfSettings,
}

/// Bounds of the what-if runs this process serves (`[ingest.whatif]`): each run holds the
/// range's events in memory and keeps cores busy, so size, time and concurrency are
/// capped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhatIfSettings {
    /// Longest range a run may ask for, in days.
    pub max_range_days: u32,
    /// Most archived events a run may read.
    pub max_events: u64,
    /// Longest a run may take, reading included (DEADLINE_EXCEEDED beyond).
    pub time_limit_secs: u64,
    /// Runs at once in this process (RESOURCE_EXHAUSTED beyond).
    pub max_concurrent: usize,
    /// Worker threads of one run; 0: one per core.
    pub threads: usize,
}

/// The input archive (`[ingest.archive]`): every accepted stock and product event and
/// every override and incentive change, in day files under `dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArchiveSettings {
    /// The archive directory; empty turns the archive off. It must be on a persistent
    /// volume for the archive to outlive the process.
    pub dir: String,
    /// Day files older than this many days are deleted.
    pub retention_days: u32,
    /// This replica's name in the `archive` consumer group, also part of the names of the
    /// files it writes. Empty: derived from the host name and process id.
    pub consumer_name: String,
}

impl ArchiveSettings {
    /// The directory, when the archive is on.
    pub fn dir(&self) -> Option<&str> {
        Some(self.dir.trim()).filter(|d| !d.is_empty())
    }
}

/// One ERP system that pushes over the webhooks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErpSource {
    /// Name recorded on every event from this source.
    pub name: String,
    /// Current signing secrets; list two while rotating.
    pub secrets: Vec<Secret>,
}

impl Section for IngestSettings {
    const NAME: &'static str = "ingest";
    const DEFAULTS: &'static str = include_str!("defaults.toml");

    fn validate(&self) -> Result<(), SettingsError> {
        require_positive([
            ("ingest.max_body_bytes", self.max_body_bytes as u64),
            (
                "ingest.max_unverified_body_bytes",
                self.max_unverified_body_bytes as u64,
            ),
            ("ingest.max_batch_items", self.max_batch_items as u64),
            (
                "ingest.signature_tolerance_secs",
                self.signature_tolerance_secs,
            ),
            ("ingest.idempotency_ttl_secs", self.idempotency_ttl_secs),
            ("ingest.max_stock_backlog", self.max_stock_backlog),
            ("ingest.max_in_flight", self.max_in_flight as u64),
            ("ingest.body_read_timeout_ms", self.body_read_timeout_ms),
            ("ingest.retry_after_secs", self.retry_after_secs),
            (
                "ingest.archive.retention_days",
                u64::from(self.archive.retention_days),
            ),
            (
                "ingest.whatif.max_range_days",
                u64::from(self.whatif.max_range_days),
            ),
            ("ingest.whatif.max_events", self.whatif.max_events),
            ("ingest.whatif.time_limit_secs", self.whatif.time_limit_secs),
            (
                "ingest.whatif.max_concurrent",
                self.whatif.max_concurrent as u64,
            ),
        ])?;
        check_consumer_name("ingest.archive.consumer_name", &self.archive.consumer_name)?;
        if self.max_unverified_body_bytes < self.max_body_bytes {
            return Err(SettingsError::new(
                "ingest.max_unverified_body_bytes",
                "must be at least ingest.max_body_bytes, or the largest body is never accepted",
            ));
        }
        if u32::try_from(self.max_body_bytes).is_err() {
            return Err(SettingsError::new(
                "ingest.max_body_bytes",
                "must be below 4 GiB",
            ));
        }
        let mut source_names = HashSet::new();
        for (n, source) in self.sources.iter().enumerate() {
            let at = |field: &str| format!("ingest.sources[{n}].{field}");
            if source.name.trim().is_empty() || !source_names.insert(source.name.as_str()) {
                return Err(SettingsError::new(
                    at("name"),
                    "must be non-empty and unique",
                ));
            }
            if source.secrets.is_empty() {
                return Err(SettingsError::new(
                    at("secrets"),
                    "must hold at least one secret",
                ));
            }
            if let Some(k) = source.secrets.iter().position(|s| s.expose().len() < 16) {
                return Err(SettingsError::new(
                    format!("ingest.sources[{n}].secrets[{k}]"),
                    "must be at least 16 characters",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratemesh_runtime::settings::check_section;

    #[test]
    fn defaults_load_and_checks_name_the_key() {
        check_section::<IngestSettings>(&[
            (
                "RATEMESH__INGEST__MAX_BODY_BYTES",
                "0",
                "ingest.max_body_bytes",
            ),
            (
                "RATEMESH__INGEST__MAX_UNVERIFIED_BODY_BYTES",
                "1",
                "ingest.max_unverified_body_bytes",
            ),
            (
                "RATEMESH__INGEST__RETRY_AFTER_SECS",
                "0",
                "ingest.retry_after_secs",
            ),
            (
                "RATEMESH__INGEST__ARCHIVE__RETENTION_DAYS",
                "0",
                "ingest.archive.retention_days",
            ),
            (
                "RATEMESH__INGEST__WHATIF__MAX_CONCURRENT",
                "0",
                "ingest.whatif.max_concurrent",
            ),
        ])
        .unwrap();
    }
}
