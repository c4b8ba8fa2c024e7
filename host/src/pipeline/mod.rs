//! From store changes to a validated snapshot: translate the stale roots,
//! merge the units they touch, compile those units to Envoy resources and
//! assemble a new snapshot.
//!
//! One part per resource kind, each holding its own incremental state:
//! [`listeners`] (LDS), [`vhosts`] (virtual hosts compiled and checked),
//! [`routes`] (RDS), [`grpc`] (API listeners for proxyless gRPC),
//! [`clusters`] (CDS), [`endpoints`] (EDS), [`secrets`] (SDS) and [`raw`]
//! resources; [`diagnostics`] are kept per unit as they change. Everything
//! is incremental; `rebuild` computes the same result from scratch (a
//! property test holds them equal).
//!
//! The pipeline reads the one store ([`Store`]) and never writes it: the
//! controller applies events and hands the pipeline what changed. An
//! [`Offline`] pipeline has a store of its own (the `translate` command,
//! tests).

mod clusters;
mod diagnostics;
mod endpoints;
mod grpc;
mod listeners;
pub mod manifests;
mod raw;
mod resources;
mod routes;
mod secrets;
mod vhosts;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use rayon::prelude::*;

use diagnostics::{Diagnostics, Unit};

use crate::ir::{self, DiagnosticSet};
use crate::plugin::{Plugin, Plugins, PolicyPlugin};
use crate::policy::Chain;
use crate::store::{
    Change, Event, Index, KindKey, NamespacedName, Object, ObjectKey, Store, Writer,
};
use crate::translate::merge::{self, MergedVhost, Merger, VhostKey};
use crate::translate::{OutputChange, PluginRound, RoundStats, Translators};
use crate::xds::Snapshot;

/// What one round did, for logs, metrics and tests.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub changes: usize,
    /// Every plugin's calls together (translators and policies).
    pub translation: RoundStats,
    /// Each plugin's share, translators then policies.
    pub plugins: Vec<PluginRound>,
    pub roots_changed: usize,
    pub vhosts_compiled: usize,
    pub resources_changed: usize,
    /// The snapshot version after the round.
    pub version: u64,
}

/// Below this many dirty virtual hosts a round compiles them on one thread.
const PARALLEL_VHOSTS: usize = 256;

/// The kinds the host reads itself, whatever the plugins read.
pub fn host_kinds() -> [KindKey; 3] {
    [service_kind(), slice_kind(), secret_kind()]
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

pub struct Pipeline {
    store: Store,
    translations: Translators,
    chain: Chain,
    merger: Merger,
    listeners: listeners::Listeners,
    vhosts: vhosts::VirtualHosts,
    routes: routes::RouteConfigs,
    api_listeners: grpc::ApiListeners,
    clusters: clusters::Clusters,
    endpoints: endpoints::Endpoints,
    secrets: secrets::Secrets,
    diagnostics: Diagnostics,
    resources: resources::Resources,
    /// Roots whose output carries statuses.
    status_roots: BTreeSet<ObjectKey>,
}

impl Pipeline {
    /// A pipeline reading `store` through `plugin`; nothing is translated
    /// until [`rebuild`](Self::rebuild).
    pub fn new(store: Store, plugin: Plugin) -> Self {
        Self::with(store, Plugins::translator(plugin))
    }

    /// A pipeline running every translator and the policy chain.
    pub fn with(store: Store, plugins: Plugins) -> Self {
        Pipeline {
            store,
            translations: Translators::new(plugins.translators),
            chain: Chain::new(plugins.policies),
            merger: Merger::new(),
            listeners: Default::default(),
            vhosts: Default::default(),
            routes: Default::default(),
            api_listeners: Default::default(),
            clusters: Default::default(),
            endpoints: Default::default(),
            secrets: Default::default(),
            diagnostics: Default::default(),
            resources: Default::default(),
            status_roots: BTreeSet::new(),
        }
    }

    pub fn store(&self) -> &Store {
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
        let store = self.store.read();
        let mut out: Vec<(Arc<Object>, bool)> = self
            .translations
            .outputs()
            .filter_map(|(key, output)| {
                let claimed = output.error.is_some() || !output.fragment.is_empty();
                store.get(key).map(|o| (o.clone(), claimed))
            })
            .collect();
        out.sort_by(|a, b| a.0.key().cmp(&b.0.key()));
        out
    }

    /// The first translator (the only one, mostly).
    pub fn plugin(&self) -> &Plugin {
        self.translations
            .plugins()
            .next()
            .expect("a pipeline has a translator")
    }

    pub fn translators(&self) -> impl Iterator<Item = &Plugin> {
        self.translations.plugins()
    }

    pub fn policies(&self) -> &[PolicyPlugin] {
        self.chain.policies()
    }

    /// The plugins this pipeline runs.
    pub fn plugins(&self) -> Plugins {
        Plugins {
            translators: self.translations.plugins().cloned().collect(),
            policies: self.chain.policies().to_vec(),
        }
    }

    /// Serves `batch` roots per plugin instance, in an order shuffled by
    /// `shuffle` when set: tests vary both to show neither matters. Call
    /// before the first round.
    pub fn set_batch(&mut self, batch: usize, shuffle: Option<u64>) {
        let t = std::mem::replace(&mut self.translations, Translators::new(vec![]));
        self.translations = t.with_batch(batch, shuffle);
    }

    pub fn snapshot(&self) -> &Snapshot {
        self.resources.snapshot()
    }

    /// Makes the next snapshot's version follow `version`, so a pipeline
    /// that replaces another (a plugin swap) never goes backwards.
    pub fn continue_after(&mut self, version: u64) {
        self.resources.continue_after(version);
    }

    /// Every diagnostic, by the object it concerns: plugin output, failed
    /// calls, lost conflicts, and the host's own validation. O(1).
    pub fn diagnostic_set(&self) -> DiagnosticSet {
        self.diagnostics.all().clone()
    }

    /// What the translators say about objects, to be written to their
    /// status (merged per object and plugin, in root order).
    pub fn statuses(&self) -> Vec<crate::translate::StatusOf> {
        let store = self.store.read();
        crate::translate::merge_statuses(
            &store,
            self.status_roots
                .iter()
                .filter_map(|k| self.translations.output(k)),
        )
    }

    /// [`diagnostic_set`](Self::diagnostic_set) as a list, in order.
    pub fn diagnostics(&self) -> Vec<ir::Diagnostic> {
        self.diagnostics.all().keys().cloned().collect()
    }

    /// Translates what `changes` make stale and recompiles.
    pub fn update(&mut self, changes: &[Change]) -> Round {
        let (outputs, plugins) = self.translations.apply_changes(&self.store, changes);
        self.recompile(changes, outputs, plugins)
    }

    /// Translates every root and recompiles everything that changed.
    pub fn rebuild(&mut self) -> Round {
        let (outputs, plugins) = self.translations.translate_all(&self.store);
        let every: Vec<Change> = {
            let store = self.store.read();
            host_kinds()
                .iter()
                .flat_map(|k| store.list(k, None).map(|o| Change::Added(o.key())))
                .collect()
        };
        let mut round = self.recompile(&every, outputs, plugins);
        round.changes = 0;
        round
    }

    fn recompile(
        &mut self,
        changes: &[Change],
        outputs: Vec<OutputChange>,
        plugins: Vec<PluginRound>,
    ) -> Round {
        let shared = self.store.clone();
        let store = shared.read();
        let mut round = Round {
            changes: changes.len(),
            roots_changed: outputs.len(),
            ..Round::default()
        };
        for o in &outputs {
            if o.new
                .as_ref()
                .is_some_and(|n| !n.fragment.statuses.is_empty())
            {
                self.status_roots.insert(o.root.clone());
            } else {
                self.status_roots.remove(&o.root);
            }
            self.diagnostics.set(
                Unit::Root(o.root.clone()),
                root_diagnostics(&o.root, o.new.as_ref()),
            );
        }
        let dirty = self.merger.apply(&outputs);
        let mut dirty_vhosts = dirty.vhosts;
        // Hosts whose policies read what changed.
        for change in changes {
            dirty_vhosts.extend(self.chain.readers_of(change.key()).cloned());
        }

        // Listeners first: a changed listener re-validates its hosts.
        for name in &dirty.listeners {
            let merged = merge::merge_listener(
                name,
                self.translations
                    .contributors(self.merger.listener_roots(name)),
            );
            self.diagnostics.set(
                Unit::Listener(name.clone()),
                merged
                    .as_ref()
                    .map(|m| m.diagnostics.clone())
                    .unwrap_or_default(),
            );
            if self.listeners.set(name, merged) {
                dirty_vhosts.extend(
                    self.merger
                        .all_vhosts()
                        .filter(|k| &k.listener == name)
                        .cloned(),
                );
            }
        }

        // Backends and secrets that appeared, vanished or changed.
        let mut changed_services = BTreeSet::new();
        let mut changed_secrets = BTreeSet::new();
        for change in changes {
            let key = change.key();
            if key.kind == service_kind() {
                let svc = NamespacedName::of(key);
                dirty_vhosts.extend(self.vhosts.using_service(&svc).cloned());
                changed_services.insert(svc);
            } else if key.kind == slice_kind() {
                self.endpoints
                    .services_of_slice(change, &store, &mut changed_services);
            } else if key.kind == secret_kind() {
                changed_secrets.insert(NamespacedName::of(key));
            }
        }

        // What the dirty hosts held is released first; compiling reads only
        // the merged outputs, listeners and store, so it runs on every core;
        // what they hold now is then taken in key order, as one at a time
        // would have.
        let mut secrets_touched = BTreeSet::new();
        for key in &dirty_vhosts {
            if let Some(old) = self.vhosts.take(key) {
                self.release(key, &old, &mut secrets_touched);
            }
        }
        // Merge, run the policy chain, then compile (reading only the
        // chain's output, listeners and store: on every core).
        let mut merged: Vec<(VhostKey, MergedVhost)> = Vec::new();
        for key in &dirty_vhosts {
            if self.merger.vhost_roots(key).next().is_none() {
                self.chain.forget(key);
                self.diagnostics.set(Unit::Policy(key.clone()), vec![]);
                continue;
            }
            let m = merge::merge_vhost(
                key,
                self.translations.contributors(self.merger.vhost_roots(key)),
            );
            merged.push((key.clone(), m));
        }
        let keys: Vec<VhostKey> = merged.iter().map(|(k, _)| k.clone()).collect();
        let (chained, policy_rounds) = self.chain.run(&shared, merged);
        let mut hosts: std::collections::HashMap<VhostKey, MergedVhost> = Default::default();
        for (key, out) in keys.into_iter().zip(chained) {
            self.diagnostics
                .set(Unit::Policy(key.clone()), out.diagnostics);
            if let Some(host) = out.host {
                hosts.insert(key, host);
            }
        }
        let compile = |key: &VhostKey| {
            let merged = hosts.get(key)?;
            let listener = self.listeners.get(&key.listener);
            Some(vhosts::VirtualHosts::compile(key, merged, listener, &store))
        };
        let compiled: Vec<Option<vhosts::CompiledVhost>> = if dirty_vhosts.len() >= PARALLEL_VHOSTS
        {
            dirty_vhosts.par_iter().map(compile).collect()
        } else {
            dirty_vhosts.iter().map(compile).collect()
        };
        for p in plugins.iter().chain(&policy_rounds) {
            round.translation.add(&p.stats);
        }
        round.plugins = plugins;
        round.plugins.extend(policy_rounds);
        for (key, compiled) in dirty_vhosts.iter().zip(compiled) {
            round.vhosts_compiled += 1;
            let diagnostics = compiled
                .as_ref()
                .map(|c| c.diagnostics.clone())
                .unwrap_or_default();
            self.diagnostics.set(Unit::Vhost(key.clone()), diagnostics);
            if let Some(compiled) = compiled {
                self.acquire(key, &compiled, &mut secrets_touched);
                self.vhosts.insert(key.clone(), compiled);
            }
        }

        for key in &dirty.raw {
            let merged = merge::merge_raw(
                key,
                self.translations.contributors(self.merger.raw_roots(key)),
            );
            let diagnostics = raw::build(key, merged, &mut self.resources);
            self.diagnostics.set(Unit::Raw(key.clone()), diagnostics);
        }

        let built = self.clusters.build(&changed_services, &mut self.resources);
        self.endpoints.build(&built, &store, &mut self.resources);
        let (looked_at, flipped) =
            self.secrets
                .build(&changed_secrets, &store, &mut self.resources);
        secrets_touched.extend(looked_at);
        for secret in &secrets_touched {
            let diagnostics = self.secret_diagnostics(secret);
            self.diagnostics
                .set(Unit::Secret(secret.clone()), diagnostics);
        }

        // Route configurations and listeners of the listeners touched (and
        // of those whose filter chains come or go with a secret).
        let mut listeners: BTreeSet<String> = dirty_vhosts
            .iter()
            .map(|k| k.listener.clone())
            .chain(dirty.listeners)
            .collect();
        for secret in &flipped {
            listeners.extend(self.vhosts.using_secret(secret).map(|k| k.listener.clone()));
        }
        for name in &listeners {
            let protocol = self.listeners.get(name).map(|l| l.listener.protocol);
            let tls = self
                .routes
                .build(name, protocol, &self.vhosts, &mut self.resources);
            self.listeners.build(name, tls, &mut self.resources);
        }

        round.resources_changed = self.resources.finish_round();
        round.version = self.resources.snapshot().version;
        round
    }

    fn release(
        &mut self,
        key: &VhostKey,
        old: &vhosts::CompiledVhost,
        secrets_touched: &mut BTreeSet<NamespacedName>,
    ) {
        self.routes.release(&key.listener, old);
        self.api_listeners.release(key, old, &mut self.resources);
        for b in &old.backends {
            self.clusters.release(b);
        }
        if let Some(secret) = &old.secret {
            self.secrets.release(secret);
            secrets_touched.insert(secret.clone());
        }
    }

    fn acquire(
        &mut self,
        key: &VhostKey,
        new: &vhosts::CompiledVhost,
        secrets_touched: &mut BTreeSet<NamespacedName>,
    ) {
        self.routes.acquire(&key.listener, new);
        self.api_listeners.acquire(key, new, &mut self.resources);
        for b in &new.backends {
            self.clusters.acquire(b);
        }
        if let Some(secret) = &new.secret {
            self.secrets.acquire(secret);
            secrets_touched.insert(secret.clone());
        }
    }

    /// A secret that cannot be served, on every root of every host naming it.
    fn secret_diagnostics(&self, secret: &NamespacedName) -> Vec<ir::Diagnostic> {
        let Some(message) = self.secrets.error(secret) else {
            return vec![];
        };
        let roots: BTreeSet<&ObjectKey> = self
            .vhosts
            .using_secret(secret)
            .filter_map(|k| self.vhosts.get(k))
            .flat_map(|v| &v.roots)
            .collect();
        roots
            .into_iter()
            .map(|r| ir::Diagnostic::error(ir::ObjectRef::of(r), "SecretInvalid", message.clone()))
            .collect()
    }
}

/// What a root's translation says: the plugin's diagnostics and, when the
/// latest call failed, why (its last good fragment keeps serving).
fn root_diagnostics(
    key: &ObjectKey,
    output: Option<&crate::translate::RootOutput>,
) -> Vec<ir::Diagnostic> {
    let Some(output) = output else {
        return vec![];
    };
    let mut out = output.fragment.diagnostics.clone();
    if let Some(e) = &output.error {
        out.push(ir::Diagnostic::error(
            ir::ObjectRef::of(key),
            e.reason(),
            format!("{e}; serving its last good configuration"),
        ));
    }
    out
}

/// A pipeline with a store of its own: the `translate` command and tests
/// apply events to it directly.
pub struct Offline {
    writer: Writer,
    pipeline: Pipeline,
}

impl Offline {
    pub fn new(plugin: Plugin) -> Self {
        Self::with(Plugins::translator(plugin))
    }

    /// Every translator and the policy chain.
    pub fn with(plugins: Plugins) -> Self {
        let writer = Writer::new();
        let pipeline = Pipeline::with(writer.store(), plugins);
        Offline { writer, pipeline }
    }

    /// The store's writer, for tests that build a pipeline beside this one.
    pub fn store_handle(&self) -> Store {
        self.writer.store()
    }

    /// Loads objects without translating; `rebuild` or `update` follows.
    pub fn load(&mut self, events: impl IntoIterator<Item = Event>) -> Vec<Change> {
        self.writer.apply_all(events)
    }

    /// Applies events and brings the snapshot up to date incrementally.
    pub fn apply(&mut self, events: impl IntoIterator<Item = Event>) -> Round {
        let changes = self.load(events);
        self.pipeline.update(&changes)
    }

    /// Puts `next` (built over this store) in the current one's place, as
    /// a plugin swap does; returns the one replaced.
    pub fn replace(&mut self, next: Pipeline) -> Pipeline {
        std::mem::replace(&mut self.pipeline, next)
    }
}

impl std::ops::Deref for Offline {
    type Target = Pipeline;
    fn deref(&self) -> &Pipeline {
        &self.pipeline
    }
}

impl std::ops::DerefMut for Offline {
    fn deref_mut(&mut self) -> &mut Pipeline {
        &mut self.pipeline
    }
}

/// Objects of kinds in `kinds` (what a plugin or the host reads).
pub fn of_kinds<'a>(
    index: &'a Index,
    kinds: &'a HashSet<KindKey>,
) -> impl Iterator<Item = &'a Arc<Object>> + 'a {
    index.list_all().filter(|o| kinds.contains(&o.kind_key()))
}
