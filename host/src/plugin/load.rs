//! Loading plugins from files: where they are when none is named, the
//! engine the CLI uses, and what `isobar plugin inspect` prints.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::{Grants, Limits, Plugin, PluginError, Runtime, World};

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

/// The engine with the default compile cache.
pub fn runtime(limits: Limits) -> anyhow::Result<Runtime> {
    Runtime::new(limits, default_cache_dir()).context("starting the Wasm engine")
}

/// Loads a translator with WASI capabilities granted to it; the default
/// Ingress plugin when `path` is none.
pub fn load_translator(
    runtime: &Runtime,
    path: Option<&Path>,
    grants: Grants,
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

/// What `isobar plugin inspect` prints.
#[derive(serde::Serialize)]
pub struct Inspection {
    /// `isobar:plugin@0.2.0`.
    pub contract: String,
    pub world: World,
    pub digest: String,
    pub info: serde_json::Value,
}

/// Inspects a component of any world and contract version.
pub fn inspect_file(runtime: &Runtime, path: &Path) -> anyhow::Result<Inspection> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))?;
    let source = path.display().to_string();
    let loading = || format!("loading plugin {}", path.display());
    let (version, world) = runtime
        .identify(&bytes)
        .map_err(anyhow::Error::new)
        .with_context(loading)?;
    let (digest, info) = match world {
        World::Translator => {
            let p = runtime
                .load_with(&bytes, &source, Grants::default())
                .map_err(anyhow::Error::new)
                .with_context(loading)?;
            (p.digest, serde_json::to_value(&p.info)?)
        }
        World::Policy => {
            let p = runtime
                .load_policy(&bytes, &source, Grants::default(), None)
                .map_err(anyhow::Error::new)
                .with_context(loading)?;
            (p.digest, serde_json::to_value(&p.info)?)
        }
        World::Reconciler => {
            let p = runtime
                .load_reconciler(&bytes, &source)
                .map_err(anyhow::Error::new)
                .with_context(loading)?;
            (p.digest, serde_json::to_value(&p.info)?)
        }
    };
    Ok(Inspection {
        contract: version.contract(),
        world,
        digest: format!("sha256:{digest}"),
        info,
    })
}
