//! The network-facing `RateService` server.
//!
//! `GetRate`, `BatchGetRates` and `ListRates` send the responses [`super::point`]
//! assembles from pre-encoded cards as they are: the codec writes the bytes into the
//! gRPC frame, and nothing is encoded per card per call. Requests are decoded as usual
//! (an undecodable one is answered like any other method's). Every other method goes to
//! the generated server.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use ratemesh_proto::v1;
use ratemesh_proto::v1::rate_service_server::RateServiceServer;
use tonic::body::Body;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::service::RatesApi;
use super::wire::SkuList;

const GET_RATE: &str = "/ratemesh.v1.RateService/GetRate";
const BATCH_GET_RATES: &str = "/ratemesh.v1.RateService/BatchGetRates";
const LIST_RATES: &str = "/ratemesh.v1.RateService/ListRates";

/// `RateService` with the point reads and listings answered from encoded bytes.
#[derive(Debug, Clone)]
pub struct RatesServer {
    api: RatesApi,
    generated: RateServiceServer<RatesApi>,
}

impl RatesServer {
    /// The server over `api`.
    pub fn new(api: RatesApi) -> Self {
        Self {
            generated: RateServiceServer::new(api.clone()),
            api,
        }
    }
}

impl NamedService for RatesServer {
    const NAME: &'static str = <RateServiceServer<RatesApi> as NamedService>::NAME;
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl tower::Service<http::Request<Body>> for RatesServer {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let api = self.api.clone();
        match request.uri().path() {
            GET_RATE => Box::pin(async move {
                Ok(Grpc::new(WireCodec::default())
                    .unary(GetRate(api), request)
                    .await)
            }),
            BATCH_GET_RATES => Box::pin(async move {
                Ok(Grpc::new(WireCodec::default())
                    .unary(BatchGetRates(api), request)
                    .await)
            }),
            LIST_RATES => Box::pin(async move {
                Ok(Grpc::new(WireCodec::default())
                    .unary(ListRates(api), request)
                    .await)
            }),
            _ => Box::pin(tower::Service::call(&mut self.generated, request)),
        }
    }
}

struct GetRate(RatesApi);
struct BatchGetRates(RatesApi);
struct ListRates(RatesApi);

type Answer = BoxFuture<Result<Response<Vec<u8>>, Status>>;

impl UnaryService<v1::GetRateRequest> for GetRate {
    type Response = Vec<u8>;
    type Future = Answer;

    fn call(&mut self, request: Request<v1::GetRateRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move {
            api.get_rate_wire(request.get_ref())
                .await
                .map(Response::new)
        })
    }
}

impl UnaryService<SkuList> for BatchGetRates {
    type Response = Vec<u8>;
    type Future = std::future::Ready<Result<Response<Vec<u8>>, Status>>;

    fn call(&mut self, request: Request<SkuList>) -> Self::Future {
        let skus = request.get_ref();
        let answer = self.0.batch_get_rates_wire(ExactIter {
            inner: skus.iter(),
            left: skus.len(),
        });
        std::future::ready(answer.map(Response::new))
    }
}

/// An iterator with its length known up front.
struct ExactIter<I> {
    inner: I,
    left: usize,
}

impl<I: Iterator> Iterator for ExactIter<I> {
    type Item = I::Item;

    fn next(&mut self) -> Option<I::Item> {
        let item = self.inner.next()?;
        self.left -= 1;
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl<I: Iterator> ExactSizeIterator for ExactIter<I> {}

impl UnaryService<v1::ListRatesRequest> for ListRates {
    type Response = Vec<u8>;
    type Future = std::future::Ready<Result<Response<Vec<u8>>, Status>>;

    fn call(&mut self, request: Request<v1::ListRatesRequest>) -> Self::Future {
        std::future::ready(self.0.list_rates_wire(request.get_ref()).map(Response::new))
    }
}

/// A request message as the wire codec decodes it.
trait WireRequest: Sized + Send + 'static {
    fn decode_request(src: &mut DecodeBuf<'_>) -> Result<Self, Status>;
}

/// The status tonic's prost codec gives to an undecodable request, so the layer above
/// reports it as the caller's malformed request.
fn undecodable(error: impl std::fmt::Display) -> Status {
    Status::internal(format!("failed to decode Protobuf message: {error}"))
}

impl WireRequest for v1::GetRateRequest {
    fn decode_request(src: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        prost::Message::decode(src).map_err(|e| Status::internal(e.to_string()))
    }
}

impl WireRequest for v1::ListRatesRequest {
    fn decode_request(src: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        prost::Message::decode(src).map_err(|e| Status::internal(e.to_string()))
    }
}

impl WireRequest for SkuList {
    fn decode_request(src: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        SkuList::parse(bytes).map_err(undecodable)
    }
}

/// Decodes requests (prost, or in place for batches); encodes responses that are already
/// encoded by copying them.
struct WireCodec<D>(PhantomData<fn() -> D>);

impl<D> Default for WireCodec<D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<D: WireRequest> Codec for WireCodec<D> {
    type Encode = Vec<u8>;
    type Decode = D;
    type Encoder = Copying;
    type Decoder = Prost<D>;

    fn encoder(&mut self) -> Self::Encoder {
        Copying
    }

    fn decoder(&mut self) -> Self::Decoder {
        Prost(PhantomData)
    }
}

/// Writes an encoded message into the frame.
struct Copying;

impl Encoder for Copying {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

/// Decodes a request message.
struct Prost<D>(PhantomData<fn() -> D>);

impl<D: WireRequest> Decoder for Prost<D> {
    type Item = D;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<D>, Status> {
        D::decode_request(src).map(Some)
    }
}
