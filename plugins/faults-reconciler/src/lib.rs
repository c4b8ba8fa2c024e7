//! A reconciler that misbehaves on request, for the host's failure-path
//! tests (`tests/reconcile.rs`). It reconciles `test.isobar.dev/v1`
//! `Fault` objects; `spec.fault` picks the behaviour:
//!
//! - `none`: applies a ConfigMap child and writes `status.ok`;
//! - `error`: returns an error (reason `AskedToFail`);
//! - `trap`: panics; `loop`: never returns (the deadline stops it);
//! - `foreign-delete`: deletes a ConfigMap it does not own;
//! - `cross-namespace`: applies a child in another namespace;
//! - `unowned-kind`: applies a ClusterRole (cluster-scoped, not in `owns`);
//! - `unowned-delete`: deletes the Secret `db`, a kind it does not own;
//! - `take-over`: applies the ConfigMap `not-mine`, which exists and is
//!   not its object's;
//! - `requeue`: writes `status.ok` and asks to be called again in 50 ms.

use std::time::Duration;

use isobar_guest::prelude::*;
use isobar_guest::serde_json::{Value, json};

pub struct FaultsReconciler;

impl Reconciler for FaultsReconciler {
    fn describe() -> ReconcilerInfo {
        ReconcilerInfo::new(
            "faults-reconciler",
            env!("CARGO_PKG_VERSION"),
            KindRef::new("test.isobar.dev/v1", "Fault"),
        )
        .owns_kind(KindRef::new("v1", "ConfigMap"))
    }

    fn reconcile(object: &Object, _store: &dyn Store) -> Result<Vec<Action>, Error> {
        let v: Value = isobar_guest::serde_json::from_str(&object.json)
            .map_err(|e| Error::new("InvalidObject", e.to_string()))?;
        let child = |namespace: &str| {
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": object.name, "namespace": namespace},
                   "data": {"fault": v["spec"]["fault"]}})
        };
        match v["spec"]["fault"].as_str().unwrap_or("none") {
            "error" => Err(Error::new("AskedToFail", "spec.fault is error")),
            "trap" => panic!("asked to trap"),
            #[allow(clippy::empty_loop)]
            "loop" => loop {},
            "foreign-delete" => Ok(vec![Action::delete(ObjectId::new(
                "v1",
                "ConfigMap",
                &object.namespace,
                "not-mine",
            ))]),
            "cross-namespace" => Ok(vec![Action::apply(&child("elsewhere"))]),
            "unowned-kind" => Ok(vec![Action::apply(&json!({
                "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                "metadata": {"name": "escalated"},
                "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}))]),
            "unowned-delete" => Ok(vec![Action::delete(ObjectId::new(
                "v1",
                "Secret",
                &object.namespace,
                "db",
            ))]),
            "take-over" => Ok(vec![Action::apply(&json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "not-mine", "namespace": object.namespace},
                "data": {"taken": "yes"}}))]),
            "requeue" => Ok(vec![
                Action::patch_status(&json!({"ok": true})),
                Action::requeue_after(Duration::from_millis(50)),
            ]),
            _ => Ok(vec![
                Action::apply(&child(&object.namespace)),
                Action::patch_status(&json!({"ok": true})),
            ]),
        }
    }
}

isobar_guest::v0_1::export_reconciler!(FaultsReconciler);
