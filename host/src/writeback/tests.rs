//! Status write-back against the fake API server (`crate::testing::fake_api`): the
//! requests are the real ones, paths, field manager, bodies and all.

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::watch;

use super::*;
use crate::report::{NackRecord, Report};
use crate::testing::fake_api::FakeApi;
use crate::xds::Snapshot;

fn status() -> Arc<Report> {
    let (_tx, rx) = watch::channel(Arc::new(Snapshot::default()));
    Arc::new(Report::new(rx))
}

fn ingress(rv: &str, status: Value) -> Arc<Object> {
    Arc::new(
        Object::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": "web", "namespace": "shop", "uid": "u1", "resourceVersion": rv},
            "spec": {}, "status": status,
        }))
        .unwrap(),
    )
}

fn route(rv: &str, status: Value) -> Arc<Object> {
    Arc::new(
        Object::from_value(json!({
            "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": "r", "namespace": "shop", "uid": "u2", "generation": 1, "resourceVersion": rv},
            "spec": {}, "status": status,
        }))
        .unwrap(),
    )
}

fn diag(kind: &str, name: &str, reason: &str, message: &str) -> ir::Diagnostic {
    ir::Diagnostic::error(ir::ObjectRef::new(kind, "shop", name), reason, message)
}

fn diags(list: Vec<ir::Diagnostic>) -> ir::DiagnosticSet {
    list.into_iter().map(|d| (d, 1usize)).collect()
}

fn writes(status: &Report, result: &str) -> u64 {
    let text = status.metrics.encode();
    text.lines()
        .filter(|l| {
            l.starts_with("isobar_status_writes_total{")
                && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn addresses() -> Vec<String> {
    vec!["192.0.2.10".to_string()]
}

const INGRESS_STATUS: &str = "/apis/networking.k8s.io/v1/namespaces/shop/ingresses/web/status?&force=true&fieldManager=isobar";

#[tokio::test]
async fn ingress_address_is_applied_once_with_the_field_manager() {
    let (api, client) = FakeApi::start([]);
    let st = status();
    let mut w = StatusWriter::new(client, WritebackConfig::default(), st.clone());
    let roots = vec![(ingress("1", json!({})), true)];
    w.pass(&roots, Some(&addresses())).await;
    let seen = api.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "PATCH");
    assert_eq!(seen[0].uri, INGRESS_STATUS);
    assert_eq!(seen[0].body["kind"], "Ingress");
    assert_eq!(
        seen[0].body["metadata"],
        json!({"name": "web", "namespace": "shop"})
    );
    assert_eq!(
        seen[0].body["status"],
        json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}})
    );

    // The same inputs again, and the watch echo of what was written:
    // nothing to do.
    w.pass(&roots, Some(&addresses())).await;
    let echoed = vec![(ingress("2", seen[0].body["status"].clone()), true)];
    w.pass(&echoed, Some(&addresses())).await;
    assert!(api.take().is_empty());
    assert_eq!(writes(&st, "written"), 1);
    assert_eq!(writes(&st, "unchanged"), 1);
}

#[tokio::test]
async fn nothing_is_written_when_the_object_already_shows_it_or_is_not_claimed() {
    let (api, client) = FakeApi::start([]);
    let st = status();
    let mut w = StatusWriter::new(client, WritebackConfig::default(), st.clone());
    let shown = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}});
    w.pass(&[(ingress("1", shown), true)], Some(&addresses()))
        .await;
    // Another controller's Ingress (the plugin did not claim it).
    w.pass(&[(ingress("3", json!({})), false)], Some(&addresses()))
        .await;
    // No address known yet.
    let (api2, client2) = FakeApi::start([]);
    let mut w2 = StatusWriter::new(client2, WritebackConfig::default(), st.clone());
    w2.pass(&[(ingress("4", json!({})), true)], None).await;
    assert!(api.take().is_empty());
    assert!(api2.take().is_empty());
    assert_eq!(writes(&st, "written"), 0);
}

#[tokio::test]
async fn a_rejected_rule_becomes_one_event_until_it_goes_away_and_comes_back() {
    let (api, client) = FakeApi::start([]);
    let st = status();
    st.set_diagnostics(diags(vec![diag(
        "Ingress",
        "web",
        "BackendNotFound",
        "service shop/api not found",
    )]));
    let mut w = StatusWriter::new(client, WritebackConfig::default(), st.clone());
    let shown = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.10"}]}});
    let roots = vec![(ingress("1", shown), true)];
    w.pass(&roots, Some(&addresses())).await;
    let seen = api.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].method, "POST");
    assert_eq!(
        seen[0].uri,
        "/apis/events.k8s.io/v1/namespaces/shop/events?"
    );
    assert_eq!(seen[0].body["reason"], "BackendNotFound");
    assert_eq!(seen[0].body["note"], "service shop/api not found");
    assert_eq!(seen[0].body["type"], "Warning");
    assert_eq!(seen[0].body["regarding"]["uid"], "u1");
    assert_eq!(seen[0].body["reportingController"], "isobar");

    w.pass(&roots, Some(&addresses())).await;
    assert!(api.take().is_empty(), "announced once");

    st.set_diagnostics(diags(vec![]));
    w.pass(&roots, Some(&addresses())).await;
    st.set_diagnostics(diags(vec![diag(
        "Ingress",
        "web",
        "BackendNotFound",
        "service shop/api not found",
    )]));
    w.pass(&roots, Some(&addresses())).await;
    let again = api.take();
    assert_eq!(
        again.len(),
        1,
        "announced again after it came back: {again:?}"
    );
}

#[tokio::test]
async fn other_kinds_get_conditions_and_a_nack_turns_programmed_false() {
    let (api, client) = FakeApi::start([]);
    let st = status();
    let mut w = StatusWriter::new(client, WritebackConfig::default(), st.clone());
    let roots = vec![(route("1", json!({})), true)];
    w.pass(&roots, None).await;
    let seen = api.take();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].uri,
        "/apis/gateway.networking.k8s.io/v1/namespaces/shop/httproutes/r/status?&force=true&fieldManager=isobar"
    );
    let conditions = &seen[0].body["status"]["conditions"];
    assert_eq!(conditions[0]["type"], "Accepted");
    assert_eq!(conditions[1]["type"], "Programmed");
    assert_eq!(conditions[1]["status"], "True");

    // A data plane rejects what this route produced.
    st.record_nack(NackRecord {
        stream: 7,
        node: "envoy-1".into(),
        protocol: "sotw",
        type_url: crate::xds::type_url::ROUTE.into(),
        version: "3".into(),
        message: "invalid regex".into(),
        resources: vec!["ingress_http".into()],
        objects: vec![roots[0].0.key()],
        at: "2026-01-01T00:00:00Z".into(),
    });
    w.pass(&roots, None).await;
    let seen = api.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let programmed = &seen[0].body["status"]["conditions"][1];
    assert_eq!(programmed["status"], "False");
    assert_eq!(programmed["reason"], "RejectedByDataPlane");
    assert!(
        programmed["message"]
            .as_str()
            .unwrap()
            .contains("invalid regex")
    );
}

#[tokio::test]
async fn a_failed_write_is_counted_and_retried() {
    let (api, client) = FakeApi::start([]);
    let st = status();
    let mut w = StatusWriter::new(client, WritebackConfig::default(), st.clone());
    let roots = vec![(ingress("1", json!({})), true)];
    api.fail_with(Some(500));
    w.pass(&roots, Some(&addresses())).await;
    assert_eq!(writes(&st, "failed"), 1);
    assert!(w.retry_at.is_some());
    api.fail_with(None);
    w.pass(&roots, Some(&addresses())).await;
    assert_eq!(writes(&st, "written"), 1);
    assert!(w.retry_at.is_none());
    // Both attempts reached the server: kube-client retries nothing itself.
    let seen = api.take();
    assert!(seen.len() >= 2 && seen.iter().all(|s| s.uri == INGRESS_STATUS));
}

#[tokio::test(start_paused = true)]
async fn only_the_leader_writes_and_a_new_leader_catches_up() {
    let (api, client) = FakeApi::start([]);
    let st = status();
    let (leader_tx, leader) = watch::channel(false);
    let task = tokio::spawn(run(
        client,
        WritebackConfig {
            ingress_address: IngressAddress::Fixed(addresses()),
            ..WritebackConfig::default()
        },
        st.clone(),
        leader,
    ));
    // Virtual time: sleeping lets every task run until all are idle.
    let settle = || tokio::time::sleep(Duration::from_secs(5));
    settle().await;
    st.set_roots(vec![(ingress("1", json!({})), true)]);
    settle().await;
    assert!(api.take().is_empty(), "a follower writes nothing");
    assert_eq!(st.metrics.leader.get(), 0);

    leader_tx.send_replace(true);
    settle().await;
    let seen = api.take();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].uri, INGRESS_STATUS);
    assert_eq!(st.metrics.leader.get(), 1);

    // Losing the lease stops writing...
    leader_tx.send_replace(false);
    settle().await;
    let both = vec![
        (ingress("1", json!({})), true),
        (route("1", json!({})), true),
    ];
    st.set_roots(both);
    settle().await;
    assert!(api.take().is_empty());
    assert_eq!(st.metrics.leader.get(), 0);
    // ...and taking it back resumes: what changed meanwhile is written.
    leader_tx.send_replace(true);
    settle().await;
    let seen = api.take();
    let uris: Vec<&str> = seen.iter().map(|s| s.uri.as_str()).collect();
    assert!(
        uris.iter().any(|u| u.contains("/httproutes/r/status")),
        "{uris:?}"
    );
    assert!(!task.is_finished(), "the writer keeps running");
    task.abort();
}

fn ingress_named(name: &str) -> Arc<Object> {
    Arc::new(
        Object::from_value(json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "namespace": "shop", "uid": format!("u-{name}"), "resourceVersion": "1"},
            "spec": {},
        }))
        .unwrap(),
    )
}

#[tokio::test(start_paused = true)]
async fn a_pass_spends_the_token_bucket_then_yields_rejections_first() {
    let (api, client) = FakeApi::start([]);
    let st = status();
    // The last Ingress has a problem: it goes first.
    st.set_diagnostics(diags(vec![diag(
        "Ingress",
        "i4",
        "BackendNotFound",
        "no such service",
    )]));
    let config = WritebackConfig {
        qps: 1.0,
        burst: 2,
        ..WritebackConfig::default()
    };
    let mut w = StatusWriter::new(client, config, st.clone());
    let roots: Vec<_> = (0..5)
        .map(|i| (ingress_named(&format!("i{i}")), true))
        .collect();
    w.pass(&roots, Some(&addresses())).await;
    let patches: Vec<String> = api
        .take()
        .into_iter()
        .filter(|s| s.method == "PATCH")
        .map(|s| s.uri)
        .collect();
    assert_eq!(
        patches.len(),
        3,
        "the burst, then one more after waiting: {patches:?}"
    );
    assert!(patches[0].contains("/ingresses/i4/"), "{patches:?}");
    assert!(w.retry_at.is_some(), "the rest is left for the next pass");
    // The next passes finish the backlog without rewriting anything.
    w.pass(&roots, Some(&addresses())).await;
    w.pass(&roots, Some(&addresses())).await;
    let rest: Vec<String> = api
        .take()
        .into_iter()
        .filter(|s| s.method == "PATCH")
        .map(|s| s.uri)
        .collect();
    assert_eq!(rest.len(), 2, "{rest:?}");
    assert_eq!(writes(&st, "written"), 5);
}

#[tokio::test(start_paused = true)]
async fn shutting_down_lets_the_pass_under_way_finish_and_starts_no_other() {
    let (api, client) = FakeApi::start([]);
    let st = status();
    st.set_roots(vec![
        (ingress_named("i0"), true),
        (ingress_named("i1"), true),
    ]);
    let (_leader_tx, leader) = watch::channel(true);
    // Shutdown is already asked for when the first pass starts: the pass
    // must still finish, though its second write waits for a token.
    let task = tokio::spawn(run_until(
        client,
        WritebackConfig {
            ingress_address: IngressAddress::Fixed(addresses()),
            qps: 1.0,
            burst: 1,
            ..WritebackConfig::default()
        },
        st.clone(),
        leader,
        std::future::ready(()),
    ));
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the writer stops once its pass is done")
        .unwrap();
    let patches: Vec<String> = api
        .take()
        .into_iter()
        .filter(|s| s.method == "PATCH")
        .map(|s| s.uri)
        .collect();
    assert_eq!(patches.len(), 2, "the pass was cut short: {patches:?}");
    assert_eq!(writes(&st, "written"), 2);
}

/// What a translator says about an HTTPRoute: its own conditions and
/// `parents`, applied under the plugin's field manager, never forced; the
/// host leaves the Accepted condition to it and keeps Programmed.
#[tokio::test]
async fn a_translators_status_is_applied_under_its_own_field_manager() {
    let (api, client) = FakeApi::start([]);
    let st = status();
    let object = route("1", json!({}));
    st.set_statuses(vec![crate::translate::StatusOf {
        object: object.clone(),
        plugin: Arc::from("gateway-api"),
        status: ir::ObjectStatus {
            object: ir::ObjectRef::new("HTTPRoute", "shop", "r"),
            conditions: vec![ir::Condition {
                type_: "Accepted".into(),
                status: ir::ConditionStatus::True,
                reason: "Accepted".into(),
                message: "attached".into(),
                observed_generation: None,
            }],
            fields: Some(json!({"parents": [{"controllerName": "isobar.dev/gateway-controller",
                "conditions": [{"type": "ResolvedRefs", "status": "True", "reason": "ResolvedRefs", "message": "", "observedGeneration": 1}]}]})),
        },
    }]);
    let mut w = StatusWriter::new(client, WritebackConfig::default(), st.clone());
    w.pass(&[(object.clone(), true)], None).await;
    let seen = api.take();
    let plugin: Vec<_> = seen
        .iter()
        .filter(|r| r.uri.contains("fieldManager=isobar-plugin-gateway-api"))
        .collect();
    assert_eq!(plugin.len(), 1, "{seen:?}");
    assert!(!plugin[0].uri.contains("force=true"), "{}", plugin[0].uri);
    let body = &plugin[0].body["status"];
    assert_eq!(body["conditions"][0]["type"], "Accepted");
    assert_eq!(body["conditions"][0]["observedGeneration"], 1);
    assert!(body["parents"][0]["conditions"][0]["lastTransitionTime"].is_string());
    // The host's own write leaves Accepted to the plugin.
    let host: Vec<_> = seen
        .iter()
        .filter(|r| {
            r.uri.contains("fieldManager=isobar&") || r.uri.ends_with("fieldManager=isobar")
        })
        .collect();
    assert_eq!(host.len(), 1, "{seen:?}");
    let types: Vec<&str> = host[0].body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["Programmed"]);

    // Written once: the next pass (the watch not yet echoing) writes nothing.
    w.pass(&[(object, true)], None).await;
    assert!(api.take().is_empty());
}
