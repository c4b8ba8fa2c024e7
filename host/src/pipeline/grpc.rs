//! Proxyless gRPC clients: an API listener per exact domain of a plain-HTTP
//! listener (`domain` and `domain:port`), sent only to clients that ask for
//! it by name, and the domain's own route configuration, so a client
//! resolving `xds:///domain` fetches one host, not the listener's thousands.

use std::collections::HashMap;

use super::resources::Resources;
use super::vhosts::CompiledVhost;
use crate::envoy;
use crate::translate::merge::VhostKey;
use crate::xds::{Resource, type_url};

#[derive(Default)]
pub(super) struct ApiListeners {
    /// API listener name -> the virtual host it serves.
    owners: HashMap<String, VhostKey>,
}

impl ApiListeners {
    /// `key` no longer serves what `old` did.
    pub fn release(&mut self, key: &VhostKey, old: &CompiledVhost, out: &mut Resources) {
        let mut owned = false;
        for name in &old.api_listeners {
            if self.owners.get(name) == Some(key) {
                owned = true;
                self.owners.remove(name);
                out.remove(type_url::LISTENER, name);
            }
        }
        if owned {
            out.remove(
                type_url::ROUTE,
                &envoy::names::api_route_config(&key.listener, &key.domain),
            );
        }
    }

    /// `key` now serves `new`. One domain on two plain-HTTP listeners: the
    /// first to claim an API listener keeps it.
    pub fn acquire(&mut self, key: &VhostKey, new: &CompiledVhost, out: &mut Resources) {
        let rc = envoy::names::api_route_config(&key.listener, &key.domain);
        let mut owns = false;
        for name in &new.api_listeners {
            if self.owners.contains_key(name) {
                continue;
            }
            owns = true;
            self.owners.insert(name.clone(), key.clone());
            let mut res = Resource::encode(
                type_url::LISTENER,
                name.clone(),
                &envoy::api_listener(name, &rc),
                new.roots.clone(),
            );
            res.named_only = true;
            out.put(res);
        }
        if owns && let Some(encoded) = &new.encoded {
            let body = envoy::encode_route_configuration(&rc, [encoded.as_ref()]);
            let mut res = Resource::new(type_url::ROUTE, rc, body, new.roots.clone());
            res.named_only = true;
            out.put(res);
        }
    }
}
