//! What the binary's tests share: where cargo put the plugin components.

use std::path::PathBuf;

pub fn target_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(dir);
    }
    // <target>/debug/deps/<test binary>
    std::env::current_exe()
        .unwrap()
        .ancestors()
        .nth(3)
        .unwrap()
        .to_path_buf()
}

/// A component built by `make plugins`, e.g. `isobar_plugin_ingress`.
pub fn plugin(name: &str) -> PathBuf {
    let p = target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: build the plugins first (`make plugins`)",
        p.display()
    );
    p
}
