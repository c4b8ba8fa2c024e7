//! Classes, deletes, endpoint churn, annotations.

use super::*;

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
