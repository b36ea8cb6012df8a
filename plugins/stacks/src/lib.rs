//! `stacks`: the Docker Cloud and Portainer 1.x APIs over one stack
//! engine. Stacks of services run as Docker Swarm services when the
//! endpoint is a swarm manager, and as labelled containers otherwise.
//!
//! - Docker Cloud (`/api/app/v1/`, `/api/audit/v1/`): Basic auth with
//!   `username:apikey`, keys from `berth run stacks apikey:create USER`.
//! - Portainer (`/api/...`): admin init, JWT auth, endpoints, the Docker
//!   proxy, stacks, users and teams.

mod apikeys;
mod cloud;
mod engine;
mod model;
mod portainer;
mod stackfile;

use berth_sdk::Capability;
use berth_sdk::{Info, Plugin, Router, Scope};

struct Stacks;

impl Plugin for Stacks {
    fn info() -> Info {
        Info::new(
            "stacks",
            env!("CARGO_PKG_VERSION"),
            "Docker Cloud and Portainer APIs: stacks on Docker Swarm or containers",
        )
        .capabilities(&[
            Capability::Kv,
            Capability::Crypto,
            Capability::Config,
            Capability::Log,
            Capability::Docker,
            Capability::DockerEndpoints,
            Capability::Events,
            Capability::Jobs,
            Capability::HttpOut,
        ])
    }

    fn router() -> Router {
        use cloud as c;
        use portainer as p;
        const APP: &str = "/api/app/v1";
        const AUDIT: &str = "/api/audit/v1";
        const INFRA: &str = "/api/infra/v1";
        let app = |path: &str| format!("{APP}{path}");
        let audit = |path: &str| format!("{AUDIT}{path}");
        let infra = |path: &str| format!("{INFRA}{path}");
        let docker_cloud = Scope::new().errors(c::fail);
        let api_key = Scope::new().guard(c::authenticate);
        let portainer = Scope::new().errors(p::failure);
        let signed_in = Scope::new().guard(p::authenticate);
        let admin = Scope::new().guard(p::admin);
        Router::new()
            .scope(docker_cloud, |r| {
                r.route("cloud.not-found", "*", &app("/{rest...}"), cloud_not_found)
                    .route(
                        "cloud.audit.not-found",
                        "*",
                        &audit("/{rest...}"),
                        cloud_not_found,
                    )
                    .route(
                        "cloud.infra.not-found",
                        "*",
                        &infra("/{rest...}"),
                        cloud_not_found,
                    )
                    .route(
                        "cloud.repo.not-found",
                        "*",
                        "/api/repo/v1/{rest...}",
                        cloud_not_found,
                    )
                    .scope(api_key, |r| {
                        r.get("cloud.service.list", &app("/service"), c::service_list)
                            .post("cloud.service.create", &app("/service"), c::service_create)
                            .get("cloud.service.get", &app("/service/{uuid}"), c::service_get)
                            .patch(
                                "cloud.service.update",
                                &app("/service/{uuid}"),
                                c::service_update,
                            )
                            .delete(
                                "cloud.service.terminate",
                                &app("/service/{uuid}"),
                                c::service_terminate,
                            )
                            .post(
                                "cloud.service.start",
                                &app("/service/{uuid}/start"),
                                c::service_start,
                            )
                            .post(
                                "cloud.service.stop",
                                &app("/service/{uuid}/stop"),
                                c::service_stop,
                            )
                            .post(
                                "cloud.service.scale",
                                &app("/service/{uuid}/scale"),
                                c::service_scale,
                            )
                            .post(
                                "cloud.service.redeploy",
                                &app("/service/{uuid}/redeploy"),
                                c::service_redeploy,
                            )
                            .get(
                                "cloud.service.logs",
                                &app("/service/{uuid}/logs"),
                                c::service_logs,
                            )
                            .get("cloud.stack.list", &app("/stack"), c::stack_list)
                            .post("cloud.stack.create", &app("/stack"), c::stack_create)
                            .get("cloud.stack.get", &app("/stack/{uuid}"), c::stack_get)
                            .patch("cloud.stack.update", &app("/stack/{uuid}"), c::stack_update)
                            .delete(
                                "cloud.stack.terminate",
                                &app("/stack/{uuid}"),
                                c::stack_terminate,
                            )
                            .get(
                                "cloud.stack.export",
                                &app("/stack/{uuid}/export"),
                                c::stack_export,
                            )
                            .post(
                                "cloud.stack.start",
                                &app("/stack/{uuid}/start"),
                                c::stack_start,
                            )
                            .post(
                                "cloud.stack.stop",
                                &app("/stack/{uuid}/stop"),
                                c::stack_stop,
                            )
                            .post(
                                "cloud.stack.redeploy",
                                &app("/stack/{uuid}/redeploy"),
                                c::stack_redeploy,
                            )
                            .get(
                                "cloud.container.list",
                                &app("/container"),
                                c::container_list,
                            )
                            .get(
                                "cloud.container.get",
                                &app("/container/{uuid}"),
                                c::container_get,
                            )
                            .delete(
                                "cloud.container.terminate",
                                &app("/container/{uuid}"),
                                c::container_terminate,
                            )
                            .post(
                                "cloud.container.start",
                                &app("/container/{uuid}/start"),
                                c::container_start,
                            )
                            .post(
                                "cloud.container.stop",
                                &app("/container/{uuid}/stop"),
                                c::container_stop,
                            )
                            .post(
                                "cloud.container.redeploy",
                                &app("/container/{uuid}/redeploy"),
                                c::container_redeploy,
                            )
                            .get(
                                "cloud.container.logs",
                                &app("/container/{uuid}/logs"),
                                c::container_logs,
                            )
                            .get(
                                "cloud.container.exec",
                                &app("/container/{uuid}/exec"),
                                c::container_exec,
                            )
                            .get("cloud.node.list", &infra("/node"), c::node_list)
                            .get("cloud.node.get", &infra("/node/{uuid}"), c::node_get)
                            .delete(
                                "cloud.node.terminate",
                                &infra("/node/{uuid}"),
                                c::infra_write,
                            )
                            .post(
                                "cloud.node.upgrade",
                                &infra("/node/{uuid}/docker-upgrade"),
                                c::infra_write,
                            )
                            .post(
                                "cloud.node.health-check",
                                &infra("/node/{uuid}/health-check"),
                                c::infra_write,
                            )
                            .get(
                                "cloud.nodecluster.list",
                                &infra("/nodecluster"),
                                c::nodecluster_list,
                            )
                            .post(
                                "cloud.nodecluster.create",
                                &infra("/nodecluster"),
                                c::infra_write,
                            )
                            .get(
                                "cloud.nodecluster.get",
                                &infra("/nodecluster/{uuid}"),
                                c::nodecluster_get,
                            )
                            .patch(
                                "cloud.nodecluster.update",
                                &infra("/nodecluster/{uuid}"),
                                c::infra_write,
                            )
                            .delete(
                                "cloud.nodecluster.terminate",
                                &infra("/nodecluster/{uuid}"),
                                c::infra_write,
                            )
                            .post(
                                "cloud.nodecluster.deploy",
                                &infra("/nodecluster/{uuid}/deploy"),
                                c::infra_write,
                            )
                            .get("cloud.provider.list", &infra("/provider"), c::provider_list)
                            .get(
                                "cloud.provider.get",
                                &infra("/provider/{name}"),
                                c::provider_get,
                            )
                            .get("cloud.region.list", &infra("/region"), c::region_list)
                            .get(
                                "cloud.region.get",
                                &infra("/region/{provider}/{name}"),
                                c::region_get,
                            )
                            .get("cloud.nodetype.list", &infra("/nodetype"), c::nodetype_list)
                            .get(
                                "cloud.nodetype.get",
                                &infra("/nodetype/{provider}/{name}"),
                                c::nodetype_get,
                            )
                            .get("cloud.az.list", &infra("/az"), c::az_list)
                            .get("cloud.action.list", &audit("/action"), c::action_list)
                            .get("cloud.action.get", &audit("/action/{uuid}"), c::action_get)
                            .get(
                                "cloud.action.logs",
                                &audit("/action/{uuid}/logs"),
                                c::action_logs,
                            )
                            .post(
                                "cloud.action.cancel",
                                &audit("/action/{uuid}/cancel"),
                                c::action_cancel,
                            )
                            .post(
                                "cloud.action.retry",
                                &audit("/action/{uuid}/retry"),
                                c::action_retry,
                            )
                            .get("cloud.events", &audit("/events"), c::events)
                    })
            })
            .scope(portainer, |r| {
                r.route(
                    "portainer.not-found",
                    "*",
                    "/api/{rest...}",
                    p::route_not_found,
                )
                .get("portainer.status", "/api/status", p::status)
                .post(
                    "portainer.webhooks.trigger",
                    "/api/webhooks/{token}",
                    p::webhook_trigger,
                )
                .get(
                    "portainer.settings.public",
                    "/api/settings/public",
                    p::settings_public,
                )
                .get(
                    "portainer.admin.check",
                    "/api/users/admin/check",
                    p::admin_check,
                )
                .post(
                    "portainer.admin.init",
                    "/api/users/admin/init",
                    p::admin_init,
                )
                .post("portainer.auth", "/api/auth", p::auth)
                .scope(signed_in, |r| {
                    r.get("portainer.users.get", "/api/users/{id}", p::user_get)
                        .put("portainer.users.update", "/api/users/{id}", p::user_update)
                        .post(
                            "portainer.users.passwd",
                            "/api/users/{id}/passwd",
                            p::user_password_check,
                        )
                        .get(
                            "portainer.users.memberships",
                            "/api/users/{id}/memberships",
                            p::user_memberships,
                        )
                        .get(
                            "portainer.teams.memberships",
                            "/api/teams/{id}/memberships",
                            p::team_memberships,
                        )
                        .get("portainer.motd", "/api/motd", p::motd)
                        .get("portainer.users.list", "/api/users", p::user_list)
                        .post("portainer.users.create", "/api/users", p::user_create)
                        .post(
                            "portainer.memberships.create",
                            "/api/team_memberships",
                            p::membership_create,
                        )
                        .put(
                            "portainer.memberships.update",
                            "/api/team_memberships/{id}",
                            p::membership_update,
                        )
                        .delete(
                            "portainer.memberships.delete",
                            "/api/team_memberships/{id}",
                            p::membership_delete,
                        )
                        .post(
                            "portainer.tokens.create",
                            "/api/users/{id}/tokens",
                            p::token_create,
                        )
                        .get(
                            "portainer.tokens.list",
                            "/api/users/{id}/tokens",
                            p::token_list,
                        )
                        .delete(
                            "portainer.tokens.delete",
                            "/api/users/{id}/tokens/{keyId}",
                            p::token_delete,
                        )
                        .post(
                            "portainer.webhooks.create",
                            "/api/webhooks",
                            p::webhook_create,
                        )
                        .get("portainer.webhooks.list", "/api/webhooks", p::webhook_list)
                        .delete(
                            "portainer.webhooks.delete",
                            "/api/webhooks/{id}",
                            p::webhook_delete,
                        )
                        .get("portainer.extensions", "/api/extensions", p::extension_list)
                        .get(
                            "portainer.dockerhub.get",
                            "/api/dockerhub",
                            p::dockerhub_get,
                        )
                        .get("portainer.tags.list", "/api/tags", p::tag_list)
                        .get(
                            "portainer.groups.list",
                            "/api/endpoint_groups",
                            p::group_list,
                        )
                        .get(
                            "portainer.registries.list",
                            "/api/registries",
                            p::registry_list,
                        )
                        .get("portainer.teams.list", "/api/teams", p::team_list)
                        .get("portainer.teams.get", "/api/teams/{id}", p::team_get)
                        .get(
                            "portainer.endpoints.list",
                            "/api/endpoints",
                            p::endpoint_list,
                        )
                        .get(
                            "portainer.endpoints.get",
                            "/api/endpoints/{id}",
                            p::endpoint_get,
                        )
                        .route(
                            "portainer.docker",
                            "*",
                            "/api/endpoints/{id}/docker/{path...}",
                            p::docker_proxy,
                        )
                        .get(
                            "portainer.websocket.exec",
                            "/api/websocket/exec",
                            p::websocket_exec,
                        )
                        .get(
                            "portainer.websocket.attach",
                            "/api/websocket/attach",
                            p::websocket_attach,
                        )
                        .get(
                            "portainer.templates.list",
                            "/api/templates",
                            p::template_list,
                        )
                        .get("portainer.stacks.list", "/api/stacks", p::stack_list)
                        .post("portainer.stacks.create", "/api/stacks", p::stack_create)
                        .get("portainer.stacks.get", "/api/stacks/{id}", p::stack_get)
                        .put(
                            "portainer.stacks.update",
                            "/api/stacks/{id}",
                            p::stack_update,
                        )
                        .delete(
                            "portainer.stacks.delete",
                            "/api/stacks/{id}",
                            p::stack_delete,
                        )
                        .post(
                            "portainer.stacks.migrate",
                            "/api/stacks/{id}/migrate",
                            p::stack_migrate,
                        )
                        .get(
                            "portainer.stacks.file",
                            "/api/stacks/{id}/file",
                            p::stack_file,
                        )
                })
                .scope(admin, |r| {
                    r.get("portainer.settings.get", "/api/settings", p::settings_get)
                        .put(
                            "portainer.settings.update",
                            "/api/settings",
                            p::settings_update,
                        )
                        .put(
                            "portainer.dockerhub.update",
                            "/api/dockerhub",
                            p::dockerhub_update,
                        )
                        .post("portainer.tags.create", "/api/tags", p::tag_create)
                        .delete("portainer.tags.delete", "/api/tags/{id}", p::tag_delete)
                        .post(
                            "portainer.groups.create",
                            "/api/endpoint_groups",
                            p::group_create,
                        )
                        .get(
                            "portainer.groups.get",
                            "/api/endpoint_groups/{id}",
                            p::group_get,
                        )
                        .put(
                            "portainer.groups.update",
                            "/api/endpoint_groups/{id}",
                            p::group_update,
                        )
                        .delete(
                            "portainer.groups.delete",
                            "/api/endpoint_groups/{id}",
                            p::group_delete,
                        )
                        .put(
                            "portainer.groups.access",
                            "/api/endpoint_groups/{id}/access",
                            p::group_access,
                        )
                        .put(
                            "portainer.groups.endpoint.add",
                            "/api/endpoint_groups/{id}/endpoints/{endpointId}",
                            p::group_endpoint,
                        )
                        .delete(
                            "portainer.groups.endpoint.remove",
                            "/api/endpoint_groups/{id}/endpoints/{endpointId}",
                            p::group_endpoint,
                        )
                        .post(
                            "portainer.registries.create",
                            "/api/registries",
                            p::registry_create,
                        )
                        .get(
                            "portainer.registries.get",
                            "/api/registries/{id}",
                            p::registry_get,
                        )
                        .put(
                            "portainer.registries.update",
                            "/api/registries/{id}",
                            p::registry_update,
                        )
                        .delete(
                            "portainer.registries.delete",
                            "/api/registries/{id}",
                            p::registry_delete,
                        )
                        .put(
                            "portainer.registries.access",
                            "/api/registries/{id}/access",
                            p::registry_access,
                        )
                        .post(
                            "portainer.controls.create",
                            "/api/resource_controls",
                            p::control_create,
                        )
                        .put(
                            "portainer.controls.update",
                            "/api/resource_controls/{id}",
                            p::control_update,
                        )
                        .delete(
                            "portainer.controls.delete",
                            "/api/resource_controls/{id}",
                            p::control_delete,
                        )
                        .get("portainer.roles", "/api/roles", p::role_list)
                        .post(
                            "portainer.extensions.create",
                            "/api/extensions",
                            p::extension_change,
                        )
                        .put(
                            "portainer.extensions.update",
                            "/api/extensions/{id}",
                            p::extension_change,
                        )
                        .delete(
                            "portainer.extensions.delete",
                            "/api/extensions/{id}",
                            p::extension_change,
                        )
                        .put(
                            "portainer.settings.ldap",
                            "/api/settings/authentication/checkLDAP",
                            p::check_ldap,
                        )
                        .post(
                            "portainer.endpoints.job",
                            "/api/endpoints/{id}/job",
                            p::endpoint_job,
                        )
                        .post(
                            "portainer.upload.tls",
                            "/api/upload/tls/{certificate}",
                            p::upload_tls,
                        )
                        .post(
                            "portainer.templates.create",
                            "/api/templates",
                            p::template_create,
                        )
                        .get(
                            "portainer.templates.get",
                            "/api/templates/{id}",
                            p::template_get,
                        )
                        .put(
                            "portainer.templates.update",
                            "/api/templates/{id}",
                            p::template_update,
                        )
                        .delete(
                            "portainer.templates.delete",
                            "/api/templates/{id}",
                            p::template_delete,
                        )
                        .delete("portainer.users.delete", "/api/users/{id}", p::user_delete)
                        .post("portainer.teams.create", "/api/teams", p::team_create)
                        .put("portainer.teams.update", "/api/teams/{id}", p::team_update)
                        .delete("portainer.teams.delete", "/api/teams/{id}", p::team_delete)
                        .get(
                            "portainer.memberships.list",
                            "/api/team_memberships",
                            p::membership_list,
                        )
                        .post(
                            "portainer.endpoints.create",
                            "/api/endpoints",
                            p::endpoint_create,
                        )
                        .put(
                            "portainer.endpoints.update",
                            "/api/endpoints/{id}",
                            p::endpoint_update,
                        )
                        .post(
                            "portainer.endpoints.snapshot",
                            "/api/endpoints/{id}/snapshot",
                            p::endpoint_snapshot,
                        )
                        .post(
                            "portainer.endpoints.snapshot-all",
                            "/api/endpoints/snapshot",
                            p::endpoint_snapshot_all,
                        )
                        .put(
                            "portainer.endpoints.access",
                            "/api/endpoints/{id}/access",
                            p::endpoint_access,
                        )
                        .delete(
                            "portainer.endpoints.delete",
                            "/api/endpoints/{id}",
                            p::endpoint_delete,
                        )
                })
            })
            .describe(include_str!("../cloud.json"))
            .describe(include_str!("../portainer.json"))
    }

    fn run_job(kind: &str, payload: &[u8]) -> Result<(), String> {
        match kind {
            "engine-event" => {
                let event: serde_json::Value =
                    serde_json::from_slice(payload).map_err(|e| e.to_string())?;
                model::engine_event(&event)
            }
            other => Err(format!("unknown job kind `{other}`")),
        }
    }

    fn admin(args: Vec<String>) -> Result<String, String> {
        cloud::admin(&args)
    }
}

fn cloud_not_found(_: &berth_sdk::Request) -> berth_sdk::HttpResult {
    Err(cloud::fail(404, "Not found"))
}

berth_sdk::export!(Stacks);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_route_is_described() {
        assert_eq!(Stacks::router().check_description(), Ok(()));
    }
}
