//! Contract 0.2 in the pipeline, one behaviour per test: several
//! translators side by side, and the policy chain between merge and
//! compile. Objects in, Envoy resources out, through real components built
//! from plugins/ (ingress, configmap-routes, faults-policy).

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use isobar::pipeline::Offline;
use isobar::plugin::{Configs, Grants, Plugins, PolicyPlugin};
use isobar_tests::*;
use serde_json::{Value, json};

const HTTP: &str = "ingress_http";

fn bytes(crate_name: &str) -> Vec<u8> {
    std::fs::read(plugin_path(crate_name)).expect("component")
}

fn policy_with(config: &str) -> Result<PolicyPlugin, isobar::plugin::PluginError> {
    let mut configs = Configs::new();
    configs.insert("faults-policy".into(), Arc::from(config));
    runtime().load_policy(
        &bytes("isobar-plugin-faults-policy"),
        "faults-policy",
        Grants::default(),
        &configs,
    )
}

fn policy() -> PolicyPlugin {
    static P: OnceLock<PolicyPlugin> = OnceLock::new();
    P.get_or_init(|| policy_with("{}").expect("policy loads"))
        .clone()
}

fn configmap_routes() -> isobar::plugin::Plugin {
    load("isobar-plugin-configmap-routes")
}

fn base() -> Vec<Value> {
    vec![
        ingress_class("isobar", false),
        service("shop", "web", &[("http", 80, json!(8080))]),
        slice("shop", "web", "a", "http", 8080, &["10.0.0.1"]),
    ]
}

/// An Ingress for `host` asking the test policy for `ask` (none: no
/// annotation).
fn asking(name: &str, host: &str, ask: Option<&str>) -> Value {
    let mut v = ingress(
        "shop",
        name,
        &[(host, &[("/", "Prefix", "web", json!(80))])],
    );
    if let Some(ask) = ask {
        v["metadata"]["annotations"] = json!({ "isobar.dev/test-policy": ask });
    }
    v
}

fn pipeline(plugins: Plugins, objects: impl IntoIterator<Item = Value>) -> Offline {
    let mut p = Offline::with(plugins);
    p.load(objects.into_iter().map(apply));
    p.rebuild();
    p
}

fn with_policies(policies: Vec<PolicyPlugin>) -> Plugins {
    Plugins::new(vec![ingress_plugin()], policies).expect("plugins")
}

/// Response headers Envoy would add on the routes of `domain`.
fn response_headers(p: &Offline, domain: &str) -> Vec<BTreeMap<String, String>> {
    let rc = route_config(p.snapshot(), HTTP).expect("route config");
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == domain))
        .unwrap_or_else(|| panic!("no virtual host {domain}"));
    vh.routes
        .iter()
        .map(|r| {
            r.response_headers_to_add
                .iter()
                .filter_map(|h| h.header.as_ref())
                .map(|h| (h.key.clone(), h.value.clone()))
                .collect()
        })
        .collect()
}

fn served(p: &Offline, domain: &str) -> bool {
    domains_of(p.snapshot(), HTTP).contains(domain)
}

fn diagnostics_of(p: &Offline, name: &str) -> Vec<(String, String)> {
    p.diagnostics()
        .iter()
        .filter(|d| d.object.name == name)
        .map(|d| (d.reason.clone(), d.message.clone()))
        .collect()
}

fn policy_calls(round: &isobar::pipeline::Round) -> usize {
    round
        .plugins
        .iter()
        .filter(|r| &*r.plugin == "faults-policy")
        .map(|r| r.stats.calls)
        .sum()
}

// ---- several translators ----------------------------------------------------

#[test]
fn two_translators_merge_into_one_listener_and_host() {
    let cm = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"static","namespace":"shop",
        "annotations":{"isobar.dev/routes":
            r#"[{"host":"shop.example.com","path":"/static","service":"web","port":80},
                {"host":"static.example.com","service":"web","port":80}]"#}}});
    let plugins = Plugins::new(vec![ingress_plugin(), configmap_routes()], vec![]).unwrap();
    let p = pipeline(
        plugins,
        base()
            .into_iter()
            .chain([asking("i", "shop.example.com", None), cm]),
    );
    assert!(p.diagnostics().is_empty(), "{:?}", p.diagnostics());
    assert_eq!(
        routes(p.snapshot(), HTTP, "shop.example.com"),
        pairs(&[
            ("path=/static", "cluster=shop/web/80"),
            ("prefix=/static/", "cluster=shop/web/80"),
            ("prefix=/", "cluster=shop/web/80")
        ])
    );
    assert!(served(&p, "static.example.com"));
}

#[test]
fn two_translators_claiming_one_root_kind_are_refused_naming_both() {
    let a = ingress_plugin();
    let b = load("isobar-plugin-faults");
    let err = Plugins::new(vec![a, b], vec![]).unwrap_err();
    let msg = err.to_string();
    assert_eq!(err.reason(), "RootKindClaimed");
    assert!(
        msg.contains("Ingress") && msg.contains("ingress (") && msg.contains("faults ("),
        "{msg}"
    );
}

#[test]
fn a_conflict_between_translators_is_told_to_both_objects() {
    let cm = json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"static","namespace":"shop",
        "creationTimestamp":"2030-01-01T00:00:00Z",
        "annotations":{"isobar.dev/routes": r#"[{"host":"shop.example.com","service":"web","port":80}]"#}}});
    let mut ing = asking("i", "shop.example.com", None);
    ing["metadata"]["creationTimestamp"] = json!("2020-01-01T00:00:00Z");
    let plugins = Plugins::new(vec![ingress_plugin(), configmap_routes()], vec![]).unwrap();
    let p = pipeline(plugins, base().into_iter().chain([ing, cm]));
    let on_cm = diagnostics_of(&p, "static");
    let on_ing = diagnostics_of(&p, "i");
    assert!(
        on_cm
            .iter()
            .any(|(r, m)| r == "RouteConflict" && m.contains("Ingress shop/i")),
        "{on_cm:?}"
    );
    assert!(
        on_ing.iter().any(|(r, m)| r == "RouteConflict"
            && m.contains("ConfigMap shop/static")
            && m.contains("configmap-routes")),
        "{on_ing:?}"
    );
}

// ---- the policy chain ---------------------------------------------------------

#[test]
fn a_policy_transforms_the_merged_host() {
    let p = pipeline(
        with_policies(vec![policy()]),
        base()
            .into_iter()
            .chain([asking("i", "shop.example.com", Some("header:x-canary=on"))]),
    );
    assert!(p.diagnostics().is_empty(), "{:?}", p.diagnostics());
    let headers = response_headers(&p, "shop.example.com");
    assert_eq!(headers[0].get("x-canary").map(String::as_str), Some("on"));
}

#[test]
fn a_policy_that_changes_nothing_leaves_the_resources_as_without_it() {
    let objects = || {
        base()
            .into_iter()
            .chain([asking("i", "shop.example.com", None)])
    };
    let with = pipeline(with_policies(vec![policy()]), objects());
    let without = pipeline(with_policies(vec![]), objects());
    assert_eq!(
        route_config(with.snapshot(), HTTP),
        route_config(without.snapshot(), HTTP)
    );
}

#[test]
fn policies_run_in_chain_order_each_given_what_the_one_before_left() {
    let first = policy_with(r#"{"tag":"first"}"#).unwrap();
    let second = policy_with(r#"{"tag":"second"}"#).unwrap();
    let p = pipeline(
        with_policies(vec![first, second]),
        base()
            .into_iter()
            .chain([asking("i", "shop.example.com", None)]),
    );
    let rc = route_config(p.snapshot(), HTTP).unwrap();
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.domains.contains(&"shop.example.com".into()))
        .unwrap();
    let tags: Vec<&str> = vh.routes[0]
        .response_headers_to_add
        .iter()
        .filter_map(|h| h.header.as_ref())
        .filter(|h| h.key == "x-policy-tag")
        .map(|h| h.value.as_str())
        .collect();
    assert_eq!(tags, ["first", "second"]);
}

#[test]
fn only_hosts_whose_input_or_reads_changed_run_again() {
    let mut p = pipeline(
        with_policies(vec![policy()]),
        base().into_iter().chain([
            asking("a", "a.example.com", Some("header:x-a=1")),
            asking("b", "b.example.com", Some("header:x-b=1")),
            asking("c", "c.example.com", None),
        ]),
    );
    // An endpoint move reaches no policy.
    let round = p.apply([apply(slice(
        "shop",
        "web",
        "a",
        "http",
        8080,
        &["10.0.0.9"],
    ))]);
    assert_eq!(policy_calls(&round), 0);
    // A changed annotation runs its host alone.
    let round = p.apply([apply(asking("a", "a.example.com", Some("header:x-a=2")))]);
    assert_eq!(policy_calls(&round), 1);
    assert_eq!(response_headers(&p, "a.example.com")[0]["x-a"], "2");
    assert_eq!(response_headers(&p, "b.example.com")[0]["x-b"], "1");
}

#[test]
fn a_failing_policy_keeps_the_hosts_last_good_output_and_says_so() {
    let mut p = pipeline(
        with_policies(vec![policy()]),
        base().into_iter().chain([
            asking("a", "a.example.com", Some("header:x-a=1")),
            asking("b", "b.example.com", Some("header:x-b=1")),
        ]),
    );
    for (ask, reason) in [
        ("error", "AskedToFail"),
        ("trap", "PluginTrap"),
        ("loop", "PluginTimeout"),
    ] {
        let round = p.apply([apply(asking("a", "a.example.com", Some(ask)))]);
        assert_eq!(round.translation.failures, 1, "{ask}");
        // the last good output keeps serving, and the Ingress is told why
        assert_eq!(
            response_headers(&p, "a.example.com")[0]["x-a"],
            "1",
            "{ask}"
        );
        let diags = diagnostics_of(&p, "a");
        assert!(
            diags.iter().any(|(r, m)| r == reason
                && m.contains("faults-policy")
                && m.contains("last good")),
            "{ask}: {diags:?}"
        );
        assert_eq!(response_headers(&p, "b.example.com")[0]["x-b"], "1");
    }
    // fixed: the new output serves and the diagnostic goes
    p.apply([apply(asking("a", "a.example.com", Some("header:x-a=3")))]);
    assert_eq!(response_headers(&p, "a.example.com")[0]["x-a"], "3");
    assert!(
        diagnostics_of(&p, "a").is_empty(),
        "{:?}",
        diagnostics_of(&p, "a")
    );
}

#[test]
fn one_slow_host_fails_alone_not_its_batch() {
    let objects: Vec<Value> = base()
        .into_iter()
        .chain((0..6).map(|i| {
            asking(
                &format!("h{i}"),
                &format!("h{i}.example.com"),
                Some("header:x-ok=1"),
            )
        }))
        .chain([asking("slow", "slow.example.com", Some("loop"))])
        .collect();
    let p = pipeline(with_policies(vec![policy()]), objects);
    for i in 0..6 {
        assert_eq!(
            response_headers(&p, &format!("h{i}.example.com"))[0]["x-ok"],
            "1"
        );
    }
    assert!(
        !served(&p, "slow.example.com"),
        "a host that never had a good output is not served"
    );
    assert!(
        diagnostics_of(&p, "slow")
            .iter()
            .any(|(r, _)| r == "PluginTimeout")
    );
}

#[test]
fn invalid_policy_outputs_are_refused_and_fail_closed() {
    for ask in [
        "other-domain",
        "foreign-source",
        "no-source",
        "tls",
        "foreign-diagnostic",
    ] {
        let p = pipeline(
            with_policies(vec![policy()]),
            base().into_iter().chain([
                asking("bad", "bad.example.com", Some(ask)),
                asking("good", "good.example.com", Some("header:x-ok=1")),
            ]),
        );
        assert!(!served(&p, "bad.example.com"), "{ask}");
        assert!(!served(&p, "other.bad.example.com"), "{ask}");
        let diags = diagnostics_of(&p, "bad");
        assert!(
            diags.iter().any(|(r, _)| r == "PolicyOutputInvalid"),
            "{ask}: {diags:?}"
        );
        assert_eq!(
            response_headers(&p, "good.example.com")[0]["x-ok"],
            "1",
            "{ask}"
        );
    }
}

#[test]
fn nothing_survives_a_round_in_a_policy_instance() {
    let counting = policy_with(r#"{"count":true}"#).unwrap();
    let mut p = pipeline(
        with_policies(vec![counting]),
        base().into_iter().chain([
            asking("a", "a.example.com", None),
            asking("b", "b.example.com", None),
            asking("c", "c.example.com", None),
        ]),
    );
    let mut first: Vec<String> = ["a", "b", "c"]
        .iter()
        .map(|h| response_headers(&p, &format!("{h}.example.com"))[0]["x-policy-calls"].clone())
        .collect();
    first.sort();
    assert_eq!(
        first,
        ["1", "2", "3"],
        "one instance serves a round's hosts"
    );
    p.apply([apply(asking("b", "b.example.com", Some("header:x-b=1")))]);
    assert_eq!(
        response_headers(&p, "b.example.com")[0]["x-policy-calls"],
        "1"
    );
}

#[test]
fn a_policy_may_refuse_its_configuration() {
    let err = policy_with(r#"{"refuse":true}"#).unwrap_err();
    assert_eq!(err.reason(), "ConfigRejected", "{err}");
    let err = policy_with(r#"{"unknown":1}"#).unwrap_err();
    assert_eq!(err.reason(), "ConfigRejected", "{err}");
}

#[test]
fn incremental_equals_full_with_policies() {
    let objects = || {
        base().into_iter().chain([
            asking("a", "a.example.com", Some("header:x-a=1")),
            asking("b", "b.example.com", Some("error")),
            asking("c", "c.example.com", None),
        ])
    };
    let mut p = pipeline(with_policies(vec![policy()]), objects());
    p.apply([
        apply(asking("b", "b.example.com", Some("header:x-b=2"))),
        delete(&asking("c", "c.example.com", None)),
        apply(asking("d", "d.example.com", Some("header:x-d=1"))),
    ]);
    let full = pipeline(
        with_policies(vec![policy()]),
        base().into_iter().chain([
            asking("a", "a.example.com", Some("header:x-a=1")),
            asking("b", "b.example.com", Some("header:x-b=2")),
            asking("d", "d.example.com", Some("header:x-d=1")),
        ]),
    );
    assert_eq!(
        route_config(p.snapshot(), HTTP),
        route_config(full.snapshot(), HTTP)
    );
    assert_eq!(p.diagnostics(), full.diagnostics());
}

#[test]
fn nothing_survives_a_round_in_a_translator_instance() {
    let statics = |name: &str, host: &str| {
        json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":name,"namespace":"shop",
            "annotations":{"isobar.dev/routes": format!(r#"[{{"host":"{host}","service":"web","port":80}}]"#)}}})
    };
    let counting = configmap_routes()
        .with_config(Arc::from(r#"{"count":true}"#))
        .expect("accepted");
    let calls = |p: &Offline, host: &str| -> String {
        response_headers(p, host)[0]["x-translate-calls"].clone()
    };
    let mut p = pipeline(
        Plugins::new(vec![ingress_plugin(), counting], vec![]).unwrap(),
        base()
            .into_iter()
            .chain((0..3).map(|i| statics(&format!("s{i}"), &format!("s{i}.example.com")))),
    );
    let mut first: Vec<String> = (0..3)
        .map(|i| calls(&p, &format!("s{i}.example.com")))
        .collect();
    first.sort();
    assert_eq!(
        first,
        ["1", "2", "3"],
        "one instance serves a round's roots"
    );
    p.apply([apply(statics("s1", "s1-moved.example.com"))]);
    assert_eq!(
        calls(&p, "s1-moved.example.com"),
        "1",
        "a fresh instance each round"
    );
}

// ---- policies in JavaScript, Python and Rust ------------------------------------

fn other_language(test: &str) -> Option<(PolicyPlugin, PolicyPlugin)> {
    let js = optional_plugin(test, "isobar-plugin-canary-js", "make plugins-js needs npm")?;
    let py = optional_plugin(
        test,
        "isobar-plugin-headers-py",
        "make plugins-py needs python3",
    )?;
    let load = |bytes: &[u8], name: &str| {
        runtime()
            .load_policy(bytes, name, Grants::default(), &Configs::new())
            .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    Some((load(&js, "canary-js"), load(&py, "headers-py")))
}

fn shop_annotated(annotations: Value) -> Vec<Value> {
    let mut shop = ingress(
        "shop",
        "shop",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    shop["metadata"]["annotations"] = annotations;
    let mut objects = base();
    objects.push(service("shop", "web-canary", &[("http", 80, json!(8080))]));
    objects.push(slice(
        "shop",
        "web-canary",
        "a",
        "http",
        8080,
        &["10.0.0.2"],
    ));
    objects.push(shop);
    objects
}

/// The JavaScript canary, the Python response headers and the Rust test
/// policy over one Ingress: each sees what the one before returned, so
/// the order given is the order run (Python replaces a header of the same
/// name set before it; the Rust policy appends).
#[test]
fn policies_in_three_languages_chain_in_the_order_given() {
    let Some((canary, headers)) =
        other_language("policies_in_three_languages_chain_in_the_order_given")
    else {
        return;
    };
    let tagged = policy_with(r#"{"tag":"rust"}"#).expect("policy loads");
    let objects = shop_annotated(json!({
        "isobar.dev/canary": "web-canary:20",
        "isobar.dev/response-headers": "X-Policy-Tag: py, X-Frame-Options: DENY",
    }));
    let header_map = |v: &[(&str, &str)]| -> BTreeMap<String, String> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };

    let p = pipeline(
        with_policies(vec![canary.clone(), tagged.clone(), headers.clone()]),
        objects.clone(),
    );
    assert_eq!(
        routes(p.snapshot(), HTTP, "shop.example.com"),
        pairs(&[("prefix=/", "weighted=shop/web/80:80,shop/web-canary/80:20")])
    );
    assert_eq!(
        response_headers(&p, "shop.example.com"),
        [header_map(&[
            ("x-frame-options", "DENY"),
            ("x-policy-tag", "py")
        ])]
    );
    assert_eq!(diagnostics_of(&p, "shop"), []);

    let p = pipeline(with_policies(vec![headers, tagged, canary]), objects);
    assert_eq!(
        routes(p.snapshot(), HTTP, "shop.example.com"),
        pairs(&[("prefix=/", "weighted=shop/web/80:80,shop/web-canary/80:20")])
    );
    // Envoy's names are lower case: the Rust policy's header comes last.
    let rc = route_config(p.snapshot(), HTTP).expect("route config");
    let listed: Vec<(String, String)> = rc
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == "shop.example.com"))
        .expect("shop")
        .routes[0]
        .response_headers_to_add
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    assert_eq!(
        listed,
        pairs(&[
            ("x-policy-tag", "py"),
            ("x-frame-options", "DENY"),
            ("x-policy-tag", "rust"),
        ])
    );
}

/// Annotations the JavaScript and Python policies cannot honour: an error
/// (the canary) leaves the routes as the translator made them, a warning
/// (one bad header) drops that entry only; both land on the Ingress.
#[test]
fn policies_in_other_languages_report_bad_annotations_on_the_ingress() {
    let Some((canary, headers)) =
        other_language("policies_in_other_languages_report_bad_annotations_on_the_ingress")
    else {
        return;
    };
    let objects = shop_annotated(json!({
        "isobar.dev/canary": "web-canary:150",
        "isobar.dev/response-headers": "X-Good: yes, Bad Name: no",
    }));
    let p = pipeline(with_policies(vec![canary, headers]), objects);
    assert_eq!(
        routes(p.snapshot(), HTTP, "shop.example.com"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
    let good: BTreeMap<String, String> = [("x-good".to_string(), "yes".to_string())].into();
    assert_eq!(response_headers(&p, "shop.example.com"), [good]);
    let reasons: Vec<String> = diagnostics_of(&p, "shop")
        .into_iter()
        .map(|(r, _)| r)
        .collect();
    assert_eq!(
        reasons,
        ["InvalidCanary", "InvalidResponseHeader"],
        "{:?}",
        p.diagnostics()
    );
}

// ---- statuses from translators ------------------------------------------------

fn with_status(name: &str, status: Value) -> Value {
    json!({"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":name,"namespace":"shop",
        "annotations":{"isobar.dev/test-status": status.to_string()}}})
}

fn status_pipeline(objects: impl IntoIterator<Item = Value>) -> Offline {
    pipeline(
        Plugins::new(vec![ingress_plugin(), configmap_routes()], vec![]).unwrap(),
        base().into_iter().chain(objects),
    )
}

#[test]
fn a_translators_status_on_its_root_is_written_under_its_own_field_manager() {
    let p = status_pipeline([with_status(
        "cm",
        json!({"object":{"api_version":"v1","kind":"ConfigMap","namespace":"shop","name":"cm"},
            "type":"Accepted","reason":"Valid","fields":{"routes":0}}),
    )]);
    let statuses = p.statuses();
    assert_eq!(statuses.len(), 1, "{statuses:?}");
    let s = &statuses[0];
    assert_eq!(s.field_manager(), "isobar-plugin-configmap-routes");
    assert_eq!(s.object.name, "cm");
    assert_eq!(s.status.conditions[0].type_, "Accepted");
    assert_eq!(s.status.fields, Some(json!({"routes": 0})));
    let written = isobar::writeback::plugin_status(s).status;
    assert_eq!(written["conditions"][0]["reason"], "Valid");
    assert!(written["conditions"][0]["lastTransitionTime"].is_string());
    assert_eq!(written["routes"], 0);
    assert!(p.diagnostics().is_empty(), "{:?}", p.diagnostics());
}

#[test]
fn statuses_a_translator_may_not_give_are_refused_on_its_root() {
    let cases = [
        // an object it neither translated nor read
        json!({"object":{"api_version":"v1","kind":"Service","namespace":"shop","name":"web"},
            "type":"Accepted","reason":"Valid"}),
        // a data-plane fact
        json!({"object":{"api_version":"v1","kind":"ConfigMap","namespace":"shop","name":"cm"},
            "type":"Programmed","reason":"Valid"}),
        // a reason the API server refuses
        json!({"object":{"api_version":"v1","kind":"ConfigMap","namespace":"shop","name":"cm"},
            "type":"Accepted","reason":"not a reason!"}),
        // fields that are not an object
        json!({"object":{"api_version":"v1","kind":"ConfigMap","namespace":"shop","name":"cm"},
            "type":"Accepted","reason":"Valid","fields":[1,2]}),
    ];
    for case in cases {
        let p = status_pipeline([with_status("cm", case.clone())]);
        assert!(p.statuses().is_empty(), "{case}");
        let diags = diagnostics_of(&p, "cm");
        assert!(
            diags
                .iter()
                .any(|(r, m)| r == "StatusInvalid" && m.contains("configmap-routes")),
            "{case}: {diags:?}"
        );
    }
}
