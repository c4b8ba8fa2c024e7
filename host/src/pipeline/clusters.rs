//! Clusters (CDS): one per backend (Service port, protocol, balancing)
//! some served route uses, counted per use; built when the first use
//! appears or the Service changes, removed with the last use.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::resources::Resources;
use crate::envoy;
use crate::ir;
use crate::store::{KindKey, NamespacedName, ObjectKey};
use crate::xds::{Resource, type_url};

struct Uses {
    backend: ir::Backend,
    users: usize,
}

#[derive(Default)]
pub(super) struct Clusters {
    uses: BTreeMap<String, Uses>,
    /// Service -> the clusters built for its ports.
    by_service: HashMap<NamespacedName, BTreeSet<String>>,
    /// Clusters whose use appeared or vanished this round.
    pending: BTreeSet<String>,
}

impl Clusters {
    pub fn acquire(&mut self, backend: &ir::Backend) {
        let name = envoy::names::cluster(backend);
        let entry = self.uses.entry(name.clone()).or_insert_with(|| Uses {
            backend: backend.clone(),
            users: 0,
        });
        if entry.users == 0 {
            self.by_service
                .entry(NamespacedName::new(&backend.namespace, &backend.name))
                .or_default()
                .insert(name.clone());
            self.pending.insert(name);
        }
        entry.users += 1;
    }

    pub fn release(&mut self, backend: &ir::Backend) {
        let name = envoy::names::cluster(backend);
        if let Some(entry) = self.uses.get_mut(&name) {
            entry.users -= 1;
            if entry.users == 0 {
                self.pending.insert(name);
            }
        }
    }

    /// Builds or removes the clusters whose use changed and those of the
    /// Services that changed; returns every cluster name looked at (their
    /// endpoints follow).
    pub fn build(
        &mut self,
        changed_services: &BTreeSet<NamespacedName>,
        out: &mut Resources,
    ) -> Vec<(String, Option<ir::Backend>)> {
        let mut names = std::mem::take(&mut self.pending);
        for svc in changed_services {
            names.extend(self.by_service.get(svc).into_iter().flatten().cloned());
        }
        let mut built = Vec::with_capacity(names.len());
        for name in names {
            let live = self
                .uses
                .get(&name)
                .filter(|u| u.users > 0)
                .map(|u| u.backend.clone());
            match &live {
                None => {
                    if let Some(u) = self.uses.remove(&name) {
                        let svc = NamespacedName::new(&u.backend.namespace, &u.backend.name);
                        if let Some(set) = self.by_service.get_mut(&svc) {
                            set.remove(&name);
                            if set.is_empty() {
                                self.by_service.remove(&svc);
                            }
                        }
                    }
                    out.remove(type_url::CLUSTER, &name);
                }
                Some(backend) => {
                    out.put(Resource::encode(
                        type_url::CLUSTER,
                        name.clone(),
                        &envoy::cluster(backend),
                        vec![service_key(backend)],
                    ));
                }
            }
            built.push((name, live));
        }
        built
    }
}

/// The Service behind a backend.
pub(super) fn service_key(backend: &ir::Backend) -> ObjectKey {
    ObjectKey::new(
        KindKey::new("v1", "Service"),
        backend.namespace.clone(),
        backend.name.clone(),
    )
}
