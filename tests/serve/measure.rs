//! Measurement (not a pass/fail test).

use super::*;

// ---- measurement (not a pass/fail test) -------------------------------------------

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Change-to-ACK, endpoint-change-to-ACK, cold start and hot swap through
/// `isobar serve`, with Envoy-like clients that ACK everything. Each Ingress
/// has `/` (web; the first one's alternates with api, the change measured)
/// and `/api` (api); the faults plugin swapped in at the end keeps `/` only.
///
/// ```text
/// ISOBAR_MEASURE_INGRESSES=10000 ISOBAR_MEASURE_STREAMS=100 \
///   cargo test -p isobar-tests --test serve -- --ignored measure --nocapture
/// ```
///
/// Times run from the file write (so they include the watcher and the
/// debounce, `ISOBAR_MEASURE_QUIET_MS`, default 10) to the moment every
/// stream has ACKed the new version of the type that changed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn measure() {
    let ingresses = env_or("ISOBAR_MEASURE_INGRESSES", 1000);
    let streams = env_or("ISOBAR_MEASURE_STREAMS", 1);
    let rounds = env_or("ISOBAR_MEASURE_ROUNDS", 20);
    let quiet = Duration::from_millis(env_or("ISOBAR_MEASURE_QUIET_MS", 10) as u64);
    let per_file = 100;

    let manifests = tempfile::tempdir().unwrap();
    std::fs::write(manifests.path().join("00-backends.yaml"), backends()).unwrap();
    let ingress_file = |file: usize, first_backend: &str| {
        let docs: Vec<Value> = (file * per_file..((file + 1) * per_file).min(ingresses))
            .map(|i| {
                let backend = if i == 0 { first_backend } else { "web" };
                ingress(
                    "default",
                    &format!("ing-{i}"),
                    &[(
                        &format!("h{i}.example.com"),
                        &[
                            ("/", "Prefix", backend, json!(80)),
                            ("/api", "Prefix", "api", json!(80)),
                        ],
                    )],
                )
            })
            .collect();
        yaml(&docs)
    };
    for file in 0..ingresses.div_ceil(per_file) {
        std::fs::write(
            manifests.path().join(format!("20-ing-{file:04}.yaml")),
            ingress_file(file, "web"),
        )
        .unwrap();
    }
    let plugin_dir = tempfile::tempdir().unwrap();
    let plugin = plugin_dir.path().join("plugin.wasm");
    std::fs::copy(plugin_path("isobar-plugin-ingress"), &plugin).unwrap();
    let mut config = Config::new(manifests.path(), &plugin);
    config.xds_listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.cache_dir = Some(target_dir().join("isobar-test-cache"));
    config.debounce.quiet = quiet;
    let started = Instant::now();
    let server = Server::start(config).await.unwrap();
    assert!(server.ready(Duration::from_secs(300)).await);
    let cold = started.elapsed();
    let status = server.report().clone();

    // Envoy-like clients on their own tasks: subscribe, ACK everything.
    for i in 0..streams {
        let mut c = Sotw::open_envoy(server.xds_addr(), &format!("m-{i}")).await;
        tokio::spawn(async move {
            // Until the server goes away at the end.
            while let Ok(Some(r)) = c.rx.message().await {
                let names = c
                    .subscriptions
                    .get(&r.type_url)
                    .cloned()
                    .unwrap_or_default();
                let ack = DiscoveryRequest {
                    type_url: r.type_url,
                    resource_names: names,
                    version_info: r.version_info,
                    response_nonce: r.nonce,
                    ..Default::default()
                };
                if c.tx
                    .send(
                        DiscoveryRequest {
                            node: node(&c.node),
                            ..ack
                        }
                        .into(),
                    )
                    .await
                    .is_err()
                {
                    break;
                }
            }
        });
    }
    let all_acked = |t: &'static str| {
        move |s: &isobar::report::Report| {
            let v = s.snapshot().version.to_string();
            let st = s.streams();
            st.len() == streams && st.iter().all(|x| x.acked.get(t) == Some(&v))
        }
    };
    assert!(
        status
            .wait_until(Duration::from_secs(300), all_acked(RDS))
            .await,
        "initial sync"
    );

    let mut route_changes = Vec::new();
    for r in 0..rounds {
        let before = status.snapshot().version;
        let t0 = Instant::now();
        atomic_write(
            &manifests.path().join("20-ing-0000.yaml"),
            ingress_file(0, if r % 2 == 0 { "api" } else { "web" }).as_bytes(),
        );
        let done = status
            .wait_until(WAIT, move |s| {
                s.snapshot().version > before && all_acked(RDS)(s)
            })
            .await;
        assert!(done, "round {r} did not complete");
        route_changes.push(t0.elapsed());
    }
    let mut endpoint_changes = Vec::new();
    for r in 0..rounds {
        let before = status.snapshot().version;
        let addr = format!("10.0.1.{}", r + 1);
        let text = backends().replace("10.0.0.1", &addr);
        let t0 = Instant::now();
        atomic_write(&manifests.path().join("00-backends.yaml"), text.as_bytes());
        let done = status
            .wait_until(WAIT, move |s| {
                s.snapshot().version > before && all_acked(EDS)(s)
            })
            .await;
        assert!(done, "endpoint round {r} did not complete");
        endpoint_changes.push(t0.elapsed());
    }
    let before = status.snapshot().version;
    let t0 = Instant::now();
    atomic_write(
        &plugin,
        &std::fs::read(plugin_path("isobar-plugin-faults")).unwrap(),
    );
    let swapped = status
        .wait_until(Duration::from_secs(300), move |s| {
            s.plugin().is_some_and(|p| p.name == "faults")
                && s.snapshot().version > before
                && all_acked(RDS)(s)
        })
        .await;
    assert!(swapped, "the swap did not complete");
    let swap = t0.elapsed();

    route_changes.sort();
    endpoint_changes.sort();
    let show = |v: &[Duration]| {
        format!(
            "p50 {:?}  p90 {:?}  p99 {:?}  max {:?}",
            percentile(v, 0.5),
            percentile(v, 0.9),
            percentile(v, 0.99),
            v[v.len() - 1]
        )
    };
    eprintln!(
        "== isobar serve: {ingresses} Ingresses, {streams} SotW streams, {rounds} rounds, debounce quiet {quiet:?}"
    );
    eprintln!("cold start to ready:           {cold:?}");
    eprintln!("Ingress change -> all ACKed:   {}", show(&route_changes));
    eprintln!("endpoint change -> all ACKed:  {}", show(&endpoint_changes));
    eprintln!("plugin swap -> all ACKed:      {swap:?}");
    eprintln!("streams still open:            {}", server.active_streams());
    let metrics = status.metrics.encode();
    let stage = |name: &str| {
        let value = |suffix: &str| -> f64 {
            metrics
                .lines()
                .filter(|l| l.starts_with(&format!("{name}_{suffix}")))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        let (sum, count) = (value("sum"), value("count"));
        format!(
            "{:.1} ms mean over {count}",
            if count > 0.0 {
                sum / count * 1000.0
            } else {
                0.0
            }
        )
    };
    eprintln!(
        "stage change->snapshot:        {}",
        stage("isobar_change_to_snapshot_seconds")
    );
    eprintln!(
        "stage snapshot->push:          {}",
        stage("isobar_snapshot_to_push_seconds")
    );
    eprintln!(
        "stage snapshot->ACK:           {}",
        stage("isobar_snapshot_to_ack_seconds")
    );
    eprintln!(
        "plugin call:                   {}",
        stage("isobar_plugin_call_duration_seconds")
    );
    assert_eq!(server.active_streams(), streams);
}
