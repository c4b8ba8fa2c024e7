//! Fuzzing of what reads untrusted bytes: the manifest reader, the SotW and
//! delta request decoders, and the PEM scanner (issue 13).
//!
//! cargo-fuzz needs a nightly compiler; these are proptest properties over
//! inputs mutated from a committed seed corpus (`tests/fuzz-corpus/<target>`)
//! and random bytes. `make test` runs a few cases of each; `make fuzz` runs
//! `ISOBAR_FUZZ_CASES` of each in release mode. A failing case is shrunk and
//! kept in `tests/fuzz.proptest-regressions`, replayed first ever after.

use std::path::{Path, PathBuf};

use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use isobar::source::files::{Loaded, parse_into};
use isobar::xds::SotwRequest;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use prost::Message;

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz-corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let seeds: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    assert!(!seeds.is_empty(), "no seeds in {}", dir.display());
    seeds
}

fn cases() -> u32 {
    std::env::var("ISOBAR_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(64)
}

/// A seed with byte edits (flips, insertions, deletions, splices of
/// interesting tokens), or plain random bytes.
fn input(seeds: Vec<Vec<u8>>, tokens: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
    let edit = prop_oneof![
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| (0u8, at, b, 0usize)),
        (any::<usize>(), any::<u8>()).prop_map(|(at, b)| (1u8, at, b, 0usize)),
        any::<usize>().prop_map(|at| (2u8, at, 0, 0)),
        (any::<usize>(), 0..tokens.len().max(1), 1usize..64)
            .prop_map(|(at, t, n)| (3u8, at, t as u8, n)),
    ];
    let mutated = (
        proptest::sample::select(seeds),
        proptest::collection::vec(edit, 0..16),
    )
        .prop_map(move |(mut bytes, edits)| {
            for (op, at, b, n) in edits {
                let at = if bytes.is_empty() {
                    0
                } else {
                    at % (bytes.len() + 1)
                };
                match op {
                    0 if at < bytes.len() => bytes[at] ^= b.max(1),
                    1 => bytes.insert(at, b),
                    2 if at < bytes.len() => {
                        bytes.remove(at);
                    }
                    3 if !tokens.is_empty() => {
                        let token = tokens[b as usize % tokens.len()];
                        for _ in 0..n {
                            bytes.splice(at..at, token.iter().copied());
                        }
                    }
                    _ => {}
                }
            }
            bytes
        });
    prop_oneof![
        8 => mutated,
        1 => proptest::collection::vec(any::<u8>(), 0..512),
    ]
}

/// Runs `test` on `cases()` inputs, or, with `ISOBAR_FUZZ_SECONDS`, on
/// batches of them (each with fresh randomness) until that much time has
/// passed.
fn run(name: &str, strategy: impl Strategy<Value = Vec<u8>>, test: impl Fn(&[u8])) {
    let budget = std::env::var("ISOBAR_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(std::time::Duration::from_secs);
    let started = std::time::Instant::now();
    let mut total = 0u64;
    loop {
        let config = Config {
            cases: cases(),
            failure_persistence: Some(Box::new(
                proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
            )),
            source_file: Some(file!()),
            ..Config::default()
        };
        let mut runner = TestRunner::new(config);
        if let Err(e) = runner.run(&strategy, |bytes| {
            test(&bytes);
            Ok(())
        }) {
            panic!("{name}: {e}");
        }
        total += u64::from(cases());
        if budget.is_none_or(|b| started.elapsed() >= b) {
            break;
        }
    }
    if budget.is_some() {
        eprintln!(
            "fuzz {name}: {total} cases in {:.1}s",
            started.elapsed().as_secs_f64()
        );
    }
}

#[test]
fn manifest_reader() {
    const TOKENS: &[&[u8]] = &[
        b"[",
        b"{",
        b"---\n",
        b"\n",
        b": ",
        b"- ",
        b"\"",
        b"'",
        b"#",
        b"&a ",
        b"*a",
        b"!!str ",
        b"kind: List\nitems:\n",
        b"metadata: {name: x}\n",
        b"\xff",
    ];
    run("manifest", input(corpus("manifest"), TOKENS), |bytes| {
        let text = String::from_utf8_lossy(bytes);
        let mut loaded = Loaded::default();
        parse_into(Path::new("fuzz.yaml"), &text, &mut loaded);
        let lines = text.lines().count() + 1;
        for e in &loaded.errors {
            assert!(e.line <= lines + 1, "error line {} of {lines}: {e}", e.line);
        }
        for m in &loaded.manifests {
            isobar::source::names::check(&m.object).expect("objects read have valid names");
        }
    });
}

#[test]
fn sotw_request_decoder() {
    const TOKENS: &[&[u8]] = &[
        b"\x1a\x01a",
        b"\x1a\x7f",
        b"\x22\x03abc",
        b"\x12\x00",
        b"\x32\x02\x08\x01",
        b"\x80",
    ];
    run("sotw", input(corpus("sotw"), TOKENS), |bytes| {
        // Ours and prost's generated decoder agree on what is valid and
        // on what it says.
        let ours = SotwRequest::decode(bytes);
        let theirs = DiscoveryRequest::decode(bytes);
        assert_eq!(ours.is_ok(), theirs.is_ok(), "{ours:?} vs {theirs:?}");
        if let (Ok(ours), Ok(theirs)) = (ours, theirs) {
            assert_eq!(ours, SotwRequest::from(theirs));
            let again = SotwRequest::decode(ours.encode_to_vec().as_slice()).unwrap();
            assert_eq!(again, ours);
        }
    });
}

#[test]
fn delta_request_decoder() {
    const TOKENS: &[&[u8]] = &[
        b"\x1a\x01a",
        b"\x2a\x04\x0a\x01a\x12\x00",
        b"\x22\x03abc",
        b"\x80",
    ];
    run("delta", input(corpus("delta"), TOKENS), |bytes| {
        if let Ok(r) = DeltaDiscoveryRequest::decode(bytes) {
            let again = DeltaDiscoveryRequest::decode(r.encode_to_vec().as_slice()).unwrap();
            assert_eq!(again, r);
        }
    });
}

/// What a PEM block is, said the slow way: a BEGIN line, then (after any
/// lines) the END line of the same label with no BEGIN line between.
fn reference_has_pem_block(data: &[u8], want: impl Fn(&[u8]) -> bool) -> bool {
    let lines: Vec<&[u8]> = data
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l).trim_ascii_end())
        .collect();
    let label = |l: &[u8], marker: &[u8]| {
        l.strip_prefix(marker)
            .and_then(|r| r.strip_suffix(b"-----"))
            .map(<[u8]>::to_vec)
    };
    for (i, l) in lines.iter().enumerate() {
        let Some(begin) = label(l, b"-----BEGIN ") else {
            continue;
        };
        if !want(&begin) {
            continue;
        }
        for m in &lines[i + 1..] {
            if label(m, b"-----BEGIN ").is_some() {
                break;
            }
            if label(m, b"-----END ").as_deref() == Some(begin.as_slice()) {
                return true;
            }
        }
    }
    false
}

#[test]
fn pem_scanner() {
    const TOKENS: &[&[u8]] = &[
        b"-----BEGIN ",
        b"-----END ",
        b"-----",
        b"PRIVATE KEY",
        b"CERTIFICATE",
        b"\n",
        b"\r\n",
        b" ",
    ];
    run("pem", input(corpus("pem"), TOKENS), |bytes| {
        for want in [
            (|l: &[u8]| l == b"CERTIFICATE") as fn(&[u8]) -> bool,
            |l: &[u8]| l.ends_with(b"PRIVATE KEY"),
        ] {
            assert_eq!(
                isobar::envoy::has_pem_block(bytes, want),
                reference_has_pem_block(bytes, want),
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    });
}

/// Writes the binary seeds (run once; the files are committed).
#[test]
#[ignore]
fn write_seed_corpus() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::google::rpc::Status;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz-corpus");
    let node = Some(Node {
        id: "envoy-1".into(),
        ..Default::default()
    });
    let sotw = [
        DiscoveryRequest {
            node: node.clone(),
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            ..Default::default()
        },
        DiscoveryRequest {
            version_info: "7".into(),
            resource_names: vec!["shop/web/80".into(), "shop/api/80".into(), "é".into()],
            type_url: "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment".into(),
            response_nonce: "3".into(),
            ..Default::default()
        },
        DiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.listener.v3.Listener".into(),
            response_nonce: "4".into(),
            error_detail: Some(Status {
                code: 13,
                message: "Error adding/updating listener(s) ingress_https".into(),
                details: vec![],
            }),
            ..Default::default()
        },
    ];
    for (i, r) in sotw.iter().enumerate() {
        std::fs::write(root.join(format!("sotw/{i}.bin")), r.encode_to_vec()).unwrap();
    }
    let delta = [
        DeltaDiscoveryRequest {
            node,
            type_url: "type.googleapis.com/envoy.config.cluster.v3.Cluster".into(),
            resource_names_subscribe: vec!["*".into()],
            initial_resource_versions: [("shop/web/80".to_string(), "abc".to_string())].into(),
            ..Default::default()
        },
        DeltaDiscoveryRequest {
            type_url: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration".into(),
            resource_names_unsubscribe: vec!["ingress_http".into()],
            response_nonce: "2".into(),
            ..Default::default()
        },
    ];
    for (i, r) in delta.iter().enumerate() {
        std::fs::write(root.join(format!("delta/{i}.bin")), r.encode_to_vec()).unwrap();
    }
}
