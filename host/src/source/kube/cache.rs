//! One kind's view of the cluster: kube-runtime watcher events in, store
//! events out. This is the event interface the feature tests drive.
//!
//! Like kube-runtime's reflector, a relist (`Init` … `InitApply` …
//! `InitDone`) is buffered and swapped in at `InitDone`: objects the relist
//! no longer shows are deleted then, objects it shows unchanged (same
//! `resourceVersion`) produce nothing, so a reconnect after 410 Gone costs
//! the pipeline only what really changed.

use std::collections::HashMap;
use std::sync::Arc;

use kube::api::DynamicObject;
use kube::runtime::watcher;
use serde_json::Value;
use tracing::warn;

use crate::store::{Event, KindKey, Object, ObjectKey};

/// Annotation `kubectl apply` writes: a copy of the whole object, which no
/// plugin needs and which would double the cache.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What one watcher event changed.
#[derive(Debug, Default)]
pub struct Update {
    pub events: Vec<Event>,
    /// This event completed the kind's first full list.
    pub first_sync: bool,
}

/// The objects of one kind the watcher has shown, by key, with the
/// resourceVersion each was last seen at.
#[derive(Debug)]
pub struct KindCache {
    kind: KindKey,
    api_version: String,
    kind_name: String,
    known: HashMap<ObjectKey, String>,
    /// A relist in progress: what it has shown so far.
    relist: Option<HashMap<ObjectKey, Arc<Object>>>,
    synced: bool,
    rejected: u64,
}

impl KindCache {
    /// `api_version` and `kind_name` fill in what list responses leave out.
    pub fn new(api_version: &str, kind_name: &str) -> Self {
        KindCache {
            kind: KindKey::new(api_version, kind_name),
            api_version: api_version.to_string(),
            kind_name: kind_name.to_string(),
            known: HashMap::new(),
            relist: None,
            synced: false,
            rejected: 0,
        }
    }

    pub fn kind(&self) -> &KindKey {
        &self.kind
    }

    /// Whether a full list has completed since the watch started.
    pub fn is_synced(&self) -> bool {
        self.synced
    }

    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Objects the API server sent that could not be stored (no name, …).
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    pub fn apply(&mut self, event: watcher::Event<DynamicObject>) -> Update {
        let mut update = Update::default();
        match event {
            watcher::Event::Apply(o) => {
                if let Some(object) = self.object(o) {
                    let key = object.key();
                    if self.known.get(&key) != Some(&object.resource_version)
                        || object.resource_version.is_empty()
                    {
                        self.known.insert(key, object.resource_version.clone());
                        update.events.push(Event::Apply(object));
                    }
                }
            }
            watcher::Event::Delete(o) => {
                if let Some(object) = self.object(o) {
                    let key = object.key();
                    // A delete for an object never seen (missed add) is a no-op.
                    if self.known.remove(&key).is_some() {
                        update.events.push(Event::Delete(key));
                    }
                }
            }
            watcher::Event::Init => {
                self.relist = Some(HashMap::new());
            }
            watcher::Event::InitApply(o) => {
                if let Some(object) = self.object(o) {
                    self.relist
                        .get_or_insert_with(HashMap::new)
                        .insert(object.key(), object);
                }
            }
            watcher::Event::InitDone => {
                let listed = self.relist.take().unwrap_or_default();
                let mut gone: Vec<ObjectKey> = self
                    .known
                    .keys()
                    .filter(|k| !listed.contains_key(*k))
                    .cloned()
                    .collect();
                gone.sort();
                for key in gone {
                    self.known.remove(&key);
                    update.events.push(Event::Delete(key));
                }
                let mut listed: Vec<(ObjectKey, Arc<Object>)> = listed.into_iter().collect();
                listed.sort_by(|a, b| a.0.cmp(&b.0));
                for (key, object) in listed {
                    if self.known.get(&key) != Some(&object.resource_version)
                        || object.resource_version.is_empty()
                    {
                        self.known.insert(key, object.resource_version.clone());
                        update.events.push(Event::Apply(object));
                    }
                }
                update.first_sync = !self.synced;
                self.synced = true;
            }
        }
        update
    }

    /// The store's form of a watched object, trimmed of what only costs
    /// memory (managed fields, kubectl's last-applied copy).
    fn object(&mut self, o: DynamicObject) -> Option<Arc<Object>> {
        match self.convert(o) {
            Ok(object) => Some(Arc::new(object)),
            Err(e) => {
                self.rejected += 1;
                warn!(kind = %self.kind, error = %e, "object from the API server not stored");
                None
            }
        }
    }

    fn convert(&self, o: DynamicObject) -> Result<Object, crate::store::ObjectError> {
        let mut value = serde_json::to_value(o)?;
        if let Some(map) = value.as_object_mut() {
            // List items carry no apiVersion/kind; the watched resource does.
            map.insert("apiVersion".into(), Value::String(self.api_version.clone()));
            map.insert("kind".into(), Value::String(self.kind_name.clone()));
            if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
                meta.remove("managedFields");
                if let Some(annotations) =
                    meta.get_mut("annotations").and_then(Value::as_object_mut)
                {
                    annotations.remove(LAST_APPLIED);
                }
            }
        }
        Object::from_value(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ingress(name: &str, rv: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "metadata": {
                "name": name, "namespace": "default", "uid": format!("uid-{name}"),
                "resourceVersion": rv,
                "managedFields": [{"manager": "kubectl"}],
                "annotations": {LAST_APPLIED: "{…}", "keep": "me"},
            },
            "spec": {"rules": []},
        }))
        .unwrap()
    }

    fn names(update: &Update) -> Vec<String> {
        update
            .events
            .iter()
            .map(|e| match e {
                Event::Apply(o) => format!("+{}@{}", o.name, o.resource_version),
                Event::Delete(k) => format!("-{}", k.name),
            })
            .collect()
    }

    fn cache() -> KindCache {
        KindCache::new("networking.k8s.io/v1", "Ingress")
    }

    #[test]
    fn initial_list_is_applied_at_init_done_and_marks_the_first_sync() {
        let mut c = cache();
        assert!(c.apply(watcher::Event::Init).events.is_empty());
        assert!(
            c.apply(watcher::Event::InitApply(ingress("a", "1")))
                .events
                .is_empty()
        );
        assert!(!c.is_synced());
        let done = c.apply(watcher::Event::InitDone);
        assert_eq!(names(&done), ["+a@1"]);
        assert!(done.first_sync);
        assert!(c.is_synced());
        // A later relist is not a first sync.
        c.apply(watcher::Event::Init);
        c.apply(watcher::Event::InitApply(ingress("a", "1")));
        assert!(!c.apply(watcher::Event::InitDone).first_sync);
    }

    #[test]
    fn objects_are_stored_with_their_kind_and_without_managed_fields() {
        let mut c = cache();
        let update = c.apply(watcher::Event::Apply(ingress("a", "1")));
        let Event::Apply(o) = &update.events[0] else {
            panic!("an apply")
        };
        assert_eq!(
            o.kind_key(),
            KindKey::new("networking.k8s.io/v1", "Ingress")
        );
        assert_eq!(o.uid, "uid-a");
        let v: Value = serde_json::from_str(&o.json).unwrap();
        assert_eq!(v["apiVersion"], "networking.k8s.io/v1");
        assert!(v["metadata"].get("managedFields").is_none());
        assert!(v["metadata"]["annotations"].get(LAST_APPLIED).is_none());
        assert_eq!(v["metadata"]["annotations"]["keep"], "me");
    }

    #[test]
    fn relist_deletes_what_is_gone_adds_what_is_new_and_skips_the_unchanged() {
        let mut c = cache();
        c.apply(watcher::Event::Apply(ingress("a", "1")));
        c.apply(watcher::Event::Apply(ingress("b", "2")));
        c.apply(watcher::Event::Apply(ingress("c", "3")));
        // 410 Gone: the watcher relists. b vanished, c changed, d is new.
        c.apply(watcher::Event::Init);
        for o in [ingress("a", "1"), ingress("c", "7"), ingress("d", "8")] {
            assert!(c.apply(watcher::Event::InitApply(o)).events.is_empty());
        }
        let done = c.apply(watcher::Event::InitDone);
        assert_eq!(names(&done), ["-b", "+c@7", "+d@8"]);
        assert_eq!(c.len(), 3);
    }

    #[test]
    fn an_empty_relist_deletes_everything() {
        let mut c = cache();
        c.apply(watcher::Event::Apply(ingress("a", "1")));
        c.apply(watcher::Event::Init);
        assert_eq!(names(&c.apply(watcher::Event::InitDone)), ["-a"]);
        assert!(c.is_empty());
    }

    #[test]
    fn repeated_and_stale_events_change_nothing() {
        let mut c = cache();
        assert_eq!(
            names(&c.apply(watcher::Event::Apply(ingress("a", "1")))),
            ["+a@1"]
        );
        // The same version again (a watch restarted from an older bookmark).
        assert!(
            c.apply(watcher::Event::Apply(ingress("a", "1")))
                .events
                .is_empty()
        );
        // A delete for something never seen, twice for something seen.
        assert!(
            c.apply(watcher::Event::Delete(ingress("zz", "9")))
                .events
                .is_empty()
        );
        assert_eq!(
            names(&c.apply(watcher::Event::Delete(ingress("a", "2")))),
            ["-a"]
        );
        assert!(
            c.apply(watcher::Event::Delete(ingress("a", "2")))
                .events
                .is_empty()
        );
    }

    #[test]
    fn an_object_without_a_name_is_rejected_not_stored() {
        let mut c = cache();
        let nameless: DynamicObject =
            serde_json::from_value(json!({"metadata": {"namespace": "default"}})).unwrap();
        assert!(c.apply(watcher::Event::Apply(nameless)).events.is_empty());
        assert_eq!(c.rejected(), 1);
        assert!(c.is_empty());
    }

    #[test]
    fn init_apply_without_init_still_lands_at_init_done() {
        // A watcher never does this, but the cache must not lose objects if
        // a driver does.
        let mut c = cache();
        c.apply(watcher::Event::InitApply(ingress("a", "1")));
        assert_eq!(names(&c.apply(watcher::Event::InitDone)), ["+a@1"]);
    }
}
