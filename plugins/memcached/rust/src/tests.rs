//! Native unit tests: a Memcached and a `MemoryStore` in, actions out. One
//! group per numbered rule of the README.

use std::cell::RefCell;

use isobar_guest::prelude::*;
use isobar_guest::serde_json::{Value, json};

use crate::*;

const NS: &str = "cache";
const NAME: &str = "web";

// ---- fixtures -------------------------------------------------------------

/// A live Memcached holding the finalizer, with `spec` as given.
fn memcached_with_spec(spec: Value) -> Value {
    json!({
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"namespace": NS, "name": NAME, "uid": "u-1", "finalizers": [FINALIZER]},
        "spec": spec,
    })
}

fn memcached(size: i64) -> Value {
    memcached_with_spec(json!({"size": size}))
}

fn without_finalizer(mut memcached: Value) -> Value {
    memcached["metadata"]
        .as_object_mut()
        .unwrap()
        .remove("finalizers");
    memcached
}

fn deleted(mut memcached: Value) -> Value {
    memcached["metadata"]["deletionTimestamp"] = json!("2024-05-01T10:00:00Z");
    memcached
}

/// An existing Deployment with `spec.replicas` and, when given,
/// `status.availableReplicas`.
fn existing_deployment(replicas: i64, available: Option<i64>) -> Value {
    let mut deployment = deployment(NS, NAME, replicas);
    if let Some(available) = available {
        deployment["status"] = json!({"replicas": replicas, "availableReplicas": available});
    }
    deployment
}

fn pod(namespace: &str, name: &str, labels: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"namespace": namespace, "name": name, "labels": labels},
    })
}

fn our_labels() -> Value {
    json!({"app.kubernetes.io/name": "memcached", "app.kubernetes.io/instance": NAME,
           "pod-template-hash": "abc"})
}

fn store(objects: impl IntoIterator<Item = Value>) -> MemoryStore {
    MemoryStore::from_json_values(objects).unwrap()
}

fn reconcile(memcached: Value, store: &MemoryStore) -> Vec<Action> {
    let object = Object::from_json(memcached).unwrap();
    let actions = MemcachedReconciler::reconcile(&object, store).unwrap();
    assert!(
        !actions
            .iter()
            .any(|a| matches!(a, Action::RequeueAfterMs(_))),
        "no requeue-after, ever: {actions:?}"
    );
    actions
}

// Expected actions, spelled out independently of the implementation.

fn status(nodes: &[&str], status: &str, reason: &str, message: &str) -> Action {
    Action::PatchStatus(
        json!({
            "nodes": nodes,
            "conditions": [{"type": "Available", "status": status,
                            "reason": reason, "message": message}],
        })
        .to_string(),
    )
}

fn event(type_: EventType, reason: &str, message: &str) -> Action {
    Action::Event(Event {
        type_,
        reason: reason.into(),
        message: message.into(),
    })
}

/// The README's Deployment, literally.
fn spec_deployment(size: i64) -> Value {
    json!({
      "apiVersion": "apps/v1",
      "kind": "Deployment",
      "metadata": {
        "name": NAME,
        "namespace": NS,
        "labels": {
          "app.kubernetes.io/name": "memcached",
          "app.kubernetes.io/instance": NAME,
          "app.kubernetes.io/managed-by": "isobar"
        }
      },
      "spec": {
        "replicas": size,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "memcached", "app.kubernetes.io/instance": NAME}},
        "template": {
          "metadata": {"labels": {"app.kubernetes.io/name": "memcached", "app.kubernetes.io/instance": NAME}},
          "spec": {
            "containers": [{
              "name": "memcached",
              "image": "memcached:1.6.26-alpine3.19",
              "command": ["memcached", "--memory-limit=64", "-o", "modern", "-v"],
              "ports": [{"containerPort": 11211, "name": "memcached"}]
            }]
          }
        }
      }
    })
}

/// The JSON an action carries, parsed (keys in any order).
fn json_of(action: &Action) -> Value {
    match action {
        Action::Apply(json) | Action::PatchStatus(json) => {
            isobar_guest::serde_json::from_str(json).unwrap()
        }
        other => panic!("no JSON in {other:?}"),
    }
}

fn delete_deployment() -> Action {
    Action::Delete(ObjectId {
        api_version: "apps/v1".into(),
        kind: "Deployment".into(),
        namespace: NS.into(),
        name: NAME.into(),
    })
}

// ---- describe -------------------------------------------------------------

#[test]
fn describe_names_the_kinds() {
    let info = MemcachedReconciler::describe();
    assert_eq!(info.name, "memcached");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        info.reconciles,
        KindRef::new("cache.example.com/v1alpha1", "Memcached")
    );
    assert_eq!(info.owns, vec![KindRef::new("apps/v1", "Deployment")]);
    assert_eq!(info.watches, vec![KindRef::new("v1", "Pod")]);
}

// ---- 1: deletion ----------------------------------------------------------

#[test]
fn deletion_with_finalizer_deletes_the_deployment_and_releases() {
    let store = store([existing_deployment(3, Some(3))]);
    assert_eq!(
        reconcile(deleted(memcached(3)), &store),
        vec![
            event(EventType::Normal, "Deleting", "Deleting Deployment web"),
            delete_deployment(),
            Action::RemoveFinalizer("cache.example.com/finalizer".into()),
        ]
    );
}

#[test]
fn deletion_does_not_depend_on_the_size_or_the_store() {
    // Whatever the spec says, and whether or not the Deployment is (still)
    // there: deleting is the same three actions.
    for spec in [json!({"size": 500}), json!({}), json!("nonsense")] {
        let actions = reconcile(deleted(memcached_with_spec(spec)), &MemoryStore::new());
        assert_eq!(actions.len(), 3, "{actions:?}");
        assert_eq!(actions[1], delete_deployment());
    }
}

#[test]
fn deletion_keeps_other_finalizers_alone() {
    let mut m = deleted(memcached(3));
    m["metadata"]["finalizers"] = json!(["other.io/x", FINALIZER]);
    let actions = reconcile(m, &MemoryStore::new());
    assert_eq!(
        actions.last(),
        Some(&Action::RemoveFinalizer(FINALIZER.into()))
    );
    assert_eq!(actions.len(), 3);
}

#[test]
fn deletion_without_finalizer_does_nothing() {
    let store = store([existing_deployment(3, Some(3))]);
    assert_eq!(
        reconcile(without_finalizer(deleted(memcached(3))), &store),
        vec![]
    );
    let mut m = deleted(memcached(3));
    m["metadata"]["finalizers"] = json!(["other.io/x"]);
    assert_eq!(reconcile(m, &store), vec![]);
}

// ---- 2: adding the finalizer ----------------------------------------------

#[test]
fn finalizer_is_added_first_then_the_rest() {
    let actions = reconcile(without_finalizer(memcached(2)), &MemoryStore::new());
    assert_eq!(
        actions,
        vec![
            Action::AddFinalizer("cache.example.com/finalizer".into()),
            Action::apply(&spec_deployment(2)),
            status(
                &[],
                "False",
                "ReplicasUnavailable",
                "0/2 replicas available"
            ),
            event(
                EventType::Normal,
                "Created",
                "Created Deployment web with 2 replicas"
            ),
        ]
    );
}

#[test]
fn finalizer_is_added_even_when_others_are_present() {
    let mut m = memcached(2);
    m["metadata"]["finalizers"] = json!(["other.io/x"]);
    let actions = reconcile(m, &MemoryStore::new());
    assert_eq!(actions[0], Action::AddFinalizer(FINALIZER.into()));
    assert_eq!(actions.len(), 4);
}

#[test]
fn finalizer_is_not_added_twice() {
    let actions = reconcile(memcached(2), &MemoryStore::new());
    assert!(!actions.iter().any(|a| matches!(a, Action::AddFinalizer(_))));
}

// ---- 3: invalid sizes -----------------------------------------------------

fn invalid_size_actions(got: &str) -> Vec<Action> {
    let message = format!("spec.size must be an integer from 0 to 100, got {got}");
    vec![
        status(&[], "False", "InvalidSize", &message),
        event(EventType::Warning, "InvalidSize", &message),
    ]
}

#[test]
fn invalid_sizes_patch_status_and_warn_and_apply_nothing() {
    let cases = [
        (json!({"size": -1}), "-1"),
        (json!({"size": 101}), "101"),
        (json!({"size": 1000000}), "1000000"),
        (json!({"size": 2.5}), "2.5"),
        (json!({"size": 3.0}), "3.0"),
        (json!({"size": "3"}), r#""3""#),
        (json!({"size": "three"}), r#""three""#),
        (json!({"size": true}), "true"),
        (json!({"size": null}), "null"),
        (json!({"size": [3]}), "[3]"),
        (json!({}), "null"),
        // Compact, keys sorted, UTF-8 as is.
        (
            json!({"size": {"b": 1, "a": [1, "é"]}}),
            r#"{"a":[1,"é"],"b":1}"#,
        ),
    ];
    // Pods and a Deployment in the store change nothing.
    let store = store([
        existing_deployment(3, Some(3)),
        pod(NS, "web-1", our_labels()),
    ]);
    for (spec, got) in cases {
        assert_eq!(
            reconcile(memcached_with_spec(spec.clone()), &store),
            invalid_size_actions(got),
            "spec {spec}"
        );
    }
}

#[test]
fn missing_spec_is_a_missing_size() {
    let mut m = memcached(1);
    m.as_object_mut().unwrap().remove("spec");
    assert_eq!(
        reconcile(m, &MemoryStore::new()),
        invalid_size_actions("null")
    );
    assert_eq!(
        reconcile(memcached_with_spec(Value::Null), &MemoryStore::new()),
        invalid_size_actions("null")
    );
}

#[test]
fn invalid_size_still_adds_the_finalizer_first() {
    let actions = reconcile(without_finalizer(memcached(101)), &MemoryStore::new());
    let mut expected = vec![Action::AddFinalizer(FINALIZER.into())];
    expected.extend(invalid_size_actions("101"));
    assert_eq!(actions, expected);
}

#[test]
fn bounds_are_valid_sizes() {
    for size in [0, 100] {
        let actions = reconcile(memcached(size), &MemoryStore::new());
        assert_eq!(
            actions[0],
            Action::apply(&spec_deployment(size)),
            "size {size}"
        );
    }
}

// ---- 4: the Deployment ----------------------------------------------------

#[test]
fn create_applies_the_deployment_reports_status_and_an_event() {
    let actions = reconcile(memcached(3), &MemoryStore::new());
    assert_eq!(actions.len(), 3, "{actions:?}");
    assert_eq!(json_of(&actions[0]), spec_deployment(3));
    assert_eq!(
        actions[1],
        status(
            &[],
            "False",
            "ReplicasUnavailable",
            "0/3 replicas available"
        )
    );
    assert_eq!(
        actions[2],
        event(
            EventType::Normal,
            "Created",
            "Created Deployment web with 3 replicas"
        )
    );
}

#[test]
fn deployment_is_applied_on_every_reconcile() {
    // Server-side apply is idempotent: the Deployment is declared every time,
    // so drift is corrected even when nothing else changes.
    let store = store([existing_deployment(3, Some(3))]);
    let actions = reconcile(memcached(3), &store);
    assert_eq!(json_of(&actions[0]), spec_deployment(3));
}

#[test]
fn deployment_follows_the_memcached_name_and_namespace() {
    let m = json!({
        "apiVersion": API_VERSION, "kind": KIND,
        "metadata": {"namespace": "other", "name": "big", "finalizers": [FINALIZER]},
        "spec": {"size": 7},
    });
    let actions = reconcile(m, &MemoryStore::new());
    let applied = json_of(&actions[0]);
    assert_eq!(applied["metadata"]["namespace"], "other");
    assert_eq!(applied["metadata"]["name"], "big");
    assert_eq!(applied["spec"]["replicas"], 7);
    assert_eq!(
        applied["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"],
        "big"
    );
    assert_eq!(
        applied["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/instance"],
        "big"
    );
    assert_eq!(
        actions[2],
        event(
            EventType::Normal,
            "Created",
            "Created Deployment big with 7 replicas"
        )
    );
}

// ---- 5: status ------------------------------------------------------------

#[test]
fn nodes_are_our_pods_in_our_namespace_sorted() {
    let store = store([
        existing_deployment(3, Some(3)),
        pod(NS, "web-c", our_labels()),
        pod(NS, "web-a", our_labels()),
        pod(NS, "web-b", our_labels()),
        // Not ours: another namespace, another instance, one label missing,
        // no labels, a label with another value.
        pod("elsewhere", "web-d", our_labels()),
        pod(
            NS,
            "other-1",
            json!({"app.kubernetes.io/name": "memcached", "app.kubernetes.io/instance": "other"}),
        ),
        pod(NS, "half-1", json!({"app.kubernetes.io/instance": NAME})),
        pod(NS, "bare-1", Value::Null),
        pod(
            NS,
            "redis-1",
            json!({"app.kubernetes.io/name": "redis", "app.kubernetes.io/instance": NAME}),
        ),
    ]);
    let actions = reconcile(memcached(3), &store);
    assert_eq!(
        actions,
        vec![
            Action::apply(&spec_deployment(3)),
            status(
                &["web-a", "web-b", "web-c"],
                "True",
                "MinimumReplicasAvailable",
                "3/3 replicas available"
            ),
        ]
    );
}

#[test]
fn available_when_available_replicas_equal_the_size() {
    let store = store([existing_deployment(2, Some(2))]);
    let actions = reconcile(memcached(2), &store);
    assert_eq!(
        actions,
        vec![
            Action::apply(&spec_deployment(2)),
            status(
                &[],
                "True",
                "MinimumReplicasAvailable",
                "2/2 replicas available"
            ),
        ]
    );
}

#[test]
fn unavailable_when_fewer_replicas_are_available() {
    let store = store([existing_deployment(3, Some(1))]);
    let actions = reconcile(memcached(3), &store);
    assert_eq!(
        actions[1],
        status(
            &[],
            "False",
            "ReplicasUnavailable",
            "1/3 replicas available"
        )
    );
    assert_eq!(actions.len(), 2, "no change, no event: {actions:?}");
}

#[test]
fn available_replicas_default_to_zero() {
    // A Deployment without status (not yet observed by its controller).
    let store = store([existing_deployment(3, None)]);
    assert_eq!(
        reconcile(memcached(3), &store)[1],
        status(
            &[],
            "False",
            "ReplicasUnavailable",
            "0/3 replicas available"
        )
    );
}

#[test]
fn size_zero_with_nothing_available_is_available() {
    let store = store([existing_deployment(0, None)]);
    assert_eq!(
        reconcile(memcached(0), &store),
        vec![
            Action::apply(&spec_deployment(0)),
            status(
                &[],
                "True",
                "MinimumReplicasAvailable",
                "0/0 replicas available"
            ),
        ]
    );
}

#[test]
fn status_json_has_exactly_nodes_and_one_condition() {
    let actions = reconcile(memcached(1), &MemoryStore::new());
    let status = json_of(&actions[1]);
    let status = status.as_object().unwrap();
    assert_eq!(
        status.keys().collect::<Vec<_>>(),
        vec!["conditions", "nodes"]
    );
    let conditions = status["conditions"].as_array().unwrap();
    assert_eq!(conditions.len(), 1);
    let mut keys: Vec<_> = conditions[0].as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, vec!["message", "reason", "status", "type"]);
}

// ---- 6: events ------------------------------------------------------------

#[test]
fn scaled_event_when_the_replicas_differ() {
    let store = store([existing_deployment(2, Some(2))]);
    let actions = reconcile(memcached(5), &store);
    assert_eq!(
        actions,
        vec![
            Action::apply(&spec_deployment(5)),
            status(
                &[],
                "False",
                "ReplicasUnavailable",
                "2/5 replicas available"
            ),
            event(
                EventType::Normal,
                "Scaled",
                "Scaled Deployment web from 2 to 5 replicas"
            ),
        ]
    );
    // Down as well as up.
    let actions = reconcile(memcached(1), &store);
    assert_eq!(
        actions[2],
        event(
            EventType::Normal,
            "Scaled",
            "Scaled Deployment web from 2 to 1 replicas"
        )
    );
}

#[test]
fn no_event_when_nothing_changes() {
    let store = store([existing_deployment(4, Some(2))]);
    let actions = reconcile(memcached(4), &store);
    assert!(
        !actions.iter().any(|a| matches!(a, Action::Event(_))),
        "{actions:?}"
    );
}

#[test]
fn absent_replicas_count_as_the_api_default_of_one() {
    let mut deployment = existing_deployment(1, Some(1));
    deployment["spec"]
        .as_object_mut()
        .unwrap()
        .remove("replicas");
    let store = store([deployment]);
    assert_eq!(reconcile(memcached(1), &store).len(), 2);
    assert_eq!(
        reconcile(memcached(3), &store)[2],
        event(
            EventType::Normal,
            "Scaled",
            "Scaled Deployment web from 1 to 3 replicas"
        )
    );
}

// ---- malformed objects and reads ------------------------------------------

#[test]
fn malformed_json_is_an_invalid_object_error() {
    let object = Object {
        api_version: API_VERSION.into(),
        kind: KIND.into(),
        namespace: NS.into(),
        name: NAME.into(),
        uid: "u-1".into(),
        json: r#"{"apiVersion": "cache.example.com/v1alpha1", "kind": "#.into(),
    };
    let err = MemcachedReconciler::reconcile(&object, &MemoryStore::new()).unwrap_err();
    assert_eq!(err.reason, "InvalidObject");
    assert!(err.message.contains("cache/web"), "{}", err.message);
}

#[test]
fn json_that_is_not_an_object_is_an_invalid_object_error() {
    for json in ["[]", "3", r#""memcached""#, "null"] {
        let object = Object {
            api_version: API_VERSION.into(),
            kind: KIND.into(),
            namespace: NS.into(),
            name: NAME.into(),
            uid: String::new(),
            json: json.into(),
        };
        let err = MemcachedReconciler::reconcile(&object, &MemoryStore::new()).unwrap_err();
        assert_eq!(err.reason, "InvalidObject", "{json}");
    }
}

#[test]
fn finalizers_of_the_wrong_type_count_as_absent() {
    for finalizers in [json!("cache.example.com/finalizer"), json!([1, null])] {
        let mut m = memcached(1);
        m["metadata"]["finalizers"] = finalizers;
        let actions = reconcile(m.clone(), &MemoryStore::new());
        assert_eq!(actions[0], Action::AddFinalizer(FINALIZER.into()));
        assert_eq!(reconcile(deleted(m), &MemoryStore::new()), vec![]);
    }
}

#[test]
fn replicas_that_are_not_an_integer_count_as_one() {
    let mut deployment = existing_deployment(1, Some(1));
    deployment["spec"]["replicas"] = json!("2");
    let store = store([deployment]);
    assert_eq!(reconcile(memcached(1), &store).len(), 2);
}

/// Records every read, to check the plugin reads what the README says.
struct Recording<'a> {
    inner: &'a MemoryStore,
    reads: RefCell<Vec<String>>,
}

impl Store for Recording<'_> {
    fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Object> {
        self.reads
            .borrow_mut()
            .push(format!("get {api_version} {kind} {namespace}/{name}"));
        self.inner.get(api_version, kind, namespace, name)
    }

    fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Object> {
        self.reads
            .borrow_mut()
            .push(format!("list {api_version} {kind} {namespace:?}"));
        self.inner.list(api_version, kind, namespace)
    }
}

#[test]
fn reads_the_deployment_and_the_pods_of_its_namespace_only() {
    let memory = MemoryStore::new();
    let store = Recording {
        inner: &memory,
        reads: RefCell::default(),
    };
    let object = Object::from_json(memcached(3)).unwrap();
    MemcachedReconciler::reconcile(&object, &store).unwrap();
    let mut reads = store.reads.take();
    reads.sort();
    assert_eq!(
        reads,
        vec![
            "get apps/v1 Deployment cache/web".to_owned(),
            r#"list v1 Pod Some("cache")"#.to_owned(),
        ]
    );
    // Deleting and invalid sizes read nothing.
    for m in [deleted(memcached(3)), memcached(-1)] {
        let object = Object::from_json(m).unwrap();
        MemcachedReconciler::reconcile(&object, &store).unwrap();
        assert!(store.reads.borrow().is_empty());
    }
}
