//! Berth: a WebAssembly plugin host for container-platform APIs.
//!
//! One process owns the HTTP(S) listener, durable storage and every other
//! outside resource; each API surface is a sandboxed wasm component (a
//! plugin) that declares its routes and capabilities and handles its own
//! requests. See ARCHITECTURE.md in the repository for the map.
//!
//! The modules are layered one way; each uses only those on lines above
//! its own (`tests/layers.rs` checks it):
//!
//! 1. `net`, `store`, `lanes`, `metrics`, `router`, `openapi`, `private`
//!    (owner-only files), `web` (HTTP types), `capability` (names and sets)
//! 2. `config`, `bindings` (the WIT contract, generated), `budget` (the
//!    memory request bodies may hold), `bundled` (the embedded plugins),
//!    `replicas` (this Berth in the store's registry of replicas)
//! 3. `caps`: the capability interfaces, each on its own view of a call
//! 4. `runtime`: the engine, the linker, one store per call
//! 5. `plugins`: the mounted plugins and the folder watcher
//! 6. `invoke`: the one way a plugin's export is called (requests, jobs,
//!    admin commands), and which of its writes are kept
//! 7. `answer`: what a plugin's answer becomes (its response, a request
//!    proxied to an engine, an event stream) and a request body's policy;
//!    `jobs`: the job runner; `fleet`: the plugins folder kept in step
//!    with the fleet's set in the store
//! 8. `app`: the host as one value
//! 9. `admin`: the `/_berth/*` routes and the admin socket
//! 10. `dispatch`: from a request to a plugin call and back
//! 11. `server`: connections
pub mod admin;
pub mod answer;
pub mod app;
pub mod bindings;
pub mod budget;
pub mod bundled;
pub mod capability;
pub mod caps;
pub mod config;
pub mod dispatch;
pub mod fleet;
pub mod invoke;
pub mod jobs;
pub mod lanes;
pub mod metrics;
pub mod net;
pub mod openapi;
pub mod plugins;
pub mod private;
pub mod replicas;
pub mod router;
pub mod runtime;
pub mod server;
pub mod store;
pub mod web;

pub use app::App;
pub use bundled::BUNDLED;
