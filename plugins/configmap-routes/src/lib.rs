//! A second translator (contract 0.2) that runs beside the Ingress plugin:
//! its roots are ConfigMaps, and a ConfigMap carrying the annotation
//! `isobar.dev/routes` declares static routes on the Ingress plugin's HTTP
//! listener:
//!
//! ```yaml
//! metadata:
//!   annotations:
//!     isobar.dev/routes: '[{"host": "static.example.com", "path": "/", "service": "web", "port": 80}]'
//! ```
//!
//! It shows two translators sharing a listener and merging into one
//! virtual host, and gives the host's tests a translator whose roots are
//! not Ingresses. ConfigMaps without the annotation contribute nothing.
//!
//! For the host's status tests, annotation `isobar.dev/test-status` makes
//! it return a status as given: `{"object": {api_version, kind, namespace,
//! name}, "type": .., "reason": .., "fields": <JSON>}` (the host validates
//! it; this plugin does not).
//!
//! Configured with `{"count": true}`, it adds response header
//! `x-translate-calls` (how many roots this instance has translated) to
//! its routes: the host's tests use it to see that no instance outlives a
//! round.

use std::cell::Cell;

use isobar_guest::k8s_openapi::api::core::v1::{ConfigMap, Service};
use isobar_guest::prelude::*;

pub const ANNOTATION: &str = "isobar.dev/routes";
/// The Ingress plugin's HTTP listener, declared identically so they merge.
pub const LISTENER: &str = "ingress_http";
pub const PORT: u16 = 8080;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticRoute {
    host: String,
    #[serde(default = "root")]
    path: String,
    service: String,
    port: u16,
}

fn root() -> String {
    "/".into()
}

pub struct ConfigMapRoutes;

pub const TEST_STATUS: &str = "isobar.dev/test-status";

#[derive(serde::Deserialize)]
struct TestStatus {
    object: ObjectRef,
    #[serde(rename = "type")]
    type_: String,
    reason: String,
    #[serde(default)]
    fields: Option<serde_json::Value>,
}

thread_local! {
    static CALLS: Cell<u32> = const { Cell::new(0) };
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    count: bool,
}

impl Translator for ConfigMapRoutes {
    fn describe() -> TranslatorInfo {
        TranslatorInfo::new("configmap-routes", env!("CARGO_PKG_VERSION"))
            .root::<ConfigMap>()
            .watch::<Service>()
    }

    fn configure(config: &str) -> Result<(), Error> {
        serde_json::from_str::<Config>(config)
            .map(|_| ())
            .map_err(|e| Error::new("InvalidConfig", e.to_string()))
    }

    fn translate(root: &Object, _store: &dyn Store) -> Result<Fragment, Error> {
        let calls = CALLS.with(|c| {
            c.set(c.get() + 1);
            c.get()
        });
        let config: Config = isobar_guest::config_as()?;
        let cm: ConfigMap = root.parse()?;
        let mut statuses = Vec::new();
        if let Some(v) = cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(TEST_STATUS))
        {
            let t: TestStatus = serde_json::from_str(v)
                .map_err(|e| Error::new("InvalidTestStatus", e.to_string()))?;
            let mut s = ObjectStatus::new(t.object).with_condition(Condition::new(
                t.type_,
                true,
                t.reason,
                "as the test asked",
            ));
            if let Some(fields) = t.fields {
                // Verbatim, even when not an object: the host must refuse it.
                s.fields = Some(fields.to_string());
            }
            statuses.push(s);
        }
        let Some(value) = cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
        else {
            let mut f = Fragment::new();
            f.statuses = statuses;
            return Ok(f);
        };
        let me = ObjectRef {
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: root.namespace.clone(),
            name: root.name.clone(),
        };
        let routes: Vec<StaticRoute> = match serde_json::from_str(value) {
            Ok(r) => r,
            Err(e) => {
                let mut f = Fragment::new();
                f.diagnostics.push(Diagnostic::error(
                    me,
                    "InvalidRoutes",
                    format!("{ANNOTATION}: {e}"),
                ));
                return Ok(f);
            }
        };
        let mut f = Fragment::new().with_listener(Listener::http(LISTENER, PORT));
        f.statuses = statuses;
        for r in routes {
            let mut route = Route::forward(
                RouteMatch::prefix(r.path),
                Backend::service(root.namespace.clone(), r.service, r.port),
            );
            if config.count {
                route = route.with_response_headers(
                    HeaderChanges::new().with_set("x-translate-calls", calls.to_string()),
                );
            }
            f.add_virtual_host(VirtualHost::new(LISTENER, r.host).with_route(route));
        }
        Ok(f)
    }
}

isobar_guest::export_translator!(ConfigMapRoutes);
