//! Ingress behaviours, one test each: objects in, Envoy resources out,
//! always through the real component built from plugins/ingress.

use isobar::xds::type_url;
use isobar_tests::*;
use serde_json::json;

const HTTP: &str = "ingress_http";

fn base() -> Vec<serde_json::Value> {
    vec![
        ingress_class("isobar", false),
        service("shop", "web", &[("http", 80, json!(8080))]),
        slice("shop", "web", "a", "http", 8080, &["10.0.0.1", "10.0.0.2"]),
    ]
}

fn with(
    mut objects: Vec<serde_json::Value>,
    more: impl IntoIterator<Item = serde_json::Value>,
) -> Vec<serde_json::Value> {
    objects.extend(more);
    objects
}

#[test]
fn exact_path_routes_to_the_service_cluster() {
    let p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[("shop.example.com", &[("/cart", "Exact", "web", json!(80))])],
        )],
    ));
    let s = p.snapshot();
    assert_eq!(
        routes(s, HTTP, "shop.example.com"),
        pairs(&[("path=/cart", "cluster=shop/web/80")])
    );
    assert!(cluster(s, "shop/web/80").is_some());
    assert!(listener(s, HTTP).is_some());
    assert!(p.diagnostics().is_empty(), "{:?}", p.diagnostics());
}

#[test]
fn prefix_has_path_segment_semantics() {
    let p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[("shop.example.com", &[("/foo", "Prefix", "web", json!(80))])],
        )],
    ));
    // /foo and /foo/... match, /foobar does not: an exact route plus a
    // prefix ending in a slash, both understood by Envoy and gRPC.
    assert_eq!(
        routes(p.snapshot(), HTTP, "shop.example.com"),
        pairs(&[
            ("path=/foo", "cluster=shop/web/80"),
            ("prefix=/foo/", "cluster=shop/web/80")
        ])
    );
}

#[test]
fn prefix_trailing_slash_and_root() {
    let p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[(
                "a.example.com",
                &[
                    ("/bar/", "Prefix", "web", json!(80)),
                    ("/", "Prefix", "web", json!(80)),
                ],
            )],
        )],
    ));
    assert_eq!(
        routes(p.snapshot(), HTTP, "a.example.com"),
        pairs(&[
            ("path=/bar", "cluster=shop/web/80"),
            ("prefix=/bar/", "cluster=shop/web/80"),
            ("prefix=/", "cluster=shop/web/80")
        ])
    );
}

/// Issue 13 item 14: `/big(a{1000})` passed the plugin and the host, and
/// Envoy rejected it (RE2 program size 1010 > 100), NACKing the route
/// configuration of every host on the listener. Now only that route is
/// left out, with a diagnostic; the rest of its host and the other hosts
/// are served.
#[test]
fn a_regex_over_envoys_program_size_drops_only_its_route() {
    let p = ingress_pipeline(with(
        base(),
        [
            ingress(
                "shop",
                "big",
                &[(
                    "a.example.com",
                    &[
                        ("/big(a{1000})", "ImplementationSpecific", "web", json!(80)),
                        ("/v[0-9]+/api", "ImplementationSpecific", "web", json!(80)),
                    ],
                )],
            ),
            ingress(
                "shop",
                "other",
                &[("b.example.com", &[("/", "Prefix", "web", json!(80))])],
            ),
        ],
    ));
    let a = routes(p.snapshot(), HTTP, "a.example.com");
    assert_eq!(
        a,
        pairs(&[("regex=/v[0-9]+/api", "cluster=shop/web/80")]),
        "{a:?}"
    );
    assert_eq!(
        routes(p.snapshot(), HTTP, "b.example.com"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
    let d = p.diagnostics();
    assert_eq!(reasons(&d), pairs(&[("big", "InvalidRegex")]), "{d:?}");
    assert!(d[0].message.contains("1010"), "{}", d[0].message);
}

#[test]
fn implementation_specific_is_a_segment_prefix_or_a_regex() {
    let p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[(
                "a.example.com",
                &[
                    ("/img", "ImplementationSpecific", "web", json!(80)),
                    ("/v[0-9]+/api", "ImplementationSpecific", "web", json!(80)),
                ],
            )],
        )],
    ));
    let r = routes(p.snapshot(), HTTP, "a.example.com");
    assert!(
        r.contains(&("regex=/v[0-9]+/api".into(), "cluster=shop/web/80".into())),
        "{r:?}"
    );
    assert!(
        r.contains(&("prefix=/img/".into(), "cluster=shop/web/80".into())),
        "{r:?}"
    );
}

#[test]
fn routes_are_ordered_most_specific_first_across_ingresses() {
    let p = ingress_pipeline(with(
        base(),
        [
            ingress(
                "shop",
                "a",
                &[("a.example.com", &[("/", "Prefix", "web", json!(80))])],
            ),
            ingress(
                "shop",
                "b",
                &[(
                    "a.example.com",
                    &[
                        ("/api", "Prefix", "web", json!(80)),
                        ("/api/v1/login", "Exact", "web", json!(80)),
                    ],
                )],
            ),
        ],
    ));
    let r: Vec<String> = routes(p.snapshot(), HTTP, "a.example.com")
        .into_iter()
        .map(|(m, _)| m)
        .collect();
    assert_eq!(
        r,
        [
            "path=/api/v1/login",
            "path=/api",
            "prefix=/api/",
            "prefix=/"
        ]
    );
}

#[test]
fn conflicting_paths_go_to_the_oldest_ingress() {
    let mut old = ingress(
        "shop",
        "zz-old",
        &[("a.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    old["metadata"]["creationTimestamp"] = json!("2021-01-01T00:00:00Z");
    let mut young = ingress(
        "shop",
        "aa-young",
        &[("a.example.com", &[("/", "Prefix", "other", json!(80))])],
    );
    young["metadata"]["creationTimestamp"] = json!("2024-01-01T00:00:00Z");
    let p = ingress_pipeline(with(
        base(),
        [old, young, service("shop", "other", &[("", 80, json!(80))])],
    ));
    assert_eq!(
        routes(p.snapshot(), HTTP, "a.example.com"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
    assert_eq!(
        reasons(&p.diagnostics()),
        pairs(&[("aa-young", "RouteConflict")])
    );
}

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

#[test]
fn exact_host_and_catch_all_rule() {
    let p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[
                ("shop.example.com", &[("/", "Prefix", "web", json!(80))]),
                ("", &[("/", "Prefix", "web", json!(80))]),
            ],
        )],
    ));
    let rc = route_config(p.snapshot(), HTTP).unwrap();
    let mut domains: Vec<Vec<String>> =
        rc.virtual_hosts.iter().map(|v| v.domains.clone()).collect();
    domains.sort();
    assert!(
        domains.iter().any(|d| d.contains(&"*".to_string())),
        "{domains:?}"
    );
    assert!(
        domains
            .iter()
            .any(|d| d.contains(&"shop.example.com".to_string())),
        "{domains:?}"
    );
}

#[test]
fn wildcard_host_matches_exactly_one_label() {
    let p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[("*.example.com", &[("/", "Prefix", "web", json!(80))])],
        )],
    ));
    let rc = route_config(p.snapshot(), HTTP).unwrap();
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.domains.contains(&"*.example.com".to_string()))
        .expect("wildcard vhost");
    let route = &vh.routes[0];
    let authority = route
        .r#match
        .as_ref()
        .unwrap()
        .headers
        .iter()
        .find(|h| h.name == ":authority")
        .expect(":authority matcher");
    let re = format!("{:?}", authority.header_match_specifier);
    assert!(re.contains("example"), "{re}");
}

#[test]
fn default_backend_serves_the_catch_all_host() {
    let mut ing = ingress("shop", "i", &[]);
    ing["spec"]["defaultBackend"] = json!({"service":{"name":"web","port":{"number":80}}});
    let p = ingress_pipeline(with(base(), [ing]));
    assert_eq!(
        routes(p.snapshot(), HTTP, "*"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
}

#[test]
fn tls_hosts_get_an_sni_filter_chain_and_an_sds_secret() {
    let mut ing = ingress(
        "shop",
        "i",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    ing["spec"]["tls"] = json!([{"hosts":["shop.example.com"],"secretName":"shop-cert"}]);
    let p = ingress_pipeline(with(base(), [ing, tls_secret("shop", "shop-cert")]));
    let s = p.snapshot();
    let l = listener(s, "ingress_https").expect("https listener");
    assert_eq!(l.filter_chains.len(), 1);
    let sni = &l.filter_chains[0]
        .filter_chain_match
        .as_ref()
        .unwrap()
        .server_names;
    assert_eq!(sni, &["shop.example.com".to_string()]);
    assert_eq!(
        routes(s, "ingress_https/shop.example.com", "shop.example.com"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
    let secret = secret(s, "shop/shop-cert").expect("sds secret");
    assert_eq!(secret.name, "shop/shop-cert");
    // still served on plain HTTP without force-ssl-redirect
    assert_eq!(
        routes(s, HTTP, "shop.example.com"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
}

#[test]
fn tls_with_a_missing_secret_is_not_served_and_says_why() {
    let mut ing = ingress(
        "shop",
        "i",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    ing["spec"]["tls"] = json!([{"hosts":["shop.example.com"],"secretName":"missing"}]);
    let mut p = ingress_pipeline(with(base(), [ing]));
    assert!(
        listener(p.snapshot(), "ingress_https").is_none(),
        "a listener without filter chains is not served"
    );
    assert!(
        reasons(&p.diagnostics()).contains(&("i".into(), "SecretInvalid".into())),
        "{:?}",
        p.diagnostics()
    );
    // the secret arrives: the chain appears
    p.apply([apply(tls_secret("shop", "missing"))]);
    assert_eq!(
        listener(p.snapshot(), "ingress_https")
            .unwrap()
            .filter_chains
            .len(),
        1
    );
    assert!(p.diagnostics().is_empty(), "{:?}", p.diagnostics());
}

/// Issue 15: a Secret that does not parse was reported with its content
/// quoted (the private key reached /debug/diagnostics).
#[test]
fn an_unreadable_secret_is_reported_without_its_content() {
    let mut ing = ingress(
        "shop",
        "i",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    ing["spec"]["tls"] = json!([{"hosts":["shop.example.com"],"secretName":"shop-cert"}]);
    let mut bad = tls_secret("shop", "shop-cert");
    // Not base64: serde's message would quote it.
    bad["data"]["tls.key"] = json!("-----BEGIN PRIVATE KEY----- SECRET-KEY-MATERIAL");
    let p = ingress_pipeline(with(base(), [ing, bad]));
    let d = p.diagnostics();
    let secret_invalid: Vec<_> = d.iter().filter(|d| d.reason == "SecretInvalid").collect();
    assert_eq!(secret_invalid.len(), 1, "{d:?}");
    let message = &secret_invalid[0].message;
    assert!(
        message.contains("shop/shop-cert cannot be read"),
        "{message}"
    );
    assert!(!message.contains("SECRET-KEY-MATERIAL"), "{message}");
    assert!(!message.contains("PRIVATE"), "{message}");
}

#[test]
fn force_ssl_redirect_turns_http_routes_into_redirects() {
    let mut ing = ingress(
        "shop",
        "i",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    ing["spec"]["tls"] = json!([{"hosts":["shop.example.com"],"secretName":"c"}]);
    ing["metadata"]["annotations"] = json!({"ingress.kubernetes.io/force-ssl-redirect":"true"});
    let p = ingress_pipeline(with(base(), [ing, tls_secret("shop", "c")]));
    assert_eq!(
        routes(p.snapshot(), HTTP, "shop.example.com"),
        pairs(&[("prefix=/", "redirect")])
    );
}

#[test]
fn ingress_class_selection() {
    let mine = ingress(
        "shop",
        "mine",
        &[("a.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    let mut theirs = ingress(
        "shop",
        "theirs",
        &[("b.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    theirs["spec"]["ingressClassName"] = json!("nginx");
    let mut unclassed = ingress(
        "shop",
        "unclassed",
        &[("c.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    unclassed["spec"]
        .as_object_mut()
        .unwrap()
        .remove("ingressClassName");
    let mut legacy = ingress(
        "shop",
        "legacy",
        &[("d.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    legacy["spec"]
        .as_object_mut()
        .unwrap()
        .remove("ingressClassName");
    legacy["metadata"]["annotations"] = json!({"kubernetes.io/ingress.class":"isobar"});
    let nginx = json!({"apiVersion":"networking.k8s.io/v1","kind":"IngressClass","metadata":{"name":"nginx"},"spec":{"controller":"k8s.io/ingress-nginx"}});
    let mut p = ingress_pipeline(with(base(), [mine, theirs, unclassed, legacy, nginx]));
    let domains = |p: &isobar::pipeline::Pipeline| -> Vec<String> {
        let mut d: Vec<String> = route_config(p.snapshot(), HTTP)
            .unwrap()
            .virtual_hosts
            .iter()
            .flat_map(|v| v.domains.clone())
            .filter(|d| !d.contains(':'))
            .collect();
        d.sort();
        d
    };
    assert_eq!(domains(&p), ["a.example.com", "d.example.com"]);
    // our class becomes the default: the unclassed Ingress is ours too
    p.apply([apply(ingress_class("isobar", true))]);
    assert_eq!(
        domains(&p),
        ["a.example.com", "c.example.com", "d.example.com"]
    );
    // our class goes away: nothing is ours
    p.apply([delete(&ingress_class("isobar", true))]);
    assert!(route_config(p.snapshot(), HTTP).is_none_or(|rc| rc.virtual_hosts.is_empty()));
}

#[test]
fn deleting_the_ingress_removes_its_routes_and_clusters() {
    let ing = ingress(
        "shop",
        "i",
        &[("a.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    let mut p = ingress_pipeline(with(base(), [ing.clone()]));
    assert!(cluster(p.snapshot(), "shop/web/80").is_some());
    p.apply([delete(&ing)]);
    assert!(cluster(p.snapshot(), "shop/web/80").is_none());
    assert!(load_assignment(p.snapshot(), "shop/web/80").is_none());
    assert!(
        names(p.snapshot(), type_url::LISTENER).is_empty(),
        "{:?}",
        names(p.snapshot(), type_url::LISTENER)
    );
}

#[test]
fn endpoint_changes_do_not_call_the_plugin() {
    let mut p = ingress_pipeline(with(
        base(),
        [ingress(
            "shop",
            "i",
            &[("a.example.com", &[("/", "Prefix", "web", json!(80))])],
        )],
    ));
    let before = p.snapshot().version;
    let round = p.apply([apply(slice(
        "shop",
        "web",
        "a",
        "http",
        8080,
        &["10.0.0.7"],
    ))]);
    assert_eq!(round.translation.calls, 0);
    assert!(round.version > before);
    let cla = load_assignment(p.snapshot(), "shop/web/80").unwrap();
    assert_eq!(
        cla.endpoints
            .iter()
            .map(|l| l.lb_endpoints.len())
            .sum::<usize>(),
        1
    );
}

#[test]
fn timeout_and_retry_annotations() {
    let mut ing = ingress(
        "shop",
        "i",
        &[("a.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    ing["metadata"]["annotations"] = json!({"isobar.dev/response-timeout":"15s","isobar.dev/retry-on":"5xx","isobar.dev/num-retries":"3"});
    let p = ingress_pipeline(with(base(), [ing]));
    let rc = route_config(p.snapshot(), HTTP).unwrap();
    let route = &rc.virtual_hosts[0].routes[0];
    let Some(envoy_types::pb::envoy::config::route::v3::route::Action::Route(ra)) = &route.action
    else {
        panic!()
    };
    assert_eq!(ra.timeout.as_ref().map(|t| t.seconds), Some(15));
    let retry = ra.retry_policy.as_ref().expect("retry policy");
    assert_eq!(retry.retry_on, "5xx");
    assert_eq!(retry.num_retries.map(|n| n.value), Some(3));
}

#[test]
fn bad_annotation_is_reported_and_ignored() {
    let mut ing = ingress(
        "shop",
        "i",
        &[("a.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    ing["metadata"]["annotations"] = json!({"isobar.dev/response-timeout":"soon"});
    let p = ingress_pipeline(with(base(), [ing]));
    assert_eq!(
        routes(p.snapshot(), HTTP, "a.example.com"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
    assert_eq!(p.diagnostics().len(), 1, "{:?}", p.diagnostics());
    assert_eq!(p.diagnostics()[0].object.name, "i");
}

#[test]
fn endpoints_follow_slices_that_move_or_go() {
    let mut p = ingress_pipeline(with(
        base(),
        [
            service("shop", "other", &[("http", 80, json!(8080))]),
            ingress(
                "shop",
                "i",
                &[(
                    "a.example.com",
                    &[
                        ("/", "Prefix", "web", json!(80)),
                        ("/o", "Prefix", "other", json!(80)),
                    ],
                )],
            ),
        ],
    ));
    let count = |p: &isobar::pipeline::Pipeline, c: &str| {
        load_assignment(p.snapshot(), c).map(|cla| {
            cla.endpoints
                .iter()
                .map(|l| l.lb_endpoints.len())
                .sum::<usize>()
        })
    };
    assert_eq!(count(&p, "shop/web/80"), Some(2));
    assert_eq!(count(&p, "shop/other/80"), Some(0));
    // relabelled: the slice now belongs to the other Service
    let mut moved = slice("shop", "web", "a", "http", 8080, &["10.0.0.1", "10.0.0.2"]);
    moved["metadata"]["labels"]["kubernetes.io/service-name"] = json!("other");
    p.apply([apply(moved.clone())]);
    assert_eq!(count(&p, "shop/web/80"), Some(0));
    assert_eq!(count(&p, "shop/other/80"), Some(2));
    // deleted: nothing is left behind
    p.apply([delete(&moved)]);
    assert_eq!(count(&p, "shop/other/80"), Some(0));
}
