//! End to end against a real cluster: runs only when `ISOBAR_E2E_KUBECONFIG`
//! names a kubeconfig (kind, k3d, a dev cluster). It creates a namespace of
//! its own, applies an IngressClass, a Service with an EndpointSlice and an
//! Ingress, runs `isobar serve` (in-process, the library the binary calls)
//! against the cluster scoped to that namespace, and checks the served xDS
//! and the written status; then changes and deletes objects and checks
//! again. Everything it created is deleted at the end.
//!
//! The suite runs twice: read through an ADS client that holds what Envoy
//! would, and through a real Envoy (the test venv's; SKIPPED without one).
//! Envoy is only asked about what it holds (its admin endpoint): the
//! Service's endpoints are made-up addresses no request may go to.
//!
//! Without the variable every test prints that it was SKIPPED and passes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use isobar::serve::cluster::{ClusterOptions, connect};
use isobar::serve::{Config, Server};
use isobar::source::kube::WatchConfig;
use isobar::writeback::{IngressAddress, WritebackConfig};
use isobar_tests::ads::*;
use isobar_tests::harness::envoy::{Bootstrap, Envoy, Ports};
use isobar_tests::*;
use k8s_openapi::api::core::v1::{Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const ENV: &str = "ISOBAR_E2E_KUBECONFIG";

fn kubeconfig() -> Option<PathBuf> {
    match std::env::var_os(ENV) {
        Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
        _ => {
            // Straight to stderr: the test harness captures eprintln! of a
            // passing test, and a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "SKIPPED: the end-to-end suite needs a cluster; set {ENV} to a kubeconfig to run it"
            );
            None
        }
    }
}

fn typed<T: serde::de::DeserializeOwned>(v: Value) -> T {
    serde_json::from_value(v).expect("a valid object")
}

/// Polls `check` until it returns Some, at most `WAIT`.
async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        // Polling a real API server: there is no event to wait on here.
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// What reads the served configuration: an ADS client holding what Envoy
/// would, or a real Envoy.
enum Observer {
    Ads(Box<Sotw>),
    /// The port lock is held as long as the Envoy runs.
    Envoy {
        envoy: Box<Envoy>,
        _ports: Ports,
    },
}

impl Observer {
    async fn ads(xds: SocketAddr) -> Observer {
        Observer::Ads(Box::new(Sotw::open_envoy(xds, "e2e").await))
    }

    async fn envoy(xds: SocketAddr, ports: Ports) -> Observer {
        let mut envoy = Envoy::start(&ports, Bootstrap::local(xds, "e2e-envoy")).await;
        envoy.ready().await;
        Observer::Envoy {
            envoy: Box::new(envoy),
            _ports: ports,
        }
    }

    /// Waits until `host` is served (or, with `serving` false, not): its
    /// listener is there and its route configuration names the host. A
    /// removed listener serves no routes, whatever RouteConfiguration the
    /// client last received for it.
    async fn until(&mut self, what: &str, host: &str, serving: bool) {
        match self {
            Observer::Ads(c) => {
                c.until(what, |h| {
                    let listener = names(&h.snapshot, LDS).iter().any(|l| l == "ingress_http");
                    (listener && h.domains("ingress_http").contains(host)) == serving
                })
                .await
            }
            Observer::Envoy { envoy, .. } => {
                envoy
                    .until(what, async |e| {
                        let listener = e
                            .active_listeners()
                            .await
                            .iter()
                            .any(|l| l == "ingress_http");
                        let routed =
                            e.route_configs()
                                .await
                                .get("ingress_http")
                                .is_some_and(|rc| {
                                    rc["virtual_hosts"]
                                        .as_array()
                                        .into_iter()
                                        .flatten()
                                        .any(|v| {
                                            v["domains"]
                                                .as_array()
                                                .into_iter()
                                                .flatten()
                                                .any(|d| d == host)
                                        })
                                });
                        (listener && routed) == serving
                    })
                    .await
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_and_writes_status_for_a_real_cluster() {
    let Some(path) = kubeconfig() else { return };
    e2e(path, "ads", Observer::ads).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_a_real_cluster_through_envoy() {
    let Some(path) = kubeconfig() else { return };
    if let Err(why) = Envoy::binary() {
        isobar_tests::harness::venv::skipped(
            "serves_a_real_cluster_through_envoy",
            &format!("no Envoy binary: {why}"),
        );
        return;
    }
    let ports = Ports::lock().await;
    e2e(path, "envoy", async move |xds| {
        Observer::envoy(xds, ports).await
    })
    .await;
}

/// The suite: objects created in a namespace of its own, served, status
/// written, then changed and deleted; `observe` reads what is served.
async fn e2e(path: PathBuf, tag: &str, observe: impl AsyncFnOnce(SocketAddr) -> Observer) {
    let client = isobar::serve::cluster::client(Some(&path), None)
        .await
        .expect("a client for the e2e cluster");
    let ns = format!("isobar-e2e-{tag}-{}", std::process::id());
    let class = format!("isobar-e2e-{tag}-{}", std::process::id());
    let pp = PostParams::default();

    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&pp, &typed(json!({"metadata": {"name": ns}})))
        .await
        .expect("creating the test namespace");
    let classes: Api<IngressClass> = Api::all(client.clone());
    classes
        .create(
            &pp,
            &typed(json!({"metadata": {"name": class},
                          "spec": {"controller": "isobar.dev/ingress-controller"}})),
        )
        .await
        .expect("creating the IngressClass");
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let mut web = service(&ns, "web", &[("http", 80, json!(8080))]);
    web["spec"]["type"] = json!("ClusterIP");
    services
        .create(&pp, &typed(web))
        .await
        .expect("creating the Service");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), &ns);
    slices
        .create(
            &pp,
            &typed(slice(&ns, "web", "1", "http", 8080, &["10.0.0.1"])),
        )
        .await
        .expect("creating the EndpointSlice");
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let mut shop = ingress(
        &ns,
        "shop",
        &[("shop.e2e.example", &[("/", "Prefix", "web", json!(80))])],
    );
    shop["spec"]["ingressClassName"] = json!(class);
    ingresses
        .create(&pp, &typed(shop.clone()))
        .await
        .expect("creating the Ingress");

    let cluster = connect(ClusterOptions {
        kubeconfig: Some(path.clone()),
        context: None,
        watch: WatchConfig {
            namespace: Some(ns.clone()),
            ..WatchConfig::default()
        },
        writeback: Some(WritebackConfig {
            ingress_address: IngressAddress::Fixed(vec!["192.0.2.77".into()]),
            ..WritebackConfig::default()
        }),
        leader: Some(isobar::leader::LeaderConfig::new(&ns, "e2e")),
    })
    .await
    .expect("connecting to the cluster");
    let mut config = Config::cluster(cluster, plugin_path("isobar-plugin-ingress"));
    config.xds_listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.cache_dir = Some(target_dir().join("isobar-test-cache"));
    let server = Server::start(config).await.expect("serve starts");
    assert!(server.ready(WAIT).await, "every watch synced");

    let mut envoy = observe(server.xds_addr()).await;
    envoy
        .until("the shop from the cluster", "shop.e2e.example", true)
        .await;

    // The leader wrote the address into the Ingress status.
    eventually("the Ingress status", async || {
        let i = ingresses.get("shop").await.ok()?;
        let ip = i.status?.load_balancer?.ingress?.first()?.ip.clone()?;
        (ip == "192.0.2.77").then_some(())
    })
    .await;

    // Change the host; then delete the Ingress.
    let moved = json!({"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"name": "shop", "namespace": ns},
        "spec": {"rules": [{"host": "store.e2e.example", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": {"service": {"name": "web", "port": {"number": 80}}}}]}}]}});
    ingresses
        .patch(
            "shop",
            &PatchParams::apply("isobar-e2e").force(),
            &Patch::Apply(moved),
        )
        .await
        .expect("changing the Ingress");
    envoy
        .until("the moved host", "store.e2e.example", true)
        .await;
    envoy
        .until("the old host gone", "shop.e2e.example", false)
        .await;
    ingresses
        .delete("shop", &DeleteParams::default())
        .await
        .expect("deleting the Ingress");
    // The namespace's last Ingress: its listener goes, and with it the host.
    envoy
        .until("the Ingress gone", "store.e2e.example", false)
        .await;

    server.shutdown().await.expect("clean shutdown");
    let _ = classes.delete(&class, &DeleteParams::default()).await;
    let _ = namespaces.delete(&ns, &DeleteParams::default()).await;
}
