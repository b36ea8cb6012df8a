//! `stacks`: the Docker Cloud and Portainer 1.x APIs over one stack
//! engine. Stacks of services run as Docker Swarm services when the
//! endpoint is a swarm manager, and as labelled containers otherwise.
//!
//! - Docker Cloud (`/api/app/v1/`, `/api/audit/v1/`): Basic auth with
//!   `username:apikey`, keys from `berth run stacks apikey:create USER`.
//! - Portainer (`/api/...`): admin init, JWT auth, endpoints, the Docker
//!   proxy, stacks, users and teams.

mod cloud;
mod engine;
mod model;
mod portainer;
mod stackfile;

use berth_sdk::Capability;
use berth_sdk::{Info, Plugin, Router};

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
        ])
    }

    fn router() -> Router {
        const APP: &str = "/api/app/v1";
        const AUDIT: &str = "/api/audit/v1";
        let r = Router::new()
            .get(
                "cloud.service.list",
                &format!("{APP}/service"),
                cloud::service_list,
            )
            .post(
                "cloud.service.create",
                &format!("{APP}/service"),
                cloud::service_create,
            )
            .get(
                "cloud.service.get",
                &format!("{APP}/service/{{uuid}}"),
                cloud::service_get,
            )
            .patch(
                "cloud.service.update",
                &format!("{APP}/service/{{uuid}}"),
                cloud::service_update,
            )
            .delete(
                "cloud.service.terminate",
                &format!("{APP}/service/{{uuid}}"),
                cloud::service_terminate,
            )
            .post(
                "cloud.service.start",
                &format!("{APP}/service/{{uuid}}/start"),
                cloud::service_start,
            )
            .post(
                "cloud.service.stop",
                &format!("{APP}/service/{{uuid}}/stop"),
                cloud::service_stop,
            )
            .post(
                "cloud.service.scale",
                &format!("{APP}/service/{{uuid}}/scale"),
                cloud::service_scale,
            )
            .post(
                "cloud.service.redeploy",
                &format!("{APP}/service/{{uuid}}/redeploy"),
                cloud::service_redeploy,
            )
            .get(
                "cloud.service.logs",
                &format!("{APP}/service/{{uuid}}/logs"),
                cloud::service_logs,
            )
            .get(
                "cloud.stack.list",
                &format!("{APP}/stack"),
                cloud::stack_list,
            )
            .post(
                "cloud.stack.create",
                &format!("{APP}/stack"),
                cloud::stack_create,
            )
            .get(
                "cloud.stack.get",
                &format!("{APP}/stack/{{uuid}}"),
                cloud::stack_get,
            )
            .patch(
                "cloud.stack.update",
                &format!("{APP}/stack/{{uuid}}"),
                cloud::stack_update,
            )
            .delete(
                "cloud.stack.terminate",
                &format!("{APP}/stack/{{uuid}}"),
                cloud::stack_terminate,
            )
            .get(
                "cloud.stack.export",
                &format!("{APP}/stack/{{uuid}}/export"),
                cloud::stack_export,
            )
            .post(
                "cloud.stack.start",
                &format!("{APP}/stack/{{uuid}}/start"),
                cloud::stack_start,
            )
            .post(
                "cloud.stack.stop",
                &format!("{APP}/stack/{{uuid}}/stop"),
                cloud::stack_stop,
            )
            .post(
                "cloud.stack.redeploy",
                &format!("{APP}/stack/{{uuid}}/redeploy"),
                cloud::stack_redeploy,
            )
            .get(
                "cloud.container.list",
                &format!("{APP}/container"),
                cloud::container_list,
            )
            .get(
                "cloud.container.get",
                &format!("{APP}/container/{{uuid}}"),
                cloud::container_get,
            )
            .delete(
                "cloud.container.terminate",
                &format!("{APP}/container/{{uuid}}"),
                cloud::container_terminate,
            )
            .post(
                "cloud.container.start",
                &format!("{APP}/container/{{uuid}}/start"),
                cloud::container_start,
            )
            .post(
                "cloud.container.stop",
                &format!("{APP}/container/{{uuid}}/stop"),
                cloud::container_stop,
            )
            .post(
                "cloud.container.redeploy",
                &format!("{APP}/container/{{uuid}}/redeploy"),
                cloud::container_redeploy,
            )
            .get(
                "cloud.container.logs",
                &format!("{APP}/container/{{uuid}}/logs"),
                cloud::container_logs,
            )
            .get(
                "cloud.action.list",
                &format!("{AUDIT}/action"),
                cloud::action_list,
            )
            .get(
                "cloud.action.get",
                &format!("{AUDIT}/action/{{uuid}}"),
                cloud::action_get,
            )
            .post(
                "cloud.action.cancel",
                &format!("{AUDIT}/action/{{uuid}}/cancel"),
                cloud::action_cancel,
            )
            .post(
                "cloud.action.retry",
                &format!("{AUDIT}/action/{{uuid}}/retry"),
                cloud::action_retry,
            )
            .get("cloud.events", &format!("{AUDIT}/events"), cloud::events)
            .route(
                "cloud.not-found",
                "*",
                &format!("{APP}/{{rest...}}"),
                cloud_not_found,
            )
            .route(
                "cloud.audit.not-found",
                "*",
                &format!("{AUDIT}/{{rest...}}"),
                cloud_not_found,
            );
        use portainer as p;
        r.get(
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
        .get("portainer.users.list", "/api/users", p::user_list)
        .post("portainer.users.create", "/api/users", p::user_create)
        .get("portainer.users.get", "/api/users/{id}", p::user_get)
        .put("portainer.users.update", "/api/users/{id}", p::user_update)
        .delete("portainer.users.delete", "/api/users/{id}", p::user_delete)
        .get("portainer.teams.list", "/api/teams", p::team_list)
        .post("portainer.teams.create", "/api/teams", p::team_create)
        .get("portainer.teams.get", "/api/teams/{id}", p::team_get)
        .put("portainer.teams.update", "/api/teams/{id}", p::team_update)
        .delete("portainer.teams.delete", "/api/teams/{id}", p::team_delete)
        .get(
            "portainer.memberships.list",
            "/api/team_memberships",
            p::membership_list,
        )
        .post(
            "portainer.memberships.create",
            "/api/team_memberships",
            p::membership_create,
        )
        .delete(
            "portainer.memberships.delete",
            "/api/team_memberships/{id}",
            p::membership_delete,
        )
        .get(
            "portainer.endpoints.list",
            "/api/endpoints",
            p::endpoint_list,
        )
        .post(
            "portainer.endpoints.create",
            "/api/endpoints",
            p::endpoint_create,
        )
        .get(
            "portainer.endpoints.get",
            "/api/endpoints/{id}",
            p::endpoint_get,
        )
        .put(
            "portainer.endpoints.update",
            "/api/endpoints/{id}",
            p::endpoint_update,
        )
        .delete(
            "portainer.endpoints.delete",
            "/api/endpoints/{id}",
            p::endpoint_delete,
        )
        .route(
            "portainer.docker",
            "*",
            "/api/endpoints/{id}/docker/{path...}",
            p::docker_proxy,
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
        .get(
            "portainer.stacks.file",
            "/api/stacks/{id}/file",
            p::stack_file,
        )
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
