//! `isobar translate`: manifest files through a plugin, offline.

use std::collections::BTreeSet;
use std::path::PathBuf;

use super::{Offline, host_kinds};
use crate::ir;
use crate::plugin::Plugins;
use crate::source::files::{self, ManifestError};
use crate::store::{Event, KindKey};

/// The outcome of translating a set of manifests.
pub struct Translated {
    pub pipeline: Offline,
    /// Objects of kinds nobody reads: (kind, namespace/name, file:line).
    pub skipped: Vec<String>,
    pub manifest_errors: Vec<ManifestError>,
}

impl Translated {
    pub fn diagnostics(&self) -> Vec<ir::Diagnostic> {
        self.pipeline.diagnostics()
    }
}

/// Reads manifests, keeps the kinds the plugins or the host read, and
/// builds the snapshot.
pub fn translate(plugins: impl Into<Plugins>, paths: &[PathBuf]) -> Translated {
    let plugins = plugins.into();
    let loaded = files::load_paths(paths);
    let mut known: BTreeSet<KindKey> = plugins.kinds().into_iter().collect();
    known.extend(host_kinds());
    let mut skipped = Vec::new();
    let mut events = Vec::new();
    for m in &loaded.manifests {
        if known.contains(&m.object.kind_key()) {
            events.push(Event::Apply(m.object.clone()));
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
    let mut pipeline = Offline::with(plugins);
    pipeline.load(events);
    pipeline.rebuild();
    Translated {
        pipeline,
        skipped,
        manifest_errors: loaded.errors,
    }
}
