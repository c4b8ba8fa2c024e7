//! Listeners (LDS, socket listeners): each name merged from its roots, and
//! its Envoy Listener rebuilt only when its definition or its set of SNI
//! hosts changes, never with every route.

use std::collections::{BTreeMap, HashMap};

use super::resources::Resources;
use crate::envoy;
use crate::ir;
use crate::translate::merge::MergedListener;
use crate::xds::type_url;

#[derive(Default)]
pub(super) struct Listeners {
    merged: BTreeMap<String, MergedListener>,
    /// What each Listener resource was last built from.
    built_from: HashMap<String, (ir::Listener, Vec<envoy::TlsDomain>)>,
}

impl Listeners {
    pub fn get(&self, name: &str) -> Option<&MergedListener> {
        self.merged.get(name)
    }

    /// Takes a listener's new merge; true when its definition changed (its
    /// virtual hosts must be validated again).
    pub fn set(&mut self, name: &str, merged: Option<MergedListener>) -> bool {
        match merged {
            Some(m) => {
                let changed = self.merged.get(name).map(|l| &l.listener) != Some(&m.listener);
                self.merged.insert(name.to_string(), m);
                changed
            }
            None => self.merged.remove(name).is_some(),
        }
    }

    /// Serves listener `name` with the SNI hosts `tls` (HTTPS), or removes
    /// it when no root declares it any more.
    pub fn build(&mut self, name: &str, tls: Vec<envoy::TlsDomain>, out: &mut Resources) {
        let Some(merged) = self.merged.get(name) else {
            self.built_from.remove(name);
            out.remove(type_url::LISTENER, name);
            return;
        };
        let inputs = (merged.listener.clone(), tls);
        if self.built_from.get(name) == Some(&inputs) {
            return;
        }
        let l = envoy::listener(&inputs.0, &inputs.1);
        // An HTTPS listener without a servable host has no filter chain,
        // which Envoy rejects: leave it out until one appears.
        if envoy::validate_listener(&l).is_empty() {
            out.put(crate::xds::Resource::encode(
                type_url::LISTENER,
                name.to_string(),
                &l,
                merged.roots.clone(),
            ));
        } else {
            out.remove(type_url::LISTENER, name);
        }
        self.built_from.insert(name.to_string(), inputs);
    }
}
