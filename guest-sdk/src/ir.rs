//! Builders for the routing IR.
//!
//! Constructors take the required fields; `with_*` methods consume and
//! return `self` to set optional ones. Every default is spelled out here so a
//! plugin never has to list all of a record's fields.

use k8s_openapi::Resource;

use crate::types::*;

impl ObjectRef {
    /// An object of a kind the plugin declares, by kind name: the host
    /// resolves the group from the plugin's declared kinds. Use
    /// [`ObjectRef::of`] (or [`Object::object_ref`]) when the group is known.
    pub fn new(
        kind: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> ObjectRef {
        ObjectRef {
            api_version: String::new(),
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
        }
    }

    /// A fully named object: `api_version` (its group tells kinds apart),
    /// kind, namespace and name.
    pub fn of(
        api_version: impl Into<String>,
        kind: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> ObjectRef {
        ObjectRef {
            api_version: api_version.into(),
            ..ObjectRef::new(kind, namespace, name)
        }
    }
}

impl KindRef {
    pub fn new(api_version: impl Into<String>, kind: impl Into<String>) -> KindRef {
        KindRef {
            api_version: api_version.into(),
            kind: kind.into(),
        }
    }

    /// The kind of a k8s-openapi type, e.g. `KindRef::of::<Ingress>()`.
    pub fn of<K: Resource>() -> KindRef {
        KindRef::new(K::API_VERSION, K::KIND)
    }
}

impl TranslatorInfo {
    /// A plugin that watches nothing yet; add kinds with
    /// [`TranslatorInfo::watch`] and [`TranslatorInfo::root`].
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> PluginInfo {
        TranslatorInfo {
            name: name.into(),
            version: version.into(),
            watches: Vec::new(),
            roots: Vec::new(),
        }
    }

    /// Declares a kind the plugin reads.
    pub fn watch<K: Resource>(self) -> PluginInfo {
        self.watch_kind(KindRef::of::<K>())
    }

    /// Declares a kind `translate` is called for (and so also reads).
    pub fn root<K: Resource>(self) -> PluginInfo {
        self.root_kind(KindRef::of::<K>())
    }

    /// [`PluginInfo::watch`] for kinds without a k8s-openapi type (CRDs).
    pub fn watch_kind(mut self, kind: KindRef) -> PluginInfo {
        if !self.watches.contains(&kind) {
            self.watches.push(kind);
        }
        self
    }

    /// [`PluginInfo::root`] for kinds without a k8s-openapi type (CRDs).
    pub fn root_kind(mut self, kind: KindRef) -> PluginInfo {
        if !self.roots.contains(&kind) {
            self.roots.push(kind.clone());
        }
        self.watch_kind(kind)
    }
}

impl Diagnostic {
    pub fn new(
        object: ObjectRef,
        severity: Severity,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            object,
            severity,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn info(object: ObjectRef, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic::new(object, Severity::Info, reason, message)
    }

    pub fn warning(
        object: ObjectRef,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic::new(object, Severity::Warning, reason, message)
    }

    pub fn error(object: ObjectRef, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic::new(object, Severity::Error, reason, message)
    }
}

impl Listener {
    pub fn http(name: impl Into<String>, port: u16) -> Listener {
        Listener {
            name: name.into(),
            port,
            protocol: ListenerProtocol::Http,
        }
    }

    pub fn https(name: impl Into<String>, port: u16) -> Listener {
        Listener {
            name: name.into(),
            port,
            protocol: ListenerProtocol::Https,
        }
    }
}

impl SecretRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> SecretRef {
        SecretRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl StringMatch {
    pub fn new(kind: StringMatchKind, value: impl Into<String>) -> StringMatch {
        StringMatch {
            kind,
            value: value.into(),
            ignore_case: false,
        }
    }

    pub fn exact(value: impl Into<String>) -> StringMatch {
        StringMatch::new(StringMatchKind::Exact, value)
    }

    pub fn prefix(value: impl Into<String>) -> StringMatch {
        StringMatch::new(StringMatchKind::Prefix, value)
    }

    pub fn suffix(value: impl Into<String>) -> StringMatch {
        StringMatch::new(StringMatchKind::Suffix, value)
    }

    pub fn contains(value: impl Into<String>) -> StringMatch {
        StringMatch::new(StringMatchKind::Contains, value)
    }

    /// RE2 syntax, matched against the whole value.
    pub fn regex(value: impl Into<String>) -> StringMatch {
        StringMatch::new(StringMatchKind::Regex, value)
    }

    /// Case-insensitive (not applicable to regex: use `(?i)` instead).
    pub fn ignoring_case(mut self) -> StringMatch {
        self.ignore_case = true;
        self
    }
}

impl HeaderMatch {
    pub fn new(name: impl Into<String>, value: HeaderValueMatch) -> HeaderMatch {
        HeaderMatch {
            name: name.into(),
            value,
            invert: false,
        }
    }

    /// The header is present, whatever its value.
    pub fn present(name: impl Into<String>) -> HeaderMatch {
        HeaderMatch::new(name, HeaderValueMatch::Present)
    }

    pub fn matching(name: impl Into<String>, value: StringMatch) -> HeaderMatch {
        HeaderMatch::new(name, HeaderValueMatch::Value(value))
    }

    pub fn exact(name: impl Into<String>, value: impl Into<String>) -> HeaderMatch {
        HeaderMatch::matching(name, StringMatch::exact(value))
    }

    pub fn regex(name: impl Into<String>, value: impl Into<String>) -> HeaderMatch {
        HeaderMatch::matching(name, StringMatch::regex(value))
    }

    /// Matches when the header does *not* match.
    pub fn inverted(mut self) -> HeaderMatch {
        self.invert = !self.invert;
        self
    }
}

impl QueryMatch {
    /// The parameter is present, whatever its value.
    pub fn present(name: impl Into<String>) -> QueryMatch {
        QueryMatch {
            name: name.into(),
            value: None,
        }
    }

    pub fn matching(name: impl Into<String>, value: StringMatch) -> QueryMatch {
        QueryMatch {
            name: name.into(),
            value: Some(value),
        }
    }

    pub fn exact(name: impl Into<String>, value: impl Into<String>) -> QueryMatch {
        QueryMatch::matching(name, StringMatch::exact(value))
    }
}

impl PathMatch {
    /// The whole path, byte for byte.
    pub fn exact(path: impl Into<String>) -> PathMatch {
        PathMatch::Exact(path.into())
    }

    /// Path-segment prefix: "/foo" matches "/foo" and "/foo/bar", not
    /// "/foobar".
    pub fn prefix(path: impl Into<String>) -> PathMatch {
        PathMatch::Prefix(path.into())
    }

    /// RE2 syntax, matched against the whole path.
    pub fn regex(path: impl Into<String>) -> PathMatch {
        PathMatch::Regex(path.into())
    }
}

impl RouteMatch {
    pub fn new(path: PathMatch) -> RouteMatch {
        RouteMatch {
            path,
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        }
    }

    pub fn exact(path: impl Into<String>) -> RouteMatch {
        RouteMatch::new(PathMatch::exact(path))
    }

    pub fn prefix(path: impl Into<String>) -> RouteMatch {
        RouteMatch::new(PathMatch::prefix(path))
    }

    pub fn regex(path: impl Into<String>) -> RouteMatch {
        RouteMatch::new(PathMatch::regex(path))
    }

    pub fn with_header(mut self, header: HeaderMatch) -> RouteMatch {
        self.headers.push(header);
        self
    }

    pub fn with_query(mut self, query: QueryMatch) -> RouteMatch {
        self.query.push(query);
        self
    }

    /// HTTP method; upper-cased here because the contract says so.
    pub fn with_method(mut self, method: impl Into<String>) -> RouteMatch {
        self.method = Some(method.into().to_ascii_uppercase());
        self
    }
}

impl Backend {
    /// A Service port, HTTP/1.1, round robin.
    pub fn service(namespace: impl Into<String>, name: impl Into<String>, port: u16) -> Backend {
        Backend {
            namespace: namespace.into(),
            name: name.into(),
            port,
            protocol: BackendProtocol::Http1,
            lb_policy: LbPolicy::RoundRobin,
        }
    }

    pub fn with_protocol(mut self, protocol: BackendProtocol) -> Backend {
        self.protocol = protocol;
        self
    }

    pub fn with_lb_policy(mut self, lb_policy: LbPolicy) -> Backend {
        self.lb_policy = lb_policy;
        self
    }

    pub fn weighted(self, weight: u32) -> WeightedBackend {
        WeightedBackend {
            backend: self,
            weight,
        }
    }
}

impl Redirect {
    /// Keeps scheme, host, port and path; sets only the status.
    pub fn new(status: u16) -> Redirect {
        Redirect {
            scheme: None,
            host: None,
            port: None,
            path: None,
            status,
        }
    }

    /// 301 to the same URL over https.
    pub fn to_https() -> Redirect {
        Redirect::new(301).with_scheme("https")
    }

    pub fn with_scheme(mut self, scheme: impl Into<String>) -> Redirect {
        self.scheme = Some(scheme.into());
        self
    }

    pub fn with_host(mut self, host: impl Into<String>) -> Redirect {
        self.host = Some(host.into());
        self
    }

    pub fn with_port(mut self, port: u16) -> Redirect {
        self.port = Some(port);
        self
    }

    /// Replaces the whole path.
    pub fn with_path(mut self, path: impl Into<String>) -> Redirect {
        self.path = Some(PathModifier::Full(path.into()));
        self
    }

    /// Replaces the part of the path the route's prefix matched.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Redirect {
        self.path = Some(PathModifier::Prefix(prefix.into()));
        self
    }
}

impl DirectResponse {
    pub fn new(status: u16) -> DirectResponse {
        DirectResponse { status, body: None }
    }

    pub fn with_body(mut self, body: impl Into<String>) -> DirectResponse {
        self.body = Some(body.into());
        self
    }
}

impl RetryPolicy {
    /// `retry_on` is Envoy's comma-separated condition list, e.g.
    /// "5xx,connect-failure".
    pub fn new(retry_on: impl Into<String>, attempts: u32) -> RetryPolicy {
        RetryPolicy {
            retry_on: retry_on.into(),
            attempts,
            per_try_timeout_ms: None,
        }
    }

    pub fn with_per_try_timeout_ms(mut self, timeout_ms: u32) -> RetryPolicy {
        self.per_try_timeout_ms = Some(timeout_ms);
        self
    }
}

// Not derivable: the type is generated by wit-bindgen.
#[allow(clippy::derivable_impls)]
impl Default for HeaderChanges {
    fn default() -> HeaderChanges {
        HeaderChanges {
            set: Vec::new(),
            add: Vec::new(),
            remove: Vec::new(),
        }
    }
}

impl HeaderChanges {
    pub fn new() -> HeaderChanges {
        HeaderChanges::default()
    }

    /// Sets (replaces) a header.
    pub fn with_set(mut self, name: impl Into<String>, value: impl Into<String>) -> HeaderChanges {
        self.set.push(HeaderValue {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    /// Appends a header value.
    pub fn with_add(mut self, name: impl Into<String>, value: impl Into<String>) -> HeaderChanges {
        self.add.push(HeaderValue {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    pub fn with_remove(mut self, name: impl Into<String>) -> HeaderChanges {
        self.remove.push(name.into());
        self
    }
}

impl Route {
    /// A route with no timeout, retries, rewrites or header changes.
    pub fn new(matches: RouteMatch, action: RouteAction) -> Route {
        Route {
            matches,
            action,
            path_rewrite: None,
            host_rewrite: None,
            timeout_ms: None,
            retry: None,
            request_headers: None,
            response_headers: None,
            mirrors: Vec::new(),
            source: None,
        }
    }

    /// Forwards everything to one backend.
    pub fn forward(matches: RouteMatch, backend: Backend) -> Route {
        Route::forward_weighted(matches, [backend.weighted(1)])
    }

    /// Splits traffic over backends in proportion to their weights.
    pub fn forward_weighted(
        matches: RouteMatch,
        backends: impl IntoIterator<Item = WeightedBackend>,
    ) -> Route {
        Route::new(
            matches,
            RouteAction::Forward(backends.into_iter().collect()),
        )
    }

    pub fn redirect(matches: RouteMatch, redirect: Redirect) -> Route {
        Route::new(matches, RouteAction::Redirect(redirect))
    }

    /// Answers without contacting a backend, e.g. a 503 for a missing Service.
    pub fn direct_response(matches: RouteMatch, response: DirectResponse) -> Route {
        Route::new(matches, RouteAction::DirectResponse(response))
    }

    /// Replaces the matched prefix (or the whole exact path) upstream.
    pub fn with_prefix_rewrite(mut self, prefix: impl Into<String>) -> Route {
        self.path_rewrite = Some(PathModifier::Prefix(prefix.into()));
        self
    }

    /// Replaces the whole path upstream.
    pub fn with_path_rewrite(mut self, path: impl Into<String>) -> Route {
        self.path_rewrite = Some(PathModifier::Full(path.into()));
        self
    }

    /// Copies requests to `backend` (`percent` of them; none: all).
    pub fn with_mirror(mut self, backend: Backend, percent: Option<u32>) -> Route {
        self.mirrors.push(Mirror { backend, percent });
        self
    }

    /// The object that produced the route (translators may leave it: the
    /// host sets the root).
    pub fn with_source(mut self, source: ObjectRef) -> Route {
        self.source = Some(source);
        self
    }

    pub fn with_host_rewrite(mut self, host: impl Into<String>) -> Route {
        self.host_rewrite = Some(host.into());
        self
    }

    pub fn with_timeout_ms(mut self, timeout_ms: u32) -> Route {
        self.timeout_ms = Some(timeout_ms);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Route {
        self.retry = Some(retry);
        self
    }

    pub fn with_request_headers(mut self, changes: HeaderChanges) -> Route {
        self.request_headers = Some(changes);
        self
    }

    pub fn with_response_headers(mut self, changes: HeaderChanges) -> Route {
        self.response_headers = Some(changes);
        self
    }
}

impl VirtualHost {
    /// `domain` is a host name, a one-label wildcard ("*.example.com") or "*".
    pub fn new(listener: impl Into<String>, domain: impl Into<String>) -> VirtualHost {
        VirtualHost {
            listener: listener.into(),
            domain: domain.into(),
            tls: None,
            routes: Vec::new(),
        }
    }

    /// The certificate for this domain (required on https listeners).
    pub fn with_tls(mut self, secret: SecretRef) -> VirtualHost {
        self.tls = Some(secret);
        self
    }

    pub fn with_route(mut self, route: Route) -> VirtualHost {
        self.routes.push(route);
        self
    }

    pub fn with_routes(mut self, routes: impl IntoIterator<Item = Route>) -> VirtualHost {
        self.routes.extend(routes);
        self
    }
}

// Not derivable: the type is generated by wit-bindgen.
#[allow(clippy::derivable_impls)]
impl Default for Fragment {
    fn default() -> Fragment {
        Fragment {
            listeners: Vec::new(),
            virtual_hosts: Vec::new(),
            raw: Vec::new(),
            diagnostics: Vec::new(),
            statuses: Vec::new(),
        }
    }
}

impl Fragment {
    /// An empty fragment: "this root contributes nothing".
    pub fn new() -> Fragment {
        Fragment::default()
    }

    /// True when the fragment contributes nothing at all, diagnostics
    /// included.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
            && self.virtual_hosts.is_empty()
            && self.raw.is_empty()
            && self.diagnostics.is_empty()
            && self.statuses.is_empty()
    }

    /// Declares a listener once; later declarations with the same name are
    /// ignored (the host requires listeners of one name to agree anyway).
    pub fn add_listener(&mut self, listener: Listener) -> &mut Fragment {
        if !self.listeners.iter().any(|l| l.name == listener.name) {
            self.listeners.push(listener);
        }
        self
    }

    pub fn with_listener(mut self, listener: Listener) -> Fragment {
        self.add_listener(listener);
        self
    }

    pub fn add_virtual_host(&mut self, virtual_host: VirtualHost) -> &mut Fragment {
        self.virtual_hosts.push(virtual_host);
        self
    }

    pub fn with_virtual_host(mut self, virtual_host: VirtualHost) -> Fragment {
        self.add_virtual_host(virtual_host);
        self
    }

    /// The virtual host for (`listener`, `domain`), created empty if this
    /// fragment has none yet: rules of one host collect into one entry.
    pub fn virtual_host_mut(&mut self, listener: &str, domain: &str) -> &mut VirtualHost {
        let found = self
            .virtual_hosts
            .iter()
            .position(|vh| vh.listener == listener && vh.domain == domain);
        let index = found.unwrap_or_else(|| {
            self.virtual_hosts.push(VirtualHost::new(listener, domain));
            self.virtual_hosts.len() - 1
        });
        &mut self.virtual_hosts[index]
    }

    /// Adds a diagnostic unless an identical one is already there (one
    /// missing Service referenced by ten paths is one problem).
    pub fn add_diagnostic(&mut self, diagnostic: Diagnostic) -> &mut Fragment {
        if !self.diagnostics.contains(&diagnostic) {
            self.diagnostics.push(diagnostic);
        }
        self
    }

    pub fn with_diagnostic(mut self, diagnostic: Diagnostic) -> Fragment {
        self.add_diagnostic(diagnostic);
        self
    }

    pub fn add_raw(&mut self, raw: RawResource) -> &mut Fragment {
        self.raw.push(raw);
        self
    }

    /// Says what the plugin judged of `status.object` (the root, or an
    /// object this call read): one status per object.
    pub fn add_status(&mut self, status: ObjectStatus) -> &mut Fragment {
        match self.statuses.iter_mut().find(|s| s.object == status.object) {
            Some(existing) => *existing = status,
            None => self.statuses.push(status),
        }
        self
    }

    pub fn with_status(mut self, status: ObjectStatus) -> Fragment {
        self.add_status(status);
        self
    }
}

impl Condition {
    /// A condition judged against the object's current generation.
    pub fn new(
        type_: impl Into<String>,
        status: bool,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Condition {
        Condition {
            type_: type_.into(),
            status: if status {
                ConditionStatus::True
            } else {
                ConditionStatus::False
            },
            reason: reason.into(),
            message: message.into(),
            observed_generation: None,
        }
    }

    pub fn unknown(
        type_: impl Into<String>,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Condition {
        Condition {
            status: ConditionStatus::Unknown,
            ..Condition::new(type_, false, reason, message)
        }
    }

    pub fn with_observed_generation(mut self, generation: i64) -> Condition {
        self.observed_generation = Some(generation);
        self
    }
}

impl ObjectStatus {
    pub fn new(object: ObjectRef) -> ObjectStatus {
        ObjectStatus {
            object,
            conditions: Vec::new(),
            fields: None,
        }
    }

    /// Sets (or replaces, by type) a top-level condition.
    pub fn with_condition(mut self, condition: Condition) -> ObjectStatus {
        self.conditions.retain(|c| c.type_ != condition.type_);
        self.conditions.push(condition);
        self
    }

    /// Status fields the plugin owns besides `conditions`, e.g.
    /// `{"parents": [...]}`.
    pub fn with_fields(mut self, fields: &serde_json::Value) -> ObjectStatus {
        self.fields = Some(fields.to_string());
        self
    }
}

impl PolicyInfo {
    /// A policy for every virtual host that reads nothing yet.
    pub fn new(name: impl Into<String>, version: impl Into<String>) -> PolicyInfo {
        PolicyInfo {
            name: name.into(),
            version: version.into(),
            reads: Vec::new(),
            listeners: Vec::new(),
            domains: Vec::new(),
        }
    }

    /// Declares a kind the policy reads.
    pub fn read<K: Resource>(self) -> PolicyInfo {
        self.read_kind(KindRef::of::<K>())
    }

    pub fn read_kind(mut self, kind: KindRef) -> PolicyInfo {
        if !self.reads.contains(&kind) {
            self.reads.push(kind);
        }
        self
    }

    /// Runs only for the virtual hosts of `listener` (repeatable).
    pub fn on_listener(mut self, listener: impl Into<String>) -> PolicyInfo {
        self.listeners.push(listener.into());
        self
    }

    /// Runs only for the virtual host of `domain` (repeatable).
    pub fn on_domain(mut self, domain: impl Into<String>) -> PolicyInfo {
        self.domains.push(domain.into());
        self
    }
}

impl PolicyOutput {
    /// `host` as the policy leaves it, with nothing to say.
    pub fn new(host: VirtualHost) -> PolicyOutput {
        PolicyOutput {
            host,
            diagnostics: Vec::new(),
        }
    }

    pub fn with_diagnostic(mut self, diagnostic: Diagnostic) -> PolicyOutput {
        if !self.diagnostics.contains(&diagnostic) {
            self.diagnostics.push(diagnostic);
        }
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;
    use k8s_openapi::api::networking::v1::Ingress;

    #[test]
    fn plugin_info_roots_are_watched_once() {
        let info = PluginInfo::new("x", "1")
            .root::<Ingress>()
            .watch::<Ingress>()
            .watch::<Service>();
        assert_eq!(
            info.roots,
            vec![KindRef::new("networking.k8s.io/v1", "Ingress")]
        );
        assert_eq!(info.watches.len(), 2);
    }

    #[test]
    fn fragment_merges_hosts_listeners_and_diagnostics() {
        let mut fragment = Fragment::new();
        assert!(fragment.is_empty());
        fragment.add_listener(Listener::http("a", 1));
        fragment.add_listener(Listener::http("a", 1));
        let route = Route::forward(RouteMatch::prefix("/"), Backend::service("ns", "s", 80));
        fragment
            .virtual_host_mut("a", "x")
            .routes
            .push(route.clone());
        fragment.virtual_host_mut("a", "x").routes.push(route);
        fragment.virtual_host_mut("a", "y");
        let diagnostic = Diagnostic::warning(ObjectRef::new("K", "ns", "n"), "R", "m");
        fragment.add_diagnostic(diagnostic.clone());
        fragment.add_diagnostic(diagnostic);
        assert_eq!(fragment.listeners.len(), 1);
        assert_eq!(fragment.virtual_hosts.len(), 2);
        assert_eq!(fragment.virtual_hosts[0].routes.len(), 2);
        assert_eq!(fragment.diagnostics.len(), 1);
    }

    #[test]
    fn route_builders_fill_defaults() {
        let route = Route::forward(
            RouteMatch::exact("/a")
                .with_method("get")
                .with_header(HeaderMatch::present("x").inverted()),
            Backend::service("ns", "s", 80).with_protocol(BackendProtocol::Grpc),
        )
        .with_timeout_ms(5)
        .with_retry(RetryPolicy::new("5xx", 2));
        assert_eq!(route.matches.method.as_deref(), Some("GET"));
        assert!(route.matches.headers[0].invert);
        let RouteAction::Forward(backends) = &route.action else {
            panic!("not a forward: {route:?}");
        };
        assert_eq!(backends[0].weight, 1);
        assert_eq!(backends[0].backend.lb_policy, LbPolicy::RoundRobin);
        assert_eq!(route.timeout_ms, Some(5));
        let redirect = Redirect::to_https();
        assert_eq!(
            (redirect.scheme.as_deref(), redirect.status),
            (Some("https"), 301)
        );
    }
}
