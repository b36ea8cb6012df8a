//! Webhooks: a secret URL (`POST /api/webhooks/{token}`, no sign-in)
//! that redeploys what it was made for. Type 1 is 1.x's, a Swarm service
//! (its tasks replaced, as `docker service update --force`); type 2,
//! beyond 1.x, a stack, redeployed from its stored file.

use berth_sdk::{HttpResult, Request, Response, crypto, docker, gojson, kv};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model;
use crate::portainer::endpoints::{can_use, load_endpoint, may_use_endpoint};
use crate::portainer::stacks::{may_see, stack_failure};
use crate::portainer::users::{User, id_param};
use crate::portainer::{Failure, Op, Payload, Stack, fail, next_id, not_found, payload};

const SERVICE_HOOK: u8 = 1;
const STACK_HOOK: u8 = 2;

#[derive(Serialize, Deserialize)]
struct Webhook {
    id: u64,
    token: String,
    resource_id: String,
    endpoint_id: u64,
    kind: u8,
}

impl Webhook {
    fn render(&self) -> Value {
        json!({
            "Id": self.id,
            "Token": self.token,
            "ResourceId": self.resource_id,
            "EndpointId": self.endpoint_id,
            "WebhookType": self.kind,
        })
    }
}

fn webhook_key(id: u64) -> String {
    format!("p/webhook/{id:010}")
}

fn webhooks() -> Result<Vec<Webhook>, Response> {
    model::scan("p/webhook/").map_err(Response::from)
}

/// `POST /api/webhooks`.
#[derive(Deserialize, Default)]
#[serde(default)]
struct NewWebhook {
    #[serde(rename = "ResourceID")]
    resource_id: String,
    #[serde(rename = "EndpointID")]
    endpoint_id: u64,
    #[serde(rename = "WebhookType")]
    kind: i64,
}

impl Payload for NewWebhook {
    fn validate(&self) -> Result<(), &'static str> {
        if self.resource_id.is_empty() {
            return Err("Invalid ResourceID");
        }
        if self.endpoint_id == 0 {
            return Err("Invalid EndpointID");
        }
        if !matches!(self.kind, 1 | 2) {
            return Err("Invalid WebhookType: 1 (a Swarm service) or 2 (a stack)");
        }
        Ok(())
    }
}

/// The stack with Portainer id `id`.
fn stack_by_id(id: &str) -> Result<Option<Stack>, Response> {
    let Ok(id) = id.parse::<u64>() else {
        return Ok(None);
    };
    let Some(uuid) = kv::get_string(&format!("p/stack/{id:010}"))? else {
        return Ok(None);
    };
    model::load_stack(&uuid).map_err(Response::from)
}

pub fn webhook_create(req: &Request, user: &User) -> HttpResult {
    let body: NewWebhook = payload(req)?;
    let endpoint = load_endpoint(body.endpoint_id)?.ok_or_else(|| not_found("an endpoint"))?;
    if !can_use(user, &endpoint)? {
        return Err(fail(403, "Permission denied to access endpoint", ""));
    }
    let kind = body.kind as u8;
    if kind == SERVICE_HOOK {
        docker::service_inspect(&endpoint.docker, &body.resource_id).map_err(|e| {
            match docker::engine_status(&e) {
                Some(404) => not_found("a service"),
                _ => fail(
                    500,
                    "Unable to inspect the service",
                    &docker::error_text(&e),
                ),
            }
        })?;
    } else {
        let stack = stack_by_id(&body.resource_id)?.ok_or_else(|| not_found("a stack"))?;
        if !may_see(user, &stack)? {
            return Err(fail(403, "Access denied to resource", ""));
        }
    }
    if webhooks()?
        .iter()
        .any(|w| w.resource_id == body.resource_id && w.kind == kind)
    {
        return Err(fail(
            409,
            "A webhook for this resource already exists",
            "Webhook already exists",
        ));
    }
    let w = Webhook {
        id: next_id("webhook", "portainer-webhook")?,
        token: model::uuid4()?,
        resource_id: body.resource_id,
        endpoint_id: body.endpoint_id,
        kind,
    };
    kv::set_json(&webhook_key(w.id), &w)?;
    Ok(Response::json(200, &w.render()))
}

/// `GET /api/webhooks?filters={"ResourceID":...,"EndpointID":...}`: the
/// webhooks on endpoints the caller may use.
pub fn webhook_list(req: &Request, user: &User) -> HttpResult {
    #[derive(Deserialize, Default)]
    #[serde(default)]
    struct Filters {
        #[serde(rename = "ResourceID")]
        resource_id: Option<String>,
        #[serde(rename = "EndpointID")]
        endpoint_id: Option<u64>,
    }
    let filters: Filters = match req.query("filters").filter(|f| !f.is_empty()) {
        Some(text) => gojson::from_slice(text.as_bytes())
            .map_err(|e| fail(400, "Invalid query parameter: filters", &e.to_string()))?,
        None => Filters::default(),
    };
    let mut shown = Vec::new();
    for w in webhooks()? {
        let wanted = filters
            .resource_id
            .as_ref()
            .is_none_or(|r| *r == w.resource_id)
            && filters.endpoint_id.is_none_or(|e| e == w.endpoint_id);
        if !wanted {
            continue;
        }
        if may_use_endpoint(user, w.endpoint_id)? {
            shown.push(w.render());
        }
    }
    Ok(Response::json(200, &shown))
}

pub fn webhook_delete(req: &Request, user: &User) -> HttpResult {
    let id = id_param(req)?;
    let w: Webhook = kv::get_json(&webhook_key(id))?.ok_or_else(|| not_found("a webhook"))?;
    if !may_use_endpoint(user, w.endpoint_id)? {
        return Err(fail(403, "Permission denied to access endpoint", ""));
    }
    kv::delete(&webhook_key(id))?;
    Ok(Response::new(204))
}

/// `POST /api/webhooks/{token}`: redeploy what the webhook was made for.
pub fn webhook_trigger(req: &Request) -> HttpResult {
    let token = req.param("token").unwrap_or_default();
    let w = webhooks()?
        .into_iter()
        .find(|w| crypto::constant_time_eq(w.token.as_bytes(), token.as_bytes()))
        .ok_or_else(|| fail(404, "Unable to find a webhook with this token", "Not found"))?;
    let endpoint = load_endpoint(w.endpoint_id)?.ok_or_else(|| not_found("an endpoint"))?;
    if w.kind == STACK_HOOK {
        let mut stack = stack_by_id(&w.resource_id)?.ok_or_else(|| not_found("a stack"))?;
        model::run_stack(&mut stack, Op::Redeploy).map_err(|f| match f {
            Failure::State(m) => fail(409, "Unable to redeploy the stack", &m),
            other => stack_failure(other),
        })?;
        return Ok(Response::new(204));
    }
    let engine = |e: docker::DockerError| match docker::engine_status(&e) {
        Some(404) => not_found("a service"),
        _ => fail(
            500,
            "Unable to redeploy the service",
            &docker::error_text(&e),
        ),
    };
    let service: Value = serde_json::from_str(
        &docker::service_inspect(&endpoint.docker, &w.resource_id).map_err(engine)?,
    )
    .map_err(|e| fail(500, "Unable to read the service", &e.to_string()))?;
    let version = service["Version"]["Index"].as_u64().unwrap_or_default();
    let mut spec = service["Spec"].clone();
    let forced = spec["TaskTemplate"]["ForceUpdate"].as_u64().unwrap_or(0) + 1;
    spec["TaskTemplate"]["ForceUpdate"] = json!(forced);
    docker::service_update(&endpoint.docker, &w.resource_id, version, &spec.to_string())
        .map_err(engine)?;
    Ok(Response::new(204))
}
