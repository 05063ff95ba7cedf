//! A gRPC client that does next to nothing itself, for the "server only" phases of `poll`
//! and `surge --raw-client`.
//!
//! Load generator and server share the machine's cores, so the tonic client's own work
//! (encoding each request, decoding up to a thousand cards per answer) is charged to the
//! server's figures. Here requests are **pre-encoded gRPC frames** (the 5-byte gRPC
//! header and the protobuf message, built once before the phase) sent as they are on
//! bare `h2` connections, and answers are **not decoded**: body frames are counted and
//! their flow-control capacity released, and a call is OK only when `grpc-status` is 0
//! (in the trailers, or in the headers of a trailers-only answer) and a message came back.
//! What is left on the client is HTTP/2 framing and HPACK, which any gRPC client pays.
//!
//! The connections take the settings tonic's channel gives hyper (2 MiB stream window,
//! 5 MiB connection window, 16 KiB frames, no server push), so the two clients differ in
//! what they do per call, not in how the server's answers flow.

use std::time::Duration;

use anyhow::Context as _;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Method, Request, Uri};

use crate::recorder::Outcome;

/// Stream flow-control window, as hyper's HTTP/2 client (tonic's channel) sets it.
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
/// Connection flow-control window, as hyper's HTTP/2 client sets it.
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
/// Largest frame accepted, as hyper's HTTP/2 client sets it.
const MAX_FRAME: u32 = 16 * 1024;
/// Largest header list accepted, as hyper's HTTP/2 client sets it.
const MAX_HEADER_LIST: u32 = 16 * 1024;
/// Bytes buffered per stream before send capacity is granted, as hyper sets it.
const MAX_SEND_BUFFER: usize = 1024 * 1024;

/// `message` as one uncompressed gRPC message frame: a zero flag byte, the length as a
/// big-endian `u32`, then the protobuf bytes.
pub fn frame(message: &impl prost::Message) -> Bytes {
    let len = message.encoded_len();
    let mut out = BytesMut::with_capacity(5 + len);
    out.put_u8(0);
    out.put_u32(len as u32);
    // Encoding into a buffer sized to `encoded_len` cannot run out of room.
    let _ = message.encode(&mut out);
    out.freeze()
}

/// The message inside a unary answer's body: exactly one uncompressed frame.
pub fn unframe(body: &[u8]) -> anyhow::Result<&[u8]> {
    anyhow::ensure!(
        body.len() >= 5,
        "answer of {} bytes has no frame",
        body.len()
    );
    anyhow::ensure!(
        body[0] == 0,
        "answer frame is compressed (flag {})",
        body[0]
    );
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    anyhow::ensure!(
        body.len() == 5 + len,
        "answer frame says {len} bytes, body holds {} after the header",
        body.len() - 5
    );
    Ok(&body[5..])
}

/// One unary method of one server: the full URI (h2 needs scheme and authority) and the
/// headers every call sends, built once.
#[derive(Debug, Clone)]
pub struct Unary {
    uri: Uri,
    headers: HeaderMap,
}

impl Unary {
    /// `path` (`/package.Service/Method`) at `addr` (host:port), with
    /// `authorization: Bearer <key>` when `key` is given.
    pub fn new(addr: &str, path: &str, key: Option<&str>) -> anyhow::Result<Self> {
        let uri: Uri = format!("http://{addr}{path}")
            .parse()
            .with_context(|| format!("building the URI of {path} at {addr}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
        if let Some(key) = key {
            headers.insert(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(&format!("Bearer {key}"))
                    .context("the API key is not a valid header value")?,
            );
        }
        Ok(Self { uri, headers })
    }

    /// The same method with a `grpc-timeout` of `deadline` on every call (whole
    /// milliseconds, as the gRPC spec writes them: at most 8 digits and a unit).
    pub fn with_deadline(mut self, deadline: Duration) -> anyhow::Result<Self> {
        let ms = deadline.as_millis();
        anyhow::ensure!(
            (1..100_000_000).contains(&ms),
            "a grpc-timeout takes 1 to 99,999,999 ms, not {ms}"
        );
        self.headers.insert(
            "grpc-timeout",
            HeaderValue::from_str(&format!("{ms}m")).context("grpc-timeout header")?,
        );
        Ok(self)
    }
}

/// How a raw call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The server answered a non-zero `grpc-status`, with its `grpc-message`.
    Status(tonic::Code, String),
    /// No usable answer: the HTTP/2 exchange failed, the HTTP status was not 200, the
    /// `grpc-status` was missing, or an OK answer carried no message.
    Protocol(String),
}

impl Failure {
    /// The outcome of a call of `what` that failed this way (shedding apart, as for the
    /// tonic client: [`crate::catalogue::status_outcome`]).
    pub fn outcome(&self, what: &str) -> Outcome {
        match self {
            Failure::Status(code, message) => {
                crate::catalogue::status_outcome(what, &tonic::Status::new(*code, message.clone()))
            }
            Failure::Protocol(message) => Outcome::Error(format!("{what}: {message}")),
        }
    }
}

/// `connections` HTTP/2 connections to one server.
#[derive(Clone)]
pub struct RawClient {
    connections: Vec<h2::client::SendRequest<Bytes>>,
}

impl RawClient {
    /// Opens `connections` HTTP/2 connections (TCP_NODELAY) to `addr`; each connection's
    /// I/O runs on its own task until the client is dropped.
    pub async fn connect(addr: &str, connections: usize) -> anyhow::Result<Self> {
        let mut out = Vec::with_capacity(connections.max(1));
        for _ in 0..connections.max(1) {
            let tcp =
                tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
                    .await
                    .with_context(|| format!("connecting to {addr}: timed out"))?
                    .with_context(|| format!("connecting to {addr}"))?;
            tcp.set_nodelay(true)?;
            let (send, connection) = h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONNECTION_WINDOW)
                .max_frame_size(MAX_FRAME)
                .max_header_list_size(MAX_HEADER_LIST)
                .max_send_buffer_size(MAX_SEND_BUFFER)
                .enable_push(false)
                .handshake::<_, Bytes>(tcp)
                .await
                .with_context(|| format!("HTTP/2 handshake with {addr}"))?;
            tokio::spawn(async move {
                // Ends when every handle is dropped or the server goes away; calls in
                // flight then fail with the connection's error.
                let _ = connection.await;
            });
            out.push(send);
        }
        Ok(Self { connections: out })
    }

    /// Sends `frame` to `method` on connection `n` (modulo the count) and reads the
    /// answer without decoding it. Returns the body's length on `grpc-status` 0.
    pub async fn call(&self, n: usize, method: &Unary, frame: Bytes) -> Result<u64, Failure> {
        self.exchange(n, method, frame, None).await
    }

    /// [`Self::call`], keeping the body (for checks outside the measured loop).
    pub async fn call_keeping_body(
        &self,
        n: usize,
        method: &Unary,
        frame: Bytes,
    ) -> Result<Bytes, Failure> {
        let mut body = BytesMut::new();
        self.exchange(n, method, frame, Some(&mut body)).await?;
        Ok(body.freeze())
    }

    async fn exchange(
        &self,
        n: usize,
        method: &Unary,
        frame: Bytes,
        mut keep: Option<&mut BytesMut>,
    ) -> Result<u64, Failure> {
        let protocol = |what: &str, e: h2::Error| Failure::Protocol(format!("{what}: {e}"));
        let send = self.connections[n % self.connections.len()].clone();
        // Waits while the connection is at the server's concurrent-stream limit.
        let mut send = send
            .ready()
            .await
            .map_err(|e| protocol("connection not ready", e))?;
        let mut request = Request::new(());
        *request.method_mut() = Method::POST;
        *request.uri_mut() = method.uri.clone();
        *request.headers_mut() = method.headers.clone();
        let (response, mut stream) = send
            .send_request(request, false)
            .map_err(|e| protocol("sending headers", e))?;
        // A server may answer from the headers alone (a refusal) and close the stream
        // before the frame goes out: h2 then calls the stream inactive, but the answer is
        // there to read. The send's error counts only when no answer comes.
        let sent = stream.send_data(frame, true);
        let response = match (response.await, sent) {
            (Ok(response), _) => response,
            (Err(e), Err(send)) => {
                return Err(Failure::Protocol(format!(
                    "sending the request frame: {send}; awaiting the answer: {e}"
                )));
            }
            (Err(e), Ok(())) => return Err(protocol("awaiting the answer", e)),
        };
        let (parts, mut body) = response.into_parts();
        if parts.status != http::StatusCode::OK {
            return Err(Failure::Protocol(format!("HTTP status {}", parts.status)));
        }
        // A trailers-only answer (how refusals and errors usually come) carries the
        // status in its headers and has no body.
        if let Some(status) = grpc_status(&parts.headers) {
            status?;
            return Err(Failure::Protocol(
                "trailers-only OK answer without a message".into(),
            ));
        }
        let mut bytes = 0u64;
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| protocol("reading the answer", e))?;
            bytes += chunk.len() as u64;
            // Give the window back at once, as a client that decodes the chunk would.
            let _ = body.flow_control().release_capacity(chunk.len());
            if let Some(keep) = keep.as_deref_mut() {
                keep.extend_from_slice(&chunk);
            }
        }
        let trailers = body
            .trailers()
            .await
            .map_err(|e| protocol("reading the trailers", e))?;
        match trailers.as_ref().and_then(grpc_status) {
            None => Err(Failure::Protocol("answer without grpc-status".into())),
            Some(Err(failure)) => Err(failure),
            Some(Ok(())) if bytes < 5 => Err(Failure::Protocol(format!(
                "OK answer of {bytes} bytes holds no message"
            ))),
            Some(Ok(())) => Ok(bytes),
        }
    }
}

/// The `grpc-status` in `headers`: `None` when absent, `Ok` when 0.
fn grpc_status(headers: &HeaderMap) -> Option<Result<(), Failure>> {
    let status = headers.get("grpc-status")?;
    let code = tonic::Code::from_bytes(status.as_bytes());
    if code == tonic::Code::Ok {
        return Some(Ok(()));
    }
    let message = headers
        .get("grpc-message")
        .map(|m| String::from_utf8_lossy(m.as_bytes()).into_owned())
        .unwrap_or_default();
    Some(Err(Failure::Status(code, message)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratemesh_proto::v1;

    #[test]
    fn a_frame_is_the_grpc_header_and_the_message_and_unframes_to_it() {
        let request = v1::GetRateRequest {
            sku: "LT-0000042".into(),
            as_of: None,
        };
        let framed = frame(&request);
        let message = prost::Message::encode_to_vec(&request);
        assert_eq!(framed[0], 0, "uncompressed");
        assert_eq!(&framed[1..5], (message.len() as u32).to_be_bytes());
        assert_eq!(unframe(&framed).expect("one frame"), message.as_slice());
        assert!(unframe(&framed[..framed.len() - 1]).is_err());
        assert!(unframe(&[1, 0, 0, 0, 0]).is_err());
    }

    #[test]
    fn only_grpc_status_zero_is_ok() {
        let mut headers = HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(grpc_status(&headers), Some(Ok(())));
        headers.insert("grpc-status", HeaderValue::from_static("8"));
        headers.insert("grpc-message", HeaderValue::from_static("busy"));
        let failure = grpc_status(&headers)
            .expect("a status")
            .expect_err("not ok");
        assert_eq!(
            failure,
            Failure::Status(tonic::Code::ResourceExhausted, "busy".into())
        );
        assert_eq!(failure.outcome("GetRate"), Outcome::Shed);
        headers.insert("grpc-status", HeaderValue::from_static("4"));
        assert!(matches!(
            grpc_status(&headers)
                .expect("a status")
                .expect_err("not ok")
                .outcome("GetRate"),
            Outcome::Error(_)
        ));
    }

    fn answer() -> v1::GetRateResponse {
        v1::GetRateResponse {
            card: Some(v1::RateCard {
                sku: "LT-0000000".into(),
                effective_rate: "0.0500".into(),
                version: 3,
                ..Default::default()
            }),
        }
    }

    #[tokio::test]
    async fn a_raw_call_reads_the_echo_answer_byte_for_byte() {
        let echo = crate::echo::start(answer()).await.expect("echo starts");
        let addr = echo.addr.to_string();
        let client = RawClient::connect(&addr, 2).await.expect("connects");
        let path = format!("/{}/GetRate", crate::echo::pb::echo_server::SERVICE_NAME);
        let method = Unary::new(&addr, &path, Some("k")).expect("valid");
        let request = frame(&v1::GetRateRequest {
            sku: "LT-0000001".into(),
            as_of: None,
        });
        let body = client
            .call_keeping_body(1, &method, request.clone())
            .await
            .expect("answered");
        assert_eq!(
            unframe(&body).expect("one frame"),
            prost::Message::encode_to_vec(&answer()).as_slice()
        );
        assert_eq!(
            client.call(0, &method, request).await,
            Ok(body.len() as u64)
        );
    }

    #[test]
    fn a_deadline_is_sent_as_grpc_timeout_in_milliseconds() {
        let method = Unary::new("127.0.0.1:1", "/a.B/C", None).expect("valid");
        let timed = method
            .clone()
            .with_deadline(Duration::from_millis(1500))
            .expect("valid");
        assert_eq!(timed.headers["grpc-timeout"], "1500m");
        assert!(!method.headers.contains_key("grpc-timeout"));
        assert!(method.clone().with_deadline(Duration::ZERO).is_err());
        assert!(method.with_deadline(Duration::from_secs(100_000)).is_err());
    }

    #[tokio::test]
    async fn a_non_zero_status_is_a_failure_with_its_code() {
        let echo = crate::echo::start(answer()).await.expect("echo starts");
        let addr = echo.addr.to_string();
        let client = RawClient::connect(&addr, 1).await.expect("connects");
        let method =
            Unary::new(&addr, "/ratemesh.loadtest.v1.Echo/NoSuchMethod", None).expect("valid");
        let failure = client
            .call(0, &method, frame(&v1::GetRateRequest::default()))
            .await
            .expect_err("no such method");
        assert!(
            matches!(failure, Failure::Status(tonic::Code::Unimplemented, _)),
            "{failure:?}"
        );
        assert!(matches!(failure.outcome("echo"), Outcome::Error(_)));
    }
}
