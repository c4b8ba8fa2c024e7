//! Serving snapshots to data planes: ADS over gRPC, state of the world and
//! delta, each resource encoded once per snapshot and shared by every stream.

mod body;
mod delta;
pub mod event;
mod limits;
mod listen;
pub mod server;
pub mod snapshot;
mod sotw;
mod staging;
mod stream;
mod wire;

pub use event::{Ack, Nack, Protocol, Push, XdsEvent};
pub use limits::{MAX_NACK_MESSAGE, MAX_NODE_ID, MAX_TYPE_URL, XdsLimits};
pub use server::{AdsService, ServeError, TlsConfig, XdsServer, check_exposure, serve};
pub use snapshot::{Resource, Snapshot, type_url};
pub use wire::{DeltaResponse, RawNames, SotwRequest, SotwResponse};

/// At most `max` bytes of `s`, cut on a character boundary and marked.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    crate::writeback::truncate(s, max)
}
