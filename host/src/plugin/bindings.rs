//! Host bindings for the `isobar:plugin@0.1.0` contract.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "translator",
    additional_derives: [PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize],
});
