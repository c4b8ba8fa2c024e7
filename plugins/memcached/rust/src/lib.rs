#![doc = include_str!("../../README.md")]
//!
//! ## This crate
//!
//! [`MemcachedReconciler`] implements the behaviour above as an
//! [`isobar_guest::Reconciler`]; natively it is tested against a
//! `MemoryStore` (`src/tests.rs`, one group of tests per numbered rule).

#[cfg(test)]
mod tests;

use isobar_guest::k8s_openapi::Resource;
use isobar_guest::k8s_openapi::api::apps::v1::Deployment;
use isobar_guest::k8s_openapi::api::core::v1::Pod;
use isobar_guest::prelude::*;
use isobar_guest::serde_json::{Value, json};

/// The reconciled kind's group/version and kind.
pub const API_VERSION: &str = "cache.example.com/v1alpha1";
pub const KIND: &str = "Memcached";
/// Held on every live Memcached until its Deployment has been deleted.
pub const FINALIZER: &str = "cache.example.com/finalizer";
pub const IMAGE: &str = "memcached:1.6.26-alpine3.19";
/// The largest `spec.size` accepted (the CRD's maximum).
pub const MAX_SIZE: i64 = 100;

/// The Memcached operator.
pub struct MemcachedReconciler;

impl Reconciler for MemcachedReconciler {
    fn describe() -> ReconcilerInfo {
        ReconcilerInfo::new(
            "memcached",
            env!("CARGO_PKG_VERSION"),
            KindRef::new(API_VERSION, KIND),
        )
        .owns::<Deployment>()
        .watch::<Pod>()
    }

    fn reconcile(object: &Object, store: &dyn Store) -> Result<Vec<Action>, Error> {
        let memcached: Value = isobar_guest::serde_json::from_str(&object.json).map_err(|e| {
            Error::new(
                "InvalidObject",
                format!("{KIND} {}: invalid JSON: {e}", object.display_name()),
            )
        })?;
        if !memcached.is_object() {
            return Err(Error::new(
                "InvalidObject",
                format!(
                    "{KIND} {}: the JSON is not an object",
                    object.display_name()
                ),
            ));
        }
        let (namespace, name) = (object.namespace.as_str(), object.name.as_str());
        let mut actions = Vec::new();

        // 1 and 2: the finalizer.
        match FinalizerState::of(&memcached, FINALIZER)? {
            FinalizerState::Cleanup => {
                return Ok(vec![
                    Action::event(
                        EventType::Normal,
                        "Deleting",
                        format!("Deleting Deployment {name}"),
                    ),
                    Action::delete(ObjectId::of::<Deployment>(namespace, name)),
                    Action::remove_finalizer(FINALIZER),
                ]);
            }
            FinalizerState::Released => return Ok(actions),
            FinalizerState::Missing => actions.push(Action::add_finalizer(FINALIZER)),
            FinalizerState::Present => {}
        }

        // 3: the size.
        let Some(size) = valid_size(&memcached) else {
            let got = memcached
                .get("spec")
                .and_then(|spec| spec.get("size"))
                .unwrap_or(&Value::Null);
            let message = format!(
                "spec.size must be an integer from 0 to {MAX_SIZE}, got {}",
                canonical_json(got)
            );
            actions.push(Action::patch_status(&status(
                Vec::new(),
                false,
                "InvalidSize",
                &message,
            )));
            actions.push(Action::event(EventType::Warning, "InvalidSize", message));
            return Ok(actions);
        };

        // 4: the Deployment.
        actions.push(Action::apply(&deployment(namespace, name, size)));

        // 5: the status, from what the store says exists now.
        let existing = store
            .get(Deployment::API_VERSION, Deployment::KIND, namespace, name)
            .map(|d| d.value())
            .transpose()?;
        let available = existing
            .as_ref()
            .and_then(|d| d.pointer("/status/availableReplicas"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let ready = available == size;
        actions.push(Action::patch_status(&status(
            nodes(store, namespace, name),
            ready,
            if ready {
                "MinimumReplicasAvailable"
            } else {
                "ReplicasUnavailable"
            },
            &format!("{available}/{size} replicas available"),
        )));

        // 6: an event when something changes.
        match &existing {
            None => actions.push(Action::event(
                EventType::Normal,
                "Created",
                format!("Created Deployment {name} with {size} replicas"),
            )),
            Some(deployment) => {
                let old = replicas(deployment);
                if old != size {
                    actions.push(Action::event(
                        EventType::Normal,
                        "Scaled",
                        format!("Scaled Deployment {name} from {old} to {size} replicas"),
                    ));
                }
            }
        }
        Ok(actions)
    }
}

isobar_guest::export_reconciler!(MemcachedReconciler);

/// `spec.size` when it is a JSON integer from 0 to [`MAX_SIZE`]; a float
/// such as `3.0` is not an integer.
fn valid_size(memcached: &Value) -> Option<i64> {
    memcached
        .get("spec")?
        .get("size")?
        .as_i64()
        .filter(|size| (0..=MAX_SIZE).contains(size))
}

/// The labels selecting one Memcached's pods.
fn selector(name: &str) -> Value {
    json!({
        "app.kubernetes.io/name": "memcached",
        "app.kubernetes.io/instance": name,
    })
}

/// The Deployment for Memcached `namespace/name` with `size` replicas.
pub fn deployment(namespace: &str, name: &str, size: i64) -> Value {
    let mut labels = selector(name);
    labels["app.kubernetes.io/managed-by"] = json!("isobar");
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels,
        },
        "spec": {
            "replicas": size,
            "selector": {"matchLabels": selector(name)},
            "template": {
                "metadata": {"labels": selector(name)},
                "spec": {
                    "containers": [{
                        "name": "memcached",
                        "image": IMAGE,
                        "command": ["memcached", "--memory-limit=64", "-o", "modern", "-v"],
                        "ports": [{"containerPort": 11211, "name": "memcached"}],
                    }],
                },
            },
        },
    })
}

/// A Deployment's `spec.replicas`; the API server defaults an absent one
/// to 1 (and so does this for one that is not an integer).
fn replicas(deployment: &Value) -> i64 {
    deployment
        .pointer("/spec/replicas")
        .and_then(Value::as_i64)
        .unwrap_or(1)
}

/// Sorted names of the Pods in `namespace` carrying both selector labels.
fn nodes(store: &dyn Store, namespace: &str, name: &str) -> Vec<String> {
    let selector = selector(name);
    let selector = selector.as_object().expect("a JSON object");
    let mut names: Vec<String> = store
        .list(Pod::API_VERSION, Pod::KIND, Some(namespace))
        .into_iter()
        .filter(|pod| {
            // A pod the host could not give as JSON is nobody's node.
            let Ok(value) = pod.value() else {
                return false;
            };
            let labels = value.pointer("/metadata/labels");
            selector
                .iter()
                .all(|(key, want)| labels.and_then(|l| l.get(key)) == Some(want))
        })
        .map(|pod| pod.name)
        .collect();
    names.sort();
    names
}

/// The status subresource: `nodes` and the one `Available` condition.
fn status(nodes: Vec<String>, available: bool, reason: &str, message: &str) -> Value {
    json!({
        "nodes": nodes,
        "conditions": [{
            "type": "Available",
            "status": if available { "True" } else { "False" },
            "reason": reason,
            "message": message,
        }],
    })
}

/// Compact JSON with object keys sorted, however serde_json is configured
/// (its `preserve_order` feature would keep input order): the message must
/// be the same from every implementation of this operator.
fn canonical_json(value: &Value) -> String {
    match value {
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(key, _)| *key);
            let entries: Vec<String> = entries
                .into_iter()
                .map(|(key, value)| {
                    format!("{}:{}", Value::from(key.as_str()), canonical_json(value))
                })
                .collect();
            format!("{{{}}}", entries.join(","))
        }
        scalar => scalar.to_string(),
    }
}
