//! Native unit tests: Kubernetes JSON in a `MemoryStore`, fragments out.

use std::cell::RefCell;

use isobar_guest::prelude::*;
use serde_json::{Value, json};

use crate::*;

const NS: &str = "shop";

// ---- fixtures -------------------------------------------------------------

fn ingress_class(name: &str, controller: &str, default: bool) -> Value {
    let mut class = json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
        "metadata": {"name": name},
        "spec": {"controller": controller},
    });
    if default {
        class["metadata"]["annotations"] = json!({DEFAULT_CLASS_ANNOTATION: "true"});
    }
    class
}

fn service(name: &str, ports: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"namespace": NS, "name": name},
        "spec": {"ports": ports},
    })
}

/// Our class plus Services `web` (80 "http", 8443 "grpc-api" with
/// appProtocol grpc, 9000 "h2c") and `api` (8080 unnamed).
fn base_store() -> MemoryStore {
    MemoryStore::from_json_values([
        ingress_class("isobar", CONTROLLER, false),
        ingress_class("other", "example.com/other", false),
        service(
            "web",
            json!([
                {"name": "http", "port": 80},
                {"name": "grpc-api", "port": 8443, "appProtocol": "grpc"},
                {"name": "h2c", "port": 9000, "appProtocol": "kubernetes.io/h2c"},
                {"name": "ws", "port": 9001, "appProtocol": "kubernetes.io/ws"},
            ]),
        ),
        service("api", json!([{"port": 8080}])),
    ])
    .unwrap()
}

fn ingress_object(spec: Value, annotations: Value) -> Object {
    Object::from_json(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"namespace": NS, "name": "front", "annotations": annotations},
        "spec": spec,
    }))
    .unwrap()
}

/// An Ingress of class `isobar` with the given spec fields added.
fn ours(mut spec: Value) -> Object {
    spec["ingressClassName"] = json!("isobar");
    ingress_object(spec, json!({}))
}

fn ours_annotated(mut spec: Value, annotations: Value) -> Object {
    spec["ingressClassName"] = json!("isobar");
    ingress_object(spec, annotations)
}

fn backend(service: &str, port: Value) -> Value {
    json!({"service": {"name": service, "port": port}})
}

fn path(path: &str, path_type: &str, service: &str, port: u16) -> Value {
    json!({"path": path, "pathType": path_type, "backend": backend(service, json!({"number": port}))})
}

fn rule(host: &str, paths: Vec<Value>) -> Value {
    json!({"host": host, "http": {"paths": paths}})
}

fn translate_in(store: &MemoryStore, root: &Object) -> Fragment {
    IngressTranslator::translate(root, store).expect("translation succeeds")
}

fn translate(root: &Object) -> Fragment {
    translate_in(&base_store(), root)
}

// ---- lookups --------------------------------------------------------------

fn vhost<'f>(fragment: &'f Fragment, listener: &str, domain: &str) -> &'f VirtualHost {
    fragment
        .virtual_hosts
        .iter()
        .find(|vh| vh.listener == listener && vh.domain == domain)
        .unwrap_or_else(|| panic!("no virtual host {listener}/{domain} in {fragment:#?}"))
}

fn has_vhost(fragment: &Fragment, listener: &str, domain: &str) -> bool {
    fragment
        .virtual_hosts
        .iter()
        .any(|vh| vh.listener == listener && vh.domain == domain)
}

fn forward(route: &Route) -> &Backend {
    match &route.action {
        RouteAction::Forward(backends) if backends.len() == 1 => &backends[0].backend,
        other => panic!("expected one forward backend, got {other:?}"),
    }
}

fn is_503(route: &Route) -> bool {
    matches!(&route.action, RouteAction::DirectResponse(r) if r.status == 503)
}

fn reasons(fragment: &Fragment) -> Vec<&str> {
    fragment
        .diagnostics
        .iter()
        .map(|d| d.reason.as_str())
        .collect()
}

fn diagnostic<'f>(fragment: &'f Fragment, reason: &str) -> &'f Diagnostic {
    fragment
        .diagnostics
        .iter()
        .find(|d| d.reason == reason)
        .unwrap_or_else(|| panic!("no {reason} diagnostic in {:#?}", fragment.diagnostics))
}

fn simple(host: &str) -> Object {
    ours(json!({"rules": [rule(host, vec![path("/", "Prefix", "web", 80)])]}))
}

// ---- describe -------------------------------------------------------------

#[test]
fn describe_names_kinds_and_roots() {
    let info = IngressTranslator::describe();
    assert_eq!(info.name, "ingress");
    assert_eq!(info.version, env!("CARGO_PKG_VERSION"));
    let kinds: Vec<_> = info
        .watches
        .iter()
        .map(|k| (k.api_version.as_str(), k.kind.as_str()))
        .collect();
    assert_eq!(
        kinds,
        [
            ("networking.k8s.io/v1", "Ingress"),
            ("networking.k8s.io/v1", "IngressClass"),
            ("v1", "Service"),
        ]
    );
    assert_eq!(
        info.roots,
        [KindRef::new("networking.k8s.io/v1", "Ingress")]
    );
}

// ---- class selection ------------------------------------------------------

fn with_class(class_name: Option<&str>, legacy: Option<&str>) -> Object {
    let mut spec = json!({"rules": [rule("a.example.com", vec![path("/", "Prefix", "web", 80)])]});
    if let Some(name) = class_name {
        spec["ingressClassName"] = json!(name);
    }
    let annotations = match legacy {
        Some(name) => json!({LEGACY_CLASS: name}),
        None => json!({}),
    };
    ingress_object(spec, annotations)
}

#[test]
fn class_by_name_selects_our_controller_only() {
    assert!(!translate(&with_class(Some("isobar"), None)).is_empty());
    assert!(translate(&with_class(Some("other"), None)).is_empty());
    assert!(translate(&with_class(Some("missing"), None)).is_empty());
}

#[test]
fn unset_class_is_ours_only_with_our_default_class() {
    let root = with_class(None, None);
    assert!(translate(&root).is_empty(), "no default class");

    let mut store = base_store();
    store
        .insert_json(ingress_class("isobar", CONTROLLER, true))
        .unwrap();
    assert!(
        !translate_in(&store, &root).is_empty(),
        "our class is the default"
    );

    let mut store = base_store();
    store
        .insert_json(ingress_class("other", "example.com/other", true))
        .unwrap();
    assert!(
        translate_in(&store, &root).is_empty(),
        "another controller's default"
    );
}

#[test]
fn legacy_class_annotation_selects() {
    assert!(!translate(&with_class(None, Some("isobar"))).is_empty());
    assert!(translate(&with_class(None, Some("other"))).is_empty());
    assert!(translate(&with_class(None, Some("nginx"))).is_empty());
}

#[test]
fn foreign_ingress_gets_no_diagnostics() {
    let root = ingress_object(
        json!({"ingressClassName": "other",
               "rules": [rule("a.example.com", vec![path("/", "Prefix", "missing", 80)])]}),
        json!({RESPONSE_TIMEOUT: "soon"}),
    );
    assert_eq!(translate(&root), Fragment::new());
}

#[test]
fn unparsable_ingress_is_an_error() {
    let root = Object::from_json(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
        "metadata": {"namespace": NS, "name": "broken"},
        "spec": {"rules": "not a list"},
    }))
    .unwrap();
    let err = IngressTranslator::translate(&root, &base_store()).unwrap_err();
    assert_eq!(err.reason, "InvalidObject");
}

#[test]
fn unparsable_ingress_class_is_an_error() {
    let mut store = base_store();
    store
        .insert_json(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "IngressClass",
            "metadata": {"name": "isobar"}, "spec": {"controller": 42},
        }))
        .unwrap();
    let err = IngressTranslator::translate(&simple("a.example.com"), &store).unwrap_err();
    assert_eq!(err.reason, "InvalidObject");
}

#[test]
fn ours_without_rules_contributes_nothing() {
    assert!(translate(&ours(json!({}))).is_empty());
}

// ---- listeners and hosts --------------------------------------------------

#[test]
fn http_listener_only_without_tls() {
    let fragment = translate(&simple("a.example.com"));
    assert_eq!(
        fragment.listeners,
        [Listener::http(HTTP_LISTENER, HTTP_PORT)]
    );
    assert_eq!(fragment.listeners[0].port, 8080);
    assert!(fragment.diagnostics.is_empty());
}

#[test]
fn empty_host_is_catch_all() {
    let fragment = translate(&simple(""));
    let vh = vhost(&fragment, HTTP_LISTENER, "*");
    assert!(vh.tls.is_none());
    assert!(vh.routes[0].matches.headers.is_empty());
}

#[test]
fn rule_without_host_field_is_catch_all() {
    let root = ours(json!({"rules": [{"http": {"paths": [path("/", "Prefix", "web", 80)]}}]}));
    assert!(has_vhost(&translate(&root), HTTP_LISTENER, "*"));
}

#[test]
fn exact_host_gets_its_own_virtual_host_lowercased() {
    let fragment = translate(&simple("Shop.Example.COM"));
    let vh = vhost(&fragment, HTTP_LISTENER, "shop.example.com");
    assert!(vh.routes[0].matches.headers.is_empty());
}

#[test]
fn rules_of_one_host_share_a_virtual_host() {
    let root = ours(json!({"rules": [
        rule("a.example.com", vec![path("/x", "Prefix", "web", 80)]),
        rule("b.example.com", vec![path("/", "Prefix", "web", 80)]),
        rule("a.example.com", vec![path("/y", "Prefix", "api", 8080)]),
    ]}));
    let fragment = translate(&root);
    assert_eq!(fragment.virtual_hosts.len(), 2);
    assert_eq!(
        vhost(&fragment, HTTP_LISTENER, "a.example.com")
            .routes
            .len(),
        2
    );
}

#[test]
fn wildcard_host_matches_exactly_one_label() {
    let root = ours(json!({"rules": [rule("*.example.com", vec![
        path("/a", "Prefix", "web", 80),
        path("/b", "Exact", "missing", 80),
    ])]}));
    let fragment = translate(&root);
    let vh = vhost(&fragment, HTTP_LISTENER, "*.example.com");
    assert_eq!(vh.routes.len(), 2);
    for route in &vh.routes {
        assert_eq!(
            route.matches.headers,
            [HeaderMatch::regex(
                ":authority",
                r"(?i)[^.:]+\.example\.com(:[0-9]+)?"
            )],
            "every route, including 503s, checks the label count"
        );
    }
}

#[test]
fn invalid_hosts_are_reported_and_skipped() {
    for host in [
        "a.*.example.com",
        "*",
        "foo_bar.com",
        "-a.com",
        "a..com",
        "a.com:80",
    ] {
        let root = ours(json!({"rules": [
            rule(host, vec![path("/", "Prefix", "web", 80)]),
            rule("ok.example.com", vec![path("/", "Prefix", "web", 80)]),
        ]}));
        let fragment = translate(&root);
        assert_eq!(reasons(&fragment), ["InvalidHost"], "host {host:?}");
        assert_eq!(fragment.virtual_hosts.len(), 1, "host {host:?}");
    }
}

// ---- paths ----------------------------------------------------------------

fn single_path(path_value: Value) -> Fragment {
    translate(&ours(
        json!({"rules": [{"host": "a.example.com", "http": {"paths": [path_value]}}]}),
    ))
}

fn only_match(fragment: &Fragment) -> &PathMatch {
    let vh = vhost(fragment, HTTP_LISTENER, "a.example.com");
    assert_eq!(vh.routes.len(), 1);
    &vh.routes[0].matches.path
}

#[test]
fn exact_and_prefix_paths() {
    let fragment = single_path(path("/cart", "Exact", "web", 80));
    assert_eq!(only_match(&fragment), &PathMatch::exact("/cart"));
    let fragment = single_path(path("/cart", "Prefix", "web", 80));
    assert_eq!(only_match(&fragment), &PathMatch::prefix("/cart"));
}

#[test]
fn implementation_specific_plain_path_is_a_prefix() {
    for value in ["/static", "/index.html", "/v1.2/x"] {
        let fragment = single_path(path(value, "ImplementationSpecific", "web", 80));
        assert_eq!(only_match(&fragment), &PathMatch::prefix(value), "{value}");
    }
}

#[test]
fn implementation_specific_with_metacharacters_is_a_regex() {
    for value in ["/api/v[0-9]+/.*", "/(a|b)", "^/exact$", r"/file\.txt"] {
        let fragment = single_path(path(value, "ImplementationSpecific", "web", 80));
        assert_eq!(only_match(&fragment), &PathMatch::regex(value), "{value}");
        assert!(fragment.diagnostics.is_empty());
    }
}

#[test]
fn implementation_specific_invalid_regex_is_reported() {
    for value in ["/api/(v1", "/a{2,1}", "/[z-a]", "/a**"] {
        let fragment = single_path(path(value, "ImplementationSpecific", "web", 80));
        assert_eq!(reasons(&fragment), ["InvalidPath"], "{value}");
        assert!(fragment.virtual_hosts.is_empty(), "{value}");
    }
}

#[test]
fn implementation_specific_empty_or_missing_path_type() {
    let fragment = single_path(json!({"pathType": "ImplementationSpecific",
                                      "backend": backend("web", json!({"number": 80}))}));
    assert_eq!(only_match(&fragment), &PathMatch::prefix("/"));
    // pathType missing: ImplementationSpecific.
    let fragment =
        single_path(json!({"path": "/x", "backend": backend("web", json!({"number": 80}))}));
    assert_eq!(only_match(&fragment), &PathMatch::prefix("/x"));
}

#[test]
fn invalid_paths_are_reported_and_skipped() {
    for (value, path_type) in [
        ("cart", "Exact"),
        ("cart", "Prefix"),
        ("/a?b=c", "Exact"),
        ("/a#frag", "Prefix"),
        ("/a b", "Prefix"),
        ("", "Exact"),
        ("relative", "ImplementationSpecific"),
    ] {
        let fragment = single_path(path(value, path_type, "web", 80));
        assert_eq!(reasons(&fragment), ["InvalidPath"], "{value:?} {path_type}");
        assert!(fragment.virtual_hosts.is_empty());
    }
}

#[test]
fn unknown_path_type_is_reported() {
    let fragment = single_path(path("/", "Glob", "web", 80));
    assert_eq!(reasons(&fragment), ["InvalidPathType"]);
}

#[test]
fn duplicate_paths_keep_the_first() {
    let root = ours(json!({"rules": [
        rule("a.example.com", vec![path("/x", "Prefix", "web", 80)]),
        rule("a.example.com", vec![path("/x", "Prefix", "api", 8080), path("/x", "Exact", "api", 8080)]),
    ]}));
    let fragment = translate(&root);
    let vh = vhost(&fragment, HTTP_LISTENER, "a.example.com");
    assert_eq!(vh.routes.len(), 2, "prefix /x once, exact /x once");
    assert_eq!(forward(&vh.routes[0]).name, "web");
    assert_eq!(reasons(&fragment), ["DuplicatePath"]);
}

// ---- backends -------------------------------------------------------------

fn single_backend(backend_value: Value) -> Fragment {
    translate(&ours(
        json!({"rules": [{"host": "a.example.com", "http": {"paths": [
            {"path": "/", "pathType": "Prefix", "backend": backend_value}
        ]}}]}),
    ))
}

fn only_route(fragment: &Fragment) -> &Route {
    &vhost(fragment, HTTP_LISTENER, "a.example.com").routes[0]
}

#[test]
fn backend_by_port_number() {
    let fragment = single_backend(backend("api", json!({"number": 8080})));
    let b = forward(only_route(&fragment));
    assert_eq!(
        b,
        &Backend::service(NS, "api", 8080),
        "Ingress namespace, http1, round robin"
    );
}

#[test]
fn backend_by_port_name() {
    let fragment = single_backend(backend("web", json!({"name": "http"})));
    assert_eq!(forward(only_route(&fragment)).port, 80);
    let fragment = single_backend(backend("web", json!({"name": "h2c"})));
    assert_eq!(forward(only_route(&fragment)).port, 9000);
}

#[test]
fn backend_protocol_from_app_protocol() {
    for (port, protocol) in [
        (80, BackendProtocol::Http1),
        (8443, BackendProtocol::Grpc),
        (9000, BackendProtocol::Http2),
        (9001, BackendProtocol::Http1),
    ] {
        let fragment = single_backend(backend("web", json!({"number": port})));
        assert_eq!(
            forward(only_route(&fragment)).protocol,
            protocol,
            "port {port}"
        );
    }
}

fn assert_unusable(fragment: &Fragment, reason: &str, needle: &str) {
    assert!(is_503(only_route(fragment)), "{fragment:#?}");
    assert_eq!(reasons(fragment), [reason]);
    let d = diagnostic(fragment, reason);
    assert_eq!(d.severity, Severity::Warning);
    assert_eq!(d.object, ObjectRef::new("Ingress", NS, "front"));
    assert!(
        d.message.contains(needle),
        "{:?} lacks {needle:?}",
        d.message
    );
}

#[test]
fn missing_service_is_503_with_diagnostic() {
    let fragment = single_backend(backend("gone", json!({"number": 80})));
    assert_unusable(&fragment, "ServiceNotFound", "shop/gone");
}

#[test]
fn missing_service_port_is_503_with_diagnostic() {
    let fragment = single_backend(backend("web", json!({"number": 81})));
    assert_unusable(&fragment, "ServicePortNotFound", "81");
    let fragment = single_backend(backend("web", json!({"name": "metrics"})));
    assert_unusable(&fragment, "ServicePortNotFound", "metrics");
}

#[test]
fn resource_backend_is_503_with_diagnostic() {
    let fragment = single_backend(json!({"resource": {
        "apiGroup": "k8s.example.com", "kind": "StorageBucket", "name": "static"}}));
    assert_unusable(
        &fragment,
        "ResourceBackendUnsupported",
        "StorageBucket/static",
    );
}

#[test]
fn external_name_service_is_503_with_diagnostic() {
    let mut store = base_store();
    store
        .insert_json(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"namespace": NS, "name": "ext"},
            "spec": {"type": "ExternalName", "externalName": "example.org",
                     "ports": [{"port": 80}]},
        }))
        .unwrap();
    let root =
        ours(json!({"rules": [rule("a.example.com", vec![path("/", "Prefix", "ext", 80)])]}));
    let fragment = translate_in(&store, &root);
    assert_unusable(&fragment, "ExternalNameServiceUnsupported", "shop/ext");
}

#[test]
fn malformed_backends_are_503_with_diagnostic() {
    let fragment = single_backend(json!({}));
    assert_unusable(&fragment, "InvalidBackend", "neither");
    let fragment = single_backend(json!({"service": {"name": "web", "port": {}}}));
    assert_unusable(&fragment, "InvalidBackend", "no port");
}

#[test]
fn unparsable_service_is_503_with_diagnostic() {
    let mut store = base_store();
    store
        .insert_json(service("web", json!("not a list")))
        .unwrap();
    let fragment = translate_in(&store, &simple("a.example.com"));
    assert!(is_503(only_route(&fragment)));
    assert_eq!(reasons(&fragment), ["InvalidObject"]);
}

/// A store that counts reads, to check what a translation looks at.
struct CountingStore {
    inner: MemoryStore,
    gets: RefCell<Vec<String>>,
}

impl Store for CountingStore {
    fn get(&self, api_version: &str, kind: &str, namespace: &str, name: &str) -> Option<Object> {
        self.gets
            .borrow_mut()
            .push(format!("{kind} {namespace}/{name}"));
        self.inner.get(api_version, kind, namespace, name)
    }

    fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<Object> {
        self.inner.list(api_version, kind, namespace)
    }
}

#[test]
fn each_service_is_read_once_and_reported_once() {
    let root = ours(json!({"rules": [
        rule("a.example.com", vec![path("/1", "Prefix", "web", 80), path("/2", "Prefix", "gone", 80)]),
        rule("b.example.com", vec![path("/3", "Prefix", "web", 80), path("/4", "Prefix", "gone", 80)]),
    ]}));
    let store = CountingStore {
        inner: base_store(),
        gets: RefCell::default(),
    };
    let fragment = IngressTranslator::translate(&root, &store).unwrap();
    assert_eq!(
        *store.gets.borrow(),
        [
            "IngressClass /isobar",
            "Service shop/web",
            "Service shop/gone"
        ]
    );
    assert_eq!(reasons(&fragment), ["ServiceNotFound"]);
}

// ---- default backend ------------------------------------------------------

#[test]
fn default_backend_is_catch_all_prefix_route() {
    let root = ours(json!({
        "defaultBackend": backend("api", json!({"number": 8080})),
        "rules": [rule("a.example.com", vec![path("/", "Prefix", "web", 80)])],
    }));
    let fragment = translate(&root);
    let vh = vhost(&fragment, HTTP_LISTENER, "*");
    assert_eq!(vh.routes.len(), 1);
    assert_eq!(vh.routes[0].matches, RouteMatch::prefix("/"));
    assert_eq!(forward(&vh.routes[0]), &Backend::service(NS, "api", 8080));
    // Named hosts do not fall back to it.
    assert_eq!(
        vhost(&fragment, HTTP_LISTENER, "a.example.com")
            .routes
            .len(),
        1
    );
}

#[test]
fn default_backend_alone() {
    let root = ours(json!({"defaultBackend": backend("web", json!({"name": "http"}))}));
    let fragment = translate(&root);
    assert_eq!(
        fragment.listeners,
        [Listener::http(HTTP_LISTENER, HTTP_PORT)]
    );
    assert_eq!(fragment.virtual_hosts.len(), 1);
    assert_eq!(
        forward(&vhost(&fragment, HTTP_LISTENER, "*").routes[0]).port,
        80
    );
}

#[test]
fn hostless_root_path_beats_default_backend() {
    let root = ours(json!({
        "defaultBackend": backend("api", json!({"number": 8080})),
        "rules": [rule("", vec![path("/", "Prefix", "web", 80), path("/x", "Exact", "web", 80)])],
    }));
    let fragment = translate(&root);
    let vh = vhost(&fragment, HTTP_LISTENER, "*");
    assert_eq!(vh.routes.len(), 2);
    assert!(vh.routes.iter().all(|r| forward(r).name == "web"));
    assert!(fragment.diagnostics.is_empty());
}

#[test]
fn default_backend_missing_service_is_503() {
    let root = ours(json!({"defaultBackend": backend("gone", json!({"number": 80}))}));
    let fragment = translate(&root);
    assert!(is_503(&vhost(&fragment, HTTP_LISTENER, "*").routes[0]));
    assert_eq!(reasons(&fragment), ["ServiceNotFound"]);
}

// ---- TLS ------------------------------------------------------------------

fn tls_ingress(tls: Value, annotations: Value) -> Object {
    ours_annotated(
        json!({
            "tls": tls,
            "rules": [
                rule("a.example.com", vec![path("/", "Prefix", "web", 80), path("/api", "Exact", "api", 8080)]),
                rule("b.example.com", vec![path("/", "Prefix", "web", 80)]),
            ],
        }),
        annotations,
    )
}

#[test]
fn tls_hosts_get_https_virtual_hosts() {
    let root = tls_ingress(
        json!([{"hosts": ["a.example.com"], "secretName": "a-cert"}]),
        json!({}),
    );
    let fragment = translate(&root);
    assert_eq!(
        fragment.listeners,
        [
            Listener::http(HTTP_LISTENER, HTTP_PORT),
            Listener::https(HTTPS_LISTENER, HTTPS_PORT)
        ]
    );
    let https = vhost(&fragment, HTTPS_LISTENER, "a.example.com");
    assert_eq!(https.tls, Some(SecretRef::new(NS, "a-cert")));
    let http = vhost(&fragment, HTTP_LISTENER, "a.example.com");
    assert_eq!(https.routes, http.routes, "same routes on both listeners");
    assert!(!has_vhost(&fragment, HTTPS_LISTENER, "b.example.com"));
    assert!(has_vhost(&fragment, HTTP_LISTENER, "b.example.com"));
    assert!(fragment.diagnostics.is_empty());
}

#[test]
fn tls_without_hosts_covers_all_rule_hosts() {
    let root = tls_ingress(json!([{"secretName": "all"}]), json!({}));
    let fragment = translate(&root);
    for host in ["a.example.com", "b.example.com"] {
        assert_eq!(
            vhost(&fragment, HTTPS_LISTENER, host).tls,
            Some(SecretRef::new(NS, "all"))
        );
    }
}

#[test]
fn tls_without_secret_is_reported_and_ignored() {
    let root = tls_ingress(
        json!([{"hosts": ["a.example.com"]}]),
        json!({FORCE_SSL_REDIRECT: "true"}),
    );
    let fragment = translate(&root);
    assert_eq!(reasons(&fragment), ["TLSSecretMissing"]);
    assert!(
        fragment
            .virtual_hosts
            .iter()
            .all(|vh| vh.listener == HTTP_LISTENER)
    );
    // Not redirected either: there is no https to go to.
    let http = vhost(&fragment, HTTP_LISTENER, "a.example.com");
    assert!(matches!(http.routes[0].action, RouteAction::Forward(_)));
}

#[test]
fn force_ssl_redirect_turns_tls_hosts_http_routes_into_redirects() {
    let root = tls_ingress(
        json!([{"hosts": ["a.example.com"], "secretName": "a-cert"}]),
        json!({FORCE_SSL_REDIRECT: "true"}),
    );
    let fragment = translate(&root);
    let http = vhost(&fragment, HTTP_LISTENER, "a.example.com");
    let https = vhost(&fragment, HTTPS_LISTENER, "a.example.com");
    assert_eq!(http.routes.len(), 2);
    for (redirect, original) in http.routes.iter().zip(&https.routes) {
        assert_eq!(redirect.matches, original.matches);
        assert_eq!(redirect.action, RouteAction::Redirect(Redirect::to_https()));
        assert!(matches!(original.action, RouteAction::Forward(_)));
    }
    // Hosts without TLS keep forwarding.
    let b = vhost(&fragment, HTTP_LISTENER, "b.example.com");
    assert!(matches!(b.routes[0].action, RouteAction::Forward(_)));
}

#[test]
fn tls_host_without_own_rule_uses_catch_all_routes() {
    let root = ours_annotated(
        json!({
            "tls": [{"hosts": ["c.example.com"], "secretName": "c-cert"}],
            "rules": [rule("", vec![path("/", "Prefix", "web", 80)])],
        }),
        json!({FORCE_SSL_REDIRECT: "true"}),
    );
    let fragment = translate(&root);
    let https = vhost(&fragment, HTTPS_LISTENER, "c.example.com");
    assert_eq!(forward(&https.routes[0]).name, "web");
    // The redirect needs an http virtual host of its own; "*" stays plain.
    let http = vhost(&fragment, HTTP_LISTENER, "c.example.com");
    assert!(matches!(http.routes[0].action, RouteAction::Redirect(_)));
    let catch_all = vhost(&fragment, HTTP_LISTENER, "*");
    assert!(matches!(
        catch_all.routes[0].action,
        RouteAction::Forward(_)
    ));
}

#[test]
fn tls_host_covered_by_wildcard_rule() {
    let root = ours(json!({
        "tls": [{"hosts": ["x.example.com"], "secretName": "x-cert"}],
        "rules": [rule("*.example.com", vec![path("/", "Prefix", "api", 8080)])],
    }));
    let fragment = translate(&root);
    let https = vhost(&fragment, HTTPS_LISTENER, "x.example.com");
    assert_eq!(forward(&https.routes[0]).name, "api");
    assert!(
        https.routes[0].matches.headers.is_empty(),
        "exact TLS host needs no authority check"
    );
}

#[test]
fn wildcard_tls_host_checks_authority_on_https_too() {
    let root = ours(json!({
        "tls": [{"hosts": ["*.example.com"], "secretName": "wild"}],
        "rules": [rule("*.example.com", vec![path("/", "Prefix", "web", 80)])],
    }));
    let fragment = translate(&root);
    let https = vhost(&fragment, HTTPS_LISTENER, "*.example.com");
    assert_eq!(https.tls, Some(SecretRef::new(NS, "wild")));
    assert_eq!(https.routes[0].matches.headers[0].name, ":authority");
}

#[test]
fn tls_host_in_two_entries_keeps_the_first() {
    let root = tls_ingress(
        json!([
            {"hosts": ["a.example.com"], "secretName": "first"},
            {"hosts": ["a.example.com", "b.example.com"], "secretName": "second"},
        ]),
        json!({}),
    );
    let fragment = translate(&root);
    assert_eq!(
        vhost(&fragment, HTTPS_LISTENER, "a.example.com").tls,
        Some(SecretRef::new(NS, "first"))
    );
    assert_eq!(
        vhost(&fragment, HTTPS_LISTENER, "b.example.com").tls,
        Some(SecretRef::new(NS, "second"))
    );
    assert_eq!(reasons(&fragment), ["TLSHostConflict"]);
}

#[test]
fn tls_host_with_nothing_to_serve_is_reported() {
    let root = tls_ingress(
        json!([{"hosts": ["z.other.org"], "secretName": "z"}]),
        json!({}),
    );
    let fragment = translate(&root);
    assert!(!has_vhost(&fragment, HTTPS_LISTENER, "z.other.org"));
    let d = diagnostic(&fragment, "TLSHostWithoutRoutes");
    assert_eq!(d.severity, Severity::Info);
    assert!(!fragment.listeners.iter().any(|l| l.name == HTTPS_LISTENER));
}

#[test]
fn tls_entry_covering_no_host_is_reported() {
    let root = ours(json!({
        "tls": [{"secretName": "lonely"}],
        "defaultBackend": backend("web", json!({"number": 80})),
    }));
    let fragment = translate(&root);
    assert_eq!(reasons(&fragment), ["TLSWithoutHosts"]);
    assert_eq!(fragment.virtual_hosts.len(), 1);
}

#[test]
fn invalid_tls_host_is_reported() {
    let root = tls_ingress(
        json!([{"hosts": ["bad host"], "secretName": "s"}]),
        json!({}),
    );
    let fragment = translate(&root);
    assert!(reasons(&fragment).contains(&"InvalidHost"));
}

// ---- annotations ----------------------------------------------------------

fn annotated(annotations: Value) -> Fragment {
    translate(&ours_annotated(
        json!({"rules": [rule("a.example.com", vec![
            path("/", "Prefix", "web", 80),
            path("/gone", "Prefix", "gone", 80),
        ])]}),
        annotations,
    ))
}

#[test]
fn response_timeout_sets_forward_route_timeouts() {
    let fragment = annotated(json!({RESPONSE_TIMEOUT: "15s"}));
    let routes = &vhost(&fragment, HTTP_LISTENER, "a.example.com").routes;
    assert_eq!(routes[0].timeout_ms, Some(15_000));
    assert_eq!(
        routes[1].timeout_ms, None,
        "a 503 has no upstream to time out"
    );
    let fragment = annotated(json!({RESPONSE_TIMEOUT: "500ms"}));
    assert_eq!(only_forward(&fragment).timeout_ms, Some(500));
    let fragment = annotated(json!({RESPONSE_TIMEOUT: "infinity"}));
    assert_eq!(only_forward(&fragment).timeout_ms, Some(0));
}

fn only_forward(fragment: &Fragment) -> &Route {
    &vhost(fragment, HTTP_LISTENER, "a.example.com").routes[0]
}

fn annotation_problems(fragment: &Fragment) -> Vec<&str> {
    fragment
        .diagnostics
        .iter()
        .filter(|d| d.reason == "InvalidAnnotation")
        .map(|d| d.message.as_str())
        .collect()
}

#[test]
fn invalid_response_timeout_is_reported_and_ignored() {
    for value in ["soon", "15", "-1s", "1y"] {
        let fragment = annotated(json!({RESPONSE_TIMEOUT: value}));
        assert_eq!(only_forward(&fragment).timeout_ms, None);
        let problems = annotation_problems(&fragment);
        assert_eq!(problems.len(), 1, "{value}");
        assert!(problems[0].contains(RESPONSE_TIMEOUT));
        // The rest of the Ingress is still translated.
        assert!(matches!(
            only_forward(&fragment).action,
            RouteAction::Forward(_)
        ));
    }
}

#[test]
fn retry_annotations_set_retry_policy() {
    let fragment = annotated(json!({RETRY_ON: "5xx,connect-failure", NUM_RETRIES: "3",
                                    PER_TRY_TIMEOUT: "250ms"}));
    assert_eq!(
        only_forward(&fragment).retry,
        Some(RetryPolicy::new("5xx,connect-failure", 3).with_per_try_timeout_ms(250))
    );
    assert!(
        fragment
            .diagnostics
            .iter()
            .all(|d| d.reason != "InvalidAnnotation")
    );
    let fragment = annotated(json!({RETRY_ON: "gateway-error"}));
    assert_eq!(
        only_forward(&fragment).retry,
        Some(RetryPolicy::new("gateway-error", 1))
    );
}

#[test]
fn invalid_retry_annotations_are_reported_and_ignored() {
    let fragment = annotated(json!({RETRY_ON: "sometimes", NUM_RETRIES: "3"}));
    assert_eq!(only_forward(&fragment).retry, None);
    assert_eq!(annotation_problems(&fragment).len(), 1);

    let fragment = annotated(json!({RETRY_ON: "5xx", NUM_RETRIES: "lots", PER_TRY_TIMEOUT: "0s"}));
    assert_eq!(
        only_forward(&fragment).retry,
        Some(RetryPolicy::new("5xx", 1)),
        "bad attempts and per-try timeout fall back to defaults"
    );
    assert_eq!(annotation_problems(&fragment).len(), 2);

    let fragment = annotated(json!({NUM_RETRIES: "3"}));
    assert_eq!(only_forward(&fragment).retry, None);
    assert!(annotation_problems(&fragment)[0].contains(RETRY_ON));
}

#[test]
fn invalid_force_ssl_redirect_is_reported() {
    let root = tls_ingress(
        json!([{"hosts": ["a.example.com"], "secretName": "a-cert"}]),
        json!({FORCE_SSL_REDIRECT: "yes"}),
    );
    let fragment = translate(&root);
    assert_eq!(annotation_problems(&fragment).len(), 1);
    let http = vhost(&fragment, HTTP_LISTENER, "a.example.com");
    assert!(matches!(http.routes[0].action, RouteAction::Forward(_)));
}

// ---- whole output ---------------------------------------------------------

#[test]
fn emits_only_grpc_compatible_path_matchers_and_valid_listeners() {
    let root = ours_annotated(
        json!({
            "defaultBackend": backend("web", json!({"number": 80})),
            "tls": [{"secretName": "all"}],
            "rules": [
                rule("a.example.com", vec![
                    path("/x", "Exact", "web", 80),
                    path("/y", "Prefix", "web", 80),
                    path("/z/[0-9]+", "ImplementationSpecific", "web", 80),
                ]),
                rule("*.example.org", vec![path("/", "Prefix", "gone", 80)]),
            ],
        }),
        json!({FORCE_SSL_REDIRECT: "true", RESPONSE_TIMEOUT: "1s", RETRY_ON: "5xx"}),
    );
    let fragment = translate(&root);
    let listener_names: Vec<_> = fragment.listeners.iter().map(|l| l.name.as_str()).collect();
    for vh in &fragment.virtual_hosts {
        assert!(listener_names.contains(&vh.listener.as_str()));
        assert_eq!(vh.tls.is_some(), vh.listener == HTTPS_LISTENER, "{vh:?}");
        assert!(!vh.routes.is_empty());
        for route in &vh.routes {
            // The IR only has these three; gRPC maps them to path, prefix
            // and safe_regex.
            assert!(matches!(
                route.matches.path,
                PathMatch::Exact(_) | PathMatch::Prefix(_) | PathMatch::Regex(_)
            ));
        }
    }
    // Deterministic: the same input gives the same output.
    assert_eq!(fragment, translate(&root));
}
