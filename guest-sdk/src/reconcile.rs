//! Builders for what a reconciler describes and returns: its info, the
//! actions, events, object ids, and the finalizer protocol.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::{Metadata, Resource};
use serde::Serialize;
use serde_json::Value;

use crate::store::scoped;
use crate::types::*;

impl ReconcilerInfo {
    /// A reconciler of `reconciles` that owns and reads nothing else yet;
    /// add kinds with [`ReconcilerInfo::owns`] and [`ReconcilerInfo::watch`].
    /// For a k8s-openapi kind, pass `KindRef::of::<K>()`; for a custom
    /// resource, `KindRef::new("cache.example.com/v1alpha1", "Memcached")`.
    pub fn new(
        name: impl Into<String>,
        version: impl Into<String>,
        reconciles: KindRef,
    ) -> ReconcilerInfo {
        ReconcilerInfo {
            name: name.into(),
            version: version.into(),
            reconciles,
            owns: Vec::new(),
            watches: Vec::new(),
        }
    }

    /// Declares a kind the reconciler creates (applies): a change to one
    /// whose controller owner is a reconciled object reconciles that object.
    pub fn owns<K: Resource>(self) -> ReconcilerInfo {
        self.owns_kind(KindRef::of::<K>())
    }

    /// Declares another kind the reconciler reads through the store.
    pub fn watch<K: Resource>(self) -> ReconcilerInfo {
        self.watch_kind(KindRef::of::<K>())
    }

    /// [`ReconcilerInfo::owns`] for kinds without a k8s-openapi type (CRDs).
    pub fn owns_kind(mut self, kind: KindRef) -> ReconcilerInfo {
        if !self.owns.contains(&kind) {
            self.owns.push(kind);
        }
        self
    }

    /// [`ReconcilerInfo::watch`] for kinds without a k8s-openapi type (CRDs).
    pub fn watch_kind(mut self, kind: KindRef) -> ReconcilerInfo {
        if !self.watches.contains(&kind) {
            self.watches.push(kind);
        }
        self
    }
}

impl ObjectId {
    pub fn new(
        api_version: impl Into<String>,
        kind: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> ObjectId {
        ObjectId {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// An object of a k8s-openapi kind, e.g.
    /// `ObjectId::of::<Deployment>("default", "web")`. The namespace is
    /// ignored for cluster-scoped kinds.
    pub fn of<K: Resource + 'static>(namespace: &str, name: impl Into<String>) -> ObjectId {
        ObjectId::new(K::API_VERSION, K::KIND, scoped::<K>(namespace), name)
    }
}

impl Object {
    /// This object's id, e.g. to delete it.
    pub fn id(&self) -> ObjectId {
        ObjectId::new(&self.api_version, &self.kind, &self.namespace, &self.name)
    }

    /// The body's `metadata` only, as a k8s-openapi `ObjectMeta` (empty when
    /// absent). Works for any kind, custom resources included.
    pub fn meta(&self) -> Result<ObjectMeta, Error> {
        #[derive(serde::Deserialize)]
        struct WithMeta {
            #[serde(default)]
            metadata: Option<ObjectMeta>,
        }
        Ok(self.parse::<WithMeta>()?.metadata.unwrap_or_default())
    }

    /// Where this object stands with respect to `finalizer`; see
    /// [`FinalizerState`].
    pub fn finalizer_state(&self, finalizer: &str) -> Result<FinalizerState, Error> {
        FinalizerState::of(&self.value()?, finalizer)
    }
}

impl Event {
    pub fn new(type_: EventType, reason: impl Into<String>, message: impl Into<String>) -> Event {
        Event {
            type_,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn normal(reason: impl Into<String>, message: impl Into<String>) -> Event {
        Event::new(EventType::Normal, reason, message)
    }

    pub fn warning(reason: impl Into<String>, message: impl Into<String>) -> Event {
        Event::new(EventType::Warning, reason, message)
    }
}

impl From<Event> for Action {
    fn from(event: Event) -> Action {
        Action::Event(event)
    }
}

impl Action {
    /// Server-side apply of a child object given as Kubernetes JSON
    /// (apiVersion, kind, metadata.name, metadata.namespace and the fields
    /// this plugin manages). The host adds the controller owner reference.
    pub fn apply(object: &Value) -> Action {
        Action::Apply(object.to_string())
    }

    /// [`Action::apply`] for a typed k8s-openapi resource: set only the
    /// fields this plugin manages (the rest serialise as absent).
    pub fn apply_resource<K>(resource: &K) -> Action
    where
        K: Resource + Metadata<Ty = ObjectMeta> + Serialize,
    {
        // k8s-openapi types always serialise, with apiVersion and kind.
        Action::Apply(serde_json::to_string(resource).expect("k8s-openapi resources serialise"))
    }

    /// Server-side apply of the reconciled object's status: `status` is the
    /// JSON of the status only, e.g. `{"nodes": [], "conditions": [...]}`.
    pub fn patch_status(status: &Value) -> Action {
        Action::PatchStatus(status.to_string())
    }

    /// A Kubernetes Event on the reconciled object; `reason` is CamelCase.
    pub fn event(
        type_: EventType,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Action {
        Action::Event(Event::new(type_, reason, message))
    }

    pub fn add_finalizer(finalizer: impl Into<String>) -> Action {
        Action::AddFinalizer(finalizer.into())
    }

    pub fn remove_finalizer(finalizer: impl Into<String>) -> Action {
        Action::RemoveFinalizer(finalizer.into())
    }

    /// Deletes an object this plugin owns, e.g.
    /// `Action::delete(ObjectId::of::<Deployment>(ns, name))`.
    pub fn delete(id: ObjectId) -> Action {
        Action::Delete(id)
    }

    /// Reconcile again after `delay` even if nothing changes (whole
    /// milliseconds, rounded down; saturates at `u64::MAX`).
    pub fn requeue_after(delay: Duration) -> Action {
        Action::RequeueAfterMs(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
    }
}

/// The finalizer protocol, decided from an object's metadata (kube-runtime's
/// `finalizer` helper, minus the API calls: the host makes those from the
/// actions returned).
///
/// ```
/// # use isobar_guest::prelude::*;
/// # fn cleanup(_: &Object) -> Vec<Action> { vec![] }
/// const FINALIZER: &str = "example.com/finalizer";
///
/// fn reconcile(object: &Object) -> Result<Vec<Action>, Error> {
///     let mut actions = Vec::new();
///     match object.finalizer_state(FINALIZER)? {
///         FinalizerState::Cleanup => {
///             let mut actions = cleanup(object);
///             actions.push(Action::remove_finalizer(FINALIZER));
///             return Ok(actions);
///         }
///         FinalizerState::Released => return Ok(actions),
///         FinalizerState::Missing => actions.push(Action::add_finalizer(FINALIZER)),
///         FinalizerState::Present => {}
///     }
///     // ... the normal reconciliation ...
///     Ok(actions)
/// }
/// # let object = Object::from_json(isobar_guest::serde_json::json!({
/// #     "apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}))?;
/// # assert_eq!(reconcile(&object)?, vec![Action::add_finalizer(FINALIZER)]);
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FinalizerState {
    /// Not being deleted and the finalizer is on it: reconcile normally.
    Present,
    /// Not being deleted and the finalizer is not on it yet: add it
    /// ([`Action::add_finalizer`]), then reconcile normally.
    Missing,
    /// Being deleted (`metadata.deletionTimestamp` is set) and the finalizer
    /// is on it: clean up, then [`Action::remove_finalizer`].
    Cleanup,
    /// Being deleted without the finalizer: nothing is left to do.
    Released,
}

impl FinalizerState {
    /// Decides from an object's JSON. Lenient, like a reader that expects
    /// API-server-validated metadata: a `metadata` or `metadata.finalizers`
    /// of the wrong type counts as absent, entries that are not strings are
    /// skipped, and a `null` `deletionTimestamp` is unset. `Err`
    /// (`InvalidObject`) only when the body is not a JSON object at all.
    pub fn of(object: &Value, finalizer: &str) -> Result<FinalizerState, Error> {
        let Value::Object(body) = object else {
            return Err(Error::new(
                "InvalidObject",
                "the object's JSON is not an object",
            ));
        };
        let metadata = body.get("metadata").and_then(Value::as_object);
        let present = metadata
            .and_then(|m| m.get("finalizers"))
            .and_then(Value::as_array)
            .is_some_and(|finalizers| finalizers.iter().any(|f| f.as_str() == Some(finalizer)));
        let deleting = metadata
            .and_then(|m| m.get("deletionTimestamp"))
            .is_some_and(|t| !t.is_null());
        Ok(match (deleting, present) {
            (false, true) => FinalizerState::Present,
            (false, false) => FinalizerState::Missing,
            (true, true) => FinalizerState::Cleanup,
            (true, false) => FinalizerState::Released,
        })
    }

    /// Whether the object is being deleted.
    pub fn is_deleting(self) -> bool {
        matches!(self, FinalizerState::Cleanup | FinalizerState::Released)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use k8s_openapi::api::rbac::v1::ClusterRole;
    use serde_json::json;

    #[test]
    fn reconciler_info_lists_kinds_once() {
        let info = ReconcilerInfo::new("m", "1", KindRef::new("x.io/v1", "X"))
            .owns::<Deployment>()
            .owns::<Deployment>()
            .watch::<Pod>()
            .watch_kind(KindRef::new("v1", "Pod"));
        assert_eq!(info.reconciles, KindRef::new("x.io/v1", "X"));
        assert_eq!(info.owns, vec![KindRef::new("apps/v1", "Deployment")]);
        assert_eq!(info.watches, vec![KindRef::new("v1", "Pod")]);
    }

    #[test]
    fn action_builders() {
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment"});
        let Action::Apply(text) = Action::apply(&deployment) else {
            panic!("not apply");
        };
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), deployment);
        assert_eq!(
            Action::patch_status(&json!({"nodes": []})),
            Action::PatchStatus(r#"{"nodes":[]}"#.into())
        );
        assert_eq!(
            Action::event(EventType::Warning, "R", "m"),
            Action::Event(Event {
                type_: EventType::Warning,
                reason: "R".into(),
                message: "m".into()
            })
        );
        assert_eq!(
            Action::from(Event::normal("R", "m")),
            Action::event(EventType::Normal, "R", "m")
        );
        assert_eq!(
            Action::delete(ObjectId::of::<Deployment>("ns", "web")),
            Action::Delete(ObjectId::new("apps/v1", "Deployment", "ns", "web"))
        );
        assert_eq!(ObjectId::of::<ClusterRole>("ns", "r").namespace, "");
        assert_eq!(Action::add_finalizer("f"), Action::AddFinalizer("f".into()));
        assert_eq!(
            Action::remove_finalizer("f"),
            Action::RemoveFinalizer("f".into())
        );
        assert_eq!(
            Action::requeue_after(Duration::from_micros(2500)),
            Action::RequeueAfterMs(2)
        );
        assert_eq!(
            Action::requeue_after(Duration::MAX),
            Action::RequeueAfterMs(u64::MAX)
        );
        let mut typed = Deployment::default();
        typed.metadata.name = Some("web".into());
        let Action::Apply(text) = Action::apply_resource(&typed) else {
            panic!("not apply");
        };
        let value: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(value["kind"], "Deployment");
        assert_eq!(value["metadata"]["name"], "web");
    }

    #[test]
    fn object_id_and_meta() {
        let object = Object::from_json(json!({
            "apiVersion": "x.io/v1", "kind": "X",
            "metadata": {"namespace": "ns", "name": "a", "finalizers": ["f"]},
            "spec": {"anything": [1, 2]},
        }))
        .unwrap();
        assert_eq!(object.id(), ObjectId::new("x.io/v1", "X", "ns", "a"));
        assert_eq!(object.meta().unwrap().finalizers, Some(vec!["f".into()]));
        let bare = Object::from_json(json!({"apiVersion": "v1", "kind": "X"})).unwrap();
        assert_eq!(bare.meta().unwrap(), ObjectMeta::default());
    }

    #[test]
    fn finalizer_states() {
        let state = |metadata: Value| FinalizerState::of(&json!({"metadata": metadata}), "f");
        let ts = "2024-01-01T00:00:00Z";
        assert_eq!(
            state(json!({"finalizers": ["g", "f"]})).unwrap(),
            FinalizerState::Present
        );
        assert_eq!(
            state(json!({"finalizers": ["g"]})).unwrap(),
            FinalizerState::Missing
        );
        assert_eq!(state(json!({})).unwrap(), FinalizerState::Missing);
        assert_eq!(state(Value::Null).unwrap(), FinalizerState::Missing);
        assert_eq!(
            state(json!({"finalizers": null, "deletionTimestamp": null})).unwrap(),
            FinalizerState::Missing
        );
        assert_eq!(
            state(json!({"finalizers": ["f"], "deletionTimestamp": ts})).unwrap(),
            FinalizerState::Cleanup
        );
        assert_eq!(
            state(json!({"deletionTimestamp": ts})).unwrap(),
            FinalizerState::Released
        );
        assert!(FinalizerState::Released.is_deleting());
        assert!(!FinalizerState::Missing.is_deleting());
        // Wrong types count as absent.
        for odd in [
            json!({"finalizers": "f"}),
            json!({"finalizers": [1, {"f": 1}]}),
            json!("meta"),
        ] {
            assert_eq!(state(odd).unwrap(), FinalizerState::Missing);
        }
        assert_eq!(
            state(json!({"finalizers": [1, "f"], "deletionTimestamp": ts})).unwrap(),
            FinalizerState::Cleanup
        );
        assert!(FinalizerState::of(&json!([]), "f").is_err());
        let object = Object {
            api_version: "v1".into(),
            kind: "X".into(),
            namespace: String::new(),
            name: "x".into(),
            uid: String::new(),
            json: "{not json".into(),
        };
        assert_eq!(
            object.finalizer_state("f").unwrap_err().reason,
            "InvalidObject"
        );
    }
}
