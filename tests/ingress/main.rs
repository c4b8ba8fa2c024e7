//! Ingress behaviours, one test each: objects in, Envoy resources out,
//! always through the real component built from plugins/ingress.

use isobar::xds::type_url;
use isobar_tests::*;

mod backends;
mod hosts;
mod lifecycle;
mod paths;
use serde_json::json;

const HTTP: &str = "ingress_http";

fn base() -> Vec<serde_json::Value> {
    vec![
        ingress_class("isobar", false),
        service("shop", "web", &[("http", 80, json!(8080))]),
        slice("shop", "web", "a", "http", 8080, &["10.0.0.1", "10.0.0.2"]),
    ]
}

fn with(
    mut objects: Vec<serde_json::Value>,
    more: impl IntoIterator<Item = serde_json::Value>,
) -> Vec<serde_json::Value> {
    objects.extend(more);
    objects
}
