//! Host bindings generated from the contract (`wit/`).

wasmtime::component::bindgen!({
    path: "../wit",
    world: "translator",
    additional_derives: [PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize],
});

/// The `reconciler` world. Its imports are the translator's interfaces
/// (same `types`, `store` and `log`), so one linker serves both worlds.
pub mod reconciler {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "reconciler",
        additional_derives: [PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize],
        with: {
            "isobar:plugin/types": super::isobar::plugin::types,
            "isobar:plugin/store": super::isobar::plugin::store,
            "isobar:plugin/log": super::isobar::plugin::log,
        },
    });
}
