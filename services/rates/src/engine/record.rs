//! What the engine stores per SKU: the `rate` state record (its layout is the contract's,
//! [`ratemesh_contract::rate`]) and the engine's own part of it, the `engine` field.
//!
//! # The `engine` field
//!
//! The field is read and rewritten on every update of its SKU, so it is kept small and
//! cheap to parse: one format byte, then the [`EngineRecord`] as a protobuf message.
//!
//! | first byte | format |
//! |---|---|
//! | `0x01` ([`FORMAT_PROTOBUF`]) | the protobuf message `EngineRecord` below, written by [`EngineRecord::encode`] |
//! | `{` | JSON (serde) written by earlier releases; still read, never written |
//!
//! [`EngineRecord::decode`] reads both, so records written before the change are read
//! as they are and rewritten in the binary form on the SKU's next update; any other first
//! byte is an error (a format of a later release). A JSON text never starts with `0x01`.
//!
//! The message follows proto3 rules so it can evolve: fields are numbered, a default
//! (zero, empty, `false`) is not written, an unknown field is skipped by an older reader,
//! and a field added later reads as its default from an older record — so new fields are
//! optional or have a meaningful default, and a number is never reused. The encoding is
//! lossless, `decode(encode(r)) == r` for every record:
//!
//! - **Decimals** (`Decimal`) are `{ sint64 units = 1; uint32 scale = 2; string text = 3 }`,
//!   the value `units × 10^−scale`, so the scale survives (`0.060` stays `0.060`, not
//!   `0.06`). A mantissa that does not fit 64 bits is written as its exact decimal text
//!   in `text` instead (read back with `from_str_exact`). A zero's sign is not kept:
//!   rust_decimal clears it itself, compares `-0` equal to `0`, and JSON did not keep it
//!   either. A
//!   decimal field that is not optional in the core type is left out when it is a plain
//!   `0`; an optional one is written whenever present, so `Some(0)` stays `Some(0)`.
//! - **Instants** (`Timestamp`) are `{ sint64 seconds = 1; uint32 nanos = 2 }` since the
//!   Unix epoch, to the nanosecond over chrono's whole range (`nanos` reaches
//!   1,999,999,999 inside a leap second, as chrono represents it).
//! - **Maps** are repeated entries, one per key, in key order; on decode a later entry
//!   for the same key wins.
//! - **Reasons** are a `oneof` with one message per variant, numbered in
//!   [`ReasonCode::ALL`](ratemesh_core::ReasonCode::ALL) order.
//! - The card's and the incentive's SKU are written only when they differ from the
//!   state's (never, in practice); a card's `changed_at` only when it differs from its
//!   `computed_at`.
//!
//! `SkuState` and every message under it, `Decimal`, `Timestamp` and `Unit` are shared
//! with the incentives service's record: [`ratemesh_contract::state_wire`].
//!
//! ```proto
//! message EngineRecord { SkuState state = 1; RateCard card = 2; Published published = 3;
//!   Timestamp next_recompute = 4; }
//! message SkuState { string sku = 1; Product product = 2; Timestamp product_at = 3;
//!   repeated StockEntry stock = 4; Decimal available = 5; Velocity velocity = 6;
//!   OverrideBook overrides = 7; Incentive incentive = 8; Timestamp incentive_at = 9;
//!   Timestamp last_tick_at = 10; }
//! message Product { string category = 1; Decimal price = 2; Decimal unit_cost = 3;
//!   Decimal base_rate = 4; }
//! message StockEntry { string location = 1; Decimal on_hand = 2; Decimal reserved = 3;
//!   uint64 sequence = 4; Timestamp as_of = 5; }
//! message Velocity { int64 half_life_secs = 1; int64 erp_max_age_secs = 2;
//!   Timestamp anchor_at = 3; Decimal level = 4; Decimal pending = 5; Decimal estimate = 6;
//!   ErpVelocity erp = 7; }
//! message ErpVelocity { Decimal value = 1; Timestamp as_of = 2; }
//! message OverrideBook { repeated Override overrides = 1;
//!   repeated OverrideEventAt last_event_at = 2; }
//! message OverrideEventAt { string id = 1; Timestamp at = 2; }
//! message Override { string id = 1; oneof scope { string sku = 2; string category = 3; }
//!   oneof kind { Decimal pin = 4; Decimal floor = 5; Decimal cap = 6;
//!   Decimal multiplier = 7; Unit exclude = 8; } Timestamp starts_at = 9;
//!   Timestamp ends_at = 10; string reason = 11; string author = 12; }
//! message Incentive { string id = 1; string sku = 2; string category = 3;
//!   Decimal bonus = 4; Timestamp opened_at = 5; Timestamp ends_at = 6;
//!   uint32 extensions = 7; Decimal budget_spend = 8; Decimal budget_units = 9;
//!   Decimal spent = 10; Decimal units_sold = 11; bool cancel_requested = 12;
//!   bool manual = 13; }
//! message RateCard { string sku = 1; Decimal effective_rate = 2; Decimal previous_rate = 3;
//!   RateParts parts = 4; repeated Reason reasons = 5; uint64 version = 6;
//!   Timestamp computed_at = 7; Timestamp changed_at = 8; Timestamp guaranteed_until = 9;
//!   CardState state = 10; }
//! message RateParts { Decimal base = 1; Decimal inventory_adjustment = 2; Decimal boost = 3;
//!   Decimal incentive = 4; Decimal overrides = 5; Decimal guardrails = 6; }
//! message CardState { BandPosition band = 1; Decimal policy_rate = 2;
//!   Timestamp policy_changed_at = 3; Decimal published_base = 4;
//!   repeated BaseChange base_history = 5; PendingCut pending_cut = 6; Decimal boost = 7;
//!   Timestamp boost_changed_at = 8; Timestamp boost_guaranteed_until = 9; }
//! message BandPosition { uint32 table = 1; uint32 index = 2; }
//! message BaseChange { Timestamp at = 1; Decimal rate = 2; }
//! message PendingCut { Decimal to = 1; Timestamp effective_at = 2; }
//! message Published { uint64 version = 1; Decimal rate = 2; Timestamp guaranteed_until = 3;
//!   string category = 4; bool out_of_stock = 5; string explanation = 6;
//!   PendingCut scheduled_cut = 7; }
//! message Reason { oneof code {
//!   Unit no_product_data = 1; RateParam out_of_stock = 2; Unit no_velocity_data = 3;
//!   Cover low_cover = 4; Cover overstock = 5; Window peak_window = 6; Damped damped = 7;
//!   TargetUntil held = 8; RateParam floor = 9; RateParam cap = 10;
//!   RateParam margin_guard = 11; OverrideRate override_pin = 12;
//!   OverrideRate override_floor = 13; OverrideRate override_cap = 14;
//!   OverrideRate override_multiplier = 15; OverrideRate override_exclude = 16;
//!   Boost boost = 17; TargetUntil boost_guaranteed = 18; FromTo boost_lapsed = 19;
//!   TargetUntil base_cut_scheduled = 20; FromTo base_cut = 21;
//!   FromTo base_cut_limited = 22; IncentiveBonus incentive = 23; } }
//! message Unit {}
//! message RateParam { Decimal rate = 1; }
//! message Cover { Decimal days = 1; string band = 2; }
//! message Window { string window = 1; }
//! message Damped { Decimal target = 1; Decimal max_step = 2; }
//! message TargetUntil { Decimal target = 1; Timestamp until = 2; }   // held: target, until;
//!   // boost_guaranteed: until; base_cut_scheduled: to, effective_at
//! message OverrideRate { string id = 1; Decimal value = 2; }  // the rate or factor, if any
//! message Boost { Decimal boost = 1; Timestamp guaranteed_until = 2; }
//! message FromTo { Decimal from = 1; Decimal to = 2; }  // base_cut_limited: target, allowed
//! message IncentiveBonus { string id = 1; Decimal bonus = 2; Timestamp ends_at = 3; }
//! ```

use chrono::{DateTime, Utc};
use ratemesh_contract::state_wire;
use ratemesh_core::card::PendingCut;
use ratemesh_core::{Policy, Rate, RateCard, Sku, SkuState};
use serde::{Deserialize, Serialize};

use super::wire;

/// The record's layout is the contract's: namespace `rate`, the published card in
/// `card`, the [`EngineRecord`] in `engine`.
pub use ratemesh_contract::rate::{FIELD_CARD, FIELD_ENGINE, NAMESPACE};

pub use ratemesh_contract::state_wire::{FORMAT_PROTOBUF, RecordError};

/// What was last published for a SKU: the proto card's version and what a new publication
/// is compared against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// Version of the published proto card: 1 for the first, +1 per publication.
    pub version: u64,
    /// Its effective rate.
    pub rate: Rate,
    /// Its guarantee.
    pub guaranteed_until: Option<DateTime<Utc>>,
    /// Its category.
    pub category: String,
    /// Whether it said the SKU is out of stock (records written before this field was
    /// kept read as `false`: at worst one extra publication).
    #[serde(default)]
    pub out_of_stock: bool,
    /// Its band and reason codes (with the targets and times of `HELD` and scheduled cuts),
    /// so a card whose explanation stopped being true is published again (records written
    /// before this field was kept read as empty: at worst one extra publication).
    #[serde(default)]
    pub explanation: String,
    /// The base cut it announced, if any.
    #[serde(default)]
    pub scheduled_cut: Option<PendingCut>,
}

/// The engine's state of one SKU, stored in the `engine` field (see the module
/// documentation for the format).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EngineRecord {
    /// Folded events: product, stock per location, velocity, SKU overrides, incentive.
    pub state: SkuState,
    /// The card of the last computation (also when it was not published).
    pub card: Option<RateCard>,
    /// What was last published.
    pub published: Option<Published>,
    /// The time-driven recompute scheduled for this SKU, so it is scheduled once.
    #[serde(default)]
    pub next_recompute: Option<DateTime<Utc>>,
}

impl EngineRecord {
    /// A SKU never seen before.
    pub fn new(sku: Sku, policy: &Policy) -> Self {
        Self {
            state: SkuState::new(sku, &policy.velocity),
            card: None,
            published: None,
            next_recompute: None,
        }
    }

    /// Reads the `engine` field: the binary form, or JSON written by an earlier release.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        state_wire::decode_stored(bytes, wire::Record::into_record)
    }

    /// The `engine` field, in the binary form.
    pub fn encode(&self) -> Vec<u8> {
        state_wire::encode_stored(&wire::Record::of(self))
    }

    /// The SKU's category, once product data arrived.
    pub fn category(&self) -> Option<&str> {
        self.state.product.as_ref().map(|p| p.category.as_str())
    }
}

#[cfg(test)]
mod tests;
