//! The Memcached operator (the Operator SDK tutorial's) through the host's
//! reconciler: one suite, run against the Rust component
//! (`plugins/memcached/rust`) and the Python one (`plugins/memcached/python`,
//! componentize-py). Objects go into the in-memory cluster as a user would
//! write them; the reconciler's writes come back as watch events, as a real
//! API server's do. Every wait is on a condition, bounded.

use std::path::PathBuf;
use std::sync::OnceLock;

use isobar::plugin::ReconcilerPlugin;
use isobar::reconcile::MemoryApi;
use isobar::store::{KindKey, ObjectKey};
use isobar_tests::operator::Operator;
use isobar_tests::*;
use serde_json::{Value, json};

#[derive(Clone, Copy, Debug)]
enum Lang {
    Rust,
    Python,
}

fn component(lang: Lang) -> Option<PathBuf> {
    match lang {
        Lang::Rust => Some(plugin_path("isobar-plugin-memcached")),
        Lang::Python => {
            let p = target_dir()
                .join("wasm32-wasip2")
                .join("release")
                .join("isobar_plugin_memcached_py.wasm");
            if p.exists() {
                return Some(p);
            }
            assert!(
                std::process::Command::new("python3")
                    .arg("--version")
                    .output()
                    .is_err(),
                "{} is missing: build it with `make plugins-py`",
                p.display()
            );
            eprintln!("## SKIPPED: no python3 to build the Python Memcached operator ##");
            None
        }
    }
}

/// Loaded (and compiled) once per test binary: a componentize-py
/// component is tens of megabytes of CPython.
fn load(lang: Lang) -> Option<ReconcilerPlugin> {
    static RUST: OnceLock<Option<ReconcilerPlugin>> = OnceLock::new();
    static PYTHON: OnceLock<Option<ReconcilerPlugin>> = OnceLock::new();
    let cell = match lang {
        Lang::Rust => &RUST,
        Lang::Python => &PYTHON,
    };
    cell.get_or_init(|| {
        let path = component(lang)?;
        Some(
            runtime()
                .load_reconciler_file(&path)
                .unwrap_or_else(|e| panic!("loading {}: {e}", path.display())),
        )
    })
    .clone()
}

fn memcached(name: &str, size: Value) -> Value {
    json!({
        "apiVersion": "cache.example.com/v1alpha1",
        "kind": "Memcached",
        "metadata": {"namespace": "default", "name": name},
        "spec": {"size": size},
    })
}

fn memcached_key(name: &str) -> ObjectKey {
    ObjectKey::new(
        KindKey::new("cache.example.com/v1alpha1", "Memcached"),
        "default",
        name,
    )
}

fn deployment_key(name: &str) -> ObjectKey {
    ObjectKey::new(KindKey::new("apps/v1", "Deployment"), "default", name)
}

fn pod(name: &str, instance: &str) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"namespace": "default", "name": name, "labels": {
            "app.kubernetes.io/name": "memcached",
            "app.kubernetes.io/instance": instance,
        }},
    })
}

fn replicas(c: &MemoryApi, name: &str) -> Option<i64> {
    c.get(&deployment_key(name))?["spec"]["replicas"].as_i64()
}

fn condition(c: &MemoryApi, name: &str, type_: &str) -> Option<Value> {
    c.get(&memcached_key(name))?["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|x| x["type"] == type_)
        .cloned()
}

fn events(c: &MemoryApi) -> Vec<(String, String, String)> {
    c.events()
        .into_iter()
        .map(|e| (e.type_, e.reason, e.message))
        .collect()
}

fn ev(t: &str, reason: &str, message: &str) -> (String, String, String) {
    (t.into(), reason.into(), message.into())
}

async fn creates_the_deployment(lang: Lang) {
    let Some(plugin) = load(lang) else { return };
    assert_eq!(plugin.info.name, "memcached");
    let mut op = Operator::start(plugin);
    op.cluster.put(memcached("cache", json!(3))).unwrap();
    op.until("the Deployment and the status", |c| {
        replicas(c, "cache") == Some(3) && condition(c, "cache", "Available").is_some()
    })
    .await;

    let d = op.cluster.get(&deployment_key("cache")).unwrap();
    let m = op.cluster.get(&memcached_key("cache")).unwrap();
    // The host set the owner reference and applied as the plugin's manager.
    assert_eq!(
        d["metadata"]["ownerReferences"],
        json!([{"apiVersion": "cache.example.com/v1alpha1", "kind": "Memcached",
                "name": "cache", "uid": m["metadata"]["uid"], "controller": true,
                "blockOwnerDeletion": true}])
    );
    assert_eq!(
        d["metadata"]["managedFields"][0]["manager"],
        "isobar/memcached"
    );
    let container = &d["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "memcached:1.6.26-alpine3.19");
    assert_eq!(container["ports"][0]["containerPort"], 11211);
    assert_eq!(
        d["spec"]["selector"]["matchLabels"],
        json!({"app.kubernetes.io/name": "memcached", "app.kubernetes.io/instance": "cache"})
    );
    assert_eq!(
        m["metadata"]["finalizers"],
        json!(["cache.example.com/finalizer"])
    );
    assert_eq!(m["status"]["nodes"], json!([]));
    let available = condition(&op.cluster, "cache", "Available").unwrap();
    assert_eq!(available["status"], "False");
    assert_eq!(available["reason"], "ReplicasUnavailable");
    assert_eq!(available["message"], "0/3 replicas available");
    // Stamped by the host: plugins have no clock.
    assert!(
        available["lastTransitionTime"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z'))
    );
    assert_eq!(available["observedGeneration"], 1);
    assert_eq!(
        events(&op.cluster),
        [ev(
            "Normal",
            "Created",
            "Created Deployment cache with 3 replicas"
        )]
    );
    op.stop().await;
}

async fn pods_and_availability_reach_the_status(lang: Lang) {
    let Some(plugin) = load(lang) else { return };
    let mut op = Operator::start(plugin);
    op.cluster.put(memcached("cache", json!(2))).unwrap();
    op.until("the Deployment", |c| replicas(c, "cache") == Some(2))
        .await;
    let before = condition(&op.cluster, "cache", "Available").unwrap();

    // What the Deployment controller and kubelets would do.
    for (name, instance) in [
        ("cache-b", "cache"),
        ("other-a", "other"),
        ("cache-a", "cache"),
    ] {
        op.cluster.put(pod(name, instance)).unwrap();
    }
    let key = deployment_key("cache");
    isobar::reconcile::Api::apply_status(
        &*op.cluster,
        &key,
        json!({"availableReplicas": 2}),
        "deployment-controller",
    )
    .await
    .unwrap();
    op.until("Available=True and the nodes", |c| {
        condition(c, "cache", "Available").is_some_and(|x| x["status"] == "True")
            && c.get(&memcached_key("cache")).unwrap()["status"]["nodes"]
                == json!(["cache-a", "cache-b"])
    })
    .await;
    let after = condition(&op.cluster, "cache", "Available").unwrap();
    assert_eq!(after["reason"], "MinimumReplicasAvailable");
    assert_eq!(after["message"], "2/2 replicas available");
    assert!(before["lastTransitionTime"].is_string() && after["lastTransitionTime"].is_string());
    op.stop().await;
}

async fn scaling_updates_the_deployment(lang: Lang) {
    let Some(plugin) = load(lang) else { return };
    let mut op = Operator::start(plugin);
    op.cluster.put(memcached("cache", json!(3))).unwrap();
    op.until("3 replicas", |c| replicas(c, "cache") == Some(3))
        .await;
    op.cluster.put(memcached("cache", json!(5))).unwrap();
    op.until("5 replicas and the new generation observed", |c| {
        replicas(c, "cache") == Some(5)
            && condition(c, "cache", "Available").is_some_and(|x| x["observedGeneration"] == 2)
    })
    .await;
    assert_eq!(
        events(&op.cluster),
        [
            ev(
                "Normal",
                "Created",
                "Created Deployment cache with 3 replicas"
            ),
            ev(
                "Normal",
                "Scaled",
                "Scaled Deployment cache from 3 to 5 replicas"
            ),
        ]
    );
    assert_eq!(
        condition(&op.cluster, "cache", "Available").unwrap()["message"],
        "0/5 replicas available"
    );
    op.stop().await;
}

async fn a_deleted_deployment_is_recreated(lang: Lang) {
    let Some(plugin) = load(lang) else { return };
    let mut op = Operator::start(plugin);
    op.cluster.put(memcached("cache", json!(1))).unwrap();
    op.until("the Deployment", |c| replicas(c, "cache") == Some(1))
        .await;
    let first_uid = op.cluster.get(&deployment_key("cache")).unwrap()["metadata"]["uid"].clone();
    // Someone deletes the child: the owner is reconciled and it comes back.
    op.cluster.remove(&deployment_key("cache")).unwrap();
    op.until("a new Deployment", |c| {
        c.get(&deployment_key("cache"))
            .is_some_and(|d| d["metadata"]["uid"] != first_uid)
    })
    .await;
    op.stop().await;
}

async fn an_invalid_size_is_reported_not_applied(lang: Lang) {
    let Some(plugin) = load(lang) else { return };
    let mut op = Operator::start(plugin);
    op.cluster.put(memcached("cache", json!(101))).unwrap();
    op.until("the InvalidSize condition", |c| {
        condition(c, "cache", "Available").is_some_and(|x| x["reason"] == "InvalidSize")
    })
    .await;
    let message = "spec.size must be an integer from 0 to 100, got 101";
    assert_eq!(
        condition(&op.cluster, "cache", "Available").unwrap()["message"],
        message
    );
    assert_eq!(events(&op.cluster), [ev("Warning", "InvalidSize", message)]);
    assert!(op.cluster.get(&deployment_key("cache")).is_none());

    // Fixed: the Deployment follows.
    op.cluster.put(memcached("cache", json!(2))).unwrap();
    op.until("the Deployment", |c| replicas(c, "cache") == Some(2))
        .await;
    op.stop().await;
}

async fn deletion_runs_the_finalizer(lang: Lang) {
    let Some(plugin) = load(lang) else { return };
    let mut op = Operator::start(plugin);
    op.cluster.put(memcached("cache", json!(1))).unwrap();
    op.until("the Deployment and the finalizer", |c| {
        replicas(c, "cache") == Some(1)
            && c.get(&memcached_key("cache")).unwrap()["metadata"]["finalizers"]
                == json!(["cache.example.com/finalizer"])
    })
    .await;
    op.cluster.remove(&memcached_key("cache")).unwrap();
    op.until("the Memcached and its Deployment gone", |c| {
        c.get(&memcached_key("cache")).is_none() && c.get(&deployment_key("cache")).is_none()
    })
    .await;
    assert_eq!(
        events(&op.cluster).last().unwrap(),
        &ev("Normal", "Deleting", "Deleting Deployment cache")
    );
    op.stop().await;
}

async fn a_settled_object_causes_no_writes(lang: Lang) {
    let Some(plugin) = load(lang) else { return };
    let mut op = Operator::start(plugin);
    op.cluster.put(memcached("cache", json!(2))).unwrap();
    op.until("the Deployment", |c| replicas(c, "cache") == Some(2))
        .await;
    // A Pod of another instance: read (listed) by the reconcile, so it runs
    // again, but nothing it would write differs.
    let settled = op.progress.borrow().clone();
    op.cluster.put(pod("other-a", "other")).unwrap();
    let target = settled.reconciles + 1;
    op.until_progress("another reconcile", |p| p.reconciles >= target)
        .await;
    let now = op.progress.borrow().clone();
    assert_eq!(
        now.writes, settled.writes,
        "nothing changed, nothing written: {now:?}"
    );
    assert!(now.unchanged_writes > settled.unchanged_writes, "{now:?}");
    assert_eq!(now.failures, 0);
    op.stop().await;
}

macro_rules! suite {
    ($lang:ident, $($test:ident),* $(,)?) => {
        #[allow(non_snake_case)]
        mod $lang {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$test(super::Lang::$lang).await
                }
            )*
        }
    };
}

suite!(
    Rust,
    creates_the_deployment,
    pods_and_availability_reach_the_status,
    scaling_updates_the_deployment,
    a_deleted_deployment_is_recreated,
    an_invalid_size_is_reported_not_applied,
    deletion_runs_the_finalizer,
    a_settled_object_causes_no_writes,
);

suite!(
    Python,
    creates_the_deployment,
    pods_and_availability_reach_the_status,
    scaling_updates_the_deployment,
    a_deleted_deployment_is_recreated,
    an_invalid_size_is_reported_not_applied,
    deletion_runs_the_finalizer,
    a_settled_object_causes_no_writes,
);

// ---- the host's side of failures: a reconciler that misbehaves on request ----

fn faults() -> ReconcilerPlugin {
    static P: OnceLock<ReconcilerPlugin> = OnceLock::new();
    P.get_or_init(|| {
        runtime()
            .load_reconciler_file(&plugin_path("isobar-plugin-faults-reconciler"))
            .expect("faults reconciler")
    })
    .clone()
}

fn fault(name: &str, mode: &str) -> Value {
    json!({"apiVersion": "test.isobar.dev/v1", "kind": "Fault",
           "metadata": {"namespace": "default", "name": name},
           "spec": {"fault": mode}})
}

fn fault_key(name: &str) -> ObjectKey {
    ObjectKey::new(KindKey::new("test.isobar.dev/v1", "Fault"), "default", name)
}

fn config_map_key(namespace: &str, name: &str) -> ObjectKey {
    ObjectKey::new(KindKey::new("v1", "ConfigMap"), namespace, name)
}

/// The host's own condition on a reconciled object.
fn reconciled(c: &MemoryApi, name: &str) -> Option<(String, String)> {
    let o = c.get(&fault_key(name))?;
    let cond = o["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|x| x["type"] == "Reconciled")?
        .clone();
    Some((
        cond["status"].as_str()?.to_string(),
        cond["reason"].as_str()?.to_string(),
    ))
}

fn is(status: &str, reason: &str) -> Option<(String, String)> {
    Some((status.to_string(), reason.to_string()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_reconcile_is_a_condition_retried_with_backoff_until_it_recovers() {
    let mut op = Operator::start(faults());
    op.cluster.put(fault("f", "error")).unwrap();
    op.until("Reconciled=False and retries", |c| {
        reconciled(c, "f") == is("False", "AskedToFail")
    })
    .await;
    op.until_progress("retries", |p| p.failures >= 3).await;
    let p = op.progress.borrow().clone();
    assert!(p.failing.contains_key(&fault_key("f")), "{p:?}");
    assert!(p.failing[&fault_key("f")].contains("spec.fault is error"));
    assert!(op.cluster.get(&config_map_key("default", "f")).is_none());

    // The user fixes the object: it reconciles and the condition clears.
    op.cluster.put(fault("f", "none")).unwrap();
    op.until("Reconciled=True and the child", |c| {
        reconciled(c, "f") == is("True", "Reconciled")
            && c.get(&config_map_key("default", "f")).is_some()
    })
    .await;
    assert!(op.progress.borrow().failing.is_empty());
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traps_and_timeouts_fail_one_object_not_the_host() {
    let mut op = Operator::start(faults());
    op.cluster.put(fault("trap", "trap")).unwrap();
    op.cluster.put(fault("loop", "loop")).unwrap();
    op.cluster.put(fault("fine", "none")).unwrap();
    op.until(
        "both failures reported and the good object reconciled",
        |c| {
            reconciled(c, "trap") == is("False", "PluginTrap")
                && reconciled(c, "loop") == is("False", "PluginTimeout")
                && c.get(&config_map_key("default", "fine")).is_some()
        },
    )
    .await;
    assert!(op.progress.borrow().failing[&fault_key("trap")].contains("asked to trap"));
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_beyond_the_objects_own_are_refused() {
    let mut op = Operator::start(faults());
    // Someone else's ConfigMap, which the plugin will try to delete.
    op.cluster
        .put(json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"namespace": "default", "name": "not-mine"}}))
        .unwrap();
    op.cluster.put(fault("deleter", "foreign-delete")).unwrap();
    op.cluster.put(fault("escaper", "cross-namespace")).unwrap();
    op.until("both refused", |c| {
        reconciled(c, "deleter") == is("False", "ActionRefused")
            && reconciled(c, "escaper") == is("False", "ActionRefused")
    })
    .await;
    assert!(
        op.cluster
            .get(&config_map_key("default", "not-mine"))
            .is_some()
    );
    assert!(
        op.cluster
            .get(&config_map_key("elsewhere", "escaper"))
            .is_none()
    );
    let failing = op.progress.borrow().failing.clone();
    assert!(
        failing[&fault_key("deleter")].contains("not owned"),
        "{failing:?}"
    );
    assert!(
        failing[&fault_key("escaper")].contains("do not cross namespaces"),
        "{failing:?}"
    );
    op.stop().await;
}

/// Issue 13 item 3: `Apply` never checked the kind against `owns` (a
/// cluster-scoped ClusterRole went through), `Delete` checked ownership
/// only of objects in the reconciler's store (a Secret it does not watch
/// was deleted), and an existing object of someone else's was taken over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_outside_what_the_plugin_declared_are_refused() {
    let mut op = Operator::start(faults());
    let secret_key = ObjectKey::new(KindKey::new("v1", "Secret"), "default", "db");
    op.cluster
        .put(json!({"apiVersion": "v1", "kind": "Secret",
                    "metadata": {"namespace": "default", "name": "db"}}))
        .unwrap();
    op.cluster
        .put(json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"namespace": "default", "name": "not-mine"},
                    "data": {"owner": "a person"}}))
        .unwrap();
    op.cluster.put(fault("escalator", "unowned-kind")).unwrap();
    op.cluster.put(fault("shredder", "unowned-delete")).unwrap();
    op.cluster.put(fault("thief", "take-over")).unwrap();
    op.until("all three refused", |c| {
        ["escalator", "shredder", "thief"]
            .iter()
            .all(|n| reconciled(c, n) == is("False", "ActionRefused"))
    })
    .await;
    let cluster_role = ObjectKey::new(
        KindKey::new("rbac.authorization.k8s.io/v1", "ClusterRole"),
        "",
        "escalated",
    );
    assert!(op.cluster.get(&cluster_role).is_none());
    assert!(
        op.cluster
            .get(&ObjectKey::new(
                cluster_role.kind.clone(),
                "default",
                "escalated"
            ))
            .is_none()
    );
    assert!(op.cluster.get(&secret_key).is_some(), "not deleted");
    let not_mine = op
        .cluster
        .get(&config_map_key("default", "not-mine"))
        .unwrap();
    assert_eq!(not_mine["data"], json!({"owner": "a person"}));
    assert!(not_mine["metadata"].get("ownerReferences").is_none());
    let failing = op.progress.borrow().failing.clone();
    assert!(
        failing[&fault_key("escalator")].contains("not a kind the plugin owns"),
        "{failing:?}"
    );
    assert!(
        failing[&fault_key("shredder")].contains("not a kind the plugin owns"),
        "{failing:?}"
    );
    assert!(
        failing[&fault_key("thief")].contains("never takes objects over"),
        "{failing:?}"
    );
    op.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requeue_after_calls_again_without_any_change() {
    let mut op = Operator::start(faults());
    op.cluster.put(fault("timer", "requeue")).unwrap();
    op.until("the first status", |c| {
        c.get(&fault_key("timer"))
            .is_some_and(|o| o["status"]["ok"] == true)
    })
    .await;
    let writes = op.progress.borrow().writes;
    let start = op.progress.borrow().reconciles;
    op.until_progress("requeued reconciles", |p| p.reconciles >= start + 3)
        .await;
    assert_eq!(
        op.progress.borrow().writes,
        writes,
        "nothing changed meanwhile"
    );
    op.stop().await;
}
