//! The one ADS test client: what the xDS unit tests, the feature tests
//! (`tests/`) and the benchmarks talk to a server through.
//!
//! Three layers, each usable alone:
//! - the transport: [`connect`] (HTTP/2 with Envoy's flow-control windows)
//!   and [`open`] (an ADS call with the client's own message types);
//! - the streams: [`SotwStream`] and [`DeltaStream`], which send exactly
//!   what a test says (subscribe, ACK, NACK) and read responses with a bound;
//! - the peers: [`Sotw`] and [`Delta`], which behave like Envoy (subscribe,
//!   ACK everything) and keep what they hold ([`Held`]) for assertions.
//!
//! Responses decode into lean messages ([`SotwResponse`], [`DeltaResponse`])
//! whose resources stay in the received buffer, and SotW requests are the
//! server's own [`SotwRequest`] with names kept encoded: a benchmark runs a
//! thousand of these clients on the server's cores, and the bytes on the
//! wire are the same as Envoy's generated messages.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::xds::server::{DELTA_PATH, SOTW_PATH};
use crate::xds::{Resource, Snapshot, SotwRequest, type_url};

/// How long any single wait of these clients may take.
pub const WAIT: Duration = Duration::from_secs(60);
pub const LDS: &str = type_url::LISTENER;
pub const RDS: &str = type_url::ROUTE;
pub const CDS: &str = type_url::CLUSTER;
pub const EDS: &str = type_url::ENDPOINT;
pub const SDS: &str = type_url::SECRET;

/// Envoy's HTTP/2 windows (256 MiB), not hyper's defaults.
pub const ENVOY_H2_WINDOW: u32 = 256 << 20;

// ---- messages ---------------------------------------------------------------

/// `google.protobuf.Any` with its value left in the received buffer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AnyBytes {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "bytes", tag = "2")]
    pub value: Bytes,
}

/// `DiscoveryResponse`: the fields a client reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SotwResponse {
    #[prost(string, tag = "1")]
    pub version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<AnyBytes>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
}

/// `envoy.service.discovery.v3.Resource`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeltaResource {
    #[prost(string, tag = "1")]
    pub version: String,
    #[prost(message, optional, tag = "2")]
    pub resource: Option<AnyBytes>,
    #[prost(string, tag = "3")]
    pub name: String,
}

/// `DeltaDiscoveryResponse`: the fields a client reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DeltaResponse {
    #[prost(string, tag = "1")]
    pub system_version_info: String,
    #[prost(message, repeated, tag = "2")]
    pub resources: Vec<DeltaResource>,
    #[prost(string, tag = "4")]
    pub type_url: String,
    #[prost(string, tag = "5")]
    pub nonce: String,
    #[prost(string, repeated, tag = "6")]
    pub removed_resources: Vec<String>,
}

pub fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

/// Decodes the name every served type carries in field 1.
pub fn name_of(body: &[u8]) -> String {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Named {
        #[prost(string, tag = "1")]
        name: String,
    }
    Named::decode(body).expect("resource decodes").name
}

fn nack_status(message: &str) -> Option<RpcStatus> {
    Some(RpcStatus {
        code: 13,
        message: message.into(),
        details: vec![],
    })
}

// ---- transport ----------------------------------------------------------------

/// An HTTP/2 connection to an ADS server at `addr`.
pub async fn connect(addr: SocketAddr) -> Result<tonic::client::Grpc<Channel>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(30))
        .initial_stream_window_size(ENVOY_H2_WINDOW)
        .initial_connection_window_size(ENVOY_H2_WINDOW)
        .connect()
        .await
        .map_err(|e| {
            let mut msg = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                msg = format!("{msg}: {s}");
                source = s.source();
            }
            msg
        })?;
    Ok(tonic::client::Grpc::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX))
}

/// Opens an ADS call on `path` (SotW or delta) sending what `requests`
/// yields.
pub async fn open<Req, Resp>(
    client: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    requests: mpsc::Receiver<Req>,
) -> Result<tonic::Streaming<Resp>, String>
where
    Req: prost::Message + Send + Sync + 'static,
    Resp: prost::Message + Default + Send + Sync + 'static,
{
    client
        .ready()
        .await
        .map_err(|e| format!("connection not ready: {e}"))?;
    client
        .streaming(
            tonic::Request::new(ReceiverStream::new(requests)),
            tonic::codegen::http::uri::PathAndQuery::from_static(path),
            tonic_prost::ProstCodec::<Req, Resp>::default(),
        )
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("opening stream: {s}"))
}

async fn bounded<T, F: std::future::Future<Output = Result<T, String>>>(what: &str, f: F) -> T {
    timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("{what} timed out"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn next<M>(rx: &mut tonic::Streaming<M>) -> M {
    timeout(WAIT, rx.message())
        .await
        .expect("timed out waiting for a response")
        .expect("stream failed")
        .expect("stream ended")
}

// ---- streams ------------------------------------------------------------------

/// A state-of-the-world stream that sends what it is told.
pub struct SotwStream {
    pub tx: mpsc::Sender<SotwRequest>,
    pub rx: tonic::Streaming<SotwResponse>,
    pub node: String,
    probes: usize,
}

impl SotwStream {
    pub async fn open(addr: SocketAddr, node: &str) -> Self {
        let mut client = bounded("connect", connect(addr)).await;
        let (tx, rx) = mpsc::channel(64);
        let rx = bounded("open", open(&mut client, SOTW_PATH, rx)).await;
        SotwStream {
            tx,
            rx,
            node: node.into(),
            probes: 0,
        }
    }

    /// Sends `r` with this stream's node.
    pub async fn send(&self, r: impl Into<SotwRequest>) {
        let r = r.into();
        self.tx
            .send(SotwRequest {
                node: node(&self.node),
                ..r
            })
            .await
            .expect("request stream open");
    }

    pub async fn request(&self, type_url: &str, names: &[&str], version: &str, nonce: &str) {
        self.send(SotwRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        })
        .await
    }

    pub async fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.request(type_url, names, "", "").await
    }

    pub async fn ack(&self, r: &SotwResponse, names: &[&str]) {
        self.request(&r.type_url, names, &r.version_info, &r.nonce)
            .await
    }

    /// Rejects `r`, staying on `good_version`.
    pub async fn nack(&self, r: &SotwResponse, names: &[&str], good_version: &str, message: &str) {
        self.send(SotwRequest {
            type_url: r.type_url.clone(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: good_version.into(),
            response_nonce: r.nonce.clone(),
            error_detail: nack_status(message),
            ..Default::default()
        })
        .await
    }

    pub async fn recv(&mut self) -> SotwResponse {
        next(&mut self.rx).await
    }

    /// Asserts nothing but probe answers arrive until the stream has taken
    /// in snapshot `version`: a stream handles requests and snapshots in
    /// order, so any push that was due would have come before the answer.
    pub async fn sync(&mut self, version: &str) {
        for _ in 0..1000 {
            self.probes += 1;
            let probe = format!("type.googleapis.com/isobar.test.Probe{}", self.probes);
            self.subscribe(&probe, &["p"]).await;
            let r = self.recv().await;
            assert_eq!(r.type_url, probe, "unexpected push while syncing: {r:?}");
            if r.version_info == version {
                return;
            }
        }
        panic!("stream never reached version {version}");
    }
}

/// An incremental stream that sends what it is told.
pub struct DeltaStream {
    pub tx: mpsc::Sender<DeltaDiscoveryRequest>,
    pub rx: tonic::Streaming<DeltaResponse>,
    pub node: String,
    probes: usize,
}

impl DeltaStream {
    pub async fn open(addr: SocketAddr, node: &str) -> Self {
        let mut client = bounded("connect", connect(addr)).await;
        let (tx, rx) = mpsc::channel(64);
        let rx = bounded("open", open(&mut client, DELTA_PATH, rx)).await;
        DeltaStream {
            tx,
            rx,
            node: node.into(),
            probes: 0,
        }
    }

    pub async fn send(&self, r: DeltaDiscoveryRequest) {
        self.tx
            .send(DeltaDiscoveryRequest {
                node: node(&self.node),
                ..r
            })
            .await
            .expect("request stream open");
    }

    pub async fn subscribe(&self, type_url: &str, subscribe: &[&str], unsubscribe: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await
    }

    pub async fn ack(&self, r: &DeltaResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await
    }

    pub async fn nack(&self, r: &DeltaResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: nack_status(message),
            ..Default::default()
        })
        .await
    }

    pub async fn recv(&mut self) -> DeltaResponse {
        next(&mut self.rx).await
    }

    /// As [`SotwStream::sync`].
    pub async fn sync(&mut self, version: &str) {
        for _ in 0..1000 {
            self.probes += 1;
            let probe = format!("type.googleapis.com/isobar.test.Probe{}", self.probes);
            self.subscribe(&probe, &["p"], &[]).await;
            let r = self.recv().await;
            assert_eq!(r.type_url, probe, "unexpected push while syncing: {r:?}");
            if r.system_version_info == version {
                return;
            }
        }
        panic!("stream never reached version {version}");
    }
}

// ---- peers that behave like Envoy ---------------------------------------------

/// What a client holds: per type, the latest version and resources, as a
/// `Snapshot` so snapshot readers apply to it.
#[derive(Default)]
pub struct Held {
    pub versions: BTreeMap<String, String>,
    pub snapshot: Snapshot,
}

impl Held {
    pub fn version(&self, t: &str) -> u64 {
        self.versions
            .get(t)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The lowest version over the types held: the version the client is
    /// fully on.
    pub fn min_version(&self, types: &[&str]) -> u64 {
        types.iter().map(|t| self.version(t)).min().unwrap_or(0)
    }

    pub fn set(&mut self, t: &str, name: String, body: Bytes) {
        let r = Resource::new(t, name.clone(), body, vec![]);
        self.snapshot
            .resources
            .entry(t.to_string())
            .or_default()
            .insert(name, Arc::new(r));
    }

    pub fn names(&self, t: &str) -> BTreeSet<String> {
        self.snapshot
            .of_type(t)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The first domain of each virtual host of a route configuration held.
    pub fn domains(&self, route_config_name: &str) -> BTreeSet<String> {
        use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
        self.snapshot
            .get(RDS, route_config_name)
            .map(|r| {
                RouteConfiguration::decode(r.body.as_ref())
                    .expect("route configuration decodes")
                    .virtual_hosts
                    .into_iter()
                    .filter_map(|v| v.domains.into_iter().next())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A state-of-the-world peer that behaves like Envoy: it subscribes and
/// ACKs every response.
pub struct Sotw {
    pub stream: SotwStream,
    pub held: Held,
    pub subscriptions: BTreeMap<String, Vec<String>>,
}

impl std::ops::Deref for Sotw {
    type Target = SotwStream;
    fn deref(&self) -> &SotwStream {
        &self.stream
    }
}

impl std::ops::DerefMut for Sotw {
    fn deref_mut(&mut self) -> &mut SotwStream {
        &mut self.stream
    }
}

impl Sotw {
    pub async fn open(addr: SocketAddr, node_id: &str) -> Self {
        Sotw {
            stream: SotwStream::open(addr, node_id).await,
            held: Held::default(),
            subscriptions: BTreeMap::new(),
        }
    }

    /// Envoy's subscriptions: listeners and clusters by (legacy) wildcard,
    /// routes and endpoints by `*`.
    pub async fn open_envoy(addr: SocketAddr, node_id: &str) -> Self {
        let mut c = Self::open(addr, node_id).await;
        for (t, names) in [
            (CDS, &[][..]),
            (EDS, &["*"][..]),
            (LDS, &[][..]),
            (RDS, &["*"][..]),
        ] {
            c.subscribe(t, names).await;
        }
        c
    }

    pub async fn subscribe(&mut self, t: &str, names: &[&str]) {
        self.subscriptions
            .insert(t.to_string(), names.iter().map(|n| n.to_string()).collect());
        self.stream.subscribe(t, names).await;
    }

    /// Takes one response in, ACKs it, returns it.
    pub async fn step(&mut self) -> SotwResponse {
        let r = self.stream.recv().await;
        let t = r.type_url.clone();
        // Listeners and clusters come whole (what is left out is gone);
        // routes and endpoints may come as just what changed.
        if t == LDS || t == CDS {
            self.held.snapshot.resources.remove(&t);
        }
        for any in &r.resources {
            self.held.set(&t, name_of(&any.value), any.value.clone());
        }
        self.held.versions.insert(t.clone(), r.version_info.clone());
        let names = self.subscriptions.get(&t).cloned().unwrap_or_default();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        self.stream.ack(&r, &names).await;
        r
    }

    /// Takes responses in until `cond` holds.
    pub async fn until(&mut self, what: &str, cond: impl Fn(&Held) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(&self.held) {
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}",
                self.stream.node
            );
            self.step().await;
        }
    }
}

/// An incremental peer that behaves like Envoy: it subscribes to everything
/// and ACKs every response.
pub struct Delta {
    pub stream: DeltaStream,
    pub held: Held,
}

impl Delta {
    pub async fn open_envoy(addr: SocketAddr, node_id: &str) -> Self {
        let d = Delta {
            stream: DeltaStream::open(addr, node_id).await,
            held: Held::default(),
        };
        for t in [CDS, EDS, LDS, RDS] {
            d.stream.subscribe(t, &["*"], &[]).await;
        }
        d
    }

    pub async fn step(&mut self) -> DeltaResponse {
        let r = self.stream.recv().await;
        let t = r.type_url.clone();
        for res in &r.resources {
            let body = res
                .resource
                .as_ref()
                .map(|a| a.value.clone())
                .unwrap_or_default();
            self.held.set(&t, res.name.clone(), body);
        }
        if let Some(m) = self.held.snapshot.resources.get_mut(&t) {
            for gone in &r.removed_resources {
                m.remove(gone);
            }
        }
        self.held
            .versions
            .insert(t.clone(), r.system_version_info.clone());
        self.stream.ack(&r).await;
        r
    }

    pub async fn until(&mut self, what: &str, cond: impl Fn(&Held) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(&self.held) {
            assert!(
                Instant::now() < deadline,
                "{}: timed out waiting for {what}",
                self.stream.node
            );
            self.step().await;
        }
    }
}

// ---- the admin endpoint ---------------------------------------------------------

/// A minimal HTTP/1.1 GET (the admin endpoint is plain HTTP).
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    timeout(WAIT, async {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await.unwrap();
        let text = String::from_utf8(raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
        let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
        let body = if head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            dechunk(body)
        } else {
            body.to_string()
        };
        (code, body)
    })
    .await
    .expect("admin request timed out")
}

pub fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        body = &rest[n + 2..];
    }
    out
}
