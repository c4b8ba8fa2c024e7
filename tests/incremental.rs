//! Incremental and full translation must always agree: over random
//! sequences of adds, updates and deletes, the snapshot built step by step
//! equals the one built from scratch from the same store.

use std::collections::BTreeMap;

use isobar::pipeline::Offline;
use isobar::store::Event;
use isobar::xds::Snapshot;
use isobar_tests::*;
use proptest::prelude::*;
use serde_json::{Value, json};

const NAMESPACES: [&str; 2] = ["a", "b"];
const SERVICES: [&str; 4] = ["s0", "s1", "s2", "s3"];
const HOSTS: [&str; 4] = ["x.com", "y.com", "*.w.com", ""];
const PATHS: [&str; 4] = ["/", "/a", "/a/b", "/a/"];

#[derive(Clone, Debug)]
enum Op {
    Put(Value),
    Delete(Value),
}

fn arb_service() -> impl Strategy<Value = Value> {
    (0..2usize, 0..4usize, prop::bool::ANY, 80u16..82).prop_map(|(ns, s, named, port)| {
        service(
            NAMESPACES[ns],
            SERVICES[s],
            &[(if named { "http" } else { "" }, port, json!(8080))],
        )
    })
}

fn arb_slice() -> impl Strategy<Value = Value> {
    (
        0..2usize,
        0..4usize,
        prop::bool::ANY,
        prop::collection::vec(1u8..5, 0..3),
    )
        .prop_map(|(ns, s, named, addrs)| {
            let addrs: Vec<String> = addrs.iter().map(|a| format!("10.0.0.{a}")).collect();
            let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            slice(
                NAMESPACES[ns],
                SERVICES[s],
                "x",
                if named { "http" } else { "" },
                8080,
                &refs,
            )
        })
}

fn arb_ingress() -> impl Strategy<Value = Value> {
    let path = (0..4usize, prop::bool::ANY, 0..4usize, prop::bool::ANY);
    (
        0..2usize,
        0..4usize,
        prop::collection::vec((0..4usize, prop::collection::vec(path, 1..3)), 0..3),
        0..3u8,
        prop::option::of(0..4usize),
        prop::bool::ANY,
        0..3usize,
    )
        .prop_map(|(ns, n, rules, age, tls, classed, ask)| {
            let rules: Vec<Value> = rules
                .into_iter()
                .map(|(h, paths)| {
                    let paths: Vec<Value> = paths
                        .into_iter()
                        .map(|(p, exact, s, by_name)| {
                            let port = if by_name {
                                json!({"name":"http"})
                            } else {
                                json!({"number":80})
                            };
                            json!({"path":PATHS[p],"pathType":if exact {"Exact"} else {"Prefix"},
                                "backend":{"service":{"name":SERVICES[s],"port":port}}})
                        })
                        .collect();
                    let mut r = json!({"http":{"paths":paths}});
                    if !HOSTS[h].is_empty() {
                        r["host"] = json!(HOSTS[h]);
                    }
                    r
                })
                .collect();
            let mut ing = json!({"apiVersion":"networking.k8s.io/v1","kind":"Ingress",
                "metadata":{"name":format!("i{n}"),"namespace":NAMESPACES[ns],
                    "creationTimestamp":format!("202{age}-01-01T00:00:00Z")},
                "spec":{"rules":rules}});
            if classed {
                ing["spec"]["ingressClassName"] = json!("isobar");
            }
            // What the test policy in the chain does to this Ingress's hosts
            // (only transformations that succeed: a failure keeps the last
            // good output, which a full rebuild has not seen).
            if ask > 0 {
                ing["metadata"]["annotations"] =
                    json!({"isobar.dev/test-policy": format!("header:x-ask={ask}")});
            }
            if let Some(h) = tls {
                ing["spec"]["tls"] = json!([{"hosts":[HOSTS[h]],"secretName":"cert"}]);
            }
            ing
        })
}

fn arb_object() -> impl Strategy<Value = Value> {
    prop_oneof![
        3 => arb_ingress(),
        2 => arb_service(),
        2 => arb_slice(),
        1 => prop::bool::ANY.prop_map(|d| ingress_class("isobar", d)),
        1 => (0..2usize).prop_map(|ns| tls_secret(NAMESPACES[ns], "cert")),
    ]
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![4 => arb_object().prop_map(Op::Put), 1 => arb_object().prop_map(Op::Delete)]
}

/// What the data plane would see: every resource's bytes, and the
/// diagnostics people would see.
fn served(
    p: &Offline,
) -> (
    BTreeMap<(String, String), Vec<u8>>,
    Vec<isobar::ir::Diagnostic>,
) {
    let s: &Snapshot = p.snapshot();
    let resources = s
        .resources
        .iter()
        .flat_map(|(t, m)| {
            m.values()
                .map(move |r| ((t.clone(), r.name.clone()), r.body.to_vec()))
        })
        .collect();
    (resources, p.diagnostics())
}

/// The Ingress plugin with the test policy chained after it.
fn chained() -> Offline {
    static POLICY: std::sync::OnceLock<isobar::plugin::PolicyPlugin> = std::sync::OnceLock::new();
    let policy = POLICY.get_or_init(|| {
        let bytes = std::fs::read(plugin_path("isobar-plugin-faults-policy")).unwrap();
        runtime()
            .load_policy(
                &bytes,
                "faults-policy",
                Default::default(),
                &Default::default(),
            )
            .expect("policy")
    });
    Offline::with(
        isobar::plugin::Plugins::new(vec![ingress_plugin()], vec![policy.clone()]).unwrap(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, max_shrink_iters: 200, ..ProptestConfig::default() })]

    #[test]
    fn incremental_equals_full(
        ops in prop::collection::vec(arb_op(), 1..24),
        batches in (1..6usize, 1..6usize),
        seeds in (any::<u64>(), any::<u64>()),
    ) {
        // Both sides run the test policy; each calls its roots in batches
        // of its own size, in an order of its own.
        let mut incremental = chained();
        incremental.set_batch(batches.0, Some(seeds.0));
        incremental.rebuild();
        for (i, op) in ops.iter().enumerate() {
            let event = match op {
                Op::Put(v) => Event::Apply(obj(v.clone())),
                Op::Delete(v) => Event::Delete(key(v)),
            };
            incremental.apply([event]);
            let mut full = chained();
            full.set_batch(batches.1, Some(seeds.1));
            full.load(incremental.store().read().list_all().map(|o| Event::Apply(o.clone())).collect::<Vec<_>>());
            full.rebuild();
            let (a, b) = (served(&incremental), served(&full));
            prop_assert_eq!(&a.0.keys().collect::<Vec<_>>(), &b.0.keys().collect::<Vec<_>>(), "resource names differ after op {}", i);
            prop_assert!(a.0 == b.0, "resource bodies differ after op {}", i);
            prop_assert_eq!(&a.1, &b.1, "diagnostics differ after op {}", i);
        }
    }
}

/// A round with hundreds of dirty virtual hosts compiles them on every core;
/// a round with a few compiles them on one thread. Both must serve the same:
/// shared backends, hosts claimed by two Ingresses, and missing Services
/// included.
#[test]
fn a_parallel_rebuild_equals_one_object_at_a_time() {
    let mut objects = Vec::new();
    for i in 0..400 {
        let [svc, slice, mut ing] = bench::app(i);
        if i % 7 == 0 {
            // Two Ingresses share this host, and every third one points at
            // the previous app's Service.
            ing["spec"]["rules"][0]["host"] = json!(format!("app{}.example.com", i + 1));
        }
        if i % 3 == 0 && i > 0 {
            ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] =
                json!(format!("svc{}", i - 1));
        }
        if i % 11 == 0 {
            // A Service that does not exist.
            ing["spec"]["rules"][0]["http"]["paths"][1]["backend"]["service"]["name"] =
                json!("missing");
        }
        objects.extend([svc, slice, ing]);
    }
    objects.push(ingress_class("isobar", false));

    let mut whole = Offline::new(ingress_plugin());
    whole.load(
        objects
            .iter()
            .map(|v| Event::Apply(obj(v.clone())))
            .collect::<Vec<_>>(),
    );
    let round = whole.rebuild();
    assert!(
        round.vhosts_compiled >= 256,
        "{} virtual hosts",
        round.vhosts_compiled
    );

    let mut stepwise = Offline::new(ingress_plugin());
    stepwise.rebuild();
    for v in &objects {
        stepwise.apply([Event::Apply(obj(v.clone()))]);
    }
    let (a, b) = (served(&whole), served(&stepwise));
    assert_eq!(
        a.0.keys().collect::<Vec<_>>(),
        b.0.keys().collect::<Vec<_>>()
    );
    assert!(a.0 == b.0, "resource bodies differ");
    assert_eq!(a.1, b.1, "diagnostics differ");
    assert!(!a.1.is_empty(), "the missing Services are reported");
}
