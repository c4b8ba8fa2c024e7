//! Per-root translation with dependency tracking.
//!
//! A translator is called once per root object. The host records every
//! store read the call made; when an object changes, only the roots that
//! read it (and the object itself, if it is a root) are translated again.

pub mod merge;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use crate::ir;
use crate::plugin::{Plugin, PluginError, ReadIndex, Reads};
use crate::store::{Change, KindKey, Object, ObjectKey, Store};

/// Orders roots for conflict resolution: the oldest wins, then
/// namespace/name. Manifests without creationTimestamp sort first, by name.
/// Holds the root's (shared) key rather than copies of its names.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RootOrder {
    pub created: String,
    pub key: ObjectKey,
}

impl RootOrder {
    pub fn of(obj: &Object) -> Self {
        RootOrder {
            created: obj.creation_timestamp.clone(),
            key: obj.key(),
        }
    }

    pub fn new(created: impl Into<String>, key: ObjectKey) -> Self {
        RootOrder {
            created: created.into(),
            key,
        }
    }
}

impl Ord for RootOrder {
    /// Oldest first, then namespace, name, kind.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (
            &self.created,
            &self.key.namespace,
            &self.key.name,
            &self.key.kind,
        )
            .cmp(&(
                &other.created,
                &other.key.namespace,
                &other.key.name,
                &other.key.kind,
            ))
    }
}

impl PartialOrd for RootOrder {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// What a root currently contributes.
#[derive(Clone, Debug, PartialEq)]
pub struct RootOutput {
    pub order: RootOrder,
    /// The translator that produced it (conflicts between plugins are
    /// reported on both sides).
    pub plugin: Arc<str>,
    /// The last good fragment (empty if the root never translated).
    pub fragment: Arc<ir::Fragment>,
    /// Why the latest call failed, if it did.
    pub error: Option<PluginError>,
}

/// A root whose output changed: what it was and what it is now.
#[derive(Clone, Debug)]
pub struct OutputChange {
    pub root: ObjectKey,
    pub old: Option<RootOutput>,
    pub new: Option<RootOutput>,
}

struct RootState {
    output: RootOutput,
    reads: Reads,
}

/// Counters for one round, for logs and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoundStats {
    pub calls: usize,
    pub failures: usize,
    pub dropped_logs: usize,
    /// Failed calls by reason (`PluginError::reason`), for metrics.
    pub failure_reasons: BTreeMap<String, usize>,
    /// The duration of every call, for metrics.
    pub call_durations: Vec<std::time::Duration>,
}

/// The translation state of one plugin over one store.
pub struct Translations {
    plugin: Plugin,
    name: Arc<str>,
    root_kinds: Vec<KindKey>,
    roots: HashMap<ObjectKey, RootState>,
    readers: ReadIndex,
    /// Roots per instance (see [`BATCH`]).
    batch: usize,
    /// Tests: call roots in an order shuffled by this seed.
    shuffle: Option<u64>,
    /// Counts rounds that looked at any root: unchanged, no root (object,
    /// output or presence) can have changed.
    generation: u64,
}

impl Translations {
    pub fn new(plugin: Plugin) -> Self {
        let root_kinds = plugin.root_kinds();
        Translations {
            name: Arc::from(plugin.info.name.as_str()),
            plugin,
            root_kinds,
            roots: HashMap::new(),
            readers: ReadIndex::default(),
            batch: BATCH,
            shuffle: None,
            generation: 0,
        }
    }

    /// Serves `batch` roots per instance; tests vary it to show batching
    /// changes nothing.
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Calls a round's roots in an order shuffled by `seed` (tests: a
    /// root's result must not depend on its place in a batch).
    pub fn with_shuffle(mut self, seed: Option<u64>) -> Self {
        self.shuffle = seed;
        self
    }

    /// Moves on whenever a round looked at any root.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    pub fn plugin(&self) -> &Plugin {
        &self.plugin
    }

    pub fn outputs(&self) -> impl Iterator<Item = (&ObjectKey, &RootOutput)> {
        self.roots.iter().map(|(k, s)| (k, &s.output))
    }

    pub fn output(&self, root: &ObjectKey) -> Option<&RootOutput> {
        self.roots.get(root).map(|s| &s.output)
    }

    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }

    /// Translates every root in the store.
    pub fn translate_all(&mut self, store: &Store) -> (Vec<OutputChange>, RoundStats) {
        let objects = store.read();
        let mut dirty: Vec<ObjectKey> = self
            .root_kinds
            .iter()
            .flat_map(|k| objects.list(k, None).map(|o| o.key()))
            .collect();
        // Roots that vanished from the store while we were not looking.
        dirty.extend(
            self.roots
                .keys()
                .filter(|k| objects.get(k).is_none())
                .cloned(),
        );
        drop(objects);
        self.retranslate(store, dirty)
    }

    /// Translates what the changes make stale.
    pub fn apply_changes(
        &mut self,
        store: &Store,
        changes: &[Change],
    ) -> (Vec<OutputChange>, RoundStats) {
        let mut dirty = HashSet::new();
        for change in changes {
            let key = change.key();
            if self.root_kinds.contains(&key.kind) {
                dirty.insert(key.clone());
            }
            dirty.extend(self.readers.readers_of(key).cloned());
        }
        self.retranslate(store, dirty.into_iter().collect())
    }

    /// Which roots `changes` would translate again; for tests and tracing.
    pub fn dependents(&self, key: &ObjectKey) -> Vec<ObjectKey> {
        let mut out: Vec<ObjectKey> = self.readers.readers_of(key).cloned().collect();
        out.sort();
        out.dedup();
        out
    }

    fn retranslate(
        &mut self,
        store: &Store,
        mut dirty: Vec<ObjectKey>,
    ) -> (Vec<OutputChange>, RoundStats) {
        dirty.sort();
        dirty.dedup();
        if !dirty.is_empty() {
            self.generation += 1;
        }
        let mut stats = RoundStats::default();
        let mut changes = Vec::new();
        let objects = store.read();
        let (present, gone): (Vec<_>, Vec<_>) =
            dirty.into_iter().partition(|k| objects.get(k).is_some());
        for key in gone {
            if let Some(state) = self.roots.remove(&key) {
                self.readers.unindex(&key, &state.reads);
                changes.push(OutputChange {
                    root: key,
                    old: Some(state.output),
                    new: None,
                });
            }
        }
        let mut jobs: Vec<Arc<Object>> = present
            .iter()
            .filter_map(|k| objects.get(k).cloned())
            .collect();
        drop(objects);
        if let Some(seed) = self.shuffle {
            shuffle(&mut jobs, seed.wrapping_add(self.generation));
        }
        let outcomes = call_all(&self.plugin, store, &jobs, self.batch);
        for (obj, outcome) in jobs.iter().zip(outcomes) {
            let key = obj.key();
            stats.calls += 1;
            stats.dropped_logs += outcome.dropped_logs;
            stats.call_durations.push(outcome.elapsed);
            let previous = self.roots.remove(&key);
            if let Some(prev) = &previous {
                self.readers.unindex(&key, &prev.reads);
            }
            let (output, reads) = match outcome.result {
                Ok(mut fragment) => {
                    check_statuses(&key, &self.name, &outcome.reads, &mut fragment);
                    (
                        RootOutput {
                            order: RootOrder::of(obj),
                            plugin: self.name.clone(),
                            fragment: Arc::new(fragment),
                            error: None,
                        },
                        outcome.reads,
                    )
                }
                Err(error) => {
                    stats.failures += 1;
                    *stats
                        .failure_reasons
                        .entry(error.reason().to_string())
                        .or_default() += 1;
                    tracing::warn!(root = %key, plugin = %self.plugin.info.name, reason = error.reason(), %error,
                        "translation failed; keeping the last good fragment");
                    // Keep depending on what the good call read, plus what
                    // this one got to before failing.
                    let mut reads = outcome.reads;
                    let fragment = match &previous {
                        Some(prev) => {
                            reads.gets.extend(prev.reads.gets.iter().cloned());
                            reads.lists.extend(prev.reads.lists.iter().cloned());
                            prev.output.fragment.clone()
                        }
                        None => Arc::new(ir::Fragment::default()),
                    };
                    (
                        RootOutput {
                            order: RootOrder::of(obj),
                            plugin: self.name.clone(),
                            fragment,
                            error: Some(error),
                        },
                        reads,
                    )
                }
            };
            self.readers.index(&key, &reads);
            let old = previous.map(|p| p.output);
            if old.as_ref() != Some(&output) {
                changes.push(OutputChange {
                    root: key.clone(),
                    old,
                    new: Some(output.clone()),
                });
            }
            self.roots.insert(key, RootState { output, reads });
        }
        (changes, stats)
    }

    /// Every root's outputs in root order, for a full merge.
    pub fn ordered_outputs(&self) -> BTreeMap<(RootOrder, ObjectKey), &RootOutput> {
        self.roots
            .iter()
            .map(|(k, s)| ((s.output.order.clone(), k.clone()), &s.output))
            .collect()
    }
}

/// Every translator over one store. Each owns its root kinds (checked by
/// [`Plugins`](crate::plugin::Plugins)), so a root has one translator and
/// its output one home.
pub struct Translators {
    sets: Vec<Translations>,
    owner: HashMap<KindKey, usize>,
}

impl Translators {
    pub fn new(plugins: Vec<Plugin>) -> Self {
        let sets: Vec<Translations> = plugins.into_iter().map(Translations::new).collect();
        let owner = sets
            .iter()
            .enumerate()
            .flat_map(|(i, t)| t.root_kinds.iter().map(move |k| (k.clone(), i)))
            .collect();
        Translators { sets, owner }
    }

    /// Serves `batch` roots per instance in every translator, called in
    /// an order shuffled by `shuffle` when set (tests).
    pub fn with_batch(self, batch: usize, shuffle: Option<u64>) -> Self {
        Translators {
            sets: self
                .sets
                .into_iter()
                .map(|t| t.with_batch(batch).with_shuffle(shuffle))
                .collect(),
            owner: self.owner,
        }
    }

    pub fn plugins(&self) -> impl Iterator<Item = &Plugin> {
        self.sets.iter().map(|t| &t.plugin)
    }

    pub fn sets(&self) -> &[Translations] {
        &self.sets
    }

    /// Moves on whenever a round of any translator looked at any root.
    pub fn generation(&self) -> u64 {
        self.sets.iter().map(|t| t.generation).sum()
    }

    pub fn outputs(&self) -> impl Iterator<Item = (&ObjectKey, &RootOutput)> {
        self.sets.iter().flat_map(|t| t.outputs())
    }

    pub fn output(&self, root: &ObjectKey) -> Option<&RootOutput> {
        self.sets[*self.owner.get(&root.kind)?].output(root)
    }

    /// The outputs of `roots` (those that have one), in the order given.
    pub fn contributors<'a>(
        &'a self,
        roots: impl Iterator<Item = &'a ObjectKey> + 'a,
    ) -> impl Iterator<Item = (&'a ObjectKey, &'a RootOutput)> + 'a {
        roots.filter_map(|k| self.output(k).map(|o| (k, o)))
    }

    pub fn len(&self) -> usize {
        self.sets.iter().map(|t| t.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Translates every root of every translator.
    pub fn translate_all(&mut self, store: &Store) -> (Vec<OutputChange>, Vec<PluginRound>) {
        self.each(|t| t.translate_all(store))
    }

    /// Translates what the changes make stale, in every translator.
    pub fn apply_changes(
        &mut self,
        store: &Store,
        changes: &[Change],
    ) -> (Vec<OutputChange>, Vec<PluginRound>) {
        self.each(|t| t.apply_changes(store, changes))
    }

    pub fn dependents(&self, key: &ObjectKey) -> Vec<ObjectKey> {
        let mut out: Vec<ObjectKey> = self.sets.iter().flat_map(|t| t.dependents(key)).collect();
        out.sort();
        out.dedup();
        out
    }

    fn each(
        &mut self,
        mut f: impl FnMut(&mut Translations) -> (Vec<OutputChange>, RoundStats),
    ) -> (Vec<OutputChange>, Vec<PluginRound>) {
        let mut changes = Vec::new();
        let mut rounds = Vec::with_capacity(self.sets.len());
        for t in &mut self.sets {
            let (c, stats) = f(t);
            changes.extend(c);
            rounds.push(PluginRound {
                plugin: t.name.clone(),
                stats,
            });
        }
        (changes, rounds)
    }
}

/// One plugin's share of a round.
#[derive(Clone, Debug, Default)]
pub struct PluginRound {
    pub plugin: Arc<str>,
    pub stats: RoundStats,
}

impl RoundStats {
    /// Adds another plugin's counters to these.
    pub fn add(&mut self, other: &RoundStats) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.dropped_logs += other.dropped_logs;
        for (r, n) in &other.failure_reasons {
            *self.failure_reasons.entry(r.clone()).or_default() += n;
        }
        self.call_durations.extend(&other.call_durations);
    }
}

/// What one translator says about one object (merged over the roots it
/// came from): the leader writes it by server-side apply on `/status`
/// under the plugin's own field manager.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusOf {
    /// The object as the store holds it now.
    pub object: Arc<Object>,
    pub plugin: Arc<str>,
    pub status: ir::ObjectStatus,
}

impl StatusOf {
    /// `isobar-plugin-<name>`: each plugin owns its own fields.
    pub fn field_manager(&self) -> String {
        format!("isobar-plugin-{}", self.plugin)
    }
}

/// Merges what roots (oldest first) said about objects, per object and
/// plugin: a condition type or a top-level field goes to the oldest root
/// that set it.
pub fn merge_statuses<'a>(
    store: &crate::store::Index,
    outputs: impl IntoIterator<Item = &'a RootOutput>,
) -> Vec<StatusOf> {
    let mut merged: BTreeMap<(ir::ObjectRef, Arc<str>), ir::ObjectStatus> = BTreeMap::new();
    let mut ordered: Vec<&RootOutput> = outputs.into_iter().collect();
    ordered.sort_by(|a, b| a.order.cmp(&b.order));
    for output in ordered {
        for s in &output.fragment.statuses {
            let entry = merged
                .entry((s.object.clone(), output.plugin.clone()))
                .or_insert_with(|| ir::ObjectStatus {
                    object: s.object.clone(),
                    conditions: vec![],
                    fields: None,
                });
            for c in &s.conditions {
                if !entry.conditions.iter().any(|e| e.type_ == c.type_) {
                    entry.conditions.push(c.clone());
                }
            }
            if let Some(serde_json::Value::Object(fields)) = &s.fields {
                let into = entry
                    .fields
                    .get_or_insert_with(|| serde_json::Value::Object(Default::default()));
                if let serde_json::Value::Object(into) = into {
                    for (k, v) in fields {
                        into.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
    }
    merged
        .into_iter()
        .filter_map(|((r, plugin), status)| {
            let object = find(store, &r)?;
            Some(StatusOf {
                object,
                plugin,
                status,
            })
        })
        .collect()
}

/// The object a reference names, in the store.
fn find(store: &crate::store::Index, r: &ir::ObjectRef) -> Option<Arc<Object>> {
    store
        .kinds()
        .filter(|k| k.kind == r.kind && (r.group.is_empty() || k.group == r.group))
        .find_map(|k| {
            store
                .get(&ObjectKey::new(
                    k.clone(),
                    r.namespace.clone(),
                    r.name.clone(),
                ))
                .cloned()
        })
}

/// Condition types the host alone sets: what the data plane did.
pub const HOST_CONDITIONS: [&str; 1] = ["Programmed"];

/// Keeps the statuses a translator may give: on its root or an object the
/// call read, conditions well formed (type and reason as the API server
/// validates them), fields a JSON object without `conditions`. Each refused
/// one becomes a diagnostic on the root naming the plugin.
fn check_statuses(root: &ObjectKey, plugin: &str, reads: &Reads, fragment: &mut ir::Fragment) {
    // ^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$, at most 1024 bytes
    let reason_ok = |r: &str| {
        let b = r.as_bytes();
        match (b.first(), b.last()) {
            (Some(first), Some(last)) => {
                r.len() <= 1024
                    && first.is_ascii_alphabetic()
                    && (last.is_ascii_alphanumeric() || *last == b'_')
                    && b.iter()
                        .all(|c| c.is_ascii_alphanumeric() || b"_,:".contains(c))
            }
            _ => false,
        }
    };
    let type_ok = |t: &str| {
        !t.is_empty()
            && t.len() <= 316
            && t.bytes()
                .all(|c| c.is_ascii_alphanumeric() || b"-_./".contains(&c))
    };
    let statuses = std::mem::take(&mut fragment.statuses);
    for s in statuses {
        let o = &s.object;
        let what = format!("{} {}/{}", o.kind, o.namespace, o.name);
        let problem = if !o.names(root) && !reads.saw_ref(o) {
            Some(format!(
                "a status for {what}, which it neither translated nor read"
            ))
        } else if let Some(c) = s.conditions.iter().find(|c| !type_ok(&c.type_)) {
            Some(format!("a condition of type {:?} on {what}", c.type_))
        } else if let Some(c) = s.conditions.iter().find(|c| !reason_ok(&c.reason)) {
            Some(format!("a condition with reason {:?} on {what}", c.reason))
        } else if let Some(c) = s
            .conditions
            .iter()
            .find(|c| HOST_CONDITIONS.contains(&c.type_.as_str()))
        {
            Some(format!(
                "a {} condition on {what}: the host sets it from what the data plane did",
                c.type_
            ))
        } else {
            match &s.fields {
                Some(serde_json::Value::Object(m)) if m.contains_key("conditions") => Some(
                    format!("status fields for {what} with conditions in them (use conditions)"),
                ),
                Some(serde_json::Value::Object(_)) | None => None,
                Some(_) => Some(format!(
                    "status fields for {what} that are not a JSON object"
                )),
            }
        };
        match problem {
            None => fragment.statuses.push(s),
            Some(p) => fragment.diagnostics.push(ir::Diagnostic::error(
                ir::ObjectRef::of(root),
                "StatusInvalid",
                format!("translator {plugin} returned {p}; it is not written"),
            )),
        }
    }
}

/// Fisher-Yates with a small deterministic generator (tests only).
fn shuffle<T>(items: &mut [T], seed: u64) {
    let mut state = seed | 1;
    for i in (1..items.len()).rev() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        items.swap(i, (state % (i as u64 + 1)) as usize);
    }
}

/// Roots one instance serves in a row. A 0.2 instance is configured once
/// and reused within a batch, so batches amortise instantiation; several
/// batches spread a large round over the machine's cores (rayon, as
/// everything else in a round). Small rounds stay on this thread.
pub const BATCH: usize = 128;

/// Calls the plugin for every job, in batches of `batch`; outcomes in job
/// order. Calls are independent (the contract makes translation a function
/// of the root and its reads), so how jobs are batched does not matter.
fn call_all(
    plugin: &Plugin,
    store: &Store,
    jobs: &[Arc<Object>],
    batch: usize,
) -> Vec<crate::plugin::CallOutcome> {
    use rayon::prelude::*;
    let batch = batch.max(1);
    if jobs.len() <= batch {
        return plugin.translate_batch(store, jobs);
    }
    jobs.par_chunks(batch)
        .flat_map_iter(|chunk| plugin.translate_batch(store, chunk))
        .collect()
}
