//! Following Plugin objects: a change to one asks the fetcher for its
//! artifact; a fetched artifact is loaded and goes through the same dry
//! run and swap as a plugin file; the outcome is the object's status. A
//! version whose failures pass the object's threshold after its swap is
//! rolled back to the one before it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::{Controller, Rejection};
use crate::catalog::{self, Fetched, Fetcher, LoadedInfo, Probation, Records, RollbackSpec};
use crate::pipeline::Round;
use crate::plugin::{Plugin, PluginError, Plugins, PolicyPlugin, ReconcilerPlugin, World};
use crate::reconcile::runner::RunnerInput;
use crate::store::{Change, ObjectKey};
use crate::translate::StatusOf;

/// What the controller keeps of the Plugin objects.
pub struct CatalogState {
    fetcher: Fetcher,
    records: Records,
    /// What each object loaded, by object name.
    owned: BTreeMap<String, Owned>,
    /// The generation last asked for: an answer for another is stale.
    requested: BTreeMap<String, i64>,
    /// A (generation, digest) rolled back: not loaded again until the
    /// object changes.
    rolled_back: BTreeMap<String, (i64, String)>,
    /// Versions on probation, with the entry they replaced.
    probation: BTreeMap<String, (Probation, Option<Entry>)>,
    /// The swap under way.
    pub(super) swapping: Option<Swapping>,
    /// When the counters in the statuses were last refreshed.
    counted_at: Option<Instant>,
    /// The objects the cluster held when the host started.
    initial: std::collections::BTreeSet<String>,
}

impl CatalogState {
    pub fn new(fetcher: Fetcher) -> Self {
        CatalogState {
            fetcher,
            records: Records::new(),
            owned: BTreeMap::new(),
            requested: BTreeMap::new(),
            rolled_back: BTreeMap::new(),
            probation: BTreeMap::new(),
            swapping: None,
            counted_at: None,
            initial: Default::default(),
        }
    }
}

#[derive(Clone, Debug)]
struct Owned {
    declared: String,
    world: World,
    order: Option<i64>,
    rollback: RollbackSpec,
}

#[derive(Clone)]
enum Entry {
    Translator(Plugin),
    Policy(PolicyPlugin),
}

/// A swap a Plugin object asked for, between its start and its outcome.
pub(super) struct Swapping {
    object: String,
    what: Swap,
    /// When the dry run started.
    started: Instant,
}

enum Swap {
    /// A new version (or configuration, or position).
    Load {
        owned: Owned,
        info: LoadedInfo,
        previous: Option<Entry>,
    },
    /// Back to the version before (none: the plugin goes).
    Rollback { owned: Option<Owned>, why: String },
    /// The object is gone: so is its plugin.
    Remove,
}

fn plugin_key(name: &str) -> ObjectKey {
    ObjectKey::new(catalog::kind(), "", name)
}

/// A load error as a Plugin condition reason.
fn load_reason(e: &PluginError) -> &'static str {
    match e {
        PluginError::Io { .. } | PluginError::Invalid(_) => "CompileFailed",
        PluginError::ContractMismatch { .. }
        | PluginError::WrongWorld { .. }
        | PluginError::Link(_)
        | PluginError::Inconsistent(_) => "ContractMismatch",
        PluginError::ConfigRejected { .. } => "ConfigInvalid",
        PluginError::RootClaimed { .. } => "RootKindClaimed",
        PluginError::Timeout(_)
        | PluginError::MemoryLimit(_)
        | PluginError::Trap(_)
        | PluginError::Limit(_)
        | PluginError::Rejected { .. } => "DryRunFailed",
    }
}

/// Whether a plugin on probation may be behind a NACK: a translator when
/// the rejected resources come from its root kinds, a policy when they are
/// routes or listeners (what its hosts compile into). A NACK that names no
/// object blames every plugin on probation.
fn could_have_caused(owned: &Owned, translators: &[Plugin], nack: &Rejection) -> bool {
    use crate::xds::type_url;
    match owned.world {
        World::Translator => {
            nack.objects.is_empty()
                || translators
                    .iter()
                    .filter(|p| p.info.name == owned.declared)
                    .flat_map(|p| p.root_kinds())
                    .any(|k| nack.objects.iter().any(|o| o.kind == k))
        }
        World::Policy => matches!(nack.type_url.as_str(), type_url::ROUTE | type_url::LISTENER),
        World::Reconciler => false,
    }
}

fn loaded_info(
    artifact: &catalog::Artifact,
    version: crate::plugin::Version,
    world: World,
    compiled: Duration,
) -> LoadedInfo {
    LoadedInfo {
        digest: artifact.digest.clone(),
        source: artifact.source.clone(),
        contract: version.contract(),
        world,
        compile_millis: compiled.as_millis() as u64,
        pull_millis: if artifact.cached {
            0
        } else {
            artifact.took.as_millis() as u64
        },
        swap_millis: 0,
        last_swap_time: String::new(),
    }
}

/// Where the entry declared `declared` sits in `plugins`, taken out.
fn take_entry(plugins: &mut Plugins, world: World, declared: &str) -> Option<(usize, Entry)> {
    match world {
        World::Translator => {
            let i = plugins
                .translators
                .iter()
                .position(|p| p.info.name == declared)?;
            Some((i, Entry::Translator(plugins.translators.remove(i))))
        }
        World::Policy => {
            let i = plugins
                .policies
                .iter()
                .position(|p| p.info.name == declared)?;
            Some((i, Entry::Policy(plugins.policies.remove(i))))
        }
        World::Reconciler => None,
    }
}

impl Controller {
    /// Asks for the artifacts of Plugin objects that changed; takes out
    /// the plugins of those deleted.
    pub(super) fn follow_plugins(&mut self, changes: &[Change], at: Option<Instant>) {
        if self.catalog.is_none() {
            return;
        }
        let kind = catalog::kind();
        for change in changes.iter().filter(|c| c.key().kind == kind) {
            let name = change.key().name.clone();
            match change {
                Change::Deleted(..) => self.plugin_object_deleted(&name, at),
                Change::Added(key) | Change::Updated(key, _) => {
                    if let Some(object) = self.writer.store().get(key) {
                        self.plugin_object_changed(&object);
                    }
                }
            }
        }
    }

    /// Every Plugin object the store holds (the first snapshot).
    pub(super) fn follow_all_plugins(&mut self) {
        if self.catalog.is_none() {
            return;
        }
        let store = self.writer.store();
        let objects: Vec<_> = store.read().list(&catalog::kind(), None).cloned().collect();
        if let Some(cat) = &mut self.catalog {
            cat.initial = objects.iter().map(|o| o.name.clone()).collect();
        }
        for o in objects {
            self.plugin_object_changed(&o);
        }
    }

    /// Whether a Plugin object the cluster held at start has neither
    /// loaded nor been refused yet.
    pub(super) fn catalog_outstanding(&mut self) -> bool {
        let Some(cat) = &mut self.catalog else {
            return false;
        };
        let (requested, records) = (&cat.requested, &cat.records);
        cat.initial.retain(|name| {
            requested.contains_key(name) && records.get(name).is_none_or(|r| r.accepted.is_none())
        });
        !cat.initial.is_empty()
    }

    fn plugin_object_changed(&mut self, object: &crate::store::Object) {
        let Some(cat) = &mut self.catalog else { return };
        let name = object.name.clone();
        let generation = serde_json::from_str::<serde_json::Value>(&object.json)
            .ok()
            .and_then(|v| v.pointer("/metadata/generation").and_then(|g| g.as_i64()))
            .unwrap_or(0);
        // Status writes change the object, not its generation.
        if cat.requested.get(&name) == Some(&generation) {
            return;
        }
        cat.requested.insert(name.clone(), generation);
        let record = cat.records.entry(name.clone()).or_default();
        record.generation = generation;
        let ceiling = self.runtime.limits();
        match catalog::read(object).and_then(|w| w.spec.limits.check(ceiling).map(|()| w)) {
            Err(message) => {
                warn!(plugin = %name, error = %message, "Plugin object refused");
                record.accepted = Some((false, "InvalidSpec".into(), message));
                self.publish_problems();
            }
            Ok(wanted) => {
                info!(plugin = %name, generation, source = %wanted.spec.source.describe(), "fetching the Plugin's artifact");
                cat.fetcher.fetch(catalog::FetchRequest {
                    name,
                    generation,
                    source: wanted.spec.source,
                });
            }
        }
    }

    fn plugin_object_deleted(&mut self, name: &str, at: Option<Instant>) {
        let Some(cat) = &mut self.catalog else { return };
        cat.requested.remove(name);
        cat.records.remove(name);
        cat.rolled_back.remove(name);
        cat.probation.remove(name);
        let Some(owned) = cat.owned.get(name).cloned() else {
            return;
        };
        if owned.world == World::Reconciler {
            cat.owned.remove(name);
            info!(plugin = %name, declared = %owned.declared, "Plugin object deleted; its reconciler stops");
            if let Some(r) = &mut self.reconcilers {
                let _ = r.inputs.send(RunnerInput::Remove {
                    object: name.to_string(),
                });
                r.set_object_kinds(name, None);
            }
            self.rewatch();
            return;
        }
        let mut plugins = self.pipeline.plugins();
        if take_entry(&mut plugins, owned.world, &owned.declared).is_none() {
            return;
        }
        info!(plugin = %name, declared = %owned.declared, "Plugin object deleted; its plugin goes");
        self.catalog_swap(name, Swap::Remove, plugins, None, at, Duration::ZERO);
    }

    /// An artifact fetched (or not) for a Plugin object.
    pub(super) fn plugin_fetched(&mut self, fetched: Fetched, at: Option<Instant>) {
        let Some(cat) = &mut self.catalog else { return };
        if cat.requested.get(&fetched.name) != Some(&fetched.generation) {
            return; // the object has changed since
        }
        let name = fetched.name;
        let artifact = match fetched.result {
            Ok(a) => a,
            Err((reason, message)) => return self.plugin_refused(&name, &reason, message),
        };
        if cat.rolled_back.get(&name) == Some(&(fetched.generation, artifact.digest.clone())) {
            return;
        }
        let object = self.writer.store().get(&plugin_key(&name));
        let Some(wanted) = object.as_deref().and_then(|o| catalog::read(o).ok()) else {
            return;
        };
        let spec = wanted.spec;
        let started = Instant::now();
        let (version, world) = match self.runtime.identify(&artifact.bytes) {
            Ok(vw) => vw,
            Err(e) => return self.plugin_refused(&name, load_reason(&e), e.to_string()),
        };
        if world != spec.world {
            return self.plugin_refused(
                &name,
                "ContractMismatch",
                format!(
                    "the component is a {}, the Plugin says {}",
                    world.as_str(),
                    spec.world.as_str()
                ),
            );
        }
        if let Some(before) = cat.owned.get(&name).map(|o| o.world)
            && before != world
        {
            return self.plugin_refused(
                &name,
                "InvalidSpec",
                format!(
                    "spec.world changed from {} to {}: delete the Plugin and create it again",
                    before.as_str(),
                    world.as_str()
                ),
            );
        }
        let config: Option<Arc<str>> = spec
            .config
            .as_ref()
            .map(|c| Arc::from(c.to_string().as_str()));
        let grants = spec.grants();
        let source = artifact.source.clone();
        let configs = crate::plugin::Configs::new();
        let entry = match world {
            World::Translator => self
                .runtime
                .load_translator(&artifact.bytes, &source, grants, &configs)
                .and_then(|p| match &config {
                    Some(c) => p.with_config(c.clone()),
                    None => Ok(p),
                })
                .map(Entry::Translator),
            World::Policy => self
                .runtime
                .load_policy(&artifact.bytes, &source, grants, &configs)
                .and_then(|p| match &config {
                    Some(c) => p.with_config(c.clone()),
                    None => Ok(p),
                })
                .map(Entry::Policy),
            World::Reconciler => {
                let loaded =
                    self.runtime
                        .load_reconciler_with(&artifact.bytes, &source, grants, config);
                return match loaded {
                    Ok(plugin) => {
                        let info = loaded_info(&artifact, version, world, started.elapsed());
                        self.install_reconciler(&name, plugin, info, spec.rollback)
                    }
                    Err(e) => self.plugin_refused(&name, load_reason(&e), e.to_string()),
                };
            }
        };
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return self.plugin_refused(&name, load_reason(&e), e.to_string()),
        };
        let compiled = started.elapsed();
        let declared = match &entry {
            Entry::Translator(p) => p.info.name.clone(),
            Entry::Policy(p) => p.info.name.clone(),
        };
        let Some(cat) = &self.catalog else { return };
        let owned = Owned {
            declared: declared.clone(),
            world,
            order: spec.order,
            rollback: spec.rollback.clone(),
        };
        if let Some((other, _)) = cat.owned.iter().find(|(n, o)| {
            **n != name
                && o.world == World::Policy
                && world == World::Policy
                && o.order == spec.order
        }) {
            return self.plugin_refused(
                &name,
                "OrderConflict",
                format!(
                    "Plugin {other} has order {:?} too: the chain order would be ambiguous",
                    spec.order
                ),
            );
        }
        let mut plugins = self.pipeline.plugins();
        let previous = cat
            .owned
            .get(&name)
            .and_then(|o| take_entry(&mut plugins, o.world, &o.declared));
        let position = previous.as_ref().map(|(i, _)| *i);
        match entry {
            Entry::Translator(p) => {
                let i = position.unwrap_or(plugins.translators.len());
                plugins
                    .translators
                    .insert(i.min(plugins.translators.len()), p);
            }
            Entry::Policy(p) => plugins.policies.push(p),
        }
        self.order_policies(&mut plugins, &name, &owned);
        if let Err(e) = plugins.check() {
            return self.plugin_refused(&name, load_reason(&e), e.to_string());
        }
        let info = loaded_info(&artifact, version, world, compiled);
        let swap = Swap::Load {
            owned,
            info,
            previous: previous.map(|(_, e)| e),
        };
        self.catalog_swap(&name, swap, plugins, Some(artifact.digest), at, compiled);
    }

    /// A reconciler a Plugin object carries: handed to the runner (which
    /// refuses a second reconciler of one kind), its kinds watched. It acts
    /// rather than builds, so there is no dry run and no probation.
    fn install_reconciler(
        &mut self,
        name: &str,
        plugin: ReconcilerPlugin,
        mut info: LoadedInfo,
        rollback: RollbackSpec,
    ) {
        let Some(r) = &mut self.reconcilers else {
            return self.plugin_refused(
                name,
                "Unsupported",
                "this host has no API client to run reconcilers with".into(),
            );
        };
        let started = Instant::now();
        let declared = plugin.info.name.clone();
        let kinds: std::collections::HashSet<_> = plugin.watched_kinds().into_iter().collect();
        let (reply, answer) = tokio::sync::oneshot::channel();
        let sent = r.inputs.send(RunnerInput::Install {
            object: name.to_string(),
            plugin,
            reply,
        });
        let outcome = match sent {
            Ok(()) => answer
                .blocking_recv()
                .unwrap_or_else(|_| Err("the reconciler runner has stopped".into())),
            Err(_) => Err("the reconciler runner has stopped".into()),
        };
        if let Err(why) = outcome {
            let reason = if why.contains("already reconciles") {
                "RootKindClaimed"
            } else {
                "Unsupported"
            };
            return self.plugin_refused(name, reason, why);
        }
        r.set_object_kinds(name, Some(kinds));
        self.rewatch();
        info.last_swap_time = catalog::now();
        info.swap_millis = started.elapsed().as_millis() as u64;
        let serving = format!(
            "running {} ({} reconciler), compiled in {} ms",
            info.digest, info.contract, info.compile_millis
        );
        let Some(cat) = &mut self.catalog else { return };
        let record = cat.records.entry(name.to_string()).or_default();
        record.accepted = Some((true, "Accepted".into(), serving.clone()));
        record.ready = Some((true, "Loaded".into(), serving));
        record.degraded = Some((false, "AsExpected".into(), String::new()));
        record.loaded = Some(info);
        cat.owned.insert(
            name.to_string(),
            Owned {
                declared,
                world: World::Reconciler,
                order: None,
                rollback,
            },
        );
        self.refresh_plugin_counters(true);
        self.publish_problems();
    }

    /// In the cluster: watch what the plugins and reconcilers read now.
    fn rewatch(&mut self) {
        let kinds = self.reconciler_kinds();
        let plugins = self.pipeline.plugins();
        if let super::Origin::Cluster(cluster) = &mut self.origin {
            cluster.source.want(super::watch_specs(&plugins, &kinds));
        }
    }

    /// The chain: `--policy` flags in their order, then Plugin objects'
    /// policies by `spec.order` (then name).
    fn order_policies(&self, plugins: &mut Plugins, name: &str, owned: &Owned) {
        let Some(cat) = &self.catalog else { return };
        let mut orders: BTreeMap<&str, (Option<i64>, &str)> = cat
            .owned
            .iter()
            .filter(|(n, o)| n.as_str() != name && o.world == World::Policy)
            .map(|(n, o)| (o.declared.as_str(), (o.order, n.as_str())))
            .collect();
        if owned.world == World::Policy {
            orders.insert(owned.declared.as_str(), (owned.order, name));
        }
        let (mut ours, flags): (Vec<PolicyPlugin>, Vec<PolicyPlugin>) = plugins
            .policies
            .drain(..)
            .partition(|p| orders.contains_key(p.info.name.as_str()));
        ours.sort_by_key(|p| orders[p.info.name.as_str()]);
        plugins.policies = flags;
        plugins.policies.extend(ours);
    }

    fn catalog_swap(
        &mut self,
        name: &str,
        what: Swap,
        plugins: Plugins,
        digest: Option<String>,
        at: Option<Instant>,
        compiled: Duration,
    ) {
        let Some(cat) = &mut self.catalog else { return };
        cat.swapping = Some(Swapping {
            object: name.to_string(),
            what,
            started: Instant::now(),
        });
        let source = format!("Plugin {name}");
        let digest = digest.map(|d| d.trim_start_matches("sha256:").to_string());
        self.try_swap(plugins, source, digest, at, Instant::now(), compiled);
        // A swap waiting for watches keeps its Swapping in `Pending`.
    }

    /// A swap's outcome, from `commit_swap` (`None`) or `reject`.
    pub(super) fn plugin_swap_done(&mut self, refused: Option<(&str, &str)>) {
        let Some(cat) = &mut self.catalog else { return };
        let Some(s) = cat.swapping.take() else { return };
        if let Some((reason, message)) = refused {
            return self.plugin_refused(&s.object, reason, message.to_string());
        }
        let Some(cat) = &mut self.catalog else { return };
        let record = cat.records.entry(s.object.clone()).or_default();
        match s.what {
            Swap::Load {
                owned,
                mut info,
                previous,
            } => {
                info.last_swap_time = catalog::now();
                info.swap_millis = s.started.elapsed().as_millis() as u64;
                let serving = format!(
                    "serving {} ({} {}), compiled in {} ms",
                    info.digest,
                    info.contract,
                    info.world.as_str(),
                    info.compile_millis
                );
                record.accepted = Some((true, "Accepted".into(), serving.clone()));
                record.ready = Some((true, "Loaded".into(), serving));
                record.degraded = Some((false, "AsExpected".into(), String::new()));
                record.loaded = Some(info);
                let snapshot = self.pipeline.snapshot().version;
                let Some(cat) = &mut self.catalog else { return };
                cat.probation.insert(
                    s.object.clone(),
                    (Probation::new(&owned.rollback, snapshot), previous),
                );
                cat.owned.insert(s.object, owned);
            }
            Swap::Rollback { owned, why } => {
                match owned {
                    Some(o) => {
                        cat.owned.insert(s.object.clone(), o);
                        record.ready = Some((
                            true,
                            "RolledBack".into(),
                            "serving the version before".into(),
                        ));
                    }
                    None => {
                        cat.owned.remove(&s.object);
                        record.loaded = None;
                        record.ready = Some((
                            false,
                            "RolledBack".into(),
                            "no version before it: the plugin is not loaded".into(),
                        ));
                    }
                }
                record.degraded = Some((true, "RolledBack".into(), why));
            }
            Swap::Remove => {
                cat.owned.remove(&s.object);
            }
        }
        self.refresh_plugin_counters(true);
        self.publish_problems();
    }

    fn plugin_refused(&mut self, name: &str, reason: &str, message: String) {
        let Some(cat) = &mut self.catalog else { return };
        warn!(plugin = %name, reason, error = %message, "Plugin not loaded; what was serving keeps serving");
        if !cat.requested.contains_key(name) {
            return; // deleted meanwhile
        }
        let loaded = cat.owned.contains_key(name);
        let record = cat.records.entry(name.to_string()).or_default();
        record.accepted = Some((false, reason.to_string(), message.clone()));
        if loaded {
            record.degraded = Some((
                true,
                reason.to_string(),
                format!("the version before keeps serving: {message}"),
            ));
        } else {
            record.ready = Some((false, reason.to_string(), message));
        }
        self.publish_problems();
    }

    /// Counts the failures of versions on probation; one that reaches its
    /// threshold within its window is rolled back.
    pub(super) fn watch_probation(&mut self, round: &Round, at: Option<Instant>) {
        let Some(cat) = &mut self.catalog else { return };
        cat.probation.retain(|_, (p, _)| !p.over());
        let mut due = Vec::new();
        for (name, (p, _)) in cat.probation.iter_mut() {
            let Some(owned) = cat.owned.get(name) else {
                continue;
            };
            let failures: usize = round
                .plugins
                .iter()
                .filter(|r| *r.plugin == *owned.declared)
                .map(|r| r.stats.failures)
                .sum();
            p.failures += failures as u64;
            if p.failures >= p.threshold {
                due.push(name.clone());
            }
        }
        for name in due {
            self.roll_back(&name, at);
        }
    }

    /// A data plane rejected snapshot `version`: a version on probation
    /// whose output it carried (swapped at or before it) is rolled back.
    /// Other objects' changes in the same snapshot are held back by NACK
    /// containment; a plugin swap changes every host it touches at once,
    /// so the plugin is the suspect.
    pub(super) fn plugin_output_rejected(&mut self, nack: &Rejection, at: Option<Instant>) {
        let Some(cat) = &mut self.catalog else { return };
        cat.probation.retain(|_, (p, _)| !p.over());
        let translators = self.pipeline.plugins().translators;
        let due: Vec<String> = cat
            .probation
            .iter()
            .filter(|(_, (p, _))| p.snapshot <= nack.version)
            .filter(|(name, _)| {
                cat.owned
                    .get(*name)
                    .is_some_and(|o| could_have_caused(o, &translators, nack))
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            let why = format!(
                "a data plane rejected snapshot {}, built with it: {}",
                nack.version, nack.message
            );
            self.roll_back_because(&name, why, at);
        }
    }

    fn roll_back(&mut self, name: &str, at: Option<Instant>) {
        let why = match self.catalog.as_ref().and_then(|c| c.probation.get(name)) {
            Some((p, _)) => format!(
                "{} call failures within {:?} of the swap (threshold {})",
                p.failures, p.window, p.threshold
            ),
            None => return,
        };
        self.roll_back_because(name, why, at);
    }

    fn roll_back_because(&mut self, name: &str, why: String, at: Option<Instant>) {
        let Some(cat) = &mut self.catalog else { return };
        let Some((_, previous)) = cat.probation.remove(name) else {
            return;
        };
        let Some(owned) = cat.owned.get(name).cloned() else {
            return;
        };
        if let (Some(g), Some(r)) = (cat.requested.get(name), cat.records.get(name))
            && let Some(l) = &r.loaded
        {
            cat.rolled_back
                .insert(name.to_string(), (*g, l.digest.clone()));
        }
        warn!(plugin = %name, reason = "RolledBack", why = %why, "rolling a Plugin back");
        let mut plugins = self.pipeline.plugins();
        let Some((i, _)) = take_entry(&mut plugins, owned.world, &owned.declared) else {
            return;
        };
        let back = match previous {
            Some(Entry::Translator(p)) => {
                let o = Owned {
                    declared: p.info.name.clone(),
                    ..owned
                };
                plugins.translators.insert(i, p);
                Some(o)
            }
            Some(Entry::Policy(p)) => {
                let o = Owned {
                    declared: p.info.name.clone(),
                    ..owned
                };
                plugins.policies.insert(i, p);
                Some(o)
            }
            None => None,
        };
        self.catalog_swap(
            name,
            Swap::Rollback { owned: back, why },
            plugins,
            None,
            at,
            Duration::ZERO,
        );
    }

    /// Whether the swap under way is a rollback.
    pub(super) fn rolling_back(&self) -> bool {
        self.catalog.as_ref().is_some_and(|c| {
            matches!(
                c.swapping,
                Some(Swapping {
                    what: Swap::Rollback { .. },
                    ..
                })
            )
        })
    }

    /// Copies the loaded versions' call counters into their records, at
    /// most once per [`catalog::COUNTERS_EVERY`] (and at once after a
    /// swap, which resets them).
    pub(super) fn refresh_plugin_counters(&mut self, force: bool) {
        let Some(cat) = &mut self.catalog else { return };
        if !force
            && cat
                .counted_at
                .is_some_and(|t| t.elapsed() < catalog::COUNTERS_EVERY)
        {
            return;
        }
        cat.counted_at = Some(Instant::now());
        let loaded = self.report.plugins();
        let reconcilers = self.report.reconcilers();
        for (name, record) in cat.records.iter_mut() {
            record.counters = cat.owned.get(name).and_then(|o| match o.world {
                World::Reconciler => reconcilers
                    .iter()
                    .find(|r| r.name == o.declared)
                    .map(|r| (r.calls, r.failures)),
                _ => loaded
                    .iter()
                    .find(|p| p.name == o.declared && p.world == o.world.as_str())
                    .map(|p| (p.calls, p.failures)),
            });
        }
    }

    /// The statuses of the Plugin objects, for the write-back.
    pub(super) fn plugin_statuses(&self) -> Vec<StatusOf> {
        let Some(cat) = &self.catalog else {
            return Vec::new();
        };
        let store = self.writer.store();
        cat.records
            .iter()
            .filter_map(|(name, r)| Some(r.status(&store.get(&plugin_key(name))?)))
            .collect()
    }
}
