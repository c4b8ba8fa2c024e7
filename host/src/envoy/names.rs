//! Names of Envoy resources. Stable (a function of what the resource is, never
//! of when or by whom it was built) and human readable, since they show up in
//! Envoy's stats, admin interface and logs.

use crate::ir;

/// The cluster for a backend: `{namespace}/{name}/{port}`, followed by
/// `/{protocol}` when the protocol is not `http1` and `/{lb-policy}` when
/// the policy is not `round-robin`, e.g. `shop/cart/8080`,
/// `shop/cart/8080/grpc`, `shop/cart/8080/http2/ring-hash`. Protocol and
/// policy names are disjoint, so the name is unambiguous. The
/// ClusterLoadAssignment of a cluster has the same name.
pub fn cluster(backend: &ir::Backend) -> String {
    let mut name = format!("{}/{}/{}", backend.namespace, backend.name, backend.port);
    if let Some(p) = protocol_suffix(backend.protocol) {
        name.push('/');
        name.push_str(p);
    }
    if let Some(lb) = lb_suffix(backend.lb_policy) {
        name.push('/');
        name.push_str(lb);
    }
    name
}

fn protocol_suffix(protocol: ir::BackendProtocol) -> Option<&'static str> {
    match protocol {
        ir::BackendProtocol::Http1 => None,
        ir::BackendProtocol::Http2 => Some("http2"),
        ir::BackendProtocol::Grpc => Some("grpc"),
    }
}

fn lb_suffix(lb: ir::LbPolicy) -> Option<&'static str> {
    match lb {
        ir::LbPolicy::RoundRobin => None,
        ir::LbPolicy::LeastRequest => Some("least-request"),
        ir::LbPolicy::Random => Some("random"),
        ir::LbPolicy::RingHash => Some("ring-hash"),
        ir::LbPolicy::Maglev => Some("maglev"),
    }
}

/// The SDS secret for a `kubernetes.io/tls` Secret: `{namespace}/{name}`.
pub fn secret(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// The SDS secret a secret reference points at.
pub fn secret_ref(secret: &ir::SecretRef) -> String {
    self::secret(&secret.namespace, &secret.name)
}

/// The route configuration a plain-HTTP listener asks for: its own name.
/// All of the listener's virtual hosts go into it.
pub fn http_route_config(listener: &str) -> String {
    listener.to_string()
}

/// The route configuration of one SNI filter chain of an HTTPS listener:
/// `{listener}/{domain}`. It holds that domain's virtual host only, so a
/// request can never reach another domain's routes over this certificate.
pub fn https_route_config(listener: &str, domain: &str) -> String {
    format!("{listener}/{domain}")
}

/// The route configuration of the API listener (proxyless gRPC) for
/// `domain` on plain-HTTP `listener`: that domain's virtual host only.
/// Never `{listener}` or `{listener}/...`, which the listener's own route
/// configurations use.
pub fn api_route_config(listener: &str, domain: &str) -> String {
    format!("grpc:{listener}/{domain}")
}

/// The route configuration a virtual host of `domain` belongs to on
/// `listener`.
pub fn route_config(listener: &ir::Listener, domain: &str) -> String {
    match listener.protocol {
        ir::ListenerProtocol::Http => http_route_config(&listener.name),
        ir::ListenerProtocol::Https => https_route_config(&listener.name, domain),
    }
}

/// A virtual host is named by its domain; domains are unique within a route
/// configuration, so names are too.
pub fn virtual_host(domain: &str) -> String {
    domain.to_string()
}

/// The `index`th IR route of a virtual host: `{domain}/{index}`; when one IR
/// route becomes several Envoy routes (a path-segment prefix), each gets a
/// `/{part}` suffix.
pub fn route(domain: &str, index: usize, part: Option<&str>) -> String {
    match part {
        None => format!("{domain}/{index}"),
        Some(part) => format!("{domain}/{index}/{part}"),
    }
}

/// The filter chain of one SNI domain on an HTTPS listener.
pub fn filter_chain(listener: &str, domain: &str) -> String {
    format!("{listener}/{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backend(protocol: ir::BackendProtocol, lb_policy: ir::LbPolicy) -> ir::Backend {
        ir::Backend::service("shop", "cart", 8080)
            .with_protocol(protocol)
            .with_lb_policy(lb_policy)
    }

    #[test]
    fn cluster_names_are_suffixed_only_when_not_default() {
        use ir::BackendProtocol::*;
        use ir::LbPolicy::*;
        assert_eq!(cluster(&backend(Http1, RoundRobin)), "shop/cart/8080");
        assert_eq!(cluster(&backend(Http2, RoundRobin)), "shop/cart/8080/http2");
        assert_eq!(cluster(&backend(Grpc, RoundRobin)), "shop/cart/8080/grpc");
        assert_eq!(
            cluster(&backend(Http1, LeastRequest)),
            "shop/cart/8080/least-request"
        );
        assert_eq!(
            cluster(&backend(Http2, RingHash)),
            "shop/cart/8080/http2/ring-hash"
        );
        assert_eq!(
            cluster(&backend(Grpc, Maglev)),
            "shop/cart/8080/grpc/maglev"
        );
        assert_eq!(cluster(&backend(Http1, Random)), "shop/cart/8080/random");
    }

    #[test]
    fn every_backend_variant_has_a_distinct_cluster() {
        use ir::BackendProtocol::*;
        use ir::LbPolicy::*;
        let mut seen = std::collections::BTreeSet::new();
        for p in [Http1, Http2, Grpc] {
            for lb in [RoundRobin, LeastRequest, Random, RingHash, Maglev] {
                assert!(seen.insert(cluster(&backend(p, lb))));
            }
        }
    }

    #[test]
    fn route_config_names_follow_the_listener_protocol() {
        let http = ir::Listener {
            name: "http".into(),
            port: 80,
            protocol: ir::ListenerProtocol::Http,
        };
        let https = ir::Listener {
            name: "https".into(),
            port: 443,
            protocol: ir::ListenerProtocol::Https,
        };
        assert_eq!(route_config(&http, "a.example.com"), "http");
        assert_eq!(route_config(&https, "a.example.com"), "https/a.example.com");
        assert_eq!(route_config(&https, "*.example.com"), "https/*.example.com");
        assert_eq!(secret("ns", "tls"), "ns/tls");
        assert_eq!(
            secret_ref(&ir::SecretRef {
                namespace: "ns".into(),
                name: "tls".into()
            }),
            "ns/tls"
        );
        assert_eq!(route("a.example.com", 3, None), "a.example.com/3");
        assert_eq!(
            route("a.example.com", 3, Some("prefix")),
            "a.example.com/3/prefix"
        );
    }
}
