//! A request body: the policy of the route it goes to (read whole for the
//! plugin, or past that streamed on to an engine), reading it within that
//! policy, the server's body timeout and its memory budget, and the one
//! 413 and 408 a body can get.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode, header};
use http_body::Body as _;
use http_body_util::BodyExt;

use crate::budget::Reserved;
use crate::capability::Capability;
use crate::caps::docker::Streamed;
use crate::plugins::Mounted;
use crate::web::{Body, Response, error, full, json};

/// What a route does with a request body. Decided once, here, for every
/// route of a plugin: one granted `docker` may send a body on to an
/// engine (`proxy-docker`), so a body larger than it reads is withheld
/// from it for the engine rather than refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Policy {
    /// Read whole for the plugin, at most `max` bytes.
    Buffered { max: u64 },
    /// Read whole for the plugin up to `read` bytes; a larger one, up to
    /// `max`, is withheld from the plugin and may be streamed to an engine.
    ForEngine { read: u64, max: u64 },
}

impl Policy {
    /// The policy of `plugin`'s routes.
    pub fn of(plugin: &Mounted) -> Policy {
        let limits = &plugin.limits;
        match plugin.env.granted.contains(Capability::Docker) {
            true => Policy::ForEngine {
                read: limits.max_body_bytes,
                max: limits.max_proxy_body_bytes,
            },
            false => Policy::Buffered {
                max: limits.max_body_bytes,
            },
        }
    }

    /// The most the plugin reads.
    fn read(self) -> u64 {
        match self {
            Policy::Buffered { max } => max,
            Policy::ForEngine { read, .. } => read,
        }
    }

    /// The most the route takes at all.
    fn max(self) -> u64 {
        match self {
            Policy::Buffered { max } | Policy::ForEngine { max, .. } => max,
        }
    }
}

/// A request's body as admitted.
pub enum Admitted {
    /// All of it, for the plugin.
    Whole(Bytes),
    /// Larger than the plugin reads, kept for an engine.
    Withheld(Withheld),
}

/// A body larger than the plugin reads, kept for the Docker engine: what
/// was read of it, the rest, and its declared length.
pub struct Withheld {
    first: Bytes,
    rest: Body,
    length: Option<u64>,
}

impl Admitted {
    /// The bytes the plugin reads, shared: none of a withheld body.
    pub fn bytes(&self) -> Bytes {
        match self {
            Admitted::Whole(bytes) => bytes.clone(),
            Admitted::Withheld(_) => Bytes::new(),
        }
    }

    /// The bytes the plugin reads: none of a withheld body.
    pub fn for_plugin(&self) -> &[u8] {
        match self {
            Admitted::Whole(bytes) => bytes,
            Admitted::Withheld(_) => &[],
        }
    }

    pub fn withheld(&self) -> bool {
        matches!(self, Admitted::Withheld(_))
    }

    /// The body sent on to an engine, streaming what was not read yet.
    pub fn for_engine(self, policy: Policy, idle: Duration) -> Streamed {
        let (first, rest, length) = match self {
            Admitted::Whole(bytes) => (bytes, None, None),
            Admitted::Withheld(w) => (w.first, Some(w.rest), w.length),
        };
        Streamed {
            first,
            rest,
            length,
            limit: policy.max(),
            idle,
        }
    }

    /// A withheld body the plugin's answer did not send to an engine: the
    /// 413 the client would have had, once what it sends is drained. None
    /// for a whole body.
    pub async fn refuse_unsent(&mut self, plugin: &Mounted, request_id: &str) -> Option<Response> {
        let Admitted::Withheld(withheld) = self else {
            return None;
        };
        drain(&mut withheld.rest).await;
        Some(too_large(plugin, plugin.limits.max_body_bytes, request_id))
    }
}

/// Read `body` by `policy` (the client declared `declared` bytes) within
/// `idle` from the server's body timeout, holding what it takes against
/// `memory`: or the host's 413, 408, 400, or 503 when the budget has no
/// room.
pub async fn admit(
    policy: Policy,
    body: &mut Body,
    declared: Option<u64>,
    memory: &mut Reserved,
    idle: Duration,
    plugin: &Mounted,
    request_id: &str,
) -> Result<Admitted, Response> {
    let may_withhold =
        matches!(policy, Policy::ForEngine { max, .. } if declared.is_none_or(|n| n <= max));
    let read = if declared.is_some_and(|n| n > policy.read()) {
        Err(BodyError::TooLarge(Bytes::new()))
    } else if body.is_end_stream() {
        Ok(Bytes::new())
    } else {
        // A client that sends its body slower than this holds a plugin
        // slot's worth of memory for nothing.
        let max = policy.read() as usize;
        tokio::time::timeout(idle, read_body(body, max, declared, memory))
            .await
            .unwrap_or(Err(BodyError::TimedOut(idle)))
    };
    match read {
        Ok(bytes) => Ok(Admitted::Whole(bytes)),
        Err(BodyError::TooLarge(first)) if may_withhold => {
            let rest = std::mem::replace(body, full(Bytes::new()));
            Ok(Admitted::Withheld(Withheld {
                first,
                rest,
                length: declared,
            }))
        }
        Err(BodyError::TooLarge(_)) => {
            drain(body).await;
            Err(too_large(plugin, policy.max(), request_id))
        }
        Err(BodyError::TimedOut(within)) => Err(timed_out(within, request_id)),
        Err(BodyError::NoMemory) => {
            plugin.metrics.refused.fetch_add(1, Relaxed);
            Err(closing(super::retry_later(
                "the server holds as many request bodies as it may keep in memory ([server] max_body_memory_mib); retry later",
                request_id,
            )))
        }
        Err(BodyError::Read(e)) => Err(error(
            StatusCode::BAD_REQUEST,
            &format!("cannot read the request body: {e}"),
            request_id,
        )),
    }
}

/// The host's 413 for a body over `limit`.
fn too_large(plugin: &Mounted, limit: u64, request_id: &str) -> Response {
    plugin.metrics.refused.fetch_add(1, Relaxed);
    closing(error(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("request body is larger than this route's limit of {limit} bytes"),
        request_id,
    ))
}

/// The 413 for a body found over `limit` while it streamed to an engine,
/// in the Engine API's shape (`{"message": ...}`), as its client expects.
pub fn too_large_for_engine(plugin: &str, limit: u64, request_id: &str) -> Response {
    let message = format!(
        "request body is larger than plugin `{plugin}`'s limit for Docker of {limit} bytes"
    );
    closing(json(
        StatusCode::PAYLOAD_TOO_LARGE,
        &serde_json::json!({ "message": message, "request_id": request_id }),
    ))
}

/// The host's 408 for a body that did not arrive `within` the timeout.
fn timed_out(within: Duration, request_id: &str) -> Response {
    closing(error(
        StatusCode::REQUEST_TIMEOUT,
        &format!(
            "the request body did not arrive within {} ms",
            within.as_millis()
        ),
        request_id,
    ))
}

/// `r` with `Connection: close`: the rest of the body was not read, so
/// the connection is not reused.
fn closing(mut r: Response) -> Response {
    r.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

enum BodyError {
    /// Over the limit: what was read of it.
    TooLarge(Bytes),
    TimedOut(std::time::Duration),
    /// The body budget has no room for it.
    NoMemory,
    Read(String),
}

/// Read the whole body if it is at most `max` bytes, holding what the
/// buffer takes against the body budget (`memory`) before it takes it.
/// A declared length sizes the buffer once; otherwise it doubles as it
/// fills, and the budget is charged for its capacity, not just its length.
async fn read_body(
    body: &mut Body,
    max: usize,
    declared: Option<u64>,
    memory: &mut Reserved,
) -> Result<Bytes, BodyError> {
    let mut buf = bytes::BytesMut::new();
    if let Some(n) = declared {
        let n = (n as usize).min(max);
        if !memory.grow(n as u64) {
            return Err(BodyError::NoMemory);
        }
        buf.reserve(n);
    }
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
        if let Some(data) = frame.data_ref() {
            let want = buf.len() + data.len();
            if want <= max && want > buf.capacity() {
                let capacity = want.max(2 * buf.capacity()).min(max);
                if !memory.grow((capacity as u64).saturating_sub(memory.bytes())) {
                    return Err(BodyError::NoMemory);
                }
                buf.reserve(capacity - buf.len());
            }
            // Past `max` by at most this frame: what was read goes on to
            // an engine when the body is withheld.
            buf.extend_from_slice(data);
            if buf.len() > max {
                return Err(BodyError::TooLarge(buf.freeze()));
            }
        }
    }
    Ok(buf.freeze())
}

/// Most bytes, and longest time, spent reading a refused body so the client
/// can finish sending and read the 413 instead of a reset connection.
const DRAIN_BYTES: usize = 8 << 20;
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(2);

async fn drain(body: &mut Body) {
    let read = async {
        let mut seen = 0;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > DRAIN_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_TIME, read).await;
}
