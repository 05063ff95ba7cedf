//! Sessions: a browser signs in with an API key once and then carries only an opaque
//! session id in a cookie (`HttpOnly`, `SameSite=Strict`, `Secure` under TLS). The key
//! stays on the server, next to the session's role and CSRF token.
//!
//! Every change (`POST`, `PUT`, `PATCH`, `DELETE`) must also carry the session's CSRF
//! token in `X-CSRF-Token`, compared in constant time; a page on another site can make a
//! browser send the cookie, but cannot read the token.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use http::request::Parts;
use http::{HeaderValue, Method};
use ratemesh_runtime::Role;
use ratemesh_runtime::auth::ApiKeys;

use crate::ConsoleState;
use crate::error::GatewayError;

/// Name of the session cookie.
pub const COOKIE: &str = "ratemesh_session";
/// Header that carries the CSRF token on changes.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Sessions kept at most; the oldest go first.
const CAPACITY: usize = 10_000;

/// The roles that may sign in: the console is the merchandisers' tool, and admins may do
/// everything.
pub const CONSOLE_ROLES: [Role; 2] = [Role::Merchandiser, Role::Admin];

/// One signed-in browser.
#[derive(Debug, Clone)]
pub struct Session {
    /// The API key every gateway call is made with.
    pub(crate) key: String,
    /// The key's configured name.
    pub name: String,
    /// The key's role.
    pub role: Role,
    /// The token changes must carry.
    pub csrf: String,
    /// When the session ends unless used.
    expires: Instant,
}

/// The signed-in sessions of this process, by id.
pub struct Sessions {
    keys: ApiKeys,
    idle: Duration,
    secure: bool,
    by_id: Mutex<HashMap<String, Session>>,
}

/// Why a sign-in was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignInError {
    /// No key was given.
    #[error("enter an API key")]
    Missing,
    /// The key is not configured.
    #[error("unknown API key")]
    Unknown,
    /// The key's role may not use the console.
    #[error("the console is for merchandisers and admins; a `{0}` key cannot sign in")]
    Role(Role),
}

impl Sessions {
    /// Sessions of keys in `keys`, ending after `idle` unused; cookies `Secure` when
    /// `secure`.
    pub fn new(keys: ApiKeys, idle: Duration, secure: bool) -> Self {
        Self {
            keys,
            idle,
            secure,
            by_id: Mutex::default(),
        }
    }

    /// Signs `key` in: returns the new session's id and the session.
    pub fn sign_in(&self, key: &str) -> Result<(String, Session), SignInError> {
        let key = key.trim();
        if key.is_empty() {
            return Err(SignInError::Missing);
        }
        let principal = self.keys.lookup(key).ok_or(SignInError::Unknown)?;
        if !CONSOLE_ROLES.contains(&principal.role) {
            return Err(SignInError::Role(principal.role));
        }
        let id = random_token();
        let session = Session {
            key: key.to_owned(),
            name: principal.name.clone(),
            role: principal.role,
            csrf: random_token(),
            expires: Instant::now() + self.idle,
        };
        let mut by_id = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        by_id.retain(|_, s| s.expires > now);
        if by_id.len() >= CAPACITY
            && let Some(oldest) = by_id
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(id, _)| id.clone())
        {
            by_id.remove(&oldest);
        }
        by_id.insert(id.clone(), session.clone());
        Ok((id, session))
    }

    /// The live session `id`, its idle time restarted.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut by_id = self.by_id.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        match by_id.get_mut(id) {
            Some(session) if session.expires > now => {
                session.expires = now + self.idle;
                Some(session.clone())
            }
            Some(_) => {
                by_id.remove(id);
                None
            }
            None => None,
        }
    }

    /// Ends session `id`.
    pub fn sign_out(&self, id: &str) {
        self.by_id
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
    }

    /// The `Set-Cookie` value that gives the browser session `id`.
    pub fn cookie(&self, id: &str) -> HeaderValue {
        self.cookie_value(id, None)
    }

    /// The `Set-Cookie` value that removes the session cookie.
    pub fn expired_cookie(&self) -> HeaderValue {
        self.cookie_value("", Some(0))
    }

    fn cookie_value(&self, id: &str, max_age: Option<u64>) -> HeaderValue {
        let mut value = format!("{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/");
        if let Some(max_age) = max_age {
            value.push_str(&format!("; Max-Age={max_age}"));
        }
        if self.secure {
            value.push_str("; Secure");
        }
        // Ids are hex, so the value is always a valid header.
        HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static(""))
    }
}

/// A request from a signed-in browser; for a change, one whose CSRF token matched.
#[derive(Debug, Clone)]
pub struct SignedIn {
    /// The session's id (its cookie).
    pub id: String,
    /// The session.
    pub session: Session,
}

impl FromRequestParts<ConsoleState> for SignedIn {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ConsoleState,
    ) -> Result<Self, Self::Rejection> {
        let id = session_id(parts).ok_or_else(|| GatewayError::SignedOut)?;
        let session = state
            .sessions
            .get(&id)
            .ok_or_else(|| GatewayError::SignedOut)?;
        let changes = !matches!(parts.method, Method::GET | Method::HEAD | Method::OPTIONS);
        if changes {
            let presented = parts
                .headers
                .get(CSRF_HEADER)
                .map(HeaderValue::as_bytes)
                .unwrap_or_default();
            if !constant_time_eq(presented, session.csrf.as_bytes()) {
                return Err(GatewayError::Csrf);
            }
        }
        Ok(SignedIn { id, session })
    }
}

/// The session id from the request's `Cookie` headers.
fn session_id(parts: &Parts) -> Option<String> {
    parts
        .headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| !value.is_empty())
}

/// 32 random bytes, hex.
fn random_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
}

/// Whether `a` equals `b`, taking the same time wherever they differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use ratemesh_runtime::auth;
    use ratemesh_runtime::settings::{ApiKeySettings, AuthSettings};

    use super::*;

    fn sessions(idle: Duration, secure: bool) -> Sessions {
        let keys = [Role::Merchandiser, Role::Admin, Role::Network]
            .into_iter()
            .map(|role| ApiKeySettings {
                name: format!("k-{role}"),
                role,
                sha256: auth::hash_key(&format!("key-{role}")),
                partner_id: None,
            })
            .collect();
        Sessions::new(ApiKeys::from_settings(&AuthSettings { keys }), idle, secure)
    }

    #[test]
    fn merchandisers_and_admins_sign_in_and_other_roles_and_unknown_keys_do_not() {
        let sessions = sessions(Duration::from_secs(60), false);
        let (id, session) = sessions.sign_in("key-merchandiser").expect("signs in");
        assert_eq!(session.role, Role::Merchandiser);
        assert_eq!(
            sessions.get(&id).map(|s| s.name),
            Some("k-merchandiser".into())
        );
        assert!(sessions.sign_in(" key-admin ").is_ok());
        assert_eq!(
            sessions.sign_in("key-network").err(),
            Some(SignInError::Role(Role::Network))
        );
        assert_eq!(sessions.sign_in("nope").err(), Some(SignInError::Unknown));
        assert_eq!(sessions.sign_in("  ").err(), Some(SignInError::Missing));
    }

    #[test]
    fn a_session_ends_when_idle_or_signed_out_and_each_has_its_own_token() {
        let sessions = sessions(Duration::from_millis(30), false);
        let (a, first) = sessions.sign_in("key-admin").expect("signs in");
        let (b, second) = sessions.sign_in("key-admin").expect("signs in");
        assert_ne!(a, b);
        assert_ne!(first.csrf, second.csrf);
        sessions.sign_out(&b);
        assert!(sessions.get(&b).is_none());
        std::thread::sleep(Duration::from_millis(60));
        assert!(sessions.get(&a).is_none(), "idle session ended");
    }

    #[test]
    fn the_cookie_is_http_only_strict_and_secure_under_tls() {
        let plain = sessions(Duration::from_secs(1), false).cookie("abc");
        assert_eq!(
            plain.to_str().ok(),
            Some("ratemesh_session=abc; HttpOnly; SameSite=Strict; Path=/")
        );
        let tls = sessions(Duration::from_secs(1), true).expired_cookie();
        assert_eq!(
            tls.to_str().ok(),
            Some("ratemesh_session=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0; Secure")
        );
    }

    #[test]
    fn tokens_compare_equal_only_when_identical() {
        assert!(constant_time_eq(b"abcd", b"abcd"));
        assert!(!constant_time_eq(b"abcd", b"abce"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"abcd"));
    }
}
