#![doc = include_str!("../README.md")]
//!
//! ## Crate layout
//!
//! * `api`: serde structs for the Gateway API kinds read;
//! * `gateway`: listener validation, route attachment, the Gateway and
//!   GatewayClass roots;
//! * `route`: the HTTPRoute and GRPCRoute roots.

pub mod api;
pub mod gateway;
pub mod route;

#[cfg(test)]
mod tests;

use isobar_guest::k8s_openapi::api::core::v1::{Namespace, Service};
use isobar_guest::prelude::*;
use serde_json::{Value, json};

/// The `spec.controllerName` of GatewayClasses this plugin serves.
pub const CONTROLLER: &str = "isobar.dev/gateway-controller";

/// The Envoy listener for a Gateway port. Every Gateway listener on that
/// port (of every Gateway, every route root) names it the same way, so they
/// share one Envoy listener; HTTPS ones are split by SNI per domain.
pub fn listener_name(port: u16) -> String {
    format!("gw_{port}")
}

/// A condition as it appears inside status fields (listeners, parents).
pub(crate) fn cond(
    type_: &str,
    status: bool,
    reason: &str,
    message: String,
    generation: i64,
) -> Value {
    json!({
        "type": type_,
        "status": if status { "True" } else { "False" },
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    })
}

/// Whether a ReferenceGrant in `to_ns` lets a `from_kind` in `from_ns` refer
/// to `to_kind` `name` (group `to_group`). Lists the namespace's grants
/// (recorded: a new grant re-translates).
pub(crate) fn ref_granted(
    store: &dyn Store,
    from_ns: &str,
    from_kind: &str,
    to_ns: &str,
    to_group: &str,
    to_kind: &str,
    name: &str,
) -> bool {
    store
        .list(api::API_VERSION, "ReferenceGrant", Some(to_ns))
        .iter()
        .filter_map(|o| o.parse::<api::ReferenceGrant>().ok())
        .any(|g| {
            g.spec
                .from
                .iter()
                .any(|f| f.group == api::GROUP && f.kind == from_kind && f.namespace == from_ns)
                && g.spec.to.iter().any(|t| {
                    (t.group == to_group || (to_group.is_empty() && t.group == "core"))
                        && t.kind == to_kind
                        && t.name.as_deref().is_none_or(|n| n.is_empty() || n == name)
                })
        })
}

/// The operator's configuration (`--plugin-config gateway-api=@file.json`).
#[derive(Debug, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Ports no Gateway listener may take: the host does not keep two Envoy
    /// listeners off one port, so by default the Ingress plugin's
    /// (`ingress_http` 8080, `ingress_https` 8443). A listener on one is
    /// `Accepted=False/PortUnavailable`.
    pub reserved_ports: Vec<u16>,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            reserved_ports: vec![8080, 8443],
        }
    }
}

impl Config {
    /// The configuration `configure` accepted (checked there, so it parses).
    pub fn get() -> Config {
        isobar_guest::config_as().unwrap_or_default()
    }
}

fn kind(k: &str) -> KindRef {
    KindRef::new(api::API_VERSION, k)
}

/// Translates Gateway API objects.
pub struct GatewayApiTranslator;

impl Translator for GatewayApiTranslator {
    fn describe() -> TranslatorInfo {
        TranslatorInfo::new("gateway-api", env!("CARGO_PKG_VERSION"))
            .root_kind(kind("GatewayClass"))
            .root_kind(kind("Gateway"))
            .root_kind(kind("HTTPRoute"))
            .root_kind(kind("GRPCRoute"))
            .watch_kind(kind("ReferenceGrant"))
            .watch::<Service>()
            .watch::<Namespace>()
    }

    fn configure(config: &str) -> Result<(), Error> {
        serde_json::from_str::<Config>(config)
            .map(|_| ())
            .map_err(|e| Error::new("InvalidConfig", e.to_string()))
    }

    fn translate(root: &Object, store: &dyn Store) -> Result<Fragment, Error> {
        match root.kind.as_str() {
            "GatewayClass" => gateway::translate_class(root),
            "Gateway" => gateway::translate(root, store),
            "HTTPRoute" => route::translate(root, store, route::Kind::Http),
            "GRPCRoute" => route::translate(root, store, route::Kind::Grpc),
            other => Err(Error::new(
                "UnexpectedKind",
                format!("not a root kind: {other}"),
            )),
        }
    }
}

isobar_guest::export_translator!(GatewayApiTranslator);
