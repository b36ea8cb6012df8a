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
mod keys;
mod paging;
mod render;
mod services;
mod stacks;

pub use self::actions::*;
pub use self::containers::*;
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

fn failure(f: Failure) -> Response {
    match f {
        Failure::State(m) => fail(409, &m),
        Failure::Invalid(m) => fail(400, &m),
        Failure::Engine(e) => engine_error(e),
        Failure::Host(e) => Response::from(e),
    }
}
