//! The ADS gRPC server: `XdsServer` (shared state and the envoy-types
//! service trait), `AdsService` (the encode-once gRPC service that `serve`
//! mounts) and `serve` (tonic with HTTP/2 keepalive and graceful shutdown).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, SERVICE_NAME,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::{Stream, StreamExt};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::codegen::{Context, Poll, Service, StdError, http};
use tonic::server::NamedService;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use super::body::ResponseBody;
use super::delta::Delta;
use super::event::XdsEvent;
use super::limits::XdsLimits;
use super::listen::{self, Connection};
use super::snapshot::Snapshot;
use super::sotw::Sotw;
use super::stream::{self, Shared};
use super::wire::{DeltaResponse, SotwRequest, SotwResponse, WireDecoder};

/// Events buffered for the host before new ones are dropped (and counted).
pub const EVENT_QUEUE: usize = 4096;

/// HTTP/2 PING interval on idle connections: finds dead data planes (and
/// keeps NATs and load balancers from dropping quiet ADS streams).
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
/// How long a PING may go unanswered before the connection is closed.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);
/// TCP keepalive on accepted sockets, below HTTP/2.
pub const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The gRPC path of state-of-the-world ADS.
pub const SOTW_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
/// The gRPC path of incremental (delta) ADS.
pub const DELTA_PATH: &str =
    "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Serves the latest snapshot of a `watch` channel to any number of ADS
/// streams, SotW and delta. Cheap to clone; clones share streams and state.
///
/// A snapshot with version 0 (`Snapshot::default()`) means "nothing built
/// yet": streams wait for the first real one.
#[derive(Clone)]
pub struct XdsServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for XdsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XdsServer")
            .field("active_streams", &self.active_streams())
            .finish()
    }
}

impl XdsServer {
    /// A server and the receiving end of its events (bounded by
    /// [`EVENT_QUEUE`]; see [`XdsServer::dropped_events`]).
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> (Self, mpsc::Receiver<XdsEvent>) {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        (Self::with_events(snapshots, Some(tx)), rx)
    }

    /// A server that reports to the given channel, or to nobody. Sending
    /// never blocks a stream: when the channel is full the event is dropped.
    pub fn with_events(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        events: Option<mpsc::Sender<XdsEvent>>,
    ) -> Self {
        Self::with_limits(snapshots, events, XdsLimits::default())
    }

    /// A server with limits of its own on what clients may make it hold.
    pub fn with_limits(
        snapshots: watch::Receiver<Arc<Snapshot>>,
        events: Option<mpsc::Sender<XdsEvent>>,
        limits: XdsLimits,
    ) -> Self {
        XdsServer {
            shared: Arc::new(Shared::new(snapshots, events, limits)),
        }
    }

    pub fn limits(&self) -> &XdsLimits {
        &self.shared.limits
    }

    /// The encode-once gRPC service: responses are written from the
    /// snapshot's encoded bytes. This is what [`serve`] mounts; add it to
    /// your own tonic `Router` to serve ADS beside other services.
    pub fn service(&self) -> AdsService {
        AdsService {
            server: self.clone(),
        }
    }

    /// Ends every stream with `UNAVAILABLE` (clients reconnect, possibly to
    /// another replica) and refuses new ones; graceful shutdown cannot
    /// complete while ADS streams, which never end by themselves, are open.
    pub fn shutdown_streams(&self) {
        self.shared.shutdown.send_replace(true);
    }

    /// Streams currently being served.
    pub fn active_streams(&self) -> usize {
        self.shared.active_streams.load(Ordering::Relaxed)
    }

    /// Events dropped because the host did not drain the channel in time.
    pub fn dropped_events(&self) -> u64 {
        self.shared.dropped_events.load(Ordering::Relaxed)
    }

    fn sotw<S>(&self, requests: S) -> mpsc::Receiver<Result<SotwResponse, Status>>
    where
        S: Stream<Item = Result<SotwRequest, Status>> + Send + 'static,
    {
        stream::spawn(self.shared.clone(), Sotw::default(), requests)
    }

    fn delta<S>(&self, requests: S) -> mpsc::Receiver<Result<DeltaResponse, Status>>
    where
        S: Stream<Item = Result<DeltaDiscoveryRequest, Status>> + Send + 'static,
    {
        stream::spawn(self.shared.clone(), Delta::default(), requests)
    }
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The generated envoy-types service, for callers who want
/// `AggregatedDiscoveryServiceServer::new(server)`. Same protocol logic, but
/// the generated response types own their bytes, so every response copies
/// resource bodies into new `Any`s (no re-encoding). Prefer
/// [`XdsServer::service`].
#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = BoxStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = BoxStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let requests = request.into_inner().map(|r| r.map(SotwRequest::from));
        let responses = ReceiverStream::new(self.sotw(requests));
        Ok(Response::new(Box::pin(
            responses.map(|r| r.map(|r| r.to_proto())),
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let responses = ReceiverStream::new(self.delta(request.into_inner()));
        Ok(Response::new(Box::pin(
            responses.map(|r| r.map(|r| r.to_proto())),
        )))
    }
}

/// `envoy.service.discovery.v3.AggregatedDiscoveryService` with responses
/// encoded straight from the snapshot (see `wire`).
#[derive(Clone, Debug)]
pub struct AdsService {
    server: XdsServer,
}

impl NamedService for AdsService {
    const NAME: &'static str = SERVICE_NAME;
}

impl<B> Service<http::Request<B>> for AdsService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if let Some(connection) = request.extensions().get::<Connection>() {
            connection.requested();
        }
        let max = self.server.limits().max_request_bytes;
        let path = request.uri().path();
        if path != SOTW_PATH && path != DELTA_PATH {
            return std::future::ready(Ok(trailers_only(Status::unimplemented(""))));
        }
        // Data planes do not compress xDS requests, and this server does not
        // decompress: say so as tonic would rather than fail mid-stream.
        if let Some(encoding) = request.headers().get("grpc-encoding")
            && encoding != "identity"
        {
            return std::future::ready(Ok(trailers_only(Status::unimplemented(format!(
                "request compression {encoding:?} is not supported"
            )))));
        }
        let response = if path == SOTW_PATH {
            let requests = decode_requests::<SotwRequest, _>(request.into_body(), max);
            grpc_response(ResponseBody::new(self.server.sotw(requests)))
        } else {
            let requests = decode_requests::<DeltaDiscoveryRequest, _>(request.into_body(), max);
            grpc_response(ResponseBody::new(self.server.delta(requests)))
        };
        std::future::ready(Ok(response))
    }
}

/// The request messages of one call, as tonic frames and decodes them.
/// A request over `max` bytes ends the stream (`RESOURCE_EXHAUSTED`)
/// before it is buffered.
fn decode_requests<D, B>(body: B, max: usize) -> Streaming<D>
where
    D: prost::Message + Default + Send + 'static,
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    Streaming::new_request(WireDecoder::<D>::default(), body, None, Some(max))
}

fn grpc_response(
    body: impl tonic::codegen::Body<Data = bytes::Bytes, Error = Status> + Send + 'static,
) -> http::Response<tonic::body::Body> {
    let mut response = http::Response::new(tonic::body::Body::new(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        tonic::metadata::GRPC_CONTENT_TYPE,
    );
    response
}

/// A response with no messages: the status goes in the headers.
fn trailers_only(status: Status) -> http::Response<tonic::body::Body> {
    let mut response = grpc_response(tonic::body::Body::empty());
    // A message that is not a valid header value is dropped, the code kept.
    if status.add_header(response.headers_mut()).is_err() {
        response
            .headers_mut()
            .insert(Status::GRPC_STATUS, (status.code() as i32).into());
    }
    response
}

/// Certificates for the xDS port, PEM encoded.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// When set, clients must present a certificate signed by this CA (mTLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to serve xDS on {addr} without mutual TLS: SDS hands every TLS private key to whoever connects. Pass --xds-tls-cert, --xds-tls-key and --xds-tls-ca, listen on loopback, or allow it explicitly with --xds-allow-insecure"
    )]
    Insecure { addr: std::net::SocketAddr },
    #[error(
        "xDS TLS is not available: this build of tonic has no TLS feature (tls-ring or tls-aws-lc)"
    )]
    TlsUnavailable,
    #[error("xDS server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Refuses an xDS address anyone but this machine can reach unless
/// clients must present a certificate (mTLS), or `allow_insecure` says the
/// operator means it (e.g. a network of its own in front). Loopback is
/// always fine.
pub fn check_exposure(
    addr: std::net::SocketAddr,
    tls: Option<&TlsConfig>,
    allow_insecure: bool,
) -> Result<(), ServeError> {
    let mtls = tls.is_some_and(|t| t.client_ca_pem.is_some());
    if addr.ip().is_loopback() || mtls || allow_insecure {
        return Ok(());
    }
    Err(ServeError::Insecure { addr })
}

/// Serves ADS on `listener` until `shutdown` completes; then ends every
/// stream (`UNAVAILABLE`) and returns once connections have drained.
pub async fn serve<F>(
    listener: TcpListener,
    server: XdsServer,
    shutdown: F,
    tls: Option<TlsConfig>,
) -> Result<(), ServeError>
where
    F: Future<Output = ()> + Send,
{
    let limits = server.limits().clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &tls {
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &tls.cert_pem,
                &tls.key_pem,
            ))
            // A handshake that stalls is dropped (the first-request
            // deadline below would close it too).
            .timeout(limits.first_request_timeout);
        if let Some(ca) = &tls.client_ca_pem {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        builder = builder.tls_config(config)?;
    }
    let local = listener.local_addr().ok();
    let incoming = listen::guard(
        TcpIncoming::from(listener)
            .with_nodelay(Some(true))
            .with_keepalive(Some(TCP_KEEPALIVE)),
        limits.max_connections,
        limits.first_request_timeout,
    );
    let streams = server.clone();
    let signal = async move {
        shutdown.await;
        info!("xDS server shutting down");
        streams.shutdown_streams();
    };
    info!(addr = ?local, tls = tls.is_some(), mtls = tls.as_ref().is_some_and(|t| t.client_ca_pem.is_some()), "xDS server listening");
    builder
        // A SotW request repeats the whole subscription: an Envoy ACKing
        // endpoints names every cluster (hundreds of KiB at 10k clusters).
        // With the fixed 64 KiB default window every such request waits
        // for window updates; a window sized by measured bandwidth-delay
        // (as gRPC's own servers do) takes it in one go.
        .http2_adaptive_window(Some(true))
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT))
        .max_concurrent_streams(limits.max_streams_per_connection)
        .add_service(server.service())
        .serve_with_incoming_shutdown(incoming, signal)
        .await?;
    Ok(())
}

#[cfg(test)]
mod exposure_tests {
    use super::*;

    fn tls(ca: bool) -> TlsConfig {
        TlsConfig {
            cert_pem: vec![],
            key_pem: vec![],
            client_ca_pem: ca.then(Vec::new),
        }
    }

    /// Issue 13 item 12: binding xDS to a non-loopback address without
    /// mTLS served every private key over SDS to whoever connected.
    #[test]
    fn xds_off_loopback_needs_mtls_or_an_explicit_allowance() {
        let any: std::net::SocketAddr = "0.0.0.0:18000".parse().unwrap();
        let pod: std::net::SocketAddr = "10.1.2.3:18000".parse().unwrap();
        let local: std::net::SocketAddr = "127.0.0.1:18000".parse().unwrap();
        let local6: std::net::SocketAddr = "[::1]:18000".parse().unwrap();
        for addr in [any, pod] {
            assert!(matches!(
                check_exposure(addr, None, false),
                Err(ServeError::Insecure { .. })
            ));
            // TLS without client certificates is still anyone's.
            assert!(check_exposure(addr, Some(&tls(false)), false).is_err());
            assert!(check_exposure(addr, Some(&tls(true)), false).is_ok());
            assert!(check_exposure(addr, None, true).is_ok());
        }
        assert!(check_exposure(local, None, false).is_ok());
        assert!(check_exposure(local6, None, false).is_ok());
        let err = check_exposure(any, None, false).unwrap_err().to_string();
        assert!(err.contains("--xds-allow-insecure"), "{err}");
    }
}
