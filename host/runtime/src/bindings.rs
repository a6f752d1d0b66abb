//! Host bindings generated from `wit/`, one module per plugin world. The interfaces every
//! world imports (types, log, config, clock) are generated once, in `virus`, and shared.

#![allow(missing_docs)]

/// The virus-plugin world, and the shared import interfaces.
pub mod virus {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "virus-plugin",
        exports: { default: async },
        with: { "portcullis:filter/types.message": crate::host::MessageHandle },
    });
}

/// The spam-plugin world.
pub mod spam {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "spam-plugin",
        exports: { default: async },
        with: {
            "portcullis:filter/types": super::virus::portcullis::filter::types,
            "portcullis:filter/log": super::virus::portcullis::filter::log,
            "portcullis:filter/config": super::virus::portcullis::filter::config,
            "portcullis:filter/clock": super::virus::portcullis::filter::clock,
        },
    });
}

/// The rate-plugin world.
pub mod rate {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "rate-plugin",
        exports: { default: async },
        with: {
            "portcullis:filter/types": super::virus::portcullis::filter::types,
            "portcullis:filter/log": super::virus::portcullis::filter::log,
            "portcullis:filter/config": super::virus::portcullis::filter::config,
            "portcullis:filter/clock": super::virus::portcullis::filter::clock,
        },
    });
}

/// The auth-plugin world.
pub mod auth {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "auth-plugin",
        exports: { default: async },
        with: {
            "portcullis:filter/types": super::virus::portcullis::filter::types,
            "portcullis:filter/log": super::virus::portcullis::filter::log,
            "portcullis:filter/config": super::virus::portcullis::filter::config,
            "portcullis:filter/clock": super::virus::portcullis::filter::clock,
        },
    });
}

pub use virus::portcullis::filter::types;
