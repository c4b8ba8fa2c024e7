//! Gateways: which listeners are valid, which routes may attach to them,
//! and the Gateway root's own output (Envoy listeners and its status).
//!
//! The analysis here is shared: a Gateway root uses it for its status and
//! listeners, a route root uses it (on the parent Gateways it reads) to
//! decide where its routes go. Both compute it from the same objects, so
//! they agree.

use std::collections::BTreeMap;

use isobar_guest::k8s_openapi::api::core::v1::Namespace;
use isobar_guest::k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use isobar_guest::prelude::*;
use serde_json::{Value, json};

use crate::api::{self, GROUP, Gateway, GatewayClass, ParentReference};
use crate::{CONTROLLER, cond, listener_name, ref_granted};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Http,
    Https,
}

/// One Gateway listener as judged.
#[derive(Clone, Debug)]
pub struct ListenerView {
    pub name: String,
    pub port: u16,
    pub proto: Option<Proto>,
    pub hostname: Option<String>,
    pub tls: Option<SecretRef>,
    pub from: From,
    /// Route kinds it accepts (valid ones only).
    pub kinds: Vec<String>,
    pub accepted: (bool, &'static str, String),
    pub resolved: (bool, &'static str, String),
    pub conflicted: Option<&'static str>,
}

#[derive(Clone, Debug)]
pub enum From {
    Same,
    All,
    Selector(LabelSelector),
    /// An unknown `from`: nothing may attach.
    None,
}

impl ListenerView {
    /// Routes may attach (and are counted in attachedRoutes), even when a
    /// certificate reference does not resolve, as the spec wants.
    pub fn attachable(&self) -> bool {
        self.proto.is_some()
            && self.accepted.0
            && self.conflicted.is_none()
            && !self.kinds.is_empty()
    }

    /// Attachable, and the data plane can serve it: an HTTPS listener
    /// needs its certificate.
    pub fn usable(&self) -> bool {
        self.attachable() && (self.proto != Some(Proto::Https) || self.tls.is_some())
    }

    /// The Envoy listener it is part of, when it can be served.
    pub fn envoy_listener(&self) -> Option<Listener> {
        if !self.usable() {
            return None;
        }
        let name = listener_name(self.port);
        match self.proto? {
            Proto::Http => Some(Listener::http(name, self.port)),
            Proto::Https => Some(Listener::https(name, self.port)),
        }
    }
}

pub struct GatewayView {
    pub gateway: Gateway,
    pub listeners: Vec<ListenerView>,
}

/// The Gateway's class, if it is ours. Reads the GatewayClass (recorded,
/// so a class change re-translates).
pub fn is_ours(gateway: &Gateway, store: &dyn Store) -> Result<bool, Error> {
    let class = store.get(
        api::API_VERSION,
        "GatewayClass",
        "",
        &gateway.spec.gateway_class_name,
    );
    match class {
        None => Ok(false),
        Some(o) => Ok(o.parse::<GatewayClass>()?.spec.controller_name == CONTROLLER),
    }
}

pub fn analyse(gateway: Gateway, store: &dyn Store) -> GatewayView {
    let ns = gateway.metadata.namespace.clone();
    let mut listeners: Vec<ListenerView> = gateway
        .spec
        .listeners
        .iter()
        .map(|l| listener(&ns, l, store))
        .collect();
    // Conflicts within the Gateway: one port is one Envoy listener of one
    // protocol; one (port, hostname) is one SNI/virtual host.
    for i in 0..listeners.len() {
        for j in 0..listeners.len() {
            if i == j || listeners[i].port != listeners[j].port {
                continue;
            }
            let (a, b) = (&listeners[i], &listeners[j]);
            let reason = if a.proto.is_some() && b.proto.is_some() && a.proto != b.proto {
                Some("ProtocolConflict")
            } else if a.proto == b.proto && a.hostname == b.hostname {
                Some("HostnameConflict")
            } else {
                None
            };
            if reason.is_some() && listeners[i].conflicted.is_none() {
                listeners[i].conflicted = reason;
            }
        }
    }
    cross_gateway_conflicts(&gateway, &mut listeners, store);
    GatewayView { gateway, listeners }
}

/// One port is one Envoy listener of one protocol, whichever Gateways use
/// it: a listener whose port an older Gateway of ours (creation time, then
/// namespace/name, as the host orders roots) uses with the other protocol
/// is ProtocolConflict, so it is not declared and the host never sees two
/// declarations of `gw_<port>`. Lists every Gateway (recorded).
fn cross_gateway_conflicts(gateway: &Gateway, listeners: &mut [ListenerView], store: &dyn Store) {
    let order = |g: &Gateway| {
        (
            g.metadata.creation_timestamp.clone().unwrap_or_default(),
            g.metadata.namespace.clone(),
            g.metadata.name.clone(),
        )
    };
    let mine = order(gateway);
    let mut classes: BTreeMap<String, bool> = BTreeMap::new();
    for other in store
        .list(api::API_VERSION, "Gateway", None)
        .iter()
        .filter_map(|o| o.parse::<Gateway>().ok())
        .filter(|g| order(g) < mine)
    {
        let class = other.spec.gateway_class_name.clone();
        let ours = *classes
            .entry(class)
            .or_insert_with(|| is_ours(&other, store).unwrap_or(false));
        if !ours {
            continue;
        }
        for theirs in &other.spec.listeners {
            let proto = match theirs.protocol.as_str() {
                "HTTP" => Proto::Http,
                "HTTPS" => Proto::Https,
                _ => continue,
            };
            for l in listeners.iter_mut() {
                if i32::from(l.port) == theirs.port
                    && l.proto.is_some_and(|p| p != proto)
                    && l.conflicted.is_none()
                {
                    l.conflicted = Some("ProtocolConflict");
                }
            }
        }
    }
}

fn listener(ns: &str, l: &api::GatewayListener, store: &dyn Store) -> ListenerView {
    let proto = match l.protocol.as_str() {
        "HTTP" => Some(Proto::Http),
        "HTTPS" => Some(Proto::Https),
        _ => None,
    };
    let mut view = ListenerView {
        name: l.name.clone(),
        port: u16::try_from(l.port).unwrap_or(0),
        proto,
        hostname: l
            .hostname
            .clone()
            .filter(|h| !h.is_empty())
            .map(|h| h.to_ascii_lowercase()),
        tls: None,
        from: From::Same,
        kinds: Vec::new(),
        accepted: (true, "Accepted", "Listener is valid".into()),
        resolved: (true, "ResolvedRefs", "All references resolved".into()),
        conflicted: None,
    };
    if proto.is_none() {
        view.accepted = (
            false,
            "UnsupportedProtocol",
            format!(
                "protocol {:?} is not supported (HTTP and HTTPS are)",
                l.protocol
            ),
        );
        return view;
    }
    if view.port == 0 {
        view.accepted = (
            false,
            "PortUnavailable",
            format!("port {} is not usable", l.port),
        );
    } else if crate::Config::get().reserved_ports.contains(&view.port) {
        view.accepted = (
            false,
            "PortUnavailable",
            format!(
                "port {} is reserved for another translator's listener (reservedPorts)",
                view.port
            ),
        );
    }
    let allowed = l.allowed_routes.clone().unwrap_or_default();
    view.from = match allowed
        .namespaces
        .as_ref()
        .and_then(|n| n.from.as_deref())
        .unwrap_or("Same")
    {
        "Same" => From::Same,
        "All" => From::All,
        "Selector" => match allowed.namespaces.and_then(|n| n.selector) {
            Some(s) => From::Selector(s),
            None => From::None,
        },
        _ => From::None,
    };
    match allowed.kinds {
        None => view.kinds = vec!["HTTPRoute".into(), "GRPCRoute".into()],
        Some(kinds) => {
            let mut invalid = Vec::new();
            for k in kinds {
                let group = k.group.as_deref().unwrap_or(GROUP);
                if group == GROUP && (k.kind == "HTTPRoute" || k.kind == "GRPCRoute") {
                    if !view.kinds.contains(&k.kind) {
                        view.kinds.push(k.kind);
                    }
                } else {
                    invalid.push(format!("{group}/{}", k.kind));
                }
            }
            if !invalid.is_empty() {
                view.resolved = (
                    false,
                    "InvalidRouteKinds",
                    format!("route kinds not supported: {}", invalid.join(", ")),
                );
            }
        }
    }
    if proto == Some(Proto::Https) {
        let tls = l.tls.clone().unwrap_or_default();
        if tls.mode.as_deref().unwrap_or("Terminate") != "Terminate" {
            view.accepted = (
                false,
                "UnsupportedValue",
                "TLS mode Passthrough is not supported on HTTPS listeners".into(),
            );
        }
        match tls.certificate_refs.first() {
            None => {
                view.resolved = (
                    false,
                    "InvalidCertificateRef",
                    "an HTTPS listener needs a certificateRef".into(),
                )
            }
            Some(r) => {
                let group = r.group.as_deref().unwrap_or("");
                let kind = r.kind.as_deref().unwrap_or("Secret");
                let target_ns = r.namespace.clone().unwrap_or_else(|| ns.to_owned());
                if !(group.is_empty() || group == "core") || kind != "Secret" {
                    view.resolved = (
                        false,
                        "InvalidCertificateRef",
                        format!(
                            "certificateRef {group}/{kind} {}: only core Secrets are supported",
                            r.name
                        ),
                    );
                } else if target_ns != ns
                    && !ref_granted(store, ns, "Gateway", &target_ns, "", "Secret", &r.name)
                {
                    view.resolved = (
                        false,
                        "RefNotPermitted",
                        format!(
                            "Secret {target_ns}/{} is in another namespace and no ReferenceGrant allows it",
                            r.name
                        ),
                    );
                } else {
                    // The Secret itself is the host's to resolve: plugins
                    // never read Secrets.
                    view.tls = Some(SecretRef::new(target_ns, r.name.clone()));
                }
            }
        }
    }
    view
}

/// Does `labels` satisfy the selector (matchLabels and matchExpressions)?
pub fn selects(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Does the listener let a route of `kind` in `route_ns` attach? Reads the
/// route's Namespace for selectors.
pub fn allows(
    l: &ListenerView,
    gateway_ns: &str,
    kind: &str,
    route_ns: &str,
    store: &dyn Store,
) -> bool {
    if !l.kinds.iter().any(|k| k == kind) {
        return false;
    }
    match &l.from {
        From::Same => route_ns == gateway_ns,
        From::All => true,
        From::None => false,
        From::Selector(s) => store
            .get_typed::<Namespace>("", route_ns)
            .ok()
            .flatten()
            .map(|n| {
                selects(
                    s,
                    &n.metadata.labels.unwrap_or_default().into_iter().collect(),
                )
            })
            .unwrap_or(false),
    }
}

/// Gateway API hostname matching: `*.example.com` matches any name below
/// example.com (one label or more), never example.com itself.
fn wildcard_matches(wildcard: &str, host: &str) -> bool {
    match wildcard.strip_prefix('*') {
        Some(suffix) => host.len() > suffix.len() && host.ends_with(suffix),
        None => wildcard == host,
    }
}

/// The domains a route with `hostnames` gets on a listener with
/// `listener` hostname: their intersection (empty: none in common).
pub fn intersect(listener: Option<&str>, hostnames: &[String]) -> Vec<String> {
    let hostnames: Vec<String> = hostnames.iter().map(|h| h.to_ascii_lowercase()).collect();
    match (listener, hostnames.is_empty()) {
        (None, true) => vec!["*".into()],
        (Some(l), true) => vec![l.to_owned()],
        (None, false) => dedup(hostnames),
        (Some(l), false) => dedup(
            hostnames
                .into_iter()
                .filter_map(|h| {
                    if h == l || (!h.starts_with('*') && wildcard_matches(l, &h)) {
                        Some(h)
                    } else if h.starts_with('*') && wildcard_matches(&h, l) {
                        // The route's wildcard is wider: the listener's
                        // name is what both accept.
                        Some(l.to_owned())
                    } else if h.starts_with('*') && l.starts_with('*') && wildcard_matches(l, &h) {
                        Some(h)
                    } else {
                        None
                    }
                })
                .collect(),
        ),
    }
}

fn dedup(mut v: Vec<String>) -> Vec<String> {
    let mut seen = Vec::new();
    v.retain(|d| {
        let new = !seen.contains(d);
        seen.push(d.clone());
        new
    });
    v
}

/// Where one parentRef of a route lands.
pub struct Attachment {
    /// (listener, domains) it attached to; the domains may be empty when
    /// more specific listeners take them all.
    pub placed: Vec<(ListenerView, Vec<String>)>,
    /// Accepted condition: (status, reason, message).
    pub accepted: (bool, &'static str, String),
}

/// Attaches a route (kind, namespace, hostnames) to one parent Gateway.
pub fn attach(
    view: &GatewayView,
    parent: &ParentReference,
    kind: &str,
    route_ns: &str,
    hostnames: &[String],
    store: &dyn Store,
) -> Attachment {
    let gw_ns = &view.gateway.metadata.namespace;
    let candidates: Vec<&ListenerView> = view
        .listeners
        .iter()
        .filter(|l| parent.section_name.as_ref().is_none_or(|s| s == &l.name))
        .filter(|l| parent.port.is_none_or(|p| i32::from(l.port) == p))
        .collect();
    if candidates.is_empty() {
        return Attachment {
            placed: Vec::new(),
            accepted: (
                false,
                "NoMatchingParent",
                "no listener matches the parentRef's sectionName and port".into(),
            ),
        };
    }
    let allowed: Vec<&ListenerView> = candidates
        .into_iter()
        .filter(|l| l.attachable() && allows(l, gw_ns, kind, route_ns, store))
        .collect();
    if allowed.is_empty() {
        return Attachment {
            placed: Vec::new(),
            accepted: (
                false,
                "NotAllowedByListeners",
                format!("no valid listener allows a {kind} from namespace {route_ns}"),
            ),
        };
    }
    let mut placed: Vec<(ListenerView, Vec<String>)> = allowed
        .into_iter()
        .map(|l| (l.clone(), intersect(l.hostname.as_deref(), hostnames)))
        .filter(|(_, d)| !d.is_empty())
        .collect();
    if placed.is_empty() {
        return Attachment {
            placed,
            accepted: (
                false,
                "NoMatchingListenerHostname",
                "no listener hostname intersects the route's hostnames".into(),
            ),
        };
    }
    // Attached (and counted) wherever the hostnames intersect; served only
    // on the domains no more specific listener takes.
    for (l, domains) in &mut placed {
        domains.retain(|d| !claimed_by_a_more_specific_listener(view, l, d));
    }
    Attachment {
        placed,
        accepted: (true, "Accepted", "Route is accepted".into()),
    }
}

/// Whether `covered` names only hosts `cover` also matches (Gateway API
/// hostnames; None is every host).
fn within(covered: &str, cover: Option<&str>) -> bool {
    match cover {
        None => true,
        Some(cover) if cover == covered => true,
        Some(cover) => match (cover.strip_prefix('*'), covered.strip_prefix('*')) {
            (Some(suffix), Some(inner)) => inner.len() > suffix.len() && inner.ends_with(suffix),
            (Some(_), None) => wildcard_matches(cover, covered),
            (None, _) => false,
        },
    }
}

/// Listener isolation: a request goes to the most specific listener of its
/// port that matches its host. A domain a route gets through listener `l`
/// that a more specific listener of the same Gateway and port covers would
/// be that listener's (it could even be the same virtual host, merging two
/// listeners' routes), so it is left out.
fn claimed_by_a_more_specific_listener(view: &GatewayView, l: &ListenerView, domain: &str) -> bool {
    view.listeners.iter().any(|other| {
        let Some(h) = other.hostname.as_deref() else {
            return false;
        };
        other.name != l.name
            && other.port == l.port
            && other.usable()
            && other.hostname != l.hostname
            && within(h, l.hostname.as_deref())
            && within(domain, Some(h))
    })
}

/// Is this parentRef a Gateway (the only parent kind we serve)?
pub fn names_gateway(parent: &ParentReference) -> bool {
    parent.group.as_deref().unwrap_or(GROUP) == GROUP
        && parent.kind.as_deref().unwrap_or("Gateway") == "Gateway"
}

/// The Gateway root: its Envoy listeners and its status.
pub fn translate(root: &Object, store: &dyn Store) -> Result<Fragment, Error> {
    let gateway: Gateway = root.parse()?;
    if !is_ours(&gateway, store)? {
        return Ok(Fragment::new());
    }
    let generation = gateway.metadata.generation;
    let view = analyse(gateway, store);
    let mut fragment = Fragment::new();
    for l in view.listeners.iter().filter(|l| l.usable()) {
        if let Some(el) = l.envoy_listener() {
            fragment.add_listener(el);
        }
        // An HTTPS listener's own SNI chain, routes or not: a host no route
        // names is answered (404) with the listener's certificate instead
        // of failing the handshake. Routes add theirs to the same host.
        if l.proto == Some(Proto::Https) {
            let domain = l.hostname.clone().unwrap_or_else(|| "*".into());
            fragment
                .virtual_host_mut(&listener_name(l.port), &domain)
                .tls = l.tls.clone();
        }
    }
    // attachedRoutes: every route of every kind that attaches here. Listing
    // them is recorded, so a route change re-counts.
    let mut attached: BTreeMap<String, i64> = BTreeMap::new();
    for (kind, objects) in [
        ("HTTPRoute", store.list(api::API_VERSION, "HTTPRoute", None)),
        ("GRPCRoute", store.list(api::API_VERSION, "GRPCRoute", None)),
    ] {
        for o in objects {
            let Ok(route) = o.parse::<api::Route<Value>>() else {
                continue;
            };
            let route_ns = &route.metadata.namespace;
            let mut counted = Vec::new();
            for p in route.spec.parent_refs.iter().filter(|p| names_gateway(p)) {
                let p_ns = p.namespace.as_deref().unwrap_or(route_ns);
                if p.name != view.gateway.metadata.name || p_ns != view.gateway.metadata.namespace {
                    continue;
                }
                let a = attach(&view, p, kind, route_ns, &route.spec.hostnames, store);
                for (l, _) in a.placed {
                    if !counted.contains(&l.name) {
                        *attached.entry(l.name.clone()).or_default() += 1;
                        counted.push(l.name);
                    }
                }
            }
        }
    }
    let mut listeners = Vec::new();
    for l in &view.listeners {
        let c = |t: &str, (s, r, m): (bool, &str, String)| cond(t, s, r, m, generation);
        let conflicted = match l.conflicted {
            Some(r) => cond(
                "Conflicted",
                true,
                r,
                format!("conflicts with another listener on port {}", l.port),
                generation,
            ),
            None => cond(
                "Conflicted",
                false,
                "NoConflicts",
                "No conflicts".into(),
                generation,
            ),
        };
        let kinds: Vec<Value> = l
            .kinds
            .iter()
            .map(|k| json!({"group": GROUP, "kind": k}))
            .collect();
        listeners.push(json!({
            "name": l.name,
            "supportedKinds": kinds,
            "attachedRoutes": attached.get(&l.name).copied().unwrap_or(0),
            "conditions": [c("Accepted", l.accepted.clone()), c("ResolvedRefs", l.resolved.clone()), conflicted],
        }));
    }
    let parameters = view
        .gateway
        .spec
        .infrastructure
        .as_ref()
        .and_then(|i| i.parameters_ref.as_ref());
    // No parameters kind is supported: any reference is invalid. The
    // listeners are still served (the parameters could only tune them).
    let accepted = if parameters.is_some() {
        Condition::new(
            "Accepted",
            false,
            "InvalidParameters",
            "infrastructure.parametersRef: no parameters kind is supported",
        )
    } else if !view.gateway.spec.addresses.is_empty() {
        Condition::new(
            "Accepted",
            false,
            "UnsupportedAddress",
            "spec.addresses is not supported",
        )
    } else if let Some(invalid) = view
        .listeners
        .iter()
        .find(|l| l.proto.is_none() || !l.accepted.0 || l.conflicted.is_some())
    {
        // As upstream's GatewayListenerUnsupportedProtocol has it: still
        // accepted while some listener is valid, with this reason.
        let some_valid = view.listeners.iter().any(ListenerView::attachable);
        Condition::new(
            "Accepted",
            some_valid,
            "ListenersNotValid",
            format!(
                "listener {:?} is not valid: {}",
                invalid.name, invalid.accepted.2
            ),
        )
    } else {
        Condition::new("Accepted", true, "Accepted", "Gateway is accepted")
    };
    fragment.add_status(
        ObjectStatus::new(root.object_ref())
            .with_condition(accepted.with_observed_generation(generation))
            .with_fields(&json!({"listeners": listeners})),
    );
    Ok(fragment)
}

/// The GatewayClass root: Accepted when it names our controller.
pub fn translate_class(root: &Object) -> Result<Fragment, Error> {
    let class: GatewayClass = root.parse()?;
    if class.spec.controller_name != CONTROLLER {
        return Ok(Fragment::new());
    }
    let features: Vec<Value> = SUPPORTED_FEATURES
        .iter()
        .map(|f| json!({"name": f}))
        .collect();
    Ok(Fragment::new().with_status(
        ObjectStatus::new(root.object_ref())
            .with_condition(
                Condition::new(
                    "Accepted",
                    true,
                    "Accepted",
                    "Handled by the isobar gateway-api plugin",
                )
                .with_observed_generation(class.metadata.generation),
            )
            .with_fields(&json!({"supportedFeatures": features})),
    ))
}

/// `status.supportedFeatures` of our GatewayClasses: the features whose
/// conformance tests are ported and pass (docs/conformance.md), sorted as
/// the API requires.
pub const SUPPORTED_FEATURES: &[&str] = &[
    "GRPCRoute",
    "GRPCRouteNamedRouteRule",
    "Gateway",
    "GatewayHTTPListenerIsolation",
    "HTTPRoute",
    "HTTPRoute303RedirectStatusCode",
    "HTTPRoute307RedirectStatusCode",
    "HTTPRoute308RedirectStatusCode",
    "HTTPRouteBackendProtocolH2C",
    "HTTPRouteDestinationPortMatching",
    "HTTPRouteHostRewrite",
    "HTTPRouteMethodMatching",
    "HTTPRouteNamedRouteRule",
    "HTTPRouteParentRefPort",
    "HTTPRoutePathRedirect",
    "HTTPRoutePathRewrite",
    "HTTPRoutePortRedirect",
    "HTTPRouteQueryParamMatching",
    "HTTPRouteRequestMirror",
    "HTTPRouteRequestMultipleMirrors",
    "HTTPRouteRequestPercentageMirror",
    "HTTPRouteRequestTimeout",
    "HTTPRouteResponseHeaderModification",
    "HTTPRouteSchemeRedirect",
    "ReferenceGrant",
];
