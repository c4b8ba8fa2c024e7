//! The snapshot a pipeline is building: every part puts and removes its own
//! resources here, and a round counts what it really changed.

use std::sync::Arc;

use crate::xds::{Resource, Snapshot};

#[derive(Default)]
pub(super) struct Resources {
    snapshot: Snapshot,
    /// Resources added, replaced with different content, or removed since
    /// the round began.
    changed: usize,
}

impl Resources {
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&Arc<Resource>> {
        self.snapshot.get(type_url, name)
    }

    /// Serves `res`; returns whether anything changed (same body and
    /// objects behind it is no change).
    pub fn put(&mut self, res: Resource) -> bool {
        let slot = self
            .snapshot
            .resources
            .entry(res.type_url.clone())
            .or_default();
        if slot
            .get(&res.name)
            .is_some_and(|old| old.body == res.body && old.sources == res.sources)
        {
            return false;
        }
        slot.insert(res.name.clone(), Arc::new(res));
        self.changed += 1;
        true
    }

    pub fn remove(&mut self, type_url: &str, name: &str) -> bool {
        let Some(slot) = self.snapshot.resources.get_mut(type_url) else {
            return false;
        };
        let removed = slot.remove(name).is_some();
        if slot.is_empty() {
            self.snapshot.resources.remove(type_url);
        }
        self.changed += usize::from(removed);
        removed
    }

    /// Names of `type_url` that start with `prefix`.
    pub fn names_with_prefix(&self, type_url: &str, prefix: &str) -> Vec<String> {
        self.snapshot
            .of_type(type_url)
            .into_iter()
            .flat_map(|m| m.range(prefix.to_string()..))
            .map(|(n, _)| n)
            .take_while(|n| n.starts_with(prefix))
            .cloned()
            .collect()
    }

    /// Ends a round: the version moves on when anything changed (and the
    /// first round always makes version 1). Returns what changed.
    pub fn finish_round(&mut self) -> usize {
        let changed = std::mem::take(&mut self.changed);
        if changed > 0 || self.snapshot.version == 0 {
            self.snapshot.version += 1;
        }
        changed
    }

    /// Makes the next version follow `version` (a pipeline that replaces
    /// another never goes backwards).
    pub fn continue_after(&mut self, version: u64) {
        self.snapshot.version = self.snapshot.version.max(version);
    }
}
