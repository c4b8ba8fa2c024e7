//! The kube source and status write-back, measured on the whole host
//! (`isobar serve` in-process with the real Ingress plugin):
//!
//! * memory: N Ingresses, N Services and N EndpointSlices (with the
//!   managedFields an API server sends) fed through the watch event
//!   interface; the process's RSS once the first snapshot is served, and
//!   what the objects added to it;
//! * status write volume: a churn of object changes per second against a
//!   mocked API server; writes per second, and how many evaluations were
//!   skipped because the object already showed the desired status.
//!
//! `ISOBAR_BENCH_N` (default 10000), `ISOBAR_BENCH_CHURN_SECS` (10),
//! `ISOBAR_BENCH_CHURN_RATE` (100 changes/s).

use std::sync::Arc;
use std::time::{Duration, Instant};

use isobar::serve::{ClusterConnection, Config, Server, Writeback};
use isobar::testing::fake_api::FakeApi;
use isobar::writeback::{IngressAddress, WritebackConfig};
use isobar_tests::ads::WAIT;
use isobar_tests::bench::{app, machine};
use isobar_tests::cluster::*;
use isobar_tests::*;
use kube::runtime::watcher::Event as WatchEvent;
use serde_json::{Value, json};
use tokio::sync::watch;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident and peak memory of this process, in MiB.
fn rss() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// What an API server would send: uid, resourceVersion and the
/// managedFields every object carries (which the source drops).
fn from_server(v: Value, rv: u64) -> Value {
    let mut v = stored(v, rv as u32);
    v["metadata"]["managedFields"] = json!([{
        "manager": "kubectl-client-side-apply", "operation": "Update",
        "apiVersion": v["apiVersion"], "time": "2026-01-01T00:00:00Z",
        "fieldsType": "FieldsV1",
        "fieldsV1": {"f:metadata": {"f:annotations": {".": {}, "f:kubectl.kubernetes.io/last-applied-configuration": {}}},
                     "f:spec": {"f:rules": {}, "f:ports": {}, "f:endpoints": {}}},
    }]);
    v
}

struct Universe {
    services: Vec<Value>,
    slices: Vec<Value>,
    ingresses: Vec<Value>,
}

fn universe(n: usize) -> Universe {
    let mut u = Universe {
        services: Vec::with_capacity(n),
        slices: Vec::with_capacity(n),
        ingresses: Vec::with_capacity(n),
    };
    for i in 0..n {
        let [svc, slice, ing] = app(i);
        u.services.push(from_server(svc, 1));
        u.slices.push(from_server(slice, 1));
        u.ingresses.push(from_server(ing, 1));
    }
    u
}

async fn start(script: Arc<Script>, writeback: Option<Writeback>) -> Server {
    let mut config = Config::cluster(
        ClusterConnection {
            watches: script,
            writeback,
            client: None,
        },
        plugin_path("isobar-plugin-ingress"),
    );
    config.xds_listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.cache_dir = Some(target_dir().join("isobar-test-cache"));
    Server::start(config).await.expect("serve starts")
}

fn list_all(script: &Script, u: &Universe) {
    script.list(
        &kind_of("networking.k8s.io/v1", "IngressClass"),
        &[stored(ingress_class("isobar", true), 1)],
    );
    script.list(&kind_of("v1", "Secret"), &[]);
    script.list(&kind_of("v1", "Service"), &u.services);
    script.list(&kind_of("discovery.k8s.io/v1", "EndpointSlice"), &u.slices);
    script.list(&kind_of("networking.k8s.io/v1", "Ingress"), &u.ingresses);
}

/// Gives freed heap back to the OS, so RSS shows what is live (glibc keeps
/// freed memory otherwise: the bench's own copies would count).
fn trim() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: malloc_trim only releases free heap pages.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Runs in a child process of its own, so nothing else is in its RSS.
async fn memory_child(n: usize) {
    trim();
    let (before, _) = rss();
    let script = Arc::new(Script::default());
    let server = start(script.clone(), None).await;
    trim();
    let (engine, _) = rss();
    let started = Instant::now();
    // Objects are made one at a time and handed over: the bench holds none.
    script.list(
        &kind_of("networking.k8s.io/v1", "IngressClass"),
        &[stored(ingress_class("isobar", true), 1)],
    );
    script.list(&kind_of("v1", "Secret"), &[]);
    for (which, kind) in [
        (0, kind_of("v1", "Service")),
        (1, kind_of("discovery.k8s.io/v1", "EndpointSlice")),
        (2, kind_of("networking.k8s.io/v1", "Ingress")),
    ] {
        script.feed(&kind, WatchEvent::Init);
        for i in 0..n {
            let o = from_server(app(i)[which].clone(), 1);
            script.feed(&kind, WatchEvent::InitApply(dynamic(&o)));
        }
        script.feed(&kind, WatchEvent::InitDone);
    }
    assert!(server.ready(Duration::from_secs(600)).await, "ready");
    let synced = started.elapsed();
    let (_, peak) = rss();
    trim();
    let (after, _) = rss();
    let (pool, rest) = largest_mapping();
    let snapshot = server.report().snapshot();
    let bytes: usize = isobar::xds::type_url::PUSH_ORDER
        .iter()
        .filter_map(|t| snapshot.of_type(t))
        .flat_map(|r| r.values())
        .map(|r| r.body.len())
        .sum();
    println!(
        "memory, {n} Ingresses + {n} Services + {n} EndpointSlices through the watch interface (a process of its own):"
    );
    println!(
        "  host RSS with every object cached and the snapshot served: {after:.0} MiB (peak {peak:.0} MiB)  [goal <= 200 MiB]"
    );
    println!(
        "  empty process {before:.0} MiB; host started (engine, compiled plugin, ports) {engine:.0} MiB; the objects and everything built from them {:.0} MiB ({:.1} KiB per Ingress+Service+slice)",
        after - engine,
        (after - engine) * 1024.0 / n as f64
    );
    println!(
        "  of which the Wasm instance pool's reservation holds {pool:.0} MiB resident, the heap and the rest {rest:.0} MiB"
    );
    println!(
        "  the snapshot's encoded resources: {:.0} MiB in {} resources; lists to ready: {:.2} s",
        bytes as f64 / (1024.0 * 1024.0),
        snapshot.len(),
        synced.as_secs_f64()
    );
    server.shutdown().await.unwrap();
}

/// The resident MiB of the largest mapping (the Wasm instance pool's
/// reservation is one) and of everything else.
fn largest_mapping() -> (f64, f64) {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut sizes: Vec<(u64, u64)> = Vec::new(); // (virtual size kB, rss kB)
    for line in smaps.lines() {
        if line.starts_with("Size:") {
            let kb = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            sizes.push((kb, 0));
        } else if line.starts_with("Rss:") {
            let kb = line
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if let Some(last) = sizes.last_mut() {
                last.1 = kb;
            }
        }
    }
    let total: u64 = sizes.iter().map(|s| s.1).sum();
    let pool = sizes.iter().max_by_key(|s| s.0).map(|s| s.1).unwrap_or(0);
    (pool as f64 / 1024.0, (total - pool) as f64 / 1024.0)
}

fn memory(n: usize) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--memory-child", &n.to_string()])
        .status()
        .expect("running the memory child");
    assert!(out.success(), "memory child failed");
}

/// (status patches, other requests: Events) the fake API server has seen.
fn counts(api: &FakeApi) -> (u64, u64) {
    let seen = api.requests();
    let patches = seen.iter().filter(|s| s.method == "PATCH").count() as u64;
    (patches, seen.len() as u64 - patches)
}

fn metric(server: &Server, result: &str) -> u64 {
    server
        .report()
        .metrics
        .encode()
        .lines()
        .filter(|l| {
            l.starts_with("isobar_status_writes_total{")
                && l.contains(&format!("result=\"{result}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

async fn churn(n: usize, secs: usize, rate: usize) {
    let (api, client) = FakeApi::start([]);
    let script = Arc::new(Script::default());
    let (_leader_tx, leader) = watch::channel(true);
    let server = start(
        script.clone(),
        Some(Writeback {
            client,
            config: WritebackConfig {
                ingress_address: IngressAddress::Fixed(vec!["192.0.2.1".into()]),
                ..WritebackConfig::default()
            },
            leader: leader.into(),
        }),
    )
    .await;
    let mut u = universe(n);
    list_all(&script, &u);
    assert!(server.ready(Duration::from_secs(600)).await);
    // The first pass writes every Ingress once (rate-limited).
    let first = Instant::now();
    while counts(&api).0 < n as u64 {
        assert!(
            first.elapsed() < Duration::from_secs(3600),
            "initial writes"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let initial = first.elapsed();
    let (p0, e0, s0) = (counts(&api).0, counts(&api).1, metric(&server, "unchanged"));
    // Churn: each tick changes one Ingress. Every 10th change points it at
    // a Service that does not exist (a diagnostic: an Event), the next
    // puts it back; the rest change a path (status unchanged).
    let started = Instant::now();
    let total = secs * rate;
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate as f64));
    for c in 0..total {
        tick.tick().await;
        let i = (c * 7919) % n;
        let mut ing = u.ingresses[i].clone();
        // The API server keeps the status the host wrote; a spec change
        // comes with it.
        ing["status"] = json!({"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}});
        let rv = ing["metadata"]["resourceVersion"]
            .as_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            + 1;
        ing["metadata"]["resourceVersion"] = json!(rv.to_string());
        if c % 10 == 0 {
            ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] =
                json!("missing");
        } else {
            ing["spec"]["rules"][0]["http"]["paths"][1]["path"] = json!(format!("/v{c}"));
        }
        script.apply(&ing);
        u.ingresses[i] = ing;
    }
    // Let the last window's pass finish.
    let settle = Instant::now();
    let mut last = (0, 0, 0);
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = (counts(&api).0, counts(&api).1, metric(&server, "unchanged"));
        if now == last || settle.elapsed() > WAIT {
            break;
        }
        last = now;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (patches, events) = counts(&api);
    let writes = patches - p0;
    let published = events - e0;
    let skipped = metric(&server, "unchanged") - s0;
    println!(
        "status write-back, {n} Ingresses, churn of {rate} changes/s for {secs} s ({total} changes):"
    );
    println!(
        "  initial status for {n} Ingresses: {:.2} s ({:.0} writes/s, the token bucket's rate)",
        initial.as_secs_f64(),
        n as f64 / initial.as_secs_f64()
    );
    println!(
        "  during the churn: {writes} status writes ({:.1}/s), {skipped} evaluations skipped as unchanged ({:.1}/s), {published} Events ({:.1}/s)",
        writes as f64 / elapsed,
        skipped as f64 / elapsed,
        published as f64 / elapsed
    );
    server.shutdown().await.unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if let Some(i) = args.iter().position(|a| a == "--memory-child") {
        rt.block_on(memory_child(args[i + 1].parse().unwrap()));
        return;
    }
    machine();
    let n = env_or("ISOBAR_BENCH_N", 10_000);
    memory(n);
    rt.block_on(churn(
        env_or("ISOBAR_BENCH_CHURN_N", 1000),
        env_or("ISOBAR_BENCH_CHURN_SECS", 10),
        env_or("ISOBAR_BENCH_CHURN_RATE", 100),
    ));
}
