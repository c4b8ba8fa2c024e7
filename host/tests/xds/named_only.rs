//! Named-only resources (API listeners for proxyless gRPC).

use super::*;

// ---- named-only resources (API listeners for proxyless gRPC) -------------

/// `base()` plus an API listener that only a client naming it may see.
fn with_api_listener(world: &World, version: u64, variant: &str) -> Snapshot {
    let mut snap = world.snapshot(version);
    let mut api = resource(LDS, "shop.example.com", variant);
    api.named_only = true;
    snap.resources
        .get_mut(LDS)
        .unwrap()
        .insert(api.name.clone(), Arc::new(api));
    snap
}

#[tokio::test]
async fn named_only_resources_never_reach_wildcard_subscribers() {
    let world = World::base();
    let h = Harness::start(with_api_listener(&world, 1, "v1")).await;

    // Envoy: the legacy wildcard (SotW) and `*` (delta).
    let mut envoy = h.sotw("envoy").await;
    envoy.subscribe(LDS, &[]).await;
    let lds = envoy.recv().await;
    assert_eq!(names(&lds), ["http", "https"]);
    envoy.ack(&lds, &[]).await;
    let mut envoy_delta = h.delta("envoy-delta").await;
    envoy_delta.subscribe(LDS, &["*"], &[]).await;
    let dl = envoy_delta.recv().await;
    assert_eq!(delta_names(&dl), ["http", "https"]);
    envoy_delta.ack(&dl).await;

    // A proxyless gRPC client names the listener it dials.
    let mut grpc = h.sotw("grpc").await;
    grpc.subscribe(LDS, &["shop.example.com"]).await;
    let g = grpc.recv().await;
    assert_eq!(names(&g), ["shop.example.com"]);
    grpc.ack(&g, &["shop.example.com"]).await;
    let mut grpc_delta = h.delta("grpc-delta").await;
    grpc_delta.subscribe(LDS, &["shop.example.com"], &[]).await;
    let gd = grpc_delta.recv().await;
    assert_eq!(delta_names(&gd), ["shop.example.com"]);
    grpc_delta.ack(&gd).await;

    // A change to the API listener alone reaches the clients that named it
    // and nobody else.
    h.publish(with_api_listener(&world, 2, "v2"));
    let g2 = grpc.recv().await;
    assert_eq!(
        (names(&g2), g2.version_info.as_str()),
        (vec!["shop.example.com".to_string()], "2")
    );
    let gd2 = grpc_delta.recv().await;
    assert_eq!(delta_names(&gd2), ["shop.example.com"]);
    envoy.sync("2").await;
    envoy_delta.sync("2").await;

    // A wildcard that also names the API listener gets it too.
    let mut both = h.delta("both").await;
    both.subscribe(LDS, &["*", "shop.example.com"], &[]).await;
    let b = both.recv().await;
    assert_eq!(delta_names(&b), ["http", "https", "shop.example.com"]);
    let mut both_sotw = h.sotw("both-sotw").await;
    both_sotw.subscribe(LDS, &["*", "shop.example.com"]).await;
    let b = both_sotw.recv().await;
    assert_eq!(names(&b), ["http", "https", "shop.example.com"]);

    // Removing it: delta tells the client that named it; the wildcard
    // delta client never had it, so it hears nothing.
    h.publish(world.snapshot(3));
    let gd3 = grpc_delta.recv().await;
    assert_eq!(gd3.removed_resources, ["shop.example.com"]);
    let g3 = grpc.recv().await;
    assert!(names(&g3).is_empty());
    envoy.sync("3").await;
    envoy_delta.sync("3").await;
}
