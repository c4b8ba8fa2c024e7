#![doc = include_str!("../README.md")]
//!
//! ## Crate layout
//!
//! * [`IngressTranslator`]: the [`Translator`] implementation;
//! * `class`: IngressClass selection;
//! * `annotations`: annotation parsing;
//! * `regex`: RE2 validation of ImplementationSpecific regex paths;
//! * `translate`: rules, paths, backends and TLS to virtual hosts.

mod annotations;
mod class;
mod regex;
mod translate;

#[cfg(test)]
mod tests;

use isobar_guest::k8s_openapi::api::core::v1::Service;
use isobar_guest::k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use isobar_guest::prelude::*;

pub use annotations::{
    FORCE_SSL_REDIRECT, LEGACY_CLASS, NUM_RETRIES, PER_TRY_TIMEOUT, RESPONSE_TIMEOUT, RETRY_ON,
};
pub use class::DEFAULT_CLASS_ANNOTATION;

/// The `spec.controller` of IngressClasses this plugin serves.
pub const CONTROLLER: &str = "isobar.dev/ingress-controller";
/// Plain-HTTP listener every Ingress shares.
pub const HTTP_LISTENER: &str = "ingress_http";
pub const HTTP_PORT: u16 = 8080;
/// TLS listener for `spec.tls` hosts.
pub const HTTPS_LISTENER: &str = "ingress_https";
pub const HTTPS_PORT: u16 = 8443;

/// Translates `networking.k8s.io/v1` Ingresses.
pub struct IngressTranslator;

impl Translator for IngressTranslator {
    fn describe() -> PluginInfo {
        PluginInfo::new("ingress", env!("CARGO_PKG_VERSION"))
            .root::<Ingress>()
            .watch::<IngressClass>()
            .watch::<Service>()
    }

    fn translate(root: &Object, store: &dyn Store) -> Result<Fragment, Error> {
        let ingress: Ingress = root.parse()?;
        if !class::is_ours(&ingress, store)? {
            // Another controller's Ingress: contribute nothing, say nothing.
            return Ok(Fragment::new());
        }
        Ok(translate::translate(root, &ingress, store))
    }
}

#[cfg(target_arch = "wasm32")]
isobar_guest::export_translator!(IngressTranslator);
