//! ADS behaviour through a real tonic client (envoy-types) over a real TCP
//! loopback socket. Every wait is bounded by `WAIT`; nothing sleeps. To show
//! that something was *not* sent, a test "syncs": it subscribes to a fresh
//! probe type, which the server always answers, until the answer carries the
//! expected snapshot version. A stream handles requests and snapshots in
//! order, so any push that was due would have arrived before that answer.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{DataSource, Locality, Node, data_source};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    GenericSecret, Secret, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use futures::future::join_all;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;

use super::*;
use crate::store::{KindKey, ObjectKey};

const WAIT: Duration = Duration::from_secs(20);
const LDS: &str = type_url::LISTENER;
const RDS: &str = type_url::ROUTE;
const CDS: &str = type_url::CLUSTER;
const EDS: &str = type_url::ENDPOINT;
const SDS: &str = type_url::SECRET;

// ---- synthetic snapshots ------------------------------------------------

fn source(name: &str) -> ObjectKey {
    ObjectKey::new(
        KindKey::new("networking.k8s.io/v1", "Ingress"),
        "default",
        name,
    )
}

/// A small Envoy message of the given type whose content depends on `variant`.
fn resource(type_url: &str, name: &str, variant: &str) -> Resource {
    let name = name.to_string();
    let sources = vec![source(&format!("{name}-src"))];
    match type_url {
        LDS => Resource::encode(
            type_url,
            name.clone(),
            &Listener {
                name,
                stat_prefix: variant.into(),
                ..Default::default()
            },
            sources,
        ),
        CDS => Resource::encode(
            type_url,
            name.clone(),
            &Cluster {
                name,
                alt_stat_name: variant.into(),
                ..Default::default()
            },
            sources,
        ),
        RDS => Resource::encode(
            type_url,
            name.clone(),
            &RouteConfiguration {
                name,
                response_headers_to_remove: vec![variant.into()],
                ..Default::default()
            },
            sources,
        ),
        EDS => Resource::encode(
            type_url,
            name.clone(),
            &ClusterLoadAssignment {
                cluster_name: name,
                endpoints: vec![LocalityLbEndpoints {
                    locality: Some(Locality {
                        region: variant.into(),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                ..Default::default()
            },
            sources,
        ),
        SDS => Resource::encode(
            type_url,
            name.clone(),
            &Secret {
                name,
                r#type: Some(secret::Type::GenericSecret(GenericSecret {
                    secret: Some(DataSource {
                        specifier: Some(data_source::Specifier::InlineString(variant.into())),
                        ..Default::default()
                    }),
                    ..Default::default()
                })),
            },
            sources,
        ),
        other => panic!("no test resource for {other}"),
    }
}

/// The desired state, edited by tests and published as snapshots.
#[derive(Clone, Default)]
struct World(BTreeMap<(&'static str, String), String>);

impl World {
    /// Two of each, one secret; every resource at variant "v1".
    fn base() -> Self {
        let mut w = World::default();
        for (t, n) in [
            (LDS, "http"),
            (LDS, "https"),
            (RDS, "r-http"),
            (RDS, "r-https"),
            (CDS, "shop"),
            (CDS, "cart"),
            (EDS, "shop"),
            (EDS, "cart"),
            (SDS, "cert"),
        ] {
            w.set(t, n, "v1");
        }
        w
    }

    fn set(&mut self, t: &'static str, name: &str, variant: &str) -> &mut Self {
        self.0.insert((t, name.to_string()), variant.to_string());
        self
    }

    fn remove(&mut self, t: &'static str, name: &str) -> &mut Self {
        self.0.remove(&(t, name.to_string()));
        self
    }

    fn snapshot(&self, version: u64) -> Snapshot {
        let mut snap = Snapshot {
            version,
            ..Default::default()
        };
        for ((t, name), variant) in &self.0 {
            snap.resources
                .entry(t.to_string())
                .or_default()
                .insert(name.clone(), Arc::new(resource(t, name, variant)));
        }
        snap
    }

    fn version_of(&self, t: &'static str, name: &str) -> String {
        resource(t, name, &self.0[&(t, name.to_string())]).version
    }
}

/// Resource names in a SotW response (every test type has its name in field 1).
fn names(r: &DiscoveryResponse) -> Vec<String> {
    #[derive(Clone, PartialEq, prost::Message)]
    struct Named {
        #[prost(string, tag = "1")]
        name: String,
    }
    r.resources
        .iter()
        .map(|any| {
            assert_eq!(any.type_url, r.type_url);
            Named::decode(&any.value[..])
                .expect("resource decodes")
                .name
        })
        .collect()
}

fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<String> {
    r.resources.iter().map(|x| x.name.clone()).collect()
}

// ---- server and clients -------------------------------------------------

struct Harness {
    snapshots: watch::Sender<Arc<Snapshot>>,
    events: mpsc::Receiver<XdsEvent>,
    addr: SocketAddr,
    server: XdsServer,
    stop_tx: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), ServeError>>>,
}

impl Harness {
    async fn start(initial: Snapshot) -> Self {
        Self::start_with(initial, XdsLimits::default()).await
    }

    async fn start_with(initial: Snapshot, limits: XdsLimits) -> Self {
        let (snapshots, rx) = watch::channel(Arc::new(initial));
        let (tx, events) = mpsc::channel(crate::xds::server::EVENT_QUEUE);
        let server = XdsServer::with_limits(rx, Some(tx), limits);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            server.clone(),
            async move {
                let _ = stopped.await;
            },
            None,
        ));
        Harness {
            snapshots,
            events,
            addr,
            server,
            stop_tx: Some(stop),
            task: Some(task),
        }
    }

    fn publish(&self, snapshot: Snapshot) {
        self.publish_arc(Arc::new(snapshot));
    }

    fn publish_arc(&self, snapshot: Arc<Snapshot>) {
        self.snapshots.send_replace(snapshot);
    }

    async fn client(&self) -> AggregatedDiscoveryServiceClient<tonic::transport::Channel> {
        timeout(
            WAIT,
            AggregatedDiscoveryServiceClient::connect(format!("http://{}", self.addr)),
        )
        .await
        .expect("connect timed out")
        .expect("connect")
    }

    async fn sotw(&self, node: &str) -> SotwClient {
        SotwClient::open(self.client().await, node).await
    }

    async fn delta(&self, node: &str) -> DeltaClient {
        DeltaClient::open(self.client().await, node).await
    }

    /// The next event that satisfies `want` (others are skipped).
    async fn event(&mut self, want: impl Fn(&XdsEvent) -> bool) -> XdsEvent {
        timeout(WAIT, async {
            loop {
                let e = self.events.recv().await.expect("event channel open");
                if want(&e) {
                    return e;
                }
            }
        })
        .await
        .expect("timed out waiting for an event")
    }

    /// Events already emitted (streams emit before they respond, so after a
    /// response arrives, everything that led to it is here).
    fn drain(&mut self) -> Vec<XdsEvent> {
        std::iter::from_fn(|| self.events.try_recv().ok()).collect()
    }

    async fn stop(&mut self) -> Result<(), ServeError> {
        let _ = self.stop_tx.take().unwrap().send(());
        timeout(WAIT, self.task.take().unwrap())
            .await
            .expect("shutdown timed out")
            .unwrap()
    }
}

fn node(id: &str) -> Option<Node> {
    Some(Node {
        id: id.into(),
        ..Default::default()
    })
}

struct SotwClient {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: tonic::Streaming<DiscoveryResponse>,
    node: String,
    probes: usize,
}

impl SotwClient {
    async fn open(
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        node: &str,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let rx = timeout(
            WAIT,
            client.stream_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("open timed out")
        .expect("open")
        .into_inner();
        SotwClient {
            tx,
            rx,
            node: node.into(),
            probes: 0,
        }
    }

    async fn send(&self, r: DiscoveryRequest) {
        self.tx
            .send(DiscoveryRequest {
                node: node(&self.node),
                ..r
            })
            .await
            .expect("request stream open");
    }

    async fn request(&self, type_url: &str, names: &[&str], version: &str, nonce: &str) {
        self.send(DiscoveryRequest {
            type_url: type_url.into(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: version.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        })
        .await
    }

    async fn subscribe(&self, type_url: &str, names: &[&str]) {
        self.request(type_url, names, "", "").await
    }

    async fn ack(&self, r: &DiscoveryResponse, names: &[&str]) {
        self.request(&r.type_url, names, &r.version_info, &r.nonce)
            .await
    }

    async fn nack(&self, r: &DiscoveryResponse, names: &[&str], good_version: &str, message: &str) {
        self.send(DiscoveryRequest {
            type_url: r.type_url.clone(),
            resource_names: names.iter().map(|n| n.to_string()).collect(),
            version_info: good_version.into(),
            response_nonce: r.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 13,
                message: message.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        timeout(WAIT, self.rx.message())
            .await
            .expect("timed out waiting for a response")
            .expect("stream failed")
            .expect("stream ended")
    }

    /// Asserts nothing but probe answers arrive until the stream has taken
    /// in snapshot `version`.
    async fn sync(&mut self, version: &str) {
        for _ in 0..1000 {
            self.probes += 1;
            let probe = format!("type.googleapis.com/isobar.test.Probe{}", self.probes);
            self.subscribe(&probe, &["p"]).await;
            let r = self.recv().await;
            assert_eq!(r.type_url, probe, "unexpected push while syncing: {r:?}");
            if r.version_info == version {
                return;
            }
        }
        panic!("stream never reached version {version}");
    }
}

struct DeltaClient {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: tonic::Streaming<DeltaDiscoveryResponse>,
    node: String,
    probes: usize,
}

impl DeltaClient {
    async fn open(
        mut client: AggregatedDiscoveryServiceClient<tonic::transport::Channel>,
        node: &str,
    ) -> Self {
        let (tx, rx) = mpsc::channel(64);
        let rx = timeout(
            WAIT,
            client.delta_aggregated_resources(ReceiverStream::new(rx)),
        )
        .await
        .expect("open timed out")
        .expect("open")
        .into_inner();
        DeltaClient {
            tx,
            rx,
            node: node.into(),
            probes: 0,
        }
    }

    async fn send(&self, r: DeltaDiscoveryRequest) {
        self.tx
            .send(DeltaDiscoveryRequest {
                node: node(&self.node),
                ..r
            })
            .await
            .expect("request stream open");
    }

    async fn subscribe(&self, type_url: &str, subscribe: &[&str], unsubscribe: &[&str]) {
        self.send(DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: subscribe.iter().map(|n| n.to_string()).collect(),
            resource_names_unsubscribe: unsubscribe.iter().map(|n| n.to_string()).collect(),
            ..Default::default()
        })
        .await
    }

    async fn ack(&self, r: &DeltaDiscoveryResponse) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            ..Default::default()
        })
        .await
    }

    async fn nack(&self, r: &DeltaDiscoveryResponse, message: &str) {
        self.send(DeltaDiscoveryRequest {
            type_url: r.type_url.clone(),
            response_nonce: r.nonce.clone(),
            error_detail: Some(RpcStatus {
                code: 13,
                message: message.into(),
                details: vec![],
            }),
            ..Default::default()
        })
        .await
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        timeout(WAIT, self.rx.message())
            .await
            .expect("timed out waiting for a response")
            .expect("stream failed")
            .expect("stream ended")
    }

    async fn sync(&mut self, version: &str) {
        for _ in 0..1000 {
            self.probes += 1;
            let probe = format!("type.googleapis.com/isobar.test.Probe{}", self.probes);
            self.subscribe(&probe, &["p"], &[]).await;
            let r = self.recv().await;
            assert_eq!(r.type_url, probe, "unexpected push while syncing: {r:?}");
            if r.system_version_info == version {
                return;
            }
        }
        panic!("stream never reached version {version}");
    }
}

fn is_ack(e: &XdsEvent, type_url: &str, version: &str) -> bool {
    matches!(e, XdsEvent::Ack(a) if a.type_url == type_url && a.version == version)
}

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
    let connect = || async {
        timeout(
            WAIT,
            AggregatedDiscoveryServiceClient::connect(format!("http://{addr}")),
        )
        .await
        .unwrap()
        .unwrap()
    };

    let mut c = SotwClient::open(connect().await, "node-a").await;
    c.subscribe(CDS, &[]).await;
    assert_eq!(names(&c.recv().await), ["cart", "shop"]);

    let mut d = DeltaClient::open(connect().await, "node-b").await;
    d.subscribe(CDS, &[], &[]).await;
    assert_eq!(delta_names(&d.recv().await), ["cart", "shop"]);
}

// ---- delta ----------------------------------------------------------------

#[tokio::test]
async fn delta_initial_sync_and_ack() {
    let world = World::base();
    let mut h = Harness::start(world.snapshot(1)).await;
    let mut d = h.delta("node-d").await;
    d.subscribe(CDS, &[], &[]).await;
    let r = d.recv().await;
    assert_eq!(
        (r.type_url.as_str(), r.system_version_info.as_str()),
        (CDS, "1")
    );
    assert_eq!(delta_names(&r), ["cart", "shop"]);
    assert!(r.removed_resources.is_empty());
    for x in &r.resources {
        assert_eq!(x.version, world.version_of(CDS, &x.name));
        let any = x.resource.as_ref().unwrap();
        assert_eq!(any.type_url, CDS);
        assert_eq!(Cluster::decode(&any.value[..]).unwrap().name, x.name);
    }
    d.ack(&r).await;
    let XdsEvent::Ack(ack) = h.event(|e| is_ack(e, CDS, "1")).await else {
        unreachable!()
    };
    assert_eq!(
        (ack.protocol, ack.node.as_str()),
        (Protocol::Delta, "node-d")
    );
}

#[tokio::test]
async fn delta_update_sends_only_changed_resources() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut d = h.delta("node-d").await;
    d.subscribe(CDS, &[], &[]).await;
    let r = d.recv().await;
    d.ack(&r).await;

    h.publish(world.set(CDS, "shop", "v2").snapshot(2));
    let r2 = d.recv().await;
    assert_eq!(r2.system_version_info, "2");
    assert_eq!(delta_names(&r2), ["shop"]);
    assert_eq!(r2.resources[0].version, world.version_of(CDS, "shop"));
    assert!(r2.removed_resources.is_empty());
    d.ack(&r2).await;

    // A snapshot that changes other types sends nothing for clusters.
    h.publish(world.set(LDS, "http", "v3").snapshot(3));
    d.sync("3").await;
}

#[tokio::test]
async fn delta_removal_and_unsubscribe() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut d = h.delta("node-d").await;
    d.subscribe(CDS, &[], &[]).await;
    let cds = d.recv().await;
    d.ack(&cds).await;
    d.subscribe(EDS, &["shop", "cart"], &[]).await;
    let eds = d.recv().await;
    assert_eq!(delta_names(&eds), ["cart", "shop"]);
    d.ack(&eds).await;

    // Deleted from the snapshot.
    h.publish(world.remove(CDS, "cart").snapshot(2));
    let r = d.recv().await;
    assert_eq!(
        (r.type_url.as_str(), r.system_version_info.as_str()),
        (CDS, "2")
    );
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["cart"]);
    d.ack(&r).await;

    // Unsubscribed.
    d.subscribe(EDS, &[], &["cart"]).await;
    let r = d.recv().await;
    assert_eq!(r.type_url, EDS);
    assert!(r.resources.is_empty());
    assert_eq!(r.removed_resources, ["cart"]);
    d.ack(&r).await;

    // No longer subscribed: its changes are not sent.
    h.publish(world.set(EDS, "cart", "v3").snapshot(3));
    d.sync("3").await;
}

#[tokio::test]
async fn delta_initial_resource_versions_are_honoured() {
    let mut world = World::base();
    world.set(CDS, "extra", "v1");
    let h = Harness::start(world.snapshot(5)).await;
    let mut d = h.delta("node-d").await;
    d.send(DeltaDiscoveryRequest {
        type_url: CDS.into(),
        initial_resource_versions: [
            ("shop".to_string(), world.version_of(CDS, "shop")),
            ("cart".to_string(), "outdated".to_string()),
            ("gone".to_string(), "whatever".to_string()),
        ]
        .into(),
        ..Default::default()
    })
    .await;
    let r = d.recv().await;
    assert_eq!(
        delta_names(&r),
        ["cart", "extra"],
        "shop is up to date and not resent"
    );
    assert_eq!(r.removed_resources, ["gone"]);

    // Explicitly re-subscribing to a resource the client has forces a resend.
    d.ack(&r).await;
    d.subscribe(EDS, &["shop"], &[]).await;
    let eds = d.recv().await;
    d.ack(&eds).await;
    d.subscribe(EDS, &["shop"], &[]).await;
    let again = d.recv().await;
    assert_eq!(delta_names(&again), ["shop"]);
}

#[tokio::test]
async fn delta_nack_then_recovery() {
    let mut world = World::base();
    let mut h = Harness::start(world.snapshot(1)).await;
    let mut d = h.delta("node-d").await;
    d.subscribe(LDS, &[], &[]).await;
    let r = d.recv().await;
    d.ack(&r).await;

    h.publish(world.set(LDS, "https", "bad").snapshot(2));
    let bad = d.recv().await;
    assert_eq!(delta_names(&bad), ["https"]);
    d.nack(&bad, "Error adding/updating listener(s) https: bad")
        .await;
    let XdsEvent::Nack(nack) = h.event(|e| matches!(e, XdsEvent::Nack(_))).await else {
        unreachable!()
    };
    assert_eq!(
        (nack.protocol, nack.version.as_str(), nack.nonce.as_str()),
        (Protocol::Delta, "2", bad.nonce.as_str())
    );
    assert_eq!(nack.resource_names, ["https"]);
    assert_eq!(nack.sources, [source("https-src")]);

    // Not resent in a loop; an unrelated listener change sends only that one.
    d.sync("2").await;
    h.publish(world.set(LDS, "http", "v3").snapshot(3));
    let other = d.recv().await;
    assert_eq!(delta_names(&other), ["http"]);
    d.ack(&other).await;

    // The fix goes out.
    h.publish(world.set(LDS, "https", "fixed").snapshot(4));
    let fixed = d.recv().await;
    assert_eq!(
        (delta_names(&fixed), fixed.system_version_info.as_str()),
        (vec!["https".to_string()], "4")
    );
    d.ack(&fixed).await;
    h.event(|e| is_ack(e, LDS, "4")).await;
}

#[tokio::test]
async fn delta_explicit_names_and_wildcard_star() {
    let mut world = World::base();
    let h = Harness::start(world.snapshot(1)).await;
    let mut d = h.delta("node-d").await;
    // Naming resources on the first request: no legacy wildcard.
    d.subscribe(CDS, &["shop"], &[]).await;
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["shop"]);
    d.ack(&r).await;
    // `*` adds the rest.
    d.subscribe(CDS, &["*"], &[]).await;
    let r = d.recv().await;
    assert_eq!(delta_names(&r), ["cart"]);
    d.ack(&r).await;
    // Dropping `*` removes what only the wildcard covered.
    d.subscribe(CDS, &[], &["*"]).await;
    let r = d.recv().await;
    assert_eq!(r.removed_resources, ["cart"]);
    d.ack(&r).await;
    h.publish(world.set(CDS, "cart", "v2").snapshot(2));
    d.sync("2").await;
}

// ---- named-only resources (API listeners for proxyless gRPC) -------------

/// `base()` plus an API listener that only a client naming it may see.
fn with_api_listener(world: &World, version: u64, variant: &str) -> Snapshot {
    let mut snap = world.snapshot(version);
    let mut api = resource(LDS, "shop.example.com", variant);
    api.named_only = true;
    snap.resources
        .get_mut(LDS)
        .unwrap()
        .insert(api.name.clone(), Arc::new(api));
    snap
}

#[tokio::test]
async fn named_only_resources_never_reach_wildcard_subscribers() {
    let world = World::base();
    let h = Harness::start(with_api_listener(&world, 1, "v1")).await;

    // Envoy: the legacy wildcard (SotW) and `*` (delta).
    let mut envoy = h.sotw("envoy").await;
    envoy.subscribe(LDS, &[]).await;
    let lds = envoy.recv().await;
    assert_eq!(names(&lds), ["http", "https"]);
    envoy.ack(&lds, &[]).await;
    let mut envoy_delta = h.delta("envoy-delta").await;
    envoy_delta.subscribe(LDS, &["*"], &[]).await;
    let dl = envoy_delta.recv().await;
    assert_eq!(delta_names(&dl), ["http", "https"]);
    envoy_delta.ack(&dl).await;

    // A proxyless gRPC client names the listener it dials.
    let mut grpc = h.sotw("grpc").await;
    grpc.subscribe(LDS, &["shop.example.com"]).await;
    let g = grpc.recv().await;
    assert_eq!(names(&g), ["shop.example.com"]);
    grpc.ack(&g, &["shop.example.com"]).await;
    let mut grpc_delta = h.delta("grpc-delta").await;
    grpc_delta.subscribe(LDS, &["shop.example.com"], &[]).await;
    let gd = grpc_delta.recv().await;
    assert_eq!(delta_names(&gd), ["shop.example.com"]);
    grpc_delta.ack(&gd).await;

    // A change to the API listener alone reaches the clients that named it
    // and nobody else.
    h.publish(with_api_listener(&world, 2, "v2"));
    let g2 = grpc.recv().await;
    assert_eq!(
        (names(&g2), g2.version_info.as_str()),
        (vec!["shop.example.com".to_string()], "2")
    );
    let gd2 = grpc_delta.recv().await;
    assert_eq!(delta_names(&gd2), ["shop.example.com"]);
    envoy.sync("2").await;
    envoy_delta.sync("2").await;

    // A wildcard that also names the API listener gets it too.
    let mut both = h.delta("both").await;
    both.subscribe(LDS, &["*", "shop.example.com"], &[]).await;
    let b = both.recv().await;
    assert_eq!(delta_names(&b), ["http", "https", "shop.example.com"]);
    let mut both_sotw = h.sotw("both-sotw").await;
    both_sotw.subscribe(LDS, &["*", "shop.example.com"]).await;
    let b = both_sotw.recv().await;
    assert_eq!(names(&b), ["http", "https", "shop.example.com"]);

    // Removing it: delta tells the client that named it; the wildcard
    // delta client never had it, so it hears nothing.
    h.publish(world.snapshot(3));
    let gd3 = grpc_delta.recv().await;
    assert_eq!(gd3.removed_resources, ["shop.example.com"]);
    let g3 = grpc.recv().await;
    assert!(names(&g3).is_empty());
    envoy.sync("3").await;
    envoy_delta.sync("3").await;
}

/// Clients that misbehave on purpose (issue 13).
mod hostile;
