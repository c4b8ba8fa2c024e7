//! Plugin hot swaps under live streams: applied, rejected, a JavaScript
//! policy swapped in.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_hot_swap_under_live_streams() {
    const STREAMS: usize = 24;
    let f = Fixture::start(&[
        ("00-backends.yaml", backends()),
        ("10-shop.yaml", yaml(&[shop()])),
    ])
    .await;
    let addr = f.server.xds_addr();

    // Half SotW, half delta, each on its own connection, all synced.
    let mut sotw = Vec::new();
    let mut delta = Vec::new();
    for i in 0..STREAMS / 2 {
        let mut s = Sotw::open_envoy(addr, &format!("sotw-{i}")).await;
        s.until("the shop", has_shop).await;
        sotw.push(s);
        let mut d = Delta::open_envoy(addr, &format!("delta-{i}")).await;
        d.until("the shop", has_shop).await;
        delta.push(d);
    }
    f.wait("every stream to open", |s| s.streams().len() == STREAMS)
        .await;
    let before = f.version();

    // The faults plugin sends everything of an Ingress to its first
    // backend: the api cluster goes away.
    let swapped_at = Instant::now();
    f.install_plugin(&std::fs::read(plugin_path("isobar-plugin-faults")).unwrap());
    f.wait("the swap", |s| {
        s.plugin().is_some_and(|p| p.name == "faults")
    })
    .await;
    let after = f.version();
    assert!(
        after > before,
        "the version must go on: {before} -> {after}"
    );
    // SotW and delta resend only the types that changed: clusters and
    // routes here (the listener is the same). The api endpoints go away:
    // delta says so (`removed_resources`); SotW has no removals for
    // endpoints, whose cluster's removal is what tells Envoy.
    let sotw_faults =
        |h: &Held| h.min_version(&[CDS, RDS]) >= after && names(&h.snapshot, CDS) == [WEB];
    let delta_faults = |h: &Held| {
        h.min_version(&[CDS, EDS, RDS]) >= after
            && names(&h.snapshot, CDS) == [WEB]
            && names(&h.snapshot, EDS) == [WEB]
    };
    let all = futures::future::join(
        futures::future::join_all(
            sotw.iter_mut()
                .map(|s| s.until("the faults plugin's output", sotw_faults)),
        ),
        futures::future::join_all(
            delta
                .iter_mut()
                .map(|d| d.until("the faults plugin's output", delta_faults)),
        ),
    );
    all.await;
    let elapsed = swapped_at.elapsed();
    eprintln!(
        "plugin swap: file renamed -> all {STREAMS} streams on the new snapshot in {elapsed:?}"
    );
    for s in &sotw {
        assert_eq!(
            routes(&s.held.snapshot, "ingress_http", "shop.example.com"),
            pairs(&[("prefix=/", "cluster=default/web/80")])
        );
    }
    // No stream was dropped.
    assert_eq!(f.server.active_streams(), STREAMS);
    assert_eq!(f.server.report().streams().len(), STREAMS);

    // And back, still on the same streams.
    f.install_plugin(&std::fs::read(plugin_path("isobar-plugin-ingress")).unwrap());
    f.wait("the swap back", |s| {
        s.plugin().is_some_and(|p| p.name == "ingress")
    })
    .await;
    let back = f.version();
    assert!(back > after);
    // (A SotW client already holds the api endpoints, unchanged: only the
    // cluster and routes come again.)
    let sotw_again = |h: &Held| h.min_version(&[CDS, RDS]) >= back && has_shop(h);
    let delta_again = |h: &Held| h.min_version(&[CDS, EDS, RDS]) >= back && has_shop(h);
    futures::future::join_all(
        sotw.iter_mut()
            .map(|s| s.until("the ingress plugin's output", sotw_again)),
    )
    .await;
    futures::future::join_all(
        delta
            .iter_mut()
            .map(|d| d.until("the ingress plugin's output", delta_again)),
    )
    .await;
    assert_eq!(f.server.active_streams(), STREAMS);
    let history = f.get_json("/debug/plugins").await["history"].clone();
    let results: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["loaded", "loaded", "loaded"]);
}

/// The shop's routes as a client holds them (none before they arrive).
pub(crate) fn shop_routes(h: &Held) -> Vec<(String, String)> {
    if h.domains("ingress_http").contains("shop.example.com") {
        routes(&h.snapshot, "ingress_http", "shop.example.com")
    } else {
        Vec::new()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_swaps_keep_the_old_plugin_and_snapshot() {
    let faulty = ingress(
        "default",
        "faulty",
        &[("faulty.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    let mut faulty = faulty;
    faulty["metadata"]["annotations"] = json!({"isobar.dev/fault": "error"});
    let f = Fixture::start(&[
        ("00-backends.yaml", backends()),
        ("10-shop.yaml", yaml(&[shop(), faulty])),
    ])
    .await;
    let snapshot = f.server.report().snapshot();
    let digest = f.server.report().plugin().unwrap().digest;

    let rejected = |reason: &'static str| {
        move |s: &isobar::report::Report| {
            s.plugin()
                .and_then(|p| p.last_error)
                .is_some_and(|e| e.reason == reason)
        }
    };
    // A component built against another contract.
    f.install_plugin(&std::fs::read(plugin_path("isobar-plugin-old-contract")).unwrap());
    f.wait("the contract mismatch", rejected("ContractMismatch"))
        .await;
    // Not a component at all.
    f.install_plugin(b"\0asm garbage, not a component");
    f.wait("the invalid plugin", rejected("PluginInvalid"))
        .await;
    // A good component whose calls fail on this store: the faults plugin
    // returns an error for the annotated Ingress (the Ingress plugin
    // ignores the annotation).
    f.install_plugin(&std::fs::read(plugin_path("isobar-plugin-faults")).unwrap());
    f.wait("the failed translation", rejected("DryRunFailed"))
        .await;

    let status = f.server.report();
    let plugin = status.plugin().unwrap();
    assert_eq!(
        (plugin.name.as_str(), plugin.digest.as_str()),
        ("ingress", digest.as_str())
    );
    assert!(
        Arc::ptr_eq(&status.snapshot(), &snapshot),
        "the old snapshot keeps serving"
    );

    let doc = f.get_json("/debug/plugins").await;
    let p = &doc["plugins"][0];
    assert_eq!(p["name"], "ingress");
    assert_eq!(p["digest"], json!(digest));
    assert!(p["source"].as_str().unwrap().ends_with("plugin.wasm"));
    assert!(p["loaded_at"].as_str().unwrap().ends_with('Z'));
    let last = &p["last_error"];
    assert_eq!(last["reason"], "DryRunFailed");
    assert!(
        last["message"].as_str().unwrap().contains("faulty"),
        "{last}"
    );
    let history: Vec<String> = doc["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["message"].as_str().unwrap().to_string())
        .collect();
    assert!(history[1].starts_with("ContractMismatch: "), "{history:?}");
    assert!(history[1].contains("0.0.9"), "{history:?}");
    assert!(history[2].starts_with("PluginInvalid: "), "{history:?}");
    let (_, metrics) = f.get("/metrics").await;
    assert!(
        metrics.contains(r#"isobar_plugin_swaps_total{result="rejected"} 3"#),
        "{metrics}"
    );
}
