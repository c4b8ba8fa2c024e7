//! Clients that misbehave on purpose: what one client may make the server
//! hold is bounded, and going past a bound says why (issue 13, items 7-10).

use bytes::{Buf, BufMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::Code;
use tonic::codec::{DecodeBuf, EncodeBuf};

use super::*;
use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use isobar::testing::ads::node;
use isobar::xds::server::{DELTA_PATH, SOTW_PATH};
use tokio_stream::wrappers::ReceiverStream;

/// gRPC messages as raw bytes, whatever they hold.
#[derive(Clone, Copy, Default)]
struct Raw;

impl tonic::codec::Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = Raw;
    type Decoder = Raw;

    fn encoder(&mut self) -> Raw {
        Raw
    }

    fn decoder(&mut self) -> Raw {
        Raw
    }
}

impl tonic::codec::Encoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for Raw {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

/// A stream on `path` whose requests are whatever bytes the test sends.
async fn raw_stream(
    addr: SocketAddr,
    path: &'static str,
) -> (mpsc::Sender<Vec<u8>>, tonic::Streaming<Vec<u8>>) {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX);
    grpc.ready().await.unwrap();
    let (tx, rx) = mpsc::channel(16);
    let responses = grpc
        .streaming(
            tonic::Request::new(ReceiverStream::new(rx)),
            http::uri::PathAndQuery::from_static(path),
            Raw,
        )
        .await
        .unwrap()
        .into_inner();
    (tx, responses)
}

/// How the stream ended: the status of its trailers, once every response
/// before them was read.
async fn end_status(responses: &mut tonic::Streaming<Vec<u8>>) -> tonic::Status {
    timeout(WAIT, async {
        loop {
            match responses.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return tonic::Status::ok("ended with grpc-status 0"),
                Err(status) => return status,
            }
        }
    })
    .await
    .expect("the stream did not end")
}

fn sotw_request(type_url: &str, names: impl IntoIterator<Item = String>) -> Vec<u8> {
    DiscoveryRequest {
        node: node("hostile"),
        type_url: type_url.into(),
        resource_names: names.into_iter().collect(),
        ..Default::default()
    }
    .encode_to_vec()
}

/// Item 9: a request that does not decode ended the stream with
/// `grpc-status: 0`, as if the server had finished.
#[tokio::test]
async fn a_malformed_request_ends_the_stream_with_invalid_argument() {
    let h = Harness::start(World::base().snapshot(1)).await;
    for path in [SOTW_PATH, DELTA_PATH] {
        let (tx, mut responses) = raw_stream(h.addr, path).await;
        // Field 3 (resource_names / resource_names_subscribe) promises five
        // bytes and holds one.
        tx.send(vec![0x1a, 0x05, b'a']).await.unwrap();
        let status = end_status(&mut responses).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{path}: {status:?}");
        assert!(status.message().contains("malformed"), "{status:?}");
    }
}

/// Items 7 and 9: requests up to 64 MiB were buffered; over the limit is
/// now refused (before buffering) with `RESOURCE_EXHAUSTED`.
#[tokio::test]
async fn an_oversized_request_ends_the_stream_with_resource_exhausted() {
    let limits = XdsLimits {
        max_request_bytes: 4096,
        ..Default::default()
    };
    let h = Harness::start_with(World::base().snapshot(1), limits).await;
    let (tx, mut responses) = raw_stream(h.addr, SOTW_PATH).await;
    // A request under the limit is answered...
    tx.send(sotw_request(CDS, [])).await.unwrap();
    assert!(
        timeout(WAIT, responses.message())
            .await
            .unwrap()
            .unwrap()
            .is_some()
    );
    // ...one over it ends the stream.
    let names = (0..1000).map(|i| format!("cluster-{i}"));
    tx.send(sotw_request(EDS, names)).await.unwrap();
    let status = end_status(&mut responses).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

/// Item 7: one stream grew the process by 580 MiB (8 MiB of names, then the
/// same names under three made-up type URLs). Names per subscription and
/// type URLs per stream are capped.
#[tokio::test]
async fn names_per_subscription_and_types_per_stream_are_capped() {
    let limits = XdsLimits {
        max_names_per_type: 100,
        max_types_per_stream: 3,
        ..Default::default()
    };
    let h = Harness::start_with(World::base().snapshot(1), limits).await;

    let (tx, mut responses) = raw_stream(h.addr, SOTW_PATH).await;
    tx.send(sotw_request(EDS, (0..100).map(|i| format!("c{i}"))))
        .await
        .unwrap();
    assert!(responses.message().await.unwrap().is_some());
    tx.send(sotw_request(EDS, (0..101).map(|i| format!("c{i}"))))
        .await
        .unwrap();
    let status = end_status(&mut responses).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("at most 100"), "{status:?}");

    let (tx, mut responses) = raw_stream(h.addr, SOTW_PATH).await;
    for i in 0..3 {
        tx.send(sotw_request(&format!("type.googleapis.com/made.Up{i}"), []))
            .await
            .unwrap();
        assert!(responses.message().await.unwrap().is_some());
    }
    tx.send(sotw_request("type.googleapis.com/made.Up3", []))
        .await
        .unwrap();
    let status = end_status(&mut responses).await;
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");

    // A type URL of a megabyte is refused outright.
    let (tx, mut responses) = raw_stream(h.addr, SOTW_PATH).await;
    tx.send(sotw_request(&"t".repeat(1 << 20), []))
        .await
        .unwrap();
    assert_eq!(
        end_status(&mut responses).await.code(),
        Code::InvalidArgument
    );

    // Delta: subscriptions accumulate over requests; the cap holds.
    let mut d = h.delta("hostile").await;
    d.subscribe(
        EDS,
        &(0..60)
            .map(|i| format!("a{i}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[],
    )
    .await;
    d.recv().await;
    d.subscribe(
        EDS,
        &(0..60)
            .map(|i| format!("b{i}"))
            .collect::<Vec<_>>()
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        &[],
    )
    .await;
    let status = timeout(WAIT, d.rx.message())
        .await
        .unwrap()
        .expect_err("the stream ends");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
}

/// Reads the server's first SETTINGS frame after a client preface: the
/// setting `id`, if present.
async fn server_setting(addr: SocketAddr, id: u16) -> Option<u32> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    let mut header = [0u8; 9];
    timeout(WAIT, tcp.read_exact(&mut header))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(header[3], 0x4, "the server speaks first with SETTINGS");
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    tcp.read_exact(&mut payload).await.unwrap();
    payload.chunks(6).find_map(|s| {
        (u16::from_be_bytes([s[0], s[1]]) == id)
            .then(|| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
    })
}

/// Item 7: 2000 streams were accepted on one connection.
#[tokio::test]
async fn streams_per_connection_are_capped_by_http2_settings() {
    let limits = XdsLimits {
        max_streams_per_connection: 4,
        ..Default::default()
    };
    let h = Harness::start_with(World::base().snapshot(1), limits).await;
    const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
    assert_eq!(
        server_setting(h.addr, SETTINGS_MAX_CONCURRENT_STREAMS).await,
        Some(4)
    );
}

/// Waits until the server closes `tcp` (EOF or reset), reading and
/// discarding what it sends meanwhile. False if it is still open after
/// `WAIT`.
async fn closed_by_server(tcp: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    timeout(WAIT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

/// Item 8: 2000 idle TCP connections were all held, and an idle one was
/// still open after 75 s. Each must now ask something within the
/// first-request deadline: silent, half a preface, or a preface and no
/// request.
#[tokio::test]
async fn connections_that_never_ask_are_closed() {
    let limits = XdsLimits {
        first_request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let h = Harness::start_with(World::base().snapshot(1), limits).await;
    let mut silent = TcpStream::connect(h.addr).await.unwrap();
    let mut half = TcpStream::connect(h.addr).await.unwrap();
    half.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    let mut preface_only = TcpStream::connect(h.addr).await.unwrap();
    preface_only
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .unwrap();
    for (what, tcp) in [
        ("silent", &mut silent),
        ("half a preface", &mut half),
        ("a preface and no request", &mut preface_only),
    ] {
        assert!(closed_by_server(tcp).await, "{what}: still open");
    }
    // A client that asks in time keeps its stream past the deadline.
    let mut c = h.sotw("node-a").await;
    c.subscribe(CDS, &[]).await;
    c.recv().await;
    tokio::time::sleep(Duration::from_millis(900)).await;
    c.subscribe(LDS, &[]).await;
    assert_eq!(c.recv().await.type_url, LDS);
}

/// Item 8: with TLS, a client that connects and never completes the
/// handshake is closed too.
#[tokio::test]
async fn a_stalled_tls_handshake_is_closed() {
    let certs = isobar::certgen::generate(&isobar::certgen::CertgenConfig::default()).unwrap();
    let (_snapshots, rx) = watch::channel(Arc::new(World::base().snapshot(1)));
    let limits = XdsLimits {
        first_request_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let server = XdsServer::with_limits(rx, None, limits);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let tls = TlsConfig {
        cert_pem: certs.server_cert.into_bytes(),
        key_pem: certs.server_key.into_bytes(),
        client_ca_pem: Some(certs.ca_cert.into_bytes()),
    };
    let task = tokio::spawn(serve(listener, server, std::future::pending(), Some(tls)));
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    // The first bytes of a ClientHello record, then nothing.
    stalled
        .write_all(&[0x16, 0x03, 0x01, 0x02, 0x00])
        .await
        .unwrap();
    assert!(closed_by_server(&mut stalled).await);
    task.abort();
}

/// Item 7: connections over the cap are closed as soon as they are
/// accepted; the ones within it are served.
#[tokio::test]
async fn connections_over_the_cap_are_closed() {
    let limits = XdsLimits {
        max_connections: 2,
        ..Default::default()
    };
    let h = Harness::start_with(World::base().snapshot(1), limits).await;
    let mut a = h.sotw("a").await;
    a.subscribe(CDS, &[]).await;
    a.recv().await;
    let held = TcpStream::connect(h.addr).await.unwrap();
    let mut over = TcpStream::connect(h.addr).await.unwrap();
    assert!(
        closed_by_server(&mut over).await,
        "a third connection is refused"
    );
    // One goes away: its slot is free again.
    drop(held);
    let mut b = None;
    for _ in 0..100 {
        let Ok(mut client) = isobar::testing::ads::connect(h.addr).await else {
            continue;
        };
        let (tx, rx) = mpsc::channel(4);
        let opened =
            isobar::testing::ads::open::<SotwRequest, SotwResponse>(&mut client, SOTW_PATH, rx)
                .await;
        let Ok(mut responses) = opened else {
            continue;
        };
        let subscribe = SotwRequest {
            node: node("b"),
            type_url: CDS.into(),
            ..Default::default()
        };
        if tx.send(subscribe).await.is_err() {
            continue;
        }
        if let Ok(Ok(Some(_))) = timeout(Duration::from_secs(2), responses.message()).await {
            b = Some((tx, responses));
            break;
        }
    }
    assert!(b.is_some(), "a freed slot is used again");
}

/// Item 10: 200 NACKs of 256 KiB made 100 MiB of log in 3 s. The message
/// is cut to MAX_NACK_MESSAGE and a NACK repeated for one nonce is heard
/// once; a 1 MiB node id is cut too.
#[tokio::test]
async fn nacks_are_bounded_and_heard_once_per_nonce() {
    let mut h = Harness::start(World::base().snapshot(1)).await;
    let huge_node = "n".repeat(1 << 20);
    let mut c = h.sotw(&huge_node).await;
    c.subscribe(LDS, &[]).await;
    let lds = c.recv().await;
    let message = format!("https {}", "x".repeat(256 << 10));
    for _ in 0..5 {
        c.nack(&lds, &[], "", &message).await;
    }
    c.sync("1").await;
    let events = h.drain();
    let nacks: Vec<&Nack> = events
        .iter()
        .filter_map(|e| match e {
            XdsEvent::Nack(n) => Some(n),
            _ => None,
        })
        .collect();
    assert_eq!(nacks.len(), 1, "one NACK per nonce");
    assert!(
        nacks[0].message.len() <= MAX_NACK_MESSAGE,
        "{}",
        nacks[0].message.len()
    );
    assert!(nacks[0].message.starts_with("https "));
    assert_eq!(nacks[0].resource_names, ["https"]);
    assert!(nacks[0].node.len() <= MAX_NODE_ID);
    let opened = events.iter().find_map(|e| match e {
        XdsEvent::StreamOpened { node, .. } => Some(node.len()),
        _ => None,
    });
    assert!(opened.is_some_and(|n| n <= MAX_NODE_ID), "{opened:?}");
}
