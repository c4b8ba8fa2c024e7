//! Where a reconciler's actions land. The host carries them out with its own
//! credentials; a plugin never holds any. [`MemoryApi`] is the cluster
//! the host keeps when it has none (a manifest directory, tests, the
//! benchmark): an API server's write semantics over an in-memory object set,
//! whose writes come back as watch events, as a real cluster's do.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use parking_lot::Mutex;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;

use crate::store::{Event as StoreEvent, Object, ObjectKey};

/// Did a write change anything? Unchanged writes are skipped before they
/// reach the API server (and counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    Changed,
    Unchanged,
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ApiError {
    /// The object, as `ObjectKey` displays it.
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid object: {0}")]
    Invalid(String),
    #[error("{key} is owned by {owner}, not by {wanted}")]
    Conflict {
        key: String,
        owner: String,
        wanted: String,
    },
    #[error("API request failed: {0}")]
    Api(String),
}

/// A Kubernetes Event as the host records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedEvent {
    pub regarding: ObjectKey,
    pub type_: String,
    pub reason: String,
    pub message: String,
    pub reporting_controller: String,
}

/// The writes a reconciler's actions turn into.
pub trait Api: Send + Sync + 'static {
    /// Server-side apply of `object` by `manager`.
    fn apply<'a>(
        &'a self,
        object: Value,
        manager: &'a str,
    ) -> BoxFuture<'a, Result<Write, ApiError>>;
    /// Server-side apply of `status` to the status subresource of `key`.
    fn apply_status<'a>(
        &'a self,
        key: &'a ObjectKey,
        status: Value,
        manager: &'a str,
    ) -> BoxFuture<'a, Result<Write, ApiError>>;
    fn set_finalizer<'a>(
        &'a self,
        key: &'a ObjectKey,
        finalizer: &'a str,
        present: bool,
    ) -> BoxFuture<'a, Result<Write, ApiError>>;
    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Write, ApiError>>;
    fn event<'a>(&'a self, event: RecordedEvent) -> BoxFuture<'a, Result<(), ApiError>>;
}

#[derive(Default)]
struct State {
    objects: BTreeMap<ObjectKey, Value>,
    events: Vec<RecordedEvent>,
    resource_version: u64,
    writes: u64,
    skipped: u64,
}

/// An in-memory API server: server-side apply (fields of the applied object
/// replace the stored ones; `status` is kept; conditions merge by type;
/// never forced: a field another manager owns may only be applied with the
/// value it has, else a conflict, as the API server answers 409),
/// finalizers holding deletion (a deletion timestamp instead), owner
/// references garbage-collected on delete, a resourceVersion per write.
/// Every change is sent on the events channel, as a watch would see it.
pub struct MemoryApi {
    state: Mutex<State>,
    events: mpsc::UnboundedSender<StoreEvent>,
}

impl MemoryApi {
    pub fn new() -> (Self, mpsc::UnboundedReceiver<StoreEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            MemoryApi {
                state: Mutex::new(State::default()),
                events: tx,
            },
            rx,
        )
    }

    /// Creates or replaces an object as a user would (`kubectl apply`).
    pub fn put(&self, mut object: Value) -> Result<ObjectKey, ApiError> {
        let mut state = self.state.lock();
        let key = key_of(&object)?;
        if let Some(old) = state.objects.get(&key) {
            // Users do not write status.
            if let Some(status) = old.get("status").cloned() {
                object["status"] = status;
            }
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
            let spec_changed = old.get("spec") != object.get("spec");
            object["metadata"]["generation"] = json!(generation + i64::from(spec_changed));
            for k in ["uid", "finalizers", "ownerReferences", "deletionTimestamp"] {
                if let Some(v) = old["metadata"].get(k).cloned() {
                    object["metadata"][k] = v;
                }
            }
            if let Some(v) = old["metadata"].get("managedFields").cloned() {
                object["metadata"]["managedFields"] = v;
            }
        } else {
            object["metadata"]["generation"] = json!(1);
            object["metadata"]["uid"] = json!(format!("uid-{}", state.resource_version + 1));
            // A user's write, as kubectl's would be recorded.
            object["metadata"]["managedFields"] =
                json!([{"manager": "user", "operation": "Update"}]);
        }
        self.store(&mut state, key.clone(), object);
        Ok(key)
    }

    /// Deletes as a user would (honouring finalizers).
    pub fn remove(&self, key: &ObjectKey) -> Result<Write, ApiError> {
        let mut state = self.state.lock();
        self.delete_locked(&mut state, key)
    }

    pub fn get(&self, key: &ObjectKey) -> Option<Value> {
        self.state.lock().objects.get(key).cloned()
    }

    pub fn objects(&self) -> BTreeMap<ObjectKey, Value> {
        self.state.lock().objects.clone()
    }

    /// Looks at every object without copying them (holding the lock: keep
    /// `f` short).
    pub fn inspect<R>(&self, f: impl FnOnce(&BTreeMap<ObjectKey, Value>) -> R) -> R {
        f(&self.state.lock().objects)
    }

    pub fn events(&self) -> Vec<RecordedEvent> {
        self.state.lock().events.clone()
    }

    /// (writes that changed something, writes skipped as unchanged).
    pub fn write_counts(&self) -> (u64, u64) {
        let s = self.state.lock();
        (s.writes, s.skipped)
    }

    fn store(&self, state: &mut State, key: ObjectKey, mut object: Value) {
        state.resource_version += 1;
        object["metadata"]["resourceVersion"] = json!(state.resource_version.to_string());
        state.writes += 1;
        state.objects.insert(key, object.clone());
        if let Ok(o) = Object::from_value(object) {
            let _ = self.events.send(StoreEvent::Apply(o.into()));
        }
    }

    fn unchanged(&self, state: &mut State) -> Write {
        state.skipped += 1;
        Write::Unchanged
    }

    fn delete_locked(&self, state: &mut State, key: &ObjectKey) -> Result<Write, ApiError> {
        let Some(obj) = state.objects.get(key).cloned() else {
            return Ok(self.unchanged(state));
        };
        let has_finalizers = obj["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| !f.is_empty());
        if has_finalizers {
            if obj["metadata"].get("deletionTimestamp").is_some() {
                return Ok(self.unchanged(state));
            }
            let mut obj = obj;
            obj["metadata"]["deletionTimestamp"] = json!(now());
            self.store(state, key.clone(), obj);
            return Ok(Write::Changed);
        }
        state.objects.remove(key);
        state.writes += 1;
        let _ = self.events.send(StoreEvent::Delete(key.clone()));
        // Garbage collection: dependents whose owner is gone.
        let uid = obj["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let dependents: Vec<ObjectKey> = state
            .objects
            .iter()
            .filter(|(_, o)| {
                o["metadata"]["ownerReferences"]
                    .as_array()
                    .is_some_and(|refs| refs.iter().any(|r| r["uid"] == uid.as_str()))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for d in dependents {
            self.delete_locked(state, &d)?;
        }
        Ok(Write::Changed)
    }
}

pub(super) fn key_of(object: &Value) -> Result<ObjectKey, ApiError> {
    let o = Object::from_value(object.clone()).map_err(|e| ApiError::Invalid(e.to_string()))?;
    Ok(o.key())
}

/// RFC 3339 UTC, seconds precision, as the API server writes times.
pub(crate) fn now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    k8s_openapi::jiff::Timestamp::from_second(secs)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

/// Merges `update` into `base`: objects field by field, `conditions` lists
/// by `type` (the API's list-map key), anything else replaced.
fn merge(base: &mut Value, update: Value) {
    match (base, update) {
        (Value::Object(b), Value::Object(u)) => {
            for (k, v) in u {
                if k == "conditions"
                    && let (Some(Value::Array(old)), Value::Array(new)) = (b.get_mut(&k), &v)
                {
                    let mut by_type: Vec<Value> = old.clone();
                    for c in new {
                        match by_type.iter_mut().find(|o| o["type"] == c["type"]) {
                            Some(o) => *o = c.clone(),
                            None => by_type.push(c.clone()),
                        }
                    }
                    *old = by_type;
                    continue;
                }
                match b.get_mut(&k) {
                    Some(existing) if existing.is_object() && v.is_object() => merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, u) => *b = u,
    }
}

/// The managers of an object's fields other than `manager` (status aside).
fn other_managers<'a>(obj: &'a Value, manager: &str) -> Vec<&'a str> {
    obj["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| m.get("subresource").is_none())
        .filter_map(|m| m["manager"].as_str())
        .filter(|m| *m != manager)
        .collect()
}

/// The first field `applied` sets to a value other than the one `current`
/// holds, as a dotted path: what server-side apply calls a conflict when
/// another manager owns the field. Lists are atomic; metadata the server
/// or the host sets is not compared.
fn conflicting_field(applied: &Value, current: &Value, path: &mut Vec<String>) -> Option<String> {
    const SKIP: [&str; 3] = ["apiVersion", "kind", "status"];
    const SKIP_META: [&str; 7] = [
        "namespace",
        "name",
        "ownerReferences",
        "managedFields",
        "resourceVersion",
        "uid",
        "generation",
    ];
    match (applied, current) {
        (Value::Object(a), Value::Object(c)) => {
            for (k, v) in a {
                let top = path.is_empty();
                if (top && SKIP.contains(&k.as_str()))
                    || (path.len() == 1 && path[0] == "metadata" && SKIP_META.contains(&k.as_str()))
                {
                    continue;
                }
                let Some(cv) = c.get(k) else { continue };
                path.push(k.clone());
                let found = conflicting_field(v, cv, path);
                path.pop();
                if found.is_some() {
                    return found;
                }
            }
            None
        }
        (a, c) if a == c => None,
        _ => Some(path.join(".")),
    }
}

impl Api for MemoryApi {
    fn apply<'a>(
        &'a self,
        object: Value,
        manager: &'a str,
    ) -> BoxFuture<'a, Result<Write, ApiError>> {
        Box::pin(async move {
            let mut state = self.state.lock();
            let key = key_of(&object)?;
            let mut next = object;
            match state.objects.get(&key) {
                Some(old) => {
                    // As the API server does without force: a field another
                    // manager owns may be applied only with the value it has.
                    let others = other_managers(old, manager);
                    if !others.is_empty()
                        && let Some(field) = conflicting_field(&next, old, &mut Vec::new())
                    {
                        return Err(ApiError::Conflict {
                            key: format!("{key} ({field})"),
                            owner: others.join(", "),
                            wanted: manager.to_string(),
                        });
                    }
                    // The applied fields are the manager's whole intent; what the
                    // server owns (status, uid, resourceVersion, ...) stays.
                    let mut merged = next.clone();
                    for k in [
                        "uid",
                        "resourceVersion",
                        "generation",
                        "creationTimestamp",
                        "finalizers",
                        "deletionTimestamp",
                        "managedFields",
                    ] {
                        if let Some(v) = old["metadata"].get(k).cloned() {
                            merged["metadata"][k] = v;
                        }
                    }
                    if let Some(status) = old.get("status").cloned() {
                        merged["status"] = status;
                    }
                    let managers = merged["metadata"]["managedFields"]
                        .as_array_mut()
                        .filter(|m| !m.iter().any(|e| e["manager"] == manager));
                    if let Some(managers) = managers {
                        managers.push(json!({"manager": manager, "operation": "Apply"}));
                    }
                    let spec_changed = old.get("spec") != merged.get("spec");
                    if spec_changed {
                        let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
                        merged["metadata"]["generation"] = json!(g + 1);
                    }
                    if &merged == old {
                        return Ok(self.unchanged(&mut state));
                    }
                    next = merged;
                }
                None => {
                    next["metadata"]["generation"] = json!(1);
                    next["metadata"]["uid"] = json!(format!("uid-{}", state.resource_version + 1));
                    next["metadata"]["creationTimestamp"] = json!(now());
                    next["metadata"]["managedFields"] =
                        json!([{"manager": manager, "operation": "Apply"}]);
                }
            }
            self.store(&mut state, key, next);
            Ok(Write::Changed)
        })
    }

    fn apply_status<'a>(
        &'a self,
        key: &'a ObjectKey,
        status: Value,
        _manager: &'a str,
    ) -> BoxFuture<'a, Result<Write, ApiError>> {
        Box::pin(async move {
            let mut state = self.state.lock();
            let Some(old) = state.objects.get(key).cloned() else {
                return Err(ApiError::NotFound(key.to_string()));
            };
            let mut next = old.clone();
            if !next.get("status").is_some_and(Value::is_object) {
                next["status"] = Value::Object(Map::new());
            }
            merge(&mut next["status"], status);
            if next == old {
                return Ok(self.unchanged(&mut state));
            }
            self.store(&mut state, key.clone(), next);
            Ok(Write::Changed)
        })
    }

    fn set_finalizer<'a>(
        &'a self,
        key: &'a ObjectKey,
        finalizer: &'a str,
        present: bool,
    ) -> BoxFuture<'a, Result<Write, ApiError>> {
        Box::pin(async move {
            let mut state = self.state.lock();
            let Some(mut obj) = state.objects.get(key).cloned() else {
                return Err(ApiError::NotFound(key.to_string()));
            };
            let mut list: Vec<Value> = obj["metadata"]["finalizers"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let has = list.iter().any(|f| f == finalizer);
            if has == present {
                return Ok(self.unchanged(&mut state));
            }
            if present {
                if obj["metadata"].get("deletionTimestamp").is_some() {
                    return Err(ApiError::Invalid(format!(
                        "{key} is being deleted: no new finalizers"
                    )));
                }
                list.push(json!(finalizer));
            } else {
                list.retain(|f| f != finalizer);
            }
            let deleting = obj["metadata"].get("deletionTimestamp").is_some();
            if list.is_empty() && deleting {
                // The last finalizer of a deleted object: it goes now.
                obj["metadata"]["finalizers"] = json!([]);
                state.objects.insert(key.clone(), obj);
                return self.delete_locked(&mut state, key);
            }
            obj["metadata"]["finalizers"] = Value::Array(list);
            self.store(&mut state, key.clone(), obj);
            Ok(Write::Changed)
        })
    }

    fn delete<'a>(&'a self, key: &'a ObjectKey) -> BoxFuture<'a, Result<Write, ApiError>> {
        Box::pin(async move {
            let mut state = self.state.lock();
            self.delete_locked(&mut state, key)
        })
    }

    fn event<'a>(&'a self, event: RecordedEvent) -> BoxFuture<'a, Result<(), ApiError>> {
        Box::pin(async move {
            self.state.lock().events.push(event);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KindKey;

    fn key(kind: &str, api: &str, name: &str) -> ObjectKey {
        ObjectKey::new(KindKey::new(api, kind), "ns", name)
    }

    fn owner() -> Value {
        json!({"apiVersion": "example.com/v1", "kind": "Owner", "metadata": {"namespace": "ns", "name": "o"}})
    }

    fn child(replicas: i64, owner_uid: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"namespace": "ns", "name": "c",
                            "ownerReferences": [{"uid": owner_uid, "controller": true}]},
               "spec": {"replicas": replicas}})
    }

    #[tokio::test]
    async fn apply_creates_then_skips_the_same_intent_and_keeps_status() {
        let (c, mut events) = MemoryApi::new();
        let k = key("Deployment", "apps/v1", "c");
        assert_eq!(c.apply(child(1, "u"), "isobar/p").await, Ok(Write::Changed));
        assert!(matches!(events.try_recv(), Ok(StoreEvent::Apply(_))));
        c.apply_status(&k, json!({"availableReplicas": 1}), "kube")
            .await
            .unwrap();
        assert_eq!(
            c.apply(child(1, "u"), "isobar/p").await,
            Ok(Write::Unchanged)
        );
        assert_eq!(c.apply(child(2, "u"), "isobar/p").await, Ok(Write::Changed));
        let d = c.get(&k).unwrap();
        assert_eq!(d["spec"]["replicas"], 2);
        assert_eq!(d["status"]["availableReplicas"], 1, "apply keeps status");
        assert_eq!(d["metadata"]["generation"], 2);
        // Another manager may not take the object over.
        assert!(matches!(
            c.apply(child(3, "u"), "isobar/other").await,
            Err(ApiError::Conflict { .. })
        ));
        assert_eq!(c.write_counts(), (3, 1));
    }

    #[tokio::test]
    async fn status_conditions_merge_by_type() {
        let (c, _events) = MemoryApi::new();
        let k = c.put(owner()).unwrap();
        c.apply_status(
            &k,
            json!({"conditions": [{"type": "A", "status": "True"}], "nodes": ["x"]}),
            "m",
        )
        .await
        .unwrap();
        c.apply_status(
            &k,
            json!({"conditions": [{"type": "B", "status": "False"}]}),
            "m",
        )
        .await
        .unwrap();
        c.apply_status(
            &k,
            json!({"conditions": [{"type": "A", "status": "False"}]}),
            "m",
        )
        .await
        .unwrap();
        let o = c.get(&k).unwrap();
        assert_eq!(
            o["status"],
            json!({"conditions": [{"type": "A", "status": "False"}, {"type": "B", "status": "False"}], "nodes": ["x"]})
        );
        assert_eq!(
            c.apply_status(&key("Owner", "example.com/v1", "missing"), json!({}), "m")
                .await,
            Err(ApiError::NotFound(
                key("Owner", "example.com/v1", "missing").to_string()
            ))
        );
    }

    #[tokio::test]
    async fn finalizers_hold_deletion_and_dependents_are_collected() {
        let (c, _events) = MemoryApi::new();
        let k = c.put(owner()).unwrap();
        let uid = c.get(&k).unwrap()["metadata"]["uid"]
            .as_str()
            .unwrap()
            .to_string();
        c.apply(child(1, &uid), "isobar/p").await.unwrap();
        assert_eq!(c.set_finalizer(&k, "f", true).await, Ok(Write::Changed));
        assert_eq!(c.set_finalizer(&k, "f", true).await, Ok(Write::Unchanged));

        assert_eq!(c.remove(&k), Ok(Write::Changed));
        let held = c.get(&k).expect("held by its finalizer");
        assert!(held["metadata"]["deletionTimestamp"].is_string());
        assert!(
            c.set_finalizer(&k, "g", true).await.is_err(),
            "no new finalizers while deleting"
        );
        assert!(c.get(&key("Deployment", "apps/v1", "c")).is_some());

        // The last finalizer goes: so does the object, and what it owns.
        assert_eq!(c.set_finalizer(&k, "f", false).await, Ok(Write::Changed));
        assert!(c.get(&k).is_none());
        assert!(c.get(&key("Deployment", "apps/v1", "c")).is_none());
        assert_eq!(c.delete(&k).await, Ok(Write::Unchanged));
    }

    /// Issue 13 item 3: the in-memory cluster refused another manager's
    /// object outright while the real API path forced it. Now both answer
    /// as the API server does without force: a field another manager owns
    /// may be applied with the value it has, any other value conflicts.
    #[tokio::test]
    async fn fields_another_manager_owns_conflict_unless_the_value_is_the_same() {
        let (c, _events) = MemoryApi::new();
        // A person made it (kubectl), then the plugin applies to it.
        c.put(child(1, "u")).unwrap();
        assert_eq!(c.apply(child(1, "u"), "isobar/p").await, Ok(Write::Changed));
        let err = c.apply(child(2, "u"), "isobar/p").await.unwrap_err();
        let ApiError::Conflict { key, owner, wanted } = err else {
            panic!("{err:?}")
        };
        assert!(key.contains("spec.replicas"), "{key}");
        assert_eq!((owner.as_str(), wanted.as_str()), ("user", "isobar/p"));
        assert_eq!(
            c.get(&key_of(&child(1, "u")).unwrap()).unwrap()["spec"]["replicas"],
            1
        );
        // New fields are no one's yet.
        let mut more = child(1, "u");
        more["spec"]["paused"] = json!(true);
        assert_eq!(c.apply(more, "isobar/p").await, Ok(Write::Changed));
    }
}
