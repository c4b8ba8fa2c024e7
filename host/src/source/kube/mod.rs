//! The cluster as a source: one kube-runtime watcher per kind the loaded
//! plugins read (plus the host's own: Services, EndpointSlices, TLS
//! Secrets), each feeding a [`KindCache`] that turns watcher events into
//! store events.
//!
//! Which kinds are watched follows the plugins: [`KubeSource::want`] starts
//! the watches a new plugin needs and stops the ones nobody reads any more.
//! Kinds are resolved through API discovery (the served version of a group),
//! so a plugin names `networking.k8s.io/Ingress`, not a version. A kind the
//! API server does not serve (a CRD not installed) counts as synced and
//! empty, and discovery is retried until it appears.
//!
//! Where watch streams come from is the [`Watches`] trait: [`ApiWatches`]
//! for a real API server, a script of watcher events in tests (as
//! Contour's feature tests feed its informer handlers).

pub mod cache;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, StreamExt};
use kube::api::{Api, ApiResource, DynamicObject};
use kube::discovery::Scope;
use kube::runtime::{WatchStreamExt, watcher};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

pub use cache::{KindCache, Update};

use crate::store::{Event, KindKey};

/// One kind to watch. Roots are what a label selector narrows.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WatchSpec {
    pub kind: KindKey,
    pub root: bool,
}

/// What the source tells the controller.
#[derive(Debug)]
pub struct SourceUpdate {
    pub kind: KindKey,
    pub events: Vec<Event>,
    /// The kind's first full list has completed (or the kind is not served).
    pub first_sync: bool,
    pub at: Instant,
}

/// A kind as the API server serves it.
#[derive(Clone, Debug)]
pub struct Resolved {
    pub resource: ApiResource,
    pub namespaced: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The API server does not serve this kind (yet): a CRD not installed.
    #[error("the API server does not serve {0}")]
    NotServed(KindKey),
    #[error("discovering {kind}: {source}")]
    Discovery {
        kind: KindKey,
        #[source]
        source: kube::Error,
    },
}

pub type WatchStream = BoxStream<'static, Result<watcher::Event<DynamicObject>, watcher::Error>>;

/// Where kinds are resolved and watched.
pub trait Watches: Send + Sync + 'static {
    fn resolve(&self, kind: &KindKey) -> BoxFuture<'_, Result<Resolved, SourceError>>;
    fn watch(&self, resolved: &Resolved, spec: &WatchSpec) -> WatchStream;
}

/// Whether initial lists stream over the watch (`sendInitialEvents`,
/// Kubernetes' WatchList) instead of paged LIST calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum StreamingLists {
    /// On when the API server is 1.34 or newer (WatchList on by default;
    /// 1.33 shipped it off).
    #[default]
    Auto,
    Always,
    Never,
}

/// How the cluster is watched.
#[derive(Clone, Debug, Default)]
pub struct WatchConfig {
    /// Only objects in this namespace (cluster-scoped kinds are unaffected).
    pub namespace: Option<String>,
    /// Narrows root kinds only: the Services, Secrets and slices a selected
    /// root refers to are read whatever their labels.
    pub label_selector: Option<String>,
    pub streaming_lists: StreamingLists,
}

/// Watches on a real API server.
pub struct ApiWatches {
    client: kube::Client,
    config: WatchConfig,
    streaming: bool,
}

impl ApiWatches {
    /// Asks the server its version once, to settle `StreamingLists::Auto`.
    pub async fn connect(client: kube::Client, config: WatchConfig) -> Self {
        let streaming = match config.streaming_lists {
            StreamingLists::Always => true,
            StreamingLists::Never => false,
            StreamingLists::Auto => match client.apiserver_version().await {
                Ok(info) => {
                    let minor: u32 = info
                        .minor
                        .trim_end_matches(|c: char| !c.is_ascii_digit())
                        .parse()
                        .unwrap_or(0);
                    let major: u32 = info.major.parse().unwrap_or(0);
                    info!(version = %info.git_version, "API server");
                    major > 1 || (major == 1 && minor >= 34)
                }
                Err(e) => {
                    warn!(error = %e, "API server version unknown; listing in pages");
                    false
                }
            },
        };
        ApiWatches {
            client,
            config,
            streaming,
        }
    }
}

/// Only TLS Secrets matter to the host (SDS); the API server filters.
fn is_secret(kind: &KindKey) -> bool {
    kind.group.is_empty() && kind.kind == "Secret"
}

impl Watches for ApiWatches {
    fn resolve(&self, kind: &KindKey) -> BoxFuture<'_, Result<Resolved, SourceError>> {
        let kind = kind.clone();
        async move {
            let group = match kube::discovery::group(&self.client, &kind.group).await {
                Ok(g) => g,
                Err(kube::Error::Discovery(_)) => return Err(SourceError::NotServed(kind)),
                Err(source) => return Err(SourceError::Discovery { kind, source }),
            };
            let (resource, caps) = group
                .recommended_kind(&kind.kind)
                .ok_or_else(|| SourceError::NotServed(kind.clone()))?;
            Ok(Resolved {
                resource,
                namespaced: matches!(caps.scope, Scope::Namespaced),
            })
        }
        .boxed()
    }

    fn watch(&self, resolved: &Resolved, spec: &WatchSpec) -> WatchStream {
        let client = self.client.clone();
        let api: Api<DynamicObject> = match (&self.config.namespace, resolved.namespaced) {
            (Some(ns), true) => Api::namespaced_with(client, ns, &resolved.resource),
            _ => Api::all_with(client, &resolved.resource),
        };
        let mut config = watcher::Config::default();
        if self.streaming {
            config = config.streaming_lists();
        }
        if spec.root
            && let Some(selector) = &self.config.label_selector
        {
            config = config.labels(selector);
        }
        if is_secret(&spec.kind) {
            config = config.fields("type=kubernetes.io/tls");
        }
        // Backoff between failed attempts (410 Gone relists at once).
        watcher(api, config).default_backoff().boxed()
    }
}

enum Command {
    Want(Vec<WatchSpec>),
}

/// The running source: a task per watched kind.
#[derive(Clone)]
pub struct KubeSource {
    commands: mpsc::UnboundedSender<Command>,
}

type Sink = Arc<dyn Fn(SourceUpdate) + Send + Sync>;

/// `kind="<Kind.group>"`.
type KindLabel = [(&'static str, String); 1];

fn kind_label(kind: &KindKey) -> KindLabel {
    [("kind", kind.to_string())]
}

/// The kube source's metric handles. Cheap to clone; whoever owns the
/// registry [`register`](Self::register)s them once (unregistered, they are
/// a harmless sink).
#[derive(Clone, Debug, Default)]
pub struct SourceMetrics {
    /// Watch stream errors by kind (each is retried with backoff).
    watch_errors: Family<KindLabel, Counter>,
    /// Objects the source holds, by kind.
    objects: Family<KindLabel, Gauge>,
}

impl SourceMetrics {
    /// Registers `kube_watch_errors` and `kube_objects` into `registry`
    /// (the host's `isobar`-prefixed one).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "kube_watch_errors",
            "Kubernetes watch errors by kind (retried with backoff)",
            self.watch_errors.clone(),
        );
        registry.register(
            "kube_objects",
            "Objects held from the Kubernetes API by kind",
            self.objects.clone(),
        );
    }
}

impl KubeSource {
    /// Starts the source; nothing is watched until [`want`](Self::want).
    /// Updates go to `sink` (the controller's input), in order per kind.
    pub fn start(
        watches: Arc<dyn Watches>,
        sink: impl Fn(SourceUpdate) + Send + Sync + 'static,
        metrics: SourceMetrics,
    ) -> (KubeSource, JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(manage(watches, Arc::new(sink), metrics, rx));
        (KubeSource { commands: tx }, task)
    }

    /// Watches exactly these kinds from now on: new ones start (and report
    /// their first sync), ones left out stop.
    pub fn want(&self, specs: impl IntoIterator<Item = WatchSpec>) {
        let mut specs: Vec<WatchSpec> = specs.into_iter().collect();
        specs.sort();
        specs.dedup();
        let _ = self.commands.send(Command::Want(specs));
    }
}

struct Running {
    spec: WatchSpec,
    task: JoinHandle<()>,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn manage(
    watches: Arc<dyn Watches>,
    sink: Sink,
    metrics: SourceMetrics,
    mut commands: mpsc::UnboundedReceiver<Command>,
) {
    let mut running: HashMap<KindKey, Running> = HashMap::new();
    while let Some(Command::Want(specs)) = commands.recv().await {
        let wanted: HashMap<&KindKey, &WatchSpec> = specs.iter().map(|s| (&s.kind, s)).collect();
        running.retain(|kind, r| {
            let keep = wanted.get(kind).is_some_and(|s| **s == r.spec);
            if !keep {
                info!(kind = %kind, "stopping watch");
                metrics.objects.remove(&kind_label(kind));
            }
            keep
        });
        for spec in specs {
            if running.contains_key(&spec.kind) {
                continue;
            }
            info!(kind = %spec.kind, root = spec.root, "starting watch");
            let task = tokio::spawn(watch_kind(
                watches.clone(),
                spec.clone(),
                sink.clone(),
                metrics.clone(),
            ));
            running.insert(spec.kind.clone(), Running { spec, task });
        }
    }
}

/// How long to wait before asking discovery again for a kind it did not
/// know (a CRD installed later is picked up) or failed on.
const REDISCOVER: Duration = Duration::from_secs(30);
const DISCOVERY_RETRY: Duration = Duration::from_secs(5);

async fn watch_kind(
    watches: Arc<dyn Watches>,
    spec: WatchSpec,
    sink: Sink,
    metrics: SourceMetrics,
) {
    let kind_label = kind_label(&spec.kind);
    let mut reported_sync = false;
    let resolved = loop {
        match watches.resolve(&spec.kind).await {
            Ok(r) => break r,
            Err(SourceError::NotServed(kind)) => {
                if !reported_sync {
                    warn!(kind = %kind, "the API server does not serve this kind; treating it as empty until it does");
                    reported_sync = true;
                    sink(SourceUpdate {
                        kind: spec.kind.clone(),
                        events: Vec::new(),
                        first_sync: true,
                        at: Instant::now(),
                    });
                }
                tokio::time::sleep(REDISCOVER).await;
            }
            Err(e) => {
                metrics.watch_errors.get_or_create(&kind_label).inc();
                warn!(kind = %spec.kind, error = %e, "discovery failed; retrying");
                tokio::time::sleep(DISCOVERY_RETRY).await;
            }
        }
    };
    let mut cache = KindCache::new(&resolved.resource.api_version, &resolved.resource.kind);
    let mut stream = watches.watch(&resolved, &spec);
    let gauge = metrics.objects.get_or_create_owned(&kind_label);
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => {
                let update = cache.apply(event);
                gauge.set(cache.len() as i64);
                // A kind reported empty while it was not served has synced already.
                let first_sync = update.first_sync && !reported_sync;
                if update.events.is_empty() && !first_sync {
                    continue;
                }
                if first_sync {
                    info!(kind = %spec.kind, objects = cache.len(), "watch synced");
                }
                debug!(kind = %spec.kind, events = update.events.len(), "watch events");
                sink(SourceUpdate {
                    kind: spec.kind.clone(),
                    events: update.events,
                    first_sync,
                    at: Instant::now(),
                });
            }
            Err(e) => {
                metrics.watch_errors.get_or_create(&kind_label).inc();
                warn!(kind = %spec.kind, error = %e, "watch failed; retrying with backoff");
            }
        }
    }
    warn!(kind = %spec.kind, "watch stream ended");
}
