//! `isobar serve` in-process, through its library API: manifests in a
//! watched temporary directory and the real plugin components in, xDS out
//! through a real tonic ADS client (envoy-types) over loopback, on ephemeral
//! ports. Every wait is on a condition and bounded by `WAIT`; nothing sleeps.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use isobar::serve::{Config, Gate, Server};
use isobar::xds::Snapshot;
use isobar_tests::ads::*;
use isobar_tests::*;
use prost::Message;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;

// ---- manifests ----------------------------------------------------------------

fn yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// IngressClass, and Services `web` and `api` (port 80) with endpoints.
fn backends() -> String {
    yaml(&[
        ingress_class("isobar", true),
        service("default", "web", &[("http", 80, json!(8080))]),
        slice("default", "web", "1", "http", 8080, &["10.0.0.1"]),
        service("default", "api", &[("http", 80, json!(8080))]),
        slice("default", "api", "1", "http", 8080, &["10.0.0.2"]),
    ])
}

/// `shop.example.com`: `/` to web, `/api` to api.
fn shop() -> Value {
    ingress(
        "default",
        "shop",
        &[(
            "shop.example.com",
            &[
                ("/", "Prefix", "web", json!(80)),
                ("/api", "Prefix", "api", json!(80)),
            ],
        )],
    )
}

const WEB: &str = "default/web/80";
const API: &str = "default/api/80";

// ---- the server -------------------------------------------------------------------

struct Fixture {
    manifests: tempfile::TempDir,
    plugin_dir: tempfile::TempDir,
    server: Server,
}

impl Fixture {
    async fn start(files: &[(&str, String)]) -> Self {
        Self::start_with(files, None).await
    }

    async fn start_with(files: &[(&str, String)], gate: Option<Gate>) -> Self {
        let manifests = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(manifests.path().join(name), text).unwrap();
        }
        let plugin_dir = tempfile::tempdir().unwrap();
        let plugin = plugin_dir.path().join("plugin.wasm");
        std::fs::copy(plugin_path("isobar-plugin-ingress"), &plugin).unwrap();
        let mut config = Config::new(manifests.path(), &plugin);
        config.xds_listen = "127.0.0.1:0".parse().unwrap();
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.cache_dir = Some(target_dir().join("isobar-test-cache"));
        config.first_build_gate = gate.clone();
        let server = Server::start(config).await.expect("serve starts");
        if gate.is_none() {
            assert!(server.ready(WAIT).await, "no first snapshot");
        }
        Fixture {
            manifests,
            plugin_dir,
            server,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.manifests.path().join(name)
    }

    /// Replaces a file the way editors and `kubectl`-style tools do: write
    /// aside, then rename over (the watcher sees one complete file).
    fn write(&self, name: &str, text: &str) {
        atomic_write(&self.path(name), text.as_bytes());
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.path(name)).unwrap();
    }

    fn install_plugin(&self, bytes: &[u8]) {
        atomic_write(&self.plugin_dir.path().join("plugin.wasm"), bytes);
    }

    fn version(&self) -> u64 {
        self.server.status().snapshot().version
    }

    async fn wait(&self, what: &str, cond: impl Fn(&isobar::serve::Status) -> bool) {
        assert!(
            self.server.status().wait_until(WAIT, cond).await,
            "timed out waiting for {what}"
        );
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.server.admin_addr(), path).await
    }

    async fn get_json(&self, path: &str) -> Value {
        let (code, body) = self.get(path).await;
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
    }
}

fn atomic_write(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn has_shop(h: &Held) -> bool {
    shop_in(&h.snapshot)
}

fn shop_in(s: &Snapshot) -> bool {
    domains_of(s, "ingress_http").contains("shop.example.com")
        && names(s, CDS) == [API, WEB]
        && names(s, EDS) == [API, WEB]
}

// ---- tests ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_sync_over_sotw_and_delta() {
    let f = Fixture::start(&[
        ("00-backends.yaml", backends()),
        ("10-shop.yaml", yaml(&[shop()])),
    ])
    .await;

    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-sotw").await;
    envoy.until("the shop", has_shop).await;
    let mut delta = Delta::open_envoy(f.server.xds_addr(), "envoy-delta").await;
    delta.until("the shop", has_shop).await;

    for held in [&envoy.held, &delta.held] {
        // Envoy never receives the API listeners meant for gRPC clients.
        assert_eq!(names(&held.snapshot, LDS), ["ingress_http"]);
        assert_eq!(
            routes(&held.snapshot, "ingress_http", "shop.example.com"),
            pairs(&[
                ("path=/api", "cluster=default/api/80"),
                ("prefix=/api/", "cluster=default/api/80"),
                ("prefix=/", "cluster=default/web/80")
            ])
        );
        let cla = load_assignment(&held.snapshot, WEB).unwrap();
        assert_eq!(
            cla.endpoints
                .iter()
                .map(|l| l.lb_endpoints.len())
                .sum::<usize>(),
            1
        );
    }

    // A proxyless gRPC client names the host it dials.
    let mut grpc = Sotw::open(f.server.xds_addr(), "grpc").await;
    grpc.subscribe(LDS, &["shop.example.com"]).await;
    let r = grpc.step().await;
    assert_eq!(
        names(&grpc.held.snapshot, LDS),
        ["shop.example.com"],
        "{r:?}"
    );
    let api = listener(&grpc.held.snapshot, "shop.example.com").unwrap();
    let hcm = api.api_listener.unwrap().api_listener.unwrap();
    let hcm = envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager::decode(&hcm.value[..]).unwrap();
    let Some(envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager::RouteSpecifier::Rds(rds)) = hcm.route_specifier else {
        panic!("the API listener names its routes over RDS: {hcm:?}");
    };
    // Its own route configuration: this host only, not the whole listener's.
    assert_eq!(rds.route_config_name, "grpc:ingress_http/shop.example.com");
    grpc.subscribe(RDS, &[&rds.route_config_name]).await;
    grpc.until("the host's routes", |h| {
        names(&h.snapshot, RDS) == ["grpc:ingress_http/shop.example.com"]
    })
    .await;
    let rc = route_config(&grpc.held.snapshot, &rds.route_config_name).unwrap();
    assert_eq!(rc.virtual_hosts.len(), 1);
    assert_eq!(
        routes(
            &grpc.held.snapshot,
            &rds.route_config_name,
            "shop.example.com"
        ),
        routes(&envoy.held.snapshot, "ingress_http", "shop.example.com")
    );
    // And Envoy, subscribed to every route configuration, never sees it.
    assert_eq!(names(&envoy.held.snapshot, RDS), ["ingress_http"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_edits_reach_clients_and_deletes_remove_routes() {
    let f = Fixture::start(&[
        ("00-backends.yaml", backends()),
        ("10-shop.yaml", yaml(&[shop()])),
    ])
    .await;
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-sotw").await;
    let mut delta = Delta::open_envoy(f.server.xds_addr(), "envoy-delta").await;
    envoy.until("the shop", has_shop).await;
    delta.until("the shop", has_shop).await;

    // A new file: a new host.
    let blog = ingress(
        "default",
        "blog",
        &[("blog.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    f.write("20-blog.yaml", &yaml(&[blog]));
    let both = |h: &Held| {
        h.domains("ingress_http")
            == ["blog.example.com", "shop.example.com"]
                .map(String::from)
                .into()
    };
    envoy.until("blog.example.com", both).await;
    delta.until("blog.example.com", both).await;

    // An edit of an existing file: /api goes to web too.
    let edited = ingress(
        "default",
        "shop",
        &[(
            "shop.example.com",
            &[
                ("/", "Prefix", "web", json!(80)),
                ("/api", "Prefix", "web", json!(80)),
            ],
        )],
    );
    f.write("10-shop.yaml", &yaml(&[edited]));
    let all_web = pairs(&[
        ("path=/api", "cluster=default/web/80"),
        ("prefix=/api/", "cluster=default/web/80"),
        ("prefix=/", "cluster=default/web/80"),
    ]);
    let api_gone = |h: &Held| {
        names(&h.snapshot, CDS) == [WEB]
            && routes(&h.snapshot, "ingress_http", "shop.example.com") == all_web
    };
    envoy.until("/api to go to web", api_gone).await;
    delta.until("/api to go to web", api_gone).await;

    // Deleting a manifest removes its routes.
    f.remove("10-shop.yaml");
    let only_blog = |h: &Held| h.domains("ingress_http") == ["blog.example.com".to_string()].into();
    envoy.until("the shop to go", only_blog).await;
    delta.until("the shop to go", only_blog).await;

    // Deleting the last Ingress removes the listener (SotW: left out;
    // delta: removed_resources).
    f.remove("20-blog.yaml");
    let empty = |h: &Held| names(&h.snapshot, LDS).is_empty() && names(&h.snapshot, CDS).is_empty();
    envoy.until("everything to go", empty).await;
    delta.until("everything to go", empty).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_manifest_keeps_last_good_objects_and_reports_file_and_line() {
    let f = Fixture::start(&[
        ("00-backends.yaml", backends()),
        ("10-shop.yaml", yaml(&[shop()])),
    ])
    .await;
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy").await;
    envoy.until("the shop", has_shop).await;
    let version = f.version();

    // The file's first document changes (api -> web), its second is broken
    // at a known line: nothing of the file applies.
    let good = yaml(&[ingress(
        "default",
        "shop",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    )]);
    let broken_at = good.lines().count() + 2;
    let text = format!("{good}---\napiVersion: v1\nkind: Service\nmetadata:\n  name: [broken\n");
    f.write("10-shop.yaml", &text);
    f.wait("the manifest error", |s| !s.manifest_errors().is_empty())
        .await;
    let errors = f.server.status().manifest_errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    let path = f.path("10-shop.yaml").canonicalize().unwrap();
    assert_eq!(errors[0].file, path.display().to_string());
    assert!(
        (broken_at..=broken_at + 4).contains(&errors[0].line),
        "line {} is not in the broken document (from line {broken_at}): {}",
        errors[0].line,
        errors[0].message
    );
    assert_eq!(
        errors[0].location,
        format!("{}:{}", path.display(), errors[0].line)
    );
    let d = f.get_json("/debug/diagnostics").await;
    assert_eq!(
        d["manifest_errors"][0]["location"],
        json!(errors[0].location)
    );

    // The last good objects keep serving: same snapshot, both clusters.
    assert_eq!(f.version(), version);
    assert!(shop_in(&f.server.status().snapshot()));

    // Fixing the file applies it and clears the error.
    f.write("10-shop.yaml", &good);
    envoy
        .until("the api cluster to go", |h| {
            names(&h.snapshot, CDS) == [WEB]
        })
        .await;
    f.wait("the error to clear", |s| s.manifest_errors().is_empty())
        .await;
}

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
    assert_eq!(f.server.status().streams().len(), STREAMS);

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
fn shop_routes(h: &Held) -> Vec<(String, String)> {
    if h.domains("ingress_http").contains("shop.example.com") {
        routes(&h.snapshot, "ingress_http", "shop.example.com")
    } else {
        Vec::new()
    }
}

/// A routing policy written in JavaScript (`plugins/canary-js`, built with
/// componentize-js) swapped in while serving: the live streams get the
/// canary split the annotation asks for, without a restart or a new stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_canary_policy_swapped_in_live() {
    let js = target_dir()
        .join("wasm32-wasip2")
        .join("release")
        .join("isobar_plugin_canary_js.wasm");
    if !js.exists()
        && std::process::Command::new("npm")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!(
            "## SKIPPED javascript_canary_policy_swapped_in_live: no npm to build plugins/canary-js ##"
        );
        return;
    }
    let js = std::fs::read(plugin_path("isobar-plugin-canary-js")).unwrap();
    let mut canary_shop = shop();
    canary_shop["metadata"]["annotations"] = json!({"isobar.dev/canary": "web-canary:20"});
    let f = Fixture::start(&[
        ("00-backends.yaml", backends()),
        (
            "01-canary.yaml",
            yaml(&[
                service("default", "web-canary", &[("http", 80, json!(8080))]),
                slice("default", "web-canary", "1", "http", 8080, &["10.0.0.3"]),
            ]),
        ),
        ("10-shop.yaml", yaml(&[canary_shop])),
    ])
    .await;
    let addr = f.server.xds_addr();
    let mut sotw = Sotw::open_envoy(addr, "sotw").await;
    let mut delta = Delta::open_envoy(addr, "delta").await;
    // The Rust Ingress plugin knows nothing of canaries.
    let plain = pairs(&[
        ("path=/api", "cluster=default/api/80"),
        ("prefix=/api/", "cluster=default/api/80"),
        ("prefix=/", "cluster=default/web/80"),
    ]);
    let is_plain = |h: &Held| shop_routes(h) == plain;
    sotw.until("the plain routes", is_plain).await;
    delta.until("the plain routes", is_plain).await;

    f.install_plugin(&js);
    // A SpiderMonkey-based component takes tens of seconds to compile the
    // first time (later runs hit the compile cache).
    assert!(
        f.server
            .status()
            .wait_until(Duration::from_secs(300), |s| s
                .plugin()
                .is_some_and(|p| p.name == "canary-js"))
            .await,
        "timed out waiting for the JavaScript plugin to be swapped in: {:?}",
        f.get_json("/debug/plugins").await
    );
    let split = pairs(&[
        (
            "path=/api",
            "weighted=default/api/80:80,default/web-canary/80:20",
        ),
        (
            "prefix=/api/",
            "weighted=default/api/80:80,default/web-canary/80:20",
        ),
        (
            "prefix=/",
            "weighted=default/web/80:80,default/web-canary/80:20",
        ),
    ]);
    let is_split = |h: &Held| shop_routes(h) == split;
    sotw.until("the canary split", is_split).await;
    delta.until("the canary split", is_split).await;
    assert!(names(&sotw.held.snapshot, CDS).contains(&"default/web-canary/80".to_string()));
    assert_eq!(f.server.active_streams(), 2, "no stream dropped");

    // The policy is live: a new weight in the manifest is a new split.
    let mut heavier = shop();
    heavier["metadata"]["annotations"] = json!({"isobar.dev/canary": "web-canary:50"});
    f.write("10-shop.yaml", &yaml(&[heavier]));
    let half = pairs(&[
        (
            "path=/api",
            "weighted=default/api/80:50,default/web-canary/80:50",
        ),
        (
            "prefix=/api/",
            "weighted=default/api/80:50,default/web-canary/80:50",
        ),
        (
            "prefix=/",
            "weighted=default/web/80:50,default/web-canary/80:50",
        ),
    ]);
    let half = |h: &Held| shop_routes(h) == half;
    sotw.until("the 50/50 split", half).await;
    delta.until("the 50/50 split", half).await;
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
    let snapshot = f.server.status().snapshot();
    let digest = f.server.status().plugin().unwrap().digest;

    let rejected = |reason: &'static str| {
        move |s: &isobar::serve::Status| {
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
    f.wait("the failed translation", rejected("TranslationFailed"))
        .await;

    let status = f.server.status();
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
    assert_eq!(last["reason"], "TranslationFailed");
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
    let d = f.server.status().nack_diagnostics();
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

/// The Memcached operator's Deployment in the in-memory cluster, if any.
fn memcached_replicas(status: &isobar::serve::Status, name: &str) -> Option<i64> {
    let cluster = status.memory_cluster()?;
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
    let status = server.status().clone();
    let wait = async |what: &str, cond: &dyn Fn(&isobar::serve::Status) -> bool| {
        assert!(
            status.wait_until(WAIT, cond).await,
            "timed out waiting for {what}"
        );
    };

    // The translator serves as ever; the operator made its Deployment.
    let mut envoy = Sotw::open_envoy(server.xds_addr(), "envoy-1").await;
    envoy.until("the shop", has_shop).await;
    wait("a Deployment of 2", &|s| {
        memcached_replicas(s, "cache") == Some(2)
    })
    .await;
    // Editing the manifest is a change the operator follows.
    atomic_write(
        &manifests.path().join("30-cache.yaml"),
        memcached_manifest(3).as_bytes(),
    );
    wait("scaled to 3", &|s| {
        memcached_replicas(s, "cache") == Some(3)
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
    wait("scaled to 4 by the old one", &|s| {
        memcached_replicas(s, "cache") == Some(4)
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
    wait("scaled to 1 by the Python operator", &|s| {
        memcached_replicas(s, "cache") == Some(1)
    })
    .await;
    assert!(status.reconcilers()[0].calls > 0);
    envoy.until("the shop, still served", has_shop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_bootstrap_points_at_serve_defaults() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/envoy-bootstrap.yaml");
    let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let ads = &doc["dynamic_resources"]["ads_config"];
    assert_eq!(ads["api_type"], "GRPC");
    assert_eq!(ads["transport_api_version"], "V3");
    for source in ["lds_config", "cds_config"] {
        assert_eq!(
            doc["dynamic_resources"][source]["ads"],
            json!({}),
            "{source} over ADS"
        );
        assert_eq!(
            doc["dynamic_resources"][source]["resource_api_version"],
            "V3"
        );
    }
    let cluster_name = ads["grpc_services"][0]["envoy_grpc"]["cluster_name"]
        .as_str()
        .unwrap();
    let clusters = doc["static_resources"]["clusters"].as_array().unwrap();
    let cluster = clusters
        .iter()
        .find(|c| c["name"] == cluster_name)
        .expect("the ADS cluster is defined");
    let http2 = &cluster["typed_extension_protocol_options"]["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"];
    assert!(
        http2["explicit_http_config"]["http2_protocol_options"].is_object(),
        "ADS needs HTTP/2"
    );
    let address = &cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        ["socket_address"];
    let xds: SocketAddr = isobar::serve::DEFAULT_XDS_LISTEN.parse().unwrap();
    assert_eq!(
        (
            address["address"].as_str().unwrap(),
            address["port_value"].as_u64().unwrap()
        ),
        (xds.ip().to_string().as_str(), u64::from(xds.port()))
    );
    let admin: SocketAddr = isobar::serve::DEFAULT_ADMIN_LISTEN.parse().unwrap();
    assert_ne!(
        doc["admin"]["address"]["socket_address"]["port_value"]
            .as_u64()
            .unwrap(),
        u64::from(admin.port()),
        "Envoy's admin port must not clash with isobar's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn xds_over_mutual_tls() {
    use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
    // The certificates `isobar certgen` issues (as PEM files).
    let certs = tempfile::tempdir().unwrap();
    let issued = isobar::certgen::generate(&isobar::certgen::CertgenConfig::default()).unwrap();
    isobar::certgen::write_files(certs.path(), &issued, false).unwrap();
    let read = |f: &str| std::fs::read(certs.path().join(f)).unwrap();
    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("00-backends.yaml"), backends()).unwrap();
    std::fs::write(manifests.path().join("10-shop.yaml"), yaml(&[shop()])).unwrap();
    let mut config = Config::new(manifests.path(), plugin_path("isobar-plugin-ingress"));
    config.xds_listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.cache_dir = Some(target_dir().join("isobar-test-cache"));
    config.xds_tls = Some(
        isobar::serve::tls_from_files(
            &certs.path().join("server.crt"),
            &certs.path().join("server.key"),
            Some(&certs.path().join("ca.crt")),
        )
        .unwrap(),
    );
    let server = Server::start(config).await.expect("serve starts");
    assert!(server.ready(WAIT).await);
    let addr = server.xds_addr();

    let channel = |identity: bool| {
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read("ca.crt")))
            .domain_name("isobar");
        if identity {
            tls = tls.identity(Identity::from_pem(read("client.crt"), read("client.key")));
        }
        Channel::from_shared(format!("https://{addr}"))
            .unwrap()
            .tls_config(tls)
            .unwrap()
    };
    // With a client certificate: served.
    let ch = timeout(WAIT, channel(true).connect())
        .await
        .unwrap()
        .expect("mTLS connect");
    let mut c = AggregatedDiscoveryServiceClient::new(ch);
    let (tx, rx) = mpsc::channel(4);
    tx.send(DiscoveryRequest {
        node: node("tls"),
        type_url: CDS.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut responses = c
        .stream_aggregated_resources(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let r = timeout(WAIT, responses.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(r.resources.len(), 2);

    // Without one, or in plaintext: refused.
    let refused = async |ch: Result<Channel, tonic::transport::Error>| -> bool {
        let Ok(ch) = ch else { return true };
        let (tx, rx) = mpsc::channel(4);
        tx.send(DiscoveryRequest {
            node: node("anon"),
            type_url: CDS.into(),
            ..Default::default()
        })
        .await
        .unwrap();
        match AggregatedDiscoveryServiceClient::new(ch)
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
        {
            Err(_) => true,
            Ok(s) => s.into_inner().message().await.is_err(),
        }
    };
    assert!(
        refused(timeout(WAIT, channel(false).connect()).await.unwrap()).await,
        "a client without a certificate was served"
    );
    let plain = Channel::from_shared(format!("http://{addr}")).unwrap();
    let plain = plain.connect();
    assert!(
        refused(timeout(WAIT, plain).await.unwrap()).await,
        "a plaintext client was served"
    );
    server.shutdown().await.unwrap();
}

// ---- measurement (not a pass/fail test) -------------------------------------------

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Change-to-ACK, endpoint-change-to-ACK, cold start and hot swap through
/// `isobar serve`, with Envoy-like clients that ACK everything. Each Ingress
/// has `/` (web; the first one's alternates with api, the change measured)
/// and `/api` (api); the faults plugin swapped in at the end keeps `/` only.
///
/// ```text
/// ISOBAR_MEASURE_INGRESSES=10000 ISOBAR_MEASURE_STREAMS=100 \
///   cargo test -p isobar-tests --test serve -- --ignored measure --nocapture
/// ```
///
/// Times run from the file write (so they include the watcher and the
/// debounce, `ISOBAR_MEASURE_QUIET_MS`, default 10) to the moment every
/// stream has ACKed the new version of the type that changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure() {
    let ingresses = env_or("ISOBAR_MEASURE_INGRESSES", 1000);
    let streams = env_or("ISOBAR_MEASURE_STREAMS", 1);
    let rounds = env_or("ISOBAR_MEASURE_ROUNDS", 20);
    let quiet = Duration::from_millis(env_or("ISOBAR_MEASURE_QUIET_MS", 10) as u64);
    let per_file = 100;

    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("00-backends.yaml"), backends()).unwrap();
    let ingress_file = |file: usize, first_backend: &str| {
        let docs: Vec<Value> = (file * per_file..((file + 1) * per_file).min(ingresses))
            .map(|i| {
                let backend = if i == 0 { first_backend } else { "web" };
                ingress(
                    "default",
                    &format!("ing-{i}"),
                    &[(
                        &format!("h{i}.example.com"),
                        &[
                            ("/", "Prefix", backend, json!(80)),
                            ("/api", "Prefix", "api", json!(80)),
                        ],
                    )],
                )
            })
            .collect();
        yaml(&docs)
    };
    for file in 0..ingresses.div_ceil(per_file) {
        std::fs::write(
            manifests.path().join(format!("20-ing-{file:04}.yaml")),
            ingress_file(file, "web"),
        )
        .unwrap();
    }
    let plugin_dir = tempfile::tempdir().unwrap();
    let plugin = plugin_dir.path().join("plugin.wasm");
    std::fs::copy(plugin_path("isobar-plugin-ingress"), &plugin).unwrap();
    let mut config = Config::new(manifests.path(), &plugin);
    config.xds_listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.cache_dir = Some(target_dir().join("isobar-test-cache"));
    config.debounce.quiet = quiet;
    let started = Instant::now();
    let server = Server::start(config).await.unwrap();
    assert!(server.ready(Duration::from_secs(300)).await);
    let cold = started.elapsed();
    let status = server.status().clone();

    // Envoy-like clients on their own tasks: subscribe, ACK everything.
    for i in 0..streams {
        let mut c = Sotw::open_envoy(server.xds_addr(), &format!("m-{i}")).await;
        tokio::spawn(async move {
            // Until the server goes away at the end.
            while let Ok(Some(r)) = c.rx.message().await {
                let names = c
                    .subscriptions
                    .get(&r.type_url)
                    .cloned()
                    .unwrap_or_default();
                let ack = DiscoveryRequest {
                    type_url: r.type_url,
                    resource_names: names,
                    version_info: r.version_info,
                    response_nonce: r.nonce,
                    ..Default::default()
                };
                if c.tx
                    .send(DiscoveryRequest {
                        node: node(&c.node),
                        ..ack
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    let all_acked = |t: &'static str| {
        move |s: &isobar::serve::Status| {
            let v = s.snapshot().version.to_string();
            let st = s.streams();
            st.len() == streams && st.iter().all(|x| x.acked.get(t) == Some(&v))
        }
    };
    assert!(
        status
            .wait_until(Duration::from_secs(300), all_acked(RDS))
            .await,
        "initial sync"
    );

    let mut route_changes = Vec::new();
    for r in 0..rounds {
        let before = status.snapshot().version;
        let t0 = Instant::now();
        atomic_write(
            &manifests.path().join("20-ing-0000.yaml"),
            ingress_file(0, if r % 2 == 0 { "api" } else { "web" }).as_bytes(),
        );
        let done = status
            .wait_until(WAIT, move |s| {
                s.snapshot().version > before && all_acked(RDS)(s)
            })
            .await;
        assert!(done, "round {r} did not complete");
        route_changes.push(t0.elapsed());
    }
    let mut endpoint_changes = Vec::new();
    for r in 0..rounds {
        let before = status.snapshot().version;
        let addr = format!("10.0.1.{}", r + 1);
        let text = backends().replace("10.0.0.1", &addr);
        let t0 = Instant::now();
        atomic_write(&manifests.path().join("00-backends.yaml"), text.as_bytes());
        let done = status
            .wait_until(WAIT, move |s| {
                s.snapshot().version > before && all_acked(EDS)(s)
            })
            .await;
        assert!(done, "endpoint round {r} did not complete");
        endpoint_changes.push(t0.elapsed());
    }
    let before = status.snapshot().version;
    let t0 = Instant::now();
    atomic_write(
        &plugin,
        &std::fs::read(plugin_path("isobar-plugin-faults")).unwrap(),
    );
    let swapped = status
        .wait_until(Duration::from_secs(300), move |s| {
            s.plugin().is_some_and(|p| p.name == "faults")
                && s.snapshot().version > before
                && all_acked(RDS)(s)
        })
        .await;
    assert!(swapped, "the swap did not complete");
    let swap = t0.elapsed();

    route_changes.sort();
    endpoint_changes.sort();
    let show = |v: &[Duration]| {
        format!(
            "p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
            percentile(v, 0.5),
            percentile(v, 0.9),
            percentile(v, 0.99),
            v[v.len() - 1]
        )
    };
    eprintln!(
        "== isobar serve: {ingresses} Ingresses, {streams} SotW streams, {rounds} rounds, debounce quiet {quiet:?}"
    );
    eprintln!("cold start to ready:           {cold:?}");
    eprintln!("Ingress change -> all ACKed:   {}", show(&route_changes));
    eprintln!("endpoint change -> all ACKed:  {}", show(&endpoint_changes));
    eprintln!("plugin swap -> all ACKed:      {swap:?}");
    eprintln!("streams still open:            {}", server.active_streams());
    let metrics = status.metrics.encode();
    let stage = |name: &str| {
        let value = |suffix: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(&format!("{name}_{suffix}")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let (sum, count) = (value("sum"), value("count"));
        format!(
            "{:.1} ms mean over {count}",
            if count > 0.0 {
                sum / count * 1000.0
            } else {
                0.0
            }
        )
    };
    eprintln!(
        "stage change->snapshot:        {}",
        stage("isobar_change_to_snapshot_seconds")
    );
    eprintln!(
        "stage snapshot->push:          {}",
        stage("isobar_snapshot_to_push_seconds")
    );
    eprintln!(
        "stage snapshot->ACK:           {}",
        stage("isobar_snapshot_to_ack_seconds")
    );
    eprintln!(
        "plugin call:                   {}",
        stage("isobar_plugin_call_duration_seconds")
    );
    assert_eq!(server.active_streams(), streams);
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
            .status()
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
