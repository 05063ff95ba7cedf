//! What the layer keeps per RPC, built once when the layer is: the method's label, its
//! metric handles and its concurrency limit. A call finds its entry by path and touches no
//! allocator for metrics or labels; a status code's request counter is registered the
//! first time that code is answered, so codes never seen export no series.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use metrics::{Counter, Histogram, SharedString};

use super::limit::{LimitConfig, Limiter};
use crate::auth::{Access, AccessTable};

/// Why a call was refused before it reached its handler; the `reason` label of
/// `ratemesh_grpc_shed_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shed {
    /// The process-wide ceiling (`server.max_concurrent_requests`).
    Concurrency = 0,
    /// The method's adaptive limit.
    Limit = 1,
    /// The caller's deadline is shorter than the wait plus the method's service time.
    Deadline = 2,
}

impl Shed {
    fn label(self) -> &'static str {
        match self {
            Self::Concurrency => "concurrency",
            Self::Limit => "limit",
            Self::Deadline => "deadline",
        }
    }
}

/// The label of each gRPC status code, by number (as `tonic::Code`'s names).
const CODES: [&str; 17] = [
    "Ok",
    "Cancelled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];

/// The code `Unknown`, where an out-of-range number lands.
const UNKNOWN: usize = 2;

/// Whether an RPC only reads, and how much.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Read {
    No,
    /// A point read ([`Method::point_read`]).
    Point,
    Other,
}

/// One RPC (or the bucket of paths no mounted service declares).
#[derive(Debug)]
pub(crate) struct Method {
    /// `/package.Service/Method`, the span's name; `other` for the bucket.
    pub(crate) path: Arc<str>,
    /// `Service/Method` without the `ratemesh.v1.` package: the `method` label.
    pub(crate) label: Arc<str>,
    pub(crate) limiter: Limiter,
    /// A point read's limit when it is answered on its connection thread
    /// (`serve::Server::inline_reads`), moved by that thread's scheduling delay: such a
    /// call never waits for a handler, so the handlers' queue says nothing about it.
    pub(crate) inline_limiter: Option<Limiter>,
    /// Whether the RPC only reads (its calls get a span only when it can be exported).
    pub(crate) read: bool,
    /// Whether it is a point read: microseconds of work from memory, which may be done on
    /// the connection thread that read the call (`serve::Server::inline_reads`).
    pub(crate) point_read: bool,
    duration: Histogram,
    requests: [OnceLock<Counter>; 17],
    shed: [OnceLock<Counter>; 3],
    undecodable: OnceLock<Counter>,
}

impl Method {
    fn new(path: Arc<str>, label: Arc<str>, limit: LimitConfig, read: Read) -> Self {
        let gauge = metrics::gauge!(
            "ratemesh_grpc_concurrency_limit_requests",
            "method" => SharedString::from(label.clone())
        );
        Self {
            duration: metrics::histogram!(
                "ratemesh_grpc_request_duration_seconds",
                "method" => SharedString::from(label.clone())
            ),
            limiter: Limiter::new(limit, gauge),
            inline_limiter: (read == Read::Point).then(|| {
                let gauge = metrics::gauge!(
                    "ratemesh_grpc_inline_concurrency_limit_requests",
                    "method" => SharedString::from(label.clone())
                );
                Limiter::new(limit, gauge)
            }),
            read: read != Read::No,
            point_read: read == Read::Point,
            path,
            label,
            requests: Default::default(),
            shed: Default::default(),
            undecodable: OnceLock::new(),
        }
    }

    /// Counts a call answered with the status code numbered `code` and its duration.
    pub(crate) fn record(&self, code: i32, seconds: f64) {
        let index = usize::try_from(code)
            .ok()
            .filter(|c| *c < CODES.len())
            .unwrap_or(UNKNOWN);
        self.requests[index]
            .get_or_init(|| {
                metrics::counter!(
                    "ratemesh_grpc_requests_total",
                    "method" => SharedString::from(self.label.clone()),
                    "code" => CODES[index]
                )
            })
            .increment(1);
        self.duration.record(seconds);
    }

    /// Counts a call refused for `reason`.
    pub(crate) fn shed(&self, reason: Shed) {
        self.shed[reason as usize]
            .get_or_init(|| {
                metrics::counter!(
                    "ratemesh_grpc_shed_total",
                    "method" => SharedString::from(self.label.clone()),
                    "reason" => reason.label()
                )
            })
            .increment(1);
    }

    /// Counts a request tonic could not decode.
    pub(crate) fn undecodable(&self) {
        self.undecodable
            .get_or_init(|| {
                metrics::counter!(
                    "ratemesh_grpc_undecodable_total",
                    "method" => SharedString::from(self.label.clone())
                )
            })
            .increment(1);
    }
}

/// Where a path leads.
pub(crate) enum Route<'a> {
    /// Health or reflection: no shedding, no key, no metrics.
    Open,
    /// An RPC governed by `Access`.
    Method(&'a Method, Access),
}

/// Every declared RPC of the process, plus the `other` bucket.
#[derive(Debug)]
pub(crate) struct MethodTable {
    by_path: HashMap<Box<str>, (Method, Access)>,
    other: Method,
}

impl MethodTable {
    /// The entries of every RPC `access` declares, each with a limit of `limit`; those in
    /// `reads` (full service name, method) only read, and those in `point_reads` are point
    /// reads (and reads).
    pub(crate) fn new(
        access: &AccessTable,
        limit: LimitConfig,
        reads: &[(&'static str, &'static str)],
        point_reads: &[(&'static str, &'static str)],
    ) -> Self {
        let by_path = access
            .declared()
            .map(|(service, method)| {
                let path = format!("/{service}/{method}");
                let short = service.strip_prefix("ratemesh.v1.").unwrap_or(service);
                let label: Arc<str> = format!("{short}/{method}").into();
                let read = if point_reads.contains(&(service, method)) {
                    Read::Point
                } else if reads.contains(&(service, method)) {
                    Read::Other
                } else {
                    Read::No
                };
                let entry = Method::new(path.as_str().into(), label, limit, read);
                let roles = access.access(&path);
                (path.into_boxed_str(), (entry, roles))
            })
            .collect();
        Self {
            by_path,
            other: Method::new("other".into(), "other".into(), limit, Read::No),
        }
    }

    /// The entry a call to `path` is accounted to, and who may call it.
    pub(crate) fn route<'a>(&'a self, path: &str, access: &AccessTable) -> Route<'a> {
        if let Some((method, roles)) = self.by_path.get(path) {
            return match roles {
                Access::Open => Route::Open,
                roles => Route::Method(method, *roles),
            };
        }
        match access.access(path) {
            Access::Open => Route::Open,
            roles => Route::Method(&self.other, roles),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{MethodRoles, Role};
    use std::time::Duration;

    const READ: &[Role] = &[Role::Network];

    fn table() -> (AccessTable, MethodTable) {
        let access = AccessTable::new([(
            "ratemesh.v1.RateService",
            &[("GetRate", READ)] as MethodRoles,
        )]);
        let methods = MethodTable::new(
            &access,
            LimitConfig {
                adaptive: true,
                min: 4,
                max: 64,
                delay_target: Duration::from_millis(25),
            },
            &[],
            &[],
        );
        (access, methods)
    }

    #[test]
    fn point_reads_are_reads_and_other_reads_are_not_point_reads() {
        const SERVICE: &str = "ratemesh.v1.RateService";
        let access = AccessTable::new([(
            SERVICE,
            &[("GetRate", READ), ("ListRates", READ), ("WatchRates", READ)] as MethodRoles,
        )]);
        let limit = LimitConfig {
            adaptive: false,
            min: 1,
            max: 8,
            delay_target: Duration::from_millis(5),
        };
        let methods = MethodTable::new(
            &access,
            limit,
            &[(SERVICE, "ListRates")],
            &[(SERVICE, "GetRate")],
        );
        let kind = |method: &str| {
            let Route::Method(m, _) = methods.route(&format!("/{SERVICE}/{method}"), &access)
            else {
                panic!("{method} is declared");
            };
            (m.read, m.point_read)
        };
        assert_eq!(kind("GetRate"), (true, true));
        assert_eq!(kind("ListRates"), (true, false));
        assert_eq!(kind("WatchRates"), (false, false));
    }

    #[test]
    fn paths_find_their_entry_or_the_bucket() {
        let (access, methods) = table();
        let Route::Method(get, Access::Roles(roles)) =
            methods.route("/ratemesh.v1.RateService/GetRate", &access)
        else {
            panic!("GetRate is declared");
        };
        assert_eq!(&*get.label, "RateService/GetRate");
        assert_eq!(&*get.path, "/ratemesh.v1.RateService/GetRate");
        assert_eq!(roles, READ);

        for path in [
            "/ratemesh.v1.RateService/Undeclared",
            "/ratemesh.v1.Elsewhere/Anything",
            "/x",
        ] {
            let Route::Method(other, _) = methods.route(path, &access) else {
                panic!("{path} is not open");
            };
            assert_eq!(&*other.label, "other", "{path}");
        }
        assert!(matches!(
            methods.route("/grpc.health.v1.Health/Check", &access),
            Route::Open
        ));
    }
}
