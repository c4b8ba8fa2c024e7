//! The admin HTTP endpoint (axum):
//!
//! | path                  | what                                                            |
//! |-----------------------|-----------------------------------------------------------------|
//! | `/healthz`            | 200 while the host works (503 once its controller has died)      |
//! | `/readyz`             | 200 once the first complete snapshot is served, 503 before       |
//! | `/metrics`            | Prometheus / OpenMetrics text, every metric named `isobar_*`     |
//! | `/debug/config_dump`  | the snapshot being served, as Envoy JSON (key material redacted) |
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

/// What the admin routes read: the host's report and, serving manifests
/// with reconcilers, the in-memory API server they write to.
#[derive(Clone)]
pub struct Sources {
    pub report: Arc<Report>,
    pub memory_api: Option<Arc<MemoryApi>>,
}

/// The admin routes over a running host.
pub fn router(sources: Sources) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/debug/config_dump", get(config_dump))
        .route("/debug/plugins", get(plugins))
        .route("/debug/diagnostics", get(diagnostics))
        .route("/debug/streams", get(streams))
        .route("/debug/reconcilers", get(reconcilers))
        .route("/debug/cluster", get(cluster))
        .with_state(sources)
}

/// Serves the admin endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    sources: Sources,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    info!(addr = ?listener.local_addr().ok(), "admin endpoint listening");
    axum::serve(listener, router(sources))
        .with_graceful_shutdown(shutdown)
        .await
}

type S = State<Sources>;

async fn index() -> &'static str {
    "isobar admin: /healthz /readyz /metrics /debug/config_dump /debug/plugins /debug/diagnostics /debug/streams\n"
}

async fn healthz(State(sources): S) -> Response {
    let status = &sources.report;
    match status.failure() {
        None => (StatusCode::OK, "ok\n").into_response(),
        Some(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("unhealthy: {why}\n"),
        )
            .into_response(),
    }
}

async fn readyz(State(sources): S) -> Response {
    let status = &sources.report;
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

async fn metrics(State(sources): S) -> Response {
    let status = &sources.report;
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        status.metrics.encode(),
    )
        .into_response()
}

async fn config_dump(State(sources): S) -> Response {
    let status = &sources.report;
    let snapshot = status.snapshot();
    // Rendering a large snapshot is CPU work: off the runtime's workers.
    let rendered =
        tokio::task::spawn_blocking(move || crate::dump::snapshot_to_json(&snapshot)).await;
    match rendered {
        Ok(Ok(doc)) => Json(doc).into_response(),
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

async fn plugins(State(sources): S) -> Json<serde_json::Value> {
    let status = &sources.report;
    Json(json!({
        "plugins": status.plugin().into_iter().collect::<Vec<_>>(),
        "history": status.plugin_history(),
    }))
}

async fn diagnostics(State(sources): S) -> Json<serde_json::Value> {
    let status = &sources.report;
    Json(json!({
        "version": status.snapshot().version,
        "manifest_errors": status.manifest_errors(),
        "diagnostics": status.diagnostics(),
        "nacks": status.nacks(),
        "nack_diagnostics": status.nack_diagnostics(),
    }))
}

async fn streams(State(sources): S) -> Json<serde_json::Value> {
    let status = &sources.report;
    Json(json!({ "streams": status.streams() }))
}

async fn reconcilers(State(sources): S) -> Json<serde_json::Value> {
    let status = &sources.report;
    Json(json!({ "reconcilers": status.reconcilers() }))
}

/// The in-memory cluster reconcilers write to when serving manifests: what
/// an operator would have made of them.
async fn cluster(State(sources): S) -> Response {
    match &sources.memory_api {
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
