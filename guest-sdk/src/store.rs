//! Read-only access to the host's object cache.

use std::any::TypeId;
use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{ClusterResourceScope, Metadata, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::types::{Error, Object};

/// What a translation may read. Inside a component this is the host's cache
/// ([`HostStore`]); natively it is usually a [`MemoryStore`].
///
/// The host records every read: when an object a translation read (or listed)
/// changes, the root is translated again. Read only what you need.
pub trait Store {
    /// One object; `namespace` is empty for cluster-scoped kinds.
    fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Object>;

    /// All objects of a kind, in one namespace or (`None`) in all.
    fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Object>;
}

/// Typed reads. These are inherent methods of `dyn Store` (rather than
/// generic trait methods) so [`Translator::translate`](crate::Translator)
/// can take `&dyn Store` and still call them.
impl dyn Store + '_ {
    /// One object as a k8s-openapi type, e.g.
    /// `store.get_typed::<Service>("default", "web")`. The namespace is
    /// ignored for cluster-scoped kinds. `Err` when the object exists but does
    /// not parse.
    pub fn get_typed<K>(&self, namespace: &str, name: &str) -> Result<Option<K>, Error>
    where
        K: Resource + DeserializeOwned + 'static,
    {
        self.get(K::API_VERSION, K::KIND, scoped::<K>(namespace), name)
            .map(|object| object.parse())
            .transpose()
    }

    /// All objects of a kind as k8s-openapi values, e.g.
    /// `store.list_typed::<IngressClass>(None)`. `Err` on the first object
    /// that does not parse.
    pub fn list_typed<K>(&self, namespace: Option<&str>) -> Result<Vec<K>, Error>
    where
        K: Resource + DeserializeOwned + 'static,
    {
        self.list(K::API_VERSION, K::KIND, namespace.map(scoped::<K>))
            .iter()
            .map(Object::parse)
            .collect()
    }
}

/// Cluster-scoped objects are indexed without a namespace; callers need not
/// remember which kinds those are.
pub(crate) fn scoped<K: Resource + 'static>(namespace: &str) -> &str {
    if TypeId::of::<K::Scope>() == TypeId::of::<ClusterResourceScope>() {
        ""
    } else {
        namespace
    }
}

/// The host's cache, through the contract's `store` import. Only exists in
/// `wasm32` builds: natively the import is a stub that panics.
#[cfg(target_arch = "wasm32")]
#[derive(Clone, Copy, Debug, Default)]
pub struct HostStore;

#[cfg(target_arch = "wasm32")]
impl Store for HostStore {
    fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Object> {
        crate::bindings::isobar::plugin::store::get(api_version, kind, namespace, name)
    }

    fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Object> {
        crate::bindings::isobar::plugin::store::list(api_version, kind, namespace)
    }
}

/// namespace -> name -> object.
type Namespaces = BTreeMap<String, BTreeMap<String, Object>>;

/// An in-memory store for native tests and benchmarks.
///
/// Lists come back ordered by namespace, then name (the host gives no order
/// guarantee, so plugins must not depend on one).
#[derive(Clone, Debug, Default)]
pub struct MemoryStore {
    // apiVersion -> kind -> namespace -> name: every lookup borrows its
    // keys (no allocation per read, which matters when native runs are
    // benchmarked against Wasm), and a list is one subtree.
    objects: BTreeMap<String, BTreeMap<String, Namespaces>>,
}

impl MemoryStore {
    pub fn new() -> MemoryStore {
        MemoryStore::default()
    }

    /// Adds or replaces an object; returns the one it replaced.
    pub fn insert(&mut self, object: Object) -> Option<Object> {
        self.objects
            .entry(object.api_version.clone())
            .or_default()
            .entry(object.kind.clone())
            .or_default()
            .entry(object.namespace.clone())
            .or_default()
            .insert(object.name.clone(), object)
    }

    /// Adds or replaces a typed resource.
    pub fn insert_resource<K>(&mut self, resource: &K) -> Option<Object>
    where
        K: Resource + Metadata<Ty = ObjectMeta> + Serialize,
    {
        self.insert(Object::from_resource(resource))
    }

    /// Adds or replaces an object given as Kubernetes JSON.
    pub fn insert_json(&mut self, value: serde_json::Value) -> Result<Option<Object>, Error> {
        Ok(self.insert(Object::from_json(value)?))
    }

    /// Builder form of [`MemoryStore::insert`].
    pub fn with(mut self, object: Object) -> MemoryStore {
        self.insert(object);
        self
    }

    /// Builder form of [`MemoryStore::insert_resource`].
    pub fn with_resource<K>(mut self, resource: &K) -> MemoryStore
    where
        K: Resource + Metadata<Ty = ObjectMeta> + Serialize,
    {
        self.insert_resource(resource);
        self
    }

    /// A store holding the given Kubernetes JSON objects.
    pub fn from_json_values(
        values: impl IntoIterator<Item = serde_json::Value>,
    ) -> Result<MemoryStore, Error> {
        let mut store = MemoryStore::new();
        for value in values {
            store.insert_json(value)?;
        }
        Ok(store)
    }

    pub fn remove(
        &mut self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<Object> {
        self.objects
            .get_mut(api_version)?
            .get_mut(kind)?
            .get_mut(namespace)?
            .remove(name)
    }

    /// Every object, grouped by kind, then namespace.
    pub fn objects(&self) -> impl Iterator<Item = &Object> {
        self.objects
            .values()
            .flat_map(BTreeMap::values)
            .flat_map(BTreeMap::values)
            .flat_map(BTreeMap::values)
    }

    pub fn len(&self) -> usize {
        self.objects().count()
    }

    pub fn is_empty(&self) -> bool {
        self.objects().next().is_none()
    }

    fn namespaces(&self, api_version: &str, kind: &str) -> Option<&Namespaces> {
        self.objects.get(api_version)?.get(kind)
    }
}

impl FromIterator<Object> for MemoryStore {
    fn from_iter<I: IntoIterator<Item = Object>>(objects: I) -> MemoryStore {
        let mut store = MemoryStore::new();
        for object in objects {
            store.insert(object);
        }
        store
    }
}

impl Extend<Object> for MemoryStore {
    fn extend<I: IntoIterator<Item = Object>>(&mut self, objects: I) {
        for object in objects {
            self.insert(object);
        }
    }
}

impl Store for MemoryStore {
    fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Object> {
        self.namespaces(api_version, kind)?
            .get(namespace)?
            .get(name)
            .cloned()
    }

    fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Object> {
        let Some(namespaces) = self.namespaces(api_version, kind) else {
            return Vec::new();
        };
        match namespace {
            None => namespaces
                .values()
                .flat_map(BTreeMap::values)
                .cloned()
                .collect(),
            Some(namespace) => namespaces
                .get(namespace)
                .map(|objects| objects.values().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::networking::v1::IngressClass;
    use serde_json::json;

    fn store() -> MemoryStore {
        MemoryStore::from_json_values([
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"namespace": "a", "name": "web", "uid": "u1"},
                   "spec": {"ports": [{"port": 80}]}}),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"namespace": "b", "name": "web"}}),
            json!({"apiVersion": "v1", "kind": "Service",
                   "metadata": {"namespace": "ab", "name": "x"}}),
            json!({"apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
                   "metadata": {"name": "isobar"},
                   "spec": {"controller": "isobar.dev/ingress-controller"}}),
        ])
        .unwrap()
    }

    #[test]
    fn get_and_list() {
        let store = store();
        let object = store.get("v1", "Service", "a", "web").unwrap();
        assert_eq!(object.uid, "u1");
        assert!(store.get("v1", "Service", "c", "web").is_none());
        assert_eq!(store.list("v1", "Service", None).len(), 3);
        let in_a = store.list("v1", "Service", Some("a"));
        assert_eq!(in_a.len(), 1, "namespace 'a' must not match 'ab'");
        assert!(store.list("v1", "Pod", None).is_empty());
        assert_eq!(store.len(), 4);
    }

    #[test]
    fn typed_reads() {
        let store = store();
        let store: &dyn Store = &store;
        let service = store.get_typed::<Service>("a", "web").unwrap().unwrap();
        assert_eq!(service.spec.unwrap().ports.unwrap()[0].port, 80);
        // Cluster-scoped: the namespace argument is ignored.
        let class = store
            .get_typed::<IngressClass>("anything", "isobar")
            .unwrap();
        assert!(class.is_some());
        assert_eq!(
            store.list_typed::<IngressClass>(Some("x")).unwrap().len(),
            1
        );
        assert_eq!(store.list_typed::<Service>(Some("b")).unwrap().len(), 1);
    }

    #[test]
    fn typed_read_surfaces_parse_errors() {
        let store = MemoryStore::new().with(Object {
            api_version: "v1".into(),
            kind: "Service".into(),
            namespace: "a".into(),
            name: "bad".into(),
            uid: String::new(),
            json: r#"{"spec": {"ports": "not a list"}}"#.into(),
        });
        let store: &dyn Store = &store;
        let err = store.get_typed::<Service>("a", "bad").unwrap_err();
        assert_eq!(err.reason, "InvalidObject");
        assert!(err.message.contains("a/bad"), "{}", err.message);
        assert!(store.list_typed::<Service>(None).is_err());
    }

    #[test]
    fn resources_round_trip() {
        let mut service = Service::default();
        service.metadata.namespace = Some("ns".into());
        service.metadata.name = Some("svc".into());
        let object = Object::from_resource(&service);
        assert_eq!(
            (object.api_version.as_str(), object.kind.as_str()),
            ("v1", "Service")
        );
        assert!(object.is::<Service>());
        let again = Object::from_json_str(&object.json).unwrap();
        assert_eq!((again.namespace, again.name), ("ns".into(), "svc".into()));
        let mut store = MemoryStore::new().with_resource(&service);
        assert!(store.remove("v1", "Service", "ns", "svc").is_some());
        assert!(store.is_empty());
    }

    #[test]
    fn json_without_kind_is_rejected() {
        let err = Object::from_json(json!({"metadata": {"name": "x"}})).unwrap_err();
        assert_eq!(err.reason, "InvalidObject");
    }
}
