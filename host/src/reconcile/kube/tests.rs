//! KubeCluster against a small fake API server (tower-test behind a real
//! `kube::Client`): objects by path, resourceVersion bumped only when a
//! write changes something, 404s as the API server words them.

use std::collections::BTreeMap;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use kube::client::Body;
use parking_lot::Mutex;
use serde_json::{Value, json};

use super::*;

#[derive(Default)]
struct Fake {
    objects: BTreeMap<String, Value>,
    rv: u64,
    requests: Vec<(String, String)>,
}

fn status(code: u16) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
           "reason": if code == 404 { "NotFound" } else { "Conflict" }, "message": "fake"})
}

fn merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (into, patch) => *into = patch.clone(),
    }
}

fn start() -> (Arc<Mutex<Fake>>, kube::Client) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let fake = Arc::new(Mutex::new(Fake::default()));
    let f = fake.clone();
    tokio::spawn(async move {
        while let Some((request, reply)) = handle.next_request().await {
            let method = request.method().to_string();
            let uri = request.uri().clone();
            let path = uri.path().to_string();
            let bytes = request.into_body().collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let (code, answer) = {
                let mut f = f.lock();
                f.requests.push((method.clone(), uri.to_string()));
                let object_path = path.trim_end_matches("/status").to_string();
                match method.as_str() {
                    "GET" => match f.objects.get(&object_path) {
                        Some(o) => (200, o.clone()),
                        None => (404, status(404)),
                    },
                    "PATCH" => {
                        let mut next = f.objects.get(&object_path).cloned().unwrap_or(json!({}));
                        let before = next.clone();
                        let mut patch = body.clone();
                        if let Some(rv) = patch.pointer("/metadata/resourceVersion").cloned() {
                            if next.pointer("/metadata/resourceVersion") != Some(&rv) {
                                reply.send_response(
                                    Response::builder()
                                        .status(409)
                                        .body(Body::from(serde_json::to_vec(&status(409)).unwrap()))
                                        .unwrap(),
                                );
                                continue;
                            }
                            patch["metadata"]
                                .as_object_mut()
                                .unwrap()
                                .remove("resourceVersion");
                        }
                        merge(&mut next, &patch);
                        if next != before {
                            f.rv += 1;
                            next["metadata"]["resourceVersion"] = json!(f.rv.to_string());
                        }
                        f.objects.insert(object_path, next.clone());
                        (200, next)
                    }
                    "DELETE" => match f.objects.remove(&object_path) {
                        Some(_) => (
                            200,
                            json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                        ),
                        None => (404, status(404)),
                    },
                    _ => (201, body.clone()),
                }
            };
            reply.send_response(
                Response::builder()
                    .status(StatusCode::from_u16(code).unwrap())
                    .body(Body::from(serde_json::to_vec(&answer).unwrap()))
                    .unwrap(),
            );
        }
    });
    (fake, kube::Client::new(service, "default"))
}

fn deployments() -> KindKey {
    KindKey::new("apps/v1", "Deployment")
}

fn memcacheds() -> KindKey {
    KindKey::new("cache.example.com/v1alpha1", "Memcached")
}

fn cluster(client: kube::Client) -> KubeCluster {
    KubeCluster::new(client)
        .with_resource(
            deployments(),
            ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", "Deployment")),
            true,
        )
        .with_resource(
            memcacheds(),
            ApiResource::from_gvk(&GroupVersionKind::gvk(
                "cache.example.com",
                "v1alpha1",
                "Memcached",
            )),
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
    let (fake, client) = start();
    let c = cluster(client);
    assert_eq!(
        c.apply(deployment(3), "isobar/memcached").await,
        Ok(Write::Changed)
    );
    let requests = fake.lock().requests.clone();
    assert_eq!(requests[1].0, "PATCH");
    assert_eq!(
        requests[1].1,
        format!("{DEPLOYMENT}?&force=true&fieldManager=isobar%2Fmemcached")
    );
    assert_eq!(fake.lock().objects[DEPLOYMENT]["spec"]["replicas"], 3);
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
    let (fake, client) = start();
    fake.lock().objects.insert(
        MEMCACHED.into(),
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
    let last = fake.lock().requests.last().cloned().unwrap();
    assert_eq!(
        last,
        (
            "PATCH".into(),
            format!("{MEMCACHED}/status?&force=true&fieldManager=isobar%2Fmemcached")
        )
    );
    assert_eq!(fake.lock().objects[MEMCACHED]["status"], st);
    assert_eq!(
        c.apply_status(&k, st, "isobar/memcached").await,
        Ok(Write::Unchanged)
    );
    // Status for an object that is gone is an error, not a create.
    let gone = k.with_name("gone");
    assert!(matches!(
        c.apply_status(&gone, json!({}), "isobar/memcached").await,
        Err(ClusterError::NotFound(_))
    ));
}

#[tokio::test]
async fn finalizers_are_a_guarded_merge_patch_and_skipped_when_already_so() {
    let (fake, client) = start();
    fake.lock().objects.insert(
        MEMCACHED.into(),
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
        fake.lock().objects[MEMCACHED]["metadata"]["finalizers"],
        json!(["other.io/keep", "isobar.dev/cleanup"])
    );
    let writes = |f: &Fake| f.requests.iter().filter(|r| r.0 == "PATCH").count();
    let before = writes(&fake.lock());
    assert_eq!(
        c.set_finalizer(&k, "isobar.dev/cleanup", true).await,
        Ok(Write::Unchanged)
    );
    assert_eq!(
        writes(&fake.lock()),
        before,
        "no write when already present"
    );
    assert_eq!(
        c.set_finalizer(&k, "isobar.dev/cleanup", false).await,
        Ok(Write::Changed)
    );
    assert_eq!(
        fake.lock().objects[MEMCACHED]["metadata"]["finalizers"],
        json!(["other.io/keep"])
    );
}

#[tokio::test]
async fn deleting_what_is_gone_is_unchanged_and_events_are_published() {
    let (fake, client) = start();
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
    let last = fake.lock().requests.last().cloned().unwrap();
    assert_eq!(
        last,
        (
            "POST".into(),
            "/apis/events.k8s.io/v1/namespaces/shop/events?".into()
        )
    );
}
