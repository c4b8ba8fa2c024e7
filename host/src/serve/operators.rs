//! Reconciler plugins inside `isobar serve`: operators running beside the
//! translator, on the same source.
//!
//! ```text
//!  controller thread ── objects of the reconcilers' kinds ─► world ─► each reconciler ─► actions ─► cluster
//!  (files or watches)                                          ▲                                      │
//!                                                              └──── the cluster's writes come back ──┘
//! ```
//!
//! With a cluster, the world is the watches and actions go to the API server
//! ([`KubeCluster`]); with a manifest directory, the world is an in-memory
//! API server ([`MemoryCluster`]) seeded from the manifests, so an operator
//! can be tried without a cluster (`/debug/cluster` shows what it made).
//!
//! A reconciler file that changes is hot-swapped: the new component is
//! compiled and must still be a reconciler for the same kind (the watches
//! were started for it); then the old one stops after its current batch and
//! the new one starts from every object the world holds. Any failure keeps
//! the old one running and is recorded under `/debug/reconcilers`.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::status::{Status, rfc3339};
use crate::plugin::{ReconcilerPlugin, Runtime};
use crate::queue::QueueMetrics;
use crate::reconcile::{Cluster, Config, MemoryCluster, Progress, Reconciler};
use crate::store::{Event, KindKey, Object, ObjectKey};

/// What the operators are told.
#[derive(Debug)]
pub(crate) enum OpInput {
    /// Source events for the reconcilers' kinds, in order.
    Objects(Vec<Event>),
    /// The file of reconciler `index` may have changed.
    Swap(usize),
}

/// What `/debug/reconcilers` shows of one.
#[derive(Clone, Debug, Serialize)]
pub struct ReconcilerStatus {
    pub name: String,
    pub version: String,
    pub digest: String,
    pub source: String,
    pub reconciles: String,
    pub calls: u64,
    pub failures: u64,
    pub writes: u64,
    pub unchanged_writes: u64,
    /// Objects whose last reconcile failed, and why.
    pub failing: BTreeMap<String, String>,
    pub last_swap_error: Option<String>,
}

/// Where the reconcilers' actions land.
pub(crate) enum World {
    Memory(Arc<MemoryCluster>, mpsc::UnboundedReceiver<Event>),
    Kube(Arc<crate::reconcile::kube::KubeCluster>),
}

struct Running {
    plugin: ReconcilerPlugin,
    events: mpsc::UnboundedSender<Event>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    progress: watch::Receiver<Progress>,
    last_swap_error: Option<String>,
}

/// The kinds a set of reconcilers needs watched.
pub(crate) fn kinds_of(plugins: &[ReconcilerPlugin]) -> HashSet<KindKey> {
    plugins.iter().flat_map(|p| p.watched_kinds()).collect()
}

pub(crate) struct Operators {
    runtime: Runtime,
    paths: Vec<PathBuf>,
    kinds: HashSet<KindKey>,
    status: Arc<Status>,
    metrics: QueueMetrics,
}

impl Operators {
    pub fn new(
        runtime: Runtime,
        paths: Vec<PathBuf>,
        kinds: HashSet<KindKey>,
        status: Arc<Status>,
    ) -> Self {
        Operators {
            runtime,
            paths,
            kinds,
            status,
            metrics: QueueMetrics::new(),
        }
    }

    /// Runs the reconcilers until the inputs close.
    pub async fn run(
        self,
        plugins: Vec<ReconcilerPlugin>,
        world: World,
        inputs: mpsc::UnboundedReceiver<OpInput>,
    ) {
        match world {
            World::Memory(cluster, events) => {
                let seed = cluster.clone();
                self.serve(plugins, cluster, Some(seed), Some(events), inputs)
                    .await
            }
            World::Kube(cluster) => self.serve(plugins, cluster, None, None, inputs).await,
        }
    }

    async fn serve<C: Cluster>(
        self,
        plugins: Vec<ReconcilerPlugin>,
        cluster: Arc<C>,
        memory: Option<Arc<MemoryCluster>>,
        mut writes: Option<mpsc::UnboundedReceiver<Event>>,
        mut inputs: mpsc::UnboundedReceiver<OpInput>,
    ) {
        let mut running: Vec<Running> = Vec::new();
        for plugin in plugins {
            running.push(self.start(plugin, cluster.clone(), &BTreeMap::new(), None));
        }
        // Everything the world holds now, to start a swapped-in reconciler from.
        let mut objects: BTreeMap<ObjectKey, Arc<Object>> = BTreeMap::new();
        let mut progress_changed = futures::stream::SelectAll::new();
        for (i, r) in running.iter().enumerate() {
            progress_changed.push(progress_stream(i, r.progress.clone()));
        }
        self.publish(&running);
        use futures::StreamExt;
        loop {
            tokio::select! {
                input = inputs.recv() => match input {
                    None => break,
                    Some(OpInput::Objects(events)) => {
                        for e in events {
                            match &memory {
                                // The manifests are what users put into the in-memory API
                                // server; its writes come back on `writes`.
                                Some(m) => seed(m, &e),
                                None => deliver(&mut objects, &running, e),
                            }
                        }
                    }
                    Some(OpInput::Swap(index)) => {
                        match self.swap(index, &running, cluster.clone(), &objects).await {
                            Ok(Some(next)) => {
                                let old = std::mem::replace(&mut running[index], next);
                                progress_changed.push(progress_stream(index, running[index].progress.clone()));
                                old.stop.send_replace(true);
                                // The old one finishes its batch; the new one already has the world.
                                tokio::spawn(async move { let _ = old.task.await; });
                            }
                            Ok(None) => {}
                            Err(why) => running[index].last_swap_error = Some(why),
                        }
                        self.publish(&running);
                    }
                },
                Some(e) = recv(&mut writes) => deliver(&mut objects, &running, e),
                Some(_) = progress_changed.next() => self.publish(&running),
            }
        }
        for r in running {
            r.stop.send_replace(true);
        }
    }

    fn start<C: Cluster>(
        &self,
        plugin: ReconcilerPlugin,
        cluster: Arc<C>,
        objects: &BTreeMap<ObjectKey, Arc<Object>>,
        last_swap_error: Option<String>,
    ) -> Running {
        let reconciler = Reconciler::new(plugin.clone(), cluster, Config::default(), &self.metrics)
            .expect("the default queue config is valid");
        let progress = reconciler.progress();
        let (events, rx) = mpsc::unbounded_channel();
        for o in objects.values() {
            let _ = events.send(Event::Apply(o.clone()));
        }
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(reconciler.run(rx, stop_rx));
        info!(reconciler = %plugin.info.name, version = %plugin.info.version, digest = %plugin.digest, "reconciler running");
        Running {
            plugin,
            events,
            stop,
            task,
            progress,
            last_swap_error,
        }
    }

    /// A swapped-in reconciler, started; none when the file is unchanged or
    /// gone; why not when it is unreadable or not an acceptable component.
    async fn swap<C: Cluster>(
        &self,
        index: usize,
        running: &[Running],
        cluster: Arc<C>,
        objects: &BTreeMap<ObjectKey, Arc<Object>>,
    ) -> Result<Option<Running>, String> {
        let Some(path) = self.paths.get(index).cloned() else {
            return Ok(None);
        };
        let current = &running[index].plugin;
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return self.refuse(&path, format!("unreadable: {e}")),
        };
        if hex::encode(Sha256::digest(&bytes)) == current.digest {
            return Ok(None);
        }
        let runtime = self.runtime.clone();
        let source = path.display().to_string();
        let loaded =
            tokio::task::spawn_blocking(move || runtime.load_reconciler(&bytes, &source)).await;
        let plugin = match loaded {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => return self.refuse(&path, e.to_string()),
            Err(e) => return self.refuse(&path, format!("loading panicked: {e}")),
        };
        let missing: Vec<String> = plugin
            .watched_kinds()
            .into_iter()
            .filter(|k| !self.kinds.contains(k))
            .map(|k| k.to_string())
            .collect();
        if !missing.is_empty() {
            return self.refuse(
                &path,
                format!(
                    "it reads kinds the host was not started for ({}); restart to watch them",
                    missing.join(", ")
                ),
            );
        }
        info!(reconciler = %plugin.info.name, digest = %plugin.digest, replaced = %current.digest, "reconciler swapped");
        Ok(Some(self.start(plugin, cluster, objects, None)))
    }

    fn refuse(&self, path: &std::path::Path, why: String) -> Result<Option<Running>, String> {
        warn!(reconciler = %path.display(), error = %why, "reconciler not swapped; the loaded one keeps running");
        Err(format!("{}: {why}", rfc3339(SystemTime::now())))
    }

    fn publish(&self, running: &[Running]) {
        let list = running
            .iter()
            .map(|r| {
                let p = r.progress.borrow();
                ReconcilerStatus {
                    name: r.plugin.info.name.clone(),
                    version: r.plugin.info.version.clone(),
                    digest: format!("sha256:{}", r.plugin.digest),
                    source: r.plugin.source.clone(),
                    reconciles: r.plugin.kind().to_string(),
                    calls: p.reconciles,
                    failures: p.failures,
                    writes: p.writes,
                    unchanged_writes: p.unchanged_writes,
                    failing: p
                        .failing
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.clone()))
                        .collect(),
                    last_swap_error: r.last_swap_error.clone(),
                }
            })
            .collect();
        self.status.set_reconcilers(list);
    }
}

fn seed(cluster: &MemoryCluster, e: &Event) {
    let outcome = match e {
        Event::Apply(o) => serde_json::from_str(&o.json)
            .map_err(|e| e.to_string())
            .and_then(|v| cluster.put(v).map(|_| ()).map_err(|e| e.to_string())),
        Event::Delete(k) => cluster.remove(k).map(|_| ()).map_err(|e| e.to_string()),
    };
    if let Err(why) = outcome {
        warn!(error = %why, "object not put into the in-memory cluster");
    }
}

/// Records a world event and hands it to every reconciler.
fn deliver(objects: &mut BTreeMap<ObjectKey, Arc<Object>>, running: &[Running], e: Event) {
    match &e {
        Event::Apply(o) => {
            objects.insert(o.key(), o.clone());
        }
        Event::Delete(k) => {
            objects.remove(k);
        }
    }
    for r in running {
        let _ = r.events.send(e.clone());
    }
}

async fn recv(rx: &mut Option<mpsc::UnboundedReceiver<Event>>) -> Option<Event> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn progress_stream(
    index: usize,
    rx: watch::Receiver<Progress>,
) -> futures::stream::BoxStream<'static, usize> {
    use futures::StreamExt;
    tokio_stream::wrappers::WatchStream::from_changes(rx)
        .map(move |_| index)
        .boxed()
}
