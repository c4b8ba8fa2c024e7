//! Isobar: a Kubernetes controller host whose policy lives in WebAssembly
//! components. The library is the product; `main` only wires it up.

pub mod admin;
pub mod catalog;
pub mod certgen;
pub mod controller;
pub mod dump;
pub mod envoy;
pub mod ir;
pub mod latency;
pub mod leader;
pub mod oci;
pub mod pipeline;
pub mod plugin;
pub mod policy;
pub mod queue;
pub mod reconcile;
pub mod report;
pub mod resource;
pub mod scaffold;
pub mod serve;
pub mod source;
pub mod store;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod translate;
pub mod writeback;
pub mod xds;
