//! The network-facing `RateService` server.
//!
//! `GetRate`, `BatchGetRates` and `ListRates` answer from pre-encoded cards and nothing is
//! encoded per card per call: `GetRate` and `ListRates` send the bytes [`super::point`]
//! assembles as they are, and a batch's results are written straight into the outgoing
//! frame, which goes to HTTP/2 as one chunk for the framing layer to cut (each extra
//! chunk handed over from a handler thread costs a pass through the connection's shared
//! stream state, and the connection sends its frames together anyway). A batch request's
//! SKUs are read into one string ([`SkuList`]); other requests are decoded as usual, and
//! an undecodable one is answered like any other method's.
//! Every other method goes to the generated server.

use std::convert::Infallible;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut};
use ratemesh_proto::v1;
use ratemesh_proto::v1::rate_service_server::RateServiceServer;
use tonic::body::Body;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::server::{Grpc, NamedService, UnaryService};
use tonic::{Request, Response, Status};

use super::point;
use super::replica::ReplicaReader;
use super::service::RatesApi;
use super::wire::{BatchWriter, Reserve, SkuList};

const GET_RATE: &str = "/ratemesh.v1.RateService/GetRate";
const BATCH_GET_RATES: &str = "/ratemesh.v1.RateService/BatchGetRates";
const LIST_RATES: &str = "/ratemesh.v1.RateService/ListRates";

/// `RateService` with the point reads and listings answered from encoded bytes.
///
/// The router clones the service for every call, so cloning it is one reference count:
/// [`RatesApi`] holds a backend handle and a cancellation token, whose clones would
/// touch a dozen counters (and a lock) shared by every thread serving calls.
#[derive(Debug, Clone)]
pub struct RatesServer(Arc<Services>);

#[derive(Debug)]
struct Services {
    api: Arc<RatesApi>,
    generated: RateServiceServer<RatesApi>,
}

impl RatesServer {
    /// The server over `api`.
    pub fn new(api: RatesApi) -> Self {
        let api = Arc::new(api);
        Self(Arc::new(Services {
            generated: RateServiceServer::from_arc(api.clone()),
            api,
        }))
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
        let services = &self.0;
        match request.uri().path() {
            GET_RATE => unary(GetRate(services.api.clone()), request),
            BATCH_GET_RATES => unary(BatchGetRates(services.api.clone()), request),
            LIST_RATES => unary(ListRates(services.api.clone()), request),
            _ => Box::pin(tower::Service::call(
                &mut services.generated.clone(),
                request,
            )),
        }
    }
}

/// `method`'s answer to `request`, through the wire codec.
fn unary<M, D>(
    method: M,
    request: http::Request<Body>,
) -> BoxFuture<Result<http::Response<Body>, Infallible>>
where
    M: UnaryService<D, Response = Answer> + Send + 'static,
    M::Future: Send,
    D: WireRequest,
{
    Box::pin(async move {
        Ok(Grpc::new(WireCodec::<D>::default())
            .unary(method, request)
            .await)
    })
}

struct GetRate(Arc<RatesApi>);
struct BatchGetRates(Arc<RatesApi>);
struct ListRates(Arc<RatesApi>);

/// A response as the codec writes it.
enum Answer {
    /// Encoded already.
    Encoded(Vec<u8>),
    /// A checked batch, whose results are written straight into the frame.
    Batch(ReplicaReader, SkuList),
}

impl UnaryService<v1::GetRateRequest> for GetRate {
    type Response = Answer;
    type Future = BoxFuture<Result<Response<Answer>, Status>>;

    fn call(&mut self, request: Request<v1::GetRateRequest>) -> Self::Future {
        let api = self.0.clone();
        Box::pin(async move {
            api.get_rate_wire(request.get_ref())
                .await
                .map(|bytes| Response::new(Answer::Encoded(bytes)))
        })
    }
}

/// The longest batch answered where its request was read, when the server answers point
/// reads there (a batch is one); a longer one goes on on a handler thread.
const INLINE_BATCH: usize = 100;

impl UnaryService<SkuList> for BatchGetRates {
    type Response = Answer;
    type Future = BoxFuture<Result<Response<Answer>, Status>>;

    fn call(&mut self, request: Request<SkuList>) -> Self::Future {
        let skus = request.into_inner();
        let api = self.0.clone();
        Box::pin(async move {
            let reader = api.reader();
            point::check_batch(reader, skus.len())?;
            // The cards are looked up as the answer is written, under the shards' read
            // locks: a long batch, or one that may wait for the replica's writer (which
            // may have been preempted holding a shard), is not answered on a connection
            // thread, where the calls behind it would wait too.
            if skus.len() > INLINE_BATCH || reader.writing() {
                ratemesh_runtime::grpc::serve::off_the_connection_thread().await;
            }
            Ok(Response::new(Answer::Batch(reader.clone(), skus)))
        })
    }
}

impl UnaryService<v1::ListRatesRequest> for ListRates {
    type Response = Answer;
    type Future = std::future::Ready<Result<Response<Answer>, Status>>;

    fn call(&mut self, request: Request<v1::ListRatesRequest>) -> Self::Future {
        std::future::ready(
            self.0
                .list_rates_wire(request.get_ref())
                .map(|bytes| Response::new(Answer::Encoded(bytes))),
        )
    }
}

/// A request message as the wire codec decodes it.
trait WireRequest: Sized + Send + 'static {
    /// The codec's buffers for this method's calls, request and response (tonic's
    /// default, 8 KiB each, is an allocation per call as large as a page of cards).
    const BUFFERS: Buffers = Buffers {
        request: DEFAULT_BUFFER,
        response: DEFAULT_BUFFER,
    };

    fn decode_request(src: &mut DecodeBuf<'_>) -> Result<Self, Status>;
}

/// Initial sizes of a call's codec buffers; a buffer grows if a message needs more.
#[derive(Debug, Clone, Copy)]
struct Buffers {
    request: usize,
    response: usize,
}

/// tonic's default buffer size.
const DEFAULT_BUFFER: usize = 8 * 1024;
/// tonic's default: a streaming encoder yields once this much is buffered.
const DEFAULT_YIELD_THRESHOLD: usize = 32 * 1024;

/// The status tonic's prost codec gives to an undecodable request, so the layer above
/// reports it as the caller's malformed request.
fn undecodable(error: impl std::fmt::Display) -> Status {
    Status::internal(format!("failed to decode Protobuf message: {error}"))
}

impl WireRequest for v1::GetRateRequest {
    // A SKU in, one card out: a few hundred bytes at most.
    const BUFFERS: Buffers = Buffers {
        request: 256,
        response: 1024,
    };

    fn decode_request(src: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        prost::Message::decode(src).map_err(|e| Status::internal(e.to_string()))
    }
}

impl WireRequest for v1::ListRatesRequest {
    const BUFFERS: Buffers = Buffers {
        request: 256,
        response: DEFAULT_BUFFER,
    };

    fn decode_request(src: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        prost::Message::decode(src).map_err(|e| Status::internal(e.to_string()))
    }
}

impl WireRequest for SkuList {
    // The answer's size is reserved once its cards are found (`point::write_batch`): a
    // buffer of tonic's default would be allocated, then reallocated (and its contents
    // copied) for an answer of 100 cards, about 17 KiB.
    const BUFFERS: Buffers = Buffers {
        request: DEFAULT_BUFFER,
        response: 64,
    };

    fn decode_request(src: &mut DecodeBuf<'_>) -> Result<Self, Status> {
        let bytes = src.copy_to_bytes(src.remaining());
        SkuList::parse(bytes).map_err(undecodable)
    }
}

/// Decodes requests (prost, or into one string for batches); encodes responses that are
/// already encoded by copying them.
struct WireCodec<D>(PhantomData<fn() -> D>);

impl<D> Default for WireCodec<D> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<D: WireRequest> Codec for WireCodec<D> {
    type Encode = Answer;
    type Decode = D;
    type Encoder = Copying;
    type Decoder = Prost<D>;

    fn encoder(&mut self) -> Self::Encoder {
        Copying(D::BUFFERS.response)
    }

    fn decoder(&mut self) -> Self::Decoder {
        Prost(PhantomData)
    }
}

/// Writes a response into the frame: encoded bytes by copying them, a batch by writing its
/// results; the frame's buffer starts at the given size.
struct Copying(usize);

impl Encoder for Copying {
    type Item = Answer;
    type Error = Status;

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(self.0, DEFAULT_YIELD_THRESHOLD)
    }

    fn encode(&mut self, item: Answer, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        match item {
            Answer::Encoded(bytes) => dst.put_slice(&bytes),
            Answer::Batch(reader, skus) => {
                let mut out = BatchWriter::new(dst);
                point::write_batch(&reader, skus.iter(), &mut out);
            }
        }
        Ok(())
    }
}

impl Reserve for EncodeBuf<'_> {
    fn reserve(&mut self, additional: usize) {
        EncodeBuf::reserve(self, additional);
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

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(D::BUFFERS.request, DEFAULT_YIELD_THRESHOLD)
    }
}
