//! Host bindings generated from `wit/`, one module per plugin world. The interfaces every
//! world imports (types, log, config, clock) are generated once, in `virus`, and shared.

#![allow(missing_docs)]

/// The virus-plugin world, and the shared import interfaces.
pub mod virus {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "virus-plugin",
        exports: { default: async },
        // A large message is read from its spool file: a failed read stops the plugin
        // (its on-error applies), never shows it a shorter message.
        imports: { "portcullis:filter/types.[method]message.read": trappable },
        with: { "portcullis:filter/types.message": crate::host::MessageHandle },
    });
}

/// A plugin world whose shared imports are the ones generated in [`virus`].
macro_rules! world {
    ($(#[$doc:meta])* $name:ident, $world:literal) => {
        $(#[$doc])*
        pub mod $name {
            wasmtime::component::bindgen!({
                path: "../../wit",
                world: $world,
                exports: { default: async },
                with: {
                    "portcullis:filter/types": super::virus::portcullis::filter::types,
                    "portcullis:filter/log": super::virus::portcullis::filter::log,
                    "portcullis:filter/config": super::virus::portcullis::filter::config,
                    "portcullis:filter/clock": super::virus::portcullis::filter::clock,
                },
            });
        }
    };
}

world!(
    /// The spam-plugin world.
    spam,
    "spam-plugin"
);
world!(
    /// The rate-plugin world.
    rate,
    "rate-plugin"
);
world!(
    /// The auth-plugin world.
    auth,
    "auth-plugin"
);

pub use virus::portcullis::filter::types;
