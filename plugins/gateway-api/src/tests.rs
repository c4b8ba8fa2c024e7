//! Native unit tests: Gateway API JSON in a `MemoryStore`, fragments and
//! statuses out.

use isobar_guest::prelude::*;
use serde_json::{Value, json};

use crate::*;

const GW_NS: &str = "infra";
const NS: &str = "shop";

fn class(name: &str, controller: &str) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass",
        "metadata": {"name": name, "generation": 1}, "spec": {"controllerName": controller}})
}

fn gateway(name: &str, listeners: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"namespace": GW_NS, "name": name, "generation": 2},
        "spec": {"gatewayClassName": "isobar", "listeners": listeners}})
}

fn http_listener(name: &str, port: u16, hostname: Option<&str>, from: &str) -> Value {
    let mut l = json!({"name": name, "port": port, "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": from}}});
    if let Some(h) = hostname {
        l["hostname"] = json!(h);
    }
    l
}

fn service(ns: &str, name: &str, port: u16) -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"namespace": ns, "name": name},
        "spec": {"ports": [{"port": port}]}})
}

fn namespace(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}})
}

fn http_route(name: &str, parents: Value, hostnames: Value, rules: Value) -> Value {
    json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"namespace": NS, "name": name, "generation": 3},
        "spec": {"parentRefs": parents, "hostnames": hostnames, "rules": rules}})
}

fn parent(name: &str) -> Value {
    json!([{"name": name, "namespace": GW_NS}])
}

fn to(service: &str, port: u16) -> Value {
    json!({"name": service, "port": port})
}

fn store(extra: impl IntoIterator<Item = Value>) -> MemoryStore {
    MemoryStore::from_json_values(
        [
            class("isobar", CONTROLLER),
            class("other", "example.com/other"),
            gateway("gw", json!([http_listener("http", 80, None, "All")])),
            service(NS, "web", 8080),
            service(NS, "api", 9090),
            namespace(NS, json!({"team": "shop"})),
            namespace(GW_NS, json!({})),
        ]
        .into_iter()
        .chain(extra),
    )
    .unwrap()
}

fn translate(store: &MemoryStore, v: Value) -> Fragment {
    GatewayApiTranslator::translate(&Object::from_json(v).unwrap(), store).expect("translates")
}

fn vhost<'f>(f: &'f Fragment, listener: &str, domain: &str) -> &'f VirtualHost {
    f.virtual_hosts
        .iter()
        .find(|v| v.listener == listener && v.domain == domain)
        .unwrap_or_else(|| panic!("no {listener}/{domain} in {:#?}", f.virtual_hosts))
}

fn fields(f: &Fragment) -> Value {
    serde_json::from_str(f.statuses[0].fields.as_deref().expect("fields")).unwrap()
}

/// (type, status, reason) of the route's first parent.
fn parent_conditions(f: &Fragment) -> Vec<(String, String, String)> {
    fields(f)["parents"][0]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["type"].as_str().unwrap().into(),
                c["status"].as_str().unwrap().into(),
                c["reason"].as_str().unwrap().into(),
            )
        })
        .collect()
}

fn reason_of(f: &Fragment, type_: &str) -> (String, String) {
    parent_conditions(f)
        .into_iter()
        .find(|c| c.0 == type_)
        .map(|c| (c.1, c.2))
        .unwrap()
}

fn forward_of(r: &Route) -> Vec<(String, u16, u32)> {
    match &r.action {
        RouteAction::Forward(b) => b
            .iter()
            .map(|w| (w.backend.name.clone(), w.backend.port, w.weight))
            .collect(),
        other => panic!("not a forward: {other:?}"),
    }
}

// ---- GatewayClass and Gateway ---------------------------------------------

#[test]
fn our_gateway_class_is_accepted_and_others_are_left_alone() {
    let s = store([]);
    let f = translate(&s, class("isobar", CONTROLLER));
    assert_eq!(f.statuses[0].conditions[0].type_, "Accepted");
    assert_eq!(f.statuses[0].conditions[0].status, ConditionStatus::True);
    assert!(translate(&s, class("other", "example.com/other")).is_empty());
}

#[test]
fn gateway_of_another_class_contributes_nothing() {
    let mut gw = gateway("gw2", json!([http_listener("http", 80, None, "All")]));
    gw["spec"]["gatewayClassName"] = json!("other");
    assert!(translate(&store([]), gw).is_empty());
}

#[test]
fn gateway_declares_one_listener_per_port_and_lists_listener_status() {
    let gw = gateway(
        "gw",
        json!([
            http_listener("a", 80, Some("a.example.com"), "All"),
            http_listener("b", 80, Some("b.example.com"), "All"),
            http_listener("c", 81, None, "Same")
        ]),
    );
    let f = translate(&store([gw.clone()]), gw);
    let names: Vec<_> = f
        .listeners
        .iter()
        .map(|l| (l.name.as_str(), l.port))
        .collect();
    assert_eq!(names, [("gw_80", 80), ("gw_81", 81)]);
    let status = &f.statuses[0];
    assert_eq!(status.conditions[0].reason, "Accepted");
    assert_eq!(status.conditions[0].observed_generation, Some(2));
    let listeners = fields(&f)["listeners"].clone();
    assert_eq!(listeners.as_array().unwrap().len(), 3);
    assert_eq!(listeners[0]["supportedKinds"][0]["kind"], "HTTPRoute");
    assert_eq!(listeners[0]["conditions"][2]["reason"], "NoConflicts");
}

#[test]
fn listener_conflicts_and_unsupported_protocols_have_the_spec_reasons() {
    let gw = gateway(
        "gw",
        json!([http_listener("a", 80, Some("a.example.com"), "All"),
               http_listener("b", 80, Some("a.example.com"), "All"),
               {"name": "c", "port": 80, "protocol": "HTTPS", "tls": {"certificateRefs": [{"name": "cert"}]}},
               {"name": "t", "port": 90, "protocol": "TCP"}]),
    );
    let f = translate(&store([]), gw);
    let l = fields(&f)["listeners"].clone();
    // a and b share a hostname; c clashes with their protocol on port 80.
    assert_eq!(l[0]["conditions"][2]["reason"], "HostnameConflict");
    assert_eq!(l[2]["conditions"][2]["reason"], "ProtocolConflict");
    assert_eq!(l[3]["conditions"][0]["reason"], "UnsupportedProtocol");
    assert_eq!(l[3]["conditions"][0]["status"], "False");
    assert!(f.listeners.is_empty(), "{:?}", f.listeners);
    assert_eq!(f.statuses[0].conditions[0].reason, "ListenersNotValid");
}

#[test]
fn https_certificate_refs_cross_namespace_need_a_reference_grant() {
    let listener = json!({"name": "s", "port": 443, "protocol": "HTTPS", "hostname": "a.example.com",
        "tls": {"certificateRefs": [{"name": "cert", "namespace": "certs"}]}});
    let gw = gateway("gw", json!([listener]));
    let f = translate(&store([]), gw.clone());
    assert_eq!(
        fields(&f)["listeners"][0]["conditions"][1]["reason"],
        "RefNotPermitted"
    );
    assert!(f.listeners.is_empty());
    let grant = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
        "metadata": {"namespace": "certs", "name": "g"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": GW_NS}],
                 "to": [{"group": "", "kind": "Secret"}]}});
    let f = translate(&store([grant]), gw);
    assert_eq!(
        fields(&f)["listeners"][0]["conditions"][1]["reason"],
        "ResolvedRefs"
    );
    assert_eq!(f.listeners, [Listener::https("gw_443", 443)]);
}

#[test]
fn invalid_route_kinds_and_wrong_certificate_kinds_are_reported() {
    let gw = gateway(
        "gw",
        json!([{"name": "h", "port": 80, "protocol": "HTTP", "allowedRoutes": {"kinds": [{"kind": "TCPRoute"}]}},
               {"name": "s", "port": 443, "protocol": "HTTPS",
                "tls": {"certificateRefs": [{"name": "cert", "kind": "ConfigMap", "group": ""}]}}]),
    );
    let f = translate(&store([]), gw);
    let l = fields(&f)["listeners"].clone();
    assert_eq!(l[0]["conditions"][1]["reason"], "InvalidRouteKinds");
    assert_eq!(l[0]["supportedKinds"], json!([]));
    assert_eq!(l[1]["conditions"][1]["reason"], "InvalidCertificateRef");
}

#[test]
fn attached_routes_are_counted_per_listener() {
    let gw = gateway(
        "gw",
        json!([
            http_listener("a", 80, Some("a.example.com"), "All"),
            http_listener("b", 80, Some("b.example.com"), "All")
        ]),
    );
    let r1 = http_route(
        "r1",
        parent("gw"),
        json!(["a.example.com"]),
        json!([{"backendRefs": [to("web", 8080)]}]),
    );
    let r2 = http_route(
        "r2",
        parent("gw"),
        json!([]),
        json!([{"backendRefs": [to("web", 8080)]}]),
    );
    let f = translate(&store([gw.clone(), r1, r2]), gw);
    let l = fields(&f)["listeners"].clone();
    assert_eq!(l[0]["attachedRoutes"], 2);
    assert_eq!(l[1]["attachedRoutes"], 1);
}

// ---- HTTPRoute ------------------------------------------------------------

#[test]
fn route_forwards_on_the_gateway_listener_and_is_accepted() {
    let r = http_route(
        "r",
        parent("gw"),
        json!(["shop.example.com"]),
        json!([{"backendRefs": [to("web", 8080)]}]),
    );
    let f = translate(&store([]), r);
    assert_eq!(f.listeners, [Listener::http("gw_80", 80)]);
    let vh = vhost(&f, "gw_80", "shop.example.com");
    assert_eq!(vh.routes[0].matches, RouteMatch::prefix("/"));
    assert_eq!(forward_of(&vh.routes[0]), [("web".into(), 8080, 1)]);
    assert_eq!(
        reason_of(&f, "Accepted"),
        ("True".into(), "Accepted".into())
    );
    assert_eq!(
        reason_of(&f, "ResolvedRefs"),
        ("True".into(), "ResolvedRefs".into())
    );
    let p = &fields(&f)["parents"][0];
    assert_eq!(p["controllerName"], CONTROLLER);
    assert_eq!(
        p["parentRef"],
        json!({"group": "gateway.networking.k8s.io", "kind": "Gateway", "namespace": GW_NS, "name": "gw"})
    );
    assert_eq!(p["conditions"][0]["observedGeneration"], 3);
}

#[test]
fn route_of_another_controllers_gateway_gets_no_status() {
    let mut gw = gateway("theirs", json!([http_listener("http", 80, None, "All")]));
    gw["spec"]["gatewayClassName"] = json!("other");
    let r = http_route(
        "r",
        parent("theirs"),
        json!([]),
        json!([{"backendRefs": [to("web", 8080)]}]),
    );
    assert!(translate(&store([gw]), r).is_empty());
}

#[test]
fn hostname_intersection_follows_the_spec() {
    use crate::gateway::intersect;
    let h = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(intersect(None, &[]), ["*"]);
    assert_eq!(intersect(Some("*.example.com"), &[]), ["*.example.com"]);
    assert_eq!(
        intersect(
            Some("*.example.com"),
            &h(&["a.example.com", "example.com", "b.other.org"])
        ),
        ["a.example.com"]
    );
    assert_eq!(
        intersect(Some("a.example.com"), &h(&["*.example.com"])),
        ["a.example.com"]
    );
    assert_eq!(
        intersect(Some("*.example.com"), &h(&["*.a.example.com"])),
        ["*.a.example.com"]
    );
    assert!(intersect(Some("a.example.com"), &h(&["b.example.com"])).is_empty());
}

#[test]
fn no_matching_listener_hostname() {
    let gw = gateway(
        "gw",
        json!([http_listener("a", 80, Some("a.example.com"), "All")]),
    );
    let r = http_route(
        "r",
        parent("gw"),
        json!(["b.example.com"]),
        json!([{"backendRefs": [to("web", 8080)]}]),
    );
    let f = translate(&store([gw]), r);
    assert!(f.virtual_hosts.is_empty());
    assert_eq!(
        reason_of(&f, "Accepted"),
        ("False".into(), "NoMatchingListenerHostname".into())
    );
}

#[test]
fn not_allowed_by_listeners_same_namespace_and_selector() {
    let gw = gateway("gw", json!([http_listener("a", 80, None, "Same")]));
    let r = http_route(
        "r",
        parent("gw"),
        json!([]),
        json!([{"backendRefs": [to("web", 8080)]}]),
    );
    let f = translate(&store([gw]), r.clone());
    assert_eq!(
        reason_of(&f, "Accepted"),
        ("False".into(), "NotAllowedByListeners".into())
    );
    let selector = json!([{"name": "a", "port": 80, "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchLabels": {"team": "shop"}}}}}]);
    let f = translate(&store([gateway("gw", selector)]), r.clone());
    assert_eq!(
        reason_of(&f, "Accepted"),
        ("True".into(), "Accepted".into())
    );
    let other = json!([{"name": "a", "port": 80, "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "Selector", "selector": {"matchExpressions": [{"key": "team", "operator": "In", "values": ["infra"]}]}}}}]);
    let f = translate(&store([gateway("gw", other)]), r);
    assert_eq!(
        reason_of(&f, "Accepted"),
        ("False".into(), "NotAllowedByListeners".into())
    );
}

#[test]
fn no_matching_parent_section_name_or_port() {
    let r = |p: Value| {
        http_route(
            "r",
            p,
            json!([]),
            json!([{"backendRefs": [to("web", 8080)]}]),
        )
    };
    let f = translate(
        &store([]),
        r(json!([{"name": "gw", "namespace": GW_NS, "sectionName": "nope"}])),
    );
    assert_eq!(
        reason_of(&f, "Accepted"),
        ("False".into(), "NoMatchingParent".into())
    );
    let f = translate(
        &store([]),
        r(json!([{"name": "gw", "namespace": GW_NS, "port": 81}])),
    );
    assert_eq!(
        reason_of(&f, "Accepted"),
        ("False".into(), "NoMatchingParent".into())
    );
    let f = translate(
        &store([]),
        r(json!([{"name": "gw", "namespace": GW_NS, "sectionName": "http", "port": 80}])),
    );
    assert_eq!(
        reason_of(&f, "Accepted"),
        ("True".into(), "Accepted".into())
    );
}

#[test]
fn invalid_backends_answer_500_with_the_spec_reason() {
    for (backend, reason) in [
        (json!({"name": "missing", "port": 80}), "BackendNotFound"),
        (json!({"name": "web", "port": 1}), "BackendNotFound"),
        (
            json!({"name": "web", "port": 8080, "kind": "Pod"}),
            "InvalidKind",
        ),
        (
            json!({"name": "web", "port": 8080, "group": "example.com", "kind": "Service"}),
            "InvalidKind",
        ),
        (
            json!({"name": "other", "port": 80, "namespace": "elsewhere"}),
            "RefNotPermitted",
        ),
    ] {
        let r = http_route(
            "r",
            parent("gw"),
            json!([]),
            json!([{"matches": [{"path": {"type": "PathPrefix", "value": "/bad"}}], "backendRefs": [backend]},
                   {"backendRefs": [to("web", 8080)]}]),
        );
        let f = translate(&store([service("elsewhere", "other", 80)]), r);
        let vh = vhost(&f, "gw_80", "*");
        let bad = vh
            .routes
            .iter()
            .find(|r| r.matches == RouteMatch::prefix("/bad"))
            .unwrap();
        assert!(
            matches!(&bad.action, RouteAction::DirectResponse(d) if d.status == 500),
            "{reason}"
        );
        let good = vh
            .routes
            .iter()
            .find(|r| r.matches == RouteMatch::prefix("/"))
            .unwrap();
        assert_eq!(forward_of(good).len(), 1, "the other rule still forwards");
        assert_eq!(
            reason_of(&f, "ResolvedRefs"),
            ("False".into(), reason.into())
        );
        assert_eq!(reason_of(&f, "Accepted").0, "True");
    }
}

#[test]
fn cross_namespace_backend_with_a_reference_grant_forwards() {
    let grant = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "ReferenceGrant",
        "metadata": {"namespace": "elsewhere", "name": "g"},
        "spec": {"from": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "namespace": NS}],
                 "to": [{"group": "", "kind": "Service", "name": "other"}]}});
    let r = http_route(
        "r",
        parent("gw"),
        json!([]),
        json!([{"backendRefs": [{"name": "other", "namespace": "elsewhere", "port": 80}]}]),
    );
    let f = translate(&store([service("elsewhere", "other", 80), grant]), r);
    let vh = vhost(&f, "gw_80", "*");
    assert_eq!(forward_of(&vh.routes[0]), [("other".into(), 80, 1)]);
    assert_eq!(reason_of(&f, "ResolvedRefs").1, "ResolvedRefs");
}

#[test]
fn matches_filters_weights_and_timeouts_translate() {
    let r = http_route(
        "r",
        parent("gw"),
        json!(["shop.example.com"]),
        json!([{
            "matches": [{"path": {"type": "Exact", "value": "/exact"},
                         "headers": [{"name": "X-Env", "value": "canary"}, {"name": "x-env", "value": "dup"},
                                     {"type": "RegularExpression", "name": "x-re", "value": "a.*"}],
                         "queryParams": [{"name": "q", "value": "1"}],
                         "method": "POST"},
                        {"path": {"type": "RegularExpression", "value": "/re/[0-9]+"}}],
            "filters": [
                {"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "a", "value": "1"}], "add": [{"name": "b", "value": "2"}], "remove": ["c"]}},
                {"type": "ResponseHeaderModifier", "responseHeaderModifier": {"set": [{"name": "d", "value": "4"}]}},
                {"type": "URLRewrite", "urlRewrite": {"hostname": "internal", "path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/v2"}}},
                {"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "api", "port": 9090}, "percent": 25}}],
            "backendRefs": [{"name": "web", "port": 8080, "weight": 3}, {"name": "api", "port": 9090, "weight": 1}, {"name": "api", "port": 9090, "weight": 0}],
            "timeouts": {"request": "1m30s"}}]),
    );
    let f = translate(&store([]), r);
    let vh = vhost(&f, "gw_80", "shop.example.com");
    assert_eq!(vh.routes.len(), 2);
    let r0 = &vh.routes[0];
    assert_eq!(r0.matches.path, PathMatch::exact("/exact"));
    assert_eq!(
        r0.matches.headers,
        [
            HeaderMatch::exact("x-env", "canary"),
            HeaderMatch::regex("x-re", "a.*")
        ]
    );
    assert_eq!(r0.matches.query, [QueryMatch::exact("q", "1")]);
    assert_eq!(r0.matches.method.as_deref(), Some("POST"));
    assert_eq!(
        forward_of(r0),
        [("web".into(), 8080, 3), ("api".into(), 9090, 1)]
    );
    assert_eq!(
        r0.request_headers,
        Some(
            HeaderChanges::new()
                .with_set("a", "1")
                .with_add("b", "2")
                .with_remove("c")
        )
    );
    assert_eq!(
        r0.response_headers,
        Some(HeaderChanges::new().with_set("d", "4"))
    );
    assert_eq!(r0.host_rewrite.as_deref(), Some("internal"));
    assert_eq!(r0.path_rewrite, Some(PathModifier::Prefix("/v2".into())));
    assert_eq!(r0.mirrors.len(), 1);
    assert_eq!(r0.mirrors[0].percent, Some(25));
    assert_eq!(r0.timeout_ms, Some(90_000));
    assert_eq!(vh.routes[1].matches.path, PathMatch::regex("/re/[0-9]+"));
    assert_eq!(r0.source.as_ref().unwrap().name, "r");
}

#[test]
fn redirects_translate_with_default_302() {
    let r = http_route(
        "r",
        parent("gw"),
        json!([]),
        json!([{"filters": [{"type": "RequestRedirect", "requestRedirect": {"scheme": "https", "hostname": "x.example.com", "port": 8443,
            "path": {"type": "ReplaceFullPath", "replaceFullPath": "/new"}}}]},
               {"matches": [{"path": {"value": "/p"}}], "filters": [{"type": "RequestRedirect", "requestRedirect": {"statusCode": 301}}]}]),
    );
    let f = translate(&store([]), r);
    let vh = vhost(&f, "gw_80", "*");
    let by = |p: &str| {
        vh.routes
            .iter()
            .find(|r| r.matches == RouteMatch::prefix(p))
            .unwrap()
            .action
            .clone()
    };
    assert_eq!(
        by("/"),
        RouteAction::Redirect(
            Redirect::new(302)
                .with_scheme("https")
                .with_host("x.example.com")
                .with_port(8443)
                .with_path("/new")
        )
    );
    assert_eq!(by("/p"), RouteAction::Redirect(Redirect::new(301)));
}

#[test]
fn rule_without_backends_answers_500_and_unknown_filters_are_unsupported() {
    let r = http_route("r", parent("gw"), json!([]), json!([{}]));
    let f = translate(&store([]), r);
    assert!(
        matches!(&vhost(&f, "gw_80", "*").routes[0].action, RouteAction::DirectResponse(d) if d.status == 500)
    );
    let r = http_route(
        "r",
        parent("gw"),
        json!([]),
        json!([{"filters": [{"type": "ExtensionRef", "extensionRef": {"group": "x", "kind": "Y", "name": "z"}}], "backendRefs": [to("web", 8080)]}]),
    );
    let f = translate(&store([]), r);
    assert!(
        matches!(&vhost(&f, "gw_80", "*").routes[0].action, RouteAction::DirectResponse(d) if d.status == 500)
    );
    assert_eq!(
        reason_of(&f, "Accepted"),
        ("False".into(), "UnsupportedValue".into())
    );
}

#[test]
fn https_listener_routes_carry_the_certificate() {
    let gw = gateway(
        "gw",
        json!([{"name": "s", "port": 443, "protocol": "HTTPS", "hostname": "*.example.com",
        "allowedRoutes": {"namespaces": {"from": "All"}}, "tls": {"certificateRefs": [{"name": "cert"}]}}]),
    );
    let r = http_route(
        "r",
        parent("gw"),
        json!(["shop.example.com"]),
        json!([{"backendRefs": [to("web", 8080)]}]),
    );
    let f = translate(&store([gw]), r);
    assert_eq!(f.listeners, [Listener::https("gw_443", 443)]);
    assert_eq!(
        vhost(&f, "gw_443", "shop.example.com").tls,
        Some(SecretRef::new(GW_NS, "cert"))
    );
}

#[test]
fn durations_parse() {
    use crate::route::duration_ms;
    assert_eq!(duration_ms("10s"), Some(10_000));
    assert_eq!(duration_ms("1h"), Some(3_600_000));
    assert_eq!(duration_ms("500ms"), Some(500));
    assert_eq!(duration_ms("1m1s1ms"), Some(61_001));
    assert_eq!(duration_ms("0s"), Some(0));
    assert_eq!(duration_ms("1x"), None);
    assert_eq!(duration_ms(""), None);
}

// ---- GRPCRoute ------------------------------------------------------------

#[test]
fn grpc_methods_become_paths_and_backends_speak_grpc() {
    let r = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"namespace": NS, "name": "g", "generation": 1},
        "spec": {"parentRefs": parent("gw"), "hostnames": ["grpc.example.com"], "rules": [
            {"matches": [{"method": {"service": "echo.Echo", "method": "Say"}},
                         {"method": {"service": "echo.Other"}, "headers": [{"name": "x", "value": "y"}]},
                         {"method": {"method": "Ping"}}],
             "backendRefs": [{"name": "api", "port": 9090, "weight": 2}, {"name": "web", "port": 8080, "weight": 1}]}]}});
    let f = translate(&store([]), r);
    let vh = vhost(&f, "gw_80", "grpc.example.com");
    let paths: Vec<_> = vh.routes.iter().map(|r| r.matches.path.clone()).collect();
    assert_eq!(
        paths,
        [
            PathMatch::exact("/echo.Echo/Say"),
            PathMatch::prefix("/echo.Other"),
            PathMatch::regex("/[^/]+/Ping")
        ]
    );
    assert_eq!(vh.routes[1].matches.headers, [HeaderMatch::exact("x", "y")]);
    let RouteAction::Forward(b) = &vh.routes[0].action else {
        panic!()
    };
    assert_eq!(b[0].backend.protocol, BackendProtocol::Grpc);
    assert_eq!((b[0].weight, b[1].weight), (2, 1));
    assert_eq!(reason_of(&f, "Accepted").1, "Accepted");
}

#[test]
fn grpc_route_not_allowed_by_http_route_only_listener() {
    let gw = gateway(
        "gw",
        json!([{"name": "h", "port": 80, "protocol": "HTTP",
        "allowedRoutes": {"namespaces": {"from": "All"}, "kinds": [{"kind": "HTTPRoute"}]}}]),
    );
    let r = json!({"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
        "metadata": {"namespace": NS, "name": "g"},
        "spec": {"parentRefs": parent("gw"), "rules": [{"backendRefs": [{"name": "api", "port": 9090}]}]}});
    let f = translate(&store([gw]), r);
    assert_eq!(
        reason_of(&f, "Accepted"),
        ("False".into(), "NotAllowedByListeners".into())
    );
}

#[test]
fn reserved_ports_are_unavailable_and_configurable() {
    let gw = gateway("gw", json!([http_listener("a", 8080, None, "All")]));
    let f = translate(&store([]), gw.clone());
    assert_eq!(
        fields(&f)["listeners"][0]["conditions"][0]["reason"],
        "PortUnavailable"
    );
    assert!(f.listeners.is_empty());
    let f = isobar_guest::with_config(r#"{"reservedPorts": []}"#, || translate(&store([]), gw));
    assert_eq!(
        fields(&f)["listeners"][0]["conditions"][0]["reason"],
        "Accepted"
    );
    assert!(GatewayApiTranslator::configure(r#"{"reservedPorts": "x"}"#).is_err());
    assert!(GatewayApiTranslator::configure(r#"{"nope": 1}"#).is_err());
}

#[test]
fn a_port_an_older_gateway_uses_with_another_protocol_is_a_protocol_conflict() {
    let mut old = gateway("old", json!([http_listener("h", 443, None, "All")]));
    old["metadata"]["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
    let mut new = gateway(
        "new",
        json!([{"name": "s", "port": 443, "protocol": "HTTPS",
        "tls": {"certificateRefs": [{"name": "cert"}]}}, http_listener("h", 80, None, "All")]),
    );
    new["metadata"]["creationTimestamp"] = json!("2021-01-01T00:00:00Z");
    let s = store([old.clone(), new.clone()]);
    let f = translate(&s, new);
    assert_eq!(
        fields(&f)["listeners"][0]["conditions"][2]["reason"],
        "ProtocolConflict"
    );
    assert_eq!(
        fields(&f)["listeners"][1]["conditions"][2]["reason"],
        "NoConflicts"
    );
    assert_eq!(f.listeners, [Listener::http("gw_80", 80)]);
    // The older one keeps its listener.
    let f = translate(&s, old);
    assert_eq!(f.listeners, [Listener::http("gw_443", 443)]);
}

#[test]
fn gateway_class_lists_supported_features_sorted() {
    let f = translate(&store([]), class("isobar", CONTROLLER));
    let names: Vec<String> = fields(&f)["supportedFeatures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["name"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert!(
        names.contains(&"HTTPRoute".to_owned()) && names.contains(&"ReferenceGrant".to_owned())
    );
}

#[test]
fn a_domain_a_more_specific_listener_covers_is_that_listeners() {
    let gw = gateway(
        "gw",
        json!([
            http_listener("any", 80, None, "All"),
            http_listener("wild", 80, Some("*.example.com"), "All"),
            http_listener("foo", 80, Some("*.foo.example.com"), "All")
        ]),
    );
    let r = http_route(
        "r",
        json!([{"name": "gw", "namespace": GW_NS, "sectionName": "any"}]),
        json!([
            "bar.com",
            "*.example.com",
            "x.example.com",
            "a.foo.example.com"
        ]),
        json!([{"backendRefs": [to("web", 8080)]}]),
    );
    let f = translate(&store([gw.clone()]), r);
    let domains: Vec<&str> = f.virtual_hosts.iter().map(|v| v.domain.as_str()).collect();
    assert_eq!(domains, ["bar.com"]);
    let r = http_route(
        "r",
        json!([{"name": "gw", "namespace": GW_NS, "sectionName": "wild"}]),
        json!(["*.example.com", "*.foo.example.com", "x.example.com"]),
        json!([{"backendRefs": [to("web", 8080)]}]),
    );
    let f = translate(&store([gw]), r);
    let domains: Vec<&str> = f.virtual_hosts.iter().map(|v| v.domain.as_str()).collect();
    assert_eq!(domains, ["*.example.com", "x.example.com"]);
}

#[test]
fn a_route_whose_domains_more_specific_listeners_take_is_still_accepted() {
    let gw = gateway(
        "gw",
        json!([
            http_listener("any", 80, None, "All"),
            http_listener("wild", 80, Some("*.example.com"), "All")
        ]),
    );
    let r = http_route(
        "r",
        json!([{"name": "gw", "namespace": GW_NS, "sectionName": "any"}]),
        json!(["x.example.com"]),
        json!([{"backendRefs": [to("web", 8080)]}]),
    );
    let f = translate(&store([gw.clone(), r.clone()]), r);
    assert!(f.virtual_hosts.is_empty());
    assert_eq!(
        reason_of(&f, "Accepted"),
        ("True".into(), "Accepted".into())
    );
    let f = translate(
        &store([
            gw.clone(),
            http_route(
                "r",
                json!([{"name": "gw", "namespace": GW_NS, "sectionName": "any"}]),
                json!(["x.example.com"]),
                json!([]),
            ),
        ]),
        gw,
    );
    assert_eq!(fields(&f)["listeners"][0]["attachedRoutes"], 1);
}

#[test]
fn backend_ref_filters_answer_500_and_backend_request_timeouts_are_a_warning() {
    let r = http_route(
        "r",
        parent("gw"),
        json!([]),
        json!([{"backendRefs": [{"name": "web", "port": 8080, "filters": [{"type": "RequestHeaderModifier",
            "requestHeaderModifier": {"set": [{"name": "a", "value": "b"}]}}]}]},
               {"matches": [{"path": {"value": "/t"}}], "backendRefs": [to("web", 8080)], "timeouts": {"backendRequest": "1s"}}]),
    );
    let f = translate(&store([]), r);
    let vh = vhost(&f, "gw_80", "*");
    assert!(matches!(&vh.routes[0].action, RouteAction::DirectResponse(d) if d.status == 500));
    assert_eq!(forward_of(&vh.routes[1]).len(), 1);
    assert_eq!(
        reason_of(&f, "Accepted"),
        ("False".into(), "UnsupportedValue".into())
    );
    assert_eq!(f.diagnostics.len(), 1);
    assert_eq!(f.diagnostics[0].reason, "Ignored");
    assert_eq!(f.diagnostics[0].severity, Severity::Warning);
}

#[test]
fn redirect_ports_follow_the_spec_per_listener() {
    let gw = gateway("gw", json!([http_listener("h", 8000, None, "All")]));
    let redirect = |r: Value| {
        let route = http_route(
            "r",
            parent("gw"),
            json!([]),
            json!([{"filters": [{"type": "RequestRedirect", "requestRedirect": r}]}]),
        );
        let f = translate(&store([gw.clone()]), route);
        match &vhost(&f, "gw_8000", "*").routes[0].action {
            RouteAction::Redirect(r) => r.port,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(
        redirect(json!({"hostname": "x.example.com"})),
        Some(8000),
        "the listener's port"
    );
    assert_eq!(
        redirect(json!({"scheme": "https"})),
        None,
        "the scheme's well-known port"
    );
    assert_eq!(redirect(json!({"scheme": "https", "port": 443})), None);
    assert_eq!(redirect(json!({"port": 80})), None);
    assert_eq!(redirect(json!({"scheme": "https", "port": 80})), Some(80));
    assert_eq!(redirect(json!({"port": 8443})), Some(8443));
    assert_eq!(
        redirect(json!({})),
        None,
        "the request's own authority is kept"
    );
}
