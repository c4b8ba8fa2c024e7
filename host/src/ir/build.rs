//! Builders: constructors take the required fields, `with_*` methods set
//! optional ones, so tests and conversions never spell out every field.

use super::*;

impl ObjectRef {
    /// The object a store key names.
    pub fn of(key: &crate::store::ObjectKey) -> Self {
        ObjectRef {
            group: key.kind.group.clone(),
            ..ObjectRef::new(
                key.kind.kind.clone(),
                key.namespace.clone(),
                key.name.clone(),
            )
        }
    }

    /// Whether this names `key` (a reference without a group names that
    /// kind in any group, as contract 0.1 references do).
    pub fn names(&self, key: &crate::store::ObjectKey) -> bool {
        self.kind == key.kind.kind
            && self.namespace == key.namespace
            && self.name == key.name
            && (self.group.is_empty() || self.group == key.kind.group)
    }

    pub fn new(
        kind: impl Into<String>,
        namespace: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        ObjectRef {
            kind: kind.into(),
            namespace: namespace.into(),
            name: name.into(),
            group: String::new(),
        }
    }
}

impl Diagnostic {
    pub fn new(
        object: ObjectRef,
        severity: Severity,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic {
            object,
            severity,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn error(object: ObjectRef, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Diagnostic::new(object, Severity::Error, reason, message)
    }

    pub fn warning(
        object: ObjectRef,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Diagnostic::new(object, Severity::Warning, reason, message)
    }
}

impl Listener {
    pub fn http(name: impl Into<String>, port: u16) -> Self {
        Listener {
            name: name.into(),
            port,
            protocol: ListenerProtocol::Http,
        }
    }

    pub fn https(name: impl Into<String>, port: u16) -> Self {
        Listener {
            name: name.into(),
            port,
            protocol: ListenerProtocol::Https,
        }
    }
}

impl SecretRef {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        SecretRef {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl StringMatch {
    pub fn new(kind: StringMatchKind, value: impl Into<String>) -> Self {
        StringMatch {
            kind,
            value: value.into(),
            ignore_case: false,
        }
    }

    pub fn exact(value: impl Into<String>) -> Self {
        StringMatch::new(StringMatchKind::Exact, value)
    }

    pub fn prefix(value: impl Into<String>) -> Self {
        StringMatch::new(StringMatchKind::Prefix, value)
    }

    pub fn regex(value: impl Into<String>) -> Self {
        StringMatch::new(StringMatchKind::Regex, value)
    }

    pub fn ignoring_case(mut self) -> Self {
        self.ignore_case = true;
        self
    }
}

impl HeaderMatch {
    pub fn present(name: impl Into<String>) -> Self {
        HeaderMatch {
            name: name.into(),
            value: HeaderValueMatch::Present,
            invert: false,
        }
    }

    pub fn matching(name: impl Into<String>, value: StringMatch) -> Self {
        HeaderMatch {
            name: name.into(),
            value: HeaderValueMatch::Value(value),
            invert: false,
        }
    }

    pub fn exact(name: impl Into<String>, value: impl Into<String>) -> Self {
        HeaderMatch::matching(name, StringMatch::exact(value))
    }

    pub fn inverted(mut self) -> Self {
        self.invert = true;
        self
    }
}

impl QueryMatch {
    pub fn present(name: impl Into<String>) -> Self {
        QueryMatch {
            name: name.into(),
            value: None,
        }
    }

    pub fn matching(name: impl Into<String>, value: StringMatch) -> Self {
        QueryMatch {
            name: name.into(),
            value: Some(value),
        }
    }

    pub fn exact(name: impl Into<String>, value: impl Into<String>) -> Self {
        QueryMatch::matching(name, StringMatch::exact(value))
    }
}

impl RouteMatch {
    pub fn new(path: PathMatch) -> Self {
        RouteMatch {
            path,
            headers: Vec::new(),
            query: Vec::new(),
            method: None,
        }
    }

    pub fn exact(path: impl Into<String>) -> Self {
        RouteMatch::new(PathMatch::Exact(path.into()))
    }

    pub fn prefix(path: impl Into<String>) -> Self {
        RouteMatch::new(PathMatch::Prefix(path.into()))
    }

    pub fn regex(path: impl Into<String>) -> Self {
        RouteMatch::new(PathMatch::Regex(path.into()))
    }

    pub fn with_header(mut self, header: HeaderMatch) -> Self {
        self.headers.push(header);
        self
    }

    pub fn with_query(mut self, query: QueryMatch) -> Self {
        self.query.push(query);
        self
    }

    /// Upper-cased, as the contract says methods are.
    pub fn with_method(mut self, method: impl Into<String>) -> Self {
        self.method = Some(method.into().to_ascii_uppercase());
        self
    }
}

impl Backend {
    /// Port `port` of Service `namespace/name`, HTTP/1, round robin.
    pub fn service(namespace: impl Into<String>, name: impl Into<String>, port: u16) -> Self {
        Backend {
            namespace: namespace.into(),
            name: name.into(),
            port,
            protocol: BackendProtocol::Http1,
            lb_policy: LbPolicy::RoundRobin,
        }
    }

    pub fn with_protocol(mut self, protocol: BackendProtocol) -> Self {
        self.protocol = protocol;
        self
    }

    pub fn with_lb_policy(mut self, lb_policy: LbPolicy) -> Self {
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
    pub fn new(status: u16) -> Self {
        Redirect {
            scheme: None,
            host: None,
            port: None,
            path: None,
            status,
        }
    }

    pub fn with_scheme(mut self, scheme: impl Into<String>) -> Self {
        self.scheme = Some(scheme.into());
        self
    }

    pub fn with_host(mut self, host: impl Into<String>) -> Self {
        self.host = Some(host.into());
        self
    }

    pub fn with_port(mut self, port: u16) -> Self {
        self.port = Some(port);
        self
    }

    pub fn with_path(mut self, path: impl Into<String>) -> Self {
        self.path = Some(PathModifier::Full(path.into()));
        self
    }

    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.path = Some(PathModifier::Prefix(prefix.into()));
        self
    }
}

impl DirectResponse {
    pub fn new(status: u16) -> Self {
        DirectResponse { status, body: None }
    }

    pub fn with_body(mut self, body: impl Into<String>) -> Self {
        self.body = Some(body.into());
        self
    }
}

impl RetryPolicy {
    pub fn new(retry_on: impl Into<String>, attempts: u32) -> Self {
        RetryPolicy {
            retry_on: retry_on.into(),
            attempts,
            per_try_timeout_ms: None,
        }
    }

    pub fn with_per_try_timeout_ms(mut self, ms: u32) -> Self {
        self.per_try_timeout_ms = Some(ms);
        self
    }
}

impl HeaderChanges {
    pub fn with_set(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.set.push(HeaderValue {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    pub fn with_add(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.add.push(HeaderValue {
            name: name.into(),
            value: value.into(),
        });
        self
    }

    pub fn with_remove(mut self, name: impl Into<String>) -> Self {
        self.remove.push(name.into());
        self
    }
}

impl Route {
    /// No rewrites, timeout, retries or header changes.
    pub fn new(matches: RouteMatch, action: RouteAction) -> Self {
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

    pub fn forward(matches: RouteMatch, backend: Backend) -> Self {
        Route::forward_weighted(matches, [backend.weighted(1)])
    }

    pub fn forward_weighted(
        matches: RouteMatch,
        backends: impl IntoIterator<Item = WeightedBackend>,
    ) -> Self {
        Route::new(
            matches,
            RouteAction::Forward(backends.into_iter().collect()),
        )
    }

    pub fn redirect(matches: RouteMatch, redirect: Redirect) -> Self {
        Route::new(matches, RouteAction::Redirect(redirect))
    }

    pub fn direct_response(matches: RouteMatch, response: DirectResponse) -> Self {
        Route::new(matches, RouteAction::DirectResponse(response))
    }

    pub fn with_prefix_rewrite(mut self, prefix: impl Into<String>) -> Self {
        self.path_rewrite = Some(PathModifier::Prefix(prefix.into()));
        self
    }

    pub fn with_path_rewrite(mut self, path: impl Into<String>) -> Self {
        self.path_rewrite = Some(PathModifier::Full(path.into()));
        self
    }

    pub fn with_mirror(mut self, backend: Backend, percent: Option<u32>) -> Self {
        self.mirrors.push(Mirror { backend, percent });
        self
    }

    pub fn with_host_rewrite(mut self, host: impl Into<String>) -> Self {
        self.host_rewrite = Some(host.into());
        self
    }

    pub fn with_timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    pub fn with_retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = Some(retry);
        self
    }

    pub fn with_request_headers(mut self, changes: HeaderChanges) -> Self {
        self.request_headers = Some(changes);
        self
    }

    pub fn with_response_headers(mut self, changes: HeaderChanges) -> Self {
        self.response_headers = Some(changes);
        self
    }
}

impl VirtualHost {
    pub fn new(listener: impl Into<String>, domain: impl Into<String>) -> Self {
        VirtualHost {
            listener: listener.into(),
            domain: domain.into(),
            tls: None,
            routes: Vec::new(),
        }
    }

    pub fn with_tls(mut self, secret: SecretRef) -> Self {
        self.tls = Some(secret);
        self
    }

    pub fn with_route(mut self, route: Route) -> Self {
        self.routes.push(route);
        self
    }
}

impl Fragment {
    pub fn new() -> Self {
        Fragment::default()
    }

    /// Contributes nothing at all, diagnostics included.
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty()
            && self.virtual_hosts.is_empty()
            && self.raw.is_empty()
            && self.diagnostics.is_empty()
            && self.statuses.is_empty()
    }

    pub fn with_listener(mut self, listener: Listener) -> Self {
        self.listeners.push(listener);
        self
    }

    pub fn with_virtual_host(mut self, virtual_host: VirtualHost) -> Self {
        self.virtual_hosts.push(virtual_host);
        self
    }

    pub fn with_diagnostic(mut self, diagnostic: Diagnostic) -> Self {
        self.diagnostics.push(diagnostic);
        self
    }

    pub fn with_raw(mut self, raw: RawResource) -> Self {
        self.raw.push(raw);
        self
    }
}
