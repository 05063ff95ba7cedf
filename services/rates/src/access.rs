//! Who may call `RateService` and `OverrideService` (admin may call anything).

use ratemesh_runtime::Role;
use ratemesh_runtime::auth::MethodRoles;

/// Networks and merchandisers read rates. ExplainRate answers networks without the
/// retailer's private inputs (the handler redacts by role).
const READERS: &[Role] = &[Role::Network, Role::Merchandiser];
/// A partner may also watch, narrowed to its own subscription by the handler.
const WATCHERS: &[Role] = &[Role::Network, Role::Merchandiser, Role::Partner];
const MERCHANDISER: &[Role] = &[Role::Merchandiser];

/// Every RPC of `ratemesh.v1.RateService` and the roles that may call it.
pub const RATE_SERVICE: MethodRoles = &[
    ("GetRate", READERS),
    ("BatchGetRates", READERS),
    ("ListRates", READERS),
    ("WatchRates", WATCHERS),
    ("ExplainRate", READERS),
];

/// The RPCs of `RateService` that only read, answered from the replica (or the history):
/// their calls get a span only when it can be exported.
pub const READS: &[&str] = &["BatchGetRates", "ListRates"];

/// The reads of cards from the replica: microseconds of work, answered on the connection
/// thread that read them while it has time to spare. (A `GetRate` with `as_of` the
/// replica cannot settle goes on to the history in the same way as from a handler; a
/// `BatchGetRates` of more than 100 SKUs, or one that may wait for the replica's writer,
/// goes on on a handler thread.)
pub const POINT_READS: &[&str] = &["GetRate", "BatchGetRates"];

/// Every RPC of `ratemesh.v1.OverrideService` and the roles that may call it.
pub const OVERRIDE_SERVICE: MethodRoles = &[
    ("SetOverride", MERCHANDISER),
    ("ClearOverride", MERCHANDISER),
    ("ListOverrides", MERCHANDISER),
    ("ListOverrideAudit", MERCHANDISER),
];

#[cfg(test)]
mod tests {
    use super::*;
    use ratemesh_runtime::auth::check_declaration;

    #[test]
    fn every_rpc_is_declared() {
        check_declaration(ratemesh_proto::RATE_SERVICE, RATE_SERVICE).unwrap();
        check_declaration(ratemesh_proto::OVERRIDE_SERVICE, OVERRIDE_SERVICE).unwrap();
    }
}
