//! API-key authentication and the one table that says which role may call which RPC.
//!
//! Keys arrive as `authorization: Bearer <key>`. Only the SHA-256 of each key is kept, in
//! config and in memory; a presented key is hashed and looked up. Every gRPC path of
//! `ratemesh.v1` is listed in [`allowed_roles`]; health and reflection are open.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::error::ApiError;
pub use crate::role::Role;
use crate::settings::AuthSettings;

/// The caller of a request, put into the request's extensions by the auth layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The key's configured name; recorded as author of changes.
    pub name: String,
    /// The key's role.
    pub role: Role,
    /// For partner keys, the partner they belong to.
    pub partner_id: Option<String>,
}

impl Principal {
    /// The principal a handler runs as; absent only on open endpoints.
    pub fn of<T>(request: &tonic::Request<T>) -> Result<&Principal, ApiError> {
        request
            .extensions()
            .get::<Principal>()
            .ok_or_else(|| ApiError::Unauthenticated("no API key was presented".into()))
    }
}

/// The configured keys, by hash.
#[derive(Clone, Default)]
pub struct ApiKeys {
    by_hash: Arc<HashMap<[u8; 32], Principal>>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.by_hash.len())
            .finish()
    }
}

impl ApiKeys {
    /// Builds the table from validated settings.
    pub fn from_settings(settings: &AuthSettings) -> Self {
        let mut by_hash = HashMap::new();
        for key in &settings.keys {
            let mut hash = [0u8; 32];
            // Settings validation guarantees 64 hex characters.
            if hex::decode_to_slice(&key.sha256, &mut hash).is_ok() {
                by_hash.insert(
                    hash,
                    Principal {
                        name: key.name.clone(),
                        role: key.role,
                        partner_id: key.partner_id.clone(),
                    },
                );
            }
        }
        Self {
            by_hash: Arc::new(by_hash),
        }
    }

    /// The principal holding `key`, if it is configured.
    pub fn lookup(&self, key: &str) -> Option<&Principal> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash.get(&hash)
    }

    /// Whether no key is configured at all.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Authenticates the `authorization` header value of a call to `path` and checks the
    /// role table.
    pub fn authorize(
        &self,
        path: &str,
        authorization: Option<&str>,
    ) -> Result<Option<Principal>, ApiError> {
        let Access::Roles(roles) = allowed_roles(path) else {
            return Ok(None);
        };
        let key = authorization
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| {
                ApiError::Unauthenticated(
                    "missing API key: send `authorization: Bearer <key>`".into(),
                )
            })?;
        let principal = self
            .lookup(key)
            .ok_or_else(|| ApiError::Unauthenticated("unknown API key".into()))?;
        if principal.role == Role::Admin || roles.contains(&principal.role) {
            Ok(Some(principal.clone()))
        } else {
            Err(ApiError::PermissionDenied(format!(
                "role `{}` may not call {path}",
                principal.role
            )))
        }
    }
}

/// Hex SHA-256 of a key, as stored in `auth.keys[].sha256`.
pub fn hash_key(key: &str) -> String {
    hex::encode(Sha256::digest(key.as_bytes()))
}

/// Who may call a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No key needed (health checks, reflection).
    Open,
    /// A key with one of these roles (admin may always call).
    Roles(&'static [Role]),
}

const ERP: &[Role] = &[Role::Erp];
const READERS: &[Role] = &[Role::Network, Role::Merchandiser];
// A partner's watch is narrowed to its subscription by the rates service.
const WATCHERS: &[Role] = &[Role::Network, Role::Merchandiser, Role::Partner];
const MERCHANDISER: &[Role] = &[Role::Merchandiser];
const PARTNER_SELF: &[Role] = &[Role::Partner];
const ADMIN: &[Role] = &[];

/// The RPC → roles table. Unknown paths need a key of any role and then fall through to
/// the server, which answers UNIMPLEMENTED.
pub fn allowed_roles(path: &str) -> Access {
    let path = path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection" => Access::Open,
        "ratemesh.v1.InventoryIngest" => Access::Roles(ERP),
        // ExplainRate answers networks without retailer-private inputs (the handler
        // redacts by role); partners may watch what they subscribe to.
        "ratemesh.v1.RateService" => match method {
            "WatchRates" => Access::Roles(WATCHERS),
            _ => Access::Roles(READERS),
        },
        "ratemesh.v1.OverrideService" => Access::Roles(MERCHANDISER),
        "ratemesh.v1.IncentiveService" => match method {
            "ListIncentives" => Access::Roles(READERS),
            _ => Access::Roles(MERCHANDISER),
        },
        "ratemesh.v1.PartnerService" => match method {
            // Partners see and edit their own subscription, see their own deliveries and
            // rotate their own secret; the handler narrows every answer to
            // `Principal::partner_id` and refuses other partners' ids.
            "GetPartner" | "UpsertPartner" | "ListDeliveries" | "RotateSecret" => {
                Access::Roles(PARTNER_SELF)
            }
            _ => Access::Roles(ADMIN),
        },
        _ => Access::Roles(&[Role::Erp, Role::Network, Role::Partner, Role::Merchandiser]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::ApiKeySettings;

    fn keys() -> ApiKeys {
        let entry = |name: &str, role, partner_id: Option<&str>| ApiKeySettings {
            name: name.into(),
            role,
            sha256: hash_key(&format!("key-{name}")),
            partner_id: partner_id.map(str::to_owned),
        };
        ApiKeys::from_settings(&AuthSettings {
            keys: vec![
                entry("net", Role::Network, None),
                entry("merch", Role::Merchandiser, None),
                entry("ops", Role::Admin, None),
                entry("acme", Role::Partner, Some("acme")),
            ],
        })
    }

    #[test]
    fn health_and_reflection_are_open() {
        let keys = keys();
        assert_eq!(
            keys.authorize("/grpc.health.v1.Health/Check", None)
                .expect("open"),
            None
        );
        assert_eq!(
            keys.authorize(
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                None
            )
            .expect("open"),
            None
        );
    }

    #[test]
    fn missing_and_unknown_keys_are_unauthenticated() {
        let keys = keys();
        let path = "/ratemesh.v1.RateService/GetRate";
        assert!(matches!(
            keys.authorize(path, None),
            Err(ApiError::Unauthenticated(_))
        ));
        assert!(matches!(
            keys.authorize(path, Some("Bearer ")),
            Err(ApiError::Unauthenticated(_))
        ));
        assert!(matches!(
            keys.authorize(path, Some("Bearer nope")),
            Err(ApiError::Unauthenticated(_))
        ));
        assert!(matches!(
            keys.authorize(path, Some("key-net")),
            Err(ApiError::Unauthenticated(_))
        ));
    }

    #[test]
    fn roles_follow_the_table() {
        let keys = keys();
        let ok =
            |path: &str, key: &str| keys.authorize(path, Some(&format!("Bearer {key}"))).is_ok();
        assert!(ok("/ratemesh.v1.RateService/GetRate", "key-net"));
        assert!(ok("/ratemesh.v1.RateService/ExplainRate", "key-net"));
        assert!(ok("/ratemesh.v1.RateService/ExplainRate", "key-merch"));
        assert!(!ok("/ratemesh.v1.OverrideService/SetOverride", "key-net"));
        assert!(ok("/ratemesh.v1.OverrideService/SetOverride", "key-merch"));
        assert!(!ok("/ratemesh.v1.InventoryIngest/PushStock", "key-merch"));
        assert!(ok("/ratemesh.v1.PartnerService/ListDeliveries", "key-acme"));
        assert!(ok("/ratemesh.v1.PartnerService/UpsertPartner", "key-acme"));
        assert!(!ok(
            "/ratemesh.v1.PartnerService/RedeliverDeadLetters",
            "key-acme"
        ));
        assert!(!ok("/ratemesh.v1.PartnerService/ListPartners", "key-acme"));
        // A partner watches its subscription (narrowed by the rates service), nothing else.
        assert!(ok("/ratemesh.v1.RateService/WatchRates", "key-acme"));
        assert!(!ok("/ratemesh.v1.RateService/GetRate", "key-acme"));
        assert!(ok("/ratemesh.v1.PartnerService/UpsertPartner", "key-ops"));
        assert!(ok("/ratemesh.v1.InventoryIngest/PushStock", "key-ops"));
    }

    #[test]
    fn principal_carries_name_role_and_partner() {
        let keys = keys();
        let p = keys
            .authorize(
                "/ratemesh.v1.PartnerService/GetPartner",
                Some("Bearer key-acme"),
            )
            .expect("allowed")
            .expect("principal");
        assert_eq!(p.name, "acme");
        assert_eq!(p.role, Role::Partner);
        assert_eq!(p.partner_id.as_deref(), Some("acme"));
    }
}
