//! Interop with gRPC's own xDS client: `isobar serve` runs in-process on
//! ephemeral ports; `interop/grpc_xds_client.py` (grpcio, from a venv)
//! starts two gRPC backends, writes the manifests into the watched
//! directory, dials `xds:///hello.example.com` through a bootstrap pointing
//! at our ADS port, and checks that routing by path follows the Ingress
//! (Exact and Prefix) and a live change of it.
//!
//! The venv is the tests' (`isobar_tests::harness::venv`: grpcio pinned by
//! hash in `tests/venv/requirements.txt`), created here when missing.
//! Without python3 the test is skipped, loudly.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use isobar::serve::{Config, Server};
use isobar_tests::harness::venv;
use isobar_tests::{plugin_path, target_dir};

/// Bounds the whole script (it bounds each of its own waits too).
const SCRIPT_LIMIT: Duration = Duration::from_secs(240);

fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_xds_client_follows_ingress_routes() {
    let python = match tokio::task::spawn_blocking(venv::python).await.unwrap() {
        Ok(python) => python,
        Err(why) => {
            venv::skipped(
                "grpc_xds_client_follows_ingress_routes",
                &format!("gRPC's xDS client interop needs python3 and grpcio: {why}"),
            );
            return;
        }
    };

    let manifests = tempfile::tempdir().unwrap();
    let plugin_dir = tempfile::tempdir().unwrap();
    let plugin = plugin_dir.path().join("ingress.wasm");
    std::fs::copy(plugin_path("isobar-plugin-ingress"), &plugin).unwrap();
    let mut config = Config::new(manifests.path(), &plugin);
    config.xds_listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.cache_dir = Some(target_dir().join("isobar-test-cache"));
    let server = Server::start(config).await.expect("serve starts");
    assert!(server.ready(Duration::from_secs(60)).await);

    let script = here().join("grpc_xds_client.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg("--xds")
        .arg(server.xds_addr().to_string())
        .arg("--manifests")
        .arg(manifests.path())
        .env_remove("GRPC_XDS_BOOTSTRAP")
        .env_remove("GRPC_XDS_BOOTSTRAP_CONFIG")
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    let pid = child.id();
    let waited = tokio::time::timeout(
        SCRIPT_LIMIT,
        tokio::task::spawn_blocking(move || child.wait()),
    )
    .await;
    let status = match waited {
        Ok(joined) => joined.unwrap().unwrap(),
        Err(_) => {
            // Our own child, by its pid.
            let _ = Command::new("kill").arg(pid.to_string()).status();
            panic!(
                "{} did not finish within {SCRIPT_LIMIT:?}",
                script.display()
            );
        }
    };
    let diagnostics = server.report().diagnostics();
    let manifest_errors = server.report().manifest_errors();
    server.shutdown().await.unwrap();
    assert!(
        status.success(),
        "{} failed ({status}); diagnostics: {diagnostics:?}; manifest errors: {manifest_errors:?}",
        script.display()
    );
}
