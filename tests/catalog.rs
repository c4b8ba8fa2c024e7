//! Plugin objects: a platform team pushes a plugin to a registry, applies
//! a `Plugin` (isobar.dev/v1alpha1) naming it by digest, and reads its
//! status. `isobar serve --follow-plugins` runs in-process against a
//! cluster whose watches are scripted (as in `kube.rs`); the registry is a
//! real one (Debian's docker-registry on loopback, `harness::registry`),
//! the plugins are the real components, statuses go to a mocked API server
//! behind a real `kube::Client`, and xDS is read through the ADS client.

use std::sync::Arc;

use isobar::oci::Access;
use isobar::serve::{ClusterConnection, Config, Server, Writeback};
use isobar::store::KindKey;
use isobar::testing::fake_api::FakeApi;
use isobar::writeback::WritebackConfig;
use isobar_tests::ads::*;
use isobar_tests::cluster::*;
use isobar_tests::harness::envoy::{Bootstrap, Envoy, Ports};
use isobar_tests::harness::registry::Registry;
use isobar_tests::harness::venv;
use isobar_tests::*;
use serde_json::{Value, json};
use tokio::sync::watch;

fn kinds() -> [KindKey; 6] {
    [
        kind_of("networking.k8s.io/v1", "Ingress"),
        kind_of("networking.k8s.io/v1", "IngressClass"),
        kind_of("v1", "Service"),
        kind_of("discovery.k8s.io/v1", "EndpointSlice"),
        kind_of("v1", "Secret"),
        plugins(),
    ]
}

fn plugins() -> KindKey {
    kind_of("isobar.dev/v1alpha1", "Plugin")
}

const STATUS_PATH: &str = "/apis/isobar.dev/v1alpha1/plugins/tagger";

fn shop(annotation: Option<&str>, rv: u32) -> Value {
    let mut i = ingress(
        "default",
        "shop",
        &[("shop.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    if let Some(a) = annotation {
        i["metadata"]["annotations"] = json!({ "isobar.dev/test-policy": a });
    }
    stored(i, rv)
}

/// A Plugin object for the test policy.
fn plugin_object(name: &str, generation: i64, spec: Value, rv: u32) -> Value {
    stored(
        json!({
            "apiVersion": "isobar.dev/v1alpha1",
            "kind": "Plugin",
            "metadata": {"name": name, "generation": generation},
            "spec": spec,
        }),
        rv,
    )
}

fn policy_spec(reference: &str, config: Value) -> Value {
    json!({
        "world": "policy",
        "source": {"oci": reference, "insecure": true},
        "config": config,
        "order": 10,
    })
}

async fn push(registry: &Registry, crate_name: &str, repo_tag: &str) -> String {
    let reference = registry.reference(repo_tag);
    let digest = isobar::plugin::load::push_file(
        runtime(),
        &plugin_path(crate_name),
        &reference,
        &Access {
            insecure: true,
            ..Access::default()
        },
    )
    .await
    .expect("pushed");
    let repo = reference.rsplit_once(':').unwrap().0.to_string();
    format!("{repo}@{digest}")
}

struct Fixture {
    script: Arc<Script>,
    server: Server,
    _plugin_dir: tempfile::TempDir,
    _cache: tempfile::TempDir,
}

impl Fixture {
    async fn start(writeback: Option<Writeback>) -> Fixture {
        let script = Arc::new(Script::default());
        let cluster = ClusterConnection {
            watches: script.clone(),
            writeback,
            client: None,
        };
        let plugin_dir = tempfile::tempdir().unwrap();
        let plugin = plugin_dir.path().join("plugin.wasm");
        std::fs::copy(plugin_path("isobar-plugin-ingress"), &plugin).unwrap();
        let cache = tempfile::tempdir().unwrap();
        let mut config = Config::cluster(cluster, &plugin);
        config.xds_listen = "127.0.0.1:0".parse().unwrap();
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.cache_dir = Some(cache.path().to_path_buf());
        config.follow_plugins = true;
        let server = Server::start(config).await.expect("serve starts");
        Fixture {
            script,
            server,
            _plugin_dir: plugin_dir,
            _cache: cache,
        }
    }

    /// Lists every kind, the Plugin objects given among them.
    async fn sync(&self, plugin_objects: &[Value]) {
        let s = &self.script;
        for kind in kinds() {
            s.wait_watched(&kind).await;
        }
        s.list(&kinds()[1], &[stored(ingress_class("isobar", true), 1)]);
        s.list(
            &kinds()[2],
            &[stored(
                service("default", "web", &[("http", 80, json!(8080))]),
                2,
            )],
        );
        s.list(
            &kinds()[3],
            &[stored(
                slice("default", "web", "1", "http", 8080, &["10.0.0.1"]),
                3,
            )],
        );
        s.list(&kinds()[4], &[]);
        s.list(&plugins(), plugin_objects);
        s.list(&kinds()[0], &[shop(None, 10)]);
        assert!(
            self.server.ready(WAIT).await,
            "ready once every watch listed"
        );
    }

    async fn wait(&self, what: &str, cond: impl Fn(&isobar::report::Report) -> bool) {
        assert!(
            self.server.report().wait_until(WAIT, cond).await,
            "timed out waiting for {what}; statuses: {:?}",
            conditions(self.server.report(), "tagger")
        );
    }
}

/// The Plugin's conditions as the host would write them: (type, status,
/// reason).
fn conditions(r: &isobar::report::Report, name: &str) -> Vec<(String, String, String, String)> {
    r.statuses()
        .into_iter()
        .filter(|s| s.object.kind == "Plugin" && s.object.name == name)
        .flat_map(|s| {
            s.status
                .conditions
                .into_iter()
                .map(|c| (c.type_, c.status.as_str().to_string(), c.reason, c.message))
        })
        .collect()
}

fn has(r: &isobar::report::Report, name: &str, type_: &str, status: &str, reason: &str) -> bool {
    conditions(r, name)
        .iter()
        .any(|(t, s, re, _)| t == type_ && s == status && re == reason)
}

fn status_field(r: &isobar::report::Report, name: &str, field: &str) -> Option<Value> {
    r.statuses()
        .into_iter()
        .find(|s| s.object.kind == "Plugin" && s.object.name == name)
        .and_then(|s| s.status.fields?.get(field).cloned())
}

/// The `x-policy-tag` on the shop's first route.
fn tag(h: &Held) -> Option<String> {
    let rc = route_config(&h.snapshot, "ingress_http")?;
    let vh = rc
        .virtual_hosts
        .iter()
        .find(|v| v.domains.iter().any(|d| d == "shop.example.com"))?;
    vh.routes[0]
        .response_headers_to_add
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-policy-tag")
        .map(|h| h.value.clone())
}

macro_rules! registry_or_skip {
    ($test:expr) => {
        match Registry::start_or_skip($test) {
            Some(r) => r,
            None => return,
        }
    };
}

// ---- the behaviours ---------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_policy_goes_live_when_its_plugin_object_is_applied_and_the_leader_says_so() {
    let registry = registry_or_skip!("a_pushed_policy_goes_live");
    let pinned = push(&registry, "isobar-plugin-faults-policy", "team/tagger:1.0").await;
    let object = plugin_object("tagger", 1, policy_spec(&pinned, json!({"tag": "v1"})), 20);
    let (mut api, client) = FakeApi::start([(STATUS_PATH, object.clone())]);
    let (_leader_tx, leader) = watch::channel(true);
    let f = Fixture::start(Some(Writeback {
        client,
        config: WritebackConfig::default(),
        leader: leader.into(),
    }))
    .await;
    f.sync(&[]).await;
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-1").await;
    envoy
        .until("the shop without a policy", |h| {
            h.domains("ingress_http").contains("shop.example.com") && tag(h).is_none()
        })
        .await;

    f.script.apply(&object);
    // The same stream sees the policy's output: nothing was restarted.
    envoy
        .until("the policy's tag", |h| tag(h).as_deref() == Some("v1"))
        .await;
    f.wait("Ready", |r| has(r, "tagger", "Ready", "True", "Loaded"))
        .await;
    let r = f.server.report();
    assert!(has(r, "tagger", "Accepted", "True", "Accepted"));
    assert!(has(r, "tagger", "Degraded", "False", "AsExpected"));
    let digest = pinned.rsplit_once('@').unwrap().1;
    assert_eq!(status_field(r, "tagger", "digest"), Some(json!(digest)));
    assert_eq!(
        status_field(r, "tagger", "contract"),
        Some(json!("isobar:plugin@0.2.0"))
    );
    assert_eq!(status_field(r, "tagger", "world"), Some(json!("policy")));
    assert!(
        r.plugins()
            .iter()
            .any(|p| p.world == "policy" && p.source == pinned && p.config["tag"] == "v1"),
        "{:?}",
        r.plugins()
    );

    // The leader writes it, as server-side apply on /status, never forced.
    let patch = api
        .wait_for("the Plugin status", WAIT, |s| {
            s.method == "PATCH"
                && s.uri.starts_with(&format!("{STATUS_PATH}/status"))
                && s.body["status"]["digest"] == json!(digest)
        })
        .await;
    assert!(!patch.uri.contains("force=true"), "{}", patch.uri);
    assert!(patch.uri.contains("fieldManager=isobar-plugin-catalog"));
    assert_eq!(patch.body["metadata"], json!({"name": "tagger"}));
    let ready = patch.body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap()
        .clone();
    assert_eq!(ready["status"], "True");
    assert_eq!(ready["observedGeneration"], 1);

    // Deleting the object takes its policy out.
    f.script.delete(&object);
    envoy
        .until("the shop without the policy again", |h| {
            h.domains("ingress_http").contains("shop.example.com") && tag(h).is_none()
        })
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_without_a_digest_is_refused_as_an_invalid_spec() {
    let registry = registry_or_skip!("a_tag_without_a_digest_is_refused");
    push(&registry, "isobar-plugin-faults-policy", "team/tagger:1.0").await;
    let f = Fixture::start(None).await;
    let tagged = registry.reference("team/tagger:1.0");
    f.sync(&[plugin_object(
        "tagger",
        1,
        policy_spec(&tagged, json!({})),
        20,
    )])
    .await;
    f.wait("InvalidSpec", |r| {
        has(r, "tagger", "Accepted", "False", "InvalidSpec")
    })
    .await;
    let (_, _, _, message) = conditions(f.server.report(), "tagger")
        .into_iter()
        .find(|c| c.0 == "Accepted")
        .unwrap();
    assert!(message.contains("names no digest"), "{message}");
    assert!(
        f.server
            .report()
            .plugins()
            .iter()
            .all(|p| p.world != "policy")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_digest_the_registry_does_not_hold_is_refused_and_nothing_changes() {
    let registry = registry_or_skip!("a_digest_the_registry_does_not_hold");
    let pinned = push(&registry, "isobar-plugin-faults-policy", "team/tagger:1.0").await;
    let (repo, _) = pinned.rsplit_once('@').unwrap();
    let other = format!("{repo}@sha256:{}", "0".repeat(64));
    let f = Fixture::start(None).await;
    f.sync(&[plugin_object(
        "tagger",
        1,
        policy_spec(&other, json!({})),
        20,
    )])
    .await;
    f.wait("PullFailed", |r| {
        has(r, "tagger", "Accepted", "False", "PullFailed")
            && has(r, "tagger", "Ready", "False", "PullFailed")
    })
    .await;
    assert!(
        f.server
            .report()
            .plugins()
            .iter()
            .all(|p| p.world != "policy")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_registry_keeps_the_loaded_version_serving() {
    let registry = registry_or_skip!("an_unreachable_registry_keeps_the_loaded_version");
    let pinned = push(&registry, "isobar-plugin-faults-policy", "team/tagger:1.0").await;
    let f = Fixture::start(None).await;
    f.sync(&[plugin_object(
        "tagger",
        1,
        policy_spec(&pinned, json!({"tag": "v1"})),
        20,
    )])
    .await;
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-1").await;
    envoy
        .until("the policy's tag", |h| tag(h).as_deref() == Some("v1"))
        .await;

    // Version 2 (another artifact, so not in the host's cache) lives on a
    // registry that is gone: a port nothing listens on any more.
    let other = push(&registry, "isobar-plugin-faults", "team/tagger:2.0").await;
    assert_ne!(other, pinned);
    drop(registry);
    let gone = other;
    f.script.apply(&plugin_object(
        "tagger",
        2,
        policy_spec(&gone, json!({"tag": "v2"})),
        21,
    ));
    f.wait("PullFailed, still serving", |r| {
        has(r, "tagger", "Accepted", "False", "PullFailed")
            && has(r, "tagger", "Degraded", "True", "PullFailed")
            && has(r, "tagger", "Ready", "True", "Loaded")
    })
    .await;
    assert_eq!(tag(&envoy.held).as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_artifact_is_served_from_the_cache_by_digest() {
    let registry = registry_or_skip!("a_cached_artifact_is_served_from_the_cache");
    let pinned = push(&registry, "isobar-plugin-faults-policy", "team/tagger:1.0").await;
    let cache = tempfile::tempdir().unwrap();
    let access = Access {
        insecure: true,
        ..Access::default()
    };
    let blobs = isobar::oci::BlobCache::new(cache.path());
    let first = isobar::oci::pull(&pinned, &access, Some(&blobs), true)
        .await
        .unwrap();
    assert!(!first.cached);
    assert_eq!(
        first.bytes,
        std::fs::read(plugin_path("isobar-plugin-faults-policy")).unwrap()
    );
    drop(registry);
    let again = isobar::oci::pull(&pinned, &access, Some(&blobs), true)
        .await
        .expect("from the cache, with the registry gone");
    assert!(again.cached);
    assert_eq!(again.bytes, first.bytes);

    // A cache file that no longer hashes to its digest is not trusted.
    let layer = cache
        .path()
        .join("blobs/sha256")
        .join(first.layer_digest.trim_start_matches("sha256:"));
    std::fs::write(&layer, b"tampered").unwrap();
    let err = isobar::oci::pull(&pinned, &access, Some(&blobs), true)
        .await
        .expect_err("neither the cache nor the registry");
    assert_eq!(err.reason(), "PullFailed", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_of_another_world_is_refused_with_contract_mismatch() {
    let registry = registry_or_skip!("a_component_of_another_world_is_refused");
    // The Ingress translator, applied as if it were a policy.
    let pinned = push(&registry, "isobar-plugin-ingress", "team/ingress:1.0").await;
    let f = Fixture::start(None).await;
    f.sync(&[plugin_object(
        "tagger",
        1,
        policy_spec(&pinned, json!({})),
        20,
    )])
    .await;
    f.wait("ContractMismatch", |r| {
        has(r, "tagger", "Accepted", "False", "ContractMismatch")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configuration_the_plugin_refuses_is_refused_and_the_loaded_one_stays() {
    let registry = registry_or_skip!("a_configuration_the_plugin_refuses");
    let pinned = push(&registry, "isobar-plugin-faults-policy", "team/tagger:1.0").await;
    let f = Fixture::start(None).await;
    f.sync(&[plugin_object(
        "tagger",
        1,
        policy_spec(&pinned, json!({"tag": "v1"})),
        20,
    )])
    .await;
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-1").await;
    envoy
        .until("the policy's tag", |h| tag(h).as_deref() == Some("v1"))
        .await;
    f.script.apply(&plugin_object(
        "tagger",
        2,
        policy_spec(&pinned, json!({"refuse": true})),
        21,
    ));
    f.wait("ConfigInvalid", |r| {
        has(r, "tagger", "Accepted", "False", "ConfigInvalid")
            && has(r, "tagger", "Degraded", "True", "ConfigInvalid")
    })
    .await;
    // A good configuration again goes live.
    f.script.apply(&plugin_object(
        "tagger",
        3,
        policy_spec(&pinned, json!({"tag": "v3"})),
        22,
    ));
    envoy
        .until("the new tag", |h| tag(h).as_deref() == Some("v3"))
        .await;
    f.wait("accepted again", |r| {
        has(r, "tagger", "Accepted", "True", "Accepted")
            && has(r, "tagger", "Degraded", "False", "AsExpected")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_policies_with_one_order_are_refused() {
    let registry = registry_or_skip!("two_policies_with_one_order_are_refused");
    let pinned = push(&registry, "isobar-plugin-faults-policy", "team/tagger:1.0").await;
    let f = Fixture::start(None).await;
    f.sync(&[plugin_object(
        "tagger",
        1,
        policy_spec(&pinned, json!({"tag": "v1"})),
        20,
    )])
    .await;
    f.wait("the first", |r| has(r, "tagger", "Ready", "True", "Loaded"))
        .await;
    f.script.apply(&plugin_object(
        "second",
        1,
        policy_spec(&pinned, json!({"tag": "v2"})),
        21,
    ));
    f.wait("OrderConflict", |r| {
        has(r, "second", "Accepted", "False", "OrderConflict")
    })
    .await;
    assert!(has(f.server.report(), "tagger", "Ready", "True", "Loaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_past_the_threshold_roll_the_plugin_back_and_say_so() {
    let registry = registry_or_skip!("failures_past_the_threshold_roll_back");
    let pinned = push(&registry, "isobar-plugin-faults-policy", "team/tagger:1.0").await;
    let f = Fixture::start(None).await;
    f.sync(&[plugin_object(
        "tagger",
        1,
        policy_spec(&pinned, json!({"tag": "v1"})),
        20,
    )])
    .await;
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-1").await;
    envoy
        .until("version 1", |h| tag(h).as_deref() == Some("v1"))
        .await;
    let mut spec = policy_spec(&pinned, json!({"tag": "v2"}));
    spec["rollback"] = json!({"failures": 1, "windowSeconds": 600});
    f.script.apply(&plugin_object("tagger", 2, spec, 21));
    envoy
        .until("version 2", |h| tag(h).as_deref() == Some("v2"))
        .await;

    // An Ingress on which the policy now fails: one failure is the
    // threshold, so version 1 comes back on its own.
    f.script.apply(&shop(Some("trap"), 11));
    f.wait("RolledBack", |r| {
        has(r, "tagger", "Degraded", "True", "RolledBack")
            && has(r, "tagger", "Ready", "True", "RolledBack")
    })
    .await;
    f.wait("version 1's configuration", |r| {
        r.plugins()
            .iter()
            .any(|p| p.world == "policy" && p.config["tag"] == "v1")
    })
    .await;
    // Fixed input: version 1 serves it.
    f.script.apply(&shop(None, 12));
    envoy
        .until("version 1 again", |h| tag(h).as_deref() == Some("v1"))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_whose_output_envoy_rejects_is_rolled_back_and_envoy_serves_the_one_before() {
    const TEST: &str = "a_version_whose_output_envoy_rejects_is_rolled_back";
    let registry = registry_or_skip!(TEST);
    let ports = match tokio::task::spawn_blocking(Envoy::binary).await.unwrap() {
        Ok(_) => Ports::lock().await,
        Err(why) => {
            venv::skipped(TEST, &format!("no Envoy binary: {why}"));
            return;
        }
    };
    let pinned = push(&registry, "isobar-plugin-faults-policy", "team/tagger:1.0").await;
    let f = Fixture::start(None).await;
    f.sync(&[plugin_object(
        "tagger",
        1,
        policy_spec(&pinned, json!({"tag": "v1"})),
        20,
    )])
    .await;
    f.wait("version 1", |r| has(r, "tagger", "Ready", "True", "Loaded"))
        .await;
    let mut envoy = Envoy::start(&ports, Bootstrap::local(f.server.xds_addr(), "envoy-nack")).await;
    envoy.ready().await;
    let serves = |tag: &'static str| {
        async move |e: &Envoy| {
            e.route_configs()
                .await
                .values()
                .any(|rc| rc.to_string().contains(&format!("\"{tag}\"")))
        }
    };
    envoy.until("version 1 in Envoy", serves("v1")).await;

    // Version 2's output is one Envoy refuses (a header value over its
    // 16 KiB limit, which isobar does not check): Envoy NACKs it, and the
    // host rolls the Plugin back on its own.
    let long = "x".repeat(17 * 1024);
    f.script.apply(&plugin_object(
        "tagger",
        2,
        policy_spec(&pinned, json!({"tag": long})),
        21,
    ));
    envoy
        .until("Envoy's rejection", async |e| e.rejected().await >= 1)
        .await;
    f.wait("RolledBack", |r| {
        has(r, "tagger", "Degraded", "True", "RolledBack")
    })
    .await;
    let (_, _, _, why) = conditions(f.server.report(), "tagger")
        .into_iter()
        .find(|c| c.0 == "Degraded")
        .unwrap();
    assert!(why.contains("rejected snapshot"), "{why}");
    // What the host serves, and Envoy after it, is version 1 again.
    let mut ads = Sotw::open_envoy(f.server.xds_addr(), "envoy-check").await;
    ads.until("version 1 from the host", |h| {
        tag(h).as_deref() == Some("v1")
    })
    .await;
    envoy.until("version 1 in Envoy still", serves("v1")).await;
    assert!(envoy.running(), "Envoy kept running");
}
