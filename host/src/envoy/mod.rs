//! IR → Envoy resources, and their validation.
//!
//! Pure functions, one per resource kind; the caller (the snapshot builder)
//! decides what to build, caches the results and assembles snapshots:
//!
//! - [`virtual_host`] compiles one domain's ordered IR routes into an Envoy
//!   `VirtualHost`; [`encode_virtual_host`] encodes it once and
//!   [`encode_route_configuration`] joins encoded virtual hosts into a
//!   `RouteConfiguration` without re-encoding them.
//! - [`listener`] builds socket listeners (HTTP, and HTTPS with one filter
//!   chain per SNI domain); [`api_listener`] builds the API listener a
//!   proxyless gRPC client asks for.
//! - [`cluster`] builds EDS clusters, [`load_assignment`] their endpoints
//!   from EndpointSlices, [`secret`] SDS secrets from `kubernetes.io/tls`
//!   Secrets.
//! - [`validate_virtual_host`], [`validate_domains`], [`validate_listener`]
//!   and [`validate_raw`] check what is about to be served.
//!
//! Everything that is referenced by name (clusters, secrets, route
//! configurations) is named by [`names`], so the caller and these builders
//! always agree.
//!
//! Every resource here is understood by Envoy and, where gRPC's xDS client
//! reads it (API listener, route configuration, cluster, endpoints), by gRPC:
//! path matching uses only `path`, `prefix` and `safe_regex`.

mod cluster;
mod endpoint;
mod error;
mod listener;
pub mod names;
pub mod regex;
mod route;
mod secret;
mod validate;

pub use cluster::{CONNECT_TIMEOUT_MS, HTTP_PROTOCOL_OPTIONS, cluster};
pub use endpoint::load_assignment;
pub use error::{CompileError, ValidationError};
pub use listener::{
    HTTP_CONNECTION_MANAGER, ROUTER, TLS_INSPECTOR, TLS_TRANSPORT_SOCKET, TlsDomain, api_listener,
    listener,
};
pub use route::{
    MAX_DIRECT_RESPONSE_BODY, encode_route_configuration, encode_virtual_host, virtual_host,
};
pub use secret::{
    MAX_PEM_BYTES, TLS_SECRET_TYPE, has_pem_block, parse_error_without_content, secret,
};
pub use validate::{validate_domains, validate_listener, validate_raw, validate_virtual_host};

use envoy_types::pb::envoy::config::core::v3::{
    AggregatedConfigSource, ApiVersion, ConfigSource, config_source::ConfigSourceSpecifier,
};
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};

/// Packs a message into an `Any` with its canonical type URL.
pub(crate) fn to_any<M: prost::Message + prost::Name>(msg: &M) -> Any {
    Any {
        type_url: M::type_url(),
        value: msg.encode_to_vec(),
    }
}

/// "Over the same ADS stream", the only config source gRPC accepts for RDS
/// and EDS, and the one Envoy uses with our bootstrap.
pub(crate) fn ads() -> ConfigSource {
    ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(ConfigSourceSpecifier::Ads(AggregatedConfigSource {})),
        ..Default::default()
    }
}

pub(crate) fn millis(ms: u32) -> Duration {
    Duration {
        seconds: i64::from(ms / 1000),
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

pub(crate) fn u32_value(value: u32) -> UInt32Value {
    UInt32Value { value }
}

pub(crate) fn bool_value(value: bool) -> BoolValue {
    BoolValue { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_split_into_seconds_and_nanos() {
        assert_eq!(
            millis(1500),
            Duration {
                seconds: 1,
                nanos: 500_000_000
            }
        );
        assert_eq!(
            millis(0),
            Duration {
                seconds: 0,
                nanos: 0
            }
        );
        assert_eq!(millis(u32::MAX).seconds, 4_294_967);
    }

    #[test]
    fn any_carries_the_canonical_type_url() {
        let any = to_any(&ads());
        assert_eq!(
            any.type_url,
            "type.googleapis.com/envoy.config.core.v3.ConfigSource"
        );
        let back: ConfigSource = prost::Message::decode(any.value.as_slice()).unwrap();
        assert_eq!(back, ads());
    }
}
