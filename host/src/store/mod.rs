//! The one indexed cache every stage reads: objects by kind, namespace/name
//! and uid, EndpointSlices by Service.
//!
//! One [`Writer`] (the controller, or an offline pipeline) applies events;
//! any number of [`Store`] handles read it, as kube-runtime's
//! `Writer`/`Store` do. A plugin swap, the translators and the reconcilers
//! all read the same objects: nothing is copied per reader.

mod reflector;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use reflector::reflect;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A kind by API group (not version): `networking.k8s.io/v1` and
/// `networking.k8s.io/v1beta1` Ingresses are the same objects.
///
/// Interned: a cluster has a handful of kinds and every key names one, so
/// all keys of a kind share one allocation.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KindKey(Arc<KindParts>);

#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct KindParts {
    pub group: String,
    pub kind: String,
}

type Interned = HashMap<String, HashMap<String, Arc<KindParts>>>;

fn intern(group: &str, kind: &str) -> KindKey {
    static KINDS: std::sync::OnceLock<parking_lot::Mutex<Interned>> = std::sync::OnceLock::new();
    let mut kinds = KINDS.get_or_init(Default::default).lock();
    if let Some(k) = kinds.get(group).and_then(|g| g.get(kind)) {
        return KindKey(k.clone());
    }
    let parts = Arc::new(KindParts {
        group: group.to_string(),
        kind: kind.to_string(),
    });
    kinds
        .entry(group.to_string())
        .or_default()
        .insert(kind.to_string(), parts.clone());
    KindKey(parts)
}

impl KindKey {
    pub fn new(api_version: &str, kind: &str) -> Self {
        let group = match api_version.rsplit_once('/') {
            Some((group, _version)) => group,
            None => "",
        };
        intern(group, kind)
    }

    pub fn of<K: k8s_openapi::Resource>() -> Self {
        intern(K::GROUP, K::KIND)
    }
}

impl std::ops::Deref for KindKey {
    type Target = KindParts;
    fn deref(&self) -> &KindParts {
        &self.0
    }
}

impl std::fmt::Debug for KindKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KindKey")
            .field("group", &self.group)
            .field("kind", &self.kind)
            .finish()
    }
}

impl Serialize for KindKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl std::fmt::Display for KindKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.group.is_empty() {
            write!(f, "{}", self.kind)
        } else {
            write!(f, "{}.{}", self.kind, self.group)
        }
    }
}

/// Identity of an object in the store; namespace is empty when cluster-scoped.
///
/// Shared, not copied: a key is held by every index, every recorded read,
/// every merge contributor and every resource it is a source of, so a clone
/// is a reference count, not four strings (at 10k Ingresses that was a
/// third of the heap). Fields read through `Deref`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey(Arc<KeyParts>);

#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct KeyParts {
    pub kind: KindKey,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: KindKey, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        ObjectKey(Arc::new(KeyParts {
            kind,
            namespace: namespace.into(),
            name: name.into(),
        }))
    }

    /// The same object under another name (tests, renames).
    pub fn with_name(&self, name: impl Into<String>) -> Self {
        ObjectKey::new(self.kind.clone(), self.namespace.clone(), name)
    }
}

impl std::ops::Deref for ObjectKey {
    type Target = KeyParts;
    fn deref(&self) -> &KeyParts {
        &self.0
    }
}

impl std::fmt::Debug for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectKey")
            .field("kind", &self.kind)
            .field("namespace", &self.namespace)
            .field("name", &self.name)
            .finish()
    }
}

impl Serialize for ObjectKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

impl std::fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{}/{}", self.kind, self.name)
        } else {
            write!(f, "{}/{}/{}", self.kind, self.namespace, self.name)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    #[error("object is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("object has no {0}")]
    Missing(&'static str),
}

/// A Kubernetes object as the store keeps it: the index fields parsed once,
/// the body kept as the JSON that crosses into plugins unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Object {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub resource_version: String,
    /// RFC 3339, as the API server writes it; orders by age lexically.
    pub creation_timestamp: String,
    pub labels: BTreeMap<String, String>,
    pub json: Arc<str>,
    /// Made once: every index shares it.
    key: ObjectKey,
}

impl Object {
    /// Builds an object from its JSON value. Objects from manifests have no
    /// uid: one is derived from the key so the index stays total.
    pub fn from_value(value: serde_json::Value) -> Result<Self, ObjectError> {
        let str_at = |v: &serde_json::Value, path: &[&str]| -> String {
            let mut cur = v;
            for p in path {
                match cur.get(p) {
                    Some(next) => cur = next,
                    None => return String::new(),
                }
            }
            cur.as_str().unwrap_or_default().to_string()
        };
        let api_version = str_at(&value, &["apiVersion"]);
        let kind = str_at(&value, &["kind"]);
        let name = str_at(&value, &["metadata", "name"]);
        if api_version.is_empty() {
            return Err(ObjectError::Missing("apiVersion"));
        }
        if kind.is_empty() {
            return Err(ObjectError::Missing("kind"));
        }
        if name.is_empty() {
            return Err(ObjectError::Missing("metadata.name"));
        }
        let namespace = str_at(&value, &["metadata", "namespace"]);
        let mut uid = str_at(&value, &["metadata", "uid"]);
        if uid.is_empty() {
            uid = format!("{}/{}/{}/{}", api_version, kind, namespace, name);
        }
        let labels = value
            .get("metadata")
            .and_then(|m| m.get("labels"))
            .and_then(|l| l.as_object())
            .map(|l| {
                l.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        let key = ObjectKey::new(
            KindKey::new(&api_version, &kind),
            namespace.clone(),
            name.clone(),
        );
        Ok(Object {
            key,
            resource_version: str_at(&value, &["metadata", "resourceVersion"]),
            creation_timestamp: str_at(&value, &["metadata", "creationTimestamp"]),
            json: Arc::from(serde_json::to_string(&value)?),
            api_version,
            kind,
            namespace,
            name,
            uid,
            labels,
        })
    }

    pub fn from_json(json: &str) -> Result<Self, ObjectError> {
        Self::from_value(serde_json::from_str(json)?)
    }

    /// Builds an object from a typed k8s-openapi value.
    pub fn from_typed<K: k8s_openapi::Resource + Serialize>(obj: &K) -> Result<Self, ObjectError> {
        let mut value = serde_json::to_value(obj)?;
        if let Some(map) = value.as_object_mut() {
            map.insert("apiVersion".into(), K::API_VERSION.into());
            map.insert("kind".into(), K::KIND.into());
        }
        Self::from_value(value)
    }

    pub fn key(&self) -> ObjectKey {
        self.key.clone()
    }

    pub fn kind_key(&self) -> KindKey {
        KindKey::new(&self.api_version, &self.kind)
    }

    pub fn parse<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(&self.json)
    }
}

/// What the store was told; sources (kube watchers, the manifest directory,
/// tests) all speak this.
#[derive(Clone, Debug)]
pub enum Event {
    Apply(Arc<Object>),
    Delete(ObjectKey),
}

/// Result of applying one event: which object changed, and what it was
/// (a reader that follows changes sees the object as it was before an
/// update or a delete, e.g. to find the owner a deleted child named).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Added(ObjectKey),
    Updated(ObjectKey, Arc<Object>),
    Deleted(ObjectKey, Arc<Object>),
}

impl Change {
    pub fn key(&self) -> &ObjectKey {
        match self {
            Change::Added(k) | Change::Updated(k, _) | Change::Deleted(k, _) => k,
        }
    }

    /// The object before the change; none when it was added.
    pub fn old(&self) -> Option<&Arc<Object>> {
        match self {
            Change::Added(_) => None,
            Change::Updated(_, old) | Change::Deleted(_, old) => Some(old),
        }
    }
}

/// A namespace and a name: how objects of one kind (or a Service's slices)
/// are told apart.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct NamespacedName {
    pub namespace: String,
    pub name: String,
}

impl NamespacedName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        NamespacedName {
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    pub fn of(key: &ObjectKey) -> Self {
        NamespacedName::new(key.namespace.clone(), key.name.clone())
    }
}

impl std::fmt::Display for NamespacedName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The objects, indexed. Read through a [`Store`] (`store.read()`), written
/// only by the [`Writer`].
#[derive(Default, Debug)]
pub struct Index {
    by_kind: HashMap<KindKey, BTreeMap<NamespacedName, Arc<Object>>>,
    by_uid: HashMap<String, ObjectKey>,
    /// (namespace, service) -> its EndpointSlices by name.
    slices_by_service: HashMap<NamespacedName, BTreeMap<String, Arc<Object>>>,
}

fn is_endpoint_slice(kind: &KindKey) -> bool {
    kind.group == "discovery.k8s.io" && kind.kind == "EndpointSlice"
}

/// A read-only handle on the one store. Cheap to clone; every clone sees
/// every write as soon as it is applied.
#[derive(Clone, Default, Debug)]
pub struct Store {
    index: Arc<parking_lot::RwLock<Index>>,
}

/// The store's only writer.
#[derive(Debug, Default)]
pub struct Writer {
    store: Store,
}

impl Writer {
    /// A writer over a new, empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// A reader of this writer's store.
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// Applies an event; returns None when it changed nothing (same body),
    /// so no-op updates cost nothing downstream.
    pub fn apply(&mut self, event: Event) -> Option<Change> {
        self.store.index.write().apply(event)
    }

    /// Applies events in order; returns what changed.
    pub fn apply_all(&mut self, events: impl IntoIterator<Item = Event>) -> Vec<Change> {
        let mut index = self.store.index.write();
        events.into_iter().filter_map(|e| index.apply(e)).collect()
    }

    /// Forgets every object of a kind not in `keep` (kinds nobody reads
    /// any more), without reporting changes: no reader follows them.
    pub fn retain_kinds(&mut self, keep: &std::collections::HashSet<KindKey>) {
        let mut index = self.store.index.write();
        let gone: Vec<KindKey> = index
            .by_kind
            .keys()
            .filter(|k| !keep.contains(*k))
            .cloned()
            .collect();
        for kind in gone {
            let keys: Vec<ObjectKey> = index.list(&kind, None).map(|o| o.key()).collect();
            for key in keys {
                index.remove(&key);
            }
        }
    }
}

impl Store {
    /// Reads the index; writes wait until the guard is dropped, so hold it
    /// for a computation, never across a call that may wait on the writer.
    pub fn read(&self) -> parking_lot::RwLockReadGuard<'_, Index> {
        self.index.read()
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Arc<Object>> {
        self.read().get(key).cloned()
    }

    /// Objects of a kind, ordered by namespace/name; all namespaces when
    /// `namespace` is None.
    pub fn list(&self, kind: &KindKey, namespace: Option<&str>) -> Vec<Arc<Object>> {
        self.read().list(kind, namespace).cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }
}

impl Index {
    fn apply(&mut self, event: Event) -> Option<Change> {
        match event {
            Event::Apply(obj) => self.upsert(obj),
            Event::Delete(key) => self.remove(&key).map(|old| Change::Deleted(key, old)),
        }
    }

    fn upsert(&mut self, obj: Arc<Object>) -> Option<Change> {
        let key = obj.key();
        let slot = self.by_kind.entry(key.kind.clone()).or_default();
        let previous = slot.insert(NamespacedName::of(&key), obj.clone());
        if let Some(prev) = &previous {
            if prev.json == obj.json {
                // Keep the object already shared by readers.
                slot.insert(NamespacedName::of(&key), prev.clone());
                return None;
            }
            if prev.uid != obj.uid {
                self.by_uid.remove(&prev.uid);
            }
            if is_endpoint_slice(&key.kind) {
                self.unindex_slice(prev);
            }
        }
        self.by_uid.insert(obj.uid.clone(), key.clone());
        if is_endpoint_slice(&key.kind) {
            if let Some(service) = obj.labels.get(SERVICE_NAME_LABEL) {
                self.slices_by_service
                    .entry(NamespacedName::new(obj.namespace.clone(), service.clone()))
                    .or_default()
                    .insert(obj.name.clone(), obj.clone());
            }
        }
        Some(match previous {
            Some(old) => Change::Updated(key, old),
            None => Change::Added(key),
        })
    }

    fn unindex_slice(&mut self, obj: &Object) {
        if let Some(service) = obj.labels.get(SERVICE_NAME_LABEL) {
            let nsname = NamespacedName::new(obj.namespace.clone(), service.clone());
            if let Some(set) = self.slices_by_service.get_mut(&nsname) {
                set.remove(&obj.name);
                if set.is_empty() {
                    self.slices_by_service.remove(&nsname);
                }
            }
        }
    }

    fn remove(&mut self, key: &ObjectKey) -> Option<Arc<Object>> {
        let slot = self.by_kind.get_mut(&key.kind)?;
        let removed = slot.remove(&NamespacedName::of(key))?;
        if slot.is_empty() {
            self.by_kind.remove(&key.kind);
        }
        self.by_uid.remove(&removed.uid);
        if is_endpoint_slice(&key.kind) {
            self.unindex_slice(&removed);
        }
        Some(removed)
    }

    pub fn get(&self, key: &ObjectKey) -> Option<&Arc<Object>> {
        self.by_kind.get(&key.kind)?.get(&NamespacedName::of(key))
    }

    pub fn get_by_uid(&self, uid: &str) -> Option<&Arc<Object>> {
        self.get(self.by_uid.get(uid)?)
    }

    /// Objects of a kind, ordered by namespace/name; all namespaces when
    /// `namespace` is None.
    pub fn list<'a>(
        &'a self,
        kind: &KindKey,
        namespace: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Arc<Object>> + 'a {
        let map = self.by_kind.get(kind);
        let iter: Box<dyn Iterator<Item = &'a Arc<Object>> + 'a> = match (map, namespace) {
            (None, _) => Box::new(std::iter::empty()),
            (Some(m), None) => Box::new(m.values()),
            (Some(m), Some(ns)) => Box::new(
                m.range(NamespacedName::new(ns, String::new())..)
                    .take_while(move |(k, _)| k.namespace == ns)
                    .map(|(_, v)| v),
            ),
        };
        iter
    }

    /// The EndpointSlices labelled for a Service.
    pub fn endpoint_slices(
        &self,
        namespace: &str,
        service: &str,
    ) -> impl Iterator<Item = &Arc<Object>> {
        self.slices_by_service
            .get(&NamespacedName::new(namespace, service))
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Every object, in no particular order.
    pub fn list_all(&self) -> impl Iterator<Item = &Arc<Object>> {
        self.by_kind.values().flat_map(|m| m.values())
    }

    pub fn kinds(&self) -> impl Iterator<Item = &KindKey> {
        self.by_kind.keys()
    }

    pub fn len(&self) -> usize {
        self.by_kind.values().map(|m| m.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.by_kind.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn obj(v: serde_json::Value) -> Arc<Object> {
        Arc::new(Object::from_value(v).unwrap())
    }

    #[test]
    fn apply_update_delete_report_changes() {
        let mut writer = Writer::new();
        let store = writer.store();
        let svc = obj(
            json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"ns"}}),
        );
        let key = svc.key();
        assert_eq!(
            writer.apply(Event::Apply(svc.clone())),
            Some(Change::Added(key.clone()))
        );
        assert_eq!(
            writer.apply(Event::Apply(svc.clone())),
            None,
            "identical body is no change"
        );
        let svc2 = obj(
            json!({"apiVersion":"v1","kind":"Service","metadata":{"name":"a","namespace":"ns","labels":{"x":"y"}}}),
        );
        assert_eq!(
            writer.apply(Event::Apply(svc2.clone())),
            Some(Change::Updated(key.clone(), svc.clone()))
        );
        assert!(store.read().get_by_uid(&svc.uid).is_some());
        assert_eq!(
            writer.apply(Event::Delete(key.clone())),
            Some(Change::Deleted(key.clone(), svc2))
        );
        assert_eq!(
            writer.apply(Event::Delete(key)),
            None,
            "deleting twice is no change"
        );
        assert!(store.is_empty());
    }

    #[test]
    fn list_by_namespace_and_slice_index() {
        let mut writer = Writer::new();
        let store = writer.store();
        for (ns, name) in [("a", "x"), ("b", "y"), ("b", "z"), ("c", "w")] {
            writer.apply(Event::Apply(obj(
                json!({"apiVersion":"v1","kind":"Service","metadata":{"name":name,"namespace":ns}}),
            )));
        }
        let kind = KindKey::new("v1", "Service");
        let names: Vec<_> = store
            .list(&kind, Some("b"))
            .iter()
            .map(|o| o.name.clone())
            .collect();
        assert_eq!(names, ["y", "z"]);
        assert_eq!(store.list(&kind, None).len(), 4);
        assert_eq!(store.list(&kind, Some("nope")).len(), 0);

        let slice = obj(
            json!({"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
            "metadata":{"name":"x-abc","namespace":"a","labels":{SERVICE_NAME_LABEL:"x"}},"addressType":"IPv4","endpoints":[]}),
        );
        writer.apply(Event::Apply(slice.clone()));
        assert_eq!(store.read().endpoint_slices("a", "x").count(), 1);
        // relabelled to another service: the index follows
        let moved = obj(
            json!({"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
            "metadata":{"name":"x-abc","namespace":"a","labels":{SERVICE_NAME_LABEL:"other"}},"addressType":"IPv4","endpoints":[]}),
        );
        writer.apply(Event::Apply(moved));
        assert_eq!(store.read().endpoint_slices("a", "x").count(), 0);
        assert_eq!(store.read().endpoint_slices("a", "other").count(), 1);
        writer.apply(Event::Delete(slice.key()));
        assert_eq!(store.read().endpoint_slices("a", "other").count(), 0);
    }

    #[test]
    fn rejects_objects_without_identity() {
        assert!(matches!(
            Object::from_value(json!({"kind":"Service"})),
            Err(ObjectError::Missing("apiVersion"))
        ));
        assert!(matches!(
            Object::from_value(json!({"apiVersion":"v1","kind":"Service","metadata":{}})),
            Err(ObjectError::Missing("metadata.name"))
        ));
    }
}
