//! The `isobar` binary as a user meets it.

mod common;
use common::{plugin, target_dir};

use std::path::PathBuf;
use std::process::{Command, Output};

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

fn isobar(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isobar"))
        .args(args)
        .env("ISOBAR_PLUGIN", plugin("isobar_plugin_ingress"))
        .env("XDG_CACHE_HOME", target_dir().join("isobar-test-cache-cli"))
        .output()
        .expect("running isobar")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn translate_prints_envoy_json_for_the_examples() {
    let out = isobar(&[
        "translate",
        "-f",
        examples().to_str().unwrap(),
        "-o",
        "json",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).expect("json output");
    let listeners = doc["resources"]["listeners"].as_array().expect("listeners");
    assert!(
        listeners.iter().any(|l| l["name"] == "ingress_https"),
        "{stdout}"
    );
    let clusters = doc["resources"]["clusters"].as_array().expect("clusters");
    assert!(
        clusters.iter().any(|c| c["name"] == "shop/web/80"),
        "{stdout}"
    );
    // key material never printed
    assert!(!stdout.contains("PRIVATE KEY"), "private key leaked");
    // the example's Service that does not exist yet is a diagnostic
    assert!(
        doc["diagnostics"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["reason"] == "ServiceNotFound"),
        "{stdout}"
    );
    // Namespaces are read by nobody: skipped with a warning naming them
    assert!(
        stderr.contains("warning: skipping Namespace shop"),
        "{stderr}"
    );
}

#[test]
fn translate_yaml_is_the_default_output() {
    let out = isobar(&[
        "translate",
        "-f",
        examples().join("10-shop.yaml").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).expect("yaml output");
    assert!(doc.get("resources").is_some());
}

#[test]
fn bad_yaml_is_reported_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broken.yaml");
    std::fs::write(
        &file,
        "apiVersion: v1\nkind: Service\nmetadata: {name: ok, namespace: x}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: a: b\n",
    )
    .unwrap();
    let out = isobar(&["translate", "-f", file.to_str().unwrap(), "-o", "json"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains(&format!("{}:8:", file.display())),
        "{stderr}"
    );
    // the good document still went through
    serde_json::from_slice::<serde_json::Value>(&out.stdout).expect("output for the good objects");
}

#[test]
fn inspect_names_the_plugin_and_its_contract() {
    let out = isobar(&[
        "plugin",
        "inspect",
        plugin("isobar_plugin_ingress").to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["contract"], "isobar:plugin@0.2.0");
    assert_eq!(doc["world"], "translator");
    assert_eq!(doc["info"]["name"], "ingress");
    assert!(doc["digest"].as_str().unwrap().starts_with("sha256:"));
    assert!(
        doc["info"]["roots"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["kind"] == "Ingress")
    );
}

#[test]
fn inspect_names_a_0_1_plugin_as_such() {
    // the faults plugin stays on 0.1 on purpose: both versions load side by side
    let out = isobar(&[
        "plugin",
        "inspect",
        plugin("isobar_plugin_faults").to_str().unwrap(),
        "-o",
        "json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["contract"], "isobar:plugin@0.1.0");
    assert_eq!(doc["world"], "translator");
}

#[test]
fn a_plugin_for_another_contract_is_named_as_such() {
    let out = isobar(&[
        "plugin",
        "inspect",
        plugin("isobar_plugin_old_contract").to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("isobar:plugin@0.0.9") && stderr.contains("isobar:plugin@0.1.0"),
        "{stderr}"
    );
}

#[test]
fn a_missing_plugin_file_is_a_clear_error() {
    let out = isobar(&[
        "translate",
        "-f",
        examples().to_str().unwrap(),
        "--plugin",
        "/nonexistent.wasm",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("/nonexistent.wasm"),
        "{}",
        text(&out.stderr)
    );
}

/// `isobar plugin new` makes, for every language and world, a project that
/// passes its own tests. (Building the components takes minutes and the
/// network, so it is not done here.) A language whose toolchain is missing
/// is skipped, and says so.
#[test]
fn plugin_new_makes_projects_that_pass_their_own_tests() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let parent = tempfile::tempdir().unwrap();
    for (lang, test) in [
        ("rust", [cargo.as_str(), "test", "--offline"].as_slice()),
        ("python", &["python3", "-m", "unittest"]),
        ("js", &["node", "--test", "test/"]),
    ] {
        if Command::new(test[0]).arg("--version").output().is_err() {
            eprintln!("## SKIPPED plugin new --lang {lang}: no {} ##", test[0]);
            continue;
        }
        for world in ["translator", "reconciler", "policy"] {
            let name = format!("new-{lang}-{world}");
            let new = |name: &str| {
                Command::new(env!("CARGO_BIN_EXE_isobar"))
                    .args(["plugin", "new", "--lang", lang, "--world", world, name])
                    .arg("--dir")
                    .arg(parent.path())
                    .output()
                    .expect("running isobar")
            };
            let out = new(&name);
            assert!(out.status.success(), "{}", text(&out.stderr));
            let dir = parent.path().join(&name);
            let stdout = text(&out.stdout);
            assert!(
                stdout.contains(&format!("cd {}", dir.display())),
                "{stdout}"
            );
            assert!(stdout.contains("isobar plugin inspect"), "{stdout}");

            let run = Command::new(test[0])
                .args(&test[1..])
                .current_dir(&dir)
                // Rust: the target directory this test runs from, so the
                // dependencies the workspace compiled are reused.
                .env("CARGO_TARGET_DIR", target_dir())
                .output()
                .expect("running the project's tests");
            assert!(
                run.status.success(),
                "{lang} {world}: {:?} failed\n{}\n{}",
                test,
                text(&run.stdout),
                text(&run.stderr)
            );

            // The same name again: refused, the project left as it is.
            let again = new(&name);
            assert!(!again.status.success());
            assert!(
                text(&again.stderr).contains("already exists"),
                "{}",
                text(&again.stderr)
            );
        }
    }
}

/// The container arguments of the Deployment or Job named `name` in a
/// `deploy/` manifest.
fn deploy_args(file: &str, name: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
        if v["metadata"]["name"] == name && v["spec"]["template"].is_object() {
            return v["spec"]["template"]["spec"]["containers"][0]["args"]
                .as_array()
                .expect("container args")
                .iter()
                .map(|a| a.as_str().unwrap().to_string())
                .collect();
        }
    }
    panic!("no {name} with a pod template in {}", path.display());
}

/// What `deploy/` runs must be what the binary accepts: every flag parses
/// (a trailing --help stops before anything is started).
#[test]
fn the_deployment_and_the_certgen_job_pass_flags_the_binary_knows() {
    for (file, name) in [
        ("isobar.yaml", "isobar"),
        ("certgen.yaml", "isobar-certgen"),
    ] {
        let mut args = deploy_args(file, name);
        args.push("--help".into());
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = isobar(&refs);
        assert!(
            out.status.success(),
            "deploy/{file} passes flags `isobar` rejects: {args:?}\n{}",
            text(&out.stderr)
        );
    }
    // And a flag the binary does not know is rejected, so the check can fail.
    let out = isobar(&["serve", "--no-such-flag", "--help"]);
    assert!(!out.status.success());
}

#[test]
fn certgen_writes_pem_files_that_will_not_be_overwritten_by_accident() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let out = isobar(&["certgen", "--output-dir", d]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in [
        "ca.crt",
        "server.crt",
        "server.key",
        "client.crt",
        "client.key",
    ] {
        let pem = std::fs::read_to_string(dir.path().join(f)).unwrap();
        assert!(pem.starts_with("-----BEGIN "), "{f}");
    }
    let again = isobar(&["certgen", "--output-dir", d]);
    assert!(!again.status.success());
    assert!(text(&again.stderr).contains("--overwrite"));
    assert!(
        isobar(&["certgen", "--output-dir", d, "--overwrite"])
            .status
            .success()
    );
}

#[test]
fn translate_runs_several_translators_and_a_configured_policy_chain() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("objects.yaml"),
        r#"apiVersion: networking.k8s.io/v1
kind: IngressClass
metadata: {name: isobar}
spec: {controller: isobar.dev/ingress-controller}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: networking.k8s.io/v1
kind: Ingress
metadata: {name: shop, namespace: shop}
spec:
  ingressClassName: isobar
  rules:
  - host: shop.example.com
    http: {paths: [{path: /, pathType: Prefix, backend: {service: {name: web, port: {number: 80}}}}]}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: static
  namespace: shop
  annotations:
    isobar.dev/routes: '[{"host": "static.example.com", "service": "web", "port": 80}]'
"#,
    )
    .unwrap();
    // (outside the manifests: JSON there is read as objects)
    let config_dir = tempfile::tempdir().unwrap();
    let config = config_dir.path().join("policy.json");
    std::fs::write(&config, r#"{"tag": "from-the-cli"}"#).unwrap();
    let out = isobar(&[
        "translate",
        "-f",
        dir.path().to_str().unwrap(),
        "--plugin",
        plugin("isobar_plugin_ingress").to_str().unwrap(),
        "--plugin",
        plugin("isobar_plugin_configmap_routes").to_str().unwrap(),
        "--policy",
        plugin("isobar_plugin_faults_policy").to_str().unwrap(),
        "--plugin-config",
        &format!("faults-policy=@{}", config.display()),
        "-o",
        "json",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("static.example.com"), "{stdout}");
    assert!(stdout.contains("shop.example.com"), "{stdout}");
    assert!(stdout.contains("from-the-cli"), "{stdout}");

    // Two translators for Ingresses: refused, naming both.
    let out = isobar(&[
        "translate",
        "-f",
        dir.path().to_str().unwrap(),
        "--plugin",
        plugin("isobar_plugin_ingress").to_str().unwrap(),
        "--plugin",
        plugin("isobar_plugin_faults").to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("claimed by two translators")
            && stderr.contains("ingress (")
            && stderr.contains("faults ("),
        "{stderr}"
    );

    // Configuration for a plugin nobody loaded is an error, not ignored.
    let out = isobar(&[
        "translate",
        "-f",
        dir.path().to_str().unwrap(),
        "--plugin-config",
        &format!("nobody=@{}", config.display()),
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("\"nobody\""),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn plugin_push_refuses_what_is_not_a_plugin_before_any_request() {
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"\0asm\x01\0\0\0").unwrap();
    // Port 1 on loopback: nothing answers, and nothing is asked.
    let out = isobar(&[
        "plugin",
        "push",
        "--insecure",
        junk.to_str().unwrap(),
        "127.0.0.1:1/team/junk:1.0",
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("loading plugin"), "{stderr}");
    assert!(out.stdout.is_empty(), "no digest printed");
}

#[test]
fn plugin_pull_from_an_unreachable_registry_fails_clearly_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("p.wasm");
    let out = isobar(&[
        "plugin",
        "pull",
        "--insecure",
        &format!("127.0.0.1:1/team/p@sha256:{}", "a".repeat(64)),
        "-o",
        out_file.to_str().unwrap(),
    ]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("pulling 127.0.0.1:1/team/p@sha256:"),
        "{stderr}"
    );
    assert!(!out_file.exists());
}
