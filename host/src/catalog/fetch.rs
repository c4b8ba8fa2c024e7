//! Fetching a Plugin object's artifact, off the controller thread: a pull
//! (credentials from the object's pull Secret, blobs cached by digest) or
//! a ConfigMap key, checked against its digest either way.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Source;
use crate::oci::{Access, BlobCache};

/// Fetch the artifact of Plugin `name` at `generation`.
#[derive(Clone, Debug)]
pub struct FetchRequest {
    pub name: String,
    pub generation: i64,
    pub source: Source,
}

/// A component fetched and checked.
#[derive(Clone, Debug)]
pub struct Artifact {
    pub bytes: Vec<u8>,
    /// What pins it: the manifest digest, or the ConfigMap's sha256.
    pub digest: String,
    pub source: String,
    pub took: Duration,
    pub cached: bool,
}

/// The answer to a [`FetchRequest`]; the error is (reason, message).
#[derive(Clone, Debug)]
pub struct Fetched {
    pub name: String,
    pub generation: i64,
    pub result: Result<Artifact, (String, String)>,
}

/// Takes requests and answers each through `sink`, concurrently (a slow
/// registry for one Plugin holds up no other).
#[derive(Clone)]
pub struct Fetcher {
    requests: mpsc::UnboundedSender<FetchRequest>,
}

impl Fetcher {
    pub fn start(
        client: Option<kube::Client>,
        cache: Option<BlobCache>,
        base: Access,
        sink: impl Fn(Fetched) + Send + Sync + 'static,
    ) -> (Fetcher, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::unbounded_channel::<FetchRequest>();
        let sink = Arc::new(sink);
        let task = tokio::spawn(async move {
            while let Some(req) = rx.recv().await {
                let (client, cache, sink, base) =
                    (client.clone(), cache.clone(), sink.clone(), base.clone());
                tokio::spawn(async move {
                    let started = Instant::now();
                    let result = fetch(client.as_ref(), cache.as_ref(), &base, &req.source).await;
                    let result = result.map(|(bytes, digest, cached)| Artifact {
                        bytes,
                        digest,
                        source: req.source.describe(),
                        took: started.elapsed(),
                        cached,
                    });
                    match &result {
                        Ok(a) => {
                            info!(plugin = %req.name, source = %a.source, digest = %a.digest, cached = a.cached, took_ms = a.took.as_millis() as u64, "plugin fetched")
                        }
                        Err((reason, message)) => {
                            warn!(plugin = %req.name, reason, error = %message, "plugin not fetched; the loaded version keeps serving")
                        }
                    }
                    sink(Fetched {
                        name: req.name,
                        generation: req.generation,
                        result,
                    });
                });
            }
        });
        (Fetcher { requests: tx }, task)
    }

    pub fn fetch(&self, req: FetchRequest) {
        let _ = self.requests.send(req);
    }
}

type FetchResult = Result<(Vec<u8>, String, bool), (String, String)>;

async fn fetch(
    client: Option<&kube::Client>,
    cache: Option<&BlobCache>,
    base: &Access,
    source: &Source,
) -> FetchResult {
    let failed = |reason: &str, message: String| (reason.to_string(), message);
    if let Some(reference) = &source.oci {
        let parsed =
            crate::oci::parse(reference, true).map_err(|e| failed(e.reason(), e.to_string()))?;
        let mut access = Access {
            insecure: source.insecure,
            basic: None,
            ..base.clone()
        };
        if let Some(secret) = &source.pull_secret {
            let client = client
                .ok_or_else(|| failed("PullFailed", "a pull Secret needs the API client".into()))?;
            let s = Api::<Secret>::namespaced(client.clone(), &secret.namespace)
                .get(&secret.name)
                .await
                .map_err(|e| {
                    failed(
                        "PullFailed",
                        format!("pull Secret {}/{}: {e}", secret.namespace, secret.name),
                    )
                })?;
            let json = s
                .data
                .as_ref()
                .and_then(|d| d.get(".dockerconfigjson"))
                .ok_or_else(|| {
                    failed(
                        "PullFailed",
                        format!(
                            "pull Secret {}/{} has no .dockerconfigjson",
                            secret.namespace, secret.name
                        ),
                    )
                })?;
            access.basic = crate::oci::docker_config_auth(&json.0, parsed.registry())
                .map_err(|e| failed("PullFailed", format!("pull Secret: {e:#}")))?;
        }
        let pulled = crate::oci::pull(reference, &access, cache, true)
            .await
            .map_err(|e| failed(e.reason(), e.to_string()))?;
        return Ok((pulled.bytes, pulled.manifest_digest, pulled.cached));
    }
    let Some(cm) = &source.config_map else {
        return Err(failed("InvalidSpec", "no source".into()));
    };
    let client = client.ok_or_else(|| {
        failed(
            "PullFailed",
            "a ConfigMap source needs the API client".into(),
        )
    })?;
    let map = Api::<ConfigMap>::namespaced(client.clone(), &cm.namespace)
        .get(&cm.name)
        .await
        .map_err(|e| {
            failed(
                "PullFailed",
                format!("ConfigMap {}/{}: {e}", cm.namespace, cm.name),
            )
        })?;
    let bytes = map
        .binary_data
        .as_ref()
        .and_then(|d| d.get(&cm.key))
        .map(|b| b.0.clone())
        .ok_or_else(|| {
            failed(
                "PullFailed",
                format!(
                    "ConfigMap {}/{} has no binaryData key {:?}",
                    cm.namespace, cm.name, cm.key
                ),
            )
        })?;
    let digest = hex::encode(Sha256::digest(&bytes));
    let want = source.sha256.clone().unwrap_or_default();
    if digest != want {
        return Err(failed(
            "DigestMismatch",
            format!(
                "ConfigMap {}/{} key {:?} is sha256:{digest}, the Plugin says sha256:{want}",
                cm.namespace, cm.name, cm.key
            ),
        ));
    }
    Ok((bytes, format!("sha256:{digest}"), false))
}
