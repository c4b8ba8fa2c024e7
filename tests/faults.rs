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
        ..Default::default()
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
        ..Default::default()
    };
    let bytes = std::fs::read(plugin_path("isobar-plugin-faults")).unwrap();
    let err = runtime()
        .load_with(&bytes, "faults", grants)
        .expect_err("must not load");
    assert!(matches!(err, PluginError::Io { .. }), "{err:?}");
}

/// What the faults plugin reports for `fault` (an `Err` with reason Sandbox).
fn fault_report(plugin: isobar::plugin::Plugin, fault: &str) -> String {
    let mut p = Offline::new(plugin);
    p.load([ingress_class("isobar", false), faulty_ingress(Some(fault))].map(apply));
    p.rebuild();
    let d = only_diagnostic(&p);
    assert_eq!(d.reason, "Sandbox", "{d:?}");
    // "plugin rejected the object (Sandbox): <report>; serving its last ..."
    let report = d.message.split_once("(Sandbox): ").map_or("", |(_, r)| r);
    report.split(';').next().unwrap_or_default().to_string()
}

fn faults_with(grants: isobar::plugin::Grants) -> isobar::plugin::Plugin {
    let bytes = std::fs::read(plugin_path("isobar-plugin-faults")).unwrap();
    runtime().load_with(&bytes, "faults", grants).unwrap()
}

/// Issue 13 item 2: `sleep(5 s)` under the 100 ms deadline ran 5.9 s (a
/// blocking WASI call is beyond epoch interruption) and then succeeded.
#[test]
fn sleeping_past_the_deadline_is_a_timeout() {
    for plugin in [
        faults(),
        faults_with(isobar::plugin::Grants {
            clocks: true,
            ..Default::default()
        }),
    ] {
        let p = good_then_with(plugin, "sleep");
        assert_last_good_kept(&p);
        let d = only_diagnostic(&p);
        assert_eq!(
            (d.object.name.as_str(), d.reason.as_str()),
            ("i", "PluginTimeout"),
            "{d:?}"
        );
    }
}

#[test]
fn busy_polling_the_clock_is_a_timeout() {
    let p = good_then("busy-poll");
    assert_last_good_kept(&p);
    assert_eq!(only_diagnostic(&p).reason, "PluginTimeout");
}

#[test]
fn a_wait_within_the_deadline_is_fine() {
    let p = good_then("nap");
    assert_last_good_kept(&p);
    assert!(p.diagnostics().is_empty(), "{:?}", p.diagnostics());
}

/// Issue 13 item 5: the wall clock and `random` were readable.
#[test]
fn by_default_a_plugin_sees_no_clock_and_no_randomness() {
    // The wall clock reads the epoch; the monotonic clock moves by the
    // plugin's own waits, exactly.
    assert_eq!(fault_report(faults(), "clock"), "wall=0 slept=1000000");
    // The same "random" state in every call.
    let first = fault_report(faults(), "random");
    assert!(first.starts_with("random="), "{first}");
    assert_eq!(fault_report(faults(), "random"), first);
}

#[test]
fn granted_clocks_and_randomness_are_the_hosts() {
    let plugin = faults_with(isobar::plugin::Grants {
        clocks: true,
        random: true,
        ..Default::default()
    });
    let clock = fault_report(plugin.clone(), "clock");
    let wall: u64 = clock
        .strip_prefix("wall=")
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{clock}"));
    assert!(wall > 1_600_000_000, "{clock}");
    let a = fault_report(plugin.clone(), "random");
    let b = fault_report(plugin, "random");
    assert_ne!(a, b, "host randomness differs call to call");
}

/// The cached artifact of the faults plugin in `dir`.
fn artifact_in(dir: &std::path::Path) -> std::path::PathBuf {
    let found: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].clone()
}

/// Issue 13 item 6: `.cwasm` files (native code) were deserialized by file
/// name without re-hashing. An artifact whose contents do not match the
/// hash the host wrote with them is not loaded: the component is compiled
/// again and the artifact rewritten.
#[test]
fn a_tampered_compile_cache_artifact_is_not_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("components");
    let load = || {
        isobar::plugin::Runtime::new(Default::default(), Some(cache.clone()))
            .unwrap()
            .load_file(&plugin_path("isobar-plugin-faults"))
            .unwrap()
    };
    load();
    let artifact = artifact_in(&cache);
    let good = std::fs::read(&artifact).unwrap();
    // One byte changed near the end, past wasmtime's own header checks.
    let mut tampered = good.clone();
    let at = tampered.len() - 100;
    tampered[at] ^= 0xff;
    std::fs::write(&artifact, &tampered).unwrap();

    let plugin = load();
    assert_eq!(plugin.info.name, "faults");
    assert_eq!(
        std::fs::read(&artifact).unwrap(),
        good,
        "recompiled and rewritten, not loaded"
    );
    // The good artifact is loaded as it is (not rewritten).
    let modified = std::fs::metadata(&artifact).unwrap().modified().unwrap();
    load();
    assert_eq!(
        std::fs::metadata(&artifact).unwrap().modified().unwrap(),
        modified
    );
}

/// Issue 13 item 6: the cache directory is private to the user; one that
/// others may write is not used at all.
#[cfg(unix)]
#[test]
fn the_compile_cache_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("new").join("components");
    isobar::plugin::Runtime::new(Default::default(), Some(cache.clone()))
        .unwrap()
        .load_file(&plugin_path("isobar-plugin-faults"))
        .unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700);
    assert_eq!(mode(&artifact_in(&cache)), 0o600);

    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
    let plugin = isobar::plugin::Runtime::new(Default::default(), Some(shared.clone()))
        .unwrap()
        .load_file(&plugin_path("isobar-plugin-faults"))
        .unwrap();
    assert_eq!(plugin.info.name, "faults");
    assert_eq!(
        std::fs::read_dir(&shared).unwrap().count(),
        0,
        "nothing cached in a directory others can write"
    );
}

/// Grants may hold one plugin to less than the host's limits, never more.
#[test]
fn a_plugin_may_be_held_tighter_than_the_host_never_looser() {
    let bytes = std::fs::read(plugin_path("isobar-plugin-faults")).unwrap();
    for looser in [
        isobar::plugin::Grants {
            deadline: Some(std::time::Duration::from_secs(5)),
            ..Default::default()
        },
        isobar::plugin::Grants {
            memory_bytes: Some(1 << 30),
            ..Default::default()
        },
    ] {
        let err = runtime()
            .load_with(&bytes, "faults", looser)
            .expect_err("looser than the host");
        assert!(matches!(err, PluginError::Limit(_)), "{err:?}");
    }
    let p = good_then_with(
        faults_with(isobar::plugin::Grants {
            deadline: Some(std::time::Duration::from_millis(10)),
            ..Default::default()
        }),
        "loop",
    );
    assert_last_good_kept(&p);
    let d = only_diagnostic(&p);
    assert_eq!(d.reason, "PluginTimeout");
    assert!(d.message.contains("10ms"), "{}", d.message);
}
