//! What tests and benchmarks of this crate and of others use to drive the
//! host as its peers would (feature `testing`): the one ADS test client and
//! a fake Kubernetes API server behind a real `kube::Client`.

pub mod ads;
pub mod fake_api;
