//! Write Isobar translator plugins in Rust.
//!
//! A plugin is one type implementing [`Translator`]. The same code compiles
//! two ways:
//!
//! * for `wasm32-wasip2`, where [`export_translator!`] turns it into a
//!   component exporting `isobar:plugin/translation@0.1.0`, reading objects
//!   through the host's `store` import ([`HostStore`]);
//! * natively, where tests (and benchmarks) call the trait directly with a
//!   [`MemoryStore`].
//!
//! ```
//! use isobar_guest::k8s_openapi::api::networking::v1::Ingress;
//! use isobar_guest::prelude::*;
//!
//! pub struct MyTranslator;
//!
//! impl Translator for MyTranslator {
//!     fn describe() -> PluginInfo {
//!         PluginInfo::new("mine", "0.1.0").root::<Ingress>()
//!     }
//!
//!     fn translate(root: &Object, _store: &dyn Store) -> Result<Fragment, Error> {
//!         let ingress: Ingress = root.parse()?;
//!         let name = ingress.metadata.name.unwrap_or_default();
//!         Ok(Fragment::new()
//!             .with_listener(Listener::http("http", 8080))
//!             .with_virtual_host(VirtualHost::new("http", "*").with_route(Route::forward(
//!                 RouteMatch::prefix("/"),
//!                 Backend::service(&root.namespace, name, 80),
//!             ))))
//!     }
//! }
//!
//! // In the plugin crate: a no-op except on wasm32.
//! isobar_guest::export_translator!(MyTranslator);
//!
//! // Natively, the same code runs against a MemoryStore.
//! let root = Object::from_json(isobar_guest::serde_json::json!({
//!     "apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
//!     "metadata": {"namespace": "default", "name": "web"},
//! }))?;
//! let fragment = MyTranslator::translate(&root, &MemoryStore::new())?;
//! assert_eq!(fragment.virtual_hosts[0].domain, "*");
//! # Ok::<(), Error>(())
//! ```
//!
//! The WIT imports are only real inside a component: natively wit-bindgen
//! compiles them to stubs that panic, so nothing in this crate calls them
//! unless it is built for `wasm32`.

// Lets the generated export macro name this crate by path from inside it
// (`default_bindings_module` below) as well as from plugin crates.
extern crate self as isobar_guest;

mod ir;
pub mod log;
mod object;
mod store;

pub use k8s_openapi;
pub use serde_json;
#[cfg(target_arch = "wasm32")]
pub use store::HostStore;
pub use store::{MemoryStore, Store};

/// Bindings generated from the contract (`wit/`, world `translator`).
///
/// Plugins normally use [`types`] and [`export_translator!`] instead.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "translator",
        pub_export_macro: true,
        default_bindings_module: "isobar_guest::bindings",
        // The host derives the same set, so native and Wasm output can be
        // compared as values or as JSON.
        additional_derives: [PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize],
    });
}

/// The contract's vocabulary: objects, the routing IR, diagnostics, errors.
///
/// Builder methods for these types are defined in this crate (see the
/// individual types).
pub mod types {
    pub use crate::bindings::isobar::plugin::types::*;
}

/// Everything a plugin usually needs: `use isobar_guest::prelude::*;`.
pub mod prelude {
    pub use crate::types::*;
    pub use crate::{MemoryStore, Store, Translator};
}

use types::{Error, Fragment, Object, PluginInfo};

/// The one trait a translator plugin implements.
///
/// Both functions are associated functions (no `self`): a plugin has no
/// state between calls, because the host gives every call a fresh instance.
pub trait Translator {
    /// Name, version and the kinds the plugin reads and is called for.
    fn describe() -> PluginInfo;

    /// Translates one root object. Must be a pure function of `root` and what
    /// it reads from `store`; the host records those reads to know when to
    /// call again.
    fn translate(root: &Object, store: &dyn Store) -> Result<Fragment, Error>;
}

/// Exports a [`Translator`] as the component's `translation` interface.
///
/// Expands to nothing on targets other than `wasm32`, so it may be invoked
/// unconditionally; the plugins in this repository still gate it for clarity.
#[macro_export]
macro_rules! export_translator {
    ($translator:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            // wit-bindgen's export macro wants a plain identifier, so the
            // user's type is wrapped in a local one.
            struct __IsobarTranslatorExport;

            impl $crate::bindings::exports::isobar::plugin::translation::Guest
                for __IsobarTranslatorExport
            {
                fn describe() -> $crate::types::PluginInfo {
                    $crate::__private::describe::<$translator>()
                }

                fn translate(
                    root: $crate::types::Object,
                ) -> ::core::result::Result<$crate::types::Fragment, $crate::types::Error> {
                    $crate::__private::translate::<$translator>(root)
                }
            }

    $crate::bindings::export!(__IsobarTranslatorExport with_types_in $crate::bindings);
        };
    };
}

/// Glue for [`export_translator!`]; not a public API.
#[doc(hidden)]
#[cfg(target_arch = "wasm32")]
pub mod __private {
    use super::*;

    pub fn describe<T: Translator>() -> PluginInfo {
        log::install_panic_hook();
        T::describe()
    }

    pub fn translate<T: Translator>(root: Object) -> Result<Fragment, Error> {
        log::install_panic_hook();
        T::translate(&root, &HostStore)
    }
}
