//! Who may call `InventoryIngest`: the ERP integrations (and admin, who may call anything).

use ratemesh_runtime::Role;
use ratemesh_runtime::auth::MethodRoles;

const ERP: &[Role] = &[Role::Erp];

/// Every RPC of `ratemesh.v1.InventoryIngest` and the roles that may call it.
pub const INVENTORY_INGEST: MethodRoles = &[("PushStock", ERP), ("UpsertProducts", ERP)];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rpc_is_declared() {
        ratemesh_runtime::auth::check_declaration(
            ratemesh_proto::INVENTORY_INGEST,
            INVENTORY_INGEST,
        )
        .unwrap();
    }
}
