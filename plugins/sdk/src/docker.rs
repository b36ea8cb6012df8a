//! Docker engines through the host: typed container operations, and the
//! engine API's own JSON for the large documents (create bodies, inspect
//! results, service specs). See `wit/docker.wit` for every function.
//!
//! ```no_run
//! use berth_sdk::docker;
//!
//! # fn main() -> Result<(), docker::DockerError> {
//! let running = docker::container_list("local", false, &[("label".into(), vec!["app=web".into()])])?;
//! # Ok(())
//! # }
//! ```
//!
//! Logs as a stream of JSON lines, live with `follow`: open a log stream
//! and answer with its topic.
//!
//! ```no_run
//! use berth_sdk::{Framing, Response, docker};
//!
//! # fn main() -> Result<(), docker::DockerError> {
//! let source = docker::LogSource { id: "web-1".into(), fields: r#"{"source":"web-1"}"#.into() };
//! let topic = docker::open_log_stream("local", &[source], Some(100), true)?;
//! let answer = Response::subscribe(&topic, Framing::Websocket);
//! # Ok(())
//! # }
//! ```
//!
//! Anything else of the engine's API, answered whole (error statuses
//! included), to read before answering the client:
//!
//! ```no_run
//! use berth_sdk::docker;
//!
//! # fn main() -> Result<(), docker::DockerError> {
//! let answer = docker::request("local", "GET", "/volumes", "", &[], &[])?;
//! let volumes: serde_json::Value = serde_json::from_slice(&answer.body).unwrap_or_default();
//! # Ok(())
//! # }
//! ```

use crate::Response;
use crate::host::docker as raw;

pub use raw::{
    Container, DockerError, EngineAnswer, EngineError, Filters, LogSource, Port, TlsFiles,
    container_create, container_inspect, container_kill, container_list, container_logs,
    container_remove, container_rename, container_restart, container_start, container_stop,
    exec_create, follow_events, follow_events_as_jobs, image_inspect, image_list, image_pull, info,
    network_create, network_list, network_remove, node_list, open_log_stream, ping,
    register_endpoint, register_url_endpoint, remove_endpoint, request, service_create,
    service_inspect, service_list, service_remove, service_update, set_proxy_header, swarm_inspect,
    task_list,
};

/// A one-line description of a [`DockerError`].
pub fn error_text(e: &DockerError) -> String {
    match e {
        DockerError::Denied(m) => format!("denied: {m}"),
        DockerError::UnknownEndpoint(m) => format!("unknown endpoint: {m}"),
        DockerError::Invalid(m) => format!("invalid: {m}"),
        DockerError::Engine(e) => format!("engine error {}: {}", e.status, e.message),
        DockerError::Unreachable(m) => format!("unreachable: {m}"),
    }
}

/// The engine's status for engine errors, else `None`.
pub fn engine_status(e: &DockerError) -> Option<u16> {
    match e {
        DockerError::Engine(e) => Some(e.status),
        _ => None,
    }
}

/// A Docker error as a JSON error response: the engine's own status for
/// engine errors, 403 when denied, 503 when unreachable, 400 otherwise.
impl From<DockerError> for Response {
    fn from(e: DockerError) -> Self {
        let status = match &e {
            DockerError::Engine(engine) => engine.status,
            DockerError::Denied(_) => 403,
            DockerError::Unreachable(_) => 503,
            DockerError::UnknownEndpoint(_) | DockerError::Invalid(_) => 400,
        };
        Response::error(status, &error_text(&e))
    }
}
