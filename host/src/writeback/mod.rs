//! Status write-back: what the host learned about an object goes back onto
//! it, where `kubectl` shows it.
//!
//! * Ingress (which has no conditions): `status.loadBalancer` on every
//!   Ingress the plugin claimed, from a fixed address or from a Service of
//!   type LoadBalancer (Envoy's, as Contour does), and a Kubernetes Event
//!   for each error or warning diagnostic (rejected rules, missing
//!   backends, data-plane rejections).
//! * Every other root kind: `Accepted` and `Programmed` conditions with a
//!   reason and message, `observedGeneration`, and `lastTransitionTime`
//!   kept while a condition's status stays the same.
//!
//! Writes are server-side apply on the status subresource with field
//! manager `isobar`, so conditions other controllers own survive. Only the
//! leader writes. A pass runs when the roots, diagnostics or NACKs change
//! (coalesced over a short window); it looks only at roots whose inputs
//! changed, skips a write when the object already shows the desired status
//! (or when it was just written and the watch has not echoed it yet), and
//! spends writes from a token bucket. Failed writes are retried.

mod desired;

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use serde_json::Value;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

pub use desired::{
    Desired, desired_status, desired_status_except, is_ingress, plugin_status, shows,
};

use crate::ir;
use crate::queue::limit::TokenBucket;
use crate::report::Report;
use crate::report::metrics::{labels1, labels2};
use crate::store::{Object, ObjectKey};

/// The field manager of every status write.
pub const FIELD_MANAGER: &str = "isobar";

/// Where Ingress status addresses come from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum IngressAddress {
    /// Leave `status.loadBalancer` alone.
    #[default]
    None,
    /// These IPs or hostnames (`--ingress-status-address`).
    Fixed(Vec<String>),
    /// The load balancer addresses of this Service
    /// (`--ingress-status-service namespace/name`).
    Service { namespace: String, name: String },
}

#[derive(Clone, Debug)]
pub struct WritebackConfig {
    pub ingress_address: IngressAddress,
    /// Writes per second, and how many may go at once.
    pub qps: f64,
    pub burst: u32,
    /// Changes arriving within this window go out in one pass.
    pub window: Duration,
    /// Identifies this replica on Events (its pod name).
    pub instance: Option<String>,
}

impl Default for WritebackConfig {
    fn default() -> Self {
        WritebackConfig {
            ingress_address: IngressAddress::None,
            qps: 50.0,
            burst: 100,
            window: Duration::from_millis(100),
            instance: None,
        }
    }
}

/// A retry of failed writes waits this long.
const RETRY: Duration = Duration::from_secs(1);

/// Runs status write-back until the task is aborted.
pub async fn run(
    client: kube::Client,
    config: WritebackConfig,
    status: Arc<Report>,
    leader: watch::Receiver<bool>,
) {
    run_until(client, config, status, leader, std::future::pending()).await
}

/// Runs status write-back until `shutdown` completes: a pass under way
/// finishes first (its writes are not cut off mid-request), no new one
/// starts. Bound the wait for it: a pass may be waiting on the rate limit.
pub async fn run_until(
    client: kube::Client,
    config: WritebackConfig,
    status: Arc<Report>,
    leader: watch::Receiver<bool>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // A fixed address never changes: its sender lives as long as the
    // writer, so the receiver never reports the channel closed.
    let (_fixed, addresses) = match &config.ingress_address {
        IngressAddress::None => {
            let (tx, rx) = watch::channel(None);
            (Some(tx), rx)
        }
        IngressAddress::Fixed(list) => {
            let (tx, rx) = watch::channel(Some(list.clone()));
            (Some(tx), rx)
        }
        IngressAddress::Service { namespace, name } => (
            None,
            service_addresses(client.clone(), namespace.clone(), name.clone()),
        ),
    };
    let mut writer = StatusWriter::new(client, config, status);
    if writer.run(leader, addresses, shutdown).await {
        info!("status write-back stopped: shutting down");
    } else {
        warn!("status write-back stopped: an input channel closed");
    }
}

/// What went into a root's last evaluation: when none of it changed, the
/// root is not looked at again. An object from the API server is told by
/// its resourceVersion; only one without (never, from a watch) is hashed.
fn fingerprint(
    object: &Object,
    claimed: bool,
    diagnostics: &[&ir::Diagnostic],
    plugin_types: Option<&[&str]>,
) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    plugin_types.hash(&mut h);
    object.uid.hash(&mut h);
    object.resource_version.hash(&mut h);
    if object.resource_version.is_empty() {
        object.json.hash(&mut h);
    }
    claimed.hash(&mut h);
    for d in diagnostics {
        d.reason.hash(&mut h);
        d.message.hash(&mut h);
        (d.severity as u8).hash(&mut h);
    }
    h.finish()
}

struct Written {
    /// The object's resourceVersion when the status was written.
    resource_version: String,
    status: Value,
}

pub(crate) struct StatusWriter {
    client: kube::Client,
    config: WritebackConfig,
    status: Arc<Report>,
    recorder: Recorder,
    bucket: TokenBucket,
    evaluated: HashMap<ObjectKey, u64>,
    written: HashMap<ObjectKey, Written>,
    /// Plugin statuses written, by object and field manager.
    written_by_plugins: HashMap<(ObjectKey, String), Written>,
    /// Events published for the diagnostics that are still current:
    /// (uid, reason, message).
    announced: HashSet<(String, String, String)>,
    retry_at: Option<Instant>,
}

impl StatusWriter {
    pub(crate) fn new(client: kube::Client, config: WritebackConfig, status: Arc<Report>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_string(),
            instance: config.instance.clone(),
        };
        let interval = Duration::try_from_secs_f64(1.0 / config.qps.max(0.001))
            .unwrap_or(Duration::from_secs(1000));
        StatusWriter {
            recorder: Recorder::new(client.clone(), reporter),
            bucket: TokenBucket::new(interval, config.burst),
            client,
            config,
            status,
            evaluated: HashMap::new(),
            written: HashMap::new(),
            written_by_plugins: HashMap::new(),
            announced: HashSet::new(),
            retry_at: None,
        }
    }

    /// True when it stopped because `shutdown` completed.
    async fn run(
        &mut self,
        mut leader: watch::Receiver<bool>,
        mut addresses: watch::Receiver<Option<Vec<String>>>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> bool {
        tokio::pin!(shutdown);
        let mut roots = self.status.subscribe_roots();
        let mut changes = self.status.subscribe_reports();
        let mut was_leader = false;
        loop {
            let is_leader = *leader.borrow_and_update();
            self.status.metrics.leader.set(is_leader as i64);
            if is_leader != was_leader {
                info!(
                    leader = is_leader,
                    "status write-back {}",
                    if is_leader {
                        "starts: this replica leads"
                    } else {
                        "stops: another replica leads"
                    }
                );
                // A new leader looks at everything again: the last one may
                // have left work undone.
                self.evaluated.clear();
                was_leader = is_leader;
            }
            if is_leader {
                let current_roots = roots.borrow_and_update().clone();
                let current_addresses = addresses.borrow_and_update().clone();
                changes.borrow_and_update();
                self.pass(&current_roots, current_addresses.as_deref())
                    .await;
            }
            let retry = self.retry_at;
            tokio::select! {
                _ = &mut shutdown => return true,
                r = leader.changed() => if r.is_err() { return false },
                r = roots.changed(), if is_leader => if r.is_err() { return false },
                r = changes.changed(), if is_leader => if r.is_err() { return false },
                r = addresses.changed(), if is_leader => {
                    if r.is_err() { return false }
                    self.evaluated.clear();
                }
                _ = sleep_until(retry), if retry.is_some() && is_leader => {}
            }
            // Coalesce a burst of changes into one pass.
            tokio::select! {
                _ = &mut shutdown => return true,
                _ = tokio::time::sleep(self.config.window) => {}
            }
        }
    }

    /// One pass over the roots whose inputs changed since the last.
    pub(crate) async fn pass(
        &mut self,
        roots: &[(Arc<Object>, bool)],
        addresses: Option<&[String]>,
    ) {
        self.retry_at = None;
        let mut diagnostics = self.status.diagnostics();
        diagnostics.extend(self.status.nack_diagnostics());
        let mut by_object: HashMap<(&str, &str, &str), Vec<&ir::Diagnostic>> = HashMap::new();
        for d in &diagnostics {
            by_object
                .entry((&d.object.kind, &d.object.namespace, &d.object.name))
                .or_default()
                .push(d);
        }
        let status = self.status.clone();
        let m = &status.metrics;
        let plugin_statuses = status.statuses();
        // Condition types translators set on each object: the host leaves
        // them to the plugin.
        let mut plugin_types: HashMap<ObjectKey, Vec<&str>> = HashMap::new();
        for s in &plugin_statuses {
            let types = plugin_types.entry(s.object.key()).or_default();
            types.extend(s.status.conditions.iter().map(|c| c.type_.as_str()));
            types.sort();
            types.dedup();
        }
        let mut current_announcements = HashSet::new();
        let present: HashSet<ObjectKey> = roots.iter().map(|(o, _)| o.key()).collect();
        // Objects with something to say first: a rejection should not wait
        // behind a backlog of addresses.
        let mut order: Vec<&(Arc<Object>, bool)> = roots.iter().collect();
        order.sort_by_key(|(o, _)| {
            !by_object.contains_key(&(o.kind.as_str(), o.namespace.as_str(), o.name.as_str()))
        });
        let mut out_of_tokens = false;
        for (object, claimed) in order {
            let key = object.key();
            let diags = by_object
                .get(&(
                    object.kind.as_str(),
                    object.namespace.as_str(),
                    object.name.as_str(),
                ))
                .cloned()
                .unwrap_or_default();
            if *claimed && is_ingress(object) {
                for d in &diags {
                    if matches!(d.severity, ir::Severity::Error | ir::Severity::Warning) {
                        current_announcements.insert((
                            object.uid.clone(),
                            d.reason.clone(),
                            d.message.clone(),
                        ));
                    }
                }
            }
            let types = plugin_types.get(&key).map(Vec::as_slice);
            let print = fingerprint(object, *claimed, &diags, types);
            if out_of_tokens || self.evaluated.get(&key) == Some(&print) {
                continue;
            }
            let kind_label = || labels2("kind", object.kind.clone(), "result", "");
            let desired = desired_status_except(object, *claimed, &diags, addresses, types);
            let Some(desired) = desired else {
                self.evaluated.insert(key, print);
                continue;
            };
            let unchanged = desired.matches(object)
                || self.written.get(&key).is_some_and(|w| {
                    w.resource_version == object.resource_version && w.status == desired.status
                });
            if unchanged {
                let mut l = kind_label();
                l[1].1 = "unchanged".into();
                m.status_writes.get_or_create(&l).inc();
                self.evaluated.insert(key, print);
                continue;
            }
            // A pass spends what the bucket holds, then yields: the rest
            // waits for the next pass (soon), so a new rejection or a lost
            // lease is seen between writes, not after a whole backlog.
            let wait = self.bucket.reserve(Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
                out_of_tokens = true;
                self.retry_at = Some(Instant::now());
            }
            let mut l = kind_label();
            match self.write(object, &desired).await {
                Ok(()) => {
                    l[1].1 = "written".into();
                    debug!(object = %key, "status written");
                    self.written.insert(
                        key.clone(),
                        Written {
                            resource_version: object.resource_version.clone(),
                            status: desired.status,
                        },
                    );
                    self.evaluated.insert(key, print);
                }
                Err(e) => {
                    l[1].1 = "failed".into();
                    warn!(object = %key, error = %e, "status write failed; retrying");
                    self.evaluated.remove(&key);
                    self.retry_at = Some(Instant::now() + RETRY);
                }
            }
            m.status_writes.get_or_create(&l).inc();
        }
        self.evaluated.retain(|k, _| present.contains(k));
        self.written.retain(|k, _| present.contains(k));

        // What translators say, each under its own field manager, never
        // forced: another manager's fields are not taken.
        let mut wanted = HashSet::new();
        for s in &plugin_statuses {
            if out_of_tokens {
                break;
            }
            let manager = s.field_manager();
            let key = (s.object.key(), manager.clone());
            wanted.insert(key.clone());
            let desired = plugin_status(s);
            let l =
                |result: &str| labels2("kind", s.object.kind.clone(), "result", result.to_string());
            let unchanged = shows(&s.object, &desired)
                || self.written_by_plugins.get(&key).is_some_and(|w| {
                    w.resource_version == s.object.resource_version && w.status == desired.key
                });
            if unchanged {
                continue;
            }
            let wait = self.bucket.reserve(Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
                out_of_tokens = true;
                self.retry_at = Some(Instant::now());
            }
            match self.write_as(&s.object, &desired, &manager, false).await {
                Ok(()) => {
                    debug!(object = %key.0, manager = %manager, "plugin status written");
                    self.written_by_plugins.insert(
                        key,
                        Written {
                            resource_version: s.object.resource_version.clone(),
                            status: desired.key,
                        },
                    );
                    m.status_writes.get_or_create(&l("written")).inc();
                }
                Err(e) => {
                    warn!(object = %key.0, manager = %manager, error = %e, "plugin status write failed; retrying");
                    self.retry_at = Some(Instant::now() + RETRY);
                    m.status_writes.get_or_create(&l("failed")).inc();
                }
            }
        }
        self.written_by_plugins.retain(|k, _| wanted.contains(k));

        // Events: one per diagnostic while it lasts (the recorder folds
        // repeats into a series).
        let objects: HashMap<&str, &Object> =
            roots.iter().map(|(o, _)| (o.uid.as_str(), &**o)).collect();
        let mut fresh: Vec<&(String, String, String)> = current_announcements
            .iter()
            .filter(|a| !self.announced.contains(*a))
            .collect();
        fresh.sort();
        for a in fresh {
            let Some(object) = objects.get(a.0.as_str()) else {
                continue;
            };
            match self.announce(object, &a.1, &a.2).await {
                Ok(()) => {
                    m.status_events
                        .get_or_create(&labels1("reason", m.chosen_label(&a.1)))
                        .inc();
                    self.announced.insert(a.clone());
                }
                Err(e) => {
                    warn!(object = %object.key(), reason = %a.1, error = %e, "event not published; retrying");
                    self.retry_at = Some(Instant::now() + RETRY);
                }
            }
        }
        self.announced.retain(|a| current_announcements.contains(a));
    }

    async fn write(&self, object: &Object, desired: &Desired) -> Result<(), kube::Error> {
        self.write_as(object, desired, FIELD_MANAGER, true).await
    }

    /// Server-side apply of `status` as `manager`; forced only for the
    /// host's own fields.
    async fn write_as(
        &self,
        object: &Object,
        desired: &Desired,
        manager: &str,
        force: bool,
    ) -> Result<(), kube::Error> {
        let resource = crate::resource::api_resource(&object.api_version, &object.kind);
        // Cluster-scoped kinds (GatewayClass, Plugin) have no namespace.
        let (api, metadata): (Api<DynamicObject>, _) = if object.namespace.is_empty() {
            (
                Api::all_with(self.client.clone(), &resource),
                serde_json::json!({"name": object.name}),
            )
        } else {
            (
                Api::namespaced_with(self.client.clone(), &object.namespace, &resource),
                serde_json::json!({"name": object.name, "namespace": object.namespace}),
            )
        };
        let body = serde_json::json!({
            "apiVersion": object.api_version,
            "kind": object.kind,
            "metadata": metadata,
            "status": desired.status,
        });
        let params = PatchParams::apply(manager);
        let params = if force { params.force() } else { params };
        api.patch_status(&object.name, &params, &Patch::Apply(body))
            .await
            .map(|_| ())
    }

    async fn announce(
        &self,
        object: &Object,
        reason: &str,
        message: &str,
    ) -> Result<(), kube::Error> {
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(object.api_version.clone()),
            kind: Some(object.kind.clone()),
            name: Some(object.name.clone()),
            namespace: Some(object.namespace.clone()).filter(|n| !n.is_empty()),
            uid: Some(object.uid.clone()),
            resource_version: Some(object.resource_version.clone()).filter(|v| !v.is_empty()),
            ..Default::default()
        };
        // Event fields are bounded: reason 128 bytes, note 1 kB.
        let event = KubeEvent {
            type_: EventType::Warning,
            reason: truncate(reason, 128),
            note: Some(truncate(message, 1024)),
            action: "Translate".into(),
            secondary: None,
        };
        self.recorder.publish(&event, &reference).await
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// At most `max` bytes, cut on a character boundary and marked.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max.saturating_sub(3);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// Follows one Service's load balancer addresses (IPs and hostnames).
fn service_addresses(
    client: kube::Client,
    namespace: String,
    name: String,
) -> watch::Receiver<Option<Vec<String>>> {
    use futures::StreamExt;
    use k8s_openapi::api::core::v1::Service;
    use kube::runtime::{WatchStreamExt, watcher};
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let api: Api<Service> = Api::namespaced(client, &namespace);
        let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
        let mut stream = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(item) = stream.next().await {
            match item {
                Ok(service) => {
                    let list: Vec<String> = service
                        .status
                        .and_then(|s| s.load_balancer)
                        .and_then(|lb| lb.ingress)
                        .unwrap_or_default()
                        .into_iter()
                        .filter_map(|i| i.ip.or(i.hostname))
                        .collect();
                    info!(service = %format!("{namespace}/{name}"), addresses = ?list, "ingress status addresses");
                    tx.send_replace(Some(list));
                }
                Err(e) => {
                    warn!(service = %format!("{namespace}/{name}"), error = %e, "watching the status Service failed; retrying")
                }
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests;
