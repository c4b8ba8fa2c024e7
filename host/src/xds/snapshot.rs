//! A versioned, validated, immutable set of Envoy resources. Every resource
//! is encoded once when the snapshot is built and shared by every stream.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use bytes::Bytes;

use crate::store::ObjectKey;

pub mod type_url {
    pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
    pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
    pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
    pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
    pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

    /// Make-before-break: what a listener or route points at is sent first.
    pub const PUSH_ORDER: [&str; 5] = [CLUSTER, ENDPOINT, SECRET, LISTENER, ROUTE];
}

/// One encoded Envoy resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    pub type_url: String,
    pub name: String,
    /// The protobuf encoding of the resource message (not wrapped in Any).
    pub body: Bytes,
    /// Content hash; the per-resource version of delta xDS.
    pub version: String,
    /// The Kubernetes objects this resource was built from, so a NACK can be
    /// reported on them.
    /// Shared: an aggregate resource (a route configuration of thousands of
    /// hosts) keeps the same list across snapshots.
    pub sources: Arc<[ObjectKey]>,
    /// Sent only to clients that ask for it by name, never in a wildcard
    /// response: API listeners are for proxyless gRPC clients, not Envoy.
    pub named_only: bool,
}

impl Resource {
    pub fn new(
        type_url: &str,
        name: String,
        body: Bytes,
        sources: impl Into<Arc<[ObjectKey]>>,
    ) -> Self {
        Resource {
            type_url: type_url.to_string(),
            name,
            // A fast content hash: a 10k-host route configuration is megabytes.
            version: format!("{:016x}", xxhash_rust::xxh3::xxh3_64(&body)),
            body,
            sources: sources.into(),
            named_only: false,
        }
    }

    pub fn encode<M: prost::Message>(
        type_url: &str,
        name: String,
        msg: &M,
        sources: impl Into<Arc<[ObjectKey]>>,
    ) -> Self {
        Self::new(type_url, name, Bytes::from(msg.encode_to_vec()), sources)
    }

    pub fn to_any(&self) -> prost_types::Any {
        prost_types::Any {
            type_url: self.type_url.clone(),
            value: self.body.to_vec(),
        }
    }
}

/// One type's resources by name. A persistent map: a snapshot is published
/// with an O(1) clone, a round changes it in O(log n), and the difference
/// between two snapshots of one pipeline skips everything they share.
pub type Resources = imbl::OrdMap<String, Arc<Resource>>;

/// What changed in one type from one snapshot to another.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TypeChanges {
    /// Added, or different in any way (body, sources, visibility).
    pub updated: BTreeSet<String>,
    pub removed: BTreeSet<String>,
}

impl TypeChanges {
    /// The difference between two versions of one type's resources.
    pub fn between(old: Option<&Resources>, new: Option<&Resources>) -> Self {
        let mut changes = TypeChanges::default();
        match (old, new) {
            (Some(old), Some(new)) => {
                for item in old.diff(new) {
                    match item {
                        imbl::ordmap::DiffItem::Add(name, _)
                        | imbl::ordmap::DiffItem::Update { new: (name, _), .. } => {
                            changes.updated.insert(name.clone());
                        }
                        imbl::ordmap::DiffItem::Remove(name, _) => {
                            changes.removed.insert(name.clone());
                        }
                    }
                }
            }
            (None, Some(new)) => changes.updated.extend(new.keys().cloned()),
            (Some(old), None) => changes.removed.extend(old.keys().cloned()),
            (None, None) => {}
        }
        changes
    }

    pub fn is_empty(&self) -> bool {
        self.updated.is_empty() && self.removed.is_empty()
    }
}

#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Increases with every accepted snapshot; the SotW version_info.
    pub version: u64,
    /// type URL -> name -> resource.
    pub resources: BTreeMap<String, Resources>,
}

impl Snapshot {
    pub fn of_type(&self, type_url: &str) -> Option<&Resources> {
        self.resources.get(type_url)
    }

    pub fn get(&self, type_url: &str, name: &str) -> Option<&Arc<Resource>> {
        self.resources.get(type_url)?.get(name)
    }

    pub fn len(&self) -> usize {
        self.resources.values().map(|r| r.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Per type, what changed going from `self` to `next` (types without
    /// changes are left out). Types whose maps are shared are skipped
    /// outright, and so are the shared parts of the others.
    pub fn changes_to(&self, next: &Snapshot) -> BTreeMap<String, TypeChanges> {
        let types: BTreeSet<&String> = self.resources.keys().chain(next.resources.keys()).collect();
        types
            .into_iter()
            .filter_map(|t| {
                let (old, new) = (self.of_type(t), next.of_type(t));
                if let (Some(a), Some(b)) = (old, new)
                    && a.ptr_eq(b)
                {
                    return None;
                }
                let changes = TypeChanges::between(old, new);
                (!changes.is_empty()).then(|| (t.clone(), changes))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(name: &str, body: &'static [u8]) -> Arc<Resource> {
        Arc::new(Resource::new(
            type_url::CLUSTER,
            name.to_string(),
            Bytes::from_static(body),
            vec![],
        ))
    }

    #[test]
    fn changes_between_snapshots() {
        let mut a = Snapshot::default();
        let clusters = a
            .resources
            .entry(type_url::CLUSTER.to_string())
            .or_default();
        for (n, b) in [("keep", &b"1"[..]), ("change", b"1"), ("drop", b"1")] {
            clusters.insert(n.to_string(), res(n, b));
        }
        a.resources
            .entry(type_url::SECRET.to_string())
            .or_default()
            .insert("s".into(), res("s", b"k"));
        let mut b = a.clone();
        let clusters = b.resources.get_mut(type_url::CLUSTER).unwrap();
        clusters.insert("change".into(), res("change", b"2"));
        clusters.remove("drop");
        clusters.insert("new".into(), res("new", b"1"));
        // Re-inserting equal content is not a change.
        clusters.insert("keep".into(), res("keep", b"1"));
        b.resources.insert(
            type_url::ROUTE.to_string(),
            [("r".to_string(), res("r", b"x"))].into_iter().collect(),
        );

        let changes = a.changes_to(&b);
        assert_eq!(
            changes.keys().collect::<Vec<_>>(),
            [type_url::CLUSTER, type_url::ROUTE]
        );
        let c = &changes[type_url::CLUSTER];
        assert_eq!(c.updated, ["change".to_string(), "new".to_string()].into());
        assert_eq!(c.removed, ["drop".to_string()].into());
        assert_eq!(changes[type_url::ROUTE].updated, ["r".to_string()].into());

        let back = b.changes_to(&a);
        assert_eq!(back[type_url::ROUTE].removed, ["r".to_string()].into());
        assert!(a.changes_to(&a.clone()).is_empty());
    }
}
