//! The Portainer 1.x API (>= 1.18) under `/api`: admin init, JWT auth,
//! endpoints with the Docker proxy, stacks on the shared engine, users
//! and teams. Errors are `{"err", "message", "details"}` so readers of
//! either key work.

use base64::Engine as _;
use berth_sdk::attempts::{self, Limits};
use berth_sdk::{
    HttpResult, Request, Response, config, crypto, docker, gojson, kv, percent_encode, time,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::{self, Failure, Op, PortainerStack, Stack};
use crate::stackfile;

mod access;
mod endpoints;
mod groups;
mod host_jobs;
mod registries;
mod resources;
mod settings;
mod stacks;
mod teams;
mod templates;
mod tokens;
mod users;
mod webhooks;

use self::access::*;
pub use self::endpoints::*;
pub use self::groups::*;
pub use self::host_jobs::*;
pub use self::registries::*;
pub use self::resources::*;
pub use self::settings::*;
pub use self::stacks::*;
pub use self::teams::*;
pub use self::templates::*;
pub use self::tokens::*;
pub use self::users::*;
pub use self::webhooks::*;

const JWT_KEY: &str = "portainer-jwt";
const ADMIN: u8 = 1;

pub fn fail(status: u16, err: &str, details: &str) -> Response {
    Response::json(
        status,
        &json!({ "err": err, "message": err, "details": details }),
    )
}

/// A request body as Portainer's handlers took it: read by Go's
/// `encoding/json` rules (keys in any case, unknown keys ignored), then
/// checked by the payload's 1.x `Validate`. Either failing is 400
/// `Invalid request payload` with the reason in `details`.
fn payload<T: Payload>(req: &Request) -> Result<T, Response> {
    let invalid = |details: &str| fail(400, "Invalid request payload", details);
    let body = req.body();
    if body.iter().all(u8::is_ascii_whitespace) {
        // What Go's decoder says of an empty body.
        return Err(invalid("EOF"));
    }
    let payload: T = gojson::from_slice(body).map_err(|e| invalid(&e.to_string()))?;
    payload.validate().map_err(invalid)?;
    Ok(payload)
}

/// A Portainer request body and its handler's 1.x validation.
trait Payload: serde::de::DeserializeOwned {
    fn validate(&self) -> Result<(), &'static str> {
        Ok(())
    }
}

/// A JSON object of any shape (bodies read field by field).
impl Payload for Value {}

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

/// The next id of the records under `p/{kind}/`: dense and from 1, as
/// Portainer's BoltDB sequences give them (its first admin is user 1,
/// whoever raced to be it). Installs from before kept these ids in the
/// host's sequence `legacy`; the counter starts after it there.
fn next_id(kind: &str, legacy: &str) -> Result<u64, Response> {
    Ok(kv::next_id(&format!("p/id/{kind}"), || {
        let first = kv::list(&format!("p/{kind}/"), None, 1)?;
        if first.entries.is_empty() {
            return Ok(0);
        }
        Ok(kv::next_in_sequence(legacy)? - 1)
    })?)
}

/// Take the lock of `kind`'s id counter without taking an id: creations
/// that check a uniqueness rule (by listing the records) and then take an
/// id must take it before they list, so they run one after another. Were
/// the listing first, racers would all hold it and wait for the counter
/// and each other, and whichever got furthest would be rolled back, again
/// and again.
fn take_turn(kind: &str) -> Result<(), Response> {
    kv::increment(&format!("p/id/{kind}"), 0)?;
    Ok(())
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}
