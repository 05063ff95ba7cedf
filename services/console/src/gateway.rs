//! The gRPC services as the signed-in user calls them: every client sends the session's
//! API key, so the services decide what the user may do exactly as for the CLI.

use ratemesh_proto::v1::incentive_service_client::IncentiveServiceClient;
use ratemesh_proto::v1::override_service_client::OverrideServiceClient;
use ratemesh_proto::v1::partner_service_client::PartnerServiceClient;
use ratemesh_proto::v1::policy_service_client::PolicyServiceClient;
use ratemesh_proto::v1::rate_service_client::RateServiceClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::config::ServiceChannels;
use crate::error::GatewayError;
use crate::session::SignedIn;

/// A channel whose calls carry a user's key.
pub type AsUser = InterceptedService<Channel, Bearer>;

/// The services the console calls, each over its own channel (the same one when one
/// process serves them all).
#[derive(Clone, Debug)]
pub struct Gateway {
    channels: ServiceChannels,
}

impl Gateway {
    /// Calls go over `channels`, to the channel of the service called.
    pub fn new(channels: ServiceChannels) -> Self {
        Self { channels }
    }

    fn as_user(&self, channel: &Channel, user: &SignedIn) -> Result<AsUser, GatewayError> {
        let bearer = Bearer::new(&user.session.key)?;
        Ok(InterceptedService::new(channel.clone(), bearer))
    }

    /// `RateService` as `user`.
    pub fn rates(&self, user: &SignedIn) -> Result<RateServiceClient<AsUser>, GatewayError> {
        Ok(RateServiceClient::new(
            self.as_user(&self.channels.rates, user)?,
        ))
    }

    /// `OverrideService` as `user`.
    pub fn overrides(
        &self,
        user: &SignedIn,
    ) -> Result<OverrideServiceClient<AsUser>, GatewayError> {
        Ok(OverrideServiceClient::new(
            self.as_user(&self.channels.rates, user)?,
        ))
    }

    /// `IncentiveService` as `user`.
    pub fn incentives(
        &self,
        user: &SignedIn,
    ) -> Result<IncentiveServiceClient<AsUser>, GatewayError> {
        Ok(IncentiveServiceClient::new(
            self.as_user(&self.channels.incentives, user)?,
        ))
    }

    /// `PartnerService` as `user`.
    pub fn partners(&self, user: &SignedIn) -> Result<PartnerServiceClient<AsUser>, GatewayError> {
        Ok(PartnerServiceClient::new(
            self.as_user(&self.channels.notifier, user)?,
        ))
    }

    /// `PolicyService` (what-if runs) as `user`.
    pub fn policy(&self, user: &SignedIn) -> Result<PolicyServiceClient<AsUser>, GatewayError> {
        Ok(PolicyServiceClient::new(
            self.as_user(&self.channels.policy, user)?,
        ))
    }
}

/// Sends `authorization: Bearer <key>` on every call.
#[derive(Clone, Debug)]
pub struct Bearer(MetadataValue<Ascii>);

impl Bearer {
    fn new(key: &str) -> Result<Self, GatewayError> {
        format!("Bearer {key}")
            .parse()
            .map(Self)
            .map_err(|_| GatewayError::SignedOut)
    }
}

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}
