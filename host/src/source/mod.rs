//! Where objects come from. Every source speaks `store::Event`, so tests
//! drive the pipeline the same way a watcher does.

pub mod files;
pub mod kube;
pub mod manifests;
pub mod names;
pub mod watch;
