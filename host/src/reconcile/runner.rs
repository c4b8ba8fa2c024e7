//! Reconciler plugins inside `isobar serve`: operators running beside the
//! translators, reading the same store.
//!
//! ```text
//!  controller thread ── changes to the reconcilers' kinds ─► each reconciler ─► actions ─► API
//!  (the store's writer)        ▲                                                            │
//!                              └──────────── the API's writes come back as input ───────────┘
//! ```
//!
//! With a cluster, actions go to the API server ([`KubeApi`](super::KubeApi))
//! and come back through the watches; with a manifest directory, to an
//! in-memory API server ([`MemoryApi`]) that the manifests of the
//! reconcilers' kinds are applied to, so an operator can be tried without a
//! cluster (`/debug/cluster` shows what it made).
//!
//! A reconciler file that changes is hot-swapped: the new component is
//! compiled and must still read only kinds the host watches; then the old
//! one stops after its current batch and the new one starts from every
//! object of its kinds in the store. Any failure keeps the old one running
//! and is recorded under `/debug/reconcilers`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Api, Config, MemoryApi, Progress, Reconciler};
use crate::plugin::{ReconcilerPlugin, Runtime};
use crate::report::{ReconcilerStatus, Report, rfc3339};
use crate::store::{Change, Event, KindKey, Store};

/// What the runner is told.
#[derive(Debug)]
pub enum RunnerInput {
    /// Changes to the reconcilers' kinds, in order.
    Changes(Vec<Change>),
    /// The file of reconciler `index` may have changed.
    Swap(usize),
    /// A reconciler a Plugin object carries: started, in place of the one
    /// the object carried before. Refused when another reconciler already
    /// reconciles its kind (two operators would fight over the objects).
    Install {
        object: String,
        plugin: ReconcilerPlugin,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// The Plugin object is gone, and its reconciler with it.
    Remove { object: String },
}

struct Running {
    plugin: ReconcilerPlugin,
    changes: mpsc::UnboundedSender<Change>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    progress: watch::Receiver<Progress>,
    last_swap_error: Option<String>,
    /// The Plugin object that carries it (none: a `--reconciler` file).
    object: Option<String>,
}

/// The kinds a set of reconcilers needs watched.
pub fn kinds_of(plugins: &[ReconcilerPlugin]) -> HashSet<KindKey> {
    plugins.iter().flat_map(|p| p.watched_kinds()).collect()
}

/// Runs every reconciler plugin of `isobar serve` against one API.
pub struct Runner {
    runtime: Runtime,
    paths: Vec<PathBuf>,
    kinds: HashSet<KindKey>,
    store: Store,
    report: Arc<Report>,
}

impl Runner {
    /// Reconcilers loaded from `paths`, reading `store` (whose writer
    /// watches `kinds`).
    pub fn new(
        runtime: Runtime,
        paths: Vec<PathBuf>,
        kinds: HashSet<KindKey>,
        store: Store,
        report: Arc<Report>,
    ) -> Self {
        Runner {
            runtime,
            paths,
            kinds,
            store,
            report,
        }
    }

    /// Runs the reconcilers until the inputs close.
    pub async fn run<A: Api>(
        self,
        plugins: Vec<ReconcilerPlugin>,
        api: Arc<A>,
        mut inputs: mpsc::UnboundedReceiver<RunnerInput>,
    ) {
        let mut running: Vec<Running> = Vec::new();
        for plugin in plugins {
            running.push(self.start(plugin, api.clone(), false, None));
        }
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
                    Some(RunnerInput::Changes(changes)) => {
                        for r in &running {
                            for c in &changes {
                                let _ = r.changes.send(c.clone());
                            }
                        }
                    }
                    Some(RunnerInput::Swap(index)) => {
                        match self.swap(index, &running, api.clone()).await {
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
                    Some(RunnerInput::Install { object, plugin, reply }) => {
                        let kind = plugin.kind();
                        if let Some(other) = running
                            .iter()
                            .find(|r| r.object.as_deref() != Some(object.as_str()) && r.plugin.kind() == kind)
                        {
                            let by = other.object.as_ref().map_or_else(
                                || format!("reconciler {} ({})", other.plugin.info.name, other.plugin.source),
                                |o| format!("Plugin {o}"),
                            );
                            let _ = reply.send(Err(format!("{by} already reconciles {kind}")));
                            continue;
                        }
                        let mut next = self.start(plugin, api.clone(), true, None);
                        next.object = Some(object.clone());
                        progress_changed.push(progress_stream(running.len(), next.progress.clone()));
                        match running.iter().position(|r| r.object.as_deref() == Some(object.as_str())) {
                            Some(i) => {
                                let old = std::mem::replace(&mut running[i], next);
                                old.stop.send_replace(true);
                                tokio::spawn(async move { let _ = old.task.await; });
                            }
                            None => running.push(next),
                        }
                        let _ = reply.send(Ok(()));
                        self.publish(&running);
                    }
                    Some(RunnerInput::Remove { object }) => {
                        if let Some(i) = running.iter().position(|r| r.object.as_deref() == Some(object.as_str())) {
                            let old = running.remove(i);
                            info!(reconciler = %old.plugin.info.name, plugin_object = %object, "reconciler stopped: its Plugin object is gone");
                            old.stop.send_replace(true);
                            tokio::spawn(async move { let _ = old.task.await; });
                        }
                        self.publish(&running);
                    }
                },
                Some(_) = progress_changed.next() => self.publish(&running),
            }
        }
        for r in running {
            r.stop.send_replace(true);
        }
    }

    /// Starts a reconciler; a swapped-in one (`catch_up`) is first told of
    /// every object of its kinds the store holds.
    fn start<A: Api>(
        &self,
        plugin: ReconcilerPlugin,
        api: Arc<A>,
        catch_up: bool,
        last_swap_error: Option<String>,
    ) -> Running {
        let reconciler = Reconciler::new(
            plugin.clone(),
            api,
            self.store.clone(),
            Config::default(),
            &self.report.metrics.queue,
        )
        .expect("the default queue config is valid");
        let progress = reconciler.progress();
        let (changes, rx) = mpsc::unbounded_channel();
        if catch_up {
            let index = self.store.read();
            for kind in plugin.watched_kinds() {
                for o in index.list(&kind, None) {
                    let _ = changes.send(Change::Added(o.key()));
                }
            }
        }
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(reconciler.run(rx, stop_rx));
        info!(reconciler = %plugin.info.name, version = %plugin.info.version, digest = %plugin.digest, "reconciler running");
        Running {
            plugin,
            changes,
            stop,
            task,
            progress,
            last_swap_error,
            object: None,
        }
    }

    /// A swapped-in reconciler, started; none when the file is unchanged or
    /// gone; why not when it is unreadable or not an acceptable component.
    async fn swap<A: Api>(
        &self,
        index: usize,
        running: &[Running],
        api: Arc<A>,
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
        Ok(Some(self.start(plugin, api, true, None)))
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
        self.report.set_reconcilers(list);
    }
}

/// Applies a manifest's object to the in-memory API server as a user
/// would (`kubectl apply`, `kubectl delete`).
pub fn seed(api: &MemoryApi, e: &Event) {
    let outcome = match e {
        Event::Apply(o) => serde_json::from_str(&o.json)
            .map_err(|e| e.to_string())
            .and_then(|v| api.put(v).map(|_| ()).map_err(|e| e.to_string())),
        Event::Delete(k) => api.remove(k).map(|_| ()).map_err(|e| e.to_string()),
    };
    if let Err(why) = outcome {
        warn!(error = %why, "object not put into the in-memory API server");
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
