//! Bad plugins, purpose-built in plugins/faults and plugins/old-contract:
//! the host survives, says why, and keeps serving the last good output.

use isobar::pipeline::Offline;
use isobar::plugin::PluginError;
use isobar_tests::*;
use serde_json::{Value, json};

const HTTP: &str = "ingress_http";

fn faults() -> isobar::plugin::Plugin {
    load("isobar-plugin-faults")
}

fn faulty_ingress(fault: Option<&str>) -> Value {
    let mut ing = ingress(
        "shop",
        "i",
        &[("a.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    if let Some(f) = fault {
        ing["metadata"]["annotations"] = json!({"isobar.dev/fault": f});
    }
    ing
}

/// A pipeline serving the good output, then the same root turned bad.
fn good_then(fault: &str) -> Offline {
    good_then_with(faults(), fault)
}

fn good_then_with(plugin: isobar::plugin::Plugin, fault: &str) -> Offline {
    let mut p = Offline::new(plugin);
    p.load(
        [
            ingress_class("isobar", false),
            service("shop", "web", &[("http", 80, json!(80))]),
            faulty_ingress(None),
        ]
        .map(apply),
    );
    p.rebuild();
    assert_eq!(
        routes(p.snapshot(), HTTP, "a.example.com"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
    assert!(p.diagnostics().is_empty(), "{:?}", p.diagnostics());
    let round = p.apply([apply(faulty_ingress(Some(fault)))]);
    assert_eq!(round.translation.calls, 1);
    p
}

fn assert_last_good_kept(p: &Offline) {
    assert_eq!(
        routes(p.snapshot(), HTTP, "a.example.com"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
}

fn only_diagnostic(p: &Offline) -> isobar::ir::Diagnostic {
    let d = p.diagnostics();
    assert_eq!(d.len(), 1, "{d:?}");
    d[0].clone()
}

#[test]
fn endless_loop_hits_the_deadline() {
    let p = good_then("loop");
    assert_last_good_kept(&p);
    let d = only_diagnostic(&p);
    assert_eq!(
        (d.object.name.as_str(), d.reason.as_str()),
        ("i", "PluginTimeout")
    );
    assert!(d.message.contains("last good"), "{}", d.message);
}

#[test]
fn memory_bomb_hits_the_memory_cap() {
    // A deadline far beyond how long touching 64 MiB takes on a loaded
    // machine, so the memory cap, not the clock, is what stops the plugin.
    let limits = isobar::plugin::Limits {
        deadline: std::time::Duration::from_secs(30),
        ..Default::default()
    };
    let runtime =
        isobar::plugin::Runtime::new(limits, Some(target_dir().join("isobar-test-cache"))).unwrap();
    let plugin = runtime
        .load_file(&plugin_path("isobar-plugin-faults"))
        .unwrap();
    let p = good_then_with(plugin, "oom");
    assert_last_good_kept(&p);
    let d = only_diagnostic(&p);
    assert_eq!(d.reason, "PluginMemoryLimit");
    assert!(
        d.message.contains(&(64u64 << 20).to_string()),
        "{}",
        d.message
    );
}

#[test]
fn trap_is_reported_with_the_panic_message() {
    let p = good_then("trap");
    assert_last_good_kept(&p);
    let d = only_diagnostic(&p);
    assert_eq!(d.reason, "PluginTrap");
    assert!(
        d.message.contains("panicked"),
        "the guest's stderr is captured: {}",
        d.message
    );
}

#[test]
fn returned_error_is_reported() {
    let p = good_then("error");
    assert_last_good_kept(&p);
    assert_eq!(only_diagnostic(&p).reason, "Injected");
}

#[test]
fn output_referencing_a_missing_backend_is_caught_by_the_host() {
    let p = good_then("missing-backend");
    // The plugin's output is syntactically fine; the host's validation
    // turns the dangling reference into a 503 and a diagnostic.
    assert_eq!(
        routes(p.snapshot(), HTTP, "a.example.com"),
        pairs(&[("prefix=/", "direct=503")])
    );
    assert!(cluster(p.snapshot(), "shop/does-not-exist/80").is_none());
    assert_eq!(only_diagnostic(&p).reason, "BackendNotFound");
}

#[test]
fn log_flood_is_capped() {
    let p = good_then("log-flood");
    assert_last_good_kept(&p);
    assert!(p.diagnostics().is_empty());
}

#[test]
fn a_bad_root_does_not_disturb_the_others() {
    let mut p = Offline::new(faults());
    let mut other = ingress(
        "shop",
        "other",
        &[("b.example.com", &[("/", "Prefix", "web", json!(80))])],
    );
    other["metadata"]["annotations"] = json!({});
    p.load(
        [
            ingress_class("isobar", false),
            service("shop", "web", &[("http", 80, json!(80))]),
            faulty_ingress(Some("trap")),
            other,
        ]
        .map(apply),
    );
    p.rebuild();
    assert_eq!(
        routes(p.snapshot(), HTTP, "b.example.com"),
        pairs(&[("prefix=/", "cluster=shop/web/80")])
    );
    assert_eq!(reasons(&p.diagnostics()), pairs(&[("i", "PluginTrap")]));
}

#[test]
fn recovery_clears_the_diagnostic() {
    let mut p = good_then("loop");
    p.apply([apply(faulty_ingress(None))]);
    assert_last_good_kept(&p);
    assert!(p.diagnostics().is_empty());
}

#[test]
fn a_plugin_for_another_contract_version_is_named_as_such() {
    let err = runtime()
        .load_file(&plugin_path("isobar-plugin-old-contract"))
        .expect_err("must not load");
    assert!(
        matches!(&err, PluginError::ContractMismatch { found } if found == "isobar:plugin@0.0.9"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("isobar:plugin@0.0.9")
            && err.to_string().contains("isobar:plugin@0.1.0"),
        "{err}"
    );
}

#[test]
fn garbage_is_not_a_component() {
    let err = runtime()
        .load(b"\0asm\x01\0\0\0garbage", "garbage")
        .expect_err("must not load");
    assert!(matches!(err, PluginError::Invalid(_)), "{err:?}");
    let err = runtime()
        .load(b"not wasm at all", "text")
        .expect_err("must not load");
    assert!(matches!(err, PluginError::Invalid(_)), "{err:?}");
}

fn sandbox_report(plugin: isobar::plugin::Plugin) -> String {
    let mut p = Offline::new(plugin);
    p.load(
        [
            ingress_class("isobar", false),
            faulty_ingress(Some("sandbox")),
        ]
        .map(apply),
    );
    p.rebuild();
    let d = only_diagnostic(&p);
    assert_eq!(d.reason, "Sandbox");
    d.message
}

#[test]
fn by_default_a_plugin_sees_no_environment_files_or_network() {
    let report = sandbox_report(faults());
    assert!(report.contains("env=[]"), "{report}");
    assert!(report.contains("fs=denied"), "{report}");
    assert!(report.contains("granted=denied"), "{report}");
    assert!(report.contains("net=denied"), "{report}");
}

#[test]
fn granted_environment_and_directories_are_visible_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hello.txt"), "hi from the host\n").unwrap();
    let grants = isobar::plugin::Grants {
        env: vec![("REGION".into(), "eu-west".into())],
        read_only_dirs: vec![(dir.path().to_path_buf(), "/granted".into())],
    };
    let bytes = std::fs::read(plugin_path("isobar-plugin-faults")).unwrap();
    let plugin = runtime().load_with(&bytes, "faults", grants).unwrap();
    let report = sandbox_report(plugin);
    assert!(report.contains("env=[REGION=eu-west]"), "{report}");
    assert!(report.contains("granted=hi from the host"), "{report}");
    assert!(report.contains("net=denied"), "{report}");
}

#[test]
fn granting_a_missing_directory_is_a_load_error() {
    let grants = isobar::plugin::Grants {
        env: vec![],
        read_only_dirs: vec![("/does/not/exist".into(), "/x".into())],
    };
    let bytes = std::fs::read(plugin_path("isobar-plugin-faults")).unwrap();
    let err = runtime()
        .load_with(&bytes, "faults", grants)
        .expect_err("must not load");
    assert!(matches!(err, PluginError::Io { .. }), "{err:?}");
}
