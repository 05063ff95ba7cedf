//! The webhook's request metrics, resolved once when the service is built:
//! `ratemesh_ingest_requests_total{path,status}` and
//! `ratemesh_ingest_request_duration_seconds{path}`. A request touches no allocator and no
//! registry for them; a status's counter is registered the first time that status is
//! answered, so statuses never seen export no series and the label stays bounded (the
//! handful of statuses the webhook answers, at most the 500 codes 100 to 599).

use std::sync::OnceLock;

use http::StatusCode;
use metrics::{Counter, Histogram, SharedString};

use crate::handoff::Kind;

/// The metrics of both webhook paths.
pub(crate) struct RequestMetrics {
    stock: PathMetrics,
    products: PathMetrics,
}

struct PathMetrics {
    path: &'static str,
    duration: Histogram,
    /// By status code less 100.
    by_status: Box<[OnceLock<Counter>]>,
}

impl RequestMetrics {
    pub(crate) fn new() -> Self {
        // Handles resolved before the recorder is installed would record nowhere.
        ratemesh_runtime::metrics::prometheus();
        Self {
            stock: PathMetrics::new(Kind::Stock),
            products: PathMetrics::new(Kind::Products),
        }
    }

    /// Counts a request to `kind`'s path answered with `status` after `seconds`.
    pub(crate) fn record(&self, kind: Kind, status: StatusCode, seconds: f64) {
        let path = match kind {
            Kind::Stock => &self.stock,
            Kind::Products => &self.products,
        };
        path.duration.record(seconds);
        let Some(slot) = path.by_status.get(usize::from(status.as_u16()) - 100) else {
            return;
        };
        slot.get_or_init(|| {
            metrics::counter!(
                "ratemesh_ingest_requests_total",
                "path" => path.path,
                "status" => SharedString::from(status.as_str().to_owned())
            )
        })
        .increment(1);
    }
}

impl PathMetrics {
    fn new(kind: Kind) -> Self {
        Self {
            path: kind.as_str(),
            duration: metrics::histogram!(
                "ratemesh_ingest_request_duration_seconds",
                "path" => kind.as_str()
            ),
            by_status: (100..600).map(|_| OnceLock::new()).collect(),
        }
    }
}
