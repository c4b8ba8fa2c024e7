//! Backends: named ports, endpoints from slices, missing Services and ports.

use super::*;

#[test]
fn backend_port_by_name_resolves_to_the_service_port() {
    let p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[("a.example.com", &[("/", "Prefix", "web", json!("http"))])],
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), HTTP, "a.example.com"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
}

#[test]
fn endpoints_come_from_slices_by_port_name_and_conditions() {
    let mut slice_b = slice(
        "shop",
        "web",
        "b",
        "http",
        8080,
        &["10.0.0.3", "10.0.0.4", "10.0.0.5"],
    );
    // not ready but serving and terminating: drains; not serving: excluded
    slice_b["endpoints"][1]["conditions"] =
        json!({"ready": false, "serving": true, "terminating": true});
    slice_b["endpoints"][2]["conditions"] =
        json!({"ready": false, "serving": false, "terminating": false});
    let other_port = slice("shop", "web", "c", "metrics", 9090, &["10.0.0.9"]);
    let p = ingress_pipeline(with(
        base(),
        [
            slice_b,
            other_port,
            ingress(
                "shop",
                "i",
                &[("a.example.com", &[("/", "Prefix", "web", json!(80))])],
            ),
        ],
    ));
    let cla = load_assignment(p.snapshot(), "shop/web/80").expect("endpoints");
    let mut eps: Vec<(String, u32, i32)> = cla
        .endpoints
        .iter()
        .flat_map(|l| l.lb_endpoints.iter())
        .map(|e| {
            use envoy_types::pb::envoy::config::core::v3::address::Address;
            use envoy_types::pb::envoy::config::endpoint::v3::lb_endpoint::HostIdentifier;
            let Some(HostIdentifier::Endpoint(ep)) = &e.host_identifier else { panic!("no endpoint") };
            let Some(Address::SocketAddress(sa)) = ep.address.as_ref().and_then(|a| a.address.as_ref()) else { panic!("no address") };
            let port = match sa.port_specifier {
                Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(p)) => p,
                _ => 0,
            };
            (sa.address.clone(), port, e.health_status)
        })
        .collect();
    eps.sort();
    // HEALTHY = 1, DRAINING = 3
    assert_eq!(
        eps,
        [
            ("10.0.0.1".into(), 8080, 1),
            ("10.0.0.2".into(), 8080, 1),
            ("10.0.0.3".into(), 8080, 1),
            ("10.0.0.4".into(), 8080, 3)
        ]
    );
}

#[test]
fn missing_service_gives_503_and_a_diagnostic() {
    let p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[("a.example.com", &[("/", "Prefix", "nope", json!(80))])],
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), HTTP, "a.example.com"),
        pairs(&[("prefix=/", "direct=503")])
    );
    assert_eq!(
        reasons(&p.diagnostics()),
        pairs(&[("i", "ServiceNotFound")])
    );
    assert!(cluster(p.snapshot(), "shop/nope/80").is_none());
}

#[test]
fn missing_service_port_gives_503_and_a_diagnostic() {
    let p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[("a.example.com", &[("/", "Prefix", "web", json!("grpc"))])],
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), HTTP, "a.example.com"),
        pairs(&[("prefix=/", "direct=503")])
    );
    assert_eq!(
        reasons(&p.diagnostics()),
        pairs(&[("i", "ServicePortNotFound")])
    );
}

#[test]
fn a_service_appearing_later_fixes_the_route() {
    let mut p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[("a.example.com", &[("/", "Prefix", "late", json!(80))])],
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), HTTP, "a.example.com"),
        pairs(&[("prefix=/", "direct=503")])
    );
    let round = p.apply([apply(service("shop", "late", &[("", 80, json!(80))]))]);
    assert_eq!(
        round.translation.calls, 1,
        "only the Ingress that read the Service is translated again"
    );
    assert_eq!(
        routes(p.snapshot(), HTTP, "a.example.com"),
        pairs(&[("prefix=/", "cluster=shop/late/80")])
    );
    assert!(p.diagnostics().is_empty());
}
