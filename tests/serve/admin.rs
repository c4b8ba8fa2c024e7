//! The admin endpoint, and NACKs turned into diagnostics.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let gate = Gate::closed();
    let f = Fixture::start_with(
        &[
            ("00-backends.yaml", backends()),
            ("10-shop.yaml", yaml(&[shop()])),
        ],
        Some(gate.clone()),
    )
    .await;

    // Before the first snapshot: alive, not ready, nothing to dump.
    assert_eq!(f.get("/healthz").await.0, 200);
    let (code, body) = f.get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(f.get_json("/debug/config_dump").await["version"], 0);

    gate.open();
    assert!(f.server.ready(WAIT).await);
    let (code, body) = f.get("/readyz").await;
    assert_eq!(code, 200, "{body}");

    let dump = f.get_json("/debug/config_dump").await;
    assert_eq!(dump["version"], json!(f.version()));
    let listeners: Vec<&str> = dump["resources"]["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert!(listeners.contains(&"ingress_http"), "{listeners:?}");
    let clusters: Vec<&str> = dump["resources"]["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["name"].as_str().unwrap())
        .collect();
    assert_eq!(clusters, [API, WEB]);

    let plugins = f.get_json("/debug/plugins").await;
    let p = &plugins["plugins"][0];
    assert_eq!(p["name"], "ingress");
    assert!(p["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(p["version"].is_string() && p["loaded_at"].is_string() && p["source"].is_string());
    assert!(p["last_error"].is_null());

    // A client that ACKs: the push and ACK stages get observations.
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-metrics").await;
    envoy.until("the shop", has_shop).await;
    f.wait("the ACKs", |s| {
        s.streams().iter().any(|st| st.acked.len() == 4)
    })
    .await;
    let (code, metrics) = f.get("/metrics").await;
    assert_eq!(code, 200);
    for needle in [
        "isobar_change_to_snapshot_seconds_bucket{",
        "isobar_snapshot_to_push_seconds_count{protocol=\"sotw\",type=\"cluster\"}",
        "isobar_snapshot_to_ack_seconds_count{protocol=\"sotw\",type=\"listener\"}",
        "isobar_plugin_call_duration_seconds_count{plugin=\"ingress\"} 1",
        "isobar_plugin_calls_total{plugin=\"ingress\"} 1",
        "isobar_xds_streams{node=\"envoy-metrics\",protocol=\"sotw\"} 1",
        "isobar_ready 1",
        "# EOF",
    ] {
        assert!(
            metrics.contains(needle),
            "/metrics lacks {needle}:\n{metrics}"
        );
    }
    let streams = f.get_json("/debug/streams").await;
    assert_eq!(streams["streams"][0]["node"], "envoy-metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nack_becomes_a_diagnostic_on_the_ingress() {
    let f = Fixture::start(&[
        ("00-backends.yaml", backends()),
        ("10-shop.yaml", yaml(&[shop()])),
    ])
    .await;
    let mut envoy = Sotw::open(f.server.xds_addr(), "envoy-picky").await;
    envoy.subscribe(RDS, &["ingress_http"]).await;
    let rds = envoy.recv().await;
    assert_eq!(rds.resources.len(), 1);
    envoy
        .send(DiscoveryRequest {
            type_url: RDS.into(),
            resource_names: vec!["ingress_http".into()],
            version_info: String::new(),
            response_nonce: rds.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "route config ingress_http: unsupported field".into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    f.wait("the NACK diagnostic", |s| !s.nack_diagnostics().is_empty())
        .await;
    let d = f.server.report().nack_diagnostics();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(
        (
            d[0].object.kind.as_str(),
            d[0].object.namespace.as_str(),
            d[0].object.name.as_str()
        ),
        ("Ingress", "default", "shop")
    );
    assert_eq!(d[0].reason, "RejectedByDataPlane");
    assert!(
        d[0].message.contains("envoy-picky") && d[0].message.contains("unsupported field"),
        "{}",
        d[0].message
    );

    let doc = f.get_json("/debug/diagnostics").await;
    assert_eq!(doc["nack_diagnostics"][0]["object"]["name"], "shop");
    assert_eq!(doc["nacks"][0]["resources"], json!(["ingress_http"]));
    let (_, metrics) = f.get("/metrics").await;
    assert!(
        metrics.contains(r#"isobar_xds_nacks_total{protocol="sotw",type="route"} 1"#),
        "{metrics}"
    );

    // The client recovers: it ACKs the next version, the diagnostic goes.
    let blog = ingress(
        "default",
        "blog",
        &[("blog.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    f.write("20-blog.yaml", &yaml(&[blog]));
    envoy
        .until("the blog", |h| {
            h.domains("ingress_http").contains("blog.example.com")
        })
        .await;
    f.wait("the NACK to clear", |s| s.nack_diagnostics().is_empty())
        .await;
}

/// Issue 13 item 2: `/healthz` stayed 200 while the controller was stuck.
/// A round that runs past its stall limit now makes it 503 until the round
/// ends; then it is 200 again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_past_its_stall_limit_fails_healthz_until_it_ends() {
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("00-backends.yaml"), backends()).unwrap();
    let mut config = Config::new(manifests.path(), plugin_path("isobar-plugin-faults"));
    config.xds_listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.cache_dir = Some(target_dir().join("isobar-test-cache"));
    config.round_stall = Some(Duration::from_millis(200));
    let server = Server::start(config).await.expect("serve starts");
    assert!(server.ready(WAIT).await);
    let admin = server.admin_addr();
    assert_eq!(http_get(admin, "/healthz").await.0, 200);

    // Forty roots that loop until their 100 ms deadline: one round of
    // seconds on two cores.
    let looping: Vec<Value> = (0..40)
        .map(|i| {
            let mut ing = ingress(
                "default",
                &format!("loop-{i}"),
                &[("a.example.com", &[("/", "Prefix", "web", json!(80))])],
            );
            ing["metadata"]["annotations"] = json!({"isobar.dev/fault": "loop"});
            ing
        })
        .collect();
    atomic_write(
        &manifests.path().join("20-loop.yaml"),
        yaml(&looping).as_bytes(),
    );
    let give_up = Instant::now() + WAIT;
    loop {
        let (code, body) = http_get(admin, "/healthz").await;
        if code == 503 {
            assert!(body.contains("controller round"), "{body}");
            break;
        }
        assert!(
            Instant::now() < give_up,
            "/healthz never reported the round"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        server
            .report()
            .wait_until(WAIT, |s| s
                .diagnostics()
                .iter()
                .filter(|d| d.reason == "PluginTimeout")
                .count()
                == 40)
            .await,
        "the round never finished"
    );
    // Its last step (publishing) done, the round ends: healthy again.
    let give_up = Instant::now() + WAIT;
    while http_get(admin, "/healthz").await.0 != 200 {
        assert!(Instant::now() < give_up, "/healthz never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
