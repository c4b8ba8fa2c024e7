//! KubeApi against the fake API server (`crate::testing::fake_api`): objects by
//! path, resourceVersion bumped only when a write changes something, 404s
//! as the API server words them.

use serde_json::{Value, json};

use super::*;
use crate::testing::fake_api::FakeApi;

/// (method, uri) of every request so far.
fn requests(f: &FakeApi) -> Vec<(String, String)> {
    f.requests()
        .into_iter()
        .map(|s| (s.method, s.uri))
        .collect()
}

fn deployments() -> KindKey {
    KindKey::new("apps/v1", "Deployment")
}

fn memcacheds() -> KindKey {
    KindKey::new("cache.example.com/v1alpha1", "Memcached")
}

fn cluster(client: kube::Client) -> KubeApi {
    KubeApi::new(client)
        .with_resource(
            deployments(),
            crate::resource::api_resource("apps/v1", "Deployment"),
            true,
        )
        .with_resource(
            memcacheds(),
            crate::resource::api_resource("cache.example.com/v1alpha1", "Memcached"),
            true,
        )
}

fn deployment(replicas: i64) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "mc", "namespace": "shop"},
           "spec": {"replicas": replicas}})
}

const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/shop/deployments/mc";
const MEMCACHED: &str = "/apis/cache.example.com/v1alpha1/namespaces/shop/memcacheds/mc";

fn key(kind: KindKey) -> ObjectKey {
    ObjectKey::new(kind, "shop", "mc")
}

#[tokio::test]
async fn apply_is_server_side_with_the_plugins_field_manager_and_a_no_op_is_unchanged() {
    let (fake, client) = FakeApi::start([]);
    let c = cluster(client);
    assert_eq!(
        c.apply(deployment(3), "isobar/memcached").await,
        Ok(Write::Changed)
    );
    let requests = requests(&fake);
    assert_eq!(requests[1].0, "PATCH");
    assert_eq!(
        requests[1].1,
        format!("{DEPLOYMENT}?&fieldManager=isobar%2Fmemcached")
    );
    assert_eq!(fake.object(DEPLOYMENT).unwrap()["spec"]["replicas"], 3);
    assert_eq!(
        c.apply(deployment(3), "isobar/memcached").await,
        Ok(Write::Unchanged)
    );
    assert_eq!(
        c.apply(deployment(4), "isobar/memcached").await,
        Ok(Write::Changed)
    );
}

#[tokio::test]
async fn status_goes_to_the_status_subresource() {
    let (fake, client) = FakeApi::start([]);
    fake.insert(
        MEMCACHED,
        json!({"apiVersion": "cache.example.com/v1alpha1", "kind": "Memcached",
               "metadata": {"name": "mc", "namespace": "shop", "resourceVersion": "7"}}),
    );
    let c = cluster(client);
    let k = key(memcacheds());
    let st = json!({"nodes": ["a", "b"]});
    assert_eq!(
        c.apply_status(&k, st.clone(), "isobar/memcached").await,
        Ok(Write::Changed)
    );
    let last = requests(&fake).last().cloned().unwrap();
    assert_eq!(
        last,
        (
            "PATCH".into(),
            format!("{MEMCACHED}/status?&fieldManager=isobar%2Fmemcached")
        )
    );
    assert_eq!(fake.object(MEMCACHED).unwrap()["status"], st);
    assert_eq!(
        c.apply_status(&k, st, "isobar/memcached").await,
        Ok(Write::Unchanged)
    );
    // Status for an object that is gone is an error, not a create.
    let gone = k.with_name("gone");
    assert!(matches!(
        c.apply_status(&gone, json!({}), "isobar/memcached").await,
        Err(ApiError::NotFound(_))
    ));
}

#[tokio::test]
async fn finalizers_are_a_guarded_merge_patch_and_skipped_when_already_so() {
    let (fake, client) = FakeApi::start([]);
    fake.insert(
        MEMCACHED,
        json!({"metadata": {"name": "mc", "namespace": "shop", "resourceVersion": "7",
                            "finalizers": ["other.io/keep"]}}),
    );
    let c = cluster(client);
    let k = key(memcacheds());
    assert_eq!(
        c.set_finalizer(&k, "isobar.dev/cleanup", true).await,
        Ok(Write::Changed)
    );
    assert_eq!(
        fake.object(MEMCACHED).unwrap()["metadata"]["finalizers"],
        json!(["other.io/keep", "isobar.dev/cleanup"])
    );
    let writes = |f: &FakeApi| requests(f).iter().filter(|r| r.0 == "PATCH").count();
    let before = writes(&fake);
    assert_eq!(
        c.set_finalizer(&k, "isobar.dev/cleanup", true).await,
        Ok(Write::Unchanged)
    );
    assert_eq!(writes(&fake), before, "no write when already present");
    assert_eq!(
        c.set_finalizer(&k, "isobar.dev/cleanup", false).await,
        Ok(Write::Changed)
    );
    assert_eq!(
        fake.object(MEMCACHED).unwrap()["metadata"]["finalizers"],
        json!(["other.io/keep"])
    );
}

#[tokio::test]
async fn deleting_what_is_gone_is_unchanged_and_events_are_published() {
    let (fake, client) = FakeApi::start([]);
    let c = cluster(client);
    c.apply(deployment(1), "isobar/memcached").await.unwrap();
    let k = key(deployments());
    assert_eq!(c.delete(&k).await, Ok(Write::Changed));
    assert_eq!(c.delete(&k).await, Ok(Write::Unchanged));

    c.event(RecordedEvent {
        regarding: key(memcacheds()),
        type_: "Warning".into(),
        reason: "InvalidSize".into(),
        message: "size must be positive".into(),
        reporting_controller: "isobar/memcached".into(),
    })
    .await
    .unwrap();
    let last = requests(&fake).last().cloned().unwrap();
    assert_eq!(
        last,
        (
            "POST".into(),
            "/apis/events.k8s.io/v1/namespaces/shop/events?".into()
        )
    );
}

/// Issue 13 item 3: a cluster-scoped kind is refused before any write (the
/// plugin's reach ends at its owner's namespace), and apply is never forced.
#[tokio::test]
async fn cluster_scoped_objects_are_refused_and_apply_is_not_forced() {
    let (fake, client) = FakeApi::start([]);
    let roles = KindKey::new("rbac.authorization.k8s.io/v1", "ClusterRole");
    let c = cluster(client).with_resource(
        roles.clone(),
        crate::resource::api_resource("rbac.authorization.k8s.io/v1", "ClusterRole"),
        false,
    );
    let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
                      "metadata": {"name": "escalated"}});
    let err = c.apply(role, "isobar/p").await.unwrap_err();
    assert!(
        matches!(err, ApiError::Invalid(ref m) if m.contains("cluster-scoped")),
        "{err:?}"
    );
    assert!(requests(&fake).is_empty(), "{:?}", requests(&fake));
    c.apply(deployment(1), "isobar/p").await.unwrap();
    assert!(
        requests(&fake)
            .iter()
            .all(|(_, uri)| !uri.contains("force")),
        "{:?}",
        requests(&fake)
    );
}
