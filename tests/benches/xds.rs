//! xDS serving benchmarks: objects in, ACKs out. The real pipeline (Ingress
//! plugin as Wasm) feeds `isobar::xds` over a `watch` channel, exactly as
//! `isobar serve` does, and real tonic ADS clients (envoy-types) that behave
//! like Envoy talk to it over TCP loopback, one connection per stream. Every
//! latency is measured on the server side, from the moment a change is
//! applied to the pipeline to the moment the server has seen the ACK of the
//! new version from every stream (its `XdsEvent::Ack` feed).
//!
//! Run with `cargo bench -p isobar-tests --bench xds`; figures go in the
//! issue notes. `ISOBAR_BENCH_QUICK=1` shrinks everything for a smoke run.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::listener::v3::{Listener, filter::ConfigType};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager::RouteSpecifier,
};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use isobar::pipeline::Offline;
use isobar::plugin::{Limits, Runtime};
use isobar::testing::ads::{DeltaResponse, SotwResponse, connect, node, open};
use isobar::xds::server::{DELTA_PATH, SOTW_PATH};
use isobar::xds::{self, RawNames, Snapshot, SotwRequest, XdsEvent, XdsServer, type_url};
use isobar_tests::bench::{changed_ingress, machine, percentile, universe};
use isobar_tests::*;
use prost::Message;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

const CDS: &str = type_url::CLUSTER;
const EDS: &str = type_url::ENDPOINT;
const LDS: &str = type_url::LISTENER;
const RDS: &str = type_url::ROUTE;
/// What an Envoy with ADS subscribes to here (no TLS in these universes).
const TYPES: [&str; 4] = [CDS, EDS, LDS, RDS];

/// Bound on every wait, so a lost ACK shows up as a report, not a hang.
const WAIT: Duration = Duration::from_secs(120);

fn quick() -> bool {
    std::env::var_os("ISOBAR_BENCH_QUICK").is_some()
}

// ---- the universe: isobar_tests::bench --------------------------------------

/// The EndpointSlice of `svc{i}` with a third endpoint for `round`: one
/// ClusterLoadAssignment changes, no route, no cluster, no plugin call.
fn changed_slice(i: usize, round: usize) -> Value {
    let ns = format!("ns{}", i % 10);
    let svc = format!("svc{i}");
    slice(
        &ns,
        &svc,
        "a",
        "http",
        8080,
        &[
            &format!("10.{}.{}.1", i / 250, i % 250),
            &format!("10.{}.{}.2", i / 250, i % 250),
            &format!("172.16.{}.{}", (round / 250) % 256, round % 250 + 1),
        ],
    )
}

// ---- figures ----------------------------------------------------------------

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn goal(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// Other work on the machine skews every figure here: say how busy it was.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn resource_kib(s: &Snapshot, t: &str) -> (usize, f64) {
    let rs = s.of_type(t);
    let n = rs.map(|r| r.len()).unwrap_or(0);
    let bytes: usize = rs.into_iter().flatten().map(|(_, r)| r.body.len()).sum();
    (n, bytes as f64 / 1024.0)
}

fn describe_snapshot(s: &Snapshot) -> String {
    TYPES
        .iter()
        .map(|t| {
            let (n, kib) = resource_kib(s, t);
            format!("{} {n} ({kib:.0} KiB)", t.rsplit('.').next().unwrap())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The types whose resources (names and content hashes) differ.
fn changed_types(old: &Snapshot, new: &Snapshot) -> Vec<&'static str> {
    TYPES
        .iter()
        .copied()
        .filter(|t| {
            let a = old
                .of_type(t)
                .into_iter()
                .flatten()
                .map(|(k, r)| (k, &r.version));
            let b = new
                .of_type(t)
                .into_iter()
                .flatten()
                .map(|(k, r)| (k, &r.version));
            !a.eq(b)
        })
        .collect()
}

fn static_type(t: &str) -> Option<&'static str> {
    TYPES.iter().copied().find(|x| *x == t)
}

// ---- the server's side: events -> who has ACKed what ---------------------------

struct Target {
    /// type -> the version a stream must have ACKed (or a later one).
    wants: Vec<(&'static str, u64)>,
    remaining: usize,
    last: Option<Instant>,
    done: std::sync::mpsc::Sender<Instant>,
}

#[derive(Default)]
struct TrackState {
    open: HashSet<u64>,
    /// (stream, type) -> highest version ACKed and when the server saw it.
    acked: HashMap<(u64, &'static str), (u64, Instant)>,
    opened: u64,
    closed: u64,
    nacks: u64,
    target: Option<Target>,
}

#[derive(Clone, Default)]
struct Tracker(Arc<Mutex<TrackState>>);

impl Tracker {
    fn on_events(&self, events: &mut Vec<XdsEvent>) {
        let now = Instant::now();
        let mut guard = self.0.lock().unwrap();
        let s = &mut *guard;
        for event in events.drain(..) {
            match event {
                XdsEvent::StreamOpened { stream, .. } => {
                    s.open.insert(stream);
                    s.opened += 1;
                }
                XdsEvent::StreamClosed { stream, .. } => {
                    s.open.remove(&stream);
                    s.closed += 1;
                    s.acked.retain(|(id, _), _| *id != stream);
                }
                XdsEvent::Nack(_) => s.nacks += 1,
                XdsEvent::Pushed(_) => {}
                XdsEvent::Ack(a) => {
                    let Some(t) = static_type(&a.type_url) else {
                        continue;
                    };
                    let Ok(v) = a.version.parse::<u64>() else {
                        continue;
                    };
                    let key = (a.stream, t);
                    let old = s.acked.get(&key).map(|x| x.0).unwrap_or(0);
                    if v <= old {
                        continue;
                    }
                    s.acked.insert(key, (v, now));
                    if let Some(target) = &mut s.target
                        && let Some(&(_, want)) = target.wants.iter().find(|(x, _)| *x == t)
                        && old < want
                        && v >= want
                        && s.open.contains(&a.stream)
                    {
                        target.remaining -= 1;
                        target.last = Some(now);
                        if target.remaining == 0 {
                            let _ = target.done.send(now);
                            s.target = None;
                        }
                    }
                }
            }
        }
    }

    /// Resolves when `streams` open streams have each ACKed, for every
    /// (type, version) in `wants`, that version or a later one, with the
    /// instant the server saw the last of those ACKs. (A type's version
    /// moves only when its content changes, so the version to want per type
    /// is the one at which that type last changed.)
    fn expect(
        &self,
        wants: &[(&'static str, u64)],
        streams: usize,
    ) -> std::sync::mpsc::Receiver<Instant> {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut s = self.0.lock().unwrap();
        let mut satisfied = 0;
        let mut last = None;
        for ((stream, t), (v, at)) in &s.acked {
            if wants.iter().any(|(x, want)| x == t && v >= want) && s.open.contains(stream) {
                satisfied += 1;
                last = last.max(Some(*at));
            }
        }
        let remaining = (streams * wants.len()).saturating_sub(satisfied);
        if remaining == 0 {
            let _ = tx.send(last.unwrap_or_else(Instant::now));
            s.target = None;
        } else {
            s.target = Some(Target {
                wants: wants.to_vec(),
                remaining,
                last,
                done: tx,
            });
        }
        rx
    }

    fn abandon(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .target
            .take()
            .map(|t| t.remaining)
            .unwrap_or(0)
    }

    fn open(&self) -> usize {
        self.0.lock().unwrap().open.len()
    }

    fn counts(&self) -> (u64, u64, u64) {
        let s = self.0.lock().unwrap();
        (s.opened, s.closed, s.nacks)
    }
}

async fn drain(mut events: mpsc::Receiver<XdsEvent>, tracker: Tracker) {
    let mut batch = Vec::with_capacity(512);
    while events.recv_many(&mut batch, 512).await > 0 {
        tracker.on_events(&mut batch);
    }
}

// ---- clients that behave like Envoy ------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Proto {
    Sotw,
    Delta,
}

impl Proto {
    fn as_str(self) -> &'static str {
        match self {
            Proto::Sotw => "SotW",
            Proto::Delta => "delta",
        }
    }
}

/// Just what an Envoy needs from a Cluster to subscribe to its endpoints.
#[derive(Clone, PartialEq, prost::Message)]
struct ClusterHead {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(message, optional, tag = "3")]
    eds_cluster_config: Option<EdsConfig>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct EdsConfig {
    #[prost(string, tag = "2")]
    service_name: String,
}

/// The EDS resource a cluster needs, if it is an EDS cluster.
fn eds_name(body: &[u8]) -> Option<String> {
    let c = ClusterHead::decode(body).ok()?;
    let eds = c.eds_cluster_config?;
    Some(if eds.service_name.is_empty() {
        c.name
    } else {
        eds.service_name
    })
}

/// The route configurations a listener's HTTP connection managers name.
fn rds_names(body: &[u8], out: &mut BTreeSet<String>) {
    let Ok(l) = Listener::decode(body) else {
        return;
    };
    for fc in l.filter_chains.iter().chain(l.default_filter_chain.iter()) {
        for f in &fc.filters {
            if let Some(ConfigType::TypedConfig(any)) = &f.config_type
                && any.type_url.ends_with("HttpConnectionManager")
                && let Ok(hcm) = HttpConnectionManager::decode(any.value.as_slice())
                && let Some(RouteSpecifier::Rds(rds)) = hcm.route_specifier
            {
                out.insert(rds.route_config_name);
            }
        }
    }
}

#[derive(Default)]
struct FleetState {
    connected: AtomicUsize,
    failed: AtomicUsize,
    /// Connection attempts that failed and were retried.
    retries: AtomicUsize,
    errors: Mutex<Vec<String>>,
    /// Per client, the version of each of TYPES it has ACKed last.
    acked: Mutex<Vec<[u64; 4]>>,
}

impl FleetState {
    fn fail(&self, e: String) {
        self.failed.fetch_add(1, Ordering::Relaxed);
        self.errors.lock().unwrap().push(e);
    }

    fn ack(&self, client: usize, t: &str, version: &str) {
        if let (Some(i), Ok(v)) = (TYPES.iter().position(|x| *x == t), version.parse::<u64>()) {
            self.acked.lock().unwrap()[client][i] = v;
        }
    }

    /// Clients that have ACKed `version` of every type.
    fn synced(&self, version: u64) -> usize {
        self.acked
            .lock()
            .unwrap()
            .iter()
            .filter(|a| a.iter().all(|v| *v >= version))
            .count()
    }
}

/// Client tasks sharing one stop signal.
struct Fleet {
    stop: watch::Sender<bool>,
    handles: Vec<tokio::task::JoinHandle<()>>,
    state: Arc<FleetState>,
}

impl Fleet {
    fn spawn(
        rt: &tokio::runtime::Runtime,
        addr: SocketAddr,
        n: usize,
        proto: Proto,
        first_id: usize,
    ) -> Fleet {
        let (stop, _) = watch::channel(false);
        let state = Arc::new(FleetState {
            acked: Mutex::new(vec![[0; 4]; n]),
            ..Default::default()
        });
        let handles = (0..n)
            .map(|i| {
                let state = state.clone();
                let stop = stop.subscribe();
                rt.spawn(async move {
                    let node = format!("bench-{}-{}", proto.as_str(), first_id + i);
                    let r = match proto {
                        Proto::Sotw => sotw_client(addr, node, i, &state, stop).await,
                        Proto::Delta => delta_client(addr, node, i, &state, stop).await,
                    };
                    if let Err(e) = r {
                        state.fail(e);
                    }
                })
            })
            .collect();
        Fleet {
            stop,
            handles,
            state,
        }
    }

    /// Waits until every client has opened its stream or failed.
    fn wait_connected(&self, rt: &tokio::runtime::Runtime) -> (usize, usize) {
        let n = self.handles.len();
        let t = Instant::now();
        rt.block_on(async {
            while self.state.connected.load(Ordering::Relaxed)
                + self.state.failed.load(Ordering::Relaxed)
                < n
                && t.elapsed() < WAIT
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        (
            self.state.connected.load(Ordering::Relaxed),
            self.state.failed.load(Ordering::Relaxed),
        )
    }

    /// Says how many connection attempts were retried, if any.
    fn report_retries(&self) {
        let retries = self.state.retries.load(Ordering::Relaxed);
        if retries > 0 {
            println!(
                "  ({retries} connection attempts were refused or reset and retried with backoff, as Envoy would)"
            );
        }
    }

    fn first_errors(&self) -> String {
        let errors = self.state.errors.lock().unwrap();
        let mut distinct: Vec<&String> = errors.iter().collect();
        distinct.dedup();
        distinct
            .into_iter()
            .take(3)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn stop(self, rt: &tokio::runtime::Runtime) {
        self.stop.send_replace(true);
        rt.block_on(async {
            for h in self.handles {
                let _ = h.await;
            }
        });
    }
}

// The clients use the host's ADS test client's transport and its lean
// messages (`isobar::testing::ads`): a hundred clients share the server's
// two cores here, each of which would be an Envoy on its own machine, so
// they keep resources in the received buffer and SotW names encoded; the
// bytes on the wire are Envoy's.

/// Opens a connection and stream, retrying with backoff as Envoy does: a
/// thousand clients connecting at once can overflow the accept queue.
async fn with_retries<T, F, Fut>(state: &FleetState, mut open: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut delay = Duration::from_millis(50);
    let mut attempt = 0;
    loop {
        match open().await {
            Ok(t) => return Ok(t),
            Err(e) if attempt == 5 => return Err(e),
            Err(_) => {
                attempt += 1;
                state.retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
        }
    }
}

async fn sotw_client(
    addr: SocketAddr,
    node_id: String,
    me: usize,
    state: &FleetState,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let (tx, mut responses) = with_retries(state, || async {
        let mut client = connect(addr).await?;
        let (tx, rx) = mpsc::channel::<SotwRequest>(16);
        // Legacy wildcard for clusters and listeners; the node on the first request only.
        let _ = tx
            .send(SotwRequest {
                node: node(&node_id),
                type_url: CDS.into(),
                ..Default::default()
            })
            .await;
        let _ = tx
            .send(SotwRequest {
                type_url: LDS.into(),
                ..Default::default()
            })
            .await;
        let responses = open::<_, SotwResponse>(&mut client, SOTW_PATH, rx).await?;
        Ok((tx, responses))
    })
    .await?;
    state.connected.fetch_add(1, Ordering::Relaxed);

    // type -> subscribed names, encoded once per subscription.
    let mut names: HashMap<&'static str, RawNames> = HashMap::new();
    // type -> (version_info, nonce) of the latest response.
    let mut last: HashMap<&'static str, (String, String)> = HashMap::new();
    loop {
        let response = tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            m = responses.message() => match m {
                Ok(Some(r)) => r,
                Ok(None) => return if *stop.borrow() { Ok(()) } else { Err("server ended the stream".into()) },
                Err(s) => return if *stop.borrow() { Ok(()) } else { Err(format!("stream failed: {s}")) },
            },
        };
        let Some(t) = static_type(&response.type_url) else {
            continue;
        };
        let mut resubscribe = None;
        match t {
            CDS => {
                let eds: BTreeSet<String> = response
                    .resources
                    .iter()
                    .filter_map(|a| eds_name(&a.value))
                    .collect();
                let eds: RawNames = eds.into_iter().collect();
                if names.get(EDS) != Some(&eds) {
                    names.insert(EDS, eds);
                    resubscribe = Some(EDS);
                }
            }
            LDS => {
                let mut rds = BTreeSet::new();
                for a in &response.resources {
                    rds_names(&a.value, &mut rds);
                }
                let rds: RawNames = rds.into_iter().collect();
                if names.get(RDS) != Some(&rds) {
                    names.insert(RDS, rds);
                    resubscribe = Some(RDS);
                }
            }
            _ => {}
        }
        let ack = SotwRequest {
            version_info: response.version_info.clone(),
            response_nonce: response.nonce.clone(),
            type_url: response.type_url,
            resource_names: names.get(t).cloned().unwrap_or_default(),
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return Err("request stream closed".into());
        }
        state.ack(me, t, &response.version_info);
        last.insert(t, (response.version_info, response.nonce));
        if let Some(r) = resubscribe {
            let (version_info, response_nonce) = last.get(r).cloned().unwrap_or_default();
            let request = SotwRequest {
                version_info,
                response_nonce,
                type_url: r.into(),
                resource_names: names.get(r).cloned().unwrap_or_default(),
                ..Default::default()
            };
            if tx.send(request).await.is_err() {
                return Err("request stream closed".into());
            }
        }
    }
}

async fn delta_client(
    addr: SocketAddr,
    node_id: String,
    me: usize,
    state: &FleetState,
    mut stop: watch::Receiver<bool>,
) -> Result<(), String> {
    let (tx, mut responses) = with_retries(state, || async {
        let mut client = connect(addr).await?;
        let (tx, rx) = mpsc::channel::<DeltaDiscoveryRequest>(16);
        let _ = tx
            .send(DeltaDiscoveryRequest {
                node: node(&node_id),
                type_url: CDS.into(),
                ..Default::default()
            })
            .await;
        let _ = tx
            .send(DeltaDiscoveryRequest {
                type_url: LDS.into(),
                ..Default::default()
            })
            .await;
        let responses = open::<_, DeltaResponse>(&mut client, DELTA_PATH, rx).await?;
        Ok((tx, responses))
    })
    .await?;
    state.connected.fetch_add(1, Ordering::Relaxed);

    // What the client holds: cluster -> EDS name, listener -> route configs.
    let mut clusters: HashMap<String, Option<String>> = HashMap::new();
    let mut listeners: HashMap<String, BTreeSet<String>> = HashMap::new();
    let mut subscribed: HashMap<&'static str, BTreeSet<String>> = HashMap::new();
    loop {
        let response = tokio::select! {
            biased;
            _ = stop.changed() => return Ok(()),
            m = responses.message() => match m {
                Ok(Some(r)) => r,
                Ok(None) => return if *stop.borrow() { Ok(()) } else { Err("server ended the stream".into()) },
                Err(s) => return if *stop.borrow() { Ok(()) } else { Err(format!("stream failed: {s}")) },
            },
        };
        let Some(t) = static_type(&response.type_url) else {
            continue;
        };
        let mut wanted = None;
        match t {
            CDS => {
                for r in &response.resources {
                    clusters.insert(
                        r.name.clone(),
                        r.resource.as_ref().and_then(|a| eds_name(&a.value)),
                    );
                }
                for n in &response.removed_resources {
                    clusters.remove(n);
                }
                wanted = Some((
                    EDS,
                    clusters
                        .values()
                        .flatten()
                        .cloned()
                        .collect::<BTreeSet<String>>(),
                ));
            }
            LDS => {
                for r in &response.resources {
                    let mut rds = BTreeSet::new();
                    if let Some(a) = &r.resource {
                        rds_names(&a.value, &mut rds);
                    }
                    listeners.insert(r.name.clone(), rds);
                }
                for n in &response.removed_resources {
                    listeners.remove(n);
                }
                wanted = Some((
                    RDS,
                    listeners
                        .values()
                        .flatten()
                        .cloned()
                        .collect::<BTreeSet<String>>(),
                ));
            }
            _ => {}
        }
        let ack = DeltaDiscoveryRequest {
            type_url: response.type_url,
            response_nonce: response.nonce,
            ..Default::default()
        };
        if tx.send(ack).await.is_err() {
            return Err("request stream closed".into());
        }
        state.ack(me, t, &response.system_version_info);
        if let Some((r, want)) = wanted {
            let have = subscribed.entry(r).or_default();
            let subscribe: Vec<String> = want.difference(have).cloned().collect();
            let unsubscribe: Vec<String> = have.difference(&want).cloned().collect();
            if !subscribe.is_empty() || !unsubscribe.is_empty() {
                *have = want;
                let request = DeltaDiscoveryRequest {
                    type_url: r.into(),
                    resource_names_subscribe: subscribe,
                    resource_names_unsubscribe: unsubscribe,
                    ..Default::default()
                };
                if tx.send(request).await.is_err() {
                    return Err("request stream closed".into());
                }
            }
        }
    }
}

// ---- a served pipeline -----------------------------------------------------

struct Sample {
    /// The change applied to the pipeline (translate, merge, compile).
    apply: Duration,
    /// Cloning the pipeline's snapshot to publish it.
    clone: Duration,
    /// Change applied to the last ACK.
    total: Duration,
    /// The types whose resources changed (what the ACKs were awaited for).
    types: Vec<&'static str>,
}

/// The pipeline (driven from this thread), the xDS server on the runtime,
/// the event tracker and the connected clients.
struct World {
    pipeline: Offline,
    published: Arc<Snapshot>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    server: XdsServer,
    tracker: Tracker,
    addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    fleets: Vec<Fleet>,
    /// Per type, the snapshot version at which its content last changed:
    /// what a client that holds the current state has ACKed.
    content: Vec<(&'static str, u64)>,
    /// Streams every measurement waits for.
    streams: usize,
    round: usize,
}

impl World {
    fn start(rt: &tokio::runtime::Runtime, pipeline: Offline) -> World {
        let published = Arc::new(pipeline.snapshot().clone());
        let published_version = published.version;
        let (snapshots, rx) = watch::channel(published.clone());
        let (server, events) = XdsServer::new(rx);
        let tracker = Tracker::default();
        rt.spawn(drain(events, tracker.clone()));
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind");
        let addr = listener.local_addr().unwrap();
        let (shutdown, stopped) = oneshot::channel::<()>();
        let s = server.clone();
        rt.spawn(async move {
            if let Err(e) = xds::serve(
                listener,
                s,
                async move {
                    let _ = stopped.await;
                },
                None,
            )
            .await
            {
                eprintln!("xDS server failed: {e}");
            }
        });
        World {
            pipeline,
            published,
            snapshots,
            server,
            tracker,
            addr,
            shutdown: Some(shutdown),
            fleets: Vec::new(),
            content: TYPES.iter().map(|t| (*t, published_version)).collect(),
            streams: 0,
            round: 0,
        }
    }

    /// Publishes the pipeline's snapshot; `published` records it.
    fn publish(&mut self) -> Arc<Snapshot> {
        let s = Arc::new(self.pipeline.snapshot().clone());
        self.snapshots.send_replace(s.clone());
        s
    }

    /// Makes `new` the published snapshot; returns the types it changed.
    fn published(&mut self, new: Arc<Snapshot>) -> Vec<&'static str> {
        let types = changed_types(&self.published, &new);
        for (t, v) in &mut self.content {
            if types.contains(t) || *v == 0 {
                *v = new.version;
            }
        }
        self.published = new;
        types
    }

    /// What a synced client has ACKed, for `types`.
    fn wants(&self, types: &[&'static str]) -> Vec<(&'static str, u64)> {
        self.content
            .iter()
            .filter(|(t, _)| types.contains(t))
            .copied()
            .collect()
    }

    /// Connects `n` clients and waits until all of them hold the current
    /// snapshot; returns how long that took.
    fn connect(&mut self, rt: &tokio::runtime::Runtime, n: usize, proto: Proto) -> Duration {
        let t = Instant::now();
        let fleet = Fleet::spawn(rt, self.addr, n, proto, self.streams);
        let (ok, failed) = fleet.wait_connected(rt);
        fleet.report_retries();
        if failed > 0 {
            println!(
                "  !! {failed} of {n} {} streams failed: {}",
                proto.as_str(),
                fleet.first_errors()
            );
        }
        self.streams += ok;
        self.fleets.push(fleet);
        if self.published.version > 0 {
            let rx = self.tracker.expect(&self.wants(&TYPES), self.streams);
            if rx.recv_timeout(WAIT).is_err() {
                let remaining = self.tracker.abandon();
                println!(
                    "  !! initial sync incomplete after {WAIT:?}: {remaining} (stream, type) ACKs missing"
                );
            }
        }
        t.elapsed()
    }

    fn disconnect(&mut self, rt: &tokio::runtime::Runtime) {
        for f in self.fleets.drain(..) {
            f.stop(rt);
        }
        self.streams = 0;
        let t = Instant::now();
        while self.tracker.open() > 0 && t.elapsed() < WAIT {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Applies `change` to the pipeline on this thread, publishes, and waits
    /// for every stream to ACK every type whose resources changed.
    fn measure(&mut self, change: impl FnOnce(&mut Offline)) -> Result<Sample, String> {
        let t0 = Instant::now();
        change(&mut self.pipeline);
        let apply = t0.elapsed();
        let new = Arc::new(self.pipeline.snapshot().clone());
        let clone = t0.elapsed() - apply;
        self.snapshots.send_replace(new.clone());
        let version = new.version;
        let types = self.published(new);
        if types.is_empty() {
            return Err("the change changed nothing served".into());
        }
        let rx = self.tracker.expect(&self.wants(&types), self.streams);
        match rx.recv_timeout(WAIT) {
            Ok(done) => Ok(Sample {
                apply,
                clone,
                total: done.saturating_duration_since(t0),
                types,
            }),
            Err(_) => {
                let remaining = self.tracker.abandon();
                Err(format!(
                    "{remaining} (stream, type) ACKs of version {version} missing after {WAIT:?}"
                ))
            }
        }
    }

    fn next_round(&mut self) -> usize {
        self.round += 1;
        self.round
    }

    fn ingresses(&self) -> usize {
        self.pipeline
            .store()
            .list(
                &isobar::store::KindKey::new("networking.k8s.io/v1", "Ingress"),
                None,
            )
            .len()
    }

    /// `samples` measured rounds (after 3 warm-up rounds) of `kind` changes.
    fn series(&mut self, samples: usize, kind: Change) -> Result<Series, String> {
        let n = self.ingresses();
        let mut out = Series::default();
        for k in 0..samples + 3 {
            let round = self.next_round();
            let i = (round * 7919) % n;
            let event = match kind {
                Change::Ingress => apply(changed_ingress(i, round)),
                Change::Endpoints => apply(changed_slice(i, round)),
            };
            let mut calls = 0;
            let s = self.measure(|p| {
                calls = p.apply([event]).translation.calls;
            })?;
            if k >= 3 {
                out.totals.push(s.total);
                out.applies.push(s.apply);
                out.clones.push(s.clone);
                out.calls = out.calls.max(calls);
            }
        }
        out.totals.sort();
        out.applies.sort();
        out.clones.sort();
        Ok(out)
    }

    fn stop(mut self, rt: &tokio::runtime::Runtime) {
        self.disconnect(rt);
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
    }
}

#[derive(Default)]
struct Series {
    /// Change applied to the last ACK, sorted.
    totals: Vec<Duration>,
    /// Offline apply, sorted.
    applies: Vec<Duration>,
    /// Snapshot clone, sorted.
    clones: Vec<Duration>,
    /// Most plugin calls one change made.
    calls: usize,
}

#[derive(Clone, Copy)]
enum Change {
    Ingress,
    Endpoints,
}

fn report(what: &str, result: Result<Series, String>, goal_p99: Option<Duration>) {
    match result {
        Ok(s) => {
            let p99 = percentile(&s.totals, 0.99);
            let g = goal_p99
                .map(|g| format!("  [goal p99 ≤ {}: {}]", ms(g), goal(p99 <= g)))
                .unwrap_or_default();
            println!(
                "{what}: p50 {}  p99 {}  max {}  (n={}){g}\n  of which pipeline apply p50 {} p99 {} ({} plugin call(s) per change), snapshot clone p50 {} p99 {}, \
                 the rest (push, client decode, ACK) p50 {}",
                ms(percentile(&s.totals, 0.5)),
                ms(p99),
                ms(*s.totals.last().unwrap()),
                s.totals.len(),
                ms(percentile(&s.applies, 0.5)),
                ms(percentile(&s.applies, 0.99)),
                s.calls,
                ms(percentile(&s.clones, 0.5)),
                ms(percentile(&s.clones, 0.99)),
                ms(percentile(&s.totals, 0.5)
                    .saturating_sub(percentile(&s.applies, 0.5) + percentile(&s.clones, 0.5))),
            );
        }
        Err(e) => println!("{what}: FAILED: {e}"),
    }
}

fn built_pipeline(n: usize) -> (Offline, Duration) {
    let objects = universe(n);
    let t = Instant::now();
    let mut p = Offline::new(ingress_plugin());
    p.load(objects.into_iter().map(apply));
    p.rebuild();
    (p, t.elapsed())
}

fn samples() -> usize {
    if quick() { 8 } else { 30 }
}

// ---- 2 (1k): endpoint change at 1k Ingresses, SotW and delta --------------------------

/// Reports series of each kind of change with the world's current streams.
fn changes(w: &mut World, proto: Proto, kinds: &[Change]) {
    let n = w.ingresses();
    let k = w.streams;
    let all = if k == 1 {
        "the 1".to_string()
    } else {
        format!("all {k}")
    };
    for kind in kinds {
        let (what, goal) = match kind {
            Change::Endpoints => (
                "endpoint-only change -> CLA",
                Some(Duration::from_millis(20)),
            ),
            Change::Ingress if k >= 100 => (
                "one Ingress change -> RDS",
                Some(Duration::from_millis(100)),
            ),
            Change::Ingress => ("one Ingress change -> RDS", None),
        };
        report(
            &format!(
                "{what} ACKed by {all} {} {} at {n:>5} Ingresses",
                proto.as_str(),
                if k == 1 { "stream" } else { "streams" }
            ),
            w.series(samples(), *kind),
            goal,
        );
    }
}

/// 1, 2 and 4 on one served pipeline: SotW then delta, each with 1 stream
/// and then `streams`; then plugin swaps (`swaps`: plugin, note) with
/// `streams` live SotW streams, and one more series of Ingress changes on
/// the swapped-in pipeline. The world may already have one SotW stream.
fn suite(
    rt: &tokio::runtime::Runtime,
    w: &mut World,
    streams: usize,
    runtime: &Runtime,
    swaps: &[(&str, &str)],
) {
    for proto in [Proto::Sotw, Proto::Delta] {
        if w.streams == 0 {
            w.connect(rt, 1, proto);
        }
        changes(w, proto, &[Change::Ingress, Change::Endpoints]);
        let took = w.connect(rt, streams - 1, proto);
        println!(
            "{} more {} streams connected and synced in {}",
            streams - 1,
            proto.as_str(),
            ms(took)
        );
        changes(w, proto, &[Change::Ingress, Change::Endpoints]);
        w.disconnect(rt);
    }
    let took = w.connect(rt, streams, Proto::Sotw);
    println!(
        "-- plugin hot swaps at {} Ingresses with {streams} live SotW streams (connected and synced in {}); \
         the faults plugin emits a different, valid fragment",
        w.ingresses(),
        ms(took)
    );
    for (plugin, note) in swaps {
        hot_swap(w, runtime, plugin, note);
    }
    println!("after the swaps (a pipeline built by the swap, the first one dropped):");
    changes(w, Proto::Sotw, &[Change::Ingress]);
    let (opened, closed, nacks) = w.tracker.counts();
    println!(
        "server events: streams opened {opened}, closed {closed} (all by the bench, between phases), NACKs {nacks}, events dropped {}",
        w.server.dropped_events()
    );
}

// ---- 3: cold start -----------------------------------------------------------------

fn write_manifests(n: usize) -> (tempfile::TempDir, usize) {
    let dir = tempfile::tempdir().unwrap();
    let objects = universe(n);
    let mut files: HashMap<String, Vec<String>> = HashMap::new();
    for o in &objects {
        let ns = o["metadata"]["namespace"]
            .as_str()
            .unwrap_or("cluster-scoped")
            .to_string();
        files
            .entry(ns)
            .or_default()
            .push(serde_yaml::to_string(o).unwrap());
    }
    for (ns, docs) in files {
        std::fs::write(dir.path().join(format!("{ns}.yaml")), docs.join("---\n")).unwrap();
    }
    (dir, objects.len())
}

/// From reading the manifests to the first complete snapshot ACKed by a
/// client that was waiting for the server. Returns the world, serving, with
/// that one client connected.
fn cold_start(rt: &tokio::runtime::Runtime, n: usize) -> (World, Runtime) {
    let (dir, objects) = write_manifests(n);
    let bytes: u64 = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    println!(
        "\n== cold start at {n} Ingresses: {objects} objects in {:.1} MiB of YAML; one SotW client connected and waiting before the clock starts; \
         fresh Wasm engine without compile cache",
        bytes as f64 / 1048576.0
    );
    // A placeholder until the real pipeline exists; the server serves nothing (version 0).
    let mut w = World::start(rt, Offline::new(ingress_plugin()));
    w.connect(rt, 1, Proto::Sotw);
    let wasm = plugin_path("isobar-plugin-ingress");

    // As `isobar serve` starts: the manifests are parsed (on every core)
    // while the plugin compiles.
    let t0 = Instant::now();
    let ((loaded, read), (runtime, plugin, compile)) = std::thread::scope(|s| {
        let parse = s.spawn(|| {
            let loaded = isobar::source::files::load_paths(&[dir.path().to_path_buf()]);
            (loaded, t0.elapsed())
        });
        let runtime = Runtime::new(Limits::default(), None).expect("engine");
        let plugin = runtime.load_file(&wasm).expect("plugin");
        let compile = t0.elapsed();
        (
            parse.join().expect("parse thread"),
            (runtime, plugin, compile),
        )
    });
    assert!(
        loaded.errors.is_empty(),
        "manifest errors: {:?}",
        loaded.errors.first()
    );
    let t = Instant::now();
    let mut p = Offline::new(plugin);
    p.load(loaded.events());
    let store = t.elapsed();
    let t = Instant::now();
    p.rebuild();
    let rebuild = t.elapsed();
    let t = Instant::now();
    w.pipeline = p;
    let snapshot = w.publish();
    let publish = t.elapsed();
    w.published(snapshot.clone());
    let rx = w.tracker.expect(&w.wants(&TYPES), 1);
    match rx.recv_timeout(WAIT) {
        Ok(done) => {
            let total = done.saturating_duration_since(t0);
            let serve =
                done.saturating_duration_since(t0 + read.max(compile) + store + rebuild + publish);
            println!(
                "cold start {n} Ingresses -> first complete snapshot (CDS, EDS, LDS, RDS) ACKed: {}  [goal ≤ 3 s: {}]",
                ms(total),
                goal(total <= Duration::from_secs(3))
            );
            println!(
                "  stages (parse and compile at once): read+parse manifests {}, new engine + Wasm compile {}, store load {}, translate + merge + build resources (rebuild) {}, snapshot clone+publish {}, serve to ACK {}",
                ms(read),
                ms(compile),
                ms(store),
                ms(rebuild),
                ms(publish),
                ms(serve)
            );
            println!("  snapshot: {}", describe_snapshot(&snapshot));
        }
        Err(_) => println!("cold start: FAILED: no complete ACK after {WAIT:?}"),
    }
    drop(loaded);
    (w, runtime)
}

// ---- 4: hot swap -------------------------------------------------------------------

fn hot_swap(w: &mut World, runtime: &Runtime, crate_name: &str, note: &str) {
    let wasm = plugin_path(crate_name);
    let (_, closed_before, _) = w.tracker.counts();
    let streams = w.streams;
    let n = w.ingresses();
    let mut compile = Duration::ZERO;
    let mut rebuild = Duration::ZERO;
    let result = w.measure(|p| {
        // What the controller does: compile, translate the whole store with
        // the new plugin off to the side, then swap and push.
        let t = Instant::now();
        let plugin = runtime.load_file(&wasm).expect("plugin");
        compile = t.elapsed();
        let t = Instant::now();
        let old_version = p.snapshot().version;
        // Over the same store: nothing is reloaded.
        let mut next = isobar::pipeline::Pipeline::new(p.store().clone(), plugin);
        next.continue_after(old_version);
        next.rebuild();
        rebuild = t.elapsed();
        p.replace(next);
    });
    let (_, closed_after, nacks) = w.tracker.counts();
    let active = w.server.active_streams();
    match result {
        Ok(s) => println!(
            "plugin hot swap at {n} Ingresses to {crate_name} ({note}) -> all {streams} SotW streams ACKed the new version of {}: {}  [goal ≤ 500 ms: {}]; \
             streams dropped {} (active {active}), NACKs {nacks}\n  stages: Wasm compile {}, translate whole store + merge + build resources {}, snapshot clone {}, push to last ACK {}",
            s.types
                .iter()
                .map(|t| t.rsplit('.').next().unwrap())
                .collect::<Vec<_>>()
                .join("+"),
            ms(s.total),
            goal(s.total <= Duration::from_millis(500)),
            closed_after - closed_before,
            ms(compile),
            ms(rebuild),
            ms(s.clone),
            ms(s.total.saturating_sub(s.apply + s.clone)),
        ),
        Err(e) => println!(
            "plugin hot swap to {crate_name}: FAILED: {e}; streams dropped {}",
            closed_after - closed_before
        ),
    }
}

// ---- 5: 1000 streams, server in a child process --------------------------------------

/// The server alone, for memory: builds `n` Ingresses, serves them and
/// answers commands on stdin (`sync <streams>`, `change <streams>`).
fn server_child(n: usize) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (p, _) = built_pipeline(n);
    let mut w = World::start(&rt, p);
    println!("ready {} {:.0}", w.addr, resource_kib(&w.published, RDS).1);
    let mut out = std::io::stdout();
    out.flush().unwrap();
    for line in std::io::stdin().lock().lines() {
        let line = line.unwrap();
        let mut words = line.split_whitespace();
        match (
            words.next(),
            words.next().and_then(|s| s.parse::<usize>().ok()),
        ) {
            (Some("sync"), Some(streams)) => {
                w.streams = streams;
                let rx = w.tracker.expect(&w.wants(&TYPES), streams);
                let ok = rx.recv_timeout(Duration::from_secs(300)).is_ok();
                let missing = if ok { 0 } else { w.tracker.abandon() };
                println!(
                    "synced {missing} {} {}",
                    w.tracker.open(),
                    w.server.dropped_events()
                );
            }
            (Some("change"), Some(streams)) => {
                w.streams = streams;
                let round = w.next_round();
                let i = (round * 7919) % n;
                match w.measure(|p| {
                    p.apply([apply(changed_ingress(i, round))]);
                }) {
                    Ok(s) => println!(
                        "changed {} {} {}",
                        (s.apply + s.clone).as_nanos(),
                        s.total.as_nanos(),
                        w.server.dropped_events()
                    ),
                    Err(e) => println!("failed {e}"),
                }
            }
            _ => println!("unknown command {line:?}"),
        }
        out.flush().unwrap();
    }
}

/// CPU time (user + system) a process has used.
fn cpu_time(pid: u32) -> Duration {
    static TICKS: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100)
    });
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may contain spaces: state is
    // field 3, utime 14, stime 15.
    let rest: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let field = |n: usize| {
        rest.get(n - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_secs_f64((field(14) + field(15)) as f64 / ticks as f64)
}

/// 5: `streams` SotW streams on a server that runs alone in a child process
/// (so its RSS and CPU time are its own); the clients are here.
fn many_streams(rt: &tokio::runtime::Runtime, n: usize, streams: usize, push: bool, note: &str) {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--server-child", &n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("server child");
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut read_line = || {
        let mut l = String::new();
        stdout.read_line(&mut l).unwrap();
        l.trim().to_string()
    };
    let ready = read_line();
    let mut words = ready.split_whitespace().skip(1);
    let addr: SocketAddr = words.next().expect("child address").parse().unwrap();
    let route_kib = words.next().unwrap_or("?").to_string();
    println!(
        "\n== {streams} concurrent SotW streams at {n} Ingresses ({note}; RDS {route_kib} KiB); \
         the server runs alone in a child process, the clients here"
    );
    let rss0 = status_kib(pid, "VmRSS:");

    // One stream first, so what every stream shares (the prepared snapshot,
    // the server's first allocations) is not charged to the others.
    let one = Fleet::spawn(rt, addr, 1, Proto::Sotw, 0);
    one.wait_connected(rt);
    writeln!(stdin, "sync 1").unwrap();
    let synced_one = read_line();
    let rss1 = status_kib(pid, "VmRSS:");

    let t = Instant::now();
    let cpu = cpu_time(pid);
    let rest = Fleet::spawn(rt, addr, streams - 1, Proto::Sotw, 1);
    let (ok, failed) = rest.wait_connected(rt);
    rest.report_retries();
    let total = ok + 1;
    if failed > 0 {
        println!(
            "  !! {failed} of {} streams failed to open: {}; measuring with the {total} that opened",
            streams - 1,
            rest.first_errors()
        );
    }
    writeln!(stdin, "sync {total}").unwrap();
    let synced_all = read_line();
    let sync_time = t.elapsed();
    let sync_cpu = cpu_time(pid).saturating_sub(cpu);
    let rss_all = status_kib(pid, "VmRSS:");
    let holding = rest.state.synced(1) + one.state.synced(1);
    let ok = |line: &str| line.split_whitespace().nth(1) == Some("0");
    println!(
        "{total} streams connected and synced in {} (server CPU {}){}",
        ms(sync_time),
        ms(sync_cpu),
        if ok(&synced_all) && ok(&synced_one) && holding == total {
            String::new()
        } else {
            format!(" !! incomplete: server {synced_all:?}, clients holding every type {holding}")
        }
    );
    let per_stream = (rss_all.saturating_sub(rss1)) as f64 / (total - 1).max(1) as f64;
    println!(
        "server RSS: {} MiB with no stream, {} MiB with 1, {} MiB with {total} -> {per_stream:.0} KiB per stream  [goal ≤ 256 KiB: {}]",
        rss0 / 1024,
        rss1 / 1024,
        rss_all / 1024,
        goal(per_stream <= 256.0)
    );

    if push {
        let mut times = Vec::new();
        let mut applies = Vec::new();
        let rounds = if quick() { 3 } else { 10 };
        let mut cpu = Duration::ZERO;
        for k in 0..rounds + 1 {
            let before = cpu_time(pid);
            writeln!(stdin, "change {total}").unwrap();
            let r = read_line();
            let f: Vec<&str> = r.split_whitespace().collect();
            if f.first() != Some(&"changed") {
                println!("  !! change failed: {r}");
                break;
            }
            if k > 0 {
                applies.push(Duration::from_nanos(f[1].parse().unwrap()));
                times.push(Duration::from_nanos(f[2].parse().unwrap()));
                cpu += cpu_time(pid).saturating_sub(before);
            }
        }
        let rss_after = status_kib(pid, "VmRSS:");
        let hwm = status_kib(pid, "VmHWM:");
        if !times.is_empty() {
            times.sort();
            applies.sort();
            println!(
                "one Ingress change -> RDS ACKed by all {total} streams: p50 {}  max {}  (n={}; pipeline apply + snapshot clone p50 {}; server CPU per change {})",
                ms(percentile(&times, 0.5)),
                ms(*times.last().unwrap()),
                times.len(),
                ms(percentile(&applies, 0.5)),
                ms(cpu / times.len() as u32),
            );
        }
        println!(
            "server RSS after the pushes: {} MiB ({:.0} KiB per stream over the 1-stream figure), peak {} MiB",
            rss_after / 1024,
            rss_after.saturating_sub(rss1) as f64 / (total - 1).max(1) as f64,
            hwm / 1024
        );
    }
    drop(stdin);
    one.stop(rt);
    rest.stop(rt);
    let _ = child.kill();
    let _ = child.wait();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--server-child") {
        server_child(args[i + 1].parse().unwrap());
        return;
    }
    let started = Instant::now();
    machine();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (small, big, streams, many) = if quick() {
        (200, 1_000, 20, 100)
    } else {
        (1_000, 10_000, 100, 1_000)
    };

    // 1, 2 and 4 at the small size, with a fresh engine so that the
    // first swaps compile.
    {
        let (p, built) = built_pipeline(small);
        println!(
            "\n== {small} Ingresses: pipeline built in {} -> {}",
            ms(built),
            describe_snapshot(p.snapshot())
        );
        let mut w = World::start(&rt, p);
        let runtime = Runtime::new(Limits::default(), None).expect("engine");
        suite(
            &rt,
            &mut w,
            streams,
            &runtime,
            &[
                ("isobar-plugin-faults", "new component: compiled now"),
                ("isobar-plugin-ingress", "new component: compiled now"),
                (
                    "isobar-plugin-faults",
                    "component already compiled by this engine",
                ),
                (
                    "isobar-plugin-ingress",
                    "back; component already compiled by this engine",
                ),
            ],
        );
        w.stop(&rt);
    }

    // 3: cold start at the large size; the world it leaves serves 1, 2 and
    // 4 at the large size (its engine has compiled only the Ingress plugin).
    let (mut w, runtime) = cold_start(&rt, big);
    println!(
        "(every route change re-sends the whole RouteConfiguration ingress_http: {:.0} KiB per stream)",
        w.published
            .of_type(RDS)
            .and_then(|m| m.get("ingress_http"))
            .map_or(0.0, |r| r.body.len() as f64 / 1024.0)
    );
    suite(
        &rt,
        &mut w,
        streams,
        &runtime,
        &[
            ("isobar-plugin-faults", "new component: compiled now"),
            (
                "isobar-plugin-ingress",
                "back; component already compiled by this engine",
            ),
        ],
    );
    w.stop(&rt);
    drop(runtime);

    // 5: many streams, memory per stream, in a child process; then the same
    // with a tiny universe, to tell the fixed cost of a stream from the part
    // that grows with the largest resource it is sent.
    many_streams(
        &rt,
        small,
        many,
        true,
        "a smaller universe than 10k, to keep the run tractable",
    );
    many_streams(
        &rt,
        small / 10,
        many,
        false,
        "a tiny universe: the fixed cost of a stream",
    );

    println!("\nload average at the end: {}", loadavg());
    println!("bench wall time: {:.1} s", started.elapsed().as_secs_f64());
}
