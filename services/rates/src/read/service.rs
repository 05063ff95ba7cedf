//! The `RateService` implementation: a thin shell that validates nothing itself and
//! hands each call to the module that owns it.

use std::time::Duration;

use prost::Message;
use ratemesh_bus::Bus;
use ratemesh_contract::partner::{self as subscriptions, Subscription};
use ratemesh_proto::v1;
use ratemesh_proto::v1::rate_service_server::RateService;
use ratemesh_runtime::{ApiError, Principal, Role};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::explain::Explainer;
use super::history::RateHistory;
use super::point;
use super::replica::ReplicaReader;
use super::watch::{self, WatchStream};

/// `RateService`. Point reads and listings see only [`ReplicaReader`]; only
/// [`Explainer`] and [`RateHistory`] (for `as_of` the replica cannot settle) hold a
/// backend handle.
#[derive(Debug, Clone)]
pub struct RatesApi {
    reader: ReplicaReader,
    explainer: Explainer,
    history: RateHistory,
    /// Where a partner's subscription is read, to narrow its `WatchRates`.
    bus: Bus,
    heartbeat: Duration,
    shutdown: CancellationToken,
}

impl RatesApi {
    /// The service over `reader`, with `explainer` for `ExplainRate` and `history` for
    /// `GetRate.as_of`, sending watch heartbeats every `heartbeat` and ending watches when
    /// `shutdown` is cancelled.
    pub fn new(
        reader: ReplicaReader,
        explainer: Explainer,
        history: RateHistory,
        bus: Bus,
        heartbeat: Duration,
        shutdown: CancellationToken,
    ) -> Self {
        Self {
            reader,
            explainer,
            history,
            bus,
            heartbeat,
            shutdown,
        }
    }
}

impl RatesApi {
    /// For a partner key, its subscription (which narrows what it may watch); `None` for
    /// every other role.
    async fn partner_subscription<T>(
        &self,
        request: &Request<T>,
    ) -> Result<Option<Subscription>, ApiError> {
        let Ok(principal) = Principal::of(request) else {
            return Ok(None);
        };
        if principal.role != Role::Partner {
            return Ok(None);
        }
        let Some(partner_id) = principal.partner_id.as_deref() else {
            return Err(ApiError::PermissionDenied(format!(
                "key `{}` names no partner",
                principal.name
            )));
        };
        match subscriptions::load(&self.bus, partner_id).await? {
            Some(s) if s.enabled && s.wants_rates() => Ok(Some(s)),
            Some(_) => Err(ApiError::PermissionDenied(format!(
                "partner `{partner_id}` is not subscribed to rate changes"
            ))),
            None => Err(ApiError::PermissionDenied(format!(
                "partner `{partner_id}` is not registered"
            ))),
        }
    }
}

impl RatesApi {
    /// `GetRate`, as the encoded response.
    pub async fn get_rate_wire(&self, request: &v1::GetRateRequest) -> Result<Vec<u8>, Status> {
        match &request.as_of {
            None => match point::try_get_rate(&self.reader, request) {
                Some(answer) => Ok(answer?),
                None => {
                    // The replica's writer holds the card's shard, and may have been
                    // preempted holding it: wait where no other call waits behind us.
                    ratemesh_runtime::grpc::serve::off_the_connection_thread().await;
                    Ok(point::get_rate(&self.reader, request)?)
                }
            },
            Some(as_of) => Ok(self
                .history
                .get_rate_at(&self.reader, request, as_of)
                .await?
                .encode_to_vec()),
        }
    }

    /// The replica the reads are answered from.
    pub(crate) fn reader(&self) -> &ReplicaReader {
        &self.reader
    }

    /// `BatchGetRates` of `skus`, as the encoded response.
    pub fn batch_get_rates_wire<'a>(
        &self,
        skus: impl ExactSizeIterator<Item = &'a str>,
    ) -> Result<Vec<u8>, Status> {
        Ok(point::batch_get_rates(&self.reader, skus)?)
    }

    /// `ListRates`, as the encoded response.
    pub fn list_rates_wire(&self, request: &v1::ListRatesRequest) -> Result<Vec<u8>, Status> {
        Ok(point::list_rates(&self.reader, request)?)
    }
}

/// Decodes a response this service encoded (for callers of the trait methods).
fn decoded<T: Message + Default>(bytes: &[u8]) -> Result<T, Status> {
    T::decode(bytes)
        .map_err(|e| Status::internal(format!("an encoded response does not decode: {e}")))
}

/// The trait methods, for calling the service directly; the network-facing server
/// ([`super::server::RatesServer`]) sends the encoded responses as they are.
#[tonic::async_trait]
impl RateService for RatesApi {
    async fn get_rate(
        &self,
        request: Request<v1::GetRateRequest>,
    ) -> Result<Response<v1::GetRateResponse>, Status> {
        let bytes = self.get_rate_wire(request.get_ref()).await?;
        Ok(Response::new(decoded(&bytes)?))
    }

    async fn batch_get_rates(
        &self,
        request: Request<v1::BatchGetRatesRequest>,
    ) -> Result<Response<v1::BatchGetRatesResponse>, Status> {
        let bytes = self.batch_get_rates_wire(request.get_ref().skus.iter().map(String::as_str))?;
        Ok(Response::new(decoded(&bytes)?))
    }

    async fn list_rates(
        &self,
        request: Request<v1::ListRatesRequest>,
    ) -> Result<Response<v1::ListRatesResponse>, Status> {
        let bytes = self.list_rates_wire(request.get_ref())?;
        Ok(Response::new(decoded(&bytes)?))
    }

    #[tracing::instrument(skip_all)]
    async fn watch_rates(
        &self,
        request: Request<v1::WatchRatesRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let subscription = self.partner_subscription(&request).await?;
        Ok(Response::new(watch::watch_rates(
            &self.reader,
            request.into_inner(),
            subscription,
            self.heartbeat,
            self.shutdown.clone(),
        )?))
    }

    #[tracing::instrument(skip_all, fields(sku = %request.get_ref().sku))]
    async fn explain_rate(
        &self,
        request: Request<v1::ExplainRateRequest>,
    ) -> Result<Response<v1::ExplainRateResponse>, Status> {
        // Merchandisers and admins see every input; anyone else (networks) a redacted view.
        let full = Principal::of(&request)
            .is_ok_and(|p| matches!(p.role, Role::Merchandiser | Role::Admin));
        Ok(Response::new(
            self.explainer.explain(request.get_ref(), full).await?,
        ))
    }
}
