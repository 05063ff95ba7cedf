//! The API key a client sends on every call.

use ratemesh_runtime::Role;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;

use crate::settings::key_of;

/// Sends `authorization: Bearer <key>` on every call (or nothing, for [`Bearer::none`]).
#[derive(Clone, Debug)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// The test key of `role` (see [`key_of`]).
    pub fn role(role: Role) -> Self {
        Self::key(&key_of(role))
    }

    /// Any key, e.g. an external deployment's or a wrong one.
    pub fn key(key: &str) -> Self {
        Self(Some(format!("Bearer {key}").parse().expect("ascii key")))
    }

    /// No `authorization` header at all.
    pub fn none() -> Self {
        Self(None)
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}
