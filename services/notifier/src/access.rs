//! Who may call `PartnerService` (admin may call anything).

use ratemesh_runtime::Role;
use ratemesh_runtime::auth::MethodRoles;

/// A partner sees and edits its own subscription, sees its own deliveries and rotates its
/// own secret; the handlers narrow every answer to `Principal::partner_id` and refuse
/// other partners' ids.
const PARTNER_SELF: &[Role] = &[Role::Partner];
/// Admin only.
const ADMIN: &[Role] = &[];

/// Every RPC of `ratemesh.v1.PartnerService` and the roles that may call it.
pub const PARTNER_SERVICE: MethodRoles = &[
    ("UpsertPartner", PARTNER_SELF),
    ("GetPartner", PARTNER_SELF),
    ("ListPartners", ADMIN),
    ("RotateSecret", PARTNER_SELF),
    ("ListDeliveries", PARTNER_SELF),
    ("RedeliverDeadLetters", ADMIN),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_is_declared() {
        ratemesh_runtime::auth::check_declaration(ratemesh_proto::PARTNER_SERVICE, PARTNER_SERVICE)
            .unwrap();
    }
}
