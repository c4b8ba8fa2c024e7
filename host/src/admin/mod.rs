//! The admin HTTP endpoint (axum):
//!
//! | path                  | what                                                            |
//! |-----------------------|-----------------------------------------------------------------|
//! | `/healthz`            | 200 while the host works (503 once its controller has died)      |
//! | `/readyz`             | 200 once the first complete snapshot is served, 503 before       |
//! | `/metrics`            | Prometheus / OpenMetrics text, every metric named `isobar_*`     |
//! | `/debug/config_dump`  | the snapshot being served, as Envoy JSON (key material redacted) |
//! | `/debug/status`       | what translators say about objects, as the leader writes it (object, field manager, status) |
//! | `/debug/plugins`      | the loaded plugin (name, version, digest, source, loaded_at, last_error) and recent load attempts |
//! | `/debug/diagnostics`  | manifest errors (file:line), diagnostics by object, NACKs        |
//! | `/debug/streams`      | live xDS streams: node, protocol, versions pushed and acknowledged |

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use tokio::net::TcpListener;
use tracing::info;

use crate::reconcile::MemoryApi;
use crate::report::Report;

/// How long a client may take to send a request's headers (and how long
/// a kept-alive connection may sit idle): a half-sent request no longer
/// holds a connection for ever.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the admin routes read: the host's report and, serving manifests
/// with reconcilers, the in-memory API server they write to.
#[derive(Clone)]
pub struct Sources {
    pub report: Arc<Report>,
    pub memory_api: Option<Arc<MemoryApi>>,
}

/// What the admin handlers share: the sources, and the config dump
/// rendered once per snapshot version.
#[derive(Clone)]
pub struct Admin {
    status: Arc<Report>,
    memory_api: Option<Arc<MemoryApi>>,
    dump: Arc<tokio::sync::Mutex<Option<(u64, Arc<Vec<u8>>)>>>,
    /// Config dumps rendered (for tests: one per snapshot version).
    renders: Arc<std::sync::atomic::AtomicU64>,
}

impl Admin {
    fn new(sources: Sources) -> Self {
        Admin {
            status: sources.report,
            memory_api: sources.memory_api,
            dump: Arc::default(),
            renders: Arc::default(),
        }
    }
}

/// The admin routes over a running host.
pub fn router(sources: Sources) -> Router {
    admin_router(Admin::new(sources))
}

fn admin_router(admin: Admin) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/plugins", get(plugins))
        .route("/debug/diagnostics", get(diagnostics))
        .route("/debug/status", get(statuses))
        .route("/debug/streams", get(streams))
        .route("/debug/reconcilers", get(reconcilers))
        .route("/debug/cluster", get(cluster))
        .with_state(admin)
}

/// Only `/healthz` and `/readyz`: what the kubelet needs, safe to serve
/// on the pod's address while the rest stays on loopback.
pub fn probes_router(report: Arc<Report>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Admin::new(Sources {
            report,
            memory_api: None,
        }))
}

/// Serves the admin endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    sources: Sources,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    info!(addr = ?listener.local_addr().ok(), "admin endpoint listening");
    serve_router(listener, router(sources), shutdown).await
}

/// Serves `router` (HTTP/1 and HTTP/2) on `listener` until `shutdown`
/// completes, then lets open requests finish (for at most 5 s). Headers
/// must arrive within [`HEADER_READ_TIMEOUT`].
pub async fn serve_router(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_router_with(listener, router, shutdown, HEADER_READ_TIMEOUT).await
}

async fn serve_router_with(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    header_timeout: std::time::Duration,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(header_timeout));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait, go on.
                    tracing::debug!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let (builder, watcher) = (builder.clone(), graceful.watcher());
        tokio::spawn(async move {
            // hyper's header timer starts once the protocol is known, i.e.
            // after the first bytes: a connection that sends none is
            // closed here.
            let mut first = [0u8; 1];
            match tokio::time::timeout(header_timeout, stream.peek(&mut first)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => return,
            }
            let connection = builder
                .serve_connection_with_upgrades(TokioIo::new(stream), service)
                .into_owned();
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), graceful.shutdown()).await;
    Ok(())
}

type S = State<Admin>;

async fn index() -> &'static str {
    "isobar admin: /healthz /readyz /metrics /debug/config_dump /debug/plugins /debug/diagnostics /debug/status /debug/streams\n"
}

async fn healthz(State(Admin { status, .. }): S) -> Response {
    match status.failure() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(Admin { status, .. }): S) -> Response {
    if status.is_ready() {
        (
            StatusCode::OK,
            format!(
                "ready: serving snapshot version {}\n",
                status.snapshot().version
            ),
        )
            .into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the first snapshot is being built\n",
        )
            .into_response()
    }
}

async fn metrics(State(Admin { status, .. }): S) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        status.metrics.encode(),
    )
        .into_response()
}

/// The snapshot as Envoy JSON, rendered once per snapshot version (on the
/// blocking pool) and shared by every request for that version: a burst of
/// requests is one render, not one each.
async fn config_dump(State(admin): S) -> Response {
    let snapshot = admin.status.snapshot();
    let mut cached = admin.dump.lock().await;
    if let Some((version, body)) = cached.as_ref()
        && *version == snapshot.version
    {
        return json_bytes(body.clone());
    }
    let version = snapshot.version;
    admin
        .renders
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let rendered = tokio::task::spawn_blocking(move || {
        crate::dump::snapshot_to_json(&snapshot).and_then(|doc| Ok(serde_json::to_vec(&doc)?))
    })
    .await;
    match rendered {
        Ok(Ok(body)) => {
            let body = Arc::new(body);
            *cached = Some((version, body.clone()));
            json_bytes(body)
        }
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the snapshot: {e:#}\n"),
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("rendering the snapshot: {e}\n"),
        )
            .into_response(),
    }
}

fn json_bytes(body: Arc<Vec<u8>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        axum::body::Bytes::from_owner(ArcBytes(body)),
    )
        .into_response()
}

/// Lends a shared rendering to a response body without copying it.
struct ArcBytes(Arc<Vec<u8>>);

impl AsRef<[u8]> for ArcBytes {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

async fn plugins(State(Admin { status, .. }): S) -> Json<serde_json::Value> {
    Json(json!({
        "plugins": status.plugins(),
        "history": status.plugin_history(),
    }))
}

async fn diagnostics(State(Admin { status, .. }): S) -> Json<serde_json::Value> {
    Json(json!({
        "version": status.snapshot().version,
        "manifest_errors": status.manifest_errors(),
        "diagnostics": status.diagnostics(),
        "nacks": status.nacks(),
        "nack_diagnostics": status.nack_diagnostics(),
    }))
}

/// What translators say about objects, as the leader would write it:
/// the object, the field manager and the status body.
async fn statuses(State(Admin { status, .. }): S) -> Json<serde_json::Value> {
    let writes: Vec<serde_json::Value> = status
        .statuses()
        .iter()
        .map(|s| {
            json!({
                "apiVersion": s.object.api_version,
                "kind": s.object.kind,
                "namespace": s.object.namespace,
                "name": s.object.name,
                "fieldManager": s.field_manager(),
                "status": crate::writeback::plugin_status(s).status,
            })
        })
        .collect();
    Json(json!({ "statuses": writes }))
}

async fn streams(State(Admin { status, .. }): S) -> Json<serde_json::Value> {
    Json(json!({ "streams": status.streams() }))
}

async fn reconcilers(State(Admin { status, .. }): S) -> Json<serde_json::Value> {
    Json(json!({ "reconcilers": status.reconcilers() }))
}

/// The in-memory cluster reconcilers write to when serving manifests: what
/// an operator would have made of them.
async fn cluster(State(Admin { memory_api, .. }): S) -> Response {
    match memory_api {
        Some(c) => {
            let objects: Vec<serde_json::Value> = c.objects().into_values().collect();
            let events: Vec<serde_json::Value> = c
                .events()
                .into_iter()
                .map(|e| {
                    json!({"regarding": e.regarding.to_string(), "type": e.type_,
                           "reason": e.reason, "message": e.message,
                           "reportingController": e.reporting_controller})
                })
                .collect();
            Json(json!({ "objects": objects, "events": events })).into_response()
        }
        None => (
            StatusCode::NOT_FOUND,
            "no in-memory cluster: reconcilers (if any) write to the Kubernetes API\n",
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;
    use crate::xds::Snapshot;

    const WAIT: Duration = Duration::from_secs(20);

    fn status(version: u64) -> (tokio::sync::watch::Sender<Arc<Snapshot>>, Arc<Report>) {
        let (tx, rx) = tokio::sync::watch::channel(Arc::new(Snapshot {
            version,
            ..Default::default()
        }));
        (tx, Arc::new(Report::new(rx)))
    }

    async fn start(router: Router, header_timeout: Duration) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_router_with(
            listener,
            router,
            std::future::pending(),
            header_timeout,
        ));
        addr
    }

    async fn get(addr: std::net::SocketAddr, path: &str) -> u16 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        tokio::time::timeout(WAIT, s.read_to_string(&mut out))
            .await
            .unwrap()
            .unwrap();
        out[9..12].parse().unwrap()
    }

    async fn closed_by_server(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 1024];
        tokio::time::timeout(WAIT, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        })
        .await
        .is_ok()
    }

    /// Issue 13 item 8: half-sent HTTP/1 requests to the admin port were
    /// still open after 75 s.
    #[tokio::test]
    async fn half_sent_requests_and_idle_connections_are_closed() {
        let (_tx, status) = status(1);
        let addr = start(
            router(Sources {
                report: status,
                memory_api: None,
            }),
            Duration::from_millis(300),
        )
        .await;
        let mut half = TcpStream::connect(addr).await.unwrap();
        half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        let mut idle = TcpStream::connect(addr).await.unwrap();
        assert!(
            closed_by_server(&mut half).await,
            "half a request still open"
        );
        assert!(
            closed_by_server(&mut idle).await,
            "an idle connection still open"
        );
        assert_eq!(get(addr, "/healthz").await, 200);
    }

    /// Issue 13 item 11: the probe port serves the probes and nothing else.
    #[tokio::test]
    async fn the_probe_router_serves_only_the_probes() {
        let (_tx, status) = status(1);
        status.mark_ready();
        let addr = start(probes_router(status), HEADER_READ_TIMEOUT).await;
        assert_eq!(get(addr, "/healthz").await, 200);
        assert_eq!(get(addr, "/readyz").await, 200);
        for path in [
            "/metrics",
            "/debug/config_dump",
            "/debug/diagnostics",
            "/debug/streams",
        ] {
            assert_eq!(get(addr, path).await, 404, "{path}");
        }
    }

    /// Issue 13 item 11: the config dump was rendered for every request on
    /// the blocking pool; now once per snapshot version.
    #[tokio::test]
    async fn the_config_dump_is_rendered_once_per_snapshot_version() {
        let (tx, status) = status(1);
        let admin = Admin::new(Sources {
            report: status,
            memory_api: None,
        });
        let renders = admin.renders.clone();
        let addr = start(admin_router(admin), HEADER_READ_TIMEOUT).await;
        let requests = (0..20).map(|_| get(addr, "/debug/config_dump"));
        for code in futures::future::join_all(requests).await {
            assert_eq!(code, 200);
        }
        assert_eq!(renders.load(std::sync::atomic::Ordering::Relaxed), 1);
        tx.send_replace(Arc::new(Snapshot {
            version: 2,
            ..Default::default()
        }));
        assert_eq!(get(addr, "/debug/config_dump").await, 200);
        assert_eq!(get(addr, "/debug/config_dump").await, 200);
        assert_eq!(renders.load(std::sync::atomic::Ordering::Relaxed), 2);
    }
}
