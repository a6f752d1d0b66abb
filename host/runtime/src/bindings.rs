//! Host bindings generated from `wit/`, one module per plugin world, for each version of the
//! contract the host links: `portcullis:filter@0.2.0` (`wit/`, the modules at the top) and
//! `portcullis:filter@0.1.0` (`wit/0.1.0/`, the pinned copy, in [`v1`]). The interfaces every
//! world imports are generated once per version, in its `virus` module, and shared.

#![allow(missing_docs)]

/// The virus-plugin world, and the shared import interfaces.
pub mod virus {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "virus-plugin",
        exports: { default: async },
        imports: {
            // A large message is read from its spool file: a failed read stops the plugin
            // (its on-error applies), never shows it a shorter message.
            "portcullis:filter/types.[method]message.read": trappable,
            // Granted capabilities wait on the network, within the plugin's deadline.
            "portcullis:filter/dns": async,
            "portcullis:filter/connect": async,
        },
        with: {
            "portcullis:filter/types.message": crate::host::MessageHandle,
            "portcullis:filter/connect.connection": crate::capability::Connection,
        },
    });
}

/// A plugin world whose shared imports are the ones generated in `$shared`.
macro_rules! world {
    ($(#[$doc:meta])* $name:ident, $path:literal, $world:literal, $shared:path) => {
        $(#[$doc])*
        pub mod $name {
            use $shared as shared;
            wasmtime::component::bindgen!({
                path: $path,
                world: $world,
                exports: { default: async },
                with: {
                    "portcullis:filter": shared::portcullis::filter,
                },
            });
        }
    };
}

world!(
    /// The spam-plugin world.
    spam,
    "../../wit",
    "spam-plugin",
    super::virus
);
world!(
    /// The rate-plugin world.
    rate,
    "../../wit",
    "rate-plugin",
    super::virus
);
world!(
    /// The auth-plugin world.
    auth,
    "../../wit",
    "auth-plugin",
    super::virus
);

/// `portcullis:filter@0.1.0`: plugins built before 0.2.0 load and behave as they did.
pub mod v1 {
    /// The 0.1.0 virus-plugin world, and the shared 0.1.0 import interfaces.
    pub mod virus {
        wasmtime::component::bindgen!({
            path: "../../wit/0.1.0",
            world: "virus-plugin",
            exports: { default: async },
            imports: { "portcullis:filter/types.[method]message.read": trappable },
            with: { "portcullis:filter/types.message": crate::host::MessageHandle },
        });
    }

    world!(
        /// The 0.1.0 spam-plugin world.
        spam,
        "../../wit/0.1.0",
        "spam-plugin",
        super::virus
    );
    world!(
        /// The 0.1.0 rate-plugin world.
        rate,
        "../../wit/0.1.0",
        "rate-plugin",
        super::virus
    );
    world!(
        /// The 0.1.0 auth-plugin world.
        auth,
        "../../wit/0.1.0",
        "auth-plugin",
        super::virus
    );

    pub use virus::portcullis::filter::types;
}

pub use virus::portcullis::filter::types;
