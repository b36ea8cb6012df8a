//! The Docker Cloud REST and stream API: `/api/app/v1/` and
//! `/api/audit/v1/`, Basic auth with `username:apikey`.

use berth_sdk::{
    Framing, Guarded, HttpResult, Request, Response, Router, Scope, docker, docker::DockerError,
};
use serde_json::json;

use crate::cloud::actions::{
    action_cancel, action_get, action_list, action_logs, action_retry, events,
};
use crate::cloud::containers::{
    container_exec, container_get, container_list, container_logs, container_redeploy,
    container_start, container_stop, container_terminate,
};
use crate::cloud::infra::{
    az_list, infra_write, node_get, node_list, nodecluster_get, nodecluster_list, nodetype_get,
    nodetype_list, provider_get, provider_list, region_get, region_list,
};
use crate::cloud::keys::{Caller, authenticate};
use crate::cloud::services::{
    service_create, service_get, service_list, service_logs, service_redeploy, service_scale,
    service_start, service_stop, service_terminate, service_update,
};
use crate::cloud::stacks::{
    stack_create, stack_export, stack_get, stack_list, stack_redeploy, stack_start, stack_stop,
    stack_terminate, stack_update,
};
use crate::model::Failure;

mod actions;
mod containers;
mod infra;
pub mod keys;
mod paging;
mod render;
mod services;
mod stacks;

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

/// The surface's routes: `/api/app/v1/`, `/api/audit/v1/`, and the
/// fallbacks that answer in its format under `/api/infra/v1/` and
/// `/api/repo/v1/`.
pub fn routes(router: Router) -> Router {
    let docker_cloud = Scope::new().errors(fail);
    router
        .scope(docker_cloud, |r| {
            r.route("cloud.not-found", "*", &app("/{rest...}"), not_found)
                .route(
                    "cloud.audit.not-found",
                    "*",
                    &audit("/{rest...}"),
                    not_found,
                )
                .route(
                    "cloud.infra.not-found",
                    "*",
                    &infra("/{rest...}"),
                    not_found,
                )
                .route(
                    "cloud.repo.not-found",
                    "*",
                    "/api/repo/v1/{rest...}",
                    not_found,
                )
                .guard(authenticate, |r| audit_routes(infra_routes(app_routes(r))))
        })
        .describe(include_str!("../../cloud.json"))
}

fn not_found(_: &Request) -> HttpResult {
    Err(fail(404, "Not found"))
}

/// A path under `/api/app/v1`.
fn app(path: &str) -> String {
    format!("/api/app/v1{path}")
}

/// A path under `/api/audit/v1`.
fn audit(path: &str) -> String {
    format!("/api/audit/v1{path}")
}

/// A path under `/api/infra/v1`.
fn infra(path: &str) -> String {
    format!("/api/infra/v1{path}")
}

/// Services, stacks and containers (`/api/app/v1/`).
fn app_routes(r: Guarded<Caller>) -> Guarded<Caller> {
    r.get("cloud.service.list", &app("/service"), service_list)
        .post("cloud.service.create", &app("/service"), service_create)
        .get("cloud.service.get", &app("/service/{uuid}"), service_get)
        .patch(
            "cloud.service.update",
            &app("/service/{uuid}"),
            service_update,
        )
        .delete(
            "cloud.service.terminate",
            &app("/service/{uuid}"),
            service_terminate,
        )
        .post(
            "cloud.service.start",
            &app("/service/{uuid}/start"),
            service_start,
        )
        .post(
            "cloud.service.stop",
            &app("/service/{uuid}/stop"),
            service_stop,
        )
        .post(
            "cloud.service.scale",
            &app("/service/{uuid}/scale"),
            service_scale,
        )
        .post(
            "cloud.service.redeploy",
            &app("/service/{uuid}/redeploy"),
            service_redeploy,
        )
        .get(
            "cloud.service.logs",
            &app("/service/{uuid}/logs"),
            service_logs,
        )
        .get("cloud.stack.list", &app("/stack"), stack_list)
        .post("cloud.stack.create", &app("/stack"), stack_create)
        .get("cloud.stack.get", &app("/stack/{uuid}"), stack_get)
        .patch("cloud.stack.update", &app("/stack/{uuid}"), stack_update)
        .delete(
            "cloud.stack.terminate",
            &app("/stack/{uuid}"),
            stack_terminate,
        )
        .get(
            "cloud.stack.export",
            &app("/stack/{uuid}/export"),
            stack_export,
        )
        .post(
            "cloud.stack.start",
            &app("/stack/{uuid}/start"),
            stack_start,
        )
        .post("cloud.stack.stop", &app("/stack/{uuid}/stop"), stack_stop)
        .post(
            "cloud.stack.redeploy",
            &app("/stack/{uuid}/redeploy"),
            stack_redeploy,
        )
        .get("cloud.container.list", &app("/container"), container_list)
        .get(
            "cloud.container.get",
            &app("/container/{uuid}"),
            container_get,
        )
        .delete(
            "cloud.container.terminate",
            &app("/container/{uuid}"),
            container_terminate,
        )
        .post(
            "cloud.container.start",
            &app("/container/{uuid}/start"),
            container_start,
        )
        .post(
            "cloud.container.stop",
            &app("/container/{uuid}/stop"),
            container_stop,
        )
        .post(
            "cloud.container.redeploy",
            &app("/container/{uuid}/redeploy"),
            container_redeploy,
        )
        .get(
            "cloud.container.logs",
            &app("/container/{uuid}/logs"),
            container_logs,
        )
        .get(
            "cloud.container.exec",
            &app("/container/{uuid}/exec"),
            container_exec,
        )
}

/// Nodes, node clusters and what the infra API listed of providers
/// (`/api/infra/v1/`).
fn infra_routes(r: Guarded<Caller>) -> Guarded<Caller> {
    r.get("cloud.node.list", &infra("/node"), node_list)
        .get("cloud.node.get", &infra("/node/{uuid}"), node_get)
        .delete("cloud.node.terminate", &infra("/node/{uuid}"), infra_write)
        .post(
            "cloud.node.upgrade",
            &infra("/node/{uuid}/docker-upgrade"),
            infra_write,
        )
        .post(
            "cloud.node.health-check",
            &infra("/node/{uuid}/health-check"),
            infra_write,
        )
        .get(
            "cloud.nodecluster.list",
            &infra("/nodecluster"),
            nodecluster_list,
        )
        .post(
            "cloud.nodecluster.create",
            &infra("/nodecluster"),
            infra_write,
        )
        .get(
            "cloud.nodecluster.get",
            &infra("/nodecluster/{uuid}"),
            nodecluster_get,
        )
        .patch(
            "cloud.nodecluster.update",
            &infra("/nodecluster/{uuid}"),
            infra_write,
        )
        .delete(
            "cloud.nodecluster.terminate",
            &infra("/nodecluster/{uuid}"),
            infra_write,
        )
        .post(
            "cloud.nodecluster.deploy",
            &infra("/nodecluster/{uuid}/deploy"),
            infra_write,
        )
        .get("cloud.provider.list", &infra("/provider"), provider_list)
        .get(
            "cloud.provider.get",
            &infra("/provider/{name}"),
            provider_get,
        )
        .get("cloud.region.list", &infra("/region"), region_list)
        .get(
            "cloud.region.get",
            &infra("/region/{provider}/{name}"),
            region_get,
        )
        .get("cloud.nodetype.list", &infra("/nodetype"), nodetype_list)
        .get(
            "cloud.nodetype.get",
            &infra("/nodetype/{provider}/{name}"),
            nodetype_get,
        )
        .get("cloud.az.list", &infra("/az"), az_list)
}

/// Actions and the event stream (`/api/audit/v1/`).
fn audit_routes(r: Guarded<Caller>) -> Guarded<Caller> {
    r.get("cloud.action.list", &audit("/action"), action_list)
        .get("cloud.action.get", &audit("/action/{uuid}"), action_get)
        .get(
            "cloud.action.logs",
            &audit("/action/{uuid}/logs"),
            action_logs,
        )
        .post(
            "cloud.action.cancel",
            &audit("/action/{uuid}/cancel"),
            action_cancel,
        )
        .post(
            "cloud.action.retry",
            &audit("/action/{uuid}/retry"),
            action_retry,
        )
        .get("cloud.events", &audit("/events"), events)
}
