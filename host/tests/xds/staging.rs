//! Make-before-break across round trips: routes that name a new cluster
//! wait until the client has that cluster's endpoints, and a cluster leaves
//! only after the routes that named it have been answered.

use super::*;

/// A client subscribed as Envoy is (clusters by wildcard, endpoints by the
/// clusters' names, routes by name), every response ACKed.
async fn sotw_envoy(h: &Harness) -> (SotwStream, SotwResponse) {
    let mut c = h.sotw("envoy").await;
    let mut eds = None;
    let subscriptions: [(&str, &[&str]); 3] = [
        (CDS, &[]),
        (EDS, &["cart", "shop"]),
        (RDS, &["r-http", "r-https"]),
    ];
    for (t, names) in subscriptions {
        c.subscribe(t, names).await;
        let r = c.recv().await;
        c.ack(&r, names).await;
        if t == EDS {
            eds = Some(r);
        }
    }
    (c, eds.unwrap())
}

#[tokio::test]
async fn sotw_routes_to_a_new_cluster_wait_until_its_endpoints_are_acked() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let (mut c, eds1) = sotw_envoy(&h).await;

    world
        .set(CDS, "canary", "v1")
        .set(EDS, "canary", "v1")
        .set(RDS, "r-http", "v2");
    h.publish(world.snapshot(2));
    let cds = c.recv().await;
    assert_eq!(
        (cds.type_url.as_str(), cds.version_info.as_str()),
        (CDS, "2")
    );
    assert_eq!(names(&cds), ["canary", "cart", "shop"]);
    c.ack(&cds, &[]).await;
    // The cluster is warming (its endpoints not asked for): no routes yet.
    c.sync("2").await;

    // Envoy asks for the new cluster's endpoints, gets and ACKs them.
    let all = ["canary", "cart", "shop"];
    c.request(EDS, &all, &eds1.version_info, &eds1.nonce).await;
    let eds = c.recv().await;
    assert_eq!(eds.type_url, EDS);
    assert!(names(&eds).contains(&"canary".to_string()));
    c.sync("2").await;
    c.ack(&eds, &all).await;
    let rds = c.recv().await;
    assert_eq!(
        (rds.type_url.as_str(), rds.version_info.as_str()),
        (RDS, "2")
    );
    assert_eq!(names(&rds), ["r-http"]);
}

#[tokio::test]
async fn sotw_a_removed_cluster_goes_after_the_routes_that_named_it() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let (mut c, _) = sotw_envoy(&h).await;

    world
        .remove(CDS, "cart")
        .remove(EDS, "cart")
        .set(RDS, "r-http", "v2");
    h.publish(world.snapshot(2));
    let rds = c.recv().await;
    assert_eq!(
        (rds.type_url.as_str(), rds.version_info.as_str()),
        (RDS, "2")
    );
    // Clusters stay as they were until the routes are answered.
    c.sync("2").await;
    c.ack(&rds, &["r-http", "r-https"]).await;
    let cds = c.recv().await;
    assert_eq!(
        (cds.type_url.as_str(), cds.version_info.as_str()),
        (CDS, "2")
    );
    assert_eq!(names(&cds), ["shop"]);
}

#[tokio::test]
async fn sotw_a_client_that_never_answers_gets_the_routes_at_the_deadline() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let (mut c, _) = sotw_envoy(&h).await;
    world
        .set(CDS, "canary", "v1")
        .set(EDS, "canary", "v1")
        .set(RDS, "r-http", "v2");
    h.publish(world.snapshot(2));
    let cds = c.recv().await;
    assert_eq!(cds.type_url, CDS);
    // Neither ACKed nor the endpoints asked for: the hold is bounded.
    let rds = timeout(WAIT, c.recv())
        .await
        .expect("routes within the deadline");
    assert_eq!(
        (rds.type_url.as_str(), rds.version_info.as_str()),
        (RDS, "2")
    );
}

#[tokio::test]
async fn delta_routes_to_a_new_cluster_wait_until_its_endpoints_are_acked() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut d = h.delta("envoy").await;
    let subscriptions: [(&str, &[&str]); 3] =
        [(CDS, &["*"]), (EDS, &["cart", "shop"]), (RDS, &["*"])];
    for (t, names) in subscriptions {
        d.subscribe(t, names, &[]).await;
        let r = d.recv().await;
        d.ack(&r).await;
    }

    world
        .set(CDS, "canary", "v1")
        .set(EDS, "canary", "v1")
        .set(RDS, "r-http", "v2");
    h.publish(world.snapshot(2));
    let cds = d.recv().await;
    assert_eq!(
        (cds.type_url.as_str(), delta_names(&cds)),
        (CDS, vec!["canary".to_string()])
    );
    d.ack(&cds).await;
    d.sync("2").await;
    d.subscribe(EDS, &["canary"], &[]).await;
    let eds = d.recv().await;
    assert_eq!(
        (eds.type_url.as_str(), delta_names(&eds)),
        (EDS, vec!["canary".to_string()])
    );
    d.sync("2").await;
    d.ack(&eds).await;
    let rds = d.recv().await;
    assert_eq!(
        (rds.type_url.as_str(), delta_names(&rds)),
        (RDS, vec!["r-http".to_string()])
    );

    // And back: the routes move first, then the cluster and its endpoints go.
    world
        .remove(CDS, "canary")
        .remove(EDS, "canary")
        .set(RDS, "r-http", "v3");
    h.publish(world.snapshot(3));
    d.ack(&rds).await;
    let rds = d.recv().await;
    assert_eq!(
        (rds.type_url.as_str(), rds.system_version_info.as_str()),
        (RDS, "3")
    );
    d.sync("3").await;
    d.ack(&rds).await;
    let cds = d.recv().await;
    assert_eq!(
        (cds.type_url.as_str(), cds.removed_resources.clone()),
        (CDS, vec!["canary".to_string()])
    );
    let eds = d.recv().await;
    assert_eq!(
        (eds.type_url.as_str(), eds.removed_resources.clone()),
        (EDS, vec!["canary".to_string()])
    );
}
