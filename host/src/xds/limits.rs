//! What one client may make the xDS server hold. Every ADS client is
//! outside the host's trust: a request's size, the names and type URLs it
//! subscribes to, its streams and connections, and how long it may take to
//! say anything are all bounded, and going past a bound ends the stream
//! (or closes the connection) with a status that says which.

use std::time::Duration;

/// Limits of the ADS server. The defaults fit a large mesh (an Envoy
/// subscribing to 100k clusters) with room to spare.
#[derive(Clone, Debug)]
pub struct XdsLimits {
    /// The largest request message: a SotW request repeats its whole
    /// subscription (about 250 KiB for 10k clusters). Larger ends the
    /// stream with `RESOURCE_EXHAUSTED` before it is buffered.
    pub max_request_bytes: usize,
    /// Resource names one subscription (one type on one stream) may hold.
    pub max_names_per_type: usize,
    /// Type URLs one stream may subscribe to (the host serves five, plus
    /// whatever raw resources a plugin adds).
    pub max_types_per_stream: usize,
    /// HTTP/2 streams at once on one connection (an Envoy or a gRPC client
    /// opens one ADS stream).
    pub max_streams_per_connection: u32,
    /// Connections at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// From accepting a connection to its first request: the TLS
    /// handshake, the HTTP/2 preface and the request's headers. A
    /// connection that says nothing for this long is closed.
    pub first_request_timeout: Duration,
}

impl Default for XdsLimits {
    fn default() -> Self {
        XdsLimits {
            max_request_bytes: 4 << 20,
            max_names_per_type: 100_000,
            max_types_per_stream: 16,
            max_streams_per_connection: 16,
            max_connections: 1024,
            first_request_timeout: Duration::from_secs(10),
        }
    }
}

/// A type URL longer than this is refused (`INVALID_ARGUMENT`): the
/// longest Envoy type URL is under 100 bytes.
pub const MAX_TYPE_URL: usize = 256;

/// A node id is kept (for logs, `/debug/streams`, metrics) up to this many
/// bytes.
pub const MAX_NODE_ID: usize = 256;

/// A NACK's `error_detail.message` is kept up to this many bytes: enough
/// for Envoy's messages, which name the rejected resource first.
pub const MAX_NACK_MESSAGE: usize = 4096;
