//! `ratemesh-whatif`: what a candidate rate policy would have done, replayed over real
//! history next to the baseline policy, before a merchandiser turns it on.
//!
//! Both policies are folded through [`ratemesh_core::replay::Replay`] and
//! [`ratemesh_core::compute()`] — the code the rates service runs — over the same events,
//! priced at the same instants the live service would have used. Units sold are what
//! happened (stock depletion between readings); what a policy changes is the commission
//! paid on them, the margin left, and what partners would have been told.
//!
//! Layout:
//! - [`history`] — a directory of ERP pushes (stock and product files, JSON or CSV) and
//!   override and incentive changes, read with the ingest service's own parser and
//!   validation into core events, with the gaps in the record.
//! - [`archive`] — the same history read from the input archive ([`ratemesh_archive`])
//!   for a time range, SKUs or a category, and [`archive::export`] of it as a history
//!   directory.
//! - [`policy_file`] — [`load_policy`]: a policy TOML whose errors name the key.
//! - [`engine`] — [`run`]: both replays, partitioned by SKU over every core, and the
//!   figures; [`run_with_progress`] reports how far it is and stops when cancelled.
//! - [`report`] — the [`Report`] (serialisable for `--json`) and [`render_table`].
//! - [`html`] — [`render_html`]: the report as one offline HTML page with SVG plots.
//! - [`service`] — `PolicyService.WhatIf`: a run over the archive as an RPC, with
//!   streamed progress, bounds and cancellation, served by the ingest module.
//! - [`season`] — a deterministic generated season with a BFCM spike, as ERP files.
//!
//! The ERP formats are parsed and validated by the ingest service's own `payload`,
//! `validate`, `csv_feed` and `events` modules: a what-if run must accept exactly what
//! `/v1/stock` and `/v1/products` accept, not a look-alike.

#![forbid(unsafe_code)]

pub mod archive;
pub mod engine;
pub mod history;
pub mod html;
pub mod policy_file;
pub mod report;
pub mod season;
pub mod service;

pub use engine::{Cancelled, Control, Phase, Progress, WhatIfOptions, run, run_with_progress};
pub use history::{Gap, History, HistoryError, HistoryOptions, load_history};
pub use html::render_html;
pub use policy_file::{PolicyFileError, load_policy};
pub use report::{Report, render_table};
