//! A directory (or file) of Kubernetes manifests: multi-document YAML or
//! JSON, `kind: List` flattened.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rayon::prelude::*;

use crate::store::{Event, Object};

/// A manifest problem a user can act on: which file, which line, what.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{}:{line}: {message}", file.display())]
pub struct ManifestError {
    pub file: PathBuf,
    pub line: usize,
    pub message: String,
}

/// An object read from a manifest and where it was.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub object: Arc<Object>,
    pub file: PathBuf,
    pub line: usize,
}

/// Everything read from a set of files: the good objects and the errors.
#[derive(Debug, Default)]
pub struct Loaded {
    pub manifests: Vec<Manifest>,
    pub errors: Vec<ManifestError>,
}

impl Loaded {
    pub fn events(&self) -> impl Iterator<Item = Event> + '_ {
        self.manifests
            .iter()
            .map(|m| Event::Apply(m.object.clone()))
    }
}

fn is_manifest(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml" | "json")
    )
}

/// The manifest files under `path` (itself, if a file), sorted, so the
/// result does not depend on directory order.
pub fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let p = entry?.path();
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if is_manifest(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads every manifest under each path.
pub fn load_paths(paths: &[PathBuf]) -> Loaded {
    let mut loaded = Loaded::default();
    let mut files = Vec::new();
    for path in paths {
        match manifest_files(path) {
            Ok(found) => files.extend(found),
            Err(e) => loaded.errors.push(ManifestError {
                file: path.clone(),
                line: 0,
                message: e.to_string(),
            }),
        }
    }
    // YAML parsing is CPU-bound: files on every core, results in file order.
    let parsed: Vec<Loaded> = files
        .into_par_iter()
        .map(|file| {
            let mut one = Loaded::default();
            match std::fs::read_to_string(&file) {
                Ok(text) => parse_into(&file, &text, &mut one),
                Err(e) => one.errors.push(ManifestError {
                    file,
                    line: 0,
                    message: e.to_string(),
                }),
            }
            one
        })
        .collect();
    for one in parsed {
        loaded.manifests.extend(one.manifests);
        loaded.errors.extend(one.errors);
    }
    loaded
}

/// Parses one file's text. A bad document is reported and skipped; the
/// file's other documents still load.
pub fn parse_into(file: &Path, text: &str, loaded: &mut Loaded) {
    for (start_line, doc) in split_documents(text) {
        if doc.trim().is_empty()
            || doc
                .lines()
                .all(|l| l.trim().is_empty() || l.trim_start().starts_with('#'))
        {
            continue;
        }
        let value: serde_json::Value = match serde_yaml::from_str(&doc) {
            Ok(v) => v,
            Err(e) => {
                let line = start_line + e.location().map(|l| l.line()).unwrap_or(1) - 1;
                let message = e.to_string();
                // serde_yaml appends "at line X column Y" relative to the
                // document; the file line is ours.
                let message = message
                    .split(" at line ")
                    .next()
                    .unwrap_or(&message)
                    .to_string();
                loaded.errors.push(ManifestError {
                    file: file.to_path_buf(),
                    line,
                    message,
                });
                continue;
            }
        };
        if value.is_null() {
            continue;
        }
        let items = match value.get("kind").and_then(|k| k.as_str()) {
            Some(k) if k.ends_with("List") && value.get("items").is_some() => value
                .get("items")
                .and_then(|i| i.as_array())
                .cloned()
                .unwrap_or_default(),
            _ => vec![value],
        };
        for item in items {
            match Object::from_value(item) {
                Ok(obj) => loaded.manifests.push(Manifest {
                    object: Arc::new(obj),
                    file: file.to_path_buf(),
                    line: start_line,
                }),
                Err(e) => loaded.errors.push(ManifestError {
                    file: file.to_path_buf(),
                    line: start_line,
                    message: e.to_string(),
                }),
            }
        }
    }
}

/// Splits YAML text at `---` lines; yields (first line number, text).
fn split_documents(text: &str) -> Vec<(usize, String)> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut start = 1;
    for (i, line) in text.lines().enumerate() {
        if line == "---" || line.starts_with("--- ") {
            docs.push((start, std::mem::take(&mut current)));
            start = i + 2;
            continue;
        }
        current.push_str(line);
        current.push('\n');
    }
    docs.push((start, current));
    docs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_lists_and_line_numbers() {
        let text = "# leading comment\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: a\n  namespace: x\n---\napiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Service\n  metadata: {name: b}\n---\napiVersion: v1\nkind: Service\nmetadata:\n  name: a: b\n  namespace: x\n";
        let mut loaded = Loaded::default();
        parse_into(Path::new("m.yaml"), text, &mut loaded);
        let names: Vec<_> = loaded
            .manifests
            .iter()
            .map(|m| (m.object.name.as_str(), m.line))
            .collect();
        assert_eq!(names, [("a", 3), ("b", 9)]);
        assert_eq!(loaded.errors.len(), 1);
        let err = &loaded.errors[0];
        assert_eq!(err.line, 19, "{err}");
        assert!(err.to_string().starts_with("m.yaml:19: "), "{err}");
    }

    #[test]
    fn objects_without_identity_are_errors_not_panics() {
        let mut loaded = Loaded::default();
        parse_into(Path::new("x.json"), "{\"kind\": \"Service\"}", &mut loaded);
        assert!(loaded.manifests.is_empty());
        assert_eq!(loaded.errors[0].message, "object has no apiVersion");
    }
}
