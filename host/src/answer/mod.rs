//! What a plugin's answer becomes, above the capabilities: its own
//! response (size-checked, its writes kept before it leaves), a request
//! proxied to an engine (`proxy`), or an event or log stream (`stream`);
//! and the request body's policy (`body`), which decides the 413 and 408.

pub mod body;
pub mod proxy;
pub mod stream;

use http::{HeaderName, HeaderValue, StatusCode, header};
use tokio::sync::watch;

use crate::bindings::DockerTarget;
use crate::bindings::types::Subscription;
use crate::capability::Capability;
use crate::caps::{OpenStream, Opened};
use crate::invoke::{Kept, Writes};
use crate::plugins::Mounted;
use crate::store::StoreError;
use crate::web::{Response, error, full, reserved};

/// What became of a plugin's own response.
pub enum Responded {
    Sent(Response),
    /// Its writes conflicted with a concurrent call's at commit and were
    /// not kept; the call may run again.
    Conflict,
}

/// The plugin's own response: checked against its size limit, its writes
/// made durable before it leaves. With `rerun`, a conflict at commit is
/// [`Responded::Conflict`] rather than a 503.
pub async fn respond(
    plugin: &Mounted,
    response: crate::bindings::Response,
    writes: Writes,
    request_id: &str,
    rerun: bool,
) -> Responded {
    let name = &plugin.manifest.name;
    let limits = plugin.limits;
    if response.body.len() as u64 > limits.max_response_bytes {
        return Responded::Sent(error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!(
                "plugin `{name}` returned a {} byte body, over its limit of {} bytes",
                response.body.len(),
                limits.max_response_bytes
            ),
            request_id,
        ));
    }
    // Durable before the response leaves. A plugin that answered a
    // rolled-back call with its own failure (503 in its format) is
    // believed; a success is not (see `Writes::commit`).
    match writes.commit().await {
        Kept::Committed | Kept::Dropped => {}
        Kept::Failed(StoreError::Conflict(_)) if rerun => return Responded::Conflict,
        Kept::Failed(e) => return Responded::Sent(commit_failed(name, e, request_id)),
    }
    Responded::Sent(to_http(name, response, request_id))
}

/// Send plugin `plugin`'s client's request on to the engine `target`
/// names, `body` streaming (see [`body::Admitted::for_engine`]), once
/// the call's writes are kept.
pub async fn proxy_docker(
    plugin: &Mounted,
    target: DockerTarget,
    mut opened: Opened,
    writes: Writes,
    parts: &mut http::request::Parts,
    body: crate::caps::docker::Streamed,
    request_id: &str,
) -> Response {
    let name = &plugin.manifest.name;
    if let Some(r) = refused(plugin, Capability::Docker, "proxy to Docker", request_id) {
        return r;
    }
    if let Err(r) = commit(name, writes, request_id).await {
        return r;
    }
    opened.apply_proxy_headers(&mut parts.headers);
    let docker = &plugin.env.services.docker;
    proxy::forward(
        docker,
        name,
        target,
        parts,
        body,
        &plugin.metrics,
        request_id,
    )
    .await
}

/// An event stream (a topic of the plugin's, or the messages or log lines
/// its call opened) on the connection, once the call's writes are kept;
/// it ends when `closing` says the server is.
pub async fn subscribe(
    plugin: &Mounted,
    sub: Subscription,
    mut opened: Opened,
    writes: Writes,
    parts: &mut http::request::Parts,
    closing: watch::Receiver<bool>,
    request_id: &str,
) -> Response {
    let name = &plugin.manifest.name;
    let opened = opened.take(&sub.topic);
    let (needs, what) = match opened {
        Some(OpenStream::Logs(_)) => (Capability::Docker, "stream logs"),
        _ => (Capability::Events, "stream events"),
    };
    if let Some(r) = refused(plugin, needs, what, request_id) {
        return r;
    }
    if let Err(r) = commit(name, writes, request_id).await {
        return r;
    }
    let source = match opened {
        Some(OpenStream::Logs(spec)) => {
            match plugin
                .env
                .services
                .docker
                .log_lines(name, spec, &plugin.metrics)
                .await
            {
                Ok(lines) => stream::Source::Logs(lines),
                Err(message) => {
                    return error(StatusCode::SERVICE_UNAVAILABLE, &message, request_id);
                }
            }
        }
        Some(OpenStream::Messages(messages)) => stream::Source::Messages(messages.into()),
        None => stream::Source::Topic {
            sub: plugin
                .env
                .services
                .events
                .subscribe(name, &sub.topic, sub.replay, sub.after.unwrap_or(0))
                .await,
            topic: sub.topic,
        },
    };
    stream::respond(sub.framing, source, sub.headers, parts, closing, request_id)
}

/// The host's 403 for an outcome needing `cap` from a plugin without it.
fn refused(plugin: &Mounted, cap: Capability, doing: &str, request_id: &str) -> Option<Response> {
    if plugin.env.granted.contains(cap) {
        return None;
    }
    Some(error(
        StatusCode::FORBIDDEN,
        &format!(
            "plugin `{}` asked to {doing} without the `{cap}` capability",
            plugin.manifest.name
        ),
        request_id,
    ))
}

/// Make a call's writes durable; the error response if that fails.
async fn commit(plugin: &str, writes: Writes, request_id: &str) -> Result<(), Response> {
    match writes.commit().await {
        Kept::Committed | Kept::Dropped => Ok(()),
        Kept::Failed(e) => Err(commit_failed(plugin, e, request_id)),
    }
}

/// 503 with `Retry-After: 1`.
pub fn retry_later(message: &str, request_id: &str) -> Response {
    let mut r = error(StatusCode::SERVICE_UNAVAILABLE, message, request_id);
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

/// The answer to a call whose writes could not be committed.
fn commit_failed(plugin: &str, e: StoreError, request_id: &str) -> Response {
    match e {
        // The plugin claimed success for a call whose transaction was
        // rolled back: its writes are gone, so it must not look done.
        StoreError::Aborted(why) => {
            tracing::warn!(
                plugin,
                request_id,
                "answered a rolled-back call as a success: {why}"
            );
            retry_later(
                "the request met a concurrent one and was not done; retry it",
                request_id,
            )
        }
        StoreError::Conflict(why) => {
            tracing::info!(plugin, request_id, "writes conflicted at commit: {why}");
            retry_later(
                "the request met a concurrent one and was not done; retry it",
                request_id,
            )
        }
        StoreError::Unavailable(why) => {
            tracing::warn!(plugin, request_id, "commit failed: {why}");
            retry_later(
                "storage is unavailable; this request may not have been kept, retry it",
                request_id,
            )
        }
        e => {
            tracing::error!(plugin, request_id, error = %e, "commit failed");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "storage failed; nothing of this request was kept",
                request_id,
            )
        }
    }
}

fn to_http(plugin: &str, r: crate::bindings::Response, request_id: &str) -> Response {
    let Ok(status) = StatusCode::from_u16(r.status) else {
        return error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("plugin `{plugin}` returned an invalid status {}", r.status),
            request_id,
        );
    };
    let mut response = http::Response::new(full(r.body));
    *response.status_mut() = status;
    for (name, value) in r.headers {
        match (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) {
            (Ok(name), Ok(value)) if !reserved(&name) => {
                response.headers_mut().append(name, value);
            }
            (Ok(name), Ok(_)) => {
                tracing::debug!(plugin, header = %name, "dropped a header the host controls")
            }
            _ => tracing::warn!(plugin, header = %name, "dropped an invalid response header"),
        }
    }
    response
}
