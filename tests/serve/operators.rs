//! A reconciler plugin beside the translator, swapped live.

use super::*;

/// The Memcached operator's Deployment in the in-memory cluster, if any.
fn memcached_replicas(cluster: &isobar::reconcile::MemoryApi, name: &str) -> Option<i64> {
    cluster.inspect(|objects| {
        objects
            .values()
            .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == name)
            .and_then(|o| o["spec"]["replicas"].as_i64())
    })
}

fn memcached_manifest(size: i64) -> String {
    yaml(&[json!({
        "apiVersion": "cache.example.com/v1alpha1", "kind": "Memcached",
        "metadata": {"namespace": "default", "name": "cache"},
        "spec": {"size": size},
    })])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_beside_the_translator_and_is_swapped_live() {
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("00-backends.yaml"), backends()).unwrap();
    std::fs::write(manifests.path().join("10-shop.yaml"), yaml(&[shop()])).unwrap();
    std::fs::write(
        manifests.path().join("30-cache.yaml"),
        memcached_manifest(2),
    )
    .unwrap();
    let ops = tempfile::tempdir().unwrap();
    let operator = ops.path().join("memcached.wasm");
    std::fs::copy(plugin_path("isobar-plugin-memcached"), &operator).unwrap();
    let mut config = Config::new(manifests.path(), plugin_path("isobar-plugin-ingress"));
    config.reconcilers = vec![operator.clone()];
    config.xds_listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.cache_dir = Some(target_dir().join("isobar-test-cache"));
    let server = Server::start(config).await.expect("serve starts");
    assert!(server.ready(WAIT).await);
    let status = server.report().clone();
    let memory = server
        .memory_api()
        .expect("serving manifests with reconcilers");
    let wait = async |what: &str, cond: &dyn Fn(&isobar::report::Report) -> bool| {
        assert!(
            status.wait_until(WAIT, cond).await,
            "timed out waiting for {what}"
        );
    };

    // The translator serves as ever; the operator made its Deployment.
    let mut envoy = Sotw::open_envoy(server.xds_addr(), "envoy-1").await;
    envoy.until("the shop", has_shop).await;
    wait("a Deployment of 2", &|_| {
        memcached_replicas(&memory, "cache") == Some(2)
    })
    .await;
    // Editing the manifest is a change the operator follows.
    atomic_write(
        &manifests.path().join("30-cache.yaml"),
        memcached_manifest(3).as_bytes(),
    );
    wait("scaled to 3", &|_| {
        memcached_replicas(&memory, "cache") == Some(3)
    })
    .await;
    let (code, body) = http_get(server.admin_addr(), "/debug/reconcilers").await;
    assert_eq!(code, 200);
    let doc: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        doc["reconcilers"][0]["reconciles"],
        "Memcached.cache.example.com"
    );
    let first_digest = doc["reconcilers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();

    // Not a reconciler (a translator): refused, the loaded one keeps going.
    atomic_write(
        &operator,
        &std::fs::read(plugin_path("isobar-plugin-ingress")).unwrap(),
    );
    wait("the refusal", &|s| {
        s.reconcilers()
            .first()
            .is_some_and(|r| r.last_swap_error.is_some())
    })
    .await;
    assert_eq!(status.reconcilers()[0].digest, first_digest);
    atomic_write(
        &manifests.path().join("30-cache.yaml"),
        memcached_manifest(4).as_bytes(),
    );
    wait("scaled to 4 by the old one", &|_| {
        memcached_replicas(&memory, "cache") == Some(4)
    })
    .await;

    // The same operator written in Python, swapped in live.
    let python = target_dir().join("wasm32-wasip2/release/isobar_plugin_memcached_py.wasm");
    if !python.exists() {
        eprintln!(
            "SKIPPED the Python half: {} is not built (make plugins-py)",
            python.display()
        );
        return;
    }
    atomic_write(&operator, &std::fs::read(&python).unwrap());
    wait("the Python operator", &|s| {
        s.reconcilers()
            .first()
            .is_some_and(|r| r.digest != first_digest && r.last_swap_error.is_none())
    })
    .await;
    atomic_write(
        &manifests.path().join("30-cache.yaml"),
        memcached_manifest(1).as_bytes(),
    );
    wait("scaled to 1 by the Python operator", &|_| {
        memcached_replicas(&memory, "cache") == Some(1)
    })
    .await;
    assert!(status.reconcilers()[0].calls > 0);
    envoy.until("the shop, still served", has_shop).await;
}
