//! What the service stores per SKU, and how an incentive looks on the wire.
//!
//! One record per SKU (bus state `incentive/<sku>`, field `record`) holds everything a
//! decision needs, so a stock event, an expiry, a trigger or a cancel is one
//! compare-and-set on one key: the service's own view of the SKU (core [`SkuState`]: stock,
//! velocity, product), the core [`IncentiveTrack`] (the active incentive with its budget
//! accounting, and the cooldown clock), what the wire format needs beyond core (origin,
//! author, reason, whether budgets were set), and the last ended incentive.
//!
//! # The `record` field
//!
//! The field is read and rewritten on every update of its SKU, so it is kept small and
//! cheap to parse: one format byte, then the [`SkuRecord`] as a protobuf message.
//!
//! | first byte | format |
//! |---|---|
//! | `0x01` ([`FORMAT_PROTOBUF`]) | the protobuf message `SkuRecord` below, written by [`SkuRecord::encode`] |
//! | `{` | JSON (serde) written by earlier releases; still read, never written |
//!
//! [`SkuRecord::decode`] ([`decode_record`]) reads both, so records written before the
//! change are read as they are and rewritten in the binary form on the SKU's next update;
//! any other first byte is an error (a format of a later release).
//!
//! The message follows proto3 rules so it can evolve: fields are numbered, a default
//! (zero, empty, `false`) is not written, an unknown field is skipped by an older reader,
//! and a field added later reads as its default from an older record. The encoding is
//! lossless, `decode(encode(r)) == r` for every record. `SkuState`, `Incentive`,
//! `Decimal` and `Timestamp` are the messages the rates service's engine record uses too,
//! with the same rules (exact decimals with their scale, instants to the nanosecond, an
//! incentive's SKU written only when it is not the record's); their schema is in
//! [`ratemesh_contract::state_wire`]. Of the record's own fields, the optional decimals of
//! `Meta` are written whenever present (`Some(0)` stays `Some(0)`), and the enums are
//! numbered from 1 so that 0 reads as "none" (`last_close_reason`) or is refused (an
//! `origin` or an end's `reason` is required).
//!
//! ```proto
//! message SkuRecord { SkuState view = 1; IncentiveTrack track = 2; Meta meta = 3;
//!   Ended last_ended = 4; optional sint64 report_interval_secs = 5; }
//! message IncentiveTrack { Incentive active = 1; Timestamp last_closed_at = 2;
//!   CloseReason last_close_reason = 3; }
//! message Meta { Origin origin = 1; string opened_by = 2; string reason = 3;
//!   Decimal days_of_cover_at_open = 4; Decimal budget_spend = 5;
//!   Decimal budget_units = 6; }
//! message Ended { Incentive incentive = 1; Meta meta = 2; End end = 3; }
//! message End { CloseReason reason = 1; Timestamp at = 2; string by = 3;
//!   string cancel_reason = 4; }
//! enum CloseReason { NONE = 0; EXPIRED = 1; SOLD_THROUGH = 2; BUDGET_EXHAUSTED = 3;
//!   BUDGET_FORECAST = 4; CANCELLED = 5; }
//! enum Origin { UNSPECIFIED = 0; AUTOMATIC = 1; MANUAL = 2; }
//! ```

use chrono::{DateTime, Utc};
use ratemesh_contract::state_wire;
use ratemesh_core::{CloseReason, Incentive, IncentiveTrack, Policy, Sku, SkuState};
use ratemesh_proto::v1;
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

mod wire;

pub use ratemesh_contract::state_wire::{FORMAT_PROTOBUF, RecordError};

/// Reads a `record` field: the binary form, or JSON written by an earlier release.
pub fn decode_record(bytes: &[u8]) -> Result<SkuRecord, RecordError> {
    SkuRecord::decode(bytes)
}

/// Who opened an incentive.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The overstock rules.
    Automatic,
    /// A merchandiser (`TriggerIncentive`).
    Manual,
}

/// Wire details of an incentive that core does not keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Who opened it.
    pub origin: Origin,
    /// Rule name (automatic) or principal (manual).
    pub opened_by: String,
    /// Why it was opened.
    pub reason: String,
    /// Days of cover when it opened, if velocity was known.
    pub days_of_cover_at_open: Option<Decimal>,
    /// Spend budget as given; `None` means none (core then holds an unreachable amount).
    pub budget_spend: Option<Decimal>,
    /// Unit budget as given; `None` means none.
    pub budget_units: Option<Decimal>,
}

/// How an incentive ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct End {
    /// Why.
    pub reason: CloseReason,
    /// When.
    pub at: DateTime<Utc>,
    /// Principal that cancelled it; empty otherwise.
    pub by: String,
    /// Reason given with the cancel; empty otherwise.
    pub cancel_reason: String,
}

/// An incentive that ended, as kept for listing and idempotent cancels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ended {
    /// The incentive at its end.
    pub incentive: Incentive,
    /// Its wire details.
    pub meta: Meta,
    /// How it ended.
    pub end: End,
}

/// Everything stored for one SKU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkuRecord {
    /// Stock, velocity and product as folded from the stock stream.
    pub view: SkuState,
    /// The active incentive and the cooldown clock.
    pub track: IncentiveTrack,
    /// Wire details of the active incentive.
    pub meta: Option<Meta>,
    /// The most recent incentive that ended.
    pub last_ended: Option<Ended>,
    /// Seconds between the last two stock reports: the expected wait for the next one,
    /// which the budget forecast (`stop_on_forecast`) reads.
    #[serde(default)]
    pub report_interval_secs: Option<i64>,
}

impl SkuRecord {
    /// An empty record for `sku`.
    pub fn new(sku: Sku, policy: &Policy) -> Self {
        Self {
            view: SkuState::new(sku, &policy.velocity),
            track: IncentiveTrack::default(),
            meta: None,
            last_ended: None,
            report_interval_secs: None,
        }
    }

    /// Reads the `record` field: the binary form, or JSON written by an earlier release.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        state_wire::decode_stored(bytes, wire::Record::into_record)
    }

    /// The `record` field, in the binary form.
    pub fn encode(&self) -> Vec<u8> {
        state_wire::encode_stored(&wire::Record::of(self))
    }

    /// The category the SKU's rules come from (empty until product data arrives).
    pub fn category(&self) -> &str {
        self.view
            .product
            .as_ref()
            .map_or("", |p| p.category.as_str())
    }

    /// The active incentive on the wire.
    pub fn active_proto(&self) -> Option<v1::Incentive> {
        let inc = self.track.active.as_ref()?;
        let meta = self.meta.as_ref()?;
        Some(to_proto(inc, meta, None))
    }
}

use ratemesh_contract::time::to_timestamp as timestamp;

/// The wire form of `inc`; ended when `end` is given.
pub fn to_proto(inc: &Incentive, meta: &Meta, end: Option<&End>) -> v1::Incentive {
    let state = if end.is_some() {
        v1::IncentiveState::Ended
    } else {
        v1::IncentiveState::Active
    };
    let end_reason = ratemesh_contract::incentive::end_reason_to_proto(end.map(|e| e.reason));
    let origin = match meta.origin {
        Origin::Automatic => v1::IncentiveOrigin::Automatic,
        Origin::Manual => v1::IncentiveOrigin::Manual,
    };
    v1::Incentive {
        id: inc.id.clone(),
        sku: inc.sku.to_string(),
        category: inc.category.clone(),
        bonus_rate: inc.bonus.get().normalize().to_string(),
        starts_at: Some(timestamp(inc.opened_at)),
        ends_at: Some(timestamp(inc.ends_at)),
        budget_spend: meta.budget_spend.map(|d| d.normalize().to_string()),
        budget_units: meta.budget_units.map(|d| d.normalize().to_string()),
        spent: inc.spent.get().round_dp(4).normalize().to_string(),
        units_sold: inc.units_sold.get().normalize().to_string(),
        state: state as i32,
        end_reason: end_reason as i32,
        origin: origin as i32,
        opened_by: meta.opened_by.clone(),
        reason: meta.reason.clone(),
        days_of_cover_at_open: meta
            .days_of_cover_at_open
            .map(|d| d.round_dp(2).normalize().to_string())
            .unwrap_or_default(),
        ended_at: end.map(|e| timestamp(e.at)),
        ended_by: end.map(|e| e.by.clone()).unwrap_or_default(),
        cancel_reason: end.map(|e| e.cancel_reason.clone()).unwrap_or_default(),
        // Without a budget core holds an unreachable one: nothing is ever over it.
        units_over_budget: inc.units_over_budget().get().normalize().to_string(),
        spend_over_budget: inc
            .spend_over_budget()
            .get()
            .round_dp(4)
            .normalize()
            .to_string(),
    }
}

impl Ended {
    /// The wire form.
    pub fn to_proto(&self) -> v1::Incentive {
        to_proto(&self.incentive, &self.meta, Some(&self.end))
    }
}

/// Milliseconds of a wire timestamp (0 when absent), for ordering.
pub fn millis(t: Option<&prost_types::Timestamp>) -> i64 {
    t.map_or(0, |t| {
        t.seconds
            .saturating_mul(1000)
            .saturating_add(i64::from(t.nanos / 1_000_000))
    })
}

#[cfg(test)]
mod tests;
