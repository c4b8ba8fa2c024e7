//! Compiled components by content hash: compiling a large guest takes
//! seconds, loading a cached artifact milliseconds.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::PathBuf;

use parking_lot::Mutex;
use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginError;

pub(super) struct ComponentCache {
    memory: Mutex<HashMap<String, Component>>,
    dir: Option<PathBuf>,
}

impl ComponentCache {
    pub fn new(dir: Option<PathBuf>) -> Self {
        ComponentCache {
            memory: Mutex::new(HashMap::new()),
            dir,
        }
    }

    pub fn get_or_compile(
        &self,
        engine: &Engine,
        digest: &str,
        bytes: &[u8],
    ) -> Result<Component, PluginError> {
        if let Some(c) = self.memory.lock().get(digest) {
            return Ok(c.clone());
        }
        let artifact = self
            .dir
            .as_ref()
            .map(|d| d.join(format!("{digest}-{}.cwasm", engine_fingerprint(engine))));
        if let Some(path) = artifact.as_ref().filter(|p| p.exists()) {
            // SAFETY: the file was written by `Component::serialize` of an
            // engine with the same compatibility hash, into a directory the
            // host owns; wasmtime re-checks the header on load.
            match unsafe { Component::deserialize_file(engine, path) } {
                Ok(c) => {
                    self.memory.lock().insert(digest.to_string(), c.clone());
                    return Ok(c);
                }
                Err(error) => {
                    tracing::warn!(path = %path.display(), %error, "ignoring unusable cached component")
                }
            }
        }
        let component =
            Component::new(engine, bytes).map_err(|e| PluginError::Invalid(format!("{e:#}")))?;
        if let Some(path) = artifact {
            if let Err(error) = write_artifact(&component, &path) {
                tracing::warn!(path = %path.display(), %error, "could not cache compiled component");
            }
        }
        self.memory
            .lock()
            .insert(digest.to_string(), component.clone());
        Ok(component)
    }
}

fn write_artifact(component: &Component, path: &std::path::Path) -> anyhow::Result<()> {
    let bytes = component.serialize()?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    // Write then rename, so a concurrent reader never sees half a file.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

fn engine_fingerprint(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}
