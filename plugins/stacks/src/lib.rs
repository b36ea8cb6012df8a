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
            Capability::HttpOut,
        ])
    }

    fn router() -> Router {
        portainer::routes(cloud::routes(Router::new()))
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
        cloud::keys::admin(&args)
    }
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
