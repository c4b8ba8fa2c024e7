//! The kube source, feature-tested as Contour's are: `isobar serve` runs
//! in-process against a cluster whose watches are scripted. Every kind's
//! watch stream is fed the kube-runtime `watcher::Event`s an API server
//! would produce (lists, applies, deletes, relists after 410 Gone), and xDS
//! is read through a real tonic ADS client. Status write-back goes to a
//! mocked API server (tower-test) behind a real `kube::Client`.

use std::sync::Arc;
use std::time::Instant;

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use isobar::serve::{ClusterConnection, Config, Server, Writeback};
use isobar::store::KindKey;
use isobar::testing::fake_api::FakeApi;
use isobar::writeback::{IngressAddress, WritebackConfig};
use isobar_tests::ads::*;
use isobar_tests::cluster::*;
use isobar_tests::*;
use serde_json::{Value, json};
use tokio::sync::watch;

fn ingresses() -> KindKey {
    kind_of("networking.k8s.io/v1", "Ingress")
}
fn classes() -> KindKey {
    kind_of("networking.k8s.io/v1", "IngressClass")
}
fn services() -> KindKey {
    kind_of("v1", "Service")
}
fn slices() -> KindKey {
    kind_of("discovery.k8s.io/v1", "EndpointSlice")
}
fn secrets() -> KindKey {
    kind_of("v1", "Secret")
}

fn shop() -> Value {
    stored(
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
        ),
        10,
    )
}

fn blog() -> Value {
    stored(
        ingress(
            "default",
            "blog",
            &[("blog.example.com", &[("/", "Prefix", "web", json!(80))])],
        ),
        11,
    )
}

fn web_service() -> Value {
    stored(service("default", "web", &[("http", 80, json!(8080))]), 2)
}
fn api_service() -> Value {
    stored(service("default", "api", &[("http", 80, json!(8080))]), 3)
}
fn web_slice(ip: &str, rv: u32) -> Value {
    stored(slice("default", "web", "1", "http", 8080, &[ip]), rv)
}
fn api_slice() -> Value {
    stored(slice("default", "api", "1", "http", 8080, &["10.0.0.2"]), 5)
}

const WEB: &str = "default/web/80";
const API: &str = "default/api/80";

struct Fixture {
    script: Arc<Script>,
    server: Server,
    /// Holds the plugin file the server watches.
    plugin_dir: tempfile::TempDir,
}

impl Fixture {
    async fn start(not_served: &[KindKey], writeback: Option<Writeback>) -> Fixture {
        Self::start_with(not_served, writeback, None, &[]).await
    }

    async fn start_with(
        not_served: &[KindKey],
        writeback: Option<Writeback>,
        client: Option<kube::Client>,
        reconcilers: &[std::path::PathBuf],
    ) -> Fixture {
        let script = Arc::new(Script {
            not_served: not_served.iter().cloned().collect(),
            ..Script::default()
        });
        let cluster = ClusterConnection {
            watches: script.clone(),
            writeback,
            client,
        };
        let plugin_dir = tempfile::tempdir().unwrap();
        let plugin = plugin_dir.path().join("plugin.wasm");
        std::fs::copy(plugin_path("isobar-plugin-ingress"), &plugin).unwrap();
        let mut config = Config::cluster(cluster, &plugin);
        config.reconcilers = reconcilers.to_vec();
        config.xds_listen = "127.0.0.1:0".parse().unwrap();
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.cache_dir = Some(target_dir().join("isobar-test-cache"));
        let server = Server::start(config).await.expect("serve starts");
        Fixture {
            script,
            server,
            plugin_dir,
        }
    }

    /// Replaces the plugin file as a deployment would (write aside, rename).
    fn install_plugin(&self, crate_name: &str) {
        let tmp = self.plugin_dir.path().join(".plugin.wasm.tmp");
        std::fs::copy(plugin_path(crate_name), &tmp).unwrap();
        std::fs::rename(&tmp, self.plugin_dir.path().join("plugin.wasm")).unwrap();
    }

    async fn wait_plugin(&self, name: &str) {
        let ok = self
            .server
            .report()
            .wait_until(WAIT, |s| s.plugin().is_some_and(|p| p.name == name))
            .await;
        assert!(ok, "plugin {name} never became the served one");
    }

    /// Lists every kind the Ingress plugin and the host watch.
    async fn sync_all(&self, ingresses_listed: &[Value]) {
        let s = &self.script;
        s.list(&classes(), &[stored(ingress_class("isobar", true), 1)]);
        s.list(&services(), &[web_service(), api_service()]);
        s.list(&slices(), &[web_slice("10.0.0.1", 4), api_slice()]);
        s.list(&secrets(), &[]);
        s.list(&ingresses(), ingresses_listed);
        assert!(
            self.server.ready(WAIT).await,
            "ready once every watch listed"
        );
    }

    async fn envoy(&self, id: &str) -> Sotw {
        Sotw::open_envoy(self.server.xds_addr(), id).await
    }
}

fn domains(h: &Held) -> Vec<String> {
    h.domains("ingress_http").into_iter().collect()
}

// ---- the behaviours ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_the_cluster_once_every_watch_has_listed() {
    let f = Fixture::start(&[], None).await;
    for kind in [ingresses(), classes(), services(), slices(), secrets()] {
        f.script.wait_watched(&kind).await;
    }
    let s = &f.script;
    s.list(&classes(), &[stored(ingress_class("isobar", true), 1)]);
    s.list(&services(), &[web_service(), api_service()]);
    s.list(&slices(), &[web_slice("10.0.0.1", 4), api_slice()]);
    s.list(&ingresses(), &[shop()]);
    // Secrets have not listed: a snapshot now would be built from a partial
    // cluster, so none is served and /readyz says so.
    let (code, _) = http_get(f.server.admin_addr(), "/readyz").await;
    assert_eq!(code, 503);
    assert_eq!(f.server.report().snapshot().version, 0);

    s.list(&secrets(), &[]);
    assert!(f.server.ready(WAIT).await);
    let mut envoy = f.envoy("envoy-1").await;
    envoy
        .until("the shop from the cluster", |h| {
            domains(h) == ["shop.example.com"] && names(&h.snapshot, CDS) == [API, WEB]
        })
        .await;
    let cla = load_assignment(&envoy.held.snapshot, WEB).expect("web endpoints");
    assert_eq!(cla.endpoints[0].lb_endpoints.len(), 1);
    let (_, metrics) = http_get(f.server.admin_addr(), "/metrics").await;
    assert!(
        metrics.contains(r#"isobar_kube_objects{kind="Ingress.networking.k8s.io"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_adds_updates_and_deletes_reach_clients() {
    let f = Fixture::start(&[], None).await;
    f.sync_all(&[shop()]).await;
    let mut envoy = f.envoy("envoy-1").await;
    envoy
        .until("the shop", |h| domains(h) == ["shop.example.com"])
        .await;

    // Add.
    f.script.apply(&blog());
    envoy
        .until("the blog added", |h| {
            domains(h) == ["blog.example.com", "shop.example.com"]
        })
        .await;
    // Update: the shop moves host.
    let mut moved = shop();
    moved["spec"]["rules"][0]["host"] = json!("store.example.com");
    moved["metadata"]["resourceVersion"] = json!("20");
    f.script.apply(&moved);
    envoy
        .until("the shop moved", |h| {
            domains(h) == ["blog.example.com", "store.example.com"]
        })
        .await;
    // Delete; and an endpoint-only change.
    f.script.delete(&blog());
    f.script.apply(&web_slice("10.0.0.9", 30));
    envoy
        .until("the blog gone and web's endpoint moved", |h| {
            domains(h) == ["store.example.com"]
                && load_assignment(&h.snapshot, WEB).is_some_and(|c| {
                    format!("{c:?}").contains("10.0.0.9") && !format!("{c:?}").contains("10.0.0.1")
                })
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_any_order_converge() {
    let f = Fixture::start(&[], None).await;
    // The Ingress lists before anything it refers to exists.
    let s = &f.script;
    s.list(&ingresses(), &[shop()]);
    s.list(&slices(), &[]);
    s.list(&classes(), &[stored(ingress_class("isobar", true), 1)]);
    s.list(&secrets(), &[]);
    s.list(&services(), &[]);
    assert!(f.server.ready(WAIT).await);
    let mut envoy = f.envoy("envoy-1").await;
    envoy
        .until("the shop, without backends", |h| {
            domains(h) == ["shop.example.com"] && names(&h.snapshot, CDS).is_empty()
        })
        .await;
    // A delete for something never seen, then the slice before its Service.
    s.delete(&stored(
        service("default", "ghost", &[("http", 80, json!(80))]),
        1,
    ));
    s.apply(&web_slice("10.0.0.1", 4));
    s.apply(&web_service());
    s.apply(&api_slice());
    s.apply(&api_service());
    envoy
        .until("both backends with endpoints", |h| {
            names(&h.snapshot, CDS) == [API, WEB]
                && names(&h.snapshot, EDS) == [API, WEB]
                && load_assignment(&h.snapshot, API).is_some_and(|c| !c.endpoints.is_empty())
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relist_after_the_watch_expired_removes_the_vanished_and_adds_the_new() {
    let f = Fixture::start(&[], None).await;
    f.sync_all(&[shop()]).await;
    let mut envoy = f.envoy("envoy-1").await;
    envoy
        .until("the shop", |h| domains(h) == ["shop.example.com"])
        .await;
    // 410 Gone: the watcher relists. The shop was deleted and the blog
    // created while the watch was down; the deletes were never seen.
    f.script.list(&ingresses(), &[blog()]);
    envoy
        .until("only the blog", |h| domains(h) == ["blog.example.com"])
        .await;
    let (_, dump) = http_get(f.server.admin_addr(), "/debug/config_dump").await;
    assert!(!dump.contains("shop.example.com"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_the_server_does_not_serve_counts_as_empty() {
    // No Secrets API (a locked-down cluster, or a CRD not installed).
    let f = Fixture::start(&[secrets()], None).await;
    let s = &f.script;
    s.list(&classes(), &[stored(ingress_class("isobar", true), 1)]);
    s.list(&services(), &[web_service(), api_service()]);
    s.list(&slices(), &[web_slice("10.0.0.1", 4), api_slice()]);
    s.list(&ingresses(), &[shop()]);
    assert!(
        f.server.ready(WAIT).await,
        "ready without the kind nobody serves"
    );
    let mut envoy = f.envoy("envoy-1").await;
    envoy
        .until("the shop", |h| domains(h) == ["shop.example.com"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_swap_follows_the_kinds_the_new_plugin_reads() {
    let f = Fixture::start(&[], None).await;
    f.sync_all(&[shop()]).await;
    let mut envoy = f.envoy("envoy-1").await;
    envoy
        .until("the shop", |h| domains(h) == ["shop.example.com"])
        .await;

    // The faults plugin reads Ingresses and Services, not IngressClasses:
    // after the swap nobody reads them, so their watch stops.
    f.install_plugin("isobar-plugin-faults");
    f.wait_plugin("faults").await;
    tokio::time::timeout(WAIT, f.script.stopped(&classes()))
        .await
        .expect("the IngressClass watch stops");

    // Back to the Ingress plugin: it needs IngressClasses, so their watch
    // starts again and the swap waits for it to list.
    f.install_plugin("isobar-plugin-ingress");
    f.script.wait_watches(&classes(), 2).await;
    assert_eq!(f.server.report().plugin().unwrap().name, "faults");
    f.script
        .list(&classes(), &[stored(ingress_class("isobar", true), 1)]);
    f.wait_plugin("ingress").await;
    envoy
        .until("the shop, still", |h| domains(h) == ["shop.example.com"])
        .await;
}

// ---- status write-back ------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_is_written_back_by_the_leader_and_a_nack_becomes_an_event() {
    let (mut api, client) = FakeApi::start([]);
    let (leader_tx, leader) = watch::channel(false);
    let writeback = Writeback {
        client,
        config: WritebackConfig {
            ingress_address: IngressAddress::Fixed(vec!["192.0.2.7".into()]),
            ..WritebackConfig::default()
        },
        leader: leader.into(),
    };
    let f = Fixture::start(&[], Some(writeback)).await;
    f.sync_all(&[shop()]).await;
    let mut envoy = f.envoy("envoy-1").await;
    envoy
        .until("the shop", |h| domains(h) == ["shop.example.com"])
        .await;
    assert!(api.requests().is_empty(), "a follower writes nothing");

    leader_tx.send_replace(true);
    let patch = api
        .wait_for("the Ingress status", WAIT, |s| s.method == "PATCH")
        .await;
    assert_eq!(
        patch.uri,
        "/apis/networking.k8s.io/v1/namespaces/default/ingresses/shop/status?&force=true&fieldManager=isobar"
    );
    assert_eq!(
        patch.body["status"],
        json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.7"}]}})
    );

    // A data plane rejects the routes built from the shop.
    let mut picky = Sotw::open(f.server.xds_addr(), "envoy-picky").await;
    picky.subscribe(RDS, &["ingress_http"]).await;
    let rds = picky.recv().await;
    assert_eq!(rds.type_url, RDS);
    let nacked_at = Instant::now();
    picky
        .send(DiscoveryRequest {
            type_url: RDS.into(),
            resource_names: vec!["ingress_http".into()],
            response_nonce: rds.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 3,
                message: "unsupported field".into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await;
    let event = api
        .wait_for("the rejection event", WAIT, |s| {
            s.method == "POST" && s.body["reason"] == "RejectedByDataPlane"
        })
        .await;
    // Reported, not asserted (timing belongs in benchmarks): the issue
    // asks for under 2 s.
    eprintln!("NACK to Event on the Ingress: {:?}", nacked_at.elapsed());
    assert_eq!(
        event.uri,
        "/apis/events.k8s.io/v1/namespaces/default/events?"
    );
    assert_eq!(event.body["regarding"]["name"], "shop");
    assert!(
        event.body["note"]
            .as_str()
            .unwrap()
            .contains("unsupported field")
    );
}

// ---- reconcilers on the cluster -----------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_acts_on_the_cluster_with_the_hosts_credentials() {
    let cache = stored(
        json!({"apiVersion": "cache.example.com/v1alpha1", "kind": "Memcached",
               "metadata": {"namespace": "default", "name": "cache"},
               "spec": {"size": 2}}),
        40,
    );
    let (mut api, client) = FakeApi::start([(
        "/apis/cache.example.com/v1alpha1/namespaces/default/memcacheds/cache",
        cache.clone(),
    )]);
    let f = Fixture::start_with(
        &[],
        None,
        Some(client),
        &[plugin_path("isobar-plugin-memcached")],
    )
    .await;
    let s = &f.script;
    let memcacheds = kind_of("cache.example.com/v1alpha1", "Memcached");
    let deployments = kind_of("apps/v1", "Deployment");
    let pods = kind_of("v1", "Pod");
    for kind in [&memcacheds, &deployments, &pods] {
        s.wait_watched(kind).await;
    }
    s.list(&memcacheds, &[cache]);
    s.list(&deployments, &[]);
    s.list(&pods, &[]);
    f.sync_all(&[shop()]).await;

    // The finalizer first (a guarded merge patch), then the operator's
    // Deployment, applied by the host with the plugin's field manager and
    // the owner reference the host sets.
    let finalizer = api
        .wait_for("the finalizer", WAIT, |r| {
            r.method == "PATCH"
                && r.uri.starts_with(
                    "/apis/cache.example.com/v1alpha1/namespaces/default/memcacheds/cache?",
                )
        })
        .await;
    assert_eq!(finalizer.body["metadata"]["resourceVersion"], "40");
    let apply = api
        .wait_for("the Deployment applied", WAIT, |r| {
            r.method == "PATCH"
                && r.uri
                    .starts_with("/apis/apps/v1/namespaces/default/deployments/cache?")
        })
        .await;
    assert!(
        apply.uri.contains("fieldManager=isobar%2Fmemcached"),
        "{}",
        apply.uri
    );
    assert_eq!(apply.body["spec"]["replicas"], 2);
    assert_eq!(
        apply.body["metadata"]["ownerReferences"][0]["uid"],
        "uid-Memcached-cache"
    );
    assert_eq!(
        apply.body["metadata"]["ownerReferences"][0]["controller"],
        true
    );
}

// ---- graceful shutdown: the lease goes to the other replica -------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_shutting_down_hands_the_lease_and_status_writes_to_the_other_replica() {
    use isobar::leader::{LeaderConfig, elect};
    const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/isobar";
    let (mut api, client) = FakeApi::start([(
        LEASE,
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
               "metadata": {"name": "isobar", "namespace": "default", "resourceVersion": "1"},
               "spec": {}}),
    )]);
    let replica = async |identity: &str| {
        // The defaults a deployment runs with (15 s lease, 1 s retry).
        let leader = elect(client.clone(), &LeaderConfig::new("default", identity))
            .await
            .expect("competing for the lease");
        let writeback = Writeback {
            client: client.clone(),
            config: WritebackConfig {
                ingress_address: IngressAddress::Fixed(vec!["192.0.2.9".into()]),
                ..WritebackConfig::default()
            },
            leader: leader.clone(),
        };
        let f = Fixture::start(&[], Some(writeback)).await;
        f.sync_all(&[shop()]).await;
        (f, leader)
    };
    let (first, first_leader) = replica("replica-a").await;
    let mut leading = first_leader.watch();
    tokio::time::timeout(WAIT, leading.wait_for(|l| *l))
        .await
        .expect("the first replica leads")
        .unwrap();
    let (second, second_leader) = replica("replica-b").await;
    assert!(!second_leader.is_leader());
    api.wait_for("the shop's status from the leader", WAIT, |s| {
        s.method == "PATCH" && s.uri.contains("/ingresses/shop/status")
    })
    .await;
    api.take();

    // SIGTERM's path: the leader releases the lease as it stops.
    let stopped = Instant::now();
    first.server.shutdown().await.expect("clean shutdown");
    let shut = stopped.elapsed();
    assert!(
        api.object(LEASE).unwrap()["spec"]["holderIdentity"].is_null(),
        "the lease is still held after shutdown: {:?}",
        api.object(LEASE)
    );
    let mut taken = second_leader.watch();
    tokio::time::timeout(WAIT, taken.wait_for(|l| *l))
        .await
        .expect("the other replica takes the lease")
        .unwrap();
    // Reported, not asserted (timing belongs in benchmarks): the issue
    // asks for at most 2 s; before, the lease was taken after ~13 s.
    eprintln!(
        "leader shut down in {shut:?}; the other replica held the lease {:?} after the stop",
        stopped.elapsed()
    );
    assert_eq!(
        api.object(LEASE).unwrap()["spec"]["holderIdentity"],
        "replica-b"
    );
    // And writes status from now on.
    second.script.apply(&blog());
    api.wait_for("the blog's status from the new leader", WAIT, |s| {
        s.method == "PATCH" && s.uri.contains("/ingresses/blog/status")
    })
    .await;
}
