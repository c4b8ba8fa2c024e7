//! Secrets (SDS): TLS material straight from `kubernetes.io/tls` Secrets,
//! for the ones some served virtual host names; key material never enters a
//! plugin. A Secret that is missing or unreadable is not served, and says
//! why on the objects that name it.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Secret;

use super::resources::Resources;
use crate::envoy;
use crate::store::{Index, KindKey, NamespacedName, ObjectKey};
use crate::xds::{Resource, type_url};

#[derive(Default)]
pub(super) struct Secrets {
    users: BTreeMap<NamespacedName, usize>,
    /// Named but not servable, and why.
    errors: BTreeMap<NamespacedName, String>,
    /// Secrets whose use appeared or vanished this round.
    pending: BTreeSet<NamespacedName>,
}

impl Secrets {
    pub fn acquire(&mut self, secret: &NamespacedName) {
        let users = self.users.entry(secret.clone()).or_insert(0);
        *users += 1;
        if *users == 1 {
            self.pending.insert(secret.clone());
        }
    }

    pub fn release(&mut self, secret: &NamespacedName) {
        if let Some(users) = self.users.get_mut(secret) {
            *users -= 1;
            if *users == 0 {
                self.pending.insert(secret.clone());
            }
        }
    }

    pub fn error(&self, secret: &NamespacedName) -> Option<&String> {
        self.errors.get(secret)
    }

    /// Builds or removes the secrets whose use changed and those of
    /// `changed` in use; returns what it looked at and those whose
    /// servability changed (the filter chains serving them come or go).
    pub fn build(
        &mut self,
        changed: &BTreeSet<NamespacedName>,
        store: &Index,
        out: &mut Resources,
    ) -> (BTreeSet<NamespacedName>, Vec<NamespacedName>) {
        let mut looked_at = std::mem::take(&mut self.pending);
        looked_at.extend(
            changed
                .iter()
                .filter(|k| self.users.contains_key(*k))
                .cloned(),
        );
        let mut flipped = Vec::new();
        for key in &looked_at {
            let name = envoy::names::secret(&key.namespace, &key.name);
            let was_valid = out.get(type_url::SECRET, &name).is_some();
            if self.users.get(key).copied().unwrap_or(0) == 0 {
                self.users.remove(key);
                self.errors.remove(key);
                out.remove(type_url::SECRET, &name);
            } else {
                let obj_key = ObjectKey::new(
                    KindKey::new("v1", "Secret"),
                    key.namespace.clone(),
                    key.name.clone(),
                );
                let compiled = match store.get(&obj_key) {
                    None => Err(format!("Secret {key} does not exist")),
                    Some(obj) => match obj.parse::<Secret>() {
                        // Never serde's message: it quotes the value (key material).
                        Err(e) => Err(format!(
                            "Secret {key} cannot be read: {}",
                            envoy::parse_error_without_content(&e)
                        )),
                        Ok(s) => envoy::secret(&s).map_err(|e| format!("Secret {key}: {e}")),
                    },
                };
                match compiled {
                    Ok(secret) => {
                        self.errors.remove(key);
                        out.put(Resource::encode(
                            type_url::SECRET,
                            name.clone(),
                            &secret,
                            vec![obj_key],
                        ));
                    }
                    Err(message) => {
                        self.errors.insert(key.clone(), message);
                        out.remove(type_url::SECRET, &name);
                    }
                }
            }
            if was_valid != out.get(type_url::SECRET, &name).is_some() {
                flipped.push(key.clone());
            }
        }
        (looked_at, flipped)
    }
}
