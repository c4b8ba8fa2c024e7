//! The controller thread: the one writer of the store and the pipeline.
//!
//! It takes debounced batches of file events, turns manifest changes into
//! store events and an incremental round, and swaps plugins. Everything here
//! is synchronous and CPU-bound, so it runs on its own thread, never on the
//! async runtime that serves xDS; streams only ever see finished snapshots
//! through the `watch` channel, so a slow plugin never stalls them.
//!
//! Hot swap: the new component is compiled, checked against the contract,
//! and translates the whole current store in a pipeline of its own. Only if
//! every call succeeded does it replace the old pipeline, and its snapshot
//! (whose version continues the old one's) is published. Any failure keeps
//! the old plugin and snapshot and records why.

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tracing::{error, info, warn};

use super::manifests::ManifestSet;
use super::status::{ManifestProblem, PluginFailure, Published, Status, rfc3339};
use super::watch::{Input, Watched};
use crate::admin::metrics::{labels1, labels2, secs, short_type};
use crate::app::host_kinds;
use crate::pipeline::{Pipeline, Round};
use crate::plugin::{Plugin, Runtime};
use crate::store::{Event, KindKey};
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
    plugin: bool,
    rescan: bool,
    stop: bool,
}

impl Batch {
    fn add(&mut self, input: Input, watched: &Watched) {
        match input {
            Input::Paths { paths, at } => {
                self.first_at.get_or_insert(at);
                for p in paths {
                    if watched.is_plugin(&p) {
                        self.plugin = true;
                    } else {
                        self.manifests.insert(p);
                    }
                }
            }
            Input::Rescan { at } => {
                self.first_at.get_or_insert(at);
                self.rescan = true;
                self.plugin = true;
            }
            Input::Stop => self.stop = true,
        }
    }
}

pub(crate) struct Controller {
    runtime: Runtime,
    watched: Watched,
    manifests: ManifestSet,
    pipeline: Pipeline,
    /// Kinds the current plugin or the host reads: what reaches the store.
    kinds: HashSet<KindKey>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    status: Arc<Status>,
    debounce: Debounce,
    /// The manifest directory as read while the plugin compiled.
    prescanned: Option<Vec<Event>>,
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
        prescanned: Option<(ManifestSet, Vec<Event>)>,
    ) -> Self {
        let (manifests, prescanned) = match prescanned {
            Some((set, events)) => (set, Some(events)),
            None => (ManifestSet::new(watched.manifests.clone()), None),
        };
        Controller {
            runtime,
            kinds: kinds_of(&plugin),
            manifests,
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
        self.initial();
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
            self.process(batch);
        }
        info!("controller stopped");
    }

    fn initial(&mut self) {
        let started = Instant::now();
        let events = match self.prescanned.take() {
            Some(events) => events,
            None => self.manifests.rescan(),
        };
        let plugin = self.pipeline.plugin().clone();
        self.status.plugin_loaded(&plugin);
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
        let mut unread: std::collections::BTreeMap<String, usize> = Default::default();
        for o in self.manifests.objects() {
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
        if batch.rescan || !batch.manifests.is_empty() {
            let events = if batch.rescan {
                self.manifests.rescan()
            } else {
                self.manifests.refresh(&batch.manifests)
            };
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
                    "manifests applied"
                );
                self.after_round(at, "manifests");
            }
        }
        if batch.plugin {
            self.swap(at);
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

        // Translate the whole current store with it, off to the side.
        let kinds = kinds_of(&plugin);
        let mut next = Pipeline::new(plugin.clone());
        let old_version = self.pipeline.snapshot().version;
        next.continue_after(old_version);
        next.load(
            self.manifests
                .objects()
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
        let name = labels1("plugin", plugin.info.name.clone());
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
                    plugin.info.name.clone(),
                    "reason",
                    reason.clone(),
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

    fn publish_problems(&self) {
        self.status.set_manifest_errors(
            self.manifests
                .errors()
                .iter()
                .map(ManifestProblem::from)
                .collect(),
        );
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
