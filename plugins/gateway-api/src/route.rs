//! HTTPRoute and GRPCRoute roots: virtual hosts and routes on the
//! listeners of the parent Gateways they attach to, and `status.parents`.

use isobar_guest::k8s_openapi::api::core::v1::Service;
use isobar_guest::prelude::*;
use serde_json::{Value, json};

use crate::api::{self, BackendRef, Filter, GrpcRule, HttpRule, ParentReference};
use crate::gateway::{self, Proto};
use crate::{CONTROLLER, cond, listener_name, ref_granted};

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Http,
    Grpc,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Http => "HTTPRoute",
            Kind::Grpc => "GRPCRoute",
        }
    }
}

/// Why references did not resolve (the first problem of the route).
struct Refs {
    problem: Option<(&'static str, String)>,
    /// A rule or filter we do not implement.
    unsupported: Option<String>,
    /// Ignored settings, told to people as warnings on the route.
    ignored: Vec<String>,
}

impl Refs {
    fn fail(&mut self, reason: &'static str, message: String) {
        if self.problem.is_none() {
            self.problem = Some((reason, message));
        }
    }
}

pub fn translate(root: &Object, store: &dyn Store, kind: Kind) -> Result<Fragment, Error> {
    let (meta, parents, hostnames, routes, refs) = match kind {
        Kind::Http => {
            let r: api::Route<HttpRule> = root.parse()?;
            let mut refs = Refs {
                problem: None,
                unsupported: None,
                ignored: Vec::new(),
            };
            let routes = r
                .spec
                .rules
                .iter()
                .flat_map(|rule| http_rule(rule, &r.metadata.namespace, store, &mut refs))
                .collect::<Vec<_>>();
            (
                r.metadata,
                r.spec.parent_refs,
                r.spec.hostnames,
                routes,
                refs,
            )
        }
        Kind::Grpc => {
            let r: api::Route<GrpcRule> = root.parse()?;
            let mut refs = Refs {
                problem: None,
                unsupported: None,
                ignored: Vec::new(),
            };
            let routes = r
                .spec
                .rules
                .iter()
                .flat_map(|rule| grpc_rule(rule, &r.metadata.namespace, store, &mut refs))
                .collect::<Vec<_>>();
            (
                r.metadata,
                r.spec.parent_refs,
                r.spec.hostnames,
                routes,
                refs,
            )
        }
    };
    let me = root.object_ref();
    let routes: Vec<Route> = routes
        .into_iter()
        .map(|r| r.with_source(me.clone()))
        .collect();
    let generation = meta.generation;
    let mut fragment = Fragment::new();
    let mut parent_statuses = Vec::new();
    for parent in &parents {
        if !gateway::names_gateway(parent) {
            continue;
        }
        let gw_ns = parent
            .namespace
            .clone()
            .unwrap_or_else(|| meta.namespace.clone());
        // Recorded read: a Gateway change re-translates its routes.
        let Some(gw_obj) = store.get(api::API_VERSION, "Gateway", &gw_ns, &parent.name) else {
            continue;
        };
        let gw: api::Gateway = gw_obj.parse()?;
        if !gateway::is_ours(&gw, store)? {
            // Another controller's parent: not ours to judge.
            continue;
        }
        let view = gateway::analyse(gw, store);
        let attachment = gateway::attach(
            &view,
            parent,
            kind.name(),
            &meta.namespace,
            &hostnames,
            store,
        );
        let mut accepted = attachment.accepted.clone();
        if accepted.0
            && let Some(message) = &refs.unsupported
        {
            accepted = (false, "UnsupportedValue", message.clone());
        }
        for (l, domains) in &attachment.placed {
            let Some(el) = l.envoy_listener() else {
                continue;
            };
            fragment.add_listener(el);
            for domain in domains {
                let vh = fragment.virtual_host_mut(&listener_name(l.port), domain);
                if l.proto == Some(Proto::Https) {
                    vh.tls = l.tls.clone();
                }
                for r in &routes {
                    // A route repeating an earlier match of this route: the
                    // first wins, as the spec's rule order says.
                    if !vh.routes.iter().any(|x| x.matches == r.matches) {
                        vh.routes.push(redirect_port_for(r.clone(), l));
                    }
                }
            }
        }
        let resolved = match &refs.problem {
            None => cond(
                "ResolvedRefs",
                true,
                "ResolvedRefs",
                "All references resolved".into(),
                generation,
            ),
            Some((reason, message)) => {
                cond("ResolvedRefs", false, reason, message.clone(), generation)
            }
        };
        parent_statuses.push(json!({
            "parentRef": parent_ref(parent, &gw_ns),
            "controllerName": CONTROLLER,
            "conditions": [cond("Accepted", accepted.0, accepted.1, accepted.2, generation), resolved],
        }));
    }
    for message in refs.ignored {
        fragment.add_diagnostic(Diagnostic::warning(me.clone(), "Ignored", message));
    }
    if !parent_statuses.is_empty() {
        fragment
            .add_status(ObjectStatus::new(me).with_fields(&json!({"parents": parent_statuses})));
    }
    Ok(fragment)
}

/// A redirect's port as the spec derives it for listener `l`: none given
/// and no scheme either, the listener's port; and no port in `Location`
/// when it is the well-known one of the scheme the redirect uses (its own
/// or the listener's). Envoy drops the port when the scheme or host
/// changes and none is given, and keeps an explicit one as it is, so the
/// well-known port is left unset rather than spelled out.
fn redirect_port_for(mut route: Route, l: &gateway::ListenerView) -> Route {
    if let RouteAction::Redirect(r) = &mut route.action {
        let listener_scheme = if l.proto == Some(Proto::Https) {
            "https"
        } else {
            "http"
        };
        if r.port.is_none() && r.scheme.is_none() && r.host.is_some() {
            r.port = Some(l.port);
        }
        let scheme = r
            .scheme
            .as_deref()
            .unwrap_or(listener_scheme)
            .to_ascii_lowercase();
        let well_known = match scheme.as_str() {
            "https" => 443,
            _ => 80,
        };
        if r.port == Some(well_known) {
            r.port = None;
        }
    }
    route
}

/// The parentRef as status shows it: group, kind and namespace filled in.
fn parent_ref(p: &ParentReference, gw_ns: &str) -> Value {
    let mut p = p.clone();
    p.group.get_or_insert_with(|| api::GROUP.into());
    p.kind.get_or_insert_with(|| "Gateway".into());
    p.namespace = Some(gw_ns.to_owned());
    serde_json::to_value(p).unwrap_or(Value::Null)
}

/// The matches of one HTTPRoute rule, each with the rule's action.
fn http_rule(rule: &HttpRule, ns: &str, store: &dyn Store, refs: &mut Refs) -> Vec<Route> {
    let default = vec![api::HttpMatch::default()];
    let matches = rule
        .matches
        .as_ref()
        .filter(|m| !m.is_empty())
        .unwrap_or(&default);
    let template = rule_template(
        &rule.filters,
        &rule.backend_refs,
        ns,
        Kind::Http,
        store,
        refs,
    );
    if let Some(t) = rule
        .timeouts
        .as_ref()
        .and_then(|t| t.backend_request.as_ref())
    {
        refs.ignored.push(format!(
            "timeouts.backendRequest {t:?} is not supported (the contract has per-try timeouts only with retries); ignored"
        ));
    }
    let timeout = rule
        .timeouts
        .as_ref()
        .and_then(|t| t.request.as_deref())
        .and_then(|d| match duration_ms(d) {
            Some(ms) => Some(ms),
            None => {
                refs.unsupported
                    .get_or_insert(format!("timeout {d:?} is not a duration"));
                None
            }
        });
    matches
        .iter()
        .filter_map(|m| {
            let path = match &m.path {
                None => PathMatch::prefix("/"),
                Some(p) => {
                    let value = p.value.clone().unwrap_or_else(|| "/".into());
                    match p.type_.as_deref().unwrap_or("PathPrefix") {
                        "Exact" => PathMatch::exact(value),
                        "PathPrefix" => PathMatch::prefix(value),
                        "RegularExpression" => PathMatch::regex(value),
                        other => {
                            refs.unsupported
                                .get_or_insert(format!("path match type {other:?}"));
                            return None;
                        }
                    }
                }
            };
            let mut rm = RouteMatch::new(path);
            rm.headers = header_matches(&m.headers, refs);
            for q in &m.query_params {
                let sm = match q.type_.as_deref().unwrap_or("Exact") {
                    "RegularExpression" => StringMatch::regex(&q.value),
                    _ => StringMatch::exact(&q.value),
                };
                if !rm.query.iter().any(|x| x.name == q.name) {
                    rm.query.push(QueryMatch::matching(&q.name, sm));
                }
            }
            if let Some(method) = &m.method {
                rm = rm.with_method(method);
            }
            let mut route = template.clone();
            route.matches = rm;
            if timeout.is_some() {
                route.timeout_ms = timeout;
            }
            Some(route)
        })
        .collect()
}

/// Header matches; the first of a repeated name wins (names compare
/// case-insensitively, as the spec says).
fn header_matches(headers: &[api::ValueMatch], _refs: &mut Refs) -> Vec<HeaderMatch> {
    let mut out: Vec<HeaderMatch> = Vec::new();
    for h in headers {
        let name = h.name.to_ascii_lowercase();
        if out.iter().any(|x| x.name == name) {
            continue;
        }
        out.push(match h.type_.as_deref().unwrap_or("Exact") {
            "RegularExpression" => HeaderMatch::regex(name, &h.value),
            _ => HeaderMatch::exact(name, &h.value),
        });
    }
    out
}

/// The matches of one GRPCRoute rule: service and method become paths
/// (`/service/method`), as gRPC sends them.
fn grpc_rule(rule: &GrpcRule, ns: &str, store: &dyn Store, refs: &mut Refs) -> Vec<Route> {
    let default = vec![api::GrpcMatch::default()];
    let matches = if rule.matches.is_empty() {
        &default
    } else {
        &rule.matches
    };
    let template = rule_template(
        &rule.filters,
        &rule.backend_refs,
        ns,
        Kind::Grpc,
        store,
        refs,
    );
    matches
        .iter()
        .map(|m| {
            let path = match &m.method {
                None => PathMatch::prefix("/"),
                Some(mm) => {
                    let (s, me) = (mm.service.as_deref(), mm.method.as_deref());
                    if mm.type_.as_deref() == Some("RegularExpression") {
                        PathMatch::regex(format!(
                            "/{}/{}",
                            s.unwrap_or("[^/]+"),
                            me.unwrap_or("[^/]+")
                        ))
                    } else {
                        match (s, me) {
                            (Some(s), Some(m)) => PathMatch::exact(format!("/{s}/{m}")),
                            (Some(s), None) => PathMatch::prefix(format!("/{s}")),
                            (None, Some(m)) => {
                                PathMatch::regex(format!("/[^/]+/{}", regex_escape(m)))
                            }
                            (None, None) => PathMatch::prefix("/"),
                        }
                    }
                }
            };
            let mut rm = RouteMatch::new(path);
            rm.headers = header_matches(&m.headers, refs);
            let mut route = template.clone();
            route.matches = rm;
            route
        })
        .collect()
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let meta = "\\.+*?()|[]{}^$".contains(c);
            meta.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

/// A rule's action and filters, with a placeholder match.
fn rule_template(
    filters: &[Filter],
    backend_refs: &[BackendRef],
    ns: &str,
    kind: Kind,
    store: &dyn Store,
    refs: &mut Refs,
) -> Route {
    let mut redirect = None;
    let mut route = Route::direct_response(RouteMatch::prefix("/"), DirectResponse::new(500));
    let mut broken = false;
    for f in filters {
        match (f.type_.as_str(), kind) {
            ("RequestHeaderModifier", _) => {
                route.request_headers = f.request_header_modifier.as_ref().map(header_changes)
            }
            ("ResponseHeaderModifier", _) => {
                route.response_headers = f.response_header_modifier.as_ref().map(header_changes)
            }
            ("RequestRedirect", Kind::Http) => {
                let r = f.request_redirect.clone().unwrap_or_default();
                let mut out = Redirect::new(
                    r.status_code
                        .and_then(|c| u16::try_from(c).ok())
                        .unwrap_or(302),
                );
                out.scheme = r.scheme;
                out.host = r.hostname;
                out.port = r.port.and_then(|p| u16::try_from(p).ok());
                out.path = r.path.as_ref().and_then(|p| path_modifier(p, refs));
                redirect = Some(out);
            }
            ("URLRewrite", Kind::Http) => {
                let u = f.url_rewrite.clone().unwrap_or_default();
                route.host_rewrite = u.hostname;
                route.path_rewrite = u.path.as_ref().and_then(|p| path_modifier(p, refs));
            }
            ("RequestMirror", _) => {
                let m = f.request_mirror.clone().unwrap_or_default();
                match backend(&m.backend_ref, ns, kind, store) {
                    Ok(b) => {
                        let percent = m.percent.map(|p| p.clamp(0, 100) as u32).or_else(|| {
                            m.fraction.as_ref().map(|f| {
                                let d = f.denominator.unwrap_or(100).max(1);
                                (i64::from(f.numerator.max(0)) * 100 / i64::from(d)).clamp(0, 100)
                                    as u32
                            })
                        });
                        route.mirrors.push(Mirror {
                            backend: b,
                            percent,
                        });
                    }
                    Err((reason, message)) => refs.fail(reason, message),
                }
            }
            (other, _) => {
                refs.unsupported
                    .get_or_insert(format!("filter {other:?} is not supported"));
                broken = true;
            }
        }
    }
    if broken {
        return route;
    }
    if let Some(r) = redirect {
        route.action = RouteAction::Redirect(r);
        return route;
    }
    let mut backends = Vec::new();
    for b in backend_refs {
        if !b.filters.is_empty() {
            // As an unsupported rule filter: the rule answers 500 rather
            // than forward without what the filter asked for.
            refs.unsupported
                .get_or_insert("backendRef filters are not supported".into());
            return route;
        }
        match backend(b, ns, kind, store) {
            Ok(backend) => {
                let weight = b.weight.unwrap_or(1).max(0) as u32;
                if weight > 0 {
                    backends.push(backend.weighted(weight));
                }
            }
            Err((reason, message)) => {
                refs.fail(reason, message);
                // An invalid backendRef answers 500 for the whole rule
                // (the contract has no per-backend error share).
                return route;
            }
        }
    }
    if !backends.is_empty() {
        route.action = RouteAction::Forward(backends);
    }
    route
}

fn header_changes(m: &api::HeaderModifier) -> HeaderChanges {
    let mut c = HeaderChanges::new();
    for h in &m.set {
        c = c.with_set(&h.name, &h.value);
    }
    for h in &m.add {
        c = c.with_add(&h.name, &h.value);
    }
    for r in &m.remove {
        c = c.with_remove(r);
    }
    c
}

fn path_modifier(p: &api::PathModifier, refs: &mut Refs) -> Option<PathModifier> {
    match p.type_.as_str() {
        "ReplaceFullPath" => Some(PathModifier::Full(
            p.replace_full_path.clone().unwrap_or_default(),
        )),
        "ReplacePrefixMatch" => Some(PathModifier::Prefix(
            p.replace_prefix_match.clone().unwrap_or_default(),
        )),
        other => {
            refs.unsupported
                .get_or_insert(format!("path modifier {other:?}"));
            None
        }
    }
}

/// A backendRef to a Service port, or why it cannot be used.
fn backend(
    b: &BackendRef,
    ns: &str,
    kind: Kind,
    store: &dyn Store,
) -> Result<Backend, (&'static str, String)> {
    let group = b.group.as_deref().unwrap_or("");
    let k = b.kind.as_deref().unwrap_or("Service");
    if !(group.is_empty() || group == "core") || k != "Service" {
        return Err((
            "InvalidKind",
            format!(
                "backendRef {group}/{k} {}: only Services are supported",
                b.name
            ),
        ));
    }
    let target_ns = b.namespace.clone().unwrap_or_else(|| ns.to_owned());
    if target_ns != ns && !ref_granted(store, ns, kind.name(), &target_ns, "", "Service", &b.name) {
        return Err((
            "RefNotPermitted",
            format!(
                "Service {target_ns}/{} is in another namespace and no ReferenceGrant allows it",
                b.name
            ),
        ));
    }
    let Some(port) = b.port.and_then(|p| u16::try_from(p).ok()) else {
        return Err((
            "UnsupportedValue",
            format!("backendRef {}: a Service needs a port", b.name),
        ));
    };
    let service = store
        .get_typed::<Service>(&target_ns, &b.name)
        .ok()
        .flatten();
    let Some(service) = service else {
        return Err((
            "BackendNotFound",
            format!("Service {target_ns}/{} not found", b.name),
        ));
    };
    let ports = service.spec.and_then(|s| s.ports).unwrap_or_default();
    let Some(sp) = ports.iter().find(|p| p.port == i32::from(port)) else {
        return Err((
            "BackendNotFound",
            format!("Service {target_ns}/{} has no port {port}", b.name),
        ));
    };
    let protocol = match (kind, sp.app_protocol.as_deref()) {
        (Kind::Grpc, _) => BackendProtocol::Grpc,
        (_, Some("kubernetes.io/h2c")) => BackendProtocol::Http2,
        _ => BackendProtocol::Http1,
    };
    Ok(Backend::service(target_ns, &b.name, port).with_protocol(protocol))
}

/// A Gateway API duration (`1h2m3s4ms`, each unit at most once, in that
/// order) in milliseconds.
pub fn duration_ms(d: &str) -> Option<u32> {
    let mut total: u64 = 0;
    let mut rest = d;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else {
            return None;
        };
        total += n * unit;
        rest = &rest[len..];
    }
    u32::try_from(total).ok()
}
