//! The contract between ratemesh's services: everything one service writes to a stream or
//! to state that another reads, in one place, so a SKU can be followed across a stream with
//! "go to definition" and a change to what crosses a stream is one edit here.
//!
//! Layout:
//! - [`streams`] — stream and consumer-group names.
//! - [`kinds`] — the event kind carried with every stream entry.
//! - [`time`] — `DateTime<Utc>` ⇄ `google.protobuf.Timestamp`.
//! - [`header`] — the event header (`EventMeta`: id, occurred_at, traceparent) and the
//!   `received_at` stamp.
//! - [`stock`] — `StockChanged` / `ProductChanged`: written by ingest, read as core events
//!   by rates and incentives.
//! - [`incentive`] — `IncentiveChanged` ⇄ core incentive events, close reasons.
//! - [`overrides`] — `OverrideChanged` ⇄ core override events, and the stored
//!   `Override` ⇄ core override.
//! - [`rate`] — `RateChanged` and the published-card record other services may read.
//! - [`state_wire`] — protobuf messages of the core per-SKU state (exact decimals and
//!   instants), shared by the services that store it in binary form.
//! - [`partner`] — the part of the notifier's partner record rates reads (a partner's
//!   subscription narrows its `WatchRates`).
//! - [`error`] — why an entry does not decode.
//!
//! It depends on `proto`, `core` and `bus` only; every service depends on it, none on
//! another service.

#![forbid(unsafe_code)]

pub mod error;
pub mod header;
pub mod incentive;
pub mod kinds;
pub mod overrides;
pub mod partner;
pub mod rate;
pub mod state_wire;
pub mod stock;
pub mod streams;
pub mod time;

pub use error::DecodeError;
