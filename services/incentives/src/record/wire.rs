//! The protobuf messages of the binary `record` field, and their conversions to and from
//! [`SkuRecord`]. The schema is in the [`record`](super) module documentation; each
//! struct here is one message of it, with the same field numbers. The SKU state, the
//! incentive, decimals and instants are the contract's shared messages
//! ([`ratemesh_contract::state_wire`]).
//!
//! Encoding never fails. Decoding checks what the core types check on construction and
//! fails with the path of the first field that is wrong.

use ratemesh_contract::state_wire::{
    Incentive, SkuState, Timestamp, WireDecimal, decimal, incentive, into_decimal, into_incentive,
    into_sku_state, optional_time, required_time, sku_state, timestamp,
};
use ratemesh_core::{CloseReason, IncentiveTrack, Sku};

use super::{End, Ended, Meta, Origin, SkuRecord};

/// Why a decoded message is not a valid record: the field's path and what is wrong.
pub(super) type Invalid = String;

type Result<T> = std::result::Result<T, Invalid>;

/// `SkuRecord`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Record {
    #[prost(message, optional, tag = "1")]
    pub(super) view: Option<SkuState>,
    #[prost(message, optional, tag = "2")]
    pub(super) track: Option<Track>,
    #[prost(message, optional, tag = "3")]
    pub(super) meta: Option<MetaMsg>,
    #[prost(message, optional, tag = "4")]
    pub(super) last_ended: Option<EndedMsg>,
    #[prost(sint64, optional, tag = "5")]
    pub(super) report_interval_secs: Option<i64>,
}

/// `IncentiveTrack`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct Track {
    #[prost(message, optional, tag = "1")]
    pub(super) active: Option<Incentive>,
    #[prost(message, optional, tag = "2")]
    pub(super) last_closed_at: Option<Timestamp>,
    /// `CloseReason`; 0: none.
    #[prost(int32, tag = "3")]
    pub(super) last_close_reason: i32,
}

/// `Meta`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct MetaMsg {
    /// `Origin`; 0 is no origin and is refused.
    #[prost(int32, tag = "1")]
    pub(super) origin: i32,
    #[prost(string, tag = "2")]
    pub(super) opened_by: String,
    #[prost(string, tag = "3")]
    pub(super) reason: String,
    #[prost(message, optional, tag = "4")]
    pub(super) days_of_cover_at_open: Option<WireDecimal>,
    #[prost(message, optional, tag = "5")]
    pub(super) budget_spend: Option<WireDecimal>,
    #[prost(message, optional, tag = "6")]
    pub(super) budget_units: Option<WireDecimal>,
}

/// `End`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct EndMsg {
    /// `CloseReason`; 0 is no reason and is refused.
    #[prost(int32, tag = "1")]
    pub(super) reason: i32,
    #[prost(message, optional, tag = "2")]
    pub(super) at: Option<Timestamp>,
    #[prost(string, tag = "3")]
    pub(super) by: String,
    #[prost(string, tag = "4")]
    pub(super) cancel_reason: String,
}

/// `Ended`.
#[derive(Clone, PartialEq, prost::Message)]
pub(super) struct EndedMsg {
    #[prost(message, optional, tag = "1")]
    pub(super) incentive: Option<Incentive>,
    #[prost(message, optional, tag = "2")]
    pub(super) meta: Option<MetaMsg>,
    #[prost(message, optional, tag = "3")]
    pub(super) end: Option<EndMsg>,
}

// ---- record → wire --------------------------------------------------------------------

impl Record {
    /// The message of `record`.
    pub(super) fn of(record: &SkuRecord) -> Self {
        let own = &record.view.sku;
        Self {
            view: Some(sku_state(&record.view)),
            track: Some(track(&record.track, own)).filter(|t| *t != Track::default()),
            meta: record.meta.as_ref().map(meta),
            last_ended: record.last_ended.as_ref().map(|e| ended(e, own)),
            report_interval_secs: record.report_interval_secs,
        }
    }

    /// The record this message holds.
    pub(super) fn into_record(self) -> Result<SkuRecord> {
        let view =
            into_sku_state(self.view.ok_or("view: missing")?).map_err(|e| format!("view.{e}"))?;
        let track = into_track(self.track.unwrap_or_default(), &view.sku)
            .map_err(|e| format!("track.{e}"))?;
        let meta = self
            .meta
            .map(into_meta)
            .transpose()
            .map_err(|e| format!("meta.{e}"))?;
        let last_ended = self
            .last_ended
            .map(|e| into_ended(e, &view.sku))
            .transpose()
            .map_err(|e| format!("last_ended.{e}"))?;
        Ok(SkuRecord {
            view,
            track,
            meta,
            last_ended,
            report_interval_secs: self.report_interval_secs,
        })
    }
}

fn close_reason(r: CloseReason) -> i32 {
    match r {
        CloseReason::Expired => 1,
        CloseReason::SoldThrough => 2,
        CloseReason::BudgetExhausted => 3,
        CloseReason::BudgetForecast => 4,
        CloseReason::Cancelled => 5,
    }
}

fn origin(o: Origin) -> i32 {
    match o {
        Origin::Automatic => 1,
        Origin::Manual => 2,
    }
}

fn track(t: &IncentiveTrack, own: &Sku) -> Track {
    Track {
        active: t.active.as_ref().map(|i| incentive(i, own)),
        last_closed_at: t.last_closed_at.map(timestamp),
        last_close_reason: t.last_close_reason.map_or(0, close_reason),
    }
}

fn meta(m: &Meta) -> MetaMsg {
    MetaMsg {
        origin: origin(m.origin),
        opened_by: m.opened_by.clone(),
        reason: m.reason.clone(),
        days_of_cover_at_open: m.days_of_cover_at_open.map(decimal),
        budget_spend: m.budget_spend.map(decimal),
        budget_units: m.budget_units.map(decimal),
    }
}

fn ended(e: &Ended, own: &Sku) -> EndedMsg {
    EndedMsg {
        incentive: Some(incentive(&e.incentive, own)),
        meta: Some(meta(&e.meta)),
        end: Some(EndMsg {
            reason: close_reason(e.end.reason),
            at: Some(timestamp(e.end.at)),
            by: e.end.by.clone(),
            cancel_reason: e.end.cancel_reason.clone(),
        }),
    }
}

// ---- wire → record --------------------------------------------------------------------

fn into_close_reason(code: i32, field: &str) -> Result<CloseReason> {
    Ok(match code {
        1 => CloseReason::Expired,
        2 => CloseReason::SoldThrough,
        3 => CloseReason::BudgetExhausted,
        4 => CloseReason::BudgetForecast,
        5 => CloseReason::Cancelled,
        0 => return Err(format!("{field}: missing")),
        other => return Err(format!("{field}: unknown close reason {other}")),
    })
}

fn into_track(t: Track, own: &Sku) -> Result<IncentiveTrack> {
    Ok(IncentiveTrack {
        active: t
            .active
            .map(|i| into_incentive(i, own))
            .transpose()
            .map_err(|e| format!("active.{e}"))?,
        last_closed_at: optional_time(t.last_closed_at, "last_closed_at")?,
        last_close_reason: match t.last_close_reason {
            0 => None,
            code => Some(into_close_reason(code, "last_close_reason")?),
        },
    })
}

fn optional_decimal(w: Option<WireDecimal>, field: &str) -> Result<Option<rust_decimal::Decimal>> {
    w.map(into_decimal)
        .transpose()
        .map_err(|e| format!("{field}: {e}"))
}

fn into_meta(m: MetaMsg) -> Result<Meta> {
    Ok(Meta {
        origin: match m.origin {
            1 => Origin::Automatic,
            2 => Origin::Manual,
            0 => return Err("origin: missing".into()),
            other => return Err(format!("origin: unknown origin {other}")),
        },
        opened_by: m.opened_by,
        reason: m.reason,
        days_of_cover_at_open: optional_decimal(m.days_of_cover_at_open, "days_of_cover_at_open")?,
        budget_spend: optional_decimal(m.budget_spend, "budget_spend")?,
        budget_units: optional_decimal(m.budget_units, "budget_units")?,
    })
}

fn into_ended(e: EndedMsg, own: &Sku) -> Result<Ended> {
    let incentive = into_incentive(e.incentive.ok_or("incentive: missing")?, own)
        .map_err(|err| format!("incentive.{err}"))?;
    let meta = into_meta(e.meta.ok_or("meta: missing")?).map_err(|err| format!("meta.{err}"))?;
    let end = e.end.ok_or("end: missing")?;
    Ok(Ended {
        incentive,
        meta,
        end: End {
            reason: into_close_reason(end.reason, "end.reason")?,
            at: required_time(end.at, "end.at")?,
            by: end.by,
            cancel_reason: end.cancel_reason,
        },
    })
}
