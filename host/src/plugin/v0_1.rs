//! Contract `isobar:plugin@0.1.0`: the host bindings generated from
//! `wit/plugin.wit`, and their conversion into the host's own types. Nothing
//! outside `plugin/` sees these bindings.

use crate::ir;

wasmtime::component::bindgen!({
    path: "../wit/plugin.wit",
    world: "translator",
    imports: { default: trappable },
});

/// The `reconciler` world. Its imports are the translator's interfaces
/// (same `types`, `store` and `log`), so one linker serves both worlds.
pub mod reconciler {
    wasmtime::component::bindgen!({
        path: "../wit/plugin.wit",
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
use super::call::{CallState, LogLevel};

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
use reconciler::exports::isobar::plugin::reconciliation as r;

impl From<t::KindRef> for super::KindRef {
    fn from(k: t::KindRef) -> Self {
        super::KindRef {
            api_version: k.api_version,
            kind: k.kind,
        }
    }
}

impl From<t::PluginInfo> for super::PluginInfo {
    fn from(i: t::PluginInfo) -> Self {
        super::PluginInfo {
            name: i.name,
            version: i.version,
            watches: i.watches.into_iter().map(Into::into).collect(),
            roots: i.roots.into_iter().map(Into::into).collect(),
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

pub(super) fn object(o: &crate::store::Object) -> t::Object {
    t::Object {
        api_version: o.api_version.clone(),
        kind: o.kind.clone(),
        namespace: o.namespace.clone(),
        name: o.name.clone(),
        uid: o.uid.clone(),
        json: o.json.to_string(),
    }
}

impl From<t::Fragment> for ir::Fragment {
    fn from(f: t::Fragment) -> Self {
        ir::Fragment {
            listeners: f.listeners.into_iter().map(Into::into).collect(),
            virtual_hosts: f.virtual_hosts.into_iter().map(Into::into).collect(),
            raw: f.raw.into_iter().map(Into::into).collect(),
            diagnostics: f.diagnostics.into_iter().map(Into::into).collect(),
            statuses: Vec::new(),
        }
    }
}

impl From<t::Diagnostic> for ir::Diagnostic {
    fn from(d: t::Diagnostic) -> Self {
        ir::Diagnostic {
            object: ir::ObjectRef::new(d.object.kind, d.object.namespace, d.object.name),
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

impl From<t::RawResource> for ir::RawResource {
    fn from(r: t::RawResource) -> Self {
        ir::RawResource {
            type_url: r.type_url,
            name: r.name,
            value: r.value,
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

impl From<t::Route> for ir::Route {
    fn from(r: t::Route) -> Self {
        ir::Route {
            matches: r.matches.into(),
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
                    path: rd.path.map(ir::PathModifier::Full),
                    status: rd.status,
                }),
                t::RouteAction::DirectResponse(d) => {
                    ir::RouteAction::DirectResponse(ir::DirectResponse {
                        status: d.status,
                        body: d.body,
                    })
                }
            },
            path_rewrite: r.prefix_rewrite.map(ir::PathModifier::Prefix),
            host_rewrite: r.host_rewrite,
            timeout_ms: r.timeout_ms,
            retry: r.retry.map(|p| ir::RetryPolicy {
                retry_on: p.retry_on,
                attempts: p.attempts,
                per_try_timeout_ms: p.per_try_timeout_ms,
            }),
            request_headers: r.request_headers.map(Into::into),
            response_headers: r.response_headers.map(Into::into),
            mirrors: Vec::new(),
            source: None,
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

impl From<t::RouteMatch> for ir::RouteMatch {
    fn from(m: t::RouteMatch) -> Self {
        ir::RouteMatch {
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

// ---- reconciler -----------------------------------------------------------

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
