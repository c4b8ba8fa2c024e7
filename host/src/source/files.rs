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

/// The largest manifest file read: a Kubernetes object is at most about
/// 1.5 MiB (etcd's limit), and a file of many is still far below this.
pub const MAX_MANIFEST_BYTES: u64 = 8 << 20;

/// The deepest nesting of flow collections (`[`, `{`) a document may have.
/// The YAML parser's time grows with the square of the depth (200 KB of
/// `[` took 40 s of CPU); real manifests nest a dozen levels.
pub const MAX_NESTING: usize = 64;

/// The manifest files under `path` (itself, if a file), sorted, so the
/// result does not depend on directory order.
///
/// Symlinks to files are followed (a mounted ConfigMap's visible names
/// link into `..data`); symlinks to directories are not: two links to `.`
/// would otherwise make the walk endless.
pub fn manifest_files(path: &Path) -> std::io::Result<Vec<PathBuf>> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let p = entry.path();
            let hidden = p
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if hidden {
                continue;
            }
            let file_type = entry.file_type()?;
            if file_type.is_dir() {
                stack.push(p);
            } else if file_type.is_symlink() {
                if p.is_file() && is_manifest(&p) {
                    out.push(p);
                }
            } else if is_manifest(&p) {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads a manifest file, refusing one over [`MAX_MANIFEST_BYTES`] before
/// reading it whole.
pub fn read_manifest(file: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    std::fs::File::open(file)?
        .take(MAX_MANIFEST_BYTES + 1)
        .read_to_string(&mut text)?;
    if text.len() as u64 > MAX_MANIFEST_BYTES {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("file is larger than {MAX_MANIFEST_BYTES} bytes; not read"),
        ));
    }
    Ok(text)
}

/// The first line (1-based, within `doc`) where flow collections nest
/// deeper than `max`. Quoted scalars and comments are skipped; one linear
/// pass, before the parser sees the text.
fn too_deep(doc: &str, max: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut line = 1;
    let mut chars = doc.chars().peekable();
    let mut at_token_start = true;
    while let Some(c) = chars.next() {
        match c {
            '\n' => {
                line += 1;
                at_token_start = true;
                continue;
            }
            '#' if at_token_start => {
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                    }
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
            }
            '\'' if at_token_start => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                    }
                    if c == '\'' {
                        break;
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                if depth > max {
                    return Some(line);
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        at_token_start = c.is_whitespace() || matches!(c, '[' | '{' | ',' | ':');
    }
    None
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
            match read_manifest(&file) {
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
        if let Some(line) = too_deep(&doc, MAX_NESTING) {
            loaded.errors.push(ManifestError {
                file: file.to_path_buf(),
                line: start_line + line - 1,
                message: format!("nested more than {MAX_NESTING} levels deep; not parsed"),
            });
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
            // No API server checks names in file mode: the host does.
            let checked = Object::from_value(item)
                .map_err(|e| e.to_string())
                .and_then(|o| super::names::check(&o).map(|()| o));
            match checked {
                Ok(obj) => loaded.manifests.push(Manifest {
                    object: Arc::new(obj),
                    file: file.to_path_buf(),
                    line: start_line,
                }),
                Err(message) => loaded.errors.push(ManifestError {
                    file: file.to_path_buf(),
                    line: start_line,
                    message,
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

    /// Issue 13 item 16: 200 KB of `[` cost ~40 s of CPU in the parser.
    #[test]
    fn deep_nesting_is_refused_before_parsing() {
        let mut loaded = Loaded::default();
        let text = format!(
            "apiVersion: v1\nkind: ConfigMap\ndata: {}\n",
            "[".repeat(200_000)
        );
        parse_into(Path::new("deep.yaml"), &text, &mut loaded);
        assert!(loaded.manifests.is_empty());
        assert_eq!(loaded.errors.len(), 1);
        assert!(
            loaded.errors[0].message.contains("nested more than"),
            "{}",
            loaded.errors[0]
        );
        assert_eq!(loaded.errors[0].line, 3);

        // Brackets inside quotes and comments are text, and real nesting
        // within the limit parses.
        let mut loaded = Loaded::default();
        let text = format!(
            "# {}\napiVersion: v1\nkind: ConfigMap\nmetadata: {{name: c, namespace: d}}\ndata: {{a: \"{}\", b: '{}', c: {}{}}}\n",
            "[".repeat(1000),
            "[".repeat(1000),
            "{".repeat(1000),
            "[".repeat(30),
            "]".repeat(30),
        );
        parse_into(Path::new("ok.yaml"), &text, &mut loaded);
        assert!(loaded.errors.is_empty(), "{:?}", loaded.errors);
        assert_eq!(loaded.manifests.len(), 1);
    }

    #[test]
    fn oversized_files_are_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.yaml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_MANIFEST_BYTES + 1).unwrap();
        let loaded = load_paths(&[dir.path().to_path_buf()]);
        assert_eq!(loaded.errors.len(), 1);
        assert!(
            loaded.errors[0].message.contains("larger than"),
            "{}",
            loaded.errors[0]
        );
    }

    /// Issue 13 item 16: two symlinks to `.` made the walk endless (the
    /// controller spun and grew to 900 MB).
    #[cfg(unix)]
    #[test]
    fn symlinked_directories_are_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::write(
            root.join("svc.yaml"),
            "apiVersion: v1\nkind: Service\nmetadata: {name: a, namespace: x}\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(".", root.join("loop-a")).unwrap();
        std::os::unix::fs::symlink(".", root.join("loop-b")).unwrap();
        std::os::unix::fs::symlink("svc.yaml", root.join("link.yaml")).unwrap();
        let files = manifest_files(root).unwrap();
        assert_eq!(files, [root.join("link.yaml"), root.join("svc.yaml")]);
    }

    /// Issue 13 item 16: a 100,000-character Service name was served as a
    /// cluster name; in file mode the host checks names as the API server
    /// would.
    #[test]
    fn invalid_names_are_manifest_errors() {
        let mut loaded = Loaded::default();
        let text = format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: {}, namespace: x}}\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: ok, namespace: x}}\n",
            "a".repeat(100_000)
        );
        parse_into(Path::new("names.yaml"), &text, &mut loaded);
        assert_eq!(loaded.manifests.len(), 1);
        assert_eq!(loaded.manifests[0].object.name, "ok");
        assert_eq!(loaded.errors.len(), 1);
        assert!(
            loaded.errors[0]
                .message
                .contains("not a valid Service name")
        );
        assert!(loaded.errors[0].message.len() < 300);
    }
}
