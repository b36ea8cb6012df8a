//! The beacon agent side: what a Lighthouse server (another Berth, or this
//! one) calls to reach the Docker endpoints this host fronts.
//!
//! - `GET /vms` with header `Token: TOKEN`: the instances, one per Docker
//!   endpoint named in the `instances` setting.
//! - `/d/{instance}/{docker path}` with the same header: the call is
//!   forwarded to that endpoint (`proxy-docker`), streamed both ways.
//!
//! The token is the `token` setting, or else one generated on first use
//! and kept in KV (`berth run beacons agent-token` prints it). It is
//! compared in constant time.

use berth_sdk::{HttpResult, Request, Response, config, crypto, docker, kv};
use serde::{Deserialize, Serialize};

use crate::fail;

const TOKEN_KEY: &str = "agent/token";

/// One instance as a beacon agent's `GET /vms` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Vm {
    pub name: String,
    #[serde(default)]
    pub address: String,
    #[serde(default)]
    pub can_access_docker: bool,
}

fn configured() -> Result<Option<String>, String> {
    let token = config::get("token")?;
    Ok(token.filter(|t| !t.is_empty()))
}

/// The agent's token, generated and stored when first needed.
fn token(rotate: bool) -> Result<String, String> {
    if let Some(token) = configured()? {
        if rotate {
            return Err("the token is set in the operator's config ([plugins.beacons.settings] token); change it there".into());
        }
        return Ok(token);
    }
    if !rotate && let Some(token) = kv::get_string(TOKEN_KEY)? {
        return Ok(token);
    }
    let token = crypto::random_token(24)?;
    kv::set(TOKEN_KEY, token.as_bytes())?;
    Ok(token)
}

/// Does `given` match the agent's token?
pub fn token_matches(given: &str) -> Result<bool, String> {
    let token = token(false)?;
    Ok(crypto::constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// `berth run beacons agent-token [--rotate]`.
pub fn token_command(rotate: bool) -> Result<String, String> {
    Ok(format!("{}\n", token(rotate)?))
}

/// The Docker endpoints this agent fronts (`instances` setting,
/// comma-separated; default `local`).
fn instances() -> Vec<String> {
    let list = config::get_or("instances", "local".to_string()).unwrap_or_else(|_| "local".into());
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// This host's instances, each pinged.
pub fn local_vms() -> Vec<Vm> {
    instances()
        .into_iter()
        .map(|name| Vm {
            can_access_docker: docker::ping(&name).is_ok(),
            address: name.clone(),
            name,
        })
        .collect()
}

pub fn check(req: &Request) -> Result<(), Response> {
    let given = req.header("token").unwrap_or("");
    match token_matches(given) {
        Ok(true) => Ok(()),
        Ok(false) => Err(fail(
            401,
            "auth",
            "the Token header does not match this beacon's token",
        )),
        Err(e) => Err(fail(500, "control", &e)),
    }
}

/// `GET /vms`.
pub fn vms(_: &Request) -> HttpResult {
    Ok(Response::json(200, &local_vms()))
}

/// `/d/{instance}/{path...}`: forwarded to the instance's engine.
pub fn docker(req: &Request) -> HttpResult {
    let instance = req.param("instance").unwrap_or("");
    if !instances().iter().any(|i| i == instance) {
        return Err(fail(
            404,
            "instance",
            &format!("this beacon has no instance `{instance}`"),
        ));
    }
    let path = format!("/{}", req.param("path").unwrap_or(""));
    Ok(Response::proxy_docker(instance, &path, None))
}
