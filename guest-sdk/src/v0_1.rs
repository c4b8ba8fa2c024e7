#![cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
//! Contract `isobar:plugin@0.1.0`, for components that must still speak
//! it: the same [`Translator`](crate::Translator) and
//! [`Reconciler`](crate::Reconciler) traits, exported through 0.1's
//! interfaces (`isobar_guest::v0_1::export_translator!(T)`).
//!
//! 0.1 has no statuses, mirrors, full-path rewrites, prefix redirects,
//! route sources, configuration or instance reuse: a fragment that uses
//! any of them is refused with an error naming what 0.1 lacks.

use crate::types as t2;

/// Bindings generated from `wit/plugin.wit` (0.1).
pub mod bindings {
    // Worlds of their own name (including 0.1's), so their export macros
    // do not collide with 0.2's at the crate root.
    wit_bindgen::generate!({
        inline: "package isobar:guest-v0-1; world translator-v0-1 { include isobar:plugin/translator@0.1.0; }",
        path: "../wit/plugin.wit",
        world: "translator-v0-1",
        generate_all,
        pub_export_macro: true,
        default_bindings_module: "isobar_guest::v0_1::bindings",
    });

    /// World `reconciler` of 0.1, sharing `types`, `store` and `log`.
    pub mod reconciler {
        wit_bindgen::generate!({
            inline: "package isobar:guest-v0-1; world reconciler-v0-1 { include isobar:plugin/reconciler@0.1.0; }",
            path: "../wit/plugin.wit",
            world: "reconciler-v0-1",
            pub_export_macro: true,
            default_bindings_module: "isobar_guest::v0_1::bindings::reconciler",
            with: {
                "isobar:plugin/types@0.1.0": isobar_guest::v0_1::bindings::isobar::plugin::types,
                "isobar:plugin/store@0.1.0": isobar_guest::v0_1::bindings::isobar::plugin::store,
                "isobar:plugin/log@0.1.0": isobar_guest::v0_1::bindings::isobar::plugin::log,
            },
        });
    }
}

use bindings::isobar::plugin::types as t1;
use bindings::reconciler::exports::isobar::plugin::reconciliation as r1;

/// Exports a [`Translator`](crate::Translator) through contract 0.1's
/// `translation` interface.
#[macro_export]
macro_rules! export_translator_v0_1 {
    ($translator:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __IsobarTranslatorExportV01;

            impl $crate::v0_1::bindings::exports::isobar::plugin::translation::Guest
                for __IsobarTranslatorExportV01
            {
                fn describe() -> $crate::v0_1::bindings::isobar::plugin::types::PluginInfo {
                    $crate::v0_1::describe::<$translator>()
                }

                fn translate(
                    root: $crate::v0_1::bindings::isobar::plugin::types::Object,
                ) -> ::core::result::Result<
                    $crate::v0_1::bindings::isobar::plugin::types::Fragment,
                    $crate::v0_1::bindings::isobar::plugin::types::Error,
                > {
                    $crate::v0_1::translate::<$translator>(root)
                }
            }

            $crate::v0_1::bindings::export!(
                __IsobarTranslatorExportV01 with_types_in $crate::v0_1::bindings
            );
        };
    };
}

/// Exports a [`Reconciler`](crate::Reconciler) through contract 0.1's
/// `reconciliation` interface.
#[macro_export]
macro_rules! export_reconciler_v0_1 {
    ($reconciler:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __IsobarReconcilerExportV01;

            impl $crate::v0_1::bindings::reconciler::exports::isobar::plugin::reconciliation::Guest
                for __IsobarReconcilerExportV01
            {
                fn describe()
                -> $crate::v0_1::bindings::reconciler::exports::isobar::plugin::reconciliation::ReconcilerInfo
                {
                    $crate::v0_1::describe_reconciler::<$reconciler>()
                }

                fn reconcile(
                    object: $crate::v0_1::bindings::isobar::plugin::types::Object,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<
                        $crate::v0_1::bindings::reconciler::exports::isobar::plugin::reconciliation::Action,
                    >,
                    $crate::v0_1::bindings::isobar::plugin::types::Error,
                > {
                    $crate::v0_1::reconcile::<$reconciler>(object)
                }
            }

            $crate::v0_1::bindings::reconciler::export!(
                __IsobarReconcilerExportV01 with_types_in $crate::v0_1::bindings::reconciler
            );
        };
    };
}

pub use crate::export_reconciler_v0_1 as export_reconciler;
pub use crate::export_translator_v0_1 as export_translator;

/// The host's cache through contract 0.1's `store` import.
#[cfg(target_arch = "wasm32")]
#[derive(Clone, Copy, Debug, Default)]
pub struct HostStore;

#[cfg(target_arch = "wasm32")]
impl crate::Store for HostStore {
    fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Option<t2::Object> {
        bindings::isobar::plugin::store::get(api_version, kind, namespace, name).map(object)
    }

    fn list(&self, api_version: &str, kind: &str, namespace: Option<&str>) -> Vec<t2::Object> {
        bindings::isobar::plugin::store::list(api_version, kind, namespace)
            .into_iter()
            .map(object)
            .collect()
    }
}

// ---- glue for the export macros (not a public API) -------------------------

#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub fn describe<T: crate::Translator>() -> t1::PluginInfo {
    crate::log::install(log_v0_1);
    let i = T::describe();
    t1::PluginInfo {
        name: i.name,
        version: i.version,
        watches: i.watches.into_iter().map(kind_ref).collect(),
        roots: i.roots.into_iter().map(kind_ref).collect(),
    }
}

#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub fn translate<T: crate::Translator>(root: t1::Object) -> Result<t1::Fragment, t1::Error> {
    crate::log::install(log_v0_1);
    let fragment = T::translate(&object(root), &HostStore).map_err(error)?;
    to_fragment(fragment).map_err(error)
}

#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub fn describe_reconciler<R: crate::Reconciler>() -> r1::ReconcilerInfo {
    crate::log::install(log_v0_1);
    let i = R::describe();
    r1::ReconcilerInfo {
        name: i.name,
        version: i.version,
        reconciles: kind_ref(i.reconciles),
        owns: i.owns.into_iter().map(kind_ref).collect(),
        watches: i.watches.into_iter().map(kind_ref).collect(),
    }
}

#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub fn reconcile<R: crate::Reconciler>(o: t1::Object) -> Result<Vec<r1::Action>, t1::Error> {
    crate::log::install(log_v0_1);
    let actions = R::reconcile(&object(o), &HostStore).map_err(error)?;
    Ok(actions.into_iter().map(action).collect())
}

/// Contract 0.1's `log` import.
#[cfg(target_arch = "wasm32")]
fn log_v0_1(level: crate::log::Level, message: &str) {
    use crate::log::Level as L2;
    use bindings::isobar::plugin::log::{Level as L1, log};
    let level = match level {
        L2::Trace => L1::Trace,
        L2::Debug => L1::Debug,
        L2::Info => L1::Info,
        L2::Warn => L1::Warn,
        L2::Error => L1::Error,
    };
    log(level, message);
}

// ---- conversions -----------------------------------------------------------

fn object(o: t1::Object) -> t2::Object {
    t2::Object {
        api_version: o.api_version,
        kind: o.kind,
        namespace: o.namespace,
        name: o.name,
        uid: o.uid,
        json: o.json,
    }
}

fn error(e: t2::Error) -> t1::Error {
    t1::Error {
        reason: e.reason,
        message: e.message,
    }
}

fn kind_ref(k: t2::KindRef) -> t1::KindRef {
    t1::KindRef {
        api_version: k.api_version,
        kind: k.kind,
    }
}

fn lacks(what: &str) -> t2::Error {
    t2::Error::new(
        "ContractMismatch",
        format!("this plugin is exported through contract 0.1, which has no {what}"),
    )
}

/// A fragment in 0.1's shape; refused when it uses what 0.1 lacks.
pub fn to_fragment(f: t2::Fragment) -> Result<t1::Fragment, t2::Error> {
    if !f.statuses.is_empty() {
        return Err(lacks("statuses"));
    }
    Ok(t1::Fragment {
        listeners: f
            .listeners
            .into_iter()
            .map(|l| t1::Listener {
                name: l.name,
                port: l.port,
                protocol: match l.protocol {
                    t2::ListenerProtocol::Http => t1::ListenerProtocol::Http,
                    t2::ListenerProtocol::Https => t1::ListenerProtocol::Https,
                },
            })
            .collect(),
        virtual_hosts: f
            .virtual_hosts
            .into_iter()
            .map(virtual_host)
            .collect::<Result<_, _>>()?,
        raw: f
            .raw
            .into_iter()
            .map(|r| t1::RawResource {
                type_url: r.type_url,
                name: r.name,
                value: r.value,
            })
            .collect(),
        diagnostics: f.diagnostics.into_iter().map(diagnostic).collect(),
    })
}

fn diagnostic(d: t2::Diagnostic) -> t1::Diagnostic {
    t1::Diagnostic {
        object: t1::ObjectRef {
            kind: d.object.kind,
            namespace: d.object.namespace,
            name: d.object.name,
        },
        severity: match d.severity {
            t2::Severity::Info => t1::Severity::Info,
            t2::Severity::Warning => t1::Severity::Warning,
            t2::Severity::Error => t1::Severity::Error,
        },
        reason: d.reason,
        message: d.message,
    }
}

fn virtual_host(v: t2::VirtualHost) -> Result<t1::VirtualHost, t2::Error> {
    Ok(t1::VirtualHost {
        listener: v.listener,
        domain: v.domain,
        tls: v.tls.map(|s| t1::SecretRef {
            namespace: s.namespace,
            name: s.name,
        }),
        routes: v.routes.into_iter().map(route).collect::<Result<_, _>>()?,
    })
}

fn route(r: t2::Route) -> Result<t1::Route, t2::Error> {
    if !r.mirrors.is_empty() {
        return Err(lacks("request mirrors"));
    }
    let prefix_rewrite = match r.path_rewrite {
        None => None,
        Some(t2::PathModifier::Prefix(p)) => Some(p),
        Some(t2::PathModifier::Full(_)) => return Err(lacks("full path rewrites")),
    };
    Ok(t1::Route {
        matches: route_match(r.matches),
        action: match r.action {
            t2::RouteAction::Forward(backends) => t1::RouteAction::Forward(
                backends
                    .into_iter()
                    .map(|wb| t1::WeightedBackend {
                        backend: backend(wb.backend),
                        weight: wb.weight,
                    })
                    .collect(),
            ),
            t2::RouteAction::Redirect(rd) => t1::RouteAction::Redirect(t1::Redirect {
                scheme: rd.scheme,
                host: rd.host,
                port: rd.port,
                path: match rd.path {
                    None => None,
                    Some(t2::PathModifier::Full(p)) => Some(p),
                    Some(t2::PathModifier::Prefix(_)) => {
                        return Err(lacks("prefix redirects"));
                    }
                },
                status: rd.status,
            }),
            t2::RouteAction::DirectResponse(d) => {
                t1::RouteAction::DirectResponse(t1::DirectResponse {
                    status: d.status,
                    body: d.body,
                })
            }
        },
        prefix_rewrite,
        host_rewrite: r.host_rewrite,
        timeout_ms: r.timeout_ms,
        retry: r.retry.map(|p| t1::RetryPolicy {
            retry_on: p.retry_on,
            attempts: p.attempts,
            per_try_timeout_ms: p.per_try_timeout_ms,
        }),
        request_headers: r.request_headers.map(header_changes),
        response_headers: r.response_headers.map(header_changes),
    })
}

fn header_changes(h: t2::HeaderChanges) -> t1::HeaderChanges {
    let values = |vs: Vec<t2::HeaderValue>| {
        vs.into_iter()
            .map(|v| t1::HeaderValue {
                name: v.name,
                value: v.value,
            })
            .collect()
    };
    t1::HeaderChanges {
        set: values(h.set),
        add: values(h.add),
        remove: h.remove,
    }
}

fn backend(b: t2::Backend) -> t1::Backend {
    t1::Backend {
        namespace: b.namespace,
        name: b.name,
        port: b.port,
        protocol: match b.protocol {
            t2::BackendProtocol::Http1 => t1::BackendProtocol::Http1,
            t2::BackendProtocol::Http2 => t1::BackendProtocol::Http2,
            t2::BackendProtocol::Grpc => t1::BackendProtocol::Grpc,
        },
        lb_policy: match b.lb_policy {
            t2::LbPolicy::RoundRobin => t1::LbPolicy::RoundRobin,
            t2::LbPolicy::LeastRequest => t1::LbPolicy::LeastRequest,
            t2::LbPolicy::Random => t1::LbPolicy::Random,
            t2::LbPolicy::RingHash => t1::LbPolicy::RingHash,
            t2::LbPolicy::Maglev => t1::LbPolicy::Maglev,
        },
    }
}

fn string_match(s: t2::StringMatch) -> t1::StringMatch {
    t1::StringMatch {
        kind: match s.kind {
            t2::StringMatchKind::Exact => t1::StringMatchKind::Exact,
            t2::StringMatchKind::Prefix => t1::StringMatchKind::Prefix,
            t2::StringMatchKind::Suffix => t1::StringMatchKind::Suffix,
            t2::StringMatchKind::Contains => t1::StringMatchKind::Contains,
            t2::StringMatchKind::Regex => t1::StringMatchKind::Regex,
        },
        value: s.value,
        ignore_case: s.ignore_case,
    }
}

fn route_match(m: t2::RouteMatch) -> t1::RouteMatch {
    t1::RouteMatch {
        path: match m.path {
            t2::PathMatch::Exact(p) => t1::PathMatch::Exact(p),
            t2::PathMatch::Prefix(p) => t1::PathMatch::Prefix(p),
            t2::PathMatch::Regex(p) => t1::PathMatch::Regex(p),
        },
        headers: m
            .headers
            .into_iter()
            .map(|h| t1::HeaderMatch {
                name: h.name,
                value: match h.value {
                    t2::HeaderValueMatch::Present => t1::HeaderValueMatch::Present,
                    t2::HeaderValueMatch::Value(s) => t1::HeaderValueMatch::Value(string_match(s)),
                },
                invert: h.invert,
            })
            .collect(),
        query: m
            .query
            .into_iter()
            .map(|q| t1::QueryMatch {
                name: q.name,
                value: q.value.map(string_match),
            })
            .collect(),
        method: m.method,
    }
}

fn action(a: t2::Action) -> r1::Action {
    match a {
        t2::Action::Apply(json) => r1::Action::Apply(json),
        t2::Action::PatchStatus(json) => r1::Action::PatchStatus(json),
        t2::Action::Event(e) => r1::Action::Event(r1::Event {
            type_: match e.type_ {
                t2::EventType::Normal => r1::EventType::Normal,
                t2::EventType::Warning => r1::EventType::Warning,
            },
            reason: e.reason,
            message: e.message,
        }),
        t2::Action::AddFinalizer(f) => r1::Action::AddFinalizer(f),
        t2::Action::RemoveFinalizer(f) => r1::Action::RemoveFinalizer(f),
        t2::Action::Delete(id) => r1::Action::Delete(r1::ObjectId {
            api_version: id.api_version,
            kind: id.kind,
            namespace: id.namespace,
            name: id.name,
        }),
        t2::Action::RequeueAfterMs(ms) => r1::Action::RequeueAfterMs(ms),
    }
}
