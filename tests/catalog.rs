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
        Self::start_with(writeback, None).await
    }

    /// With `client`, the API the host reads pull Secrets and ConfigMaps
    /// from.
    async fn start_with(writeback: Option<Writeback>, client: Option<kube::Client>) -> Fixture {
        Self::start_as(writeback, client, true, Vec::new()).await
    }

    /// `flag_translator`: whether the host has `--plugin` (the Ingress
    /// translator) or takes its translators from Plugin objects only.
    async fn start_as(
        writeback: Option<Writeback>,
        client: Option<kube::Client>,
        flag_translator: bool,
        registry_roots: Vec<Vec<u8>>,
    ) -> Fixture {
        let script = Arc::new(Script::default());
        let cluster = ClusterConnection {
            watches: script.clone(),
            writeback,
            client,
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
        if !flag_translator {
            config.plugins.clear();
        }
        config.registry_roots = registry_roots;
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
    for stage in [
        "pullMillis",
        "compileMillis",
        "swapMillis",
        "calls",
        "failures",
    ] {
        assert!(
            status_field(r, "tagger", stage).is_some_and(|v| v.is_u64()),
            "{stage}"
        );
    }
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

/// A "registry" on loopback that answers every request with what
/// `answer` gives for its path (status, body), as a hostile or broken one
/// would; with `silent`, it accepts connections and never answers.
async fn fake_registry(
    silent: bool,
    answer: fn(&str) -> (u16, String),
) -> (String, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let host = listener.local_addr().unwrap().to_string();
    let task = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            if silent {
                held.push(conn);
                continue;
            }
            tokio::spawn(async move {
                let mut buf = vec![0u8; 8192];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                let path = request.split_whitespace().nth(1).unwrap_or("/").to_string();
                let (status, body) = answer(&path);
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/vnd.oci.image.manifest.v1+json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    (host, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registry_that_serves_other_bytes_for_a_digest_is_refused_with_digest_mismatch() {
    let (host, _task) = fake_registry(false, |path| {
        if path.contains("/manifests/") {
            // A well-formed Wasm manifest, but not the one the digest names.
            (
                200,
                json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "config": {"mediaType": "application/vnd.wasm.config.v0+json", "digest": format!("sha256:{}", "1".repeat(64)), "size": 2},
                       "layers": [{"mediaType": "application/wasm", "digest": format!("sha256:{}", "2".repeat(64)), "size": 8}]})
                    .to_string(),
            )
        } else {
            (200, "{}".into())
        }
    })
    .await;
    let reference = format!("{host}/team/tagger@sha256:{}", "3".repeat(64));
    let access = Access {
        insecure: true,
        ..Access::default()
    };
    let err = isobar::oci::pull(&reference, &access, None, true)
        .await
        .expect_err("the bytes are not the digest's");
    assert_eq!(err.reason(), "DigestMismatch", "{err}");

    // Through a Plugin object: refused with that reason, nothing loaded.
    let f = Fixture::start(None).await;
    f.sync(&[plugin_object(
        "tagger",
        1,
        policy_spec(&reference, json!({})),
        20,
    )])
    .await;
    f.wait("DigestMismatch", |r| {
        has(r, "tagger", "Accepted", "False", "DigestMismatch")
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
async fn a_registry_that_answers_garbage_or_nothing_fails_the_pull_within_its_deadline() {
    let access = Access {
        insecure: true,
        timeout: Some(std::time::Duration::from_secs(2)),
        ..Access::default()
    };
    let digest = format!("sha256:{}", "3".repeat(64));
    let (garbage, _g) = fake_registry(false, |_| (200, "\u{1}not json at all".into())).await;
    let err = isobar::oci::pull(&format!("{garbage}/team/t@{digest}"), &access, None, true)
        .await
        .expect_err("garbage is no manifest");
    assert!(
        matches!(
            err.reason(),
            "PullFailed" | "DigestMismatch" | "ContractMismatch"
        ),
        "{err}"
    );
    let (silent, _s) = fake_registry(true, |_| (200, String::new())).await;
    let err = isobar::oci::pull(&format!("{silent}/team/t@{digest}"), &access, None, true)
        .await
        .expect_err("no answer");
    assert_eq!(err.reason(), "PullFailed", "{err}");
    assert!(err.to_string().contains("no answer within"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_artifacts_use_the_wasm_oci_layout_and_pull_back_identical() {
    let registry = registry_or_skip!("pushed_artifacts_use_the_wasm_oci_layout");
    let pinned = push(&registry, "isobar-plugin-faults-policy", "team/tagger:1.0").await;
    // The manifest as any OCI client reads it, over plain HTTP.
    let (_, digest) = pinned.rsplit_once('@').unwrap();
    let manifest: Value = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conn = tokio::net::TcpStream::connect(&registry.host)
            .await
            .unwrap();
        let req = format!(
            "GET /v2/team/tagger/manifests/{digest} HTTP/1.0\r\nHost: {}\r\nAccept: application/vnd.oci.image.manifest.v1+json\r\n\r\n",
            registry.host
        );
        conn.write_all(req.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap()
    };
    assert_eq!(
        manifest["mediaType"],
        "application/vnd.oci.image.manifest.v1+json"
    );
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.wasm.config.v0+json"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1);
    assert_eq!(layers[0]["mediaType"], "application/wasm");

    let access = Access {
        insecure: true,
        ..Access::default()
    };
    // By tag, as `isobar plugin pull` allows; the host requires the digest.
    let tagged = registry.reference("team/tagger:1.0");
    let pulled = isobar::oci::pull(&tagged, &access, None, false)
        .await
        .unwrap();
    assert_eq!(pulled.manifest_digest, digest);
    assert_eq!(
        pulled.bytes,
        std::fs::read(plugin_path("isobar-plugin-faults-policy")).unwrap()
    );
    let err = isobar::oci::pull(&tagged, &access, None, true)
        .await
        .expect_err("a tag is not a pin");
    assert_eq!(err.reason(), "InvalidReference");
}

#[test]
fn registry_credentials_come_from_a_dockerconfigjson() {
    let config = json!({"auths": {
        "https://registry.example.com": {"auth": "dXNlcjpwYXNzOndvcmQ="},
        "other.example.com:5000": {"username": "u", "password": "p"},
    }});
    let bytes = serde_json::to_vec(&config).unwrap();
    assert_eq!(
        isobar::oci::docker_config_auth(&bytes, "registry.example.com").unwrap(),
        Some(("user".into(), "pass:word".into()))
    );
    assert_eq!(
        isobar::oci::docker_config_auth(&bytes, "other.example.com:5000").unwrap(),
        Some(("u".into(), "p".into()))
    );
    assert_eq!(
        isobar::oci::docker_config_auth(&bytes, "elsewhere.example.com").unwrap(),
        None
    );
    assert!(isobar::oci::docker_config_auth(b"{", "x").is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_key_with_its_digest_carries_a_plugin_without_a_registry() {
    use base64::Engine as _;
    let bytes = std::fs::read(plugin_path("isobar-plugin-faults-policy")).unwrap();
    let digest = {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(&bytes))
    };
    let configmap = |data: &[u8]| {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "plugins", "namespace": "isobar-system"},
               "binaryData": {"tagger.wasm": base64::engine::general_purpose::STANDARD.encode(data)}})
    };
    let (api, client) = FakeApi::start([(
        "/api/v1/namespaces/isobar-system/configmaps/plugins",
        configmap(&bytes),
    )]);
    let f = Fixture::start_with(None, Some(client)).await;
    let spec = |sha: &str, tag: &str| {
        json!({"world": "policy", "order": 1, "config": {"tag": tag},
               "source": {"configMap": {"namespace": "isobar-system", "name": "plugins", "key": "tagger.wasm"},
                          "sha256": sha}})
    };
    f.sync(&[plugin_object("tagger", 1, spec(&digest, "cm"), 20)])
        .await;
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-1").await;
    envoy
        .until("the policy from the ConfigMap", |h| {
            tag(h).as_deref() == Some("cm")
        })
        .await;
    assert_eq!(
        status_field(f.server.report(), "tagger", "digest"),
        Some(json!(format!("sha256:{digest}")))
    );

    // The key's bytes change under the same Plugin: they are not what it
    // pins, so they are refused and the loaded version keeps serving.
    api.insert(
        "/api/v1/namespaces/isobar-system/configmaps/plugins",
        configmap(b"\0asm not this"),
    );
    f.script
        .apply(&plugin_object("tagger", 2, spec(&digest, "cm2"), 21));
    f.wait("DigestMismatch", |r| {
        has(r, "tagger", "Accepted", "False", "DigestMismatch")
            && has(r, "tagger", "Degraded", "True", "DigestMismatch")
    })
    .await;
    assert_eq!(tag(&envoy.held).as_deref(), Some("cm"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_translator_claiming_a_root_kind_already_served_is_refused() {
    let registry = registry_or_skip!("a_translator_claiming_a_root_kind_already_served");
    // The host serves Ingress with its --plugin; a Plugin object brings a
    // second Ingress translator.
    let pinned = push(&registry, "isobar-plugin-ingress", "team/ingress:1.0").await;
    let f = Fixture::start(None).await;
    f.sync(&[plugin_object(
        "tagger",
        1,
        json!({"world": "translator", "source": {"oci": pinned, "insecure": true}}),
        20,
    )])
    .await;
    f.wait("RootKindClaimed", |r| {
        has(r, "tagger", "Accepted", "False", "RootKindClaimed")
    })
    .await;
    let (_, _, _, message) = conditions(f.server.report(), "tagger")
        .into_iter()
        .find(|c| c.0 == "Accepted")
        .unwrap();
    assert!(message.contains("Ingress"), "{message}");
    assert_eq!(
        f.server
            .report()
            .plugins()
            .iter()
            .filter(|p| p.world == "translator")
            .count(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_is_held_to_tighter_limits_than_the_hosts_and_never_looser() {
    let registry = registry_or_skip!("a_plugin_is_held_to_tighter_limits");
    let pinned = push(&registry, "isobar-plugin-faults-policy", "team/tagger:1.0").await;
    let f = Fixture::start(None).await;
    let with_limits = |limits: Value| {
        let mut spec = policy_spec(&pinned, json!({"tag": "v1"}));
        spec["limits"] = limits;
        spec
    };
    // Looser than the host's 64 MiB: refused before anything is pulled.
    f.sync(&[plugin_object(
        "tagger",
        1,
        with_limits(json!({"memoryMiB": 4096})),
        20,
    )])
    .await;
    f.wait("InvalidSpec", |r| {
        conditions(r, "tagger")
            .iter()
            .any(|(t, s, reason, message)| {
                (t.as_str(), s.as_str(), reason.as_str()) == ("Accepted", "False", "InvalidSpec")
                    && message.contains("--plugin-memory-mib")
            })
    })
    .await;

    // Tighter: a 20 ms deadline instead of the host's 100 ms. A call that
    // loops is stopped at the plugin's own deadline.
    f.script.apply(&plugin_object(
        "tagger",
        2,
        with_limits(json!({"deadlineMillis": 20})),
        21,
    ));
    f.wait("loaded", |r| has(r, "tagger", "Ready", "True", "Loaded"))
        .await;
    f.script.apply(&shop(Some("loop"), 11));
    f.wait("a timeout at the plugin's deadline", |r| {
        r.diagnostics()
            .iter()
            .any(|d| d.reason == "PluginTimeout" && d.message.contains("20ms"))
    })
    .await;

    // A memory cap below what the plugin needs: its dry run fails naming
    // the cap, and the version before keeps serving.
    f.script.apply(&plugin_object(
        "tagger",
        3,
        with_limits(json!({"memoryMiB": 1})),
        22,
    ));
    f.wait("DryRunFailed at 1 MiB", |r| {
        conditions(r, "tagger")
            .iter()
            .any(|(t, s, reason, message)| {
                (t.as_str(), s.as_str(), reason.as_str()) == ("Accepted", "False", "DryRunFailed")
                    && message.contains(&(1u64 << 20).to_string())
            })
    })
    .await;
    assert!(has(f.server.report(), "tagger", "Ready", "True", "Loaded"));
}

/// A reconciler a Plugin object carries: its kinds are watched, it acts on
/// the cluster (the memcached operator's finalizer and Deployment, applied
/// under its own field manager), a second one for the same kind is
/// refused, and deleting the object stops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciler_in_a_plugin_object_runs_acts_and_stops_when_the_object_goes() {
    let registry = registry_or_skip!("a_reconciler_in_a_plugin_object");
    let pinned = push(&registry, "isobar-plugin-memcached", "ops/memcached:1.0").await;
    let cache = stored(
        json!({"apiVersion": "cache.example.com/v1alpha1", "kind": "Memcached",
               "metadata": {"namespace": "default", "name": "cache"},
               "spec": {"size": 2}}),
        40,
    );
    let (mut api, client) = FakeApi::start([(
        "/apis/cache.example.com/v1alpha1/namespaces/default/memcacheds/cache",
        cache.clone(),
    )]);
    let f = Fixture::start_with(None, Some(client)).await;
    let spec = json!({
        "world": "reconciler",
        "source": {"oci": pinned, "insecure": true},
    });
    let operator = plugin_object("memcached", 1, spec.clone(), 20);
    f.sync(std::slice::from_ref(&operator)).await;
    f.wait("the reconciler loaded", |r| {
        has(r, "memcached", "Ready", "True", "Loaded")
    })
    .await;
    let s = &f.script;
    let memcacheds = kind_of("cache.example.com/v1alpha1", "Memcached");
    for kind in [
        &memcacheds,
        &kind_of("apps/v1", "Deployment"),
        &kind_of("v1", "Pod"),
    ] {
        s.wait_watched(kind).await;
        s.list(
            kind,
            if kind == &memcacheds {
                std::slice::from_ref(&cache)
            } else {
                &[]
            },
        );
    }
    let apply = api
        .wait_for("the Deployment applied", WAIT, |r| {
            r.method == "PATCH"
                && r.uri
                    .starts_with("/apis/apps/v1/namespaces/default/deployments/cache?")
        })
        .await;
    assert!(
        apply.uri.contains("fieldManager=isobar%2Fmemcached"),
        "{}",
        apply.uri
    );
    assert_eq!(apply.body["spec"]["replicas"], 2);
    assert_eq!(
        status_field(f.server.report(), "memcached", "world"),
        Some(json!("reconciler"))
    );

    // Two operators for one kind would fight over its objects.
    s.apply(&plugin_object("memcached-2", 1, spec, 21));
    f.wait("RootKindClaimed", |r| {
        has(r, "memcached-2", "Accepted", "False", "RootKindClaimed")
    })
    .await;

    s.delete(&operator);
    f.wait("the reconciler stopped", |r| {
        r.reconcilers().iter().all(|x| x.name != "memcached")
    })
    .await;
    s.stopped(&memcacheds).await;
}

/// A replica starting in a cluster that holds Plugin objects is not ready,
/// and serves nothing, until they have loaded: its very first routes carry
/// the policy (a policy may be a host's authentication). One that cannot
/// load is refused and does not hold the replica back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_starting_replica_serves_nothing_before_its_plugin_objects_load() {
    let registry = registry_or_skip!("a_starting_replica_serves_nothing_before");
    let pinned = push(&registry, "isobar-plugin-faults-policy", "team/tagger:1.0").await;
    let missing = format!(
        "{}@sha256:{}",
        registry.reference("team/gone"),
        "0".repeat(64)
    );
    let f = Fixture::start(None).await;
    f.sync(&[
        plugin_object("tagger", 1, policy_spec(&pinned, json!({"tag": "v1"})), 20),
        plugin_object(
            "gone",
            1,
            json!({"world": "policy", "source": {"oci": missing, "insecure": true}, "order": 20}),
            21,
        ),
    ])
    .await;
    // Ready: the first snapshot is out, with the policy in it.
    assert!(has(f.server.report(), "tagger", "Ready", "True", "Loaded"));
    assert!(has(
        f.server.report(),
        "gone",
        "Accepted",
        "False",
        "PullFailed"
    ));
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-1").await;
    envoy.until("routes", |h| !h.names(RDS).is_empty()).await;
    assert_eq!(
        tag(&envoy.held).as_deref(),
        Some("v1"),
        "the first routes served carry the policy"
    );
}

/// `isobar serve --follow-plugins` without `--plugin`: the translator
/// itself ships as a Plugin object. Its kinds are watched once it loads,
/// and the replica is ready (and serves routes) only then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_translator_itself_can_come_from_a_plugin_object() {
    let registry = registry_or_skip!("the_translator_itself_can_come_from_a_plugin_object");
    let pinned = push(&registry, "isobar-plugin-ingress", "team/ingress:1.0").await;
    let f = Fixture::start_as(None, None, false, Vec::new()).await;
    let s = &f.script;
    let [ingresses, classes, services, slices, secrets, _] = kinds();
    for kind in [&services, &slices, &secrets, &plugins()] {
        s.wait_watched(kind).await;
    }
    s.list(
        &services,
        &[stored(
            service("default", "web", &[("http", 80, json!(8080))]),
            2,
        )],
    );
    s.list(
        &slices,
        &[stored(
            slice("default", "web", "1", "http", 8080, &["10.0.0.1"]),
            3,
        )],
    );
    s.list(&secrets, &[]);
    s.list(
        &plugins(),
        &[plugin_object(
            "ingress",
            1,
            json!({"world": "translator", "source": {"oci": pinned, "insecure": true}}),
            20,
        )],
    );
    // The Plugin's translator reads Ingress and IngressClass: watched now.
    s.wait_watched(&ingresses).await;
    s.wait_watched(&classes).await;
    assert!(
        !f.server.report().is_ready(),
        "not ready before the translator has loaded"
    );
    s.list(&classes, &[stored(ingress_class("isobar", true), 1)]);
    s.list(&ingresses, &[shop(None, 10)]);
    assert!(f.server.ready(WAIT).await);
    assert!(has(f.server.report(), "ingress", "Ready", "True", "Loaded"));
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-1").await;
    envoy
        .until("the shop's routes", |h| {
            h.domains("ingress_http").contains("shop.example.com")
        })
        .await;
}

/// A registry as a platform team runs one: HTTPS under a private CA, and a
/// login. The certificate is verified (the CA must be given: nothing else
/// is trusted beside the system's roots), the login is required, and the
/// host logs in with the pull Secret's credentials.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_registry_is_reached_over_verified_tls_with_the_pull_secrets_login() {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let test = "a_private_registry_is_reached_over_verified_tls";
    let Some((registry, ca)) = Registry::start_secure_or_skip(test, "ci", "s3cret") else {
        return;
    };
    let reference = registry.reference("team/tagger:1.0");
    let login = |password: &str, roots: &[&str]| Access {
        basic: Some(("ci".into(), password.into())),
        extra_roots: roots.iter().map(|r| r.as_bytes().to_vec()).collect(),
        ..Access::default()
    };
    let push = async |access: Access| {
        isobar::plugin::load::push_file(
            runtime(),
            &plugin_path("isobar-plugin-faults-policy"),
            &reference,
            &access,
        )
        .await
    };
    push(login("s3cret", &[]))
        .await
        .expect_err("a certificate from an unknown CA is refused");
    push(login("wrong", &[&ca]))
        .await
        .expect_err("a wrong password is refused");
    let digest = push(login("s3cret", &[&ca])).await.expect("pushed");
    let pinned = format!("{}@{digest}", reference.rsplit_once(':').unwrap().0);

    let dockerconfig = json!({"auths": {registry.host.clone(): {"auth": b64("ci:s3cret")}}});
    let secret = json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"namespace": "isobar-system", "name": "regcred"},
        "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": b64(&dockerconfig.to_string())}});
    let (_api, client) =
        FakeApi::start([("/api/v1/namespaces/isobar-system/secrets/regcred", secret)]);
    let f = Fixture::start_as(None, Some(client), true, vec![ca.into_bytes()]).await;
    let spec = |order: i64, secret: bool| {
        let mut s = json!({"world": "policy", "source": {"oci": pinned},
                           "config": {"tag": "v1"}, "order": order});
        if secret {
            s["source"]["pullSecret"] = json!({"namespace": "isobar-system", "name": "regcred"});
        }
        s
    };
    // Without the login the registry refuses the pull.
    f.sync(&[plugin_object("anonymous", 1, spec(20, false), 20)])
        .await;
    assert!(has(
        f.server.report(),
        "anonymous",
        "Accepted",
        "False",
        "PullFailed"
    ));
    f.script
        .apply(&plugin_object("tagger", 1, spec(10, true), 21));
    f.wait("loaded with the pull Secret's login", |r| {
        has(r, "tagger", "Ready", "True", "Loaded")
    })
    .await;
    let mut envoy = Sotw::open_envoy(f.server.xds_addr(), "envoy-1").await;
    envoy
        .until("the policy's tag", |h| tag(h).as_deref() == Some("v1"))
        .await;
}

/// A NACK blames a plugin on probation only when the rejected resources
/// could be its output: a policy's hosts compile into routes, so a
/// rejected ClusterLoadAssignment (an EndpointSlice's) leaves it alone,
/// and a rejected RouteConfiguration rolls it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_of_what_a_policy_cannot_have_made_does_not_roll_it_back() {
    let registry = registry_or_skip!("a_nack_of_what_a_policy_cannot_have_made");
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
    f.script.apply(&plugin_object(
        "tagger",
        2,
        policy_spec(&pinned, json!({"tag": "v2"})),
        21,
    ));
    envoy
        .until("version 2", |h| tag(h).as_deref() == Some("v2"))
        .await;

    // The endpoints change; the client rejects them.
    f.script.apply(&stored(
        slice(
            "default",
            "web",
            "1",
            "http",
            8080,
            &["10.0.0.1", "10.0.0.2"],
        ),
        30,
    ));
    let eds = loop {
        let r = envoy.stream.recv().await;
        if r.type_url == EDS {
            break r;
        }
        envoy.stream.ack(&r, &[]).await;
    };
    envoy
        .stream
        .nack(&eds, &["*"], "1", "rejected endpoints")
        .await;
    // The Ingress changes; the client rejects its routes.
    f.script.apply(&shop(Some("header:x-edit=1"), 31));
    let rds = loop {
        let r = envoy.stream.recv().await;
        if r.type_url == RDS {
            break r;
        }
        envoy.stream.ack(&r, &[]).await;
    };
    envoy
        .stream
        .nack(&rds, &["*"], "1", "rejected routes")
        .await;
    f.wait("RolledBack", |r| {
        has(r, "tagger", "Degraded", "True", "RolledBack")
    })
    .await;
    // Inputs are handled in order: had the endpoints' NACK blamed the
    // policy, the rollback would name their snapshot.
    let (_, _, _, why) = conditions(f.server.report(), "tagger")
        .into_iter()
        .find(|c| c.0 == "Degraded")
        .unwrap();
    assert!(
        why.contains(&format!("snapshot {}", rds.version_info)) && why.contains("rejected routes"),
        "{why} (endpoints rejected at {}, routes at {})",
        eds.version_info,
        rds.version_info
    );
}
