//! A Plugin object's rollout, measured on the whole host: `isobar serve
//! --follow-plugins` in-process against a scripted cluster of N Ingresses
//! (with their Services and EndpointSlices), S xDS streams open, the
//! policy already pushed to a real registry (Debian's docker-registry on
//! loopback). Timed from the Plugin object's arrival (what `kubectl apply`
//! becomes) until every stream holds the policy's output, with the stages
//! the host reports in the Plugin's status: pull, compile, dry run + swap,
//! and the push to the streams (the rest).
//!
//! Two rollouts: cold (the artifact in no cache, the component never
//! compiled) and a new configuration of the same artifact (both cached).
//!
//! `ISOBAR_BENCH_N` (default 1000 Ingresses), `ISOBAR_BENCH_STREAMS` (20).

use std::sync::Arc;
use std::time::{Duration, Instant};

use isobar::oci::Access;
use isobar::serve::{ClusterConnection, Config, Server};
use isobar_tests::ads::*;
use isobar_tests::bench::{app, machine};
use isobar_tests::cluster::*;
use isobar_tests::harness::registry::Registry;
use isobar_tests::*;
use serde_json::{Value, json};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn plugin_object(generation: i64, reference: &str, tag: &str, rv: u32) -> Value {
    stored(
        json!({"apiVersion": "isobar.dev/v1alpha1", "kind": "Plugin",
               "metadata": {"name": "tagger", "generation": generation},
               "spec": {"world": "policy", "order": 1, "config": {"tag": tag},
                        "source": {"oci": reference, "insecure": true}}}),
        rv,
    )
}

/// The policy's tag on app 0's first route.
fn tag(h: &Held) -> Option<String> {
    let rc = route_config(&h.snapshot, "ingress_http")?;
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == "app0.example.com"))?;
    vh.routes[0]
        .response_headers_to_add
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-policy-tag")
        .map(|h| h.value.clone())
}

fn status_u64(server: &Server, field: &str) -> u64 {
    server
        .report()
        .statuses()
        .into_iter()
        .find(|s| s.object.kind == "Plugin")
        .and_then(|s| s.status.fields?.get(field)?.as_u64())
        .unwrap_or(0)
}

/// Applies `object`, waits until every stream holds `want`; the time.
async fn rollout(
    script: &Script,
    streams: Vec<Sotw>,
    object: &Value,
    want: &'static str,
) -> (Duration, Vec<Sotw>) {
    let started = Instant::now();
    script.apply(object);
    let waits: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            tokio::spawn(async move {
                s.until("the new policy", |h| tag(h).as_deref() == Some(want))
                    .await;
                (Instant::now(), s)
            })
        })
        .collect();
    let mut last = started;
    let mut back = Vec::new();
    for w in waits {
        let (at, s) = w.await.expect("a stream");
        last = last.max(at);
        back.push(s);
    }
    (last - started, back)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    machine();
    let Some(registry) = Registry::start_or_skip("the Plugin rollout benchmark") else {
        return;
    };
    let n = env_or("ISOBAR_BENCH_N", 1000);
    let streams = env_or("ISOBAR_BENCH_STREAMS", 20);
    let reference = registry.reference("bench/tagger:1.0");
    let digest = isobar::plugin::load::push_file(
        runtime(),
        &plugin_path("isobar-plugin-faults-policy"),
        &reference,
        &Access {
            insecure: true,
            ..Access::default()
        },
    )
    .await
    .expect("pushed");
    let pinned = format!("{}@{digest}", reference.rsplit_once(':').unwrap().0);

    let script = Arc::new(Script::default());
    let cluster = ClusterConnection {
        watches: script.clone(),
        writeback: None,
        client: None,
    };
    // Fresh caches: the first rollout pulls and compiles.
    let dir = tempfile::tempdir().unwrap();
    let plugin = dir.path().join("ingress.wasm");
    std::fs::copy(plugin_path("isobar-plugin-ingress"), &plugin).unwrap();
    let mut config = Config::cluster(cluster, &plugin);
    config.xds_listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.cache_dir = Some(dir.path().join("cache"));
    config.follow_plugins = true;
    let server = Server::start(config).await.expect("serve starts");

    let kinds = [
        kind_of("networking.k8s.io/v1", "IngressClass"),
        kind_of("v1", "Service"),
        kind_of("discovery.k8s.io/v1", "EndpointSlice"),
        kind_of("networking.k8s.io/v1", "Ingress"),
        kind_of("v1", "Secret"),
        kind_of("isobar.dev/v1alpha1", "Plugin"),
    ];
    for k in &kinds {
        script.wait_watched(k).await;
    }
    let mut by_kind: [Vec<Value>; 3] = Default::default();
    let mut rv = 100;
    for i in 0..n {
        for (slot, o) in app(i).into_iter().enumerate() {
            rv += 1;
            by_kind[slot].push(stored(o, rv));
        }
    }
    script.list(&kinds[0], &[stored(ingress_class("isobar", true), 1)]);
    script.list(&kinds[1], &by_kind[0]);
    script.list(&kinds[2], &by_kind[1]);
    script.list(&kinds[3], &by_kind[2]);
    script.list(&kinds[4], &[]);
    script.list(&kinds[5], &[]);
    assert!(server.ready(WAIT).await, "ready");

    let mut open = Vec::new();
    for i in 0..streams {
        let mut s = Sotw::open_envoy(server.xds_addr(), &format!("envoy-{i}")).await;
        s.until("the Ingresses", |h| {
            h.domains("ingress_http").contains("app0.example.com")
        })
        .await;
        open.push(s);
    }
    println!(
        "{n} Ingresses, {streams} xDS streams (SotW), the policy pushed to docker-registry on loopback"
    );
    println!(
        "{:<44} {:>9} {:>7} {:>9} {:>10} {:>9}",
        "rollout", "total ms", "pull", "compile", "dry run+swap", "push"
    );
    let cases = [
        ("cold (not cached, not compiled)", "v1"),
        ("new config, same artifact (cached)", "v2"),
    ];
    for (generation, (what, tag)) in cases.into_iter().enumerate() {
        let object = plugin_object(
            generation as i64 + 1,
            &pinned,
            tag,
            50_000 + generation as u32,
        );
        let (took, back) = rollout(&script, open, &object, tag).await;
        open = back;
        let (pull, compile, swap) = (
            status_u64(&server, "pullMillis"),
            status_u64(&server, "compileMillis"),
            status_u64(&server, "swapMillis"),
        );
        let total = took.as_millis() as u64;
        println!(
            "{what:<44} {total:>9} {pull:>7} {compile:>9} {swap:>10} {:>9}",
            total.saturating_sub(pull + compile + swap)
        );
    }
    println!("goal: every stream serving the new policy within 2000 ms of the apply");
    server.shutdown().await.expect("shut down");
}
