//! Raw resources: what a translator emits through the contract's escape
//! hatch (type URL and protobuf bytes), served as given once it decodes as
//! that type and names itself as it says.

use bytes::Bytes;

use super::resources::Resources;
use crate::envoy;
use crate::ir;
use crate::translate::merge::{MergedRaw, RawKey};
use crate::xds::{Resource, type_url};

/// Serves (or removes) one raw resource as merged; returns its
/// diagnostics.
pub(super) fn build(
    key: &RawKey,
    merged: Option<MergedRaw>,
    out: &mut Resources,
) -> Vec<ir::Diagnostic> {
    let Some(t) = type_url::PUSH_ORDER.iter().find(|t| **t == key.type_url) else {
        return merged.map(|m| m.diagnostics).unwrap_or_default();
    };
    let Some(mut m) = merged else {
        out.remove(t, &key.name);
        return vec![];
    };
    let checked = envoy::validate_raw(&m.raw.type_url, &m.raw.value).and_then(|inner| {
        if inner == key.name {
            Ok(())
        } else {
            Err(envoy::ValidationError::Decode {
                type_url: key.type_url.clone(),
                message: format!(
                    "the resource is named {inner:?} inside but {:?} outside",
                    key.name
                ),
            })
        }
    });
    match checked {
        Ok(()) => {
            out.put(Resource::new(
                t,
                key.name.clone(),
                Bytes::from(m.raw.value.clone()),
                vec![m.root.clone()],
            ));
        }
        Err(e) => {
            m.diagnostics.push(ir::Diagnostic::error(
                ir::ObjectRef::of(&m.root),
                "InvalidRawResource",
                e.to_string(),
            ));
            out.remove(t, &key.name);
        }
    }
    m.diagnostics
}
