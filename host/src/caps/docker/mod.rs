//! `docker`: Docker engines, for the typed operations, the engine's event
//! and log streams, and the exchange behind the `proxy-docker` outcome.
//!
//! An endpoint is a name for an engine address: the operator's (`local`
//! and `[docker.endpoints.NAME]`) or one a plugin registered for itself
//! (kept in the host's meta table, checked against `[docker] allow`). Each
//! engine gets a dialer that speaks Unix sockets, TCP or TCP+TLS (rustls)
//! and one client on it, `wire`: a small HTTP/1.1 client of Berth's own
//! that writes a request and reads its answer in the calling task (20-65
//! µs a call less than hyper's pooled client, which bollard used for the
//! typed operations until they moved here; see `host/benches/README.md`).

use crate::bindings::docker::DockerError;

mod followers;
mod framing;
mod logs;
mod ops;
mod proxy;
mod registry;
mod transport;
mod wire;

pub use followers::EventSink;
pub use logs::{LogLines, LogSpec};
pub use ops::{DockerCap, DockerView};
pub use proxy::{ProxyError, Slot, strip_hop_by_hop};
pub use registry::Docker;
pub use transport::{Address, Engine, Stream as EngineStream};
pub use wire::{Answer, Streamed, WireBody};

/// Text of any Docker error.
pub fn error_text(e: &DockerError) -> String {
    match e {
        DockerError::Denied(m)
        | DockerError::UnknownEndpoint(m)
        | DockerError::Invalid(m)
        | DockerError::Unreachable(m) => m.clone(),
        DockerError::Engine(e) => format!("engine error {}: {}", e.status, e.message),
    }
}

/// What a plugin (and so its client) is told of an unreachable engine.
pub fn unreachable_text(endpoint: &str, request_id: &str) -> String {
    format!(
        "the Docker endpoint `{endpoint}` cannot be reached now (the host log has the \
         details under request {request_id})"
    )
}
