//! Compiles the Envoy protobuf descriptors that `isobar::dump` needs to print
//! resources as proto3 JSON.
//!
//! envoy-types ships prost types but no descriptor set; its crate source does
//! ship the `.proto` tree it was generated from. We find that tree, compile the
//! few files we need (and their imports) with protox, and write the encoded
//! `FileDescriptorSet` to `$OUT_DIR/envoy_descriptors.bin`, which `dump`
//! embeds with `include_bytes!`.
//!
//! This script never fails the build: if the protos cannot be found or do
//! not compile, it warns, writes an empty set and a status line explaining
//! why, and `dump` reports that at run time.
//!
//! Where the protos are looked for, first hit wins:
//! 1. `$ISOBAR_ENVOY_PROTO_DIR` (the `proto` directory itself);
//! 2. `vendor/envoy-types{-VERSION,}/proto` beside the workspace `Cargo.lock`;
//! 3. `$CARGO_HOME/registry/src/*/envoy-types-VERSION/proto`, then the same
//!    under `$HOME/.cargo` (or `%USERPROFILE%\.cargo`).
//!
//! VERSION is the envoy-types version locked in the workspace `Cargo.lock`,
//! so the descriptors always match the prost types the host encodes with.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// envoy-types version to assume when `Cargo.lock` cannot be read.
const FALLBACK_VERSION: &str = "0.7.7";

/// Include roots inside envoy-types' `proto` directory (those that exist are
/// used; `google/protobuf/*` comes built into protox).
const INCLUDE_ROOTS: &[&str] = &[
    "data-plane-api",
    "xds",
    "protoc-gen-validate",
    "googleapis",
    "cel-spec/proto",
    "opentelemetry-proto",
    "client_model",
];

/// The files we compile, relative to the include roots. Their imports come
/// along. Keep this list short: every file costs build time and binary size.
const FILES: &[&str] = &[
    // The five resource types the host serves.
    "envoy/config/listener/v3/listener.proto",
    "envoy/config/route/v3/route.proto",
    "envoy/config/cluster/v3/cluster.proto",
    "envoy/config/endpoint/v3/endpoint.proto",
    "envoy/extensions/transport_sockets/tls/v3/secret.proto",
    // What the host packs into `Any`s.
    "envoy/extensions/filters/network/http_connection_manager/v3/http_connection_manager.proto",
    "envoy/extensions/filters/http/router/v3/router.proto",
    "envoy/extensions/filters/listener/tls_inspector/v3/tls_inspector.proto",
    "envoy/extensions/transport_sockets/tls/v3/tls.proto",
    "envoy/extensions/upstreams/http/v3/http_protocol_options.proto",
    // Envoy's own config dump, to print real admin output the same way.
    "envoy/admin/v3/config_dump.proto",
];

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=ISOBAR_ENVOY_PROTO_DIR");
    println!("cargo:rerun-if-env-changed=CARGO_HOME");

    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let (descriptors, status) = match build() {
        Ok((bytes, status)) => (bytes, status),
        Err(reason) => {
            println!("cargo:warning=isobar dump: no Envoy descriptors: {reason}");
            (Vec::new(), reason)
        }
    };
    write_if_changed(&out_dir.join("envoy_descriptors.bin"), &descriptors);
    write_if_changed(&out_dir.join("envoy_descriptors.status"), status.as_bytes());
}

/// Returns the encoded descriptor set and a one-line status.
fn build() -> Result<(Vec<u8>, String), String> {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").ok_or("CARGO_MANIFEST_DIR unset")?);
    let lock = find_lockfile(&manifest_dir);
    if let Some(lock) = &lock {
        // A new envoy-types version means other protos.
        println!("cargo:rerun-if-changed={}", lock.display());
    }
    let version = lock
        .as_deref()
        .and_then(locked_version)
        .unwrap_or_else(|| FALLBACK_VERSION.to_string());

    let proto_dir = find_proto_dir(&version, lock.as_deref()).ok_or_else(|| {
        format!(
            "envoy-types-{version}/proto not found (looked in $ISOBAR_ENVOY_PROTO_DIR, vendor/, \
             $CARGO_HOME/registry/src and ~/.cargo/registry/src); set ISOBAR_ENVOY_PROTO_DIR to \
             envoy-types' proto directory and rebuild"
        )
    })?;

    let includes: Vec<PathBuf> = INCLUDE_ROOTS
        .iter()
        .map(|root| proto_dir.join(root))
        .filter(|dir| dir.is_dir())
        .collect();
    let started = Instant::now();
    let mut compiler = protox::Compiler::new(&includes).map_err(|e| format!("protox: {e}"))?;
    compiler.include_imports(true).include_source_info(false);
    let mut compiled = 0;
    for file in FILES {
        // One file that moved between envoy-types versions must not cost us
        // the others.
        match compiler.open_file(file) {
            Ok(_) => compiled += 1,
            Err(e) => println!("cargo:warning=isobar dump: skipping {file}: {e}"),
        }
    }
    if compiled == 0 {
        return Err(format!(
            "none of the Envoy protos compiled from {}",
            proto_dir.display()
        ));
    }
    let bytes = compiler.encode_file_descriptor_set();
    let status = format!(
        "{} files ({} requested) from envoy-types-{version}, {} bytes, compiled in {} ms",
        compiler.files().len(),
        compiled,
        bytes.len(),
        started.elapsed().as_millis()
    );
    Ok((bytes, status))
}

/// The workspace `Cargo.lock`: the nearest one above the manifest directory.
fn find_lockfile(manifest_dir: &Path) -> Option<PathBuf> {
    manifest_dir
        .ancestors()
        .map(|dir| dir.join("Cargo.lock"))
        .find(|lock| lock.is_file())
}

/// The version of envoy-types in a `Cargo.lock` (the first, if several).
fn locked_version(lock: &Path) -> Option<String> {
    let text = fs::read_to_string(lock).ok()?;
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.trim() == r#"name = "envoy-types""# {
            let version = lines.next()?.trim().strip_prefix("version = ")?;
            return Some(version.trim_matches('"').to_string());
        }
    }
    None
}

fn find_proto_dir(version: &str, lock: Option<&Path>) -> Option<PathBuf> {
    let is_proto_dir = |dir: &Path| {
        dir.join("data-plane-api/envoy/config/listener/v3/listener.proto")
            .is_file()
    };

    if let Some(dir) = env::var_os("ISOBAR_ENVOY_PROTO_DIR") {
        let dir = PathBuf::from(dir);
        if is_proto_dir(&dir) {
            return Some(dir);
        }
        println!(
            "cargo:warning=isobar dump: ISOBAR_ENVOY_PROTO_DIR={} holds no data-plane-api; ignoring it",
            dir.display()
        );
    }

    let mut candidates = Vec::new();
    if let Some(workspace) = lock.and_then(Path::parent) {
        candidates.push(workspace.join(format!("vendor/envoy-types-{version}/proto")));
        candidates.push(workspace.join("vendor/envoy-types/proto"));
    }
    let mut cargo_homes: Vec<PathBuf> = Vec::new();
    if let Some(home) = env::var_os("CARGO_HOME") {
        cargo_homes.push(home.into());
    }
    for var in ["HOME", "USERPROFILE"] {
        if let Some(home) = env::var_os(var) {
            cargo_homes.push(Path::new(&home).join(".cargo"));
        }
    }
    for cargo_home in &cargo_homes {
        // One directory per registry (crates.io's sparse and git indexes,
        // mirrors); sorted so the choice is stable.
        let Ok(entries) = fs::read_dir(cargo_home.join("registry/src")) else {
            continue;
        };
        let mut registries: Vec<PathBuf> =
            entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        registries.sort();
        candidates.extend(
            registries
                .into_iter()
                .map(|r| r.join(format!("envoy-types-{version}/proto"))),
        );
    }
    candidates.into_iter().find(|dir| is_proto_dir(dir))
}

fn write_if_changed(path: &Path, contents: &[u8]) {
    if fs::read(path).is_ok_and(|old| old == contents) {
        return;
    }
    fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}
