//! The `proxy-docker` outcome served: the client's request forwarded to
//! the engine (`caps::docker`'s exchange), the engine's answer streamed
//! back as it comes, connections the engine upgrades (attach, exec)
//! relayed both ways until either side ends them, and WebSocket consoles
//! bridged to a hijacked exec or attach.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode, header};
use http_body_util::BodyExt;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt, split};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::bindings::DockerTarget;
use crate::caps::docker::{
    Answer, Docker, EngineStream, ProxyError, Slot, Streamed, WireBody, strip_hop_by_hop,
    unreachable_text,
};
use crate::metrics::PluginMetrics;
use crate::web::{BoxError, ConnSlot, Response, error, full, json};

/// How long an upgraded connection stays open for the client's last bytes
/// once the engine has ended its side.
const LINGER: Duration = Duration::from_secs(2);

/// The protocol a client asks to switch to (`Upgrade: tcp` with
/// `Connection: Upgrade`, as the docker CLI sends for attach and exec).
fn asked_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let connection_upgrade = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"upgrade"))
    });
    connection_upgrade
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

/// An error on the Docker proxy path, in the Engine API's own shape
/// (`{"message": ...}`) since the client speaks that API.
fn engine_shaped(status: StatusCode, message: &str, request_id: &str) -> Response {
    json(
        status,
        &serde_json::json!({ "message": message, "request_id": request_id }),
    )
}

/// Forward plugin `name`'s client's request (`parts` and `body`) to
/// the engine `target` names and stream the answer back; a failure
/// answers in the Engine API's shape. A connection the engine
/// upgrades is relayed both ways from a task of its own.
pub async fn forward(
    docker: &Docker,
    name: &str,
    target: DockerTarget,
    parts: &mut http::request::Parts,
    body: Streamed,
    metrics: &Arc<PluginMetrics>,
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
    // Only a connection hyper can hand over is offered to the engine
    // for upgrading (not HTTP/2's, not a test's in-process request).
    let upgrade =
        asked_upgrade(&parts.headers).filter(|_| parts.extensions.get::<OnUpgrade>().is_some());
    let path = target.split('?').next().unwrap_or_default();
    if let Some(asked) = Console::asked(parts, path, upgrade.as_ref()) {
        return console(
            docker, asked, name, &endpoint, &target, parts, metrics, request_id,
        )
        .await;
    }
    let proxied = async {
        let engine = docker.proxied_engine(name, &endpoint).await?;
        let slot = docker.slot(name, metrics)?;
        let answer = docker
            .exchange(&engine, parts, &target, upgrade.as_ref(), body)
            .await?;
        Ok((answer, slot))
    };
    let (answer, slot) = match proxied.await {
        Ok(proxied) => proxied,
        Err(e) => return failure(e, name, &endpoint, request_id),
    };
    if upgrade.is_some() && answer.status == StatusCode::SWITCHING_PROTOCOLS {
        return upgraded(answer, parts, slot, metrics);
    }
    let Answer {
        status,
        mut headers,
        mut body,
    } = answer;
    strip_hop_by_hop(&mut headers);
    let body = match body.whole() {
        // The whole answer is here: send it in one write, with its
        // length, and free the stream's slot now.
        Ok(Some(bytes)) => full(bytes),
        // The slot counts this stream until hyper drops the body:
        // when the engine ends it or the client leaves.
        Ok(None) => body
            .map_err(|e| Box::new(e) as BoxError)
            .map_frame(move |frame| {
                let _open = &slot;
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
    let mut response = http::Response::new(body);
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

/// A WebSocket console on an exec or a container, as Portainer 1.x's web
/// UI opened them (`/api/websocket/exec`, `/api/websocket/attach`).
struct Console {
    /// The client's `Sec-WebSocket-Key`.
    key: Vec<u8>,
    /// What the engine is sent: exec start's body, or none for attach.
    body: Bytes,
}

impl Console {
    /// A console, if the client asks for a WebSocket on `path` and that is
    /// `/exec/ID/start` or `/containers/ID/attach` (with an optional API
    /// version before it).
    fn asked(
        parts: &http::request::Parts,
        path: &str,
        upgrade: Option<&HeaderValue>,
    ) -> Option<Console> {
        let websocket = upgrade.is_some_and(|u| u.as_bytes().eq_ignore_ascii_case(b"websocket"));
        let key = parts.headers.get(header::SEC_WEBSOCKET_KEY)?;
        let bare = match path.strip_prefix("/v") {
            Some(rest) if rest.starts_with(|c: char| c.is_ascii_digit()) => {
                rest.find('/').map_or("/", |i| &rest[i..])
            }
            _ => path,
        };
        let segments: Vec<&str> = bare.split('/').collect();
        let body = match segments[..] {
            ["", "exec", id, "start"] if !id.is_empty() => {
                Bytes::from_static(br#"{"Tty":true,"Detach":false}"#)
            }
            ["", "containers", id, "attach"] if !id.is_empty() => Bytes::new(),
            _ => return None,
        };
        websocket.then(|| Console {
            key: key.as_bytes().to_vec(),
            body,
        })
    }
}

/// Start the console's hijacked request on the engine and bridge it
/// to the client's WebSocket: each message in goes to the process's
/// stdin, its output comes back as text messages.
#[allow(clippy::too_many_arguments)]
async fn console(
    docker: &Docker,
    console: Console,
    name: &str,
    endpoint: &str,
    target: &str,
    parts: &mut http::request::Parts,
    metrics: &Arc<PluginMetrics>,
    request_id: &str,
) -> Response {
    let (hijack, ()) = http::Request::post(target)
        .header(header::CONTENT_TYPE, "application/json")
        .body(())
        .expect("a request head from valid parts")
        .into_parts();
    let body = Streamed {
        first: console.body,
        rest: None,
        length: None,
        limit: u64::MAX,
        idle: docker.timeout(),
    };
    let tcp = HeaderValue::from_static("tcp");
    let started = async {
        let engine = docker.proxied_engine(name, endpoint).await?;
        let slot = docker.slot(name, metrics)?;
        let answer = docker
            .exchange(&engine, &hijack, target, Some(&tcp), body)
            .await?;
        Ok((answer, slot))
    };
    let (answer, slot) = match started.await {
        Ok(started) => started,
        Err(e) => return failure(e, name, endpoint, request_id),
    };
    if answer.status != StatusCode::SWITCHING_PROTOCOLS {
        let (status, body) = (answer.status, answer.body.collect().await);
        let body = body.map(|b| b.to_bytes()).unwrap_or_default();
        let message = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
        return engine_shaped(status, &message, request_id);
    }
    hand_over(answer.body, parts, slot, metrics, bridge);
    crate::web::websocket_accepted(&console.key)
}

/// Relay a WebSocket client and a hijacked engine stream until either
/// ends: messages in (text or binary) to the engine as bytes, the
/// engine's bytes out as text messages (UTF-8 sequences split between
/// reads are kept whole).
async fn bridge(client: OnUpgrade, engine: EngineStream, early: BytesMut) {
    let Ok(client) = client.await else { return };
    let config = WebSocketConfig::default()
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20));
    let mut ws =
        WebSocketStream::from_raw_socket(TokioIo::new(client), Role::Server, Some(config)).await;
    let (mut engine_in, mut engine_out) = split(engine);
    let mut pending = early.to_vec();
    let mut buf = vec![0u8; 8 << 10];
    loop {
        let text = whole_text(&mut pending);
        if !text.is_empty() && ws.send(Message::text(text)).await.is_err() {
            return;
        }
        tokio::select! {
            read = engine_in.read(&mut buf) => match read {
                Ok(0) | Err(_) => {
                    let rest = String::from_utf8_lossy(&pending).into_owned();
                    if !rest.is_empty() {
                        let _ = ws.send(Message::text(rest)).await;
                    }
                    finish(ws).await;
                    return;
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
            },
            message = ws.next() => {
                let bytes = match message {
                    Some(Ok(Message::Text(text))) => Bytes::copy_from_slice(text.as_bytes()),
                    Some(Ok(Message::Binary(bytes))) => bytes,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                        let _ = engine_out.shutdown().await;
                        return;
                    }
                    Some(Ok(_)) => continue,
                };
                if engine_out.write_all(&bytes).await.is_err() {
                    let _ = ws.close(None).await;
                    return;
                }
            }
        }
    }
}

/// End a console whose process has ended: a Close frame, then the write
/// side shut while whatever the client still sends is read and dropped,
/// for [`LINGER`] at most. A client that keeps sending after the close
/// (the docker-cloud CLI's exec without a terminal) then reads the end of
/// the stream rather than having its writes fail on a closed connection.
async fn finish(mut ws: WebSocketStream<TokioIo<Upgraded>>) {
    let _ = ws.close(None).await;
    let raw = ws.get_mut();
    let _ = raw.shutdown().await;
    let mut sink = [0u8; 4 << 10];
    let drain = async { while matches!(raw.read(&mut sink).await, Ok(n) if n > 0) {} };
    let _ = tokio::time::timeout(LINGER, drain).await;
}

/// The text of `bytes` up to any UTF-8 sequence cut off at its end, which
/// stays in `bytes` for the next read; invalid bytes become U+FFFD.
fn whole_text(bytes: &mut Vec<u8>) -> String {
    let cut = match std::str::from_utf8(bytes) {
        Ok(_) => bytes.len(),
        Err(e) if e.error_len().is_none() => e.valid_up_to(),
        Err(_) => bytes.len(),
    };
    let rest = bytes.split_off(cut);
    let text = String::from_utf8_lossy(bytes).into_owned();
    *bytes = rest;
    text
}

/// The engine's `101` to the client, and a task relaying the two
/// connections once hyper hands the client's over.
fn upgraded(
    answer: Answer,
    parts: &mut http::request::Parts,
    slot: Slot,
    metrics: &PluginMetrics,
) -> Response {
    let Answer { headers, body, .. } = answer;
    hand_over(body, parts, slot, metrics, relay);
    let mut response = http::Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    // The engine's head as it is: `Connection: Upgrade`, `Upgrade: tcp`
    // and the stream's content type.
    *response.headers_mut() = headers;
    response
}

/// Count an upgrade, and give `run` the engine's raw connection and the
/// client's (once hyper hands it over) on a task of its own, which keeps
/// the stream's slot and the connection's place under the server's caps
/// until it ends.
fn hand_over<Fut>(
    body: WireBody,
    parts: &mut http::request::Parts,
    slot: Slot,
    metrics: &PluginMetrics,
    run: impl FnOnce(OnUpgrade, EngineStream, BytesMut) -> Fut + Send + 'static,
) where
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    metrics
        .upgrades
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let client = parts.extensions.remove::<OnUpgrade>();
    let held = parts.extensions.remove::<ConnSlot>();
    if let (Some(client), Some((engine, early))) = (client, body.into_raw()) {
        tokio::spawn(async move {
            let _held = (slot, held);
            run(client, engine, early).await;
        });
    }
}

/// Copy bytes both ways until both sides are done. A side that ends its
/// writing (the CLI after stdin's end, for `exec -i`) has that passed on
/// as a half-close; once the engine ends its side, the client has
/// [`LINGER`] to end its own.
async fn relay(client: OnUpgrade, engine: EngineStream, early: BytesMut) {
    let Ok(client) = client.await else { return };
    let mut client = TokioIo::new(client);
    if !early.is_empty() && client.write_all(&early).await.is_err() {
        return;
    }
    let (mut client_in, mut client_out) = split(client);
    let (mut engine_in, mut engine_out) = split(engine);
    let up = async {
        let _ = tokio::io::copy(&mut client_in, &mut engine_out).await;
        let _ = engine_out.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut engine_in, &mut client_out).await;
        let _ = client_out.shutdown().await;
    };
    tokio::pin!(up, down);
    tokio::select! {
        _ = &mut down => {
            let _ = tokio::time::timeout(LINGER, up).await;
        }
        _ = &mut up => down.await,
    }
}

/// A proxied request's failure, in the Engine API's shape.
fn failure(e: ProxyError, name: &str, endpoint: &str, request_id: &str) -> Response {
    match e {
        ProxyError::Refused(m) => engine_shaped(StatusCode::FORBIDDEN, &m, request_id),
        ProxyError::Unknown(m) => engine_shaped(StatusCode::NOT_FOUND, &m, request_id),
        ProxyError::BadBody(m) => {
            let mut r = engine_shaped(StatusCode::BAD_REQUEST, &m, request_id);
            r.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
            r
        }
        ProxyError::TooLarge(limit) => super::body::too_large_for_engine(name, limit, request_id),
        ProxyError::Unreachable(m) => {
            tracing::warn!(plugin = %name, request_id, endpoint, "Docker engine unreachable: {m}");
            engine_shaped(
                StatusCode::SERVICE_UNAVAILABLE,
                &unreachable_text(endpoint, request_id),
                request_id,
            )
        }
        ProxyError::Busy => {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_keeps_utf8_sequences_cut_between_reads() {
        let mut pending = "a\u{e9}".as_bytes().to_vec();
        let tail = pending.pop().unwrap();
        assert_eq!(whole_text(&mut pending), "a");
        assert_eq!(pending.len(), 1, "the first byte of \u{e9} waits");
        pending.push(tail);
        assert_eq!(whole_text(&mut pending), "\u{e9}");
        let mut invalid = vec![b'x', 0xff, b'y'];
        assert_eq!(whole_text(&mut invalid), "x\u{fffd}y");
        assert!(invalid.is_empty());
    }

    #[test]
    fn consoles_are_websockets_on_exec_start_or_attach() {
        let ask = |path: &str, upgrade: &str| {
            let (parts, ()) = http::Request::get("/")
                .header(header::SEC_WEBSOCKET_KEY, "k")
                .body(())
                .unwrap()
                .into_parts();
            let upgrade = HeaderValue::from_str(upgrade).unwrap();
            Console::asked(&parts, path, Some(&upgrade)).map(|c| c.body)
        };
        assert_eq!(
            ask("/exec/ab12/start", "websocket").as_deref(),
            Some(&br#"{"Tty":true,"Detach":false}"#[..])
        );
        assert_eq!(
            ask("/v1.41/containers/c1/attach", "WebSocket").as_deref(),
            Some(&b""[..])
        );
        assert_eq!(
            ask("/exec/ab12/start", "tcp"),
            None,
            "the CLI's upgrade is relayed"
        );
        assert_eq!(ask("/containers/c1/logs", "websocket"), None);
        assert_eq!(ask("/exec//start", "websocket"), None);
    }
}
