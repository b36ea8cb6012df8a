//! The host side of the WIT contract in `wit/`: the generated bindings,
//! and the names the rest of the host uses from them.
//!
//! Every import is async (capabilities wait on storage, sockets and
//! locks), trappable (a host bug traps the call rather than the host) and
//! traced (a `tracing` span per capability call, with its arguments at
//! `trace` level). The WIT error types are trappable error types: a
//! capability returns `Result<T, HostError>` (or the `docker`, `dokku`,
//! `http-out` equivalents), `?` on the WIT error gives the plugin that
//! error, and `TrappableError::trap` ends the call.

mod generated {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "plugin",
        imports: { default: async | trappable | tracing },
        exports: { default: async },
        trappable_error_type: {
            "berth:plugin/types.error" => crate::bindings::HostError,
            "berth:plugin/docker.docker-error" => crate::bindings::DockerFailure,
            "berth:plugin/dokku.dokku-error" => crate::bindings::DokkuFailure,
            "berth:plugin/http-out.http-error" => crate::bindings::HttpFailure,
        },
    });
}

/// The world: its `add_to_linker` links every capability interface.
pub use generated::Plugin;
/// The capability interfaces, each with its `Host` trait and types.
pub use generated::berth::plugin::{
    config, crypto, docker, dokku, events, http_out, jobs, kv, log, types,
};
/// What a capability call that can fail returns as its error: the WIT
/// `error` the plugin sees, or a trap (a host bug) that ends the call.
/// `?` on a [`types::Error`] gives the former.
pub type HostError = wasmtime_wasi::TrappableError<types::Error>;
/// The same for the `docker` interface's errors.
pub type DockerFailure = wasmtime_wasi::TrappableError<docker::DockerError>;
/// The same for the `dokku` interface's errors.
pub type DokkuFailure = wasmtime_wasi::TrappableError<dokku::DokkuError>;
/// The same for the `http-out` interface's errors.
pub type HttpFailure = wasmtime_wasi::TrappableError<http_out::HttpError>;

/// What crosses on every call.
pub use types::{DockerTarget, Framing, Manifest, Outcome, Request, Response};

/// The WIT package this host implements, and its version.
pub const WIT_PACKAGE: &str = "berth:plugin";
pub const WIT_VERSION: &str = "0.1.5";
