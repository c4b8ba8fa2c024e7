//! Envoy as the client: 1, 4 and 10 Envoy processes on `isobar serve`'s
//! ADS server, at 1k and 10k Ingresses, over delta and SotW.
//!
//! Measured, per configuration:
//! * a host edit (one Ingress's host renamed in its manifest) until each
//!   Envoy routes the new host: end to end (file written to a request
//!   answered through that Envoy), split into isobar's part (written to
//!   snapshot published: file notification, 50 ms debounce, build) and the
//!   data plane's (published to routed: xDS push, Envoy's ingestion);
//! * an endpoint change (the Service's EndpointSlice moved to another
//!   backend) until each Envoy sends requests to the new backend, split
//!   the same way;
//! * isobar's CPU per change (its threads only: the controller, its own
//!   runtime's workers and blocking pool, the file watcher);
//! * Envoy's resident memory once it holds everything, and the cold start
//!   (Envoys started to every one routing the last host).
//!
//! "Routes" is seen through Envoy: each Envoy gets a static probe listener
//! on its own loopback port serving the `ingress_http` RouteConfiguration
//! over ADS, so requests reach exactly that Envoy (the Ingress listener's
//! port is shared by all of them). Backends are two local HTTP servers;
//! every Service's endpoints are on loopback.
//!
//! ```sh
//! cargo bench -p isobar-tests --bench envoy
//! ISOBAR_BENCH_INGRESSES=1000 ISOBAR_BENCH_ENVOYS=1,4 ISOBAR_BENCH_ADS=delta \
//!   ISOBAR_BENCH_ROUNDS=10 cargo bench -p isobar-tests --bench envoy
//! ```
//! Without an Envoy binary (see tests/envoy.rs) it says SKIPPED.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use isobar::serve::{Config, Server};
use isobar_tests::bench::{machine, percentile};
use isobar_tests::harness::backends::{Backend, Client};
use isobar_tests::harness::envoy::{Ads, Bootstrap, Envoy, Ports};
use isobar_tests::harness::venv;
use isobar_tests::{ingress, ingress_class, plugin_path, service, slice, target_dir};
use serde_json::{Value, json};

/// Bound of every wait.
const WAIT: Duration = Duration::from_secs(300);
/// Pace of the probes (requests through each Envoy) while waiting.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// Apps whose manifests the rounds edit live in a file each.
const EDITED_APPS: usize = 50;

fn list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn yaml(docs: &[Value]) -> String {
    docs.iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n")
}

fn atomic_write(path: &Path, text: &str) {
    let tmp = path.with_file_name(format!(
        ".{}.tmp",
        path.file_name().unwrap().to_str().unwrap()
    ));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// App `i`: a Service, its EndpointSlice on loopback `port`, and an
/// Ingress for `host` with three paths (as the other benchmarks' apps).
fn app(i: usize, host: &str, port: u16) -> Vec<Value> {
    let ns = format!("ns{}", i % 10);
    let svc = format!("svc{i}");
    vec![
        service(&ns, &svc, &[("http", 80, json!("http"))]),
        slice(&ns, &svc, "a", "http", port, &["127.0.0.1"]),
        ingress(
            &ns,
            &format!("ing{i}"),
            &[(
                host,
                &[
                    ("/", "Prefix", svc.as_str(), json!(80)),
                    ("/api", "Prefix", svc.as_str(), json!("http")),
                    ("/healthz", "Exact", svc.as_str(), json!(80)),
                ],
            )],
        ),
    ]
}

fn host(i: usize) -> String {
    format!("app{i}.example.com")
}

/// CPU time of this process's threads whose names say they are isobar's
/// (`schedstat`: nanoseconds on a CPU, finer than `stat`'s clock ticks).
fn isobar_cpu() -> Duration {
    let mut total = 0u64;
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        if !(comm.starts_with("isobar") || comm.starts_with("notify")) {
            continue;
        }
        let on_cpu = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
            .unwrap_or(0);
        total += on_cpu;
    }
    Duration::from_nanos(total)
}

struct Stats {
    /// Per change and Envoy: written -> routed through that Envoy.
    end_to_end: Vec<Duration>,
    /// Per change: written -> isobar published the snapshot.
    isobar: Vec<Duration>,
    /// Per change and Envoy: published -> routed through that Envoy.
    data_plane: Vec<Duration>,
    /// Per change: written -> every Envoy routes it.
    all: Vec<Duration>,
    cpu: Duration,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            end_to_end: Vec::new(),
            isobar: Vec::new(),
            data_plane: Vec::new(),
            all: Vec::new(),
            cpu: Duration::ZERO,
        }
    }

    fn changes(&self) -> usize {
        self.all.len()
    }
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn ms1(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn pcts(v: &[Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut v = v.to_vec();
    v.sort();
    format!(
        "{}/{}/{}",
        ms(percentile(&v, 0.5)),
        ms(percentile(&v, 0.9)),
        ms(percentile(&v, 0.99))
    )
}

/// Waits until every probe answers as `want` says, each from its own
/// Envoy; returns when each first did.
async fn until_all(
    probes: &[u16],
    host: &str,
    want: impl Fn(&isobar_tests::harness::backends::Reply) -> bool + Clone + Send + 'static,
) -> Vec<Instant> {
    let tasks: Vec<_> = probes
        .iter()
        .map(|&port| {
            let (host, want) = (host.to_string(), want.clone());
            tokio::spawn(async move {
                let client = Client::new();
                let deadline = Instant::now() + WAIT;
                loop {
                    if let Ok(r) = client.get_at(port, &host, "/").await
                        && want(&r)
                    {
                        return Instant::now();
                    }
                    assert!(
                        Instant::now() < deadline,
                        "probe {port}: {host} never answered as wanted"
                    );
                    tokio::time::sleep(PROBE_EVERY).await;
                }
            })
        })
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

struct Row {
    ingresses: usize,
    ads: Ads,
    envoys: usize,
    cold_start: Duration,
    rss: Vec<u64>,
    route: Stats,
    endpoint: Stats,
}

#[allow(clippy::too_many_arguments)]
fn run_fleet(
    bench_rt: &tokio::runtime::Runtime,
    ports: &Ports,
    server: &Server,
    manifests: &Path,
    backends: &(Backend, Backend),
    n: usize,
    ads: Ads,
    fleet: usize,
    rounds: usize,
    generation: &mut usize,
) -> Row {
    let xds = server.xds_addr();
    let (stable, moved) = backends;
    bench_rt.block_on(async {
        let started = Instant::now();
        let mut envoys = Vec::new();
        for k in 0..fleet {
            let bootstrap = Bootstrap::local(xds, &format!("bench-{k}"))
                .with_ads(ads)
                .with_log_level("warning")
                .with_probe_listener("probe", "ingress_http");
            envoys.push(Envoy::start(ports, bootstrap).await);
        }
        let mut probes = Vec::new();
        for e in &mut envoys {
            e.until_within("LIVE", WAIT, async |e| {
                let (code, body) = e.get("/ready").await;
                code == 200 && body.trim() == "LIVE"
            })
            .await;
            probes.push(e.listener_port("probe").await.expect("the probe listener"));
        }
        let last = host(n - 1);
        until_all(&probes, &last, |r| r.status == 200).await;
        let cold_start = started.elapsed();
        let rss: Vec<u64> = envoys.iter().filter_map(|e| e.rss()).collect();

        let status = server.report().clone();
        let mut route = Stats::new();
        let mut endpoint = Stats::new();
        for round in 0..rounds {
            let i = round % EDITED_APPS;
            let file = manifests.join(format!("app-{i}.yaml"));
            *generation += 1;
            let new_host = format!("app{i}-g{generation}.example.com");

            // A host edit.
            let version = status.snapshot().version;
            let cpu = isobar_cpu();
            let written = Instant::now();
            atomic_write(&file, &yaml(&app(i, &new_host, stable.addr.port())));
            let served = until_all(&probes, &new_host, |r| r.status == 200).await;
            record(&mut route, &status, version, written, &served, cpu);

            // An endpoint change: the Service's pods moved.
            let version = status.snapshot().version;
            let cpu = isobar_cpu();
            let written = Instant::now();
            atomic_write(&file, &yaml(&app(i, &new_host, moved.addr.port())));
            let served = until_all(&probes, &new_host, |r| {
                r.backend().as_deref() == Some("moved")
            })
            .await;
            record(&mut endpoint, &status, version, written, &served, cpu);
            // Back where it was, for the next round's host edit.
            atomic_write(&file, &yaml(&app(i, &host(i), stable.addr.port())));
            until_all(&probes, &host(i), |r| {
                r.backend().as_deref() == Some("stable")
            })
            .await;
        }
        for e in &mut envoys {
            assert_eq!(e.rejected().await, 0, "Envoy {} rejected an update", e.node);
        }
        Row {
            ingresses: n,
            ads,
            envoys: fleet,
            cold_start,
            rss,
            route,
            endpoint,
        }
    })
}

fn record(
    stats: &mut Stats,
    status: &isobar::report::Report,
    before: u64,
    written: Instant,
    served: &[Instant],
    cpu_before: Duration,
) {
    stats.cpu += isobar_cpu().saturating_sub(cpu_before);
    let version = status.snapshot().version;
    assert!(version > before, "no new snapshot for the change");
    let published = status.published(version).map(|p| p.at);
    for s in served {
        stats.end_to_end.push(s.duration_since(written));
        if let Some(p) = published {
            stats.data_plane.push(s.saturating_duration_since(p));
        }
    }
    if let Some(p) = published {
        stats.isobar.push(p.saturating_duration_since(written));
    }
    stats
        .all
        .push(served.iter().max().unwrap().duration_since(written));
}

fn main() {
    machine();
    let envoy = match venv::envoy() {
        Ok(path) => path,
        Err(why) => {
            venv::skipped("the Envoy benchmark", &format!("no Envoy binary: {why}"));
            return;
        }
    };
    let version = std::process::Command::new(&envoy)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!("envoy: {version}");
    let sizes: Vec<usize> = list("ISOBAR_BENCH_INGRESSES", "1000,10000")
        .iter()
        .map(|s| s.parse().expect("ISOBAR_BENCH_INGRESSES: numbers"))
        .collect();
    let fleets: Vec<usize> = list("ISOBAR_BENCH_ENVOYS", "1,4,10")
        .iter()
        .map(|s| s.parse().expect("ISOBAR_BENCH_ENVOYS: numbers"))
        .collect();
    let flavours: Vec<Ads> = list("ISOBAR_BENCH_ADS", "delta,sotw")
        .iter()
        .map(|s| match s.as_str() {
            "delta" => Ads::Delta,
            "sotw" => Ads::Sotw,
            other => panic!("ISOBAR_BENCH_ADS: delta or sotw, not {other}"),
        })
        .collect();
    let rounds: usize = std::env::var("ISOBAR_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    println!(
        "Ingresses {sizes:?}, Envoys {fleets:?}, ADS {flavours:?}, {rounds} host edits and {rounds} endpoint changes each"
    );

    // isobar on a runtime of its own (its threads are named, so its CPU is
    // told apart); the Envoys' probes and backends on another.
    let isobar_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("isobar-rt")
        .enable_all()
        .build()
        .unwrap();
    let bench_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench")
        .enable_all()
        .build()
        .unwrap();
    let ports = bench_rt.block_on(Ports::lock());
    let backends =
        bench_rt.block_on(async { (Backend::http("stable").await, Backend::http("moved").await) });

    let mut rows = Vec::new();
    let mut generation = 0;
    for &n in &sizes {
        assert!(n > EDITED_APPS, "at least {EDITED_APPS} Ingresses");
        let dir = tempfile::tempdir().unwrap();
        let port = backends.0.addr.port();
        std::fs::write(
            dir.path().join("00-class.yaml"),
            yaml(&[ingress_class("isobar", true)]),
        )
        .unwrap();
        for i in 0..EDITED_APPS {
            std::fs::write(
                dir.path().join(format!("app-{i}.yaml")),
                yaml(&app(i, &host(i), port)),
            )
            .unwrap();
        }
        for (c, chunk) in (EDITED_APPS..n)
            .collect::<Vec<_>>()
            .chunks(1000)
            .enumerate()
        {
            let docs: Vec<Value> = chunk.iter().flat_map(|&i| app(i, &host(i), port)).collect();
            std::fs::write(dir.path().join(format!("bulk-{c:03}.yaml")), yaml(&docs)).unwrap();
        }
        let plugin_dir = tempfile::tempdir().unwrap();
        let plugin = plugin_dir.path().join("plugin.wasm");
        std::fs::copy(plugin_path("isobar-plugin-ingress"), &plugin).unwrap();
        let mut config = Config::new(dir.path(), &plugin);
        config.xds_listen = "127.0.0.1:0".parse().unwrap();
        config.admin_listen = "127.0.0.1:0".parse().unwrap();
        config.cache_dir = Some(target_dir().join("isobar-test-cache"));
        let started = Instant::now();
        let server = isobar_rt.block_on(async {
            let server = Server::start(config).await.expect("serve starts");
            assert!(server.ready(WAIT).await, "no first snapshot");
            server
        });
        println!(
            "\n{n} Ingresses: isobar's first snapshot in {:?}",
            started.elapsed()
        );
        for &ads in &flavours {
            for &fleet in &fleets {
                let row = run_fleet(
                    &bench_rt,
                    &ports,
                    &server,
                    dir.path(),
                    &backends,
                    n,
                    ads,
                    fleet,
                    rounds,
                    &mut generation,
                );
                print_row(&row);
                rows.push(row);
            }
        }
        isobar_rt.block_on(server.shutdown()).unwrap();
        drop(plugin_dir);
    }
    summary(&rows);
}

fn print_row(r: &Row) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let rss_mean = r.rss.iter().sum::<u64>() as f64 / r.rss.len().max(1) as f64;
    let rss_max = r.rss.iter().copied().max().unwrap_or(0);
    println!(
        "{:>6} Ingresses {:>5} x{:<2} | host edit ms p50/p90/p99: end to end {} (all Envoys {}), isobar {}, data plane {} | \
         endpoint change: end to end {} (all {}), isobar {}, data plane {} | isobar CPU per change: host edit {} ms, endpoint {} ms | \
         Envoy RSS mean {:.0} MiB, max {:.0} MiB | cold start {} ms",
        r.ingresses,
        format!("{:?}", r.ads),
        r.envoys,
        pcts(&r.route.end_to_end),
        pcts(&r.route.all),
        pcts(&r.route.isobar),
        pcts(&r.route.data_plane),
        pcts(&r.endpoint.end_to_end),
        pcts(&r.endpoint.all),
        pcts(&r.endpoint.isobar),
        pcts(&r.endpoint.data_plane),
        ms1(r.route.cpu / r.route.changes().max(1) as u32),
        ms1(r.endpoint.cpu / r.endpoint.changes().max(1) as u32),
        rss_mean / (1 << 20) as f64,
        mib(rss_max),
        ms(r.cold_start),
    );
}

fn summary(rows: &[Row]) {
    println!("\nside by side (p50 / p99 in ms; ratios to the same size's 1-Envoy delta row):");
    println!(
        "{:>9} {:>5} {:>6} | {:>14} {:>8} | {:>14} {:>8} | {:>10} {:>10} | {:>9}",
        "Ingresses",
        "ADS",
        "Envoys",
        "host edit",
        "ratio",
        "endpoint",
        "ratio",
        "CPU/edit",
        "CPU/endp.",
        "RSS MiB"
    );
    let p = |v: &[Duration], q: f64| {
        let mut v = v.to_vec();
        v.sort();
        if v.is_empty() {
            Duration::ZERO
        } else {
            percentile(&v, q)
        }
    };
    let base: BTreeMap<usize, (Duration, Duration)> = rows
        .iter()
        .filter(|r| r.ads == Ads::Delta && r.envoys == 1)
        .map(|r| {
            (
                r.ingresses,
                (p(&r.route.end_to_end, 0.5), p(&r.endpoint.end_to_end, 0.5)),
            )
        })
        .collect();
    for r in rows {
        let (route50, endp50) = (p(&r.route.end_to_end, 0.5), p(&r.endpoint.end_to_end, 0.5));
        let ratio = |x: Duration, b: Option<Duration>| {
            b.filter(|b| !b.is_zero())
                .map(|b| format!("{:.2}x", x.as_secs_f64() / b.as_secs_f64()))
                .unwrap_or_else(|| "-".into())
        };
        let b = base.get(&r.ingresses);
        println!(
            "{:>9} {:>5} {:>6} | {:>6} / {:>5} {:>8} | {:>6} / {:>5} {:>8} | {:>10} {:>10} | {:>9.0}",
            r.ingresses,
            format!("{:?}", r.ads),
            r.envoys,
            ms(route50),
            ms(p(&r.route.end_to_end, 0.99)),
            ratio(route50, b.map(|b| b.0)),
            ms(endp50),
            ms(p(&r.endpoint.end_to_end, 0.99)),
            ratio(endp50, b.map(|b| b.1)),
            ms1(r.route.cpu / r.route.changes().max(1) as u32),
            ms1(r.endpoint.cpu / r.endpoint.changes().max(1) as u32),
            r.rss.iter().copied().max().unwrap_or(0) as f64 / (1 << 20) as f64,
        );
    }
    println!(
        "\ngoals (issue 16): at 10k Ingresses with 4 Envoys, change to Envoy serving p99 <= 100 ms; endpoint change <= 20 ms"
    );
    for r in rows
        .iter()
        .filter(|r| r.ingresses == 10_000 && r.envoys == 4)
    {
        println!(
            "  {:?}: host edit p99 {} ms (every Envoy: {} ms; data plane alone {} ms) | endpoint change p99 {} ms (data plane alone {} ms)",
            r.ads,
            ms(p(&r.route.end_to_end, 0.99)),
            ms(p(&r.route.all, 0.99)),
            ms(p(&r.route.data_plane, 0.99)),
            ms(p(&r.endpoint.end_to_end, 0.99)),
            ms(p(&r.endpoint.data_plane, 0.99)),
        );
    }
}
