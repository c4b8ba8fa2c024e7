//! Checks on what is about to be served. A snapshot with any error is not
//! accepted; the errors become diagnostics on the objects that produced the
//! resources.

use std::collections::{BTreeMap, BTreeSet};

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::{
    RouteConfiguration, VirtualHost, route, route_action::ClusterSpecifier,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::Secret;
use prost::Message;

use super::ValidationError;
use crate::xds::type_url;

/// Every route is named, names are unique, every route has a path match and
/// an action, and every cluster a route forwards to exists (with a weight
/// above zero when weighted).
pub fn validate_virtual_host(
    vhost: &VirtualHost,
    cluster_exists: impl Fn(&str) -> bool,
) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    let vh = || vhost.name.clone();
    if vhost.domains.is_empty() {
        errors.push(ValidationError::NoDomains { vhost: vh() });
    }
    let mut seen = BTreeSet::new();
    let mut reported = BTreeSet::new();
    for (index, r) in vhost.routes.iter().enumerate() {
        if r.name.is_empty() {
            errors.push(ValidationError::UnnamedRoute { vhost: vh(), index });
        } else if !seen.insert(r.name.as_str()) && reported.insert(r.name.as_str()) {
            errors.push(ValidationError::DuplicateRouteName {
                vhost: vh(),
                route: r.name.clone(),
            });
        }
        let name = || {
            if r.name.is_empty() {
                format!("#{index}")
            } else {
                r.name.clone()
            }
        };
        if r.r#match
            .as_ref()
            .and_then(|m| m.path_specifier.as_ref())
            .is_none()
        {
            errors.push(ValidationError::MissingMatch {
                vhost: vh(),
                route: name(),
            });
        }
        match &r.action {
            None => errors.push(ValidationError::MissingAction {
                vhost: vh(),
                route: name(),
            }),
            Some(route::Action::Route(ra)) => match &ra.cluster_specifier {
                Some(ClusterSpecifier::Cluster(cluster)) => {
                    if !cluster_exists(cluster) {
                        errors.push(ValidationError::MissingCluster {
                            vhost: vh(),
                            route: name(),
                            cluster: cluster.clone(),
                        });
                    }
                }
                Some(ClusterSpecifier::WeightedClusters(wc)) => {
                    if wc.clusters.is_empty() {
                        errors.push(ValidationError::NoWeightedClusters {
                            vhost: vh(),
                            route: name(),
                        });
                    }
                    for c in &wc.clusters {
                        if c.weight.is_none_or(|w| w.value == 0) {
                            errors.push(ValidationError::ZeroWeight {
                                vhost: vh(),
                                route: name(),
                                cluster: c.name.clone(),
                            });
                        }
                        if !cluster_exists(&c.name) {
                            errors.push(ValidationError::MissingCluster {
                                vhost: vh(),
                                route: name(),
                                cluster: c.name.clone(),
                            });
                        }
                    }
                }
                _ => errors.push(ValidationError::UnsupportedClusterSpecifier {
                    vhost: vh(),
                    route: name(),
                }),
            },
            Some(_) => {}
        }
    }
    errors
}

/// Across the virtual hosts of one route configuration: names are unique and
/// no domain (compared case-insensitively, as Envoy does) is claimed twice.
/// Envoy rejects the whole route configuration otherwise.
pub fn validate_domains<'a>(
    vhosts: impl IntoIterator<Item = &'a VirtualHost>,
) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    let mut names = BTreeSet::new();
    let mut domains: BTreeMap<String, &str> = BTreeMap::new();
    for vh in vhosts {
        if !names.insert(vh.name.as_str()) {
            errors.push(ValidationError::DuplicateVirtualHost {
                vhost: vh.name.clone(),
            });
        }
        for d in &vh.domains {
            if let Some(first) = domains.insert(d.to_ascii_lowercase(), &vh.name) {
                errors.push(ValidationError::DuplicateDomain {
                    domain: d.clone(),
                    first: first.to_string(),
                    second: vh.name.clone(),
                });
            }
        }
    }
    errors
}

/// A listener has something to do (filter chains, or it is an API listener)
/// and no two filter chains match the same connections.
pub fn validate_listener(listener: &Listener) -> Vec<ValidationError> {
    let mut errors = Vec::new();
    if listener.filter_chains.is_empty()
        && listener.api_listener.is_none()
        && listener.default_filter_chain.is_none()
    {
        errors.push(ValidationError::NoFilterChains {
            listener: listener.name.clone(),
        });
    }
    let mut matches = BTreeSet::new();
    for chain in &listener.filter_chains {
        let key = chain
            .filter_chain_match
            .clone()
            .unwrap_or_default()
            .encode_to_vec();
        if !matches.insert(key) {
            errors.push(ValidationError::DuplicateFilterChainMatch {
                listener: listener.name.clone(),
                chain: chain.name.clone(),
            });
        }
    }
    errors
}

/// A raw resource from the IR's escape hatch: its type URL is one of the five
/// served types and its bytes decode as that message. Returns the name
/// inside the message (`cluster_name` for a ClusterLoadAssignment), which
/// the caller should compare with the name the plugin gave.
pub fn validate_raw(type_url: &str, bytes: &[u8]) -> Result<String, ValidationError> {
    let decode_error = |e: prost::DecodeError| ValidationError::Decode {
        type_url: type_url.to_string(),
        message: e.to_string(),
    };
    let name = match type_url {
        type_url::LISTENER => Listener::decode(bytes).map_err(decode_error)?.name,
        type_url::ROUTE => {
            RouteConfiguration::decode(bytes)
                .map_err(decode_error)?
                .name
        }
        type_url::CLUSTER => Cluster::decode(bytes).map_err(decode_error)?.name,
        type_url::ENDPOINT => {
            ClusterLoadAssignment::decode(bytes)
                .map_err(decode_error)?
                .cluster_name
        }
        type_url::SECRET => Secret::decode(bytes).map_err(decode_error)?.name,
        _ => {
            return Err(ValidationError::UnknownTypeUrl {
                type_url: type_url.to_string(),
            });
        }
    };
    if name.is_empty() {
        return Err(ValidationError::UnnamedResource {
            type_url: type_url.to_string(),
        });
    }
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envoy::{TlsDomain, cluster, listener, names, virtual_host};
    use crate::ir;
    use envoy_types::pb::envoy::config::route::v3::{
        Route, RouteAction, WeightedCluster, weighted_cluster::ClusterWeight,
    };
    use envoy_types::pb::google::protobuf::UInt32Value;

    fn backend(name: &str) -> ir::Backend {
        ir::Backend::service("ns", name, 80)
    }

    fn ir_route(path: &str, backends: &[&str]) -> ir::Route {
        ir::Route::forward_weighted(
            ir::RouteMatch::prefix(path),
            backends.iter().map(|b| backend(b).weighted(1)),
        )
    }

    #[test]
    fn compiled_vhost_with_existing_clusters_is_valid() {
        let vh = virtual_host(
            "a.example.com",
            &[ir_route("/x", &["a", "b"]), ir_route("/", &["c"])],
        )
        .unwrap();
        let exists = |c: &str| ["ns/a/80", "ns/b/80", "ns/c/80"].contains(&c);
        assert_eq!(validate_virtual_host(&vh, exists), []);
    }

    #[test]
    fn missing_clusters_are_reported_per_route() {
        let vh = virtual_host(
            "a.example.com",
            &[ir_route("/x", &["a", "gone"]), ir_route("/", &["gone"])],
        )
        .unwrap();
        let errors = validate_virtual_host(&vh, |c| c == "ns/a/80");
        assert_eq!(
            errors,
            [
                ValidationError::MissingCluster {
                    vhost: "a.example.com".into(),
                    route: "a.example.com/0/exact".into(),
                    cluster: "ns/gone/80".into()
                },
                ValidationError::MissingCluster {
                    vhost: "a.example.com".into(),
                    route: "a.example.com/0/prefix".into(),
                    cluster: "ns/gone/80".into()
                },
                ValidationError::MissingCluster {
                    vhost: "a.example.com".into(),
                    route: "a.example.com/1".into(),
                    cluster: "ns/gone/80".into()
                },
            ]
        );
        assert!(errors[0].to_string().contains("ns/gone/80"));
    }

    #[test]
    fn hand_built_vhost_errors() {
        let weighted = |weights: &[Option<u32>]| {
            Some(route::Action::Route(RouteAction {
                cluster_specifier: Some(ClusterSpecifier::WeightedClusters(WeightedCluster {
                    clusters: weights
                        .iter()
                        .enumerate()
                        .map(|(i, w)| ClusterWeight {
                            name: format!("c{i}"),
                            weight: w.map(|value| UInt32Value { value }),
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })),
                ..Default::default()
            }))
        };
        let m = Some(envoy_types::pb::envoy::config::route::v3::RouteMatch {
            path_specifier: Some(
                envoy_types::pb::envoy::config::route::v3::route_match::PathSpecifier::Prefix(
                    "/".into(),
                ),
            ),
            ..Default::default()
        });
        let vh = VirtualHost {
            name: "v".into(),
            domains: vec![],
            routes: vec![
                Route {
                    name: "r".into(),
                    r#match: m.clone(),
                    action: weighted(&[Some(1), Some(0), None]),
                    ..Default::default()
                },
                Route {
                    name: "r".into(),
                    r#match: None,
                    action: None,
                    ..Default::default()
                },
                Route {
                    name: String::new(),
                    r#match: m.clone(),
                    action: weighted(&[]),
                    ..Default::default()
                },
                Route {
                    name: "r".into(),
                    r#match: m,
                    action: Some(route::Action::Route(RouteAction::default())),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        let errors = validate_virtual_host(&vh, |_| true);
        let v = || "v".to_string();
        assert_eq!(
            errors,
            [
                ValidationError::NoDomains { vhost: v() },
                ValidationError::ZeroWeight {
                    vhost: v(),
                    route: "r".into(),
                    cluster: "c1".into()
                },
                ValidationError::ZeroWeight {
                    vhost: v(),
                    route: "r".into(),
                    cluster: "c2".into()
                },
                ValidationError::DuplicateRouteName {
                    vhost: v(),
                    route: "r".into()
                },
                ValidationError::MissingMatch {
                    vhost: v(),
                    route: "r".into()
                },
                ValidationError::MissingAction {
                    vhost: v(),
                    route: "r".into()
                },
                ValidationError::UnnamedRoute {
                    vhost: v(),
                    index: 2
                },
                ValidationError::NoWeightedClusters {
                    vhost: v(),
                    route: "#2".into()
                },
                ValidationError::UnsupportedClusterSpecifier {
                    vhost: v(),
                    route: "r".into()
                },
            ]
        );
    }

    #[test]
    fn domains_must_be_unique_across_vhosts() {
        let a = virtual_host("a.example.com", &[]).unwrap();
        let b = virtual_host("b.example.com", &[]).unwrap();
        assert_eq!(validate_domains([&a, &b]), []);
        let mut shout = virtual_host("A.example.com", &[]).unwrap();
        shout.name = "other".into();
        let errors = validate_domains([&a, &b, &shout]);
        assert_eq!(errors.len(), 2, "{errors:?}"); // both A.example.com and A.example.com:*
        assert!(
            matches!(&errors[0], ValidationError::DuplicateDomain { first, second, .. } if first == "a.example.com" && second == "other")
        );
        let errors = validate_domains([&a, &a]);
        assert!(errors.contains(&ValidationError::DuplicateVirtualHost {
            vhost: "a.example.com".into()
        }));
    }

    #[test]
    fn listeners_need_chains_with_distinct_matches() {
        let https = ir::Listener {
            name: "https".into(),
            port: 443,
            protocol: ir::ListenerProtocol::Https,
        };
        assert_eq!(
            validate_listener(&listener(&https, &[])),
            [ValidationError::NoFilterChains {
                listener: "https".into()
            }]
        );
        let tls = [TlsDomain {
            domain: "a".into(),
            secret_name: "ns/a".into(),
        }];
        assert_eq!(validate_listener(&listener(&https, &tls)), []);
        let mut l = listener(&https, &tls);
        l.filter_chains.push(l.filter_chains[0].clone());
        assert!(matches!(
            validate_listener(&l)[..],
            [ValidationError::DuplicateFilterChainMatch { .. }]
        ));
        assert_eq!(validate_listener(&crate::envoy::api_listener("x", "x")), []);
    }

    #[test]
    fn raw_resources_must_be_a_served_type_and_decode() {
        let c = cluster(&backend("a"));
        assert_eq!(
            validate_raw(type_url::CLUSTER, &c.encode_to_vec()),
            Ok(names::cluster(&backend("a")))
        );
        assert_eq!(
            validate_raw(
                "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration",
                &[]
            ),
            Err(ValidationError::UnknownTypeUrl {
                type_url: "type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration"
                    .into()
            })
        );
        assert!(matches!(
            validate_raw(type_url::LISTENER, &[0xff, 0xff, 0xff]),
            Err(ValidationError::Decode { .. })
        ));
        assert_eq!(
            validate_raw(type_url::SECRET, &[]),
            Err(ValidationError::UnnamedResource {
                type_url: type_url::SECRET.into()
            })
        );
        let cla = ClusterLoadAssignment {
            cluster_name: "x".into(),
            ..Default::default()
        };
        assert_eq!(
            validate_raw(type_url::ENDPOINT, &cla.encode_to_vec()),
            Ok("x".into())
        );
        let rc = RouteConfiguration {
            name: "r".into(),
            ..Default::default()
        };
        assert_eq!(
            validate_raw(type_url::ROUTE, &rc.encode_to_vec()),
            Ok("r".into())
        );
    }
}
