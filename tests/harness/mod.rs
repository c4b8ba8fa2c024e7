//! Harness for tests through a real Envoy: the test venv (`venv`), the Envoy
//! process (`envoy`), and real backends and clients (`backends`).

pub mod backends;
pub mod envoy;
pub mod registry;
pub mod venv;
