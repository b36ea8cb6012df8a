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

/// The `101` that accepts a WebSocket handshake with the client's
/// `Sec-WebSocket-Key` (RFC 6455).
pub fn websocket_accepted(key: &[u8]) -> Response {
    let mut response = http::Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept_key(key)) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455).
fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::{Digest, Sha1};
    let mut sha = Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
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

#[cfg(test)]
mod tests {
    #[test]
    fn accept_key_matches_rfc6455() {
        assert_eq!(
            super::accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
