//! The host's offline jobs as library calls: translate manifests through a
//! plugin, describe a plugin. `main` parses flags and calls these.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::ir;
use crate::pipeline::Pipeline;
use crate::plugin::{Limits, Plugin, PluginError, Runtime};
use crate::source::files::{self, ManifestError};
use crate::store::KindKey;

/// Kinds the host reads itself, whatever the plugin watches.
pub fn host_kinds() -> [KindKey; 3] {
    [
        KindKey::new("v1", "Service"),
        KindKey::new("discovery.k8s.io/v1", "EndpointSlice"),
        KindKey::new("v1", "Secret"),
    ]
}

/// Where the compiled-component cache lives unless told otherwise.
pub fn default_cache_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("isobar").join("components"))
}

/// The Ingress plugin when none is named: `$ISOBAR_PLUGIN`, the build tree
/// next to this binary, then the container image's location.
pub fn default_plugin_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ISOBAR_PLUGIN") {
        return Some(PathBuf::from(p));
    }
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/isobar -> target/wasm32-wasip2/release/
        if let Some(target) = exe.parent().and_then(Path::parent) {
            candidates.push(target.join("wasm32-wasip2/release/isobar_plugin_ingress.wasm"));
        }
    }
    // Where the container image (deploy/Dockerfile) puts it.
    candidates.push(PathBuf::from("/plugins/isobar_plugin_ingress.wasm"));
    candidates.into_iter().find(|p| p.exists())
}

pub fn runtime(limits: Limits) -> anyhow::Result<Runtime> {
    Runtime::new(limits, default_cache_dir()).context("starting the Wasm engine")
}

pub fn load_plugin(runtime: &Runtime, path: Option<&Path>) -> anyhow::Result<Plugin> {
    load_plugin_with(runtime, path, crate::plugin::Grants::default())
}

/// Loads a plugin with WASI capabilities granted to it.
pub fn load_plugin_with(
    runtime: &Runtime,
    path: Option<&Path>,
    grants: crate::plugin::Grants,
) -> anyhow::Result<Plugin> {
    let path = match path {
        Some(p) => p.to_path_buf(),
        None => default_plugin_path().context(
            "no plugin given and the default Ingress plugin was not found; pass --plugin X.wasm or set ISOBAR_PLUGIN",
        )?,
    };
    let bytes =
        std::fs::read(&path).with_context(|| format!("reading plugin {}", path.display()))?;
    runtime
        .load_with(&bytes, &path.display().to_string(), grants)
        .map_err(|e: PluginError| anyhow::anyhow!(e))
        .with_context(|| format!("loading plugin {}", path.display()))
}

/// The outcome of translating a set of manifests.
pub struct Translated {
    pub pipeline: Pipeline,
    /// Objects of kinds nobody reads: (kind, namespace/name, file:line).
    pub skipped: Vec<String>,
    pub manifest_errors: Vec<ManifestError>,
}

impl Translated {
    pub fn diagnostics(&self) -> Vec<ir::Diagnostic> {
        self.pipeline.diagnostics()
    }
}

/// Reads manifests, keeps the kinds the plugin or the host reads, and
/// builds the snapshot.
pub fn translate_manifests(plugin: Plugin, paths: &[PathBuf]) -> Translated {
    let loaded = files::load_paths(paths);
    let mut known: BTreeSet<KindKey> = plugin.watched_kinds().into_iter().collect();
    known.extend(plugin.root_kinds());
    known.extend(host_kinds());
    let mut skipped = Vec::new();
    let mut events = Vec::new();
    for m in &loaded.manifests {
        if known.contains(&m.object.kind_key()) {
            events.push(crate::store::Event::Apply(m.object.clone()));
        } else {
            skipped.push(format!(
                "{} {}{} ({}:{}): no loaded plugin reads this kind",
                m.object.kind,
                if m.object.namespace.is_empty() {
                    String::new()
                } else {
                    format!("{}/", m.object.namespace)
                },
                m.object.name,
                m.file.display(),
                m.line
            ));
        }
    }
    let mut pipeline = Pipeline::new(plugin);
    pipeline.load(events);
    pipeline.rebuild();
    Translated {
        pipeline,
        skipped,
        manifest_errors: loaded.errors,
    }
}

/// What `isobar plugin inspect` prints.
#[derive(serde::Serialize)]
pub struct Inspection {
    pub contract: String,
    /// `translator` or `reconciler`.
    pub world: &'static str,
    pub digest: String,
    pub info: serde_json::Value,
}

fn contract() -> String {
    format!(
        "{}@{}",
        crate::plugin::CONTRACT_PACKAGE,
        crate::plugin::CONTRACT_VERSION
    )
}

pub fn inspect(plugin: &Plugin) -> Inspection {
    Inspection {
        contract: contract(),
        world: "translator",
        digest: format!("sha256:{}", plugin.digest),
        info: serde_json::to_value(&plugin.info).unwrap_or_default(),
    }
}

/// Inspects a component of either world.
pub fn inspect_file(runtime: &Runtime, path: &Path) -> anyhow::Result<Inspection> {
    match load_plugin(runtime, Some(path)) {
        Ok(plugin) => Ok(inspect(&plugin)),
        Err(e)
            if e.root_cause()
                .downcast_ref::<PluginError>()
                .is_some_and(|e| matches!(e, PluginError::WrongWorld { .. })) =>
        {
            let plugin = runtime
                .load_reconciler_file(path)
                .map_err(|e| anyhow::anyhow!(e))
                .with_context(|| format!("loading plugin {}", path.display()))?;
            Ok(Inspection {
                contract: contract(),
                world: "reconciler",
                digest: format!("sha256:{}", plugin.digest),
                info: serde_json::to_value(&plugin.info).unwrap_or_default(),
            })
        }
        Err(e) => Err(e),
    }
}
