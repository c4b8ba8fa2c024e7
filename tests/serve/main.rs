//! `isobar serve` in-process, through its library API: manifests in a
//! watched temporary directory and the real plugin components in, xDS out
//! through a real tonic ADS client (envoy-types) over loopback, on ephemeral
//! ports. Every wait is on a condition and bounded by `WAIT`; nothing sleeps.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::DiscoveryRequest;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::google::rpc::Status as RpcStatus;
use isobar::serve::{Config, Gate, Server};
use isobar::xds::Snapshot;
use isobar_tests::ads::*;
use isobar_tests::*;
use prost::Message;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;

mod admin;
mod manifests;
mod measure;
mod operators;
mod policies;
mod swap;
mod transport;

// ---- manifests ----------------------------------------------------------------

fn yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

/// IngressClass, and Services `web` and `api` (port 80) with endpoints.
fn backends() -> String {
    yaml(&[
        ingress_class("isobar", true),
        service("default", "web", &[("http", 80, json!(8080))]),
        slice("default", "web", "1", "http", 8080, &["10.0.0.1"]),
        service("default", "api", &[("http", 80, json!(8080))]),
        slice("default", "api", "1", "http", 8080, &["10.0.0.2"]),
    ])
}

/// `shop.example.com`: `/` to web, `/api` to api.
fn shop() -> Value {
    ingress(
        "default",
        "shop",
        &[(
            "shop.example.com",
            &[
                ("/", "Prefix", "web", json!(80)),
                ("/api", "Prefix", "api", json!(80)),
            ],
        )],
    )
}

const WEB: &str = "default/web/80";
const API: &str = "default/api/80";

// ---- the server -------------------------------------------------------------------

struct Fixture {
    manifests: tempfile::TempDir,
    plugin_dir: tempfile::TempDir,
    server: Server,
}

impl Fixture {
    async fn start(files: &[(&str, String)]) -> Self {
        Self::start_with(files, None).await
    }

    async fn start_with(files: &[(&str, String)], gate: Option<Gate>) -> Self {
        let manifests = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(manifests.path().join(name), text).unwrap();
        }
        let plugin_dir = tempfile::tempdir().unwrap();
        let plugin = plugin_dir.path().join("plugin.wasm");
        std::fs::copy(plugin_path("isobar-plugin-ingress"), &plugin).unwrap();
        let mut config = Config::new(manifests.path(), &plugin);
        config.xds_listen = "127.0.0.1:0".parse().unwrap();
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.cache_dir = Some(target_dir().join("isobar-test-cache"));
        config.first_build_gate = gate.clone();
        let server = Server::start(config).await.expect("serve starts");
        if gate.is_none() {
            assert!(server.ready(WAIT).await, "no first snapshot");
        }
        Fixture {
            manifests,
            plugin_dir,
            server,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.manifests.path().join(name)
    }

    /// Replaces a file the way editors and `kubectl`-style tools do: write
    /// aside, then rename over (the watcher sees one complete file).
    fn write(&self, name: &str, text: &str) {
        atomic_write(&self.path(name), text.as_bytes());
    }

    fn remove(&self, name: &str) {
        std::fs::remove_file(self.path(name)).unwrap();
    }

    fn install_plugin(&self, bytes: &[u8]) {
        atomic_write(&self.plugin_dir.path().join("plugin.wasm"), bytes);
    }

    fn version(&self) -> u64 {
        self.server.report().snapshot().version
    }

    async fn wait(&self, what: &str, cond: impl Fn(&isobar::report::Report) -> bool) {
        assert!(
            self.server.report().wait_until(WAIT, cond).await,
            "timed out waiting for {what}"
        );
    }

    async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.server.admin_addr(), path).await
    }

    async fn get_json(&self, path: &str) -> Value {
        let (code, body) = self.get(path).await;
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e}): {body}"))
    }
}

fn atomic_write(path: &Path, bytes: &[u8]) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn has_shop(h: &Held) -> bool {
    shop_in(&h.snapshot)
}

fn shop_in(s: &Snapshot) -> bool {
    domains_of(s, "ingress_http").contains("shop.example.com")
        && names(s, CDS) == [API, WEB]
        && names(s, EDS) == [API, WEB]
}
