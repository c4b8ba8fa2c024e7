//! Isobar: a Kubernetes controller host whose policy lives in WebAssembly
//! components. The library is the product; `main` only wires it up.

pub mod admin;
pub mod app;
pub mod certgen;
pub mod dump;
pub mod envoy;
#[cfg(any(test, feature = "testing"))]
pub mod fake_api;
pub mod leader;
pub mod pipeline;
pub mod plugin;
pub mod queue;
pub mod reconcile;
pub mod scaffold;
pub mod serve;
pub mod source;
pub mod store;
pub mod translate;
pub mod writeback;
pub mod xds;

/// The routing IR plugins return: the contract's `types` interface as the
/// host sees it.
pub mod ir {
    pub use crate::plugin::bindings::isobar::plugin::types::*;
}
