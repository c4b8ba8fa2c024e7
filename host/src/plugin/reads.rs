//! Who read what: the reverse index from objects (and lists of a kind) to
//! the callers whose last plugin call read them, so a change wakes exactly
//! the roots to translate or the objects to reconcile again.

use std::collections::{HashMap, HashSet};

use super::Reads;
use crate::store::{KindKey, ObjectKey};

/// Readers are roots (translators, reconcilers) or virtual hosts
/// (policies).
#[derive(Debug)]
pub struct ReadIndex<R = ObjectKey> {
    by_get: HashMap<ObjectKey, HashSet<R>>,
    by_list: HashMap<(KindKey, Option<String>), HashSet<R>>,
}

impl<R> Default for ReadIndex<R> {
    fn default() -> Self {
        ReadIndex {
            by_get: HashMap::new(),
            by_list: HashMap::new(),
        }
    }
}

impl<R: Clone + Eq + std::hash::Hash> ReadIndex<R> {
    /// Records that `reader`'s call made `reads`.
    pub fn index(&mut self, reader: &R, reads: &Reads) {
        for k in &reads.gets {
            self.by_get
                .entry(k.clone())
                .or_default()
                .insert(reader.clone());
        }
        for k in &reads.lists {
            self.by_list
                .entry(k.clone())
                .or_default()
                .insert(reader.clone());
        }
    }

    /// Forgets `reads` of `reader` (what `index` was given for it).
    pub fn unindex(&mut self, reader: &R, reads: &Reads) {
        for k in &reads.gets {
            if let Some(set) = self.by_get.get_mut(k) {
                set.remove(reader);
                if set.is_empty() {
                    self.by_get.remove(k);
                }
            }
        }
        for k in &reads.lists {
            if let Some(set) = self.by_list.get_mut(k) {
                set.remove(reader);
                if set.is_empty() {
                    self.by_list.remove(k);
                }
            }
        }
    }

    /// The readers a change to `key` concerns: those that got it, and those
    /// that listed its kind in its namespace or in all. May repeat one.
    pub fn readers_of<'a>(&'a self, key: &ObjectKey) -> impl Iterator<Item = &'a R> {
        let gets = self.by_get.get(key).into_iter().flatten();
        let lists = [Some(key.namespace.clone()), None]
            .into_iter()
            .filter_map(|ns| self.by_list.get(&(key.kind.clone(), ns)))
            .flatten();
        gets.chain(lists)
    }
}
