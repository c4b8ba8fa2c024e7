//! Interop with gRPC's own xDS client: `isobar serve` runs in-process on
//! ephemeral ports; `interop/grpc_xds_client.py` (grpcio, from a venv)
//! starts two gRPC backends, writes the manifests into the watched
//! directory, dials `xds:///hello.example.com` through a bootstrap pointing
//! at our ADS port, and checks that routing by path follows the Ingress
//! (Exact and Prefix) and a live change of it.
//!
//! The venv is `$ISOBAR_INTEROP_VENV`, else `<target>/interop-venv` (what
//! `make interop-venv` creates); it is created here when missing. Without
//! python3 the test is skipped, loudly.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use isobar::serve::{Config, Server};
use isobar_tests::{plugin_path, target_dir};

/// Bounds the whole script (it bounds each of its own waits too).
const SCRIPT_LIMIT: Duration = Duration::from_secs(240);

fn here() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("interop")
}

fn python3() -> Option<String> {
    let candidate = std::env::var("PYTHON3").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&candidate)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    matches!(ok, Ok(s) if s.success()).then_some(candidate)
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(status.success(), "{cmd:?} failed: {status}");
}

/// A venv with the pinned requirements, made (or brought up to date) if needed.
fn venv(python3: &str) -> PathBuf {
    let dir = std::env::var_os("ISOBAR_INTEROP_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("interop-venv"));
    let python = dir.join("bin").join("python");
    let requirements = here().join("requirements.txt");
    let wanted = std::fs::read_to_string(&requirements).unwrap();
    let stamp = dir.join(".isobar-requirements");
    if python.exists() && std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return python;
    }
    eprintln!(
        "interop: creating the venv {} (grpcio from PyPI)",
        dir.display()
    );
    if !python.exists() {
        run(Command::new(python3).args(["-m", "venv"]).arg(&dir));
    }
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(&requirements));
    std::fs::write(&stamp, wanted).unwrap();
    python
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_xds_client_follows_ingress_routes() {
    let Some(python3) = python3() else {
        eprintln!();
        eprintln!("################################################################");
        eprintln!("## SKIPPED grpc_xds_client_follows_ingress_routes: no python3 ##");
        eprintln!("## (gRPC's xDS client interop needs python3 and grpcio)        ##");
        eprintln!("################################################################");
        eprintln!();
        return;
    };
    let python = tokio::task::spawn_blocking(move || venv(&python3))
        .await
        .unwrap();

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
