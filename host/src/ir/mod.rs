//! The host's routing IR: what translators produce, what merge orders and
//! resolves, what policies transform and what `envoy/` compiles.
//!
//! Plain Rust types owned by the host. Each contract version's generated
//! bindings convert into them in `plugin/`, so nothing downstream of a plugin
//! call (merge, compile, status) depends on any contract version, and a new
//! version adds a conversion, not a second pipeline. The shapes follow the
//! contract's `types` interface; serialised (for `isobar translate -o json`,
//! `/debug`) they read the same as the contract's records.

mod build;

use serde::{Deserialize, Serialize};

impl Ord for Diagnostic {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.object, &self.reason, &self.message, self.severity).cmp(&(
            &other.object,
            &other.reason,
            &other.message,
            other.severity,
        ))
    }
}

impl PartialOrd for Diagnostic {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Points at an object; the namespace is empty for cluster-scoped kinds.
/// The group tells kinds of one name apart; empty for core kinds, and for
/// references a plugin of contract 0.1 made (it named kinds only).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub group: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Severity {
    Info,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// Something a person should see on the object it names (a status
/// condition, an event, a log line). Ordered by object, reason, message:
/// how people read them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Diagnostic {
    pub object: ObjectRef,
    pub severity: Severity,
    /// CamelCase machine-readable cause, e.g. "ServiceNotFound".
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ListenerProtocol {
    Http,
    Https,
}

/// A port the data plane listens on. Listeners with the same name from
/// different roots are the same listener; they must agree on the port.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Listener {
    pub name: String,
    pub port: u16,
    pub protocol: ListenerProtocol,
}

/// TLS material by reference: resolved from a kubernetes.io/tls Secret and
/// served over SDS; key material never enters a plugin.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SecretRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum StringMatchKind {
    Exact,
    Prefix,
    Suffix,
    Contains,
    Regex,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct StringMatch {
    pub kind: StringMatchKind,
    pub value: String,
    pub ignore_case: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum HeaderValueMatch {
    Present,
    Value(StringMatch),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeaderMatch {
    pub name: String,
    pub value: HeaderValueMatch,
    pub invert: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct QueryMatch {
    pub name: String,
    /// None: the parameter is present.
    pub value: Option<StringMatch>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PathMatch {
    /// The whole path, byte for byte.
    Exact(String),
    /// Path-segment prefix: "/foo" matches "/foo" and "/foo/bar", never
    /// "/foobar". A trailing slash is ignored; "/" matches everything.
    Prefix(String),
    /// RE2 syntax, matched against the whole path.
    Regex(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RouteMatch {
    pub path: PathMatch,
    pub headers: Vec<HeaderMatch>,
    pub query: Vec<QueryMatch>,
    /// HTTP method, upper case.
    pub method: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum BackendProtocol {
    Http1,
    Http2,
    Grpc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LbPolicy {
    RoundRobin,
    LeastRequest,
    Random,
    RingHash,
    Maglev,
}

/// A Kubernetes Service port; the host builds its cluster and endpoints.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    pub namespace: String,
    pub name: String,
    pub port: u16,
    pub protocol: BackendProtocol,
    pub lb_policy: LbPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct WeightedBackend {
    pub backend: Backend,
    pub weight: u32,
}

/// A new path for a request (a rewrite) or a redirect.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum PathModifier {
    /// Replaces the whole path.
    Full(String),
    /// Replaces the part the route's prefix (or exact) match matched.
    Prefix(String),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Redirect {
    pub scheme: Option<String>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub path: Option<PathModifier>,
    /// 301, 302, 303, 307 or 308.
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DirectResponse {
    pub status: u16,
    pub body: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum RouteAction {
    Forward(Vec<WeightedBackend>),
    Redirect(Redirect),
    DirectResponse(DirectResponse),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeaderValue {
    pub name: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct HeaderChanges {
    pub set: Vec<HeaderValue>,
    pub add: Vec<HeaderValue>,
    pub remove: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Envoy retry_on conditions, e.g. "5xx,connect-failure".
    pub retry_on: String,
    pub attempts: u32,
    pub per_try_timeout_ms: Option<u32>,
}

/// A copy of each request to another backend (responses are ignored).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Mirror {
    pub backend: Backend,
    /// Share of requests mirrored, 0-100; none: all.
    pub percent: Option<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Route {
    pub matches: RouteMatch,
    pub action: RouteAction,
    /// The path sent upstream.
    pub path_rewrite: Option<PathModifier>,
    pub host_rewrite: Option<String>,
    pub timeout_ms: Option<u32>,
    pub retry: Option<RetryPolicy>,
    pub request_headers: Option<HeaderChanges>,
    pub response_headers: Option<HeaderChanges>,
    pub mirrors: Vec<Mirror>,
    /// The object that produced the route: set by the host to the root for
    /// translators; policies see it and keep it.
    pub source: Option<ObjectRef>,
}

/// One domain on one listener: a host name, a one-label wildcard
/// ("*.example.com") or "*".
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct VirtualHost {
    pub listener: String,
    pub domain: String,
    /// Required on https listeners: the certificate served for this
    /// domain's SNI.
    pub tls: Option<SecretRef>,
    pub routes: Vec<Route>,
}

/// Escape hatch: any Envoy resource, as its type URL and protobuf bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RawResource {
    pub type_url: String,
    pub name: String,
    pub value: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

/// A Kubernetes condition as a plugin judged it; the host stamps
/// `lastTransitionTime`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: ConditionStatus,
    pub reason: String,
    pub message: String,
    pub observed_generation: Option<i64>,
}

/// What a translator says about one object it judged.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ObjectStatus {
    pub object: ObjectRef,
    /// `status.conditions`.
    pub conditions: Vec<Condition>,
    /// Other status fields the plugin owns, a JSON object.
    pub fields: Option<serde_json::Value>,
}

/// Every diagnostic, ordered by object, reason and message, with how many
/// parts of the pipeline report it. A persistent map: the pipeline updates
/// it as units change and hands it to readers in O(1).
pub type DiagnosticSet = imbl::OrdMap<Diagnostic, usize>;

/// What one root contributes to the routing configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fragment {
    pub listeners: Vec<Listener>,
    pub virtual_hosts: Vec<VirtualHost>,
    pub raw: Vec<RawResource>,
    pub diagnostics: Vec<Diagnostic>,
    pub statuses: Vec<ObjectStatus>,
}
