//! A versioned, validated, immutable set of Envoy resources. Every resource
//! is encoded once when the snapshot is built and shared by every stream.

use std::collections::BTreeMap;
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

pub type Resources = BTreeMap<String, Arc<Resource>>;

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
}
