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
use envoy_types::pb::envoy::config::core::v3::{DataSource, Locality, data_source};
use envoy_types::pb::envoy::config::endpoint::v3::{ClusterLoadAssignment, LocalityLbEndpoints};
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    GenericSecret, Secret, secret,
};
use envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;
use futures::future::join_all;
use prost::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::timeout;

use isobar::store::{KindKey, ObjectKey};
use isobar::testing::ads::{DeltaResponse, DeltaStream, SotwResponse, SotwStream};
use isobar::xds::*;

mod delta;
mod hostile;
mod named_only;
mod sotw;
mod staging;

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
fn names(r: &SotwResponse) -> Vec<String> {
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

fn delta_names(r: &DeltaResponse) -> Vec<String> {
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
        let (tx, events) = mpsc::channel(isobar::xds::server::EVENT_QUEUE);
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

    async fn sotw(&self, node: &str) -> SotwStream {
        SotwStream::open(self.addr, node).await
    }

    async fn delta(&self, node: &str) -> DeltaStream {
        DeltaStream::open(self.addr, node).await
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

fn is_ack(e: &XdsEvent, type_url: &str, version: &str) -> bool {
    matches!(e, XdsEvent::Ack(a) if a.type_url == type_url && a.version == version)
}
