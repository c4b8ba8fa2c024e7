//! Compiled components by content hash: compiling a large guest takes
//! seconds, loading a cached artifact milliseconds.
//!
//! A cached artifact is native code the host will run: loading one is
//! trusting whoever could write it. So the directory must be the user's
//! own (created 0700; one that another user owns or can write is not used),
//! every artifact carries the SHA-256 of its contents, written by the host,
//! and an artifact is loaded only from the bytes that were just hashed and
//! found equal (no second read of the file between check and use).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use parking_lot::Mutex;
use sha2::{Digest, Sha256};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::PluginError;

/// Bytes of the SHA-256 that precedes an artifact's contents.
const HASH_LEN: usize = 32;

pub(super) struct ComponentCache {
    memory: Mutex<HashMap<String, Component>>,
    dir: Option<PathBuf>,
}

impl ComponentCache {
    pub fn new(dir: Option<PathBuf>) -> Self {
        let dir = dir.filter(|d| match private_dir(d) {
            Ok(()) => true,
            Err(why) => {
                tracing::warn!(dir = %d.display(), %why, "not caching compiled components on disk");
                false
            }
        });
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
        if let Some(path) = &artifact
            && let Some(c) = load_artifact(engine, path)
        {
            self.memory.lock().insert(digest.to_string(), c.clone());
            return Ok(c);
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

/// The artifact at `path`, if there is one the host wrote: a regular file
/// of the user's that nobody else may write, whose contents match the
/// hash before them. Anything else is ignored (and then overwritten).
fn load_artifact(engine: &Engine, path: &Path) -> Option<Component> {
    let meta = std::fs::symlink_metadata(path).ok()?;
    let ignore = |why: &str| {
        tracing::warn!(path = %path.display(), why, "ignoring cached component");
        None
    };
    if !meta.file_type().is_file() {
        return ignore("not a regular file");
    }
    if let Err(why) = owned_and_private(&meta) {
        return ignore(why);
    }
    let data = std::fs::read(path).ok()?;
    if data.len() < HASH_LEN || Sha256::digest(&data[HASH_LEN..])[..] != data[..HASH_LEN] {
        return ignore("its contents do not match their hash");
    }
    // SAFETY: these bytes are what `write_artifact` wrote (their hash, kept
    // with them in a directory only this user can write, matches), i.e.
    // `Component::serialize` of an engine with the same compatibility hash;
    // wasmtime re-checks the header on load.
    match unsafe { Component::deserialize(engine, &data[HASH_LEN..]) } {
        Ok(c) => Some(c),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring unusable cached component");
            None
        }
    }
}

fn write_artifact(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component.serialize()?;
    let mut data = Vec::with_capacity(HASH_LEN + bytes.len());
    data.extend_from_slice(&Sha256::digest(&bytes));
    data.extend_from_slice(&bytes);
    // Write then rename, so a concurrent reader never sees half a file; the
    // file is created new (never through a link) and private.
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let written = options
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, &data));
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

/// Creates `dir` (mode 0700) if needed and checks it is the user's own:
/// a real directory, owned by this user, writable by nobody else.
fn private_dir(dir: &Path) -> Result<(), String> {
    if std::fs::symlink_metadata(dir).is_err() {
        let mut builder = std::fs::DirBuilder::new();
        builder.recursive(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::DirBuilderExt;
            builder.mode(0o700);
        }
        builder
            .create(dir)
            .map_err(|e| format!("cannot create it: {e}"))?;
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| e.to_string())?;
    if !meta.file_type().is_dir() {
        return Err("not a directory (or a symlink to one)".into());
    }
    owned_and_private(&meta).map_err(str::to_string)
}

#[cfg(unix)]
fn owned_and_private(meta: &std::fs::Metadata) -> Result<(), &'static str> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if meta.uid() != me {
        return Err("owned by another user");
    }
    if meta.mode() & 0o022 != 0 {
        return Err("writable by group or others");
    }
    Ok(())
}

#[cfg(not(unix))]
fn owned_and_private(_meta: &std::fs::Metadata) -> Result<(), &'static str> {
    Ok(())
}

fn engine_fingerprint(engine: &Engine) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}
