//! The Gateway API plugin (plugins/gateway-api) through the real component
//! and the host pipeline, beside the Ingress plugin: objects in, Envoy
//! resources and statuses out. Tests named after an upstream conformance
//! test (v1.6.1, conformance/tests) port its manifests and assert on what
//! the data plane would be given and on the statuses written.

use std::sync::OnceLock;

use envoy_types::pb::envoy::config::route::v3 as route;
use isobar::pipeline::Offline;
use isobar::plugin::{Plugin, Plugins};
use isobar_tests::*;
use serde_json::{Value, json};

const INFRA: &str = "gateway-conformance-infra";
const APP: &str = "gateway-conformance-app-backend";
const WEB: &str = "gateway-conformance-web-backend";
const CONTROLLER: &str = "isobar.dev/gateway-controller";
const GW: &str = "gw_80";

fn gateway_plugin() -> Plugin {
    static P: OnceLock<Plugin> = OnceLock::new();
    P.get_or_init(|| load("isobar-plugin-gateway-api")).clone()
}

fn pipeline(objects: impl IntoIterator<Item = Value>) -> Offline {
    let plugins = Plugins::new(vec![ingress_plugin(), gateway_plugin()], vec![]).expect("plugins");
    let mut p = Offline::with(plugins);
    p.load(objects.into_iter().map(apply));
    p.rebuild();
    p
}

// ---- fixtures (the conformance base manifests, trimmed) --------------------

fn gateway_class() -> Value {
    json!({"apiVersion":"gateway.networking.k8s.io/v1","kind":"GatewayClass",
        "metadata":{"name":"isobar","generation":1},"spec":{"controllerName":CONTROLLER}})
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion":"v1","kind":"Namespace","metadata":{"name":name,
        "labels":{"gateway-conformance":name.trim_start_matches("gateway-conformance-")}}})
}

fn gateway(name: &str, listeners: Value) -> Value {
    json!({"apiVersion":"gateway.networking.k8s.io/v1","kind":"Gateway",
        "metadata":{"namespace":INFRA,"name":name,"generation":1},
        "spec":{"gatewayClassName":"isobar","listeners":listeners}})
}

fn http(name: &str, port: u16, from: &str) -> Value {
    json!({"name":name,"port":port,"protocol":"HTTP","allowedRoutes":{"namespaces":{"from":from}}})
}

fn with_host(mut l: Value, host: &str) -> Value {
    l["hostname"] = json!(host);
    l
}

/// The conformance base: `same-namespace` (Same) and
/// `all-namespaces` (All) Gateways, on ports 80 and 81 here so their Envoy
/// listeners stay apart (upstream both use 80 on separate addresses).
fn base() -> Vec<Value> {
    let mut v = vec![
        gateway_class(),
        namespace(INFRA),
        namespace(APP),
        namespace(WEB),
        gateway("same-namespace", json!([http("http", 80, "Same")])),
        gateway("all-namespaces", json!([http("http", 81, "All")])),
    ];
    for (ns, names) in [
        (
            INFRA,
            &["infra-backend-v1", "infra-backend-v2", "infra-backend-v3"][..],
        ),
        (APP, &["app-backend-v1", "app-backend-v2"][..]),
        (WEB, &["web-backend"][..]),
    ] {
        for name in names {
            v.push(service(ns, name, &[("", 8080, json!(3000))]));
            v.push(slice(ns, name, "a", "", 3000, &["10.0.0.1"]));
        }
    }
    v
}

fn with(mut base: Vec<Value>, more: impl IntoIterator<Item = Value>) -> Vec<Value> {
    base.extend(more);
    base
}

fn http_route(ns: &str, name: &str, parents: Value, hostnames: Value, rules: Value) -> Value {
    json!({"apiVersion":"gateway.networking.k8s.io/v1","kind":"HTTPRoute",
        "metadata":{"namespace":ns,"name":name,"generation":1},
        "spec":{"parentRefs":parents,"hostnames":hostnames,"rules":rules}})
}

fn grpc_route(ns: &str, name: &str, parents: Value, hostnames: Value, rules: Value) -> Value {
    json!({"apiVersion":"gateway.networking.k8s.io/v1","kind":"GRPCRoute",
        "metadata":{"namespace":ns,"name":name,"generation":1},
        "spec":{"parentRefs":parents,"hostnames":hostnames,"rules":rules}})
}

fn parent(name: &str) -> Value {
    json!([{"name":name,"namespace":INFRA}])
}

fn backend(name: &str) -> Value {
    json!({"name":name,"port":8080})
}

fn rule(path: (&str, &str), backends: &[&str]) -> Value {
    json!({"matches":[{"path":{"type":path.0,"value":path.1}}],
        "backendRefs": backends.iter().map(|b| backend(b)).collect::<Vec<_>>()})
}

fn reference_grant(
    ns: &str,
    name: &str,
    from_kind: &str,
    from_ns: &str,
    to_kind: &str,
    to_name: Option<&str>,
) -> Value {
    let mut to = json!({"group":"","kind":to_kind});
    if let Some(n) = to_name {
        to["name"] = json!(n);
    }
    json!({"apiVersion":"gateway.networking.k8s.io/v1","kind":"ReferenceGrant",
        "metadata":{"namespace":ns,"name":name},
        "spec":{"from":[{"group":"gateway.networking.k8s.io","kind":from_kind,"namespace":from_ns}],"to":[to]}})
}

fn cluster_of(ns: &str, name: &str) -> String {
    format!("cluster={ns}/{name}/8080")
}

// ---- statuses ---------------------------------------------------------------

fn status_of(p: &Offline, kind: &str, name: &str) -> isobar::ir::ObjectStatus {
    p.statuses()
        .into_iter()
        .find(|s| s.object.kind == kind && s.object.name == name)
        .map(|s| {
            assert_eq!(s.field_manager(), "isobar-plugin-gateway-api");
            s.status
        })
        .unwrap_or_else(|| panic!("no status for {kind} {name}: {:?}", p.statuses()))
}

/// (type, status, reason) of every condition of the route's parent `gateway`.
fn parent_conditions(
    p: &Offline,
    kind: &str,
    route: &str,
    gateway: &str,
) -> Vec<(String, String, String)> {
    let s = status_of(p, kind, route);
    let parents = s.fields.expect("fields")["parents"].clone();
    let parent = parents
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["parentRef"]["name"] == gateway)
        .unwrap_or_else(|| panic!("no parent {gateway} in {parents}"))
        .clone();
    assert_eq!(parent["controllerName"], CONTROLLER);
    triples(&parent["conditions"])
}

fn triples(conditions: &Value) -> Vec<(String, String, String)> {
    conditions
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().to_owned(),
                c["status"].as_str().unwrap().to_owned(),
                c["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn t(type_: &str, status: &str, reason: &str) -> (String, String, String) {
    (type_.into(), status.into(), reason.into())
}

fn accepted_and_resolved() -> Vec<(String, String, String)> {
    vec![
        t("Accepted", "True", "Accepted"),
        t("ResolvedRefs", "True", "ResolvedRefs"),
    ]
}

/// The listener entries of a Gateway's status.
fn listener_status(p: &Offline, gateway: &str) -> Vec<Value> {
    status_of(p, "Gateway", gateway).fields.expect("fields")["listeners"]
        .as_array()
        .unwrap()
        .clone()
}

fn envoy_routes(p: &Offline, rc: &str, domain: &str) -> Vec<route::Route> {
    route_config(p.snapshot(), rc)
        .unwrap_or_else(|| panic!("no route config {rc}"))
        .virtual_hosts
        .into_iter()
        .find(|v| v.domains.iter().any(|d| d == domain))
        .unwrap_or_else(|| panic!("no virtual host {domain} in {rc}"))
        .routes
}

// ---- side by side with Ingress ------------------------------------------------

#[test]
fn ingress_and_gateway_api_are_served_side_by_side() {
    let objects = with(
        base(),
        [
            ingress_class("isobar", false),
            ingress(
                "gateway-conformance-infra",
                "ing",
                &[(
                    "ingress.example.com",
                    &[("/", "Prefix", "infra-backend-v1", json!(8080))],
                )],
            ),
            http_route(
                INFRA,
                "route",
                parent("same-namespace"),
                json!(["gateway.example.com"]),
                json!([rule(("PathPrefix", "/"), &["infra-backend-v2"])]),
            ),
        ],
    );
    let p = pipeline(objects);
    assert!(p.diagnostics().is_empty(), "{:?}", p.diagnostics());
    assert_eq!(
        routes(p.snapshot(), "ingress_http", "ingress.example.com"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v1"))])
    );
    assert_eq!(
        routes(p.snapshot(), GW, "gateway.example.com"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v2"))])
    );
    assert!(!domains_of(p.snapshot(), GW).contains("ingress.example.com"));
    assert!(!domains_of(p.snapshot(), "ingress_http").contains("gateway.example.com"));
    use envoy_types::pb::envoy::config::core::v3::{address, socket_address::PortSpecifier};
    let l = listener(p.snapshot(), GW).expect("gateway listener");
    let Some(address::Address::SocketAddress(sa)) = l.address.unwrap().address else {
        panic!("no socket address")
    };
    assert_eq!(sa.port_specifier, Some(PortSpecifier::PortValue(80)));
    assert!(listener(p.snapshot(), "ingress_http").is_some());
}

// ---- GatewayClass and Gateway ---------------------------------------------------

#[test]
fn gatewayclass_observed_generation_bump() {
    let mut p = pipeline(base());
    let s = status_of(&p, "GatewayClass", "isobar");
    assert_eq!(
        (
            s.conditions[0].type_.as_str(),
            s.conditions[0].reason.as_str()
        ),
        ("Accepted", "Accepted")
    );
    assert_eq!(s.conditions[0].observed_generation, Some(1));
    let mut class = gateway_class();
    class["metadata"]["generation"] = json!(2);
    p.apply([apply(class)]);
    assert_eq!(
        status_of(&p, "GatewayClass", "isobar").conditions[0].observed_generation,
        Some(2)
    );
}

#[test]
fn gateway_observed_generation_bump() {
    let mut p = pipeline(base());
    let s = status_of(&p, "Gateway", "same-namespace");
    assert_eq!(s.conditions[0].observed_generation, Some(1));
    let mut gw = gateway(
        "same-namespace",
        json!([http("http", 80, "Same"), http("other", 82, "Same")]),
    );
    gw["metadata"]["generation"] = json!(2);
    p.apply([apply(gw)]);
    let s = status_of(&p, "Gateway", "same-namespace");
    assert_eq!(s.conditions[0].observed_generation, Some(2));
    assert_eq!(listener_status(&p, "same-namespace").len(), 2);
    assert!(listener(p.snapshot(), "gw_82").is_some());
}

#[test]
fn gateway_listener_unsupported_protocol() {
    let p = pipeline(with(
        base(),
        [
            gateway(
                "gateway-only-unsupported-protocols",
                json!([{"name":"invalid","port":8090,"protocol":"INVALID"}]),
            ),
            gateway(
                "gateway-supported-and-unsupported-protocols",
                json!([http("http", 8094, "Same"), {"name":"invalid","port":8095,"protocol":"INVALID"}]),
            ),
        ],
    ));
    let only = status_of(&p, "Gateway", "gateway-only-unsupported-protocols");
    assert_eq!(
        (
            only.conditions[0].status,
            only.conditions[0].reason.as_str()
        ),
        (isobar::ir::ConditionStatus::False, "ListenersNotValid")
    );
    let l = listener_status(&p, "gateway-only-unsupported-protocols");
    assert_eq!(
        triples(&l[0]["conditions"])[0],
        t("Accepted", "False", "UnsupportedProtocol")
    );
    assert!(listener(p.snapshot(), "gw_8090").is_none());
    let mixed = status_of(&p, "Gateway", "gateway-supported-and-unsupported-protocols");
    assert_eq!(
        (
            mixed.conditions[0].status,
            mixed.conditions[0].reason.as_str()
        ),
        (isobar::ir::ConditionStatus::True, "ListenersNotValid")
    );
    let l = listener_status(&p, "gateway-supported-and-unsupported-protocols");
    assert_eq!(
        triples(&l[0]["conditions"])[0],
        t("Accepted", "True", "Accepted")
    );
    assert_eq!(
        triples(&l[1]["conditions"])[0],
        t("Accepted", "False", "UnsupportedProtocol")
    );
    assert!(listener(p.snapshot(), "gw_8094").is_some());
}

#[test]
fn gateway_invalid_parameters_ref() {
    let mut gw = gateway(
        "gateway-invalid-parameters-ref",
        json!([http("http", 80, "Same")]),
    );
    gw["spec"]["infrastructure"] =
        json!({"parametersRef":{"group":"invalid.io","kind":"InvalidParameters","name":"invalid"}});
    let p = pipeline(with(base(), [gw]));
    let s = status_of(&p, "Gateway", "gateway-invalid-parameters-ref");
    assert_eq!(
        (
            s.conditions[0].type_.as_str(),
            s.conditions[0].reason.as_str()
        ),
        ("Accepted", "InvalidParameters")
    );
    assert_eq!(s.conditions[0].status, isobar::ir::ConditionStatus::False);
}

#[test]
fn gateway_invalid_route_kind() {
    let p = pipeline(with(
        base(),
        [
            gateway(
                "gateway-only-invalid-route-kind",
                json!([{"name":"http","port":8091,"protocol":"HTTP",
            "allowedRoutes":{"kinds":[{"kind":"InvalidRoute"}]}}]),
            ),
            gateway(
                "gateway-supported-and-invalid-route-kind",
                json!([{"name":"http","port":8092,"protocol":"HTTP",
            "allowedRoutes":{"kinds":[{"kind":"InvalidRoute"},{"kind":"HTTPRoute"}]}}]),
            ),
        ],
    ));
    let only = listener_status(&p, "gateway-only-invalid-route-kind");
    assert_eq!(only[0]["supportedKinds"], json!([]));
    assert_eq!(
        triples(&only[0]["conditions"])[1],
        t("ResolvedRefs", "False", "InvalidRouteKinds")
    );
    let both = listener_status(&p, "gateway-supported-and-invalid-route-kind");
    assert_eq!(
        both[0]["supportedKinds"],
        json!([{"group":"gateway.networking.k8s.io","kind":"HTTPRoute"}])
    );
    assert_eq!(
        triples(&both[0]["conditions"])[1],
        t("ResolvedRefs", "False", "InvalidRouteKinds")
    );
}

fn https_gateway(name: &str, port: u16, cert: Value) -> Value {
    gateway(
        name,
        json!([{"name":"https","port":port,"protocol":"HTTPS","hostname":"secure.test.com",
        "allowedRoutes":{"namespaces":{"from":"All"}},"tls":{"certificateRefs":[cert]}}]),
    )
}

#[test]
fn gateway_invalid_tls_configuration() {
    let p = pipeline(with(
        base(),
        [
            https_gateway(
                "gateway-certificate-unsupported-kind",
                8443 + 1000,
                json!({"group":"","kind":"WrongKind","name":"tls-validity-checks-certificate"}),
            ),
            https_gateway(
                "gateway-certificate-unsupported-group",
                8443 + 1001,
                json!({"group":"wrong.group.company.io","kind":"Secret","name":"tls-validity-checks-certificate"}),
            ),
        ],
    ));
    for gw in [
        "gateway-certificate-unsupported-kind",
        "gateway-certificate-unsupported-group",
    ] {
        let l = listener_status(&p, gw);
        assert_eq!(
            triples(&l[0]["conditions"])[1],
            t("ResolvedRefs", "False", "InvalidCertificateRef"),
            "{gw}"
        );
    }
    assert!(listener(p.snapshot(), "gw_9443").is_none());
}

#[test]
fn gateway_secret_missing_reference_grant() {
    let p = pipeline(with(
        base(),
        [https_gateway(
            "gateway-secret-missing-reference-grant",
            9443,
            json!({"name":"certificate","namespace":"gateway-conformance-web-backend"}),
        )],
    ));
    let l = listener_status(&p, "gateway-secret-missing-reference-grant");
    assert_eq!(
        triples(&l[0]["conditions"])[1],
        t("ResolvedRefs", "False", "RefNotPermitted")
    );
}

#[test]
fn gateway_secret_invalid_reference_grant() {
    // The grant names another Secret.
    let p = pipeline(with(
        base(),
        [
            https_gateway(
                "gateway-secret-invalid-reference-grant",
                9443,
                json!({"name":"certificate","namespace":WEB}),
            ),
            reference_grant(
                WEB,
                "reference-grant-wrong-name",
                "Gateway",
                INFRA,
                "Secret",
                Some("not-the-certificate"),
            ),
        ],
    ));
    let l = listener_status(&p, "gateway-secret-invalid-reference-grant");
    assert_eq!(
        triples(&l[0]["conditions"])[1],
        t("ResolvedRefs", "False", "RefNotPermitted")
    );
}

#[test]
fn gateway_secret_reference_grant_all_in_namespace() {
    let p = pipeline(with(
        base(),
        [
            https_gateway(
                "gateway-secret-reference-grant",
                9443,
                json!({"name":"certificate","namespace":WEB}),
            ),
            reference_grant(WEB, "reference-grant-all", "Gateway", INFRA, "Secret", None),
            tls_secret(WEB, "certificate"),
            http_route(
                INFRA,
                "r",
                parent("gateway-secret-reference-grant"),
                json!([]),
                json!([rule(("PathPrefix", "/"), &["infra-backend-v1"])]),
            ),
        ],
    ));
    let l = listener_status(&p, "gateway-secret-reference-grant");
    assert_eq!(
        triples(&l[0]["conditions"])[1],
        t("ResolvedRefs", "True", "ResolvedRefs")
    );
    let envoy = listener(p.snapshot(), "gw_9443").expect("https listener");
    let sni = &envoy.filter_chains[0]
        .filter_chain_match
        .as_ref()
        .unwrap()
        .server_names;
    assert_eq!(sni, &["secure.test.com".to_string()]);
    assert!(secret(p.snapshot(), &format!("{WEB}/certificate")).is_some());
}

#[test]
fn gateway_secret_reference_grant_specific() {
    let p = pipeline(with(
        base(),
        [
            https_gateway(
                "gateway-secret-reference-grant",
                9443,
                json!({"name":"certificate","namespace":WEB}),
            ),
            reference_grant(
                WEB,
                "reference-grant-specific",
                "Gateway",
                INFRA,
                "Secret",
                Some("certificate"),
            ),
        ],
    ));
    let l = listener_status(&p, "gateway-secret-reference-grant");
    assert_eq!(
        triples(&l[0]["conditions"])[1],
        t("ResolvedRefs", "True", "ResolvedRefs")
    );
}

#[test]
fn gateway_with_attached_routes() {
    let mut p = pipeline(with(
        base(),
        [
            gateway(
                "gateway-with-one-attached-route",
                json!([with_host(http("http", 83, "Same"), "*.example.com")]),
            ),
            gateway(
                "gateway-with-two-attached-routes",
                json!([http("http", 84, "All")]),
            ),
            http_route(
                INFRA,
                "http-route-1",
                parent("gateway-with-one-attached-route"),
                json!([]),
                json!([rule(("PathPrefix", "/"), &["infra-backend-v1"])]),
            ),
            http_route(
                INFRA,
                "http-route-2",
                parent("gateway-with-two-attached-routes"),
                json!([]),
                json!([rule(("PathPrefix", "/"), &["infra-backend-v1"])]),
            ),
            http_route(
                WEB,
                "http-route-3",
                parent("gateway-with-two-attached-routes"),
                json!([]),
                json!([rule(("PathPrefix", "/"), &["web-backend"])]),
            ),
        ],
    ));
    assert_eq!(
        listener_status(&p, "gateway-with-one-attached-route")[0]["attachedRoutes"],
        1
    );
    assert_eq!(
        listener_status(&p, "gateway-with-two-attached-routes")[0]["attachedRoutes"],
        2
    );
    let l = listener_status(&p, "gateway-with-one-attached-route");
    assert_eq!(
        triples(&l[0]["conditions"]),
        [
            t("Accepted", "True", "Accepted"),
            t("ResolvedRefs", "True", "ResolvedRefs"),
            t("Conflicted", "False", "NoConflicts")
        ]
    );
    // A route that goes away is no longer counted: the Gateway read it.
    p.apply([delete(&http_route(
        WEB,
        "http-route-3",
        json!([]),
        json!([]),
        json!([]),
    ))]);
    assert_eq!(
        listener_status(&p, "gateway-with-two-attached-routes")[0]["attachedRoutes"],
        1
    );
}

#[test]
fn gateway_modify_listeners() {
    let mut p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "r",
            parent("same-namespace"),
            json!([]),
            json!([rule(("PathPrefix", "/"), &["infra-backend-v1"])]),
        )],
    ));
    assert!(listener(p.snapshot(), GW).is_some());
    // The Gateway moves its listener: the route follows (it read the Gateway).
    p.apply([apply(gateway(
        "same-namespace",
        json!([http("http", 85, "Same")]),
    ))]);
    assert!(listener(p.snapshot(), GW).is_none());
    assert_eq!(
        routes(p.snapshot(), "gw_85", "*"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v1"))])
    );
}

// ---- HTTPRoute ------------------------------------------------------------------

#[test]
fn httproute_simple_same_namespace() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "gateway-conformance-infra-test",
            parent("same-namespace"),
            json!([]),
            json!([{"backendRefs":[backend("infra-backend-v1")]}]),
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v1"))])
    );
    assert_eq!(
        parent_conditions(
            &p,
            "HTTPRoute",
            "gateway-conformance-infra-test",
            "same-namespace"
        ),
        accepted_and_resolved()
    );
    assert!(cluster(p.snapshot(), &format!("{INFRA}/infra-backend-v1/8080")).is_some());
}

#[test]
fn httproute_cross_namespace() {
    let p = pipeline(with(
        base(),
        [http_route(
            WEB,
            "cross-namespace",
            json!([{"name":"all-namespaces","namespace":INFRA}]),
            json!([]),
            json!([{"backendRefs":[backend("web-backend")]}]),
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), "gw_81", "*"),
        pairs(&[("prefix=/", &cluster_of(WEB, "web-backend"))])
    );
    assert_eq!(
        parent_conditions(&p, "HTTPRoute", "cross-namespace", "all-namespaces"),
        accepted_and_resolved()
    );
}

#[test]
fn httproute_invalid_cross_namespace_parent_ref() {
    let p = pipeline(with(
        base(),
        [http_route(
            WEB,
            "invalid-cross-namespace-parent-ref",
            parent("same-namespace"),
            json!([]),
            json!([{"backendRefs":[backend("web-backend")]}]),
        )],
    ));
    assert_eq!(
        parent_conditions(
            &p,
            "HTTPRoute",
            "invalid-cross-namespace-parent-ref",
            "same-namespace"
        )[0],
        t("Accepted", "False", "NotAllowedByListeners")
    );
    assert!(domains_of(p.snapshot(), GW).is_empty());
}

#[test]
fn httproute_exact_path_matching() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "exact-matching",
            parent("same-namespace"),
            json!([]),
            json!([
                rule(("Exact", "/one"), &["infra-backend-v1"]),
                rule(("Exact", "/two"), &["infra-backend-v2"])
            ]),
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[
            ("path=/one", &cluster_of(INFRA, "infra-backend-v1")),
            ("path=/two", &cluster_of(INFRA, "infra-backend-v2"))
        ])
    );
}

#[test]
fn httproute_matching() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "matching",
            parent("same-namespace"),
            json!([]),
            json!([
        {"matches":[{"path":{"type":"PathPrefix","value":"/"}},{"headers":[{"name":"version","value":"one"}]}],"backendRefs":[backend("infra-backend-v1")]},
        {"matches":[{"path":{"type":"PathPrefix","value":"/v2"}},{"headers":[{"name":"version","value":"two"}]}],"backendRefs":[backend("infra-backend-v2")]}]),
        )],
    ));
    let rs = envoy_routes(&p, GW, "*");
    let summary: Vec<(String, usize, String)> = routes(p.snapshot(), GW, "*")
        .into_iter()
        .zip(&rs)
        .map(|((m, a), r)| (m, r.r#match.as_ref().unwrap().headers.len(), a))
        .collect();
    // /v2 before /; a header match before none at the same path.
    assert_eq!(
        summary,
        [
            ("path=/v2".into(), 0, cluster_of(INFRA, "infra-backend-v2")),
            (
                "prefix=/v2/".into(),
                0,
                cluster_of(INFRA, "infra-backend-v2")
            ),
            ("prefix=/".into(), 1, cluster_of(INFRA, "infra-backend-v1")),
            ("prefix=/".into(), 1, cluster_of(INFRA, "infra-backend-v2")),
            ("prefix=/".into(), 0, cluster_of(INFRA, "infra-backend-v1")),
        ]
    );
}

#[test]
fn httproute_matching_across_routes() {
    let p = pipeline(with(
        base(),
        [
            http_route(
                INFRA,
                "matching-part1",
                parent("same-namespace"),
                json!(["example.com", "example.net"]),
                json!([
            rule(("PathPrefix", "/"), &["infra-backend-v1"]),
            {"matches":[{"path":{"type":"Exact","value":"/example"}}],"backendRefs":[backend("infra-backend-v1")]}]),
            ),
            http_route(
                INFRA,
                "matching-part2",
                parent("same-namespace"),
                json!(["example.com"]),
                json!([
            {"matches":[{"path":{"type":"PathPrefix","value":"/v2"}},{"headers":[{"name":"version","value":"two"}]}],"backendRefs":[backend("infra-backend-v2")]}]),
            ),
        ],
    ));
    let got = routes(p.snapshot(), GW, "example.com");
    assert_eq!(
        got[0],
        (
            "path=/example".to_string(),
            cluster_of(INFRA, "infra-backend-v1")
        )
    );
    assert_eq!(
        got[1],
        (
            "path=/v2".to_string(),
            cluster_of(INFRA, "infra-backend-v2")
        )
    );
    assert_eq!(
        got[2],
        (
            "prefix=/v2/".to_string(),
            cluster_of(INFRA, "infra-backend-v2")
        )
    );
    assert_eq!(
        got.last().unwrap(),
        &(
            "prefix=/".to_string(),
            cluster_of(INFRA, "infra-backend-v1")
        )
    );
    assert_eq!(
        routes(p.snapshot(), GW, "example.net").len(),
        2,
        "the exact path and the prefix"
    );
}

#[test]
fn httproute_path_match_order() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "path-matching-order",
            parent("same-namespace"),
            json!([]),
            json!([
                rule(("PathPrefix", "/match"), &["infra-backend-v1"]),
                rule(("Exact", "/match/exact"), &["infra-backend-v2"]),
                rule(("PathPrefix", "/match/prefix"), &["infra-backend-v3"]),
                rule(("PathPrefix", "/match/prefix/one"), &["infra-backend-v1"]),
            ]),
        )],
    ));
    let got: Vec<String> = routes(p.snapshot(), GW, "*")
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    assert_eq!(
        got,
        [
            "path=/match/exact",
            "path=/match/prefix/one",
            "prefix=/match/prefix/one/",
            "path=/match/prefix",
            "prefix=/match/prefix/",
            "path=/match",
            "prefix=/match/"
        ]
    );
}

#[test]
fn httproute_header_matching() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "header-matching",
            parent("same-namespace"),
            json!([]),
            json!([
                {"matches":[{"headers":[{"name":"Version","value":"one"}]}],"backendRefs":[backend("infra-backend-v1")]},
                {"matches":[{"headers":[{"name":"Version","value":"two"},{"name":"Color","value":"orange"}]}],"backendRefs":[backend("infra-backend-v2")]},
            ]),
        )],
    ));
    let rs = envoy_routes(&p, GW, "*");
    let names: Vec<Vec<String>> = rs
        .iter()
        .map(|r| {
            r.r#match
                .as_ref()
                .unwrap()
                .headers
                .iter()
                .map(|h| h.name.clone())
                .collect()
        })
        .collect();
    // More header matches first.
    assert_eq!(
        names,
        [
            vec!["version".to_string(), "color".into()],
            vec!["version".to_string()]
        ]
    );
}

#[test]
fn httproute_query_param_matching() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "query-param-matching",
            parent("same-namespace"),
            json!([]),
            json!([
                {"matches":[{"queryParams":[{"name":"animal","value":"whale"}]}],"backendRefs":[backend("infra-backend-v1")]},
            ]),
        )],
    ));
    let rs = envoy_routes(&p, GW, "*");
    let q = &rs[0].r#match.as_ref().unwrap().query_parameters;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].name, "animal");
}

#[test]
fn httproute_method_matching() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "method-matching",
            parent("same-namespace"),
            json!([]),
            json!([
                {"matches":[{"method":"POST"}],"backendRefs":[backend("infra-backend-v1")]},
                {"matches":[{"method":"GET"}],"backendRefs":[backend("infra-backend-v2")]},
            ]),
        )],
    ));
    let rs = envoy_routes(&p, GW, "*");
    let methods: Vec<String> = rs
        .iter()
        .map(|r| format!("{:?}", r.r#match.as_ref().unwrap().headers))
        .collect();
    assert_eq!(methods.len(), 2);
    assert!(
        methods
            .iter()
            .any(|m| m.contains(":method") && m.contains("POST")),
        "{methods:?}"
    );
    assert!(
        methods
            .iter()
            .any(|m| m.contains(":method") && m.contains("GET")),
        "{methods:?}"
    );
}

#[test]
fn httproute_hostname_intersection() {
    let p = pipeline(with(
        base(),
        [
            gateway(
                "httproute-hostname-intersection",
                json!([
                    with_host(http("listener-1", 86, "All"), "very.specific.com"),
                    with_host(http("listener-2", 86, "All"), "*.wildcard.io"),
                    with_host(http("listener-3", 86, "All"), "*.anotherwildcard.io")
                ]),
            ),
            http_route(
                INFRA,
                "specific-host-matches-listener-specific-host",
                parent("httproute-hostname-intersection"),
                json!([
                    "non.matching.com",
                    "*.nonmatchingwildcard.io",
                    "very.specific.com"
                ]),
                json!([rule(("PathPrefix", "/s1"), &["infra-backend-v1"])]),
            ),
            http_route(
                INFRA,
                "specific-host-matches-listener-wildcard-host",
                parent("httproute-hostname-intersection"),
                json!([
                    "non.matching.com",
                    "wildcard.io",
                    "foo.wildcard.io",
                    "bar.wildcard.io",
                    "foo.bar.wildcard.io"
                ]),
                json!([rule(("PathPrefix", "/s2"), &["infra-backend-v2"])]),
            ),
            http_route(
                INFRA,
                "wildcard-host-matches-listener-specific-host",
                parent("httproute-hostname-intersection"),
                json!(["non.matching.com", "*.specific.com"]),
                json!([rule(("PathPrefix", "/s3"), &["infra-backend-v3"])]),
            ),
            http_route(
                INFRA,
                "wildcard-host-matches-listener-wildcard-host",
                parent("httproute-hostname-intersection"),
                json!(["*.anotherwildcard.io"]),
                json!([rule(("PathPrefix", "/s4"), &["infra-backend-v1"])]),
            ),
            http_route(
                INFRA,
                "no-intersecting-hosts",
                parent("httproute-hostname-intersection"),
                json!(["specific.but.wrong.com", "wildcard.io"]),
                json!([rule(("PathPrefix", "/s5"), &["infra-backend-v2"])]),
            ),
        ],
    ));
    let domains = domains_of(p.snapshot(), "gw_86");
    for d in [
        "very.specific.com",
        "foo.wildcard.io",
        "bar.wildcard.io",
        "foo.bar.wildcard.io",
        "*.anotherwildcard.io",
    ] {
        assert!(domains.contains(d), "{d}: {domains:?}");
    }
    for d in [
        "non.matching.com",
        "wildcard.io",
        "*.specific.com",
        "specific.but.wrong.com",
        "*.nonmatchingwildcard.io",
    ] {
        assert!(!domains.contains(d), "{d}: {domains:?}");
    }
    // The listener's own name for the route's wider wildcard.
    let very: Vec<String> = routes(p.snapshot(), "gw_86", "very.specific.com")
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    // A segment prefix is compiled to an exact path and a "/"-ended prefix.
    assert_eq!(very, ["path=/s1", "prefix=/s1/", "path=/s3", "prefix=/s3/"]);
    assert_eq!(
        parent_conditions(
            &p,
            "HTTPRoute",
            "no-intersecting-hosts",
            "httproute-hostname-intersection"
        )[0],
        t("Accepted", "False", "NoMatchingListenerHostname")
    );
}

#[test]
fn httproute_listener_hostname_matching() {
    let p = pipeline(with(
        base(),
        [
            gateway(
                "httproute-listener-hostname-matching",
                json!([
                    with_host(http("listener-1", 87, "All"), "bar.com"),
                    with_host(http("listener-2", 87, "All"), "foo.bar.com"),
                    with_host(http("listener-3", 87, "All"), "*.bar.com"),
                    with_host(http("listener-4", 87, "All"), "*.foo.com")
                ]),
            ),
            http_route(
                INFRA,
                "backend-v1",
                json!([{"name":"httproute-listener-hostname-matching","namespace":INFRA,"sectionName":"listener-1"}]),
                json!([]),
                json!([{"backendRefs":[backend("infra-backend-v1")]}]),
            ),
            http_route(
                INFRA,
                "backend-v2",
                json!([{"name":"httproute-listener-hostname-matching","namespace":INFRA,"sectionName":"listener-2"}]),
                json!([]),
                json!([{"backendRefs":[backend("infra-backend-v2")]}]),
            ),
            http_route(
                INFRA,
                "backend-v3",
                json!([{"name":"httproute-listener-hostname-matching","namespace":INFRA,"sectionName":"listener-3"},
            {"name":"httproute-listener-hostname-matching","namespace":INFRA,"sectionName":"listener-4"}]),
                json!([]),
                json!([{"backendRefs":[backend("infra-backend-v3")]}]),
            ),
        ],
    ));
    let rc = "gw_87";
    assert_eq!(
        routes(p.snapshot(), rc, "bar.com"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v1"))])
    );
    assert_eq!(
        routes(p.snapshot(), rc, "foo.bar.com"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v2"))])
    );
    assert_eq!(
        routes(p.snapshot(), rc, "*.bar.com"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v3"))])
    );
    assert_eq!(
        routes(p.snapshot(), rc, "*.foo.com"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v3"))])
    );
    assert_eq!(
        parent_conditions(
            &p,
            "HTTPRoute",
            "backend-v3",
            "httproute-listener-hostname-matching"
        ),
        accepted_and_resolved()
    );
}

#[test]
fn httproute_invalid_parent_ref_not_matching_section_name() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "httproute-not-matching-section-name",
            json!([{"name":"same-namespace","namespace":INFRA,"sectionName":"unknown-section"}]),
            json!([]),
            json!([{"backendRefs":[backend("infra-backend-v1")]}]),
        )],
    ));
    assert_eq!(
        parent_conditions(
            &p,
            "HTTPRoute",
            "httproute-not-matching-section-name",
            "same-namespace"
        )[0],
        t("Accepted", "False", "NoMatchingParent")
    );
    assert!(domains_of(p.snapshot(), GW).is_empty());
}

#[test]
fn httproute_invalid_parent_ref_not_matching_listener_port() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "httproute-listener-not-matching-route-port",
            json!([{"name":"same-namespace","namespace":INFRA,"port":81}]),
            json!([]),
            json!([{"backendRefs":[backend("infra-backend-v1")]}]),
        )],
    ));
    assert_eq!(
        parent_conditions(
            &p,
            "HTTPRoute",
            "httproute-listener-not-matching-route-port",
            "same-namespace"
        )[0],
        t("Accepted", "False", "NoMatchingParent")
    );
}

#[test]
fn httproute_listener_port_matching() {
    let p = pipeline(with(
        base(),
        [
            gateway(
                "httproute-listener-port-matching",
                json!([http("http-88", 88, "Same"), http("http-89", 89, "Same")]),
            ),
            http_route(
                INFRA,
                "route-89",
                json!([{"name":"httproute-listener-port-matching","namespace":INFRA,"port":89}]),
                json!([]),
                json!([{"backendRefs":[backend("infra-backend-v1")]}]),
            ),
        ],
    ));
    assert!(domains_of(p.snapshot(), "gw_88").is_empty());
    assert_eq!(
        routes(p.snapshot(), "gw_89", "*"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v1"))])
    );
}

#[test]
fn httproute_invalid_nonexistent_backend_ref() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "invalid-nonexistent-backend-ref",
            parent("same-namespace"),
            json!([]),
            json!([{"backendRefs":[backend("nonexistent")]}]),
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[("prefix=/", "direct=500")])
    );
    assert_eq!(
        parent_conditions(
            &p,
            "HTTPRoute",
            "invalid-nonexistent-backend-ref",
            "same-namespace"
        ),
        [
            t("Accepted", "True", "Accepted"),
            t("ResolvedRefs", "False", "BackendNotFound")
        ]
    );
}

#[test]
fn httproute_invalid_backend_ref_unknown_kind() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "invalid-backend-ref-unknown-kind",
            parent("same-namespace"),
            json!([]),
            json!([{"backendRefs":[{"group":"unknownkind.example.com","kind":"NonExistent","name":"infra-backend-v1","port":8080}]}]),
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[("prefix=/", "direct=500")])
    );
    assert_eq!(
        parent_conditions(
            &p,
            "HTTPRoute",
            "invalid-backend-ref-unknown-kind",
            "same-namespace"
        )[1],
        t("ResolvedRefs", "False", "InvalidKind")
    );
}

#[test]
fn httproute_invalid_cross_namespace_backend_ref() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "invalid-cross-namespace-backend-ref",
            parent("same-namespace"),
            json!([]),
            json!([{"backendRefs":[{"name":"web-backend","namespace":WEB,"port":8080}]}]),
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[("prefix=/", "direct=500")])
    );
    assert_eq!(
        parent_conditions(
            &p,
            "HTTPRoute",
            "invalid-cross-namespace-backend-ref",
            "same-namespace"
        )[1],
        t("ResolvedRefs", "False", "RefNotPermitted")
    );
}

#[test]
fn httproute_reference_grant() {
    let route = http_route(
        INFRA,
        "reference-grant",
        parent("same-namespace"),
        json!([]),
        json!([{"backendRefs":[{"name":"web-backend","namespace":WEB,"port":8080}]}]),
    );
    let mut p = pipeline(with(
        base(),
        [
            route,
            reference_grant(
                WEB,
                "reference-grant",
                "HTTPRoute",
                INFRA,
                "Service",
                Some("web-backend"),
            ),
        ],
    ));
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[("prefix=/", &cluster_of(WEB, "web-backend"))])
    );
    assert_eq!(
        parent_conditions(&p, "HTTPRoute", "reference-grant", "same-namespace"),
        accepted_and_resolved()
    );
    // The grant is withdrawn: the route read it, so it is translated again.
    p.apply([delete(&reference_grant(
        WEB,
        "reference-grant",
        "HTTPRoute",
        INFRA,
        "Service",
        None,
    ))]);
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[("prefix=/", "direct=500")])
    );
}

#[test]
fn httproute_invalid_reference_grant() {
    // The grant is for another Service.
    let p = pipeline(with(
        base(),
        [
            http_route(
                INFRA,
                "reference-grant",
                parent("same-namespace"),
                json!([]),
                json!([{"backendRefs":[{"name":"web-backend","namespace":WEB,"port":8080}]}]),
            ),
            reference_grant(
                WEB,
                "reference-grant",
                "HTTPRoute",
                INFRA,
                "Service",
                Some("not-web-backend"),
            ),
        ],
    ));
    assert_eq!(
        parent_conditions(&p, "HTTPRoute", "reference-grant", "same-namespace")[1],
        t("ResolvedRefs", "False", "RefNotPermitted")
    );
}

#[test]
fn httproute_partially_invalid_via_invalid_reference_grant() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "invalid-reference-grant",
            parent("same-namespace"),
            json!([]),
            json!([
        {"matches":[{"path":{"type":"PathPrefix","value":"/v2"}}],"backendRefs":[{"name":"app-backend-v2","namespace":APP,"port":8080}]},
        rule(("PathPrefix", "/"), &["infra-backend-v1"])]),
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[
            ("path=/v2", "direct=500"),
            ("prefix=/v2/", "direct=500"),
            ("prefix=/", &cluster_of(INFRA, "infra-backend-v1"))
        ])
    );
    assert_eq!(
        parent_conditions(&p, "HTTPRoute", "invalid-reference-grant", "same-namespace"),
        [
            t("Accepted", "True", "Accepted"),
            t("ResolvedRefs", "False", "RefNotPermitted")
        ]
    );
}

#[test]
fn httproute_no_backend_refs() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "no-backends",
            parent("same-namespace"),
            json!([]),
            json!([{"matches":[{"path":{"type":"PathPrefix","value":"/"}}]}]),
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[("prefix=/", "direct=500")])
    );
    assert_eq!(
        parent_conditions(&p, "HTTPRoute", "no-backends", "same-namespace"),
        accepted_and_resolved()
    );
}

#[test]
fn httproute_weight() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "weighted-backends",
            parent("same-namespace"),
            json!([]),
            json!([{"backendRefs":[
        {"name":"infra-backend-v1","port":8080,"weight":70},{"name":"infra-backend-v2","port":8080,"weight":30},{"name":"infra-backend-v3","port":8080,"weight":0}]}]),
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[(
            "prefix=/",
            &format!("weighted={INFRA}/infra-backend-v1/8080:70,{INFRA}/infra-backend-v2/8080:30")
        )])
    );
}

#[test]
fn httproute_request_header_modifier() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "request-header-modifier",
            parent("same-namespace"),
            json!([]),
            json!([{
        "filters":[{"type":"RequestHeaderModifier","requestHeaderModifier":{"set":[{"name":"X-Header-Set","value":"set-overwrites-values"}],
            "add":[{"name":"X-Header-Add","value":"add-appends-values"}],"remove":["X-Header-Remove"]}}],
        "backendRefs":[backend("infra-backend-v1")]}]),
        )],
    ));
    let r = &envoy_routes(&p, GW, "*")[0];
    // Header names reach Envoy lower-cased (HTTP header names are case-insensitive).
    let added: Vec<(String, String)> = r
        .request_headers_to_add
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    assert!(
        added.contains(&("x-header-set".into(), "set-overwrites-values".into())),
        "{added:?}"
    );
    assert!(
        added.contains(&("x-header-add".into(), "add-appends-values".into())),
        "{added:?}"
    );
    assert_eq!(r.request_headers_to_remove, ["x-header-remove"]);
}

#[test]
fn httproute_response_header_modifier() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "response-header-modifier",
            parent("same-namespace"),
            json!([]),
            json!([{
        "filters":[{"type":"ResponseHeaderModifier","responseHeaderModifier":{"set":[{"name":"X-Header-Set","value":"set-overwrites-values"}],"remove":["X-Header-Remove"]}}],
        "backendRefs":[backend("infra-backend-v1")]}]),
        )],
    ));
    let r = &envoy_routes(&p, GW, "*")[0];
    assert_eq!(
        r.response_headers_to_add[0].header.as_ref().unwrap().key,
        "x-header-set"
    );
    assert_eq!(r.response_headers_to_remove, ["x-header-remove"]);
}

fn redirect_of(r: &route::Route) -> route::RedirectAction {
    match &r.action {
        Some(route::route::Action::Redirect(x)) => x.clone(),
        other => panic!("not a redirect: {other:?}"),
    }
}

#[test]
fn httproute_redirect_host_and_status() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "redirect-host-and-status",
            parent("same-namespace"),
            json!([]),
            json!([
        {"matches":[{"path":{"type":"PathPrefix","value":"/hostname-redirect"}}],"filters":[{"type":"RequestRedirect","requestRedirect":{"hostname":"example.org"}}]},
        {"matches":[{"path":{"type":"PathPrefix","value":"/host-and-status"}}],"filters":[{"type":"RequestRedirect","requestRedirect":{"hostname":"example.org","statusCode":301}}]}]),
        )],
    ));
    let rs = envoy_routes(&p, GW, "*");
    let by = |prefix: &str| {
        let i = routes(p.snapshot(), GW, "*")
            .iter()
            .position(|(m, _)| m == &format!("path={prefix}"))
            .unwrap();
        redirect_of(&rs[i])
    };
    assert_eq!(by("/hostname-redirect").host_redirect, "example.org");
    assert_eq!(
        by("/hostname-redirect").response_code,
        route::redirect_action::RedirectResponseCode::Found as i32
    );
    assert_eq!(
        by("/host-and-status").response_code,
        route::redirect_action::RedirectResponseCode::MovedPermanently as i32
    );
}

#[test]
fn httproute_303_redirect() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "redirect-303",
            parent("same-namespace"),
            json!([]),
            json!([
        {"filters":[{"type":"RequestRedirect","requestRedirect":{"statusCode":303}}]}]),
        )],
    ));
    assert_eq!(
        redirect_of(&envoy_routes(&p, GW, "*")[0]).response_code,
        route::redirect_action::RedirectResponseCode::SeeOther as i32
    );
}

#[test]
fn httproute_redirect_path() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "redirect-path",
            parent("same-namespace"),
            json!([]),
            json!([
        {"matches":[{"path":{"type":"PathPrefix","value":"/original-prefix"}}],"filters":[{"type":"RequestRedirect","requestRedirect":{"path":{"type":"ReplacePrefixMatch","replacePrefixMatch":"/replacement-prefix"}}}]},
        {"matches":[{"path":{"type":"PathPrefix","value":"/full"}}],"filters":[{"type":"RequestRedirect","requestRedirect":{"path":{"type":"ReplaceFullPath","replaceFullPath":"/full-path-replacement"}}}]}]),
        )],
    ));
    let all = format!("{:?}", envoy_routes(&p, GW, "*"));
    assert!(
        all.contains("/replacement-prefix") && all.contains("/full-path-replacement"),
        "{all}"
    );
}

#[test]
fn httproute_redirect_scheme_and_port() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "redirect-scheme",
            parent("same-namespace"),
            json!([]),
            json!([
        {"filters":[{"type":"RequestRedirect","requestRedirect":{"scheme":"https","port":8443}}]}]),
        )],
    ));
    let r = redirect_of(&envoy_routes(&p, GW, "*")[0]);
    assert_eq!(r.port_redirect, 8443);
    assert!(format!("{r:?}").contains("https"), "{r:?}");
}

#[test]
fn httproute_rewrite_host_and_path() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "rewrite",
            parent("same-namespace"),
            json!([]),
            json!([
        {"matches":[{"path":{"type":"PathPrefix","value":"/prefix/one"}}],"filters":[{"type":"URLRewrite","urlRewrite":{"hostname":"one.example.org","path":{"type":"ReplacePrefixMatch","replacePrefixMatch":"/one"}}}],"backendRefs":[backend("infra-backend-v1")]}]),
        )],
    ));
    let r = format!("{:?}", envoy_routes(&p, GW, "*")[0]);
    assert!(
        r.contains("one.example.org") && r.contains("\"/one\""),
        "{r}"
    );
}

#[test]
fn httproute_request_mirror() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "request-mirror",
            parent("same-namespace"),
            json!([]),
            json!([
        {"filters":[{"type":"RequestMirror","requestMirror":{"backendRef":backend("infra-backend-v2")}}],"backendRefs":[backend("infra-backend-v1")]}]),
        )],
    ));
    let r = &envoy_routes(&p, GW, "*")[0];
    let Some(route::route::Action::Route(ra)) = &r.action else {
        panic!()
    };
    assert_eq!(ra.request_mirror_policies.len(), 1);
    assert_eq!(
        ra.request_mirror_policies[0].cluster,
        format!("{INFRA}/infra-backend-v2/8080")
    );
}

#[test]
fn httproute_timeout_request() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "request-timeout",
            parent("same-namespace"),
            json!([]),
            json!([
        {"backendRefs":[backend("infra-backend-v1")],"timeouts":{"request":"500ms"}}]),
        )],
    ));
    let Some(route::route::Action::Route(ra)) = &envoy_routes(&p, GW, "*")[0].action else {
        panic!()
    };
    assert_eq!(
        ra.timeout.as_ref().map(|d| (d.seconds, d.nanos)),
        Some((0, 500_000_000))
    );
}

#[test]
fn httproute_https_listener() {
    let cert = json!({"group":"","kind":"Secret","name":"tls-validity-checks-certificate","namespace":INFRA});
    let https = |name: &str, hostname: Option<&str>| {
        let mut l = json!({"name":name,"port":9444,"protocol":"HTTPS","allowedRoutes":{"namespaces":{"from":"Same"}},
            "tls":{"certificateRefs":[cert.clone()]}});
        if let Some(h) = hostname {
            l["hostname"] = json!(h);
        }
        l
    };
    let p = pipeline(with(
        base(),
        [
            gateway(
                "same-namespace-with-https-listener",
                json!([
                    https("https", None),
                    https("https-with-hostname", Some("second-example.org")),
                    https("https-with-wildcard-hostname", Some("*.wildcard.org"))
                ]),
            ),
            tls_secret(INFRA, "tls-validity-checks-certificate"),
            http_route(
                INFRA,
                "httproute-https-test",
                parent("same-namespace-with-https-listener"),
                json!(["example.org"]),
                json!([{"backendRefs":[backend("infra-backend-v1")]}]),
            ),
            http_route(
                INFRA,
                "httproute-https-test-no-hostname",
                json!([{"name":"same-namespace-with-https-listener","namespace":INFRA,"sectionName":"https-with-hostname"}]),
                json!([]),
                json!([{"backendRefs":[backend("infra-backend-v2")]}]),
            ),
        ],
    ));
    assert!(p.diagnostics().is_empty(), "{:?}", p.diagnostics());
    let l = listener(p.snapshot(), "gw_9444").expect("https listener");
    let mut sni: Vec<Vec<String>> = l
        .filter_chains
        .iter()
        .map(|c| {
            c.filter_chain_match
                .as_ref()
                .map(|m| m.server_names.clone())
                .unwrap_or_default()
        })
        .collect();
    sni.sort();
    // One chain per domain; the listener without a hostname is the
    // catch-all (no server names), so an unknown host gets a 404 over TLS.
    assert_eq!(
        sni,
        [
            vec![],
            vec!["*.wildcard.org".to_string()],
            vec!["example.org".into()],
            vec!["second-example.org".into()]
        ]
    );
    assert_eq!(
        routes(p.snapshot(), "gw_9444/example.org", "example.org"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v1"))])
    );
    assert_eq!(
        routes(
            p.snapshot(),
            "gw_9444/second-example.org",
            "second-example.org"
        ),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v2"))])
    );
    assert!(
        routes(p.snapshot(), "gw_9444/*", "*").is_empty(),
        "unknown-example.org: 404"
    );
    for r in ["httproute-https-test", "httproute-https-test-no-hostname"] {
        assert_eq!(
            parent_conditions(&p, "HTTPRoute", r, "same-namespace-with-https-listener"),
            accepted_and_resolved()
        );
    }
}

#[test]
fn httproute_multiple_gateways() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "multiple-gateways",
            json!([
        {"name":"same-namespace","namespace":INFRA},{"name":"all-namespaces","namespace":INFRA}]),
            json!([]),
            json!([{"backendRefs":[backend("infra-backend-v1")]}]),
        )],
    ));
    for rc in [GW, "gw_81"] {
        assert_eq!(
            routes(p.snapshot(), rc, "*"),
            pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v1"))]),
            "{rc}"
        );
    }
    assert_eq!(
        parent_conditions(&p, "HTTPRoute", "multiple-gateways", "same-namespace"),
        accepted_and_resolved()
    );
    assert_eq!(
        parent_conditions(&p, "HTTPRoute", "multiple-gateways", "all-namespaces"),
        accepted_and_resolved()
    );
}

#[test]
fn httproute_observed_generation_bump() {
    let mut route = http_route(
        INFRA,
        "observed-generation-bump",
        parent("same-namespace"),
        json!([]),
        json!([{"backendRefs":[backend("infra-backend-v1")]}]),
    );
    let mut p = pipeline(with(base(), [route.clone()]));
    let generation = |p: &Offline| {
        status_of(p, "HTTPRoute", "observed-generation-bump")
            .fields
            .unwrap()["parents"][0]["conditions"][0]["observedGeneration"]
            .clone()
    };
    assert_eq!(generation(&p), 1);
    route["metadata"]["generation"] = json!(2);
    route["spec"]["rules"][0]["backendRefs"][0]["name"] = json!("infra-backend-v2");
    p.apply([apply(route)]);
    assert_eq!(generation(&p), 2);
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v2"))])
    );
}

#[test]
fn a_route_conflict_across_routes_goes_to_the_oldest() {
    let mut old = http_route(
        INFRA,
        "old",
        parent("same-namespace"),
        json!(["c.example.com"]),
        json!([rule(("PathPrefix", "/"), &["infra-backend-v1"])]),
    );
    old["metadata"]["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
    let mut new = http_route(
        INFRA,
        "new",
        parent("same-namespace"),
        json!(["c.example.com"]),
        json!([rule(("PathPrefix", "/"), &["infra-backend-v2"])]),
    );
    new["metadata"]["creationTimestamp"] = json!("2021-01-01T00:00:00Z");
    let p = pipeline(with(base(), [new, old]));
    assert_eq!(
        routes(p.snapshot(), GW, "c.example.com"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v1"))])
    );
    assert!(
        reasons(&p.diagnostics()).contains(&("new".into(), "RouteConflict".into())),
        "{:?}",
        p.diagnostics()
    );
}

// ---- GRPCRoute ------------------------------------------------------------------

/// gRPC backends are clusters of their own (HTTP/2 upstream).
fn grpc_cluster(ns: &str, name: &str) -> String {
    format!("cluster={ns}/{name}/8080/grpc")
}

#[test]
fn grpc_exact_method_matching() {
    let p = pipeline(with(
        base(),
        [grpc_route(
            INFRA,
            "exact-matching",
            parent("same-namespace"),
            json!([]),
            json!([
        {"matches":[{"method":{"service":"gateway_api_conformance.echo_basic.grpcecho.GrpcEcho","method":"Echo"}}],"backendRefs":[backend("infra-backend-v1")]},
        {"matches":[{"method":{"service":"gateway_api_conformance.echo_basic.grpcecho.GrpcEcho","method":"EchoTwo"}}],"backendRefs":[backend("infra-backend-v2")]}]),
        )],
    ));
    let mut got = routes(p.snapshot(), GW, "*");
    got.sort();
    assert_eq!(
        got,
        pairs(&[
            (
                "path=/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/Echo",
                &grpc_cluster(INFRA, "infra-backend-v1")
            ),
            (
                "path=/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho/EchoTwo",
                &grpc_cluster(INFRA, "infra-backend-v2")
            )
        ])
    );
    assert_eq!(
        parent_conditions(&p, "GRPCRoute", "exact-matching", "same-namespace"),
        accepted_and_resolved()
    );
    // gRPC backends speak HTTP/2.
    let c = cluster(p.snapshot(), &format!("{INFRA}/infra-backend-v1/8080/grpc")).unwrap();
    assert!(
        format!("{c:?}").contains("Http2ProtocolOptions")
            || format!("{c:?}").to_lowercase().contains("http2"),
        "{c:?}"
    );
}

#[test]
fn grpc_route_header_matching() {
    let p = pipeline(with(
        base(),
        [grpc_route(
            INFRA,
            "grpc-header-matching",
            parent("same-namespace"),
            json!([]),
            json!([
        {"matches":[{"headers":[{"name":"version","value":"one"}]}],"backendRefs":[backend("infra-backend-v1")]},
        {"matches":[{"headers":[{"name":"version","value":"two"}]}],"backendRefs":[backend("infra-backend-v2")]}]),
        )],
    ));
    let rs = envoy_routes(&p, GW, "*");
    assert_eq!(rs.len(), 2);
    assert!(
        rs.iter()
            .all(|r| r.r#match.as_ref().unwrap().headers.len() == 1)
    );
}

#[test]
fn grpc_route_listener_hostname_matching() {
    let p = pipeline(with(
        base(),
        [
            gateway(
                "grpcroute-listener-hostname-matching",
                json!([
                    with_host(http("listener-1", 90, "All"), "bar.com"),
                    with_host(http("listener-2", 90, "All"), "foo.bar.com")
                ]),
            ),
            grpc_route(
                INFRA,
                "backend-v1",
                json!([{"name":"grpcroute-listener-hostname-matching","namespace":INFRA,"sectionName":"listener-1"}]),
                json!([]),
                json!([{"backendRefs":[backend("infra-backend-v1")]}]),
            ),
            grpc_route(
                INFRA,
                "backend-v2",
                json!([{"name":"grpcroute-listener-hostname-matching","namespace":INFRA,"sectionName":"listener-2"}]),
                json!([]),
                json!([{"backendRefs":[backend("infra-backend-v2")]}]),
            ),
        ],
    ));
    assert_eq!(
        routes(p.snapshot(), "gw_90", "bar.com"),
        pairs(&[("prefix=/", &grpc_cluster(INFRA, "infra-backend-v1"))])
    );
    assert_eq!(
        routes(p.snapshot(), "gw_90", "foo.bar.com"),
        pairs(&[("prefix=/", &grpc_cluster(INFRA, "infra-backend-v2"))])
    );
}

#[test]
fn grpc_route_weight() {
    let p = pipeline(with(
        base(),
        [grpc_route(
            INFRA,
            "weighted-backends",
            parent("same-namespace"),
            json!([]),
            json!([{"backendRefs":[
        {"name":"infra-backend-v1","port":8080,"weight":70},{"name":"infra-backend-v2","port":8080,"weight":30}]}]),
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[(
            "prefix=/",
            &format!(
                "weighted={INFRA}/infra-backend-v1/8080/grpc:70,{INFRA}/infra-backend-v2/8080/grpc:30"
            )
        )])
    );
}

#[test]
fn a_gateway_port_the_ingress_plugin_uses_is_unavailable() {
    // The host does not refuse two Envoy listeners on one port (Envoy would
    // fail to bind the second), so the plugin keeps off the Ingress
    // plugin's ports (configurable: reservedPorts).
    let p = pipeline(with(
        base(),
        [
            ingress_class("isobar", false),
            ingress(
                INFRA,
                "ing",
                &[(
                    "ingress.example.com",
                    &[("/", "Prefix", "infra-backend-v1", json!(8080))],
                )],
            ),
            gateway("clash", json!([http("http", 8080, "Same")])),
            http_route(
                INFRA,
                "r",
                parent("clash"),
                json!(["gw.example.com"]),
                json!([rule(("PathPrefix", "/"), &["infra-backend-v2"])]),
            ),
        ],
    ));
    assert!(listener(p.snapshot(), "gw_8080").is_none());
    assert_eq!(
        triples(&listener_status(&p, "clash")[0]["conditions"])[0],
        t("Accepted", "False", "PortUnavailable")
    );
    assert_eq!(
        parent_conditions(&p, "HTTPRoute", "r", "clash")[0],
        t("Accepted", "False", "NotAllowedByListeners")
    );
    assert_eq!(
        routes(p.snapshot(), "ingress_http", "ingress.example.com"),
        pairs(&[("prefix=/", &cluster_of(INFRA, "infra-backend-v1"))])
    );
}

#[test]
fn httproute_service_types() {
    // Headless Services and hand-made EndpointSlices: the plugin names the
    // Service port, the host takes endpoints from the slices.
    let headless = |name: &str| {
        let mut s = service(INFRA, name, &[("", 8080, json!(3000))]);
        s["spec"]["clusterIP"] = json!("None");
        s
    };
    let p = pipeline(with(
        base(),
        [
            headless("infra-backend-v1-headless"),
            slice(
                INFRA,
                "infra-backend-v1-headless",
                "manual",
                "",
                3000,
                &["10.0.1.1"],
            ),
            http_route(
                INFRA,
                "service-types",
                parent("same-namespace"),
                json!([]),
                json!([
                    rule(("Exact", "/"), &["infra-backend-v1"]),
                    rule(("Exact", "/headless"), &["infra-backend-v1-headless"])
                ]),
            ),
        ],
    ));
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[
            (
                "path=/headless",
                &cluster_of(INFRA, "infra-backend-v1-headless")
            ),
            ("path=/", &cluster_of(INFRA, "infra-backend-v1"))
        ])
    );
    let la = load_assignment(
        p.snapshot(),
        &format!("{INFRA}/infra-backend-v1-headless/8080"),
    )
    .expect("endpoints");
    assert_eq!(
        la.endpoints
            .iter()
            .map(|e| e.lb_endpoints.len())
            .sum::<usize>(),
        1
    );
}

#[test]
fn httproute_invalid_parent_ref_section_name_not_matching_port() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "httproute-listener-section-name-not-matching-port",
            json!([{"name":"same-namespace","namespace":INFRA,"sectionName":"http","port":81}]),
            json!([]),
            json!([{"backendRefs":[backend("infra-backend-v1")]}]),
        )],
    ));
    assert_eq!(
        parent_conditions(
            &p,
            "HTTPRoute",
            "httproute-listener-section-name-not-matching-port",
            "same-namespace"
        )[0],
        t("Accepted", "False", "NoMatchingParent")
    );
    assert!(domains_of(p.snapshot(), GW).is_empty());
}

#[test]
fn httproute_307_and_308_redirect() {
    use route::redirect_action::RedirectResponseCode as Code;
    for (status, code) in [
        (307, Code::TemporaryRedirect),
        (308, Code::PermanentRedirect),
    ] {
        let p = pipeline(with(
            base(),
            [http_route(
                INFRA,
                "redirect",
                parent("same-namespace"),
                json!([]),
                json!([
            {"filters":[{"type":"RequestRedirect","requestRedirect":{"statusCode":status}}]}]),
            )],
        ));
        assert_eq!(
            redirect_of(&envoy_routes(&p, GW, "*")[0]).response_code,
            code as i32,
            "{status}"
        );
    }
}

#[test]
fn httproute_request_multiple_mirrors_and_percentage_mirror() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "request-mirror",
            parent("same-namespace"),
            json!([]),
            json!([
        {"filters":[
            {"type":"RequestMirror","requestMirror":{"backendRef":backend("infra-backend-v2")}},
            {"type":"RequestMirror","requestMirror":{"backendRef":backend("infra-backend-v3"),"fraction":{"numerator":1,"denominator":4}}}],
         "backendRefs":[backend("infra-backend-v1")]}]),
        )],
    ));
    let Some(route::route::Action::Route(ra)) = &envoy_routes(&p, GW, "*")[0].action else {
        panic!()
    };
    let mirrors: Vec<(String, Option<u32>)> = ra
        .request_mirror_policies
        .iter()
        .map(|m| {
            (
                m.cluster.clone(),
                m.runtime_fraction
                    .as_ref()
                    .and_then(|f| f.default_value.as_ref())
                    .map(|v| v.numerator),
            )
        })
        .collect();
    assert_eq!(mirrors.len(), 2, "{mirrors:?}");
    assert_eq!(mirrors[0].0, format!("{INFRA}/infra-backend-v2/8080"));
    assert_eq!(
        mirrors[1],
        (format!("{INFRA}/infra-backend-v3/8080"), Some(25))
    );
}

#[test]
fn an_https_listener_whose_secret_is_missing_is_not_served_and_the_route_is_told() {
    // The plugin cannot read Secrets: it names the certificate, the host
    // finds it missing and says so, as a diagnostic, on the roots that
    // placed the host (the route, and the Gateway, which declares each
    // HTTPS listener's own host), not on the Gateway listener's status.
    let p = pipeline(with(
        base(),
        [
            https_gateway("gw-tls", 9445, json!({"name":"missing-cert"})),
            http_route(
                INFRA,
                "r",
                parent("gw-tls"),
                json!([]),
                json!([{"backendRefs":[backend("infra-backend-v1")]}]),
            ),
        ],
    ));
    assert!(listener(p.snapshot(), "gw_9445").is_none());
    for root in ["r", "gw-tls"] {
        assert!(
            reasons(&p.diagnostics()).contains(&(root.into(), "SecretInvalid".into())),
            "{root}: {:?}",
            p.diagnostics()
        );
    }
    assert_eq!(
        triples(&listener_status(&p, "gw-tls")[0]["conditions"])[1],
        t("ResolvedRefs", "True", "ResolvedRefs")
    );
}

#[test]
fn gateways_sharing_a_port_share_its_envoy_listener_unless_their_protocols_clash() {
    let mut a = gateway(
        "a",
        json!([with_host(http("http", 8000, "All"), "a.example.com")]),
    );
    a["metadata"]["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
    let mut b = gateway(
        "b",
        json!([with_host(http("http", 8000, "All"), "b.example.com")]),
    );
    b["metadata"]["creationTimestamp"] = json!("2021-01-01T00:00:00Z");
    let mut c = gateway(
        "c",
        json!([{"name":"https","port":8000,"protocol":"HTTPS","tls":{"certificateRefs":[{"name":"cert"}]}}]),
    );
    c["metadata"]["creationTimestamp"] = json!("2022-01-01T00:00:00Z");
    let route = |name: &str, gw: &str| {
        http_route(
            INFRA,
            name,
            parent(gw),
            json!([]),
            json!([{"backendRefs":[backend("infra-backend-v1")]}]),
        )
    };
    let p = pipeline(with(
        base(),
        [
            a,
            b,
            c,
            route("ra", "a"),
            route("rb", "b"),
            route("rc", "c"),
        ],
    ));
    assert_eq!(
        domains_of(p.snapshot(), "gw_8000"),
        ["a.example.com".to_string(), "b.example.com".into()].into()
    );
    assert!(p.diagnostics().is_empty(), "{:?}", p.diagnostics());
    assert_eq!(
        triples(&listener_status(&p, "c")[0]["conditions"])[2],
        t("Conflicted", "True", "ProtocolConflict")
    );
    assert_eq!(
        parent_conditions(&p, "HTTPRoute", "rc", "c")[0],
        t("Accepted", "False", "NotAllowedByListeners")
    );
}

/// (type URL, name, body) of every resource served.
type Resources = Vec<(String, String, Vec<u8>)>;

/// Everything the host would serve and write: resources, diagnostics and
/// statuses, comparable across pipelines.
fn everything(p: &Offline) -> (Resources, Vec<isobar::ir::Diagnostic>, Vec<String>) {
    let s = p.snapshot();
    let mut resources: Vec<(String, String, Vec<u8>)> = s
        .resources
        .iter()
        .flat_map(|(t, m)| {
            m.values()
                .map(move |r| (t.clone(), r.name.clone(), r.body.to_vec()))
        })
        .collect();
    resources.sort();
    let mut statuses: Vec<String> = p
        .statuses()
        .iter()
        .map(|s| {
            format!(
                "{}/{}/{} {}",
                s.object.kind,
                s.object.namespace,
                s.object.name,
                serde_json::to_string(&s.status).unwrap()
            )
        })
        .collect();
    statuses.sort();
    (resources, p.diagnostics(), statuses)
}

#[test]
fn incremental_translation_equals_a_full_rebuild_at_every_step() {
    let selector_gw = gateway(
        "selector",
        json!([{"name":"http","port":91,"protocol":"HTTP",
        "allowedRoutes":{"namespaces":{"from":"Selector","selector":{"matchLabels":{"expose":"yes"}}}}}]),
    );
    let web_route = http_route(
        WEB,
        "web",
        json!([{"name":"selector","namespace":INFRA},{"name":"all-namespaces","namespace":INFRA}]),
        json!(["web.example.com"]),
        json!([{"backendRefs":[{"name":"app-backend-v1","namespace":APP,"port":8080}]}]),
    );
    let mut labelled = namespace(WEB);
    labelled["metadata"]["labels"]["expose"] = json!("yes");
    let steps: Vec<Vec<isobar::store::Event>> = vec![
        vec![apply(selector_gw.clone()), apply(web_route.clone())],
        // The namespace gets the label: the route may now attach.
        vec![apply(labelled)],
        // A grant makes the cross-namespace backend resolve.
        vec![apply(reference_grant(
            APP,
            "g",
            "HTTPRoute",
            WEB,
            "Service",
            None,
        ))],
        // The backend Service goes, then the Gateway's class changes hands.
        vec![delete(&service(APP, "app-backend-v1", &[]))],
        vec![apply({
            let mut g = selector_gw.clone();
            g["spec"]["gatewayClassName"] = json!("someone-else");
            g
        })],
        vec![
            apply(selector_gw.clone()),
            apply(service(APP, "app-backend-v1", &[("", 8080, json!(3000))])),
        ],
        vec![delete(&web_route)],
    ];
    let mut incremental = pipeline(base());
    for (i, events) in steps.into_iter().enumerate() {
        incremental.apply(events);
        let plugins = Plugins::new(vec![ingress_plugin(), gateway_plugin()], vec![]).unwrap();
        let mut full = Offline::with(plugins);
        full.load(
            incremental
                .store()
                .read()
                .list_all()
                .map(|o| isobar::store::Event::Apply(o.clone()))
                .collect::<Vec<_>>(),
        );
        full.rebuild();
        let (a, b) = (everything(&incremental), everything(&full));
        assert!(a.0 == b.0, "resources differ after step {i}");
        assert_eq!(a.1, b.1, "diagnostics differ after step {i}");
        assert_eq!(a.2, b.2, "statuses differ after step {i}");
        // And the steps do change what is served on the selector Gateway.
        let on_selector = domains_of(incremental.snapshot(), "gw_91").contains("web.example.com");
        assert_eq!(
            on_selector,
            [false, true, true, true, false, true, false][i],
            "step {i}"
        );
    }
}

/// The virtual host Envoy picks for `host` in a route configuration: an
/// exact domain, then the longest `*.suffix`, then `*` (Envoy's order).
fn vhost_for(p: &Offline, rc: &str, host: &str) -> Option<route::VirtualHost> {
    let vhs = route_config(p.snapshot(), rc)?.virtual_hosts;
    let exact = vhs.iter().find(|v| v.domains.iter().any(|d| d == host));
    let suffix = || {
        vhs.iter()
            .filter_map(|v| {
                v.domains
                    .iter()
                    .filter_map(|d| d.strip_prefix('*'))
                    .filter(|s| !s.is_empty() && host.ends_with(s) && host.len() > s.len())
                    .map(|s| s.len())
                    .max()
                    .map(|len| (len, v))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, v)| v)
    };
    let any = || vhs.iter().find(|v| v.domains.iter().any(|d| d == "*"));
    exact.or_else(suffix).or_else(any).cloned()
}

#[test]
fn gateway_http_listener_isolation() {
    let listeners = json!([
        http("empty-hostname", 92, "All"),
        with_host(http("wildcard-example-com", 92, "All"), "*.example.com"),
        with_host(
            http("wildcard-foo-example-com", 92, "All"),
            "*.foo.example.com"
        ),
        with_host(
            http("abc-foo-example-com", 92, "All"),
            "abc.foo.example.com"
        ),
    ]);
    let sections = [
        "empty-hostname",
        "wildcard-example-com",
        "wildcard-foo-example-com",
        "abc-foo-example-com",
    ];
    let routes: Vec<Value> = sections
        .iter()
        .map(|s| {
            http_route(
                INFRA,
                &format!("attaches-to-{s}"),
                json!([{"name":"http-listener-isolation","namespace":INFRA,"sectionName":s}]),
                json!([]),
                json!([rule(
                    ("PathPrefix", &format!("/{s}")),
                    &["infra-backend-v1"]
                )]),
            )
        })
        .collect();
    let p = pipeline(with(
        base(),
        std::iter::once(gateway("http-listener-isolation", listeners)).chain(routes),
    ));
    // Each host reaches its own listener's route and no other (a 404).
    for (host, expected) in [
        ("bar.com", "empty-hostname"),
        ("bar.example.com", "wildcard-example-com"),
        ("bar.foo.example.com", "wildcard-foo-example-com"),
        ("abc.foo.example.com", "abc-foo-example-com"),
    ] {
        let vh =
            vhost_for(&p, "gw_92", host).unwrap_or_else(|| panic!("no virtual host for {host}"));
        let paths: Vec<String> = vh
            .routes
            .iter()
            .filter_map(|r| match r.r#match.as_ref()?.path_specifier.as_ref()? {
                route::route_match::PathSpecifier::Path(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(paths, [format!("/{expected}")], "{host}");
    }
    for s in sections {
        assert_eq!(
            parent_conditions(
                &p,
                "HTTPRoute",
                &format!("attaches-to-{s}"),
                "http-listener-isolation"
            ),
            accepted_and_resolved()
        );
    }
}

#[test]
fn gateway_http_listener_isolation_with_hostname_intersection() {
    let listeners = json!([
        http("empty-hostname", 93, "All"),
        with_host(http("wildcard-example-com", 93, "All"), "*.example.com"),
        with_host(
            http("wildcard-foo-example-com", 93, "All"),
            "*.foo.example.com"
        ),
        with_host(
            http("abc-foo-example-com", 93, "All"),
            "abc.foo.example.com"
        ),
    ]);
    let hostnames = json!([
        "bar.com",
        "*.example.com",
        "*.foo.example.com",
        "abc.foo.example.com"
    ]);
    let sections = [
        "empty-hostname",
        "wildcard-example-com",
        "wildcard-foo-example-com",
        "abc-foo-example-com",
    ];
    let gw = "http-listener-isolation-with-hostname-intersection";
    let routes: Vec<Value> = sections
        .iter()
        .map(|s| {
            http_route(
                INFRA,
                &format!("attaches-to-{s}-with-hostname-intersection"),
                json!([{"name":gw,"namespace":INFRA,"sectionName":s}]),
                hostnames.clone(),
                json!([rule(
                    ("PathPrefix", &format!("/{s}")),
                    &["infra-backend-v1"]
                )]),
            )
        })
        .collect();
    let p = pipeline(with(
        base(),
        std::iter::once(gateway(gw, listeners)).chain(routes),
    ));
    for (host, expected) in [
        ("bar.com", "empty-hostname"),
        ("bar.example.com", "wildcard-example-com"),
        ("bar.foo.example.com", "wildcard-foo-example-com"),
        ("abc.foo.example.com", "abc-foo-example-com"),
    ] {
        let vh =
            vhost_for(&p, "gw_93", host).unwrap_or_else(|| panic!("no virtual host for {host}"));
        let paths: Vec<String> = vh
            .routes
            .iter()
            .filter_map(|r| match r.r#match.as_ref()?.path_specifier.as_ref()? {
                route::route_match::PathSpecifier::Path(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(paths, [format!("/{expected}")], "{host}");
    }
    assert!(p.diagnostics().is_empty(), "{:?}", p.diagnostics());
}

#[test]
fn httproute_named_rule() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "http-named-rules",
            parent("same-namespace"),
            json!([]),
            json!([
        {"name":"named-rule","matches":[{"path":{"type":"PathPrefix","value":"/named"}}],"backendRefs":[backend("infra-backend-v1")]},
        rule(("PathPrefix", "/unnamed"), &["infra-backend-v2"])]),
        )],
    ));
    let got = routes(p.snapshot(), GW, "*");
    assert!(
        got.contains(&("path=/named".into(), cluster_of(INFRA, "infra-backend-v1"))),
        "{got:?}"
    );
    assert!(
        got.contains(&(
            "path=/unnamed".into(),
            cluster_of(INFRA, "infra-backend-v2")
        )),
        "{got:?}"
    );
    assert_eq!(
        parent_conditions(&p, "HTTPRoute", "http-named-rules", "same-namespace"),
        accepted_and_resolved()
    );
}

#[test]
fn grpc_route_named_rule() {
    let p = pipeline(with(
        base(),
        [grpc_route(
            INFRA,
            "grpc-named-rules",
            parent("same-namespace"),
            json!([]),
            json!([
        {"name":"named-rule","matches":[{"method":{"service":"gateway_api_conformance.echo_basic.grpcecho.GrpcEcho","method":"Echo"}}],"backendRefs":[backend("infra-backend-v1")]},
        {"matches":[{"method":{"service":"gateway_api_conformance.echo_basic.grpcecho.GrpcEcho","method":"EchoTwo"}}],"backendRefs":[backend("infra-backend-v2")]}]),
        )],
    ));
    assert_eq!(routes(p.snapshot(), GW, "*").len(), 2);
    assert_eq!(
        parent_conditions(&p, "GRPCRoute", "grpc-named-rules", "same-namespace"),
        accepted_and_resolved()
    );
}

#[test]
fn httproute_backend_protocol_h2c() {
    let mut svc = service(INFRA, "infra-backend-v1-h2c", &[("", 8080, json!(3000))]);
    svc["spec"]["ports"][0]["appProtocol"] = json!("kubernetes.io/h2c");
    let p = pipeline(with(
        base(),
        [
            svc,
            slice(INFRA, "infra-backend-v1-h2c", "a", "", 3000, &["10.0.2.1"]),
            http_route(
                INFRA,
                "backend-protocol-h2c",
                parent("same-namespace"),
                json!([]),
                json!([{"backendRefs":[backend("infra-backend-v1-h2c")]}]),
            ),
        ],
    ));
    let name = format!("{INFRA}/infra-backend-v1-h2c/8080/http2");
    assert_eq!(
        routes(p.snapshot(), GW, "*"),
        pairs(&[("prefix=/", &format!("cluster={name}"))])
    );
    assert!(cluster(p.snapshot(), &name).is_some());
}

#[test]
fn gateway_with_attached_routes_even_when_the_gateway_has_unresolved_refs() {
    // Upstream names a Secret that does not exist, which the plugin cannot
    // see; a certificate in another namespace without a grant is the
    // unresolved reference it can judge.
    let mut gw = https_gateway(
        "unresolved-gateway-with-one-attached-unresolved-route",
        9446,
        json!({"group":"","kind":"Secret","name":"does-not-exist","namespace":WEB}),
    );
    gw["spec"]["listeners"][0]["name"] = json!("tls");
    gw["spec"]["listeners"][0]["allowedRoutes"] = json!({"kinds":[{"kind":"HTTPRoute"}],
        "namespaces":{"from":"Selector","selector":{"matchLabels":{"gateway-conformance":"infra"}}}});
    let p = pipeline(with(
        base(),
        [
            gw,
            http_route(
                INFRA,
                "http-route-4",
                json!([{"name":"unresolved-gateway-with-one-attached-unresolved-route","namespace":INFRA,"sectionName":"tls"}]),
                json!([]),
                json!([{"backendRefs":[backend("does-not-exist")]}]),
            ),
        ],
    ));
    let l = listener_status(&p, "unresolved-gateway-with-one-attached-unresolved-route");
    assert_eq!(l[0]["attachedRoutes"], 1);
    assert_eq!(
        l[0]["supportedKinds"],
        json!([{"group":"gateway.networking.k8s.io","kind":"HTTPRoute"}])
    );
    assert_eq!(
        triples(&l[0]["conditions"])[1],
        t("ResolvedRefs", "False", "RefNotPermitted")
    );
    assert_eq!(
        parent_conditions(
            &p,
            "HTTPRoute",
            "http-route-4",
            "unresolved-gateway-with-one-attached-unresolved-route"
        )[1],
        t("ResolvedRefs", "False", "BackendNotFound")
    );
    // Attached, but nothing is served without the certificate.
    assert!(listener(p.snapshot(), "gw_9446").is_none());
}

// ---- through a real Envoy -----------------------------------------------------------

/// `isobar serve` with both plugins and a real Envoy (tests/harness): a
/// Gateway's listener, its HTTPRoute's matches and the Ingress beside it,
/// as a data plane answers them. SKIPPED (and passes) without an Envoy
/// binary, as tests/envoy.rs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_a_gateway_and_an_ingress_route_side_by_side() {
    use isobar::serve::{Config, Server};
    use isobar_tests::harness::backends::{Backend, Client};
    use isobar_tests::harness::envoy::{Bootstrap, Envoy, Ports, WAIT};
    use isobar_tests::harness::venv;

    let test = "through_envoy_a_gateway_and_an_ingress_route_side_by_side";
    if let Err(why) = tokio::task::spawn_blocking(Envoy::binary).await.unwrap() {
        venv::skipped(test, &format!("no Envoy binary: {why}"));
        return;
    }
    let ports = Ports::lock().await;
    let (a, b, c) = (
        Backend::http("a").await,
        Backend::http("b").await,
        Backend::http("c").await,
    );
    // A free port for the Gateway's listener (Envoy binds it).
    let gw_port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut docs = vec![gateway_class(), ingress_class("isobar", false)];
    for (name, backend) in [("a", &a), ("b", &b), ("c", &c)] {
        docs.push(service("app", name, &[("http", 80, json!("backend-http"))]));
        docs.push(slice(
            "app",
            name,
            "1",
            "http",
            backend.addr.port(),
            &[&backend.addr.ip().to_string()],
        ));
    }
    let mut gw = gateway("gw", json!([http("http", gw_port, "All")]));
    gw["metadata"]["namespace"] = json!("app");
    docs.push(gw);
    docs.push(http_route("app", "r", json!([{"name":"gw"}]), json!(["gw.example.com"]), json!([
        {"matches":[{"path":{"type":"Exact","value":"/a"}}],"backendRefs":[{"name":"a","port":80}]},
        {"matches":[{"path":{"type":"PathPrefix","value":"/"},"headers":[{"name":"x-pick","value":"b"}]}],"backendRefs":[{"name":"b","port":80}]},
        {"matches":[{"path":{"type":"PathPrefix","value":"/missing"}}],"backendRefs":[{"name":"nope","port":80}]},
        {"matches":[{"path":{"type":"PathPrefix","value":"/scheme"}}],"filters":[{"type":"RequestRedirect","requestRedirect":{"scheme":"https"}}]},
        {"matches":[{"path":{"type":"PathPrefix","value":"/scheme443"}}],"filters":[{"type":"RequestRedirect","requestRedirect":{"scheme":"https","port":443}}]},
        {"matches":[{"path":{"type":"PathPrefix","value":"/host"}}],"filters":[{"type":"RequestRedirect","requestRedirect":{"hostname":"other.example.com"}}]},
        {"matches":[{"path":{"type":"PathPrefix","value":"/port"}}],"filters":[{"type":"RequestRedirect","requestRedirect":{"port":8443}}]},
        {"backendRefs":[{"name":"c","port":80}]}])));
    docs.push(ingress(
        "app",
        "ing",
        &[("ingress.example.com", &[("/", "Prefix", "a", json!(80))])],
    ));
    let manifests = tempfile::tempdir().unwrap();
    let text = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(manifests.path().join("all.yaml"), text).unwrap();

    let mut config = Config::new(manifests.path(), plugin_path("isobar-plugin-ingress"));
    config
        .plugins
        .push(plugin_path("isobar-plugin-gateway-api"));
    config.xds_listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.cache_dir = Some(target_dir().join("isobar-test-cache"));
    let server = Server::start(config).await.expect("serve starts");
    assert!(server.ready(WAIT).await, "no first snapshot");
    let mut envoy = Envoy::start(&ports, Bootstrap::local(server.xds_addr(), "gateway")).await;
    envoy.ready().await;

    let client = Client::new();
    let ask = async |port: u16, host: &str, path: &str| {
        client
            .get_at(port, host, path)
            .await
            .map(|r| r.summary())
            .unwrap_or_else(|e| format!("failed: {e}"))
    };
    envoy
        .until("the Gateway's listener to route", async |_| {
            ask(gw_port, "gw.example.com", "/a").await == "200 a"
        })
        .await;
    assert_eq!(
        ask(gw_port, "gw.example.com", "/a/b").await,
        "200 c",
        "Exact is not a prefix"
    );
    assert_eq!(ask(gw_port, "gw.example.com", "/x").await, "200 c");
    assert!(
        ask(gw_port, "gw.example.com", "/missing")
            .await
            .starts_with("500"),
        "an invalid backendRef answers 500"
    );
    assert_eq!(
        ask(gw_port, "ingress.example.com", "/")
            .await
            .split(' ')
            .next(),
        Some("404"),
        "the Ingress is not on the Gateway's listener"
    );
    let picked = {
        let req = http::Request::get(format!("http://127.0.0.1:{gw_port}/x"))
            .header("host", "gw.example.com")
            .header("x-pick", "b")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let resp = client.request(req).await.expect("answer");
        let status = resp.status().as_u16();
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    let backend: Value = serde_json::from_str(&picked.1).unwrap_or(Value::Null);
    assert_eq!(
        (picked.0, backend["backend"].as_str()),
        (200, Some("b")),
        "the header match picks b: {picked:?}"
    );
    let mut locations = Vec::new();
    for path in ["/scheme", "/scheme443", "/host", "/port"] {
        let req = http::Request::get(format!("http://127.0.0.1:{gw_port}{path}"))
            .header("host", format!("gw.example.com:{gw_port}"))
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let client =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let resp = client.request(req).await.expect("answer");
        let location = resp
            .headers()
            .get("location")
            .and_then(|l| l.to_str().ok())
            .map(str::to_owned);
        locations.push((path, location.unwrap_or_default()));
    }
    // The spec's ports: the scheme's well-known one left out, else the
    // listener's when only the host changes.
    assert_eq!(
        locations,
        [
            ("/scheme", "https://gw.example.com/scheme".to_string()),
            ("/scheme443", "https://gw.example.com/scheme443".to_string()),
            ("/host", format!("http://other.example.com:{gw_port}/host")),
            ("/port", "http://gw.example.com:8443/port".to_string()),
        ]
    );
    // And the Ingress plugin's listener still serves the Ingress.
    assert_eq!(ask(8080, "ingress.example.com", "/").await, "200 a");
}

/// The Envoy redirects of routes `/<case>` as (scheme, host, port, code).
fn redirects(p: &Offline, cases: &[&str]) -> Vec<(String, String, u32, i32)> {
    use route::redirect_action::SchemeRewriteSpecifier;
    let rs = envoy_routes(p, GW, "*");
    let table = routes(p.snapshot(), GW, "*");
    cases
        .iter()
        .map(|c| {
            let i = table
                .iter()
                .position(|(m, _)| m == &format!("path=/{c}"))
                .unwrap_or_else(|| panic!("{c}"));
            let r = redirect_of(&rs[i]);
            let scheme = match r.scheme_rewrite_specifier {
                Some(SchemeRewriteSpecifier::SchemeRedirect(s)) => s,
                Some(SchemeRewriteSpecifier::HttpsRedirect(true)) => "https".into(),
                _ => String::new(),
            };
            (scheme, r.host_redirect, r.port_redirect, r.response_code)
        })
        .collect()
}

fn redirect_rule(path: &str, redirect: Value) -> Value {
    json!({"matches":[{"path":{"type":"PathPrefix","value":path}}],"filters":[{"type":"RequestRedirect","requestRedirect":redirect}]})
}

#[test]
fn httproute_redirect_port() {
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "redirect-port",
            parent("same-namespace"),
            json!([]),
            json!([
                redirect_rule("/port", json!({"port":8083})),
                redirect_rule(
                    "/port-and-host",
                    json!({"hostname":"example.org","port":8083})
                ),
                redirect_rule("/port-and-status", json!({"port":8083,"statusCode":301})),
                redirect_rule(
                    "/port-and-host-and-status",
                    json!({"port":8083,"hostname":"example.org","statusCode":302})
                ),
            ]),
        )],
    ));
    use route::redirect_action::RedirectResponseCode as Code;
    let (found, moved) = (Code::Found as i32, Code::MovedPermanently as i32);
    assert_eq!(
        redirects(
            &p,
            &[
                "port",
                "port-and-host",
                "port-and-status",
                "port-and-host-and-status"
            ]
        ),
        [
            (String::new(), String::new(), 8083, found),
            (String::new(), "example.org".into(), 8083, found),
            (String::new(), String::new(), 8083, moved),
            (String::new(), "example.org".into(), 8083, found),
        ]
    );
}

#[test]
fn httproute_redirect_scheme() {
    // No port given with a scheme: none in Envoy's redirect, which then
    // leaves the port out of Location (the scheme's well-known one), as
    // the through-Envoy test shows.
    let p = pipeline(with(
        base(),
        [http_route(
            INFRA,
            "redirect-scheme",
            parent("same-namespace"),
            json!([]),
            json!([
                redirect_rule("/scheme", json!({"scheme":"https"})),
                redirect_rule(
                    "/scheme-and-host",
                    json!({"hostname":"example.org","scheme":"https"})
                ),
                redirect_rule(
                    "/scheme-and-status",
                    json!({"scheme":"https","statusCode":301})
                ),
                redirect_rule(
                    "/scheme-and-host-and-status",
                    json!({"scheme":"https","statusCode":302,"hostname":"example.org"})
                ),
            ]),
        )],
    ));
    use route::redirect_action::RedirectResponseCode as Code;
    let (found, moved) = (Code::Found as i32, Code::MovedPermanently as i32);
    assert_eq!(
        redirects(
            &p,
            &[
                "scheme",
                "scheme-and-host",
                "scheme-and-status",
                "scheme-and-host-and-status"
            ]
        ),
        [
            ("https".into(), String::new(), 0, found),
            ("https".into(), "example.org".into(), 0, found),
            ("https".into(), String::new(), 0, moved),
            ("https".into(), "example.org".into(), 0, found),
        ]
    );
}
/// A kubernetes.io/tls Secret holding `cert` and `key` (as tests/envoy.rs).
fn tls_secret_with(ns: &str, name: &str, cert: &str, key: &str) -> Value {
    use std::io::Write;
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let enc = |s: &str| {
        let mut out = Vec::new();
        for chunk in s.as_bytes().chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.write_all(&[T[((n >> (18 - 6 * i)) & 63) as usize]])
                        .unwrap();
                } else {
                    out.push(b'=');
                }
            }
        }
        String::from_utf8(out).unwrap()
    };
    json!({"apiVersion":"v1","kind":"Secret","type":"kubernetes.io/tls",
        "metadata":{"name":name,"namespace":ns},
        "data":{"tls.crt": enc(cert), "tls.key": enc(key)}})
}

/// Through a real Envoy: a Gateway's HTTPS listeners choose the
/// certificate by SNI, route by host, and answer a host no route names
/// with a 404 over the catch-all listener's certificate. The Gateway takes
/// 8443 (the harness's HTTPS port), so the plugin is configured with no
/// reserved ports and no Ingress asks for TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn through_envoy_https_listeners_choose_certificates_by_sni() {
    use isobar::serve::{Config, Server};
    use isobar_tests::harness::backends::{Backend, TestCa, get_tls};
    use isobar_tests::harness::envoy::{Bootstrap, Envoy, Ports, WAIT};
    use isobar_tests::harness::venv;

    let test = "through_envoy_https_listeners_choose_certificates_by_sni";
    if let Err(why) = tokio::task::spawn_blocking(Envoy::binary).await.unwrap() {
        venv::skipped(test, &format!("no Envoy binary: {why}"));
        return;
    }
    let ports = Ports::lock().await;
    let (one, two) = (Backend::http("one").await, Backend::http("two").await);
    let ca = TestCa::new("isobar gateway test CA");
    let (cert_one, key_one) = ca.leaf(&["one.example.com"]);
    let (cert_any, key_any) = ca.leaf(&["two.example.net", "unknown.example.org"]);
    let mut docs = vec![gateway_class()];
    for (name, backend) in [("one", &one), ("two", &two)] {
        docs.push(service("app", name, &[("http", 80, json!("backend-http"))]));
        docs.push(slice(
            "app",
            name,
            "1",
            "http",
            backend.addr.port(),
            &[&backend.addr.ip().to_string()],
        ));
    }
    docs.push(tls_secret_with("app", "one-cert", &cert_one, &key_one));
    docs.push(tls_secret_with("app", "any-cert", &cert_any, &key_any));
    let mut gw = gateway(
        "gw",
        json!([
        {"name":"one","port":8443,"protocol":"HTTPS","hostname":"one.example.com","tls":{"certificateRefs":[{"name":"one-cert"}]}},
        {"name":"any","port":8443,"protocol":"HTTPS","tls":{"certificateRefs":[{"name":"any-cert"}]}}]),
    );
    gw["metadata"]["namespace"] = json!("app");
    docs.push(gw);
    docs.push(http_route(
        "app",
        "one",
        json!([{"name":"gw","sectionName":"one"}]),
        json!([]),
        json!([{"backendRefs":[{"name":"one","port":80}]}]),
    ));
    docs.push(http_route(
        "app",
        "two",
        json!([{"name":"gw","sectionName":"any"}]),
        json!(["two.example.net"]),
        json!([{"backendRefs":[{"name":"two","port":80}]}]),
    ));
    let dir = tempfile::tempdir().unwrap();
    let text = docs
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    std::fs::write(dir.path().join("all.yaml"), text).unwrap();
    let config_file = dir.path().join("gateway-api.json");
    std::fs::write(&config_file, r#"{"reservedPorts": []}"#).unwrap();
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests).unwrap();
    std::fs::rename(dir.path().join("all.yaml"), manifests.join("all.yaml")).unwrap();

    let mut config = Config::new(&manifests, plugin_path("isobar-plugin-ingress"));
    config
        .plugins
        .push(plugin_path("isobar-plugin-gateway-api"));
    config
        .plugin_configs
        .push(("gateway-api".into(), config_file));
    config.xds_listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.cache_dir = Some(target_dir().join("isobar-test-cache"));
    let server = Server::start(config).await.expect("serve starts");
    assert!(server.ready(WAIT).await, "no first snapshot");
    let mut envoy = Envoy::start(&ports, Bootstrap::local(server.xds_addr(), "gateway-tls")).await;
    envoy.ready().await;
    let ask = async |host: &str| match get_tls(host, "/", &ca.cert_pem).await {
        Ok(r) => r.reply.summary(),
        Err(e) => format!("failed: {e}"),
    };
    envoy
        .until("the HTTPS listener to route", async |_| {
            ask("one.example.com").await == "200 one"
        })
        .await;
    assert_eq!(ask("two.example.net").await, "200 two");
    // The client checks the name: the catch-all chain's certificate names
    // this host, and no route does.
    assert_eq!(ask("unknown.example.org").await, "404 -");
}
