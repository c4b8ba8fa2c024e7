//! A real Envoy in a test: started from a bootstrap in `deploy/` rendered
//! for loopback, watched through its admin endpoint, killed on drop.
//!
//! Every wait is on a condition Envoy's admin reports (`/ready`,
//! `/config_dump`, `/stats`), re-checked at a short pace and bounded by
//! [`WAIT`]; a failed wait names what it waited for and shows Envoy's log.
//!
//! The Ingress plugin's listeners are on fixed ports (8080, 8443) that
//! every Envoy binds with `SO_REUSEPORT`: two Envoys at once would share
//! the traffic. A test that runs Envoys holds [`Ports`] (a file lock, so it
//! holds across test binaries) for its whole run.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::Value as Json;
use serde_yaml::Value;

use crate::ads::http_get;

/// Bound of every wait on Envoy.
pub const WAIT: Duration = Duration::from_secs(60);
/// The Ingress plugin's listener ports (`isobar_plugin_ingress::HTTP_PORT`
/// and `HTTPS_PORT`; tests/envoy.rs checks they agree).
pub const HTTP_PORT: u16 = 8080;
pub const HTTPS_PORT: u16 = 8443;

/// Pace of re-checking a condition through the admin endpoint (there is
/// no event to wait on there).
const POLL: Duration = Duration::from_millis(20);

/// The ADS flavour of a bootstrap.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ads {
    /// State of the world (`GRPC`).
    Sotw,
    /// Incremental (`DELTA_GRPC`).
    Delta,
}

impl Ads {
    pub fn api_type(self) -> &'static str {
        match self {
            Ads::Sotw => "GRPC",
            Ads::Delta => "DELTA_GRPC",
        }
    }
}

fn deploy(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file)
}

/// A bootstrap to start Envoy with, and its command-line flags.
#[derive(Clone, Debug)]
pub struct Bootstrap {
    pub yaml: Value,
    pub node: String,
    /// Extra flags (`--service-node` and the like).
    pub args: Vec<String>,
    /// Envoy's log level (`info` by default: what a failure message shows).
    pub log_level: String,
}

impl Bootstrap {
    /// `deploy/envoy-bootstrap.yaml` (what a user starts Envoy with beside
    /// `isobar serve`) pointed at `xds`, with its admin on an ephemeral port.
    pub fn local(xds: SocketAddr, node: &str) -> Self {
        let text = std::fs::read_to_string(deploy("envoy-bootstrap.yaml")).unwrap();
        let mut yaml: Value = serde_yaml::from_str(&text).unwrap();
        yaml["node"]["id"] = node.into();
        let mut b = Bootstrap {
            yaml,
            node: node.into(),
            args: Vec::new(),
            log_level: "info".into(),
        };
        b.point_at(xds);
        b.ephemeral_admin();
        b
    }

    /// The bootstrap of `deploy/envoy.yaml` (the ConfigMap of the in-cluster
    /// Envoy) rendered for loopback: isobar at `xds` instead of its Service
    /// name, the mTLS files from `certs` (`isobar certgen --output-dir`'s
    /// `client.crt`, `client.key`, `ca.crt`) instead of the Secret's mount,
    /// ephemeral admin and readiness ports; node and cluster from the
    /// command line, as the Deployment passes them.
    pub fn deployed(xds: SocketAddr, certs: &Path, node: &str) -> Self {
        let text = std::fs::read_to_string(deploy("envoy.yaml")).unwrap();
        let config_map = serde_yaml::Deserializer::from_str(&text)
            .map(|d| Value::deserialize(d).unwrap())
            .find(|d| d["kind"] == "ConfigMap")
            .expect("deploy/envoy.yaml has the bootstrap ConfigMap");
        let mut yaml: Value =
            serde_yaml::from_str(config_map["data"]["envoy.yaml"].as_str().unwrap()).unwrap();
        for l in yaml["static_resources"]["listeners"]
            .as_sequence_mut()
            .into_iter()
            .flatten()
        {
            l["address"]["socket_address"]["address"] = "127.0.0.1".into();
            l["address"]["socket_address"]["port_value"] = 0.into();
        }
        let tls =
            &mut xds_cluster(&mut yaml)["transport_socket"]["typed_config"]["common_tls_context"];
        let file = |name: &str| Value::from(certs.join(name).display().to_string());
        tls["tls_certificates"][0]["certificate_chain"]["filename"] = file("client.crt");
        tls["tls_certificates"][0]["private_key"]["filename"] = file("client.key");
        tls["validation_context"]["trusted_ca"]["filename"] = file("ca.crt");
        let mut b = Bootstrap {
            yaml,
            node: node.into(),
            args: vec![
                "--service-cluster".into(),
                "isobar".into(),
                "--service-node".into(),
                node.into(),
            ],
            log_level: "info".into(),
        };
        b.point_at(xds);
        b.ephemeral_admin();
        b
    }

    /// The ADS flavour this bootstrap asks for.
    pub fn ads(&self) -> Ads {
        match self.yaml["dynamic_resources"]["ads_config"]["api_type"].as_str() {
            Some("DELTA_GRPC") => Ads::Delta,
            Some("GRPC") => Ads::Sotw,
            other => panic!("api_type {other:?}"),
        }
    }

    pub fn with_ads(mut self, ads: Ads) -> Self {
        self.yaml["dynamic_resources"]["ads_config"]["api_type"] = ads.api_type().into();
        self
    }

    /// isobar at `addrs` (several: Envoy balances its ADS connection over them).
    pub fn with_xds(mut self, addrs: &[SocketAddr]) -> Self {
        let cluster = xds_cluster(&mut self.yaml);
        cluster["type"] = "STATIC".into();
        let endpoints: Vec<Value> = addrs
            .iter()
            .map(|a| {
                serde_yaml::to_value(
                    serde_json::json!({"endpoint": {"address": {"socket_address":
                    {"address": a.ip().to_string(), "port_value": a.port()}}}}),
                )
                .unwrap()
            })
            .collect();
        cluster["load_assignment"]["endpoints"] =
            serde_yaml::to_value(serde_json::json!([{"lb_endpoints": endpoints}])).unwrap();
        self
    }

    /// Adds a static listener `name` on an ephemeral loopback port serving
    /// the RouteConfiguration `route_config` over ADS: requests to it see
    /// exactly this Envoy's routes, whichever Envoy holds the shared
    /// Ingress ports (read its port with [`Envoy::listener_port`]).
    pub fn with_probe_listener(mut self, name: &str, route_config: &str) -> Self {
        let listener = serde_json::json!({
            "name": name,
            "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": name,
                    "rds": {"route_config_name": route_config,
                            "config_source": {"ads": {}, "resource_api_version": "V3"}},
                    "http_filters": [{"name": "envoy.filters.http.router", "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}]
                }
            }]}]
        });
        let listeners = &mut self.yaml["static_resources"]["listeners"];
        if !listeners.is_sequence() {
            *listeners = Value::Sequence(Vec::new());
        }
        listeners
            .as_sequence_mut()
            .unwrap()
            .push(serde_yaml::to_value(listener).unwrap());
        self
    }

    pub fn with_log_level(mut self, level: &str) -> Self {
        self.log_level = level.into();
        self
    }

    fn point_at(&mut self, xds: SocketAddr) {
        let sa = &mut xds_cluster(&mut self.yaml)["load_assignment"]["endpoints"][0]["lb_endpoints"]
            [0]["endpoint"]["address"]["socket_address"];
        sa["address"] = xds.ip().to_string().into();
        sa["port_value"] = xds.port().into();
    }

    fn ephemeral_admin(&mut self) {
        self.yaml["admin"]["address"]["socket_address"] =
            serde_yaml::to_value(serde_json::json!({"address": "127.0.0.1", "port_value": 0}))
                .unwrap();
    }
}

/// The static cluster Envoy reaches isobar through (the one ADS names).
fn xds_cluster(yaml: &mut Value) -> &mut Value {
    let name =
        yaml["dynamic_resources"]["ads_config"]["grpc_services"][0]["envoy_grpc"]["cluster_name"]
            .as_str()
            .expect("ADS over an envoy_grpc cluster")
            .to_string();
    yaml["static_resources"]["clusters"]
        .as_sequence_mut()
        .unwrap()
        .iter_mut()
        .find(|c| c["name"].as_str() == Some(name.as_str()))
        .expect("the ADS cluster is defined")
}

/// Exclusive use of the Ingress listener ports on this machine, held for a
/// test's whole run (a file lock: test binaries and benchmarks running at
/// the same time take turns).
pub struct Ports {
    _lock: std::fs::File,
}

impl Ports {
    pub async fn lock() -> Ports {
        let path = std::env::temp_dir().join("isobar-envoy-ingress-ports.lock");
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Other tests may hold it for a while: bounded generously.
        let locked = tokio::time::timeout(
            Duration::from_secs(1200),
            tokio::task::spawn_blocking(move || file.lock().map(|()| file)),
        )
        .await
        .expect("the Envoy port lock was held by others for 20 minutes")
        .unwrap()
        .unwrap_or_else(|e| panic!("locking {}: {e}", path.display()));
        for port in [HTTP_PORT, HTTPS_PORT] {
            // Bound without SO_REUSEPORT: fails if anything listens there.
            if let Err(e) = std::net::TcpListener::bind(("0.0.0.0", port)) {
                panic!(
                    "port {port} is taken by another process ({e}); the Envoy tests need it \
                     for the Ingress plugin's listeners"
                );
            }
        }
        Ports { _lock: locked }
    }
}

/// A running Envoy; killed (and reaped) on drop.
pub struct Envoy {
    child: Option<Child>,
    pub node: String,
    pub ads: Ads,
    pub admin: SocketAddr,
    dir: tempfile::TempDir,
}

impl Envoy {
    /// The binary, or why there is none (then the caller says SKIPPED).
    pub fn binary() -> Result<PathBuf, String> {
        super::venv::envoy()
    }

    /// Starts Envoy with `bootstrap` and waits for its admin endpoint.
    /// `_ports`: a test that starts Envoys holds the port lock.
    pub async fn start(_ports: &Ports, bootstrap: Bootstrap) -> Envoy {
        let binary = Self::binary().unwrap_or_else(|e| panic!("no Envoy: {e}"));
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("bootstrap.yaml");
        std::fs::write(&config, serde_yaml::to_string(&bootstrap.yaml).unwrap()).unwrap();
        let admin_file = dir.path().join("admin-address");
        let log = std::fs::File::create(dir.path().join("envoy.log")).unwrap();
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .arg("--admin-address-path")
            .arg(&admin_file)
            .args(["--disable-hot-restart", "--concurrency", "1", "-l"])
            .arg(&bootstrap.log_level)
            // Several Envoys on one machine: no shared-memory clash.
            .arg("--use-dynamic-base-id")
            .args(&bootstrap.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{}: {e}", binary.display()));
        let mut envoy = Envoy {
            child: Some(child),
            node: bootstrap.node.clone(),
            ads: bootstrap.ads(),
            admin: "127.0.0.1:0".parse().unwrap(),
            dir,
        };
        let deadline = Instant::now() + WAIT;
        let admin = loop {
            if let Some(a) = std::fs::read_to_string(&admin_file)
                .ok()
                .and_then(|s| s.trim().parse().ok())
            {
                break a;
            }
            if let Some(status) = envoy.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("Envoy {} exited ({status}):\n{}", envoy.node, envoy.log());
            }
            assert!(
                Instant::now() < deadline,
                "Envoy {} never opened its admin endpoint:\n{}",
                envoy.node,
                envoy.log()
            );
            tokio::time::sleep(POLL).await;
        };
        envoy.admin = admin;
        envoy
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// Envoy's log so far (its stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// The last `n` lines of the log, for failure messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Kills Envoy now (SIGKILL: a crash, not a drain).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// GET on the admin endpoint.
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// Stats whose name matches `filter` (a regular expression), as
    /// name -> value (counters and gauges as numbers, text readouts as text).
    pub async fn stats(&self, filter: &str) -> BTreeMap<String, String> {
        let (code, body) = self.get(&format!("/stats?filter={}", encode(filter))).await;
        assert_eq!(code, 200, "/stats: {body}");
        body.lines()
            .filter_map(|l| l.split_once(": "))
            .map(|(k, v)| (k.to_string(), v.trim().trim_matches('"').to_string()))
            .collect()
    }

    /// One counter or gauge (0 when Envoy has not created it yet).
    pub async fn stat(&self, name: &str) -> u64 {
        let stats = self.stats(&format!("^{}$", regex_escape(name))).await;
        stats.get(name).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    /// The sum of every counter matching `filter`.
    pub async fn stat_sum(&self, filter: &str) -> u64 {
        self.stats(filter)
            .await
            .values()
            .filter_map(|v| v.parse::<u64>().ok())
            .sum()
    }

    /// `/config_dump` (optionally one resource kind), as JSON.
    pub async fn config_dump(&self, resource: Option<&str>) -> Json {
        let path = match resource {
            Some(r) => format!("/config_dump?resource={r}"),
            None => "/config_dump".to_string(),
        };
        let (code, body) = self.get(&path).await;
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path} is not JSON ({e})"))
    }

    /// Waits until `cond` holds, re-checking through the admin endpoint;
    /// panics after [`WAIT`] naming `what`, with the tail of Envoy's log.
    pub async fn until(&mut self, what: &str, cond: impl AsyncFn(&Envoy) -> bool) {
        self.until_within(what, WAIT, cond).await
    }

    pub async fn until_within(
        &mut self,
        what: &str,
        limit: Duration,
        cond: impl AsyncFn(&Envoy) -> bool,
    ) {
        let deadline = Instant::now() + limit;
        loop {
            if cond(self).await {
                return;
            }
            assert!(
                self.running(),
                "Envoy {} exited while waiting for {what}:\n{}",
                self.node,
                self.log_tail(60)
            );
            assert!(
                Instant::now() < deadline,
                "Envoy {}: timed out waiting for {what}:\n{}",
                self.node,
                self.log_tail(60)
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for `/ready` to say LIVE: Envoy has its first listeners and
    /// clusters (its initial fetch over ADS is done).
    pub async fn ready(&mut self) {
        self.until("/ready to say LIVE", async |e| {
            let (code, body) = e.get("/ready").await;
            code == 200 && body.trim() == "LIVE"
        })
        .await
    }

    /// The port a listener is bound to (`/listeners`).
    pub async fn listener_port(&self, name: &str) -> Option<u16> {
        let (_, body) = self.get("/listeners?format=json").await;
        let doc: Json = serde_json::from_str(&body).ok()?;
        doc["listener_statuses"]
            .as_array()?
            .iter()
            .find(|l| l["name"] == name)?["local_address"]["socket_address"]["port_value"]
            .as_u64()
            .map(|p| p as u16)
    }

    /// The process's resident memory (VmRSS), in bytes.
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let kb: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        Some(kb * 1024)
    }

    /// The names of the dynamic listeners Envoy has active.
    pub async fn active_listeners(&self) -> Vec<String> {
        let dump = self.config_dump(Some("dynamic_listeners")).await;
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|l| l.get("active_state").is_some())
            .filter_map(|l| l["name"].as_str().map(str::to_string))
            .collect()
    }

    /// The route configurations Envoy holds, by name.
    pub async fn route_configs(&self) -> BTreeMap<String, Json> {
        let dump = self.config_dump(Some("dynamic_route_configs")).await;
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| {
                let rc = c["route_config"].clone();
                Some((rc["name"].as_str()?.to_string(), rc))
            })
            .collect()
    }

    /// How many updates Envoy rejected, over every xDS type: the
    /// `update_rejected` counters of LDS, CDS, RDS, EDS and SDS.
    pub async fn rejected(&self) -> u64 {
        self.stat_sum("update_rejected$").await
    }

    /// Whether Envoy's ADS stream is connected (`control_plane.connected_state`).
    pub async fn connected(&self) -> bool {
        self.stat("control_plane.connected_state").await == 1
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- Envoy {} log (tail) ----\n{}\n----",
                self.node,
                self.log_tail(80)
            );
        }
        self.kill();
    }
}

fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn regex_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
