//! The Portainer 1.x API (>= 1.18) under `/api`: admin init, JWT auth,
//! endpoints with the Docker proxy, stacks on the shared engine, users
//! and teams. Errors are `{"err", "message", "details"}` so readers of
//! either key work.

use base64::Engine as _;
use berth_sdk::attempts::{self, Limits};
use berth_sdk::{HttpResult, Request, Response, config, crypto, docker, kv, percent_encode, time};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{self, Failure, Op, PortainerStack, Stack};
use crate::stackfile;

mod endpoints;
mod stacks;
mod teams;
mod users;

pub use self::endpoints::*;
pub use self::stacks::*;
pub use self::teams::*;
pub use self::users::*;

const JWT_KEY: &str = "portainer-jwt";
const ADMIN: u8 = 1;

pub fn fail(status: u16, err: &str, details: &str) -> Response {
    Response::json(
        status,
        &json!({ "err": err, "message": err, "details": details }),
    )
}

/// A JSON request body, or 400.
fn payload<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(req.body())
        .map_err(|e| fail(400, "Invalid request payload", &e.to_string()))
}

/// 404 for `what` ("a user", "an endpoint", ...) under a route's id.
fn not_found(what: &str) -> Response {
    fail(
        404,
        &format!("Unable to find {what} with the specified identifier"),
        "",
    )
}

/// Portainer's body for what the SDK answers: a host failure, bad input.
pub fn failure(status: u16, text: &str) -> Response {
    let err = if status == 400 {
        "Invalid request"
    } else {
        "Storage failure"
    };
    fail(status, err, text)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
