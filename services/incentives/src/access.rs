//! Who may call `IncentiveService` (admin may call anything).

use ratemesh_runtime::Role;
use ratemesh_runtime::auth::MethodRoles;

/// Networks see which incentives run, to promote them; merchandisers run them.
const READERS: &[Role] = &[Role::Network, Role::Merchandiser];
const MERCHANDISER: &[Role] = &[Role::Merchandiser];

/// Every RPC of `ratemesh.v1.IncentiveService` and the roles that may call it.
pub const INCENTIVE_SERVICE: MethodRoles = &[
    ("ListIncentives", READERS),
    ("TriggerIncentive", MERCHANDISER),
    ("CancelIncentive", MERCHANDISER),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_is_declared() {
        ratemesh_runtime::auth::check_declaration(
            ratemesh_proto::INCENTIVE_SERVICE,
            INCENTIVE_SERVICE,
        )
        .unwrap();
    }
}
