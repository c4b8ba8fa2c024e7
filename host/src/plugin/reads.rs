//! Who read what: the reverse index from objects (and lists of a kind) to
//! the callers whose last plugin call read them, so a change wakes exactly
//! the roots to translate or the objects to reconcile again.

use std::collections::{HashMap, HashSet};

use super::Reads;
use crate::store::{KindKey, ObjectKey};

#[derive(Debug, Default)]
pub struct ReadIndex {
    by_get: HashMap<ObjectKey, HashSet<ObjectKey>>,
    by_list: HashMap<(KindKey, Option<String>), HashSet<ObjectKey>>,
}

impl ReadIndex {
    /// Records that `reader`'s call made `reads`.
    pub fn index(&mut self, reader: &ObjectKey, reads: &Reads) {
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
    pub fn unindex(&mut self, reader: &ObjectKey, reads: &Reads) {
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
    pub fn readers_of<'a>(&'a self, key: &ObjectKey) -> impl Iterator<Item = &'a ObjectKey> {
        let gets = self.by_get.get(key).into_iter().flatten();
        let lists = [Some(key.namespace.clone()), None]
            .into_iter()
            .filter_map(|ns| self.by_list.get(&(key.kind.clone(), ns)))
            .flatten();
        gets.chain(lists)
    }
}
