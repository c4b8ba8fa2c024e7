//! Write Isobar plugins in Rust: translators and reconcilers.
//!
//! A plugin is one type implementing [`Translator`] (world `translator`:
//! Kubernetes objects to routing IR) or [`Reconciler`] (world `reconciler`:
//! an operator returning actions). The same code compiles two ways:
//!
//! * for `wasm32-wasip2`, where [`export_translator!`] or
//!   [`export_reconciler!`] turns it into a component exporting
//!   `isobar:plugin/translation@0.1.0` or `isobar:plugin/reconciliation@0.1.0`,
//!   reading objects through the host's `store` import ([`HostStore`]);
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
//! A reconciler returns [`Action`]s, built with
//! `Action::apply`, `Action::patch_status`, `Action::event`,
//! `Action::delete`, `Action::add_finalizer` / `remove_finalizer` and
//! `Action::requeue_after`; [`FinalizerState`] decides the finalizer
//! protocol. A component exports one world: use one export macro, once.
//!
//! ```
//! use isobar_guest::k8s_openapi::api::core::v1::ConfigMap;
//! use isobar_guest::prelude::*;
//! use isobar_guest::serde_json::json;
//!
//! pub struct Greeter;
//!
//! impl Reconciler for Greeter {
//!     fn describe() -> ReconcilerInfo {
//!         ReconcilerInfo::new("greeter", "0.1.0", KindRef::new("example.com/v1", "Greeting"))
//!             .owns::<ConfigMap>()
//!     }
//!
//!     fn reconcile(object: &Object, store: &dyn Store) -> Result<Vec<Action>, Error> {
//!         let greeting = object.value()?;
//!         let exists = store.get("v1", "ConfigMap", &object.namespace, &object.name).is_some();
//!         let mut actions = vec![Action::apply(&json!({
//!             "apiVersion": "v1", "kind": "ConfigMap",
//!             "metadata": {"namespace": object.namespace, "name": object.name},
//!             "data": {"text": greeting["spec"]["text"]},
//!         }))];
//!         if !exists {
//!             actions.push(Action::event(EventType::Normal, "Created", "Created ConfigMap"));
//!         }
//!         Ok(actions)
//!     }
//! }
//!
//! isobar_guest::export_reconciler!(Greeter);
//!
//! let greeting = Object::from_json(json!({
//!     "apiVersion": "example.com/v1", "kind": "Greeting",
//!     "metadata": {"namespace": "default", "name": "hi"}, "spec": {"text": "hello"},
//! }))?;
//! let actions = Greeter::reconcile(&greeting, &MemoryStore::new())?;
//! assert_eq!(actions.len(), 2);
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
mod reconcile;
mod store;
pub mod v0_1;

pub use k8s_openapi;
pub use reconcile::FinalizerState;
pub use serde_json;
#[cfg(target_arch = "wasm32")]
pub use store::HostStore;
pub use store::{MemoryStore, Store};

/// Bindings generated from the contract (`wit/plugin-0.2.wit`,
/// `isobar:plugin@0.2.0`).
///
/// Plugins normally use [`types`] and the `export_*!` macros instead.
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit/plugin-0.2.wit",
        world: "translator",
        pub_export_macro: true,
        default_bindings_module: "isobar_guest::bindings",
        // The host's IR compares and prints the same way, so native and
        // Wasm output can be compared as values or as JSON.
        additional_derives: [PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize],
    });

    /// World `policy`. Only its own interface (`transformation`) is
    /// generated here; `types`, `store` and `log` are the translator
    /// bindings' above, so every world shares one set of types. With a
    /// public export macro, wit-bindgen describes a world's exports in a
    /// custom section emitted by `export!` in the plugin crate: a component
    /// exports the world whose macro it invokes, nothing else.
    pub mod policy {
        wit_bindgen::generate!({
            path: "../wit/plugin-0.2.wit",
            world: "policy",
            pub_export_macro: true,
            default_bindings_module: "isobar_guest::bindings::policy",
            with: {
                "isobar:plugin/types@0.2.0": isobar_guest::bindings::isobar::plugin::types,
                "isobar:plugin/store@0.2.0": isobar_guest::bindings::isobar::plugin::store,
                "isobar:plugin/log@0.2.0": isobar_guest::bindings::isobar::plugin::log,
            },
            additional_derives: [PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize],
        });
    }

    /// World `reconciler`, like [`policy`].
    pub mod reconciler {
        wit_bindgen::generate!({
            path: "../wit/plugin-0.2.wit",
            world: "reconciler",
            pub_export_macro: true,
            default_bindings_module: "isobar_guest::bindings::reconciler",
            with: {
                "isobar:plugin/types@0.2.0": isobar_guest::bindings::isobar::plugin::types,
                "isobar:plugin/store@0.2.0": isobar_guest::bindings::isobar::plugin::store,
                "isobar:plugin/log@0.2.0": isobar_guest::bindings::isobar::plugin::log,
            },
            additional_derives: [PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize],
        });
    }
}

/// The contract's vocabulary: objects, the routing IR, statuses,
/// diagnostics, errors, and each world's records.
///
/// Builder methods for these types are defined in this crate (see the
/// individual types).
pub mod types {
    pub use crate::bindings::exports::isobar::plugin::translation::TranslatorInfo;
    pub use crate::bindings::isobar::plugin::types::*;
    pub use crate::bindings::policy::exports::isobar::plugin::transformation::{
        PolicyInfo, PolicyOutput,
    };
    pub use crate::bindings::reconciler::exports::isobar::plugin::reconciliation::{
        Action, Event, EventType, ObjectId, ReconcilerInfo,
    };

    /// Contract 0.1's name for [`TranslatorInfo`].
    pub type PluginInfo = TranslatorInfo;
}

/// Everything a plugin usually needs: `use isobar_guest::prelude::*;`.
pub mod prelude {
    pub use crate::types::*;
    pub use crate::{FinalizerState, MemoryStore, Policy, Reconciler, Store, Translator};
}

use types::{
    Action, Error, Fragment, Object, PolicyInfo, PolicyOutput, ReconcilerInfo, TranslatorInfo,
    VirtualHost,
};

/// The operator's configuration of this plugin, as JSON (`"{}"` when none
/// was given): what the host passed to `configure` on this instance.
/// Natively, what [`with_config`] set (else `"{}"`).
pub fn config() -> std::rc::Rc<str> {
    CONFIG.with_borrow(|c| c.clone())
}

/// The configuration, parsed into `T`.
pub fn config_as<T: serde::de::DeserializeOwned>() -> Result<T, Error> {
    serde_json::from_str(&config())
        .map_err(|e| Error::new("InvalidConfig", format!("the plugin's configuration: {e}")))
}

/// Runs `f` with `config` as the plugin's configuration (native tests).
pub fn with_config<R>(config: &str, f: impl FnOnce() -> R) -> R {
    let before = CONFIG.replace(std::rc::Rc::from(config));
    let result = f();
    CONFIG.set(before);
    result
}

thread_local! {
    static CONFIG: std::cell::RefCell<std::rc::Rc<str>> =
        std::cell::RefCell::new(std::rc::Rc::from("{}"));
}

/// The one trait a translator plugin implements.
///
/// Associated functions only (no `self`): a result must depend on the root
/// and what it reads, never on what else an instance did (the host may make
/// many calls on one instance, and drops it at the end of a round).
pub trait Translator {
    /// Name, version and the kinds the plugin reads and is called for.
    fn describe() -> TranslatorInfo;

    /// Checks the operator's configuration (JSON) before any call; an
    /// `Err` refuses it. Read it with [`config`] or [`config_as`].
    fn configure(config: &str) -> Result<(), Error> {
        let _ = config;
        Ok(())
    }

    /// Translates one root object. Must be a pure function of `root` and what
    /// it reads from `store`; the host records those reads to know when to
    /// call again.
    fn translate(root: &Object, store: &dyn Store) -> Result<Fragment, Error>;
}

/// The one trait a routing policy implements: it transforms a merged
/// virtual host (headers, canary weights, deny rules, ...) without
/// translating anything itself.
pub trait Policy {
    /// Name, version, the kinds it reads and the hosts it applies to.
    fn describe() -> PolicyInfo;

    /// As [`Translator::configure`].
    fn configure(config: &str) -> Result<(), Error> {
        let _ = config;
        Ok(())
    }

    /// The virtual host to serve instead of `host` (same listener and
    /// domain). Routes carry the objects that produced them (`source`):
    /// keep it on the routes you return.
    fn apply(host: VirtualHost, store: &dyn Store) -> Result<PolicyOutput, Error>;
}

/// Exports a [`Translator`] as the component's `translation` interface
/// (`isobar:plugin/translation@0.2.0`).
///
/// Expands to nothing on targets other than `wasm32`, so it may be invoked
/// unconditionally. A component exports one world: invoke one export macro,
/// once.
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
                fn describe() -> $crate::types::TranslatorInfo {
                    $crate::__private::describe::<$translator>()
                }

                fn configure(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), $crate::types::Error> {
                    $crate::__private::configure(
                        config,
                        <$translator as $crate::Translator>::configure,
                    )
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

/// Exports a [`Policy`] as the component's `transformation` interface
/// (world `policy`).
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __IsobarPolicyExport;

            impl $crate::bindings::policy::exports::isobar::plugin::transformation::Guest
                for __IsobarPolicyExport
            {
                fn describe() -> $crate::types::PolicyInfo {
                    $crate::__private::describe_policy::<$policy>()
                }

                fn configure(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), $crate::types::Error> {
                    $crate::__private::configure(config, <$policy as $crate::Policy>::configure)
                }

                fn apply(
                    host: $crate::types::VirtualHost,
                ) -> ::core::result::Result<$crate::types::PolicyOutput, $crate::types::Error>
                {
                    $crate::__private::apply::<$policy>(host)
                }
            }

            $crate::bindings::policy::export!(
                __IsobarPolicyExport with_types_in $crate::bindings::policy
            );
        };
    };
}

/// The one trait a reconciler plugin (an operator) implements.
///
/// Like [`Translator`], associated functions only: the object and the
/// store are the only state there is.
pub trait Reconciler {
    /// Name, version, the kind reconciled and the kinds owned and read.
    fn describe() -> ReconcilerInfo;

    /// As [`Translator::configure`].
    fn configure(config: &str) -> Result<(), Error> {
        let _ = config;
        Ok(())
    }

    /// Says, for one object, what the world should look like: the actions
    /// (apply children, patch status, events, finalizers, requeue) the host
    /// carries out, in order. Must be idempotent: the host may call again at
    /// any time. An `Err` is retried with backoff and shown on the object.
    fn reconcile(object: &Object, store: &dyn Store) -> Result<Vec<Action>, Error>;
}

/// Exports a [`Reconciler`] as the component's `reconciliation` interface
/// (world `reconciler`).
#[macro_export]
macro_rules! export_reconciler {
    ($reconciler:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            struct __IsobarReconcilerExport;

            impl $crate::bindings::reconciler::exports::isobar::plugin::reconciliation::Guest
                for __IsobarReconcilerExport
            {
                fn describe() -> $crate::types::ReconcilerInfo {
                    $crate::__private::describe_reconciler::<$reconciler>()
                }

                fn configure(
                    config: ::std::string::String,
                ) -> ::core::result::Result<(), $crate::types::Error> {
                    $crate::__private::configure(
                        config,
                        <$reconciler as $crate::Reconciler>::configure,
                    )
                }

                fn reconcile(
                    object: $crate::types::Object,
                ) -> ::core::result::Result<
                    ::std::vec::Vec<$crate::types::Action>,
                    $crate::types::Error,
                > {
                    $crate::__private::reconcile::<$reconciler>(object)
                }
            }

            $crate::bindings::reconciler::export!(
                __IsobarReconcilerExport with_types_in $crate::bindings::reconciler
            );
        };
    };
}

/// Glue for [`export_translator!`] and [`export_reconciler!`]; not a public
/// API.
#[doc(hidden)]
pub mod __private {
    use super::*;

    /// Keeps the configuration for [`config`](crate::config) once the
    /// plugin's own check accepts it.
    pub fn configure(config: String, check: fn(&str) -> Result<(), Error>) -> Result<(), Error> {
        #[cfg(target_arch = "wasm32")]
        log::install(log::to_host);
        check(&config)?;
        CONFIG.set(std::rc::Rc::from(config));
        Ok(())
    }

    #[cfg(target_arch = "wasm32")]
    pub fn describe<T: Translator>() -> TranslatorInfo {
        log::install(log::to_host);
        T::describe()
    }

    #[cfg(target_arch = "wasm32")]
    pub fn translate<T: Translator>(root: Object) -> Result<Fragment, Error> {
        log::install(log::to_host);
        T::translate(&root, &HostStore)
    }

    #[cfg(target_arch = "wasm32")]
    pub fn describe_policy<P: Policy>() -> PolicyInfo {
        log::install(log::to_host);
        P::describe()
    }

    #[cfg(target_arch = "wasm32")]
    pub fn apply<P: Policy>(host: VirtualHost) -> Result<PolicyOutput, Error> {
        log::install(log::to_host);
        P::apply(host, &HostStore)
    }

    #[cfg(target_arch = "wasm32")]
    pub fn describe_reconciler<R: Reconciler>() -> ReconcilerInfo {
        log::install(log::to_host);
        R::describe()
    }

    #[cfg(target_arch = "wasm32")]
    pub fn reconcile<R: Reconciler>(object: Object) -> Result<Vec<Action>, Error> {
        log::install(log::to_host);
        R::reconcile(&object, &HostStore)
    }
}
