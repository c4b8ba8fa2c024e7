//! The controller thread: the one writer of the store, and the driver of
//! the pipeline.
//!
//! It takes debounced batches of input (manifest files that changed, the
//! kube source's watch events, the in-memory API's writes), applies them to
//! the store, runs an incremental round and publishes the snapshot; it hands
//! the reconcilers what changed in their kinds; it swaps plugins.
//! Everything here is synchronous and CPU-bound, so it runs on its own
//! thread, never on the async runtime that serves xDS; streams only ever
//! see finished snapshots through the `watch` channel, so a slow plugin
//! never stalls them.
//!
//! In the cluster the first snapshot waits until every watch has listed
//! once, so `/readyz` means "serving what the cluster holds".

mod catalog;
mod swap;

pub use catalog::CatalogState;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::pipeline::{Pipeline, Round, host_kinds};
use crate::plugin::{Plugins, Runtime};
use crate::reconcile::MemoryApi;
use crate::reconcile::runner::RunnerInput;
use crate::report::metrics::{labels1, labels2, secs, short_type};
use crate::report::{ManifestProblem, Published, Report};
use crate::source::kube::{KubeSource, SourceUpdate, WatchSpec};
use crate::source::manifests::ManifestSet;
use crate::source::watch::{FsEvent, Watched};
use crate::store::{Change, Event, KindKey, Store, Writer};
use crate::xds::Snapshot;

/// The longest the first snapshot waits for Plugin objects (a pull has a
/// 30 s deadline; compiling a large component takes seconds).
const PLUGIN_OBJECTS_WAIT: Duration = Duration::from_secs(60);

/// What the controller thread is told.
#[derive(Debug)]
pub enum Input {
    /// Files changed on disk (manifests, plugin files).
    Files(FsEvent),
    /// Objects from the cluster (the kube source).
    Objects(SourceUpdate),
    /// Writes of the in-memory API server (reconcilers serving manifests).
    Written(Vec<Event>),
    /// A Plugin object's artifact, fetched (or not).
    Fetched(crate::catalog::Fetched),
    /// A data plane rejected snapshot `version` (Plugin objects on
    /// probation roll back).
    Nacked(Rejection),
    /// Shut down.
    Stop,
}

/// A data plane's NACK, as Plugin probation weighs it.
#[derive(Debug, Clone)]
pub struct Rejection {
    /// The snapshot version rejected.
    pub version: u64,
    pub type_url: String,
    /// The objects behind the rejected resources (empty: unknown).
    pub objects: Vec<crate::store::ObjectKey>,
    pub message: String,
}

/// How the controller batches input.
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
    /// Events from the cluster or the in-memory API, in the order they came.
    objects: Vec<Event>,
    synced: Vec<KindKey>,
    /// Plugin files (translators then policies) that may have changed.
    plugins: BTreeSet<usize>,
    /// Plugins (by name) whose configuration file may have changed.
    configs: BTreeSet<String>,
    /// Reconciler files that may have changed, by index.
    reconcilers: BTreeSet<usize>,
    /// Plugin objects' artifacts.
    fetched: Vec<crate::catalog::Fetched>,
    /// Snapshot versions a data plane rejected, with why.
    nacked: Vec<Rejection>,
    rescan: bool,
    stop: bool,
}

impl Batch {
    fn add(&mut self, input: Input, watched: &Watched) {
        match input {
            Input::Files(FsEvent::Paths { paths, at }) => {
                self.first_at.get_or_insert(at);
                for p in paths {
                    let reconcilers = watched.reconcilers_at(&p);
                    let plugins = watched.plugins_at(&p);
                    let configs = watched.configs_at(&p);
                    if plugins.is_empty() && configs.is_empty() && reconcilers.is_empty() {
                        self.manifests.insert(p);
                        continue;
                    }
                    self.plugins.extend(plugins);
                    self.configs.extend(configs);
                    self.reconcilers.extend(reconcilers);
                }
            }
            Input::Files(FsEvent::Rescan { at }) => {
                self.first_at.get_or_insert(at);
                self.rescan = true;
                self.plugins.extend(0..watched.plugins.len());
            }
            Input::Objects(update) => {
                self.first_at.get_or_insert(update.at);
                self.objects.extend(update.events);
                if update.first_sync {
                    self.synced.push(update.kind);
                }
            }
            Input::Written(events) => {
                self.first_at.get_or_insert_with(Instant::now);
                self.objects.extend(events);
            }
            Input::Fetched(f) => {
                self.first_at.get_or_insert_with(Instant::now);
                self.fetched.push(f);
            }
            Input::Nacked(rejection) => {
                self.first_at.get_or_insert_with(Instant::now);
                self.nacked.push(rejection);
            }
            Input::Stop => self.stop = true,
        }
    }
}

/// Where the controller's objects come from.
pub enum Origin {
    /// A manifest directory. With reconcilers, the objects of their kinds go
    /// to the in-memory API server (as `kubectl apply` would) and reach the
    /// store as its writes do.
    Files {
        set: ManifestSet,
        api: Option<(Arc<MemoryApi>, HashSet<KindKey>)>,
    },
    /// The kube source's watches.
    Cluster(ClusterState),
}

/// What the controller knows of the cluster's watches.
pub struct ClusterState {
    source: KubeSource,
    synced: HashSet<KindKey>,
    /// A plugin compiled and waiting for the first list of kinds it adds.
    pending: Option<swap::Pending>,
}

impl ClusterState {
    pub fn new(source: KubeSource) -> Self {
        ClusterState {
            source,
            synced: HashSet::new(),
            pending: None,
        }
    }

    fn all_synced(&self, kinds: &HashSet<KindKey>) -> bool {
        kinds.iter().all(|k| self.synced.contains(k))
    }
}

/// The kinds the plugins need in the store: what they read and what the
/// host reads itself.
pub fn kinds_of(plugins: &Plugins) -> HashSet<KindKey> {
    let mut kinds = plugins.kinds();
    kinds.extend(host_kinds());
    kinds
}

/// The watches the plugins need: their roots (which a label selector
/// narrows), what they read, and what the host reads itself.
pub fn watch_specs(plugins: &Plugins, extra: &HashSet<KindKey>) -> Vec<WatchSpec> {
    let roots = plugins.root_kinds();
    let mut kinds = kinds_of(plugins);
    kinds.extend(extra.iter().cloned());
    kinds
        .into_iter()
        .map(|kind| WatchSpec {
            root: roots.contains(&kind),
            kind,
        })
        .collect()
}

/// The reconcilers' side of the controller: the kinds they read and where
/// changes to them go.
pub struct Reconcilers {
    /// Every kind a running reconciler reads.
    pub kinds: HashSet<KindKey>,
    pub inputs: tokio::sync::mpsc::UnboundedSender<RunnerInput>,
    /// The `--reconciler` files' kinds.
    files: HashSet<KindKey>,
    /// The kinds of the reconcilers Plugin objects carry, by object.
    objects: std::collections::BTreeMap<String, HashSet<KindKey>>,
}

impl Reconcilers {
    pub fn new(
        kinds: HashSet<KindKey>,
        inputs: tokio::sync::mpsc::UnboundedSender<RunnerInput>,
    ) -> Self {
        Reconcilers {
            files: kinds.clone(),
            kinds,
            inputs,
            objects: Default::default(),
        }
    }

    /// A Plugin object's reconciler reads `kinds` (none: it is gone).
    fn set_object_kinds(&mut self, object: &str, kinds: Option<HashSet<KindKey>>) {
        match kinds {
            Some(k) => self.objects.insert(object.to_string(), k),
            None => self.objects.remove(object),
        };
        self.kinds = self.files.clone();
        for k in self.objects.values() {
            self.kinds.extend(k.iter().cloned());
        }
    }
}

pub struct Controller {
    runtime: Runtime,
    watched: Watched,
    origin: Origin,
    writer: Writer,
    pipeline: Pipeline,
    /// Kinds the current plugin or the host reads.
    kinds: HashSet<KindKey>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    report: Arc<Report>,
    debounce: Debounce,
    /// The manifest directory as read while the plugin compiled.
    prescanned: Option<Vec<Event>>,
    reconcilers: Option<Reconcilers>,
    /// The pipeline (by its translators) and roots generation last
    /// published.
    roots_published: Option<(Vec<String>, u64)>,
    /// The plugin a configuration swap under way concerns.
    swapping: Option<String>,
    /// Until when the first snapshot waits for the Plugin objects the
    /// cluster held at start: a replica must not serve (nor say it is
    /// ready) without the policies the cluster asks for.
    held: Option<Instant>,
    /// Plugin objects, when the host follows them.
    catalog: Option<CatalogState>,
}

/// What a [`Controller`] is built from.
pub struct Parts {
    pub runtime: Runtime,
    pub plugins: Plugins,
    pub watched: Watched,
    pub writer: Writer,
    pub snapshots: watch::Sender<Arc<Snapshot>>,
    pub report: Arc<Report>,
    pub debounce: Debounce,
    pub origin: Origin,
    pub prescanned: Option<Vec<Event>>,
    pub reconcilers: Option<Reconcilers>,
    /// Follow Plugin objects (in a cluster).
    pub catalog: Option<CatalogState>,
}

impl Controller {
    pub fn new(parts: Parts) -> Self {
        let kinds = kinds_of(&parts.plugins);
        let pipeline = Pipeline::with(parts.writer.store(), parts.plugins);
        Controller {
            kinds,
            pipeline,
            runtime: parts.runtime,
            watched: parts.watched,
            origin: parts.origin,
            writer: parts.writer,
            snapshots: parts.snapshots,
            report: parts.report,
            debounce: parts.debounce,
            prescanned: parts.prescanned,
            reconcilers: parts.reconcilers,
            roots_published: None,
            swapping: None,
            held: None,
            catalog: parts.catalog,
        }
    }

    /// The store this controller writes.
    pub fn store(&self) -> Store {
        self.writer.store()
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
            let report = self.report.clone();
            let _round = report.round_started();
            self.initial(std::mem::take(&mut early.objects));
            self.swap_all(&early.plugins, &early.configs, early.first_at);
        }
        self.swap_reconcilers(std::mem::take(&mut early.reconcilers));
        loop {
            let first = match self.held {
                // Held: wake at the bound even without input.
                Some(deadline) => {
                    match inputs.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                        Ok(input) => input,
                        Err(RecvTimeoutError::Timeout) => {
                            self.release_first();
                            continue;
                        }
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
                None => match inputs.recv() {
                    Ok(input) => input,
                    Err(_) => break,
                },
            };
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
                    Err(RecvTimeoutError::Disconnected) => batch.stop = true,
                }
            }
            if batch.stop {
                break;
            }
            let report = self.report.clone();
            let _round = report.round_started();
            self.process(batch);
            self.release_first();
        }
        info!("controller stopped");
    }

    /// In the cluster: applies the source's updates to the store until
    /// every watch the plugins need has listed once. Other input meanwhile
    /// is kept in `early` for after the first snapshot. False when told to
    /// stop.
    fn wait_for_sync(&mut self, inputs: &Receiver<Input>, early: &mut Batch) -> bool {
        const LOG_EVERY: Duration = Duration::from_secs(10);
        let started = Instant::now();
        let mut needed = self.kinds.clone();
        if let Some(r) = &self.reconcilers {
            needed.extend(r.kinds.iter().cloned());
        }
        if self.catalog.is_some() {
            needed.insert(crate::catalog::kind());
        }
        loop {
            let Origin::Cluster(cluster) = &mut self.origin else {
                return true;
            };
            if cluster.all_synced(&needed) {
                info!(
                    kinds = needed.len(),
                    objects = self.writer.store().len(),
                    elapsed_ms = started.elapsed().as_millis() as u64,
                    "every watch has synced"
                );
                return true;
            }
            match inputs.recv_timeout(LOG_EVERY) {
                Ok(Input::Objects(update)) => {
                    self.writer.apply_all(update.events);
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

    fn initial(&mut self, early_objects: Vec<Event>) {
        let started = Instant::now();
        let events = match (self.prescanned.take(), &mut self.origin) {
            (Some(events), _) => events,
            (None, Origin::Files { set, .. }) => set.rescan(),
            (None, Origin::Cluster(_)) => Vec::new(),
        };
        self.report.plugins_loaded(&self.pipeline.plugins());
        let mut changes = self.ingest(events);
        changes.extend(self.writer.apply_all(early_objects));
        if matches!(self.origin, Origin::Cluster(_)) {
            // What the watches listed while waiting for the sync.
            changes.extend(
                self.writer
                    .store()
                    .read()
                    .list_all()
                    .map(|o| Change::Added(o.key())),
            );
        }
        self.forward(&changes);
        let round = self.pipeline.rebuild();
        self.observe_round(&round);
        self.follow_all_plugins();
        if self.catalog_outstanding() {
            info!("the first snapshot waits for the Plugin objects to load");
            self.held = Some(Instant::now() + PLUGIN_OBJECTS_WAIT);
        }
        // Published (and ready) before it is said to be built.
        self.after_round(Some(started), "initial");
        info!(
            translators = self.pipeline.translators().count(),
            policies = self.pipeline.policies().len(),
            objects = self.writer.store().len(),
            calls = round.translation.calls,
            failures = round.translation.failures,
            resources = self.pipeline.snapshot().len(),
            version = round.version,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "first snapshot built"
        );
        self.log_unread_kinds();
    }

    /// Publishes the held first snapshot once every Plugin object the
    /// cluster held at start has loaded or been refused, or at the bound.
    fn release_first(&mut self) {
        if let Some(deadline) = self.held
            && (!self.catalog_outstanding() || Instant::now() >= deadline)
        {
            self.after_round(None, "initial");
        }
    }

    /// Applies source events to the store, except those of the in-memory
    /// API's kinds, which go to it (its writes come back as input).
    fn ingest(&mut self, events: Vec<Event>) -> Vec<Change> {
        let Origin::Files {
            api: Some((api, kinds)),
            ..
        } = &self.origin
        else {
            return self.writer.apply_all(events);
        };
        let (theirs, ours): (Vec<Event>, Vec<Event>) = events
            .into_iter()
            .partition(|e| kinds.contains(&event_kind(e)));
        for e in &theirs {
            crate::reconcile::runner::seed(api, e);
        }
        self.writer.apply_all(ours)
    }

    /// Says which kinds in the store nobody reads (kept: a plugin swapped
    /// in later may read them).
    fn log_unread_kinds(&self) {
        if !matches!(self.origin, Origin::Files { .. }) {
            return;
        }
        let mut read = self.kinds.clone();
        if let Some(r) = &self.reconcilers {
            read.extend(r.kinds.iter().cloned());
        }
        let store = self.writer.store();
        let index = store.read();
        let mut unread: std::collections::BTreeMap<String, usize> = Default::default();
        for kind in index.kinds().filter(|k| !read.contains(*k)) {
            unread.insert(kind.to_string(), index.list(kind, None).count());
        }
        if !unread.is_empty() {
            info!(kinds = ?unread, "manifests hold objects of kinds no loaded plugin reads; they are kept aside");
        }
    }

    fn process(&mut self, batch: Batch) {
        let at = batch.first_at;
        let events = match &mut self.origin {
            Origin::Files { set, .. } if batch.rescan => Some(set.rescan()),
            Origin::Files { set, .. } if !batch.manifests.is_empty() => {
                Some(set.refresh(&batch.manifests))
            }
            Origin::Files { .. } | Origin::Cluster(_) => None,
        };
        if let Origin::Cluster(cluster) = &mut self.origin {
            cluster.synced.extend(batch.synced.iter().cloned());
        }
        let mut changes = events.map(|e| self.ingest(e)).unwrap_or_default();
        changes.extend(self.writer.apply_all(batch.objects));
        let mut round_done = None;
        if changes.is_empty() {
            // Nothing the store holds changed; errors may have.
            self.publish_problems();
        } else {
            self.forward(&changes);
            let started = Instant::now();
            let round = self.pipeline.update(&changes);
            self.observe_round(&round);
            info!(
                changes = changes.len(),
                calls = round.translation.calls,
                failures = round.translation.failures,
                resources_changed = round.resources_changed,
                version = round.version,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "objects applied"
            );
            self.after_round(at, self.trigger());
            round_done = Some(round);
        }
        if let Some(round) = &round_done {
            self.watch_probation(round, at);
        }
        for rejection in &batch.nacked {
            self.plugin_output_rejected(rejection, at);
        }
        self.swap_when_synced();
        self.follow_plugins(&changes, at);
        for f in batch.fetched {
            self.plugin_fetched(f, at);
        }
        self.swap_all(&batch.plugins, &batch.configs, at);
        self.swap_reconcilers(batch.reconcilers);
    }

    /// Hands the reconcilers the changes to their kinds, in order.
    fn forward(&self, changes: &[Change]) {
        let Some(r) = &self.reconcilers else { return };
        let theirs: Vec<Change> = changes
            .iter()
            .filter(|c| r.kinds.contains(&c.key().kind))
            .cloned()
            .collect();
        if !theirs.is_empty() {
            let _ = r.inputs.send(RunnerInput::Changes(theirs));
        }
    }

    fn swap_reconcilers(&self, files: BTreeSet<usize>) {
        if let Some(r) = &self.reconcilers {
            for i in files {
                let _ = r.inputs.send(RunnerInput::Swap(i));
            }
        }
    }

    fn trigger(&self) -> &'static str {
        match self.origin {
            Origin::Files { .. } => "manifests",
            Origin::Cluster(_) => "cluster",
        }
    }

    fn observe_round(&self, round: &Round) {
        let m = &self.report.metrics;
        for p in &round.plugins {
            // A plugin names itself and its reasons: bounded as labels.
            let plugin_label = m.chosen_label(&p.plugin);
            let name = labels1("plugin", plugin_label.clone());
            let hist = m.plugin_call_duration.get_or_create_owned(&name);
            for d in &p.stats.call_durations {
                hist.observe(secs(*d));
            }
            m.plugin_calls
                .get_or_create(&name)
                .inc_by(p.stats.calls as u64);
            for (reason, n) in &p.stats.failure_reasons {
                m.plugin_failures
                    .get_or_create(&labels2(
                        "plugin",
                        plugin_label.clone(),
                        "reason",
                        m.chosen_label(reason),
                    ))
                    .inc_by(*n as u64);
            }
            self.report.plugin_round(&p.plugin, &p.stats);
        }
    }

    /// Publishes the pipeline's snapshot if it is new, and the problems.
    fn after_round(&mut self, change_at: Option<Instant>, trigger: &str) {
        if let Some(deadline) = self.held {
            let outstanding = self.catalog_outstanding();
            if outstanding && Instant::now() < deadline {
                self.publish_problems();
                return;
            }
            if outstanding {
                warn!(
                    waited_s = PLUGIN_OBJECTS_WAIT.as_secs(),
                    "Plugin objects still loading; serving without them"
                );
            } else {
                info!("Plugin objects loaded or refused; publishing the first snapshot");
            }
            self.held = None;
        }
        let snapshot = self.pipeline.snapshot();
        let current = self.snapshots.borrow().version;
        if snapshot.version != current {
            let snapshot = Arc::new(snapshot.clone());
            let m = &self.report.metrics;
            m.snapshot_version.set(snapshot.version as i64);
            for t in crate::xds::type_url::PUSH_ORDER {
                let n = snapshot.of_type(t).map_or(0, |r| r.len());
                m.snapshot_resources
                    .get_or_create(&labels1("type", short_type(t)))
                    .set(n as i64);
            }
            // Timing first: a stream may push before this thread runs again.
            self.report.record_published(Published {
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
            self.report.mark_ready();
        }
        self.publish_problems();
    }

    fn publish_problems(&mut self) {
        // Roots change only in rounds that translated something: an
        // endpoint-only round does not rebuild the list.
        let generation = Some((
            self.pipeline
                .translators()
                .map(|p| p.digest.clone())
                .collect(),
            self.pipeline.roots_generation(),
        ));
        if self.report.wants_roots() && self.roots_published != generation {
            self.report.set_roots(self.pipeline.roots());
            self.roots_published = generation;
        }
        if let Origin::Files { set, .. } = &self.origin {
            self.report
                .set_manifest_errors(set.errors().iter().map(ManifestProblem::from).collect());
        }
        self.report.set_diagnostics(self.pipeline.diagnostic_set());
        self.refresh_plugin_counters(false);
        let mut statuses = self.pipeline.statuses();
        statuses.extend(self.plugin_statuses());
        self.report.set_statuses(statuses);
    }
}

fn event_kind(e: &Event) -> KindKey {
    match e {
        Event::Apply(o) => o.kind_key(),
        Event::Delete(k) => k.kind.clone(),
    }
}

/// Runs the controller, turning a panic into a recorded failure (the host
/// keeps serving its last snapshot; /healthz reports the failure).
pub fn run_guarded(controller: Controller, inputs: Receiver<Input>) {
    let report = controller.report.clone();
    let result =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || controller.run(inputs)));
    if let Err(panic) = result {
        let why = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic".into());
        error!(error = %why, "controller thread panicked; serving the last snapshot, no more updates");
        report.set_failed(format!("controller panicked: {why}"));
    }
}
