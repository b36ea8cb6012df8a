//! The Docker Cloud REST and stream API: `/api/app/v1/` and
//! `/api/audit/v1/`, Basic auth with `username:apikey`.

use base64::Engine as _;
use berth_sdk::docker::{self, Container};
use berth_sdk::{Framing, HttpResult, Request, Response, docker::DockerError, kv};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::engine;
use crate::model::{
    self, ACTION_URI, CONTAINER_URI, Failure, Op, SERVICE_URI, STACK_URI, Service, Stack,
};
use crate::stackfile::{self, Def};

mod actions;
mod containers;
mod infra;
mod keys;
mod paging;
mod render;
mod services;
mod stacks;

pub use self::actions::*;
pub use self::containers::*;
pub use self::infra::*;
pub use self::keys::*;
use self::paging::*;
use self::render::*;
pub use self::services::*;
pub use self::stacks::*;

/// The surface's error body.
pub fn fail(status: u16, text: &str) -> Response {
    Response::json(status, &json!({ "error": text }))
}

fn engine_error(e: DockerError) -> Response {
    match &e {
        DockerError::Unreachable(m) => fail(503, &format!("Docker engine unreachable: {m}")),
        DockerError::Engine(err) if err.status == 404 => fail(404, &err.message),
        DockerError::Engine(err) if err.status == 409 => fail(409, &err.message),
        DockerError::Engine(err) if err.status == 400 => fail(400, &err.message),
        _ => fail(500, &docker::error_text(&e)),
    }
}

/// How a stream route answers: WebSocket messages to a WebSocket client
/// (as Docker Cloud's stream API did), else newline-delimited JSON.
fn framing(req: &Request) -> Framing {
    let websocket = req
        .header("upgrade")
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    match websocket {
        true => Framing::Websocket,
        false => Framing::Ndjson,
    }
}

/// Logs of `sources` as the stream API sent them, each line a message
/// `{"type": "log", "log", "streamType", "timestamp"}` plus the source's
/// own members: the last `tail` lines (default 300), then with
/// `follow=true` live ones.
fn logs(req: &Request, endpoint: &str, sources: &[docker::LogSource]) -> HttpResult {
    let tail = req.query_as::<u32>("tail")?.unwrap_or(300);
    let follow = match req.query("follow").map(str::to_ascii_lowercase).as_deref() {
        None | Some("false" | "0" | "") => false,
        Some("true" | "1") => true,
        Some(other) => {
            return Err(fail(
                400,
                &format!("follow must be true or false, not `{other}`"),
            ));
        }
    };
    let topic =
        docker::open_log_stream(endpoint, sources, Some(tail), follow).map_err(engine_error)?;
    Ok(Response::subscribe(&topic, framing(req)))
}

fn failure(f: Failure) -> Response {
    match f {
        Failure::State(m) => fail(409, &m),
        Failure::Invalid(m) => fail(400, &m),
        Failure::Engine(e) => engine_error(e),
        Failure::Host(e) => Response::from(e),
    }
}
