//! Reconciler and per-language benchmarks, side by side in one run:
//!
//! 1. per call (fresh instance + a trivial call, `describe()`) and compile
//!    time (uncached, from the on-disk cache, from the engine's memory) of
//!    the Rust, Python and JavaScript components;
//! 2. reconcile throughput: N Memcached objects created at once, time until
//!    every one has its Deployment and status, Rust and Python operators.
//!
//! `cargo bench -p isobar-tests --bench reconcile` (ISOBAR_BENCH_N sets N,
//! default 10000). Components missing from the target directory are
//! reported as such and skipped.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use isobar::plugin::{Limits, Runtime};
use isobar::reconcile::MemoryApi;
use isobar_tests::bench::{machine, percentile};
use isobar_tests::operator::Operator;
use isobar_tests::*;
use serde_json::json;

fn wasm(file: &str) -> PathBuf {
    target_dir()
        .join("wasm32-wasip2")
        .join("release")
        .join(file)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

#[derive(Clone, Copy)]
enum World {
    Translator,
    Policy,
    Reconciler,
}

struct Subject {
    label: &'static str,
    file: &'static str,
    world: World,
}

const SUBJECTS: [Subject; 5] = [
    Subject {
        label: "Rust translator (ingress)",
        file: "isobar_plugin_ingress.wasm",
        world: World::Translator,
    },
    Subject {
        label: "Rust reconciler (memcached)",
        file: "isobar_plugin_memcached.wasm",
        world: World::Reconciler,
    },
    Subject {
        label: "Python reconciler (memcached, componentize-py)",
        file: "isobar_plugin_memcached_py.wasm",
        world: World::Reconciler,
    },
    Subject {
        label: "JavaScript policy (canary-js, componentize-js)",
        file: "isobar_plugin_canary_js.wasm",
        world: World::Policy,
    },
    Subject {
        label: "Python policy (headers-py, componentize-py)",
        file: "isobar_plugin_headers_py.wasm",
        world: World::Policy,
    },
];

/// Loads (compiling unless cached) and returns a closure making one call.
fn load(rt: &Runtime, bytes: &[u8], world: World) -> Box<dyn Fn()> {
    match world {
        World::Translator => {
            let p = rt.load(bytes, "bench").expect("load");
            Box::new(move || {
                p.describe().expect("describe");
            })
        }
        World::Policy => {
            let p = rt
                .load_policy(bytes, "bench", Default::default(), &Default::default())
                .expect("load");
            Box::new(move || {
                p.describe().expect("describe");
            })
        }
        World::Reconciler => {
            let p = rt.load_reconciler(bytes, "bench").expect("load");
            Box::new(move || {
                p.describe().expect("describe");
            })
        }
    }
}

fn per_call_and_compile() {
    println!("\n== per call (fresh instance + describe()) and compile time, per language");
    let mut rust_call = None;
    for s in &SUBJECTS {
        let path = wasm(s.file);
        let Ok(bytes) = std::fs::read(&path) else {
            println!("{:<52} not built ({}): skipped", s.label, path.display());
            continue;
        };
        let cache = tempfile::tempdir().unwrap();
        let t = Instant::now();
        let rt = Runtime::new(Limits::default(), Some(cache.path().to_path_buf())).unwrap();
        let _ = load(&rt, &bytes, s.world);
        let uncached = t.elapsed();
        let t = Instant::now();
        let _ = load(&rt, &bytes, s.world);
        let in_memory = t.elapsed();
        let rt2 = Runtime::new(Limits::default(), Some(cache.path().to_path_buf())).unwrap();
        let t = Instant::now();
        let call = load(&rt2, &bytes, s.world);
        let from_disk = t.elapsed();
        for _ in 0..20 {
            call();
        }
        let mut samples: Vec<Duration> = (0..300)
            .map(|_| {
                let t = Instant::now();
                call();
                t.elapsed()
            })
            .collect();
        samples.sort();
        let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
        if rust_call.is_none() {
            rust_call = Some(mean);
        }
        println!(
            "{:<52} {:>6.1} MiB  call mean {:>9} p50 {:>9} p99 {:>9} ({:>5.1}x Rust)  compile: uncached {:>10}, on-disk cache {:>9}, in memory {:>9}",
            s.label,
            bytes.len() as f64 / 1048576.0,
            us(mean),
            us(percentile(&samples, 0.5)),
            us(percentile(&samples, 0.99)),
            mean.as_secs_f64() / rust_call.unwrap().as_secs_f64(),
            ms(uncached),
            ms(from_disk),
            ms(in_memory),
        );
    }
}

fn throughput(rt: &tokio::runtime::Runtime, n: usize) {
    println!(
        "\n== reconcile throughput: {n} Memcached objects created at once (in-memory cluster)"
    );
    let mut first: Option<Duration> = None;
    for (label, file) in [
        ("Rust", "isobar_plugin_memcached.wasm"),
        ("Python", "isobar_plugin_memcached_py.wasm"),
    ] {
        let path = wasm(file);
        if !path.exists() {
            println!("{label}: not built ({}): skipped", path.display());
            continue;
        }
        // ISOBAR_BENCH_LANGS=rust (or python) runs one side only.
        if let Ok(only) = std::env::var("ISOBAR_BENCH_LANGS")
            && !only.to_lowercase().contains(&label.to_lowercase())
        {
            continue;
        }
        let plugin = runtime().load_reconciler_file(&path).expect("load");
        let t = Instant::now();
        let mut op = rt.block_on(async { Operator::start(plugin) });
        for i in 0..n {
            op.cluster
                .put(json!({
                    "apiVersion": "cache.example.com/v1alpha1", "kind": "Memcached",
                    "metadata": {"namespace": format!("ns-{}", i % 100), "name": format!("cache-{i}")},
                    "spec": {"size": 1 + i % 3},
                }))
                .unwrap();
        }
        let done = |c: &MemoryApi| {
            c.inspect(|objects| {
                let with_status = objects
                    .values()
                    .filter(|o| o["kind"] == "Memcached" && o["status"]["conditions"].is_array())
                    .count();
                let deployments = objects
                    .values()
                    .filter(|o| o["kind"] == "Deployment")
                    .count();
                with_status == n && deployments == n
            })
        };
        let finished = rt.block_on(async {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(1800);
            // Checking walks every object: do it once per 1% of the calls.
            let mut next_check = 0u64;
            loop {
                let calls = op.progress.borrow().reconciles;
                if calls >= next_check {
                    if done(&op.cluster) {
                        return true;
                    }
                    next_check = calls + (n as u64 / 100).max(1);
                }
                if tokio::time::timeout_at(deadline, op.progress.changed())
                    .await
                    .is_err()
                {
                    return false;
                }
            }
        });
        let took = t.elapsed();
        let p = op.progress.borrow().clone();
        rt.block_on(op.stop());
        if !finished {
            println!("{label}: did not finish within 30 min ({p:?})");
            continue;
        }
        let ratio = first
            .map(|f| format!(" ({:.1}x Rust)", took.as_secs_f64() / f.as_secs_f64()))
            .unwrap_or_default();
        first.get_or_insert(took);
        println!(
            "{label:<7} all {n} reconciled (Deployment + status) in {:>10}{ratio}: {:.0} objects/s; {} plugin calls ({:.0}/s), {} writes, {} skipped as unchanged, {} failures",
            ms(took),
            n as f64 / took.as_secs_f64(),
            p.reconciles,
            p.reconciles as f64 / took.as_secs_f64(),
            p.writes,
            p.unchanged_writes,
            p.failures,
        );
    }
}

fn main() {
    let started = Instant::now();
    machine();
    let n: usize = std::env::var("ISOBAR_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    // ISOBAR_BENCH_ONLY=throughput skips the per-call part (for profiling).
    if std::env::var("ISOBAR_BENCH_ONLY").as_deref() != Ok("throughput") {
        per_call_and_compile();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    throughput(&rt, n);
    println!(
        "\nbench wall time: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
