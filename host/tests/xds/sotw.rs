//! State of the world: sync, updates, subscriptions, NACKs, ordering,
//! many streams, the server's lifecycle.

use super::*;

// ---- state of the world ---------------------------------------------------

#[tokio::test]
async fn sotw_initial_sync_and_ack() {
    let mut h = Harness::start(World::base().snapshot(1)).await;
    let mut c = h.sotw("node-a").await;

    c.subscribe(CDS, &[]).await;
    let cds = c.recv().await;
    assert_eq!(
        (cds.type_url.as_str(), cds.version_info.as_str()),
        (CDS, "1")
    );
    assert_eq!(names(&cds), ["cart", "shop"]);

    c.subscribe(LDS, &[]).await;
    let lds = c.recv().await;
    assert_eq!(names(&lds), ["http", "https"]);
    assert_ne!(lds.nonce, cds.nonce);
    let listener = Listener::decode(&lds.resources[0].value[..]).unwrap();
    assert_eq!(
        (listener.name.as_str(), listener.stat_prefix.as_str()),
        ("http", "v1")
    );

    let opened = h
        .event(|e| matches!(e, XdsEvent::StreamOpened { .. }))
        .await;
    assert!(
        matches!(opened, XdsEvent::StreamOpened { node, protocol: Protocol::Sotw, .. } if node == "node-a")
    );
    c.ack(&cds, &[]).await;
    c.ack(&lds, &[]).await;
    let XdsEvent::Ack(ack) = h.event(|e| is_ack(e, CDS, "1")).await else {
        unreachable!()
    };
    assert_eq!(
        (ack.node.as_str(), ack.nonce.as_str()),
        ("node-a", cds.nonce.as_str())
    );
    h.event(|e| is_ack(e, LDS, "1")).await;
}

#[tokio::test]
async fn sotw_update_pushes_changed_types_only() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut c = h.sotw("node-a").await;
    c.subscribe(CDS, &[]).await;
    let cds = c.recv().await;
    c.subscribe(LDS, &[]).await;
    let lds = c.recv().await;
    c.ack(&cds, &[]).await;
    c.ack(&lds, &[]).await;

    h.publish(world.set(CDS, "shop", "v2").snapshot(2));
    let cds2 = c.recv().await;
    assert_eq!(
        (cds2.type_url.as_str(), cds2.version_info.as_str()),
        (CDS, "2")
    );
    assert_eq!(
        names(&cds2),
        ["cart", "shop"],
        "SotW clusters are sent whole"
    );
    assert_eq!(
        Cluster::decode(&cds2.resources[1].value[..])
            .unwrap()
            .alt_stat_name,
        "v2"
    );
    c.ack(&cds2, &[]).await;
    c.sync("2").await; // listeners did not change: not resent
}

#[tokio::test]
async fn sotw_listener_removed_when_left_out() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut c = h.sotw("node-a").await;
    c.subscribe(LDS, &[]).await;
    let lds = c.recv().await;
    assert_eq!(names(&lds), ["http", "https"]);
    c.ack(&lds, &[]).await;

    h.publish(world.remove(LDS, "https").snapshot(2));
    let lds2 = c.recv().await;
    assert_eq!(
        (lds2.type_url.as_str(), lds2.version_info.as_str()),
        (LDS, "2")
    );
    assert_eq!(names(&lds2), ["http"]);

    c.ack(&lds2, &[]).await;
    h.publish(world.remove(LDS, "http").snapshot(3));
    let lds3 = c.recv().await;
    assert!(
        lds3.resources.is_empty(),
        "an empty LDS response deletes every listener"
    );
}

#[tokio::test]
async fn sotw_named_subscriptions() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut c = h.sotw("node-a").await;

    c.subscribe(RDS, &["r-http"]).await;
    let rds = c.recv().await;
    assert_eq!(names(&rds), ["r-http"]);
    c.subscribe(EDS, &["shop", "missing"]).await;
    let eds = c.recv().await;
    assert_eq!(names(&eds), ["shop"]);
    c.ack(&rds, &["r-http"]).await;
    c.ack(&eds, &["shop", "missing"]).await;

    // A change to a resource nobody asked for is not pushed.
    h.publish(
        world
            .set(RDS, "r-https", "v2")
            .set(EDS, "cart", "v2")
            .snapshot(2),
    );
    c.sync("2").await;

    // Widening the subscription sends the newly named resource.
    c.request(RDS, &["r-http", "r-https"], &rds.version_info, &rds.nonce)
        .await;
    let rds2 = c.recv().await;
    assert_eq!(
        (rds2.version_info.as_str(), names(&rds2)),
        ("2", vec!["r-http".to_string(), "r-https".to_string()])
    );
    c.ack(&rds2, &["r-http", "r-https"]).await;

    // A subscribed resource coming into existence is pushed, alone:
    // endpoints may be updated partially.
    h.publish(world.set(EDS, "missing", "v1").snapshot(3));
    let eds2 = c.recv().await;
    assert_eq!(
        (eds2.type_url.as_str(), eds2.version_info.as_str()),
        (EDS, "3")
    );
    assert_eq!(names(&eds2), ["missing"]);
}

/// Routes, endpoints and secrets go out as partial updates (only what
/// changed); listeners and clusters always as the whole subscribed set.
#[tokio::test]
async fn sotw_partial_updates_except_listeners_and_clusters() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut c = h.sotw("node-a").await;
    let mut last = BTreeMap::new();
    for (t, subscribe) in [
        (CDS, &[][..]),
        (EDS, &["shop", "cart"][..]),
        (SDS, &["cert"][..]),
        (LDS, &[][..]),
        (RDS, &["r-http", "r-https"][..]),
    ] {
        c.subscribe(t, subscribe).await;
        let r = c.recv().await;
        c.ack(&r, subscribe).await;
        last.insert(t, subscribe);
    }
    c.sync("1").await;

    h.publish(
        world
            .set(EDS, "cart", "v2")
            .set(RDS, "r-https", "v2")
            .set(CDS, "shop", "v2")
            .set(LDS, "http", "v2")
            .set(SDS, "cert", "v2")
            .snapshot(2),
    );
    let mut got = BTreeMap::new();
    for _ in 0..5 {
        let r = c.recv().await;
        assert_eq!(r.version_info, "2");
        c.ack(&r, last[r.type_url.as_str()]).await;
        got.insert(r.type_url.clone(), names(&r));
    }
    let expect: BTreeMap<String, Vec<String>> = [
        (CDS, vec!["cart", "shop"]),
        (EDS, vec!["cart"]),
        (SDS, vec!["cert"]),
        (LDS, vec!["http", "https"]),
        (RDS, vec!["r-https"]),
    ]
    .into_iter()
    .map(|(t, n)| (t.to_string(), n.into_iter().map(String::from).collect()))
    .collect();
    assert_eq!(got, expect);
    c.sync("2").await;

    // A removed endpoint assignment is not "sent" (SotW has no removals
    // outside Listener and Cluster); removing a cluster resends the rest.
    h.publish(world.remove(EDS, "cart").remove(CDS, "cart").snapshot(3));
    let cds = c.recv().await;
    assert_eq!(
        (cds.type_url.as_str(), names(&cds)),
        (CDS, vec!["shop".to_string()])
    );
    c.ack(&cds, &[]).await;
    c.sync("3").await;
}

/// A SotW stream lets go of a snapshot once a newer one changed nothing its
/// subscription sees: it diffs from the newest it is up to date with (and
/// does not keep old snapshots, or a swapped-out pipeline's, alive).
#[tokio::test]
async fn sotw_streams_move_on_from_snapshots_they_are_up_to_date_with() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut c = h.sotw("node-a").await;
    for (t, names) in [(CDS, &[][..]), (EDS, &["shop"][..])] {
        c.subscribe(t, names).await;
        let r = c.recv().await;
        c.ack(&r, names).await;
    }
    let two = Arc::new(world.set(RDS, "r-http", "v2").snapshot(2));
    h.publish_arc(two.clone());
    c.sync("2").await;
    // Nothing the stream sees changed in 3 either: it holds neither 2 nor 1.
    h.publish(world.set(EDS, "cart", "v2").snapshot(3));
    c.sync("3").await;
    h.publish(world.set(EDS, "cart", "v3").snapshot(4));
    c.sync("4").await;
    assert_eq!(
        Arc::strong_count(&two),
        1,
        "snapshot 2 is still held by the stream"
    );
    // And what it does see still arrives.
    h.publish(world.set(EDS, "shop", "v2").snapshot(5));
    let r = c.recv().await;
    assert_eq!(
        (r.type_url.as_str(), names(&r)),
        (EDS, vec!["shop".to_string()])
    );
}

/// Snapshots published back to back: whether a stream sees each or only the
/// last (then it is brought up to date with everything since the one it saw,
/// which `stream::tests::changes_since_a_snapshot_missed_in_between` pins
/// down), every change reaches it.
#[tokio::test]
async fn lagging_streams_get_every_change_since_their_last_snapshot() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut s = h.sotw("sotw").await;
    s.subscribe(EDS, &["shop", "cart"]).await;
    let r = s.recv().await;
    s.ack(&r, &["shop", "cart"]).await;
    let mut d = h.delta("delta").await;
    d.subscribe(EDS, &["shop", "cart"], &[]).await;
    let r = d.recv().await;
    d.ack(&r).await;
    s.sync("1").await;
    d.sync("1").await;

    // Published back to back: streams may see 2 and 3, or only 3.
    h.publish(world.set(EDS, "shop", "v2").snapshot(2));
    h.publish(world.set(EDS, "cart", "v2").snapshot(3));
    let mut sotw_names = BTreeSet::new();
    while !sotw_names.contains("cart") || !sotw_names.contains("shop") {
        let r = s.recv().await;
        assert_eq!(r.type_url, EDS);
        s.ack(&r, &["shop", "cart"]).await;
        sotw_names.extend(names(&r));
    }
    let mut delta_names = BTreeSet::new();
    while !delta_names.contains("cart") || !delta_names.contains("shop") {
        let r = d.recv().await;
        assert_eq!(r.type_url, EDS);
        d.ack(&r).await;
        for res in &r.resources {
            assert_eq!(res.version, world.version_of(EDS, &res.name));
            delta_names.insert(res.name.clone());
        }
    }
    s.sync("3").await;
    d.sync("3").await;
}

#[tokio::test]
async fn sotw_nack_then_recovery() {
    let mut world = World::base();
    let mut h = Harness::start(world.snapshot(1)).await;
    let mut c = h.sotw("node-a").await;
    c.subscribe(LDS, &[]).await;
    let lds = c.recv().await;
    c.ack(&lds, &[]).await;
    h.event(|e| is_ack(e, LDS, "1")).await;

    h.publish(world.set(LDS, "https", "bad").snapshot(2));
    let bad = c.recv().await;
    assert_eq!(bad.version_info, "2");
    c.nack(
        &bad,
        &[],
        "1",
        "Error adding/updating listener(s) https: invalid filter chain",
    )
    .await;
    let XdsEvent::Nack(nack) = h.event(|e| matches!(e, XdsEvent::Nack(_))).await else {
        unreachable!()
    };
    assert_eq!(nack.node, "node-a");
    assert_eq!(nack.type_url, LDS);
    assert_eq!(
        (nack.version.as_str(), nack.client_version.as_str()),
        ("2", "1")
    );
    assert_eq!(nack.nonce, bad.nonce);
    assert_eq!(nack.code, 13);
    assert_eq!(nack.resource_names, ["https"]);
    assert_eq!(nack.sources, [source("https-src")]);
    assert!(nack.message.contains("invalid filter chain"));

    // Not resent: neither right away nor on a snapshot that leaves listeners alone.
    c.sync("2").await;
    h.publish(world.set(CDS, "shop", "v3").snapshot(3));
    c.sync("3").await;

    // The next snapshot that changes listeners is pushed, and ACKed.
    h.publish(world.set(LDS, "https", "fixed").snapshot(4));
    let good = c.recv().await;
    assert_eq!(
        (good.type_url.as_str(), good.version_info.as_str()),
        (LDS, "4")
    );
    c.ack(&good, &[]).await;
    h.event(|e| is_ack(e, LDS, "4")).await;
}

#[tokio::test]
async fn sotw_nack_without_named_resource_reports_all() {
    let world = World::base();
    let mut h = Harness::start(world.snapshot(1)).await;
    let mut c = h.sotw("node-a").await;
    c.subscribe(RDS, &["r-http", "r-https"]).await;
    let rds = c.recv().await;
    c.nack(&rds, &["r-http", "r-https"], "", "something went wrong")
        .await;
    let XdsEvent::Nack(nack) = h.event(|e| matches!(e, XdsEvent::Nack(_))).await else {
        unreachable!()
    };
    assert_eq!(nack.resource_names, ["r-http", "r-https"]);
    assert_eq!(nack.sources, [source("r-http-src"), source("r-https-src")]);
}

#[tokio::test]
async fn sotw_stale_nonce_ignored() {
    let mut world = World::base();
    let mut h = Harness::start(world.snapshot(1)).await;
    let mut c = h.sotw("node-a").await;
    c.subscribe(RDS, &["r-http"]).await;
    let first = c.recv().await;

    // A new version goes out before the client answered the first one.
    h.publish(world.set(RDS, "r-http", "v2").snapshot(2));
    let second = c.recv().await;
    assert_eq!(second.version_info, "2");

    // Requests carrying the superseded nonce are ignored: no ACK, no NACK,
    // and no response to the wider subscription they ask for.
    c.ack(&first, &["r-http"]).await;
    c.request(RDS, &["r-http", "r-https"], "1", &first.nonce)
        .await;
    c.nack(&first, &["r-http"], "", "late complaint").await;
    c.sync("2").await;
    let stale: Vec<_> = h
        .drain()
        .into_iter()
        .filter(|e| matches!(e, XdsEvent::Ack(_) | XdsEvent::Nack(_)))
        .collect();
    assert!(stale.is_empty(), "stale requests were acted on: {stale:?}");

    // The current nonce counts.
    c.request(RDS, &["r-http", "r-https"], "2", &second.nonce)
        .await;
    let third = c.recv().await;
    assert_eq!(names(&third), ["r-http", "r-https"]);
    h.event(|e| matches!(e, XdsEvent::Ack(a) if a.nonce == second.nonce))
        .await;
}

#[tokio::test]
async fn sotw_make_before_break_order() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut c = h.sotw("node-a").await;
    let subscriptions: [(&str, &[&str]); 5] = [
        (LDS, &[]),
        (RDS, &["r-http", "r-https"]),
        (SDS, &["cert"]),
        (CDS, &[]),
        (EDS, &["shop", "cart"]),
    ];
    for (t, names) in subscriptions {
        c.subscribe(t, names).await;
        let r = c.recv().await;
        c.ack(&r, names).await;
    }

    for (t, n) in [
        (LDS, "http"),
        (RDS, "r-http"),
        (SDS, "cert"),
        (CDS, "shop"),
        (EDS, "shop"),
    ] {
        world.set(t, n, "v2");
    }
    h.publish(world.snapshot(2));
    let mut order = Vec::new();
    for _ in 0..5 {
        let r = c.recv().await;
        assert_eq!(r.version_info, "2");
        order.push(r.type_url);
    }
    assert_eq!(order, [CDS, EDS, SDS, LDS, RDS]);
}

#[tokio::test]
async fn sotw_waits_for_first_snapshot() {
    let h = Harness::start(Snapshot::default()).await;
    let mut c = h.sotw("node-a").await;
    c.subscribe(CDS, &[]).await;
    c.subscribe(LDS, &[]).await;
    h.publish(World::base().snapshot(1));
    let first = c.recv().await;
    assert_eq!(
        (first.type_url.as_str(), first.version_info.as_str()),
        (CDS, "1")
    );
    let second = c.recv().await;
    assert_eq!(
        (second.type_url.as_str(), second.version_info.as_str()),
        (LDS, "1")
    );
}

#[tokio::test]
async fn sotw_hundred_concurrent_streams_reach_new_version() {
    let mut world = World::base();
    let mut h = Harness::start(world.snapshot(1)).await;
    let clients = join_all((0..100).map(|i| {
        let h = &h;
        async move {
            let mut c = h.sotw(&format!("node-{i}")).await;
            c.subscribe(CDS, &[]).await;
            let cds = c.recv().await;
            c.subscribe(LDS, &[]).await;
            let lds = c.recv().await;
            c.ack(&cds, &[]).await;
            c.ack(&lds, &[]).await;
            c
        }
    }))
    .await;
    assert_eq!(h.server.active_streams(), 100);

    h.publish(
        world
            .set(CDS, "cart", "v2")
            .set(LDS, "http", "v2")
            .snapshot(2),
    );
    // Keep the streams open until their ACKs are in.
    let _clients = join_all(clients.into_iter().map(|mut c| async move {
        let cds = c.recv().await;
        let lds = c.recv().await;
        assert_eq!(
            (cds.type_url.as_str(), cds.version_info.as_str()),
            (CDS, "2")
        );
        assert_eq!(
            (lds.type_url.as_str(), lds.version_info.as_str()),
            (LDS, "2")
        );
        c.ack(&cds, &[]).await;
        c.ack(&lds, &[]).await;
        c
    }))
    .await;

    let mut acked = std::collections::HashSet::new();
    while acked.len() < 100 {
        if let XdsEvent::Ack(a) = h.event(|e| is_ack(e, LDS, "2")).await {
            acked.insert(a.node);
        }
    }
    assert_eq!(h.server.dropped_events(), 0);
}

#[tokio::test]
async fn disconnect_is_a_normal_stream_close() {
    let mut h = Harness::start(World::base().snapshot(1)).await;
    let mut c = h.sotw("node-gone").await;
    c.subscribe(CDS, &[]).await;
    c.recv().await;
    drop(c);
    let closed = h
        .event(|e| matches!(e, XdsEvent::StreamClosed { .. }))
        .await;
    assert!(matches!(closed, XdsEvent::StreamClosed { node, .. } if node == "node-gone"));
    assert_eq!(h.server.active_streams(), 0);
}

#[tokio::test]
async fn shutdown_ends_streams_with_unavailable() {
    let mut h = Harness::start(World::base().snapshot(1)).await;
    let mut c = h.sotw("node-a").await;
    c.subscribe(CDS, &[]).await;
    c.recv().await;
    h.stop().await.expect("clean shutdown");
    let end = timeout(WAIT, c.rx.message())
        .await
        .expect("stream not ended");
    assert_eq!(
        end.expect_err("stream ends with a status").code(),
        tonic::Code::Unavailable
    );
}

#[tokio::test]
async fn tls_with_unusable_certificates_is_an_error() {
    let (_tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    let (server, _events) = XdsServer::new(rx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = TlsConfig {
        cert_pem: vec![],
        key_pem: vec![],
        client_ca_pem: None,
    };
    let err = serve(listener, server, std::future::pending(), Some(tls))
        .await
        .unwrap_err();
    assert!(matches!(err, ServeError::Transport(_)), "{err}");
}

/// The envoy-types generated service speaks the same protocol.
#[tokio::test]
async fn generated_service_trait_serves_too() {
    let world = World::base();
    let (_snapshots, rx) = watch::channel(Arc::new(world.snapshot(1)));
    let (server, _events) = XdsServer::new(rx);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AggregatedDiscoveryServiceServer::new(server))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let mut c = SotwStream::open(addr, "node-a").await;
    c.subscribe(CDS, &[]).await;
    assert_eq!(names(&c.recv().await), ["cart", "shop"]);

    let mut d = DeltaStream::open(addr, "node-b").await;
    d.subscribe(CDS, &[], &[]).await;
    assert_eq!(delta_names(&d.recv().await), ["cart", "shop"]);
}
