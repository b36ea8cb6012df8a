//! The host side of the WIT contract in `wit/`: the generated bindings,
//! and the names the rest of the host uses from them.
//!
//! Every import is async (capabilities wait on storage, sockets and
//! locks), trappable (a host bug traps the call rather than the host) and
//! traced (a `tracing` span per capability call, with its arguments at
//! `trace` level).

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: { default: async | trappable | tracing },
        exports: { default: async },
    });
}

/// The world: its `add_to_linker` links every capability interface.
pub use generated::Plugin;
/// The capability interfaces, each with its `Host` trait and types.
pub use generated::berth::plugin::{
    config, crypto, docker, dokku, events, http_out, jobs, kv, log, types,
};
/// What crosses on every call.
pub use types::{DockerTarget, Framing, Manifest, Outcome, Request, Response};

/// The WIT package this host implements, and its version.
pub const WIT_PACKAGE: &str = "berth:plugin";
pub const WIT_VERSION: &str = "0.1.0";
