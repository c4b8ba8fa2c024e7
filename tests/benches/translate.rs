//! Translation benchmarks: the Ingress plugin as Wasm and compiled natively,
//! side by side in one run, plus incremental updates, per-call overhead and
//! peak memory. Run with `make bench`; figures go in the issue notes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use isobar::pipeline::Offline;
use isobar::store::{Event, KindKey, Object, Store};
use isobar_guest::Translator;
use isobar_plugin_ingress::IngressTranslator;
use isobar_tests::bench::{app, changed_ingress, machine, percentile, universe};
use isobar_tests::*;
use serde_json::Value;

/// The guest SDK's store trait over the host's store, so the native plugin
/// reads exactly what the Wasm one reads through its imports.
struct NativeStore<'a>(&'a Store);

fn to_guest(o: &Object) -> isobar_guest::types::Object {
    isobar_guest::types::Object {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        namespace: o.namespace.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
        json: o.json.to_string(),
    }
}

impl isobar_guest::Store for NativeStore<'_> {
    fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<isobar_guest::types::Object> {
        let key = isobar::store::ObjectKey::new(KindKey::new(api_version, kind), namespace, name);
        self.0.get(&key).as_deref().map(to_guest)
    }
    fn list(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
    ) -> Vec<isobar_guest::types::Object> {
        self.0
            .read()
            .list(&KindKey::new(api_version, kind), namespace)
            .map(|o| to_guest(o))
            .collect()
    }
}

fn store_of(objects: &[Value]) -> Store {
    let mut writer = isobar::store::Writer::new();
    writer.apply_all(objects.iter().map(|v| Event::Apply(obj(v.clone()))));
    writer.store()
}

fn roots(store: &Store) -> Vec<Arc<Object>> {
    store.list(&KindKey::new("networking.k8s.io/v1", "Ingress"), None)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn status_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn translate_side_by_side(n: usize) {
    let objects = universe(n);
    let store = store_of(&objects);
    let roots = roots(&store);
    let plugin = ingress_plugin();

    // Warm up both paths (page faults, caches) before timing.
    for r in roots.iter().take(50) {
        let _ = plugin.translate(&store, r);
        let _ = IngressTranslator::translate(&to_guest(r), &NativeStore(&store));
    }
    let t = Instant::now();
    let mut routes_wasm = 0;
    for r in &roots {
        let out = plugin.translate(&store, r).result.expect("wasm translate");
        routes_wasm += out
            .virtual_hosts
            .iter()
            .map(|v| v.routes.len())
            .sum::<usize>();
    }
    let wasm = t.elapsed();
    let native_store = NativeStore(&store);
    let t = Instant::now();
    let mut routes_native = 0;
    for r in &roots {
        let out =
            IngressTranslator::translate(&to_guest(r), &native_store).expect("native translate");
        routes_native += out
            .virtual_hosts
            .iter()
            .map(|v| v.routes.len())
            .sum::<usize>();
    }
    let native = t.elapsed();
    assert_eq!(
        routes_wasm, routes_native,
        "both builds must produce the same output"
    );

    let mut p = Offline::new(plugin);
    p.load(objects.iter().map(|v| apply(v.clone())));
    let t = Instant::now();
    p.rebuild();
    let full = t.elapsed();
    println!(
        "translate {n:>6} Ingresses (1 thread): wasm {:>10}  native {:>10}  wasm/native {:.2}x  ({} per root wasm, {} native)",
        ms(wasm),
        ms(native),
        wasm.as_secs_f64() / native.as_secs_f64(),
        us(wasm / n as u32),
        us(native / n as u32),
    );
    println!(
        "full pipeline {n:>6} Ingresses (translate on all cores + merge + compile + validate): {}  -> {} resources",
        ms(full),
        p.snapshot().len()
    );
}

fn incremental(n: usize) {
    let objects = universe(n);
    let mut p = Offline::new(ingress_plugin());
    p.load(objects.iter().map(|v| apply(v.clone())));
    p.rebuild();
    let mut times = Vec::new();
    for round in 0..60 {
        let i = (round * 7919) % n;
        let changed = changed_ingress(i, round);
        let t = Instant::now();
        let r = p.apply([apply(changed)]);
        times.push(t.elapsed());
        assert_eq!(r.translation.calls, 1);
    }
    times.sort();
    println!(
        "one Ingress changed at {n:>6}: new validated snapshot p50 {}  p99 {}  max {}",
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        ms(*times.last().unwrap())
    );
}

fn per_call() {
    let plugin = ingress_plugin();
    for _ in 0..200 {
        plugin.describe().unwrap();
    }
    let mut times = Vec::with_capacity(5000);
    for _ in 0..5000 {
        let t = Instant::now();
        plugin.describe().unwrap();
        times.push(t.elapsed());
    }
    times.sort();
    let mean = times.iter().sum::<Duration>() / times.len() as u32;
    println!(
        "per call (fresh instance + describe()): mean {}  p50 {}  p99 {}",
        us(mean),
        us(percentile(&times, 0.5)),
        us(percentile(&times, 0.99))
    );
}

fn rss_child(n: usize) {
    let base = status_kib("VmRSS:");
    let mut p = Offline::new(ingress_plugin());
    // Objects arrive one by one, as from a watch: no transient copy of the
    // whole universe inflates the figure.
    p.load([apply(ingress_class("isobar", false))]);
    for i in 0..n {
        p.load(app(i).map(apply));
    }
    let loaded = status_kib("VmRSS:");
    p.rebuild();
    println!(
        "memory breakdown: engine + plugin {} MiB, store of {} objects +{} MiB, translation and snapshot +{} MiB",
        base / 1024,
        p.store().len(),
        (loaded - base) / 1024,
        (status_kib("VmRSS:") - loaded) / 1024
    );
    println!(
        "memory with {n} Ingresses + Services + EndpointSlices loaded and translated: RSS {} MiB, peak RSS {} MiB ({} resources)",
        status_kib("VmRSS:") / 1024,
        status_kib("VmHWM:") / 1024,
        p.snapshot().len()
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // For profilers: only the incremental rounds, many of them.
    if args.iter().any(|a| a == "--incremental-only") {
        incremental(10_000);
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--rss-child") {
        rss_child(args[i + 1].parse().unwrap());
        return;
    }
    machine();
    per_call();
    for n in [1_000, 10_000] {
        translate_side_by_side(n);
    }
    incremental(10_000);
    // Peak memory in a fresh process, so earlier runs do not count.
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--rss-child", "10000"])
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    }
}
