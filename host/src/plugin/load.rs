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

/// Reads each plugin's configuration file: JSON, an object.
pub fn read_configs(files: &[(String, PathBuf)]) -> anyhow::Result<super::Configs> {
    let mut configs = super::Configs::new();
    for (name, path) in files {
        configs.insert(name.clone(), read_config(path)?);
    }
    Ok(configs)
}

/// One configuration file, checked to be a JSON object.
pub fn read_config(path: &Path) -> anyhow::Result<std::sync::Arc<str>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading plugin configuration {}", path.display()))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(_)) => Ok(std::sync::Arc::from(text.as_str())),
        Ok(_) => anyhow::bail!(
            "plugin configuration {} is not a JSON object",
            path.display()
        ),
        Err(e) => {
            Err(e).with_context(|| format!("parsing plugin configuration {}", path.display()))
        }
    }
}

/// Loads translators and policies (in chain order) with their
/// configuration; refuses two translators claiming one root kind and
/// configuration for a plugin that is not loaded.
pub fn load_plugins(
    runtime: &Runtime,
    translators: &[PathBuf],
    policies: &[PathBuf],
    configs: &super::Configs,
    grants: Grants,
) -> anyhow::Result<super::Plugins> {
    let read =
        |p: &Path| std::fs::read(p).with_context(|| format!("reading plugin {}", p.display()));
    let translators = translators
        .iter()
        .map(|p| {
            runtime
                .load_translator(&read(p)?, &p.display().to_string(), grants.clone(), configs)
                .map_err(anyhow::Error::new)
                .with_context(|| format!("loading plugin {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let policies = policies
        .iter()
        .map(|p| {
            runtime
                .load_policy(&read(p)?, &p.display().to_string(), grants.clone(), configs)
                .map_err(anyhow::Error::new)
                .with_context(|| format!("loading policy {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let plugins = super::Plugins::new(translators, policies).map_err(anyhow::Error::new)?;
    for name in configs.keys() {
        let known = plugins.translators.iter().any(|p| &p.info.name == name)
            || plugins.policies.iter().any(|p| &p.info.name == name);
        if !known {
            anyhow::bail!(
                "configuration given for plugin {name:?}, which is not loaded (plugins are named by what they declare: isobar plugin inspect)"
            );
        }
    }
    Ok(plugins)
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
                .load_policy(&bytes, &source, Grants::default(), &Default::default())
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

/// `isobar plugin push`: checks that the file is a plugin of this
/// contract, then pushes it; the manifest digest.
pub async fn push_file(
    runtime: &Runtime,
    path: &Path,
    reference: &str,
    access: &crate::oci::Access,
) -> anyhow::Result<String> {
    let bytes =
        std::fs::read(path).with_context(|| format!("reading plugin {}", path.display()))?;
    let interface = runtime
        .interface(&bytes)
        .map_err(anyhow::Error::new)
        .with_context(|| format!("loading plugin {}", path.display()))?;
    Ok(crate::oci::push(&bytes, &interface, reference, access).await?)
}

/// `isobar plugin pull`: pulls (digests checked), checks that it is a
/// plugin of this contract, writes it to `out`; the manifest digest.
pub async fn pull_file(
    runtime: &Runtime,
    reference: &str,
    access: &crate::oci::Access,
    out: &Path,
) -> anyhow::Result<String> {
    let pulled = crate::oci::pull(reference, access, None, false).await?;
    runtime
        .identify(&pulled.bytes)
        .map_err(anyhow::Error::new)
        .with_context(|| format!("{reference} is not an Isobar plugin"))?;
    std::fs::write(out, &pulled.bytes).with_context(|| format!("writing {}", out.display()))?;
    Ok(pulled.manifest_digest)
}
