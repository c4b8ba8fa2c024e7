//! A component built against a contract version the host does not speak.
//!
//! Its WIT is bundled here (package `isobar:plugin@0.0.9`), so the component
//! exports `isobar:plugin/translation@0.0.9` with only `describe`, and no
//! `translate` at all. A host on `isobar:plugin@0.1.0` must refuse it and
//! name both versions, rather than fail somewhere later.

wit_bindgen::generate!({
    inline: r#"
        package isobar:plugin@0.0.9;

        interface translation {
            record kind-ref {
                api-version: string,
                kind: string,
            }

            record plugin-info {
                name: string,
                version: string,
                watches: list<kind-ref>,
                roots: list<kind-ref>,
            }

            describe: func() -> plugin-info;
        }

        world translator {
            export translation;
        }
    "#,
    world: "translator",
});

use exports::isobar::plugin::translation::{Guest, KindRef, PluginInfo};

/// `describe` in the 0.0.9 shape.
pub struct OldContract;

impl Guest for OldContract {
    fn describe() -> PluginInfo {
        let ingress = KindRef {
            api_version: "networking.k8s.io/v1".to_owned(),
            kind: "Ingress".to_owned(),
        };
        PluginInfo {
            name: "old-contract".to_owned(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            watches: vec![ingress.clone()],
            roots: vec![ingress],
        }
    }
}

#[cfg(target_arch = "wasm32")]
export!(OldContract);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_itself() {
        let info = OldContract::describe();
        assert_eq!(info.name, "old-contract");
        assert_eq!(info.roots.len(), 1);
    }
}
