//! Route configurations (RDS) of socket listeners: one per plain-HTTP
//! listener holding all its virtual hosts, one per SNI domain of an HTTPS
//! listener holding that domain only. Virtual hosts arrive encoded and are
//! joined without re-encoding.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use super::resources::Resources;
use super::vhosts::{CompiledVhost, VirtualHosts};
use crate::envoy;
use crate::ir;
use crate::store::ObjectKey;
use crate::xds::{Resource, type_url};

/// The roots behind one listener's hosts, counted per host, and the list
/// shared across snapshots until a root joins or leaves (content changes
/// do not rebuild it).
#[derive(Default)]
struct ListenerRoots {
    counts: BTreeMap<ObjectKey, usize>,
    /// Some count reached zero since the list was last built.
    zeroes: bool,
    shared: Option<Arc<[ObjectKey]>>,
}

#[derive(Default)]
pub(super) struct RouteConfigs {
    roots: HashMap<String, ListenerRoots>,
}

impl RouteConfigs {
    pub fn release(&mut self, listener: &str, old: &CompiledVhost) {
        if let Some(roots) = self.roots.get_mut(listener) {
            // Entries that drop to zero stay until the list is next read: a
            // root recompiled in the same round keeps the shared list.
            for r in &old.roots {
                if let Some(n) = roots.counts.get_mut(r) {
                    *n -= 1;
                    roots.zeroes |= *n == 0;
                }
            }
        }
    }

    pub fn acquire(&mut self, listener: &str, new: &CompiledVhost) {
        let roots = self.roots.entry(listener.to_string()).or_default();
        for r in &new.roots {
            match roots.counts.get_mut(r) {
                Some(n) => *n += 1,
                None => {
                    roots.counts.insert(r.clone(), 1);
                    roots.shared = None;
                }
            }
        }
    }

    fn sources(&mut self, listener: &str) -> Arc<[ObjectKey]> {
        let roots = self.roots.entry(listener.to_string()).or_default();
        if roots.zeroes {
            let before = roots.counts.len();
            roots.counts.retain(|_, n| *n > 0);
            roots.zeroes = false;
            if roots.counts.len() != before {
                roots.shared = None;
            }
        }
        roots
            .shared
            .get_or_insert_with(|| roots.counts.keys().cloned().collect())
            .clone()
    }

    /// Serves the route configurations of listener `name` (protocol
    /// `protocol`, none when it is gone) from its compiled hosts; removes
    /// the ones it no longer has. Returns the SNI domains an HTTPS listener
    /// can serve (those whose secret is in the snapshot).
    pub fn build(
        &mut self,
        name: &str,
        protocol: Option<ir::ListenerProtocol>,
        vhosts: &VirtualHosts,
        out: &mut Resources,
    ) -> Vec<envoy::TlsDomain> {
        let mut keep = BTreeSet::new();
        let mut tls = Vec::new();
        match protocol {
            None => {
                self.roots.remove(name);
            }
            Some(ir::ListenerProtocol::Http) => {
                let encoded: Vec<&[u8]> = vhosts
                    .on_listener(name)
                    .filter_map(|(_, v)| v.encoded.as_deref())
                    .collect();
                let body = envoy::encode_route_configuration(name, encoded);
                let sources = self.sources(name);
                out.put(Resource::new(
                    type_url::ROUTE,
                    name.to_string(),
                    body,
                    sources,
                ));
                keep.insert(name.to_string());
            }
            Some(ir::ListenerProtocol::Https) => {
                for (key, v) in vhosts.on_listener(name) {
                    let (Some(encoded), Some(secret)) = (&v.encoded, &v.secret) else {
                        continue;
                    };
                    let secret_name = envoy::names::secret(&secret.namespace, &secret.name);
                    if out.get(type_url::SECRET, &secret_name).is_none() {
                        continue;
                    }
                    let rc_name = envoy::names::https_route_config(name, &key.domain);
                    let body = envoy::encode_route_configuration(&rc_name, [encoded.as_ref()]);
                    out.put(Resource::new(
                        type_url::ROUTE,
                        rc_name.clone(),
                        body,
                        v.roots.clone(),
                    ));
                    keep.insert(rc_name);
                    tls.push(envoy::TlsDomain {
                        domain: key.domain.clone(),
                        secret_name,
                    });
                }
            }
        }
        // The listener's own configuration and `{listener}/...`, never the
        // gRPC ones (`grpc:...`).
        let mut stale = out.names_with_prefix(type_url::ROUTE, &format!("{name}/"));
        if out.get(type_url::ROUTE, name).is_some() {
            stale.push(name.to_string());
        }
        stale.retain(|n| !keep.contains(n));
        for r in stale {
            out.remove(type_url::ROUTE, &r);
        }
        tls
    }
}
