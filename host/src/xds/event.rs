//! What the xDS server tells the host about its streams: the raw material
//! for diagnostics (a NACK names the objects behind the rejected resources)
//! and for metrics (streams by node, push and ACK latency, NACK counts).

use crate::store::ObjectKey;

/// Which ADS variant a stream speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `StreamAggregatedResources`, state of the world.
    Sotw,
    /// `DeltaAggregatedResources`, incremental.
    Delta,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Sotw => "sotw",
            Protocol::Delta => "delta",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XdsEvent {
    /// A stream sent its first request (which names the node).
    StreamOpened {
        stream: u64,
        node: String,
        protocol: Protocol,
    },
    /// A stream that had opened ended: the client went away, or the server
    /// is shutting down. Disconnects are normal.
    StreamClosed {
        stream: u64,
        node: String,
        protocol: Protocol,
    },
    /// A response was written to a stream.
    Pushed(Push),
    /// The client applied a response.
    Ack(Ack),
    /// The client rejected a response and stays on its previous version.
    Nack(Nack),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    pub stream: u64,
    pub node: String,
    pub protocol: Protocol,
    pub type_url: String,
    /// Snapshot version (SotW `version_info`, delta `system_version_info`).
    pub version: String,
    pub nonce: String,
    /// Resources carried (SotW: the whole subscribed set; delta: changed only).
    pub resources: usize,
    /// Delta `removed_resources`; always 0 for SotW.
    pub removed: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub stream: u64,
    pub node: String,
    pub protocol: Protocol,
    pub type_url: String,
    /// The snapshot version of the acknowledged response.
    pub version: String,
    pub nonce: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    pub stream: u64,
    pub node: String,
    pub protocol: Protocol,
    pub type_url: String,
    /// The snapshot version of the rejected response.
    pub version: String,
    /// The version the client reports it stays on (SotW `version_info` of
    /// the NACK; empty for delta, which has no per-type version).
    pub client_version: String,
    pub nonce: String,
    /// `error_detail.code` and `error_detail.message` as the client sent them.
    pub code: i32,
    pub message: String,
    /// The rejected resources the error message names; every resource of the
    /// rejected response when it names none of them.
    pub resource_names: Vec<String>,
    /// The Kubernetes objects those resources were built from (sorted, unique).
    pub sources: Vec<ObjectKey>,
}
