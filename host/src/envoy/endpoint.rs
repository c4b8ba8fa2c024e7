//! ClusterLoadAssignments from EndpointSlices: endpoint churn never calls a
//! plugin.

use std::collections::BTreeMap;
use std::net::IpAddr;

use envoy_types::pb::envoy::config::core::v3::{HealthStatus, Locality};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint::HostIdentifier,
};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};

use super::listener::socket_address;
use super::u32_value;
use crate::store::SERVICE_NAME_LABEL;

/// The endpoints of `service_port` of a Service.
///
/// The Service port is found by number and identified by its *name*; each
/// slice's port of the same name (an unnamed Service port matches an unnamed
/// slice port) gives the endpoints' port number. The slice is the truth
/// because `targetPort` may name a container port whose number differs from
/// pod to pod.
///
/// Conditions: ready (or unset) → HEALTHY; not ready but serving and
/// terminating → DRAINING, included so the endpoint can take traffic when
/// nothing else can (Envoy only balances to it in panic mode; gRPC ignores
/// it); anything else is left out. An address in several slices appears
/// once, with its healthiest status. Only IP addresses are used (FQDN
/// slices are skipped). Endpoints are grouped into one locality per zone,
/// each weighted by its endpoint count (gRPC drops localities without a
/// weight); zones and endpoints are in a fixed order, so equal inputs give
/// equal bytes.
///
/// A Service without that port (or slices without a matching port) gives an
/// assignment with no endpoints: Envoy answers 503 until one appears.
pub fn load_assignment(
    cluster_name: &str,
    service: &Service,
    slices: &[EndpointSlice],
    service_port: u16,
) -> ClusterLoadAssignment {
    let mut cla = ClusterLoadAssignment {
        cluster_name: cluster_name.to_string(),
        ..Default::default()
    };
    let Some((port_name, protocol)) = resolve_service_port(service, service_port) else {
        return cla;
    };
    let service_name = service.metadata.name.as_deref().unwrap_or_default();
    let service_ns = service.metadata.namespace.as_deref().unwrap_or_default();

    // (address, port) → (health, zone); ordered, deduplicated.
    let mut endpoints: BTreeMap<(IpAddr, u16), (HealthStatus, String)> = BTreeMap::new();
    for slice in slices {
        if !belongs_to(slice, service_ns, service_name) {
            continue;
        }
        let Some(port) = slice.ports.iter().flatten().find_map(|p| {
            let same_name = p.name.as_deref().unwrap_or_default() == port_name;
            let same_protocol = p.protocol.as_deref().unwrap_or("TCP") == protocol;
            match (same_name && same_protocol, p.port.map(u16::try_from)) {
                (true, Some(Ok(port))) if port > 0 => Some(port),
                _ => None,
            }
        }) else {
            continue;
        };
        for ep in &slice.endpoints {
            let Some(health) = health(ep.conditions.as_ref()) else {
                continue;
            };
            let zone = ep.zone.clone().unwrap_or_default();
            for addr in &ep.addresses {
                let Ok(ip) = addr.parse::<IpAddr>() else {
                    continue;
                };
                endpoints
                    .entry((ip, port))
                    .and_modify(|(h, z)| {
                        if *h != HealthStatus::Healthy && health == HealthStatus::Healthy {
                            *h = health;
                            *z = zone.clone();
                        }
                    })
                    .or_insert_with(|| (health, zone.clone()));
            }
        }
    }

    let mut by_zone: BTreeMap<String, Vec<LbEndpoint>> = BTreeMap::new();
    for ((ip, port), (health, zone)) in endpoints {
        by_zone.entry(zone).or_default().push(LbEndpoint {
            host_identifier: Some(HostIdentifier::Endpoint(Endpoint {
                address: Some(socket_address(&ip.to_string(), port)),
                ..Default::default()
            })),
            health_status: health as i32,
            ..Default::default()
        });
    }
    cla.endpoints = by_zone
        .into_iter()
        .map(|(zone, lb_endpoints)| LocalityLbEndpoints {
            locality: Some(Locality {
                zone,
                ..Default::default()
            }),
            load_balancing_weight: Some(u32_value(lb_endpoints.len() as u32)),
            lb_endpoints,
            ..Default::default()
        })
        .collect();
    cla
}

/// The name ("" when unnamed) and protocol of the Service port with this
/// number; TCP first when the same number is also used for UDP or SCTP.
fn resolve_service_port(service: &Service, number: u16) -> Option<(&str, &str)> {
    let ports = service.spec.as_ref()?.ports.as_ref()?;
    ports
        .iter()
        .filter(|p| p.port == i32::from(number))
        .map(|p| {
            (
                p.name.as_deref().unwrap_or_default(),
                p.protocol.as_deref().unwrap_or("TCP"),
            )
        })
        .min_by_key(|(_, protocol)| *protocol != "TCP")
}

/// Slices come from the store's index by Service; a slice labelled for
/// another Service or in another namespace is not this Service's.
fn belongs_to(slice: &EndpointSlice, namespace: &str, service: &str) -> bool {
    let ns_ok = slice
        .metadata
        .namespace
        .as_deref()
        .is_none_or(|ns| ns == namespace);
    let label_ok = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVICE_NAME_LABEL))
        .is_none_or(|s| s == service);
    ns_ok && label_ok
}

/// EndpointSlice conditions: unset `ready` means ready; unset `serving`
/// defers to `ready`; unset `terminating` means not terminating.
fn health(conditions: Option<&EndpointConditions>) -> Option<HealthStatus> {
    let ready = conditions.and_then(|c| c.ready).unwrap_or(true);
    if ready {
        return Some(HealthStatus::Healthy);
    }
    let serving = conditions.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = conditions.and_then(|c| c.terminating).unwrap_or(false);
    (serving && terminating).then_some(HealthStatus::Draining)
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address};
    use prost::Message;
    use serde_json::{Value, json};

    fn service(ports: Value) -> Service {
        serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "ns"},
            "spec": {"ports": ports}
        }))
        .unwrap()
    }

    fn slice(name: &str, ports: Value, endpoints: Value) -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "ns", "labels": {SERVICE_NAME_LABEL: "web"}},
            "addressType": "IPv4",
            "ports": ports,
            "endpoints": endpoints
        }))
        .unwrap()
    }

    /// (zone, address, port, health) of every endpoint, in order, after an
    /// encode/decode round trip.
    fn flat(cla: &ClusterLoadAssignment) -> Vec<(String, String, u32, HealthStatus)> {
        let cla = ClusterLoadAssignment::decode(cla.encode_to_vec().as_slice()).unwrap();
        let mut out = Vec::new();
        for loc in &cla.endpoints {
            assert_eq!(
                loc.load_balancing_weight,
                Some(u32_value(loc.lb_endpoints.len() as u32))
            );
            for ep in &loc.lb_endpoints {
                let Some(HostIdentifier::Endpoint(e)) = &ep.host_identifier else {
                    panic!()
                };
                let Some(address::Address::SocketAddress(sa)) =
                    &e.address.as_ref().unwrap().address
                else {
                    panic!()
                };
                let Some(socket_address::PortSpecifier::PortValue(port)) =
                    sa.port_specifier.clone()
                else {
                    panic!()
                };
                out.push((
                    loc.locality.as_ref().unwrap().zone.clone(),
                    sa.address.clone(),
                    port,
                    HealthStatus::try_from(ep.health_status).unwrap(),
                ));
            }
        }
        out
    }

    fn ep(addr: &str, conditions: Value) -> Value {
        json!({"addresses": [addr], "conditions": conditions})
    }

    #[test]
    fn port_is_resolved_by_name_through_a_named_target_port() {
        // Service port 80 is "http" with targetPort "web" (a container port
        // name); the slice says which number that is.
        let svc = service(json!([
            {"name": "metrics", "port": 9090, "targetPort": 9090},
            {"name": "http", "port": 80, "targetPort": "web"}
        ]));
        let slices = [slice(
            "web-1",
            json!([{"name": "metrics", "port": 9090}, {"name": "http", "port": 8081}]),
            json!([ep("10.0.0.1", json!({"ready": true}))]),
        )];
        let cla = load_assignment("ns/web/80", &svc, &slices, 80);
        assert_eq!(cla.cluster_name, "ns/web/80");
        assert_eq!(
            flat(&cla),
            [("".into(), "10.0.0.1".into(), 8081, HealthStatus::Healthy)]
        );
        let metrics = load_assignment("ns/web/9090", &svc, &slices, 9090);
        assert_eq!(flat(&metrics)[0].2, 9090);
    }

    #[test]
    fn unnamed_service_port_matches_unnamed_slice_port() {
        let svc = service(json!([{"port": 80, "targetPort": 8080}]));
        let slices = [
            slice(
                "a",
                json!([{"port": 8080}]),
                json!([ep("10.0.0.1", json!({}))]),
            ),
            slice(
                "b",
                json!([{"name": "", "port": 8080}]),
                json!([ep("10.0.0.2", json!({}))]),
            ),
            // a named port is not the unnamed one
            slice(
                "c",
                json!([{"name": "other", "port": 7000}]),
                json!([ep("10.0.0.3", json!({}))]),
            ),
        ];
        let got: Vec<_> = flat(&load_assignment("c", &svc, &slices, 80))
            .into_iter()
            .map(|e| (e.1, e.2))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1".to_string(), 8080),
                ("10.0.0.2".to_string(), 8080)
            ]
        );
    }

    #[test]
    fn unknown_service_port_or_missing_slice_port_gives_no_endpoints() {
        let svc = service(json!([{"name": "http", "port": 80}]));
        let slices = [slice(
            "a",
            json!([{"name": "grpc", "port": 9000}]),
            json!([ep("10.0.0.1", json!({}))]),
        )];
        assert!(load_assignment("c", &svc, &slices, 81).endpoints.is_empty());
        assert!(load_assignment("c", &svc, &slices, 80).endpoints.is_empty());
        let no_ports: EndpointSlice = serde_json::from_value(json!({
            "metadata": {"name": "x", "namespace": "ns"}, "addressType": "IPv4",
            "endpoints": [{"addresses": ["10.0.0.1"]}]
        }))
        .unwrap();
        assert!(
            load_assignment("c", &svc, &[no_ports], 80)
                .endpoints
                .is_empty()
        );
    }

    #[test]
    fn conditions_decide_health() {
        let svc = service(json!([{"name": "http", "port": 80}]));
        let slices = [slice(
            "a",
            json!([{"name": "http", "port": 8080}]),
            json!([
                ep("10.0.0.1", json!({"ready": true, "serving": true, "terminating": false})),
                {"addresses": ["10.0.0.2"]},                       // no conditions: ready
                ep("10.0.0.3", json!({"serving": true})),           // nil ready: ready
                ep("10.0.0.4", json!({"ready": false, "serving": true, "terminating": true})),
                ep("10.0.0.5", json!({"ready": false, "serving": false, "terminating": true})),
                ep("10.0.0.6", json!({"ready": false})),            // starting up
                ep("10.0.0.7", json!({"ready": false, "serving": true, "terminating": false})),
                ep("10.0.0.8", json!({"ready": false, "terminating": true})), // serving unknown → not ready
            ]),
        )];
        let got: Vec<_> = flat(&load_assignment("c", &svc, &slices, 80))
            .into_iter()
            .map(|e| (e.1, e.3))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1".to_string(), HealthStatus::Healthy),
                ("10.0.0.2".to_string(), HealthStatus::Healthy),
                ("10.0.0.3".to_string(), HealthStatus::Healthy),
                ("10.0.0.4".to_string(), HealthStatus::Draining),
            ]
        );
    }

    #[test]
    fn addresses_are_deduplicated_across_slices_keeping_the_healthiest() {
        let svc = service(json!([{"name": "http", "port": 80}]));
        let port = json!([{"name": "http", "port": 8080}]);
        let draining = json!({"ready": false, "serving": true, "terminating": true});
        let slices = [
            slice(
                "a",
                port.clone(),
                json!([ep("10.0.0.2", draining.clone()), ep("10.0.0.1", json!({}))]),
            ),
            slice(
                "b",
                port.clone(),
                json!([
                    ep("10.0.0.2", json!({"ready": true})),
                    ep("10.0.0.1", draining)
                ]),
            ),
            slice("c", port, json!([ep("10.0.0.1", json!({}))])),
        ];
        let got: Vec<_> = flat(&load_assignment("c", &svc, &slices, 80))
            .into_iter()
            .map(|e| (e.1, e.3))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1".to_string(), HealthStatus::Healthy),
                ("10.0.0.2".to_string(), HealthStatus::Healthy)
            ]
        );
    }

    #[test]
    fn zones_become_localities_in_a_fixed_order() {
        let svc = service(json!([{"name": "http", "port": 80}]));
        let port = json!([{"name": "http", "port": 8080}]);
        let z = |addr: &str, zone: &str| json!({"addresses": [addr], "zone": zone});
        let one = [slice(
            "a",
            port.clone(),
            json!([z("10.0.0.10", "zone-b"), z("10.0.0.9", "zone-a"), {"addresses": ["10.0.0.1"]}, z("10.0.0.2", "zone-b")]),
        )];
        // the same endpoints, split differently and in another order
        let two = [
            slice(
                "b",
                port.clone(),
                json!([z("10.0.0.2", "zone-b"), {"addresses": ["10.0.0.1"]}]),
            ),
            slice(
                "a",
                port,
                json!([z("10.0.0.9", "zone-a"), z("10.0.0.10", "zone-b")]),
            ),
        ];
        let a = load_assignment("c", &svc, &one, 80);
        let b = load_assignment("c", &svc, &two, 80);
        assert_eq!(a.encode_to_vec(), b.encode_to_vec());
        let got: Vec<_> = flat(&a).into_iter().map(|e| (e.0, e.1)).collect();
        assert_eq!(
            got,
            [
                ("".to_string(), "10.0.0.1".to_string()),
                ("zone-a".to_string(), "10.0.0.9".to_string()),
                ("zone-b".to_string(), "10.0.0.2".to_string()),
                ("zone-b".to_string(), "10.0.0.10".to_string()),
            ]
        );
        assert_eq!(a.endpoints[2].load_balancing_weight, Some(u32_value(2)));
    }

    #[test]
    fn foreign_slices_and_non_ip_addresses_are_ignored() {
        let svc = service(json!([{"name": "http", "port": 80}]));
        let port = json!([{"name": "http", "port": 8080}]);
        let mut other: EndpointSlice = slice("x", port.clone(), json!([ep("10.0.0.9", json!({}))]));
        other
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(SERVICE_NAME_LABEL.into(), "other".into());
        let fqdn = slice("y", port.clone(), json!([ep("web.example.com", json!({}))]));
        let v6 = slice("z", port, json!([ep("fd00::1", json!({}))]));
        let got: Vec<_> = flat(&load_assignment("c", &svc, &[other, fqdn, v6], 80))
            .into_iter()
            .map(|e| e.1)
            .collect();
        assert_eq!(got, ["fd00::1"]);
    }

    #[test]
    fn tcp_port_wins_over_udp_with_the_same_number() {
        let svc = service(json!([
            {"name": "dns-udp", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
        ]));
        let slices = [slice(
            "a",
            json!([{"name": "dns-udp", "port": 5353, "protocol": "UDP"}, {"name": "dns-tcp", "port": 5354}]),
            json!([ep("10.0.0.1", json!({}))]),
        )];
        assert_eq!(flat(&load_assignment("c", &svc, &slices, 53))[0].2, 5354);
    }
}
