//! The manifest directory as a live set of objects.
//!
//! Each file's last good objects are kept. A file that fails to read or
//! parse keeps serving what it held before and reports file and line; a
//! file that disappears takes its objects with it. An object defined in
//! several files comes from the first of them (by path).
//!
//! Every object read is kept, whatever its kind: which kinds reach the
//! store depends on the plugin loaded, and a swap may change that.

use std::collections::{BTreeMap, BTreeSet};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;
use tracing::{info, warn};

use super::files::{self, Loaded, ManifestError};
use crate::store::{Event, Object, ObjectKey};

/// What one file currently contributes.
#[derive(Debug, Default)]
struct FileState {
    objects: BTreeMap<ObjectKey, Arc<Object>>,
}

/// What reading a file gave.
enum Read {
    /// Parsed cleanly: these are its objects now.
    Objects(BTreeMap<ObjectKey, Arc<Object>>),
    /// The file is gone.
    Removed,
    /// Unreadable or invalid: keep its last good objects.
    Invalid(Vec<ManifestError>),
}

#[derive(Debug)]
pub struct ManifestSet {
    root: PathBuf,
    files: BTreeMap<PathBuf, FileState>,
    errors: BTreeMap<PathBuf, Vec<ManifestError>>,
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

impl ManifestSet {
    pub fn new(root: PathBuf) -> Self {
        ManifestSet {
            root,
            files: BTreeMap::new(),
            errors: BTreeMap::new(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Current problems, by file then line.
    pub fn errors(&self) -> Vec<ManifestError> {
        self.errors.values().flatten().cloned().collect()
    }

    /// Every object in effect (the first file defining a key wins).
    pub fn objects(&self) -> Vec<Arc<Object>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for state in self.files.values() {
            for (key, obj) in &state.objects {
                if seen.insert(key.clone()) {
                    out.push(obj.clone());
                }
            }
        }
        out
    }

    /// Reads every manifest under the root again; files that vanished are
    /// forgotten.
    pub fn rescan(&mut self) -> Vec<Event> {
        let mut paths: BTreeSet<PathBuf> = self.files.keys().cloned().collect();
        paths.extend(self.errors.keys().cloned());
        match files::manifest_files(&self.root) {
            Ok(found) => paths.extend(found),
            Err(e) => {
                // The directory itself is unreadable: keep everything.
                warn!(dir = %self.root.display(), error = %e, "cannot list the manifest directory; keeping the last good objects");
                self.errors.insert(
                    self.root.clone(),
                    vec![ManifestError {
                        file: self.root.clone(),
                        line: 0,
                        message: e.to_string(),
                    }],
                );
                return Vec::new();
            }
        }
        self.errors.remove(&self.root);
        self.reload(paths)
    }

    /// Brings the set up to date with the paths a watcher reported (files
    /// or directories, existing or not) and returns the store events.
    pub fn refresh<'a>(&mut self, changed: impl IntoIterator<Item = &'a PathBuf>) -> Vec<Event> {
        let mut paths = BTreeSet::new();
        for p in changed {
            if !p.starts_with(&self.root) {
                continue;
            }
            if let Some((dir, name)) = self.hidden(p) {
                // Hidden files are not manifests (editor swap files, files
                // written aside before a rename). But a mounted ConfigMap is
                // updated by replacing its `..data` link, which changes what
                // the visible names point at: read that directory again
                // (unchanged files cost nothing downstream).
                if name.starts_with("..") {
                    paths.extend(
                        files::manifest_files(&dir)
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|f| f.parent() == Some(&dir)),
                    );
                }
                continue;
            }
            if p.is_dir() {
                paths.extend(files::manifest_files(p).unwrap_or_default());
            } else if is_manifest(p) {
                paths.insert(p.clone());
            }
            // A removed or renamed directory: whatever we held under it.
            paths.extend(
                self.files
                    .keys()
                    .chain(self.errors.keys())
                    .filter(|f| f.starts_with(p) && *f != p)
                    .cloned(),
            );
        }
        self.reload(paths)
    }

    /// For a hidden path under the root (hidden files and directories are
    /// not manifests, as in `files::manifest_files`): the directory holding
    /// its first hidden component, and that component.
    fn hidden(&self, p: &Path) -> Option<(PathBuf, String)> {
        let rel = p.strip_prefix(&self.root).ok()?;
        let mut dir = self.root.clone();
        for c in rel.components() {
            if let Some(name) = c.as_os_str().to_str().filter(|s| s.starts_with('.')) {
                return Some((dir, name.to_string()));
            }
            dir.push(c);
        }
        None
    }

    fn read(file: &Path) -> Read {
        match files::read_manifest(file) {
            Ok(text) => {
                let mut loaded = Loaded::default();
                files::parse_into(file, &text, &mut loaded);
                if !loaded.errors.is_empty() {
                    return Read::Invalid(loaded.errors);
                }
                let mut objects = BTreeMap::new();
                for m in loaded.manifests {
                    objects.insert(m.object.key(), m.object);
                }
                Read::Objects(objects)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Read::Removed,
            Err(e) => Read::Invalid(vec![ManifestError {
                file: file.to_path_buf(),
                line: 0,
                message: e.to_string(),
            }]),
        }
    }

    fn effective(&self, key: &ObjectKey) -> Option<&Arc<Object>> {
        self.files.values().find_map(|s| s.objects.get(key))
    }

    fn reload(&mut self, paths: BTreeSet<PathBuf>) -> Vec<Event> {
        // YAML parsing is the CPU-bound part of a cold start: every core.
        let reads: Vec<(PathBuf, Read)> = paths
            .into_par_iter()
            .map(|p| {
                let r = Self::read(&p);
                (p, r)
            })
            .collect();

        // Every key whose source may change, and what it is now.
        let mut touched: BTreeSet<ObjectKey> = BTreeSet::new();
        for (path, read) in &reads {
            if let Some(state) = self.files.get(path) {
                touched.extend(state.objects.keys().cloned());
            }
            if let Read::Objects(objects) = read {
                touched.extend(objects.keys().cloned());
            }
        }
        let before: BTreeMap<ObjectKey, Option<Arc<Object>>> = touched
            .iter()
            .map(|k| (k.clone(), self.effective(k).cloned()))
            .collect();

        for (path, read) in reads {
            match read {
                Read::Objects(objects) => {
                    if self.errors.remove(&path).is_some() {
                        info!(file = %path.display(), "manifest fixed");
                    }
                    self.files.insert(path, FileState { objects });
                }
                Read::Removed => {
                    self.errors.remove(&path);
                    if self.files.remove(&path).is_some() {
                        info!(file = %path.display(), "manifest removed");
                    }
                }
                Read::Invalid(errors) => {
                    let kept = self.files.get(&path).map_or(0, |s| s.objects.len());
                    for e in &errors {
                        warn!(location = %format!("{}:{}", e.file.display(), e.line), error = %e.message, kept_objects = kept,
                            "bad manifest; keeping the file's last good objects");
                    }
                    self.errors.insert(path, errors);
                }
            }
        }

        let mut events = Vec::new();
        for (key, old) in before {
            match (old, self.effective(&key)) {
                (Some(_), None) => events.push(Event::Delete(key)),
                (old, Some(new)) if old.as_ref().is_none_or(|o| o != new) => {
                    events.push(Event::Apply(new.clone()))
                }
                _ => {}
            }
        }
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, port: u16) -> String {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: default\nspec:\n  ports:\n  - port: {port}\n"
        )
    }

    fn summary(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| match e {
                Event::Apply(o) => format!("apply {}", o.name),
                Event::Delete(k) => format!("delete {}", k.name),
            })
            .collect()
    }

    #[test]
    fn files_come_and_go_and_bad_files_keep_their_objects() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let a = root.join("a.yaml");
        std::fs::write(&a, svc("one", 80) + "---\n" + &svc("two", 80)).unwrap();
        let mut set = ManifestSet::new(root.clone());
        assert_eq!(summary(&set.rescan()), ["apply one", "apply two"]);

        // An edit changes one object and drops another.
        std::fs::write(&a, svc("one", 81)).unwrap();
        assert_eq!(summary(&set.refresh([&a])), ["apply one", "delete two"]);

        // A bad edit keeps the last good objects and says where.
        std::fs::write(&a, svc("one", 82) + "---\nkind: [\n").unwrap();
        assert!(set.refresh([&a]).is_empty());
        let errors = set.errors();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 11, "{}", errors[0]);
        assert_eq!(set.objects().len(), 1);

        // Fixed again.
        std::fs::write(&a, svc("one", 83)).unwrap();
        assert_eq!(summary(&set.refresh([&a])), ["apply one"]);
        assert!(set.errors().is_empty());

        // A duplicate in a later file does not win; removing the first
        // file hands the object over instead of deleting it.
        let b = root.join("b.yaml");
        std::fs::write(&b, svc("one", 90)).unwrap();
        assert!(set.refresh([&b]).is_empty());
        std::fs::remove_file(&a).unwrap();
        let events = set.refresh([&a]);
        assert_eq!(summary(&events), ["apply one"]);
        let Event::Apply(o) = &events[0] else {
            unreachable!()
        };
        assert!(o.json.contains("90"));

        // A removed directory takes its files' objects.
        let sub = root.join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("c.yml"), svc("three", 80)).unwrap();
        assert_eq!(summary(&set.refresh([&sub])), ["apply three"]);
        std::fs::remove_dir_all(&sub).unwrap();
        assert_eq!(summary(&set.refresh([&sub])), ["delete three"]);

        // Hidden files are not manifests.
        let hidden = root.join(".b.yaml.swp");
        std::fs::write(&hidden, svc("four", 80)).unwrap();
        assert!(set.refresh([&hidden]).is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn mounted_configmap_updates_are_seen() {
        // The kubelet's layout: visible names link into `..data`, a link to
        // a timestamped directory; an update swaps `..data`.
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let v1 = root.join("..2026_01_01_v1");
        std::fs::create_dir(&v1).unwrap();
        std::fs::write(v1.join("svc.yaml"), svc("one", 80)).unwrap();
        std::os::unix::fs::symlink("..2026_01_01_v1", root.join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/svc.yaml", root.join("svc.yaml")).unwrap();
        let mut set = ManifestSet::new(root.clone());
        assert_eq!(summary(&set.rescan()), ["apply one"]);

        let v2 = root.join("..2026_01_01_v2");
        std::fs::create_dir(&v2).unwrap();
        std::fs::write(v2.join("svc.yaml"), svc("one", 81)).unwrap();
        std::os::unix::fs::symlink("..2026_01_01_v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        let events = set.refresh([&root.join("..data_tmp"), &root.join("..data")]);
        assert_eq!(summary(&events), ["apply one"]);
        let Event::Apply(o) = &events[0] else {
            unreachable!()
        };
        assert!(o.json.contains("81"));
    }
}
