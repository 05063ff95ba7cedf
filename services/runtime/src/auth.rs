//! API-key authentication and the table that says which role may call which RPC.
//!
//! Keys arrive as `authorization: Bearer <key>`. Config holds only the SHA-256 of each key;
//! a presented key is hashed and looked up. A key that verified is remembered (a bounded
//! table, valid keys only), so a partner polling all day pays the hash once, not per call;
//! an unknown key is hashed every time, so guessing buys nothing. Each service declares
//! who may call its RPCs ([`MethodRoles`], next to its handlers); the app composes the
//! mounted services' declarations into one [`AccessTable`]. Health and reflection are open.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, PoisonError, RwLock};

use sha2::{Digest, Sha256};

use crate::error::ApiError;
pub use crate::role::Role;
use crate::settings::AuthSettings;

/// The caller of a request, put into the request's extensions by the auth layer (as an
/// `Arc<Principal>`, shared with the key table rather than copied per call).
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
        let extensions = request.extensions();
        extensions
            .get::<Arc<Principal>>()
            .map(|p| &**p)
            // A handler test may insert a plain `Principal`.
            .or_else(|| extensions.get::<Principal>())
            .ok_or_else(|| ApiError::Unauthenticated("no API key was presented".into()))
    }
}

/// Presented keys that verified, so a repeat caller skips the SHA-256. Only valid keys
/// enter, so it holds at most one entry per configured key; the capacity is a second fence
/// (whatever enters, the table is emptied rather than grown past it).
#[derive(Default)]
struct VerifiedKeys {
    by_key: RwLock<HashMap<Box<str>, Arc<Principal>>>,
}

impl VerifiedKeys {
    /// Entries kept at most.
    const CAPACITY: usize = 1024;

    fn get(&self, key: &str) -> Option<Arc<Principal>> {
        self.by_key
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    fn insert(&self, key: &str, principal: Arc<Principal>) {
        let mut by_key = self.by_key.write().unwrap_or_else(PoisonError::into_inner);
        if by_key.len() >= Self::CAPACITY {
            by_key.clear();
        }
        by_key.insert(key.into(), principal);
    }

    fn len(&self) -> usize {
        self.by_key
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// The configured keys, by hash.
#[derive(Clone, Default)]
pub struct ApiKeys {
    by_hash: Arc<HashMap<[u8; 32], Arc<Principal>>>,
    verified: Arc<VerifiedKeys>,
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKeys")
            .field("keys", &self.by_hash.len())
            .field("verified", &self.verified.len())
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
                    Arc::new(Principal {
                        name: key.name.clone(),
                        role: key.role,
                        partner_id: key.partner_id.clone(),
                    }),
                );
            }
        }
        Self {
            by_hash: Arc::new(by_hash),
            verified: Arc::default(),
        }
    }

    /// The principal holding `key`, if it is configured. Always hashes the key; calls go
    /// through [`Self::authorize`], which remembers keys that verified.
    pub fn lookup(&self, key: &str) -> Option<&Principal> {
        self.lookup_by_hash(key).map(|p| &**p)
    }

    fn lookup_by_hash(&self, key: &str) -> Option<&Arc<Principal>> {
        let hash: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_hash.get(&hash)
    }

    /// The principal holding `key`: from the keys that verified before, else by hash (and
    /// then remembered).
    fn verify(&self, key: &str) -> Option<Arc<Principal>> {
        if let Some(principal) = self.verified.get(key) {
            return Some(principal);
        }
        let principal = self.lookup_by_hash(key)?.clone();
        self.verified.insert(key, principal.clone());
        Some(principal)
    }

    /// Whether no key is configured at all.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Authenticates the `authorization` header value of a call to `path`, which `access`
    /// governs.
    pub fn authorize(
        &self,
        path: &str,
        access: Access,
        authorization: Option<&str>,
    ) -> Result<Option<Arc<Principal>>, ApiError> {
        let Access::Roles(roles) = access else {
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
            .verify(key)
            .ok_or_else(|| ApiError::Unauthenticated("unknown API key".into()))?;
        if principal.role == Role::Admin || roles.contains(&principal.role) {
            Ok(Some(principal))
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

/// Every RPC of one gRPC service with the roles that may call it (admin always may). A
/// service declares its own; an RPC it does not list is for admin only.
pub type MethodRoles = &'static [(&'static str, &'static [Role])];

/// Any role: what a path no mounted service owns asks for before the server answers
/// UNIMPLEMENTED (so unknown paths reveal nothing to anonymous callers).
const ANY_ROLE: &[Role] = &[Role::Erp, Role::Network, Role::Partner, Role::Merchandiser];
/// Admin only.
const ADMIN_ONLY: &[Role] = &[];

/// The RPC → roles table of one process: the frame's open services plus the declarations
/// of every mounted service.
#[derive(Debug, Clone)]
pub struct AccessTable {
    services: Arc<HashMap<&'static str, MethodRoles>>,
}

impl Default for AccessTable {
    fn default() -> Self {
        Self::new(std::iter::empty())
    }
}

impl AccessTable {
    /// Services open to everyone: an orchestrator or a developer must always be able to
    /// ask whether the process is healthy and what it serves.
    pub const OPEN: [&'static str; 3] = [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];

    /// The table of `services`: (full service name, its declaration).
    pub fn new(services: impl IntoIterator<Item = (&'static str, MethodRoles)>) -> Self {
        Self {
            services: Arc::new(services.into_iter().collect()),
        }
    }

    /// Every declared RPC as (full service name, method name).
    pub(crate) fn declared(&self) -> impl Iterator<Item = (&'static str, &'static str)> + '_ {
        self.services.iter().flat_map(|(service, methods)| {
            methods.iter().map(move |(method, _)| (*service, *method))
        })
    }

    /// Who may call `path` (`/package.Service/Method`).
    pub fn access(&self, path: &str) -> Access {
        let path = path.trim_start_matches('/');
        let (service, method) = path.split_once('/').unwrap_or((path, ""));
        if Self::OPEN.contains(&service) {
            return Access::Open;
        }
        match self.services.get(service) {
            Some(methods) => Access::Roles(
                methods
                    .iter()
                    .find(|(name, _)| *name == method)
                    .map_or(ADMIN_ONLY, |(_, roles)| roles),
            ),
            None => Access::Roles(ANY_ROLE),
        }
    }
}

/// Checks a service's declaration against the contract: every RPC the proto defines for
/// `service` is listed once, and nothing else is. Each service runs it in its tests, so a
/// new RPC cannot ship without a decision about who may call it.
pub fn check_declaration(service: &str, methods: MethodRoles) -> Result<(), String> {
    let defined = ratemesh_proto::method_names(service)
        .ok_or_else(|| format!("{service} is not a service of the contract"))?;
    let mut declared: Vec<&str> = methods.iter().map(|(name, _)| *name).collect();
    declared.sort_unstable();
    if let Some(pair) = declared.windows(2).find(|w| w[0] == w[1]) {
        return Err(format!("{service}/{} is declared twice", pair[0]));
    }
    let missing: Vec<&str> = defined
        .iter()
        .map(String::as_str)
        .filter(|m| !declared.contains(m))
        .collect();
    let unknown: Vec<&str> = declared
        .iter()
        .copied()
        .filter(|m| !defined.iter().any(|d| d == m))
        .collect();
    if missing.is_empty() && unknown.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{service}: RPCs without a role declaration: {missing:?}; declared RPCs the contract does not define: {unknown:?}"
        ))
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

    const READ: &[Role] = &[Role::Network, Role::Merchandiser];
    const WATCH: &[Role] = &[Role::Network, Role::Partner];

    fn table() -> AccessTable {
        AccessTable::new([(
            "ratemesh.v1.RateService",
            &[("GetRate", READ), ("WatchRates", WATCH)] as MethodRoles,
        )])
    }

    fn call(path: &str, key: Option<&str>) -> Result<Option<Arc<Principal>>, ApiError> {
        let authorization = key.map(|k| format!("Bearer {k}"));
        keys().authorize(path, table().access(path), authorization.as_deref())
    }

    #[test]
    fn health_and_reflection_are_open() {
        assert_eq!(
            call("/grpc.health.v1.Health/Check", None).expect("open"),
            None
        );
        assert_eq!(
            call(
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
        let access = table().access(path);
        for authorization in [None, Some("Bearer "), Some("Bearer nope"), Some("key-net")] {
            assert!(
                matches!(
                    keys.authorize(path, access, authorization),
                    Err(ApiError::Unauthenticated(_))
                ),
                "{authorization:?}"
            );
        }
    }

    #[test]
    fn roles_follow_the_declarations() {
        let ok = |path: &str, key: &str| call(path, Some(key)).is_ok();
        assert!(ok("/ratemesh.v1.RateService/GetRate", "key-net"));
        assert!(ok("/ratemesh.v1.RateService/GetRate", "key-merch"));
        assert!(!ok("/ratemesh.v1.RateService/GetRate", "key-acme"));
        assert!(ok("/ratemesh.v1.RateService/WatchRates", "key-acme"));
        assert!(!ok("/ratemesh.v1.RateService/WatchRates", "key-merch"));
        // Admin may call everything, including what a service did not declare.
        assert!(ok("/ratemesh.v1.RateService/WatchRates", "key-ops"));
        assert!(ok("/ratemesh.v1.RateService/Undeclared", "key-ops"));
        assert!(!ok("/ratemesh.v1.RateService/Undeclared", "key-net"));
        // A service nobody mounted: any key, then the server answers UNIMPLEMENTED.
        assert!(ok("/ratemesh.v1.Elsewhere/Anything", "key-acme"));
        assert!(matches!(
            call("/ratemesh.v1.Elsewhere/Anything", None),
            Err(ApiError::Unauthenticated(_))
        ));
    }

    #[test]
    fn a_declaration_must_match_the_contract() {
        let err = check_declaration("ratemesh.v1.RateService", &[("GetRate", READ)])
            .expect_err("incomplete");
        assert!(err.contains("WatchRates"), "{err}");
        let err = check_declaration(
            "ratemesh.v1.RateService",
            &[("GetRate", READ), ("GetRate", WATCH)],
        )
        .expect_err("twice");
        assert!(err.contains("twice"), "{err}");
        assert!(check_declaration("grpc.health.v1.Health", &[]).is_err());
    }

    #[test]
    fn only_keys_that_verified_are_remembered() {
        let keys = keys();
        let path = "/ratemesh.v1.RateService/GetRate";
        let access = table().access(path);
        for _ in 0..3 {
            assert!(keys.authorize(path, access, Some("Bearer nope")).is_err());
        }
        assert_eq!(keys.verified.len(), 0, "an unknown key is never remembered");

        let first = keys
            .authorize(path, access, Some("Bearer key-net"))
            .expect("valid")
            .expect("principal");
        assert_eq!(keys.verified.len(), 1);
        let again = keys
            .authorize(path, access, Some("Bearer key-net"))
            .expect("valid")
            .expect("principal");
        // The same shared principal, not a copy, and no second entry.
        assert!(Arc::ptr_eq(&first, &again));
        assert_eq!(keys.verified.len(), 1);
        // A remembered key still goes through the role check.
        assert!(matches!(
            keys.authorize(
                "/ratemesh.v1.RateService/WatchRates",
                table().access("/ratemesh.v1.RateService/WatchRates"),
                Some("Bearer key-merch")
            ),
            Err(ApiError::PermissionDenied(_))
        ));
        assert!(matches!(
            keys.authorize(
                "/ratemesh.v1.RateService/WatchRates",
                table().access("/ratemesh.v1.RateService/WatchRates"),
                Some("Bearer key-merch")
            ),
            Err(ApiError::PermissionDenied(_))
        ));
        assert_eq!(
            keys.verified.len(),
            2,
            "key-merch verified, then was refused"
        );
    }

    #[test]
    fn the_verified_key_table_is_bounded() {
        let table = VerifiedKeys::default();
        let principal = Arc::new(Principal {
            name: "net".into(),
            role: Role::Network,
            partner_id: None,
        });
        for i in 0..VerifiedKeys::CAPACITY * 3 + 7 {
            table.insert(&format!("key-{i}"), principal.clone());
            assert!(table.len() <= VerifiedKeys::CAPACITY);
        }
        assert!(table.get("key-0").is_none(), "emptied when it was full");
        assert!(
            table
                .get(&format!("key-{}", VerifiedKeys::CAPACITY * 3 + 6))
                .is_some()
        );
    }

    #[test]
    fn principal_of_finds_the_shared_or_a_plain_principal() {
        let principal = Principal {
            name: "net".into(),
            role: Role::Network,
            partner_id: None,
        };
        let mut shared = tonic::Request::new(());
        shared.extensions_mut().insert(Arc::new(principal.clone()));
        assert_eq!(Principal::of(&shared).expect("shared"), &principal);
        let mut plain = tonic::Request::new(());
        plain.extensions_mut().insert(principal.clone());
        assert_eq!(Principal::of(&plain).expect("plain"), &principal);
        assert!(matches!(
            Principal::of(&tonic::Request::new(())),
            Err(ApiError::Unauthenticated(_))
        ));
    }

    #[test]
    fn principal_carries_name_role_and_partner() {
        let p = call("/ratemesh.v1.RateService/WatchRates", Some("key-acme"))
            .expect("allowed")
            .expect("principal");
        assert_eq!(p.name, "acme");
        assert_eq!(p.role, Role::Partner);
        assert_eq!(p.partner_id.as_deref(), Some("acme"));
    }
}
