//! The issue-13 abuses against a running `isobar serve`, for measuring
//! (RSS, log volume, time to recover) on a release build. Loopback only.
//!
//! ```text
//! cargo run --release -p isobar --example abuse -- names 127.0.0.1:18000 8
//! cargo run --release -p isobar --example abuse -- idle 127.0.0.1:18000 2000
//! cargo run --release -p isobar --example abuse -- nacks 127.0.0.1:18000 200 256
//! cargo run --release -p isobar --example abuse -- streams 127.0.0.1:18000 2000
//! ```

use std::time::{Duration, Instant};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";

type Client = AggregatedDiscoveryServiceClient<tonic::transport::Channel>;

async fn client(addr: &str) -> Client {
    Client::connect(format!("http://{addr}"))
        .await
        .expect("connect")
        .max_encoding_message_size(usize::MAX)
}

fn node() -> Option<Node> {
    Some(Node {
        id: "abuse".into(),
        ..Default::default()
    })
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    let n = |i: usize, d: usize| arg(i).parse().unwrap_or(d);
    let addr = arg(1);
    let started = Instant::now();
    match arg(0).as_str() {
        // A request of `mb` MiB of names, then the same names under three
        // made-up type URLs.
        "names" => {
            let mb = n(2, 8);
            let names: Vec<String> = (0..(mb << 20) / 12).map(|i| format!("c{i:09}")).collect();
            let (tx, rx) = mpsc::channel(8);
            let mut responses = client(&addr)
                .await
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await
                .expect("open")
                .into_inner();
            for t in [EDS, "made.up/A", "made.up/B", "made.up/C"] {
                let _ = tx
                    .send(DiscoveryRequest {
                        node: node(),
                        type_url: t.into(),
                        resource_names: names.clone(),
                        ..Default::default()
                    })
                    .await;
            }
            let end = tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match responses.message().await {
                        Ok(Some(_)) => continue,
                        other => return other,
                    }
                }
            })
            .await;
            println!(
                "names: {} names per request; stream ended: {end:?}",
                names.len()
            );
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // `count` TCP connections that never say anything.
        "idle" => {
            let count = n(2, 2000);
            let mut held = Vec::new();
            for _ in 0..count {
                if let Ok(s) = tokio::net::TcpStream::connect(&addr).await {
                    held.push(s);
                }
            }
            let open = |held: &mut Vec<tokio::net::TcpStream>| {
                // Read what the server sent (its SETTINGS) until it would
                // block (open) or ends (closed).
                held.retain(|s| {
                    let mut b = [0u8; 4096];
                    loop {
                        match s.try_read(&mut b) {
                            Ok(0) => return false,
                            Ok(_) => continue,
                            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                            Err(_) => return false,
                        }
                    }
                });
                held.len()
            };
            for t in [0u64, 1, 5, 12, 20] {
                tokio::time::sleep_until(
                    tokio::time::Instant::from_std(started) + Duration::from_secs(t),
                )
                .await;
                println!("idle: t={t}s open={}", open(&mut held));
            }
        }
        // `count` NACKs of `kib` KiB, all for the same nonce.
        "nacks" => {
            let (count, kib) = (n(2, 200), n(3, 256));
            let (tx, rx) = mpsc::channel(8);
            let mut responses = client(&addr)
                .await
                .stream_aggregated_resources(ReceiverStream::new(rx))
                .await
                .expect("open")
                .into_inner();
            tx.send(DiscoveryRequest {
                node: node(),
                type_url: LDS.into(),
                ..Default::default()
            })
            .await
            .unwrap();
            let lds = responses.message().await.unwrap().unwrap();
            let message = format!("listener: {}", "x".repeat(kib << 10));
            for _ in 0..count {
                tx.send(DiscoveryRequest {
                    node: node(),
                    type_url: LDS.into(),
                    response_nonce: lds.nonce.clone(),
                    error_detail: Some(RpcStatus {
                        code: 13,
                        message: message.clone(),
                        details: vec![],
                    }),
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            tokio::time::sleep(Duration::from_secs(3)).await;
            println!(
                "nacks: sent {count} of {kib} KiB in {:?}",
                started.elapsed()
            );
        }
        // `count` streams on one connection, each sending one request.
        "streams" => {
            let count = n(2, 2000);
            let c = client(&addr).await;
            let mut opened = 0;
            let mut keep = Vec::new();
            for _ in 0..count {
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.try_send(DiscoveryRequest {
                    node: node(),
                    type_url: LDS.into(),
                    ..Default::default()
                });
                let mut c = c.clone();
                let open = tokio::time::timeout(
                    Duration::from_millis(200),
                    c.stream_aggregated_resources(ReceiverStream::new(rx)),
                )
                .await;
                if let Ok(Ok(r)) = open {
                    opened += 1;
                    keep.push((tx, r.into_inner()));
                }
            }
            println!("streams: {opened} of {count} opened on one connection");
        }
        other => eprintln!("unknown abuse {other:?}: names | idle | nacks | streams"),
    }
}
