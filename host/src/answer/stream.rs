//! The `subscribe` outcome: the host keeps the client's connection and
//! writes a plugin's events on one topic (or the lines of a log stream
//! the call opened) to it, as newline-delimited
//! payloads, Server-Sent Events or WebSocket text messages, until the
//! topic closes, the client leaves, the client falls too far behind (it is
//! then sent a closing message and dropped) or the host shuts down.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderName, HeaderValue, StatusCode, header};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use tokio::sync::{broadcast, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use crate::bindings::Framing;
use crate::caps::docker::LogLines;
use crate::caps::events::{Event, Subscription};
use crate::web::{BoxError, ConnSlot, ConnSocket, Response, error};

/// Why a stream ended other than by its topic closing.
enum End {
    /// The client fell more than the lag limit behind.
    TooSlow,
    /// The host is shutting down.
    Shutdown,
}

impl End {
    fn reason(&self) -> &'static str {
        match self {
            End::TooSlow => "subscriber too slow: events were dropped",
            End::Shutdown => "server shutting down",
        }
    }
}

/// What comes next on a subscription.
enum Next {
    Event(Event),
    End(End),
}

/// What a stream sends: a topic's events (the replayed ones, then live
/// ones), or the lines of a log stream the call opened.
pub enum Source {
    Topic {
        topic: String,
        sub: Subscription,
    },
    Logs(LogLines),
    /// Messages known in full (`events.open-messages`).
    Messages(VecDeque<Bytes>),
}

/// A stream's source, read until it ends or the host shuts down.
struct Feed {
    source: Source,
    closing: watch::Receiver<bool>,
    /// Messages of a log stream so far, its events' sequence numbers.
    sent: u64,
    done: bool,
}

impl Feed {
    fn new(source: Source, closing: watch::Receiver<bool>) -> Feed {
        Feed {
            source,
            closing,
            sent: 0,
            done: false,
        }
    }

    /// A log stream's or an opened stream's message as the next event.
    fn numbered(&mut self, payload: Bytes) -> Next {
        self.sent += 1;
        Next::Event(Event {
            seq: self.sent,
            topic: Arc::from(""),
            payload,
            closing: false,
        })
    }

    /// The next event, or why the stream ends; None once it has ended.
    async fn next(&mut self) -> Option<Next> {
        if self.done {
            return None;
        }
        loop {
            let received = match &mut self.source {
                Source::Topic { sub, .. } => match sub.replay.pop_front() {
                    Some(event) => Ok(event),
                    None => tokio::select! {
                        received = sub.live.recv() => received,
                        _ = wait_closing(&mut self.closing) => {
                            self.done = true;
                            return Some(Next::End(End::Shutdown));
                        }
                    },
                },
                Source::Logs(lines) => tokio::select! {
                    line = lines.next() => return line.map(|l| self.numbered(l)),
                    _ = wait_closing(&mut self.closing) => {
                        self.done = true;
                        return Some(Next::End(End::Shutdown));
                    }
                },
                Source::Messages(messages) => {
                    return messages.pop_front().map(|m| self.numbered(m));
                }
            };
            let event = match received {
                Ok(event) => event,
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    self.done = true;
                    return Some(Next::End(End::TooSlow));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            };
            if let Source::Topic { topic, sub } = &self.source
                && (*event.topic != **topic || event.seq <= sub.after)
            {
                continue;
            }
            self.done = event.closing;
            return Some(Next::Event(event));
        }
    }
}

/// Resolves once the host starts shutting down.
async fn wait_closing(closing: &mut watch::Receiver<bool>) {
    if closing.wait_for(|c| *c).await.is_err() {
        // The sender is gone: the host is going away too.
    }
}

/// The streaming response for a `subscribe` outcome.
pub fn respond(
    framing: Framing,
    source: Source,
    headers: Vec<(String, String)>,
    parts: &mut http::request::Parts,
    closing: watch::Receiver<bool>,
    request_id: &str,
) -> Response {
    let feed = Feed::new(source, closing);
    if let Some(socket) = parts.extensions.get::<ConnSocket>() {
        bound_send_buffer(*socket);
    }
    match framing {
        Framing::Ndjson => chunked(feed, "application/x-ndjson", ndjson, headers),
        Framing::Sse => chunked(feed, "text/event-stream", sse, headers),
        Framing::Websocket => websocket(feed, parts, request_id),
    }
}

/// Kernel send buffer of a streaming connection (Linux doubles it). Left
/// to autotuning, a client that stops reading can park megabytes in the
/// kernel before the host notices; bounded, it falls [`LAG_LIMIT`] events
/// behind soon after, and is dropped. (On HTTP/2 this bounds the whole
/// connection, which a stream shares with its other requests.)
///
/// [`LAG_LIMIT`]: crate::caps::events::LAG_LIMIT
const STREAM_SEND_BUFFER: libc::c_int = 64 << 10;

fn bound_send_buffer(socket: ConnSocket) {
    // SAFETY: the descriptor is the open connection this request arrived
    // on (see `ConnSocket`); setsockopt reads `size` only.
    let size = STREAM_SEND_BUFFER;
    let rc = unsafe {
        libc::setsockopt(
            socket.0,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        tracing::debug!(error = %std::io::Error::last_os_error(), "SO_SNDBUF on a stream");
    }
}

fn ndjson(next: &Next) -> Bytes {
    match next {
        Next::Event(e) => {
            let mut line = Vec::with_capacity(e.payload.len() + 1);
            line.extend(e.payload.iter().filter(|b| **b != b'\n'));
            line.push(b'\n');
            line.into()
        }
        Next::End(end) => {
            let line = serde_json::json!({ "berth": "closed", "reason": end.reason() });
            format!("{line}\n").into()
        }
    }
}

fn sse(next: &Next) -> Bytes {
    match next {
        Next::Event(e) => {
            let text = String::from_utf8_lossy(&e.payload);
            let mut out = format!("id: {}\n", e.seq);
            for line in text.split('\n') {
                out.push_str("data: ");
                out.push_str(line.trim_end_matches('\r'));
                out.push('\n');
            }
            out.push('\n');
            out.into()
        }
        Next::End(end) => format!("event: close\ndata: {}\n\n", end.reason()).into(),
    }
}

fn chunked(
    feed: Feed,
    content_type: &'static str,
    frame: fn(&Next) -> Bytes,
    headers: Vec<(String, String)>,
) -> Response {
    let stream = futures_util::stream::unfold(feed, move |mut feed| async move {
        let next = feed.next().await?;
        Some((Ok::<_, BoxError>(Frame::data(frame(&next))), feed))
    });
    let mut response = http::Response::new(BodyExt::boxed(StreamBody::new(stream)));
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Tell buffering proxies (nginx) to pass events through at once.
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    for (name, value) in headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::try_from(name.as_str()),
            HeaderValue::try_from(value.as_str()),
        ) && !crate::web::reserved(&name)
        {
            response.headers_mut().append(name, value);
        }
    }
    response
}

fn websocket(mut feed: Feed, parts: &mut http::request::Parts, request_id: &str) -> Response {
    let h = &parts.headers;
    let has = |name: header::HeaderName, token: &str| {
        h.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| k.as_bytes().to_vec());
    let upgrade = parts.extensions.remove::<hyper::upgrade::OnUpgrade>();
    let (Some(key), Some(upgrade), true, true) = (
        key,
        upgrade,
        has(header::UPGRADE, "websocket"),
        has(header::CONNECTION, "upgrade"),
    ) else {
        let mut r = error(
            StatusCode::UPGRADE_REQUIRED,
            "this route streams over WebSocket: send a WebSocket upgrade request",
            request_id,
        );
        r.headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return r;
    };
    // The upgraded stream counts against the connection caps until it ends.
    let slot = parts.extensions.remove::<ConnSlot>();
    tokio::spawn(async move {
        let _slot = slot;
        let Ok(upgraded) = upgrade.await else { return };
        // Clients only send control frames and the odd small message: a
        // small read buffer and message cap keep an idle subscriber cheap.
        let config = WebSocketConfig::default()
            .read_buffer_size(4 << 10)
            .write_buffer_size(0)
            .max_message_size(Some(64 << 10))
            .max_frame_size(Some(64 << 10));
        let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(config),
        )
        .await;
        loop {
            tokio::select! {
                next = feed.next() => match next {
                    Some(Next::Event(event)) => {
                        let text = String::from_utf8_lossy(&event.payload).into_owned();
                        if ws.send(Message::text(text)).await.is_err() {
                            return;
                        }
                    }
                    Some(Next::End(end)) => {
                        let code = match end {
                            End::TooSlow => CloseCode::Policy,
                            End::Shutdown => CloseCode::Away,
                        };
                        let _ = ws
                            .close(Some(CloseFrame { code, reason: end.reason().into() }))
                            .await;
                        return;
                    }
                    None => {
                        let _ = ws.close(None).await;
                        return;
                    }
                },
                incoming = ws.next() => match incoming {
                    // Pings are answered by tungstenite; other messages
                    // from the client are ignored.
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => {}
                },
            }
        }
    });
    crate::web::websocket_accepted(&key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames() {
        let event = Next::Event(Event {
            seq: 7,
            topic: "t".into(),
            payload: Bytes::from_static(b"{\"a\":1}\nsecond"),
            closing: false,
        });
        assert_eq!(&ndjson(&event)[..], b"{\"a\":1}second\n");
        assert_eq!(
            &sse(&event)[..],
            b"id: 7\ndata: {\"a\":1}\ndata: second\n\n"
        );
        assert_eq!(
            &sse(&Next::End(End::TooSlow))[..],
            b"event: close\ndata: subscriber too slow: events were dropped\n\n"
        );
    }

    /// A subscriber that replays after N never gets N or before, even live
    /// (a fleet's event held when the replay was taken arrives live).
    #[tokio::test]
    async fn nothing_at_or_before_after_arrives_live() {
        let (sender, live) = broadcast::channel(8);
        let event = |seq: u64| Event {
            seq,
            topic: "t".into(),
            payload: Bytes::new(),
            closing: seq == 4,
        };
        let sub = Subscription {
            replay: VecDeque::from([event(3)]),
            live,
            after: 2,
        };
        for seq in [1, 2, 4] {
            sender.send(event(seq)).unwrap();
        }
        let source = Source::Topic {
            topic: "t".into(),
            sub,
        };
        let (_open, closing) = watch::channel(false);
        let mut feed = Feed::new(source, closing);
        let mut seen = Vec::new();
        while let Some(Next::Event(e)) = feed.next().await {
            seen.push(e.seq);
        }
        assert_eq!(seen, [3, 4]);
    }
}
