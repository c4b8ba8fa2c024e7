//! The controller thread: the one writer of the store and the pipeline.
//!
//! It takes debounced batches of file events, turns manifest changes into
//! store events and an incremental round, and swaps plugins. Everything here
//! is synchronous and CPU-bound, so it runs on its own thread, never on the
//! async runtime that serves xDS; streams only ever see finished snapshots
//! through the `watch` channel, so a slow plugin never stalls them.
//!
//! Objects come from a manifest directory or from the cluster (the kube
//! source's watches); either way they reach the store as events. In the
//! cluster the first snapshot waits until every watch has listed once, so
//! `/readyz` means "serving what the cluster holds".
//!
//! Hot swap: the new component is compiled, checked against the contract,
//! and translates the whole current store in a pipeline of its own. Only if
//! every call succeeded does it replace the old pipeline, and its snapshot
//! (whose version continues the old one's) is published. Any failure keeps
//! the old plugin and snapshot and records why.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::manifests::ManifestSet;
use super::operators::OpInput;
use super::status::{ManifestProblem, PluginFailure, Published, Status, rfc3339};
use super::watch::{Input, Watched};
use crate::admin::metrics::{labels1, labels2, secs, short_type};
use crate::app::host_kinds;
use crate::pipeline::{Pipeline, Round};
use crate::plugin::{Plugin, Runtime};
use crate::source::kube::{KubeSource, WatchSpec};
use crate::store::{Event, KindKey, Object, ObjectKey};
use crate::xds::Snapshot;

/// How the controller batches file events.
#[derive(Clone, Copy, Debug)]
pub struct Debounce {
    /// A batch ends after this long without a new event...
    pub quiet: Duration,
    /// ...or this long after its first event, whichever comes first.
    pub max_delay: Duration,
}

impl Default for Debounce {
    fn default() -> Self {
        Debounce {
            quiet: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
        }
    }
}

/// One debounced batch.
#[derive(Default)]
struct Batch {
    first_at: Option<Instant>,
    manifests: BTreeSet<PathBuf>,
    /// Events from the cluster, in the order they came.
    objects: Vec<Event>,
    synced: Vec<KindKey>,
    plugin: bool,
    /// Reconciler files that may have changed, by index.
    reconcilers: BTreeSet<usize>,
    rescan: bool,
    stop: bool,
}

impl Batch {
    fn add(&mut self, input: Input, watched: &Watched) {
        match input {
            Input::Paths { paths, at } => {
                self.first_at.get_or_insert(at);
                for p in paths {
                    let reconcilers = watched.reconcilers_at(&p);
                    let is_plugin = watched.is_plugin(&p);
                    if !is_plugin && reconcilers.is_empty() {
                        self.manifests.insert(p);
                        continue;
                    }
                    self.plugin |= is_plugin;
                    self.reconcilers.extend(reconcilers);
                }
            }
            Input::Rescan { at } => {
                self.first_at.get_or_insert(at);
                self.rescan = true;
                self.plugin = true;
            }
            Input::Objects(update) => {
                self.first_at.get_or_insert(update.at);
                self.objects.extend(update.events);
                if update.first_sync {
                    self.synced.push(update.kind);
                }
            }
            Input::Stop => self.stop = true,
        }
    }
}

/// Where the controller's objects come from.
pub(crate) enum Origin {
    Files(ManifestSet),
    Cluster(ClusterObjects),
}

/// Everything the kube source has reported, whatever the current plugin
/// reads (a swap may want more), and which kinds have listed once.
pub(crate) struct ClusterObjects {
    source: KubeSource,
    objects: BTreeMap<ObjectKey, Arc<Object>>,
    synced: HashSet<KindKey>,
    /// A plugin compiled and waiting for the first list of kinds it adds.
    pending: Option<Pending>,
}

struct Pending {
    plugin: Plugin,
    source: String,
    at: Option<Instant>,
    kinds: HashSet<KindKey>,
}

impl ClusterObjects {
    pub fn new(source: KubeSource) -> Self {
        ClusterObjects {
            source,
            objects: BTreeMap::new(),
            synced: HashSet::new(),
            pending: None,
        }
    }

    fn record(&mut self, event: &Event) {
        match event {
            Event::Apply(o) => {
                self.objects.insert(o.key(), o.clone());
            }
            Event::Delete(k) => {
                self.objects.remove(k);
            }
        }
    }

    fn all_synced(&self, kinds: &HashSet<KindKey>) -> bool {
        kinds.iter().all(|k| self.synced.contains(k))
    }

    /// Stops holding kinds nobody reads any more.
    fn retain_kinds(&mut self, kinds: &HashSet<KindKey>) {
        self.objects.retain(|k, _| kinds.contains(&k.kind));
        self.synced.retain(|k| kinds.contains(k));
    }
}

/// The watches a plugin needs: its roots (which a label selector narrows),
/// what it reads, and what the host reads itself.
pub(crate) fn watch_specs(plugin: &Plugin, extra: &HashSet<KindKey>) -> Vec<WatchSpec> {
    let roots: HashSet<KindKey> = plugin.root_kinds().into_iter().collect();
    let mut kinds = kinds_of(plugin);
    kinds.extend(extra.iter().cloned());
    kinds
        .into_iter()
        .map(|kind| WatchSpec {
            root: roots.contains(&kind),
            kind,
        })
        .collect()
}

pub(crate) struct Controller {
    runtime: Runtime,
    watched: Watched,
    origin: Origin,
    pipeline: Pipeline,
    /// Kinds the current plugin or the host reads: what reaches the store.
    kinds: HashSet<KindKey>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    status: Arc<Status>,
    debounce: Debounce,
    /// The manifest directory as read while the plugin compiled.
    prescanned: Option<Vec<Event>>,
    /// The kinds reconciler plugins read, and where their objects go.
    op_kinds: HashSet<KindKey>,
    ops: Option<tokio::sync::mpsc::UnboundedSender<OpInput>>,
    /// The pipeline (by plugin) and roots generation last published.
    roots_published: Option<(String, u64)>,
}

fn kinds_of(plugin: &Plugin) -> HashSet<KindKey> {
    let mut kinds: HashSet<KindKey> = plugin.watched_kinds().into_iter().collect();
    kinds.extend(plugin.root_kinds());
    kinds.extend(host_kinds());
    kinds
}

impl Controller {
    pub fn new(
        runtime: Runtime,
        plugin: Plugin,
        watched: Watched,
        snapshots: watch::Sender<Arc<Snapshot>>,
        status: Arc<Status>,
        debounce: Debounce,
        origin: Origin,
        prescanned: Option<Vec<Event>>,
        operators: Option<(
            HashSet<KindKey>,
            tokio::sync::mpsc::UnboundedSender<OpInput>,
        )>,
    ) -> Self {
        let (op_kinds, ops) = match operators {
            Some((kinds, tx)) => (kinds, Some(tx)),
            None => (HashSet::new(), None),
        };
        Controller {
            op_kinds,
            ops,
            roots_published: None,
            runtime,
            kinds: kinds_of(&plugin),
            origin,
            prescanned,
            pipeline: Pipeline::new(plugin),
            watched,
            snapshots,
            status,
            debounce,
        }
    }

    /// Builds the first snapshot, then serves batches until told to stop
    /// (or every sender is gone).
    pub fn run(mut self, inputs: Receiver<Input>) {
        let mut early = Batch::default();
        if !self.wait_for_sync(&inputs, &mut early) {
            info!("controller stopped before the first snapshot");
            return;
        }
        {
            let status = self.status.clone();
            let _round = status.round_started();
            self.initial();
            if early.plugin {
                self.swap(early.first_at);
            }
        }
        if let Some(ops) = &self.ops {
            for i in std::mem::take(&mut early.reconcilers) {
                let _ = ops.send(OpInput::Swap(i));
            }
        }
        while let Ok(first) = inputs.recv() {
            let mut batch = Batch::default();
            batch.add(first, &self.watched);
            let started = Instant::now();
            while !batch.stop {
                let left = self.debounce.max_delay.saturating_sub(started.elapsed());
                if left.is_zero() {
                    break;
                }
                match inputs.recv_timeout(self.debounce.quiet.min(left)) {
                    Ok(input) => batch.add(input, &self.watched),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => {
                        batch.stop = true;
                    }
                }
            }
            if batch.stop {
                break;
            }
            let status = self.status.clone();
            let _round = status.round_started();
            self.process(batch);
        }
        info!("controller stopped");
    }

    /// In the cluster: takes the source's updates until every watch the
    /// plugin needs has listed once. A plugin change meanwhile is kept in
    /// `early` for after the first snapshot. False when told to stop.
    fn wait_for_sync(&mut self, inputs: &Receiver<Input>, early: &mut Batch) -> bool {
        const LOG_EVERY: Duration = Duration::from_secs(10);
        let started = Instant::now();
        loop {
            let Origin::Cluster(cluster) = &mut self.origin else {
                return true;
            };
            let mut needed = self.kinds.clone();
            needed.extend(self.op_kinds.iter().cloned());
            if cluster.all_synced(&needed) {
                info!(
                    kinds = self.kinds.len(),
                    objects = cluster.objects.len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "every watch has synced"
                );
                return true;
            }
            match inputs.recv_timeout(LOG_EVERY) {
                Ok(Input::Objects(update)) => {
                    for e in &update.events {
                        cluster.record(e);
                    }
                    if update.first_sync {
                        cluster.synced.insert(update.kind);
                    }
                }
                Ok(Input::Stop) | Err(RecvTimeoutError::Disconnected) => return false,
                Ok(other) => early.add(other, &self.watched),
                Err(RecvTimeoutError::Timeout) => {
                    let mut waiting: Vec<String> = needed
                        .iter()
                        .filter(|k| !cluster.synced.contains(*k))
                        .map(|k| k.to_string())
                        .collect();
                    waiting.sort();
                    info!(
                        ?waiting,
                        "waiting for watches to list before the first snapshot"
                    );
                }
            }
        }
    }

    /// Every object the source holds, whatever its kind.
    fn all_objects(&self) -> Vec<Arc<Object>> {
        match &self.origin {
            Origin::Files(set) => set.objects(),
            Origin::Cluster(c) => c.objects.values().cloned().collect(),
        }
    }

    fn initial(&mut self) {
        let started = Instant::now();
        let events = match (self.prescanned.take(), &mut self.origin) {
            (Some(events), _) => events,
            (None, Origin::Files(set)) => set.rescan(),
            (None, Origin::Cluster(c)) => c.objects.values().cloned().map(Event::Apply).collect(),
        };
        let plugin = self.pipeline.plugin().clone();
        self.status.plugin_loaded(&plugin);
        self.forward(&events);
        let events: Vec<Event> = events.into_iter().filter(|e| self.wanted(e)).collect();
        self.pipeline.load(events);
        let round = self.pipeline.rebuild();
        self.observe_round(&round);
        info!(
            plugin = %plugin.info.name,
            objects = self.pipeline.store().len(),
            calls = round.translation.calls,
            failures = round.translation.failures,
            resources = self.pipeline.snapshot().len(),
            version = round.version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "first snapshot built"
        );
        self.after_round(Some(started), "initial");
        self.log_unread_kinds();
    }

    /// Says which kinds in the manifests nobody reads (kept aside: a
    /// plugin swapped in later may read them).
    fn log_unread_kinds(&self) {
        let Origin::Files(set) = &self.origin else {
            return;
        };
        let mut unread: std::collections::BTreeMap<String, usize> = Default::default();
        for o in set.objects() {
            if !self.kinds.contains(&o.kind_key()) {
                *unread.entry(o.kind_key().to_string()).or_default() += 1;
            }
        }
        if !unread.is_empty() {
            info!(kinds = ?unread, "manifests hold objects of kinds the loaded plugin does not read; they are kept aside");
        }
    }

    fn wanted(&self, e: &Event) -> bool {
        let kind = match e {
            Event::Apply(o) => o.kind_key(),
            Event::Delete(k) => k.kind.clone(),
        };
        self.kinds.contains(&kind)
    }

    fn process(&mut self, batch: Batch) {
        let at = batch.first_at;
        let changed = match &mut self.origin {
            Origin::Files(set) if batch.rescan => Some(set.rescan()),
            Origin::Files(set) if !batch.manifests.is_empty() => {
                Some(set.refresh(&batch.manifests))
            }
            Origin::Files(_) => None,
            Origin::Cluster(cluster) => {
                for e in &batch.objects {
                    cluster.record(e);
                }
                cluster.synced.extend(batch.synced.iter().cloned());
                (!batch.objects.is_empty()).then_some(batch.objects)
            }
        };
        if let Some(events) = changed {
            self.forward(&events);
            let events: Vec<Event> = events.into_iter().filter(|e| self.wanted(e)).collect();
            if events.is_empty() {
                // Nothing the store holds changed; errors may have.
                self.publish_problems();
            } else {
                let started = Instant::now();
                let n = events.len();
                let round = self.pipeline.apply(events);
                self.observe_round(&round);
                info!(
                    events = n,
                    calls = round.translation.calls,
                    failures = round.translation.failures,
                    resources_changed = round.resources_changed,
                    version = round.version,
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "objects applied"
                );
                self.after_round(at, self.trigger());
            }
        }
        self.swap_when_synced();
        if batch.plugin {
            self.swap(at);
        }
        if let Some(ops) = &self.ops {
            for i in batch.reconcilers {
                let _ = ops.send(OpInput::Swap(i));
            }
        }
    }

    /// Hands the reconcilers' kinds to the operators, in order.
    fn forward(&self, events: &[Event]) {
        let Some(ops) = &self.ops else { return };
        let theirs: Vec<Event> = events
            .iter()
            .filter(|e| {
                let kind = match e {
                    Event::Apply(o) => o.kind_key(),
                    Event::Delete(k) => k.kind.clone(),
                };
                self.op_kinds.contains(&kind)
            })
            .cloned()
            .collect();
        if !theirs.is_empty() {
            let _ = ops.send(OpInput::Objects(theirs));
        }
    }

    fn trigger(&self) -> &'static str {
        match self.origin {
            Origin::Files(_) => "manifests",
            Origin::Cluster(_) => "cluster",
        }
    }

    /// Completes a swap that waited for the watches of kinds it adds.
    fn swap_when_synced(&mut self) {
        let Origin::Cluster(cluster) = &mut self.origin else {
            return;
        };
        if cluster
            .pending
            .as_ref()
            .is_some_and(|p| cluster.all_synced(&p.kinds))
            && let Some(p) = cluster.pending.take()
        {
            info!(plugin = %p.plugin.info.name, "the kinds the new plugin reads have synced");
            self.commit_swap(p.plugin, p.source, p.at, Instant::now(), Duration::ZERO);
        }
    }

    /// Tries the plugin file as it is now.
    fn swap(&mut self, at: Option<Instant>) {
        let path = self.watched.plugin.clone();
        let source = path.display().to_string();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // Being replaced, or removed: the old plugin keeps serving.
                info!(plugin = %source, "plugin file is gone; the loaded plugin keeps serving");
                return;
            }
            Err(e) => {
                return self.reject(source, None, "PluginUnreadable", e.to_string());
            }
        };
        let digest = hex::encode(Sha256::digest(&bytes));
        if digest == self.pipeline.plugin().digest {
            return;
        }
        let started = Instant::now();
        let plugin = match self.runtime.load(&bytes, &source) {
            Ok(p) => p,
            Err(e) => return self.reject(source, Some(digest), e.reason(), e.to_string()),
        };
        let compiled = started.elapsed();
        if let Origin::Cluster(cluster) = &mut self.origin {
            // A previous candidate still waiting for its watches is superseded.
            cluster.pending = None;
            let kinds = kinds_of(&plugin);
            if !cluster.all_synced(&kinds) {
                // Watch what it adds (keeping what the loaded plugin reads),
                // and swap once those kinds have listed.
                let mut specs = watch_specs(self.pipeline.plugin(), &self.op_kinds);
                specs.extend(watch_specs(&plugin, &self.op_kinds));
                info!(plugin = %plugin.info.name, "starting the watches the new plugin needs before swapping");
                cluster.source.want(specs);
                cluster.pending = Some(Pending {
                    plugin,
                    source,
                    at,
                    kinds,
                });
                return;
            }
        }
        self.commit_swap(plugin, source, at, started, compiled);
    }

    /// Translates the whole current store with `plugin`, off to the side,
    /// and swaps it in only if every call succeeded.
    fn commit_swap(
        &mut self,
        plugin: Plugin,
        source: String,
        at: Option<Instant>,
        started: Instant,
        compiled: Duration,
    ) {
        let digest = plugin.digest.clone();
        let kinds = kinds_of(&plugin);
        let mut next = Pipeline::new(plugin.clone());
        let old_version = self.pipeline.snapshot().version;
        next.continue_after(old_version);
        next.load(
            self.all_objects()
                .into_iter()
                .filter(|o| kinds.contains(&o.kind_key()))
                .map(Event::Apply),
        );
        let round = next.rebuild();
        self.observe_round_for(&plugin, &round);
        if round.translation.failures > 0 {
            let failed: Vec<String> = next
                .diagnostics()
                .into_iter()
                .filter(|d| round.translation.failure_reasons.contains_key(&d.reason))
                .take(3)
                .map(|d| {
                    format!(
                        "{} {}/{}: {}",
                        d.object.kind, d.object.namespace, d.object.name, d.message
                    )
                })
                .collect();
            let message = format!(
                "{} of {} translate calls failed ({}); first: {}",
                round.translation.failures,
                round.translation.calls,
                round
                    .translation
                    .failure_reasons
                    .iter()
                    .map(|(r, n)| format!("{r}: {n}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                failed.join("; ")
            );
            return self.reject(source, Some(digest), "TranslationFailed", message);
        }
        if next.snapshot().version <= old_version {
            // Nothing was built (an empty store): still a new version, so
            // clients drop what the old plugin produced.
            next.continue_after(old_version + 1);
        }
        let old = std::mem::replace(&mut self.pipeline, next);
        if let Origin::Cluster(cluster) = &mut self.origin {
            cluster.source.want(watch_specs(&plugin, &self.op_kinds));
            let mut keep = kinds.clone();
            keep.extend(self.op_kinds.iter().cloned());
            cluster.retain_kinds(&keep);
        }
        self.kinds = kinds;
        self.status
            .metrics
            .plugin_swaps
            .get_or_create(&labels1("result", "applied"))
            .inc();
        info!(
            plugin = %plugin.info.name,
            version = %plugin.info.version,
            digest = %plugin.digest,
            replaced = %old.plugin().info.name,
            calls = round.translation.calls,
            snapshot = self.pipeline.snapshot().version,
            compile_ms = compiled.as_millis() as u64,
            total_ms = started.elapsed().as_millis() as u64,
            "plugin swapped"
        );
        drop(old);
        self.after_round(at, "plugin");
        // Once its snapshot is out: whoever sees the new plugin sees it.
        self.status.plugin_loaded(&plugin);
        self.log_unread_kinds();
    }

    fn reject(&mut self, source: String, digest: Option<String>, reason: &str, message: String) {
        warn!(plugin = %source, reason, error = %message, "plugin not swapped; the loaded plugin keeps serving");
        self.status
            .metrics
            .plugin_swaps
            .get_or_create(&labels1("result", "rejected"))
            .inc();
        self.status.plugin_rejected(PluginFailure {
            at: rfc3339(SystemTime::now()),
            source,
            digest: digest.map(|d| format!("sha256:{d}")),
            reason: reason.to_string(),
            message,
        });
    }

    fn observe_round(&self, round: &Round) {
        let plugin = self.pipeline.plugin().clone();
        self.observe_round_for(&plugin, round);
    }

    fn observe_round_for(&self, plugin: &Plugin, round: &Round) {
        let m = &self.status.metrics;
        // A plugin names itself and its reasons: bounded as labels.
        let plugin_label = m.chosen_label(&plugin.info.name);
        let name = labels1("plugin", plugin_label.clone());
        let hist = m.plugin_call_duration.get_or_create_owned(&name);
        for d in &round.translation.call_durations {
            hist.observe(secs(*d));
        }
        m.plugin_calls
            .get_or_create(&name)
            .inc_by(round.translation.calls as u64);
        for (reason, n) in &round.translation.failure_reasons {
            m.plugin_failures
                .get_or_create(&labels2(
                    "plugin",
                    plugin_label.clone(),
                    "reason",
                    m.chosen_label(reason),
                ))
                .inc_by(*n as u64);
        }
    }

    /// Publishes the pipeline's snapshot if it is new, and the problems.
    fn after_round(&mut self, change_at: Option<Instant>, trigger: &str) {
        let snapshot = self.pipeline.snapshot();
        let current = self.snapshots.borrow().version;
        if snapshot.version != current {
            let snapshot = Arc::new(snapshot.clone());
            let m = &self.status.metrics;
            m.snapshot_version.set(snapshot.version as i64);
            for t in crate::xds::type_url::PUSH_ORDER {
                let n = snapshot.of_type(t).map_or(0, |r| r.len());
                m.snapshot_resources
                    .get_or_create(&labels1("type", short_type(t)))
                    .set(n as i64);
            }
            // Timing first: a stream may push before this thread runs again.
            self.status.record_published(Published {
                version: snapshot.version,
                at: Instant::now(),
                change_at,
            });
            if let Some(at) = change_at {
                m.change_to_snapshot
                    .get_or_create(&labels1("trigger", trigger))
                    .observe(secs(at.elapsed()));
            }
            self.snapshots.send_replace(snapshot);
        }
        if self.snapshots.borrow().version > 0 {
            self.status.mark_ready();
        }
        self.publish_problems();
    }

    fn publish_problems(&mut self) {
        // Roots change only in rounds that translated something: an
        // endpoint-only round does not rebuild the list.
        let generation = Some((
            self.pipeline.plugin().digest.clone(),
            self.pipeline.roots_generation(),
        ));
        if self.status.wants_roots() && self.roots_published != generation {
            self.status.set_roots(self.pipeline.roots());
            self.roots_published = generation;
        }
        if let Origin::Files(set) = &self.origin {
            self.status
                .set_manifest_errors(set.errors().iter().map(ManifestProblem::from).collect());
        }
        self.status.set_diagnostics(self.pipeline.diagnostics());
    }
}

/// Runs the controller, turning a panic into a recorded failure (the host
/// keeps serving its last snapshot; /healthz reports the failure).
pub(crate) fn run_guarded(controller: Controller, inputs: Receiver<Input>) {
    let status = controller.status.clone();
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || controller.run(inputs)));
    if let Err(panic) = result {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        error!(error = %why, "controller thread panicked; serving the last snapshot, no more updates");
        status.set_failed(format!("controller panicked: {why}"));
    }
}
