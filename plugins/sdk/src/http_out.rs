//! Outbound HTTP(S) through the host, under the operator's allow-list.

use serde::Serialize;

use crate::host::http_out as raw;

pub use raw::{HttpError, Incoming, Outgoing};

/// Send a request and wait for the whole answer.
pub fn send(request: &Outgoing) -> Result<Incoming, HttpError> {
    raw::send(request)
}

/// Whether a request to `url` would be allowed (`Invalid`: malformed or
/// not HTTP; `Refused`: outside the operator's allow-list), without
/// sending anything. Check an address a client gives before storing it.
pub fn check(url: &str) -> Result<(), HttpError> {
    raw::check(url)
}

/// POST `value` as JSON to `url`; `timeout_ms` 0 uses the operator's default.
pub fn post_json<T: Serialize + ?Sized>(
    url: &str,
    value: &T,
    timeout_ms: u32,
) -> Result<Incoming, HttpError> {
    let body = serde_json::to_vec(value)
        .map_err(|e| HttpError::Invalid(format!("cannot serialise the body: {e}")))?;
    raw::send(&Outgoing {
        method: "POST".into(),
        url: url.into(),
        headers: vec![("content-type".into(), "application/json".into())],
        body,
        timeout_ms,
    })
}

/// A one-line description of an [`HttpError`].
pub fn error_text(e: &HttpError) -> String {
    match e {
        HttpError::Denied(m) => format!("denied: {m}"),
        HttpError::Invalid(m) => format!("invalid: {m}"),
        HttpError::Refused(m) => format!("refused: {m}"),
        HttpError::Unreachable(m) => format!("unreachable: {m}"),
        HttpError::Timeout => "timed out".to_string(),
        HttpError::TooLarge(m) => format!("too large: {m}"),
    }
}
