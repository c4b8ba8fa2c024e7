//! What the running host knows about itself: readiness, the loaded plugin
//! and why the last swap failed, manifest errors, diagnostics, NACKs, live
//! streams, reconcilers, metrics.
//!
//! The controller thread, the xDS event consumer ([`xds`]) and the
//! reconciler runner write it; the admin endpoint and status write-back
//! read it. Nothing reads back into the pipeline from here.

pub mod metrics;
pub mod xds;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};
use serde::Serialize;
use tokio::sync::watch;

use crate::ir::{self, DiagnosticSet};
use crate::plugin::Plugins;
use crate::source::files::ManifestError;
use crate::store::ObjectKey;
use crate::xds::{Protocol, Snapshot};
use metrics::Metrics;

/// Published snapshots whose timing is remembered (for push/ACK latency).
const TIMED_VERSIONS: usize = 256;
/// Plugin load attempts remembered for /debug/plugins.
const HISTORY: usize = 32;

/// A loaded plugin, as /debug/plugins shows it.
#[derive(Clone, Debug, Serialize)]
pub struct PluginStatus {
    pub name: String,
    /// "translator" or "policy".
    pub world: &'static str,
    pub version: String,
    /// `sha256:<hex>` of the component bytes.
    pub digest: String,
    /// Where it was loaded from.
    pub source: String,
    /// When it started serving (RFC 3339, UTC).
    pub loaded_at: String,
    pub contract: String,
    /// What it reads (translators: roots included; policies: `reads`).
    pub watches: Vec<String>,
    pub roots: Vec<String>,
    /// Policies: the listeners and domains they run for (empty: all).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub domains: Vec<String>,
    /// The operator's configuration (JSON).
    pub config: serde_json::Value,
    /// Calls since it was loaded, and those that failed, by reason.
    pub calls: u64,
    pub failures: u64,
    pub failure_reasons: BTreeMap<String, u64>,
    /// Why the latest attempt to replace it failed; None when the latest
    /// attempt succeeded (or there was none).
    pub last_error: Option<PluginFailure>,
}

/// A plugin that was not swapped in, and why.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct PluginFailure {
    pub at: String,
    pub source: String,
    /// The loaded plugin the attempt concerned, when the source does not
    /// say (a configuration file).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub plugin: Option<String>,
    /// `sha256:<hex>` of the rejected bytes, when they could be read.
    pub digest: Option<String>,
    /// CamelCase cause: PluginInvalid, ContractMismatch, DryRunFailed, ...
    pub reason: String,
    pub message: String,
}

/// One attempt to load a plugin.
#[derive(Clone, Debug, Serialize)]
pub struct LoadAttempt {
    pub at: String,
    pub digest: Option<String>,
    /// "loaded" or "rejected".
    pub result: &'static str,
    pub message: String,
}

/// A manifest problem; the file keeps serving its last good objects.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ManifestProblem {
    /// `file:line`, what an editor jumps to.
    pub location: String,
    pub file: String,
    pub line: usize,
    pub message: String,
}

impl From<&ManifestError> for ManifestProblem {
    fn from(e: &ManifestError) -> Self {
        ManifestProblem {
            location: format!("{}:{}", e.file.display(), e.line),
            file: e.file.display().to_string(),
            line: e.line,
            message: e.message.clone(),
        }
    }
}

/// A response an xDS client rejected, until that client acknowledges a
/// later version of the type (or goes away).
#[derive(Clone, Debug, Serialize)]
pub struct NackRecord {
    pub stream: u64,
    pub node: String,
    pub protocol: &'static str,
    pub type_url: String,
    /// The snapshot version that was rejected.
    pub version: String,
    pub message: String,
    pub resources: Vec<String>,
    /// The Kubernetes objects behind the rejected resources.
    pub objects: Vec<ObjectKey>,
    pub at: String,
}

/// One live xDS stream.
#[derive(Clone, Debug, Serialize)]
pub struct StreamStatus {
    pub stream: u64,
    pub node: String,
    pub protocol: &'static str,
    pub opened_at: String,
    /// Type URL -> the latest snapshot version the client acknowledged.
    pub acked: BTreeMap<String, String>,
    /// Type URL -> the latest snapshot version pushed.
    pub pushed: BTreeMap<String, String>,
}

/// When a snapshot version was published, and when the change that led to
/// it was first seen.
#[derive(Clone, Copy, Debug)]
pub struct Published {
    pub version: u64,
    pub at: Instant,
    pub change_at: Option<Instant>,
}

/// What `/debug/reconcilers` shows of one reconciler plugin.
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

#[derive(Default)]
struct Inner {
    /// Translators, then policies in chain order.
    plugins: Vec<PluginStatus>,
    history: VecDeque<LoadAttempt>,
    manifest_errors: Vec<ManifestProblem>,
    diagnostics: DiagnosticSet,
    /// What translators say about objects, for their status.
    statuses: Vec<crate::translate::StatusOf>,
    reconcilers: Vec<ReconcilerStatus>,
    nacks: BTreeMap<(u64, String), NackRecord>,
    streams: BTreeMap<u64, StreamStatus>,
    failed: Option<String>,
}

/// Ends the round it was made for (also when the round panics).
pub struct RoundGuard<'a>(&'a Report);

impl Drop for RoundGuard<'_> {
    fn drop(&mut self) {
        *self.0.round.lock() = None;
    }
}

/// The roots of the served plugin, for status write-back: each object as
/// last seen, and whether the plugin claimed it.
pub type Roots = Arc<Vec<(Arc<crate::store::Object>, bool)>>;

/// Shared state of a running `isobar serve`.
pub struct Report {
    pub metrics: Metrics,
    /// Set when a status writer reads [`roots`](Self::roots): building the
    /// list costs a pass over the roots each round.
    wants_roots: std::sync::atomic::AtomicBool,
    roots: watch::Sender<Roots>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    ready: watch::Sender<bool>,
    /// Bumped on every change, so waiters re-check their condition.
    generation: watch::Sender<u64>,
    /// Bumped only when diagnostics or outstanding NACKs change: what
    /// status write-back follows (not every ACK and stream).
    reports: watch::Sender<u64>,
    inner: RwLock<Inner>,
    published: Mutex<VecDeque<Published>>,
    /// When the controller's round in progress started (None: idle), and
    /// how long a round may run before the host calls itself stuck.
    round: Mutex<Option<Instant>>,
    stall_after: Mutex<Option<Duration>>,
    /// Told of every NACK (the controller, which rolls back a Plugin
    /// whose output a data plane rejects).
    nack_listener: Mutex<Option<NackListener>>,
}

/// See [`Report::on_nack`].
pub type NackListener = Box<dyn Fn(&NackRecord) + Send + Sync>;

impl Report {
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>) -> Self {
        Report {
            metrics: Metrics::new(),
            wants_roots: Default::default(),
            roots: watch::channel(Roots::default()).0,
            snapshots,
            ready: watch::channel(false).0,
            generation: watch::channel(0).0,
            reports: watch::channel(0).0,
            inner: RwLock::new(Inner::default()),
            published: Mutex::new(VecDeque::new()),
            round: Mutex::new(None),
            stall_after: Mutex::new(None),
            nack_listener: Mutex::new(None),
        }
    }

    /// Calls `listener` with every NACK recorded from now on.
    pub fn on_nack(&self, listener: NackListener) {
        *self.nack_listener.lock() = Some(listener);
    }

    /// A round running longer than `limit` makes the host unhealthy until
    /// it ends (a watchdog: every plugin call has a deadline, so a round
    /// far past them is stuck in the host).
    pub fn set_stall_after(&self, limit: Duration) {
        *self.stall_after.lock() = Some(limit);
    }

    /// The controller started a round; it ends when the guard drops.
    pub fn round_started(&self) -> RoundGuard<'_> {
        *self.round.lock() = Some(Instant::now());
        RoundGuard(self)
    }

    /// How long the round in progress has run past the stall limit.
    fn stuck(&self) -> Option<String> {
        let limit = (*self.stall_after.lock())?;
        let running = self.round.lock().map(|at| at.elapsed())?;
        (running > limit).then(|| {
            format!(
                "a controller round has run for {:.1}s (more than {:.1}s)",
                running.as_secs_f64(),
                limit.as_secs_f64()
            )
        })
    }

    fn changed(&self) {
        self.generation.send_modify(|g| *g += 1);
    }

    /// Notified when diagnostics or outstanding NACKs change.
    pub fn subscribe_reports(&self) -> watch::Receiver<u64> {
        self.reports.subscribe()
    }

    fn reports_changed(&self) {
        self.reports.send_modify(|g| *g += 1);
        self.changed();
    }

    /// The roots as of the latest round; subscribing asks the controller
    /// to publish them from now on.
    pub fn subscribe_roots(&self) -> watch::Receiver<Roots> {
        self.wants_roots
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.roots.subscribe()
    }

    pub fn wants_roots(&self) -> bool {
        self.wants_roots.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_roots(&self, roots: Vec<(Arc<crate::store::Object>, bool)>) {
        self.roots.send_if_modified(|current| {
            if **current == roots {
                false
            } else {
                *current = Arc::new(roots);
                true
            }
        });
    }

    /// The snapshot being served.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// True once the first complete snapshot has been published.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub fn mark_ready(&self) {
        if !self.is_ready() {
            self.ready.send_replace(true);
            self.metrics.ready.set(1);
            self.changed();
        }
    }

    /// Why the host cannot work any more (the controller died, or its
    /// round is stuck), if it cannot.
    pub fn failure(&self) -> Option<String> {
        self.inner.read().failed.clone().or_else(|| self.stuck())
    }

    pub fn set_failed(&self, why: String) {
        self.inner.write().failed = Some(why);
        self.changed();
    }

    /// Waits until `cond` holds, re-checking on every status change and
    /// every new snapshot; false if `limit` passes first.
    pub async fn wait_until(&self, limit: Duration, cond: impl Fn(&Report) -> bool) -> bool {
        let mut generation = self.generation.subscribe();
        let mut snapshots = self.snapshots.clone();
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            generation.borrow_and_update();
            snapshots.borrow_and_update();
            if cond(self) {
                return true;
            }
            tokio::select! {
                _ = generation.changed() => {}
                r = snapshots.changed() => if r.is_err() { return cond(self) },
                _ = tokio::time::sleep_until(deadline) => return cond(self),
            }
        }
    }

    // ---- plugins ----------------------------------------------------------

    /// The first translator (the only one, mostly).
    pub fn plugin(&self) -> Option<PluginStatus> {
        self.inner.read().plugins.first().cloned()
    }

    /// Every loaded plugin: translators, then policies in chain order.
    pub fn plugins(&self) -> Vec<PluginStatus> {
        self.inner.read().plugins.clone()
    }

    pub fn plugin_history(&self) -> Vec<LoadAttempt> {
        self.inner.read().history.iter().cloned().collect()
    }

    /// The plugins now serving. One that was serving before (same name and
    /// digest and configuration) keeps its counters and load time.
    pub fn plugins_loaded(&self, plugins: &Plugins) {
        let at = rfc3339(SystemTime::now());
        let kinds = |ks: &[crate::plugin::KindRef]| -> Vec<String> {
            ks.iter()
                .map(|k| format!("{}/{}", k.api_version, k.kind))
                .collect()
        };
        let config = |c: &str| serde_json::from_str(c).unwrap_or(serde_json::Value::Null);
        let fresh = |name: &str,
                     world: &'static str,
                     version: &str,
                     digest: &str,
                     source: &str,
                     contract: String,
                     c: &str| PluginStatus {
            name: name.to_string(),
            world,
            version: version.to_string(),
            digest: format!("sha256:{digest}"),
            source: source.to_string(),
            loaded_at: at.clone(),
            contract,
            watches: vec![],
            roots: vec![],
            listeners: vec![],
            domains: vec![],
            config: config(c),
            calls: 0,
            failures: 0,
            failure_reasons: BTreeMap::new(),
            last_error: None,
        };
        let mut next: Vec<PluginStatus> = Vec::new();
        for p in &plugins.translators {
            let mut s = fresh(
                &p.info.name,
                "translator",
                &p.info.version,
                &p.digest,
                &p.source,
                p.contract(),
                &p.config,
            );
            s.watches = kinds(&p.info.watches);
            s.roots = kinds(&p.info.roots);
            next.push(s);
        }
        for p in &plugins.policies {
            let mut s = fresh(
                &p.info.name,
                "policy",
                &p.info.version,
                &p.digest,
                &p.source,
                p.contract(),
                &p.config,
            );
            s.watches = kinds(&p.info.reads);
            s.listeners = p.info.listeners.clone();
            s.domains = p.info.domains.clone();
            next.push(s);
        }
        let mut inner = self.inner.write();
        for s in &mut next {
            let same = inner
                .plugins
                .iter()
                .find(|o| o.name == s.name && o.digest == s.digest && o.config == s.config);
            if let Some(o) = same {
                s.loaded_at = o.loaded_at.clone();
                s.calls = o.calls;
                s.failures = o.failures;
                s.failure_reasons = o.failure_reasons.clone();
                s.last_error = o.last_error.clone();
            } else {
                push_bounded(
                    &mut inner.history,
                    LoadAttempt {
                        at: at.clone(),
                        digest: Some(s.digest.clone()),
                        result: "loaded",
                        message: format!("{} {} {} serving", s.world, s.name, s.version),
                    },
                );
            }
        }
        inner.plugins = next;
        drop(inner);
        self.changed();
    }

    /// Adds one round's calls to a plugin's counters.
    pub fn plugin_round(&self, name: &str, stats: &crate::translate::RoundStats) {
        if stats.calls == 0 {
            return;
        }
        let mut inner = self.inner.write();
        if let Some(p) = inner.plugins.iter_mut().find(|p| p.name == name) {
            p.calls += stats.calls as u64;
            p.failures += stats.failures as u64;
            for (r, n) in &stats.failure_reasons {
                *p.failure_reasons.entry(r.clone()).or_default() += *n as u64;
            }
        }
    }

    pub fn plugin_rejected(&self, failure: PluginFailure) {
        let mut inner = self.inner.write();
        push_bounded(
            &mut inner.history,
            LoadAttempt {
                at: failure.at.clone(),
                digest: failure.digest.clone(),
                result: "rejected",
                message: format!("{}: {}", failure.reason, failure.message),
            },
        );
        // On the plugin loaded from the same file (or, for a configuration
        // file, the first).
        let i = inner
            .plugins
            .iter()
            .position(|p| p.source == failure.source || failure.plugin.as_ref() == Some(&p.name))
            .unwrap_or(0);
        if let Some(p) = inner.plugins.get_mut(i) {
            p.last_error = Some(failure);
        }
        drop(inner);
        self.changed();
    }

    // ---- manifests and diagnostics ------------------------------------------

    pub fn manifest_errors(&self) -> Vec<ManifestProblem> {
        self.inner.read().manifest_errors.clone()
    }

    pub fn set_manifest_errors(&self, errors: Vec<ManifestProblem>) {
        self.metrics.manifest_errors.set(errors.len() as i64);
        let mut inner = self.inner.write();
        if inner.manifest_errors != errors {
            inner.manifest_errors = errors;
            drop(inner);
            self.changed();
        }
    }

    /// The pipeline's diagnostics (plugin output, failed calls, conflicts,
    /// validation), as of the latest round, in order.
    pub fn diagnostics(&self) -> Vec<ir::Diagnostic> {
        self.inner.read().diagnostics.keys().cloned().collect()
    }

    /// The same, shared with the pipeline (O(1)).
    pub fn diagnostic_set(&self) -> DiagnosticSet {
        self.inner.read().diagnostics.clone()
    }

    /// Takes the pipeline's diagnostics; a set the report already holds
    /// (the same persistent map) costs nothing.
    pub fn set_diagnostics(&self, diagnostics: DiagnosticSet) {
        let mut inner = self.inner.write();
        if inner.diagnostics.ptr_eq(&diagnostics) || inner.diagnostics == diagnostics {
            return;
        }
        let mut by_severity: BTreeMap<&'static str, i64> =
            [("error", 0), ("warning", 0), ("info", 0)]
                .into_iter()
                .collect();
        for d in diagnostics.keys() {
            *by_severity.entry(d.severity.as_str()).or_default() += 1;
        }
        inner.diagnostics = diagnostics;
        drop(inner);
        for (severity, n) in by_severity {
            self.metrics
                .diagnostics
                .get_or_create(&[("severity", severity.to_string())])
                .set(n);
        }
        self.reports_changed();
    }

    /// What the translators say about objects (written by the leader).
    pub fn statuses(&self) -> Vec<crate::translate::StatusOf> {
        self.inner.read().statuses.clone()
    }

    pub fn set_statuses(&self, statuses: Vec<crate::translate::StatusOf>) {
        let mut inner = self.inner.write();
        if inner.statuses == statuses {
            return;
        }
        inner.statuses = statuses;
        drop(inner);
        self.reports_changed();
    }

    // ---- reconcilers -------------------------------------------------------------

    /// The reconciler plugins running, with what they have done.
    pub fn reconcilers(&self) -> Vec<ReconcilerStatus> {
        self.inner.read().reconcilers.clone()
    }

    pub fn set_reconcilers(&self, list: Vec<ReconcilerStatus>) {
        self.inner.write().reconcilers = list;
        self.changed();
    }

    // ---- xDS ------------------------------------------------------------------

    /// Outstanding NACKs: responses a client rejected and has not replaced
    /// with an acknowledged version since.
    pub fn nacks(&self) -> Vec<NackRecord> {
        self.inner.read().nacks.values().cloned().collect()
    }

    /// NACKs as diagnostics on the objects behind the rejected resources.
    pub fn nack_diagnostics(&self) -> Vec<ir::Diagnostic> {
        let mut out: Vec<ir::Diagnostic> = Vec::new();
        for n in self.inner.read().nacks.values() {
            for object in &n.objects {
                out.push(ir::Diagnostic::error(
                    ir::ObjectRef::of(object),
                    "RejectedByDataPlane",
                    format!(
                        "{} ({} xDS) rejected {} {} of version {}: {}",
                        n.node,
                        n.protocol,
                        metrics::short_type(&n.type_url),
                        n.resources.join(", "),
                        n.version,
                        n.message
                    ),
                ));
            }
        }
        out.sort_by(|a, b| {
            (&a.object.namespace, &a.object.name, &a.message).cmp(&(
                &b.object.namespace,
                &b.object.name,
                &b.message,
            ))
        });
        out.dedup();
        out
    }

    pub fn streams(&self) -> Vec<StreamStatus> {
        self.inner.read().streams.values().cloned().collect()
    }

    pub fn stream_opened(&self, stream: u64, node: &str, protocol: Protocol) {
        self.inner.write().streams.insert(
            stream,
            StreamStatus {
                stream,
                node: node.to_string(),
                protocol: protocol.as_str(),
                opened_at: rfc3339(SystemTime::now()),
                acked: BTreeMap::new(),
                pushed: BTreeMap::new(),
            },
        );
        self.changed();
    }

    pub fn stream_closed(&self, stream: u64) {
        let mut inner = self.inner.write();
        inner.streams.remove(&stream);
        let nacks = inner.nacks.len();
        inner.nacks.retain(|(s, _), _| *s != stream);
        let cleared = inner.nacks.len() != nacks;
        drop(inner);
        if cleared {
            self.reports_changed();
        } else {
            self.changed();
        }
    }

    pub fn stream_pushed(&self, stream: u64, type_url: &str, version: &str) {
        if let Some(s) = self.inner.write().streams.get_mut(&stream) {
            s.pushed.insert(type_url.to_string(), version.to_string());
        }
    }

    pub fn stream_acked(&self, stream: u64, type_url: &str, version: &str) {
        let mut inner = self.inner.write();
        if let Some(s) = inner.streams.get_mut(&stream) {
            s.acked.insert(type_url.to_string(), version.to_string());
        }
        let cleared = inner
            .nacks
            .remove(&(stream, type_url.to_string()))
            .is_some();
        drop(inner);
        if cleared {
            self.reports_changed();
        } else {
            self.changed();
        }
    }

    pub fn record_nack(&self, nack: NackRecord) {
        if let Some(listener) = &*self.nack_listener.lock() {
            listener(&nack);
        }
        self.inner
            .write()
            .nacks
            .insert((nack.stream, nack.type_url.clone()), nack);
        self.reports_changed();
    }

    // ---- timing -----------------------------------------------------------------

    pub fn record_published(&self, p: Published) {
        let mut published = self.published.lock();
        if published.len() == TIMED_VERSIONS {
            published.pop_front();
        }
        published.push_back(p);
    }

    /// When `version` was published, if it is recent enough to remember.
    pub fn published(&self, version: u64) -> Option<Published> {
        self.published
            .lock()
            .iter()
            .rev()
            .find(|p| p.version == version)
            .copied()
    }
}

fn push_bounded<T>(q: &mut VecDeque<T>, item: T) {
    if q.len() == HISTORY {
        q.pop_front();
    }
    q.push_back(item);
}

/// RFC 3339 in UTC with millisecond precision, for people reading /debug.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let at = |s: u64| rfc3339(SystemTime::UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(1_767_225_599), "2025-12-31T23:59:59.000Z");
    }
}
