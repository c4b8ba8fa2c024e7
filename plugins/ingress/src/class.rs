//! IngressClass selection: is this Ingress ours?

use isobar_guest::Store;
use isobar_guest::k8s_openapi::api::networking::v1::{Ingress, IngressClass};
use isobar_guest::types::Error;

use crate::CONTROLLER;
use crate::annotations::LEGACY_CLASS;

/// Marks the cluster's default IngressClass (used by Ingresses with no class).
pub const DEFAULT_CLASS_ANNOTATION: &str = "ingressclass.kubernetes.io/is-default-class";

/// Whether `ingress` belongs to [`CONTROLLER`]; see the crate docs for the
/// rules. Reads only the IngressClasses it needs, so an unrelated class
/// changing does not retranslate every Ingress.
pub fn is_ours(ingress: &Ingress, store: &dyn Store) -> Result<bool, Error> {
    let class_name = ingress
        .spec
        .as_ref()
        .and_then(|spec| spec.ingress_class_name.as_deref())
        .filter(|name| !name.is_empty());
    let legacy_name = ingress
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(LEGACY_CLASS))
        .map(String::as_str)
        .filter(|name| !name.is_empty());

    match class_name.or(legacy_name) {
        Some(name) => Ok(store
            .get_typed::<IngressClass>("", name)?
            .is_some_and(|class| is_our_class(&class))),
        None => Ok(store
            .list_typed::<IngressClass>(None)?
            .iter()
            .any(|class| is_our_class(class) && is_default(class))),
    }
}

fn is_our_class(class: &IngressClass) -> bool {
    class
        .spec
        .as_ref()
        .and_then(|spec| spec.controller.as_deref())
        == Some(CONTROLLER)
}

fn is_default(class: &IngressClass) -> bool {
    class
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(DEFAULT_CLASS_ANNOTATION))
        .is_some_and(|value| value == "true")
}
