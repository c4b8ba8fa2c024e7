//! Paths: Exact, Prefix (segment semantics), ImplementationSpecific,
//! ordering across Ingresses, conflicts.

use super::*;

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
