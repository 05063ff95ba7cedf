//! What the gRPC layer's tests share.

use ratemesh_runtime::Role;
use ratemesh_runtime::auth::{self, ApiKeys};
use ratemesh_runtime::settings::{ApiKeySettings, AuthSettings};

/// The keys of a server that knows one network key, `key`, held by "tester".
pub(crate) fn network_keys(key: &str) -> ApiKeys {
    ApiKeys::from_settings(&AuthSettings {
        keys: vec![ApiKeySettings {
            name: "tester".into(),
            role: Role::Network,
            sha256: auth::hash_key(key),
            partner_id: None,
        }],
    })
}
