//! Incremental xDS: sync, updates, removals, resource versions, NACKs.

use super::*;

// ---- delta ----------------------------------------------------------------

#[tokio::test]
async fn delta_initial_sync_and_ack() {
    let world = World::base();
    let mut h = Harness::start(world.snapshot(1)).await;
    let mut d = h.delta("node-d").await;
    d.subscribe(CDS, &[], &[]).await;
    let r = d.recv().await;
    assert_eq!(
        (r.type_url.as_str(), r.system_version_info.as_str()),
        (CDS, "1")
    );
    assert_eq!(delta_names(&r), ["cart", "shop"]);
    assert!(r.removed_resources.is_empty());
    for x in &r.resources {
        assert_eq!(x.version, world.version_of(CDS, &x.name));
        let any = x.resource.as_ref().unwrap();
        assert_eq!(any.type_url, CDS);
        assert_eq!(Cluster::decode(&any.value[..]).unwrap().name, x.name);
    }
    d.ack(&r).await;
    let XdsEvent::Ack(ack) = h.event(|e| is_ack(e, CDS, "1")).await else {
        unreachable!()
    };
    assert_eq!(
        (ack.protocol, ack.node.as_str()),
        (Protocol::Delta, "node-d")
    );
}

#[tokio::test]
async fn delta_update_sends_only_changed_resources() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut d = h.delta("node-d").await;
    d.subscribe(CDS, &[], &[]).await;
    let r = d.recv().await;
    d.ack(&r).await;

    h.publish(world.set(CDS, "shop", "v2").snapshot(2));
    let r2 = d.recv().await;
    assert_eq!(r2.system_version_info, "2");
    assert_eq!(delta_names(&r2), ["shop"]);
    assert_eq!(r2.resources[0].version, world.version_of(CDS, "shop"));
    assert!(r2.removed_resources.is_empty());
    d.ack(&r2).await;

    // A snapshot that changes other types sends nothing for clusters.
    h.publish(world.set(LDS, "http", "v3").snapshot(3));
    d.sync("3").await;
}

#[tokio::test]
async fn delta_removal_and_unsubscribe() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut d = h.delta("node-d").await;
    d.subscribe(CDS, &[], &[]).await;
    let cds = d.recv().await;
    d.ack(&cds).await;
    d.subscribe(EDS, &["shop", "cart"], &[]).await;
    let eds = d.recv().await;
    assert_eq!(delta_names(&eds), ["cart", "shop"]);
    d.ack(&eds).await;

    // Deleted from the snapshot.
    h.publish(world.remove(CDS, "cart").snapshot(2));
    let r = d.recv().await;
    assert_eq!(
        (r.type_url.as_str(), r.system_version_info.as_str()),
        (CDS, "2")
    );
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["cart"]);
    d.ack(&r).await;

    // Unsubscribed.
    d.subscribe(EDS, &[], &["cart"]).await;
    let r = d.recv().await;
    assert_eq!(r.type_url, EDS);
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["cart"]);
    d.ack(&r).await;

    // No longer subscribed: its changes are not sent.
    h.publish(world.set(EDS, "cart", "v3").snapshot(3));
    d.sync("3").await;
}

#[tokio::test]
async fn delta_initial_resource_versions_are_honoured() {
    let mut world = World::base();
    world.set(CDS, "extra", "v1");
    let h = Harness::start(world.snapshot(5)).await;
    let mut d = h.delta("node-d").await;
    d.send(DeltaDiscoveryRequest {
        type_url: CDS.into(),
        initial_resource_versions: [
            ("shop".to_string(), world.version_of(CDS, "shop")),
            ("cart".to_string(), "outdated".to_string()),
            ("gone".to_string(), "whatever".to_string()),
        ]
        .into(),
        ..Default::default()
    })
    .await;
    let r = d.recv().await;
    assert_eq!(
        delta_names(&r),
        ["cart", "extra"],
        "shop is up to date and not resent"
    );
    assert_eq!(r.removed_resources, ["gone"]);

    // Explicitly re-subscribing to a resource the client has forces a resend.
    d.ack(&r).await;
    d.subscribe(EDS, &["shop"], &[]).await;
    let eds = d.recv().await;
    d.ack(&eds).await;
    d.subscribe(EDS, &["shop"], &[]).await;
    let again = d.recv().await;
    assert_eq!(delta_names(&again), ["shop"]);
}

#[tokio::test]
async fn delta_nack_then_recovery() {
    let mut world = World::base();
    let mut h = Harness::start(world.snapshot(1)).await;
    let mut d = h.delta("node-d").await;
    d.subscribe(LDS, &[], &[]).await;
    let r = d.recv().await;
    d.ack(&r).await;

    h.publish(world.set(LDS, "https", "bad").snapshot(2));
    let bad = d.recv().await;
    assert_eq!(delta_names(&bad), ["https"]);
    d.nack(&bad, "Error adding/updating listener(s) https: bad")
        .await;
    let XdsEvent::Nack(nack) = h.event(|e| matches!(e, XdsEvent::Nack(_))).await else {
        unreachable!()
    };
    assert_eq!(
        (nack.protocol, nack.version.as_str(), nack.nonce.as_str()),
        (Protocol::Delta, "2", bad.nonce.as_str())
    );
    assert_eq!(nack.resource_names, ["https"]);
    assert_eq!(nack.sources, [source("https-src")]);

    // Not resent in a loop; an unrelated listener change sends only that one.
    d.sync("2").await;
    h.publish(world.set(LDS, "http", "v3").snapshot(3));
    let other = d.recv().await;
    assert_eq!(delta_names(&other), ["http"]);
    d.ack(&other).await;

    // The fix goes out.
    h.publish(world.set(LDS, "https", "fixed").snapshot(4));
    let fixed = d.recv().await;
    assert_eq!(
        (delta_names(&fixed), fixed.system_version_info.as_str()),
        (vec!["https".to_string()], "4")
    );
    d.ack(&fixed).await;
    h.event(|e| is_ack(e, LDS, "4")).await;
}

#[tokio::test]
async fn delta_explicit_names_and_wildcard_star() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut d = h.delta("node-d").await;
    // Naming resources on the first request: no legacy wildcard.
    d.subscribe(CDS, &["shop"], &[]).await;
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["shop"]);
    d.ack(&r).await;
    // `*` adds the rest.
    d.subscribe(CDS, &["*"], &[]).await;
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["cart"]);
    d.ack(&r).await;
    // Dropping `*` removes what only the wildcard covered.
    d.subscribe(CDS, &[], &["*"]).await;
    let r = d.recv().await;
    assert_eq!(r.removed_resources, ["cart"]);
    d.ack(&r).await;
    h.publish(world.set(CDS, "cart", "v2").snapshot(2));
    d.sync("2").await;
}
