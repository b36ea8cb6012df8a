//! `docker`: Docker engines through bollard, and the raw forwarding behind
//! the `proxy-docker` outcome.
//!
//! An endpoint is a name for an engine address: the operator's (`local`
//! and `[docker.endpoints.NAME]`) or one a plugin registered for itself
//! (kept in the host's meta table, checked against `[docker] allow`). Each
//! engine gets a dialer that speaks Unix sockets, TCP or TCP+TLS (rustls)
//! and two clients on it: bollard, over hyper's pooled client, for the
//! typed operations; and `wire`, a small HTTP/1.1 client of its own, for
//! the two calls on a request's hot path: the proxy and the container list.

use bollard::errors::Error as BollardError;

use crate::bindings::docker::{DockerError, EngineError};

mod followers;
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

/// An error and its sources, one line.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let line = s.to_string();
        if !text.contains(&line) {
            text.push_str(": ");
            text.push_str(&line);
        }
        source = s.source();
    }
    text
}

pub(super) fn engine_error(address: &str, e: BollardError) -> DockerError {
    match e {
        BollardError::DockerResponseServerError {
            status_code,
            message,
        } => DockerError::Engine(EngineError {
            status: status_code,
            message,
        }),
        BollardError::RequestTimeoutError => {
            DockerError::Unreachable(format!("{address} did not answer in time"))
        }
        BollardError::JsonDataError { .. } | BollardError::JsonSerdeError { .. } => {
            DockerError::Unreachable(format!("{address} sent an answer Berth cannot read: {e}"))
        }
        other => DockerError::Unreachable(format!("{address}: {}", chain(&other))),
    }
}

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
