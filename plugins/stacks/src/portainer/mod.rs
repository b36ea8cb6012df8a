//! The Portainer 1.x API (>= 1.18) under `/api`: admin init, JWT auth,
//! endpoints with the Docker proxy, stacks on the shared engine, users
//! and teams. Errors are `{"err", "message", "details"}` so readers of
//! either key work.

use base64::Engine as _;
use berth_sdk::{Guarded, Request, Response, Router, Scope, gojson, kv};
use serde_json::{Value, json};

use crate::model::{Failure, Op, PortainerStack, Stack};
use crate::portainer::endpoints::{
    docker_proxy, endpoint_access, endpoint_create, endpoint_delete, endpoint_get, endpoint_list,
    endpoint_snapshot, endpoint_snapshot_all, endpoint_update, upload_tls, websocket_attach,
    websocket_exec,
};
use crate::portainer::groups::{
    group_access, group_create, group_delete, group_endpoint, group_get, group_list, group_update,
    tag_create, tag_delete, tag_list,
};
use crate::portainer::host_jobs::endpoint_job;
use crate::portainer::registries::{
    registry_access, registry_create, registry_delete, registry_get, registry_list, registry_update,
};
use crate::portainer::resources::{control_create, control_delete, control_update};
use crate::portainer::settings::{
    check_ldap, dockerhub_get, dockerhub_update, extension_change, extension_list, motd, role_list,
    route_not_found, settings_get, settings_public, settings_update, status,
};
use crate::portainer::stacks::{
    stack_create, stack_delete, stack_file, stack_get, stack_list, stack_migrate, stack_update,
};
use crate::portainer::teams::{
    membership_create, membership_delete, membership_list, membership_update, team_create,
    team_delete, team_get, team_list, team_memberships, team_update,
};
use crate::portainer::templates::{
    template_create, template_delete, template_get, template_list, template_update,
};
use crate::portainer::tokens::{token_create, token_delete, token_list};
use crate::portainer::users::{
    User, admin, admin_check, admin_init, auth, authenticate, user_create, user_delete, user_get,
    user_list, user_memberships, user_password_check, user_update,
};
use crate::portainer::webhooks::{webhook_create, webhook_delete, webhook_list, webhook_trigger};

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

/// The surface's routes, under `/api/`: those anyone may call, those for
/// a signed-in user, and those for an administrator.
pub fn routes(router: Router) -> Router {
    let portainer = Scope::new().errors(failure);
    router
        .scope(portainer, |r| {
            public_routes(r)
                .guard(authenticate, signed_in_routes)
                .guard(admin, admin_routes)
        })
        .describe(include_str!("../../portainer.json"))
}

/// Status, the public settings, the first administrator, sign-in and
/// webhooks; and the fallback that answers unknown paths in Portainer's
/// format.
fn public_routes(r: Router) -> Router {
    r.route(
        "portainer.not-found",
        "*",
        "/api/{rest...}",
        route_not_found,
    )
    .get("portainer.status", "/api/status", status)
    .post(
        "portainer.webhooks.trigger",
        "/api/webhooks/{token}",
        webhook_trigger,
    )
    .get(
        "portainer.settings.public",
        "/api/settings/public",
        settings_public,
    )
    .get(
        "portainer.admin.check",
        "/api/users/admin/check",
        admin_check,
    )
    .post("portainer.admin.init", "/api/users/admin/init", admin_init)
    .post("portainer.auth", "/api/auth", auth)
}

/// What a signed-in user may call (each handler checks its own access).
fn signed_in_routes(r: Guarded<User>) -> Guarded<User> {
    r.get("portainer.users.get", "/api/users/{id}", user_get)
        .put("portainer.users.update", "/api/users/{id}", user_update)
        .post(
            "portainer.users.passwd",
            "/api/users/{id}/passwd",
            user_password_check,
        )
        .get(
            "portainer.users.memberships",
            "/api/users/{id}/memberships",
            user_memberships,
        )
        .get(
            "portainer.teams.memberships",
            "/api/teams/{id}/memberships",
            team_memberships,
        )
        .get("portainer.motd", "/api/motd", motd)
        .get("portainer.users.list", "/api/users", user_list)
        .post("portainer.users.create", "/api/users", user_create)
        .post(
            "portainer.memberships.create",
            "/api/team_memberships",
            membership_create,
        )
        .put(
            "portainer.memberships.update",
            "/api/team_memberships/{id}",
            membership_update,
        )
        .delete(
            "portainer.memberships.delete",
            "/api/team_memberships/{id}",
            membership_delete,
        )
        .post(
            "portainer.tokens.create",
            "/api/users/{id}/tokens",
            token_create,
        )
        .get(
            "portainer.tokens.list",
            "/api/users/{id}/tokens",
            token_list,
        )
        .delete(
            "portainer.tokens.delete",
            "/api/users/{id}/tokens/{keyId}",
            token_delete,
        )
        .post("portainer.webhooks.create", "/api/webhooks", webhook_create)
        .get("portainer.webhooks.list", "/api/webhooks", webhook_list)
        .delete(
            "portainer.webhooks.delete",
            "/api/webhooks/{id}",
            webhook_delete,
        )
        .get("portainer.extensions", "/api/extensions", extension_list)
        .get("portainer.dockerhub.get", "/api/dockerhub", dockerhub_get)
        .get("portainer.tags.list", "/api/tags", tag_list)
        .get("portainer.groups.list", "/api/endpoint_groups", group_list)
        .get(
            "portainer.registries.list",
            "/api/registries",
            registry_list,
        )
        .get("portainer.teams.list", "/api/teams", team_list)
        .get("portainer.teams.get", "/api/teams/{id}", team_get)
        .get("portainer.endpoints.list", "/api/endpoints", endpoint_list)
        .get(
            "portainer.endpoints.get",
            "/api/endpoints/{id}",
            endpoint_get,
        )
        .route(
            "portainer.docker",
            "*",
            "/api/endpoints/{id}/docker/{path...}",
            docker_proxy,
        )
        .get(
            "portainer.websocket.exec",
            "/api/websocket/exec",
            websocket_exec,
        )
        .get(
            "portainer.websocket.attach",
            "/api/websocket/attach",
            websocket_attach,
        )
        .get("portainer.templates.list", "/api/templates", template_list)
        .get("portainer.stacks.list", "/api/stacks", stack_list)
        .post("portainer.stacks.create", "/api/stacks", stack_create)
        .get("portainer.stacks.get", "/api/stacks/{id}", stack_get)
        .put("portainer.stacks.update", "/api/stacks/{id}", stack_update)
        .delete("portainer.stacks.delete", "/api/stacks/{id}", stack_delete)
        .post(
            "portainer.stacks.migrate",
            "/api/stacks/{id}/migrate",
            stack_migrate,
        )
        .get("portainer.stacks.file", "/api/stacks/{id}/file", stack_file)
}

/// What only an administrator may call.
fn admin_routes(r: Guarded<User>) -> Guarded<User> {
    r.get("portainer.settings.get", "/api/settings", settings_get)
        .put(
            "portainer.settings.update",
            "/api/settings",
            settings_update,
        )
        .put(
            "portainer.dockerhub.update",
            "/api/dockerhub",
            dockerhub_update,
        )
        .post("portainer.tags.create", "/api/tags", tag_create)
        .delete("portainer.tags.delete", "/api/tags/{id}", tag_delete)
        .post(
            "portainer.groups.create",
            "/api/endpoint_groups",
            group_create,
        )
        .get(
            "portainer.groups.get",
            "/api/endpoint_groups/{id}",
            group_get,
        )
        .put(
            "portainer.groups.update",
            "/api/endpoint_groups/{id}",
            group_update,
        )
        .delete(
            "portainer.groups.delete",
            "/api/endpoint_groups/{id}",
            group_delete,
        )
        .put(
            "portainer.groups.access",
            "/api/endpoint_groups/{id}/access",
            group_access,
        )
        .put(
            "portainer.groups.endpoint.add",
            "/api/endpoint_groups/{id}/endpoints/{endpointId}",
            group_endpoint,
        )
        .delete(
            "portainer.groups.endpoint.remove",
            "/api/endpoint_groups/{id}/endpoints/{endpointId}",
            group_endpoint,
        )
        .post(
            "portainer.registries.create",
            "/api/registries",
            registry_create,
        )
        .get(
            "portainer.registries.get",
            "/api/registries/{id}",
            registry_get,
        )
        .put(
            "portainer.registries.update",
            "/api/registries/{id}",
            registry_update,
        )
        .delete(
            "portainer.registries.delete",
            "/api/registries/{id}",
            registry_delete,
        )
        .put(
            "portainer.registries.access",
            "/api/registries/{id}/access",
            registry_access,
        )
        .post(
            "portainer.controls.create",
            "/api/resource_controls",
            control_create,
        )
        .put(
            "portainer.controls.update",
            "/api/resource_controls/{id}",
            control_update,
        )
        .delete(
            "portainer.controls.delete",
            "/api/resource_controls/{id}",
            control_delete,
        )
        .get("portainer.roles", "/api/roles", role_list)
        .post(
            "portainer.extensions.create",
            "/api/extensions",
            extension_change,
        )
        .put(
            "portainer.extensions.update",
            "/api/extensions/{id}",
            extension_change,
        )
        .delete(
            "portainer.extensions.delete",
            "/api/extensions/{id}",
            extension_change,
        )
        .put(
            "portainer.settings.ldap",
            "/api/settings/authentication/checkLDAP",
            check_ldap,
        )
        .post(
            "portainer.endpoints.job",
            "/api/endpoints/{id}/job",
            endpoint_job,
        )
        .post(
            "portainer.upload.tls",
            "/api/upload/tls/{certificate}",
            upload_tls,
        )
        .post(
            "portainer.templates.create",
            "/api/templates",
            template_create,
        )
        .get(
            "portainer.templates.get",
            "/api/templates/{id}",
            template_get,
        )
        .put(
            "portainer.templates.update",
            "/api/templates/{id}",
            template_update,
        )
        .delete(
            "portainer.templates.delete",
            "/api/templates/{id}",
            template_delete,
        )
        .delete("portainer.users.delete", "/api/users/{id}", user_delete)
        .post("portainer.teams.create", "/api/teams", team_create)
        .put("portainer.teams.update", "/api/teams/{id}", team_update)
        .delete("portainer.teams.delete", "/api/teams/{id}", team_delete)
        .get(
            "portainer.memberships.list",
            "/api/team_memberships",
            membership_list,
        )
        .post(
            "portainer.endpoints.create",
            "/api/endpoints",
            endpoint_create,
        )
        .put(
            "portainer.endpoints.update",
            "/api/endpoints/{id}",
            endpoint_update,
        )
        .post(
            "portainer.endpoints.snapshot",
            "/api/endpoints/{id}/snapshot",
            endpoint_snapshot,
        )
        .post(
            "portainer.endpoints.snapshot-all",
            "/api/endpoints/snapshot",
            endpoint_snapshot_all,
        )
        .put(
            "portainer.endpoints.access",
            "/api/endpoints/{id}/access",
            endpoint_access,
        )
        .delete(
            "portainer.endpoints.delete",
            "/api/endpoints/{id}",
            endpoint_delete,
        )
}
