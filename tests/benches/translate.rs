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
    // Contract 0.2: one instance configured once serves a batch of roots.
    let t = Instant::now();
    let mut routes_batched = 0;
    for chunk in roots.chunks(isobar::translate::BATCH) {
        for out in plugin.translate_batch(&store, chunk) {
            routes_batched += out
                .result
                .expect("wasm translate")
                .virtual_hosts
                .iter()
                .map(|v| v.routes.len())
                .sum::<usize>();
        }
    }
    let batched = t.elapsed();
    assert_eq!(routes_wasm, routes_batched);
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
        "translate {n:>6} Ingresses (1 thread): wasm batched ({} roots per instance) {:>10}  native {:>10}  wasm/native {:.2}x  [goal <= 1.5x: {}]  ({} per root batched, {} native)",
        isobar::translate::BATCH,
        ms(batched),
        ms(native),
        batched.as_secs_f64() / native.as_secs_f64(),
        if batched.as_secs_f64() <= 1.5 * native.as_secs_f64() {
            "met"
        } else {
            "NOT met"
        },
        us(batched / n as u32),
        us(native / n as u32),
    );
    println!(
        "translate {n:>6} Ingresses (1 thread): wasm, a fresh instance per root {:>10}  wasm/native {:.2}x  ({} per root)",
        ms(wasm),
        wasm.as_secs_f64() / native.as_secs_f64(),
        us(wasm / n as u32),
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

/// Three policies chained (the test policy: reads the source Ingress, adds
/// a header) over every virtual host: the rebuild, one Ingress changed
/// until the new snapshot, and a policy swap (a new configuration: the
/// dry run over every host, then the snapshot).
fn policies(n: usize) {
    let bytes = std::fs::read(plugin_path("isobar-plugin-faults-policy")).unwrap();
    let policy = |tag: &str| {
        let mut configs = isobar::plugin::Configs::new();
        configs.insert(
            "faults-policy".into(),
            Arc::from(format!(r#"{{"tag":"{tag}"}}"#).as_str()),
        );
        runtime()
            .load_policy(&bytes, "faults-policy", Default::default(), &configs)
            .expect("policy")
    };
    let chain = |tags: [&str; 3]| {
        isobar::plugin::Plugins::new(
            vec![ingress_plugin()],
            tags.iter().map(|t| policy(t)).collect(),
        )
        .unwrap()
    };
    let objects = universe(n);
    let mut bare = Offline::new(ingress_plugin());
    bare.load(objects.iter().map(|v| apply(v.clone())));
    let t = Instant::now();
    bare.rebuild();
    let bare_full = t.elapsed();
    let mut p = Offline::with(chain(["a", "b", "c"]));
    p.load(objects.iter().map(|v| apply(v.clone())));
    let t = Instant::now();
    let round = p.rebuild();
    let full = t.elapsed();
    let hosts = round
        .plugins
        .iter()
        .find(|r| &*r.plugin == "faults-policy")
        .map_or(0, |r| r.stats.calls);
    let mut times = Vec::new();
    let mut bare_times = Vec::new();
    for round in 0..60 {
        let i = (round * 7919) % n;
        let changed = changed_ingress(i, round);
        let t = Instant::now();
        bare.apply([apply(changed.clone())]);
        bare_times.push(t.elapsed());
        let t = Instant::now();
        p.apply([apply(changed)]);
        times.push(t.elapsed());
    }
    times.sort();
    bare_times.sort();
    let mut swaps = Vec::new();
    for i in 0..3 {
        let t = Instant::now();
        let mut next = isobar::pipeline::Pipeline::with(
            p.store_handle(),
            chain(["a", "b", if i % 2 == 0 { "d" } else { "c" }]),
        );
        next.continue_after(p.snapshot().version);
        let r = next.rebuild();
        assert_eq!(r.translation.failures, 0);
        p.replace(next);
        swaps.push(t.elapsed());
    }
    swaps.sort();
    println!(
        "three policies chained over {hosts} virtual hosts ({n} Ingresses): full rebuild {} (without policies {}); \
         one Ingress changed -> new snapshot p50 {} p99 {} [goal p99 <= 10 ms: {}] (without policies p50 {} p99 {}); \
         policy swap (dry run over every host + snapshot) median {} [goal <= 500 ms: {}]",
        ms(full),
        ms(bare_full),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        if percentile(&times, 0.99) <= Duration::from_millis(10) {
            "met"
        } else {
            "NOT met"
        },
        ms(percentile(&bare_times, 0.5)),
        ms(percentile(&bare_times, 0.99)),
        ms(swaps[1]),
        if swaps[1] <= Duration::from_millis(500) {
            "met"
        } else {
            "NOT met"
        },
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
    policies(10_000);
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
