//! From store changes to a validated snapshot: translate the stale roots,
//! merge the units they touch, compile those units to Envoy resources and
//! assemble a new snapshot. Everything is incremental; `rebuild` computes
//! the same result from scratch (a property test holds them equal).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use rayon::prelude::*;

use crate::envoy;
use crate::ir;
use crate::plugin::Plugin;
use crate::store::{Change, Event, KindKey, Object, ObjectKey, Store};
use crate::translate::merge::{self, MergedListener, MergedRaw, Merger, RawKey, VhostKey};
use crate::translate::{OutputChange, RoundStats, Translations};
use crate::xds::{Resource, Snapshot, type_url};

type NsName = (String, String);

/// A compiled virtual host and what it needs from the rest of the snapshot.
#[derive(Clone, Debug)]
struct CompiledVhost {
    /// Contributing roots, oldest first.
    roots: Vec<ObjectKey>,
    /// Backends of the served routes, one per use: cluster reference counts.
    backends: Vec<ir::Backend>,
    /// None when the virtual host cannot be served (the diagnostics say why).
    encoded: Option<Bytes>,
    clusters: BTreeSet<String>,
    services: BTreeSet<NsName>,
    secret: Option<NsName>,
    /// API listeners for proxyless gRPC clients dialling this domain.
    api_listeners: Vec<String>,
    diagnostics: Vec<ir::Diagnostic>,
}

#[derive(Clone, Debug)]
struct ClusterUse {
    backend: ir::Backend,
    users: usize,
}

#[derive(Default)]
struct ListenerRoots {
    counts: BTreeMap<ObjectKey, usize>,
    /// Some count reached zero since the list was last built.
    zeroes: bool,
    shared: Option<Arc<[ObjectKey]>>,
}

/// What one round did, for logs, metrics and tests.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub changes: usize,
    pub translation: RoundStats,
    pub roots_changed: usize,
    pub vhosts_compiled: usize,
    pub resources_changed: usize,
    /// The snapshot version after the round.
    pub version: u64,
}

pub struct Pipeline {
    store: Arc<Store>,
    translations: Translations,
    merger: Merger,
    listeners: BTreeMap<String, MergedListener>,
    vhosts: BTreeMap<VhostKey, CompiledVhost>,
    raw: BTreeMap<RawKey, MergedRaw>,
    clusters: BTreeMap<String, ClusterUse>,
    secrets: BTreeMap<NsName, usize>,
    /// Invalid or missing secrets, by the message saying why.
    secret_errors: BTreeMap<NsName, String>,
    service_vhosts: HashMap<NsName, HashSet<VhostKey>>,
    secret_vhosts: HashMap<NsName, HashSet<VhostKey>>,
    /// Roots behind each listener's hosts, counted per host.
    listener_roots: HashMap<String, ListenerRoots>,
    /// What each Listener resource was last built from.
    listener_inputs: HashMap<String, (ir::Listener, Vec<envoy::TlsDomain>)>,
    /// Service -> the clusters built for its ports.
    service_clusters: HashMap<NsName, BTreeSet<String>>,
    /// EndpointSlice -> the Service it was labelled for when last seen.
    slice_services: HashMap<ObjectKey, NsName>,
    /// API listener name -> the virtual host it serves.
    api_owners: HashMap<String, VhostKey>,
    snapshot: Snapshot,
}

/// Below this many dirty virtual hosts a round compiles them on one thread.
const PARALLEL_VHOSTS: usize = 256;

/// The part of a Service that backend checks read.
#[derive(serde::Deserialize)]
struct ServicePorts {
    spec: Option<ServicePortsSpec>,
}

#[derive(serde::Deserialize)]
struct ServicePortsSpec {
    ports: Option<Vec<ServicePort>>,
}

#[derive(serde::Deserialize)]
struct ServicePort {
    port: i32,
}

fn service_kind() -> KindKey {
    KindKey::new("v1", "Service")
}
fn secret_kind() -> KindKey {
    KindKey::new("v1", "Secret")
}
fn slice_kind() -> KindKey {
    KindKey::new("discovery.k8s.io/v1", "EndpointSlice")
}

fn nsname(key: &ObjectKey) -> NsName {
    (key.namespace.clone(), key.name.clone())
}

fn diag(root: &ObjectKey, severity: ir::Severity, reason: &str, message: String) -> ir::Diagnostic {
    ir::Diagnostic {
        object: merge::object_ref(root),
        severity,
        reason: reason.to_string(),
        message,
    }
}

impl Pipeline {
    pub fn new(plugin: Plugin) -> Self {
        Pipeline {
            store: Arc::new(Store::new()),
            translations: Translations::new(plugin),
            merger: Merger::new(),
            listeners: BTreeMap::new(),
            vhosts: BTreeMap::new(),
            raw: BTreeMap::new(),
            clusters: BTreeMap::new(),
            secrets: BTreeMap::new(),
            secret_errors: BTreeMap::new(),
            service_vhosts: HashMap::new(),
            secret_vhosts: HashMap::new(),
            api_owners: HashMap::new(),
            slice_services: HashMap::new(),
            service_clusters: HashMap::new(),
            listener_inputs: HashMap::new(),
            listener_roots: HashMap::new(),
            snapshot: Snapshot::default(),
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Moves on whenever a round looked at any root; while it stands still
    /// [`roots`](Self::roots) is the same.
    pub fn roots_generation(&self) -> u64 {
        self.translations.generation()
    }

    /// Every root object with whether the plugin claimed it: produced
    /// anything (configuration or diagnostics) or failed on it. A root the
    /// plugin ignores (another controller's Ingress class) gets no status.
    pub fn roots(&self) -> Vec<(Arc<Object>, bool)> {
        let mut out: Vec<(Arc<Object>, bool)> = self
            .translations
            .outputs()
            .filter_map(|(key, output)| {
                let f = &output.fragment;
                let claimed = output.error.is_some()
                    || !f.listeners.is_empty()
                    || !f.virtual_hosts.is_empty()
                    || !f.raw.is_empty()
                    || !f.diagnostics.is_empty();
                self.store.get(key).map(|o| (o.clone(), claimed))
            })
            .collect();
        out.sort_by(|a, b| a.0.key().cmp(&b.0.key()));
        out
    }

    pub fn plugin(&self) -> &Plugin {
        self.translations.plugin()
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Makes the next snapshot's version follow `version`, so a pipeline
    /// that replaces another (a plugin swap) never goes backwards.
    pub fn continue_after(&mut self, version: u64) {
        self.snapshot.version = self.snapshot.version.max(version);
    }

    /// Loads objects without translating; `rebuild` or `apply` follows.
    pub fn load(&mut self, events: impl IntoIterator<Item = Event>) -> Vec<Change> {
        let store = Arc::make_mut(&mut self.store);
        events.into_iter().filter_map(|e| store.apply(e)).collect()
    }

    /// Applies events and brings the snapshot up to date incrementally.
    pub fn apply(&mut self, events: impl IntoIterator<Item = Event>) -> Round {
        let changes = self.load(events);
        self.update(&changes)
    }

    /// Translates everything the changes make stale and recompiles.
    pub fn update(&mut self, changes: &[Change]) -> Round {
        let (outputs, stats) = self.translations.apply_changes(&self.store, changes);
        self.recompile(changes, outputs, stats)
    }

    /// Translates every root and recompiles everything that changed.
    pub fn rebuild(&mut self) -> Round {
        let (outputs, stats) = self.translations.translate_all(&self.store);
        let every: Vec<Change> = [service_kind(), secret_kind(), slice_kind()]
            .iter()
            .flat_map(|k| {
                self.store
                    .list(k, None)
                    .map(|o| Change::Updated(o.key()))
                    .collect::<Vec<_>>()
            })
            .collect();
        let mut round = self.recompile(&every, outputs, stats);
        round.changes = 0;
        round
    }

    fn recompile(
        &mut self,
        changes: &[Change],
        outputs: Vec<OutputChange>,
        translation: RoundStats,
    ) -> Round {
        let mut round = Round {
            changes: changes.len(),
            translation,
            roots_changed: outputs.len(),
            ..Round::default()
        };
        let dirty = self.merger.apply(&outputs);
        let mut dirty_vhosts = dirty.vhosts;
        let mut touched: BTreeMap<&'static str, BTreeSet<String>> = BTreeMap::new();

        // Listeners first: a changed listener re-validates its hosts.
        for name in &dirty.listeners {
            let merged =
                merge::merge_listener(name, self.contributors(self.merger.listener_roots(name)));
            let before = self.listeners.get(name).map(|l| l.listener.clone());
            match merged {
                Some(m) => {
                    if before.as_ref() != Some(&m.listener) {
                        dirty_vhosts
                            .extend(self.merger.all_vhosts().filter(|k| &k.0 == name).cloned());
                    }
                    self.listeners.insert(name.clone(), m);
                }
                None => {
                    self.listeners.remove(name);
                    dirty_vhosts.extend(self.merger.all_vhosts().filter(|k| &k.0 == name).cloned());
                }
            }
            touched
                .entry(type_url::LISTENER)
                .or_default()
                .insert(name.clone());
        }

        // Backends and secrets that appeared, vanished or changed.
        let mut dirty_services = BTreeSet::new();
        let mut dirty_secrets = BTreeSet::new();
        for change in changes {
            let key = change.key();
            if key.kind == service_kind() {
                dirty_vhosts.extend(
                    self.service_vhosts
                        .get(&nsname(key))
                        .into_iter()
                        .flatten()
                        .cloned(),
                );
                dirty_services.insert(nsname(key));
            } else if key.kind == slice_kind() {
                // The service it belonged to and the one it belongs to now
                // (a deleted slice's labels are gone from the store).
                if let Some(before) = self.slice_services.remove(key) {
                    dirty_services.insert(before);
                }
                let now = self
                    .store
                    .get(key)
                    .and_then(|o| o.labels.get(crate::store::SERVICE_NAME_LABEL).cloned());
                if let Some(svc) = now {
                    let owner = (key.namespace.clone(), svc);
                    dirty_services.insert(owner.clone());
                    self.slice_services.insert(key.clone(), owner);
                }
            } else if key.kind == secret_kind() {
                dirty_secrets.insert(nsname(key));
            }
        }

        // What the dirty hosts held is released first; compiling reads only
        // the merged outputs, listeners and store, so it runs on every core;
        // what they hold now is then taken in key order, as one at a time
        // would have.
        for key in &dirty_vhosts {
            if let Some(old) = self.vhosts.remove(key) {
                self.release(key, &old, &mut touched);
            }
        }
        let compiled: Vec<Option<CompiledVhost>> = if dirty_vhosts.len() >= PARALLEL_VHOSTS {
            dirty_vhosts
                .par_iter()
                .map(|k| self.compile_vhost(k))
                .collect()
        } else {
            dirty_vhosts.iter().map(|k| self.compile_vhost(k)).collect()
        };
        for (key, compiled) in dirty_vhosts.iter().zip(compiled) {
            round.vhosts_compiled += 1;
            if let Some(compiled) = compiled {
                self.acquire(key, &compiled, &mut touched);
                self.vhosts.insert(key.clone(), compiled);
            }
        }
        for key in &dirty.raw {
            self.compile_raw(key, &mut touched);
        }
        self.sync_clusters(&dirty_services, &mut touched);
        self.sync_secrets(&dirty_secrets, &mut touched);

        // Route configurations and listeners of the listeners touched.
        let listeners_touched: BTreeSet<String> = dirty_vhosts
            .iter()
            .map(|k| k.0.clone())
            .chain(dirty.listeners)
            .collect();
        for name in &listeners_touched {
            self.assemble_listener(name, &mut touched);
        }

        round.resources_changed = touched.values().map(|s| s.len()).sum();
        if round.resources_changed > 0 || self.snapshot.version == 0 {
            self.snapshot.version += 1;
        }
        round.version = self.snapshot.version;
        round
    }

    fn contributors<'a>(
        &'a self,
        roots: impl Iterator<Item = &'a ObjectKey> + 'a,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a crate::translate::RootOutput)> + 'a {
        roots.filter_map(|k| self.translations.output(k).map(|o| (k, o)))
    }

    /// The virtual host as its roots now make it; `None` when no root
    /// contributes to it any more.
    fn compile_vhost(&self, key: &VhostKey) -> Option<CompiledVhost> {
        self.merger.vhost_roots(key).next()?;
        let merged = merge::merge_vhost(key, self.contributors(self.merger.vhost_roots(key)));
        let mut compiled = CompiledVhost {
            encoded: None,
            clusters: BTreeSet::new(),
            services: BTreeSet::new(),
            secret: None,
            api_listeners: vec![],
            diagnostics: merged.diagnostics.clone(),
            roots: merged.roots.clone(),
            backends: vec![],
        };
        let first_root = compiled.roots[0].clone();
        let protocol = self.listeners.get(&key.0).map(|l| l.listener.protocol);
        match protocol {
            None => compiled.diagnostics.extend(compiled.roots.iter().map(|r| {
                diag(
                    r,
                    ir::Severity::Error,
                    "ListenerNotFound",
                    format!(
                        "virtual host {} names listener {} which no object declares",
                        key.1, key.0
                    ),
                )
            })),
            Some(ir::ListenerProtocol::Https) if merged.tls.is_none() => {
                compiled.diagnostics.push(diag(
                    &first_root,
                    ir::Severity::Error,
                    "TLSRequired",
                    format!(
                        "virtual host {} on https listener {} has no TLS secret",
                        key.1, key.0
                    ),
                ))
            }
            Some(protocol) => {
                // The host's own validation: every backend must be a Service
                // port that exists, whatever the plugin said.
                let mut routes = Vec::with_capacity(merged.routes.len());
                for mr in &merged.routes {
                    // A regex Envoy would refuse NACKs the whole route
                    // configuration: only this route is left out.
                    if let Err(e) = envoy::regex::check_route(&mr.route) {
                        compiled.diagnostics.push(diag(
                            &mr.root,
                            ir::Severity::Error,
                            "InvalidRegex",
                            format!("virtual host {}: route left out: {e}", key.1),
                        ));
                        continue;
                    }
                    let mut route = mr.route.clone();
                    if let ir::RouteAction::Forward(backends) = &route.action {
                        for wb in backends {
                            compiled
                                .services
                                .insert((wb.backend.namespace.clone(), wb.backend.name.clone()));
                        }
                        if let Some(problem) = backends
                            .iter()
                            .find_map(|wb| self.check_backend(&wb.backend))
                        {
                            compiled.diagnostics.push(diag(
                                &mr.root,
                                ir::Severity::Error,
                                problem.0,
                                problem.1,
                            ));
                            route.action = ir::RouteAction::DirectResponse(ir::DirectResponse {
                                status: 503,
                                body: None,
                            });
                        } else {
                            compiled.clusters.extend(
                                backends.iter().map(|wb| envoy::names::cluster(&wb.backend)),
                            );
                            compiled
                                .backends
                                .extend(backends.iter().map(|wb| wb.backend.clone()));
                        }
                    }
                    routes.push(route);
                }
                match envoy::virtual_host(&key.1, &routes) {
                    Ok(vh) => {
                        let errors =
                            envoy::validate_virtual_host(&vh, |c| compiled.clusters.contains(c));
                        if errors.is_empty() {
                            compiled.encoded = Some(envoy::encode_virtual_host(&vh));
                        } else {
                            compiled
                                .diagnostics
                                .extend(compiled.roots.iter().flat_map(|r| {
                                    errors.iter().map(move |e| {
                                        diag(
                                            r,
                                            ir::Severity::Error,
                                            "InvalidRoute",
                                            format!("virtual host {}: {e}", key.1),
                                        )
                                    })
                                }));
                        }
                    }
                    Err(e) => compiled.diagnostics.extend(compiled.roots.iter().map(|r| {
                        diag(
                            r,
                            ir::Severity::Error,
                            "InvalidRoute",
                            format!("virtual host {}: {e}", key.1),
                        )
                    })),
                }
                if protocol == ir::ListenerProtocol::Https {
                    compiled.secret = merged
                        .tls
                        .as_ref()
                        .map(|s| (s.namespace.clone(), s.name.clone()));
                }
                if protocol == ir::ListenerProtocol::Http
                    && compiled.encoded.is_some()
                    && !key.1.contains('*')
                {
                    let port = self
                        .listeners
                        .get(&key.0)
                        .map(|l| l.listener.port)
                        .unwrap_or_default();
                    compiled.api_listeners = vec![key.1.clone(), format!("{}:{port}", key.1)];
                }
            }
        }
        if compiled.encoded.is_none() {
            compiled.clusters.clear();
            compiled.backends.clear();
            compiled.secret = None;
        }
        Some(compiled)
    }

    fn check_backend(&self, b: &ir::Backend) -> Option<(&'static str, String)> {
        let key = ObjectKey::new(service_kind(), b.namespace.clone(), b.name.clone());
        let Some(obj) = self.store.get(&key) else {
            return Some((
                "BackendNotFound",
                format!("Service {}/{} does not exist", b.namespace, b.name),
            ));
        };
        // Only the ports: this runs for every backend of every virtual host
        // compiled (30k times in a 10k-Ingress rebuild), and a whole typed
        // Service costs several times more to read.
        let svc: ServicePorts = match obj.parse() {
            Ok(s) => s,
            Err(e) => {
                return Some((
                    "BackendInvalid",
                    format!("Service {}/{} cannot be read: {e}", b.namespace, b.name),
                ));
            }
        };
        let has_port = svc
            .spec
            .and_then(|s| s.ports)
            .is_some_and(|ps| ps.iter().any(|p| p.port == i32::from(b.port)));
        (!has_port).then(|| {
            (
                "BackendNotFound",
                format!("Service {}/{} has no port {}", b.namespace, b.name, b.port),
            )
        })
    }

    fn acquire(
        &mut self,
        key: &VhostKey,
        c: &CompiledVhost,
        touched: &mut BTreeMap<&'static str, BTreeSet<String>>,
    ) {
        let roots = self.listener_roots.entry(key.0.clone()).or_default();
        for r in &c.roots {
            match roots.counts.get_mut(r) {
                Some(n) => *n += 1,
                None => {
                    roots.counts.insert(r.clone(), 1);
                    roots.shared = None;
                }
            }
        }
        let mut owns_api_listener = false;
        for name in &c.api_listeners {
            // One domain on two plain-HTTP listeners: the first keeps it.
            if self.api_owners.contains_key(name) {
                continue;
            }
            owns_api_listener = true;
            self.api_owners.insert(name.clone(), key.clone());
            let rc = envoy::names::api_route_config(&key.0, &key.1);
            let mut res = Resource::encode(
                type_url::LISTENER,
                name.clone(),
                &envoy::api_listener(name, &rc),
                c.roots.clone(),
            );
            res.named_only = true;
            self.put(res);
            touched
                .entry(type_url::LISTENER)
                .or_default()
                .insert(name.clone());
        }
        if owns_api_listener && let Some(encoded) = &c.encoded {
            // The domain's own route configuration: a gRPC client resolving
            // `xds:///domain` fetches this one host, not the listener's
            // thousands.
            let rc = envoy::names::api_route_config(&key.0, &key.1);
            let body = envoy::encode_route_configuration(&rc, [encoded.as_ref()]);
            let mut res = Resource::new(type_url::ROUTE, rc.clone(), body, c.roots.clone());
            res.named_only = true;
            self.put(res);
            touched.entry(type_url::ROUTE).or_default().insert(rc);
        }
        for s in &c.services {
            self.service_vhosts
                .entry(s.clone())
                .or_default()
                .insert(key.clone());
        }
        for b in &c.backends {
            let name = envoy::names::cluster(b);
            let entry = self
                .clusters
                .entry(name.clone())
                .or_insert_with(|| ClusterUse {
                    backend: b.clone(),
                    users: 0,
                });
            if entry.users == 0 {
                touched
                    .entry(type_url::CLUSTER)
                    .or_default()
                    .insert(name.clone());
                self.service_clusters
                    .entry((b.namespace.clone(), b.name.clone()))
                    .or_default()
                    .insert(name);
            }
            entry.users += 1;
        }
        if let Some(secret) = &c.secret {
            self.secret_vhosts
                .entry(secret.clone())
                .or_default()
                .insert(key.clone());
            let users = self.secrets.entry(secret.clone()).or_insert(0);
            *users += 1;
            if *users == 1 {
                touched
                    .entry(type_url::SECRET)
                    .or_default()
                    .insert(envoy::names::secret(&secret.0, &secret.1));
            }
        }
    }

    fn release(
        &mut self,
        key: &VhostKey,
        c: &CompiledVhost,
        touched: &mut BTreeMap<&'static str, BTreeSet<String>>,
    ) {
        if let Some(roots) = self.listener_roots.get_mut(&key.0) {
            // Entries that drop to zero stay until the list is next read: a
            // root recompiled in the same round keeps the shared list.
            for r in &c.roots {
                if let Some(n) = roots.counts.get_mut(r) {
                    *n -= 1;
                    roots.zeroes |= *n == 0;
                }
            }
        }
        let mut owned_api_listener = false;
        for name in &c.api_listeners {
            if self.api_owners.get(name) == Some(key) {
                owned_api_listener = true;
                self.api_owners.remove(name);
                self.remove(type_url::LISTENER, name);
                touched
                    .entry(type_url::LISTENER)
                    .or_default()
                    .insert(name.clone());
            }
        }
        if owned_api_listener {
            let rc = envoy::names::api_route_config(&key.0, &key.1);
            self.remove(type_url::ROUTE, &rc);
            touched.entry(type_url::ROUTE).or_default().insert(rc);
        }
        for s in &c.services {
            if let Some(set) = self.service_vhosts.get_mut(s) {
                set.remove(key);
                if set.is_empty() {
                    self.service_vhosts.remove(s);
                }
            }
        }
        for b in &c.backends {
            let name = envoy::names::cluster(b);
            if let Some(entry) = self.clusters.get_mut(&name) {
                entry.users -= 1;
                if entry.users == 0 {
                    touched.entry(type_url::CLUSTER).or_default().insert(name);
                }
            }
        }
        if let Some(secret) = &c.secret {
            if let Some(set) = self.secret_vhosts.get_mut(secret) {
                set.remove(key);
                if set.is_empty() {
                    self.secret_vhosts.remove(secret);
                }
            }
            if let Some(users) = self.secrets.get_mut(secret) {
                *users -= 1;
                if *users == 0 {
                    touched
                        .entry(type_url::SECRET)
                        .or_default()
                        .insert(envoy::names::secret(&secret.0, &secret.1));
                }
            }
        }
    }

    fn compile_raw(
        &mut self,
        key: &RawKey,
        touched: &mut BTreeMap<&'static str, BTreeSet<String>>,
    ) {
        self.raw.remove(key);
        if let Some(m) = merge::merge_raw(key, self.contributors(self.merger.raw_roots(key))) {
            self.raw.insert(key.clone(), m);
        }
        let Some(t) = type_url::PUSH_ORDER.iter().find(|t| **t == key.0) else {
            return;
        };
        touched.entry(t).or_default().insert(key.1.clone());
        match self.raw.get_mut(key) {
            Some(m) => match envoy::validate_raw(&m.raw.type_url, &m.raw.value).and_then(|inner| {
                if inner == key.1 {
                    Ok(())
                } else {
                    Err(envoy::ValidationError::Decode {
                        type_url: key.0.clone(),
                        message: format!(
                            "the resource is named {inner:?} inside but {:?} outside",
                            key.1
                        ),
                    })
                }
            }) {
                Ok(()) => {
                    let res = Resource::new(
                        t,
                        key.1.clone(),
                        Bytes::from(m.raw.value.clone()),
                        vec![m.root.clone()],
                    );
                    self.put(res);
                }
                Err(e) => {
                    m.diagnostics.push(diag(
                        &m.root,
                        ir::Severity::Error,
                        "InvalidRawResource",
                        e.to_string(),
                    ));
                    self.remove(t, &key.1);
                }
            },
            None => self.remove(t, &key.1),
        }
    }

    /// Adds, updates and removes clusters and their endpoints.
    fn sync_clusters(
        &mut self,
        dirty_services: &BTreeSet<NsName>,
        touched: &mut BTreeMap<&'static str, BTreeSet<String>>,
    ) {
        let mut names: BTreeSet<String> =
            touched.get(type_url::CLUSTER).cloned().unwrap_or_default();
        for svc in dirty_services {
            names.extend(
                self.service_clusters
                    .get(svc)
                    .into_iter()
                    .flatten()
                    .cloned(),
            );
        }
        for name in names {
            let live = self
                .clusters
                .get(&name)
                .filter(|c| c.users > 0)
                .map(|c| c.backend.clone());
            match live {
                None => {
                    if let Some(c) = self.clusters.remove(&name) {
                        let svc = (c.backend.namespace.clone(), c.backend.name.clone());
                        if let Some(set) = self.service_clusters.get_mut(&svc) {
                            set.remove(&name);
                            if set.is_empty() {
                                self.service_clusters.remove(&svc);
                            }
                        }
                    }
                    self.remove(type_url::CLUSTER, &name);
                    self.remove(type_url::ENDPOINT, &name);
                    touched.entry(type_url::ENDPOINT).or_default().insert(name);
                }
                Some(backend) => {
                    let svc_key = ObjectKey::new(
                        service_kind(),
                        backend.namespace.clone(),
                        backend.name.clone(),
                    );
                    let sources = vec![svc_key.clone()];
                    let cluster = envoy::cluster(&backend);
                    self.put(Resource::encode(
                        type_url::CLUSTER,
                        name.clone(),
                        &cluster,
                        sources.clone(),
                    ));
                    let service: Option<Service> =
                        self.store.get(&svc_key).and_then(|o| o.parse().ok());
                    let slices: Vec<EndpointSlice> = self
                        .store
                        .endpoint_slices(&backend.namespace, &backend.name)
                        .filter_map(|o| o.parse().ok())
                        .collect();
                    let cla = match &service {
                        Some(s) => envoy::load_assignment(&name, s, &slices, backend.port),
                        None => {
                            envoy::load_assignment(&name, &Service::default(), &[], backend.port)
                        }
                    };
                    self.put(Resource::encode(
                        type_url::ENDPOINT,
                        name.clone(),
                        &cla,
                        sources,
                    ));
                    touched.entry(type_url::ENDPOINT).or_default().insert(name);
                }
            }
        }
    }

    fn sync_secrets(
        &mut self,
        dirty: &BTreeSet<NsName>,
        touched: &mut BTreeMap<&'static str, BTreeSet<String>>,
    ) {
        let mut keys: BTreeSet<NsName> = dirty
            .iter()
            .filter(|k| self.secrets.contains_key(*k))
            .cloned()
            .collect();
        let newly: Vec<NsName> = touched
            .get(type_url::SECRET)
            .into_iter()
            .flatten()
            .filter_map(|n| {
                n.split_once('/')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
            })
            .collect();
        keys.extend(newly);
        for key in keys {
            let name = envoy::names::secret(&key.0, &key.1);
            let users = self.secrets.get(&key).copied().unwrap_or(0);
            let was_valid = self.snapshot.get(type_url::SECRET, &name).is_some();
            if users == 0 {
                self.secrets.remove(&key);
                self.secret_errors.remove(&key);
                self.remove(type_url::SECRET, &name);
            } else {
                let obj_key = ObjectKey::new(secret_kind(), key.0.clone(), key.1.clone());
                let compiled = match self.store.get(&obj_key) {
                    None => Err(format!("Secret {}/{} does not exist", key.0, key.1)),
                    Some(obj) => match obj.parse::<Secret>() {
                        // Never serde's message: it quotes the value (key material).
                        Err(e) => Err(format!(
                            "Secret {}/{} cannot be read: {}",
                            key.0,
                            key.1,
                            envoy::parse_error_without_content(&e)
                        )),
                        Ok(s) => envoy::secret(&s)
                            .map_err(|e| format!("Secret {}/{}: {e}", key.0, key.1)),
                    },
                };
                match compiled {
                    Ok(secret) => {
                        self.secret_errors.remove(&key);
                        self.put(Resource::encode(
                            type_url::SECRET,
                            name.clone(),
                            &secret,
                            vec![obj_key],
                        ));
                    }
                    Err(message) => {
                        self.secret_errors.insert(key.clone(), message);
                        self.remove(type_url::SECRET, &name);
                    }
                }
            }
            touched
                .entry(type_url::SECRET)
                .or_default()
                .insert(name.clone());
            let is_valid = self.snapshot.get(type_url::SECRET, &name).is_some();
            if was_valid != is_valid {
                // The filter chains that serve this secret come or go.
                let listeners: BTreeSet<String> = self
                    .secret_vhosts
                    .get(&key)
                    .into_iter()
                    .flatten()
                    .map(|k| k.0.clone())
                    .collect();
                for l in listeners {
                    self.assemble_listener(&l, touched);
                }
            }
        }
    }

    /// Builds a listener and its route configurations from its compiled
    /// virtual hosts.
    fn assemble_listener(
        &mut self,
        name: &str,
        touched: &mut BTreeMap<&'static str, BTreeSet<String>>,
    ) {
        let range = (name.to_string(), String::new())..;
        let vhosts: Vec<(&VhostKey, &CompiledVhost)> = self
            .vhosts
            .range(range)
            .take_while(|(k, _)| k.0 == name)
            .collect();
        let Some(listener) = self.listeners.get(name).map(|l| l.listener.clone()) else {
            self.remove(type_url::LISTENER, name);
            self.listener_inputs.remove(name);
            touched
                .entry(type_url::LISTENER)
                .or_default()
                .insert(name.to_string());
            self.remove_stale_routes(name, &BTreeSet::new(), touched);
            return;
        };
        let mut puts = Vec::new();
        let mut tls = Vec::new();
        let mut route_names = BTreeSet::new();
        match listener.protocol {
            ir::ListenerProtocol::Http => {
                let encoded: Vec<&[u8]> = vhosts
                    .iter()
                    .filter_map(|(_, v)| v.encoded.as_deref())
                    .collect();
                let body = envoy::encode_route_configuration(name, encoded);
                let sources = self.listener_sources(name);
                puts.push(Resource::new(
                    type_url::ROUTE,
                    name.to_string(),
                    body,
                    sources,
                ));
                route_names.insert(name.to_string());
            }
            ir::ListenerProtocol::Https => {
                for (key, v) in &vhosts {
                    let (Some(encoded), Some(secret)) = (&v.encoded, &v.secret) else {
                        continue;
                    };
                    let secret_name = envoy::names::secret(&secret.0, &secret.1);
                    if self.snapshot.get(type_url::SECRET, &secret_name).is_none() {
                        continue;
                    }
                    let rc_name = envoy::names::https_route_config(name, &key.1);
                    let body = envoy::encode_route_configuration(&rc_name, [encoded.as_ref()]);
                    puts.push(Resource::new(
                        type_url::ROUTE,
                        rc_name.clone(),
                        body,
                        v.roots.clone(),
                    ));
                    route_names.insert(rc_name);
                    tls.push(envoy::TlsDomain {
                        domain: key.1.clone(),
                        secret_name,
                    });
                }
            }
        }
        // The listener itself only changes with its definition or its set
        // of SNI hosts, not with every route.
        let built_from = (listener.clone(), tls.clone());
        if self.listener_inputs.get(name) != Some(&built_from) {
            let sources: Vec<ObjectKey> = self
                .listeners
                .get(name)
                .map(|l| l.roots.clone())
                .unwrap_or_default();
            let l = envoy::listener(&listener, &tls);
            // An HTTPS listener without a servable host has no filter chain,
            // which Envoy rejects: leave it out until one appears.
            if envoy::validate_listener(&l).is_empty() {
                puts.push(Resource::encode(
                    type_url::LISTENER,
                    name.to_string(),
                    &l,
                    sources,
                ));
            } else {
                self.remove(type_url::LISTENER, name);
                touched
                    .entry(type_url::LISTENER)
                    .or_default()
                    .insert(name.to_string());
            }
            self.listener_inputs.insert(name.to_string(), built_from);
        }
        self.remove_stale_routes(name, &route_names, touched);
        for res in puts {
            touched
                .entry(type_url_static(&res.type_url))
                .or_default()
                .insert(res.name.clone());
            self.put(res);
        }
    }

    /// The roots behind a listener's hosts, shared across snapshots until a
    /// root joins or leaves (content changes do not rebuild the list).
    fn listener_sources(&mut self, name: &str) -> Arc<[ObjectKey]> {
        let roots = self.listener_roots.entry(name.to_string()).or_default();
        if roots.zeroes {
            let before = roots.counts.len();
            roots.counts.retain(|_, n| *n > 0);
            roots.zeroes = false;
            if roots.counts.len() != before {
                roots.shared = None;
            }
        }
        roots
            .shared
            .get_or_insert_with(|| roots.counts.keys().cloned().collect())
            .clone()
    }

    /// Removes the route configurations of listener `name` not in `keep`.
    fn remove_stale_routes(
        &mut self,
        name: &str,
        keep: &BTreeSet<String>,
        touched: &mut BTreeMap<&'static str, BTreeSet<String>>,
    ) {
        let prefix = format!("{name}/");
        let stale: Vec<String> = self
            .snapshot
            .of_type(type_url::ROUTE)
            .into_iter()
            .flat_map(|m| {
                let own = m.get_key_value(name).into_iter();
                own.chain(
                    m.range(prefix.clone()..)
                        .take_while(|(n, _)| n.starts_with(&prefix)),
                )
            })
            .filter(|(n, _)| !keep.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for r in stale {
            self.remove(type_url::ROUTE, &r);
            touched.entry(type_url::ROUTE).or_default().insert(r);
        }
    }

    fn put(&mut self, res: Resource) {
        let slot = self
            .snapshot
            .resources
            .entry(res.type_url.clone())
            .or_default();
        if slot
            .get(&res.name)
            .is_some_and(|old| old.body == res.body && old.sources == res.sources)
        {
            return;
        }
        slot.insert(res.name.clone(), Arc::new(res));
    }

    fn remove(&mut self, t: &str, name: &str) {
        if let Some(slot) = self.snapshot.resources.get_mut(t) {
            slot.remove(name);
            if slot.is_empty() {
                self.snapshot.resources.remove(t);
            }
        }
    }

    /// Every diagnostic, by the object it concerns: plugin output, failed
    /// calls, lost conflicts, and the host's own validation.
    pub fn diagnostics(&self) -> Vec<ir::Diagnostic> {
        let mut out: Vec<ir::Diagnostic> = Vec::new();
        let mut roots: Vec<_> = self.translations.outputs().collect();
        roots.sort_by(|a, b| a.0.cmp(b.0));
        for (key, output) in roots {
            out.extend(output.fragment.diagnostics.iter().cloned());
            if let Some(e) = &output.error {
                out.push(diag(
                    key,
                    ir::Severity::Error,
                    e.reason(),
                    format!("{e}; serving its last good configuration"),
                ));
            }
        }
        out.extend(
            self.listeners
                .values()
                .flat_map(|l| l.diagnostics.iter().cloned()),
        );
        out.extend(
            self.vhosts
                .values()
                .flat_map(|v| v.diagnostics.iter().cloned()),
        );
        out.extend(
            self.raw
                .values()
                .flat_map(|r| r.diagnostics.iter().cloned()),
        );
        for (key, message) in &self.secret_errors {
            for vh in self.secret_vhosts.get(key).into_iter().flatten() {
                if let Some(v) = self.vhosts.get(vh) {
                    for root in &v.roots {
                        out.push(diag(
                            root,
                            ir::Severity::Error,
                            "SecretInvalid",
                            message.clone(),
                        ));
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            (
                &a.object.kind,
                &a.object.namespace,
                &a.object.name,
                &a.reason,
                &a.message,
            )
                .cmp(&(
                    &b.object.kind,
                    &b.object.namespace,
                    &b.object.name,
                    &b.reason,
                    &b.message,
                ))
        });
        out.dedup();
        out
    }
}

fn type_url_static(t: &str) -> &'static str {
    type_url::PUSH_ORDER
        .iter()
        .find(|x| **x == t)
        .copied()
        .unwrap_or(type_url::LISTENER)
}
