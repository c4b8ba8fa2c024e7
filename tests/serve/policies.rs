//! Several translators and a policy chain in one `isobar serve`: each file
//! and each configuration swapped alone, under a live stream, with a dry
//! run; refusals keep what serves.

use super::*;

struct Plugins {
    dir: tempfile::TempDir,
    server: Server,
    _manifests: tempfile::TempDir,
}

impl Plugins {
    async fn start(config_json: &str) -> Self {
        let manifests = tempfile::tempdir().unwrap();
        std::fs::write(manifests.path().join("00-backends.yaml"), backends()).unwrap();
        std::fs::write(manifests.path().join("10-shop.yaml"), yaml(&[shop()])).unwrap();
        let cm = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"static","namespace":"default",
            "annotations":{"isobar.dev/routes": r#"[{"host":"static.example.com","service":"web","port":80}]"#,
                "isobar.dev/test-status": r#"{"object":{"api_version":"v1","kind":"ConfigMap","namespace":"default","name":"static"},"type":"Accepted","reason":"RoutesValid"}"#}}});
        std::fs::write(manifests.path().join("20-static.yaml"), yaml(&[cm])).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let copy = |name: &str, crate_name: &str| {
            let p = dir.path().join(name);
            std::fs::copy(plugin_path(crate_name), &p).unwrap();
            p
        };
        let ingress = copy("ingress.wasm", "isobar-plugin-ingress");
        let statics = copy("static.wasm", "isobar-plugin-configmap-routes");
        let policy = copy("policy.wasm", "isobar-plugin-faults-policy");
        let config_path = dir.path().join("policy.json");
        std::fs::write(&config_path, config_json).unwrap();
        let mut config = Config::new(manifests.path(), &ingress);
        config.plugins.push(statics);
        config.policies.push(policy);
        config
            .plugin_configs
            .push(("faults-policy".into(), config_path));
        config.xds_listen = "127.0.0.1:0".parse().unwrap();
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.cache_dir = Some(target_dir().join("isobar-test-cache"));
        let server = Server::start(config).await.expect("serve starts");
        assert!(server.ready(WAIT).await, "no first snapshot");
        Plugins {
            dir,
            server,
            _manifests: manifests,
        }
    }

    fn install(&self, name: &str, bytes: &[u8]) {
        atomic_write(&self.dir.path().join(name), bytes);
    }

    async fn wait(&self, what: &str, cond: impl Fn(&isobar::report::Report) -> bool) {
        assert!(
            self.server.report().wait_until(WAIT, cond).await,
            "timed out waiting for {what}"
        );
    }
}

/// The `x-policy-tag` the policy put on the shop's first route.
fn tag(h: &Held) -> Option<String> {
    let rc = route_config(&h.snapshot, "ingress_http")?;
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == "shop.example.com"))?;
    vh.routes[0]
        .response_headers_to_add
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-policy-tag")
        .map(|h| h.value.clone())
}

fn policy_error(r: &isobar::report::Report) -> Option<String> {
    r.plugins()
        .into_iter()
        .find(|p| p.world == "policy")
        .and_then(|p| p.last_error)
        .map(|e| e.reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn translators_and_a_policy_serve_together_and_swap_alone() {
    let f = Plugins::start(r#"{"tag":"v1"}"#).await;
    let mut s = Sotw::open_envoy(f.server.xds_addr(), "envoy").await;
    s.until("both translators and the policy", |h| {
        tag(h).as_deref() == Some("v1") && h.domains("ingress_http").contains("static.example.com")
    })
    .await;

    let listed = f.server.report().plugins();
    let worlds: Vec<(&str, &str)> = listed.iter().map(|p| (p.name.as_str(), p.world)).collect();
    assert_eq!(
        worlds,
        [
            ("ingress", "translator"),
            ("configmap-routes", "translator"),
            ("faults-policy", "policy")
        ]
    );
    assert!(listed.iter().all(|p| p.calls > 0), "{listed:?}");
    assert_eq!(listed[2].config["tag"], "v1");
    let doc = http_get(f.server.admin_addr(), "/debug/plugins").await.1;
    assert!(
        doc.contains("configmap-routes") && doc.contains("\"world\":\"policy\""),
        "{doc}"
    );

    // A configuration change is a swap of that plugin alone.
    let version = f.server.report().snapshot().version;
    f.install("policy.json", br#"{"tag":"v2"}"#);
    s.until("the new configuration", |h| tag(h).as_deref() == Some("v2"))
        .await;
    assert!(f.server.report().snapshot().version > version);
    let ingress_loaded = &listed[0].loaded_at;
    assert_eq!(&f.server.report().plugins()[0].loaded_at, ingress_loaded);

    // A configuration the policy refuses, then a component that is not a
    // policy: both refused, the last good keeps serving.
    f.install("policy.json", br#"{"refuse":true}"#);
    f.wait("the refusal", |r| {
        policy_error(r).as_deref() == Some("ConfigRejected")
    })
    .await;
    f.install("policy.json", br#"{"tag":"v2"}"#);
    f.install(
        "policy.wasm",
        &std::fs::read(plugin_path("isobar-plugin-ingress")).unwrap(),
    );
    f.wait("the refusal", |r| {
        policy_error(r).as_deref() == Some("WrongPluginKind")
    })
    .await;
    // A second translator for Ingresses is refused naming both.
    f.install(
        "static.wasm",
        &std::fs::read(plugin_path("isobar-plugin-faults")).unwrap(),
    );
    f.wait("the refusal", |r| {
        r.plugins().iter().any(|p| {
            p.last_error
                .as_ref()
                .is_some_and(|e| e.reason == "RootKindClaimed")
        })
    })
    .await;
    assert_eq!(tag(&s.held).as_deref(), Some("v2"));
    assert!(
        s.held
            .domains("ingress_http")
            .contains("static.example.com")
    );
    assert_eq!(f.server.active_streams(), 1, "no stream dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_swap_that_fails_its_dry_run_is_refused() {
    let f = Plugins::start(r#"{"tag":"v1"}"#).await;
    let mut s = Sotw::open_envoy(f.server.xds_addr(), "envoy").await;
    s.until("the policy", |h| tag(h).as_deref() == Some("v1"))
        .await;
    // The shop Ingress asks the policy to trap: the running chain keeps
    // the host's last good output...
    let mut trapping = shop();
    trapping["metadata"]["annotations"] = json!({"isobar.dev/test-policy": "trap"});
    atomic_write(
        &f._manifests.path().join("10-shop.yaml"),
        yaml(&[trapping]).as_bytes(),
    );
    f.wait("the diagnostic", |r| {
        r.diagnostics().iter().any(|d| d.reason == "PluginTrap")
    })
    .await;
    assert_eq!(tag(&s.held).as_deref(), Some("v1"));
    // ...and a new configuration fails its dry run over every host.
    f.install("policy.json", br#"{"tag":"v2"}"#);
    f.wait("the refusal", |r| {
        policy_error(r).as_deref() == Some("DryRunFailed")
    })
    .await;
    assert_eq!(tag(&s.held).as_deref(), Some("v1"));
}

/// A routing policy written in JavaScript (`plugins/canary-js`, built with
/// componentize-js) swapped in for the running policy while serving: the
/// live streams get the canary split the annotation asks for, without a
/// restart or a new stream, and the policy follows later edits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_canary_policy_swapped_in_live() {
    let Some(js) = optional_plugin(
        "javascript_canary_policy_swapped_in_live",
        "isobar-plugin-canary-js",
        "make plugins-js needs npm",
    ) else {
        return;
    };
    let f = Plugins::start("{}").await;
    let manifests = f._manifests.path();
    atomic_write(
        &manifests.join("01-canary.yaml"),
        yaml(&[
            service("default", "web-canary", &[("http", 80, json!(8080))]),
            slice("default", "web-canary", "1", "http", 8080, &["10.0.0.3"]),
        ])
        .as_bytes(),
    );
    let mut canary_shop = shop();
    canary_shop["metadata"]["annotations"] = json!({"isobar.dev/canary": "web-canary:20"});
    atomic_write(
        &manifests.join("10-shop.yaml"),
        yaml(&[canary_shop]).as_bytes(),
    );
    let addr = f.server.xds_addr();
    let mut sotw = Sotw::open_envoy(addr, "sotw").await;
    let mut delta = Delta::open_envoy(addr, "delta").await;
    // Neither the Ingress plugin nor the running policy knows of canaries.
    let plain = pairs(&[
        ("path=/api", "cluster=default/api/80"),
        ("prefix=/api/", "cluster=default/api/80"),
        ("prefix=/", "cluster=default/web/80"),
    ]);
    let is_plain = |h: &Held| {
        super::swap::shop_routes(h) == plain
            && h.domains("ingress_http").contains("static.example.com")
    };
    sotw.until("the plain routes", is_plain).await;
    delta.until("the plain routes", is_plain).await;

    f.install("policy.wasm", &js);
    // A SpiderMonkey-based component takes tens of seconds to compile the
    // first time (later runs hit the compile cache).
    assert!(
        f.server
            .report()
            .wait_until(Duration::from_secs(300), |r| r
                .plugins()
                .iter()
                .any(|p| p.name == "canary-js" && p.world == "policy"))
            .await,
        "timed out waiting for the JavaScript policy to be swapped in: {:?}",
        f.server.report().plugins()
    );
    let split = |w: u32| {
        let (a, b) = (100 - w, w);
        pairs(&[
            (
                "path=/api",
                &format!("weighted=default/api/80:{a},default/web-canary/80:{b}"),
            ),
            (
                "prefix=/api/",
                &format!("weighted=default/api/80:{a},default/web-canary/80:{b}"),
            ),
            (
                "prefix=/",
                &format!("weighted=default/web/80:{a},default/web-canary/80:{b}"),
            ),
        ])
    };
    let twenty = split(20);
    let is_split = |h: &Held| super::swap::shop_routes(h) == twenty;
    sotw.until("the canary split", is_split).await;
    delta.until("the canary split", is_split).await;
    assert!(names(&sotw.held.snapshot, CDS).contains(&"default/web-canary/80".to_string()));
    assert_eq!(f.server.active_streams(), 2, "no stream dropped");

    // The policy is live: a new weight in the manifest is a new split.
    let mut heavier = shop();
    heavier["metadata"]["annotations"] = json!({"isobar.dev/canary": "web-canary:50"});
    atomic_write(&manifests.join("10-shop.yaml"), yaml(&[heavier]).as_bytes());
    let fifty = split(50);
    let half = |h: &Held| super::swap::shop_routes(h) == fifty;
    sotw.until("the 50/50 split", half).await;
    delta.until("the 50/50 split", half).await;
    assert_eq!(f.server.active_streams(), 2, "no stream dropped");
}
