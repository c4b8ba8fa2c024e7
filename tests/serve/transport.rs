//! How Envoy reaches `isobar serve`: the bootstrap's defaults, mutual TLS.

use super::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_bootstrap_points_at_serve_defaults() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/envoy-bootstrap.yaml");
    let doc: Value = serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let ads = &doc["dynamic_resources"]["ads_config"];
    assert_eq!(ads["api_type"], "DELTA_GRPC");
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
