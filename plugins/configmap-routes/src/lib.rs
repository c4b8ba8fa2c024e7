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
        let Some(value) = cm
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ANNOTATION))
        else {
            return Ok(Fragment::new());
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
