//! Runs reconciler plugins: the operator half of the host.
//!
//! ```text
//!  store changes ─► work queue ─► reconcile (Wasm, in parallel) ─► actions ─► Api
//!   (the one store:  (dedup, backoff,                                (apply, status,     │
//!    reads, owners)   requeue-after)                                  events, finalizers) │
//!        ▲                                                                                │
//!        └─────────────────── the writes come back as watch events ◄─────────────────────┘
//! ```
//!
//! A reconciler reads the host's one store (the same objects the
//! translators read) and is told what changed in it.
//!
//! What enqueues an object: a change to it; a change to an object it owns
//! (controller owner reference); a change to anything its last reconcile
//! read through `store` (gets, and lists by kind and namespace); its own
//! `requeue-after`; a failure (backoff). One worker per object at a time
//! (the queue's leases). The plugin never holds credentials: the host
//! carries out the actions, applying with field manager `isobar/<plugin>`
//! (never forcing: fields another manager owns are a conflict), only kinds
//! the plugin declared in `owns`, only in the owner's namespace, setting
//! the owner reference on every child, never taking over an object its
//! owner does not control, refusing to delete what the object does not
//! own, and stamping `lastTransitionTime` and
//! `observedGeneration` on the conditions a plugin writes (plugins have no
//! clock). A failed reconcile (plugin error, trap, timeout, refused action)
//! is retried with backoff and shows as a `Reconciled=False` condition.

pub mod api;
pub mod kube;
pub mod runner;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

pub use api::{Api, ApiError, MemoryApi, RecordedEvent, Write};
pub use kube::KubeApi;

use crate::plugin::reconciler::{Action, EventType};
use crate::plugin::{PluginError, ReadIndex, Reads, ReconcilerPlugin};
use crate::queue::{Lease, Outcome, QueueConfig, QueueMetrics, WorkQueue};
use crate::store::{Change, KindKey, Object, ObjectKey, Store};

/// The condition the host writes when reconciling an object fails.
pub const RECONCILED_CONDITION: &str = "Reconciled";

#[derive(Clone, Debug)]
pub struct Config {
    /// Plugin calls at once.
    pub concurrency: NonZeroUsize,
    pub queue: QueueConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            concurrency: std::thread::available_parallelism().unwrap_or(NonZeroUsize::MIN),
            queue: QueueConfig::default(),
        }
    }
}

/// What the reconciler has done so far, for tests, benchmarks and the admin
/// endpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Plugin calls made.
    pub reconciles: u64,
    pub failures: u64,
    /// Writes carried out, and writes skipped because nothing changed.
    pub writes: u64,
    pub unchanged_writes: u64,
    /// The last error per object still failing.
    pub failing: BTreeMap<ObjectKey, String>,
}

/// Why a reconcile of one object did not complete.
#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error("action refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl ReconcileError {
    fn reason(&self) -> String {
        match self {
            ReconcileError::Plugin(e) => e.reason().to_string(),
            ReconcileError::Refused(_) => "ActionRefused".into(),
            ReconcileError::Api(_) => "ApplyFailed".into(),
        }
    }
}

/// An object's controller owner reference (there is at most one).
fn controller_ref(o: &Object) -> Option<Value> {
    let v: Value = serde_json::from_str(&o.json).ok()?;
    v["metadata"]["ownerReferences"]
        .as_array()?
        .iter()
        .find(|r| r["controller"] == true)
        .cloned()
}

/// Whether `owner` is `o`'s controller (by uid).
fn controlled_by(o: &Object, owner: &Object) -> bool {
    controller_ref(o).is_some_and(|r| r["uid"] == owner.uid.as_str())
}

/// One reconciler plugin driven by a work queue, writing to an [`Api`].
pub struct Reconciler<A: Api> {
    plugin: ReconcilerPlugin,
    api: Arc<A>,
    store: Store,
    queue: WorkQueue<ObjectKey>,
    /// Who read what, and each object's reads from its last reconcile.
    readers: ReadIndex,
    reads: HashMap<ObjectKey, Reads>,
    kind: KindKey,
    owned: BTreeSet<KindKey>,
    manager: String,
    concurrency: usize,
    progress: watch::Sender<Progress>,
    /// The last event emitted per object: a reconcile that says the same
    /// thing again (it runs again after its own writes) is not a new event,
    /// as client-go's event correlator would also decide.
    last_event: HashMap<ObjectKey, (String, String, String)>,
}

impl<A: Api> Reconciler<A> {
    /// A reconciler reading `store`, carrying out its actions on `api`.
    pub fn new(
        plugin: ReconcilerPlugin,
        api: Arc<A>,
        store: Store,
        config: Config,
        metrics: &QueueMetrics,
    ) -> Result<Self, crate::queue::QueueError> {
        let queue = WorkQueue::new(plugin.info.name.clone(), config.queue, metrics)?;
        Ok(Reconciler {
            kind: plugin.kind(),
            owned: plugin.owned_kinds().into_iter().collect(),
            manager: format!("isobar/{}", plugin.info.name),
            plugin,
            api,
            store,
            queue,
            readers: ReadIndex::default(),
            reads: HashMap::new(),
            concurrency: config.concurrency.get(),
            progress: watch::channel(Progress::default()).0,
            last_event: HashMap::new(),
        })
    }

    /// Follows what the reconciler has done (updated after every batch).
    pub fn progress(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    /// Every kind this reconciler needs to see: what a source must watch.
    pub fn kinds(&self) -> Vec<KindKey> {
        self.plugin.watched_kinds()
    }

    /// Serves until `stop` turns true (or every change sender is gone and
    /// the queue has nothing left).
    pub async fn run(
        mut self,
        mut changes: mpsc::UnboundedReceiver<Change>,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut changes_open = true;
        loop {
            // Take in everything that happened.
            while let Ok(c) = changes.try_recv() {
                self.observe(c);
            }
            let mut batch = Vec::new();
            while batch.len() < self.concurrency && !self.queue.is_empty() {
                match self.queue.get().await {
                    Some(lease) => batch.push(lease),
                    None => return,
                }
            }
            if batch.is_empty() {
                tokio::select! {
                    _ = stop.changed() => {
                        if *stop.borrow() { break; }
                    }
                    c = changes.recv(), if changes_open => match c {
                        Some(c) => self.observe(c),
                        None => changes_open = false,
                    },
                    lease = self.queue.get() => match lease {
                        Some(lease) => batch.push(lease),
                        None => break,
                    },
                }
                if batch.is_empty() {
                    continue;
                }
            }
            self.work(batch).await;
        }
        self.queue.shutdown();
    }

    /// Enqueues whoever a change to the store concerns.
    fn observe(&mut self, change: Change) {
        let key = change.key().clone();
        // Owners are read from the object as it was (deletes) and is.
        let before = change.old().cloned();
        let after = self.store.get(&key);
        let mut wake: BTreeSet<ObjectKey> = BTreeSet::new();
        if key.kind == self.kind {
            if after.is_some() {
                wake.insert(key.clone());
            } else {
                if let Some(old) = self.reads.remove(&key) {
                    self.readers.unindex(&key, &old);
                }
                self.queue.forget(&key);
                self.last_event.remove(&key);
            }
        }
        if self.owned.contains(&key.kind) {
            for o in before.iter().chain(after.iter()) {
                wake.extend(self.controller_owner(o));
            }
        }
        wake.extend(self.readers.readers_of(&key).cloned());
        let index = self.store.read();
        let wake: Vec<ObjectKey> = wake
            .into_iter()
            .filter(|k| index.get(k).is_some())
            .collect();
        drop(index);
        for k in wake {
            let _ = self.queue.add(k);
        }
    }

    /// The reconciled object named by `o`'s controller owner reference.
    fn controller_owner(&self, o: &Object) -> Option<ObjectKey> {
        let r = controller_ref(o)?;
        let kind = KindKey::new(
            r["apiVersion"].as_str().unwrap_or_default(),
            r["kind"].as_str().unwrap_or_default(),
        );
        (kind == self.kind).then(|| {
            ObjectKey::new(
                kind,
                o.namespace.clone(),
                r["name"].as_str().unwrap_or_default().to_string(),
            )
        })
    }

    /// Reconciles a batch of objects at once, then carries out their
    /// actions in order.
    async fn work(&mut self, batch: Vec<Lease<ObjectKey>>) {
        let calls = batch.iter().map(|lease| {
            let (plugin, store) = (self.plugin.clone(), self.store.clone());
            let object = store.get(lease.key());
            tokio::task::spawn_blocking(move || object.map(|o| (plugin.reconcile(&store, &o), o)))
        });
        let outcomes = futures::future::join_all(calls).await;
        for (lease, outcome) in batch.into_iter().zip(outcomes) {
            let key = lease.key().clone();
            let Ok(Some((outcome, object))) = outcome else {
                // Gone since it was queued (or the call panicked: retry).
                lease.finish(Outcome::<String>::Done);
                continue;
            };
            if let Some(old) = self.reads.remove(&key) {
                self.readers.unindex(&key, &old);
            }
            self.readers.index(&key, &outcome.reads);
            self.reads.insert(key.clone(), outcome.reads);
            let result = match outcome.result {
                Ok(actions) => self.carry_out(&object, actions).await,
                Err(e) => Err(ReconcileError::Plugin(e)),
            };
            let mut progress = self.progress.borrow().clone();
            progress.reconciles += 1;
            let (writes, skipped) = match &result {
                Ok((_, w, s)) => (*w, *s),
                Err(_) => (0, 0),
            };
            progress.writes += writes;
            progress.unchanged_writes += skipped;
            match result {
                Ok((requeue, _, _)) => {
                    if progress.failing.remove(&key).is_some() {
                        self.set_reconciled(&object, None).await;
                    }
                    debug!(plugin = %self.plugin.info.name, object = %key, writes, "reconciled");
                    lease.finish(match requeue {
                        Some(after) => Outcome::<String>::Requeue(after),
                        None => Outcome::Done,
                    });
                }
                Err(e) => {
                    progress.failures += 1;
                    warn!(plugin = %self.plugin.info.name, object = %key, error = %e, "reconcile failed; retrying with backoff");
                    progress.failing.insert(key.clone(), e.to_string());
                    self.set_reconciled(&object, Some(&e)).await;
                    lease.finish(Outcome::Error(e.to_string()));
                }
            }
            self.progress.send_replace(progress);
        }
    }

    /// Carries out a plugin's actions in order; the first failure stops.
    /// Returns the requeue-after asked for and (writes, unchanged writes).
    async fn carry_out(
        &mut self,
        object: &Object,
        actions: Vec<Action>,
    ) -> Result<(Option<Duration>, u64, u64), ReconcileError> {
        let key = object.key();
        let (mut writes, mut skipped) = (0, 0);
        let mut count = |w: Write| match w {
            Write::Changed => writes += 1,
            Write::Unchanged => skipped += 1,
        };
        let mut requeue: Option<Duration> = None;
        for action in actions {
            match action {
                Action::Apply(json) => {
                    let child = self.child(object, &json)?;
                    count(self.api.apply(child, &self.manager).await?);
                }
                Action::PatchStatus(json) => {
                    let status = self.stamp(object, &json)?;
                    count(self.api.apply_status(&key, status, &self.manager).await?);
                }
                Action::Event(e) => {
                    let type_ = match e.type_ {
                        EventType::Normal => "Normal",
                        EventType::Warning => "Warning",
                    };
                    let said = (type_.to_string(), e.reason, e.message);
                    if self.last_event.get(&key) == Some(&said) {
                        continue;
                    }
                    self.api
                        .event(RecordedEvent {
                            regarding: key.clone(),
                            type_: said.0.clone(),
                            reason: said.1.clone(),
                            message: said.2.clone(),
                            reporting_controller: self.manager.clone(),
                        })
                        .await?;
                    self.last_event.insert(key.clone(), said);
                }
                Action::AddFinalizer(f) => count(self.api.set_finalizer(&key, &f, true).await?),
                Action::RemoveFinalizer(f) => count(self.api.set_finalizer(&key, &f, false).await?),
                Action::Delete(id) => {
                    let target = ObjectKey::new(
                        KindKey::new(&id.api_version, &id.kind),
                        id.namespace,
                        id.name,
                    );
                    // Only an object of an owned kind (so one the store
                    // watches), in the owner's namespace, that the owner
                    // controls. Not in the store: nothing to delete.
                    self.check_owned_kind("delete", &target.kind)?;
                    if target.namespace != object.namespace {
                        return Err(ReconcileError::Refused(format!(
                            "delete: {target} is not in {key}'s namespace"
                        )));
                    }
                    let Some(existing) = self.store.get(&target) else {
                        count(Write::Unchanged);
                        continue;
                    };
                    if !controlled_by(&existing, object) {
                        return Err(ReconcileError::Refused(format!(
                            "{target} is not owned by {key}: a plugin deletes only what its object owns"
                        )));
                    }
                    count(self.api.delete(&target).await?);
                }
                Action::RequeueAfterMs(ms) => {
                    let d = Duration::from_millis(ms);
                    requeue = Some(requeue.map_or(d, |r| r.min(d)));
                }
            }
        }
        Ok((requeue, writes, skipped))
    }

    /// Refuses a kind the plugin did not declare in `owns`.
    fn check_owned_kind(&self, action: &str, kind: &KindKey) -> Result<(), ReconcileError> {
        if self.owned.contains(kind) {
            return Ok(());
        }
        Err(ReconcileError::Refused(format!(
            "{action}: {kind} is not a kind the plugin owns (it declared {})",
            self.owned
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }

    /// A child object as the plugin gave it, with the owner reference set
    /// and its namespace checked (owner references do not cross namespaces).
    /// Only kinds the plugin owns, in the owner's namespace; an object that
    /// exists and is not the owner's own is not taken over.
    fn child(&self, owner: &Object, json: &str) -> Result<Value, ReconcileError> {
        let mut child: Value = serde_json::from_str(json)
            .map_err(|e| ReconcileError::Refused(format!("apply: not JSON: {e}")))?;
        if !child.is_object() || !child["metadata"].is_object() {
            return Err(ReconcileError::Refused(
                "apply: an object with metadata is needed".into(),
            ));
        }
        let kind = KindKey::new(
            child["apiVersion"].as_str().unwrap_or_default(),
            child["kind"].as_str().unwrap_or_default(),
        );
        self.check_owned_kind("apply", &kind)?;
        if owner.namespace.is_empty() {
            return Err(ReconcileError::Refused(format!(
                "apply: {} is cluster-scoped; a plugin creates objects only in its owner's namespace",
                owner.key()
            )));
        }
        match child["metadata"]["namespace"].as_str() {
            None | Some("") => child["metadata"]["namespace"] = json!(owner.namespace),
            Some(ns) if ns == owner.namespace => {}
            Some(ns) => {
                return Err(ReconcileError::Refused(format!(
                    "apply: child in namespace {ns}, owner in {}: owner references do not cross namespaces",
                    owner.namespace
                )));
            }
        }
        let key = ObjectKey::new(
            kind,
            owner.namespace.clone(),
            child["metadata"]["name"].as_str().unwrap_or_default(),
        );
        if let Some(existing) = self.store.get(&key)
            && !controlled_by(&existing, owner)
        {
            return Err(ReconcileError::Refused(format!(
                "apply: {key} exists and is not owned by {}: a plugin never takes objects over",
                owner.key()
            )));
        }
        child["metadata"]["ownerReferences"] = json!([{
            "apiVersion": owner.api_version,
            "kind": owner.kind,
            "name": owner.name,
            "uid": owner.uid,
            "controller": true,
            "blockOwnerDeletion": true,
        }]);
        Ok(child)
    }

    /// The status a plugin wrote, with the fields only the host can fill:
    /// a condition keeps its lastTransitionTime while its status stays.
    fn stamp(&self, object: &Object, json: &str) -> Result<Value, ReconcileError> {
        let mut status: Value = serde_json::from_str(json)
            .map_err(|e| ReconcileError::Refused(format!("patch-status: not JSON: {e}")))?;
        let current: Value = serde_json::from_str(&object.json).unwrap_or_default();
        let generation = current["metadata"]["generation"].clone();
        if let Some(conditions) = status.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in conditions {
                let previous = current["status"]["conditions"]
                    .as_array()
                    .and_then(|cs| cs.iter().find(|p| p["type"] == c["type"]));
                if c.get("lastTransitionTime").is_none() {
                    c["lastTransitionTime"] = match previous {
                        Some(p)
                            if p["status"] == c["status"]
                                && p.get("lastTransitionTime").is_some() =>
                        {
                            p["lastTransitionTime"].clone()
                        }
                        _ => json!(api::now()),
                    };
                }
                if c.get("observedGeneration").is_none() && !generation.is_null() {
                    c["observedGeneration"] = generation.clone();
                }
            }
        }
        Ok(status)
    }

    /// Writes (or clears) the host's own condition on a failing object.
    async fn set_reconciled(&self, object: &Object, error: Option<&ReconcileError>) {
        let condition = match error {
            Some(e) => {
                json!({"type": RECONCILED_CONDITION, "status": "False", "reason": e.reason(), "message": e.to_string()})
            }
            None => {
                json!({"type": RECONCILED_CONDITION, "status": "True", "reason": "Reconciled", "message": ""})
            }
        };
        let status = json!({"conditions": [condition]}).to_string();
        let Ok(status) = self.stamp(object, &status) else {
            return;
        };
        if let Err(e) = self
            .api
            .apply_status(&object.key(), status, &self.manager)
            .await
        {
            debug!(object = %object.key(), error = %e, "could not write the Reconciled condition");
        }
    }
}
