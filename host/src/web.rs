//! HTTP pieces the server, dispatch, the admin routes and the streams
//! share: the body and response types, JSON answers, the headers the host
//! owns, and what a connection lends each of its requests.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

/// Error type of response bodies (streams may fail mid-way).
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response.
pub type Body = BoxBody<Bytes, BoxError>;
pub type Response = http::Response<Body>;

/// A complete body.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|e: Infallible| match e {})
        .boxed()
}

/// A JSON response.
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response {
    let mut response = http::Response::new(full(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The host's own JSON error: `{"error": ..., "request_id": ...}`.
pub fn error(status: StatusCode, message: &str, request_id: &str) -> Response {
    json(
        status,
        &serde_json::json!({ "error": message, "request_id": request_id }),
    )
}

/// Headers the host controls: framing and connection management.
pub fn reserved(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "content-length"
            | "transfer-encoding"
            | "connection"
            | "keep-alive"
            | "upgrade"
            | "te"
            | "trailer"
    )
}

/// A connection's admission, shared by its requests (a request extension):
/// a handler that takes over the connection (a websocket) keeps it, so the
/// connection counts against the server's caps for as long as it is open.
#[derive(Clone)]
pub struct ConnSlot(#[allow(dead_code)] Arc<dyn Send + Sync>);

impl ConnSlot {
    /// A slot holding `admission`, released when the last clone is dropped.
    pub fn new(admission: impl Send + Sync + 'static) -> ConnSlot {
        ConnSlot(Arc::new(admission))
    }
}

/// The TCP socket a request arrived on (a request extension), for
/// per-connection socket options (see `streams`). Valid while the request
/// is being handled: the connection, and so the descriptor, outlives each
/// of its requests.
#[derive(Clone, Copy, Debug)]
pub struct ConnSocket(pub std::os::fd::RawFd);
