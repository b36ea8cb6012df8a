//! The Lighthouse API v0.2 (`/api/v0.2`): users with AuthLevels, beacons
//! and the Docker instances behind them, aliases, a Docker passthrough, and
//! applications deployed onto instances with streamed progress.
//!
//! Berth also serves the beacon agent side (`GET /vms`, `/d/{instance}/...`)
//! in front of its own Docker endpoints, so a fleet is several Berth hosts:
//! one registers the others as beacons.

mod agent;
mod app_routes;
mod apps;
mod auth;
mod beacons;
mod deploy;
mod target;
mod user_routes;
mod users;

use berth_sdk::Capability;
use berth_sdk::{HttpResult, Info, Plugin, Request, Response, Router, Scope};
use serde::Serialize;

/// Every Lighthouse route lives under this prefix.
pub(crate) const PREFIX: &str = "/api/v0.2";

struct Beacons;

impl Plugin for Beacons {
    fn info() -> Info {
        Info::new(
            "beacons",
            env!("CARGO_PKG_VERSION"),
            "Lighthouse API: beacons, instances, aliases, users and applications across Berth hosts",
        )
        .capabilities(&[Capability::Kv, Capability::Crypto, Capability::Config, Capability::Log, Capability::Docker, Capability::DockerEndpoints, Capability::HttpOut, Capability::Events, Capability::Jobs])
    }

    fn router() -> Router {
        let p = |path: &str| format!("{PREFIX}{path}");
        let lighthouse = Scope::new().errors(failure);
        Router::new()
            .scope(lighthouse, |r| {
                r.post("beacons.login", &p("/login"), auth::login)
                    .get("beacons.logout", &p("/logout"), auth::logout)
                    .guard(auth::session, |r| {
                        r.get("beacons.users.list", &p("/users/list"), user_routes::list)
                            .post(
                                "beacons.users.create",
                                &p("/users/create"),
                                user_routes::create,
                            )
                            .get("beacons.users.get", &p("/users/{email}"), user_routes::get)
                            .put(
                                "beacons.users.update",
                                &p("/users/{email}"),
                                user_routes::update,
                            )
                            .post("beacons.create", &p("/beacons/create"), beacons::create)
                            .put(
                                "beacons.token",
                                &p("/beacons/token/{beacon}"),
                                beacons::token,
                            )
                            .put(
                                "beacons.grant",
                                &p("/beacons/user/{beacon}/{email}"),
                                beacons::grant,
                            )
                            .get("beacons.list", &p("/beacons/list"), beacons::list)
                            .get(
                                "beacons.instances",
                                &p("/beacons/list/{beacon}"),
                                beacons::instances,
                            )
                            .put(
                                "beacons.refresh",
                                &p("/beacons/refresh/{beacon}"),
                                beacons::refresh,
                            )
                            .put("beacons.alias", &p("/aliases/{alias}"), beacons::alias_put)
                            .route("beacons.docker", "*", &p("/d/{target...}"), beacons::docker)
                            .post(
                                "beacons.apps.create",
                                &p("/applications/create"),
                                app_routes::create,
                            )
                            .get(
                                "beacons.apps.list",
                                &p("/applications/list"),
                                app_routes::list,
                            )
                            .get(
                                "beacons.apps.history",
                                &p("/applications/list/{app}"),
                                app_routes::history,
                            )
                            .post(
                                "beacons.apps.start",
                                &p("/applications/start/{app}"),
                                app_routes::start,
                            )
                            .post(
                                "beacons.apps.stop",
                                &p("/applications/stop/{app}"),
                                app_routes::stop,
                            )
                            .post(
                                "beacons.apps.revert",
                                &p("/applications/revert/{app}"),
                                app_routes::revert,
                            )
                            .put(
                                "beacons.apps.revert-put",
                                &p("/applications/revert/{app}"),
                                app_routes::revert,
                            )
                            .put(
                                "beacons.apps.update",
                                &p("/applications/update/{app}"),
                                app_routes::update,
                            )
                            .route("beacons.api.unknown", "*", &p("/{rest...}"), unknown)
                    })
                    .guard(agent::check, |r| {
                        r.get("beacons.agent.vms", "/vms", agent::vms).route(
                            "beacons.agent.docker",
                            "*",
                            "/d/{instance}/{path...}",
                            agent::docker,
                        )
                    })
            })
            .describe(include_str!("../openapi.json"))
    }

    fn run_job(kind: &str, payload: &[u8]) -> Result<(), String> {
        match kind {
            deploy::JOB => deploy::run(payload),
            other => Err(format!("unknown job kind `{other}`")),
        }
    }

    fn admin(args: Vec<String>) -> Result<String, String> {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        match args.as_slice() {
            ["create-admin", rest @ ..] => user_routes::create_admin(rest),
            ["agent-token"] => agent::token_command(false),
            ["agent-token", "--rotate"] => agent::token_command(true),
            _ => Err(USAGE.to_string()),
        }
    }
}

const USAGE: &str = "usage:
  berth run beacons create-admin EMAIL [--level N]
      create the user EMAIL (or reset its password) with AuthLevel N
      (default 2) and print its generated password
  berth run beacons agent-token [--rotate]
      print the token Lighthouse servers use to reach this host's beacon
      agent (`/vms`); --rotate replaces it";

berth_sdk::export!(Beacons);

/// The surface's error body.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Failure<'a> {
    cause: &'a str,
    message: &'a str,
}

/// A Lighthouse error: `{"Cause": cause, "Message": message}`.
pub(crate) fn fail(status: u16, cause: &str, message: &str) -> Response {
    Response::json(status, &Failure { cause, message })
}

/// Lighthouse's body for what the SDK answers: a host failure (storage,
/// crypto, jobs), bad input.
fn failure(status: u16, text: &str) -> Response {
    let cause = if status == 400 { "request" } else { "control" };
    fail(status, cause, text)
}

/// The answer to a request Lighthouse does not know, once logged in.
fn unknown(req: &Request) -> HttpResult {
    Err(fail(
        404,
        "control",
        &format!("no route {} {}", req.method(), req.path()),
    ))
}

/// A JSON request body, or 400 naming what is wrong with it.
pub(crate) fn body<T: serde::de::DeserializeOwned>(req: &Request) -> Result<T, Response> {
    serde_json::from_slice(req.body()).map_err(|e| {
        fail(
            400,
            "request",
            &format!("the body is not the expected JSON: {e}"),
        )
    })
}

/// A boolean query flag: absent is `default`; `true`/`1`/`false`/`0`.
pub(crate) fn flag(req: &Request, name: &str, default: bool) -> Result<bool, Response> {
    match req.query(name) {
        None | Some("") => Ok(default),
        Some("true" | "1" | "True") => Ok(true),
        Some("false" | "0" | "False") => Ok(false),
        Some(other) => Err(fail(
            400,
            "request",
            &format!("`{name}` must be true or false, not `{other}`"),
        )),
    }
}

/// An empty 200.
pub(crate) fn ok() -> HttpResult {
    Ok(Response::new(200))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        assert_eq!(Beacons::router().check_description(), Ok(()));
    }
}
