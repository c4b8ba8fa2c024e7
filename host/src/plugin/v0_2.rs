//! Contract `isobar:plugin@0.2.0`: the host bindings generated from
//! `wit/plugin-0.2.wit` (worlds `translator`, `policy`, `reconciler`) and
//! their conversion to and from the host's own types. Nothing outside
//! `plugin/` sees these bindings.

use super::call::{CallState, LogLevel};
use crate::ir;
use crate::store::Object;

wasmtime::component::bindgen!({
    path: "../wit/plugin-0.2.wit",
    world: "translator",
    imports: { default: trappable },
});

/// World `policy`: the translator's imports, its own export.
pub mod policy {
    wasmtime::component::bindgen!({
        path: "../wit/plugin-0.2.wit",
        world: "policy",
        imports: { default: trappable },
        with: {
            "isobar:plugin/types": super::isobar::plugin::types,
            "isobar:plugin/store": super::isobar::plugin::store,
            "isobar:plugin/log": super::isobar::plugin::log,
        },
    });
}

/// World `reconciler`: the translator's imports, its own export.
pub mod reconciler {
    wasmtime::component::bindgen!({
        path: "../wit/plugin-0.2.wit",
        world: "reconciler",
        imports: { default: trappable },
        with: {
            "isobar:plugin/types": super::isobar::plugin::types,
            "isobar:plugin/store": super::isobar::plugin::store,
            "isobar:plugin/log": super::isobar::plugin::log,
        },
    });
}

use self::isobar::plugin::{log, store, types as t};
use exports::isobar::plugin::translation as tr;
use policy::exports::isobar::plugin::transformation as p;
use reconciler::exports::isobar::plugin::reconciliation as r;

// ---- what the guest calls ---------------------------------------------------

impl t::Host for CallState {}

impl store::Host for CallState {
    fn get(
        &mut self,
        api_version: String,
        kind: String,
        namespace: String,
        name: String,
    ) -> wasmtime::Result<Option<t::Object>> {
        Ok(self
            .read_get(&api_version, &kind, namespace, name)?
            .as_deref()
            .map(object))
    }

    fn list(
        &mut self,
        api_version: String,
        kind: String,
        namespace: Option<String>,
    ) -> wasmtime::Result<Vec<t::Object>> {
        Ok(self
            .read_list(&api_version, &kind, namespace)?
            .iter()
            .map(|o| object(o))
            .collect())
    }
}

impl log::Host for CallState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        self.guest_log(
            match level {
                log::Level::Trace => LogLevel::Trace,
                log::Level::Debug => LogLevel::Debug,
                log::Level::Info => LogLevel::Info,
                log::Level::Warn => LogLevel::Warn,
                log::Level::Error => LogLevel::Error,
            },
            message,
        );
        Ok(())
    }
}

// ---- host -> guest -----------------------------------------------------------

pub(super) fn object(o: &Object) -> t::Object {
    t::Object {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        namespace: o.namespace.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
        json: o.json.to_string(),
    }
}

fn object_ref(o: &ir::ObjectRef) -> t::ObjectRef {
    t::ObjectRef {
        // The version of a reference is not significant: the group is.
        api_version: if o.group.is_empty() {
            "v1".to_string()
        } else {
            format!("{}/v1", o.group)
        },
        kind: o.kind.clone(),
        namespace: o.namespace.clone(),
        name: o.name.clone(),
    }
}

pub(super) fn virtual_host(v: &ir::VirtualHost) -> t::VirtualHost {
    t::VirtualHost {
        listener: v.listener.clone(),
        domain: v.domain.clone(),
        tls: v.tls.as_ref().map(|s| t::SecretRef {
            namespace: s.namespace.clone(),
            name: s.name.clone(),
        }),
        routes: v.routes.iter().map(route).collect(),
    }
}

fn path_modifier(p: &ir::PathModifier) -> t::PathModifier {
    match p {
        ir::PathModifier::Full(s) => t::PathModifier::Full(s.clone()),
        ir::PathModifier::Prefix(s) => t::PathModifier::Prefix(s.clone()),
    }
}

fn backend(b: &ir::Backend) -> t::Backend {
    t::Backend {
        namespace: b.namespace.clone(),
        name: b.name.clone(),
        port: b.port,
        protocol: match b.protocol {
            ir::BackendProtocol::Http1 => t::BackendProtocol::Http1,
            ir::BackendProtocol::Http2 => t::BackendProtocol::Http2,
            ir::BackendProtocol::Grpc => t::BackendProtocol::Grpc,
        },
        lb_policy: match b.lb_policy {
            ir::LbPolicy::RoundRobin => t::LbPolicy::RoundRobin,
            ir::LbPolicy::LeastRequest => t::LbPolicy::LeastRequest,
            ir::LbPolicy::Random => t::LbPolicy::Random,
            ir::LbPolicy::RingHash => t::LbPolicy::RingHash,
            ir::LbPolicy::Maglev => t::LbPolicy::Maglev,
        },
    }
}

fn string_match(s: &ir::StringMatch) -> t::StringMatch {
    t::StringMatch {
        kind: match s.kind {
            ir::StringMatchKind::Exact => t::StringMatchKind::Exact,
            ir::StringMatchKind::Prefix => t::StringMatchKind::Prefix,
            ir::StringMatchKind::Suffix => t::StringMatchKind::Suffix,
            ir::StringMatchKind::Contains => t::StringMatchKind::Contains,
            ir::StringMatchKind::Regex => t::StringMatchKind::Regex,
        },
        value: s.value.clone(),
        ignore_case: s.ignore_case,
    }
}

fn header_changes(h: &ir::HeaderChanges) -> t::HeaderChanges {
    let values = |vs: &[ir::HeaderValue]| {
        vs.iter()
            .map(|v| t::HeaderValue {
                name: v.name.clone(),
                value: v.value.clone(),
            })
            .collect()
    };
    t::HeaderChanges {
        set: values(&h.set),
        add: values(&h.add),
        remove: h.remove.clone(),
    }
}

fn route(r: &ir::Route) -> t::Route {
    let m = &r.matches;
    t::Route {
        matches: t::RouteMatch {
            path: match &m.path {
                ir::PathMatch::Exact(p) => t::PathMatch::Exact(p.clone()),
                ir::PathMatch::Prefix(p) => t::PathMatch::Prefix(p.clone()),
                ir::PathMatch::Regex(p) => t::PathMatch::Regex(p.clone()),
            },
            headers: m
                .headers
                .iter()
                .map(|h| t::HeaderMatch {
                    name: h.name.clone(),
                    value: match &h.value {
                        ir::HeaderValueMatch::Present => t::HeaderValueMatch::Present,
                        ir::HeaderValueMatch::Value(s) => {
                            t::HeaderValueMatch::Value(string_match(s))
                        }
                    },
                    invert: h.invert,
                })
                .collect(),
            query: m
                .query
                .iter()
                .map(|q| t::QueryMatch {
                    name: q.name.clone(),
                    value: q.value.as_ref().map(string_match),
                })
                .collect(),
            method: m.method.clone(),
        },
        action: match &r.action {
            ir::RouteAction::Forward(backends) => t::RouteAction::Forward(
                backends
                    .iter()
                    .map(|wb| t::WeightedBackend {
                        backend: backend(&wb.backend),
                        weight: wb.weight,
                    })
                    .collect(),
            ),
            ir::RouteAction::Redirect(rd) => t::RouteAction::Redirect(t::Redirect {
                scheme: rd.scheme.clone(),
                host: rd.host.clone(),
                port: rd.port,
                path: rd.path.as_ref().map(path_modifier),
                status: rd.status,
            }),
            ir::RouteAction::DirectResponse(d) => {
                t::RouteAction::DirectResponse(t::DirectResponse {
                    status: d.status,
                    body: d.body.clone(),
                })
            }
        },
        path_rewrite: r.path_rewrite.as_ref().map(path_modifier),
        host_rewrite: r.host_rewrite.clone(),
        timeout_ms: r.timeout_ms,
        retry: r.retry.as_ref().map(|p| t::RetryPolicy {
            retry_on: p.retry_on.clone(),
            attempts: p.attempts,
            per_try_timeout_ms: p.per_try_timeout_ms,
        }),
        request_headers: r.request_headers.as_ref().map(header_changes),
        response_headers: r.response_headers.as_ref().map(header_changes),
        mirrors: r
            .mirrors
            .iter()
            .map(|m| t::Mirror {
                backend: backend(&m.backend),
                percent: m.percent,
            })
            .collect(),
        source: r.source.as_ref().map(object_ref),
    }
}

// ---- guest -> host -------------------------------------------------------------

impl From<t::KindRef> for super::KindRef {
    fn from(k: t::KindRef) -> Self {
        super::KindRef {
            api_version: k.api_version,
            kind: k.kind,
        }
    }
}

impl From<t::Error> for super::PluginError {
    fn from(e: t::Error) -> Self {
        super::PluginError::Rejected {
            reason: e.reason,
            message: e.message,
        }
    }
}

impl From<tr::TranslatorInfo> for super::PluginInfo {
    fn from(i: tr::TranslatorInfo) -> Self {
        super::PluginInfo {
            name: i.name,
            version: i.version,
            watches: i.watches.into_iter().map(Into::into).collect(),
            roots: i.roots.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<p::PolicyInfo> for super::PolicyInfo {
    fn from(i: p::PolicyInfo) -> Self {
        super::PolicyInfo {
            name: i.name,
            version: i.version,
            reads: i.reads.into_iter().map(Into::into).collect(),
            listeners: i.listeners,
            domains: i.domains,
        }
    }
}

/// What one policy call returned, in the host's types.
pub(super) fn policy_output(o: p::PolicyOutput) -> super::PolicyResult {
    super::PolicyResult {
        host: o.host.into(),
        diagnostics: o.diagnostics.into_iter().map(Into::into).collect(),
    }
}

fn group_of(api_version: &str) -> String {
    api_version
        .rsplit_once('/')
        .map(|(g, _)| g.to_string())
        .unwrap_or_default()
}

impl From<t::ObjectRef> for ir::ObjectRef {
    fn from(o: t::ObjectRef) -> Self {
        ir::ObjectRef {
            group: group_of(&o.api_version),
            kind: o.kind,
            namespace: o.namespace,
            name: o.name,
        }
    }
}

impl From<t::Fragment> for ir::Fragment {
    fn from(f: t::Fragment) -> Self {
        ir::Fragment {
            listeners: f.listeners.into_iter().map(Into::into).collect(),
            virtual_hosts: f.virtual_hosts.into_iter().map(Into::into).collect(),
            raw: f
                .raw
                .into_iter()
                .map(|r| ir::RawResource {
                    type_url: r.type_url,
                    name: r.name,
                    value: r.value,
                })
                .collect(),
            diagnostics: f.diagnostics.into_iter().map(Into::into).collect(),
            statuses: f.statuses.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<t::ObjectStatus> for ir::ObjectStatus {
    fn from(s: t::ObjectStatus) -> Self {
        ir::ObjectStatus {
            object: s.object.into(),
            conditions: s
                .conditions
                .into_iter()
                .map(|c| ir::Condition {
                    type_: c.type_,
                    status: match c.status {
                        t::ConditionStatus::True => ir::ConditionStatus::True,
                        t::ConditionStatus::False => ir::ConditionStatus::False,
                        t::ConditionStatus::Unknown => ir::ConditionStatus::Unknown,
                    },
                    reason: c.reason,
                    message: c.message,
                    observed_generation: c.observed_generation,
                })
                .collect(),
            // Not JSON (or not an object): kept as a string so validation
            // can refuse it with the plugin named.
            fields: s
                .fields
                .map(|f| serde_json::from_str(&f).unwrap_or(serde_json::Value::String(f))),
        }
    }
}

impl From<t::Diagnostic> for ir::Diagnostic {
    fn from(d: t::Diagnostic) -> Self {
        ir::Diagnostic {
            object: d.object.into(),
            severity: match d.severity {
                t::Severity::Info => ir::Severity::Info,
                t::Severity::Warning => ir::Severity::Warning,
                t::Severity::Error => ir::Severity::Error,
            },
            reason: d.reason,
            message: d.message,
        }
    }
}

impl From<t::Listener> for ir::Listener {
    fn from(l: t::Listener) -> Self {
        ir::Listener {
            name: l.name,
            port: l.port,
            protocol: match l.protocol {
                t::ListenerProtocol::Http => ir::ListenerProtocol::Http,
                t::ListenerProtocol::Https => ir::ListenerProtocol::Https,
            },
        }
    }
}

impl From<t::VirtualHost> for ir::VirtualHost {
    fn from(v: t::VirtualHost) -> Self {
        ir::VirtualHost {
            listener: v.listener,
            domain: v.domain,
            tls: v.tls.map(|s| ir::SecretRef {
                namespace: s.namespace,
                name: s.name,
            }),
            routes: v.routes.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<t::PathModifier> for ir::PathModifier {
    fn from(p: t::PathModifier) -> Self {
        match p {
            t::PathModifier::Full(s) => ir::PathModifier::Full(s),
            t::PathModifier::Prefix(s) => ir::PathModifier::Prefix(s),
        }
    }
}

impl From<t::Backend> for ir::Backend {
    fn from(b: t::Backend) -> Self {
        ir::Backend {
            namespace: b.namespace,
            name: b.name,
            port: b.port,
            protocol: match b.protocol {
                t::BackendProtocol::Http1 => ir::BackendProtocol::Http1,
                t::BackendProtocol::Http2 => ir::BackendProtocol::Http2,
                t::BackendProtocol::Grpc => ir::BackendProtocol::Grpc,
            },
            lb_policy: match b.lb_policy {
                t::LbPolicy::RoundRobin => ir::LbPolicy::RoundRobin,
                t::LbPolicy::LeastRequest => ir::LbPolicy::LeastRequest,
                t::LbPolicy::Random => ir::LbPolicy::Random,
                t::LbPolicy::RingHash => ir::LbPolicy::RingHash,
                t::LbPolicy::Maglev => ir::LbPolicy::Maglev,
            },
        }
    }
}

impl From<t::StringMatch> for ir::StringMatch {
    fn from(s: t::StringMatch) -> Self {
        ir::StringMatch {
            kind: match s.kind {
                t::StringMatchKind::Exact => ir::StringMatchKind::Exact,
                t::StringMatchKind::Prefix => ir::StringMatchKind::Prefix,
                t::StringMatchKind::Suffix => ir::StringMatchKind::Suffix,
                t::StringMatchKind::Contains => ir::StringMatchKind::Contains,
                t::StringMatchKind::Regex => ir::StringMatchKind::Regex,
            },
            value: s.value,
            ignore_case: s.ignore_case,
        }
    }
}

impl From<t::HeaderChanges> for ir::HeaderChanges {
    fn from(h: t::HeaderChanges) -> Self {
        let values = |vs: Vec<t::HeaderValue>| {
            vs.into_iter()
                .map(|v| ir::HeaderValue {
                    name: v.name,
                    value: v.value,
                })
                .collect()
        };
        ir::HeaderChanges {
            set: values(h.set),
            add: values(h.add),
            remove: h.remove,
        }
    }
}

impl From<t::Route> for ir::Route {
    fn from(r: t::Route) -> Self {
        let m = r.matches;
        ir::Route {
            matches: ir::RouteMatch {
                path: match m.path {
                    t::PathMatch::Exact(p) => ir::PathMatch::Exact(p),
                    t::PathMatch::Prefix(p) => ir::PathMatch::Prefix(p),
                    t::PathMatch::Regex(p) => ir::PathMatch::Regex(p),
                },
                headers: m
                    .headers
                    .into_iter()
                    .map(|h| ir::HeaderMatch {
                        name: h.name,
                        value: match h.value {
                            t::HeaderValueMatch::Present => ir::HeaderValueMatch::Present,
                            t::HeaderValueMatch::Value(s) => ir::HeaderValueMatch::Value(s.into()),
                        },
                        invert: h.invert,
                    })
                    .collect(),
                query: m
                    .query
                    .into_iter()
                    .map(|q| ir::QueryMatch {
                        name: q.name,
                        value: q.value.map(Into::into),
                    })
                    .collect(),
                method: m.method,
            },
            action: match r.action {
                t::RouteAction::Forward(backends) => ir::RouteAction::Forward(
                    backends
                        .into_iter()
                        .map(|wb| ir::WeightedBackend {
                            backend: wb.backend.into(),
                            weight: wb.weight,
                        })
                        .collect(),
                ),
                t::RouteAction::Redirect(rd) => ir::RouteAction::Redirect(ir::Redirect {
                    scheme: rd.scheme,
                    host: rd.host,
                    port: rd.port,
                    path: rd.path.map(Into::into),
                    status: rd.status,
                }),
                t::RouteAction::DirectResponse(d) => {
                    ir::RouteAction::DirectResponse(ir::DirectResponse {
                        status: d.status,
                        body: d.body,
                    })
                }
            },
            path_rewrite: r.path_rewrite.map(Into::into),
            host_rewrite: r.host_rewrite,
            timeout_ms: r.timeout_ms,
            retry: r.retry.map(|p| ir::RetryPolicy {
                retry_on: p.retry_on,
                attempts: p.attempts,
                per_try_timeout_ms: p.per_try_timeout_ms,
            }),
            request_headers: r.request_headers.map(Into::into),
            response_headers: r.response_headers.map(Into::into),
            mirrors: r
                .mirrors
                .into_iter()
                .map(|m| ir::Mirror {
                    backend: m.backend.into(),
                    percent: m.percent,
                })
                .collect(),
            source: r.source.map(Into::into),
        }
    }
}

// ---- reconciler ------------------------------------------------------------------

impl From<r::ReconcilerInfo> for super::reconciler::ReconcilerInfo {
    fn from(i: r::ReconcilerInfo) -> Self {
        super::reconciler::ReconcilerInfo {
            name: i.name,
            version: i.version,
            reconciles: i.reconciles.into(),
            owns: i.owns.into_iter().map(Into::into).collect(),
            watches: i.watches.into_iter().map(Into::into).collect(),
        }
    }
}

impl From<r::Action> for super::reconciler::Action {
    fn from(a: r::Action) -> Self {
        use super::reconciler::{Action, Event, EventType, ObjectId};
        match a {
            r::Action::Apply(json) => Action::Apply(json),
            r::Action::PatchStatus(json) => Action::PatchStatus(json),
            r::Action::Event(e) => Action::Event(Event {
                type_: match e.type_ {
                    r::EventType::Normal => EventType::Normal,
                    r::EventType::Warning => EventType::Warning,
                },
                reason: e.reason,
                message: e.message,
            }),
            r::Action::AddFinalizer(f) => Action::AddFinalizer(f),
            r::Action::RemoveFinalizer(f) => Action::RemoveFinalizer(f),
            r::Action::Delete(id) => Action::Delete(ObjectId {
                api_version: id.api_version,
                kind: id.kind,
                namespace: id.namespace,
                name: id.name,
            }),
            r::Action::RequeueAfterMs(ms) => Action::RequeueAfterMs(ms),
        }
    }
}
