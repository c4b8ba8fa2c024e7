//! Child → owner mapping, so a change to an owned object enqueues its owner.
//!
//! A reconciler is keyed by the objects it owns the children of (a custom
//! resource that owns a Deployment, say); events arrive for the children too.
//! The child's current owner references name the owners to wake, but not one
//! that *was* its owner until this event (a reference removed, or moved to
//! another owner), and a deletion may come with nothing but the key. So the
//! last owners seen per child are kept here.
//!
//! Meant to be fed by the single task that turns store events into keys:
//!
//! ```ignore
//! // on apply of a child, with its ownerReferences mapped to owner keys
//! // (same namespace as the child; `controller: true` only, if the
//! // reconciler wants just its controller):
//! for owner in owners.update(child_key, owner_keys) {
//!     queue.add(owner)?;
//! }
//! // on delete of a child:
//! for owner in owners.remove(&child_key) {
//!     queue.add(owner)?;
//! }
//! ```
//!
//! Nothing here needs to know about an owner's deletion: Kubernetes'
//! garbage collector deletes the children, and their deletions clean up.

use std::collections::HashMap;
use std::hash::Hash;

/// The last known owners of each child. `C` is the child's key type, `O`
/// the owner's (the queue's key type).
#[derive(Debug, Clone)]
pub struct Owners<C, O = C> {
    by_child: HashMap<C, Vec<O>>,
}

impl<C, O> Default for Owners<C, O> {
    fn default() -> Self {
        Owners {
            by_child: HashMap::new(),
        }
    }
}

impl<C: Eq + Hash, O: Eq + Clone> Owners<C, O> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records `child`'s current owners and returns every owner to enqueue:
    /// the current ones (in the given order, without duplicates), then the
    /// former ones it no longer has, which must hear that they lost it.
    pub fn update(&mut self, child: C, owners: impl IntoIterator<Item = O>) -> Vec<O> {
        let mut current: Vec<O> = Vec::new();
        for owner in owners {
            if !current.contains(&owner) {
                current.push(owner);
            }
        }
        let previous = if current.is_empty() {
            self.by_child.remove(&child)
        } else {
            self.by_child.insert(child, current.clone())
        };
        let mut wake = current;
        for owner in previous.unwrap_or_default() {
            if !wake.contains(&owner) {
                wake.push(owner);
            }
        }
        wake
    }

    /// Forgets a deleted child and returns the owners it had.
    pub fn remove(&mut self, child: &C) -> Vec<O> {
        self.by_child.remove(child).unwrap_or_default()
    }

    /// The owners last recorded for `child`.
    pub fn owners_of(&self, child: &C) -> &[O] {
        self.by_child.get(child).map_or(&[], Vec::as_slice)
    }

    /// Children with at least one owner.
    pub fn len(&self) -> usize {
        self.by_child.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_child.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_returns_current_then_former_owners() {
        let mut owners: Owners<&str> = Owners::new();
        assert_eq!(owners.update("deploy/a", ["app/x"]), ["app/x"]);
        assert_eq!(owners.owners_of(&"deploy/a"), ["app/x"]);
        // Moved from x to y: both must reconcile.
        assert_eq!(owners.update("deploy/a", ["app/y"]), ["app/y", "app/x"]);
        assert_eq!(owners.owners_of(&"deploy/a"), ["app/y"]);
        // Unchanged: only the current owner.
        assert_eq!(owners.update("deploy/a", ["app/y"]), ["app/y"]);
    }

    #[test]
    fn update_dedups_and_keeps_order() {
        let mut owners: Owners<&str> = Owners::new();
        assert_eq!(
            owners.update("c", ["o2", "o1", "o2", "o3", "o1"]),
            ["o2", "o1", "o3"]
        );
        assert_eq!(owners.update("c", ["o3", "o4"]), ["o3", "o4", "o2", "o1"]);
    }

    #[test]
    fn dropping_every_owner_reference_wakes_former_owners_and_forgets_child() {
        let mut owners: Owners<&str> = Owners::new();
        owners.update("c", ["o1", "o2"]);
        assert_eq!(owners.len(), 1);
        assert_eq!(owners.update("c", []), ["o1", "o2"]);
        assert!(owners.is_empty());
        assert!(owners.owners_of(&"c").is_empty());
        // An unowned child never enters the map.
        assert!(owners.update("d", []).is_empty());
        assert!(owners.is_empty());
    }

    #[test]
    fn remove_returns_previous_owners_once() {
        let mut owners: Owners<&str> = Owners::new();
        owners.update("c", ["o1"]);
        owners.update("other", ["o1"]);
        assert_eq!(owners.remove(&"c"), ["o1"]);
        assert!(owners.remove(&"c").is_empty());
        assert!(owners.remove(&"never-seen").is_empty());
        assert_eq!(owners.owners_of(&"other"), ["o1"]);
    }

    #[test]
    fn child_and_owner_keys_can_differ() {
        #[derive(Debug, Clone, PartialEq, Eq, Hash)]
        struct ChildRef {
            kind: &'static str,
            name: String,
        }
        let mut owners: Owners<ChildRef, u64> = Owners::new();
        let child = ChildRef {
            kind: "Deployment",
            name: "web".into(),
        };
        assert_eq!(owners.update(child.clone(), [7]), [7]);
        assert_eq!(owners.remove(&child), [7]);
    }
}
