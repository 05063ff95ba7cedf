//! Event kinds: the protobuf type name carried with every stream entry, so readers of a
//! shared stream tell entries apart before decoding them.

/// A stock reading accepted by ingest (stream `stock`).
pub const STOCK_CHANGED: &str = "ratemesh.v1.StockChanged";
/// Product master data accepted by ingest (stream `stock`).
pub const PRODUCT_CHANGED: &str = "ratemesh.v1.ProductChanged";
/// A merchandiser override set, replaced, cleared or expired (stream `overrides`).
pub const OVERRIDE_CHANGED: &str = "ratemesh.v1.OverrideChanged";
/// A flash incentive opened, extended or ended (stream `incentives`).
pub const INCENTIVE_CHANGED: &str = "ratemesh.v1.IncentiveChanged";
/// A rate card published (stream `rates`).
pub const RATE_CHANGED: &str = "ratemesh.v1.RateChanged";
