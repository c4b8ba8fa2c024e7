//! Endpoints (EDS): a cluster's ClusterLoadAssignment, straight from its
//! Service's EndpointSlices; endpoint churn never calls a plugin.

use std::collections::{BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;

use super::clusters::service_key;
use super::resources::Resources;
use crate::envoy;
use crate::ir;
use crate::store::{Change, Index, NamespacedName, ObjectKey, SERVICE_NAME_LABEL};
use crate::xds::{Resource, type_url};

#[derive(Default)]
pub(super) struct Endpoints {
    /// EndpointSlice -> the Service it was labelled for when last seen (a
    /// deleted slice's labels are gone from the store).
    slice_services: HashMap<ObjectKey, NamespacedName>,
}

impl Endpoints {
    /// The Services whose endpoints a change to slice `change` concerns:
    /// the one it belonged to and the one it belongs to now.
    pub fn services_of_slice(
        &mut self,
        change: &Change,
        store: &Index,
        out: &mut BTreeSet<NamespacedName>,
    ) {
        let key = change.key();
        if let Some(before) = self.slice_services.remove(key) {
            out.insert(before);
        }
        let now = store
            .get(key)
            .and_then(|o| o.labels.get(SERVICE_NAME_LABEL).cloned());
        if let Some(svc) = now {
            let owner = NamespacedName::new(key.namespace.clone(), svc);
            out.insert(owner.clone());
            self.slice_services.insert(key.clone(), owner);
        }
    }

    /// Serves the endpoints of the clusters built (or removes them with
    /// their cluster).
    pub fn build(
        &mut self,
        clusters: &[(String, Option<ir::Backend>)],
        store: &Index,
        out: &mut Resources,
    ) {
        for (name, backend) in clusters {
            let Some(backend) = backend else {
                out.remove(type_url::ENDPOINT, name);
                continue;
            };
            let svc_key = service_key(backend);
            let service: Option<Service> = store.get(&svc_key).and_then(|o| o.parse().ok());
            let slices: Vec<EndpointSlice> = store
                .endpoint_slices(&backend.namespace, &backend.name)
                .filter_map(|o| o.parse().ok())
                .collect();
            let cla = match &service {
                Some(s) => envoy::load_assignment(name, s, &slices, backend.port),
                None => envoy::load_assignment(name, &Service::default(), &[], backend.port),
            };
            out.put(Resource::encode(
                type_url::ENDPOINT,
                name.clone(),
                &cla,
                vec![svc_key],
            ));
        }
    }
}
