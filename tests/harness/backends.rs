//! Real backends for a real Envoy, in-process on loopback, each answering
//! with its own name so a test can tell which one served a request; and
//! the clients that send requests through Envoy's listeners.
//!
//! * [`Backend::http`]: HTTP/1.1 and HTTP/2 over cleartext (h2c, prior
//!   knowledge), answering a JSON body naming the backend, the path, the
//!   Host and the protocol version it saw.
//! * [`Backend::grpc`]: a gRPC service over h2c (tonic) whose every method
//!   answers [`Who`]: the backend's name and the method called.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use super::envoy::{HTTP_PORT, HTTPS_PORT};

/// Bound of one request through Envoy.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A backend serving on loopback until dropped.
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Backend {
    /// An HTTP backend (HTTP/1.1 and h2c) on an ephemeral loopback port.
    pub async fn http(name: &str) -> Backend {
        Self::http_on(name, "127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn http_on(name: &str, addr: SocketAddr) -> Backend {
        let listener = TcpListener::bind(addr)
            .await
            .unwrap_or_else(|e| panic!("backend {name} on {addr}: {e}"));
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let (who, counter) = (Arc::<str>::from(name), hits.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (who, counter) = (who.clone(), counter.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<_>| {
                        counter.fetch_add(1, Ordering::Relaxed);
                        let body = json!({
                            "backend": &*who,
                            "path": req.uri().path(),
                            "host": req.headers().get("host").and_then(|h| h.to_str().ok()),
                            "version": format!("{:?}", req.version()),
                        });
                        async move {
                            Ok::<_, Infallible>(
                                Response::builder()
                                    .header("content-type", "application/json")
                                    .body(Full::new(Bytes::from(body.to_string())))
                                    .unwrap(),
                            )
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Backend {
            name: name.into(),
            addr,
            hits,
            task,
        }
    }

    /// A gRPC backend (h2c) on an ephemeral loopback port.
    pub async fn grpc(name: &str) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let service = EchoServer {
            name: name.into(),
            hits: hits.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        Backend {
            name: name.into(),
            addr,
            hits,
            task,
        }
    }

    /// Requests served so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

/// What every method of the gRPC backend answers.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Who {
    #[prost(string, tag = "1")]
    pub backend: String,
    #[prost(string, tag = "2")]
    pub method: String,
}

/// The gRPC service name of the echo backend: its methods are
/// `/isobar.test.Echo/<anything>`.
pub const ECHO_SERVICE: &str = "isobar.test.Echo";

#[derive(Clone)]
struct EchoServer {
    name: Arc<str>,
    hits: Arc<AtomicU64>,
}

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = ECHO_SERVICE;
}

impl tower_service::Service<http::Request<tonic::body::Body>> for EchoServer {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        self.hits.fetch_add(1, Ordering::Relaxed);
        let answer = Who {
            backend: self.name.to_string(),
            method: req.uri().path().to_string(),
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Who, Who>::default());
            Ok(grpc.unary(Respond(answer), req).await)
        })
    }
}

struct Respond(Who);

impl tonic::server::UnaryService<Who> for Respond {
    type Response = Who;
    type Future = std::future::Ready<Result<tonic::Response<Who>, tonic::Status>>;

    fn call(&mut self, _request: tonic::Request<Who>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(self.0.clone())))
    }
}

// ---- clients: requests through Envoy ---------------------------------------------

/// An answer through Envoy: the status, and the backend's report when a
/// backend answered.
#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    fn report(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }

    /// The backend that answered (None: Envoy answered itself).
    pub fn backend(&self) -> Option<String> {
        self.report()?["backend"].as_str().map(str::to_string)
    }

    /// The protocol the backend saw (`HTTP/1.1`, `HTTP/2.0`).
    pub fn version(&self) -> Option<String> {
        self.report()?["version"].as_str().map(str::to_string)
    }

    /// `status backend`, e.g. "200 web" or "503 -": what routing tests compare.
    pub fn summary(&self) -> String {
        format!(
            "{} {}",
            self.status,
            self.backend().unwrap_or_else(|| "-".into())
        )
    }
}

/// An HTTP/1.1 client with a connection pool, to Envoy's HTTP listener.
#[derive(Clone)]
pub struct Client {
    inner: HyperClient<HttpConnector, Empty<Bytes>>,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    pub fn new() -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Client {
            inner: HyperClient::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(connector),
        }
    }

    /// GET `path` with `Host: host` on Envoy's HTTP listener; an error is a
    /// transport failure (no HTTP answer).
    pub async fn get(&self, host: &str, path: &str) -> Result<Reply, String> {
        self.get_at(HTTP_PORT, host, path).await
    }

    /// GET on another of Envoy's listeners (a loopback port).
    pub async fn get_at(&self, port: u16, host: &str, path: &str) -> Result<Reply, String> {
        let req = Request::get(format!("http://127.0.0.1:{port}{path}"))
            .header("host", host)
            .body(Empty::new())
            .unwrap();
        let sent = async {
            let resp = self
                .inner
                .request(req)
                .await
                .map_err(|e| format!("{e:?}"))?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            Ok(Reply {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        };
        tokio::time::timeout(REQUEST_TIMEOUT, sent)
            .await
            .map_err(|_| format!("GET {host}{path}: no answer in {REQUEST_TIMEOUT:?}"))?
    }
}

/// GET through Envoy's HTTP listener on a fresh connection; panics on a
/// transport failure.
pub async fn get(host: &str, path: &str) -> Reply {
    Client::new()
        .get(host, path)
        .await
        .unwrap_or_else(|e| panic!("GET {host}{path}: {e}"))
}

/// What a TLS handshake with Envoy's HTTPS listener showed.
pub struct TlsReply {
    pub reply: Reply,
    /// The certificate chain Envoy presented (DER), leaf first.
    pub chain: Vec<Vec<u8>>,
}

/// GET over TLS on Envoy's HTTPS listener, with SNI and Host `host`,
/// trusting only `ca_pem`: the handshake fails unless Envoy presents a
/// certificate for `host` that the CA signed.
pub async fn get_tls(host: &str, path: &str, ca_pem: &str) -> Result<TlsReply, String> {
    use tokio_rustls::rustls;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pki_certs(ca_pem) {
        roots.add(cert).map_err(|e| format!("CA: {e}"))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = rustls::pki_types::ServerName::try_from(host.to_string())
        .map_err(|e| format!("server name {host}: {e}"))?;
    let exchange = async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", HTTPS_PORT))
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let chain: Vec<Vec<u8>> = tls
            .get_ref()
            .1
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.to_vec())
            .collect();
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(conn);
        let req = Request::get(path)
            .header("host", host)
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok(TlsReply {
            reply: Reply {
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            },
            chain,
        })
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .map_err(|_| format!("GET https://{host}{path}: no answer in {REQUEST_TIMEOUT:?}"))?
}

fn rustls_pki_certs(pem: &str) -> Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>> {
    use tokio_rustls::rustls::pki_types::CertificateDer;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .map(|c| c.expect("a PEM certificate"))
        .collect()
}

/// A gRPC call through Envoy's HTTP listener (h2c), with `:authority`
/// `host`, to `/isobar.test.Echo/<method>`.
pub async fn grpc_call(host: &str, method: &str) -> Result<Who, String> {
    let call = async {
        let channel =
            tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{HTTP_PORT}"))
                .unwrap()
                .origin(format!("http://{host}").parse().unwrap())
                .connect()
                .await
                .map_err(|e| format!("connect: {e}"))?;
        let mut grpc = tonic::client::Grpc::new(channel);
        grpc.ready().await.map_err(|e| format!("ready: {e}"))?;
        let path: http::uri::PathAndQuery = format!("/{ECHO_SERVICE}/{method}").parse().unwrap();
        grpc.unary(
            tonic::Request::new(Who::default()),
            path,
            tonic_prost::ProstCodec::<Who, Who>::default(),
        )
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    };
    tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .map_err(|_| format!("gRPC {host} {method}: no answer in {REQUEST_TIMEOUT:?}"))?
}

/// A CA and leaf certificates for test hosts, PEM encoded (rcgen).
pub struct TestCa {
    pub cert_pem: String,
    issuer: rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
}

impl TestCa {
    pub fn new(name: &str) -> TestCa {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let issuer =
            rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap())
                .unwrap();
        TestCa {
            cert_pem: issuer.pem(),
            issuer,
        }
    }

    /// A server certificate for `hosts`: (certificate PEM, key PEM).
    pub fn leaf(&self, hosts: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, hosts[0]);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The DER of the first certificate in `pem`.
pub fn der_of(pem: &str) -> Vec<u8> {
    rustls_pki_certs(pem)[0].to_vec()
}
