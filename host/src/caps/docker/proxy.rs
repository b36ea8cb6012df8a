//! The raw forwarding behind the `proxy-docker` outcome.

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::OwnedSemaphorePermit;

use super::{Docker, WireBody, error_text, unreachable_text};
use crate::bindings::DockerTarget;
use crate::bindings::docker::DockerError;
use crate::web::{BoxError, Response, error, full, json};

/// Why a proxied request got no answer from the engine.
#[derive(Debug)]
pub(super) enum ProxyError {
    /// The plugin may not use Docker or this endpoint.
    Refused(String),
    /// No endpoint of that name.
    Unknown(String),
    /// The engine did not answer.
    Unreachable(String),
    /// Too many proxied streams are open.
    Busy,
}

impl Docker {
    /// Forward a request (`target`: path and query) to `endpoint` and
    /// return the engine's streaming answer. The returned permit counts the
    /// stream until it is dropped.
    async fn proxy(
        &self,
        plugin: &str,
        endpoint: &str,
        target: &str,
        request: http::Request<Bytes>,
    ) -> Result<(http::Response<WireBody>, OwnedSemaphorePermit), ProxyError> {
        let engine = self.engine(plugin, endpoint).map_err(|e| match e {
            DockerError::Unreachable(m) => ProxyError::Unreachable(m),
            DockerError::UnknownEndpoint(m) => ProxyError::Unknown(m),
            other => ProxyError::Refused(error_text(&other)),
        })?;
        let permit = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| ProxyError::Busy)?;
        let (mut parts, body) = request.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(http::header::AUTHORIZATION);
        parts.headers.remove(http::header::COOKIE);
        let send = engine
            .wire
            .send(&parts.method, target, &parts.headers, &body);
        let answer = tokio::time::timeout(self.timeout(), send)
            .await
            .map_err(|_| {
                ProxyError::Unreachable(format!(
                    "{} did not answer within {} ms",
                    engine.spec.address, self.config.timeout_ms
                ))
            })?
            .map_err(|e| ProxyError::Unreachable(format!("{}: {e}", engine.spec.address)))?;
        let mut response = http::Response::new(answer.body);
        *response.status_mut() = answer.status;
        *response.headers_mut() = answer.headers;
        strip_hop_by_hop(response.headers_mut());
        Ok((response, permit))
    }
}

/// Remove the headers that belong to one connection, not the message.
pub(super) fn strip_hop_by_hop(headers: &mut http::HeaderMap) {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    ] {
        headers.remove(name);
    }
}

/// An error on the Docker proxy path, in the Engine API's own shape
/// (`{"message": ...}`) since the client speaks that API.
fn engine_shaped(status: StatusCode, message: &str, request_id: &str) -> Response {
    json(
        status,
        &serde_json::json!({ "message": message, "request_id": request_id }),
    )
}

impl Docker {
    /// Forward plugin `name`'s client's request (`parts` and `body`) to
    /// the engine `target` names and stream the answer back; a failure
    /// answers in the Engine API's shape.
    pub async fn forward(
        &self,
        name: &str,
        target: DockerTarget,
        parts: &http::request::Parts,
        body: Bytes,
        request_id: &str,
    ) -> Response {
        let DockerTarget {
            endpoint,
            path,
            query,
        } = target;
        let bad_path = path.is_empty()
            || !path.starts_with('/')
            || path.split('/').any(|s| s == "..")
            || path.contains(['?', '#', ' ']);
        let query = query
            .or_else(|| parts.uri.query().map(str::to_string))
            .filter(|q| !q.is_empty());
        let target = match query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        if bad_path || target.parse::<http::uri::PathAndQuery>().is_err() {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("plugin `{name}` gave an invalid Docker path `{target}`"),
                request_id,
            );
        }
        let mut request = http::Request::new(body);
        *request.method_mut() = parts.method.clone();
        *request.headers_mut() = parts.headers.clone();
        match self.proxy(name, &endpoint, &target, request).await {
            Ok((answer, permit)) => {
                let (parts, mut body) = answer.into_parts();
                let body = match body.whole() {
                    // The whole answer is here: send it in one write, with its
                    // length, and free the stream's permit now.
                    Ok(Some(bytes)) => full(bytes),
                    // The permit counts this stream until hyper drops the body:
                    // when the engine ends it or the client leaves.
                    Ok(None) => body
                        .map_err(|e| Box::new(e) as BoxError)
                        .map_frame(move |frame| {
                            let _open = &permit;
                            frame
                        })
                        .boxed(),
                    Err(e) => {
                        return engine_shaped(
                            StatusCode::BAD_GATEWAY,
                            &format!("the engine's answer broke off: {e}"),
                            request_id,
                        );
                    }
                };
                http::Response::from_parts(parts, body)
            }
            Err(ProxyError::Refused(m)) => engine_shaped(StatusCode::FORBIDDEN, &m, request_id),
            Err(ProxyError::Unknown(m)) => engine_shaped(StatusCode::NOT_FOUND, &m, request_id),
            Err(ProxyError::Unreachable(m)) => {
                tracing::warn!(plugin = %name, request_id, endpoint, "Docker engine unreachable: {m}");
                engine_shaped(
                    StatusCode::SERVICE_UNAVAILABLE,
                    &unreachable_text(&endpoint, request_id),
                    request_id,
                )
            }
            Err(ProxyError::Busy) => {
                let mut r = engine_shaped(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "too many proxied Docker streams are open; retry later",
                    request_id,
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                r
            }
        }
    }
}
