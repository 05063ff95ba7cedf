//! Who may call `PartnerService` (admin may call anything).

use ratemesh_runtime::Role;
use ratemesh_runtime::auth::MethodRoles;

/// A partner sees and edits its own subscription, sees its own deliveries and rotates its
/// own secret; the handlers narrow every answer to `Principal::partner_id` and refuse
/// other partners' ids.
const PARTNER_SELF: &[Role] = &[Role::Partner];
/// What a partner may do for itself, merchandisers may do for every partner: read its
/// subscription and deliveries (which partners missed a rate change).
const PARTNER_SELF_OR_MERCHANDISER: &[Role] = &[Role::Partner, Role::Merchandiser];
/// Merchandisers (and admin): listing partners, and requeueing dead deliveries, which
/// resends events the partner was already owed under their original ids.
const MERCHANDISER: &[Role] = &[Role::Merchandiser];

/// Every RPC of `ratemesh.v1.PartnerService` and the roles that may call it.
pub const PARTNER_SERVICE: MethodRoles = &[
    ("UpsertPartner", PARTNER_SELF),
    ("GetPartner", PARTNER_SELF_OR_MERCHANDISER),
    ("ListPartners", MERCHANDISER),
    ("RotateSecret", PARTNER_SELF),
    ("ListDeliveries", PARTNER_SELF_OR_MERCHANDISER),
    ("RedeliverDeadLetters", MERCHANDISER),
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
