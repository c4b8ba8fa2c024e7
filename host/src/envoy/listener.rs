//! Socket listeners for Envoy and API listeners for proxyless gRPC.

use envoy_types::pb::envoy::config::core::v3::{
    Address, SocketAddress, TransportSocket, address, socket_address, transport_socket,
};
use envoy_types::pb::envoy::config::listener::v3::{
    ApiListener, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter, filter,
    listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig,
};

use super::{ads, bool_value, names, to_any};
use crate::ir;

pub const HTTP_CONNECTION_MANAGER: &str = "envoy.filters.network.http_connection_manager";
pub const ROUTER: &str = "envoy.filters.http.router";
pub const TLS_INSPECTOR: &str = "envoy.filters.listener.tls_inspector";
pub const TLS_TRANSPORT_SOCKET: &str = "envoy.transport_sockets.tls";

/// One SNI domain of an HTTPS listener and the SDS secret
/// ([`names::secret`]) whose certificate it serves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TlsDomain {
    pub domain: String,
    pub secret_name: String,
}

/// A socket listener on `0.0.0.0:{port}`.
///
/// HTTP: one filter chain whose connection manager asks for the route
/// configuration named after the listener ([`names::http_route_config`]).
///
/// HTTPS: the TLS inspector reads the SNI; one filter chain per domain with
/// `server_names = [domain]` (`*.example.com` wildcards are Envoy's own
/// server-name wildcards; `*` is the chain for any other or no SNI), a
/// certificate from SDS and the route configuration `{listener}/{domain}`
/// ([`names::https_route_config`]), so a certificate only ever fronts its
/// own domain's routes. Chains are ordered by domain; a domain given twice
/// keeps its first secret. With no domains the listener has no filter chain,
/// which Envoy rejects: [`validate_listener`](super::validate_listener)
/// reports it; the caller should not serve it.
pub fn listener(l: &ir::Listener, tls: &[TlsDomain]) -> Listener {
    let mut out = Listener {
        name: l.name.clone(),
        address: Some(socket_address("0.0.0.0", l.port)),
        ..Default::default()
    };
    match l.protocol {
        ir::ListenerProtocol::Http => {
            out.filter_chains = vec![FilterChain {
                filters: vec![hcm_filter(socket_hcm(
                    &l.name,
                    names::http_route_config(&l.name),
                ))],
                ..Default::default()
            }];
        }
        ir::ListenerProtocol::Https => {
            let mut domains: Vec<&TlsDomain> = Vec::with_capacity(tls.len());
            for d in tls {
                if !domains.iter().any(|seen| seen.domain == d.domain) {
                    domains.push(d);
                }
            }
            domains.sort_by(|a, b| a.domain.cmp(&b.domain));
            out.listener_filters = vec![ListenerFilter {
                name: TLS_INSPECTOR.into(),
                config_type: Some(listener_filter::ConfigType::TypedConfig(to_any(
                    &TlsInspector::default(),
                ))),
                ..Default::default()
            }];
            out.filter_chains = domains
                .into_iter()
                .map(|d| tls_filter_chain(&l.name, d))
                .collect();
        }
    }
    out
}

fn tls_filter_chain(listener: &str, d: &TlsDomain) -> FilterChain {
    let server_names = if d.domain == "*" {
        Vec::new()
    } else {
        vec![d.domain.clone()]
    };
    let tls = DownstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![SdsSecretConfig {
                name: d.secret_name.clone(),
                sds_config: Some(ads()),
            }],
            alpn_protocols: vec!["h2".into(), "http/1.1".into()],
            ..Default::default()
        }),
        ..Default::default()
    };
    FilterChain {
        name: names::filter_chain(listener, &d.domain),
        filter_chain_match: Some(FilterChainMatch {
            server_names,
            ..Default::default()
        }),
        filters: vec![hcm_filter(socket_hcm(
            listener,
            names::https_route_config(listener, &d.domain),
        ))],
        transport_socket: Some(TransportSocket {
            name: TLS_TRANSPORT_SOCKET.into(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(to_any(&tls))),
        }),
        ..Default::default()
    }
}

/// The listener a proxyless gRPC client asks for when it dials
/// `xds:///{name}`: an API listener whose connection manager takes the
/// route configuration `route_config_name` over ADS and ends in the router
/// filter, which is all gRPC reads.
pub fn api_listener(name: &str, route_config_name: &str) -> Listener {
    Listener {
        name: name.to_string(),
        api_listener: Some(ApiListener {
            api_listener: Some(to_any(&hcm(name, route_config_name.to_string()))),
        }),
        ..Default::default()
    }
}

/// RDS over ADS and the router: what both Envoy and gRPC need.
fn hcm(stat_prefix: &str, route_config_name: String) -> HttpConnectionManager {
    HttpConnectionManager {
        stat_prefix: stat_prefix.to_string(),
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads()),
            route_config_name,
        })),
        http_filters: vec![HttpFilter {
            name: ROUTER.into(),
            config_type: Some(http_filter::ConfigType::TypedConfig(to_any(
                &Router::default(),
            ))),
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The edge proxy's connection manager: the client address is the peer's
/// (Envoy is the edge, X-Forwarded-For is appended, not trusted); paths are
/// normalised before matching (RFC 3986), so `/foo/../admin` cannot slip
/// past a route; any port is stripped from Host so virtual hosts match on
/// the host name alone.
fn socket_hcm(listener: &str, route_config_name: String) -> HttpConnectionManager {
    HttpConnectionManager {
        use_remote_address: Some(bool_value(true)),
        normalize_path: Some(bool_value(true)),
        strip_port_mode: Some(http_connection_manager::StripPortMode::StripAnyHostPort(
            true,
        )),
        ..hcm(listener, route_config_name)
    }
}

fn hcm_filter(hcm: HttpConnectionManager) -> Filter {
    Filter {
        name: HTTP_CONNECTION_MANAGER.into(),
        config_type: Some(filter::ConfigType::TypedConfig(to_any(&hcm))),
    }
}

pub(crate) fn socket_address(ip: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            protocol: socket_address::Protocol::Tcp as i32,
            address: ip.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        ApiVersion, config_source::ConfigSourceSpecifier,
    };
    use envoy_types::pb::google::protobuf::Any;
    use prost::{Message, Name};

    fn decode<M: Message + Name + Default>(any: &Any) -> M {
        assert_eq!(any.type_url, M::type_url());
        M::decode(any.value.as_slice()).unwrap()
    }

    fn roundtrip(l: &Listener) -> Listener {
        Listener::decode(l.encode_to_vec().as_slice()).unwrap()
    }

    fn hcm_of(chain: &FilterChain) -> HttpConnectionManager {
        assert_eq!(chain.filters.len(), 1);
        assert_eq!(chain.filters[0].name, HTTP_CONNECTION_MANAGER);
        let Some(filter::ConfigType::TypedConfig(any)) = &chain.filters[0].config_type else {
            panic!()
        };
        decode(any)
    }

    fn rds_name(hcm: &HttpConnectionManager) -> String {
        let Some(http_connection_manager::RouteSpecifier::Rds(rds)) = &hcm.route_specifier else {
            panic!()
        };
        let source = rds.config_source.as_ref().unwrap();
        assert_eq!(
            source.config_source_specifier,
            Some(ConfigSourceSpecifier::Ads(Default::default()))
        );
        assert_eq!(source.resource_api_version, ApiVersion::V3 as i32);
        rds.route_config_name.clone()
    }

    fn assert_router_only(hcm: &HttpConnectionManager) {
        assert_eq!(hcm.http_filters.len(), 1);
        assert_eq!(hcm.http_filters[0].name, ROUTER);
        let Some(http_filter::ConfigType::TypedConfig(any)) = &hcm.http_filters[0].config_type
        else {
            panic!()
        };
        let _: Router = decode(any);
    }

    fn port_of(l: &Listener) -> (String, u32) {
        let Some(address::Address::SocketAddress(sa)) = &l.address.as_ref().unwrap().address else {
            panic!()
        };
        let Some(socket_address::PortSpecifier::PortValue(port)) = sa.port_specifier.clone() else {
            panic!()
        };
        (sa.address.clone(), port)
    }

    #[test]
    fn http_listener_uses_rds_named_after_itself() {
        let l = roundtrip(&listener(
            &ir::Listener {
                name: "http".into(),
                port: 8080,
                protocol: ir::ListenerProtocol::Http,
            },
            &[],
        ));
        assert_eq!(l.name, "http");
        assert_eq!(port_of(&l), ("0.0.0.0".to_string(), 8080));
        assert!(l.listener_filters.is_empty());
        assert_eq!(l.filter_chains.len(), 1);
        assert!(l.filter_chains[0].transport_socket.is_none());
        let hcm = hcm_of(&l.filter_chains[0]);
        assert_eq!(rds_name(&hcm), "http");
        assert_eq!(hcm.stat_prefix, "http");
        assert_eq!(hcm.use_remote_address, Some(bool_value(true)));
        assert_eq!(
            hcm.strip_port_mode,
            Some(http_connection_manager::StripPortMode::StripAnyHostPort(
                true
            ))
        );
        assert_router_only(&hcm);
    }

    #[test]
    fn https_listener_has_one_chain_per_sni_domain() {
        let tls = [
            TlsDomain {
                domain: "b.example.com".into(),
                secret_name: "ns/b-tls".into(),
            },
            TlsDomain {
                domain: "*.example.com".into(),
                secret_name: "ns/wild".into(),
            },
            TlsDomain {
                domain: "b.example.com".into(),
                secret_name: "ns/other".into(),
            },
        ];
        let l = roundtrip(&listener(
            &ir::Listener {
                name: "https".into(),
                port: 443,
                protocol: ir::ListenerProtocol::Https,
            },
            &tls,
        ));
        assert_eq!(port_of(&l).1, 443);
        assert_eq!(l.listener_filters.len(), 1);
        assert_eq!(l.listener_filters[0].name, TLS_INSPECTOR);
        assert_eq!(
            l.filter_chains.len(),
            2,
            "duplicate domain keeps its first secret"
        );

        let expect = [("*.example.com", "ns/wild"), ("b.example.com", "ns/b-tls")];
        for (chain, (domain, secret)) in l.filter_chains.iter().zip(expect) {
            assert_eq!(chain.name, format!("https/{domain}"));
            assert_eq!(
                chain.filter_chain_match.as_ref().unwrap().server_names,
                [domain]
            );
            let ts = chain.transport_socket.as_ref().unwrap();
            assert_eq!(ts.name, TLS_TRANSPORT_SOCKET);
            let Some(transport_socket::ConfigType::TypedConfig(any)) = &ts.config_type else {
                panic!()
            };
            let ctx: DownstreamTlsContext = decode(any);
            let common = ctx.common_tls_context.unwrap();
            assert_eq!(common.alpn_protocols, ["h2", "http/1.1"]);
            assert_eq!(common.tls_certificate_sds_secret_configs.len(), 1);
            let sds = &common.tls_certificate_sds_secret_configs[0];
            assert_eq!(sds.name, secret);
            assert_eq!(
                sds.sds_config.as_ref().unwrap().config_source_specifier,
                Some(ConfigSourceSpecifier::Ads(Default::default()))
            );
            let hcm = hcm_of(chain);
            assert_eq!(rds_name(&hcm), format!("https/{domain}"));
            assert_router_only(&hcm);
        }
    }

    #[test]
    fn https_catch_all_domain_has_no_server_names() {
        let l = listener(
            &ir::Listener {
                name: "https".into(),
                port: 443,
                protocol: ir::ListenerProtocol::Https,
            },
            &[TlsDomain {
                domain: "*".into(),
                secret_name: "ns/default".into(),
            }],
        );
        assert!(
            l.filter_chains[0]
                .filter_chain_match
                .as_ref()
                .unwrap()
                .server_names
                .is_empty()
        );
        assert_eq!(rds_name(&hcm_of(&l.filter_chains[0])), "https/*");
    }

    #[test]
    fn api_listener_for_grpc() {
        let l = roundtrip(&api_listener(
            "greeter.example:50051",
            "greeter.example:50051",
        ));
        assert_eq!(l.name, "greeter.example:50051");
        assert!(l.address.is_none());
        assert!(l.filter_chains.is_empty());
        let any = l.api_listener.unwrap().api_listener.unwrap();
        let hcm: HttpConnectionManager = decode(&any);
        assert_eq!(rds_name(&hcm), "greeter.example:50051");
        assert_router_only(&hcm);
    }
}
