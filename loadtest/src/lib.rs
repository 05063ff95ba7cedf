//! BFCM load scenarios for ratemesh, with every figure reported as a ratio against a
//! baseline measured in the same run on the same machine.
//!
//! Layout:
//! - [`load`]: the open-loop (scheduled rate, latency from the scheduled time) and
//!   closed-loop (saturation) drivers; [`recorder`]: HDR histograms and per-second timelines.
//! - [`target`]: ratemesh started in this process (all four services on a private
//!   redis-server, a private six-node Redis Cluster, or a given server or cluster) or an
//!   external one; [`catalogue`]: SKUs, ERP batches, the signed webhook client;
//!   [`sink`]: a partner webhook endpoint; [`zipf`]: skewed popularity.
//! - [`raw_grpc`]: pre-encoded requests over bare `h2`, answers not decoded (the
//!   server-only phases of `poll`).
//! - Baselines: [`echo`] (a bare tonic server with GetRate's messages) and
//!   [`redis_baseline`] (pipelined XADD, XADD → XREADGROUP hop; per partition slot and per
//!   primary on a cluster).
//! - [`scenario`]: poll, ingest, freshness, bfcm, surge, scale, whatif — each a full run or
//!   a smoke run ([`scenario::RunConfig::smoke`]), whose checks fail on errors or lost
//!   events (and a full whatif run on its throughput target).
//! - [`report`]: terminal table, JSON and SVG.

pub mod catalogue;
pub mod echo;
pub mod load;
pub mod raw_grpc;
pub mod recorder;
pub mod redis_baseline;
pub mod report;
pub mod scenario;
pub mod sink;
pub mod target;
pub mod zipf;
