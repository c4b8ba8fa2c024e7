//! EDS clusters for IR backends.

use envoy_types::pb::envoy::config::cluster::v3::{
    Cluster,
    cluster::{ClusterDiscoveryType, DiscoveryType, EdsClusterConfig, LbPolicy},
};
use envoy_types::pb::envoy::config::core::v3::Http2ProtocolOptions;
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    HttpProtocolOptions,
    http_protocol_options::{
        ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
    },
};

use super::{ads, millis, names, to_any};
use crate::ir;

/// Upstreams are in the cluster network; a connect that takes longer is a
/// dead endpoint, and the retry policy should move on.
pub const CONNECT_TIMEOUT_MS: u32 = 2000;

/// Key of `typed_extension_protocol_options` for upstream HTTP options.
pub const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// The cluster for a backend, named by [`names::cluster`]; its endpoints
/// come over ADS as the ClusterLoadAssignment of the same name.
///
/// `http2` and `grpc` backends speak HTTP/2 to the upstream (explicit
/// `http2_protocol_options`); `http1` stays on Envoy's HTTP/1.1 default.
/// Load-balancing policies map one to one; gRPC's xDS client supports
/// round-robin, least-request and ring-hash only, and rejects a cluster with
/// `random` or `maglev`.
pub fn cluster(backend: &ir::Backend) -> Cluster {
    let lb_policy = match backend.lb_policy {
        ir::LbPolicy::RoundRobin => LbPolicy::RoundRobin,
        ir::LbPolicy::LeastRequest => LbPolicy::LeastRequest,
        ir::LbPolicy::Random => LbPolicy::Random,
        ir::LbPolicy::RingHash => LbPolicy::RingHash,
        ir::LbPolicy::Maglev => LbPolicy::Maglev,
    };
    let mut cluster = Cluster {
        name: names::cluster(backend),
        cluster_discovery_type: Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32)),
        eds_cluster_config: Some(EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: String::new(),
        }),
        connect_timeout: Some(millis(CONNECT_TIMEOUT_MS)),
        lb_policy: lb_policy as i32,
        ..Default::default()
    };
    match backend.protocol {
        ir::BackendProtocol::Http1 => {}
        ir::BackendProtocol::Http2 | ir::BackendProtocol::Grpc => {
            let options = HttpProtocolOptions {
                upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                    ExplicitHttpConfig {
                        protocol_config: Some(ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        )),
                    },
                )),
                ..Default::default()
            };
            cluster
                .typed_extension_protocol_options
                .insert(HTTP_PROTOCOL_OPTIONS.into(), to_any(&options));
        }
    }
    cluster
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::config_source::ConfigSourceSpecifier;
    use prost::Message;

    fn backend(protocol: ir::BackendProtocol, lb_policy: ir::LbPolicy) -> ir::Backend {
        ir::Backend::service("ns", "svc", 8080)
            .with_protocol(protocol)
            .with_lb_policy(lb_policy)
    }

    fn roundtrip(c: &Cluster) -> Cluster {
        Cluster::decode(c.encode_to_vec().as_slice()).unwrap()
    }

    #[test]
    fn http1_round_robin_eds_cluster() {
        let c = roundtrip(&cluster(&backend(
            ir::BackendProtocol::Http1,
            ir::LbPolicy::RoundRobin,
        )));
        assert_eq!(c.name, "ns/svc/8080");
        assert_eq!(
            c.cluster_discovery_type,
            Some(ClusterDiscoveryType::Type(DiscoveryType::Eds as i32))
        );
        let eds = c.eds_cluster_config.unwrap();
        assert_eq!(
            eds.eds_config.unwrap().config_source_specifier,
            Some(ConfigSourceSpecifier::Ads(Default::default()))
        );
        assert_eq!(eds.service_name, "", "the CLA is named after the cluster");
        assert_eq!(c.connect_timeout, Some(millis(CONNECT_TIMEOUT_MS)));
        assert_eq!(c.lb_policy, LbPolicy::RoundRobin as i32);
        assert!(c.typed_extension_protocol_options.is_empty());
    }

    #[test]
    fn http2_and_grpc_get_explicit_http2() {
        for p in [ir::BackendProtocol::Http2, ir::BackendProtocol::Grpc] {
            let c = roundtrip(&cluster(&backend(p, ir::LbPolicy::RoundRobin)));
            let any = &c.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS];
            assert_eq!(
                any.type_url,
                "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
            );
            let opts = HttpProtocolOptions::decode(any.value.as_slice()).unwrap();
            let Some(UpstreamProtocolOptions::ExplicitHttpConfig(explicit)) =
                opts.upstream_protocol_options
            else {
                panic!()
            };
            assert!(matches!(
                explicit.protocol_config,
                Some(ProtocolConfig::Http2ProtocolOptions(_))
            ));
        }
    }

    #[test]
    fn lb_policies_map_one_to_one() {
        for (ir_lb, lb) in [
            (ir::LbPolicy::RoundRobin, LbPolicy::RoundRobin),
            (ir::LbPolicy::LeastRequest, LbPolicy::LeastRequest),
            (ir::LbPolicy::Random, LbPolicy::Random),
            (ir::LbPolicy::RingHash, LbPolicy::RingHash),
            (ir::LbPolicy::Maglev, LbPolicy::Maglev),
        ] {
            let c = cluster(&backend(ir::BackendProtocol::Http1, ir_lb));
            assert_eq!(c.lb_policy, lb as i32);
            assert_eq!(
                c.name,
                names::cluster(&backend(ir::BackendProtocol::Http1, ir_lb))
            );
        }
    }
}
