//! Why IR could not be compiled, and why a compiled resource is not fit to
//! serve. Messages are written for the person who owns the object: they
//! become diagnostics and status conditions.

/// The IR (or a Kubernetes object) cannot be turned into an Envoy resource.
/// `route` is the index of the route in the list given to
/// [`virtual_host`](super::virtual_host).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileError {
    #[error("invalid domain {domain:?}: {reason}")]
    InvalidDomain {
        domain: String,
        reason: &'static str,
    },

    #[error("route {route}: path {path:?} must start with \"/\"")]
    InvalidPath { route: usize, path: String },

    #[error("route {route}: rewrite {rewrite:?} must start with \"/\"")]
    InvalidRewrite { route: usize, rewrite: String },

    #[error("route {route}: a {kind} match needs a non-empty value")]
    EmptyMatchValue { route: usize, kind: &'static str },

    #[error("route {route}: invalid header name {name:?}")]
    InvalidHeaderName { route: usize, name: String },

    #[error("route {route}: header {name:?}: value contains NUL, CR or LF")]
    InvalidHeaderValue { route: usize, name: String },

    #[error(
        "route {route}: header {name:?} cannot be changed (pseudo-headers and Host are Envoy's)"
    )]
    ForbiddenHeader { route: usize, name: String },

    #[error("route {route}: forwards to no backend with a weight above zero")]
    NoBackends { route: usize },

    #[error("route {route}: backend weights add up to more than {}", u32::MAX)]
    WeightOverflow { route: usize },

    #[error("route {route}: mirror percent {percent} is above 100")]
    InvalidMirrorPercent { route: usize, percent: u32 },
    #[error("route {route}: redirect status {status} is not one of 301, 302, 303, 307, 308")]
    InvalidRedirectStatus { route: usize, status: u16 },

    #[error("route {route}: direct response status {status} is not between 200 and 599")]
    InvalidDirectResponseStatus { route: usize, status: u16 },

    #[error("route {route}: direct response body is {size} bytes; Envoy allows at most {max}")]
    DirectResponseBodyTooLarge {
        route: usize,
        size: usize,
        max: usize,
    },

    #[error("Secret {secret}: type is {found:?}, expected \"kubernetes.io/tls\"")]
    SecretType { secret: String, found: String },

    #[error("Secret {secret}: {key} is missing or empty")]
    SecretKeyMissing { secret: String, key: &'static str },

    #[error("Secret {secret}: {key} is not PEM (no {expected} block)")]
    SecretNotPem {
        secret: String,
        key: &'static str,
        expected: &'static str,
    },

    #[error("Secret {secret}: {key} is {size} bytes; at most {max} are read")]
    SecretTooLarge {
        secret: String,
        key: &'static str,
        size: usize,
        max: usize,
    },

    #[error("Secret {secret}: tls.key is an encrypted private key; Envoy needs it unencrypted")]
    SecretEncryptedKey { secret: String },
}

/// A compiled (or raw) resource that must not be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("virtual host {vhost}: has no domains")]
    NoDomains { vhost: String },

    #[error("virtual host {vhost}: route {index} has no name")]
    UnnamedRoute { vhost: String, index: usize },

    #[error("virtual host {vhost}: route name {route:?} is used more than once")]
    DuplicateRouteName { vhost: String, route: String },

    #[error("virtual host {vhost}: route {route:?} has no match")]
    MissingMatch { vhost: String, route: String },

    #[error("virtual host {vhost}: route {route:?} has no action")]
    MissingAction { vhost: String, route: String },

    #[error(
        "virtual host {vhost}: route {route:?} forwards to cluster {cluster:?}, which does not exist"
    )]
    MissingCluster {
        vhost: String,
        route: String,
        cluster: String,
    },

    #[error("virtual host {vhost}: route {route:?} has an empty weighted cluster list")]
    NoWeightedClusters { vhost: String, route: String },

    #[error("virtual host {vhost}: route {route:?} gives cluster {cluster:?} no weight above zero")]
    ZeroWeight {
        vhost: String,
        route: String,
        cluster: String,
    },

    #[error(
        "virtual host {vhost}: route {route:?} uses a cluster specifier this host does not serve"
    )]
    UnsupportedClusterSpecifier { vhost: String, route: String },

    #[error("virtual host name {vhost:?} is used more than once")]
    DuplicateVirtualHost { vhost: String },

    #[error("domain {domain:?} is claimed by virtual hosts {first} and {second}")]
    DuplicateDomain {
        domain: String,
        first: String,
        second: String,
    },

    #[error("listener {listener}: has neither filter chains nor an API listener")]
    NoFilterChains { listener: String },

    #[error("listener {listener}: two filter chains match the same connections ({chain:?})")]
    DuplicateFilterChainMatch { listener: String, chain: String },

    #[error("raw resource: type URL {type_url:?} is not one of the served types")]
    UnknownTypeUrl { type_url: String },

    #[error("raw resource: bytes do not decode as {type_url}: {message}")]
    Decode { type_url: String, message: String },

    #[error("raw resource: {type_url} has no name")]
    UnnamedResource { type_url: String },
}
