//! `isobar plugin new`: a new plugin project, in Rust, Python or JavaScript,
//! that builds into a component and passes its own tests.
//!
//! The project is standalone (it can live anywhere). Its files come from the
//! templates in `templates/`, embedded in the binary, where `{{key}}` stands
//! for one of the values of [`Project::vars`]. What a language needs from this
//! repository is embedded too, so the project builds with exactly what the
//! repository is tested with: the contract (`wit/plugin.wit`, for Python and
//! JavaScript), `Cargo.lock` (Rust, which depends on the guest SDK by path),
//! componentize-py's locked `requirements.txt` and componentize-js's
//! `package-lock.json`.

use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The contract, copied into Python and JavaScript projects.
const WIT: &str = include_str!("../../../wit/plugin.wit");
const WIT_0_2: &str = include_str!("../../../wit/plugin-0.2.wit");

/// The language of the plugin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A crate depending on the guest SDK (`isobar-guest`), built by cargo.
    Rust,
    /// componentize-py: app.py (glue) and plugin.py (logic).
    Python,
    /// componentize-js: src/plugin.js (glue) and src/logic.js (logic).
    Js,
}

/// The world of the contract the plugin exports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum World {
    /// Kubernetes objects to routing configuration.
    Translator,
    /// An operator: one object in, actions out.
    Reconciler,
    /// A routing policy: one merged virtual host in, transformed out.
    Policy,
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Lang::Rust => "Rust",
            Lang::Python => "Python",
            Lang::Js => "JavaScript",
        })
    }
}

impl fmt::Display for World {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            World::Translator => "translator",
            World::Reconciler => "reconciler",
            World::Policy => "policy",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid plugin name {name:?}: {why}")]
    InvalidName { name: String, why: &'static str },
    #[error("{} already exists; not overwriting it", .0.display())]
    Exists(PathBuf),
    #[error(
        "the guest SDK (isobar-guest) is not at {}; pass --sdk-path <isobar repository>/guest-sdk",
        .0.display()
    )]
    NoSdk(PathBuf),
    #[error("writing {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
}

/// The guest SDK of the repository this binary was built from.
pub fn default_sdk_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the host crate is inside the repository")
        .join("guest-sdk")
}

/// Checks a plugin name: it names the project directory, the package and
/// the plugin (`describe()`), and gives the Rust type and the reconciled
/// kind (`my-plugin` → `MyPlugin`).
pub fn validate_name(name: &str, lang: Lang) -> Result<(), Error> {
    let invalid = |why| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            why,
        })
    };
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        return invalid("it must start with a lowercase letter (a-z)");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return invalid("it may only contain lowercase letters, digits and '-'");
    }
    if name.ends_with('-') {
        return invalid("it must not end with '-'");
    }
    if name.len() > 63 {
        return invalid("it must be at most 63 characters long");
    }
    // Names cargo refuses for a package (and `self` would make `Self`).
    const RUST_RESERVED: &[&str] = &[
        "abstract",
        "alloc",
        "as",
        "async",
        "await",
        "become",
        "box",
        "break",
        "const",
        "continue",
        "core",
        "crate",
        "do",
        "dyn",
        "else",
        "enum",
        "extern",
        "false",
        "final",
        "fn",
        "for",
        "gen",
        "if",
        "impl",
        "in",
        "let",
        "loop",
        "macro",
        "match",
        "mod",
        "move",
        "mut",
        "override",
        "priv",
        "proc-macro",
        "pub",
        "ref",
        "return",
        "self",
        "static",
        "std",
        "struct",
        "super",
        "test",
        "trait",
        "true",
        "try",
        "type",
        "typeof",
        "unsafe",
        "unsized",
        "use",
        "virtual",
        "where",
        "while",
        "yield",
    ];
    if lang == Lang::Rust && RUST_RESERVED.contains(&name) {
        return invalid("it is reserved in Rust");
    }
    Ok(())
}

/// What to create.
#[derive(Clone, Debug)]
pub struct Project {
    /// The plugin's name (see [`validate_name`]).
    pub name: String,
    pub lang: Lang,
    pub world: World,
    /// The guest SDK a Rust project depends on, by path.
    pub sdk_path: PathBuf,
}

/// One file of a project.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct File {
    /// Relative to the project directory.
    pub path: &'static str,
    pub contents: String,
    pub executable: bool,
}

impl Project {
    pub fn new(name: impl Into<String>, lang: Lang, world: World) -> Project {
        Project {
            name: name.into(),
            lang,
            world,
            sdk_path: default_sdk_path(),
        }
    }

    /// The values the templates refer to as `{{key}}`.
    pub fn vars(&self) -> Vec<(&'static str, String)> {
        vec![
            ("name", self.name.clone()),
            ("crate_name", self.name.replace('-', "_")),
            ("type_name", camel_case(&self.name)),
            ("world", self.world.to_string()),
            (
                "contract",
                match self.world {
                    World::Policy => "isobar:plugin@0.2.0",
                    World::Translator | World::Reconciler => "isobar:plugin@0.1.0",
                }
                .to_owned(),
            ),
            (
                "trait_name",
                match self.world {
                    World::Translator => "Translator",
                    World::Reconciler => "Reconciler",
                    World::Policy => "Policy",
                }
                .to_owned(),
            ),
            ("sdk_path", toml_string(&self.sdk_path.to_string_lossy())),
            ("summary", self.summary().to_owned()),
            ("try_it", self.try_it()),
        ]
    }

    /// Where `build` puts the component, relative to the project.
    pub fn wasm_path(&self) -> String {
        match self.lang {
            Lang::Rust => format!(
                "target/wasm32-wasip2/release/{}.wasm",
                self.name.replace('-', "_")
            ),
            Lang::Python | Lang::Js => format!("{}.wasm", self.name),
        }
    }

    /// Builds the component.
    pub fn build_command(&self) -> &'static str {
        match self.lang {
            Lang::Rust => "cargo build --release --target wasm32-wasip2",
            Lang::Python | Lang::Js => "sh build.sh",
        }
    }

    /// Runs the plugin's unit tests, natively.
    pub fn test_command(&self) -> &'static str {
        match self.lang {
            Lang::Rust => "cargo test",
            Lang::Python => "python3 -m unittest",
            Lang::Js => "node --test test/",
        }
    }

    /// Every file of the project, rendered. Fails on an invalid name.
    pub fn files(&self) -> Result<Vec<File>, Error> {
        validate_name(&self.name, self.lang)?;
        let vars = self.vars();
        let file = |path, template: &str| File {
            path,
            contents: render(template, &vars),
            executable: false,
        };
        let script = |path, template: &str| File {
            executable: true,
            ..file(path, template)
        };
        let by_world = |translator, reconciler, policy| match self.world {
            World::Translator => translator,
            World::Reconciler => reconciler,
            World::Policy => policy,
        };
        // Policies exist from contract 0.2 on; the file keeps its name so
        // the build scripts are the same for every world.
        let wit = || file("wit/plugin.wit", by_world(WIT, WIT, WIT_0_2));
        Ok(match self.lang {
            Lang::Rust => vec![
                file("Cargo.toml", include_str!("templates/rust/Cargo.toml.tmpl")),
                // Copied as is, so the dependencies are the versions the
                // guest SDK is tested with.
                file("Cargo.lock", include_str!("../../../Cargo.lock")),
                file(
                    "src/lib.rs",
                    by_world(
                        include_str!("templates/rust/translator.rs.tmpl"),
                        include_str!("templates/rust/reconciler.rs.tmpl"),
                        include_str!("templates/rust/policy.rs.tmpl"),
                    ),
                ),
                file("README.md", include_str!("templates/rust/README.md.tmpl")),
                file(".gitignore", "/target\n"),
            ],
            Lang::Python => vec![
                file(
                    "app.py",
                    by_world(
                        include_str!("templates/python/app_translator.py.tmpl"),
                        include_str!("templates/python/app_reconciler.py.tmpl"),
                        include_str!("templates/python/app_policy.py.tmpl"),
                    ),
                ),
                file(
                    "plugin.py",
                    by_world(
                        include_str!("templates/python/plugin_translator.py.tmpl"),
                        include_str!("templates/python/plugin_reconciler.py.tmpl"),
                        include_str!("templates/python/plugin_policy.py.tmpl"),
                    ),
                ),
                file(
                    "test_plugin.py",
                    by_world(
                        include_str!("templates/python/test_translator.py.tmpl"),
                        include_str!("templates/python/test_reconciler.py.tmpl"),
                        include_str!("templates/python/test_policy.py.tmpl"),
                    ),
                ),
                file(
                    "requirements.txt",
                    include_str!("../../../plugins/memcached/python/requirements.txt"),
                ),
                script("build.sh", include_str!("templates/python/build.sh.tmpl")),
                file("README.md", include_str!("templates/python/README.md.tmpl")),
                file(".gitignore", "/.venv/\n/.build/\n__pycache__/\n/*.wasm\n"),
                wit(),
            ],
            Lang::Js => vec![
                file(
                    "src/plugin.js",
                    by_world(
                        include_str!("templates/js/plugin_translator.js.tmpl"),
                        include_str!("templates/js/plugin_reconciler.js.tmpl"),
                        include_str!("templates/js/plugin_policy.js.tmpl"),
                    ),
                ),
                file(
                    "src/logic.js",
                    by_world(
                        include_str!("templates/js/logic_translator.js.tmpl"),
                        include_str!("templates/js/logic_reconciler.js.tmpl"),
                        include_str!("templates/js/logic_policy.js.tmpl"),
                    ),
                ),
                file(
                    "test/logic.test.mjs",
                    by_world(
                        include_str!("templates/js/test_translator.mjs.tmpl"),
                        include_str!("templates/js/test_reconciler.mjs.tmpl"),
                        include_str!("templates/js/test_policy.mjs.tmpl"),
                    ),
                ),
                file(
                    "package.json",
                    include_str!("templates/js/package.json.tmpl"),
                ),
                File {
                    path: "package-lock.json",
                    contents: js_lock(&self.name),
                    executable: false,
                },
                script("build.sh", include_str!("templates/js/build.sh.tmpl")),
                file(
                    "rolldown.config.js",
                    include_str!("templates/js/rolldown.config.js.tmpl"),
                ),
                file("README.md", include_str!("templates/js/README.md.tmpl")),
                file(".gitignore", "/node_modules/\n/*.wasm\n"),
                wit(),
            ],
        })
    }

    /// One sentence on what the generated plugin does.
    fn summary(&self) -> &'static str {
        match self.world {
            // Wrapped for the READMEs.
            World::Translator => {
                "For every Ingress, it serves one virtual host per rule host (`*` for a\n\
                 rule without one) on the `http` listener (port 8080), sending every\n\
                 path to the Service backend of the rule's first path."
            }
            World::Policy => {
                "It is a routing policy: on every route of every virtual host it is run\n\
                 on, it sets the response header `x-<name>: on` (the plugin's name)."
            }
            World::Reconciler => {
                "It is an operator for a custom resource of its own (a kind named after\n\
                 the plugin): for each object it applies a ConfigMap holding\n\
                 `spec.message`, and reports a `Ready` condition that turns true once\n\
                 the ConfigMap exists."
            }
        }
    }

    /// How to load the built component into isobar, as shell lines.
    fn try_it(&self) -> String {
        let wasm = self.wasm_path();
        match self.world {
            World::Translator => format!(
                "isobar plugin inspect {wasm}\n\
                 isobar translate -f <manifests> --plugin {wasm}"
            ),
            World::Reconciler => format!(
                "isobar plugin inspect {wasm}    # world: reconciler, and what describe() says"
            ),
            World::Policy => {
                format!("isobar plugin inspect {wasm}    # world: policy, and what describe() says")
            }
        }
    }

    /// What to do after `create`, for a project created at `dir`.
    pub fn next_steps(&self, dir: &Path) -> String {
        let once = match self.lang {
            Lang::Rust => "    # once before: rustup target add wasm32-wasip2",
            Lang::Python | Lang::Js => "",
        };
        format!(
            "cd {}\n{}\n{}{once}\n{}",
            dir.display(),
            self.test_command(),
            self.build_command(),
            self.try_it()
        )
    }

    /// Creates the project in `parent/<name>`, which must not exist yet.
    /// Returns the project directory. On failure nothing is left behind.
    pub fn create(&self, parent: &Path) -> Result<PathBuf, Error> {
        let files = self.files()?;
        if self.lang == Lang::Rust && !self.sdk_path.join("Cargo.toml").is_file() {
            return Err(Error::NoSdk(self.sdk_path.clone()));
        }
        let dir = parent.join(&self.name);
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| Error::Io { path, source }
        };
        fs::create_dir_all(parent).map_err(io_error(parent))?;
        // create_dir, not create_dir_all: it fails if the directory exists,
        // with no window between a check and the creation.
        fs::create_dir(&dir).map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => Error::Exists(dir.clone()),
            _ => io_error(&dir)(e),
        })?;
        let written = files.iter().try_for_each(|file| {
            let path = dir.join(file.path);
            if let Some(parent) = path.parent() {
                fs::create_dir_all(parent).map_err(io_error(parent))?;
            }
            fs::write(&path, &file.contents).map_err(io_error(&path))?;
            if file.executable {
                make_executable(&path).map_err(io_error(&path))?;
            }
            Ok(())
        });
        if let Err(e) = written {
            // The directory is ours: we just created it.
            let _ = fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(dir)
    }
}

#[cfg(unix)]
fn make_executable(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
}

#[cfg(not(unix))]
fn make_executable(_: &Path) -> io::Result<()> {
    Ok(())
}

/// Replaces every `{{key}}` whose key is in `vars` with its value, in one
/// pass (a value is never itself searched for keys). Anything else is left
/// as it is.
pub fn render(template: &str, vars: &[(&str, String)]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let value = after.find("}}").and_then(|end| {
            let key = &after[..end];
            let (_, value) = vars.iter().find(|(k, _)| *k == key)?;
            Some((value, end))
        });
        match value {
            Some((value, end)) => {
                out.push_str(value);
                rest = &after[end + 2..];
            }
            None => {
                out.push('{');
                rest = &rest[start + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// `my-plugin` → `MyPlugin`.
fn camel_case(name: &str) -> String {
    name.split('-')
        .flat_map(|word| {
            let mut chars = word.chars();
            chars
                .next()
                .map(|first| first.to_ascii_uppercase())
                .into_iter()
                .chain(chars)
        })
        .collect()
}

/// The inside of a TOML basic string ("…").
fn toml_string(text: &str) -> String {
    text.replace('\\', "\\\\").replace('"', "\\\"")
}

/// componentize-js's lockfile, as plugins/canary-js has it, for a project
/// named `name`: the root package is renamed, and carries no license (the
/// generated package.json declares none; npm would rewrite a lockfile that
/// disagrees with it). Everything else is the same, byte for byte.
fn js_lock(name: &str) -> String {
    const LOCK: &str = include_str!("../../../plugins/canary-js/package-lock.json");
    const NAME: &str = "\"name\": \"isobar-plugin-canary-js\"";
    // The root package is the first entry of `packages`, so its license is
    // the first in the file.
    LOCK.replacen(NAME, &format!("\"name\": \"{name}\""), 2)
        .replacen("      \"license\": \"Apache-2.0\",\n", "", 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const LANGS: [Lang; 3] = [Lang::Rust, Lang::Python, Lang::Js];
    const WORLDS: [World; 3] = [World::Translator, World::Reconciler, World::Policy];

    fn every_project() -> impl Iterator<Item = Project> {
        LANGS.into_iter().flat_map(|lang| {
            WORLDS
                .into_iter()
                .map(move |world| Project::new("hello-world2", lang, world))
        })
    }

    fn file<'a>(files: &'a [File], path: &str) -> &'a str {
        &files
            .iter()
            .find(|f| f.path == path)
            .unwrap_or_else(|| panic!("no {path}"))
            .contents
    }

    #[test]
    fn render_replaces_known_keys_once() {
        let vars = [("a", "{{b}}".to_owned()), ("b", "B".to_owned())];
        assert_eq!(render("x{{a}}y{{b}}", &vars), "x{{b}}yB");
        assert_eq!(render("{{c}} {{a", &vars), "{{c}} {{a");
        assert_eq!(render("{ {{{b}}} }", &vars), "{ {B} }");
        assert_eq!(render("", &vars), "");
    }

    #[test]
    fn every_template_is_fully_rendered() {
        for project in every_project() {
            let files = project.files().unwrap();
            for file in &files {
                if file.path.ends_with(".lock") || file.path.ends_with("-lock.json") {
                    continue;
                }
                assert!(
                    !file.contents.contains("{{"),
                    "{:?} {}: {} has a placeholder left",
                    project.lang,
                    project.world,
                    file.path
                );
                assert!(!file.contents.is_empty(), "{} is empty", file.path);
            }
            let paths: Vec<&str> = files.iter().map(|f| f.path).collect();
            let mut unique = paths.clone();
            unique.sort();
            unique.dedup();
            assert_eq!(unique.len(), paths.len(), "{paths:?}");
            // A README that says how to build, test and load it.
            let readme = file(&files, "README.md");
            for command in [
                project.build_command(),
                project.test_command(),
                "isobar plugin inspect",
            ] {
                assert!(readme.contains(command), "README lacks {command}");
            }
        }
    }

    #[test]
    fn names_and_world_reach_the_files() {
        let project = Project::new("hello-world2", Lang::Rust, World::Translator);
        let files = project.files().unwrap();
        let cargo = file(&files, "Cargo.toml");
        assert!(cargo.contains("name = \"hello-world2\""), "{cargo}");
        assert!(cargo.contains("\n[workspace]\n"), "{cargo}");
        assert!(cargo.contains(r#"crate-type = ["cdylib", "rlib"]"#));
        let sdk = default_sdk_path();
        assert!(sdk.is_absolute() && sdk.join("Cargo.toml").is_file());
        assert!(cargo.contains(&format!("path = \"{}\"", sdk.display())));
        let lib = file(&files, "src/lib.rs");
        assert!(lib.contains("export_translator!(HelloWorld2)"), "{lib}");
        assert!(file(&files, "Cargo.lock").contains("name = \"isobar-guest\""));

        let reconciler = Project::new("hello-world2", Lang::Rust, World::Reconciler);
        let lib = file(&reconciler.files().unwrap(), "src/lib.rs").to_owned();
        assert!(lib.contains("export_reconciler!(HelloWorld2Reconciler)"));
        assert!(lib.contains(r#"KIND: &str = "HelloWorld2""#), "{lib}");

        for lang in [Lang::Python, Lang::Js] {
            for world in WORLDS {
                let files = Project::new("hello-world2", lang, world).files().unwrap();
                let wit = if world == World::Policy { WIT_0_2 } else { WIT };
                assert_eq!(file(&files, "wit/plugin.wit"), wit);
                let build = files.iter().find(|f| f.path == "build.sh").unwrap();
                assert!(build.executable);
                assert!(
                    build.contents.contains(&format!("-w {world}"))
                        || build.contents.contains(&format!("--world-name {world}"))
                );
                assert!(build.contents.contains("hello-world2.wasm"));
            }
        }
    }

    #[test]
    fn sdk_paths_are_quoted_for_toml() {
        let mut project = Project::new("p", Lang::Rust, World::Translator);
        project.sdk_path = PathBuf::from(r#"C:\a "b"\guest-sdk"#);
        let files = project.files().unwrap();
        assert!(file(&files, "Cargo.toml").contains(r#"path = "C:\\a \"b\"\\guest-sdk""#));
    }

    #[test]
    fn python_tooling_is_the_repositorys() {
        let files = Project::new("p", Lang::Python, World::Reconciler)
            .files()
            .unwrap();
        let requirements = file(&files, "requirements.txt");
        assert_eq!(
            requirements,
            include_str!("../../../plugins/memcached/python/requirements.txt")
        );
        assert!(
            requirements.contains("componentize-py==") && requirements.contains("--hash=sha256:")
        );
    }

    /// package.json pins what plugins/canary-js pins, and the lockfile is
    /// canary-js's with only the root package's name and license changed.
    #[test]
    fn js_tooling_is_the_repositorys() {
        let files = Project::new("hello", Lang::Js, World::Translator)
            .files()
            .unwrap();
        let package: Value = serde_json::from_str(file(&files, "package.json")).unwrap();
        let canary: Value =
            serde_json::from_str(include_str!("../../../plugins/canary-js/package.json")).unwrap();
        assert_eq!(package["name"], "hello");
        assert_eq!(package["devDependencies"], canary["devDependencies"]);
        assert_eq!(package["overrides"], canary["overrides"]);
        assert!(package.get("license").is_none());

        let mut lock: Value = serde_json::from_str(file(&files, "package-lock.json")).unwrap();
        let root = &lock["packages"][""];
        assert_eq!(
            (&lock["name"], &root["name"]),
            (&package["name"], &package["name"])
        );
        assert_eq!(root["version"], package["version"]);
        assert_eq!(root["devDependencies"], package["devDependencies"]);
        assert!(root.get("license").is_none(), "{root}");
        let mut original: Value =
            serde_json::from_str(include_str!("../../../plugins/canary-js/package-lock.json"))
                .unwrap();
        for lock in [&mut lock, &mut original] {
            lock["name"] = Value::Null;
            lock["packages"][""] = Value::Null;
        }
        assert_eq!(lock, original);
    }

    #[test]
    fn names_are_validated() {
        for good in ["a", "hello", "my-plugin", "v2-router", "a1-b2-c3"] {
            assert!(validate_name(good, Lang::Rust).is_ok(), "{good}");
        }
        for bad in [
            "",
            "1abc",
            "-abc",
            "abc-",
            "Hello",
            "my_plugin",
            "my plugin",
            "my.plugin",
            "café",
            "../x",
        ] {
            let err = validate_name(bad, Lang::Js).unwrap_err();
            assert!(matches!(err, Error::InvalidName { .. }), "{bad}: {err}");
        }
        assert!(validate_name(&"a".repeat(64), Lang::Js).is_err());
        // Only Rust reserves keywords.
        assert!(validate_name("self", Lang::Rust).is_err());
        assert!(validate_name("test", Lang::Rust).is_err());
        assert!(validate_name("self", Lang::Python).is_ok());
        let err = Project::new("Bad", Lang::Python, World::Translator)
            .files()
            .unwrap_err();
        assert!(err.to_string().contains("\"Bad\""), "{err}");
    }

    #[test]
    fn type_names_are_camel_case() {
        assert_eq!(camel_case("hello"), "Hello");
        assert_eq!(camel_case("my-plugin-2"), "MyPlugin2");
        assert_eq!(camel_case("a1-b"), "A1B");
    }

    #[test]
    fn create_writes_the_files_and_refuses_to_overwrite() {
        let parent = tempfile::tempdir().unwrap();
        let project = Project::new("hello", Lang::Python, World::Translator);
        let dir = project.create(&parent.path().join("nested")).unwrap();
        assert_eq!(dir, parent.path().join("nested/hello"));
        for file in project.files().unwrap() {
            let written = fs::read_to_string(dir.join(file.path)).unwrap();
            assert_eq!(written, file.contents, "{}", file.path);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("build.sh"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o111, 0o111);
        }

        // Again, or over any existing directory: refused, nothing touched.
        fs::write(dir.join("plugin.py"), "# mine\n").unwrap();
        let err = project.create(&parent.path().join("nested")).unwrap_err();
        assert!(matches!(&err, Error::Exists(d) if *d == dir), "{err}");
        assert_eq!(
            fs::read_to_string(dir.join("plugin.py")).unwrap(),
            "# mine\n"
        );
        let empty = parent.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let err = Project::new("empty", Lang::Js, World::Reconciler)
            .create(parent.path())
            .unwrap_err();
        assert!(matches!(err, Error::Exists(_)), "{err}");
        assert_eq!(fs::read_dir(&empty).unwrap().count(), 0);
    }

    #[test]
    fn create_checks_the_name_and_the_sdk_first() {
        let parent = tempfile::tempdir().unwrap();
        let err = Project::new("../escape", Lang::Js, World::Translator)
            .create(parent.path())
            .unwrap_err();
        assert!(matches!(err, Error::InvalidName { .. }), "{err}");
        let mut project = Project::new("rusty", Lang::Rust, World::Translator);
        project.sdk_path = parent.path().join("no-sdk");
        let err = project.create(parent.path()).unwrap_err();
        assert!(matches!(err, Error::NoSdk(_)), "{err}");
        assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[test]
    fn next_steps_say_how_to_test_build_and_load() {
        let translator = Project::new("hello", Lang::Rust, World::Translator);
        let steps = translator.next_steps(Path::new("/tmp/hello"));
        assert!(steps.starts_with("cd /tmp/hello\ncargo test\n"), "{steps}");
        assert!(steps.contains("cargo build --release --target wasm32-wasip2"));
        assert!(steps.contains(
            "isobar translate -f <manifests> --plugin target/wasm32-wasip2/release/hello.wasm"
        ));
        let reconciler = Project::new("hello", Lang::Js, World::Reconciler);
        let steps = reconciler.next_steps(Path::new("hello"));
        assert!(
            steps.contains("node --test test/\nsh build.sh\n"),
            "{steps}"
        );
        assert!(
            steps.contains("isobar plugin inspect hello.wasm"),
            "{steps}"
        );
        assert!(!steps.contains("isobar translate"), "{steps}");
    }
}
