//! Serving snapshots to data planes: ADS over gRPC, state of the world and
//! delta, each resource encoded once per snapshot and shared by every stream.

mod body;
mod delta;
pub mod event;
pub mod server;
pub mod snapshot;
mod sotw;
mod stream;
mod wire;

pub use event::{Ack, Nack, Protocol, Push, XdsEvent};
pub use server::{AdsService, ServeError, TlsConfig, XdsServer, serve};
pub use snapshot::{Resource, Snapshot, type_url};
pub use wire::{DeltaResponse, RawNames, SotwRequest, SotwResponse};
