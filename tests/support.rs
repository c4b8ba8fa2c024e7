//! Test support: the real plugin components, object fixtures, and readers
//! that decode what the host would serve.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use isobar::ir;
use isobar::pipeline::Offline;
use isobar::plugin::{Limits, Plugin, Runtime};
use isobar::store::{Event, Object, ObjectKey};
use isobar::xds::{Snapshot, type_url};
use prost::Message;
use serde_json::{Value, json};

/// A real Envoy, real backends and the test venv (`tests/harness/`).
#[path = "harness/mod.rs"]
pub mod harness;

/// The cargo target directory these tests were built in.
pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // <target>/debug/deps/<test binary>
    let exe = std::env::current_exe().expect("test binary path");
    exe.ancestors()
        .nth(3)
        .expect("target dir above the test binary")
        .to_path_buf()
}

/// A component built from `plugins/` by `make plugins`.
pub fn plugin_path(crate_name: &str) -> PathBuf {
    let file = format!("{}.wasm", crate_name.replace('-', "_"));
    let dir = std::env::var_os("ISOBAR_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("wasm32-wasip2").join("release"));
    let path = dir.join(&file);
    assert!(
        path.exists(),
        "{} is missing: build the plugins first (`make plugins`)",
        path.display()
    );
    path
}

/// One engine per test binary, with the on-disk compile cache so later
/// binaries load components in milliseconds.
/// A plugin built by another toolchain (`make plugins-js` needs npm,
/// `make plugins-py` python3): its bytes, or None after saying loudly that
/// `test` is SKIPPED.
pub fn optional_plugin(test: &str, crate_name: &str, how: &str) -> Option<Vec<u8>> {
    let file = format!("{}.wasm", crate_name.replace('-', "_"));
    let dir = std::env::var_os("ISOBAR_PLUGIN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("wasm32-wasip2").join("release"));
    match std::fs::read(dir.join(&file)) {
        Ok(bytes) => Some(bytes),
        Err(_) => {
            eprintln!("## SKIPPED {test}: {file} is not built ({how}) ##");
            None
        }
    }
}

pub fn runtime() -> &'static Runtime {
    static RT: OnceLock<Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        Runtime::new(
            Limits::default(),
            Some(target_dir().join("isobar-test-cache")),
        )
        .expect("engine")
    })
}

pub fn load(crate_name: &str) -> Plugin {
    runtime()
        .load_file(&plugin_path(crate_name))
        .expect("loading plugin")
}

pub fn ingress_plugin() -> Plugin {
    static P: OnceLock<Plugin> = OnceLock::new();
    P.get_or_init(|| load("isobar-plugin-ingress")).clone()
}

pub fn obj(v: Value) -> Arc<Object> {
    Arc::new(Object::from_value(v).expect("fixture object"))
}

pub fn apply(v: Value) -> Event {
    Event::Apply(obj(v))
}

pub fn delete(v: &Value) -> Event {
    Event::Delete(obj(v.clone()).key())
}

pub fn key(v: &Value) -> ObjectKey {
    obj(v.clone()).key()
}

/// Pipeline over the real Ingress plugin with `objects` loaded and built.
pub fn ingress_pipeline(objects: impl IntoIterator<Item = Value>) -> Offline {
    let mut p = Offline::new(ingress_plugin());
    p.load(objects.into_iter().map(apply));
    p.rebuild();
    p
}

// ---- fixtures -------------------------------------------------------------

pub const CONTROLLER: &str = "isobar.dev/ingress-controller";

pub fn ingress_class(name: &str, default: bool) -> Value {
    let mut v = json!({"apiVersion":"networking.k8s.io/v1","kind":"IngressClass",
        "metadata":{"name":name},"spec":{"controller":CONTROLLER}});
    if default {
        v["metadata"]["annotations"] =
            json!({"ingressclass.kubernetes.io/is-default-class":"true"});
    }
    v
}

pub fn service(ns: &str, name: &str, ports: &[(&str, u16, Value)]) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(pname, port, target)| {
            let mut p = json!({"port": port, "targetPort": target, "protocol": "TCP"});
            if !pname.is_empty() {
                p["name"] = json!(pname);
            }
            p
        })
        .collect();
    json!({"apiVersion":"v1","kind":"Service","metadata":{"name":name,"namespace":ns},
        "spec":{"ports":ports,"selector":{"app":name}}})
}

/// A slice with ready endpoints at `addrs` on a port named `port_name`.
pub fn slice(
    ns: &str,
    service: &str,
    suffix: &str,
    port_name: &str,
    port: u16,
    addrs: &[&str],
) -> Value {
    let endpoints: Vec<Value> = addrs
        .iter()
        .map(|a| json!({"addresses":[a],"conditions":{"ready":true,"serving":true,"terminating":false}}))
        .collect();
    let mut p = json!({"port": port, "protocol":"TCP"});
    if !port_name.is_empty() {
        p["name"] = json!(port_name);
    }
    json!({"apiVersion":"discovery.k8s.io/v1","kind":"EndpointSlice",
        "metadata":{"name":format!("{service}-{suffix}"),"namespace":ns,"labels":{"kubernetes.io/service-name":service}},
        "addressType":"IPv4","endpoints":endpoints,"ports":[p]})
}

pub fn tls_secret(ns: &str, name: &str) -> Value {
    use std::io::Write;
    let b64 = |s: &str| {
        // Minimal base64 so fixtures need no extra crate.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
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
    json!({"apiVersion":"v1","kind":"Secret","type":"kubernetes.io/tls","metadata":{"name":name,"namespace":ns},
        "data":{"tls.crt": b64(CERT_PEM), "tls.key": b64(KEY_PEM)}})
}

/// Structure is all the host checks; these need not be a real key pair.
pub const CERT_PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBfixture\n-----END CERTIFICATE-----\n";
pub const KEY_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMIIBfixture\n-----END PRIVATE KEY-----\n";

/// An Ingress with class `isobar`; `rules` are (host, [(path, pathType, service, port)]).
pub fn ingress(ns: &str, name: &str, rules: &[(&str, &[(&str, &str, &str, Value)])]) -> Value {
    let rules: Vec<Value> = rules
        .iter()
        .map(|(host, paths)| {
            let paths: Vec<Value> = paths
                .iter()
                .map(|(path, kind, svc, port)| {
                    let port = if port.is_string() { json!({"name": port}) } else { json!({"number": port}) };
                    json!({"path":path,"pathType":kind,"backend":{"service":{"name":svc,"port":port}}})
                })
                .collect();
            let mut r = json!({"http":{"paths":paths}});
            if !host.is_empty() {
                r["host"] = json!(host);
            }
            r
        })
        .collect();
    json!({"apiVersion":"networking.k8s.io/v1","kind":"Ingress",
        "metadata":{"name":name,"namespace":ns},
        "spec":{"ingressClassName":"isobar","rules":rules}})
}

// ---- readers ----------------------------------------------------------------

fn decode<M: Message + Default>(s: &Snapshot, t: &str, name: &str) -> Option<M> {
    s.get(t, name)
        .map(|r| M::decode(r.body.as_ref()).expect("resource decodes"))
}

pub fn route_config(s: &Snapshot, name: &str) -> Option<RouteConfiguration> {
    decode(s, type_url::ROUTE, name)
}
pub fn listener(s: &Snapshot, name: &str) -> Option<Listener> {
    decode(s, type_url::LISTENER, name)
}
pub fn cluster(s: &Snapshot, name: &str) -> Option<Cluster> {
    decode(s, type_url::CLUSTER, name)
}
pub fn load_assignment(s: &Snapshot, name: &str) -> Option<ClusterLoadAssignment> {
    decode(s, type_url::ENDPOINT, name)
}
pub fn secret(s: &Snapshot, name: &str) -> Option<Secret> {
    decode(s, type_url::SECRET, name)
}

pub fn names(s: &Snapshot, t: &str) -> Vec<String> {
    s.of_type(t)
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

/// Routes of one virtual host as (path matcher, action) strings, in order,
/// e.g. ("path=/foo", "cluster=ns/svc/80") or ("prefix=/", "direct=503").
pub fn routes(s: &Snapshot, route_config_name: &str, domain: &str) -> Vec<(String, String)> {
    use envoy_types::pb::envoy::config::route::v3::{
        route::Action, route_action::ClusterSpecifier, route_match::PathSpecifier,
    };
    let rc = route_config(s, route_config_name)
        .unwrap_or_else(|| panic!("route config {route_config_name} missing"));
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == domain))
        .unwrap_or_else(|| panic!("no virtual host for {domain} in {route_config_name}"));
    vh.routes
        .iter()
        .map(|r| {
            let m = match r.r#match.as_ref().and_then(|m| m.path_specifier.as_ref()) {
                Some(PathSpecifier::Path(p)) => format!("path={p}"),
                Some(PathSpecifier::Prefix(p)) => format!("prefix={p}"),
                Some(PathSpecifier::SafeRegex(re)) => format!("regex={}", re.regex),
                other => format!("{other:?}"),
            };
            let a = match &r.action {
                Some(Action::Route(ra)) => match &ra.cluster_specifier {
                    Some(ClusterSpecifier::Cluster(c)) => format!("cluster={c}"),
                    Some(ClusterSpecifier::WeightedClusters(w)) => format!(
                        "weighted={}",
                        w.clusters
                            .iter()
                            .map(|c| format!(
                                "{}:{}",
                                c.name,
                                c.weight.map(|w| w.value).unwrap_or_default()
                            ))
                            .collect::<Vec<_>>()
                            .join(",")
                    ),
                    other => format!("{other:?}"),
                },
                Some(Action::DirectResponse(d)) => format!("direct={}", d.status),
                Some(Action::Redirect(_)) => "redirect".to_string(),
                other => format!("{other:?}"),
            };
            (m, a)
        })
        .collect()
}

/// Diagnostics as (object name, reason).
/// The first domain of each virtual host of a route configuration.
pub fn domains_of(s: &Snapshot, route_config_name: &str) -> std::collections::BTreeSet<String> {
    route_config(s, route_config_name)
        .map(|rc| {
            rc.virtual_hosts
                .into_iter()
                .filter_map(|v| v.domains.into_iter().next())
                .collect()
        })
        .unwrap_or_default()
}

pub fn reasons(diags: &[ir::Diagnostic]) -> Vec<(String, String)> {
    diags
        .iter()
        .map(|d| (d.object.name.clone(), d.reason.clone()))
        .collect()
}

pub fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

/// What the benchmarks share: the machine they ran on, percentiles.
pub mod bench {
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::{ingress, ingress_class, service, slice};

    /// Prints the machine, so figures are never quoted without it.
    pub fn machine() {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| {
                c.lines()
                    .find(|l| l.starts_with("model name"))
                    .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().next().map(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .unwrap_or("0")
                        .parse::<u64>()
                        .unwrap_or(0)
                        / 1024
                        / 1024
                })
            })
            .unwrap_or(0);
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        println!(
            "machine: {cpu}, {cores} cores, {mem} GiB, {} {}",
            std::env::consts::OS,
            std::env::consts::ARCH
        );
        println!(
            "build: {}",
            if cfg!(debug_assertions) {
                "debug assertions ON (numbers are pessimistic)"
            } else {
                "optimised"
            }
        );
    }

    /// The `p` quantile of sorted samples.
    pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
        sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
    }

    /// n Ingresses, each one host and three paths, with its Service and
    /// EndpointSlice, spread over 10 namespaces.
    pub fn universe(n: usize) -> Vec<Value> {
        let mut out = vec![ingress_class("isobar", false)];
        out.extend((0..n).flat_map(app));
        out
    }

    /// The Service, EndpointSlice and Ingress of app `i`.
    pub fn app(i: usize) -> [Value; 3] {
        let ns = format!("ns{}", i % 10);
        let svc = format!("svc{i}");
        let host = format!("app{i}.example.com");
        [
            service(&ns, &svc, &[("http", 80, json!("http"))]),
            slice(
                &ns,
                &svc,
                "a",
                "http",
                8080,
                &[
                    &format!("10.{}.{}.1", i / 250, i % 250),
                    &format!("10.{}.{}.2", i / 250, i % 250),
                ],
            ),
            ingress(
                &ns,
                &format!("ing{i}"),
                &[(
                    host.as_str(),
                    &[
                        ("/", "Prefix", svc.as_str(), json!(80)),
                        ("/api", "Prefix", svc.as_str(), json!("http")),
                        ("/healthz", "Exact", svc.as_str(), json!(80)),
                    ],
                )],
            ),
        ]
    }

    /// Ingress `ing{i}` with its second path renamed for `round`: one virtual
    /// host's routes change, nothing else.
    pub fn changed_ingress(i: usize, round: usize) -> Value {
        let ns = format!("ns{}", i % 10);
        let svc = format!("svc{i}");
        let host = format!("app{i}.example.com");
        let extra = format!("/v{round}");
        ingress(
            &ns,
            &format!("ing{i}"),
            &[(
                host.as_str(),
                &[
                    ("/", "Prefix", svc.as_str(), json!(80)),
                    (extra.as_str(), "Prefix", svc.as_str(), json!("http")),
                    ("/healthz", "Exact", svc.as_str(), json!(80)),
                ],
            )],
        )
    }
}

/// A reconciler plugin running against an in-memory cluster: the harness of
/// `tests/reconcile.rs` and of the reconcile benchmark. Objects go in as a
/// user would write them (`cluster.put`); the reconciler's writes come back
/// as watch events. Every wait is bounded by [`operator::WAIT`].
pub mod operator {
    use std::sync::Arc;
    use std::time::Duration;

    use isobar::plugin::ReconcilerPlugin;
    use isobar::queue::QueueMetrics;
    use isobar::reconcile::{Config, MemoryApi, Progress, Reconciler};
    use tokio::sync::watch;

    pub const WAIT: Duration = Duration::from_secs(120);

    pub struct Operator {
        pub cluster: Arc<MemoryApi>,
        pub progress: watch::Receiver<Progress>,
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Operator {
        /// Starts `plugin` against a new in-memory cluster.
        pub fn start(plugin: ReconcilerPlugin) -> Self {
            let (cluster, events) = MemoryApi::new();
            let cluster = Arc::new(cluster);
            // The API server's writes kept in a store, as a reflector would.
            let (store, changes, _reflector) = isobar::store::reflect(events);
            let r = Reconciler::new(
                plugin,
                cluster.clone(),
                store,
                Config::default(),
                &QueueMetrics::new(),
            )
            .expect("reconciler");
            let progress = r.progress();
            let (stop, stop_rx) = watch::channel(false);
            let task = tokio::spawn(r.run(changes, stop_rx));
            Operator {
                cluster,
                progress,
                stop,
                task,
            }
        }

        /// Waits (bounded) until `cond` holds of the cluster, re-checking after
        /// every batch the reconciler finishes.
        pub async fn until(&mut self, what: &str, cond: impl Fn(&MemoryApi) -> bool) {
            let deadline = tokio::time::Instant::now() + WAIT;
            while !cond(&self.cluster) {
                let changed = tokio::time::timeout_at(deadline, self.progress.changed()).await;
                assert!(
                    matches!(changed, Ok(Ok(()))),
                    "timed out waiting for {what}; progress {:?}; objects {:#?}; events {:#?}",
                    *self.progress.borrow(),
                    self.cluster.objects(),
                    self.cluster.events()
                );
            }
        }

        /// Waits (bounded) until the reconciler's progress satisfies `cond`.
        pub async fn until_progress(&mut self, what: &str, cond: impl Fn(&Progress) -> bool) {
            let deadline = tokio::time::Instant::now() + WAIT;
            while !cond(&self.progress.borrow()) {
                let changed = tokio::time::timeout_at(deadline, self.progress.changed()).await;
                assert!(
                    matches!(changed, Ok(Ok(()))),
                    "timed out waiting for {what}; progress {:?}",
                    *self.progress.borrow()
                );
            }
        }

        pub async fn stop(self) {
            self.stop.send_replace(true);
            tokio::time::timeout(WAIT, self.task)
                .await
                .expect("reconciler stops")
                .expect("reconciler task");
        }
    }
}

/// The ADS test client (SotW and delta peers that behave like Envoy, the
/// streams under them) and a plain HTTP/1.1 GET for the admin endpoint:
/// the host's own, shared with its unit tests and the benchmarks.
pub mod ads {
    pub use isobar::testing::ads::*;
}

/// A cluster whose watches the test scripts: per kind, the kube-runtime
/// `watcher::Event`s an API server would produce (the kube source's event
/// interface, as Contour's feature tests feed its informer handlers).
pub mod cluster {
    use std::collections::{HashMap, HashSet};
    use std::sync::Mutex;
    use std::time::Instant;

    use futures::StreamExt;
    use futures::future::BoxFuture;
    use isobar::source::kube::{Resolved, SourceError, WatchSpec, WatchStream, Watches};
    use isobar::store::KindKey;
    use kube::api::{ApiResource, DynamicObject};
    use kube::runtime::watcher::Event as WatchEvent;
    use serde_json::{Value, json};
    use tokio::sync::{Notify, mpsc};

    use super::ads::WAIT;

    #[derive(Default)]
    pub struct Streams {
        pub senders: HashMap<KindKey, mpsc::UnboundedSender<WatchEvent<DynamicObject>>>,
        pub receivers: HashMap<KindKey, mpsc::UnboundedReceiver<WatchEvent<DynamicObject>>>,
        pub watched: HashMap<KindKey, usize>,
    }

    /// Watch streams the test writes to, per kind. A kind may be fed before
    /// its watch starts: events wait in its channel.
    #[derive(Default)]
    pub struct Script {
        pub streams: Mutex<Streams>,
        pub not_served: HashSet<KindKey>,
        pub started: Notify,
    }

    pub fn kind_of(api_version: &str, kind: &str) -> KindKey {
        KindKey::new(api_version, kind)
    }

    /// The served version of the kinds these tests use.
    pub fn api_version(kind: &KindKey) -> &'static str {
        match (kind.group.as_str(), kind.kind.as_str()) {
            ("networking.k8s.io", _) => "networking.k8s.io/v1",
            ("discovery.k8s.io", _) => "discovery.k8s.io/v1",
            ("apps", _) => "apps/v1",
            ("cache.example.com", _) => "cache.example.com/v1alpha1",
            ("isobar.dev", _) => "isobar.dev/v1alpha1",
            ("", _) => "v1",
            other => panic!("no version for {other:?}"),
        }
    }

    impl Script {
        pub fn channel(
            streams: &mut Streams,
            kind: &KindKey,
        ) -> mpsc::UnboundedSender<WatchEvent<DynamicObject>> {
            if !streams.senders.contains_key(kind) {
                let (tx, rx) = mpsc::unbounded_channel();
                streams.senders.insert(kind.clone(), tx);
                streams.receivers.insert(kind.clone(), rx);
            }
            streams.senders[kind].clone()
        }

        /// Completes when the kind's current watch has stopped.
        pub async fn stopped(&self, kind: &KindKey) {
            let tx = self.streams.lock().unwrap().senders.get(kind).cloned();
            if let Some(tx) = tx {
                tx.closed().await;
            }
        }

        pub fn feed(&self, kind: &KindKey, event: WatchEvent<DynamicObject>) {
            let tx = Self::channel(&mut self.streams.lock().unwrap(), kind);
            tx.send(event).expect("the watch is running");
        }

        /// A full list: Init, each object, InitDone (what a (re)list looks like).
        pub fn list(&self, kind: &KindKey, objects: &[Value]) {
            self.feed(kind, WatchEvent::Init);
            for o in objects {
                self.feed(kind, WatchEvent::InitApply(dynamic(o)));
            }
            self.feed(kind, WatchEvent::InitDone);
        }

        pub fn apply(&self, o: &Value) {
            self.feed(&kind_key(o), WatchEvent::Apply(dynamic(o)));
        }

        pub fn delete(&self, o: &Value) {
            self.feed(&kind_key(o), WatchEvent::Delete(dynamic(o)));
        }

        pub async fn wait_watched(&self, kind: &KindKey) {
            self.wait_watches(kind, 1).await
        }

        /// Waits until the kind has been watched `n` times (restarts count).
        pub async fn wait_watches(&self, kind: &KindKey, n: usize) {
            let deadline = Instant::now() + WAIT;
            loop {
                let started = self.started.notified();
                if self
                    .streams
                    .lock()
                    .unwrap()
                    .watched
                    .get(kind)
                    .copied()
                    .unwrap_or(0)
                    >= n
                {
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "{kind} was never watched {n} times"
                );
                let _ = tokio::time::timeout(WAIT, started).await;
            }
        }
    }

    impl Watches for Script {
        fn resolve(&self, kind: &KindKey) -> BoxFuture<'_, Result<Resolved, SourceError>> {
            let kind = kind.clone();
            Box::pin(async move {
                if self.not_served.contains(&kind) {
                    return Err(SourceError::NotServed(kind));
                }
                let av = api_version(&kind);
                let (group, version) = av.rsplit_once('/').unwrap_or(("", av));
                Ok(Resolved {
                    resource: ApiResource {
                        group: group.into(),
                        version: version.into(),
                        api_version: av.into(),
                        kind: kind.kind.clone(),
                        plural: format!("{}s", kind.kind.to_lowercase()),
                    },
                    namespaced: kind.kind != "IngressClass",
                })
            })
        }

        fn watch(&self, _resolved: &Resolved, spec: &WatchSpec) -> WatchStream {
            let mut streams = self.streams.lock().unwrap();
            // A kind watched again (after its watch stopped) starts afresh.
            if !streams.receivers.contains_key(&spec.kind) {
                streams.senders.remove(&spec.kind);
            }
            Self::channel(&mut streams, &spec.kind);
            *streams.watched.entry(spec.kind.clone()).or_default() += 1;
            let rx = streams
                .receivers
                .remove(&spec.kind)
                .expect("the channel was just made");
            drop(streams);
            self.started.notify_waiters();
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx)
                .map(Ok)
                .boxed()
        }
    }

    pub fn dynamic(v: &Value) -> DynamicObject {
        serde_json::from_value(v.clone()).expect("a Kubernetes object")
    }

    pub fn kind_key(v: &Value) -> KindKey {
        kind_of(
            v["apiVersion"].as_str().unwrap(),
            v["kind"].as_str().unwrap(),
        )
    }

    /// What the API server adds: uid and resourceVersion.
    pub fn stored(mut v: Value, rv: u32) -> Value {
        let uid = format!(
            "uid-{}-{}",
            v["kind"].as_str().unwrap(),
            v["metadata"]["name"].as_str().unwrap()
        );
        v["metadata"]["uid"] = json!(uid);
        v["metadata"]["resourceVersion"] = json!(rv.to_string());
        v["metadata"]["creationTimestamp"] = json!("2026-01-01T00:00:00Z");
        v
    }
}
