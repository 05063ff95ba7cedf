//! Names of the streams the services share and of the consumer groups that read them.
//! A stream is written by one service and read by groups named after their reader.

/// ERP stock and product changes (`StockChanged`, `ProductChanged`), written by ingest.
pub const STOCK: &str = "stock";
/// Published rate cards (`RateChanged`), written by rates.
pub const RATES: &str = "rates";
/// Merchandiser overrides (`OverrideChanged`), written by rates' `OverrideService`.
pub const OVERRIDES: &str = "overrides";
/// Flash-incentive transitions (`IncentiveChanged`), written by incentives.
pub const INCENTIVES: &str = "incentives";

/// Consumer groups, one per reading service.
pub mod groups {
    /// The rates service: reads stock, overrides and incentives.
    pub const RATES: &str = "rates";
    /// The incentives service: reads stock and rates.
    pub const INCENTIVES: &str = "incentives";
    /// The notifier: reads rates and incentives.
    pub const NOTIFIER: &str = "notifier";
}

/// Every (stream, group) pair the services consume through a consumer group: what the
/// stream gauges report and what autoscaling reads.
pub const CONSUMED: [(&str, &str); 6] = [
    (STOCK, groups::RATES),
    (STOCK, groups::INCENTIVES),
    (OVERRIDES, groups::RATES),
    (INCENTIVES, groups::RATES),
    (RATES, groups::NOTIFIER),
    (INCENTIVES, groups::NOTIFIER),
];
