//! The Berth plugin SDK.
//!
//! A Berth plugin is a WebAssembly component targeting the `berth:plugin`
//! world (see `wit/` in the Berth repository). This crate wraps the
//! generated bindings with what a plugin author needs day to day:
//!
//! - [`Plugin`] and [`export!`]: declare the plugin and export it;
//! - [`Router`]: route ids to handler functions, with typed path params;
//! - [`Request`] and [`Response`]: JSON, form and query helpers;
//! - [`kv`], [`crypto`], [`config`], [`log`], [`jobs`], [`dokku`],
//!   [`http_out`], [`docker`], [`events`]: the host capabilities, typed.
//! - [`attempts`]: failed-login throttling on top of [`kv`]; [`time`]: clock helpers;
//! - `testing` (native builds): a test host, to run a plugin's routes,
//!   jobs and admin commands under plain `cargo test`;
//!   [`gojson`]: JSON bodies read by Go's `encoding/json` rules.
//!
//! ```no_run
//! use berth_sdk::{Capability, Info, Plugin, Request, Response, Router, HttpResult};
//!
//! struct Hello;
//!
//! impl Plugin for Hello {
//!     fn info() -> Info {
//!         Info::new("hello", env!("CARGO_PKG_VERSION"), "Says hello")
//!             .capabilities(&[Capability::Kv])
//!     }
//!     fn router() -> Router {
//!         Router::new().get("hello.greet", "/hello/{name}", greet)
//!     }
//! }
//!
//! fn greet(req: &Request) -> HttpResult {
//!     let name = req.param("name").unwrap_or("world");
//!     Ok(Response::json(200, &serde_json::json!({ "hello": name })))
//! }
//!
//! berth_sdk::export!(Hello);
//! ```

#![warn(missing_docs)]

mod http;
mod router;

pub mod attempts;
pub mod config;
pub mod crypto;
pub mod docker;
pub mod dokku;
pub mod events;
pub mod gojson;
pub mod http_out;
pub mod jobs;
pub mod kv;
pub mod log;
pub mod time;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use http::{Framing, HttpResult, Request, Response, percent_encode};

/// The capability functions the modules above call: the host's imports in
/// a component, the test host's ([`testing`]) in a native build.
#[cfg(target_arch = "wasm32")]
use crate::bindings::berth::plugin as host;
#[cfg(not(target_arch = "wasm32"))]
use crate::testing::raw as host;
pub use router::{Given, Guard, Guarded, GuardedHandler, Handler, Plain, Render, Router, Scope};

/// The generated bindings for the `berth:plugin` world. Most plugins never
/// need these directly; the modules of this crate wrap them.
#[allow(missing_docs)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../../wit",
        world: "plugin",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "berth_sdk::bindings",
    });
}

/// The error every host capability returns: the capability was not granted
/// (`Denied`), an argument was bad (`Invalid`), a concurrent call got in the
/// way and this call's transaction was rolled back (`Conflict`), or the
/// host could not do it now (`Unavailable`). Converts into a [`Response`]
/// with `?`; surfaces with their own error format use [`host_failure`].
pub use bindings::berth::plugin::types::Error;

impl Error {
    /// Whether the client should simply try again later: a conflict with a
    /// concurrent call, or the host unable to do the work now.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Conflict(_) | Error::Unavailable(_))
    }
}

/// A host failure inside a handler, in the surface's own error format:
/// `render(status, text)` builds the body. A transient failure
/// ([`Error::is_transient`]) is a 503 with `Retry-After: 1`; an argument
/// the host refused (`Invalid`: a key or value too large, made from what
/// the client sent) a 400; a capability not granted a 500.
pub fn host_failure(e: &Error, render: impl FnOnce(u16, &str) -> Response) -> Response {
    match e {
        Error::Conflict(_) | Error::Unavailable(_) => {
            render(503, &error_text(e)).header("retry-after", "1")
        }
        Error::Invalid(_) => render(400, &error_text(e)),
        Error::Denied(_) => render(500, &error_text(e)),
    }
}

/// Admin commands and jobs answer `Err(String)`: `?` on a host [`Error`]
/// gives its [`error_text`].
impl From<Error> for String {
    fn from(e: Error) -> String {
        error_text(&e)
    }
}

/// Human-readable text of a host [`Error`]: its kind and message.
pub fn error_text(e: &Error) -> String {
    match e {
        Error::Denied(m) => format!("denied: {m}"),
        Error::Invalid(m) => format!("invalid: {m}"),
        Error::Conflict(m) => format!("conflict: {m}"),
        Error::Unavailable(m) => format!("unavailable: {m}"),
    }
}

/// Name, version, description and capabilities of a plugin: everything in
/// its manifest except the routes, which come from its [`Router`].
#[derive(Debug, Clone)]
pub struct Info {
    /// Unique plugin name: lower-case letters, digits and `-`.
    pub name: String,
    /// The plugin's version.
    pub version: String,
    /// One line for operators.
    pub description: String,
    /// Capabilities asked for.
    pub capabilities: Vec<Capability>,
}

/// Makes [`Capability`] from the list in `wit/capabilities.in`, the one
/// the host reads too.
macro_rules! capabilities {
    ($($(#[doc = $doc:literal])* $variant:ident = $name:literal,)*) => {
        /// A capability a plugin asks for in its manifest; the operator must
        /// also grant it. The WIT `manifest` record lists what each gives.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Capability {
            $($(#[doc = $doc])* $variant,)*
        }

        impl Capability {
            /// The name in manifests and in the operator's config.
            pub fn name(self) -> &'static str {
                match self {
                    $(Capability::$variant => $name,)*
                }
            }
        }
    };
}

include!("../../../wit/capabilities.in");

impl Info {
    /// A plugin that asks for no capability yet.
    pub fn new(name: &str, version: &str, description: &str) -> Self {
        Info {
            name: name.to_string(),
            version: version.to_string(),
            description: description.to_string(),
            capabilities: Vec::new(),
        }
    }

    /// Ask for these capabilities (the operator must also grant them).
    pub fn capabilities(mut self, caps: &[Capability]) -> Self {
        self.capabilities = caps.to_vec();
        self
    }
}

/// A Berth plugin. Implement it on a unit struct and pass that struct to
/// [`export!`].
pub trait Plugin {
    /// Name, version, description and capabilities.
    fn info() -> Info;

    /// The routes and their handlers.
    fn router() -> Router;

    /// Run a background job queued with [`jobs::enqueue`]. `Ok` removes the
    /// job and commits its KV writes; `Err` discards them and the host
    /// retries later with backoff. Jobs may run more than once: make them
    /// idempotent.
    fn run_job(kind: &str, payload: &[u8]) -> Result<(), String> {
        let _ = payload;
        Err(format!("this plugin runs no jobs (asked to run `{kind}`)"))
    }

    /// Operator commands, run by `berth run PLUGIN ARGS...`. `Ok` text is
    /// printed for the operator; `Err` text is shown as an error.
    fn admin(args: Vec<String>) -> Result<String, String> {
        let _ = args;
        Err("this plugin offers no admin commands".to_string())
    }
}

#[doc(hidden)]
pub fn __describe<P: Plugin>() -> bindings::berth::plugin::types::Manifest {
    let info = P::info();
    let router = P::router();
    bindings::berth::plugin::types::Manifest {
        name: info.name,
        version: info.version,
        description: info.description,
        capabilities: info
            .capabilities
            .iter()
            .map(|c| c.name().to_string())
            .collect(),
        openapi: Some(router.openapi_paths()),
        routes: router.manifest_routes(),
    }
}

#[doc(hidden)]
pub fn __handle(
    router: &Router,
    request: bindings::berth::plugin::types::Request,
) -> bindings::berth::plugin::types::Outcome {
    router.dispatch(Request::from(request)).into_outcome()
}

/// Export a type implementing [`Plugin`] as this component's `berth:plugin`
/// world. Use it once, at the crate root of the plugin.
#[macro_export]
macro_rules! export {
    ($plugin:ty) => {
        const _: () = {
            struct BerthGuest;

            impl $crate::bindings::Guest for BerthGuest {
                fn describe() -> $crate::bindings::berth::plugin::types::Manifest {
                    $crate::__describe::<$plugin>()
                }

                fn handle(
                    request: $crate::bindings::berth::plugin::types::Request,
                ) -> $crate::bindings::berth::plugin::types::Outcome {
                    // The router is made of the plugin's code alone, never
                    // of a request: an instance serving several calls
                    // (`instance_reuse`) builds it once.
                    thread_local! {
                        static ROUTER: ::std::cell::OnceCell<$crate::Router> =
                            const { ::std::cell::OnceCell::new() };
                    }
                    ROUTER.with(|router| {
                        $crate::__handle(
                            router.get_or_init(<$plugin as $crate::Plugin>::router),
                            request,
                        )
                    })
                }

                fn run_job(kind: String, payload: Vec<u8>) -> Result<(), String> {
                    $crate::kv::rerun_on_conflict(|| {
                        <$plugin as $crate::Plugin>::run_job(&kind, &payload)
                    })
                }

                fn admin(args: Vec<String>) -> Result<String, String> {
                    $crate::kv::rerun_on_conflict(|| {
                        <$plugin as $crate::Plugin>::admin(args.clone())
                    })
                }
            }

    $crate::bindings::__export_plugin_world!(BerthGuest with_types_in $crate::bindings);
        };
    };
}
